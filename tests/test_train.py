"""arftlib.train: GRPO on TRL's GRPOTrainer with the tiny model on CPU.

What is checked
* configuration: profiles → GRPOConfig, shipped DeepSpeed/accelerate configs, the CLI arguments;
* stepwise mode: a short run writes every step's rollouts (reward per component, advantage as TRL computed
  it — re-derived here from the logged rewards with TRL's group formula), TensorBoard events, checkpoints;
* agentic mode: one real rollout with a tool call (the first turn is scripted to call `run_code`; the tool
  runs in the sandbox; the rest is sampled) — the loss mask is 0 on exactly the tool turn (its image tokens
  included) and 1 on every token the policy sampled, and the tool image reaches the forward pass;
* resume: a run that crashes after step 3 (checkpoint at 2) and is resumed with `--resume` has trajectory
  steps exactly 1..4, once each;
* QLoRA (4-bit language model, vision tower unquantised) and full fine-tuning run a step;
* learning: a short warm-start + GRPO run raises the held-out reward (direction with a margin). The full
  ≥ 0.15 check (`learning_demo`, ~10 min) runs with ARFT_LEARNING_FULL=1.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

pytest.importorskip("trl")

from arftlib import train as T  # noqa: E402
from arftlib.config import get_config  # noqa: E402
from arftlib.paths import REPO_ROOT  # noqa: E402

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture(scope="module")
def coding_data(tmp_path_factory):
    """A small built procedural coding benchmark shared by the tests (train and test splits)."""
    from arftlib.data.build import build_dataset

    out = tmp_path_factory.mktemp("coding-data")
    build_dataset("coding", 12, 0, out)
    return out


def _tiny(**over):
    base = dict(max_steps=2, save_steps=1000, per_device_train_batch_size=8, num_generations=4)
    base.update(over)
    return get_config("tiny-cpu", **base)


def _records(run_dir):
    from arftlib.trajectories import read_trajectories

    return read_trajectories(Path(run_dir) / T.TRAJECTORY_DIR)


# ------------------------------------------------------------------------------------------------ configuration
def test_grpo_config_from_profiles():
    cfg = get_config("tiny-cpu")
    args = T.grpo_config(cfg, "stepwise", "/tmp/x", suppress_ids=[5, 6])
    assert args.num_generations == cfg.num_generations and args.per_device_train_batch_size == 8
    assert args.scale_rewards == cfg.scale_rewards and args.loss_type == cfg.loss_type
    assert args.bf16 is False and args.gradient_checkpointing is False and args.use_cpu is True
    assert args.generation_kwargs == {"suppress_tokens": [5, 6]}
    assert args.log_completions is False
    agent = T.grpo_config(cfg, "agentic", "/tmp/x")
    assert agent.max_tool_calling_iterations == cfg.max_turns - 1
    micro = get_config("tiny-cpu", benchmark="micro-coding")  # one turn samples what evaluation lets it
    assert micro.turn_max_new_tokens == micro.eval_max_new_tokens
    assert T.grpo_config(micro, "agentic", "/tmp/x").generation_kwargs == {"max_new_tokens": micro.turn_max_new_tokens}
    with pytest.raises(ValueError, match="turn_max_new_tokens"):
        T.grpo_config(cfg.replace(turn_max_new_tokens=0), "agentic", "/tmp/x")
    paper = get_config("paper-8gpu")
    assert Path(T.deepspeed_config_path(paper)).resolve() == (REPO_ROOT / "configs" / "zero3.json").resolve()
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ImportError, match="deepspeed"):
            T.grpo_config(paper, "stepwise", "/tmp/x")
    else:  # pragma: no cover - GPU machines
        pargs = T.grpo_config(paper, "stepwise", "/tmp/x")
        assert pargs.beta == 0.04 and pargs.num_generations == 8 and pargs.deepspeed
    big = T.grpo_config(get_config("qwen2.5-vl-3b-qlora-24gb"), "stepwise", "/tmp/x")
    assert big.num_generations == 8 and big.activation_checkpointing is True
    # vLLM asked for but absent (or no CUDA): a clear error, never a silent fallback
    with pytest.raises((ImportError, RuntimeError), match="vLLM|vllm"):
        T.grpo_config(cfg.replace(use_vllm=True), "stepwise", "/tmp/x")


def test_shipped_distributed_configs():
    z3 = json.loads((REPO_ROOT / "configs" / "zero3.json").read_text())
    z2 = json.loads((REPO_ROOT / "configs" / "zero2.json").read_text())
    assert z3["zero_optimization"]["stage"] == 3 and z2["zero_optimization"]["stage"] == 2
    for name in ("accelerate_8gpu.yaml", "accelerate_zero3.yaml", "accelerate_zero2.yaml"):
        text = (REPO_ROOT / "configs" / name).read_text()
        assert "num_processes: 8" in text
    assert "configs/zero3.json" in (REPO_ROOT / "configs" / "accelerate_zero3.yaml").read_text()


def test_cli_arguments():
    import argparse

    from arftlib.train.cli import add_train_arguments

    p = argparse.ArgumentParser()
    add_train_arguments(p)
    a = p.parse_args(["--profile", "tiny-cpu", "--mode", "agentic", "--data", "D", "--model", "M", "--resume",
                      "--out", "O", "--max-steps", "3", "--set", "learning_rate=1e-4"])
    assert (a.profile, a.mode, a.data, a.model, a.resume, a.out, a.max_steps) == (
        "tiny-cpu", "agentic", "D", "M", True, "O", 3)
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "multi"])


def test_truncate_trajectories_drops_late_steps_and_partial_line(tmp_path):
    from arftlib.trajectories import TrajectoryWriter
    from arftlib.types import Task, Trajectory

    with TrajectoryWriter(tmp_path) as w:
        for step in (1, 2, 3):
            for i in range(2):
                w.write(Trajectory(task=Task(id="t", question="q", images=[], answers=["a"], kind="coding"),
                                   episode_id=f"s{step}-{i}", training_step=step))
    with open(tmp_path / "trajectories.jsonl", "a") as fh:
        fh.write('{"task": {"id": "t"')  # a writer killed mid-line
    counts = T.truncate_trajectories(tmp_path, 2)
    assert counts == {"kept": 4, "dropped": 2, "partial": 1}
    assert sorted({t.training_step for t in _records_dir(tmp_path)}) == [1, 2]


def _records_dir(d):
    from arftlib.trajectories import read_trajectories

    return read_trajectories(d)


# ------------------------------------------------------------------------------------------------ stepwise
def test_stepwise_run_logs_rollouts_with_trl_advantages(coding_data, tmp_path):
    cfg = _tiny(max_steps=2)
    summary = T.train(cfg, "stepwise", data=coding_data, out_dir=tmp_path)
    assert summary["steps"] == 2 and summary["s_per_step"] > 0 and summary["peak_rss_mb"] > 0
    names = summary["reward_components"]
    assert names, "the rubric has named components"
    trajs = _records(tmp_path)
    per_step = Counter(t.training_step for t in trajs)
    assert per_step == {1: 8, 2: 8}  # 2 prompts × 4 generations per step, every step logged once
    weights = dict(zip(names, summary["reward_weights"]))
    groups = defaultdict(list)
    for t in trajs:
        # the components that apply to the row's step type (the others are None: TRL leaves them out)
        assert t.reward_components and set(t.reward_components) <= set(names)
        assert "paper_format" in t.reward_components
        assert t.steps and t.steps[0].action.kind in ("search", "code", "problem", "answer", "invalid")
        assert t.start_step is not None  # a step-wise sample: the task (from the row's `task` column) and its step
        assert t.task.gold_chain[t.start_step]["action"] in ("problem", "code", "answer")
        total = sum(weights[k] * v for k, v in t.reward_components.items())
        assert math.isclose(t.reward, total, abs_tol=1e-6)
        groups[t.group_id].append(t)
    # advantages are TRL's (scale_rewards="group"): (r - group mean) / (unbiased group std + 1e-4)
    for g in groups.values():
        assert len(g) == cfg.num_generations
        r = [t.reward for t in g]
        mean = sum(r) / len(r)
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))
        for t in g:
            assert math.isclose(t.advantage, (t.reward - mean) / (std + 1e-4), rel_tol=1e-4, abs_tol=1e-5)
    assert list((tmp_path / "tb").rglob("events.out.tfevents*")), "TensorBoard events written"
    assert (tmp_path / "final" / "adapter_config.json").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 2


# ------------------------------------------------------------------------------------------------ agentic
@pytest.mark.parametrize("form", ["tags", "json"])
def test_agentic_tool_tokens_are_masked_exactly(coding_data, tmp_path, form):
    """One real rollout: the first turn of completion 0 is scripted to run code — as the paper's `<code>` tag (the
    "tags" tool form) or a `run_code` JSON call — (the sandbox runs it and returns the rotated image as an image);
    everything else is sampled by the tiny policy."""
    cfg = _tiny(max_steps=1, max_completion_length=160, tool_format=form)
    b = T.build_trainer(cfg, "agentic", data=coding_data, out_dir=tmp_path)
    tr, proc = b.trainer, b.processor
    tok = proc.tokenizer
    # the tools TRL offers are the environment's of this form, the ones evaluation uses with --tool-calls FORM
    from arftlib.env import make_env, tool_functions

    env = make_env(protocol="chat", tool_calls=form)
    assert [f.__name__ for f in next(iter(tr._env_tools.values()))] == [f.__name__ for f in tool_functions(env)]
    code = ("import cv2\nimg = cv2.imread('path_to_input_image.jpg')\n"
            "cv2.imwrite('path_to_output_image.jpg', cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE))")
    if form == "json":
        call = "<tool_call>\n" + json.dumps({"name": "run_code", "arguments": {"code": code}}) + "\n</tool_call>"
    else:
        call = f"<code>\n```python\n{code}\n```\n</code>"
    forced = tok.encode(f"<think> the image is rotated </think>\n{call}",
                        add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    original = tr._generate_single_turn
    calls = {"n": 0}

    def scripted_first_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        ids, logprobs = original(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        calls["n"] += 1
        if calls["n"] == 1:
            ids[0] = list(forced)
        return ids, logprobs

    tr._generate_single_turn = scripted_first_turn
    tr.arft_keep_last_batch = True
    tr.train()
    b.traj_log.close()
    out = tr.arft_last_batch["output"]
    im_pad = tok.convert_tokens_to_ids("<|image_pad|>")

    n_valid = int(out["completion_mask"][0].sum())
    ids = out["completion_ids"][0][:n_valid].tolist()
    mask = out["tool_mask"][0][:n_valid].tolist()
    F = len(forced)
    assert ids[:F] == forced and all(m == 1 for m in mask[:F])  # the sampled tool-call turn is trained on
    zeros = [i for i, m in enumerate(mask) if m == 0]
    assert zeros, "the tool turn is masked"
    start, end = zeros[0], zeros[-1] + 1
    assert zeros == list(range(start, end)) and start == F  # one contiguous span, right after the call turn
    span = tok.decode(ids[start:end], skip_special_tokens=False)
    assert span.startswith("\n<|im_start|>user\n<tool_response>\n<|vision_start|>")
    assert span.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert "The code ran." in span
    # every image token of the completion is inside the masked span, and there are exactly as many as the
    # tool image has visual tokens
    pads = [i for i, t in enumerate(ids) if t == im_pad]
    assert pads and all(start <= i < end for i in pads)
    traj = [t for t in _records(tmp_path) if t.episode_id.endswith("-00000")][0]
    tool_img = traj.steps[0].observation.image
    assert traj.steps[0].action.kind == "code" and Path(tool_img).is_file()
    from PIL import Image

    grid = proc.image_processor(images=[Image.open(tool_img).convert("RGB")], return_tensors="pt")["image_grid_thw"]
    merge = proc.image_processor.merge_size ** 2
    assert len(pads) == int(grid.prod()) // merge
    assert all(m == 1 for m in mask[end:]) and im_pad not in ids[end:]  # the post-tool turn is sampled
    # the other rollouts made no tool call: nothing of theirs is masked
    for i in range(1, out["completion_ids"].shape[0]):
        n = int(out["completion_mask"][i].sum())
        if im_pad not in out["completion_ids"][i][:n].tolist():
            assert int(out["tool_mask"][i][:n].min()) == 1
    # the tool image reaches the forward pass: input image + tool image for rollout 0, grids for all images
    assert out["num_images"][0] == 2
    assert out["image_grid_thw"].shape[0] == sum(out["num_images"])
    # the logged trajectory: the whole turn, the tool result, reward per component and TRL's advantage
    assert "<think>" in traj.steps[0].model_text and traj.steps[0].observation.kind == "image"
    assert traj.metrics["masked_tool_tokens"] == end - start
    assert traj.advantage is not None and set(traj.reward_components) <= set(b.rewards.names)
    assert "format" in traj.reward_components and "executed_code" in traj.reward_components


# ------------------------------------------------------------------------------------------------ resume
_CRASH = """
import sys
from transformers import TrainerCallback
from arftlib import train as T
from arftlib.config import get_config


class SimulatedCrash(RuntimeError):
    pass


class StopAfterStep3(TrainerCallback):  # a run killed after step 3, before that step could be checkpointed
    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= 3:
            raise SimulatedCrash(f"simulated crash after step {state.global_step}")


cfg = get_config("tiny-cpu", max_steps=4, save_steps=2, per_device_train_batch_size=8, num_generations=4)
try:
    T.train(cfg, "stepwise", data=sys.argv[1], out_dir=sys.argv[2], callbacks=[StopAfterStep3()])
except SimulatedCrash:
    sys.exit(3)
"""


def test_resume_continues_without_losing_or_duplicating_trajectories(coding_data, tmp_path):
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", _CRASH, str(coding_data), str(run)], env=env, cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 3, p.stderr[-3000:]
    assert (run / "checkpoint-2").is_dir() and not (run / "checkpoint-4").exists()
    assert sorted(Counter(t.training_step for t in _records(run))) == [1, 2, 3]  # step 3 logged, not saved
    p = subprocess.run([sys.executable, "-m", "arftlib.train", "--profile", "tiny-cpu", "--mode", "stepwise",
                        "--data", str(coding_data), "--out", str(run), "--resume", "--max-steps", "4",
                        "--set", "save_steps=2"], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("checkpoint-2")
    assert metrics["trajectories_truncated"]["dropped"] == 8  # step 3's rollouts, regenerated after resume
    trajs = _records(run)
    assert Counter(t.training_step for t in trajs) == {1: 8, 2: 8, 3: 8, 4: 8}
    assert len({t.episode_id for t in trajs}) == len(trajs) == 32
    # a fresh run into the same folder (no --resume) leaves none of the earlier run's checkpoints or records
    p = subprocess.run([sys.executable, "-m", "arftlib.train", "--profile", "tiny-cpu", "--mode", "stepwise",
                        "--data", str(coding_data), "--out", str(run), "--max-steps", "2", "--set", "save_steps=2"],
                       env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "removes the earlier run's checkpoint-2, checkpoint-4, trajectories" in p.stderr
    assert sorted(d.name for d in run.glob("checkpoint-*")) == ["checkpoint-2"]
    assert Counter(t.training_step for t in _records(run)) == {1: 8, 2: 8}


# ------------------------------------------------------------------------------------------------ QLoRA / full
@pytest.mark.parametrize("variant", ["qlora", "full"])
def test_qlora_and_full_finetuning_run(coding_data, tmp_path, variant):
    over = {"quantization": "4bit"} if variant == "qlora" else {"finetune": "full"}
    cfg = _tiny(max_steps=1, **over)
    b = T.build_trainer(cfg, "stepwise", data=coding_data, out_dir=tmp_path)
    model = b.trainer.model
    names = {n: type(m).__name__ for n, m in model.named_modules()}
    if variant == "qlora":
        assert any(t == "Linear4bit" for n, t in names.items() if "language_model" in n)
        assert not any(t == "Linear4bit" for n, t in names.items() if ".visual." in n or n.endswith("lm_head"))
    else:
        assert not any("lora_" in n for n in names)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(
            p.numel() for p in model.parameters())
    b.trainer.train()
    b.traj_log.close()
    assert b.trainer.state.global_step == 1
    assert Counter(t.training_step for t in _records(tmp_path)) == {1: 8}


# ------------------------------------------------------------------------------------------------ merged sampling
def test_merged_generation_samples_the_same_policy_and_restores_the_weights(coding_data, tmp_path):
    """`merge_lora_for_generation`: every TRL sampling call runs with the adapter folded in (and only those), the
    merged model computes the same logits as the unmerged one, and the base weights are back after training."""
    import torch

    cfg = _tiny(max_steps=2, merge_lora_for_generation=True)
    b = T.build_trainer(cfg, "stepwise", data=coding_data, out_dir=tmp_path)
    assert b.trainer.arft_merge_for_generation
    model = b.trainer.model
    lora_layers = [m for m in model.modules() if hasattr(m, "merged") and hasattr(m, "lora_A")]
    assert lora_layers
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    seen = []
    generate = model.generate

    def spy(*a, **k):
        seen.append(all(m.merged for m in lora_layers))
        return generate(*a, **k)

    model.generate = spy
    b.trainer.train()
    b.traj_log.close()
    assert seen and all(seen), "each sampling call ran on the merged model"
    assert not any(m.merged for m in lora_layers), "unmerged after sampling"
    for n, p in model.named_parameters():
        if n in base:
            assert torch.allclose(p, base[n], atol=1e-6), n  # merge + unmerge leaves the base weights
    # the same policy: merged logits equal the adapter's (B made non-zero so the adapter matters)
    for m in lora_layers:
        for w in m.lora_B.values():
            torch.nn.init.normal_(w.weight, std=0.5)
    model.eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        model.merge_adapter()
        merged = model(input_ids=ids).logits
        model.unmerge_adapter()
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert not torch.allclose(before, plain, atol=1e-4)
    assert torch.allclose(before, merged, atol=1e-4)


def test_turn_max_new_tokens_caps_each_sampled_turn(coding_data, tmp_path):
    cfg = _tiny(max_steps=1, max_completion_length=40, turn_max_new_tokens=5, temperature=1.0)
    b = T.build_trainer(cfg, "stepwise", data=coding_data, out_dir=tmp_path)
    b.trainer.arft_keep_last_batch = True
    b.trainer.train()
    b.traj_log.close()
    lengths = b.trainer.arft_last_batch["output"]["completion_mask"].sum(1)
    assert int(lengths.max()) <= 5 and int(lengths.min()) >= 1


def test_merged_generation_refuses_a_quantised_model(coding_data, tmp_path):
    cfg = _tiny(max_steps=1, quantization="4bit", merge_lora_for_generation=True)
    with pytest.raises(ValueError, match="merge_lora_for_generation"):
        T.build_trainer(cfg, "stepwise", data=coding_data, out_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ learning
def test_learning_short_direction(tmp_path):
    """CI's short learning check: SFT warm start, then GRPO; the held-out reward goes up by a margin."""
    from experiments.stepwise_learning import LEARNING_DEMO_SHORT, learning_demo

    r = learning_demo(tmp_path, **LEARNING_DEMO_SHORT)
    assert r["adapter_changed"]
    assert r["heldout_reward_after"] >= r["heldout_reward_before"] + 0.05, r


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ARFT_LEARNING_FULL") != "1", reason="~10 min; set ARFT_LEARNING_FULL=1")
def test_learning_demo_full(tmp_path):
    from experiments.stepwise_learning import learning_demo

    r = learning_demo(tmp_path)
    assert r["adapter_changed"]
    assert r["heldout_reward_after"] - r["heldout_reward_before"] >= 0.15, r
    assert r["run_s"] <= 600, r  # warm start + GRPO + both evaluations (the data build is reported apart)


def test_agentic_learning_demo_runs_end_to_end(tmp_path):
    """The agentic experiment's pipeline, tiny: warm start on the diagnose tool call, held-out tool-call
    episodes, agentic GRPO, the same episodes again (the pipeline runs; it does not claim learning)."""
    from experiments.agentic_demo import agentic_learning_demo

    r = agentic_learning_demo(tmp_path / "demo", n_tasks=24, sft_steps=2, grpo_steps=1, heldout_tasks=2,
                              samples_per_task=1, config_overrides={"per_device_train_batch_size": 8,
                                                                    "num_generations": 4})
    assert r["sft"]["steps"] == 2 and r["grpo_steps"] == 1 and r["n_heldout_tasks"] == 2
    for when in ("before", "after"):  # both evaluations ran the same live tool-call episodes
        assert r[f"rollout_{when}"]["episodes"] == 2
        assert "diagnosis" in r[f"components_{when}"] and "wasted_turns" in r[f"components_{when}"]
    assert r["gain"] == pytest.approx(r["heldout_reward_after"] - r["heldout_reward_before"])
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())["n_train_tasks"] == r["n_train_tasks"]
    assert (tmp_path / "demo" / "grpo" / "final" / "adapter_config.json").is_file()


def test_row_mean_loss_weighs_a_one_word_row_like_a_code_row():
    """The warm start's loss (`row_mean_loss`): a 1-token answer row and a 50-token code row count the same; TRL's
    token mean would give the answer 1/51 of the weight."""
    import doctest

    import torch

    import arftlib.train.sft as sft

    assert doctest.testmod(sft).failed == 0
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[0, -1] = True  # the answer row: one trained token
    mask[1, :] = True  # the code row: fifty
    lp = torch.zeros(2, 50, requires_grad=True)
    sft.row_mean_nll(lp, mask).backward()
    assert abs(float(lp.grad[0].sum()) + 0.5) < 1e-6 and abs(float(lp.grad[1].sum()) + 0.5) < 1e-6
    assert float(sft.row_mean_nll(lp, torch.zeros_like(mask))) == 0.0  # no trained token: zero, not NaN
