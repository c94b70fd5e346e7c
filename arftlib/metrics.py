"""Answer scoring: token F1 and exact match (EM) as the Visual-ARFT evaluation notebooks compute them.

Two variants share one code path and differ only where a documented defect is fixed:

``reference``
    Reproduces the reference evaluation notebooks to the hundredth on every published results file
    (shipped in ``arftlib/resources/reference_predictions/``). Per item: the gold is a string or a list of strings (a
    string counts as a one-item list); F1 and EM are the maxima over the golds; an EM of 1 forces F1 to 1;
    a ``None`` prediction scores 0 and still counts in the denominator. F1 counts the *set* of tokens the
    two sides share (``len(set(p) & set(g))``), not the multiset, and divides by the full token counts.

    Normalisation, ``style="search"`` (MAT-Search and the multi-hop QA sets): lowercase, delete every
    ASCII punctuation character, replace the words ``a``/``an``/``the`` (on regex word boundaries) by a
    space, collapse whitespace; tokens are the whitespace-separated words.

    ``style="coding"`` (MAT-Coding): lowercase, delete ASCII *and* CJK punctuation; then, if the text
    holds a CJK ideograph (U+4E00..U+9FFF), only space characters are deleted (articles stay, newlines
    stay), otherwise articles are dropped and whitespace collapsed as above. F1 is per character when
    either normalised side holds a CJK ideograph, per word otherwise.

    Aggregation: MAT-Coding simple = first 70 records summed and divided by 70, hard = the rest divided
    by 130, all divided by 200 (denominators hard-coded whatever the file holds); MAT-Search simple =
    first 75 divided by 75, hard = the rest divided by 75, all divided by the record count; multi-hop =
    the mean over all records.

``corrected``
    The same protocol with these defects fixed (each fix applies to gold and prediction alike):

    (a) *Single letters eaten as articles.* ``re.sub(r"\\b(a|an|the)\\b", ...)`` deletes the option
        letter "A", so the gold "A" normalises to the empty string: any prediction that also normalises
        to nothing ("The", ".", "A") is an exact match, and "Answer: A" gets F1 0 against "A" (9 of the
        200 MAT-Coding golds are single option letters, three of them "A"; an exact "A" prediction
        still scores 1 because both sides become empty). Rule: an article is dropped only when
        another token follows it. Grammatically an article always precedes the noun phrase it
        determines, so a standalone or final "a"/"an"/"the" is a label (option "A", "Vitamin A",
        "Plan A"), not an article, and is kept. Limitation: a letter *followed* by a word ("A and B")
        still loses its "a".

    (b) *Escaped newlines glued into words.* 15 MAT-Coding golds hold the two characters backslash + "n"
        instead of a line break (``"FOOD\\\\nDIRECTORY"``). Punctuation removal deletes the backslash and
        leaves ``"foodndirectory"``, one token that no prediction matches. Rule: every backslash + "n"
        pair becomes a line break before normalising. Only this escape is decoded: backslash-r and
        backslash-t open LaTeX commands (``\\rm``, ``\\text``) in MAT-Coding formula golds, and a LaTeX
        command starting with "n" (``\\nu``) is split the same way on both sides. In the CJK branch, the reference removes only spaces although its own comment says
        all whitespace should go, so newlines became characters that count in the per-character F1;
        ``corrected`` removes all whitespace there.

    (c) *Hard-coded denominators.* Splits are still positional (MAT-Coding: first 70 simple; MAT-Search:
        first 75 simple) unless every record carries ``split`` equal to ``"simple"`` or ``"hard"``, but
        each mean divides by the number of records it sums, so partial or filtered files are scored
        correctly.

    Behaviour deliberately left as in the reference: set-based F1, "EM forces F1 = 1", the CJK test
    being applied per side in normalisation but to either side for tokenisation.

Examples:

```python
>>> from arftlib.metrics import f1_em, normalize_answer
>>> normalize_answer("The Eiffel Tower!", "search")
'eiffel tower'
>>> normalize_answer("A", "search"), normalize_answer("A", "search", variant="corrected")
('', 'a')
>>> f1_em("Answer: A", "A", "coding")
(0.0, 0.0)
>>> f1_em("Answer: A", "A", "coding", variant="corrected")
(0.6666666666666666, 0.0)
>>> f1_em("FOOD DIRECTORY", "FOOD\\\\nDIRECTORY", "coding", variant="corrected")
(1.0, 1.0)
>>> f1_em(None, ["Paris"], "search")
(0.0, 0.0)

```
"""

from __future__ import annotations

import gzip
import json
import re
import string
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "BENCHMARKS",
    "STYLES",
    "VARIANTS",
    "benchmark_style",
    "f1_em",
    "normalize_answer",
    "score_file",
    "score_items",
    "score_records",
]

VARIANTS = ("reference", "corrected")
STYLES = ("search", "coding")
#: benchmark name -> normalisation style
BENCHMARKS = {"mat-coding": "coding", "mat-search": "search", "multihop": "search"}

# Reference split sizes (the notebooks hard-code them).
_CODING_SIMPLE, _CODING_HARD = 70, 130
_SEARCH_SIMPLE, _SEARCH_HARD = 75, 75

_ASCII_PUNCT = frozenset(string.punctuation)
# The CJK punctuation the MAT-Coding notebook removes: the full-width forms of the ASCII punctuation
# (U+FF01..FF0F, FF1A..FF20, FF3B..FF40, FF5B..FF5E), the half-width ideographic full stop U+FF61, curly
# quotes, the ideographic comma and full stop, double angle brackets and black lenticular brackets.
_CJK_PUNCT = frozenset(
    "".join(chr(c) for lo, hi in ((0xFF01, 0xFF0F), (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF5E))
            for c in range(lo, hi + 1))
    + "\uFF61\u201C\u201D\u2018\u2019\u3001\u3002\u300A\u300B\u3010\u3011"
)
_CODING_PUNCT = _ASCII_PUNCT | _CJK_PUNCT

_ARTICLE_RE = re.compile(r"\b(?:a|an|the)\b")
_ARTICLES = frozenset({"a", "an", "the"})
_ESCAPED_NEWLINE = "\\n"  # the two characters backslash + n


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


def benchmark_style(benchmark: str) -> str:
    """The normalisation style a benchmark is scored with.

    >>> benchmark_style("multihop")
    'search'
    """
    try:
        return BENCHMARKS[benchmark]
    except KeyError:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {sorted(BENCHMARKS)}") from None


def _has_cjk(text: str) -> bool:
    """True if `text` holds a CJK unified ideograph (the reference's test: U+4E00..U+9FFF)."""
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def _drop_articles(text: str, variant: str) -> str:
    """Articles removed and whitespace collapsed to single spaces."""
    if variant == "reference":
        return " ".join(_ARTICLE_RE.sub(" ", text).split())
    tokens = text.split()
    kept = [tok for i, tok in enumerate(tokens) if not (tok in _ARTICLES and i + 1 < len(tokens))]
    return " ".join(kept)


def normalize_answer(text: str, style: str, variant: str = "reference") -> str:
    """Normalise one answer string the way `style` scores it.

    `style` is ``"search"`` (MAT-Search, multi-hop QA) or ``"coding"`` (MAT-Coding: CJK punctuation is
    removed too, and text with a CJK ideograph only loses its spaces). See the module docstring for the
    exact steps and what `variant="corrected"` changes.

    >>> normalize_answer("The  Beatles, an English band.", "search")
    'beatles english band'
    >>> normalize_answer("沁和园 PARK“ELEVEN”", "coding")
    '沁和园parkeleven'
    >>> normalize_answer("SIZE\\\\n3", "coding"), normalize_answer("SIZE\\\\n3", "coding", "corrected")
    ('sizen3', 'size 3')
    >>> normalize_answer("Plan A", "search", "corrected")
    'plan a'
    """
    _check_style(style)
    _check_variant(variant)
    if not isinstance(text, str):
        raise TypeError(f"expected a str answer, got {type(text).__name__}")
    if variant == "corrected":
        text = text.replace(_ESCAPED_NEWLINE, "\n")
    text = text.lower()
    if style == "search":
        text = "".join(ch for ch in text if ch not in _ASCII_PUNCT)
        return _drop_articles(text, variant)
    text = "".join(ch for ch in text if ch not in _CODING_PUNCT)
    if _has_cjk(text):
        if variant == "reference":
            return text.replace(" ", "")
        return "".join(text.split())
    return _drop_articles(text, variant)


def _f1_one(pred_norm: str, gold_norm: str, style: str) -> float:
    if style == "coding" and (_has_cjk(pred_norm) or _has_cjk(gold_norm)):
        pred_tokens, gold_tokens = list(pred_norm), list(gold_norm)
    else:
        pred_tokens, gold_tokens = pred_norm.split(), gold_norm.split()
    same = len(set(pred_tokens) & set(gold_tokens))
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_em(pred: str | None, golds: str | Sequence[str], style: str,
          variant: str = "reference") -> tuple[float, float]:
    """F1 and EM of one prediction against one or more golds, each in [0, 1].

    Both are maxima over the golds (a str is one gold); an exact match sets F1 to 1; a ``None``
    prediction scores ``(0.0, 0.0)``. F1 counts the set of shared tokens (see module docstring).

    >>> f1_em("Barack Obama", ["Obama", "Barack Hussein Obama"], "search")
    (0.8, 0.0)
    >>> f1_em("the obama", "Obama.", "search")
    (1.0, 1.0)
    >>> f1_em("沁和园", "沁和园公园", "coding")  # per character: P = 1, R = 3/5
    (0.7499999999999999, 0.0)
    """
    _check_style(style)
    _check_variant(variant)
    if isinstance(golds, str):
        golds = [golds]
    golds = list(golds)
    if not golds:
        raise ValueError("no gold answers: golds must be a non-empty str or list of str")
    if pred is None:
        return 0.0, 0.0
    pred_norm = normalize_answer(pred, style, variant)
    f1 = em = 0.0
    for gold in golds:
        gold_norm = normalize_answer(gold, style, variant)
        em = max(em, float(pred_norm == gold_norm))
        f1 = max(f1, _f1_one(pred_norm, gold_norm, style))
    if em == 1.0:
        f1 = 1.0
    return f1, em


def _validate(records, source: str) -> None:
    if not isinstance(records, list):
        raise ValueError(f"{source}: expected a JSON list of records, got {type(records).__name__}")
    for i, rec in enumerate(records):
        where = f"{source}: record {i}"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected an object, got {type(rec).__name__}")
        if "gt" not in rec:
            raise ValueError(f"{where}: missing field 'gt'")
        gt = rec["gt"]
        if isinstance(gt, list):
            if not gt:
                raise ValueError(f"{where}: field 'gt' is an empty list")
            bad = [type(g).__name__ for g in gt if not isinstance(g, str)]
            if bad:
                raise ValueError(f"{where}: field 'gt' must hold strings, found {bad[0]}")
        elif not isinstance(gt, str):
            raise ValueError(f"{where}: field 'gt' must be a str or list of str, got {type(gt).__name__}")
        pred = rec.get("pred_answer")
        if pred is not None and not isinstance(pred, str):
            raise ValueError(f"{where}: field 'pred_answer' must be a str or null, got {type(pred).__name__}")


def score_items(records: list[dict], benchmark: str, variant: str = "reference", *,
                source: str | None = None) -> list[tuple[float, float]]:
    """Per-record ``(f1, em)`` in [0, 1], in record order (for tables by split or degradation type).

    Records need ``gt`` (str or list of str); ``pred_answer`` may be missing or ``None`` (scores 0).

    >>> score_items([{"pred_answer": "Paris", "gt": ["paris"]}, {"gt": "Rome"}], "multihop")
    [(1.0, 1.0), (0.0, 0.0)]
    """
    style = benchmark_style(benchmark)
    _check_variant(variant)
    _validate(records, source or "<records>")
    return [f1_em(rec.get("pred_answer"), rec["gt"], style, variant) for rec in records]


def _pct(total: float, denom: int) -> float:
    return round(100 * total / denom, 2) if denom > 0 else 0.0


def _split_sums(items, idx):
    return sum(items[i][0] for i in idx), sum(items[i][1] for i in idx)


def score_records(records: list[dict], benchmark: str, variant: str = "reference", *,
                  source: str | None = None) -> dict:
    """Score a results list: ``{"benchmark", "variant", "n", "n_none", "f1", "em"}`` in percent (2 decimals),
    plus ``"simple"`` and ``"hard"`` (``{"f1", "em"}``) for ``mat-coding`` and ``mat-search``.

    `source` names the records in error messages (`score_file` passes the file name). Reference
    denominators are hard-coded as in the notebooks (see module docstring); a warning is issued when
    the record count does not match them.

    >>> recs = [{"pred_answer": "Paris", "gt": ["Paris"]}, {"pred_answer": None, "gt": ["Rome"]}]
    >>> score_records(recs, "multihop")
    {'benchmark': 'multihop', 'variant': 'reference', 'n': 2, 'n_none': 1, 'f1': 50.0, 'em': 50.0}
    """
    items = score_items(records, benchmark, variant, source=source)
    n = len(items)
    out: dict = {"benchmark": benchmark, "variant": variant, "n": n,
                 "n_none": sum(1 for rec in records if rec.get("pred_answer") is None)}
    f1_sum, em_sum = _split_sums(items, range(n))
    if benchmark == "multihop":
        out["f1"], out["em"] = _pct(f1_sum, n), _pct(em_sum, n)
        return out

    n_simple = _CODING_SIMPLE if benchmark == "mat-coding" else _SEARCH_SIMPLE
    if variant == "reference":
        hard_denom = _CODING_HARD if benchmark == "mat-coding" else _SEARCH_HARD
        all_denom = _CODING_SIMPLE + _CODING_HARD if benchmark == "mat-coding" else n
        if n != n_simple + hard_denom:
            warnings.warn(
                f"{source or '<records>'}: {benchmark} reference scoring divides by the hard-coded split sizes "
                f"({n_simple} simple + {hard_denom} hard) but there are {n} records; "
                "use variant='corrected' for partial files",
                stacklevel=2,
            )
        simple_idx, hard_idx = range(min(n, n_simple)), range(min(n, n_simple), n)
        simple_denom = n_simple
    else:
        splits = [rec.get("split") for rec in records]
        if n and all(s in ("simple", "hard") for s in splits):
            simple_idx = [i for i, s in enumerate(splits) if s == "simple"]
            hard_idx = [i for i, s in enumerate(splits) if s == "hard"]
        else:
            simple_idx, hard_idx = range(min(n, n_simple)), range(min(n, n_simple), n)
        simple_denom, hard_denom, all_denom = len(simple_idx), len(hard_idx), n

    out["f1"], out["em"] = _pct(f1_sum, all_denom), _pct(em_sum, all_denom)
    s_f1, s_em = _split_sums(items, simple_idx)
    h_f1, h_em = _split_sums(items, hard_idx)
    out["simple"] = {"f1": _pct(s_f1, simple_denom), "em": _pct(s_em, simple_denom)}
    out["hard"] = {"f1": _pct(h_f1, hard_denom), "em": _pct(h_em, hard_denom)}
    return out


def score_file(path: str | Path, benchmark: str, variant: str = "reference") -> dict:
    """Load a results file (JSON list in the reference format; `.json.gz` is read compressed) and
    `score_records` it; adds ``"file"``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such results file")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            records = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    result = score_records(records, benchmark, variant, source=str(path))
    result["file"] = str(path)
    return result
