"""Dataset rows ⇄ tasks: the contract between training data, TRL and the environment.

A TRL `GRPOTrainer` passes each dataset row to the environment (`AgentEnv.reset(**row)`) and every column to the
reward functions. Both kinds of training row carry their `Task`, serialised, in the `task` column, so nothing
downstream ever recovers a question or an answer from prompt text:

* episode rows (`task_to_row`): `prompt` (the protocol's initial messages with image blocks reduced to
  `{"type": "image"}` placeholders that TRL fills from `image`), `image` (PIL RGB, resized to `image_size` if
  given; None for text-only tasks), `task`, and plain columns (`task_id`, `kind`, `benchmark`, `split`,
  `answers`, `degradations`, `clean_image`, `input_image`, `protocol`) for filtering and display;
* step-wise rows (`data.stepwise`) add `step_index` — the gold-chain step the completion replaces.

`task_from_row(row)` reads the `task` column back (JSON string, dict or `Task`), or rebuilds a Task from plain
columns for rows made elsewhere. Errors name the column and field.

>>> from arftlib.types import Task
>>> t = Task(id="7", question="Q?", images=[], answers=["a"], kind="search")
>>> task_from_row(task_to_row(t, "chat")) == t
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from arftlib import prompts as P
from arftlib.types import Task, task_family

__all__ = ["ROW_PROTOCOLS", "placeholder_messages", "task_column", "task_from_row", "task_from_value", "task_to_row"]

ROW_PROTOCOLS = ("tags", "chat", "direct")
_TASK_FIELDS = ("id", "question", "images", "answers", "kind", "split", "degradations", "benchmark",
                "clean_image", "gold_chain", "metadata")


def task_column(task: Task) -> str:
    """The `task` column: canonical JSON of `Task.to_dict()` (sorted keys, so equal tasks give equal bytes)."""
    return json.dumps(task.to_dict(), sort_keys=True, ensure_ascii=False)


def task_from_value(value: Any) -> Task:
    """A `Task` from a `task` column value: a Task, a dict of Task fields or its JSON string."""
    if isinstance(value, Task):
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"row field 'task' is not valid JSON ({e})") from None
    if isinstance(value, Mapping):
        d = {k: value[k] for k in _TASK_FIELDS if k in value}
        missing = [k for k in ("id", "question", "images", "answers", "kind") if k not in d]
        if missing:
            raise ValueError(f"row field 'task' lacks Task field(s) {missing}")
        d["id"] = str(d["id"])
        task = Task.from_dict(d)
        task_family(task.kind)  # an unknown kind fails here, naming it
        return task
    raise TypeError(f"row field 'task' must be a Task, a dict or a JSON string, not {type(value).__name__}")


def task_from_row(row: Mapping[str, Any]) -> Task:
    """The `Task` of a dataset row: its `task` column, or else the Task fields as columns (`id`/`task_id`,
    `question`, `images`/`input_image`, `answers`, `kind`, …)."""
    if row.get("task") is not None:
        return task_from_value(row["task"])
    d = {k: row[k] for k in _TASK_FIELDS if k in row and row[k] is not None}
    if "id" not in d and row.get("task_id") is not None:
        d["id"] = row["task_id"]
    if "images" not in d:
        d["images"] = [row["input_image"]] if row.get("input_image") else []
    if "question" not in d:
        raise ValueError(f"row has neither a 'task' column nor a 'question' column (columns: {sorted(row)})")
    return task_from_value(d)


def placeholder_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with every image block reduced to `{"type": "image"}` (TRL fills it from the `image` column) and
    every text block to plain `{"type": "text", "text": …}`."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        blocks = [{"type": "image"} if b.get("type") == "image" else {"type": "text", "text": str(b.get("text", ""))}
                  for b in content]
        out.append({"role": m["role"], "content": blocks})
    return out


def task_to_row(task: Task, protocol: str = "tags", *, image_size: tuple[int, int] | None = None,
                load_image: bool = True, style: str = "reference") -> dict[str, Any]:
    """One episode row for `AgentEnv.reset(**row)` and TRL's `GRPOTrainer` (columns: module docstring); `style` is
    the prompt style (`prompts.PROMPT_STYLES`)."""
    if protocol not in ROW_PROTOCOLS:
        raise ValueError(f"protocol must be one of {ROW_PROTOCOLS}, not {protocol!r}")
    task_family(task.kind)
    prompt = placeholder_messages(P.build_messages(task, protocol, [], style=style))
    input_path = task.images[0] if task.images else None
    image = None
    if input_path and load_image:
        from PIL import Image

        try:
            with Image.open(input_path) as im:
                image = im.convert("RGB")
        except OSError as e:
            raise OSError(f"task {task.id!r}: cannot open input image {input_path}: {e}") from e
        if image_size is not None:
            image = image.resize(tuple(image_size))
    return {
        "prompt": prompt,
        "image": image,
        "task": task_column(task),
        "task_id": str(task.id),
        "kind": task.kind,
        "benchmark": task.benchmark,
        "split": task.split,
        "answers": [str(a) for a in task.answers],
        "degradations": [str(d) for d in task.degradations],
        "clean_image": task.clean_image,
        "input_image": input_path,
        "protocol": protocol,
    }
