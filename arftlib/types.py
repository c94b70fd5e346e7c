"""The workbench's vocabulary: Task, Action, Observation, Step, Trajectory — and the small facts about them
that every room needs (a task's family and allowed actions, a box on the 0–1000 grid, hop counts).

Every other module speaks in these plain dataclasses, so a task built by a generator, a MAT file read by a
loader, an evaluation episode and a training rollout all look the same on disk and in the viewer.
Everything here is JSON-serialisable through `to_dict()` / `from_dict()`; images are referred to by path,
never embedded. This module imports nothing of the workbench: it is the bottom layer.

>>> task_family("multihop"), allowed_actions("coding")
('search', ('problem', 'code', 'answer'))
>>> grid_box_to_pixels((366, 723, 506, 851), 1000, 500)
(366, 361, 506, 425)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ACTION_KINDS = ("search", "code", "problem", "answer", "invalid")
TOOL_ACTIONS = ("search", "code")  # actions that call a tool (a diagnosis only gets the reference's tips back)
TASK_KINDS = ("coding", "search", "multihop")
FAMILIES = ("coding", "search")  # a task kind's family: which prompt, tools and actions it uses
# The actions a task family may take, in the order the reference lists them.
ACTIONS_FOR_FAMILY: dict[str, tuple[str, ...]] = {"coding": ("problem", "code", "answer"), "search": ("search", "answer")}
# The paper's degradation label set for MAT-Coding (hard items combine two).
DEGRADATIONS = ("rotation90", "rotation180", "dark", "overexposure", "blur", "noise", "crop", "none")
GRID = 1000  # crop boxes are given on a 0–1000 grid, normalised by image width and height

# What an Observation can be, and why a tool call failed (a field, never read from a message's wording).
OBSERVATION_KINDS = ("text", "image", "error", "none")
ERROR_CATEGORIES = (
    "code_error",  # the code raised, crashed or was killed by a limit other than time
    "code_timeout",  # the code ran past the sandbox's wall-clock limit
    "no_output_image",  # the code finished but wrote no valid path_to_output_image.jpg
    "no_input_image",  # code on a task that has no image
    "search_error",  # the search backend failed
    "image_budget",  # code refused: the episode's tool-image budget is used up (not run)
    "invalid_action",  # the turn could not be acted on (malformed, or an action the task does not allow)
    "tools_off",  # a tool call in a run whose tools are switched off (the no-tool baseline): not run
)


def task_family(kind: str) -> str:
    """"coding" for coding tasks, "search" for search and multi-hop tasks; ValueError for anything else."""
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; use one of {TASK_KINDS}")
    return "coding" if kind == "coding" else "search"


def allowed_actions(kind: str) -> tuple[str, ...]:
    """The actions a task of this kind may take (its family's)."""
    return ACTIONS_FOR_FAMILY[task_family(kind)]


def grid_box_to_pixels(box: Any, width: int, height: int) -> tuple[int, int, int, int]:
    """A `[x1, y1, x2, y2]` box on the 0–1000 grid → pixel box `(x_min, y_min, x_max, y_max)`, exactly as the
    reference converts it: `int(v / 1000 * size)`. The one place this conversion lives."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return (int(x1 / GRID * width), int(y1 / GRID * height), int(x2 / GRID * width), int(y2 / GRID * height))


@dataclass
class Task:
    """One question to answer, from any source (MAT files, multi-hop jsonl, procedural generators)."""

    id: str  # unique within its benchmark; str even when the source used ints
    question: str  # the text shown to the policy
    images: list[str]  # paths of the images the policy sees (first = the input image); may be empty
    answers: list[str]  # gold answers; F1/EM take the max over them
    kind: str  # one of TASK_KINDS
    split: str = ""  # "simple" / "hard" for MAT-style benchmarks, "train" / "test" for generated data
    degradations: list[str] = field(default_factory=list)  # MAT-Coding `type` labels, [] for search
    benchmark: str = ""  # e.g. "mat-coding", "synth-search", "hotpotqa"
    clean_image: str | None = None  # the undegraded image when known (restoration rewards use it)
    gold_chain: list[dict[str, str]] = field(default_factory=list)  # [{"action": kind, "content": text}, ...]
    metadata: dict[str, Any] = field(default_factory=dict)  # anything else the source carried

    @property
    def family(self) -> str:
        """"coding" or "search" (multi-hop tasks are search-family)."""
        return task_family(self.kind)

    @property
    def hops(self) -> int | None:
        """Search hops — the one definition: `metadata["hops"]` when the source recorded it, else the number of
        `metadata["needed_passages"]`, else the gold chain's search steps; None for coding tasks and when none of
        them is known."""
        if self.family != "search":
            return None
        meta = self.metadata if isinstance(self.metadata, dict) else {}
        h = meta.get("hops")
        if isinstance(h, (int, float)) and not isinstance(h, bool):
            return int(h)
        if isinstance(meta.get("needed_passages"), list) and meta["needed_passages"]:
            return len(meta["needed_passages"])
        n = sum(1 for s in self.gold_chain if isinstance(s, dict) and s.get("action") == "search")
        return n or None

    @property
    def needs_tool(self) -> bool:
        """Whether answering needs a tool call: `metadata["needs_tool"]` when set; otherwise False only for a
        coding task whose degradations are all "none" (nothing to repair)."""
        v = self.metadata.get("needs_tool") if isinstance(self.metadata, dict) else None
        if v is not None:
            return bool(v)
        return not (self.kind == "coding" and self.degradations and all(d == "none" for d in self.degradations))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Task":
        return cls(**d)


@dataclass
class Action:
    """One model turn, parsed. `kind` is one of ACTION_KINDS; `invalid` carries the reason in `error`."""

    kind: str
    content: str = ""  # the payload: query, code (without fences), diagnosis set text, or answer
    think: str = ""  # text inside <think>…</think>, if any
    raw: str = ""  # the turn exactly as the model wrote it
    error: str | None = None  # why the turn is invalid (None for valid actions)
    blocks: list[str] = field(default_factory=list)  # every top-level action tag of the turn, in order
    format_ok: bool = False  # the strict format: `<think>…</think>` + exactly one action, nothing else (parse.py)

    @property
    def strict_kind(self) -> str:
        """The kind under the strict policy: a turn with more than one action block is "invalid" (rewards
        use this; the environment acts by the reference's precedence)."""
        return "invalid" if len(self.blocks) > 1 else self.kind

    @property
    def extra_tool_calls(self) -> int:
        """Tool calls beyond the first in this turn (an environment acts on one at most)."""
        return max(0, sum(b in TOOL_ACTIONS for b in self.blocks) - 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Observation:
    """What the environment answers to an action: text, an image, a tool error, or nothing.

    `tool` says which tool answered and `error_category` why it failed (one of `ERROR_CATEGORIES`), so rewards and
    metrics read fields, never the wording of a message."""

    kind: str  # one of OBSERVATION_KINDS: "text" | "image" | "error" | "none"
    text: str = ""  # rendered text shown to the model (e.g. <information>…</information>)
    image: str | None = None  # path of an image returned by the code tool
    error: str | None = None  # tool error message, also shown to the model
    hits: list[dict[str, Any]] = field(default_factory=list)  # search hits (title, text, score, source)
    elapsed_s: float = 0.0  # tool time
    tool: str | None = None  # "search" | "code" | "problem" (the diagnosis tips) | None (no tool ran)
    error_category: str | None = None  # one of ERROR_CATEGORIES when the action failed, else None

    @property
    def is_evidence(self) -> bool:
        """A successful tool result the model can answer from: an image the code wrote, or search hits."""
        if self.error_category is not None:
            return False
        return (self.tool == "code" and self.kind == "image" and bool(self.image)) or (
            self.tool == "search" and bool(self.hits))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Step:
    """One turn of an episode: what the model wrote, how it parsed, and what came back."""

    turn: int
    model_text: str
    action: Action
    observation: Observation | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generate_s: float = 0.0
    scored: bool = True  # False: shown for viewing only (e.g. a tool loop's last call-less turn after it closed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Step":
        d = dict(d)
        d["action"] = Action(**d["action"])  # records written before a field existed get its default
        if d.get("observation") is not None:
            d["observation"] = Observation(**d["observation"])
        return cls(**d)


@dataclass
class Trajectory:
    """A whole episode: the task, its steps, the final answer, rewards per component and metrics."""

    task: Task
    steps: list[Step] = field(default_factory=list)
    episode_id: str = ""
    group_id: str = ""  # GRPO group (same prompt, several generations); "" in evaluation
    start_step: int | None = None  # step-wise sample: the gold-chain step the policy wrote; None = whole episode
    training_step: int | None = None  # trainer global step when the rollout was generated
    protocol: str = "tags"  # "tags" (paper) or "chat"
    final_answer: str | None = None
    reward: float | None = None
    reward_components: dict[str, float] = field(default_factory=dict)
    advantage: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # f1, em, turns, tool_calls, tool_errors, …
    errors: list[str] = field(default_factory=list)  # tool errors and env errors seen in the episode
    finished: bool = False  # True once an answer was given or the turn budget ran out

    @property
    def scored_steps(self) -> list[Step]:
        """The steps rewards and metrics count (all but display-only ones)."""
        return [s for s in self.steps if s.scored]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trajectory":
        d = dict(d)
        d["task"] = Task.from_dict(d["task"])
        d["steps"] = [Step.from_dict(s) for s in d.get("steps", [])]
        return cls(**d)
