"""Benchmark evaluation: tasks → batched agent episodes → results JSON (reference format) + scored tables.

`run_eval(benchmark, data, model, protocol, out)` loads a benchmark (`mat-coding`, `mat-search`, `multihop`
— or one of its FlashRAG names `2wiki`, `hotpotqa`, `musique`, `bamboogle` — and the procedural builds
`synth-coding`, `synth-search`), runs every task through `rollout.run_episodes` with the real environment
and tools, and writes into `out/`:

* `results.json` — the reference evaluation's format: a list of `{id, query, gt, pred_answer}` in task
  order (`pred_answer` None when the episode ended unanswered), plus `split` and `type` (MAT-Coding's
  degradation labels) which `metrics.score_records(..., "corrected")` uses for the split tables. The file
  can be re-scored with `python -m arftlib score --benchmark … results.json`.
* `trajectories/` — every episode (`trajectories.jsonl` + tool images; see trajectories.py).
* `table.csv`, `table.md` — F1 and EM (percent) by group — all, split, difficulty, degradation label
  (an item with two labels counts in both), degradation combination, and hops (search) — for BOTH scoring
  variants (`reference`: the paper's notebooks exactly; `corrected`: see metrics.py), each with a
  percentile bootstrap confidence interval (`n_boot` resamples of the group's items, default 1000, 95 %,
  seeded). Group scores are plain means over the group's items.
* `scores.json` — the summary returned by `run_eval`: settings, the overall scores per variant with CIs, the
  official `metrics.score_records` output for the real benchmarks (hard-coded reference denominators
  included — partial files get a warning recorded there), rollout statistics (turns, tool calls, tool
  errors, tokens, time) and "evidence" that the tools worked: for coding, the fraction of episodes whose code
  all produced an image and the mean SSIM of the final image against the clean image (cropped to
  `metadata["target_box"]` when there is one); for search, the fraction of gold-needed passages
  (`metadata["needed_passages"]`) that appeared in the episode's hits and the fraction of episodes whose hits
  contain a gold answer.

`direct_baseline=True` also runs the no-tool baseline into `out/direct/`, and its rows join the table with
`run = "direct"`: for a model with a recorded trained form (a warm start or an adapter this workbench trained),
the agent's own form with its tools switched off (every tool call answered "tools are off"); otherwise the
reference's `direct` protocol (the question plus "Answer the question directly…", one turn, the raw output is the
answer, as its `*_df.py` scripts). `direct_form=` chooses; `summary["direct"]["form"]` records which ran.

`model="oracle"` replays the gold chains (`rollout.ScriptedPolicy`) through the same environment: on the
procedural benchmarks it must score F1 ≥ 99, which checks the environment, the tools and the scoring
together.

Left out: multi-GPU sharding (run one process per shard with `limit`/`offset` and concatenate results),
LLM-as-judge scoring, and significance tests between runs (compare the bootstrap intervals).
"""

from __future__ import annotations

import csv
import json
import os
import time
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from arftlib.env import AgentEnv, env_factory
from arftlib.types import Task, Trajectory

log = logging.getLogger(__name__)

__all__ = [
    "BENCHMARKS",
    "add_eval_arguments",
    "bootstrap_ci",
    "eval_from_args",
    "group_table",
    "load_tasks",
    "results_records",
    "run_eval",
]

MULTIHOP_NAMES = ("2wiki", "hotpotqa", "musique", "bamboogle")
PROCEDURAL = ("synth-coding", "synth-search", "micro-coding", "micro-search")  # built folders (data.build)
BENCHMARKS = ("mat-coding", "mat-search", "multihop") + PROCEDURAL + MULTIHOP_NAMES
# which metrics.py benchmark defines the normalisation (style) of each benchmark
_STYLE_BENCHMARK = {"mat-coding": "mat-coding", "mat-search": "mat-search", "multihop": "multihop",
                    "synth-coding": "mat-coding", "synth-search": "mat-search",
                    "micro-coding": "mat-coding", "micro-search": "mat-search",
                    **{n: "multihop" for n in MULTIHOP_NAMES}}
_OFFICIAL = {"mat-coding", "mat-search", "multihop", *MULTIHOP_NAMES}  # real benchmarks: score_records applies
VARIANTS = ("reference", "corrected")


# --------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------
def load_tasks(benchmark: str, data: str | os.PathLike, *, split: str | None = None, limit: int | None = None,
               offset: int = 0, image_root: str | os.PathLike | None = None) -> list[Task]:
    """The benchmark's tasks (see the module docstring for names); optional `split` filter, then
    `offset`/`limit` slicing."""
    from arftlib.data import loaders

    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    if benchmark == "multihop":
        path = Path(data)
        name = "multihop"
        lowered = str(path).lower()
        for n, dirs in loaders.FLASHRAG_DIRS.items():
            if any(d.lower() in lowered for d in dirs):
                name = n
                break
        tasks = list(loaders.load_multihop(path, name))
    elif benchmark in ("mat-coding", "mat-search"):
        opts = {"image_root": image_root} if image_root is not None else {}
        tasks = list(loaders.load_benchmark(benchmark, data, **opts))
    else:
        tasks = list(loaders.load_benchmark(benchmark, data))
    if split is not None:
        tasks = [t for t in tasks if t.split == split]
        if not tasks:
            raise ValueError(f"{benchmark} at {data}: no task has split {split!r}")
    tasks = tasks[offset:]
    if limit is not None:
        tasks = tasks[:limit]
    if not tasks:
        raise ValueError(f"{benchmark} at {data}: no tasks selected (offset={offset}, limit={limit})")
    return tasks


def results_records(tasks: Sequence[Task], trajs: Sequence[Trajectory]) -> list[dict[str, Any]]:
    """The reference results format, one record per task in order: `{id, query, gt, pred_answer}` (+ split,
    type)."""
    by_id = {t.task.id: t for t in trajs}
    records = []
    for task in tasks:
        traj = by_id.get(task.id)
        if traj is None:
            raise RuntimeError(f"task {task.id!r} has no trajectory")
        rec: dict[str, Any] = {"id": task.id, "query": task.question, "gt": list(task.answers),
                               "pred_answer": traj.final_answer, "split": task.split}
        if task.kind == "coding":
            rec["type"] = list(task.degradations)
        records.append(rec)
    return records


# --------------------------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------------------------
def bootstrap_ci(values: Sequence[float], *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling items with replacement)."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return (float("nan"), float("nan"))
    if x.size == 1 or n_boot <= 0:
        return (float(x.mean()), float(x.mean()))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return float(lo), float(hi)


def _groups(task: Task) -> list[tuple[str, str]]:
    out = [("all", "all")]
    if task.split:
        out.append(("split", task.split))
    meta = task.metadata if isinstance(task.metadata, Mapping) else {}
    if isinstance(meta.get("difficulty"), str):
        out.append(("difficulty", meta["difficulty"]))
    if task.kind == "coding":
        labels = sorted(set(task.degradations)) or ["none"]
        out += [("degradation", lab) for lab in labels]
        out.append(("combination", "+".join(labels)))
    else:
        h = task.hops
        if h is not None:
            out.append(("hops", str(h)))
    return out


def group_table(tasks: Sequence[Task], records: Sequence[Mapping[str, Any]], benchmark: str, *, run: str = "agent",
                n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
    """Rows `{run, variant, group_by, group, n, f1, f1_lo, f1_hi, em, em_lo, em_hi}` (percent, 2 decimals)
    for every group of `_groups` and both scoring variants."""
    from arftlib.metrics import score_items

    style = _STYLE_BENCHMARK[benchmark]
    rows = []
    for variant in VARIANTS:
        items = score_items(list(records), style, variant)
        buckets: dict[tuple[str, str], list[int]] = {}
        for i, task in enumerate(tasks):
            for key in _groups(task):
                buckets.setdefault(key, []).append(i)
        order = sorted(buckets, key=lambda k: (["all", "split", "difficulty", "degradation", "combination",
                                                 "hops"].index(k[0]), k[1]))
        for gb, g in order:
            idx = buckets[(gb, g)]
            f1s = [items[i][0] * 100 for i in idx]
            ems = [items[i][1] * 100 for i in idx]
            f_lo, f_hi = bootstrap_ci(f1s, n_boot=n_boot, ci=ci, seed=seed)
            e_lo, e_hi = bootstrap_ci(ems, n_boot=n_boot, ci=ci, seed=seed)
            rows.append({"run": run, "variant": variant, "group_by": gb, "group": g, "n": len(idx),
                         "f1": round(sum(f1s) / len(idx), 2), "f1_lo": round(f_lo, 2), "f1_hi": round(f_hi, 2),
                         "em": round(sum(ems) / len(idx), 2), "em_lo": round(e_lo, 2), "em_hi": round(e_hi, 2)})
    return rows


def _write_table(rows: list[dict[str, Any]], out: Path, ci: float) -> None:
    cols = ["run", "variant", "group_by", "group", "n", "f1", "f1_lo", "f1_hi", "em", "em_lo", "em_hi"]
    with open(out / "table.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    pct = int(round(ci * 100))
    lines = [f"| run | variant | group by | group | n | F1 [{pct}% CI] | EM [{pct}% CI] |",
             "|---|---|---|---|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['variant']} | {r['group_by']} | {r['group']} | {r['n']} | "
                     f"{r['f1']:.2f} [{r['f1_lo']:.2f}, {r['f1_hi']:.2f}] | "
                     f"{r['em']:.2f} [{r['em_lo']:.2f}, {r['em_hi']:.2f}] |")
    (out / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------
# evidence that the tools did their job (diagnostics; the oracle should be perfect here)
# --------------------------------------------------------------------------------------------------------------
def _evidence(trajs: Sequence[Trajectory]) -> dict[str, Any]:
    from arftlib.metrics import normalize_answer

    coding = [t for t in trajs if t.task.kind == "coding"]
    search = [t for t in trajs if t.task.kind != "coding"]
    ev: dict[str, Any] = {}
    if coding:
        with_code = [t for t in coding if any(s.action.kind == "code" for s in t.steps)]
        ok = [t for t in with_code if all(s.observation is not None and s.observation.kind == "image"
                                          for s in t.steps if s.action.kind == "code")]
        ev["coding_episodes_with_code"] = len(with_code)
        ev["code_all_ok_fraction"] = round(len(ok) / len(with_code), 4) if with_code else None
        ssims = [x for x in (_final_ssim(t) for t in coding) if x is not None]
        ev["final_image_ssim_mean"] = round(sum(ssims) / len(ssims), 4) if ssims else None
        ev["final_image_ssim_n"] = len(ssims)
    if search:
        need = found = 0
        ans_hit = 0
        for t in search:
            hits = [h for s in t.steps if s.observation is not None for h in s.observation.hits]
            ids = {str(h.get("id", "")) for h in hits}
            needed = t.task.metadata.get("needed_passages") if isinstance(t.task.metadata, Mapping) else None
            if isinstance(needed, list):
                need += len(needed)
                found += sum(1 for p in needed if str(p) in ids)
            blob = " " + normalize_answer(" ".join(str(h.get("text", "")) for h in hits), "search") + " "
            if any(normalize_answer(a, "search") and f" {normalize_answer(a, 'search')} " in blob for a in t.task.answers):
                ans_hit += 1
        ev["needed_passages"] = need
        ev["needed_passages_found_fraction"] = round(found / need, 4) if need else None
        ev["answer_in_hits_fraction"] = round(ans_hit / len(search), 4)
    return ev


def _final_ssim(t: Trajectory) -> float | None:
    """SSIM of the episode's last code image against the builder's restoration target (procedural tasks)."""
    imgs = [s.observation.image for s in t.steps if s.observation is not None and s.observation.image]
    if not imgs or not t.task.clean_image or not Path(t.task.clean_image).is_file():
        return None
    import numpy as np
    from PIL import Image

    from arftlib.data import degrade as D
    from arftlib.data.build import restoration_target  # the builder's own definition of the target

    with Image.open(imgs[-1]) as a:
        restored = np.asarray(a.convert("RGB"))
    return D.similarity(restored, restoration_target(t.task))[0]


# --------------------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------------------
def _overall(rows: list[dict[str, Any]], run: str) -> dict[str, Any]:
    out = {}
    for r in rows:
        if r["run"] == run and r["group_by"] == "all":
            out[r["variant"]] = {"n": r["n"], "f1": r["f1"], "f1_ci": [r["f1_lo"], r["f1_hi"]], "em": r["em"],
                                 "em_ci": [r["em_lo"], r["em_hi"]]}
    return out


def _official(records: list[dict[str, Any]], benchmark: str) -> dict[str, Any]:
    from arftlib.metrics import score_records

    if benchmark not in _OFFICIAL:
        return {}
    out = {}
    for variant in VARIANTS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = score_records(records, _STYLE_BENCHMARK[benchmark], variant)
        if caught:
            res["warnings"] = [str(w.message) for w in caught]
        out[variant] = res
    return out


def _one_run(tasks: list[Task], policy: Any, protocol: str, out: Path, *, run: str, env_settings: dict[str, Any],
             batch_size: int, sequential: bool, tool_workers: int, progress: bool
             ) -> tuple[list[Trajectory], list[dict[str, Any]], dict[str, Any]]:
    from arftlib.rollout import run_episodes, summarize

    out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {}
    settings = {**env_settings, "protocol": protocol}
    trajs = run_episodes(tasks, policy, batch_size=batch_size, sequential=sequential,
                         env_factory=env_factory(**settings), writer=out / "trajectories",
                         tool_workers=tool_workers, progress=progress, desc=f"{run} ({protocol})", stats=stats)
    records = results_records(tasks, trajs)
    with open(out / "results.json", "w", encoding="utf-8") as fh:
        json.dump(records, fh, ensure_ascii=False, indent=2)
    roll = summarize(trajs)
    roll.update({k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items()})
    roll["episodes_per_s"] = round(len(trajs) / stats["wall_s"], 3) if stats["wall_s"] > 0 else None
    return trajs, records, roll


def run_eval(
    benchmark: str,
    data: str | os.PathLike,
    model: str,
    protocol: str | None = None,
    out: str | os.PathLike = "eval-out",
    *,
    cfg: Any = None,
    direct_baseline: bool = False,
    direct_form: str | None = None,
    tasks: Sequence[Task] | None = None,
    split: str | None = None,
    limit: int | None = None,
    offset: int = 0,
    image_root: str | os.PathLike | None = None,
    tool_calls: bool | str | None = None,
    adapter: str | os.PathLike | None = None,
    policy: Any = None,
    rubric: Any = None,
    search_options: Mapping[str, Any] | None = None,
    env_options: Mapping[str, Any] | None = None,
    sequential: bool = False,
    tool_workers: int = 8,
    n_boot: int = 1000,
    ci: float = 0.95,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate `model` on `benchmark` (files under `data`); write results, trajectories and tables under `out`
    (see the module docstring) and return the summary.

    Settings come from ONE run config: `cfg` (a `RunConfig`; default: the auto-picked profile) with `overrides`
    (any `RunConfig` field, e.g. `max_turns=3`, `eval_batch_size=8`, `eval_max_new_tokens=1024`,
    `eval_temperature=0.7`, `search_k=4`, `sandbox_timeout_s=20`) — the environment, the generation and the
    sandbox limits all read it. `protocol` defaults to the config's. Explicit arguments: `tasks` (evaluate these
    Tasks instead of loading `data`; `benchmark` still picks the scoring), `model` (hub id, local folder, "tiny",
    or "oracle" = gold chains), `adapter` (a LoRA adapter on the model), `policy` (a ready `policies.Policy`;
    `model` is then only recorded), `rubric` (score every episode with it: `traj.reward` and components in the
    trajectories), `tool_calls` (chat only: "tags" or True/"json" — the TRL tool-call form the episodes run in, as
    `train --mode agentic` trains them; False = plain chat turns), `search_options` (backend options such as `corpus=` or `url=`),
    `env_options` (other `AgentEnv` settings). `direct_form` picks the no-tool baseline: "reference" (the `direct`
    protocol, the reference's `*_df.py` prompt) or "tools_off" (the agent's own protocol and tool form, every tool
    call answered "tools are off": the fair baseline for a policy trained in one form, which cannot follow a prompt
    it never saw); default: "tools_off" for a model or adapter with a recorded trained form, else "reference"."""
    from arftlib.config import apply_threads, get_config
    from arftlib.policies import load_policy_for_eval

    cfg = get_config(None) if cfg is None else cfg
    if overrides:
        cfg = cfg.replace(**overrides)
    from arftlib.models import also_trained_protocols, trained_form_of

    form = trained_form_of(model, adapter)
    if form and protocol is None and tool_calls is None:  # evaluate in the form it was trained in
        protocol, tool_calls = form["protocol"], form.get("tool_format") or False
    qai = form.get("question_after_image") if form else None  # absent in forms written before it was recorded
    if qai is not None and bool(qai) != bool(cfg.question_after_image):
        log.warning("%s was trained with question_after_image=%s: evaluated the same way (the config said %s)",
                    adapter or model, bool(qai), bool(cfg.question_after_image))
        cfg = cfg.replace(question_after_image=bool(qai))
    protocol = protocol or cfg.protocol
    if tool_calls is None:
        tool_calls = cfg.tool_format if protocol == "chat" and form else False
    # a form it was also trained in (a warm start with tags rows, and adapters from it, in the tags layout) is its own
    if form and (protocol, tool_calls or None) != (form["protocol"], form.get("tool_format")) and (
            tool_calls or protocol not in also_trained_protocols(model, adapter)):
        log.warning("%s was trained on %s episodes (tool calls: %s) but is evaluated as %s (tool calls: %s); to "
                    "evaluate it in its own form pass --protocol %s%s", adapter or model, form["protocol"],
                    form.get("tool_format"), protocol, tool_calls or None, form["protocol"],
                    f" --tool-calls {form['tool_format']}" if form.get("tool_format") else "")
    apply_threads(cfg)
    if protocol not in ("tags", "chat"):
        raise ValueError(f"protocol must be 'tags' or 'chat' (the direct baseline is direct_baseline=True), "
                         f"not {protocol!r}")
    if tool_calls and protocol != "chat":
        raise ValueError("tool_calls=True needs protocol='chat' (TRL's tool loop is a chat)")
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tasks is None:
        tasks = load_tasks(benchmark, data, split=split, limit=limit, offset=offset, image_root=image_root)
    else:
        if benchmark not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {benchmark!r} (it picks the scoring); choose one of {BENCHMARKS}")
        tasks = list(tasks)
        if not tasks:
            raise ValueError("tasks is empty")
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{benchmark} at {data}: task ids are not unique")
    max_new_tokens = int(cfg.eval_max_new_tokens or cfg.max_completion_length)
    if policy is None:
        load_kwargs = {"torch_dtype": cfg.torch_dtype, "min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels,
                       "quantization": cfg.quantization, "adapter": adapter}
        from arftlib.models import model_path_for

        source = model if model == "oracle" else model_path_for(cfg, model)
        policy = load_policy_for_eval(source, max_new_tokens=max_new_tokens, temperature=cfg.eval_temperature,
                                      use_vllm=cfg.use_vllm, seed=cfg.seed, load_kwargs=load_kwargs)
    env_settings = AgentEnv.settings_from_config(cfg, work_dir=str(out / ".work"), rubric=rubric,
                                                 search_options=dict(search_options or {}), **dict(env_options or {}))
    env_settings.pop("protocol")
    common = dict(batch_size=int(cfg.eval_batch_size), sequential=sequential, tool_workers=tool_workers,
                  progress=progress)

    trajs, records, roll = _one_run(tasks, policy, protocol, out, run="agent",
                                    env_settings={**env_settings, "tool_calls": tool_calls}, **common)
    rows = group_table(tasks, records, benchmark, run="agent", n_boot=n_boot, ci=ci, seed=cfg.seed)
    summary: dict[str, Any] = {
        "benchmark": benchmark, "data": str(data), "model": model, "adapter": None if adapter is None else str(adapter),
        "protocol": protocol, "tool_calls": tool_calls, "n": len(tasks), "split": split, "profile": cfg.profile,
        "max_turns": cfg.max_turns, "image_budget": cfg.image_budget, "batch_size": cfg.eval_batch_size,
        "max_new_tokens": max_new_tokens, "temperature": cfg.eval_temperature, "search_backend": cfg.search_backend,
        "n_boot": n_boot, "ci": ci, "seed": cfg.seed,
        "agent": {"scores": _overall(rows, "agent"), "official": _official(records, benchmark), "rollout": roll,
                  "evidence": _evidence(trajs)},
        "files": {"results": str(out / "results.json"), "trajectories": str(out / "trajectories"),
                  "table_csv": str(out / "table.csv"), "table_md": str(out / "table.md"),
                  "scores": str(out / "scores.json")},
    }
    if rubric is not None:
        summary["agent"]["reward"] = _reward_summary(trajs)
    if direct_baseline:
        d_out = out / "direct"
        direct_form = direct_form or ("tools_off" if form else "reference")
        if direct_form == "reference":  # no tools: one turn, the whole turn is the answer
            d_protocol, d_settings = "direct", {**env_settings, "max_turns": 1}
        elif direct_form == "tools_off":  # the agent's own form, tools answer "off"
            d_protocol, d_settings = protocol, {**env_settings, "tool_calls": tool_calls, "tools_off": True}
        else:
            raise ValueError(f"direct_form must be 'reference' or 'tools_off', not {direct_form!r}")
        d_trajs, d_records, d_roll = _one_run(tasks, policy, d_protocol, d_out, run="direct",
                                              env_settings=d_settings, **common)
        d_rows = group_table(tasks, d_records, benchmark, run="direct", n_boot=n_boot, ci=ci, seed=cfg.seed)
        rows += d_rows
        summary["direct"] = {"form": direct_form, "scores": _overall(d_rows, "direct"), "official": _official(d_records, benchmark),
                             "rollout": d_roll, "results": str(d_out / "results.json")}
    _write_table(rows, out, ci)
    summary["wall_s"] = round(time.perf_counter() - t0, 3)
    (out / "scores.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    work = out / ".work"
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()
    return summary


def _reward_summary(trajs: Sequence[Trajectory]) -> dict[str, Any]:
    """Mean reward and mean of each component over the episodes (components averaged where they applied)."""
    rewards = [t.reward for t in trajs if t.reward is not None]
    names = sorted({k for t in trajs for k in t.reward_components})
    comps = {}
    for n in names:
        vals = [t.reward_components[n] for t in trajs if n in t.reward_components]
        comps[n] = round(sum(vals) / len(vals), 4) if vals else None
    return {"mean": round(sum(rewards) / len(rewards), 4) if rewards else None, "n": len(rewards),
            "components": comps}


# --------------------------------------------------------------------------------------------------------------
# command-line helpers (the CLI in __main__.py adds these arguments and calls `eval_from_args`)
# --------------------------------------------------------------------------------------------------------------
# convenience flags: each is one RunConfig field (default None = the profile's value)
_CONFIG_FLAGS = {"max_turns": "max_turns", "image_budget": "image_budget", "batch_size": "eval_batch_size",
                 "max_new_tokens": "eval_max_new_tokens", "temperature": "eval_temperature",
                 "search_backend": "search_backend", "search_k": "search_k", "sandbox_timeout": "sandbox_timeout_s",
                 "quantization": "quantization", "seed": "seed"}


def add_eval_arguments(p: Any) -> None:
    """Arguments of `python -m arftlib eval` on an argparse (sub)parser."""
    p.add_argument("--benchmark", required=True, choices=list(BENCHMARKS))
    p.add_argument("--data", required=True, help="benchmark file or folder (a build folder for synth-*/micro-*)")
    p.add_argument("--model", required=True, help="hub id, local folder, 'tiny', or 'oracle' (gold chains)")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder to load on the model")
    p.add_argument("--protocol", default=None, choices=["tags", "chat"], help="default: the profile's")
    p.add_argument("--tool-calls", nargs="?", const="json", default=None, choices=["tags", "json"],
                   help="chat turns in a TRL tool-call form, as `train --mode agentic` trains them: tags (the paper's "
                        "actions through the tool loop) or json (Qwen tool calls, schemas in the prompt; the default "
                        "when the flag has no value)")
    p.add_argument("--out", required=True, help="output folder (results.json, scores.json, table.*, trajectories/)")
    p.add_argument("--profile", default="auto", help="run config the settings come from (default: auto)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any RunConfig field (repeatable), e.g. --set eval_max_new_tokens=1024")
    p.add_argument("--direct-baseline", action="store_true", help="also run the no-tool direct-answer baseline")
    p.add_argument("--direct-form", default=None, choices=["reference", "tools_off"],
                   help="the baseline's form: the reference's direct prompt, or the agent's own form with tools "
                        "switched off (default for models this workbench trained)")
    p.add_argument("--split", default=None, help="only tasks of this split (e.g. test)")
    p.add_argument("--limit", type=int, default=None, help="at most this many tasks")
    p.add_argument("--offset", type=int, default=0, help="skip this many tasks first")
    p.add_argument("--image-root", default=None, help="MAT image folder when not next to the JSON")
    p.add_argument("--sequential", action="store_true", help="one question at a time (as the reference)")
    p.add_argument("--search-corpus", default=None, help="local backend: JSONL corpus (default: the task's own "
                   "corpus for procedural search builds, else the shipped Wikipedia summaries)")
    p.add_argument("--search-url", default=None, help="retriever backend: server URL")
    p.add_argument("--tool-workers", type=int, default=8)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the confidence intervals")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("shortcuts for config fields (default: the profile's value)")
    g.add_argument("--max-turns", type=int, default=None)
    g.add_argument("--image-budget", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None, help="episodes generated together (eval_batch_size)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="tokens per turn (eval_max_new_tokens)")
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy (eval_temperature)")
    g.add_argument("--search-backend", default=None, choices=["local", "retriever", "serper", "duckduckgo"])
    g.add_argument("--search-k", type=int, default=None)
    g.add_argument("--sandbox-timeout", type=float, default=None, help="seconds per code run (sandbox_timeout_s)")
    g.add_argument("--quantization", default=None, choices=["4bit", "8bit"], help="load the policy quantised")
    g.add_argument("--seed", type=int, default=None)


def eval_from_args(args: Any) -> dict[str, Any]:
    """`run_eval` from parsed `add_eval_arguments` arguments."""
    from arftlib.config import get_config, parse_set_overrides

    overrides = parse_set_overrides(args.set)
    for flag, field in _CONFIG_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[field] = value
    cfg = get_config(args.profile, benchmark=args.benchmark, **overrides)
    search_options: dict[str, Any] = {}
    if args.search_corpus:
        search_options["corpus"] = args.search_corpus
    if args.search_url:
        search_options["url"] = args.search_url
    return run_eval(
        args.benchmark, args.data, args.model, args.protocol, args.out, cfg=cfg, adapter=args.adapter,
        direct_baseline=args.direct_baseline, direct_form=args.direct_form, split=args.split, limit=args.limit, offset=args.offset,
        image_root=args.image_root, sequential=args.sequential, tool_calls=args.tool_calls,
        search_options=search_options, tool_workers=args.tool_workers, n_boot=args.n_boot,
        progress=not args.no_progress,
    )
