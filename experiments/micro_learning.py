"""Does the policy learn to use its tools? The micro world's learning check: warm start → held-out F1 with live
tools ("before") → GRPO → the same held-out episodes again ("after").

`micro_learning(out_dir, kind="coding"|"search", method="agentic"|"stepwise"|"sft")`:

1. Data: a `micro-coding` / `micro-search` build (`data.build.build_dataset`, the profile's seed) split train / test.
2. Warm start (cold-start SFT, cached — `train.warmstart.warm_start`): gold steps of the TRAIN tasks in the run's
   format (every answer step; the tool steps of only a share of the tasks). Reported as supervised learning.
3. "before": the warm start on the held-out TEST tasks through the evaluation loop in the very form training
   uses (`eval` with `--protocol chat --tool-calls tags`: live sandbox / search, greedy), scored by the reference
   scorer (F1/EM) and the agentic rubric (reward per component); plus the direct-answer baseline (no tools).
4. Training from the warm start for `minutes` of wall clock (or `steps`): `agentic` = GRPO on live episodes
   (TRL's tool loop, `environment_factory`); `stepwise` = the paper's GRPO on single gold-prefixed steps (the
   step rows are prefixes of the same episodes); `sft` = more supervised steps on the full gold episodes. For
   micro-search every method trains on other worlds' train splits (`fresh_world_tasks`, `FRESH_WORLDS`): the warm
   start memorised its own world's facts, so most of its groups there agree (nothing for GRPO to learn from).
5. "after": the same held-out episodes, same seed and sampling, with what step 4 trained.

Everything lands in `out_dir` (metrics.json, the runs' trajectories, evaluation folders) and is returned. The CLI
`python -m arftlib compare` runs the three methods for the same wall clock and tabulates them with bootstrap CIs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["FRESH_WORLDS", "METHODS", "RESTORED_QUALITY", "answer_spread", "answer_step_check", "code_step_check",
           "compare_methods", "comparison_table", "default_recipe", "evaluate_policy", "fresh_world_tasks",
           "micro_learning", "micro_setup", "rl_training_tasks", "seeing_check"]

METHODS = ("agentic", "stepwise", "sft")
SEEING_STEPS = 150  # notebook 04's default seeing stage (bare-word clean answers) before the gold steps
SEEING_FILLER_WORDS = 60  # ... with 0-60 neutral words between image and question, so the reading does not depend
SEEING_COPIES = 3  # on one image-to-answer distance; each clean row this many times, each with its own filler
WARM_STEPS = 120  # micro-coding's gold-steps stage (micro-search keeps WarmStartRecipe's 150)
DIAGNOSIS_STEPS = True  # micro-coding: every training task's diagnosis row in the gold-steps stage (not only 15 %'s)
READING_STEPS = 300  # notebook 04's default reading stage for micro-search (answer steps, names re-drawn every row)
FRESH_WORLDS = 2  # micro-search: GRPO (and every method compared) trains on this many other worlds' train splits


def default_recipe(kind: str = "coding", seed: int = 0, seeing_steps: int | None = None) -> Any:
    """Notebook 04's warm start. micro-coding: a seeing stage of `SEEING_STEPS` bare-word clean answers, each row
    `SEEING_COPIES` times with 0-`SEEING_FILLER_WORDS` neutral words between image and question, then `WARM_STEPS`
    gold-steps steps (with every task's diagnosis row when `DIAGNOSIS_STEPS`). micro-search (its images have no
    clean version): a reading stage of `READING_STEPS` relabelled answer steps, then `WarmStartRecipe`'s 150. Both:
    15 % gold episodes. The comparison
    (`compare_methods`, `python -m arftlib compare`) and `micro_learning` without a recipe start from it, so their
    "before" is the warm start notebook 04 reports."""
    from arftlib.train.warmstart import WarmStartRecipe

    if kind == "search":
        return WarmStartRecipe(seeing_steps=0, reading_steps=READING_STEPS, seed=int(seed))
    steps = SEEING_STEPS if seeing_steps is None else int(seeing_steps)
    return WarmStartRecipe(steps=WARM_STEPS, seeing_steps=steps, seeing_filler_words=SEEING_FILLER_WORDS,
                           seeing_copies=SEEING_COPIES, diagnosis_steps=DIAGNOSIS_STEPS, seed=int(seed))


def micro_setup(out_dir: str | os.PathLike, *, kind: str = "coding", profile: str = "tiny-cpu", n_tasks: int | None = None,
                seed: int | None = None, data: str | os.PathLike | None = None,
                config_overrides: Mapping[str, Any] | None = None):
    """The run folder, the profile (with overrides), and the micro build split into train / held-out:
    `(out, cfg, train_tasks, heldout_tasks, data_dir)`."""
    from arftlib.config import get_config
    from arftlib.data.build import build_dataset, load_built

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = get_config(profile, benchmark=f"micro-{kind}", **dict(config_overrides or {}))
    if seed is not None:
        cfg = cfg.replace(seed=int(seed))
    n = int(n_tasks or (cfg.n_coding_tasks if kind == "coding" else cfg.n_search_tasks))
    bench = f"micro-{kind}"
    if data is None:
        data = out / "data" / bench
        if not (Path(data) / "tasks.jsonl").is_file():
            build_dataset(bench, n, cfg.seed, data, overwrite=True)
    tasks = load_built(data)
    train = [t for t in tasks if t.split != "test"]
    heldout = [t for t in tasks if t.split == "test"]
    if not train or not heldout:
        raise ValueError(f"{data}: a micro build needs train and test tasks (got {len(train)} / {len(heldout)})")
    return out, cfg, train, heldout, Path(data)


def evaluate_policy(cfg: Any, model: str, adapter: str | None, tasks: Sequence[Any], out: str | os.PathLike, *,
                    kind: str, direct_baseline: bool = False, n_boot: int = 1000,
                    protocol: str = "chat") -> dict[str, Any]:
    """Held-out evaluation in the training form (chat, the config's tool form), greedy, with the agentic rubric:
    `{"f1", "em", "f1_ci", "reward", "components", "tool_calls_per_episode", "by_degradation", "direct_f1", ...}`.
    `protocol="tags"`: in the paper's layout instead (history in one user message, the reference evaluation's),
    which a policy only knows when its warm start had `tags_rows`."""
    from arftlib.evaluate import run_eval
    from arftlib.rewards import agentic_rubric

    s = run_eval(f"micro-{kind}", "given", model, protocol, out, cfg=cfg, tasks=list(tasks), adapter=adapter,
                 tool_calls=cfg.tool_format if protocol == "chat" else False,
                 rubric=agentic_rubric(kind, cfg.agentic_weights),
                 direct_baseline=direct_baseline, n_boot=n_boot, progress=False)
    ref = s["agent"]["scores"]["reference"]
    roll = s["agent"]["rollout"]
    res = {"f1": ref["f1"], "em": ref["em"], "f1_ci": ref["f1_ci"], "n": ref["n"],
           "reward": s["agent"]["reward"]["mean"], "components": s["agent"]["reward"]["components"],
           "tool_calls_per_episode": round(roll["tool_calls"] / max(1, roll["episodes"]), 3),
           "answered": round(roll["answered"] / max(1, roll["episodes"]), 3),
           "turns_per_episode": round(roll["turns"] / max(1, roll["episodes"]), 3),
           "by_group": _groups(Path(out) / "table.csv", "agent"), "by_question": answer_spread(out), "dir": str(out)}
    if direct_baseline:
        d = s["direct"]["scores"]["reference"]
        res.update(direct_f1=d["f1"], direct_f1_ci=d["f1_ci"], direct_by_group=_groups(Path(out) / "table.csv",
                                                                                          "direct"))
    return res


def seeing_check(cfg: Any, model: str, adapter: str | None, tasks: Sequence[Any], out: str | os.PathLike, *,
                 kind: str = "coding") -> dict[str, Any] | None:
    """Can the policy SEE? The held-out questions asked on their clean images (`warmstart.clean_answer_task`; zoom
    tasks left out), answered in the training form, greedy: `{"f1", "n", "by_type": {type: {"n", "f1", "chance",
    "answers"}}}` where `answers` counts the distinct answers given. A policy at chance with one answer per type
    reads the question, not the image — then nothing downstream (tools, RL) can raise its F1. None for a world
    without clean images (micro-search)."""
    from arftlib.trajectories import read_trajectories
    from arftlib.train.warmstart import clean_answer_task

    clean = [c for c in (clean_answer_task(t) for t in tasks) if c is not None]
    if not clean:
        return None
    res = evaluate_policy(cfg, model, adapter, clean, out, kind=kind, n_boot=50)
    tally = _tally_by_type(read_trajectories(Path(out) / "trajectories", resolve_images=False))
    by_type = {k: {"n": r["n"], "f1": round(100.0 * r["f1"] / max(1, r["n"]), 2), "chance": r["chance"],
                   "answers": r["answers"]} for k, r in tally.items()}
    return {"f1": res["f1"], "n": res["n"], "by_type": by_type, "dir": str(out)}


def _tally_by_type(trajs: Sequence[Any], *, split_rotated: bool = False) -> dict[str, dict[str, Any]]:
    """Per question type (`/rotated` appended when `split_rotated` and a rotation was repaired), sorted: n,
    answered, correct (F1 = 1), f1 (the sum), answers (distinct ones, "" for none) and chance (100 / choices)."""
    rows: dict[str, dict[str, Any]] = {}
    for t in trajs:
        meta = t.task.metadata or {}
        rotated = split_rotated and any(str(d).startswith("rotation") for d in t.task.degradations)
        row = rows.setdefault(f"{meta.get('question_type', '?')}{'/rotated' if rotated else ''}",
                              {"n": 0, "answered": 0, "correct": 0, "f1": 0.0, "given": set(), "chance": None})
        f1 = float(t.metrics.get("f1") or 0.0)
        row["n"] += 1
        row["answered"] += bool(t.final_answer)
        row["correct"] += f1 >= 1.0
        row["f1"] += f1
        row["given"].add((t.final_answer or "").strip().lower())
        if meta.get("choices"):
            row["chance"] = round(100.0 / len(meta["choices"]), 1)
    for row in rows.values():
        row["answers"] = len(row.pop("given"))
    return dict(sorted(rows.items()))


def _policy_after_gold_prefix(cfg: Any, model: str, adapter: str | None, tasks: Sequence[Any], out: str | os.PathLike,
                              *, start_step: int, protocol: str, max_new_tokens: int) -> list[Any]:
    """Greedy episodes that begin after each task's gold turns before `start_step` (`AgentEnv.play_gold_prefix`:
    the gold tools run), the policy writing the rest; trajectories also written to `out/trajectories`."""
    from arftlib.env import make_env
    from arftlib.env.core import AgentEnv
    from arftlib.policies import load_policy_for_eval
    from arftlib.rollout import run_episodes

    settings = AgentEnv.settings_from_config(cfg, protocol=protocol,
                                             tool_calls=cfg.tool_format if protocol == "chat" else False)

    def after_gold_prefix() -> AgentEnv:
        env = make_env(**settings)

        def reset(task: Any = None, **kw: Any) -> None:  # reset, then the gold turns before `start_step`
            type(env).reset(env, task, **kw)
            env.play_gold_prefix(start_step)

        env.reset = reset
        return env

    policy = load_policy_for_eval(model, max_new_tokens=max_new_tokens, temperature=0.0, use_vllm=False,
                                  seed=cfg.seed, load_kwargs={"torch_dtype": cfg.torch_dtype,
                                                              "min_pixels": cfg.min_pixels,
                                                              "max_pixels": cfg.max_pixels, "adapter": adapter})
    return run_episodes(list(tasks), policy, protocol=protocol, batch_size=int(cfg.eval_batch_size),
                        env_factory=after_gold_prefix, writer=Path(out) / "trajectories", progress=False)


def answer_step_check(cfg: Any, model: str, adapter: str | None, tasks: Sequence[Any], out: str | os.PathLike, *,
                      protocol: str = "chat", question_types: Sequence[str] | None = ("color", "position"),
                      max_new_tokens: int = 32) -> dict[str, Any]:
    """Can the policy read the image at the ANSWER turn of an episode? Each task's gold steps before the answer
    (diagnosis, code — the code runs, so a rotation comes back exactly restored) are played through the
    environment, then the policy writes the answer turn alone, greedy. `{"n", "correct", "by_type": {type: {"n",
    "answered", "correct", "answers", "chance"}}, "dir"}`, types split "/rotated" when a rotation was repaired.
    Next to `seeing_check` (the same questions asked at once on the clean image) it tells eyes that work from eyes
    that work only where they were trained: measured on `seeing-grid` warm starts (README "After a repair"),
    position 82–95 % asked at once, 11–16 of 39 (chance 10) after the gold repair."""
    picked = [t for t in tasks if question_types is None
              or (t.metadata or {}).get("question_type") in set(question_types)]
    if not picked:
        raise ValueError(f"answer_step_check: no task of types {question_types} among {len(tasks)}")
    trajs = _policy_after_gold_prefix(cfg, model, adapter, picked, out, start_step=-1, protocol=protocol,
                                      max_new_tokens=max_new_tokens)
    by_type = {k: {f: r[f] for f in ("n", "answered", "correct", "chance", "answers")}
               for k, r in _tally_by_type(trajs, split_rotated=True).items()}
    return {"n": len(trajs), "correct": sum(r["correct"] for r in by_type.values()), "by_type": by_type,
            "dir": str(out)}


RESTORED_QUALITY = 0.5  # code_step_check: `restoration_score` quality from which a code output counts as restored


def code_step_check(cfg: Any, model: str, adapter: str | None, tasks: Sequence[Any], out: str | os.PathLike, *,
                    protocol: str = "chat", max_new_tokens: int | None = None) -> dict[str, Any]:
    """Can the policy's HANDS repair the image once it knows what is wrong? Every task whose gold chain has a code
    step gets its gold diagnosis played (the diagnosis turn and its tool), then the policy writes the rest of the
    episode, greedy: the code turn, then the answer. Per degradation (the task's, joined with "+"): `n`, `coded`
    (a code action was written), `ran` (it returned an image), `restored` (the last code image's
    `restoration_score` quality against the clean image ≥ `RESTORED_QUALITY`), `quality` (mean over n, 0 where
    nothing ran), `answered`, `correct` (F1 = 1). Next to `answer_step_check` (gold code, then the policy answers)
    it tells a policy whose code fails from one whose eyes fail after a good repair (README "Rollouts at temperature
    0.3": rollouts at 0.6 made GRPO unlearn working repairs, restored 29 → 11 of 56; at 0.3, 29 → 38)."""
    from arftlib.rewards.image import task_restoration_quality

    picked = [t for t in tasks if len(t.gold_chain) > 1 and t.gold_chain[1].get("action") == "code"]
    if not picked:
        raise ValueError(f"code_step_check: no task with a gold code step among {len(tasks)}")
    tokens = int(max_new_tokens or cfg.eval_max_new_tokens or cfg.max_completion_length)
    trajs = _policy_after_gold_prefix(cfg, model, adapter, picked, out, start_step=1, protocol=protocol,
                                      max_new_tokens=tokens)
    rows: dict[str, dict[str, Any]] = {}
    for t in trajs:
        task = t.task
        row = rows.setdefault("+".join(sorted(task.degradations)) or "none",
                              {"n": 0, "coded": 0, "ran": 0, "restored": 0, "quality": 0.0, "answered": 0,
                               "correct": 0})
        outputs = [s.observation for s in t.scored_steps if s.observation is not None and s.observation.tool == "code"]
        images = [o for o in outputs if o.is_evidence and o.image]
        quality = task_restoration_quality(task, images[-1].image) if images and task.clean_image else 0.0
        row["n"] += 1
        row["coded"] += bool(outputs)
        row["ran"] += bool(images)
        row["restored"] += quality >= RESTORED_QUALITY
        row["quality"] += quality
        row["answered"] += bool(t.final_answer)
        row["correct"] += float(t.metrics.get("f1") or 0.0) >= 1.0
    for row in rows.values():
        row["quality"] = round(row["quality"] / row["n"], 3)
    total = {f: sum(r[f] for r in rows.values()) for f in ("n", "coded", "ran", "restored", "answered", "correct")}
    return {**total, "by_degradation": dict(sorted(rows.items())), "dir": str(out)}


def answer_spread(eval_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Per question type (micro-coding `question_type`, micro-search `question_kind`) of an evaluation's episodes:
    n, answered, correct (F1 = 1), distinct answers, the most common answer and its share of the answers, and the
    score of always giving that answer. A type answered with one word whose score matches the type's F1 is the prior
    guessing, not the policy seeing (or reading): on micro-coding every rotated position question was answered
    "right", whatever the image."""
    import collections

    from arftlib.trajectories import read_trajectories

    groups: dict[str, list[Any]] = collections.defaultdict(list)
    for t in read_trajectories(Path(eval_dir) / "trajectories", resolve_images=False):
        meta = t.task.metadata if isinstance(t.task.metadata, Mapping) else {}
        groups[str(meta.get("question_type") or meta.get("question_kind") or "-")].append(t)
    rows = []
    for qtype, trajs in sorted(groups.items()):
        answers = [(t.final_answer or "").strip().lower() for t in trajs if t.final_answer]
        top, top_n = collections.Counter(answers).most_common(1)[0] if answers else ("", 0)
        rows.append({"question": qtype, "n": len(trajs), "answered": len(answers),
                     "correct": sum(float(t.metrics.get("f1") or 0.0) >= 1.0 for t in trajs),
                     "distinct answers": len(set(answers)), "most common answer": top,
                     "its share of answers": round(top_n / len(answers), 3) if answers else None,
                     "correct if always it": sum(top in [str(a).lower() for a in t.task.answers] for t in trajs)})
    return rows


def _groups(table_csv: Path, run: str) -> dict[str, dict[str, float]]:
    """`{"degradation=dark": {"n", "f1"}, …}` from an evaluation's table (reference scoring)."""
    import csv

    out: dict[str, dict[str, float]] = {}
    with open(table_csv, encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["run"] == run and r["variant"] == "reference" and r["group_by"] in ("degradation", "combination",
                                                                                     "hops", "split", "all"):
                out[f"{r['group_by']}={r['group']}"] = {"n": int(r["n"]), "f1": float(r["f1"])}
    return out


def micro_learning(out_dir: str | os.PathLike = "runs/tiny-cpu/micro-learning", *, kind: str = "coding",
                   method: str = "agentic", profile: str = "tiny-cpu", n_tasks: int | None = None,
                   heldout_tasks: int | None = None, seed: int | None = None, minutes: float | None = None,
                   steps: int | None = None, recipe: Any = None, data: str | os.PathLike | None = None,
                   config_overrides: Mapping[str, Any] | None = None, direct_baseline: bool = True,
                   n_boot: int = 1000, fresh_worlds: int | None = None) -> dict[str, Any]:
    """Warm start → before → train (`method`) → after (see the module docstring). Training stops after `minutes`
    of wall clock or `steps` optimizer steps, whichever comes first (at least one must be given). Returns the
    figures (also in `out_dir/metrics.json`). `fresh_worlds` (micro-search; default `FRESH_WORLDS`, 0 for coding): the
    method trains on the train splits of that many other worlds (`fresh_world_tasks`) instead of the warm start's
    own, whose facts the warm start memorised (on its own world GRPO saw 60–96 % zero-variance groups)."""
    from arftlib.models import model_path_for
    from arftlib.train import lora_snapshot, max_abs_diff, train, wall_clock_stop, write_json
    from arftlib.train.warmstart import warm_start

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if minutes is None and steps is None:
        raise ValueError("give the training budget: minutes= and/or steps=")
    t_start = time.perf_counter()
    out, cfg, train_tasks, test_tasks, data_dir = micro_setup(out_dir, kind=kind, profile=profile, n_tasks=n_tasks,
                                                              seed=seed, data=data, config_overrides=config_overrides)
    n_build = len(train_tasks) + len(test_tasks)
    if heldout_tasks:
        test_tasks = test_tasks[: int(heldout_tasks)]
    recipe = recipe or default_recipe(kind, cfg.seed)
    ws = warm_start(cfg, train_tasks, recipe, isolated=True)  # a child process: see warm_start's docstring
    seeing = seeing_check(cfg, ws["model"], ws["adapter"], test_tasks, out / "seeing_check", kind=kind)
    before = evaluate_policy(cfg, ws["model"], ws["adapter"], test_tasks, out / "eval_before", kind=kind,
                             direct_baseline=direct_baseline, n_boot=n_boot)

    snap = lora_snapshot() if cfg.finetune == "lora" else None
    callbacks = [c for c in (snap, wall_clock_stop(minutes) if minutes else None) if c is not None]
    max_steps = int(steps) if steps else 100_000
    rl_tasks, fresh_worlds = rl_training_tasks(kind, train_tasks, out / "data", n_build, cfg.seed, fresh_worlds)
    t0 = time.perf_counter()
    if method == "sft":
        from arftlib.train.warmstart import WarmStartRecipe as R

        more = R(steps=max_steps, learning_rate=recipe.learning_rate, batch_size=recipe.batch_size,
                 tool_episode_fraction=1.0, full=recipe.full, seed=recipe.seed + 1)  # every gold episode
        run_res = warm_start(cfg, rl_tasks, more, model=ws["model"], cache=False, out_dir=out / "sft_more",
                             callbacks=[wall_clock_stop(minutes)] if minutes else [])
        trained_model, trained_adapter = run_res["model"], run_res["adapter"]
        run = {"steps": run_res["steps"], "s_per_step": run_res["sft_seconds"] / max(1, run_res["steps"]),
               "log_history": [], "final_dir": run_res["model"]}
        diff = _weights_diff(ws["model"], trained_model)
        changed = bool(diff > 0)
    else:
        run = train(cfg, method, model=ws["model"], out_dir=out / method, max_steps=max_steps, kind=kind,
                    tasks=(rl_tasks, test_tasks), callbacks=callbacks)
        trained_model, trained_adapter = ws["model"], run["final_dir"]
        if cfg.finetune != "lora":
            trained_model, trained_adapter = run["final_dir"], None
        diff = max_abs_diff(snap.start, snap.end) if snap is not None else _weights_diff(ws["model"], trained_model)
        changed = bool(diff > 0)
    train_s = time.perf_counter() - t0
    after = evaluate_policy(cfg, trained_model, trained_adapter, test_tasks, out / "eval_after", kind=kind,
                            direct_baseline=direct_baseline, n_boot=n_boot)
    hist = run.get("log_history", [])
    result = {
        "kind": kind, "method": method, "profile": cfg.profile, "data": str(data_dir),
        "n_train_tasks": len(train_tasks), "n_heldout_tasks": len(test_tasks),
        "fresh_worlds": fresh_worlds, "n_rl_tasks": len(rl_tasks),
        "warm_start_dir": ws["model"], "warm_start": {k: v for k, v in ws.items() if k != "loss_curve"},
        "adapter_dir": trained_adapter, "trained_model_dir": trained_model,
        "heldout_f1_before": before["f1"], "heldout_f1_after": after["f1"],
        "heldout_f1_gain": round(after["f1"] - before["f1"], 2),
        "heldout_reward_before": before["reward"], "heldout_reward_after": after["reward"],
        "tool_calls_before": before["tool_calls_per_episode"], "tool_calls_after": after["tool_calls_per_episode"],
        "direct_f1_before": before.get("direct_f1"), "direct_f1_after": after.get("direct_f1"),
        "warm_start_seeing": seeing, "before": before, "after": after, "adapter_changed": changed, "adapter_max_abs_diff": diff,
        "train_steps": run["steps"], "train_s": round(train_s, 1), "s_per_step": run.get("s_per_step"),
        "minutes_budget": minutes, "total_s": round(time.perf_counter() - t_start, 1),
        "train_curve": [{k: h.get(k) for k in ("step", "reward", "episode/tool_calls", "episode/turns",
                                                "episode/answered", "frac_reward_zero_std")}
                        for h in hist if "reward" in h],
        "tool_collapse_warnings": run.get("tool_collapse_warnings", []),
        "before_is": "the supervised warm start (gold steps); the gain is the training method's",
        "config": cfg.to_dict(),
    }
    write_json(out / "metrics.json", result)
    return result


def rl_training_tasks(kind: str, own: list[Any], data_root: str | os.PathLike, n_tasks: int, seed: int,
                      worlds: int | None = None) -> tuple[list[Any], int]:
    """What a training method trains on, and how many other worlds that is: `own` (the warm start's training tasks)
    when `worlds` is 0, else `fresh_world_tasks`. `worlds=None`: `FRESH_WORLDS` for micro-search, 0 for coding."""
    if worlds is None:
        worlds = FRESH_WORLDS if kind == "search" else 0
    if not worlds:
        return own, 0
    return fresh_world_tasks(data_root, kind, n_tasks, seed, worlds), int(worlds)


def fresh_world_tasks(data_root: str | os.PathLike, kind: str, n_tasks: int, seed: int, worlds: int) -> list[Any]:
    """The train splits of `worlds` other micro-search builds (seeds `seed + 1000 + i`): the same societies, towns
    and questions with other facts, so a fact memorised from the warm start's world does not answer them — only
    reading the hits does. Built under `data_root` (cached there). micro-search only: a micro-coding world has no
    facts to memorise."""
    from arftlib.data.build import build_dataset, load_built

    if kind != "search":
        raise ValueError("fresh worlds are a micro-search setting (other facts); micro-coding has none")
    out: list[Any] = []
    for i in range(int(worlds)):
        s = int(seed) + 1000 + i
        folder = Path(data_root) / f"micro-search-world-{s}"
        if not (folder / "tasks.jsonl").is_file():
            build_dataset("micro-search", int(n_tasks), s, folder, overwrite=True)
        out.extend(dataclasses.replace(t, id=f"w{s}-{t.id}") for t in load_built(folder) if t.split != "test")
    return out


def _weights_diff(a: str, b: str) -> float:
    """Largest absolute difference between two saved full models' weights."""
    from safetensors.torch import load_file

    wa = load_file(str(Path(a) / "model.safetensors"))
    wb = load_file(str(Path(b) / "model.safetensors"))
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if k in wb)


def compare_methods(out_dir: str | os.PathLike, *, kind: str = "coding", minutes: float | None = 10.0,
                    methods: Sequence[str] = METHODS, **kwargs: Any) -> dict[str, Any]:
    """Every method from the same warm start for the same wall clock, evaluated the same way; writes
    `comparison.json` and `comparison.md` (F1 with bootstrap CIs, reward, tool calls per episode)."""
    out = Path(out_dir)
    for m in methods:
        micro_learning(out / m, kind=kind, method=m, minutes=minutes, **kwargs)
    return comparison_table(out, methods)


def comparison_table(out_dir: str | os.PathLike, methods: Sequence[str] = METHODS) -> dict[str, Any]:
    """The comparison of the methods' runs under `out_dir/<method>/metrics.json` (written by `micro_learning`):
    `comparison.json` / `comparison.md` next to them, and the same as a dict."""
    out = Path(out_dir)
    rows = []
    for m in methods:
        r = json.loads((out / m / "metrics.json").read_text(encoding="utf-8"))
        rows.append({"method": m, "f1_before": r["heldout_f1_before"], "f1_after": r["heldout_f1_after"],
                     "f1_after_ci": r["after"]["f1_ci"], "gain": r["heldout_f1_gain"],
                     "reward_after": r["heldout_reward_after"], "tool_calls_after": r["tool_calls_after"],
                     "direct_f1_after": r["direct_f1_after"], "steps": r["train_steps"], "train_s": r["train_s"],
                     "minutes": r["minutes_budget"], "warm_start_dir": r["warm_start_dir"]})
    if len({r["warm_start_dir"] for r in rows}) != 1:
        raise ValueError(f"{out}: the methods did not start from the same warm start: "
                         f"{sorted({r['warm_start_dir'] for r in rows})}")
    best = max(rows, key=lambda r: r["f1_after"])
    table = ["| method | F1 before | F1 after [95% CI] | gain | reward after | tool calls/episode | tools-off F1 | "
             "steps | train s |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lo, hi = r["f1_after_ci"]
        table.append(f"| {r['method']} | {r['f1_before']:.2f} | {r['f1_after']:.2f} [{lo:.2f}, {hi:.2f}] | "
                     f"{r['gain']:+.2f} | {r['reward_after']:.3f} | {r['tool_calls_after']:.2f} | "
                     f"{(r['direct_f1_after'] or 0):.2f} | {r['steps']} | {r['train_s']:.0f} |")
    res = {"kind": json.loads((out / methods[0] / "metrics.json").read_text(encoding="utf-8"))["kind"],
           "minutes": rows[0]["minutes"], "rows": rows, "best": best["method"], "table_md": "\n".join(table)}
    (out / "comparison.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    (out / "comparison.md").write_text("\n".join(table) + "\n", encoding="utf-8")
    return res
