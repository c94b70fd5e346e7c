"""Rollout throughput: the batched loop with per-episode KV reuse against the one-question-at-a-time loop of the
reference scripts (and batching without KV reuse), on the same tasks, model and settings, in one process.

Run: `python -m arftlib bench rollout --threads 1 --repeats 2 [--kind search] [--protocol chat]` (one JSON
object). Figures measured on the project's CPU machine are in the README ("Measured speed and memory").

What it finds for the tiny model on 2 CPU cores (tags prompts of ~725 tokens, 5 turns, 64 new tokens, one
thread, 32 tasks): a lone sequence costs ~20 ms of prefill plus ~1.1 ms per generated token, nearly all of it
fixed per-step overhead, which batching amortises; prefill is what a batch cannot share (attention is
O(prompt²) per sequence), which KV reuse removes from every round but the first. Two intra-op threads help a
batch on an idle machine but make every call several times slower when other processes hold a core — bench
with `--threads 1 --repeats 2` here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from arftlib.env import AgentEnv
from arftlib.policies import EpisodeContext, HFPolicy, Policy, ScriptedPolicy
from arftlib.rollout import run_episodes, summarize
from arftlib.types import Task, Trajectory

__all__ = ["bench_rollout"]


def _bench_tasks(n: int, kind: str, seed: int, work: Path, data: str | os.PathLike | None) -> tuple[list[Task], str]:
    """Tasks for the benchmark: an existing build (`data`) or a fresh small procedural build."""
    bench = "synth-coding" if kind == "coding" else "synth-search"
    if data is not None:
        from arftlib.data.loaders import load_benchmark

        tasks = list(load_benchmark(bench, data))
        source = f"{bench} build at {data}"
    else:
        from arftlib.data.build import build_dataset, load_built

        out = work / bench
        build_dataset(kind, n=n, seed=seed, out=out, overwrite=True, verify=False)  # timing only: no need to verify
        tasks = list(load_built(out))
        source = f"{bench} built here (n={n}, seed={seed})"
    if len(tasks) < n:
        raise ValueError(f"the benchmark needs {n} tasks; {source} holds {len(tasks)}")
    return tasks[:n], source


def bench_rollout(
    n_tasks: int = 32,
    *,
    max_turns: int = 5,
    max_new_tokens: int = 64,
    kind: str = "coding",
    protocol: str = "tags",
    model: str = "tiny",
    batch_size: int | None = None,
    tool_workers: int = 8,
    seed: int = 0,
    data: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    repeats: int = 1,
    policy: Policy | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Time the batched loop against a one-question-at-a-time loop on the same tasks, in one process.

    Both loops use the same model and generation settings (greedy decoding, same `max_new_tokens`, vision
    tokens suppressed): the sequential loop through `policy.without_kv_reuse()` (`model.generate` on the whole
    prompt each turn, like the reference), the batched loop through `policy` (KV reuse across turns when the
    model supports it; then a third loop, batched without KV reuse, is timed too and reported as
    `batched_no_kv_reuse` / `ratio_no_kv_reuse`). Same `AgentEnv` settings and tool implementations (sandbox, search), the same
    `n_tasks` procedural tasks (`synth-coding` for kind="coding", `synth-search` for kind="search"; a fresh
    small build unless `data=` names one) and the same `max_turns`. The sequential loop generates one
    episode's turn at a time and runs its tool inline, like the reference evaluation scripts; the batched loop
    is `run_episodes` with `batch_size` (default: all tasks). One untimed warm-up turn (model, processor,
    sandbox server) precedes both. `model="oracle"` replays the gold chains instead of generating, which
    times the environment and tools alone (code runs concurrently in the batched loop). With `repeats` > 1
    the two loops run alternately that many times and the fastest run of each counts (robust to other
    processes on a shared machine; `loadavg_1min` reports the machine's load before and after). `threads` sets torch's intra-op threads (default: torch's own).
    Returns episodes per second for each, their ratio, and where the time went (generate / tools / other).
    The procedural build (when one is made here) skips its sandbox verification: only timing matters here.
    """
    import torch

    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="arft-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    tasks, source = _bench_tasks(n_tasks, kind, seed, work, data)
    if threads is not None:
        torch.set_num_threads(int(threads))
    if policy is None:
        if model == "oracle":  # no model: times the environment and tools alone (gold chains)
            policy = ScriptedPolicy()
        else:
            policy = HFPolicy.from_pretrained(model, max_new_tokens=max_new_tokens, temperature=0.0, seed=seed)
    elif isinstance(policy, HFPolicy):  # a loaded policy (tests, notebooks): same settings for both loops
        policy.max_new_tokens, policy.temperature = int(max_new_tokens), 0.0
    bs = int(batch_size or len(tasks))
    env_kwargs = {"work_dir": str(work / "episodes")}
    # the reference way: every turn re-encodes the whole prompt with model.generate (no KV kept between turns)
    reference = policy.without_kv_reuse() if isinstance(policy, HFPolicy) else policy
    loops: dict[str, tuple[Policy, dict[str, Any]]] = {
        "sequential": (reference, {"sequential": True}),
        "batched": (policy, {"batch_size": bs}),
    }
    if isinstance(policy, HFPolicy) and policy.engine is not None:  # what batching alone buys (no KV reuse)
        loops["batched_no_kv_reuse"] = (reference, {"batch_size": bs})
    # warm-up: one generation per policy and one environment step (starts the sandbox / search index)
    warm = AgentEnv(protocol=protocol, max_turns=max_turns, **env_kwargs)
    warm.reset(task=tasks[0], episode_id="warmup")
    for pol in {id(p): p for p, _ in loops.values()}.values():
        g = pol.generate([warm.messages], [EpisodeContext(tasks[0], 0, "warmup", protocol)])[0]
    forget = getattr(policy, "forget", None)
    if forget is not None:
        forget(["warmup"])
    warm.step(g.text)
    warm.close()

    common = dict(protocol=protocol, max_turns=max_turns, env_kwargs=env_kwargs, tool_workers=tool_workers,
                  progress=progress)
    load_start = os.getloadavg()[0]
    runs: dict[str, list[tuple[float, dict[str, Any], list[Trajectory]]]] = {name: [] for name in loops}
    for _ in range(max(1, int(repeats))):  # alternate the loops; the fastest run of each counts
        for name, (pol, kw) in loops.items():
            st: dict[str, Any] = {}
            trajs = run_episodes(tasks, pol, stats=st, **common, **kw)
            runs[name].append((st["wall_s"], st, trajs))
    load_end = os.getloadavg()[0]
    best = {name: min(r, key=lambda x: x[0]) for name, r in runs.items()}
    _, s_seq, seq = best["sequential"]
    _, s_bat, bat = best["batched"]

    def part(st: dict[str, Any], trajs: list[Trajectory], name: str) -> dict[str, Any]:
        s = summarize(trajs)
        return {
            "wall_s": round(st["wall_s"], 3), "all_wall_s": [round(r[0], 3) for r in runs[name]],
            "cpu_s": round(st["cpu_s"], 3),
            "generate_calls": st["generate_calls"],
            "generate_s": round(st["generate_s"], 3), "tool_wall_s": round(st["tool_wall_s"], 3),
            "other_s": round(st["wall_s"] - st["generate_s"] - st["tool_wall_s"], 3),
            "turns": s["turns"], "tool_calls": s["tool_calls"], "tool_errors": s["tool_errors"],
            "invalid_turns": s["invalid_turns"], "answered": s["answered"],
            "completion_tokens": s["completion_tokens"], "prompt_tokens": s["prompt_tokens"],
            "reused_prompt_tokens": st.get("reused_prompt_tokens", 0),
        }

    b_eps = len(bat) / s_bat["wall_s"]
    s_eps = len(seq) / s_seq["wall_s"]
    def same_as_sequential(trajs: list[Trajectory]) -> int:
        return sum(1 for a, b in zip(seq, trajs) if [x.model_text for x in a.steps] == [x.model_text for x in b.steps])

    extra: dict[str, Any] = {}
    if "batched_no_kv_reuse" in best:
        _, s_nr, nr = best["batched_no_kv_reuse"]
        extra = {"batched_no_kv_reuse_eps_per_s": round(len(nr) / s_nr["wall_s"], 3),
                 "ratio_no_kv_reuse": round(len(nr) / s_nr["wall_s"] / s_eps, 2),
                 "batched_no_kv_reuse": part(s_nr, nr, "batched_no_kv_reuse"),
                 "identical_episodes_no_kv_reuse": same_as_sequential(nr)}
    return {
        "batched_eps_per_s": round(b_eps, 3),
        "sequential_eps_per_s": round(s_eps, 3),
        "ratio": round(b_eps / s_eps, 2),
        # the same ratio on CPU time: what the loops cost without waiting for other processes on a shared
        # machine (meaningful with threads=1; spinning OpenMP threads count as CPU time too)
        "ratio_cpu_time": round(s_seq["cpu_s"] / s_bat["cpu_s"], 2) if s_bat["cpu_s"] > 0 else None,
        "n_tasks": len(tasks),
        "max_turns": max_turns,
        "max_new_tokens": max_new_tokens,
        "batch_size": bs,
        "protocol": protocol,
        "kind": kind,
        "model": model,
        "tasks": source,
        "repeats": max(1, int(repeats)),
        "torch_threads": torch.get_num_threads(),
        "device": str(policy.model.device) if isinstance(policy, HFPolicy) else "cpu (no model)",
        "loadavg_1min": [round(load_start, 2), round(load_end, 2)],
        "batched": part(s_bat, bat, "batched"),
        "sequential": part(s_seq, seq, "sequential"),
        "identical_episodes": same_as_sequential(bat),
        "kv_reuse": isinstance(policy, HFPolicy) and policy.engine is not None,
        **extra,
    }



def add_bench_rollout_arguments(p: Any) -> None:
    """Arguments of `python -m arftlib bench rollout` (batched vs one-at-a-time loop)."""
    p.add_argument("--n-tasks", type=int, default=32)
    p.add_argument("--max-turns", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--kind", default="coding", choices=["coding", "search"])
    p.add_argument("--protocol", default="tags", choices=["tags", "chat"])
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch-size", type=int, default=None, help="default: all tasks in one batch")
    p.add_argument("--data", default=None, help="an existing synth-* build (default: build one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="alternate the two loops this often; fastest counts")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")


def bench_rollout_from_args(args: Any) -> dict[str, Any]:
    return bench_rollout(n_tasks=args.n_tasks, max_turns=args.max_turns, max_new_tokens=args.max_new_tokens,
                         kind=args.kind, protocol=args.protocol, model=args.model, batch_size=args.batch_size,
                         data=args.data, seed=args.seed, repeats=args.repeats, threads=args.threads)
