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
    merge_lora_for_generation: bool = False  # GRPO rollouts: fold the adapter into the weights while TRL samples
    # (exact for an unquantised model, and the LoRA branch's extra matmuls and dropout are skipped), unfold after;
    # unquantised LoRA only (a 4-bit merge is lossy: an error); nothing to fold under full fine-tuning
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
    prompt_style: str = "reference"  # prompts: "reference" (the paper's, verbatim) | "compact" (same actions, a few lines) | "minimal" (one line)
    tool_format: str = "tags"  # agentic training's tool-call form: "tags" (the paper's actions) | "json" (Qwen tool calls)
    question_after_image: bool = False  # chat: a code turn's observation repeats the question under the image it
    # returns ("<query> q </query>", as the first message holds it), so the answer turn sees image + question as the
    # first turn did; the tags layout already keeps the question with the processed image. False: the reference's
    # chat reply (the image and a status line only)
    max_turns: int = 5  # turns per episode before the environment stops it (the reference uses 5)
    image_budget: int = 4  # tool-produced images an episode may add to the context
    search_backend: str = "local"  # local | retriever | serper | duckduckgo (see tools/search.py)
    search_k: int = 4  # hits per search (the reference shows the top 4)
    sandbox_timeout_s: float = 10.0  # wall-clock limit per code execution
    sandbox_memory_mb: int = 1024  # address-space limit per code execution

    # --- generation -----------------------------------------------------------------------------------
    max_prompt_length: int | None = None  # prompt tokens kept (None: no truncation; images must not be cut)
    max_completion_length: int = 256  # tokens sampled per turn
    turn_max_new_tokens: int | None = None  # GRPO rollouts: tokens one turn may sample (None: max_completion_length,
    # TRL's default); agentic episodes still stop at max_completion_length in all
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


ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # every LM projection


def _one_gpu(**settings: Any) -> RunConfig:
    # What every single-GPU profile shares; each profile below states only where it differs.
    base = dict(
        finetune="lora",
        lora_r=64,  # rank 64 on every projection of the language model
        lora_alpha=128,  # scale alpha / r = 2
        lora_target_modules=ALL_LINEAR,
        torch_dtype="bfloat16",  # weights (and the 4-bit compute dtype) in bf16
        gradient_checkpointing=True,  # 8 × ~1 k-token sequences: activations dominate without it
        image_size=720,  # as the reference
        max_completion_length=512,  # tokens sampled per turn
        num_generations=8,  # GRPO group size (the paper's 8)
        per_device_train_batch_size=8,  # one group per micro-batch
        gradient_accumulation_steps=2,  # two groups per optimizer step
        learning_rate=5e-5,  # LoRA learning rate
        max_steps=400,
        eval_batch_size=32,
    )
    return RunConfig(**{**base, **settings})


def _qwen25_3b_qlora_24gb() -> RunConfig:
    # One 24 GB GPU: Qwen2.5-VL-3B with a 4-bit language model (vision tower in bf16) and LoRA adapters.
    return _one_gpu(profile="qwen2.5-vl-3b-qlora-24gb", model_id="Qwen/Qwen2.5-VL-3B-Instruct", quantization="4bit")


def _qwen25_7b_lora_80gb() -> RunConfig:
    # One 80 GB GPU: Qwen2.5-VL-7B in bf16 with LoRA (switch quantization="4bit" to fit ≤ 24 GB).
    return _one_gpu(profile="qwen2.5-vl-7b-lora-80gb", model_id="Qwen/Qwen2.5-VL-7B-Instruct", quantization=None,
                    learning_rate=3e-5)


def _paper_8gpu() -> RunConfig:
    # The paper's recipe: full fine-tuning, 8 GPUs, DeepSpeed ZeRO-3, 8 generations, β = 0.04.
    return _one_gpu(profile="paper-8gpu", model_id="Qwen/Qwen2.5-VL-7B-Instruct", quantization=None,
                    finetune="full", max_completion_length=1024, per_device_train_batch_size=1,
                    learning_rate=1e-6, beta=0.04, max_steps=1400, save_steps=200, deepspeed="configs/zero3.json",
                    num_processes=8)


# Qwen3-VL (2025): 16-pixel patches, so the pixel bounds are set in 32 × 32 units (one merged token each); the
# reference's 401,408-pixel cap is exactly 392 such tokens (a 720×720 image becomes 608×608 = 361 tokens, against
# 484 for Qwen2.5-VL's 28-pixel units). Module names match Qwen2.5-VL's in transformers 5.24 (`model.visual`,
# `model.language_model.layers.N.{self_attn,mlp}.*_proj`), so LoRA targets and the 4-bit skip list carry over
# (checked on published-size cuts in tests/test_published_models.py). Chat template: TRL's qwen3_vl template.
QWEN3_PIXELS = dict(min_pixels=4 * 32 * 32,  # ≥ 4 merged tokens (Qwen3-VL's unit is 32 × 32 pixels)
                    max_pixels=392 * 32 * 32)  # = 401,408, the reference's cap: ≤ 392 image tokens


def _qwen3_vl_2b_lora_24gb() -> RunConfig:
    # One 24 GB GPU: Qwen3-VL-2B small enough to keep in bf16 (4.3 GB of weights), LoRA on every linear (~70 M
    # trainable); quantising a 2B model saves ~3 GB and costs dequantisation time.
    return _one_gpu(profile="qwen3-vl-2b-lora-24gb", model_id="Qwen/Qwen3-VL-2B-Instruct", arch="qwen3_vl",
                    quantization=None, **QWEN3_PIXELS)


def _qwen3_vl_4b_qlora_24gb() -> RunConfig:
    # One 24 GB GPU: Qwen3-VL-4B with a 4-bit language model (NF4 + double quantisation; vision tower and lm_head
    # in bf16) and LoRA (~132 M trainable).
    return _one_gpu(profile="qwen3-vl-4b-qlora-24gb", model_id="Qwen/Qwen3-VL-4B-Instruct", arch="qwen3_vl",
                    quantization="4bit", **QWEN3_PIXELS)


def _qwen3_vl_8b_qlora_24gb() -> RunConfig:
    # One 24 GB GPU: Qwen3-VL-8B in 4-bit; its untied 151,936 × 4096 lm_head and the vision tower stay bf16
    # (~2.3 GB). arftlib.memory_model estimates ~12.6 GiB at these settings with one image per episode; micro-batches
    # of half a group (4, TRL gathers whole groups per step) × 4 accumulation = two groups per optimizer step leave
    # room for agentic episodes that add tool images (each +361 tokens per sequence). LoRA: ~175 M trainable (1.3 GiB
    # with bf16 gradients and AdamW moments, as TRL casts QLoRA adapters); the larger model takes smaller steps; 16 episodes' generation KV
    # cache fits beside the 4-bit weights.
    return _one_gpu(profile="qwen3-vl-8b-qlora-24gb", model_id="Qwen/Qwen3-VL-8B-Instruct", arch="qwen3_vl",
                    quantization="4bit", per_device_train_batch_size=4, gradient_accumulation_steps=4,
                    learning_rate=3e-5, eval_batch_size=16, **QWEN3_PIXELS)


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


# The micro world (`micro-coding`, `micro-search`) in the CPU profile: a policy big enough to see, and an episode
# short enough to train live on 2 cores. `get_config("tiny-cpu", benchmark="micro-coding")` applies these before
# the caller's overrides; the GPU profiles train and evaluate the micro world with their own settings.
MICRO_WORLD: dict[str, dict[str, Any]] = {
    "tiny-cpu": dict(
        tiny_size="seeing",  # the ~5 M-parameter model that learns to read colours (micro-search: Qwen2.5-VL;
        # micro-coding: Qwen3-VL, MICRO_BENCHMARK); "seeing-grid" (Qwen2.5-VL with a rotary layout that lets it learn
        # where a figure is) sees position at turn one, but not at an episode's answer turn (README "Where the reading
        # is tied")
        torch_threads=2,  # both cores of the CPU machine (a warm-start step: 2.6 s with 2 threads alone, 7.4 s with 1
        # thread beside another job); set 1 when something else runs beside it
        image_size=224,  # the micro canvas; the policy sees it at max_pixels (112 × 112), crops come back sharp
        protocol="chat",  # multi-turn chat: the form TRL's tool loop trains (tags actions inside, tool_format)
        tool_format="tags",  # the paper's actions <problem> / <code> / <search> / <answer> as TRL tool calls
        prompt_style="minimal",  # a one-line system prompt (~30 tokens) instead of the reference's ~1,000: sequence
        # length is what a CPU step costs
        max_turns=4,  # problem → code → answer needs 3; one spare turn
        max_completion_length=320,  # a whole agentic episode's tokens (the three gold turns are ~100 + tool output)
        eval_max_new_tokens=96,  # one turn in evaluation (the longest gold turn, the code, is ≤ 85)
        turn_max_new_tokens=96,  # one turn in training rollouts, as in evaluation: a batch's generate call runs until
        # its longest row stops, and garbled turns ran to the episode's 320 (1/3 of the decode steps; such a turn
        # is cut at 96 in evaluation anyway)
        eval_batch_size=32,  # episodes decoded together in evaluation
        num_generations=8,  # GRPO group size, as the paper
        per_device_train_batch_size=16,  # two groups per step
        learning_rate=5e-4,  # LoRA on a tiny model: large steps
        temperature=0.3,  # training rollouts sample at 0.3: a code turn is ~85 tokens and one bad draw breaks it.
        # 1.0: the warm start's episodes fell apart (67 steps: held-out F1 11.67 → 6.67). 0.6: code ran in 11 % of
        # the first 10 steps' episodes (greedy: 59 %), so GRPO paid the code that runs at any draw — the input
        # written back — and unlearned the repairs (held-out code turns restored 29 → 11 of 56, F1 25.00 → 16.67).
        # 0.3 (26 % ran), same warm start and 8 min: restored 29 → 37, F1 25.00 → 28.33 (+ 23.57 → 30.71 on 140 more)
        lora_r=16,  # rank 16 on every linear of the language model
        lora_alpha=32,
        lora_target_modules=ALL_LINEAR,
        merge_lora_for_generation=True,  # rollouts sample from the merged model: a generate call ~25 % faster on 2
        # cores (batch 16, 100 tokens: 1.33 s → 0.99 s), so more GRPO steps fit the same minutes
        filter_zero_variance_groups=True,  # most groups of a warm-started policy agree: no signal, no update
        mask_unfinished_episodes=True,  # an episode that never answers teaches nothing about answering
        mask_truncated_completions=True,  # nor one cut at max_completion_length
        n_coding_tasks=1000,  # micro-coding tasks (80 % train)
        n_search_tasks=1000,  # micro-search tasks (80 % train)
        report_to="none",  # curves come from the run's log_history (notebook 04 plots them)
    ),
}


# One micro benchmark's settings on top of MICRO_WORLD's (profile, benchmark).
MICRO_BENCHMARK: dict[tuple[str, str], dict[str, Any]] = {
    ("tiny-cpu", "micro-coding"): dict(
        arch="qwen3_vl",  # Qwen3-VL "seeing": its ViT adds learned absolute position embeddings, so where a figure lies
        # is in the image tokens' content and the reading holds at an episode's answer turn, far from where the seeing
        # stage asked: rotated position after the gold repair 55-69 of 70 vs 23-34 on Qwen2.5-VL "seeing-grid", whose
        # position lives only in rotary phase (README "Where the reading is tied"). micro-search keeps Qwen2.5-VL
        question_after_image=True,  # the question again under the restored image, as the seeing stage asks it: colour
        # at the answer turn after the gold repair 15 → 37 of 53 (README "Where the reading is tied")
    ),
}


def get_config(profile: str | None = None, benchmark: str | None = None, **overrides: Any) -> RunConfig:
    """The named profile's config (auto-picked when `profile` is None or "auto"), with the micro world's settings
    when `benchmark` is `micro-coding` / `micro-search` (`MICRO_WORLD`, then `MICRO_BENCHMARK`), then `overrides`
    applied."""
    name = default_profile() if profile in (None, "", "auto") else profile
    if name not in _BUILDERS:
        raise KeyError(f"unknown profile {name!r}; known profiles: {', '.join(PROFILES)}")
    cfg = _BUILDERS[name]()
    if benchmark and str(benchmark).startswith("micro-"):
        cfg = cfg.replace(**{**MICRO_WORLD.get(name, {}), **MICRO_BENCHMARK.get((name, str(benchmark)), {})})
    return cfg.replace(**overrides)


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
