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

import re
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from arftlib.types import ACTION_KINDS, DEGRADATIONS, TASK_KINDS, Action

__all__ = [
    "ACTION_TAGS",
    "MAX_PAYLOAD_CHARS",
    "MAX_TURN_CHARS",
    "POLICIES",
    "PRECEDENCE",
    "apply_reference_crop",
    "crop_box_pixels",
    "extract_crop_box",
    "format_ok",
    "parse_action",
    "parse_diagnosis",
    "parse_tool_call",
    "ToolCall",
    "reference_answer",
    "reference_code",
    "reference_problems",
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
_ALLOWED_FOR_TASK = {
    "coding": frozenset({"problem", "code", "answer"}),
    "search": frozenset({"search", "answer"}),
    "multihop": frozenset({"search", "answer"}),
}


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
    when it has no fence. Text before the opening fence and after the closing fence is dropped.

    >>> strip_code_fences("```python\\nimport cv2\\n```")
    ('import cv2', None)
    >>> strip_code_fences("x = 1")
    ('x = 1', None)
    >>> strip_code_fences("```python\\nx = 1")
    ('', 'unclosed ``` fence in <code>')
    """
    m = _FENCE_OPEN_RE.search(payload)
    if m is None:
        return payload.strip(), None
    end = payload.find("```", m.end())
    if end < 0:
        return "", "unclosed ``` fence in <code>"
    return payload[m.end() : end].strip(), None


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
    if scan.error is not None:
        return _invalid(raw, scan.error, think)
    if not scan.blocks:
        return _invalid(raw, "no action tag (expected one of <search>, <code>, <problem>, <answer>)", think)
    if len(scan.blocks) > 1:
        if policy == "strict":
            names = ", ".join(f"<{b[0]}>" for b in scan.blocks)
            return _invalid(raw, f"multiple actions: {names}", think)
        rank = {t: i for i, t in enumerate(PRECEDENCE)}
        chosen = min(scan.blocks, key=lambda b: (rank[b[0]], b[1]))
    else:
        chosen = scan.blocks[0]
    tag, _, p0, p1, _ = chosen
    return _payload_action(tag, text[p0:p1], think, raw)


# ----------------------------------------------------------------------------------------------------------
# Strict format check (rewards)
# ----------------------------------------------------------------------------------------------------------
_REF_PROBLEM_PAYLOAD_RE = re.compile(r"\s*\{\s*'[^']+'\s*(?:,\s*'[^']+'\s*)*\}\s*")
_REF_CODE_PAYLOAD_RE = re.compile(r"\s*```python.*?```.*", re.DOTALL)


def format_ok(text: Any, kind: str | None = None, protocol: str = "tags") -> bool:
    """Strict format: the whole turn is `<think>…</think>` (non-empty), optional whitespace, then exactly one
    action block, and nothing else; no repeated tag. `kind` restricts the action: an action kind
    ("search", "code", "problem", "answer"), a task kind ("coding" → problem/code/answer, "search" and
    "multihop" → search/answer), or None (any). Code must be fenced ```` ```python ```` and a diagnosis must
    be a set literal of quoted labels, as in the reference training format reward; labels must also be known.
    `protocol` is accepted for symmetry ("tags" and "chat" use the same turn format). Never raises.

    >>> format_ok("<think> a </think>\\n<answer> Paris </answer>", "search")
    True
    >>> format_ok("<think> a </think>\\n<answer> Paris </answer> extra", "search")
    False
    >>> format_ok("<think> a </think><problem> {'dark'} </problem>", "code")
    False
    """
    try:
        return _format_ok(text, kind, protocol)
    except Exception:  # pragma: no cover - defensive
        return False


def _format_ok(text: Any, kind: str | None, protocol: str) -> bool:
    if not isinstance(text, str) or protocol not in ("tags", "chat"):
        return False
    if kind is None:
        allowed = frozenset(ACTION_TAGS)
    elif kind in _ALLOWED_FOR_TASK:
        allowed = _ALLOWED_FOR_TASK[kind]
    elif kind in ACTION_TAGS:
        allowed = frozenset({kind})
    else:
        return False
    action = parse_action(text, policy="strict")
    if action.kind not in allowed or not action.think:
        return False
    scan = _Scan(text)
    if scan.prefilled_think or scan.think_count != 1 or scan.think_span is None or len(scan.blocks) != 1:
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
            DEGRADATIONS
        )
    return True


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


def crop_box_pixels(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """Grid box → pixel box `(x_min, y_min, x_max, y_max)` exactly as the reference: `int(v / 1000 * size)`.

    >>> crop_box_pixels((366, 723, 506, 851), 1000, 500)
    (366, 361, 506, 425)
    """
    x1, y1, x2, y2 = box
    return (int(x1 / 1000 * width), int(y1 / 1000 * height), int(x2 / 1000 * width), int(y2 / 1000 * height))


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


def parse_tool_call(text: Any) -> ToolCall | None:
    r"""The first tool call of a turn in the Qwen/Hermes format TRL's tool loop parses (`<tool_call>` + JSON with
    `name` and `arguments`, arguments as an object or a JSON string), or None when the turn holds no
    `<tool_call>` at all. Never raises.

    >>> parse_tool_call('<think> dark </think>\\n<tool_call>{"name": "diagnose", "arguments": {"problem": "dark"}}</tool_call>')
    ToolCall(name='diagnose', arguments={'problem': 'dark'}, error=None, count=1)
    >>> parse_tool_call("<tool_call>{'name': 1}</tool_call>").error
    'the tool call is not valid JSON'
    >>> parse_tool_call("<answer> 42 </answer>") is None
    True
    """
    if not isinstance(text, str) or "<tool_call>" not in text:
        return None
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
