"""A GPU-memory estimate for the GPU profiles: weights, adapters + optimizer, activations, logits, KV cache.

ESTIMATE, NOT MEASURED ON A GPU. Every number comes from arithmetic on the shipped published configs
(`arftlib/resources/model_configs/*.json`), a profile's settings (`arftlib.config`) and how TRL 1.16 / PEFT /
bitsandbytes lay tensors out; nothing here has been checked against `torch.cuda.max_memory_allocated`.

What it does
- `param_breakdown(name)`: parameter counts per part, from the config's dimensions alone (tests check the total
  equals the meta-device count of the real transformers model, to the parameter).
- `image_tokens(name, image_size, min_pixels, max_pixels)`: LLM tokens per image, from Qwen's resize arithmetic
  (`smart_resize`: sides rounded to multiples of patch × merge = 28 px for Qwen2.5-VL, 32 px for Qwen3-VL,
  scaled into [min_pixels, max_pixels]) — a 720×720 image under the reference's 401,408-pixel cap is 616×616 →
  44×44 patches of 14 px → 484 tokens (Qwen2.5-VL) and 608×608 → 38×38 patches of 16 px → 361 tokens (Qwen3-VL).
- `estimate(cfg)`: one row of terms (GiB) for a `RunConfig`; `memory_table()` for every GPU profile plus a
  7B-QLoRA variant; `memory_table_markdown()` renders it beside the targets (3B QLoRA ≤ 16 GiB, 7B QLoRA ≤ 24 GiB,
  the profile's GPU otherwise).

The terms (bytes; h hidden, L layers, I MLP width, V vocabulary, q = heads × head_dim, k = KV heads × head_dim)
- weights: quantised linears (the decoder's q/k/v/o/gate/up/down when `quantization="4bit"`) at NF4 with double
  quantisation = 0.5 B/param + 1 B per 64-value block (8-bit absmax) + 4 B per 256 blocks (fp32 second level);
  "8bit" = 1 B/param + a fp32 scale per output row; everything else (vision tower, embeddings, lm_head, norms,
  biases) bf16. Full fine-tuning under DeepSpeed ZeRO-3 shards weights, gradients and the fp32 master + AdamW
  moments (2 + 2 + 12 B/param) over the GPUs, plus a bf16 reference model when β > 0 (sharded too), plus a
  working set of gathered parameters (the largest module + one decoder layer).
- LoRA: r × (in + out) per targeted linear of every decoder layer; PEFT keeps adapters in fp32 (autocast_adapter_
  dtype), so weights 4 + gradients 4 + AdamW moments 8 = 16 B per adapter parameter — except on a quantised base,
  where TRL 1.16's GRPOTrainer casts the adapters to bf16 (the QLoRA recipe; seen on the real-size 3B: 119.7 M
  adapter parameters in bf16), and torch's AdamW keeps its moments in the parameters' dtype: 2 + 2 + 4 = 8 B.
- activations (training forward kept for backward, bf16): per decoder layer and token, the RMSNorm inputs and
  outputs (4h), q/k/v after rotary (q + 2k), the attention output (q), Qwen3's q/k-norm inputs (q + k), the MLP's
  gate, up, act(gate) and product (4I), and LoRA's dropout copies of each targeted input (Σ in_features, plus a
  1-byte mask each). Memory-efficient SDPA keeps no s × s score matrix. Without checkpointing all L layers are
  kept; with it only each layer's input (h per token) plus one layer recomputed during backward.
  Tokens = micro-batch × (prompt text + image tokens + max_completion_length) — every completion at its limit.
- vision tower: frozen under LoRA, so its activations are transient (one block at a time, no graph); under full
  fine-tuning kept like the decoder's (per patch: 8 × ViT width + 4·I_vit SwiGLU or 2·I_vit GELU).
- logits: TRL 1.16's GRPO forward uses a fused, chunked LM head (`trl/kernels/chunked_logprob.py`:
  tiles of 4,096 tokens × 32,768 vocabulary entries, in the compute dtype) and never materialises the
  (batch, completion, V) logits: a tile buffer forward + one backward, plus fp32 running statistics and the fp32
  gradient of the hidden states. The `logits_materialised_gib` column shows what a plain `log_softmax` over fp32
  logits would need (batch × completion × V × 4 B, twice with its gradient) — the largest activation by far.
- KV cache of generation: L × 2 × k × (prompt + completion) × sequences × 2 B, where sequences = the per-device
  generation batch (per_device_train_batch_size × gradient_accumulation_steps, TRL's default
  steps_per_generation). Under ZeRO-3 TRL gathers the full bf16 weights for generation (ds3_gather_for_generation).
- runtime: a flat 1 GiB for the CUDA context, cuBLAS workspaces and allocator slack (a guess).
- peak = persistent (weights + adapters/optimizer) + max(training micro-batch, generation) + runtime.

What it leaves out: fragmentation beyond the flat slack, vLLM's preallocated cache, multiple images per episode
(set `images_per_sample`), sequence packing, eager attention's s² scores, optimizer offload.

    >>> round(_nf4_bytes_per_param(), 4)
    0.5159
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arftlib.published import PUBLISHED, load_published_json, published_name_for

if TYPE_CHECKING:  # pragma: no cover - typing only
    from arftlib.config import RunConfig

GiB = 1024 ** 3
LABEL = "estimate (not measured on a GPU)"
PROMPT_TEXT_TOKENS = 400  # text tokens of a prompt: the reference coding system prompt is 345 real Qwen tokens,
#                          plus the question, chat framing and a short earlier-step context
RUNTIME_GIB = 1.0  # CUDA context + cuBLAS workspace + allocator slack (a flat guess)
TRL_TOKEN_CHUNK = 4096  # trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE (tokens per fused LM-head tile)
TRL_VOCAB_CHUNK = 32768  # trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE (vocabulary entries per tile)
NF4_BLOCK = 64  # bitsandbytes 4-bit block size (values per absmax)
NF4_DQ_BLOCK = 256  # double quantisation: absmax values per second-level fp32 constant
ZERO3_GPUS = 8  # GPUs a ZeRO-3 profile shards over when num_processes says so
TARGETS_GIB = {  # what each row is compared with
    "qwen2.5-vl-3b-qlora-24gb": 16.0,  # the target: 3B QLoRA within 16 GiB
    "qwen2.5-vl-7b-lora-80gb": 80.0,  # one 80 GB GPU
    "qwen2.5-vl-7b-lora-80gb+4bit": 24.0,  # the target: 7B QLoRA within 24 GiB
    "paper-8gpu": 80.0,  # per GPU of 8 × 80 GB
    "qwen3-vl-2b-lora-24gb": 24.0,
    "qwen3-vl-4b-qlora-24gb": 24.0,
    "qwen3-vl-8b-qlora-24gb": 24.0,
}
QUANTISED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # decoder linears


def _nf4_bytes_per_param() -> float:
    """NF4 with double quantisation: 4 bits + an 8-bit absmax per 64 values + a fp32 per 256 absmax."""
    return 0.5 + 1.0 / NF4_BLOCK + 4.0 / (NF4_BLOCK * NF4_DQ_BLOCK)


@dataclass(frozen=True)
class Dims:
    """The dimensions the estimate needs, read from a shipped config JSON."""

    name: str
    model_type: str  # qwen2_5_vl | qwen3_vl
    hidden: int  # h
    layers: int  # L
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # I
    vocab: int  # V (embedding rows; the tokenizer uses fewer)
    tied: bool  # lm_head shares the embedding
    attention_bias: bool  # q/k/v biases (Qwen2.5) or none (Qwen3)
    qk_norm: bool  # Qwen3's per-head RMSNorm on q and k
    v_depth: int
    v_hidden: int
    v_intermediate: int
    v_out: int  # merger output (= hidden)
    v_patch: int
    v_temporal: int
    v_merge: int
    v_swiglu: bool  # Qwen2.5-VL ViT MLP is SwiGLU (3 matrices); Qwen3-VL's is fc1 → GELU → fc2
    v_pos_embed: int  # Qwen3-VL learned position embeddings (0 for Qwen2.5-VL)
    v_deepstack: int  # Qwen3-VL DeepStack mergers

    @property
    def q(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim


def dims(name: str) -> Dims:
    """Dimensions of a shipped config (`arftlib.published.PUBLISHED`), failing loud on a missing field."""
    data = load_published_json(name)
    mt = data["model_type"]
    text = data.get("text_config", data)
    vision = data["vision_config"]

    def need(d: dict, key: str, where: str) -> Any:
        if key not in d:
            raise KeyError(f"model config {name!r}: field {where}{key} is missing")
        return d[key]

    tp = "text_config." if "text_config" in data else ""
    hidden, heads = need(text, "hidden_size", tp), need(text, "num_attention_heads", tp)
    return Dims(
        name=name,
        model_type=mt,
        hidden=hidden,
        layers=need(text, "num_hidden_layers", tp),
        heads=heads,
        kv_heads=need(text, "num_key_value_heads", tp),
        head_dim=text.get("head_dim", hidden // heads),
        intermediate=need(text, "intermediate_size", tp),
        vocab=need(text, "vocab_size", tp),
        tied=bool(data.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        attention_bias=(mt == "qwen2_5_vl") or bool(text.get("attention_bias", False)),
        qk_norm=(mt == "qwen3_vl"),
        v_depth=need(vision, "depth", "vision_config."),
        v_hidden=need(vision, "hidden_size", "vision_config."),
        v_intermediate=need(vision, "intermediate_size", "vision_config."),
        v_out=need(vision, "out_hidden_size", "vision_config."),
        v_patch=need(vision, "patch_size", "vision_config."),
        v_temporal=need(vision, "temporal_patch_size", "vision_config."),
        v_merge=need(vision, "spatial_merge_size", "vision_config."),
        v_swiglu=(mt == "qwen2_5_vl"),
        v_pos_embed=vision.get("num_position_embeddings", 0) if mt == "qwen3_vl" else 0,
        v_deepstack=len(vision.get("deepstack_visual_indexes", [])) if mt == "qwen3_vl" else 0,
    )


def linear_shapes(d: Dims) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of one decoder layer's linears."""
    return {
        "q_proj": (d.hidden, d.q), "k_proj": (d.hidden, d.kv), "v_proj": (d.hidden, d.kv), "o_proj": (d.q, d.hidden),
        "gate_proj": (d.hidden, d.intermediate), "up_proj": (d.hidden, d.intermediate),
        "down_proj": (d.intermediate, d.hidden),
    }


def vision_params(d: Dims) -> int:
    """Parameters of the vision tower (patch embedding, blocks, merger(s), position table)."""
    hv, iv, m2 = d.v_hidden, d.v_intermediate, d.v_merge ** 2
    patch_in = 3 * d.v_temporal * d.v_patch ** 2
    if d.v_swiglu:  # Qwen2.5-VL: RMSNorm ×2, qkv/proj with bias, SwiGLU with bias; conv without bias
        block = 2 * hv + (hv * 3 * hv + 3 * hv) + (hv * hv + hv) + 2 * (hv * iv + iv) + (iv * hv + hv)
        patch = patch_in * hv
        merger = hv + (hv * m2) ** 2 + hv * m2 + hv * m2 * d.v_out + d.v_out  # RMSNorm, 2-layer MLP
        return patch + d.v_depth * block + merger
    # Qwen3-VL: LayerNorm ×2 (weight + bias), qkv/proj with bias, fc1 → GELU → fc2 with bias; conv with bias
    block = 4 * hv + (hv * 3 * hv + 3 * hv) + (hv * hv + hv) + (hv * iv + iv) + (iv * hv + hv)
    patch = patch_in * hv + hv
    mlp = (hv * m2) ** 2 + hv * m2 + hv * m2 * d.v_out + d.v_out
    merger = 2 * hv + mlp  # LayerNorm over the ViT width, then the 2-layer MLP
    deepstack = d.v_deepstack * (2 * hv * m2 + mlp)  # LayerNorm over the merged width, then the MLP
    return patch + d.v_pos_embed * hv + d.v_depth * block + merger + deepstack


def param_breakdown(name: str) -> dict[str, int]:
    """Parameter counts by part, from the config alone: `decoder_linear` (weights of the seven projections, the
    quantisable part), `decoder_bias`, `norms` (decoder + final + q/k norms), `embed`, `lm_head` (0 if tied),
    `vision`, and `total`."""
    d = dims(name)
    linear = d.layers * sum(i * o for i, o in linear_shapes(d).values())
    bias = d.layers * (d.q + 2 * d.kv) if d.attention_bias else 0
    norms = d.layers * (2 * d.hidden + (2 * d.head_dim if d.qk_norm else 0)) + d.hidden
    embed = d.vocab * d.hidden
    lm_head = 0 if d.tied else d.vocab * d.hidden
    vision = vision_params(d)
    parts = {"decoder_linear": linear, "decoder_bias": bias, "norms": norms, "embed": embed, "lm_head": lm_head,
             "vision": vision}
    parts["total"] = sum(parts.values())
    return parts


def lora_params(name: str, r: int, targets: tuple[str, ...] | list[str]) -> int:
    """Trainable LoRA parameters: r × (in + out) for every targeted linear of every decoder layer."""
    d = dims(name)
    shapes = linear_shapes(d)
    unknown = sorted(set(targets) - set(shapes))
    if unknown:
        raise ValueError(f"LoRA targets {unknown} are not decoder linears of {name} ({sorted(shapes)})")
    return d.layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


def image_tokens(name: str, image_size: int | tuple[int, int], min_pixels: int, max_pixels: int) -> int:
    """LLM tokens for one image of `image_size` pixels (int = square) after Qwen's resize: patches / merge²."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    d = dims(name)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    factor = d.v_patch * d.v_merge
    rh, rw = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return (rh // d.v_patch) * (rw // d.v_patch) // (d.v_merge ** 2)


def _decoder_layer_elems_per_token(d: Dims, lora_targets: tuple[str, ...], lora_dropout: float) -> tuple[int, int]:
    """(bf16 elements, 1-byte mask elements) kept for backward per token in one decoder layer."""
    elems = 4 * d.hidden + (d.q + 2 * d.kv) + d.q + 4 * d.intermediate
    if d.qk_norm:
        elems += d.q + d.kv
    masks = 0
    if lora_targets and lora_dropout > 0:
        shapes = linear_shapes(d)
        copies = sum(shapes[t][0] for t in lora_targets)
        elems += copies
        masks += copies
    return elems, masks


def _vision_block_elems_per_patch(d: Dims) -> int:
    return 8 * d.v_hidden + (4 if d.v_swiglu else 2) * d.v_intermediate


def estimate(cfg: "RunConfig", *, name: str | None = None, prompt_text_tokens: int = PROMPT_TEXT_TOKENS,
             images_per_sample: int = 1, label: str | None = None) -> dict[str, Any]:
    """One row of the memory table for `cfg` (sizes in GiB). `name`: the shipped config (default: the one whose
    hub id is `cfg.model_id`)."""
    name = name or published_name_for(cfg.model_id)
    if name is None:
        raise ValueError(f"profile {cfg.profile!r}: model {cfg.model_id!r} has no shipped config "
                         f"({', '.join(PUBLISHED)}); pass name=")
    d = dims(name)
    parts = param_breakdown(name)
    total_params = parts["total"]
    lora_targets = tuple(cfg.lora_target_modules) if cfg.finetune == "lora" else ()

    # --- sequence -------------------------------------------------------------------------------------------
    img = image_tokens(name, cfg.image_size, cfg.min_pixels, cfg.max_pixels) * images_per_sample
    completion = cfg.max_completion_length
    seq = prompt_text_tokens + img + completion
    micro = cfg.per_device_train_batch_size
    gen_seqs = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    shards = max(cfg.num_processes, 1) if cfg.deepspeed and "zero3" in str(cfg.deepspeed) else 1

    # --- weights and optimizer --------------------------------------------------------------------------------
    rest = total_params - parts["decoder_linear"]
    if cfg.finetune == "full":
        weights = total_params * 2 / shards
        lora_n = 0
        optimizer = total_params * (2 + 12) / shards  # bf16 gradients + fp32 master + AdamW m, v
        reference = total_params * 2 / shards if cfg.beta > 0 else 0.0
        biggest = max(parts["embed"], parts["lm_head"])
        layer = parts["decoder_linear"] // d.layers
        zero_working = (biggest + layer) * 2 if shards > 1 else 0.0
    else:
        if cfg.quantization == "4bit":
            weights = parts["decoder_linear"] * _nf4_bytes_per_param() + rest * 2
        elif cfg.quantization == "8bit":
            rows = d.layers * sum(o for _, o in linear_shapes(d).values())
            weights = parts["decoder_linear"] * 1 + rows * 4 + rest * 2
        else:
            weights = total_params * 2
        lora_n = lora_params(name, cfg.lora_r, lora_targets)
        # adapter weights, gradients, AdamW m and v: fp32, or bf16 on a quantised base (TRL casts them)
        optimizer = lora_n * (8 if cfg.quantization else 16)
        reference = 0.0  # with LoRA, TRL's reference model is the base with adapters disabled
        zero_working = 0.0
    persistent = weights + optimizer + reference + zero_working

    # --- training activations ---------------------------------------------------------------------------------
    tokens = micro * seq
    layer_elems, layer_masks = _decoder_layer_elems_per_token(d, lora_targets, cfg.lora_dropout)
    per_layer = tokens * (2 * layer_elems + layer_masks)
    act_no_ckpt = d.layers * per_layer + tokens * d.hidden * 2  # + embeddings output
    act_ckpt = d.layers * tokens * d.hidden * 2 + per_layer + tokens * d.hidden * 2
    patches = micro * img * d.v_merge ** 2  # ViT patches in the micro-batch (img counts every image)
    v_block = patches * _vision_block_elems_per_patch(d) * 2
    if cfg.finetune == "full":
        vision_no_ckpt = d.v_depth * v_block
        vision_ckpt = d.v_depth * patches * d.v_hidden * 2 + v_block
    else:
        vision_no_ckpt = vision_ckpt = v_block  # frozen tower: one block's transient tensors
    logit_tokens = micro * completion
    fused_logits = (2 * min(logit_tokens, TRL_TOKEN_CHUNK) * min(TRL_VOCAB_CHUNK, d.vocab) * 2
                    + logit_tokens * (8 * 4 + d.hidden * 4))  # 2 tiles + fp32 stats + fp32 d(hidden)
    materialised_logits = 2 * logit_tokens * d.vocab * 4
    act = act_ckpt if cfg.gradient_checkpointing else act_no_ckpt
    vis = vision_ckpt if cfg.gradient_checkpointing else vision_no_ckpt
    train_peak = act + vis + fused_logits

    # --- generation ---------------------------------------------------------------------------------------------
    kv_cache = d.layers * 2 * d.kv * seq * gen_seqs * 2
    gathered = total_params * 2 - weights if shards > 1 else 0.0  # ZeRO-3: full bf16 weights for generate()
    gen_vision = gen_seqs * img * d.v_merge ** 2 * _vision_block_elems_per_patch(d) * 2  # one ViT block, no grad
    gen_logits = gen_seqs * d.vocab * 4 * 2  # last-position logits in fp32 (+ processed copy)
    gen_peak = kv_cache + gathered + gen_vision + gen_logits

    total = persistent + max(train_peak, gen_peak) + RUNTIME_GIB * GiB
    key = label or cfg.profile
    target = TARGETS_GIB.get(key)
    row = {
        "profile": key,
        "model": name,
        "quantization": cfg.quantization or "bf16",
        "finetune": cfg.finetune + (f" r={cfg.lora_r}" if cfg.finetune == "lora" else f" ZeRO-3/{shards}"),
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "micro_batch": micro,
        "generation_sequences": gen_seqs,
        "image_tokens": img,
        "sequence_tokens": seq,
        "params": total_params,
        "lora_params": lora_n,
        "weights_gib": weights / GiB,
        "adapters_optimizer_gib": optimizer / GiB,
        "reference_model_gib": reference / GiB,
        "zero3_working_gib": zero_working / GiB,
        "activations_gib": act / GiB,
        "activations_no_ckpt_gib": act_no_ckpt / GiB,
        "activations_ckpt_gib": act_ckpt / GiB,
        "vision_activations_gib": vis / GiB,
        "logits_fused_gib": fused_logits / GiB,
        "logits_materialised_gib": materialised_logits / GiB,
        "train_peak_gib": train_peak / GiB,
        "kv_cache_gib": kv_cache / GiB,
        "generation_peak_gib": gen_peak / GiB,
        "runtime_gib": RUNTIME_GIB,
        "total_gib": total / GiB,
        "target_gib": target,
        "fits": None if target is None else total / GiB <= target,
        "label": LABEL,
    }
    return row


def memory_table(profiles: tuple[str, ...] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Rows for every GPU profile (all profiles but `tiny-cpu`), plus the 7B LoRA profile switched to 4-bit
    (the "7B QLoRA ≤ 24 GiB" target). `kwargs` go to `estimate`."""
    from arftlib.config import PROFILES, get_config

    names = profiles or tuple(p for p in PROFILES if p != "tiny-cpu")
    rows = []
    for p in names:
        cfg = get_config(p)
        rows.append(estimate(cfg, **kwargs))
        if p == "qwen2.5-vl-7b-lora-80gb":
            rows.append(estimate(cfg.replace(quantization="4bit"), label=f"{p}+4bit", **kwargs))
    return rows


def memory_table_markdown(rows: list[dict[str, Any]] | None = None) -> str:
    """The table as markdown, headed by its label."""
    rows = memory_table() if rows is None else rows

    def g(x: float) -> str:
        return f"{x:.1f}"

    lines = [
        f"GPU memory per device, GiB — **{LABEL}**; sequences at their longest "
        f"({PROMPT_TEXT_TOKENS} prompt text tokens + one 720×720 image + max_completion_length).",
        "",
        "| profile | model | weights | LoRA/optim. | ref+ZeRO | act. (ckpt / no ckpt) | logits fused (plain) "
        "| KV cache | train peak | gen. peak | total | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        target = "—" if r["target_gib"] is None else f"≤ {r['target_gib']:.0f} {'✓' if r['fits'] else '✗'}"
        lines.append(
            f"| {r['profile']} | {r['model']} ({r['quantization']}, {r['finetune']}) | {g(r['weights_gib'])} | "
            f"{g(r['adapters_optimizer_gib'])} | {g(r['reference_model_gib'] + r['zero3_working_gib'])} | "
            f"{g(r['activations_ckpt_gib'])} / {g(r['activations_no_ckpt_gib'])}"
            f"{'' if r['gradient_checkpointing'] else ' (off)'} | "
            f"{g(r['logits_fused_gib'])} ({g(r['logits_materialised_gib'])}) | {g(r['kv_cache_gib'])} | "
            f"{g(r['train_peak_gib'])} | {g(r['generation_peak_gib'])} | **{g(r['total_gib'])}** | {target} |"
        )
    return "\n".join(lines)


__all__ = [
    "LABEL", "Dims", "dims", "param_breakdown", "lora_params", "vision_params", "image_tokens", "estimate",
    "memory_table", "memory_table_markdown", "linear_shapes",
]
