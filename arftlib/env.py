"""The one agent environment: TRL's `environment_factory` in training AND the evaluation loop's episode.

`AgentEnv` holds one episode — a `Task`, the turns so far, the current image, the tool budget — and runs the
tools (`tools.search` for `<search>`, `tools.sandbox.run_image_code` for `<code>`, the reference's `<tips>`
for a `<problem>` diagnosis). Two ways in, one code path (`_act`):

* Text turns (evaluation, `rollout.py`): `env.step(model_text) -> Observation` parses the turn with
  `parse.parse_action`, acts, records a `Step` and returns what the model will see; `env.messages` is the
  conversation for the next generation (`prompts.build_messages`), `env.done`, `env.trajectory`.
* Tool calls (training, TRL `GRPOTrainer(environment_factory=...)`): TRL builds one instance per rollout,
  calls `reset(**row)` with the whole dataset row (`task_to_row` below makes such rows), exposes every public
  *function* of the class as a tool — `search(query)`, `run_code(code)`, `diagnose(problem)`,
  `answer(answer)` — and scores the finished episode with `get_reward()` (the rubric total from
  `rewards.score_trajectory`). Everything else that is public (`step`, `finish`, `messages`, …) is declared
  with `@not_a_tool` or as a property, so TRL does not offer it to the model. `run_code` returns
  `[{"type": "image", "image": PIL.Image}, {"type": "text", "text": …}]`, which TRL feeds back to the VLM.

Protocols (`protocol=`; see prompts.py)
  * `tags` — the paper's: the whole history in ONE user message, exactly as the reference evaluation builds
    it. A turn with no usable action is ignored (nothing is added; the same prompt is generated from again,
    as in the reference). After a diagnosis the reference's `<tips>` text follows. After code that ran the
    image in the message is replaced by the processed image and no text is added; failed code adds the turn
    only. On a crop diagnosis (first sorted label `crop`) every `[a:b, c:d]` slice in the model's code is
    replaced by the question's box in pixels of the current image before it runs (`reference_crop`, on by
    default in `tags`), as the reference does.
  * `chat` — system + user(image, query), then assistant turns and observation turns (role `user`, or
    `tool` with `observation_role="tool"`); the processed image comes back as a new image block; invalid
    turns and tool errors are shown as text.
  * `chat` with `tool_calls=True` — the chat protocol as TRL's tool loop trains it (`train --mode agentic`):
    the prompt is rendered with the tool schemas (`tool_functions()`, TRL passes the same methods), a turn
    acts through its first `<tool_call>{"name": …, "arguments": …}</tool_call>` (`parse.parse_tool_call`),
    the result comes back as a `tool` turn, and a turn without a tool call ends the episode (an `<answer>`
    in it is the answer), as TRL's loop ends there — that last turn is recorded for viewing after the
    episode closed, so metrics and rubric rewards (`rubric=`) count it exactly as training does (not at all).
    This is how an agentic-trained adapter is evaluated.
  * `direct` — the no-tool baseline: one turn, the whole turn is the answer (the reference's "direct
    inference" scripts score the raw output).

Budgets: `max_turns` (default 5, the reference's) model turns or tool calls per episode — the episode ends
unanswered when they are used up; `image_budget` (default 4) tool images per episode — further code is
refused with a message (counted in `image_budget_refusals`, not run). A turn whose action does not belong to
the task (a `<search>` in a coding task) is an invalid turn.

Failure policy: anything a tool does wrong (code raising, timing out, writing no image; a search backend
failing) becomes an observation for the model and is counted in `trajectory.metrics["tool_errors"]` and
`trajectory.errors`. Everything else — a malformed task or row, stepping a finished episode, a missing input
image, a broken sandbox setup that raises — fails loud.

Files: tool images are written to a per-episode folder (under `work_dir`, default the system temp dir) that
is removed at the next `reset()` or `close()` unless `keep_files=True`; `trajectories.TrajectoryWriter`
copies them out before that (the rollout loop writes each trajectory before closing its environment).

Trajectory metrics (`trajectory.metrics`): turns, tool_calls, tool_errors, invalid_turns, searches,
code_runs, diagnoses, images_shown, image_budget_refusals, answered, prompt_tokens, completion_tokens,
image_tokens, generate_s, tool_s, and — when the task has gold answers — f1, em (reference scoring) and
f1_corrected, em_corrected (the `corrected` variant), all in [0, 1].

Left out: several actions per turn (the reference acts on `<problem>` and `<code>` in one turn; we take one
action per turn by the reference's precedence, see parse.py), tool calls in parallel within one episode,
and any retry of failed tools (the model decides what to do next).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from arftlib import prompts as P
from arftlib.parse import (
    apply_reference_crop,
    crop_box_pixels,
    extract_crop_box,
    parse_action,
    parse_diagnosis,
    parse_tool_call,
    reference_problems,
)
from arftlib.types import TASK_KINDS, Action, Observation, Step, Task, Trajectory

__all__ = [
    "ACTIONS_FOR",
    "AgentEnv",
    "ENV_PROTOCOLS",
    "TOOL_METHODS",
    "tool_functions",
    "not_a_tool",
    "shared_search",
    "task_family",
    "task_from_row",
    "task_to_row",
]

ENV_PROTOCOLS = ("tags", "chat", "direct")
TOOL_METHODS = ("search", "run_code", "diagnose", "answer")  # what TRL exposes to the model
_TOOL_KINDS = {"search": "search", "run_code": "code", "diagnose": "problem", "answer": "answer"}  # → Action.kind
_TOOL_ARGUMENT = {"search": "query", "run_code": "code", "diagnose": "problem", "answer": "answer"}
ACTIONS_FOR = {"coding": ("problem", "code", "answer"), "search": ("search", "answer")}
_METRIC_KEYS = (
    "turns", "tool_calls", "tool_errors", "invalid_turns", "searches", "code_runs", "diagnoses", "images_shown",
    "image_budget_refusals", "answered", "prompt_tokens", "completion_tokens", "image_tokens", "generate_s",
    "tool_s",
)
_TASK_FIELDS = ("id", "question", "images", "answers", "kind", "split", "degradations", "benchmark",
                "clean_image", "gold_chain", "metadata")


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------
class not_a_tool:
    """Decorator for public environment methods that TRL must NOT expose as tools.

    TRL lists `inspect.getmembers(type(env), inspect.isfunction)`; this descriptor is not a function on the
    class (it returns itself there) but binds like a normal method on an instance."""

    def __init__(self, fn):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return types.MethodType(self.fn, obj)

    def __call__(self, *args, **kwargs):  # called through the class: AgentEnv.step(env, text)
        return self.fn(*args, **kwargs)


def task_family(kind: str) -> str:
    """"coding" for coding tasks, "search" for search and multi-hop tasks."""
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; use one of {TASK_KINDS}")
    return "coding" if kind == "coding" else "search"


_SEARCH_CACHE: dict[str, Any] = {}
_SEARCH_LOCK = threading.Lock()


def shared_search(backend: str = "local", **options: Any):
    """One `tools.search` backend per (backend, options) in this process, shared by all environments
    (search objects are thread-safe; loading a BM25 index once matters)."""
    key = json.dumps([backend, options], sort_keys=True, default=str)
    with _SEARCH_LOCK:
        s = _SEARCH_CACHE.get(key)
        if s is None:
            from arftlib.tools.search import load_search

            s = load_search(backend, **options)
            _SEARCH_CACHE[key] = s
        return s


def _to_task(value: Any) -> Task:
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
        return Task.from_dict(d)
    raise TypeError(f"row field 'task' must be a Task, a dict or a JSON string, not {type(value).__name__}")


def task_from_row(row: Mapping[str, Any]) -> Task:
    """The `Task` of a dataset row: its `task` column (JSON string, dict or Task), or else the Task fields as
    columns (`id`/`task_id`, `question`, `images`/`input_image`, `answers`, `kind`, …)."""
    if row.get("task") is not None:
        return _to_task(row["task"])
    d = {k: row[k] for k in _TASK_FIELDS if k in row and row[k] is not None}
    if "id" not in d and row.get("task_id") is not None:
        d["id"] = row["task_id"]
    if "images" not in d:
        d["images"] = [row["input_image"]] if row.get("input_image") else []
    if "question" not in d:
        raise ValueError(f"row has neither a 'task' column nor a 'question' column (columns: {sorted(row)})")
    return _to_task(d)


def task_to_row(task: Task, protocol: str = "tags", *, image_size: tuple[int, int] | None = None,
                load_image: bool = True) -> dict[str, Any]:
    """One dataset row for `AgentEnv.reset(**row)` and TRL's `GRPOTrainer`.

    Columns: `prompt` (conversational, `prompts.build_messages(task, protocol)` with image blocks reduced to
    `{"type": "image"}` placeholders that TRL fills from `image`), `image` (PIL RGB, resized to
    `image_size` if given; None for text-only tasks), `task` (JSON of `Task.to_dict()`), and the plain columns
    `task_id`, `kind`, `benchmark`, `split`, `answers`, `degradations`, `clean_image`, `input_image`,
    `protocol`.
    """
    if protocol not in ENV_PROTOCOLS:
        raise ValueError(f"protocol must be one of {ENV_PROTOCOLS}, not {protocol!r}")
    task_family(task.kind)
    messages = P.build_messages(task, protocol, [])
    prompt = []
    for m in messages:
        blocks = [{"type": "image"} if b.get("type") == "image" else {"type": "text", "text": str(b.get("text", ""))}
                  for b in m["content"]]
        prompt.append({"role": m["role"], "content": blocks})
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
        "task": json.dumps(task.to_dict(), sort_keys=True, ensure_ascii=False),
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


def _tool_raw(name: str, **arguments: Any) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "</tool_call>"


def tool_functions(env: "AgentEnv | None" = None) -> list[Callable[..., Any]]:
    """The tools TRL's `environment_factory` offers the model, in TRL's order: the environment class's public
    functions except `reset` / `get_reward`, alphabetically (`inspect.getmembers`), bound to `env` (a fresh
    `AgentEnv` by default). Pass them as `apply_chat_template(..., tools=…)` to render the prompt training saw."""
    import inspect

    env = env if env is not None else AgentEnv()
    return [getattr(env, name) for name, _ in inspect.getmembers(type(env), predicate=inspect.isfunction)
            if name not in ("reset", "get_reward") and not name.startswith("_")]


# --------------------------------------------------------------------------------------------------------------
# the environment
# --------------------------------------------------------------------------------------------------------------
class AgentEnv:
    """One episode of a Visual-ARFT task (see the module docstring).

    Construction takes no required argument (TRL calls the factory with none); pass settings with
    `functools.partial(AgentEnv, protocol="chat", ...)`, `AgentEnv.factory(...)` or `AgentEnv.from_config(cfg)`.

    Args (all keyword):
        protocol: "tags", "chat" or "direct"; None = the row's `protocol` column at reset, else "chat".
        max_turns: model turns / tool calls per episode (default 5, as the reference).
        image_budget: tool images per episode shown to the model (default 4).
        search: a `tools.search.Search` to use; default `shared_search(search_backend, **search_options)`,
            with `corpus=task.metadata["corpus"]` added for the local backend when the task names a file
            (`"wiki"` = the default corpus).
        search_k: hits shown per search (default 4, as the reference).
        search_with_title: prefix each hit with its title (not the reference rendering).
        sandbox_timeout_s, sandbox_memory_mb: limits per code run.
        rubric: a `rewards.Rubric` for `get_reward()` / episode rewards (default `rewards.agentic_rubric(kind)`
            when `get_reward` is called).
        parse_policy: "reference" (default) or "strict" (see parse.py).
        observation_role: "user" (default) or "tool" for chat observations.
        reference_crop: apply the reference's crop-box substitution (default: True in tags, False otherwise).
        work_dir: parent folder of the per-episode folders (default: system temp dir).
        keep_files: keep episode folders after reset/close.
        code_runner: replacement for `tools.sandbox.run_image_code` (same signature); for tests and tooling.
        tool_calls: (chat only) turns are TRL-style tool calls, observations `tool` turns (module docstring).
    """

    def __init__(
        self,
        *,
        protocol: str | None = None,
        max_turns: int = 5,
        image_budget: int = 4,
        search: Any = None,
        search_backend: str = "local",
        search_options: Mapping[str, Any] | None = None,
        search_k: int = 4,
        search_with_title: bool = False,
        sandbox_timeout_s: float = 10.0,
        sandbox_memory_mb: int = 1024,
        rubric: Any = None,
        parse_policy: str = "reference",
        observation_role: str = "user",
        reference_crop: bool | None = None,
        work_dir: str | os.PathLike | None = None,
        keep_files: bool = False,
        code_runner: Any = None,
        tool_calls: bool = False,
    ):
        if protocol is not None and protocol not in ENV_PROTOCOLS:
            raise ValueError(f"protocol must be one of {ENV_PROTOCOLS} or None, not {protocol!r}")
        if int(max_turns) < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns!r}")
        if int(image_budget) < 0:
            raise ValueError(f"image_budget must be >= 0, got {image_budget!r}")
        if observation_role not in ("user", "tool"):
            raise ValueError(f"observation_role must be 'user' or 'tool', not {observation_role!r}")
        if tool_calls and protocol not in (None, "chat"):
            raise ValueError(f"tool_calls=True is the chat protocol's tool-call form; protocol {protocol!r} has none")
        self.tool_calls = bool(tool_calls)
        if self.tool_calls:
            observation_role = "tool"  # TRL renders tool results as tool turns
        self._protocol_arg = protocol
        self.protocol = protocol or "chat"
        self.max_turns = int(max_turns)
        self.image_budget = int(image_budget)
        self._search = search
        self.search_backend = search_backend
        self.search_options = dict(search_options or {})
        self.search_k = int(search_k)
        self.search_with_title = bool(search_with_title)
        self.sandbox_timeout_s = float(sandbox_timeout_s)
        self.sandbox_memory_mb = int(sandbox_memory_mb)
        self.rubric = rubric
        self.parse_policy = parse_policy
        self.observation_role = observation_role
        self._reference_crop_arg = reference_crop
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.keep_files = bool(keep_files)
        self._code_runner = code_runner
        # episode state
        self.task: Task | None = None
        self._trajectory: Trajectory | None = None
        self._history: list[tuple[str, Any]] = []
        self._image: str | None = None
        self._diagnosis: list[str] = []
        self._done = False
        self._episode_dir: Path | None = None
        self.calls_after_end = 0
        self._pending_turn: tuple[str, Mapping[str, Any]] | None = None  # the text turn a tool call came from

    # ---------------------------------------------------------------------------------------------- building
    @classmethod
    def factory(cls, **settings: Any):
        """A zero-argument factory for TRL's `environment_factory` (`functools.partial(cls, **settings)`)."""
        return functools.partial(cls, **settings)

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> "AgentEnv":
        """An environment with a `RunConfig`'s agent settings (protocol, max_turns, image_budget, search
        backend and k, sandbox limits); keyword overrides win."""
        settings = dict(
            protocol=cfg.protocol, max_turns=cfg.max_turns, image_budget=cfg.image_budget,
            search_backend=cfg.search_backend, search_k=cfg.search_k,
            sandbox_timeout_s=cfg.sandbox_timeout_s, sandbox_memory_mb=cfg.sandbox_memory_mb,
        )
        settings.update(overrides)
        return cls(**settings)

    # ---------------------------------------------------------------------------------------------- episode
    def reset(self, task: Any = None, *, episode_id: str | None = None, group_id: str = "",
              training_step: int | None = None, **row: Any) -> None:
        """Start an episode. `task` is a `Task`, a dict or the JSON string of a row's `task` column; without
        it the Task is rebuilt from the row's columns. TRL passes the whole row (`prompt`, `image`, …): a PIL
        `image` is used as the input image when the task's image file does not exist here. Returns None (the
        row's `prompt` is already the full initial prompt)."""
        self._cleanup()
        if task is None:
            task = task_from_row(row)
        t = _to_task(task)
        task_family(t.kind)
        row_protocol = row.get("protocol")
        if self._protocol_arg is None:
            self.protocol = row_protocol if row_protocol in ENV_PROTOCOLS else "chat"
        elif row_protocol is not None and row_protocol != self._protocol_arg:
            raise ValueError(f"task {t.id!r}: the row was built for protocol {row_protocol!r} but this environment "
                             f"runs {self._protocol_arg!r}; build rows with task_to_row(task, {self._protocol_arg!r})")
        self.task = t
        self._history = []
        self._diagnosis = []
        self._done = False
        self.calls_after_end = 0
        self._image = t.images[0] if t.images else None
        if self._image is not None and not Path(self._image).is_file():
            pil = row.get("image")
            if pil is None:
                raise FileNotFoundError(f"task {t.id!r}: input image {self._image} does not exist")
            path = self._ensure_dir() / "input.png"
            pil.convert("RGB").save(path)
            self._image = str(path)
        self._trajectory = Trajectory(
            task=t, episode_id=episode_id or f"{t.id}-{uuid.uuid4().hex[:8]}", group_id=group_id,
            training_step=training_step, protocol=self.protocol,
            metrics={k: 0 for k in _METRIC_KEYS},
        )
        return None

    @property
    def trajectory(self) -> Trajectory:
        """The episode so far (the live object; finished when `done`)."""
        if self._trajectory is None:
            raise RuntimeError("no episode: call reset() first")
        return self._trajectory

    @property
    def done(self) -> bool:
        """True once the episode answered or ran out of turns."""
        return self._done

    @property
    def family(self) -> str:
        return task_family(self._need_task().kind)

    @property
    def current_image(self) -> str | None:
        """Path of the image the next code runs on (the latest processed image in this episode)."""
        return self._image

    @property
    def reference_crop(self) -> bool:
        return self.protocol == "tags" if self._reference_crop_arg is None else bool(self._reference_crop_arg)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation for the next generation (image blocks carry file paths)."""
        t = self._need_task()
        return P.build_messages(t, self.protocol, self._history, observation_role=self.observation_role)

    @property
    def history(self) -> list[tuple[str, Any]]:
        """`(model_text, observation)` pairs as `prompts.build_messages` takes them (None = ignored turn)."""
        return list(self._history)

    # ---------------------------------------------------------------------------------------------- text turns
    @not_a_tool
    def step(self, model_text: str, *, prompt_tokens: int = 0, completion_tokens: int = 0, image_tokens: int = 0,
             generate_s: float = 0.0) -> Observation:
        """Act on one model turn (text) and return the observation; the turn is recorded as a `Step`."""
        t = self._need_task()
        if self._done:
            raise RuntimeError(f"episode {self.trajectory.episode_id!r} is over; call reset() for a new one")
        if not isinstance(model_text, str):
            raise TypeError(f"model_text must be str, not {type(model_text).__name__}")
        gen = dict(prompt_tokens=int(prompt_tokens), completion_tokens=int(completion_tokens),
                   image_tokens=int(image_tokens), generate_s=float(generate_s))
        if self.protocol == "direct":
            action = Action(kind="answer", content=model_text, raw=model_text)
            return self._act(action, model_text, gen)
        if self.tool_calls and self.protocol == "chat":
            return self._tool_call_turn(model_text, gen)
        action = parse_action(model_text, policy=self.parse_policy)
        if action.kind != "invalid" and action.kind not in ACTIONS_FOR[task_family(t.kind)]:
            action = Action(kind="invalid", think=action.think, raw=model_text,
                            error=f"<{action.kind}> is not an action of {t.kind} tasks")
        return self._act(action, model_text, gen)

    @not_a_tool
    def finish(self, final_text: str | None = None) -> None:
        """End the episode from outside: with `final_text` (e.g. the last completion of a TRL tool loop, which
        holds no tool call) that text is acted on as a turn first — an `<answer>` in it is recorded as the
        answer; then the episode is closed unanswered if it still is open. Idempotent."""
        if self._done:
            return
        if final_text is not None and self.protocol != "direct":
            action = parse_action(final_text, policy=self.parse_policy)
            if action.kind == "answer":
                self._act(action, final_text, {})
        elif final_text is not None:
            self._act(Action(kind="answer", content=final_text, raw=final_text), final_text, {})
        if not self._done:
            self._end()

    @not_a_tool
    def close(self) -> None:
        """Remove this episode's files (unless keep_files)."""
        self._cleanup()

    # ---------------------------------------------------------------------------------------------- tools (TRL)
    def search(self, query: str) -> str:
        """Search a text encyclopedia for one precise, text-only query and return the top results.

        Args:
            query: One specific, retrievable textual query. Do not refer to "the image".

        Returns:
            The top results as `<information> 1. Content:... </information>`.
        """
        obs = self._tool("search", query, query=query)
        return obs.text or (obs.error or "")

    def run_code(self, code: str) -> list[dict]:
        """Run Python/OpenCV code on the current image and return the processed image.

        Args:
            code: One Python program that reads 'path_to_input_image.jpg' (the current image) and writes the
                processed image to 'path_to_output_image.jpg'. cv2, numpy and PIL are available.

        Returns:
            The processed image and a status line, or the error message if the code failed.
        """
        obs = self._tool("code", code, code=code)
        text = obs.text or P.format_observation_code(obs.kind != "error", obs.error, protocol="chat",
                                                     has_image=obs.image is not None)
        if obs.image is not None:
            from PIL import Image

            with Image.open(obs.image) as im:
                img = im.convert("RGB")
            return [{"type": "image", "image": img}, {"type": "text", "text": text}]
        return [{"type": "text", "text": text}]

    def diagnose(self, problem: str) -> str:
        """Report what is wrong with the image before fixing it, and get a hint for the next step.

        Args:
            problem: The image issues as a set of labels from {'rotation90', 'rotation180', 'dark',
                'overexposure', 'blur', 'noise', 'crop', 'none'}, e.g. "{'dark', 'rotation90'}".

        Returns:
            A hint on what to do next.
        """
        obs = self._tool("problem", problem, problem=problem)
        return (obs.text or obs.error or "").rstrip("\n")

    def answer(self, answer: str) -> str:
        """Give the final answer. This ends the episode.

        Args:
            answer: The final answer, as briefly as possible.

        Returns:
            A confirmation.
        """
        obs = self._tool("answer", answer, answer=answer)
        if obs.kind == "none":
            return "Answer recorded. The episode is over."
        return obs.text or obs.error or ""

    def get_reward(self) -> float:
        """The rubric total of the finished episode (TRL calls this once per rollout). An episode still open
        (the model never called `answer`) is closed unanswered first."""
        traj = self.trajectory
        if not self._done:
            self._end()
        return float(self._score(traj)["total"])

    # ---------------------------------------------------------------------------------------------- internals
    def _need_task(self) -> Task:
        if self.task is None:
            raise RuntimeError("no episode: call reset() first")
        return self.task

    def _ensure_dir(self) -> Path:
        if self._episode_dir is None:
            if self.work_dir is not None:
                self.work_dir.mkdir(parents=True, exist_ok=True)
            self._episode_dir = Path(tempfile.mkdtemp(prefix="arft-ep-", dir=self.work_dir))
        return self._episode_dir

    def _cleanup(self) -> None:
        if self._episode_dir is not None and not self.keep_files:
            shutil.rmtree(self._episode_dir, ignore_errors=True)
        self._episode_dir = None

    def __del__(self):  # best effort; close() is the explicit way
        try:
            self._cleanup()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _tool_call_turn(self, model_text: str, gen: Mapping[str, Any]) -> Observation:
        """A chat turn in tool-call form: its first `<tool_call>` runs like TRL's loop runs it; a malformed call
        is an invalid turn (the reason comes back as the tool turn); no call ends the episode."""
        call = parse_tool_call(model_text)
        if call is None:  # TRL's loop stops at a turn without a tool call: what `finish` does in training
            n_steps = len(self.trajectory.steps)
            self.finish(model_text)  # an <answer> in it is the answer; else the episode closes unanswered
            if len(self.trajectory.steps) > n_steps:
                return self.trajectory.steps[-1].observation or Observation(kind="none")
            # shown, not scored (metrics and rubric were settled when the episode closed), as the training log
            # shows the last turn of a TRL rollout
            action = parse_action(model_text, policy=self.parse_policy)
            if action.kind != "answer":
                action = Action(kind="invalid", think=action.think, raw=model_text,
                                error="no tool call: the episode ended here (not scored, as in training)")
            self.trajectory.steps.append(Step(turn=n_steps, model_text=model_text, action=action,
                                              prompt_tokens=int(gen.get("prompt_tokens", 0)),
                                              completion_tokens=int(gen.get("completion_tokens", 0)),
                                              generate_s=float(gen.get("generate_s", 0.0))))
            return Observation(kind="none")
        kind = _TOOL_KINDS.get(call.name)
        if call.error is None and kind is None:
            call.error = f"unknown tool {call.name!r}; the tools are {', '.join(TOOL_METHODS)}"
        if call.error is not None:
            action = Action(kind="invalid", raw=model_text, error=call.error)
            return self._act(action, model_text, gen)
        argument = _TOOL_ARGUMENT[call.name]
        n_steps = len(self.trajectory.steps)
        self._pending_turn = (model_text, gen)
        try:  # the very method TRL calls, so the tool turn shows exactly what training showed
            returned = getattr(self, call.name)(**{argument: call.arguments.get(argument)})
        finally:
            self._pending_turn = None
        if len(self.trajectory.steps) == n_steps:  # refused before acting (episode over)
            return Observation(kind="text", text=str(returned))
        step = self.trajectory.steps[-1]
        obs = step.observation
        if self._history and obs is not None and obs.kind != "none":
            text = returned if isinstance(returned, str) else "".join(
                str(b.get("text", "")) for b in returned if b.get("type") == "text")
            self._history[-1] = (model_text, {"text": text, "image": obs.image})
        return obs

    def _tool(self, kind: str, payload: Any, **arguments: Any) -> Observation:
        """A TRL tool call → the same `_act` as a text turn (in `_tool_call_turn`, the whole turn is the raw
        model text and its token counts are recorded)."""
        t = self._need_task()
        raw = _tool_raw({"code": "run_code", "problem": "diagnose"}.get(kind, kind), **arguments)
        gen: Mapping[str, Any] = {}
        if self._pending_turn is not None:
            raw, gen = self._pending_turn
        if self._done:
            self.calls_after_end += 1
            return Observation(kind="text", text="The episode is over (answered or out of turns); no more tool calls.")
        if not isinstance(payload, str) or not payload.strip():
            action = Action(kind="invalid", raw=raw, error=f"empty or non-text argument for {kind}")
        elif kind not in ACTIONS_FOR[task_family(t.kind)]:
            action = Action(kind="invalid", raw=raw, error=f"{kind} is not available for {t.kind} tasks")
        elif kind == "problem":
            labels = parse_diagnosis(payload)
            if not labels:
                action = Action(kind="invalid", raw=raw, error=f"no known degradation label in {payload[:80]!r}")
            else:
                content = "{" + ", ".join(f"'{x}'" for x in sorted(labels)) + "}"
                action = Action(kind="problem", content=content, raw=raw)
        elif kind == "code":
            action = Action(kind="code", content=payload, raw=raw)
        else:
            action = Action(kind=kind, content=payload.strip(), raw=raw)
        return self._act(action, raw, gen)

    def _act(self, action: Action, model_text: str, gen: Mapping[str, Any]) -> Observation:
        traj = self.trajectory
        m = traj.metrics
        turn = len(traj.steps)
        hist_obs: Any
        if action.kind == "answer":
            obs = Observation(kind="none")
            hist_obs = None
            traj.final_answer = action.content
            m["answered"] = 1
        elif action.kind == "invalid":
            m["invalid_turns"] += 1
            if self.protocol == "tags":
                obs, hist_obs = Observation(kind="none"), None  # the reference ignores such a turn
            else:
                obs = Observation(kind="text", text=P.format_observation_invalid(action.error, self.family))
                hist_obs = obs
        elif action.kind == "problem":
            m["diagnoses"] += 1
            # the reference's own extraction (unknown labels kept) decides the tips, as in its evaluation
            labels = reference_problems(model_text) or sorted(parse_diagnosis(action.content))
            self._diagnosis = labels
            obs = Observation(kind="text", text=P.tips_text(labels))
            hist_obs = obs
        elif action.kind == "search":
            obs = self._run_search(action.content, turn)
            hist_obs = obs
        elif action.kind == "code":
            obs = self._run_code(action.content, turn)
            hist_obs = obs
        else:  # pragma: no cover - parse_action only returns the kinds above
            raise ValueError(f"unknown action kind {action.kind!r}")
        step = Step(turn=turn, model_text=model_text, action=action, observation=obs,
                    prompt_tokens=int(gen.get("prompt_tokens", 0)), completion_tokens=int(gen.get("completion_tokens", 0)),
                    generate_s=float(gen.get("generate_s", 0.0)))
        traj.steps.append(step)
        self._history.append((model_text, hist_obs))
        m["turns"] = len(traj.steps)
        for key in ("prompt_tokens", "completion_tokens", "image_tokens"):
            m[key] += int(gen.get(key, 0))
        m["generate_s"] = round(m["generate_s"] + float(gen.get("generate_s", 0.0)), 6)
        m["tool_s"] = round(m["tool_s"] + obs.elapsed_s, 6)
        if action.kind == "answer" or len(traj.steps) >= self.max_turns:
            self._end()
        return obs

    def _run_search(self, query: str, turn: int) -> Observation:
        from arftlib.tools.search import render_error, render_information, safe_search

        m = self.trajectory.metrics
        m["tool_calls"] += 1
        m["searches"] += 1
        t0 = time.perf_counter()
        search = self._search_for(self._need_task())
        hits, err = safe_search(search, query, self.search_k)
        dt = time.perf_counter() - t0
        if err is not None:
            self._tool_error(turn, "search", err)
            return Observation(kind="error", text=render_error(err), error=err, elapsed_s=round(dt, 6))
        return Observation(kind="text", text=render_information(hits, self.search_k, with_title=self.search_with_title),
                           hits=[h.to_dict() for h in hits], elapsed_s=round(dt, 6))

    def _search_for(self, task: Task):
        if self._search is not None:
            return self._search
        options = dict(self.search_options)
        corpus = task.metadata.get("corpus") if isinstance(task.metadata, Mapping) else None
        # "wiki" (the build's name for the shipped Wikipedia corpus) is the local backend's default corpus
        if self.search_backend == "local" and corpus and corpus != "wiki" and "corpus" not in options:
            options["corpus"] = corpus
        return shared_search(self.search_backend, **options)

    def _run_code(self, code: str, turn: int) -> Observation:
        m = self.trajectory.metrics
        if m["images_shown"] >= self.image_budget:
            m["image_budget_refusals"] += 1
            return Observation(kind="text", text=(
                f"The image budget of this episode ({self.image_budget} processed images) is used up; the code "
                f"was not run. Give the final answer."))
        if self._image is None:
            m["tool_calls"] += 1
            m["code_runs"] += 1
            err = "this task has no image to process"
            self._tool_error(turn, "code", err)
            return Observation(kind="error", text=P.format_observation_code(False, err, protocol=self._obs_protocol),
                               error=err)
        if self.reference_crop and self._diagnosis and self._diagnosis[0] == "crop":
            box = extract_crop_box(self._need_task().question)
            if box is not None:
                from PIL import Image

                with Image.open(self._image) as im:
                    w, h = im.size
                code = apply_reference_crop(code, crop_box_pixels(box, w, h))
        runner = self._code_runner
        if runner is None:
            from arftlib.tools.sandbox import run_image_code as runner
        m["tool_calls"] += 1
        m["code_runs"] += 1
        out_dir = self._ensure_dir()
        res = runner(code, self._image, timeout_s=self.sandbox_timeout_s, memory_mb=self.sandbox_memory_mb,
                     output_dir=str(out_dir))
        elapsed = round(float(res.elapsed_s), 6)
        if not res.ok or not res.output_image:
            err = res.error or ("the code wrote no path_to_output_image.jpg" if res.ok else "the code failed")
            if res.output_image and os.path.exists(res.output_image):
                os.unlink(res.output_image)
            self._tool_error(turn, "code", err)
            text = P.format_observation_code(False, err, protocol=self._obs_protocol, stdout=res.stdout)
            return Observation(kind="error", text=text, error=err, elapsed_s=elapsed)
        src = Path(res.output_image)
        dest = out_dir / f"t{turn:02d}{src.suffix.lower() or '.img'}"
        os.replace(src, dest)
        self._image = str(dest)
        m["images_shown"] += 1
        text = P.format_observation_code(True, protocol=self._obs_protocol, stdout=res.stdout, has_image=True)
        return Observation(kind="image", text=text, image=str(dest), elapsed_s=elapsed)

    @property
    def _obs_protocol(self) -> str:
        return "chat" if self.protocol == "chat" else "tags"

    def _tool_error(self, turn: int, tool: str, error: str) -> None:
        self.trajectory.metrics["tool_errors"] += 1
        self.trajectory.errors.append(f"turn {turn}: {tool}: {error}")

    def _end(self) -> None:
        """Close the episode: finished, answer scores (and rewards when a rubric is set)."""
        traj = self.trajectory
        self._done = True
        traj.finished = True
        t = traj.task
        if t.answers:
            from arftlib.metrics import f1_em

            style = "coding" if t.kind == "coding" else "search"
            f1, em = f1_em(traj.final_answer, t.answers, style, "reference")
            f1c, emc = f1_em(traj.final_answer, t.answers, style, "corrected")
            traj.metrics.update(f1=f1, em=em, f1_corrected=f1c, em_corrected=emc)
        if self.rubric is not None:
            self._score(traj)

    def _score(self, traj: Trajectory) -> dict[str, Any]:
        from arftlib import rewards

        rubric = self.rubric
        if rubric is None:
            rubric = rewards.agentic_rubric(traj.task.kind)
        result = rewards.score_trajectory(traj, rubric)
        if "total" not in result:
            raise KeyError(f"rewards.score_trajectory returned no 'total' (keys: {sorted(result)})")
        traj.reward = float(result["total"])
        traj.reward_components = {k: float(v) for k, v in result.items()
                                  if k != "total" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        return result
