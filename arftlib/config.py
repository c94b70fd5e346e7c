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

PROFILES = ("tiny-cpu", "qwen2.5-vl-3b-qlora-24gb", "qwen2.5-vl-7b-lora-80gb", "paper-8gpu",
            "qwen3-vl-2b-lora-24gb", "qwen3-vl-4b-qlora-24gb", "qwen3-vl-8b-qlora-24gb")


@dataclass
class RunConfig:
    # --- identity -------------------------------------------------------------------------------------
    profile: str  # the profile this config came from (kept in every metrics.json and run directory)
    seed: int = 0  # one seed for data generation, sampling and training

    # --- model ----------------------------------------------------------------------------------------
    model_id: str = "tiny"  # hub id, local path, or "tiny" = build a random tiny Qwen2.5-VL offline
    arch: str = "qwen2_5_vl"  # architecture of the tiny model when model_id == "tiny" (qwen2_5_vl|qwen3_vl)
    tiny_size: str = "toy"  # model_id "tiny" only: "toy" (0.2 M random: fast unit tests) | "seeing" (~5 M: learns the micro world)
    quantization: str | None = None  # None | "4bit" (NF4, QLoRA) | "8bit"; the vision tower stays unquantised
    finetune: str = "lora"  # "lora" | "full"; with quantization="4bit" this is QLoRA
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator (effective scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA branch
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # language-model linears
    torch_dtype: str = "float32"  # weights' dtype when not quantised: float32 on CPU, bfloat16 on GPU
    attn_implementation: str = "sdpa"  # "sdpa" everywhere; "flash_attention_2" if installed on GPU
    gradient_checkpointing: bool = False  # trade compute for memory (on for the big profiles)
    torch_threads: int | None = None  # CPU threads per torch op (None: torch's default); 1 is fastest on a busy 2-core CPU

    # --- images ---------------------------------------------------------------------------------------
    image_size: int = 720  # training images are resized to image_size × image_size (the reference does 720)
    min_pixels: int = 3136  # Qwen processor lower bound on pixels per image (4 × 28 × 28)
    max_pixels: int = 401408  # Qwen processor upper bound (the reference's 512 × 28 × 28)

    # --- agent ----------------------------------------------------------------------------------------
    protocol: str = "tags"  # "tags" (the paper: history in one user message) or "chat" (multi-turn chat)
    prompt_style: str = "reference"  # system prompt: "reference" (the paper's, verbatim) | "compact" (same actions, a few lines)
    tool_format: str = "tags"  # agentic training's tool-call form: "tags" (the paper's actions) | "json" (Qwen tool calls)
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
    eval_max_new_tokens: int | None = None  # tokens per turn in evaluation (None: max_completion_length)
    eval_temperature: float = 0.0  # sampling temperature in evaluation (0 = greedy, as the reference evaluates)
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

    # --- against collapse (what the field learned about agentic RL; each is logged) ---------------------
    mask_truncated_completions: bool = False  # completions cut at max_completion_length get no gradient (TRL)
    mask_unfinished_episodes: bool = False  # agentic: episodes that end unanswered (turn budget spent) get no gradient
    filter_zero_variance_groups: bool = False  # GRPO groups whose rewards are all equal are left out of the loss
    tool_collapse_warn_ratio: float = 0.5  # warn when tool calls per episode fall below this share of the first steps'
    agentic_weights: dict[str, float] = field(default_factory=dict)  # overrides of rewards.AGENTIC_WEIGHTS

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


# Qwen3-VL (2025): 16-pixel patches, so the pixel bounds are set in 32 × 32 units (one merged token each); the
# reference's 401,408-pixel cap is exactly 392 such tokens (a 720×720 image becomes 608×608 = 361 tokens, against
# 484 for Qwen2.5-VL's 28-pixel units). Module names match Qwen2.5-VL's in transformers 5.24 (`model.visual`,
# `model.language_model.layers.N.{self_attn,mlp}.*_proj`), so LoRA targets and the 4-bit skip list carry over
# (checked on published-size cuts in tests/test_published_models.py). Chat template: TRL's qwen3_vl template.

def _qwen3_vl_2b_lora_24gb() -> RunConfig:
    # One 24 GB GPU: Qwen3-VL-2B small enough to keep in bf16 (4.3 GB of weights), LoRA on every linear.
    return RunConfig(
        profile="qwen3-vl-2b-lora-24gb",
        model_id="Qwen/Qwen3-VL-2B-Instruct",
        arch="qwen3_vl",  # architecture family (also what a tiny stand-in would be built as)
        quantization=None,  # bf16: quantising a 2B model saves ~3 GB and costs dequantisation time
        finetune="lora",
        lora_r=64,  # rank 64 on all seven projections: ~70 M trainable parameters
        lora_alpha=128,  # scale alpha / r = 2, as the Qwen2.5-VL profiles
        lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        torch_dtype="bfloat16",
        gradient_checkpointing=True,  # 8 × ~1.1 k-token sequences: activations dominate without it
        image_size=720,  # as the reference
        min_pixels=4 * 32 * 32,  # ≥ 4 merged tokens (Qwen3-VL's unit is 32 × 32 pixels)
        max_pixels=392 * 32 * 32,  # = 401,408, the reference's cap: ≤ 392 image tokens
        max_completion_length=512,  # tokens sampled per turn
        num_generations=8,  # GRPO group size (the paper's 8)
        per_device_train_batch_size=8,  # one group per micro-batch
        gradient_accumulation_steps=2,  # two groups per optimizer step
        learning_rate=5e-5,  # LoRA learning rate
        max_steps=400,
        eval_batch_size=32,
    )


def _qwen3_vl_4b_qlora_24gb() -> RunConfig:
    # One 24 GB GPU: Qwen3-VL-4B with a 4-bit language model (vision tower and lm_head in bf16) and LoRA.
    return RunConfig(
        profile="qwen3-vl-4b-qlora-24gb",
        model_id="Qwen/Qwen3-VL-4B-Instruct",
        arch="qwen3_vl",
        quantization="4bit",  # NF4 + double quantisation (QLoRA); vision tower + lm_head unquantised
        finetune="lora",
        lora_r=64,  # ~132 M trainable parameters on all seven projections
        lora_alpha=128,  # scale 2
        lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        torch_dtype="bfloat16",  # dtype of the unquantised parts and of the 4-bit compute
        gradient_checkpointing=True,
        image_size=720,
        min_pixels=4 * 32 * 32,
        max_pixels=392 * 32 * 32,
        max_completion_length=512,
        num_generations=8,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=5e-5,
        max_steps=400,
        eval_batch_size=32,
    )


def _qwen3_vl_8b_qlora_24gb() -> RunConfig:
    # One 24 GB GPU: Qwen3-VL-8B in 4-bit; its untied 151,936 × 4096 lm_head and the vision tower stay bf16
    # (~2.3 GB). arftlib.memory_model estimates ~14 GiB at these settings with one image per episode; micro-batches
    # of half a group (4) leave room for agentic episodes that add tool images (each +361 tokens per sequence).
    return RunConfig(
        profile="qwen3-vl-8b-qlora-24gb",
        model_id="Qwen/Qwen3-VL-8B-Instruct",
        arch="qwen3_vl",
        quantization="4bit",
        finetune="lora",
        lora_r=64,  # ~175 M trainable parameters (2.6 GiB with fp32 gradients and AdamW moments)
        lora_alpha=128,  # scale 2
        lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        torch_dtype="bfloat16",
        gradient_checkpointing=True,
        image_size=720,
        min_pixels=4 * 32 * 32,
        max_pixels=392 * 32 * 32,
        max_completion_length=512,
        num_generations=8,
        per_device_train_batch_size=4,  # half a GRPO group per micro-batch (TRL gathers whole groups per step)
        gradient_accumulation_steps=4,  # 16 completions = two groups per optimizer step
        learning_rate=3e-5,  # the larger model takes smaller steps
        max_steps=400,
        eval_batch_size=16,  # generation KV cache of 16 episodes fits beside the 4-bit weights
    )


_BUILDERS = {
    "tiny-cpu": _tiny_cpu,
    "qwen2.5-vl-3b-qlora-24gb": _qwen25_3b_qlora_24gb,
    "qwen2.5-vl-7b-lora-80gb": _qwen25_7b_lora_80gb,
    "paper-8gpu": _paper_8gpu,
    "qwen3-vl-2b-lora-24gb": _qwen3_vl_2b_lora_24gb,
    "qwen3-vl-4b-qlora-24gb": _qwen3_vl_4b_qlora_24gb,
    "qwen3-vl-8b-qlora-24gb": _qwen3_vl_8b_qlora_24gb,
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


def parse_set_overrides(items: Any) -> dict[str, Any]:
    """`--set FIELD=VALUE` items → overrides: `["learning_rate=1e-5", "protocol=chat"]` →
    `{"learning_rate": 1e-05, "protocol": "chat"}` (values read as JSON, else kept as plain strings).

    >>> parse_set_overrides(["max_turns=3", "protocol=chat", "quantization=null"])
    {'max_turns': 3, 'protocol': 'chat', 'quantization': None}
    """
    import json

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v.strip())
        except json.JSONDecodeError:
            out[k.strip()] = v.strip()
    return out


def apply_threads(cfg: RunConfig) -> None:
    """Set torch's intra-op threads to the config's `torch_threads` (nothing when it is None). On a 2-core machine
    that other processes share (the code sandbox, a second run), two spinning threads make every small op many
    times slower; one thread does not."""
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(int(cfg.torch_threads))
