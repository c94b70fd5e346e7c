"""Does agentic GRPO learn on the synth world? Live multi-turn episodes with real tools on the tiny model, measured
on held-out tasks (an earlier experiment; the micro world's learning check supersedes it).

`agentic_learning_demo()` (tiny-cpu, procedural synth-coding tasks):

1. Warm start, reported as such: a short supervised fine-tune (full fine-tuning) of the TRAIN tasks' first gold
   turn in the form agentic training samples it: `<think> … </think>` + a `diagnose` tool call, on exactly the
   prompt TRL renders (the chat prompt with the environment's tool schemas, `env.tool_functions()`).
2. "before": held-out episodes of the warm start through the evaluation loop in the same tool-call form
   (`rollout.run_episodes`, `AgentEnv(tool_calls=True)`, live sandbox), `samples_per_task` sampled episodes per
   task at the profile's temperature with torch seeded by `eval_seed`, each scored by the agentic rubric — the
   reward training optimises, through the same `Rubric.score_episode`.
3. GRPO in `agentic` mode (`train.train`: TRL `GRPOTrainer` with `environment_factory`, tool tokens masked), a
   fresh LoRA adapter on the warm start.
4. "after": the same held-out episodes, same seed, with the adapter.

Results go to `out_dir/metrics.json`. Left out: code and answer turns in the warm start, search tasks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["AGENTIC_DEMO_CONFIG", "agentic_learning_demo", "heldout_episode_reward", "tool_call_sft_dataset"]

# What the demo changes in the tiny-cpu profile, and why:
AGENTIC_DEMO_CONFIG = dict(
    max_turns=2,  # diagnose, then one more turn: short episodes (TRL: max_tool_calling_iterations = 1)
    max_completion_length=96,  # a gold diagnose tool-call turn is ~60-90 tiny tokens
    lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    lora_r=16, lora_alpha=32,  # LoRA on every language-model linear of the 64-wide tiny model
    learning_rate=1e-3,  # GRPO learning rate of the LoRA adapter
    per_device_train_batch_size=16, num_generations=8,  # 2 prompts × 8 episodes per step
    save_steps=10_000,  # no intermediate checkpoints
)


def tool_call_sft_dataset(tasks: Sequence[Any], processor: Any, image_size: int | None):
    """Rows `prompt` (the chat prompt as TRL renders it, tool schemas included, image placeholder in place),
    `completion` (the task's first gold turn as a tool call + `<|im_end|>`) and `image` (PIL)."""
    from datasets import Dataset

    from arftlib.env import task_to_row, tool_functions
    from arftlib.models import ensure_tool_chat_template
    from arftlib.turns import gold_tool_turns

    ensure_tool_chat_template(processor)
    tools = tool_functions()
    size = (int(image_size), int(image_size)) if image_size else None
    rows = []
    for task in tasks:
        row = task_to_row(task, "chat", image_size=size)
        text = processor.apply_chat_template(row["prompt"], tools=tools, tokenize=False, add_generation_prompt=True)
        rows.append({"prompt": text, "completion": gold_tool_turns(task)[0] + "<|im_end|>", "image": row["image"]})
    return Dataset.from_list(rows)


def heldout_episode_reward(model_dir: str, adapter: str | None, tasks: Sequence[Any], cfg: Any, *, seed: int,
                           samples_per_task: int, work_dir: str | os.PathLike) -> dict[str, Any]:
    """Mean agentic-rubric reward of sampled tool-call episodes on `tasks` (see the module docstring)."""
    from arftlib import rewards
    from arftlib.env import AgentEnv
    from arftlib.policies import HFPolicy
    from arftlib.rollout import run_episodes, summarize

    policy = HFPolicy.from_pretrained(
        model_dir, load_kwargs={"adapter": adapter, "torch_dtype": cfg.torch_dtype, "min_pixels": cfg.min_pixels,
                                "max_pixels": cfg.max_pixels},
        max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, seed=seed)
    reps = [t for t in tasks for _ in range(int(samples_per_task))]
    ids = [f"{t.id}-s{k}" for t in tasks for k in range(int(samples_per_task))]
    t0 = time.perf_counter()
    # the environment scores each episode when it closes, as in training (its last call-less turn not counted)
    env = AgentEnv.factory(**AgentEnv.settings_from_config(
        cfg, protocol="chat", tool_calls=True, work_dir=str(work_dir), rubric=rewards.agentic_rubric(tasks[0].kind)))
    trajs = run_episodes(reps, policy, env_factory=env, batch_size=len(reps), episode_ids=ids, progress=False)
    gen_s = time.perf_counter() - t0
    if any(t.reward is None for t in trajs):
        raise RuntimeError("an episode closed without a reward (the environment's rubric did not run)")
    names = sorted({k for t in trajs for k in t.reward_components})
    comps = {n: round(sum(t.reward_components[n] for t in trajs if n in t.reward_components)
                      / max(1, sum(n in t.reward_components for t in trajs)), 4) for n in names}
    return {"mean": sum(t.reward for t in trajs) / len(trajs), "components": comps, "n_episodes": len(trajs),
            "rollout": summarize(trajs), "seconds": round(gen_s, 2),
            "examples": [t.steps[0].model_text for t in trajs[:4] if t.steps]}


def agentic_learning_demo(out_dir: str | os.PathLike = "runs/tiny-cpu/agentic-learning-demo", *,
                          profile: str = "tiny-cpu", n_tasks: int = 200, sft_steps: int = 150,
                          sft_learning_rate: float = 3e-3, grpo_steps: int = 30, heldout_tasks: int = 24,
                          samples_per_task: int = 2, seed: int = 0, eval_seed: int = 1234,
                          data: str | os.PathLike | None = None, verify_build: bool = False,
                          warm_start: str | os.PathLike | None = None,
                          config_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Warm start → held-out reward ("before") → agentic GRPO → held-out reward ("after"); see the module
    docstring. `warm_start`: a model folder an earlier run's step 1 saved (`<out_dir>/warm_start/model`), reused
    instead of fine-tuning again (same data and settings assumed; recorded in the result). Returns `heldout_reward_before`, `heldout_reward_after`, `gain`, component means,
    `adapter_changed`, timings and the GRPO run summary; also written to `out_dir/metrics.json`."""
    from arftlib.models import model_path_for
    from arftlib.train import (load_training_processor, lora_snapshot, make_dataset, max_abs_diff, train,
                               write_json)
    from arftlib.train.sft import sft_warm_start
    from experiments.stepwise_learning import demo_setup

    t_start = time.perf_counter()
    t0 = time.perf_counter()
    out, cfg, over, train_tasks, test_tasks, source = demo_setup(
        out_dir, profile, AGENTIC_DEMO_CONFIG, config_overrides, n_tasks=n_tasks, seed=seed, data=data,
        verify_build=verify_build)
    test_tasks = test_tasks[:heldout_tasks]
    if not test_tasks:
        raise ValueError(f"no held-out (split 'test') tasks in {source}")
    processor = load_training_processor(model_path_for(cfg), cfg, "agentic")
    sft_ds = tool_call_sft_dataset(train_tasks, processor, cfg.image_size)
    build_s = time.perf_counter() - t0

    # 1. warm start (full fine-tuning of the tiny model on the diagnose tool call)
    if warm_start is not None:
        if not (Path(warm_start) / "config.json").is_file():
            raise FileNotFoundError(f"warm_start {warm_start}: no config.json (expected a saved model folder)")
        sft = {"model": str(warm_start), "reused": True}
    else:
        sft = sft_warm_start(cfg, sft_ds, out / "warm_start", max_steps=sft_steps, learning_rate=sft_learning_rate,
                             full=True)
    # 2. before
    before = heldout_episode_reward(sft["model"], None, test_tasks, cfg, seed=eval_seed,
                                    samples_per_task=samples_per_task, work_dir=out / "eval_tmp")
    # 3. agentic GRPO with a fresh LoRA adapter
    snap = lora_snapshot()
    t0 = time.perf_counter()
    run = train(cfg, "agentic", model=sft["model"], out_dir=out / "grpo", max_steps=grpo_steps,
                train_dataset=make_dataset(train_tasks, cfg, "agentic"), tasks=(train_tasks, test_tasks),
                callbacks=[snap])
    grpo_s = time.perf_counter() - t0
    # 4. after
    after = heldout_episode_reward(sft["model"], run["final_dir"], test_tasks, cfg, seed=eval_seed,
                                   samples_per_task=samples_per_task, work_dir=out / "eval_tmp")
    diff = max_abs_diff(snap.start, snap.end)
    result = {
        "task": "synth-coding, agentic episodes with live tools (tool-call chat), agentic rubric",
        "data": source, "profile": profile, "config_overrides": over,
        "n_train_tasks": len(train_tasks), "n_heldout_tasks": len(test_tasks), "samples_per_task": samples_per_task,
        "heldout_reward_before": before["mean"], "heldout_reward_after": after["mean"],
        "gain": after["mean"] - before["mean"],
        "components_before": before["components"], "components_after": after["components"],
        "rollout_before": before["rollout"], "rollout_after": after["rollout"],
        "adapter_changed": bool(diff > 0), "adapter_max_abs_diff": diff,
        "sft": sft, "build_s": round(build_s, 2), "grpo_s": round(grpo_s, 2),
        "eval_s": round(before["seconds"] + after["seconds"], 2), "grpo_steps": run["steps"],
        "grpo_s_per_step": run["s_per_step"], "total_s": round(time.perf_counter() - t_start, 2),
        "eval_seed": eval_seed, "seed": seed,
        "before_is": "the supervised warm start (first gold turn as a tool call); the gain is GRPO's",
        "examples_before": before["examples"], "examples_after": after["examples"],
        "train_reward_curve": [h.get("reward") for h in run["log_history"] if "reward" in h],
    }
    write_json(out / "metrics.json", result)
    return result
