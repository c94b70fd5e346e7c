"""Policy models: load a Qwen2.5-VL / Qwen3-VL policy with its processor, and build a tiny one offline.

What it does
- `build_tiny_vlm(out_dir, arch, seed, size)` writes a *randomly initialised* tiny Qwen2.5-VL or Qwen3-VL with a
  real processor. Sizes (`TINY_SIZES`): `"toy"` (~0.2–0.3 M parameters, the fast unit tests' model),
  `"seeing"` (~4.9 M: text hidden 256 × 4 layers, ViT hidden 128 × 4 blocks, 16 image tokens per 112×112
  image; big enough to learn the micro benchmarks' colour questions in a minute or two of supervised training on
  2 CPU cores, see `experiments/micro_probe.py`) and `"seeing-grid"` (the same weights with a rotary layout under
  which position is learnable too; `_SIZE_DIMS`). All come with a byte-level BPE
  tokenizer trained here on ~30 KB of generated workbench text (questions, answers, OpenCV code, the action
  tags, digits), Qwen's special tokens with the same spelling, the Qwen image + video processors with tiny
  pixel budgets (112×112 at most: 16 image tokens), and a tool-capable chat template
  (TRL's `qwen3_vl_chat_template`, byte-identical, so TRL's GRPOTrainer recognises it and parses
  `<tool_call>` blocks). The result loads offline with `AutoModelForImageTextToText` and `AutoProcessor`.
  Same seed → identical files. `tiny_model_path(arch, seed, size)` builds once into the cache and reuses the
  build. The `seeing` tokenizer is trained on the same text plus the micro world's questions, answers, action
  payloads and gold code lines (`arftlib.data.micro_coding` / `micro_search`), so a micro turn costs few tokens.
- `load_policy(...)` loads a hub id, a local path or `"tiny"` (optionally 4-bit NF4 / 8-bit through
  bitsandbytes with the vision tower and `lm_head` kept unquantised, optionally with a saved LoRA adapter);
  `load_for_config(cfg)` does the same from a `RunConfig`; `lora_config_for(cfg)` targets the language
  model's linear layers only (never the vision tower).
- `suppressed_token_ids(processor)` lists the vision placeholder tokens a policy must never sample (a sampled
  `<|video_pad|>` crashes Qwen's rope-index computation on the next forward pass).
- `ensure_tool_chat_template(processor)` swaps in the tool-capable template for checkpoints whose own
  template cannot render tool calls (stock Qwen2.5-VL).

What it leaves out
- The tiny models' weights are random: `toy` exercises shapes, templates, masking, batching and the training
  loop, never answer quality; `seeing` must be trained (cold-start SFT) before it answers anything. Their
  vocabularies (~1–2 k tokens) are tiny, so they tokenise unseen text into many byte-level pieces.
- No downloads are attempted beyond what `from_pretrained` does for a hub id; here the hub is unreachable,
  so hub ids fail with a message that says so. No vLLM, DeepSpeed or multi-GPU placement here (the trainer
  and `accelerate` own those); `device_map=None` means "CPU, or this process's GPU when CUDA is present".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arftlib.paths import cache_dir

if TYPE_CHECKING:  # pragma: no cover - typing only
    from arftlib.config import RunConfig

log = logging.getLogger(__name__)

TRAINED_FORM_FILE = "arft_trained_form.json"  # next to a trained model / adapter: the episode form it learned


def trained_form(cfg: "RunConfig", mode: str) -> dict[str, Any]:
    """How the episodes a model was trained on were written: protocol, TRL tool-call form, prompt style, and whether a
    code turn's observation repeated the question under its image (`question_after_image`)."""
    return {"mode": mode, "protocol": cfg.protocol, "tool_format": cfg.tool_format if cfg.protocol == "chat" else None,
            "prompt_style": cfg.prompt_style, "question_after_image": bool(cfg.question_after_image),
            "profile": cfg.profile}


def trained_form_of(model: str | None, adapter: str | None) -> dict[str, Any] | None:
    """The form (`trained_form`) an adapter — else a model folder — records in `TRAINED_FORM_FILE` (written by
    `train` and the warm start); None for anything else (a hub id, the base models)."""
    forms = _recorded_forms(model, adapter)
    return forms[0] if forms else None


def also_trained_protocols(model: str | None, adapter: str | None) -> set[str]:
    """Protocols beside its own form that the adapter or its model was also trained in (`also_protocols` in
    `TRAINED_FORM_FILE`: a warm start with `tags_rows` knows the paper's tags layout too, and an adapter trained
    from it keeps that)."""
    return {p for form in _recorded_forms(model, adapter) for p in form.get("also_protocols", [])}


def _recorded_forms(model: str | None, adapter: str | None) -> list[dict[str, Any]]:
    """The `TRAINED_FORM_FILE` contents of the adapter, then of the model, for each folder that has one."""
    return [json.loads((Path(f) / TRAINED_FORM_FILE).read_text(encoding="utf-8")) for f in (adapter, model)
            if f and (Path(f) / TRAINED_FORM_FILE).is_file()]


ARCHS = ("qwen2_5_vl", "qwen3_vl")
TINY_MODEL_VERSION = 1  # bump when the toy build changes; cached builds with another version are rebuilt
SEEING_MODEL_VERSION = 1  # the same for the `seeing` sizes (own counter: the toy cache survives; their dims are checked too)
TINY_SIZES = ("toy", "seeing", "seeing-grid")  # see _SIZE_DIMS
MARKER_FILE = "arft_tiny.json"  # written last: its presence means the build completed

# Qwen's special tokens, spelled as the real checkpoints spell them. The first block is `special=True`
# (stripped by `skip_special_tokens`), the second block are plain added tokens, as in Qwen2.5-VL.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_PLAIN_ADDED_TOKENS = (
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
# The workbench's action/observation tags: single, *non-special* tokens, so they survive
# `decode(..., skip_special_tokens=True)` and the parser sees them.
TAG_TOKENS = tuple(
    f"<{slash}{name}>"
    for name in ("think", "answer", "search", "code", "problem", "information", "tool_call", "tool_response",
                 "tips")
    for slash in ("", "/")
)
# Vision placeholders a policy must never emit itself.
VISION_PLACEHOLDER_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


# --------------------------------------------------------------------------------------------------------------
# tokenizer corpus
# --------------------------------------------------------------------------------------------------------------

_SUBJECTS = ("car", "dog", "cat", "man", "woman", "person", "building", "tower", "bridge", "sign", "book",
             "clock", "flower", "bird", "tree", "river", "mountain", "painting", "statue", "shirt", "bottle",
             "poster", "map", "chart", "table", "coin", "rocket", "astronaut", "coffee", "camera")
_ATTRS = ("color", "name", "number", "year", "height", "title", "brand", "price", "word", "time", "shape",
          "country", "city", "author", "date", "text", "letter", "size")
_COLORS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple", "brown", "gray", "pink")
_PLACES = ("Paris", "London", "Beijing", "Tokyo", "Berlin", "Rome", "Madrid", "Cairo", "Moscow", "Sydney",
           "New York", "Shanghai", "Hong Kong", "Toronto", "Mumbai")
_PEOPLE = ("Einstein", "Newton", "Curie", "Darwin", "Tesla", "Picasso", "Mozart", "Shakespeare", "Lincoln",
           "Napoleon", "Gandhi", "Galileo")
_DEGRADATIONS = ("rotation90", "rotation180", "dark", "overexposure", "blur", "noise", "crop", "none")
_CODE_SNIPPETS = (
    "import cv2\nimport numpy as np\nimage = cv2.imread('path_to_input_image.jpg')\n"
    "image = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)\ncv2.imwrite('path_to_output_image.jpg', image)",
    "import cv2\nimage = cv2.imread('path_to_input_image.jpg')\n"
    "image = cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)\ncv2.imwrite('path_to_output_image.jpg', image)",
    "import cv2\nimage = cv2.imread('path_to_input_image.jpg')\nimage = cv2.rotate(image, cv2.ROTATE_180)\n"
    "cv2.imwrite('path_to_output_image.jpg', image)",
    "import cv2\nimage = cv2.imread('path_to_input_image.jpg')\n"
    "image = cv2.convertScaleAbs(image, alpha=1.5, beta=40)\ncv2.imwrite('path_to_output_image.jpg', image)",
    "import cv2\nimage = cv2.imread('path_to_input_image.jpg')\nimage = cv2.GaussianBlur(image, (5, 5), 0)\n"
    "cv2.imwrite('path_to_output_image.jpg', image)",
    "import cv2\nimage = cv2.imread('path_to_input_image.jpg')\n"
    "image = cv2.fastNlMeansDenoisingColored(image, None, 10, 10, 7, 21)\n"
    "cv2.imwrite('path_to_output_image.jpg', image)",
    "import cv2\nimport numpy as np\nimage = cv2.imread('path_to_input_image.jpg')\n"
    "kernel = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]])\nimage = cv2.filter2D(image, -1, kernel)\n"
    "cv2.imwrite('path_to_output_image.jpg', image)",
    "import cv2\nimage = cv2.imread('path_to_input_image.jpg')\nh, w = image.shape[:2]\n"
    "x1, y1, x2, y2 = int(0.25 * w), int(0.25 * h), int(0.75 * w), int(0.75 * h)\n"
    "image = image[y1:y2, x1:x2]\ncv2.imwrite('path_to_output_image.jpg', image)",
    "import cv2\nimage = cv2.imread('path_to_input_image.jpg')\n"
    "image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)\nimage = cv2.equalizeHist(image)\n"
    "cv2.imwrite('path_to_output_image.jpg', image)",
    "from PIL import Image, ImageEnhance\nimage = Image.open('path_to_input_image.jpg')\n"
    "image = ImageEnhance.Brightness(image).enhance(1.8)\nimage.save('path_to_output_image.jpg')",
)
_PROSE = (
    "You are a helpful assistant.",
    "You are a visual agent. Think step by step, then call a tool or give the final answer.",
    "Answer the question about the image. Use the search tool when you need outside knowledge.",
    "If the image is rotated, dark, overexposed, blurred, noisy or needs a crop, write Python code to fix it.",
    "The search engine returns the top results as numbered snippets.",
    "For each function call, return a json object with function name and arguments.",
    "You may call one or more functions to assist with the user query.",
    "The question is hard because it needs two steps of reasoning across documents.",
    "According to the encyclopedia, the city was founded in the first century and became a capital later.",
)


def _tokenizer_corpus() -> list[str]:
    """~30 KB of generated text covering the workbench's vocabulary (fixed: independent of the model seed)."""
    rng = random.Random(1234)
    lines: list[str] = list(_PROSE)
    for _ in range(60):
        subj, attr, color = rng.choice(_SUBJECTS), rng.choice(_ATTRS), rng.choice(_COLORS)
        place, person = rng.choice(_PLACES), rng.choice(_PEOPLE)
        year, num = rng.randint(1800, 2025), rng.randint(0, 999)
        lines += [
            f"What is the {attr} of the {subj} in the image?",
            f"<think>The image shows a {color} {subj} near {place}. I should search for its {attr}.</think>",
            f"<search>{subj} {attr} {place} {year}</search>",
            f"<information> 1. Content: The {subj} in {place} was built in {year} by {person}. "
            f"2. Content: It is {num} meters tall. </information>",
            f"<answer>{rng.choice([color, place, person, str(year), str(num)])}</answer>",
            f"<problem>{{'{rng.choice(_DEGRADATIONS)}', '{rng.choice(_DEGRADATIONS)}'}}</problem>",
            f"Who was born in {place} in {year}? {person} lived there for {num % 90} years.",
            f"[{rng.randint(0, 1000)}, {rng.randint(0, 1000)}, {rng.randint(0, 1000)}, {rng.randint(0, 1000)}]",
        ]
    for snippet in _CODE_SNIPPETS:
        lines.append(f"<think>The image looks degraded, so I will fix it first.</think>\n<code>\n```python\n"
                     f"{snippet}\n```\n</code>")
    lines += [
        '<tool_call>\n{"name": "search", "arguments": {"query": "tallest tower in Paris"}}\n</tool_call>',
        '<tool_call>\n{"name": "run_code", "arguments": {"code": "import cv2"}}\n</tool_call>',
        "<tool_response>\nThe code ran and wrote path_to_output_image.jpg\n</tool_response>",
        "<tips>Give the answer in a few words.</tips>",
        " ".join(str(i) for i in range(200)),
        "0123456789 3.14 2.5 100% 1,000 -1 (x, y) [a, b] {k: v} == != <= >= += -= * / % _ # @ ! ? ; :",
    ]
    return lines


def _seeing_corpus() -> list[str]:
    """The `seeing` tokenizer's extra text: the micro benchmarks' questions, answers, problem sets, search
    queries, passages and gold code turns (generated from those modules with fixed seeds)."""
    from arftlib.data import micro_coding, micro_search

    return micro_coding.tokenizer_corpus() + micro_search.tokenizer_corpus()


def _corpus_for(size: str) -> list[str]:
    if size == "toy":
        return _tokenizer_corpus()
    if size in ("seeing", "seeing-grid"):
        # the micro text weighted ×4 so its frequent pieces (tags, code lines, colour words) become merges
        return _tokenizer_corpus() + _seeing_corpus() * 4
    raise ValueError(f"unknown tiny-model size {size!r}; choose one of {', '.join(TINY_SIZES)}")


def _dims_digest(size: str) -> str:
    """SHA-256 of a size's `_SIZE_DIMS` (the marker records it: an edited size, e.g. its rotary layout, rebuilds the
    cached model without a version bump)."""
    return hashlib.sha256(json.dumps(_SIZE_DIMS[size], sort_keys=True).encode("utf-8")).hexdigest()


def corpus_digest(size: str) -> str:
    """SHA-256 of a size's tokenizer training text (the `seeing` marker records it: a changed micro world
    rebuilds the cached model)."""
    return hashlib.sha256("\n".join(_corpus_for(size)).encode("utf-8")).hexdigest()


def _train_tokenizer(size: str = "toy"):
    """Byte-level BPE trained on `_corpus_for(size)`, Qwen's special tokens and the tags added on top."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    # Single-threaded training: reproducible, and no "forked after parallelism" warnings from later forks
    # (the code sandbox forks).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tok = Tokenizer(models.BPE())
    if size == "toy":
        # Digits are split one by one (as Qwen does), then GPT-2-style byte-level pre-tokenisation.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    else:
        # Words are whitespace-delimited chunks, punctuation included (a leading space or newline stays with
        # the chunk that follows), so a frequent code line piece such as `cv2.imread('path_to_input_image.jpg')`
        # or `shape?` can become ONE token; digits still one by one (as Qwen), then bytes without the GPT-2 regex.
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\s+"), behavior="merged_with_next"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_SIZE_DIMS[size]["vocab"],  # upper bound; a few KB of text yields fewer merges
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text is encodable
        special_tokens=[],
    )
    tok.train_from_iterator(_corpus_for(size), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_PLAIN_ADDED_TOKENS + TAG_TOKENS])
    return tok


# --------------------------------------------------------------------------------------------------------------
# tiny model
# --------------------------------------------------------------------------------------------------------------

# Per size: the knobs that differ (everything else is in _tiny_config). Head dims: text hidden / heads.
_SIZE_DIMS: dict[str, dict[str, Any]] = {
    "toy": dict(
        vocab=1024,  # BPE vocabulary upper bound
        hidden=64,  # text width; also what the vision merger must project to (out_hidden_size)
        intermediate=128,  # SwiGLU MLP width (2 × hidden)
        layers=2,  # two decoder layers: enough for KV-cache / layer-indexing bugs to show
        heads=4,  # 4 query heads → head_dim 16
        kv_heads=2,  # grouped-query attention (2 queries per KV head), as the real models
        mrope_25=[2, 3, 3],  # Qwen2.5-VL M-RoPE (t, h, w) sections; sum = head_dim / 2 = 8
        mrope_3=[4, 2, 2],  # Qwen3-VL interleaved M-RoPE sections; sum = 8
        v_depth=2,  # ViT blocks
        v_hidden=32,  # ViT width
        v_intermediate=64,  # ViT MLP width
        v_heads=2,  # ViT heads → head_dim 16
        fullatt=[1],  # Qwen2.5-VL: the last block attends globally, the first in windows
        deepstack=[0],  # Qwen3-VL: features of ViT block 0 are added into text layer 0
    ),
    "seeing": dict(
        vocab=2048,  # room for the micro world's words and code lines as single tokens
        hidden=256,  # text width (= merger output)
        intermediate=768,  # SwiGLU MLP width (3 × hidden)
        layers=4,  # decoder layers
        heads=4,  # 4 query heads → head_dim 64
        kv_heads=2,  # grouped-query attention
        mrope_25=[8, 12, 12],  # sum = head_dim / 2 = 32 (the 3B's [16, 24, 24] halved); see "seeing-grid"
        mrope_3=[12, 10, 10],  # sum = 32
        v_depth=4,  # ViT blocks
        v_hidden=128,  # ViT width
        v_intermediate=256,  # ViT MLP width (2 × hidden)
        v_heads=4,  # ViT heads → head_dim 32
        fullatt=[3],  # windows in blocks 0–2 (one 112-px window covers a whole 112×112 image anyway), global in 3
        deepstack=[1],  # Qwen3-VL: ViT block 1 feeds text layer 0
    ),
}
# "seeing-grid": the `seeing` model with a rotary layout under which it can learn WHERE a figure is. Contiguous
# Qwen2.5-VL M-RoPE sections give t the fastest frequencies, but every token of one image has the same t: with
# "seeing"'s [8, 12, 12] at theta 1e6 the 4 × 4 image grid differs only in frequencies under 0.03 rad per row, and the
# policy never learned position (one answer for 450 steps). No time section (single images) and theta 100: rows turn
# 1.0–0.12 rad per step, columns 0.10–0.012; text tokens have t = h = w, so for text only theta changes (its slowest
# frequency turns once in ~970 tokens; theta 10 also taught position, 96 % after ~370 steps, but garbled the gold
# code, whose text then had no slow frequency). Measured 2026-12-07 (README "Why it never saw position").
_SIZE_DIMS["seeing-grid"] = dict(_SIZE_DIMS["seeing"], mrope_25=[0, 16, 16], rope_theta_25=100.0)


def _tiny_config(arch: str, tok, size: str = "toy") -> Any:
    """The tiny architecture. Every knob is commented; shapes mirror the real models where it matters."""
    if size not in _SIZE_DIMS:
        raise ValueError(f"unknown tiny-model size {size!r}; choose one of {', '.join(TINY_SIZES)}")
    dims = _SIZE_DIMS[size]
    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
    vocab_size = tok.get_vocab_size(with_added_tokens=True)  # exactly the tokenizer: no unsampleable ids
    common_text = dict(
        vocab_size=vocab_size,
        hidden_size=dims["hidden"],  # text width; also what the vision merger must project to (out_hidden_size)
        intermediate_size=dims["intermediate"],  # SwiGLU MLP width
        num_hidden_layers=dims["layers"],  # decoder layers
        num_attention_heads=dims["heads"],  # query heads
        num_key_value_heads=dims["kv_heads"],  # grouped-query attention (2 queries per KV head), as the real models
        max_position_embeddings=8192,  # room for multi-turn tool episodes
        rms_norm_eps=1e-6,  # as the real models
        initializer_range=0.02,  # default init scale
        attention_dropout=0.0,  # no dropout: deterministic forward passes
        bos_token_id=ids["<|endoftext|>"],  # Qwen has no real BOS; its configs name <|endoftext|>
        eos_token_id=ids["<|im_end|>"],  # a chat turn ends with <|im_end|>
        pad_token_id=ids["<|endoftext|>"],  # pad = <|endoftext|>, as Qwen
    )
    vision_token_ids = dict(
        image_token_id=ids["<|image_pad|>"],  # placeholder replaced by image features
        video_token_id=ids["<|video_pad|>"],  # placeholder replaced by video features
        vision_start_token_id=ids["<|vision_start|>"],  # opens an image/video span (used by rope index)
        vision_end_token_id=ids["<|vision_end|>"],  # closes it
    )
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        text = dict(
            common_text,
            hidden_act="silu",  # SwiGLU activation, as Qwen2.5
            use_sliding_window=False,  # full attention everywhere
            # M-RoPE: rotary dims split over (time, height, width); must sum to head_dim / 2.
            rope_parameters={"rope_type": "default", "rope_theta": dims.get("rope_theta_25", 1_000_000.0),
                             "mrope_section": dims["mrope_25"]},
        )
        vision = dict(
            depth=dims["v_depth"],  # ViT blocks
            hidden_size=dims["v_hidden"],  # ViT width
            intermediate_size=dims["v_intermediate"],  # ViT SwiGLU MLP width
            num_heads=dims["v_heads"],  # ViT heads
            hidden_act="silu",  # Qwen2.5-VL's ViT uses SwiGLU
            in_channels=3,  # RGB
            patch_size=14,  # 14×14 pixel patches (must equal the image processor's patch_size)
            spatial_merge_size=2,  # 2×2 patches merge into one LLM token (= processor merge_size)
            temporal_patch_size=2,  # frames per temporal patch; an image is repeated to 2 frames
            tokens_per_second=2,  # video time resolution of M-RoPE (unused for images)
            window_size=112,  # window attention over 112-pixel windows (= 4×4 merged tokens)
            fullatt_block_indexes=dims["fullatt"],  # blocks that attend globally (the others in windows)
            out_hidden_size=dims["hidden"],  # merger output = text hidden_size
            initializer_range=0.02,  # default init scale
        )
        return Qwen2_5_VLConfig(
            text_config=text,
            vision_config=vision,
            tie_word_embeddings=False,  # separate lm_head (kept out of 4-bit quantisation by load_policy)
            **vision_token_ids,
        )
    if arch == "qwen3_vl":
        from transformers import Qwen3VLConfig

        text = dict(
            common_text,
            head_dim=dims["hidden"] // dims["heads"],  # Qwen3 states head_dim explicitly (= hidden / heads here)
            hidden_act="silu",  # SwiGLU
            attention_bias=False,  # Qwen3 has no QKV bias (it normalises q and k instead)
            # Interleaved M-RoPE over (t, h, w); sections must sum to head_dim / 2.
            rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": dims["mrope_3"],
                             "mrope_interleaved": True},
        )
        vision = dict(
            depth=dims["v_depth"],  # ViT blocks
            hidden_size=dims["v_hidden"],  # ViT width
            intermediate_size=dims["v_intermediate"],  # ViT MLP width
            num_heads=dims["v_heads"],  # ViT heads
            hidden_act="gelu_pytorch_tanh",  # Qwen3-VL's ViT MLP activation
            in_channels=3,  # RGB
            patch_size=16,  # Qwen3-VL uses 16×16 patches (= image processor patch_size)
            spatial_merge_size=2,  # 2×2 patches → one LLM token
            temporal_patch_size=2,  # frames per temporal patch
            num_position_embeddings=64,  # learned 8×8 position grid, interpolated to the image grid
            deepstack_visual_indexes=dims["deepstack"],  # ViT block features added into the text layers (DeepStack)
            out_hidden_size=dims["hidden"],  # merger output = text hidden_size
            initializer_range=0.02,  # default init scale
        )
        return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **vision_token_ids)
    raise ValueError(f"unknown tiny-model arch {arch!r}; choose one of {', '.join(ARCHS)}")


def _tiny_processor(arch: str, tok):
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import qwen3_vl_chat_template

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",  # generation stops at the end of an assistant turn
        pad_token="<|endoftext|>",  # as Qwen
        unk_token=None,  # byte-level BPE never needs one
        padding_side="left",  # decoder-only batched generation pads on the left
        model_max_length=8192,  # = max_position_embeddings
        clean_up_tokenization_spaces=False,  # decode exactly what was sampled
        chat_template=qwen3_vl_chat_template,  # text-only users of the tokenizer get the same template
    )
    if arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        image_processor = Qwen2VLImageProcessor(
            min_pixels=56 * 56,  # smallest image: 4×4 patches = 4 LLM tokens
            max_pixels=112 * 112,  # largest: 8×8 patches = 16 LLM tokens (a 112×112 image fits exactly)
            patch_size=14, merge_size=2, temporal_patch_size=2,  # must match the vision config
        )
        video_processor = Qwen2VLVideoProcessor(
            min_pixels=56 * 56, max_pixels=112 * 112,  # per-frame budget, as small as for images
            patch_size=14, merge_size=2, temporal_patch_size=2,
        )
        cls = Qwen2_5_VLProcessor
    elif arch == "qwen3_vl":
        from transformers import Qwen3VLProcessor
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        image_processor = Qwen2VLImageProcessor(  # Qwen3-VL reuses the Qwen2-VL image processor class
            min_pixels=64 * 64,  # smallest image: 4×4 patches of 16 px = 4 LLM tokens
            max_pixels=128 * 128,  # largest: 8×8 patches = 16 LLM tokens (112×112 rounds up to 128×128)
            patch_size=16, merge_size=2, temporal_patch_size=2,  # must match the vision config
            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],  # Qwen3-VL normalises to [-1, 1]
        )
        video_processor = Qwen3VLVideoProcessor(
            size={"shortest_edge": 64 * 64, "longest_edge": 128 * 128 * 4},  # total budget over frames
            patch_size=16, merge_size=2, temporal_patch_size=2,
        )
        cls = Qwen3VLProcessor
    else:
        raise ValueError(f"unknown tiny-model arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
               chat_template=qwen3_vl_chat_template)


_README = {  # per size; the toy's text is unchanged from before sizes existed (its build stays byte-identical)
    "toy": """# arft tiny {arch} (RANDOM WEIGHTS)

Written by `arftlib.models.build_tiny_vlm` (seed {seed}). This is NOT a trained model: the weights are
random, so its outputs are gibberish. It exists to test loading, templates, batching, rollouts and training
loops offline on a CPU.

- architecture: {model_class}, {params:,} parameters (text hidden 64, 2 layers; ViT depth 2, hidden 32)
- tokenizer: byte-level BPE trained on generated workbench text, {vocab} tokens, Qwen special tokens,
  action tags as single tokens
- processor: {processor_class} with a tiny pixel budget; chat template = TRL's tool-capable Qwen3-VL template
""",
    "seeing": """# arft tiny {arch}, size "seeing" (RANDOM WEIGHTS)

Written by `arftlib.models.build_tiny_vlm(..., size="seeing")` (seed {seed}). This is NOT a trained model: the
weights are random, so its outputs are gibberish until it is trained. It is big enough to learn to see
simple scenes (colour, shape, position) on a CPU: the policy of the micro benchmarks (`micro-coding`,
`micro-search`), to be warm-started by supervised training before RL.

- architecture: {model_class}, {params:,} parameters (text hidden 256, 4 layers, 4 heads / 2 KV heads;
  ViT depth 4, hidden 128, 4 heads; 16 image tokens per 112×112 image)
- tokenizer: byte-level BPE trained on generated workbench text and the micro benchmarks' questions,
  answers, queries, passages and gold code, {vocab} tokens, Qwen special tokens, action tags as single tokens
- processor: {processor_class}, images at most 112×112 pixels; chat template = TRL's tool-capable Qwen3-VL
  template
""",
}


_README["seeing-grid"] = _README["seeing"].replace('size "seeing"', 'size "seeing-grid"').replace(
    'size="seeing"', 'size="seeing-grid"').replace(
    "- tokenizer:", "- rotary layout: M-RoPE sections [0, 16, 16], text rope_theta 100 (\"seeing\": [8, 12, 12], 1e6), so the\n"
    "  image grid's rows and columns turn fast frequencies: a policy can learn where a figure is\n- tokenizer:")


def build_tiny_vlm(out_dir: str | os.PathLike, arch: str = "qwen2_5_vl", seed: int = 0, size: str = "toy") -> Path:
    """Write a random tiny `arch` VLM + processor of `size` ("toy" or "seeing") to `out_dir` (created; existing
    files overwritten).

    The directory loads offline with `AutoModelForImageTextToText.from_pretrained(out_dir)` and
    `AutoProcessor.from_pretrained(out_dir)`. The tokenizer does not depend on `seed`; the weights do, and the
    same seed gives byte-identical weights. A marker `arft_tiny.json` (and a README) say it is random.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny-model arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if size not in TINY_SIZES:
        raise ValueError(f"unknown tiny-model size {size!r}; choose one of {', '.join(TINY_SIZES)}")
    import torch
    import transformers
    from transformers import AutoModelForImageTextToText, GenerationConfig

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(size)
    config = _tiny_config(arch, tok, size)
    config.dtype = "float32"

    fork_devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=fork_devices):  # leave the caller's RNG stream untouched
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")],  # as Qwen
        pad_token_id=tok.token_to_id("<|endoftext|>"),
        do_sample=False,  # greedy unless the caller samples (TRL passes its own sampling settings)
    )
    marker = out / MARKER_FILE
    if marker.exists():
        marker.unlink()  # an interrupted rebuild must not look complete
    model.save_pretrained(out)
    processor = _tiny_processor(arch, tok)
    processor.save_pretrained(out)

    n_params = sum(p.numel() for p in model.parameters())
    (out / "README.md").write_text(
        _README[size].format(arch=arch, seed=seed, model_class=type(model).__name__, params=n_params,
                             vocab=len(processor.tokenizer), processor_class=type(processor).__name__),
        encoding="utf-8",
    )
    info: dict[str, Any] = {
        "random_weights": True,
        "note": "randomly initialised tiny model for offline tests; not trained",
        "arch": arch,
        "seed": seed,
        "version": TINY_MODEL_VERSION,
        "transformers": transformers.__version__,
        "parameters": n_params,
        "vocab_size": len(processor.tokenizer),
    }
    if size != "toy":  # (the toy's marker keeps its original keys, byte for byte)
        info.update(note="randomly initialised tiny model; train it (cold-start SFT) before use", size=size,
                    version=SEEING_MODEL_VERSION, corpus_sha256=corpus_digest(size), dims_sha256=_dims_digest(size))
    marker.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("built tiny %s/%s (%d parameters) in %s in %.1f s", arch, size, n_params, out, time.perf_counter() - t0)
    return out


def _marker_ok(path: Path, arch: str, seed: int, size: str = "toy") -> bool:
    import transformers

    try:
        marker = json.loads((path / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    same = (marker.get("arch") == arch and marker.get("seed") == seed
            and marker.get("transformers") == transformers.__version__)
    if size == "toy":
        return same and marker.get("version") == TINY_MODEL_VERSION and "size" not in marker
    return (same and marker.get("size") == size and marker.get("version") == SEEING_MODEL_VERSION
            and marker.get("corpus_sha256") == corpus_digest(size) and marker.get("dims_sha256") == _dims_digest(size))


def tiny_model_path(arch: str = "qwen2_5_vl", seed: int = 0, size: str = "toy") -> Path:
    """The cached tiny model for `arch` and `size` (built on first use into `cache_dir("tiny-models", arch)`
    for the toy, `cache_dir("tiny-models", f"{arch}-{size}")` otherwise).

    Rebuilt when its marker is missing or names another version, seed or transformers release (the `seeing`
    size also when the micro world's tokenizer text changed). Concurrent callers are serialised with a file
    lock; the build goes to a temporary folder and is moved in with the marker last, so a half-written build
    is never reused.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny-model arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if size not in TINY_SIZES:
        raise ValueError(f"unknown tiny-model size {size!r}; choose one of {', '.join(TINY_SIZES)}")
    name = arch if size == "toy" else f"{arch}-{size}"
    path = cache_dir("tiny-models", name)
    if _marker_ok(path, arch, seed, size):
        return path
    import fcntl

    lock_path = path.parent / f".{name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _marker_ok(path, arch, seed, size):  # another process built it while we waited
                return path
            log.info("building tiny %s/%s model into %s", arch, size, path)
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{name}-build-") as tmp:
                build_tiny_vlm(tmp, arch=arch, seed=seed, size=size)
                for child in path.iterdir():  # clear a stale build
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
                built = sorted(Path(tmp).iterdir(), key=lambda p: p.name == MARKER_FILE)  # marker last
                for child in built:
                    os.replace(child, path / child.name)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


# --------------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?")


def resolve_model_path(model_id_or_path: str | os.PathLike) -> str:
    """`"tiny"` / `"tiny:qwen3_vl"` / `"tiny:qwen2_5_vl:seeing"` → the cached tiny model of that arch and size
    (default Qwen2.5-VL, the toy); an existing local folder → itself (checked to hold a `config.json`); anything
    shaped like a hub id (`org/name`) → unchanged. Otherwise a clear error."""
    name = os.fspath(model_id_or_path)
    if name == "tiny" or name.startswith("tiny:"):
        parts = name.split(":")[1:]
        arch = parts[0] if parts and parts[0] else "qwen2_5_vl"
        size = parts[1] if len(parts) > 1 else "toy"
        return str(tiny_model_path(arch, size=size))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"model path {path} is a file; pass the folder that holds config.json")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model folder {path} has no config.json (is it a LoRA adapter? then pass it as adapter= and the "
                f"base model as the model)"
            )
        return str(path)
    if _HUB_ID.fullmatch(name) and ".." not in name:
        return name
    raise FileNotFoundError(
        f"model folder {name!r} does not exist (and {name!r} is not shaped like a hub id such as "
        f"'Qwen/Qwen2.5-VL-3B-Instruct'); use 'tiny' for the offline tiny model"
    )


def model_path_for(cfg: "RunConfig", model: str | os.PathLike | None = None) -> str:
    """The one place a run's model becomes a path: `model` (hub id or folder) when given, else the profile's
    `model_id`, where "tiny" means the tiny model of the profile's `arch` (and `tiny_size`, when the profile
    names one)."""
    name = os.fspath(model) if model is not None else cfg.model_id
    if name == "tiny":
        size = getattr(cfg, "tiny_size", None)
        name = f"tiny:{cfg.arch}" + (f":{size}" if size else "")
    return resolve_model_path(name)


def quantization_config(quantization: str | None):
    """`BitsAndBytesConfig` for `"4bit"` (NF4, double quantisation — QLoRA) or `"8bit"`; None for None.

    The vision tower and `lm_head` stay unquantised. In transformers 5 the skip list must name the module path
    `model.visual` (a bare `visual` does not match). Compute dtype: bf16 on CUDA, float32 on CPU.
    """
    if quantization in (None, "", "none"):
        return None
    if quantization not in ("4bit", "8bit"):
        raise ValueError(f"quantization must be None, '4bit' or '8bit', not {quantization!r}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:  # pragma: no cover - pinned in requirements
        raise ImportError(f"quantization={quantization!r} needs bitsandbytes: pip install bitsandbytes") from exc
    import torch
    from transformers import BitsAndBytesConfig

    skip = ["model.visual", "lm_head"]
    if not torch.cuda.is_available():
        log.warning("quantization=%r without CUDA: bitsandbytes runs on CPU, but slowly; fine for tests only",
                    quantization)
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def _resolve_dtype(torch_dtype: str | Any, quantized: bool):
    import torch

    if torch_dtype in (None, "auto"):
        if quantized:  # the unquantised rest (vision tower, norms, lm_head) in the compute dtype
            return torch.bfloat16 if torch.cuda.is_available() else torch.float32
        return "auto"  # the checkpoint's own dtype
    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if torch_dtype not in table:
        raise ValueError(f"torch_dtype must be 'auto', 'float32', 'bfloat16' or 'float16', not {torch_dtype!r}")
    return table[torch_dtype]


def set_pixel_budget(processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Set the image processor's pixel bounds (Qwen's `min_pixels` / `max_pixels`) in place."""
    if min_pixels is None and max_pixels is None:
        return
    ip = processor.image_processor
    lo = min_pixels if min_pixels is not None else ip.size["shortest_edge"]
    hi = max_pixels if max_pixels is not None else ip.size["longest_edge"]
    if lo > hi:
        raise ValueError(f"min_pixels ({lo}) must not exceed max_pixels ({hi})")
    if dataclasses.is_dataclass(ip.size):
        ip.size = dataclasses.replace(ip.size, shortest_edge=lo, longest_edge=hi)
    else:
        ip.size = {**dict(ip.size), "shortest_edge": lo, "longest_edge": hi}


def load_policy(
    model_id_or_path: str | os.PathLike = "tiny",
    *,
    quantization: str | None = None,
    adapter: str | os.PathLike | None = None,
    torch_dtype: str = "auto",
    device_map: Any = None,
    attn_implementation: str = "sdpa",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    trainable_adapter: bool = False,
):
    """Load `(model, processor)`: an `AutoModelForImageTextToText` and its `AutoProcessor`.

    `model_id_or_path`: hub id, local folder, `"tiny"` (the cached tiny Qwen2.5-VL) or `"tiny:qwen3_vl"`.
    `quantization`: None | "4bit" (NF4 + double quant, QLoRA) | "8bit"; vision tower and lm_head unquantised.
    `adapter`: folder of a saved PEFT LoRA adapter, loaded on top (frozen unless `trainable_adapter`).
    `torch_dtype`: "auto" (checkpoint dtype; compute dtype when quantised), "float32", "bfloat16".
    `device_map`: None = this process's GPU (`LOCAL_RANK`) when CUDA is present, else CPU; or any HF value.
    `min_pixels` / `max_pixels`: override the processor's per-image pixel budget.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

    source = resolve_model_path(model_id_or_path)
    qconfig = quantization_config(quantization)
    kwargs: dict[str, Any] = {"dtype": _resolve_dtype(torch_dtype, qconfig is not None),
                              "attn_implementation": attn_implementation}
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    if device_map is None and torch.cuda.is_available():
        device_map = {"": int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))}
    if device_map is not None:
        kwargs["device_map"] = device_map
    is_local = Path(source).is_dir()
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
        processor = AutoProcessor.from_pretrained(source)
    except OSError as exc:
        if is_local:
            raise
        raise OSError(
            f"could not load {source!r} from the Hugging Face hub ({exc}). If this machine is offline, "
            f"download the model elsewhere and pass its local folder, or use 'tiny'."
        ) from exc
    if not isinstance(processor, ProcessorMixin):
        raise TypeError(
            f"{source}: AutoProcessor returned {type(processor).__name__}, not a multimodal processor; the folder "
            f"needs processor_config.json or preprocessor_config.json (image processor) next to the tokenizer"
        )
    set_pixel_budget(processor, min_pixels, max_pixels)
    if adapter is not None:
        from peft import PeftModel

        adapter_path = Path(adapter).expanduser()
        if not (adapter_path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter folder {adapter_path} has no adapter_config.json (a PEFT adapter "
                                    f"is saved with model.save_pretrained on a PeftModel)")
        model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=trainable_adapter)
    if not trainable_adapter:
        model.eval()
    return model, processor


def load_for_config(cfg: "RunConfig", *, adapter: str | os.PathLike | None = None, device_map: Any = None,
                    trainable_adapter: bool = False):
    """`load_policy` with the model, quantisation, dtype, attention and pixel settings of a `RunConfig`."""
    model_id = f"tiny:{cfg.arch}" if cfg.model_id == "tiny" else cfg.model_id
    return load_policy(
        model_id,
        quantization=cfg.quantization,
        adapter=adapter,
        torch_dtype=cfg.torch_dtype,
        device_map=device_map,
        attn_implementation=cfg.attn_implementation,
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
        trainable_adapter=trainable_adapter,
    )


def lora_target_regex(module_names: tuple[str, ...] | list[str]) -> str:
    """A PEFT `target_modules` regex (full-match on module paths) that selects the named linear layers of the
    language model only: it requires `language_model` in the path and rejects anything under `visual`, whose
    blocks reuse names such as `gate_proj` / `up_proj`."""
    names = "|".join(re.escape(n) for n in module_names)
    return rf"^(?!.*\bvisual\b).*\blanguage_model\b.*\.({names})$"


def lora_config_for(cfg: "RunConfig"):
    """`peft.LoraConfig` for `cfg` (rank, alpha, dropout, target linears of the language model only);
    None when `cfg.finetune == "full"`."""
    if cfg.finetune == "full":
        return None
    if cfg.finetune != "lora":
        raise ValueError(f"finetune must be 'lora' or 'full', not {cfg.finetune!r}")
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_regex(tuple(cfg.lora_target_modules)),
        bias="none",
        task_type="CAUSAL_LM",
    )


# --------------------------------------------------------------------------------------------------------------
# generation / template helpers
# --------------------------------------------------------------------------------------------------------------

def _tokenizer_of(processor_or_tokenizer):
    return getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)


def suppressed_token_ids(processor) -> list[int]:
    """Ids of the vision placeholders (`<|image_pad|>`, `<|video_pad|>`, `<|vision_start|>`, `<|vision_end|>`,
    `<|vision_pad|>`) that exist in the vocabulary. Pass them as `suppress_tokens=ids` or
    `bad_words_ids=[[i] for i in ids]` to `generate` (or TRL's `generation_kwargs`): a sampled placeholder
    breaks the next forward pass (Qwen's rope index counts vision spans by these tokens)."""
    tok = _tokenizer_of(processor)
    vocab = tok.get_vocab()
    return sorted({vocab[t] for t in VISION_PLACEHOLDER_TOKENS if t in vocab})


def ensure_tool_chat_template(processor) -> bool:
    """Give `processor` (and its tokenizer) TRL's tool-capable Qwen3-VL chat template when its own template
    cannot render tool calls (e.g. stock Qwen2.5-VL). Returns True if it was replaced.

    That template is byte-identical to the one TRL knows, so `GRPOTrainer` sets the matching response parser
    by itself. Unlike stock Qwen2.5-VL it adds no default system prompt."""
    from trl.chat_template_utils import qwen3_vl_chat_template, supports_tool_calling

    if supports_tool_calling(processor):
        return False
    processor.chat_template = qwen3_vl_chat_template
    tok = _tokenizer_of(processor)
    if tok is not processor:
        tok.chat_template = qwen3_vl_chat_template
    return True


def weights_digest(model_dir: str | os.PathLike) -> str:
    """SHA-256 over a saved model's `*.safetensors` tensors (names, dtypes, shapes and bytes)."""
    import torch
    from safetensors import safe_open

    h = hashlib.sha256()
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_dir}")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in sorted(f.keys()):
                t = f.get_tensor(key).contiguous()
                h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


__all__ = [
    "ARCHS", "TINY_SIZES", "TAG_TOKENS", "build_tiny_vlm", "tiny_model_path", "resolve_model_path", "quantization_config",
    "load_policy", "load_for_config", "lora_config_for", "lora_target_regex", "suppressed_token_ids",
    "ensure_tool_chat_template", "set_pixel_budget", "weights_digest", "also_trained_protocols",
]
