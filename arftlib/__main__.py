"""The `python -m arftlib` command line. Each subcommand is a thin wrapper over a library function, so the
notebooks and the CLI run the same code. Heavy imports happen inside the subcommand that needs them."""

from __future__ import annotations

import argparse
import json
import sys


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


def cmd_bench_sandbox(args: argparse.Namespace) -> int:
    from arftlib.tools.sandbox import benchmark

    _print_json(benchmark(n=args.n))
    return 0


def cmd_bench_search(args: argparse.Namespace) -> int:
    from arftlib.tools.search import benchmark

    _print_json(benchmark(n_passages=args.n_passages, n_queries=args.n))
    return 0


def cmd_bench_rollout(args: argparse.Namespace) -> int:
    from arftlib.evaluate import bench_rollout_from_args

    _print_json(bench_rollout_from_args(args))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from arftlib.evaluate import eval_from_args

    summary = eval_from_args(args)
    _print_json({k: summary[k] for k in ("benchmark", "model", "protocol", "tool_calls", "n", "agent", "wall_s") if k in summary})
    return 0


def cmd_build_data(args: argparse.Namespace) -> int:
    from arftlib.data.build import build_dataset

    out = build_dataset(args.kind, args.n, args.seed, args.out, overwrite=args.overwrite, progress=True)
    card = json.loads((out / "data_card.json").read_text())
    _print_json({k: card[k] for k in ("benchmark", "n", "seed", "build_time_s", "size_bytes", "content_sha256")})
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from arftlib.train import run_from_args

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
    parser = argparse.ArgumentParser(
        prog="python -m arftlib",
        description="arft — Visual Agentic Reinforcement Fine-Tuning workbench.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("score", help="score a results file (reference format) with F1/EM")
    p.add_argument("--benchmark", required=True, choices=["mat-coding", "mat-search", "multihop"])
    p.add_argument("--variant", default="reference", choices=["reference", "corrected"],
                   help="reference = exactly the reference notebooks; corrected = documented fixes")
    p.add_argument("file", help="JSON list of {pred_answer, gt, [id], [query]}")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("build-tiny-model", help="write a random tiny Qwen2.5-VL / Qwen3-VL + processor, offline")
    p.add_argument("out_dir")
    p.add_argument("--arch", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_build_tiny_model)

    p = sub.add_parser("eval", help="evaluate a model (or the gold-chain oracle) on a benchmark")
    from arftlib.evaluate import add_eval_arguments

    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("build-data", help="build a procedural MAT-style benchmark with gold chains + data card")
    p.add_argument("--kind", required=True, choices=["coding", "search"])
    p.add_argument("--n", type=int, required=True, help="number of tasks")
    p.add_argument("--seed", type=int, default=0, help="same seed, byte-identical build")
    p.add_argument("--out", required=True, help="output folder (tasks.jsonl, images/, data_card.md, ...)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing build in --out")
    p.set_defaults(func=cmd_build_data)

    p = sub.add_parser("train", help="GRPO fine-tuning on TRL: stepwise (the paper) or agentic (live tools)")
    from arftlib.train import add_train_arguments

    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="micro-benchmarks: sandbox | search | rollout (one JSON object each)")
    bench = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    b = bench.add_parser("sandbox", help="sandboxed crop/rotate latency vs a fresh interpreter per call")
    b.add_argument("--n", type=int, default=200, help="sandbox calls to time")
    b.set_defaults(func=cmd_bench_sandbox)
    b = bench.add_parser("search", help="local BM25 index build time and query latency")
    b.add_argument("--n-passages", type=int, default=None,
                   help="index a generated corpus of N passages instead of the default Wikipedia corpus")
    b.add_argument("--n", type=int, default=500, help="queries to time")
    b.set_defaults(func=cmd_bench_search)
    b = bench.add_parser("rollout", help="batched vs one-question-at-a-time episodes per second")
    from arftlib.evaluate import add_bench_rollout_arguments

    add_bench_rollout_arguments(b)
    b.set_defaults(func=cmd_bench_rollout)

    p = sub.add_parser("view", help="static HTML of a run's or an evaluation's trajectories (+ plots)")
    from arftlib.viz import add_export_arguments

    add_export_arguments(p)
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("reproduce", help="execute every notebook in order into runs/<profile>/<notebook>/")
    p.add_argument("--profile", default="auto", help="profile name, or auto (tiny-cpu without CUDA)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("build-notebooks", help="regenerate notebooks/*.ipynb from notebooks/src/*.py")
    p.add_argument("--check", action="store_true", help="only report notebooks that are out of date")
    p.set_defaults(func=cmd_build_notebooks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
