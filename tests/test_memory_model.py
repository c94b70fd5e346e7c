"""The GPU-memory estimate of the profiles (arftlib.memory_model): its parameter arithmetic against the real
models' counts, and the directions its terms must move in."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from arftlib import memory_model as mm  # noqa: E402
from arftlib import published  # noqa: E402
from arftlib.config import PROFILES, get_config  # noqa: E402


@pytest.mark.parametrize("name", published.PUBLISHED)
def test_parameter_arithmetic_equals_the_built_models(name):
    """The config-only formulas give exactly the meta-device count of the transformers model."""
    parts = mm.param_breakdown(name)
    counts = published.count_parameters(name)
    assert parts["total"] == counts["total"]
    assert parts["vision"] == counts["vision"]
    assert parts["lm_head"] == counts["lm_head"]
    assert parts["embed"] + parts["decoder_linear"] + parts["decoder_bias"] + parts["norms"] == counts["language"]


def test_weight_term_uses_the_parameter_counts():
    gib = mm.GiB
    # bf16 LoRA: every parameter at 2 bytes
    row = mm.estimate(get_config("qwen2.5-vl-7b-lora-80gb"))
    assert row["weights_gib"] * gib == pytest.approx(published.count_parameters("qwen2.5-vl-7b")["total"] * 2)
    # QLoRA: the decoder linears at NF4 + double-quant state, everything else (vision, embeddings) bf16
    row = mm.estimate(get_config("qwen2.5-vl-3b-qlora-24gb"))
    parts = mm.param_breakdown("qwen2.5-vl-3b")
    nf4 = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits + 8-bit absmax per 64 + fp32 per 256 absmax
    expected = parts["decoder_linear"] * nf4 + (parts["total"] - parts["decoder_linear"]) * 2
    assert row["weights_gib"] * gib == pytest.approx(expected)
    assert row["params"] == 3_754_622_976
    # LoRA r=64 on the seven projections of 36 layers
    assert row["lora_params"] == mm.lora_params("qwen2.5-vl-3b", 64, ("q_proj", "k_proj", "v_proj", "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"))
    # QLoRA adapters are bf16 (TRL casts them on a quantised base): weights, gradients, AdamW m, v at 2 B each
    assert row["adapters_optimizer_gib"] * gib == pytest.approx(row["lora_params"] * 8)


def test_image_tokens_follow_the_processor_arithmetic():
    # the reference's 401,408-pixel cap: 720 → 616 px (Qwen2.5-VL, 28-px units) / 608 px (Qwen3-VL, 32-px units)
    assert mm.image_tokens("qwen2.5-vl-3b", 720, 3136, 401408) == (616 // 14) ** 2 // 4 == 484
    assert mm.image_tokens("qwen3-vl-4b", 720, 4096, 401408) == (608 // 16) ** 2 // 4 == 361
    # the published bounds leave 720 px alone up to rounding: 728 px → 52 × 52 patches → 676 tokens
    assert mm.image_tokens("qwen2.5-vl-7b", 720, 3136, 12845056) == 676
    assert mm.image_tokens("qwen2.5-vl-3b", 64, 3136, 401408) == 4  # what the processor gives (tokenizer tests)


def test_monotonic_in_sequence_length():
    base = get_config("qwen2.5-vl-3b-qlora-24gb")
    rows = [mm.estimate(base.replace(max_completion_length=n)) for n in (128, 256, 512, 1024, 2048)]
    for key in ("activations_gib", "activations_no_ckpt_gib", "kv_cache_gib", "train_peak_gib", "total_gib",
                "logits_materialised_gib"):
        values = [r[key] for r in rows]
        assert values == sorted(values) and values[0] < values[-1], key
    prompts = [mm.estimate(base, prompt_text_tokens=n)["total_gib"] for n in (100, 400, 1600)]
    assert prompts == sorted(prompts) and prompts[0] < prompts[-1]
    assert mm.estimate(base, images_per_sample=3)["total_gib"] > mm.estimate(base)["total_gib"]


def test_checkpointing_lowers_activations():
    for profile in PROFILES:
        if profile == "tiny-cpu":
            continue
        cfg = get_config(profile)
        on = mm.estimate(cfg.replace(gradient_checkpointing=True))
        off = mm.estimate(cfg.replace(gradient_checkpointing=False))
        assert on["activations_ckpt_gib"] < on["activations_no_ckpt_gib"], profile
        assert on["activations_gib"] < off["activations_gib"], profile
        assert on["train_peak_gib"] < off["train_peak_gib"], profile


def test_table_is_labelled_and_meets_the_targets():
    rows = mm.memory_table()
    by = {r["profile"]: r for r in rows}
    assert set(by) == {p for p in PROFILES if p != "tiny-cpu"} | {"qwen2.5-vl-7b-lora-80gb+4bit"}
    assert all(r["label"] == "estimate (not measured on a GPU)" for r in rows)
    assert by["qwen2.5-vl-3b-qlora-24gb"]["target_gib"] == 16 and by["qwen2.5-vl-3b-qlora-24gb"]["fits"]
    assert by["qwen2.5-vl-7b-lora-80gb+4bit"]["target_gib"] == 24 and by["qwen2.5-vl-7b-lora-80gb+4bit"]["fits"]
    assert all(r["fits"] for r in rows), [(r["profile"], round(r["total_gib"], 1)) for r in rows if not r["fits"]]
    # the fused LM head of TRL 1.16 is far smaller than materialised fp32 logits
    assert all(r["logits_fused_gib"] < r["logits_materialised_gib"] for r in rows)
    md = mm.memory_table_markdown(rows)
    assert "estimate (not measured on a GPU)" in md and "≤ 16" in md and "≤ 24" in md
    assert md.count("\n| ") == len(rows) + 1


def test_unknown_model_fails_loud():
    with pytest.raises(ValueError, match="no shipped config"):
        mm.estimate(get_config("tiny-cpu"))
    with pytest.raises(ValueError, match="not decoder linears"):
        mm.lora_params("qwen3-vl-2b", 8, ("qkv",))
