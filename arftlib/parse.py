"""One model turn (text) → `Action`; diagnosis labels; crop boxes; the reference's own extractors.

`parse_action(text)` is the single entry point the environment, the rewards and the viewers use. It never
raises: anything that is not exactly one well-formed action comes back as `Action(kind="invalid", error=…)`
with the reason in words.

Rules (both policies)
---------------------
1. Input that is not `str` (None, bytes, numbers, …) → invalid ("turn is bytes, not str"). A turn longer
   than `MAX_TURN_CHARS` (1 MiB) → invalid. Lone surrogates (from `errors="surrogateescape"` decoding) are
   replaced by U+FFFD in `content` and `think`; `raw` keeps the text exactly as given.
2. Tags are exact and lower-case: `<think>`, `<search>`, `<code>`, `<problem>`, `<answer>` and their closing
   forms. Other tags (`<information>`, `<tips>`, `<query>`, `<tool_call>` …) are plain text.
3. `<think>…</think>`: the first think block is `Action.think`. Tags inside a think block are words, not
   actions. A turn may have no think block (the reference evaluation does not require one). A `</think>` with
   no opening tag before anything else counts as a think block starting at the beginning of the turn (chat
   templates that pre-fill `<think>`).
4. Structure: an action tag opened at top level must be closed by its own closing tag before any other tag
   appears. Anything else is invalid, naming the tag: "unclosed <code>", "nested <answer> inside <search>",
   "unmatched </answer>", "unclosed <think>".
5. No complete action → invalid ("no action tag …"). An action whose payload is empty after stripping →
   invalid ("empty <search>"). A payload over `MAX_PAYLOAD_CHARS` (64 KiB) → invalid.
6. Payloads: search and answer are stripped; code loses its ```` ```python ```` / ```` ``` ```` fences (an
   opening fence without a closing one → invalid "unclosed ``` fence in <code>"); problem is parsed by
   `parse_diagnosis` against `arftlib.types.DEGRADATIONS` and stored canonically as a Python set literal,
   sorted (`{'dark', 'rotation90'}`); unknown labels are dropped, none known → invalid.

Several actions in one turn (the policy)
----------------------------------------
* `policy="reference"` (default): what the reference evaluation loops do. They test substrings in a fixed
  order — MAT-Coding: `'<answer>' in result` first (and stop), then `<problem>`, then `<code>`; MAT-Search and
  multi-hop: `<answer>` first, `elif '<search>'` — and take the FIRST match of that tag. So the kind is
  chosen by precedence answer > problem > code > search, first block of that kind. The result is a valid
  action; use `format_ok` (strict) to penalise such turns, as the reference training format reward does
  (it gives 0 when a tag occurs twice or the turn is not exactly think + one action).
* `policy="strict"`: more than one action block (same or different kinds) → invalid ("multiple actions:
  <search>, <answer>").

What this module leaves out: it does not execute code, search, or decide episode ends (env.py does), and it
does not reproduce the reference loop's bugs (an answer spanning lines fails the reference's non-DOTALL
regex; a turn holding `<problem>` and `<code>` is acted on twice). The `reference_*` helpers expose the
reference's exact regexes for code that needs byte-faithful behaviour.

>>> a = parse_action("<think> rotated </think>\\n<problem> {'rotation90', 'dark'} </problem>")
>>> a.kind, a.content, a.think
('problem', "{'dark', 'rotation90'}", 'rotated')
>>> parse_action("<think>x</think><search>capital of France").error
'unclosed <search>'
>>> parse_action("<think>x</think><search>a</search><answer>Paris</answer>").content
'Paris'
>>> parse_action("<think>x</think><search>a</search><answer>b</answer>", policy="strict").error
'multiple actions: <search>, <answer>'
>>> extract_crop_box("Recognize the text within the [366, 723, 506, 851] of the image.")
(366, 723, 506, 851)
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any, Iterable

from arftlib.types import ACTION_KINDS, DEGRADATIONS, TASK_KINDS, Action, allowed_actions

__all__ = [
    "ACTION_TAGS",
    "MAX_PAYLOAD_CHARS",
    "MAX_TURN_CHARS",
    "POLICIES",
    "PRECEDENCE",
    "ReferenceTurn",
    "apply_reference_crop",
    "extract_crop_box",
    "format_ok",
    "parse_action",
    "parse_diagnosis",
    "parse_tool_call",
    "ToolCall",
    "reference_answer",
    "reference_code",
    "reference_format_ok",
    "reference_problems",
    "reference_turn",
    "reference_search_query",
    "reference_turn_kinds",
    "strip_code_fences",
]

ACTION_TAGS = ("search", "code", "problem", "answer")
# Reference evaluation precedence (see module docstring).
PRECEDENCE = ("answer", "problem", "code", "search")
POLICIES = ("reference", "strict")
MAX_TURN_CHARS = 1 << 20  # 1 MiB of text per model turn
MAX_PAYLOAD_CHARS = 64 * 1024  # 64 KiB per action payload

_TAG_RE = re.compile(r"<(/?)(think|search|code|problem|answer)>")


def _clean(s: str) -> str:
    """Replace lone surrogates by U+FFFD (valid pairs are joined), so the text encodes as UTF-8."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _invalid(raw: str, error: str, think: str = "") -> Action:
    return Action(kind="invalid", content="", think=think, raw=raw, error=error)


# ----------------------------------------------------------------------------------------------------------
# Diagnosis labels
# ----------------------------------------------------------------------------------------------------------
_LABEL_ALIASES = {
    "rotation90": "rotation90",
    "rotate90": "rotation90",
    "rotated90": "rotation90",
    "rot90": "rotation90",
    "rotation180": "rotation180",
    "rotate180": "rotation180",
    "rotated180": "rotation180",
    "rot180": "rotation180",
    "upsidedown": "rotation180",
    "dark": "dark",
    "darkness": "dark",
    "underexposure": "dark",
    "underexposed": "dark",
    "lowlight": "dark",
    "overexposure": "overexposure",
    "overexposed": "overexposure",
    "bright": "overexposure",
    "blur": "blur",
    "blurry": "blur",
    "blurred": "blur",
    "blurring": "blur",
    "noise": "noise",
    "noisy": "noise",
    "crop": "crop",
    "cropping": "crop",
    "none": "none",
    "noissue": "none",
    "noissues": "none",
    "noproblem": "none",
}
assert set(_LABEL_ALIASES.values()) == set(DEGRADATIONS)
_LABEL_SPLIT_RE = re.compile(r"[,;{}\[\]()'\"`\n\r\t|/+&]|\band\b")
_LABEL_NORM_RE = re.compile(r"[\s_\-.:°]+")


def parse_diagnosis(text: Any) -> set[str]:
    """The degradation labels named in a `<problem>` payload, as a subset of `DEGRADATIONS`.

    Tolerant of Python set/list syntax, quotes of either kind, case, `+`/`and` joins, spaces or underscores
    inside a label (`rotation 90`, `Rotation_90`) and a few plain-English aliases (`blurry`, `overexposed`,
    `noisy`). Unknown words are dropped; never raises (non-text → empty set).

    >>> sorted(parse_diagnosis("{'rotation90', 'dark'}"))
    ['dark', 'rotation90']
    >>> sorted(parse_diagnosis('["Blur", "NOISE"]'))
    ['blur', 'noise']
    >>> sorted(parse_diagnosis("rotation 90 and overexposed"))
    ['overexposure', 'rotation90']
    >>> parse_diagnosis("{'sunny'}")
    set()
    """
    if not isinstance(text, str):
        return set()
    text = _clean(text[:MAX_PAYLOAD_CHARS]).lower()
    found: set[str] = set()
    for part in _LABEL_SPLIT_RE.split(text):
        key = _LABEL_NORM_RE.sub("", part)
        if key in _LABEL_ALIASES:
            found.add(_LABEL_ALIASES[key])
    return found


def _canonical_diagnosis(labels: Iterable[str]) -> str:
    return "{" + ", ".join(f"'{x}'" for x in sorted(labels)) + "}"


# ----------------------------------------------------------------------------------------------------------
# Code fences
# ----------------------------------------------------------------------------------------------------------
_FENCE_OPEN_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+\-]*)[ \t]*\n?")


def strip_code_fences(payload: str) -> tuple[str, str | None]:
    """(code, error): the code inside the first ``` fence (```python, ```py, ``` …), or the payload itself
    when it has no fence. Text before the opening fence and after the closing fence is dropped; an opening
    fence without a closing one is an error; the code is dedented (an indented block still runs). THE fence rule: the parser applies it to `<code>` payloads and
    the sandbox (`tools.sandbox.run_image_code`) to whatever code it is given, so both run the same code.

    >>> strip_code_fences("```python\\nimport cv2\\n```")
    ('import cv2', None)
    >>> strip_code_fences("x = 1")
    ('x = 1', None)
    >>> strip_code_fences("```python\\nx = 1")
    ('', 'unclosed ``` fence in <code>')
    """
    m = _FENCE_OPEN_RE.search(payload)
    if m is None:
        return textwrap.dedent(payload.strip("\r\n")).strip(), None
    end = payload.find("```", m.end())
    if end < 0:
        return "", "unclosed ``` fence in <code>"
    return textwrap.dedent(payload[m.end() : end].strip("\r\n")).strip(), None


# ----------------------------------------------------------------------------------------------------------
# The structural scan
# ----------------------------------------------------------------------------------------------------------
class _Scan:
    """Tag structure of one turn: think span, complete top-level action blocks, first structural error."""

    __slots__ = ("think", "think_count", "think_span", "blocks", "error", "prefilled_think")

    def __init__(self, text: str) -> None:
        self.think: str | None = None
        self.think_count = 0
        self.think_span: tuple[int, int] | None = None  # (start of <think>, end of </think>)
        self.blocks: list[tuple[str, int, int, int, int]] = []  # (tag, open_start, payload_start, payload_end, close_end)
        self.error: str | None = None
        self.prefilled_think = False
        open_tag: str | None = None  # an action or "think"
        open_at = 0
        open_payload = 0
        seen_any = False
        for m in _TAG_RE.finditer(text):
            closing, tag = m.group(1) == "/", m.group(2)
            if open_tag == "think":
                if tag == "think" and closing:
                    if self.think is None:
                        self.think = text[open_payload : m.start()]
                        self.think_span = (open_at, m.end())
                    self.think_count += 1
                    open_tag = None
                continue  # tags inside a think block are words
            if open_tag is not None:  # inside an action block
                if closing and tag == open_tag:
                    self.blocks.append((tag, open_at, open_payload, m.start(), m.end()))
                    open_tag = None
                    continue
                if self.error is None:
                    if closing:
                        self.error = f"unexpected </{tag}> inside <{open_tag}>"
                    else:
                        self.error = f"nested <{tag}> inside <{open_tag}>"
                # keep scanning for the closing tag so later errors are consistent
                continue
            # top level
            if not closing:
                open_tag, open_at, open_payload = tag, m.start(), m.end()
            elif tag == "think" and not seen_any:
                # "</think>" first: the template pre-filled "<think>"
                self.think = text[: m.start()]
                self.think_span = (0, m.end())
                self.think_count += 1
                self.prefilled_think = True
            elif self.error is None:
                self.error = f"unmatched </{tag}>"
            seen_any = True
        if open_tag is not None and self.error is None:
            self.error = f"unclosed <{open_tag}>"


def _payload_action(tag: str, payload: str, think: str, raw: str) -> Action:
    """Validate and normalise the payload of the chosen block."""
    if len(payload) > MAX_PAYLOAD_CHARS:
        return _invalid(raw, f"<{tag}> payload too long ({len(payload)} > {MAX_PAYLOAD_CHARS} chars)", think)
    payload = _clean(payload)
    if tag == "code":
        code, err = strip_code_fences(payload)
        if err is not None:
            return _invalid(raw, err, think)
        if not code:
            return _invalid(raw, "empty <code>", think)
        return Action(kind="code", content=code, think=think, raw=raw)
    content = payload.strip()
    if not content:
        return _invalid(raw, f"empty <{tag}>", think)
    if tag == "problem":
        labels = parse_diagnosis(content)
        if not labels:
            snippet = content[:80]
            return _invalid(raw, f"no known degradation label in <problem>: {snippet!r}", think)
        return Action(kind="problem", content=_canonical_diagnosis(labels), think=think, raw=raw)
    return Action(kind=tag, content=content, think=think, raw=raw)


def parse_action(text: Any, *, policy: str = "reference") -> Action:
    """Parse one model turn into an `Action`; never raises. Rules and the multiple-action policy are in the
    module docstring. `policy` is "reference" (default) or "strict".

    >>> parse_action("<think>t</think><code>```python\\nimport cv2\\n```</code>").content
    'import cv2'
    >>> parse_action(None).kind
    'invalid'
    """
    try:
        return _parse_action(text, policy)
    except Exception as exc:  # pragma: no cover - defensive: the contract is "never raises"
        raw = text if isinstance(text, str) else ""
        return _invalid(raw, f"parser error: {type(exc).__name__}: {exc}")


def _parse_action(text: Any, policy: str) -> Action:
    if policy not in POLICIES:
        return _invalid(text if isinstance(text, str) else "", f"unknown parse policy {policy!r}; use one of {POLICIES}")
    if not isinstance(text, str):
        return _invalid("", f"turn is {type(text).__name__}, not str")
    raw = text
    if len(text) > MAX_TURN_CHARS:
        return _invalid(raw, f"turn too long ({len(text)} > {MAX_TURN_CHARS} chars)")
    scan = _Scan(text)
    think = _clean(scan.think).strip() if scan.think is not None else ""
    blocks = [b[0] for b in scan.blocks]
    if scan.error is not None:
        action = _invalid(raw, scan.error, think)
    elif not scan.blocks:
        action = _invalid(raw, "no action tag (expected one of <search>, <code>, <problem>, <answer>)", think)
    elif len(scan.blocks) > 1 and policy == "strict":
        names = ", ".join(f"<{b}>" for b in blocks)
        action = _invalid(raw, f"multiple actions: {names}", think)
    else:
        rank = {t: i for i, t in enumerate(PRECEDENCE)}
        chosen = min(scan.blocks, key=lambda b: (rank[b[0]], b[1])) if len(scan.blocks) > 1 else scan.blocks[0]
        tag, _, p0, p1, _ = chosen
        action = _payload_action(tag, text[p0:p1], think, raw)
    action.blocks = blocks
    action.format_ok = _strict_format(text, scan, action)
    return action


# ----------------------------------------------------------------------------------------------------------
# Strict format check (rewards)
# ----------------------------------------------------------------------------------------------------------
_REF_PROBLEM_PAYLOAD_RE = re.compile(r"\s*\{\s*'[^']+'\s*(?:,\s*'[^']+'\s*)*\}\s*")
_REF_CODE_PAYLOAD_RE = re.compile(r"\s*```python.*?```.*", re.DOTALL)


def _strict_format(text: str, scan: _Scan, action: Action) -> bool:
    """`Action.format_ok`: the whole turn is `<think>…</think>` (non-empty), optional whitespace, then exactly
    one valid action block, nothing else and no repeated tag; code fenced ```` ```python ````, a diagnosis a
    set literal of quoted known labels (as the reference's training format reward wants them)."""
    if action.kind == "invalid" or not action.think or len(scan.blocks) != 1:
        return False
    if scan.prefilled_think or scan.think_count != 1 or scan.think_span is None:
        return False
    tag, open_start, p0, p1, close_end = scan.blocks[0]
    t0, t1 = scan.think_span
    if text[:t0].strip() or text[t1:open_start].strip() or text[close_end:].strip():
        return False
    # no stray copies of any tag outside the two blocks (e.g. a second <think> inside the think block)
    if sum(1 for _ in _TAG_RE.finditer(text)) != 4:
        return False
    payload = text[p0:p1]
    if tag == "code":
        return _REF_CODE_PAYLOAD_RE.fullmatch(payload) is not None
    if tag == "problem":
        return _REF_PROBLEM_PAYLOAD_RE.fullmatch(payload) is not None and set(reference_problems(text)) <= set(
            DEGRADATIONS)
    return True


# ----------------------------------------------------------------------------------------------------------
# Strict format check (rewards)
# ----------------------------------------------------------------------------------------------------------
def format_ok(text: Any, kind: str | None = None, protocol: str = "tags") -> bool:
    """Strict format (`Action.format_ok`, see `_strict_format`) with the action restricted by `kind`: an action
    kind ("search", "code", "problem", "answer"), a task kind ("coding" → problem/code/answer, "search" and
    "multihop" → search/answer), or None (any). `protocol` is accepted for symmetry ("tags" and "chat" use the
    same turn format). Never raises.

    >>> format_ok("<think> a </think>\\n<answer> Paris </answer>", "search")
    True
    >>> format_ok("<think> a </think>\\n<answer> Paris </answer> extra", "search")
    False
    >>> format_ok("<think> a </think><problem> {'dark'} </problem>", "code")
    False
    """
    if not isinstance(text, str) or protocol not in ("tags", "chat"):
        return False
    if kind is None:
        allowed: tuple[str, ...] = ACTION_TAGS
    elif kind in TASK_KINDS:
        allowed = allowed_actions(kind)
    elif kind in ACTION_TAGS:
        allowed = (kind,)
    else:
        return False
    action = parse_action(text)
    return action.format_ok and action.kind in allowed


# ----------------------------------------------------------------------------------------------------------
# The reference's own extractors (byte-faithful; for reproducing the reference evaluation exactly)
# ----------------------------------------------------------------------------------------------------------
_REF_ANSWER_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>")  # no DOTALL, as in the reference
_REF_SEARCH_RE = re.compile(r"<search>\s*(.*?)\s*</search>")  # no DOTALL, as in the reference
_REF_CODE_RE = re.compile(r"<code>\s*```python(.*?)```.*?</code>", re.DOTALL)
_REF_PROBLEM_RE = re.compile(r"<problem>\s*\{(.*?)\}\s*</problem>", re.DOTALL)
_REF_QUOTED_RE = re.compile(r"'([^']+)'")


def reference_turn_kinds(text: Any, task_kind: str) -> list[str]:
    """The branches the reference evaluation loop takes for this turn, in order, by substring tests:
    coding → `["answer"]` if `<answer>` occurs, else those of `problem`, `code` that occur (both can);
    search / multihop → `["answer"]`, `["search"]` or `[]`. `[]` means the turn is ignored (nothing is added
    to the history and the same prompt is generated from again).

    >>> reference_turn_kinds("<problem>{'dark'}</problem><code>x</code>", "coding")
    ['problem', 'code']
    >>> reference_turn_kinds("<search>q</search><answer>a</answer>", "search")
    ['answer']
    """
    if not isinstance(text, str) or task_kind not in TASK_KINDS:
        return []
    if "<answer>" in text:
        return ["answer"]
    if task_kind == "coding":
        return [k for k in ("problem", "code") if f"<{k}>" in text]
    return ["search"] if "<search>" in text else []


def reference_answer(text: Any) -> str | None:
    """`re.search(r"<answer>\\s*(.*?)\\s*</answer>", text)` (single line, as the reference), stripped, or None."""
    if not isinstance(text, str):
        return None
    m = _REF_ANSWER_RE.search(text)
    return m.group(1).strip() if m else None


def reference_search_query(text: Any) -> str | None:
    """The reference's search-query extraction (single line), stripped, or None (the reference then fails
    the whole question with a NameError caught by its outer try: prediction None)."""
    if not isinstance(text, str):
        return None
    m = _REF_SEARCH_RE.search(text)
    return m.group(1).strip() if m else None


def reference_code(text: Any) -> str | None:
    """The code the reference would exec: the body of ```` <code>```python … ```…</code> ```` (unstripped),
    or None ("Code is not extracted successfully")."""
    if not isinstance(text, str):
        return None
    m = _REF_CODE_RE.search(text)
    return m.group(1) if m else None


def reference_problems(text: Any) -> list[str]:
    """The reference's `extract_problems`: single-quoted strings inside `<problem> {…} </problem>`, sorted,
    unfiltered (unknown labels kept). `[]` when the pattern does not match.

    >>> reference_problems("<problem> {'rotation90', 'dark'} </problem>")
    ['dark', 'rotation90']
    """
    if not isinstance(text, str):
        return []
    m = _REF_PROBLEM_RE.search(text)
    if not m:
        return []
    return sorted(_REF_QUOTED_RE.findall(m.group(1)))


# The reference TRAINING rewards' reading of a turn (grpo_agent_code.py / grpo_agent_search.py): substring tests
# and regexes exactly as they are, so `rewards.paper` reproduces them without reading text itself.
_P_ANSWER = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
_P_SEARCH = re.compile(r"<think>.*?</think>\s*<search>.*?</search>", re.DOTALL)
_P_CODE = re.compile(r"<think>.*?</think>\s*<code>\s*```python(.*?)```.*?</code>", re.DOTALL)
_P_PROBLEM = re.compile(r"^<think>.*?</think>\s*<problem>\s*\{\s*'[^']+'\s*(?:,\s*'[^']+'\s*)*\}\s*</problem>$",
                        re.DOTALL)
_P_PATTERN = {"answer": _P_ANSWER, "search": _P_SEARCH, "code": _P_CODE, "problem": _P_PROBLEM}
_R_ANSWER = re.compile(r"<answer>(.*?)</answer>")  # accuracy_reward: single line (no DOTALL)
_R_SEARCH = re.compile(r"<search>(.*?)</search>")


def _tag_or_all(pattern: re.Pattern, text: str) -> str:
    m = pattern.search(text)
    return m.group(1).strip() if m else text.strip()


@dataclass(frozen=True)
class ReferenceTurn:
    """One turn as the reference's training rewards read it. `answer` / `query`: the first single-line
    `<answer>` / `<search>` payload, stripped, or the whole text stripped when there is none (as its
    `accuracy_reward` does); `problems`: `reference_problems(text)`; `has(tag)`: the substring test
    `f"<{tag}>" in text`; `step(family)`: the step type the reference dispatches a SOLUTION on (substring
    tests in its order: coding answer > code > problem, search answer > search)."""

    text: str
    answer: str
    query: str
    problems: tuple[str, ...]

    def has(self, tag: str) -> bool:
        return f"<{tag}>" in self.text

    def count(self, tag: str) -> int:
        return self.text.count(f"<{tag}>")

    def step(self, family: str) -> str | None:
        order = ("answer", "code", "problem") if family == "coding" else ("answer", "search")
        return next((tag for tag in order if self.has(tag)), None)

    def format_ok(self, family: str, gold_step: str | None) -> bool:
        """The reference `format_reward`. Coding: False if `<answer>`, `<code>`, `<think>` or `<problem>` occurs
        twice; else the pattern of the gold step must fullmatch. Search: False if `<answer>`, `<search>` or
        `<think>` occurs twice; else the pattern of the tag the turn itself uses must fullmatch (the other not)."""
        t = self.text
        if family == "coding":
            if any(self.count(x) >= 2 for x in ("answer", "code", "think", "problem")):
                return False
            pattern = _P_PATTERN.get(gold_step or "") if gold_step != "search" else None
            return bool(pattern is not None and pattern.fullmatch(t))
        if any(self.count(x) >= 2 for x in ("answer", "search", "think")):
            return False
        is_answer, is_search = _P_ANSWER.fullmatch(t), _P_SEARCH.fullmatch(t)
        if "<answer>" in t and "</answer>" in t:
            return bool(is_answer and not is_search)
        if "<search>" in t and "</search>" in t:
            return bool(is_search and not is_answer)
        return False


def reference_turn(text: Any) -> ReferenceTurn:
    """`ReferenceTurn` of a turn (non-text → the empty turn). Never raises.

    >>> r = reference_turn("<think>t</think><answer>Paris, London</answer>")
    >>> r.answer, r.has("search"), r.format_ok("search", None)
    ('Paris, London', False, True)
    >>> reference_turn("Paris").answer
    'Paris'
    """
    t = _clean(text) if isinstance(text, str) else ""
    return ReferenceTurn(text=t, answer=_tag_or_all(_R_ANSWER, t), query=_tag_or_all(_R_SEARCH, t),
                         problems=tuple(reference_problems(t)))


def reference_format_ok(text: Any, family: str, gold_step: str | None = None) -> bool:
    """`reference_turn(text).format_ok(family, gold_step)`.

    >>> reference_format_ok("<think>x</think> <problem> {'dark'} </problem>", "coding", "problem")
    True
    """
    return reference_turn(text).format_ok(family, gold_step)


# ----------------------------------------------------------------------------------------------------------
# Crop boxes (MAT-Coding crop questions)
# ----------------------------------------------------------------------------------------------------------
_BOX_RE = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")


def extract_crop_box(question: Any) -> tuple[int, int, int, int] | None:
    """The first `[x1, y1, x2, y2]` integer box in a question (0–1000 grid, normalised by image width and
    height), as the reference takes it (`extract_coordinates(question)[0]`); None if there is none or a
    coordinate is outside 0–1000.

    >>> extract_crop_box("Recognize the text within the [489, 155, 595, 259] of the image.")
    (489, 155, 595, 259)
    >>> extract_crop_box("no box here") is None
    True
    """
    if not isinstance(question, str):
        return None
    m = _BOX_RE.search(question[:MAX_TURN_CHARS])
    if not m:
        return None
    box = tuple(int(g) for g in m.groups())
    if any(v > 1000 for v in box):
        return None
    return box  # type: ignore[return-value]


# A 2-D slice "[a:b, c:d]" whose parts may contain one level of brackets (the reference's pattern).
_PART = r"((?:[^\[\]:]|(?:\[[^\[\]]*\]))+?)"
_SLICE_RE = re.compile(r"\[\s*" + _PART + r"\s*:\s*" + _PART + r"\s*,\s*" + _PART + r"\s*:\s*" + _PART + r"\s*\]")


def apply_reference_crop(code: str, pixel_box: tuple[int, int, int, int]) -> str:
    """What the reference does to model code on a crop question: every 2-D slice `[a:b, c:d]` is replaced by
    the true box `[y_min:y_max, x_min:x_max]` (pixels), so the model's own coordinates do not matter.

    >>> apply_reference_crop("crop = img[y1:y2, x1:x2]", (10, 20, 30, 40))
    'crop = img[20:40, 10:30]'
    """
    x_min, y_min, x_max, y_max = pixel_box
    return _SLICE_RE.sub(lambda _m: f"[{y_min}:{y_max}, {x_min}:{x_max}]", code)


assert set(ACTION_TAGS) | {"invalid"} == set(ACTION_KINDS)


# --------------------------------------------------------------------------------------------------------------
# TRL / Qwen tool calls (the `chat` protocol with tool calls: what agentic training samples)
# --------------------------------------------------------------------------------------------------------------
_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass
class ToolCall:
    """One `<tool_call>{"name": …, "arguments": {…}}</tool_call>` of a model turn; `error` says why it could not
    be read (then `name`/`arguments` are what could be read, possibly empty)."""

    name: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    count: int = 1  # tool-call blocks in the turn (only the first is acted on)
    think: str = ""  # the turn's think text (first <think> block, stripped)
    clean: bool = False  # the whole turn is `<think>…</think>` (non-empty) + exactly one valid call, nothing else


def parse_tool_call(text: Any) -> ToolCall | None:
    r"""The first tool call of a turn in the Qwen/Hermes format TRL's tool loop parses (`<tool_call>` + JSON with
    `name` and `arguments`, arguments as an object or a JSON string), or None when the turn holds no
    `<tool_call>` at all. Never raises.

    >>> parse_tool_call('<think> dark </think>\n<tool_call>{"name": "diagnose", "arguments": {"problem": "dark"}}</tool_call>')
    ToolCall(name='diagnose', arguments={'problem': 'dark'}, error=None, count=1, think='dark', clean=True)
    >>> parse_tool_call("<tool_call>{'name': 1}</tool_call>").error
    'the tool call is not valid JSON'
    >>> parse_tool_call("<answer> 42 </answer>") is None
    True
    """
    if not isinstance(text, str) or "<tool_call>" not in text:
        return None
    call = _read_tool_call(text)
    m = _THINK_BLOCK_RE.search(text)
    call.think = _clean(m.group(1)).strip() if m else ""
    call.clean = bool(call.error is None and call.count == 1 and call.think and _CLEAN_CALL_RE.fullmatch(text))
    return call


_THINK_BLOCK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_CLEAN_CALL_RE = re.compile(r"\s*<think>(?:(?!<think>|</think>).)+</think>\s*<tool_call>.*?</tool_call>\s*", re.DOTALL)


def _read_tool_call(text: str) -> ToolCall:
    blocks = _TOOL_CALL_RE.findall(text)
    if not blocks:
        return ToolCall(error="unclosed <tool_call>")
    try:
        obj = json.loads(blocks[0].strip())
    except (ValueError, RecursionError):
        return ToolCall(error="the tool call is not valid JSON", count=len(blocks))
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"].strip():
        return ToolCall(error='the tool call needs a "name" (a string)', count=len(blocks))
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):
            return ToolCall(name=obj["name"], error="the tool call's arguments are not valid JSON", count=len(blocks))
    if not isinstance(args, dict):
        return ToolCall(name=obj["name"], error='the tool call\'s "arguments" must be an object', count=len(blocks))
    return ToolCall(name=obj["name"].strip(), arguments=args, count=len(blocks))
