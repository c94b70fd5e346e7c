"""One typed run configuration and its named profiles.

A profile is a complete, commented `RunConfig`: which model, how it is fine-tuned, how rollouts are sampled,
and how big the data and runs are. Notebooks and the CLI call `get_config(profile, **overrides)`; with no
profile named, `default_profile()` picks `tiny-cpu` on a machine without CUDA and the 3B QLoRA profile on one
with a GPU. Overrides are checked against the declared fields, so a typo fails loud instead of being ignored.

    >>> cfg = get_config("tiny-cpu", max_steps=3)
    >>> cfg.model_id, cfg.max_steps, cfg.num_generations
    ('tiny', 3, 4)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

PROFILES = ("tiny-cpu", "qwen2.5-vl-3b-qlora-24gb", "qwen2.5-vl-7b-lora-80gb", "paper-8gpu")


@dataclass
class RunConfig:
    # --- identity -------------------------------------------------------------------------------------
    profile: str  # the profile this config came from (kept in every metrics.json and run directory)
    seed: int = 0  # one seed for data generation, sampling and training

    # --- model ----------------------------------------------------------------------------------------
    model_id: str = "tiny"  # hub id, local path, or "tiny" = build a random tiny Qwen2.5-VL offline
    arch: str = "qwen2_5_vl"  # architecture of the tiny model when model_id == "tiny" (qwen2_5_vl|qwen3_vl)
    quantization: str | None = None  # None | "4bit" (NF4, QLoRA) | "8bit"; the vision tower stays unquantised
    finetune: str = "lora"  # "lora" | "full"; with quantization="4bit" this is QLoRA
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator (effective scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA branch
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # language-model linears
    torch_dtype: str = "float32"  # weights' dtype when not quantised: float32 on CPU, bfloat16 on GPU
    attn_implementation: str = "sdpa"  # "sdpa" everywhere; "flash_attention_2" if installed on GPU
    gradient_checkpointing: bool = False  # trade compute for memory (on for the big profiles)

    # --- images ---------------------------------------------------------------------------------------
    image_size: int = 720  # training images are resized to image_size × image_size (the reference does 720)
    min_pixels: int = 3136  # Qwen processor lower bound on pixels per image (4 × 28 × 28)
    max_pixels: int = 401408  # Qwen processor upper bound (the reference's 512 × 28 × 28)

    # --- agent ----------------------------------------------------------------------------------------
    protocol: str = "tags"  # "tags" (the paper: history in one user message) or "chat" (multi-turn chat)
    max_turns: int = 5  # turns per episode before the environment stops it (the reference uses 5)
    image_budget: int = 4  # tool-produced images an episode may add to the context
    search_backend: str = "local"  # local | retriever | serper | duckduckgo (see tools/search.py)
    search_k: int = 4  # hits per search (the reference shows the top 4)
    sandbox_timeout_s: float = 10.0  # wall-clock limit per code execution
    sandbox_memory_mb: int = 1024  # address-space limit per code execution

    # --- generation -----------------------------------------------------------------------------------
    max_prompt_length: int | None = None  # prompt tokens kept (None: no truncation; images must not be cut)
    max_completion_length: int = 256  # tokens sampled per turn
    temperature: float = 1.0  # sampling temperature in training rollouts
    eval_batch_size: int = 16  # episodes generated together in batched evaluation
    use_vllm: bool = False  # generate with vLLM (colocated) where installed; transformers otherwise

    # --- GRPO (TRL GRPOConfig) ------------------------------------------------------------------------
    num_generations: int = 8  # completions per prompt = GRPO group size (the paper uses 8)
    per_device_train_batch_size: int = 8  # completions per device per micro-batch; divisible by num_generations
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-5  # AdamW learning rate (LoRA usually wants 1e-5 … 1e-4)
    max_steps: int = 200  # optimizer steps (the paper reports step 200 for search, 1400 for coding)
    beta: float = 0.0  # KL coefficient against the reference model (TRL default 0.0; the paper used 0.04)
    loss_type: str = "grpo"  # TRL loss: grpo | dapo | dr_grpo | bnpo | …
    scale_rewards: str = "group"  # advantage normalisation: group | batch | none
    num_iterations: int = 1  # policy updates per generation batch (μ in the GRPO paper)
    save_steps: int = 50  # checkpoint every N steps (resume continues from the last one)
    logging_steps: int = 1  # log every N steps
    report_to: str = "tensorboard"  # TRL report_to: tensorboard | trackio | none (all local)
    deepspeed: str | None = None  # path of a DeepSpeed config (multi-GPU profiles only)
    num_processes: int = 1  # GPUs (accelerate processes) the profile is sized for

    # --- data sizes -----------------------------------------------------------------------------------
    n_coding_tasks: int = 1000  # procedural MAT-Coding-style tasks to build
    n_search_tasks: int = 1000  # procedural MAT-Search-style tasks to build
    n_eval_tasks: int = 200  # tasks per benchmark in evaluation notebooks

    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into metrics.json

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise KeyError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        return dataclasses.replace(self, **overrides)


def _tiny_cpu() -> RunConfig:
    # Everything small enough for 2 CPU cores: tests, CI and `make reproduce` without a GPU.
    return RunConfig(
        profile="tiny-cpu",
        model_id="tiny",
        finetune="lora",
        lora_r=8,
        lora_alpha=16,
        torch_dtype="float32",
        image_size=112,  # tiny model, tiny images: 112×112 → 16 visual tokens after merging
        min_pixels=56 * 56,
        max_pixels=112 * 112,
        # tiny tokenizer: gold diagnosis turns are 35-70 tokens, answers 30-75, search turns ~60 (code turns
        # ~210, up to 500: raise this for code-step training)
        max_completion_length=80,
        temperature=1.0,
        eval_batch_size=16,
        num_generations=4,
        per_device_train_batch_size=8,
        learning_rate=5e-4,  # tiny random model: large steps so a few minutes of CPU show a trend
        max_steps=20,
        save_steps=10,
        report_to="tensorboard",
        n_coding_tasks=48,
        n_search_tasks=48,
        n_eval_tasks=32,
    )


def _qwen25_3b_qlora_24gb() -> RunConfig:
    # One 24 GB GPU: Qwen2.5-VL-3B with a 4-bit language model (vision tower in bf16) and LoRA adapters.
    return RunConfig(
        profile="qwen2.5-vl-3b-qlora-24gb",
        model_id="Qwen/Qwen2.5-VL-3B-Instruct",
        quantization="4bit",
        finetune="lora",
        lora_r=64,
        lora_alpha=128,
        lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        torch_dtype="bfloat16",
        gradient_checkpointing=True,
        image_size=720,
        max_completion_length=512,
        num_generations=8,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=5e-5,
        max_steps=400,
        eval_batch_size=32,
    )


def _qwen25_7b_lora_80gb() -> RunConfig:
    # One 80 GB GPU: Qwen2.5-VL-7B in bf16 with LoRA (switch quantization="4bit" to fit ≤ 24 GB).
    return RunConfig(
        profile="qwen2.5-vl-7b-lora-80gb",
        model_id="Qwen/Qwen2.5-VL-7B-Instruct",
        quantization=None,
        finetune="lora",
        lora_r=64,
        lora_alpha=128,
        lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        torch_dtype="bfloat16",
        gradient_checkpointing=True,
        image_size=720,
        max_completion_length=512,
        num_generations=8,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=3e-5,
        max_steps=400,
        eval_batch_size=32,
    )


def _paper_8gpu() -> RunConfig:
    # The paper's recipe: full fine-tuning, 8 GPUs, DeepSpeed ZeRO-3, 8 generations, β = 0.04.
    return RunConfig(
        profile="paper-8gpu",
        model_id="Qwen/Qwen2.5-VL-7B-Instruct",
        quantization=None,
        finetune="full",
        torch_dtype="bfloat16",
        gradient_checkpointing=True,
        image_size=720,
        max_completion_length=1024,
        num_generations=8,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
        learning_rate=1e-6,
        beta=0.04,
        max_steps=1400,
        save_steps=200,
        deepspeed="configs/zero3.json",
        num_processes=8,
        eval_batch_size=32,
    )


_BUILDERS = {
    "tiny-cpu": _tiny_cpu,
    "qwen2.5-vl-3b-qlora-24gb": _qwen25_3b_qlora_24gb,
    "qwen2.5-vl-7b-lora-80gb": _qwen25_7b_lora_80gb,
    "paper-8gpu": _paper_8gpu,
}


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def default_profile() -> str:
    """`tiny-cpu` without CUDA; the single-GPU 3B QLoRA profile with one."""
    return "qwen2.5-vl-3b-qlora-24gb" if cuda_available() else "tiny-cpu"


def get_config(profile: str | None = None, **overrides: Any) -> RunConfig:
    """The named profile's config (auto-picked when `profile` is None or "auto"), with overrides applied."""
    name = default_profile() if profile in (None, "", "auto") else profile
    if name not in _BUILDERS:
        raise KeyError(f"unknown profile {name!r}; known profiles: {', '.join(PROFILES)}")
    return _BUILDERS[name]().replace(**overrides)


def describe(cfg: RunConfig) -> list[tuple[str, Any, str]]:
    """(field, value, comment) for every knob, the comment read from this module's source — what notebooks
    print so a researcher sees what each setting means next to its value."""
    import inspect
    import re

    comments: dict[str, str] = {}
    for line in inspect.getsource(RunConfig).splitlines():
        m = re.match(r"\s+(\w+): [^#]*#\s*(.*)$", line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
    return [(f.name, getattr(cfg, f.name), comments.get(f.name, "")) for f in dataclasses.fields(cfg)]
