"""How an action is written as a model turn: the one home for gold turns and tool-call turns.

`parse.py` reads turns; this module writes them. Everything that produces a turn on the model's behalf — the
step-wise training data (`data.stepwise`), the scripted oracle policy (`rollout.ScriptedPolicy`), SFT warm-start
data and the environment's record of a TRL tool call — renders it here, so the forms cannot drift apart.

* `gold_turn(step, task, labels)` — one gold-chain entry as the reference's tag turn:
  `<think> … </think>\\n<ACTION> payload </ACTION>` (code fenced as the reference prompt shows it). Missing think
  texts come from deterministic templates (generators store payloads only).
* `gold_turns(task)` — the whole gold chain as tag turns; `gold_tool_turns(task)` — as TRL/Qwen JSON tool-call
  turns (`<think> … </think>\\n<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>`).
* `TOOL_FOR_ACTION` — action kind → (tool method, argument name): the names the environment exposes to TRL.
* `tool_call_text(name, **arguments)` — a tool call as the text a model would have written for it.

Left out: free-form think texts (templates only) and several actions in one turn.

>>> from arftlib.types import Task
>>> t = Task(id="1", question="Q?", images=["x.png"], answers=["7"], kind="coding")
>>> gold_turn({"action": "problem", "content": "{'dark'}", "think": "too dark"}, t)
"<think> too dark </think>\\n<problem> {'dark'} </problem>"
>>> gold_turn({"action": "code", "content": "import cv2\\n", "think": "fix"}, t)
'<think> fix </think>\\n<code>\\n```python\\nimport cv2\\n```\\n</code>'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from arftlib.types import Task, allowed_actions

__all__ = ["LABEL_FIX", "LABEL_SEEN", "LABEL_SHORT", "SHORT_THINK", "TOOL_FOR_ACTION", "short_think", "gold_tool_turns", "gold_turn", "gold_turns",
           "problem_labels", "tool_call_text"]

# action kind → (the environment's tool method, its one argument)
TOOL_FOR_ACTION: dict[str, tuple[str, str]] = {
    "search": ("search", "query"), "code": ("run_code", "code"), "problem": ("diagnose", "problem"),
    "answer": ("answer", "answer"),
}

LABEL_SEEN = {
    "rotation90": "the content is turned sideways by 90 degrees",
    "rotation180": "the content is upside down",
    "dark": "the image is too dark to read",
    "overexposure": "the image is washed out by overexposure",
    "blur": "the image is blurry",
    "noise": "the image is covered in noise",
    "crop": "the question asks about a small region given by a box",
    "none": "the image is clear and upright, with no visible issue",
}
LABEL_FIX = {
    "rotation90": "rotate it back upright",
    "rotation180": "rotate it by 180 degrees",
    "dark": "brighten it",
    "overexposure": "bring the highlights back down",
    "blur": "sharpen it",
    "noise": "denoise it",
    "crop": "crop the box and enlarge it",
    "none": "leave it as it is",
}


# two-word observations and one-word intentions: the think texts of the micro world's gold chains
# (`short_think`), where every token of a gold turn is a few-million-parameter policy's training cost
LABEL_SHORT = {
    "rotation90": "sideways", "rotation180": "upside down", "dark": "too dark", "overexposure": "washed out",
    "blur": "blurry", "noise": "noisy", "crop": "small box", "none": "clear",
}
SHORT_THINK = {"code": "restore it", "search": "look it up", "answer": "read it"}


def short_think(action: str, labels: Sequence[str] = ()) -> str:
    """A short think text: what is wrong for a diagnosis, else the intention.

    >>> short_think("problem", ["dark", "rotation90"]), short_think("answer")
    ('too dark, sideways', 'read it')
    """
    if action == "problem":
        return ", ".join(LABEL_SHORT.get(x, x) for x in labels) or "clear"
    return SHORT_THINK[action]


def _labels_of(payload: str) -> list[str]:
    from arftlib.parse import parse_diagnosis, reference_problems

    labs = reference_problems(f"<problem> {payload} </problem>")
    return labs or sorted(parse_diagnosis(payload))


def problem_labels(turn: str) -> list[str]:
    """The labels of a `<problem>` turn as the reference reads them (quoted labels, sorted, unknown kept), else
    the parser's reading of its payload."""
    from arftlib.parse import parse_action, parse_diagnosis, reference_problems

    return reference_problems(turn) or sorted(parse_diagnosis(parse_action(turn).content))


def _default_think(action: str, content: str, task: Task, labels: Sequence[str]) -> str:
    if action == "problem":
        seen = [LABEL_SEEN.get(x, x) for x in _labels_of(content)]
        return "Initial analysis of the image: " + "; ".join(seen) + "."
    if action == "code":
        order = sorted(labels, key=lambda x: (x not in ("rotation90", "rotation180"), x == "crop"))  # as the code
        fixes = [LABEL_FIX.get(x, x) for x in order] or ["process it"]
        return "I will " + " and ".join(fixes) + " with OpenCV, then save the processed image."
    if action == "search":
        return f"I need more information before I can answer, so I will look up: {content.strip()}"
    if task.kind == "coding":
        if labels and list(labels) != ["none"]:
            return "The processed image is clear now, so I can read the answer from it."
        return "The image has no issues, so I can read the answer directly."
    return "From the information gathered so far I can derive the answer."


def gold_turn(step: Mapping[str, Any], task: Task, labels: Sequence[str] = ()) -> str:
    """The model turn for one gold-chain entry (see the module docstring). A `content` that already contains its
    own action tag is a whole turn and is returned unchanged; otherwise the think text is `step["think"]` or a
    template (`labels` = the task's diagnosis, used by the code and answer templates)."""
    action, content = str(step["action"]), str(step["content"])
    if f"<{action}>" in content and f"</{action}>" in content:
        return content
    think = str(step.get("think") or _default_think(action, content, task, labels)).strip()
    if action == "code":
        body = content.strip("\n")
        if not body.lstrip().startswith("```"):
            body = "```python\n" + body + "\n```"
        return f"<think> {think} </think>\n<code>\n{body}\n</code>"
    return f"<think> {think} </think>\n<{action}> {content.strip()} </{action}>"


def gold_turns(task: Task) -> list[str]:
    """The task's gold chain as model turns in the reference's tag format (one `gold_turn` per entry). Raises
    ValueError naming the task and entry when the chain is missing or malformed."""
    if not task.gold_chain:
        raise ValueError(f"task {task.id!r} has no gold_chain")
    allowed = allowed_actions(task.kind)
    labels: list[str] = []
    turns = []
    for i, step in enumerate(task.gold_chain):
        if not isinstance(step, Mapping) or "action" not in step or "content" not in step:
            raise ValueError(f"task {task.id!r}: gold_chain[{i}] must be a dict with 'action' and 'content'")
        if step["action"] not in allowed:
            raise ValueError(f"task {task.id!r}: gold_chain[{i}]: action {step['action']!r} is not one of {allowed}")
        turn = gold_turn(step, task, labels)
        if step["action"] == "problem":  # later templates name what the diagnosis found
            labels = problem_labels(turn)
        turns.append(turn)
    return turns


def tool_call_text(name: str, **arguments: Any) -> str:
    """A tool call as the text a model writes for it (Qwen/Hermes form, compact JSON).

    >>> tool_call_text("search", query="x")
    '<tool_call>{"name": "search", "arguments": {"query": "x"}}</tool_call>'
    """
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "</tool_call>"


def gold_tool_turns(task: Task) -> list[str]:
    """The gold chain as TRL-style JSON tool-call turns (`<think> … </think>` + one `<tool_call>` block, the form
    Qwen's template renders): problem → `diagnose`, code → `run_code`, search → `search`, answer → `answer`."""
    from arftlib.parse import parse_action

    turns = []
    for step, text in zip(task.gold_chain, gold_turns(task)):
        action = parse_action(text)
        if action.kind not in TOOL_FOR_ACTION:
            raise ValueError(f"task {task.id!r}: gold step {step.get('action')!r} has no tool-call form "
                             f"({action.error})")
        name, arg = TOOL_FOR_ACTION[action.kind]
        call = json.dumps({"name": name, "arguments": {arg: action.content}}, ensure_ascii=False)
        turns.append(f"<think> {action.think} </think>\n<tool_call>\n{call}\n</tool_call>")
    return turns
