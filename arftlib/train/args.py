"""A run config → TRL's `GRPOConfig` (and the small environment facts it depends on: CUDA, DeepSpeed, vLLM).

`grpo_config(cfg, mode, out_dir)` maps every `RunConfig` knob TRL has a name for; the agentic mode adds the tool
loop's iteration limit (`max_turns - 1`). What it decides on top of the profile:
* bf16 only with CUDA and a bf16 profile; `use_cpu` without CUDA; gradient checkpointing non-reentrant;
* DeepSpeed: the profile's json (`configs/zero3.json`, …) unless the launcher already configured DeepSpeed
  (`accelerate launch --config_file configs/accelerate_zero3.yaml`);
* vLLM (`cfg.use_vllm`, TRL's colocate mode): requires vLLM and CUDA and says so when either is missing — it
  never silently falls back to another engine;
* `log_completions=False`: the trajectory store is the completion log (TRL's parquet writer chokes on tool images).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arftlib.paths import REPO_ROOT

if TYPE_CHECKING:  # pragma: no cover
    from arftlib.config import RunConfig

__all__ = ["cuda", "deepspeed_config_path", "grpo_config", "torch_dtype", "vllm_available"]


def cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def torch_dtype(name: str):
    """A dtype name of the config ("float32", "bfloat16", …) as a torch dtype ("auto" passes through)."""
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "auto": "auto"}
    if name not in table:
        raise ValueError(f"unknown torch_dtype {name!r}; use one of {sorted(table)}")
    return table[name]


def deepspeed_config_path(cfg: "RunConfig") -> str | None:
    """The profile's DeepSpeed json as an existing path (relative paths are looked up from the working directory,
    then the repository)."""
    if not cfg.deepspeed:
        return None
    path = Path(cfg.deepspeed)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    if not path.exists():
        raise FileNotFoundError(f"DeepSpeed config {cfg.deepspeed} of profile {cfg.profile!r} not found (looked in "
                                f"the working directory and {REPO_ROOT})")
    return str(path)


def check_vllm(cfg: "RunConfig") -> bool:
    """True when the profile asks for vLLM generation and it can run; a clear error when it cannot."""
    if not cfg.use_vllm:
        return False
    if not vllm_available():
        raise ImportError(f"profile {cfg.profile!r} generates with vLLM (use_vllm=True) but the vllm package is not "
                          "installed: `pip install vllm` on the GPU machine, or set use_vllm=False "
                          "(`--set use_vllm=false`) to generate with transformers")
    if not cuda():
        raise RuntimeError(f"profile {cfg.profile!r} generates with vLLM (use_vllm=True), which needs a CUDA GPU; "
                           "none is visible here. Set use_vllm=False to generate with transformers")
    return True


def grpo_config(cfg: "RunConfig", mode: str, out_dir: str | os.PathLike, *, suppress_ids: Sequence[int] = (),
                **overrides: Any):
    """The `trl.GRPOConfig` for `cfg` and `mode` (overrides win)."""
    from trl import GRPOConfig

    on_cuda = cuda()
    bf16 = on_cuda and cfg.torch_dtype in ("bfloat16", "bf16")
    use_vllm = check_vllm(cfg)
    deepspeed = None
    if cfg.deepspeed and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        deepspeed = deepspeed_config_path(cfg)
        if importlib.util.find_spec("deepspeed") is None:
            raise ImportError(f"profile {cfg.profile!r} trains with DeepSpeed ({deepspeed}) but the deepspeed package "
                              f"is not installed: `pip install deepspeed` on the GPU machine, then run it under "
                              f"`accelerate launch --config_file configs/accelerate_8gpu.yaml -m arftlib train ...`")
    gen_kwargs: dict[str, Any] = {"suppress_tokens": list(suppress_ids)} if suppress_ids and not use_vllm else {}
    if cfg.turn_max_new_tokens is not None:
        if use_vllm:
            raise ValueError(f"turn_max_new_tokens={cfg.turn_max_new_tokens} caps transformers' generate per turn; "
                             f"profile {cfg.profile!r} samples with vLLM (set turn_max_new_tokens=None)")
        if int(cfg.turn_max_new_tokens) < 1:
            raise ValueError(f"turn_max_new_tokens must be ≥ 1 or None, got {cfg.turn_max_new_tokens!r}")
        gen_kwargs["max_new_tokens"] = min(int(cfg.turn_max_new_tokens), int(cfg.max_completion_length))
    gen_kwargs = gen_kwargs or None
    kw: dict[str, Any] = dict(
        output_dir=str(out_dir),
        seed=cfg.seed,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        learning_rate=cfg.learning_rate,
        max_steps=cfg.max_steps,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        num_iterations=cfg.num_iterations,
        mask_truncated_completions=bool(cfg.mask_truncated_completions),
        save_strategy="steps",
        save_steps=cfg.save_steps,
        logging_steps=cfg.logging_steps,
        report_to=[] if cfg.report_to in (None, "", "none") else [cfg.report_to],
        bf16=bf16,
        activation_checkpointing=bool(cfg.gradient_checkpointing),
        use_cpu=not on_cuda,
        deepspeed=deepspeed,
        use_vllm=use_vllm,
        generation_kwargs=gen_kwargs,
        log_completions=False,  # the trajectory store is the completion log
        disable_tqdm=False,  # the console progress bar
        dataloader_num_workers=0,
        remove_unused_columns=False,
        shuffle_dataset=True,
    )
    if use_vllm:
        kw.update(vllm_mode="colocate")
    if mode == "agentic":
        kw["max_tool_calling_iterations"] = max(1, int(cfg.max_turns) - 1)
    if cfg.gradient_checkpointing:
        kw["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    kw.update(overrides)
    return GRPOConfig(**kw)
