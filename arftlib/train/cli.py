"""`python -m arftlib train` (and `python -m arftlib.train`): the command-line face of `train()`.

The same call runs multi-process under `accelerate launch` (`--config_file configs/accelerate_*.yaml`); only the
main process prints the summary.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from arftlib.paths import REPO_ROOT
from arftlib.train.trainer import KINDS, MODES, REWARD_VARIANTS, json_safe, is_main_process, train

__all__ = ["add_train_arguments", "main", "run_from_args"]


def add_train_arguments(p) -> None:
    """The `python -m arftlib train` arguments (see `run_from_args`)."""
    from arftlib.config import PROFILES

    p.add_argument("--profile", default="auto", help=f"profile name ({', '.join(PROFILES)}) or auto")
    p.add_argument("--mode", default="stepwise", choices=list(MODES),
                   help="stepwise = the paper's single-step GRPO; agentic = whole episodes with live tools")
    p.add_argument("--data", default=None, help="built procedural task folder (default: build into OUT/data)")
    p.add_argument("--model", default=None, help="hub id or local path overriding the profile's model")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--out", default=None, help="run directory (default runs/<profile>/train-<mode>)")
    p.add_argument("--kind", default="coding", choices=list(KINDS), help="task family to train on")
    p.add_argument("--reward", default="paper", choices=list(REWARD_VARIANTS),
                   help="stepwise code reward: paper (flat 0.9 for a well-formed code step) or executed")
    p.add_argument("--adapter", default=None, help="start from this saved LoRA adapter (e.g. an SFT warm start)")
    p.add_argument("--max-steps", type=int, default=None, help="override the profile's max_steps")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a RunConfig field (repeatable), e.g. --set learning_rate=1e-5")


def run_from_args(args) -> dict[str, Any]:
    """What `python -m arftlib train` does with parsed arguments; prints the summary as JSON (without the log
    history) and returns it."""
    from arftlib.config import get_config, parse_set_overrides

    from arftlib.data.loaders import built_benchmark

    benchmark = built_benchmark(args.data) if args.data else None  # a micro build trains with the micro settings
    cfg = get_config(args.profile, benchmark=benchmark, **parse_set_overrides(args.set))
    out = args.out or str(REPO_ROOT / "runs" / cfg.profile / f"train-{args.mode}")
    summary = train(cfg, args.mode, data=args.data, model=args.model, resume=args.resume, out_dir=out,
                    kind=args.kind, reward=args.reward, adapter=args.adapter, max_steps=args.max_steps)
    if is_main_process():
        print(json.dumps(json_safe({k: v for k, v in summary.items() if k != "log_history"}), indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m arftlib.train", description="GRPO training (TRL GRPOTrainer)")
    add_train_arguments(p)
    try:
        run_from_args(p.parse_args(argv))
    finally:
        _close_process_group()
    return 0


def _close_process_group() -> None:
    """Under `accelerate launch`, tear the process group down before the interpreter exits: left to exit-time
    destruction, a rank's gloo threads can abort it after a finished run ("terminate called without an active
    exception", exit -6; seen once in CI on test_agentic_two_processes)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
