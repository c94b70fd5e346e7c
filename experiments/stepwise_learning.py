"""Does step-wise GRPO learn? The paper's protocol on the diagnosis step of procedural synth-coding tasks.

`learning_demo()` (tiny-cpu, `LEARNING_DEMO_CONFIG` applied):

1. Warm start (reported as such): a short supervised fine-tune of the random tiny model on the TRAIN tasks' gold
   steps (`train.sft.sft_warm_start`, full fine-tuning) → checkpoint S.
2. "before": held-out reward of S — the paper's rubric on the TEST tasks' step-wise rows, `samples_per_row`
   samples at the profile's temperature, torch seeded with `eval_seed`, scored through the same TRL adapter
   training uses (`rewards.TRLRewards`).
3. GRPO (`train.train`, stepwise mode, `grpo_steps`, a fresh LoRA adapter on S).
4. "after": held-out reward of S + adapter, same rows, same seed, same rubric, same sampling.

Run: `python -c "from experiments.stepwise_learning import learning_demo; print(learning_demo())"`; the short CI
version is `LEARNING_DEMO_SHORT` (tests/test_train.py). Results go to `out_dir/metrics.json`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LEARNING_DEMO_CONFIG", "LEARNING_DEMO_FULL", "LEARNING_DEMO_SHORT", "demo_setup", "heldout_reward",
           "learning_demo"]

# Full (the defaults of `learning_demo`) and CI's shorter version (direction with a margin).
LEARNING_DEMO_FULL = dict(n_tasks=300, sft_steps=225, grpo_steps=60, heldout_rows=32, samples_per_row=4)
LEARNING_DEMO_SHORT = dict(n_tasks=200, sft_steps=180, grpo_steps=40, heldout_rows=32, samples_per_row=4,
                           verify_build=False)
# What the demo changes in the tiny-cpu profile, and why:
LEARNING_DEMO_CONFIG = dict(
    max_completion_length=80,  # gold diagnosis steps are 34-69 tokens with the tiny tokenizer (= the profile)
    lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    lora_r=16, lora_alpha=32,  # LoRA on every language-model linear of the 64-wide tiny model
    learning_rate=1e-3,  # GRPO learning rate of the LoRA adapter
    per_device_train_batch_size=16, num_generations=8,  # 2 prompts × 8 samples per step
    save_steps=10_000,  # no intermediate checkpoints
)


def demo_setup(out_dir: str | os.PathLike, profile: str, demo_config: Mapping[str, Any],
               config_overrides: Mapping[str, Any] | None, *, n_tasks: int, seed: int,
               data: str | os.PathLike | None, verify_build: bool, benchmark: str | None = None):
    """The run folder, the profile with the demo's settings (then the caller's overrides) applied, and the
    procedural coding tasks split into train / held-out: `(out, cfg, overrides, train, heldout, source)`."""
    from arftlib.config import get_config
    from arftlib.train import load_task_splits

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    over = {**demo_config, **dict(config_overrides or {})}
    cfg = get_config(profile, seed=seed, n_coding_tasks=n_tasks, **over)
    train_tasks, heldout_tasks, source = load_task_splits(data, cfg, "coding", build_dir=out / "data",
                                                          verify=verify_build, benchmark=benchmark)
    return out, cfg, over, train_tasks, heldout_tasks, source


def heldout_reward(model: Any, processor: Any, dataset: Any, rubric: Any, *, seed: int = 0, samples_per_row: int = 1,
                   max_new_tokens: int = 48, temperature: float = 1.0, batch_size: int = 16) -> dict[str, Any]:
    """Mean rubric reward of `model` on step-wise rows `dataset`: `samples_per_row` sampled completions per row,
    torch seeded by `seed` (same seed → same sampling stream for a before/after comparison), turned into
    Trajectories and scored exactly as TRL's reward calls are (`rewards.TRLRewards`)."""
    from trl.data_utils import prepare_multimodal_messages

    from arftlib.policies import HFPolicy
    from arftlib.rewards import TRLRewards

    rows = [dict(dataset[i]) for i in range(len(dataset))] * int(samples_per_row)
    was_training = model.training
    model.eval()
    policy = HFPolicy(model, processor, max_new_tokens=max_new_tokens, temperature=temperature,
                      max_batch_size=batch_size, seed=seed)
    batch = [prepare_multimodal_messages([dict(m) for m in r["prompt"]], images=[r["image"]] if r.get("image")
                                         is not None else []) for r in rows]
    t0 = time.perf_counter()
    texts = [g.text for g in policy.generate(batch)]
    gen_s = time.perf_counter() - t0
    if was_training:
        model.train()
    adapter = TRLRewards(rubric)
    scores = adapter.batch([[{"role": "assistant", "content": t}] for t in texts], None,
                           task=[r["task"] for r in rows], step_index=[r["step_index"] for r in rows])
    totals = [s["total"] for s in scores if s["total"] is not None]
    comps = {}
    for name in rubric.names:
        vals = [s[name] for s in scores if s[name] is not None]
        comps[name] = sum(vals) / len(vals) if vals else float("nan")
    return {"mean": sum(totals) / len(totals) if totals else float("nan"), "components": comps, "n": len(scores),
            "texts": texts, "generate_s": round(gen_s, 3), "seed": seed, "samples_per_row": samples_per_row}


def learning_demo(out_dir: str | os.PathLike = "runs/tiny-cpu/learning-demo", *, profile: str = "tiny-cpu",
                  n_tasks: int = 300, step_types: Sequence[str] = ("pre_problem",), sft_steps: int = 225,
                  sft_learning_rate: float = 3e-3, grpo_steps: int = 60, heldout_rows: int = 32,
                  samples_per_row: int = 4, seed: int = 0, eval_seed: int = 1234,
                  data: str | os.PathLike | None = None, verify_build: bool = True,
                  config_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Warm start → held-out reward ("before") → step-wise GRPO → held-out reward ("after"); see the module
    docstring. Returns the figures (also in `out_dir/metrics.json`)."""
    from arftlib.models import load_policy
    from arftlib.train import lora_snapshot, make_dataset, max_abs_diff, rubric_for, train, write_json
    from arftlib.train.sft import sft_warm_start

    t_start = time.perf_counter()
    t0 = time.perf_counter()
    out, cfg, over, train_tasks, heldout_tasks, source = demo_setup(
        out_dir, profile, LEARNING_DEMO_CONFIG, config_overrides, n_tasks=n_tasks, seed=seed, data=data,
        verify_build=verify_build)
    keep = set(step_types)
    train_ds = make_dataset(train_tasks, cfg, "stepwise").filter(lambda r: r["step_type"] in keep)
    test_ds = make_dataset(heldout_tasks, cfg, "stepwise", shuffle=False).filter(lambda r: r["step_type"] in keep)
    if len(test_ds) == 0:
        raise ValueError(f"no held-out rows of step types {sorted(keep)} in {source}")
    test_ds = test_ds.select(range(min(heldout_rows, len(test_ds))))
    build_s = time.perf_counter() - t0
    rubric = rubric_for("stepwise", "coding", "paper", train_ds)

    def evaluate(model_dir: str, adapter: str | None) -> dict:
        m, proc = load_policy(model_dir, adapter=adapter, torch_dtype=cfg.torch_dtype, min_pixels=cfg.min_pixels,
                              max_pixels=cfg.max_pixels)
        return heldout_reward(m, proc, test_ds, rubric, seed=eval_seed, samples_per_row=samples_per_row,
                              max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature)

    sft = sft_warm_start(cfg, train_ds, out / "warm_start", max_steps=sft_steps, learning_rate=sft_learning_rate,
                         full=True)
    t0 = time.perf_counter()
    before = evaluate(sft["model"], None)
    eval_s = time.perf_counter() - t0
    snap = lora_snapshot()
    t0 = time.perf_counter()
    run = train(cfg, "stepwise", model=sft["model"], out_dir=out / "grpo", max_steps=grpo_steps,
                train_dataset=train_ds, tasks=(train_tasks, heldout_tasks), callbacks=[snap], rubric=rubric)
    grpo_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    after = evaluate(sft["model"], run["final_dir"])
    eval_s += time.perf_counter() - t0
    diff = max_abs_diff(snap.start, snap.end)
    result = {
        "task": f"synth-coding step-wise {sorted(keep)} (paper rubric: {', '.join(rubric.names)})",
        "data": source, "profile": profile, "config_overrides": over,
        "n_train_rows": len(train_ds), "n_heldout_rows": len(test_ds), "samples_per_row": samples_per_row,
        "temperature": cfg.temperature,
        "heldout_reward_before": before["mean"], "heldout_reward_after": after["mean"],
        "gain": after["mean"] - before["mean"],
        "components_before": before["components"], "components_after": after["components"],
        "adapter_changed": bool(diff > 0), "adapter_max_abs_diff": diff, "n_adapter_tensors": len(snap.start),
        "sft": dict(sft), "sft_s": sft["seconds"], "grpo_s": round(grpo_s, 2), "eval_s": round(eval_s, 2),
        "build_s": round(build_s, 2), "run_s": round(sft["seconds"] + grpo_s + eval_s, 2),
        "grpo_steps": run["steps"], "grpo_s_per_step": run["s_per_step"],
        "total_s": round(time.perf_counter() - t_start, 2), "eval_seed": eval_seed, "seed": seed,
        "before_is": "the supervised warm start (gold steps, TRL SFTTrainer); the gain is GRPO's",
        "examples_before": before["texts"][:4], "examples_after": after["texts"][:4],
        "grpo_run": {k: v for k, v in run.items() if k != "log_history"},
        "train_reward_curve": [h.get("reward") for h in run["log_history"] if "reward" in h],
    }
    write_json(out / "metrics.json", result)
    return result
