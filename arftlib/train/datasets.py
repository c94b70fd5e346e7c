"""Training datasets for a run config: step-wise rows (the paper's decomposition) and episode rows (the tool loop).

* `protocol="tags"` step-wise rows are the paper's (`data.stepwise.stepwise_dataset`: the whole history in one
  user message, tool outputs pre-computed, the reference's prompt or the compact one).
* `protocol="chat"` step-wise rows are prefixes of an agentic episode in the tool-call form training uses:
  the environment (`env.TagToolEnv` / `AgentEnv` in the config's `tool_format`) replays the task's gold turns up to
  step i — the tools really run — and the row's prompt is exactly the conversation the environment shows at
  that point (`env.messages`, image blocks as placeholders, the images in the `images` column: the input image and
  every image a gold code step produced). So a step-wise sample, an agentic rollout and the evaluation of either
  see the same tokens, and the paper's step-wise method can be compared with agentic GRPO on equal footing.
* episode rows (`rows.task_to_row`) start an episode in TRL's tool loop.

Every row carries its task (`task` column) and, for step-wise rows, `step_index`: rewards never read a prompt.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from arftlib.config import RunConfig
    from arftlib.types import Task

__all__ = ["chat_stepwise_dataset", "make_dataset"]


def _image_size(cfg: "RunConfig") -> tuple[int, int] | None:
    return (int(cfg.image_size), int(cfg.image_size)) if cfg.image_size else None


def _pil(path: str, size: tuple[int, int] | None):
    from PIL import Image

    with Image.open(path) as im:
        img = im.convert("RGB")
    return img.resize(size) if size is not None else img


def chat_stepwise_rows(task: "Task", cfg: "RunConfig", *, work_dir: str | None = None) -> list[dict[str, Any]]:
    """One row per gold step of `task`, its prompt the environment's conversation after the gold steps before it."""
    from arftlib.env import make_env
    from arftlib.env.core import AgentEnv
    from arftlib.rows import placeholder_messages, task_column
    from arftlib.tool_format import tool_turns_as_user
    from arftlib.turns import gold_turns

    settings = AgentEnv.settings_from_config(cfg, protocol="chat", tool_calls=cfg.tool_format, work_dir=work_dir)
    turns = gold_turns(task)
    size = _image_size(cfg)
    rows = []
    env = make_env(**settings)
    try:
        for i, turn in enumerate(turns):
            env.reset_at(task, i)
            messages = env.messages
            images = [_pil(b["image"], size) for m in messages for b in m["content"]
                      if isinstance(b, dict) and b.get("type") == "image"]
            action = task.gold_chain[i]["action"]
            rows.append({
                "prompt": placeholder_messages(tool_turns_as_user(messages)), "images": images, "task": task_column(task),
                "step_index": i, "n_steps": len(turns), "gold_action": action, "solution": turn,
                "task_id": str(task.id), "row_id": f"{task.id}/{i}", "kind": task.kind, "benchmark": task.benchmark,
                "split": task.split, "answers": [str(a) for a in task.answers],
                "degradations": [str(d) for d in task.degradations], "protocol": "chat",
            })
    finally:
        env.close()
    return rows


def chat_stepwise_dataset(tasks: Sequence["Task"], cfg: "RunConfig", *, seed: int, shuffle: bool = True):
    """`chat_stepwise_rows` of every task as a `datasets.Dataset`, shuffled by `random.Random(seed)`."""
    from datasets import Dataset, Features, Image as ImageF, List, Value
    from tqdm.auto import tqdm

    rows = []
    for t in tqdm(list(tasks), desc="step-wise rows (chat)", leave=False):
        rows.extend(chat_stepwise_rows(t, cfg))
    if shuffle:
        random.Random(seed).shuffle(rows)
    s = Value("string")
    msg = List({"role": s, "content": List({"type": s, "text": s})})
    features = Features({"prompt": msg, "images": List(ImageF()), "task": s, "step_index": Value("int32"),
                         "n_steps": Value("int32"), "gold_action": s, "solution": s, "task_id": s, "row_id": s,
                         "kind": s, "benchmark": s, "split": s, "answers": List(s), "degradations": List(s),
                         "protocol": s})
    return Dataset.from_list(rows, features=features)


def make_dataset(tasks: Sequence["Task"], cfg: "RunConfig", mode: str, *, seed: int | None = None,
                 shuffle: bool = True):
    """The TRL dataset for `mode` and the config's protocol (see the module docstring)."""
    from arftlib.data.stepwise import episode_dataset, stepwise_dataset

    seed = cfg.seed if seed is None else seed
    if mode == "stepwise":
        if cfg.protocol == "chat":
            return chat_stepwise_dataset(tasks, cfg, seed=seed, shuffle=shuffle)
        return stepwise_dataset(list(tasks), seed, k=cfg.search_k, image_size=_image_size(cfg), shuffle=shuffle,
                                style=cfg.prompt_style)
    return episode_dataset(list(tasks), seed, "chat", image_size=_image_size(cfg), shuffle=shuffle,
                           style=cfg.prompt_style)
