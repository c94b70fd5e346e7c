"""The `python -m arftlib` command line. Each subcommand is a thin wrapper over a library function (or, for the
benchmarks, an `experiments/` recipe), so the notebooks and the CLI run the same code. Heavy imports happen inside
the subcommand that needs them.

A user's mistake (a missing file, an unknown profile or config field, malformed JSON or records) is reported as one
line, `arft: error: …`, with exit status 2 — the message names the file, record and field where it knows them.
`--debug` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys

# Errors the workbench raises for bad input (files, names, records, values). Anything else is a bug and keeps its
# traceback.
USER_ERRORS = (OSError, ValueError, KeyError, LookupError, ImportError)


def _print_json(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False))


def cmd_score(args: argparse.Namespace) -> int:
    from arftlib.metrics import score_file

    _print_json(score_file(args.file, benchmark=args.benchmark, variant=args.variant))
    return 0


def cmd_build_tiny_model(args: argparse.Namespace) -> int:
    from arftlib.models import build_tiny_vlm

    path = build_tiny_vlm(args.out_dir, arch=args.arch, seed=args.seed)
    print(path)
    return 0


def cmd_build_model(args: argparse.Namespace) -> int:
    from arftlib.published import build_published_model

    path = build_published_model(args.config, args.out_dir, seed=args.seed)
    print(path)
    return 0


def cmd_bench_sandbox(args: argparse.Namespace) -> int:
    from arftlib.tools.sandbox import benchmark

    _print_json(benchmark(n=args.n))
    return 0


def cmd_bench_search(args: argparse.Namespace) -> int:
    from arftlib.tools.search import benchmark

    _print_json(benchmark(n_passages=args.n_passages, n_queries=args.n))
    return 0


def cmd_bench_rollout(args: argparse.Namespace) -> int:
    from experiments.bench_rollout import bench_rollout_from_args

    _print_json(bench_rollout_from_args(args))
    return 0


def cmd_bench_realsize(args: argparse.Namespace) -> int:
    from experiments.bench_realsize import bench_realsize_from_args

    _print_json(bench_realsize_from_args(args))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from arftlib.evaluate import eval_from_args

    summary = eval_from_args(args)
    _print_json({k: summary[k] for k in ("benchmark", "model", "adapter", "protocol", "tool_calls", "n", "agent",
                                         "direct", "wall_s") if k in summary})
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from arftlib.config import get_config
    from experiments.micro_learning import compare_methods, default_recipe

    seed = args.seed if args.seed is not None else get_config(args.profile).seed
    res = compare_methods(args.out, kind=args.kind, minutes=args.minutes, methods=args.methods, profile=args.profile,
                          seed=args.seed, heldout_tasks=args.heldout or None,
                          recipe=default_recipe(args.kind, seed, args.seeing_steps))
    print(res["table_md"])
    return 0


def cmd_build_data(args: argparse.Namespace) -> int:
    from arftlib.data.build import build_dataset

    out = build_dataset(args.kind, args.n, args.seed, args.out, overwrite=args.overwrite, progress=True)
    card = json.loads((out / "data_card.json").read_text())
    _print_json({k: card[k] for k in ("benchmark", "n", "seed", "size_bytes", "content_sha256") if k in card})
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from arftlib.train.cli import run_from_args

    run_from_args(args)
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from arftlib.viz import export_from_args

    _print_json(export_from_args(args))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from arftlib.notebooks import reproduce

    reproduce(args.profile)
    return 0


def cmd_build_notebooks(args: argparse.Namespace) -> int:
    from arftlib.notebooks import build_notebooks

    stale = build_notebooks(check=args.check)
    for path in stale:
        print(("stale: " if args.check else "wrote: ") + str(path))
    return 1 if (args.check and stale) else 0


def build_parser() -> argparse.ArgumentParser:
    from arftlib.data.build import KINDS as DATA_KINDS

    parser = argparse.ArgumentParser(
        prog="python -m arftlib",
        description="arft — Visual Agentic Reinforcement Fine-Tuning workbench.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    common = argparse.ArgumentParser(add_help=False)  # so `--debug` also works after the subcommand
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("score", parents=[common], help="score a results file (reference format) with F1/EM")
    p.add_argument("--benchmark", required=True, choices=["mat-coding", "mat-search", "multihop"])
    p.add_argument("--variant", default="reference", choices=["reference", "corrected"],
                   help="reference = exactly the reference notebooks; corrected = documented fixes")
    p.add_argument("file", help="JSON list of {pred_answer, gt, [id], [query]} (.json or .json.gz)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("build-tiny-model", parents=[common], help="write a random tiny Qwen2.5-VL / Qwen3-VL + processor, offline")
    p.add_argument("out_dir")
    p.add_argument("--arch", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_build_tiny_model)

    p = sub.add_parser("build-model", parents=[common], help="write a published-size Qwen-VL with random weights and the real "
                                           "tokenizer (offline)")
    p.add_argument("--config", required=True, help="qwen2.5-vl-3b, qwen2.5-vl-7b, qwen3-vl-2b, qwen3-vl-4b, qwen3-vl-8b")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_build_model)

    p = sub.add_parser("eval", parents=[common], help="evaluate a model (or the gold-chain oracle) on a benchmark")
    from arftlib.evaluate import add_eval_arguments

    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("build-data", parents=[common], help="build a procedural benchmark with gold chains + data card")
    p.add_argument("--kind", required=True, choices=list(DATA_KINDS))
    p.add_argument("--n", type=int, required=True, help="number of tasks")
    p.add_argument("--seed", type=int, default=0, help="same seed, byte-identical build")
    p.add_argument("--out", required=True, help="output folder (tasks.jsonl, images/, data_card.md, ...)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing build in --out")
    p.set_defaults(func=cmd_build_data)

    p = sub.add_parser("train", parents=[common], help="GRPO fine-tuning on TRL: stepwise (the paper) or agentic (live tools)")
    from arftlib.train.cli import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", parents=[common], help="micro-benchmarks: sandbox | search | rollout | real-size (one JSON object each)")
    bench = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    b = bench.add_parser("sandbox", parents=[common], help="sandboxed crop/rotate latency vs a fresh interpreter per call")
    b.add_argument("--n", type=int, default=200, help="sandbox calls to time")
    b.set_defaults(func=cmd_bench_sandbox)
    b = bench.add_parser("search", parents=[common], help="local BM25 index build time and query latency")
    b.add_argument("--n-passages", type=int, default=None,
                   help="index a generated corpus of N passages instead of the default Wikipedia corpus")
    b.add_argument("--n", type=int, default=500, help="queries to time")
    b.set_defaults(func=cmd_bench_search)
    b = bench.add_parser("rollout", parents=[common], help="batched vs one-question-at-a-time episodes per second")
    from experiments.bench_rollout import add_bench_rollout_arguments

    add_bench_rollout_arguments(b)
    b.set_defaults(func=cmd_bench_rollout)
    b = bench.add_parser("real-size", parents=[common], help="real GRPO steps at published size (QLoRA profile, "
                                                           "few generations, short completions, small image)")
    from experiments.bench_realsize import add_bench_realsize_arguments

    add_bench_realsize_arguments(b)
    b.set_defaults(func=cmd_bench_realsize)

    p = sub.add_parser("compare", parents=[common], help="step-wise GRPO vs agentic GRPO vs more SFT on the micro world, "
                                                         "same warm start, same wall clock, held-out F1 with CIs")
    p.add_argument("--kind", default="coding", choices=["coding", "search"], help="micro-coding or micro-search")
    p.add_argument("--minutes", type=float, default=10.0, help="training wall clock per method")
    p.add_argument("--methods", nargs="+", default=["agentic", "stepwise", "sft"],
                   choices=["agentic", "stepwise", "sft"])
    p.add_argument("--profile", default="tiny-cpu")
    p.add_argument("--seed", type=int, default=None, help="data and training seed (default: the profile's)")
    p.add_argument("--heldout", type=int, default=60, help="held-out tasks evaluated before and after (0 = all)")
    p.add_argument("--seeing-steps", type=int, default=None,
                   help="warm-start seeing stage (coding only; default: notebook 04's, 150)")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per method, comparison.md/json)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("view", parents=[common], help="static HTML of a run's or an evaluation's trajectories (+ plots)")
    from arftlib.viz import add_export_arguments

    add_export_arguments(p)
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("reproduce", parents=[common], help="execute every notebook in order into runs/<profile>/<notebook>/")
    p.add_argument("--profile", default="auto", help="profile name, or auto (tiny-cpu without CUDA)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("build-notebooks", parents=[common], help="regenerate notebooks/*.ipynb from notebooks/src/*.py")
    p.add_argument("--check", action="store_true", help="only report notebooks that are out of date")
    p.set_defaults(func=cmd_build_notebooks)
    return parser


def error_message(exc: BaseException) -> str:
    """One line for a user's mistake: the exception's own message (a KeyError's without its quotes)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(text):
        text = f"{text}: {exc.filename}"
    return " ".join(str(text).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"arft: error: {error_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
