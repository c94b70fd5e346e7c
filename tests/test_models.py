"""Tiny offline VLMs and the policy loader (arftlib.models).

Each architecture is built once per module: Qwen2.5-VL through `tiny_model_path` into a temporary cache,
Qwen3-VL through the `python -m arftlib build-tiny-model` command line.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("trl")
pytest.importorskip("peft")

from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin  # noqa: E402

from arftlib import models  # noqa: E402
from arftlib.config import get_config  # noqa: E402
from arftlib.paths import REPO_ROOT  # noqa: E402

ALL_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("arft-cache")
    mp.setenv("ARFT_CACHE_DIR", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def qwen25_dir(cache_root) -> Path:
    return models.tiny_model_path("qwen2_5_vl")


@pytest.fixture(scope="module")
def cli_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny-qwen3"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "arftlib", "build-tiny-model", str(out), "--arch", "qwen3_vl", "--seed", "0"],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(REPO_ROOT),
    )
    return out, proc


@pytest.fixture(scope="module")
def qwen3_dir(cli_build) -> Path:
    out, proc = cli_build
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(params=["qwen2_5_vl", "qwen3_vl"])
def tiny_dir(request) -> Path:
    return request.getfixturevalue("qwen25_dir" if request.param == "qwen2_5_vl" else "qwen3_dir")


def image_prompt(processor, device="cpu", text="What is the color of the car? Use <think> first."):
    image = Image.new("RGB", (112, 112), (200, 40, 30))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt").to(device)


# ------------------------------------------------------------------------------------------------- building

def test_cli_build_tiny_model(cli_build):
    out, proc = cli_build
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    marker = json.loads((out / models.MARKER_FILE).read_text())
    assert marker["random_weights"] is True and marker["arch"] == "qwen3_vl" and marker["seed"] == 0
    assert "RANDOM WEIGHTS" in (out / "README.md").read_text()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (out / name).is_file(), name


def test_processor_reloads_as_processor(tiny_dir):
    from trl.chat_template_utils import qwen3_vl_chat_template

    processor = AutoProcessor.from_pretrained(tiny_dir)
    assert isinstance(processor, ProcessorMixin)
    expected = "Qwen2_5_VLProcessor" if "qwen3" not in tiny_dir.name else "Qwen3VLProcessor"
    assert type(processor).__name__ == expected
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessor"
    assert processor.video_processor is not None
    tok = processor.tokenizer
    assert (tok.eos_token, tok.pad_token, tok.padding_side) == ("<|im_end|>", "<|endoftext|>", "left")
    assert processor.chat_template == qwen3_vl_chat_template  # byte-identical: TRL recognises it


def test_generates_from_image_and_text(tiny_dir):
    processor = AutoProcessor.from_pretrained(tiny_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    enc = image_prompt(processor)
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((enc["input_ids"] == image_pad).sum()) == 16  # 112×112 → 16 merged visual tokens
    banned = models.suppressed_token_ids(processor)
    out = model.generate(**enc, max_new_tokens=6, do_sample=True, suppress_tokens=banned)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    assert len(new) >= 1
    assert not set(new) & set(banned)
    assert isinstance(processor.decode(new), str)


def test_tag_and_special_tokens_are_single_tokens(tiny_dir):
    tok = AutoProcessor.from_pretrained(tiny_dir).tokenizer
    for tag in models.TAG_TOKENS:
        ids = tok.encode(tag, add_special_tokens=False)
        assert len(ids) == 1, (tag, ids)
        assert tok.decode(ids, skip_special_tokens=True) == tag  # plain added tokens survive decoding
    for special in models.QWEN_SPECIAL_TOKENS:
        ids = tok.encode(special, add_special_tokens=False)
        assert len(ids) == 1 and tok.decode(ids, skip_special_tokens=True) == ""
    text = "<think>rotate it</think><code>cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)</code> 2024"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text  # byte-level round trip
    assert len(tok.tokenize("cv2.rotate")) <= 4  # the workbench vocabulary is in the merges


def test_chat_template_supports_tools(tiny_dir):
    from transformers.utils import get_json_schema
    from trl.chat_template_utils import (add_response_schema, is_chat_template_prefix_preserving,
                                         supports_tool_calling)

    def search(query: str) -> str:
        """Search the offline corpus.

        Args:
            query: what to look for
        """
        return query

    processor = AutoProcessor.from_pretrained(tiny_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who built it?"}]}]
    text = processor.apply_chat_template(messages, tools=[get_json_schema(search)], add_generation_prompt=True,
                                         tokenize=False)
    assert "<tools>" in text and '"name": "search"' in text and text.endswith("<|im_start|>assistant\n")
    # What TRL's GRPOTrainer checks before running a tool loop, and the parser it installs.
    assert supports_tool_calling(processor) and is_chat_template_prefix_preserving(processor)
    add_response_schema(processor)
    parsed = processor.tokenizer.parse_response(
        '<tool_call>\n{"name": "search", "arguments": {"query": "tower"}}\n</tool_call><|im_end|>', prefix="")
    assert parsed["tool_calls"][0]["function"] == {"name": "search", "arguments": {"query": "tower"}}


def test_same_seed_same_weights(qwen25_dir, tmp_path):
    again = models.build_tiny_vlm(tmp_path / "again", arch="qwen2_5_vl", seed=0)
    other = models.build_tiny_vlm(tmp_path / "other", arch="qwen2_5_vl", seed=1)
    assert models.weights_digest(again) == models.weights_digest(qwen25_dir)
    assert models.weights_digest(other) != models.weights_digest(qwen25_dir)
    assert (again / "tokenizer.json").read_bytes() == (qwen25_dir / "tokenizer.json").read_bytes()


def test_same_build_across_processes(qwen3_dir, tmp_path):
    here = models.build_tiny_vlm(tmp_path / "q3", arch="qwen3_vl", seed=0)  # the CLI built qwen3_dir
    assert models.weights_digest(here) == models.weights_digest(qwen3_dir)
    for name in ("tokenizer.json", "config.json", "processor_config.json", "chat_template.jinja"):
        assert (here / name).read_bytes() == (qwen3_dir / name).read_bytes(), name


def test_tiny_model_path_reuses_and_rebuilds(qwen25_dir):
    marker = qwen25_dir / models.MARKER_FILE
    stamp = marker.stat().st_mtime_ns
    assert models.tiny_model_path("qwen2_5_vl") == qwen25_dir
    assert marker.stat().st_mtime_ns == stamp  # reused, not rebuilt
    data = json.loads(marker.read_text())
    marker.write_text(json.dumps(dict(data, version=-1)))
    assert models.tiny_model_path("qwen2_5_vl") == qwen25_dir
    assert json.loads(marker.read_text())["version"] == models.TINY_MODEL_VERSION  # stale build replaced
    assert not list(qwen25_dir.parent.glob(".qwen2_5_vl-build-*"))  # no temporary folders left


def test_seeing_size_builds_separately_and_spends_few_tokens_on_micro_turns(cache_root, qwen25_dir):
    """The `seeing` preset: ~5 M parameters, its own cache folder and marker, 16 image tokens per 112×112 image,
    a gold micro code turn in few tokens; the toy cache is untouched."""
    from arftlib.data import micro_coding as MC
    from arftlib.turns import gold_turns

    toy_stamp = (qwen25_dir / models.MARKER_FILE).stat().st_mtime_ns
    path = models.tiny_model_path("qwen2_5_vl", size="seeing")
    assert path != qwen25_dir and path.name == "qwen2_5_vl-seeing"
    assert models.tiny_model_path("qwen2_5_vl", size="seeing") == path  # reused
    assert (qwen25_dir / models.MARKER_FILE).stat().st_mtime_ns == toy_stamp
    marker = json.loads((path / models.MARKER_FILE).read_text())
    assert marker["size"] == "seeing" and marker["corpus_sha256"] == models.corpus_digest("seeing")
    assert 4_000_000 < marker["parameters"] < 7_000_000
    config = json.loads((path / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 256 and config["vision_config"]["out_hidden_size"] == 256
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    enc = image_prompt(processor)
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((enc["input_ids"] == image_pad).sum()) == 16
    assert model(**enc).logits.shape[-1] == len(processor.tokenizer)
    tok = processor.tokenizer
    item = MC.make_item({"index": 0, "split": "train", "difficulty": "simple", "labels": ["dark"],
                         "question_type": "color"}, seed=0)
    problem, code, answer = gold_turns(item.task)
    assert tok.decode(tok.encode(code, add_special_tokens=False)) == code
    assert len(tok.encode(code, add_special_tokens=False)) <= 60  # the toy tokenizer needs ~100
    for tag in models.TAG_TOKENS:
        assert len(tok.encode(tag, add_special_tokens=False)) == 1
    with pytest.raises(ValueError, match="unknown tiny-model size"):
        models.tiny_model_path("qwen2_5_vl", size="huge")


def _image_grid_turns(model_dir: Path) -> tuple[float, float, float]:
    """(radians per image row, per image column at the fastest frequency of their M-RoPE sections, radians of the
    slowest frequency over 512 text tokens) of a Qwen2.5-VL config (head_dim 64)."""
    rope = json.loads((model_dir / "config.json").read_text())["text_config"]["rope_parameters"]
    inv_freq = [rope["rope_theta"] ** (-i / 32) for i in range(32)]
    t_sec, h_sec, w_sec = rope["mrope_section"]
    assert t_sec + h_sec + w_sec == 32
    return inv_freq[t_sec], inv_freq[t_sec + h_sec], inv_freq[-1] * 512


def test_seeing_grid_size_gives_image_rows_and_columns_fast_rotary_frequencies(cache_root):
    """WHERE a figure is reaches the text only through M-RoPE. `seeing` (the 3B's layout halved) turns one row of
    the 4 × 4 image grid by 0.03 rad, and position was never learned; `seeing-grid` must turn rows and columns by
    visible angles while text positions do not wrap within an episode — and be otherwise the same model."""
    seeing = models.tiny_model_path("qwen2_5_vl", size="seeing")
    grid = models.tiny_model_path("qwen2_5_vl", size="seeing-grid")
    assert grid.name == "qwen2_5_vl-seeing-grid" and grid != seeing
    row, col, text = _image_grid_turns(grid)
    assert row >= 0.5 and col >= 0.05 and text < 2 * 3.1416, (row, col, text)
    assert _image_grid_turns(seeing)[0] < 0.05  # why the grid size exists
    marker = json.loads((grid / models.MARKER_FILE).read_text())
    assert marker["size"] == "seeing-grid"
    assert marker["parameters"] == json.loads((seeing / models.MARKER_FILE).read_text())["parameters"]
    assert (grid / "tokenizer.json").read_bytes() == (seeing / "tokenizer.json").read_bytes()
    assert models.resolve_model_path("tiny:qwen2_5_vl:seeing-grid") == str(grid)


# ------------------------------------------------------------------------------------------------- loading

def test_load_policy_tiny(qwen25_dir):
    model, processor = models.load_policy("tiny", torch_dtype="float32", min_pixels=28 * 28, max_pixels=56 * 56)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert isinstance(processor, ProcessorMixin)
    assert model.dtype == torch.float32 and not model.training
    assert model.config._attn_implementation == "sdpa"
    enc = image_prompt(processor, model.device)  # max 56×56 pixels → 4 visual tokens instead of 16
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 4
    with torch.no_grad():
        assert model(**enc).logits.shape[-1] == len(processor.tokenizer)


def test_load_for_config_routes_arch_and_pixels(cache_root):
    cfg = get_config("tiny-cpu", arch="qwen3_vl")
    model, processor = models.load_for_config(cfg)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    size = processor.image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (cfg.min_pixels, cfg.max_pixels)


def test_suppressed_token_ids(qwen25_dir):
    processor = AutoProcessor.from_pretrained(qwen25_dir)
    tok = processor.tokenizer
    expected = {tok.convert_tokens_to_ids(t) for t in
                ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")}
    assert set(models.suppressed_token_ids(processor)) == expected
    assert models.suppressed_token_ids(tok) == models.suppressed_token_ids(processor)


def test_ensure_tool_chat_template(qwen25_dir):
    from trl.chat_template_utils import qwen2_5_vl_chat_template, supports_tool_calling

    processor = AutoProcessor.from_pretrained(qwen25_dir)
    processor.chat_template = qwen2_5_vl_chat_template  # the stock Qwen2.5-VL template: no tools
    assert not supports_tool_calling(processor)
    assert models.ensure_tool_chat_template(processor) is True
    assert supports_tool_calling(processor)
    assert models.ensure_tool_chat_template(processor) is False


def test_friendly_errors(tmp_path, qwen25_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load_policy(str(tmp_path / "missing" / "model"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.load_policy(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        models.load_policy(str(qwen25_dir), adapter=tmp_path)
    with pytest.raises(ValueError, match="quantization"):
        models.load_policy(str(qwen25_dir), quantization="3bit")
    with pytest.raises(ValueError, match="arch"):
        models.build_tiny_vlm(tmp_path / "x", arch="llava")
    assert models.resolve_model_path("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"  # no I/O


# ------------------------------------------------------------------------------------------------- LoRA / QLoRA

def test_lora_targets_language_model_only_and_reloads(qwen25_dir, tmp_path):
    from peft import get_peft_model

    assert models.lora_config_for(get_config("tiny-cpu", finetune="full")) is None
    cfg = get_config("tiny-cpu", lora_target_modules=ALL_LINEARS)  # the vision MLP also has gate/up/down_proj
    model, processor = models.load_policy(str(qwen25_dir), torch_dtype="float32")
    peft_model = get_peft_model(model, models.lora_config_for(cfg))
    lora_modules = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A")]
    assert len(lora_modules) == 2 * len(ALL_LINEARS)  # 2 decoder layers × 7 linears
    assert all("language_model" in n and "visual" not in n for n in lora_modules)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "visual" not in n for n in trainable)

    torch.manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero; make the adapter change the output
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    peft_model.eval()
    enc = image_prompt(processor, model.device)
    with torch.no_grad():
        want = peft_model(**enc).logits
        base = peft_model.get_base_model()
        with peft_model.disable_adapter():
            plain = base(**enc).logits
    assert not torch.allclose(want, plain)
    peft_model.save_pretrained(tmp_path / "adapter")

    reloaded, _ = models.load_policy(str(qwen25_dir), adapter=tmp_path / "adapter", torch_dtype="float32")
    with torch.no_grad():
        got = reloaded(**enc).logits
    torch.testing.assert_close(got, want)


def test_4bit_on_cpu_keeps_vision_tower_unquantised(qwen25_dir, caplog):
    bnb = pytest.importorskip("bitsandbytes")
    with caplog.at_level(logging.WARNING, logger="arftlib.models"):
        model, processor = models.load_policy(str(qwen25_dir), quantization="4bit")
    if not torch.cuda.is_available():
        assert any("without CUDA" in r.getMessage() for r in caplog.records)
    quantised = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantised) == 2 * len(ALL_LINEARS)
    assert all(n.startswith("model.language_model.") for n in quantised)
    for name, param in model.named_parameters():
        if name.startswith("model.visual.") or name.startswith("lm_head"):
            assert not isinstance(param, bnb.nn.Params4bit), name
            assert param.dtype == (torch.bfloat16 if torch.cuda.is_available() else torch.float32), name
    enc = image_prompt(processor, model.device)
    out = model.generate(**enc, max_new_tokens=3, suppress_tokens=models.suppressed_token_ids(processor))
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_also_trained_protocols_come_from_the_adapter_or_its_model(tmp_path):
    """A warm start with tags rows records `also_protocols`; an adapter trained from it (whose own form is chat)
    inherits it through the model folder; a folder without the file knows nothing more."""
    ws, adapter, bare = tmp_path / "ws", tmp_path / "adapter", tmp_path / "bare"
    for d in (ws, adapter, bare):
        d.mkdir()
    cfg = get_config("tiny-cpu")
    form = {**models.trained_form(cfg, "sft"), "also_protocols": ["tags"]}
    (ws / models.TRAINED_FORM_FILE).write_text(json.dumps(form))
    (adapter / models.TRAINED_FORM_FILE).write_text(json.dumps(models.trained_form(cfg, "agentic")))
    assert models.also_trained_protocols(str(ws), None) == {"tags"}
    assert models.also_trained_protocols(str(ws), str(adapter)) == {"tags"}
    assert models.trained_form_of(str(ws), str(adapter))["mode"] == "agentic"  # the adapter's own form comes first
    assert models.also_trained_protocols(str(bare), None) == set()
    assert models.also_trained_protocols("Qwen/Qwen2.5-VL-3B-Instruct", None) == set()
