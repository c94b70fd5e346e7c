"""The episode core: one Visual-ARFT episode — a `Task`, the turns so far, the current image, the budgets — and
the tools it runs. Protocols (tags, chat, tool calls, direct) only render turns and read them back
(`env/tags.py`, `chat.py`, `toolcalls.py`, `direct.py`); everything an action DOES happens here, in `act`.

Two ways in, one code path (`act`):

* Text turns (evaluation, `rollout.py`): `env.step(model_text) -> Observation` has the protocol read the turn
  (`parse.parse_action`), acts, records a `Step`; `env.messages` is the conversation for the next generation,
  `env.done`, `env.trajectory`.
* Tool calls (training, TRL `GRPOTrainer(environment_factory=...)`): TRL builds one instance per rollout, calls
  `reset(**row)` with the whole dataset row (`rows.task_to_row`), and exposes every public *function* of the
  class as a tool — `search(query)`, `run_code(code)`, `diagnose(problem)`, `answer(answer)` (names from
  `turns.TOOL_FOR_ACTION`). Everything else that is public is a property or marked `@not_a_tool`, so TRL does
  not offer it to the model. `run_code` returns `[{"type": "image", "image": PIL.Image}, {"type": "text", …}]`,
  which TRL feeds back to the VLM. The environment does not score itself for TRL (no `get_reward`): the
  rubric's TRL adapter scores the finished trajectories (`rewards.trl`), the same `Rubric.score_episode` that
  evaluation uses when an environment is given a `rubric`.

What an action does (`act`)
  answer → the episode ends with that answer. problem → the reference's `<tips>` for the diagnosis (its own
  label extraction decides them, as in its evaluation). search → `tools.search` (top `search_k` hits, rendered
  by `prompts.render_search_hits`). code → `tools.sandbox.run_image_code` on the current image; a new image
  replaces it. invalid → the protocol decides (tags: ignored, as the reference; chat: feedback text).
  In `tags`, a crop diagnosis (first sorted label `crop`) makes every `[a:b, c:d]` slice of the next code use
  the question's box in pixels of the current image (`reference_crop`), as the reference does.

Budgets: `max_turns` (default 5, the reference's) model turns or tool calls per episode — the episode ends
unanswered when they are used up; `image_budget` (default 4) tool images per episode — further code is refused
(`error_category="image_budget"`, counted in `image_budget_refusals`, not run). An action the task does not
allow (a `<search>` in a coding task) is an invalid turn.

Observations are typed (`types.Observation`: `kind`, `tool`, `error_category`), so rewards and metrics read fields,
never message wording. Failure policy: anything a tool does wrong (code raising, timing out, writing no image;
a search backend failing) becomes an observation for the model and is counted in `trajectory.metrics[
"tool_errors"]` and `trajectory.errors`. Everything else — a malformed task or row, stepping a finished
episode, a missing input image, the sandbox itself failing (`CodeResult.category == "infra"`) — raises.

Settings default to the run config's (`config.RunConfig` field defaults); `AgentEnv.from_config(cfg)` takes a
profile's. Files: tool images go to a per-episode folder (under `work_dir`, default the system temp dir),
removed at the next `reset()` or `close()` unless `keep_files=True`; `trajectories.TrajectoryWriter` copies
them out before that.

Trajectory metrics: turns, tool_calls, tool_errors, invalid_turns, searches, code_runs, diagnoses,
images_shown, image_budget_refusals, answered, prompt_tokens, completion_tokens, image_tokens, generate_s,
tool_s, and — when the task has gold answers — f1, em (reference scoring) and f1_corrected, em_corrected.

Left out: several actions per turn (one action per turn by the reference's precedence, see parse.py), tool
calls in parallel within one episode, and any retry of failed tools (the model decides what to do next).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import tempfile
import time
import types
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from arftlib import prompts as P
from arftlib.parse import (apply_reference_crop, extract_crop_box, parse_diagnosis, reference_problems,
                           strip_code_fences)
from arftlib.rows import task_from_row, task_from_value
from arftlib.turns import TOOL_FOR_ACTION, gold_tool_turns, gold_turns, tool_call_text
from arftlib.types import Action, Observation, Step, Task, Trajectory, allowed_actions, grid_box_to_pixels

__all__ = ["AgentEnv", "ENV_PROTOCOLS", "METRIC_KEYS", "TOOL_METHODS", "TagToolEnv", "env_factory", "make_env", "not_a_tool",
           "read_turn", "step_sample", "tool_functions"]

ENV_PROTOCOLS = ("tags", "chat", "direct")
TOOL_METHODS = tuple(sorted(name for name, _ in TOOL_FOR_ACTION.values()))  # what TRL exposes to the model
_ACTION_OF_TOOL = {name: kind for kind, (name, _) in TOOL_FOR_ACTION.items()}
METRIC_KEYS = (
    "turns", "tool_calls", "tool_errors", "invalid_turns", "searches", "code_runs", "diagnoses", "images_shown",
    "image_budget_refusals", "answered", "prompt_tokens", "completion_tokens", "image_tokens", "generate_s",
    "tool_s",
)
# CodeResult.category → Observation.error_category
_CODE_ERRORS = {"error": "code_error", "timeout": "code_timeout", "no_output": "no_output_image"}


def _run_config_default(name: str) -> Any:
    """The default of a `RunConfig` field: the one set of defaults the environment shares with the config."""
    from arftlib.config import RunConfig

    return {f.name: f.default for f in dataclasses.fields(RunConfig)}[name]


def read_turn(model_text: str, task: Task, policy: str = "reference") -> Action:
    """The action a text turn means for `task`: `parse.parse_action` (the one parser), with an action the task
    does not allow made invalid."""
    from arftlib.parse import parse_action

    action = parse_action(model_text, policy=policy)
    if action.kind != "invalid" and action.kind not in allowed_actions(task.kind):
        action = dataclasses.replace(action, kind="invalid", content="",
                                     error=f"<{action.kind}> is not an action of {task.kind} tasks")
    return action


def step_sample(task: Task, start_step: int, model_text: str, *, env: "AgentEnv | None" = None,
                episode_id: str | None = None) -> Trajectory:
    """A step-wise sample (the policy's turn in place of gold step `start_step`) as a `Trajectory`. With an
    environment the turn is acted on after the gold prefix (`AgentEnv.reset_at`: tools run, observations
    recorded); without one it is only read (`read_turn`), for rubrics that never look at observations."""
    if env is not None:
        env.reset_at(task, start_step, episode_id=episode_id)
        if not env.done:
            env.step(model_text)
        return env.trajectory
    if not 0 <= start_step < max(1, len(task.gold_chain)):
        raise ValueError(f"task {task.id!r}: start_step {start_step} is outside its gold chain "
                         f"({len(task.gold_chain)} steps)")
    action = read_turn(model_text, task)
    traj = Trajectory(task=task, steps=[Step(turn=start_step, model_text=model_text, action=action)],
                      episode_id=episode_id or f"{task.id}/{start_step}", protocol="tags", start_step=int(start_step),
                      finished=True, final_answer=action.content if action.kind == "answer" else None)
    return traj


class not_a_tool:
    """Decorator for public environment methods that TRL must NOT expose as tools.

    TRL lists `inspect.getmembers(type(env), inspect.isfunction)`; this descriptor is not a function on the class
    (it returns itself there) but binds like a normal method on an instance."""

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


def tool_functions(env: "AgentEnv | None" = None) -> list[Any]:
    """The tools TRL's `environment_factory` offers the model, in TRL's order: the environment class's public
    functions except `reset` / `get_reward`, alphabetically (`inspect.getmembers`), bound to `env` (a fresh
    `AgentEnv` by default). Pass them as `apply_chat_template(..., tools=…)` to render the prompt training saw."""
    import inspect

    env = env if env is not None else AgentEnv()
    return [getattr(env, name) for name, _ in inspect.getmembers(type(env), predicate=inspect.isfunction)
            if name not in ("reset", "get_reward") and not name.startswith("_")]


def _protocol_impl(name: str, tool_format: str | None):
    from arftlib.env import chat, direct, tags, toolcalls

    if tool_format is not None:
        return toolcalls.ToolCallProtocol(tool_format)
    return {"tags": tags.TagsProtocol, "chat": chat.ChatProtocol, "direct": direct.DirectProtocol}[name]()


def _tool_format(tool_calls: bool | str | None) -> str | None:
    """`tool_calls` setting → tool form: False/None → None (text turns), True/"json" → "json", "tags" → "tags"."""
    if tool_calls in (None, False):
        return None
    if tool_calls is True or tool_calls == "json":
        return "json"
    if tool_calls == "tags":
        return "tags"
    raise ValueError(f"tool_calls must be False, True/'json' or 'tags', not {tool_calls!r}")


class AgentEnv:
    """One episode of a Visual-ARFT task (see the module docstring).

    Construction takes no required argument (TRL calls the factory with none); pass settings with
    `AgentEnv.factory(...)` or `AgentEnv.from_config(cfg, **overrides)`. Unset settings take the run config's
    defaults (`config.RunConfig`).

    Args (all keyword):
        protocol: "tags", "chat" or "direct"; None = the row's `protocol` column at reset, else "chat".
        max_turns: model turns / tool calls per episode.
        image_budget: tool images per episode shown to the model.
        search: a `tools.search.Search` to use; default `tools.search.shared_search(search_backend,
            **search_options)`, with `corpus=task.metadata["corpus"]` added for the local backend when the task
            names a file (`"wiki"` = the default corpus).
        search_k: hits shown per search. search_with_title: prefix each hit with its title (not the reference).
        sandbox_timeout_s, sandbox_memory_mb: limits per code run.
        rubric: a `rewards.Rubric`; when given, every finished episode is scored (`rubric.score_episode`).
        parse_policy: "reference" (default) or "strict" (see parse.py).
        observation_role: "user" (default) or "tool" for chat observations.
        prompt_style: the prompts' style ("reference" | "compact" | "minimal", see prompts.py).
        reference_crop: apply the reference's crop-box substitution (default: the protocol's — on in tags).
        work_dir: parent folder of the per-episode folders (default: system temp dir).
        keep_files: keep episode folders after reset/close.
        code_runner: replacement for `tools.sandbox.run_image_code` (same signature); for tests and tooling.
        tool_calls: (chat only) turns are TRL-style tool calls, observations `tool` turns (env/toolcalls.py).
        tools_off: the no-tool baseline of a policy trained in a tool form: every code / search call is answered
            "tools are off" (`error_category="tools_off"`, nothing runs), so the policy keeps its own format but
            never sees a tool's evidence.
    """

    def __init__(
        self,
        *,
        protocol: str | None = None,
        max_turns: int | None = None,
        image_budget: int | None = None,
        search: Any = None,
        search_backend: str | None = None,
        search_options: Mapping[str, Any] | None = None,
        search_k: int | None = None,
        search_with_title: bool = False,
        sandbox_timeout_s: float | None = None,
        sandbox_memory_mb: int | None = None,
        rubric: Any = None,
        parse_policy: str = "reference",
        observation_role: str = "user",
        prompt_style: str | None = None,
        reference_crop: bool | None = None,
        work_dir: str | os.PathLike | None = None,
        keep_files: bool = False,
        code_runner: Any = None,
        tool_calls: bool | str = False,
        tools_off: bool = False,
        question_after_image: bool | None = None,
    ):
        def pick(value: Any, name: str) -> Any:
            return _run_config_default(name) if value is None else value

        max_turns, image_budget = int(pick(max_turns, "max_turns")), int(pick(image_budget, "image_budget"))
        if protocol is not None and protocol not in ENV_PROTOCOLS:
            raise ValueError(f"protocol must be one of {ENV_PROTOCOLS} or None, not {protocol!r}")
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns!r}")
        if image_budget < 0:
            raise ValueError(f"image_budget must be >= 0, got {image_budget!r}")
        if observation_role not in ("user", "tool"):
            raise ValueError(f"observation_role must be 'user' or 'tool', not {observation_role!r}")
        self.tool_format = _tool_format(tool_calls)
        if self.tool_format and protocol not in (None, "chat"):
            raise ValueError(f"tool_calls={tool_calls!r} is the chat protocol's tool-call form; protocol {protocol!r} "
                             "has none")
        if self.tool_format == "tags" and type(self) is AgentEnv:
            raise ValueError("the 'tags' tool form is TagToolEnv (its tools are the tags); use env.make_env(...) or "
                             "TagToolEnv(...)")
        if self.tool_format:
            observation_role = "tool"  # TRL renders tool results as tool turns
        self._protocol_arg = protocol
        self.protocol = protocol or "chat"
        self._impl = _protocol_impl(self.protocol, self.tool_format)
        self.max_turns = max_turns
        self.image_budget = image_budget
        self._search = search
        self.search_backend = str(pick(search_backend, "search_backend"))
        self.search_options = dict(search_options or {})
        self.search_k = int(pick(search_k, "search_k"))
        self.search_with_title = bool(search_with_title)
        self.sandbox_timeout_s = float(pick(sandbox_timeout_s, "sandbox_timeout_s"))
        self.sandbox_memory_mb = int(pick(sandbox_memory_mb, "sandbox_memory_mb"))
        self.rubric = rubric
        self.parse_policy = parse_policy
        self.observation_role = observation_role
        self.prompt_style = str(pick(prompt_style, "prompt_style"))
        self._reference_crop_arg = reference_crop
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.keep_files = bool(keep_files)
        self._code_runner = code_runner
        self.tools_off = bool(tools_off)
        self.question_after_image = bool(pick(question_after_image, "question_after_image"))
        # episode state
        self.task: Task | None = None
        self._trajectory: Trajectory | None = None
        self._history: list[tuple[str, Any]] = []
        self._image: str | None = None
        self._diagnosis: list[str] = []
        self._done = False
        self._episode_dir: Path | None = None
        self.calls_after_end = 0
        # the text turn a tool call came from: (text, generation stats, think text, clean format)
        self.pending_turn: tuple[str, Mapping[str, Any], str, bool] | None = None

    # ---------------------------------------------------------------------------------------------- building
    @classmethod
    def factory(cls, **settings: Any):
        """A zero-argument factory for TRL's `environment_factory` (`functools.partial(cls, **settings)`)."""
        return functools.partial(cls, **settings)

    @classmethod
    def settings_from_config(cls, cfg: Any, **overrides: Any) -> dict[str, Any]:
        """The constructor settings a `RunConfig` implies (protocol, max_turns, image_budget, search backend and
        k, sandbox limits); keyword overrides win."""
        settings = dict(
            protocol=cfg.protocol, max_turns=cfg.max_turns, image_budget=cfg.image_budget,
            search_backend=cfg.search_backend, search_k=cfg.search_k, prompt_style=cfg.prompt_style,
            sandbox_timeout_s=cfg.sandbox_timeout_s, sandbox_memory_mb=cfg.sandbox_memory_mb,
            question_after_image=cfg.question_after_image,
        )
        settings.update(overrides)
        return settings

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> "AgentEnv":
        """An environment with a `RunConfig`'s agent settings; keyword overrides win."""
        return cls(**cls.settings_from_config(cfg, **overrides))

    # ---------------------------------------------------------------------------------------------- episode
    def reset(self, task: Any = None, *, episode_id: str | None = None, group_id: str = "",
              training_step: int | None = None, **row: Any) -> None:
        """Start an episode. `task` is a `Task`, a dict or the JSON string of a row's `task` column; without it
        the Task is rebuilt from the row's columns. TRL passes the whole row (`prompt`, `image`, …): a PIL
        `image` is used as the input image when the task's image file does not exist here. Returns None (the
        row's `prompt` is already the full initial prompt)."""
        self._cleanup()
        t = task_from_row(row) if task is None else task_from_value(task)
        row_protocol = row.get("protocol")
        if self._protocol_arg is None:
            self.protocol = row_protocol if row_protocol in ENV_PROTOCOLS else "chat"
            self._impl = _protocol_impl(self.protocol, self.tool_format)
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
            metrics={k: 0 for k in METRIC_KEYS},
        )
        return None

    @property
    def tool_calls(self) -> bool:
        """Whether turns are tool calls of TRL's tool loop (either form)."""
        return self.tool_format is not None

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
        return self._need_task().family

    @property
    def current_image(self) -> str | None:
        """Path of the image the next code runs on (the latest processed image in this episode)."""
        return self._image

    @property
    def reference_crop(self) -> bool:
        return self._impl.reference_crop if self._reference_crop_arg is None else bool(self._reference_crop_arg)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation for the next generation (image blocks carry file paths)."""
        return P.build_messages(self._need_task(), self.protocol, self._history,
                                observation_role=self.observation_role, style=self.prompt_style)

    @property
    def history(self) -> list[tuple[str, Any]]:
        """`(model_text, observation)` pairs as `prompts.build_messages` takes them (None = ignored turn)."""
        return list(self._history)

    # ---------------------------------------------------------------------------------------------- text turns
    @not_a_tool
    def step(self, model_text: str, *, prompt_tokens: int = 0, completion_tokens: int = 0, image_tokens: int = 0,
             generate_s: float = 0.0) -> Observation:
        """Act on one model turn (text) and return the observation; the turn is recorded as a `Step`."""
        self._need_task()
        if self._done:
            raise RuntimeError(f"episode {self.trajectory.episode_id!r} is over; call reset() for a new one")
        if not isinstance(model_text, str):
            raise TypeError(f"model_text must be str, not {type(model_text).__name__}")
        gen = dict(prompt_tokens=int(prompt_tokens), completion_tokens=int(completion_tokens),
                   image_tokens=int(image_tokens), generate_s=float(generate_s))
        return self._impl.step(self, model_text, gen)

    @not_a_tool
    def finish(self, final_text: str | None = None) -> None:
        """End the episode from outside: with `final_text` (e.g. the last completion of a TRL tool loop, which
        holds no tool call) that text is acted on as a turn first if it is an answer; then the episode is closed
        unanswered if it still is open. Idempotent."""
        if self._done:
            return
        if final_text is not None:
            action = self._impl.read_final(final_text, self)
            if action is not None:
                self.act(action, final_text, {})
        if not self._done:
            self._end()

    @not_a_tool
    def close(self) -> None:
        """Remove this episode's files (unless keep_files)."""
        self._cleanup()

    @not_a_tool
    def read_turn(self, model_text: str) -> Action:
        """The action a text turn means in this episode (`read_turn` with the environment's parse policy)."""
        return read_turn(model_text, self._need_task(), self.parse_policy)

    @not_a_tool
    def reset_at(self, task: Any, start_step: int, **reset_kwargs: Any) -> None:
        """Start an episode at gold step `start_step` (a step-wise sample): the gold turns before it are acted on
        (their tools run) and recorded as context (`Step.scored = False`); the next `step()` is the policy's."""
        self.reset(task, **reset_kwargs)
        self.play_gold_prefix(start_step)

    @not_a_tool
    def play_gold_prefix(self, start_step: int) -> None:
        """On a fresh episode: act on the gold turns before gold step `start_step` (their tools run), recorded as
        context (`Step.scored = False`). A negative `start_step` counts from the end: -1 is the answer step."""
        t = self._need_task()
        turns = gold_tool_turns(t) if self.tool_format == "json" else gold_turns(t)
        step = start_step + len(turns) if start_step < 0 else start_step
        if not 0 <= step < len(turns):
            raise ValueError(f"task {t.id!r}: start_step {start_step} is outside its gold chain ({len(turns)} steps)")
        for text in turns[:step]:
            self.step(text)
            self.trajectory.steps[-1].scored = False
        self.trajectory.start_step = int(step)

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
        return self._image_reply(self._tool("code", code, code=code))

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
        if obs.kind == "none" and obs.error_category is None:
            return "Answer recorded. The episode is over."
        return obs.text or obs.error or ""

    # ---------------------------------------------------------------------------------------------- acting
    @not_a_tool
    def act(self, action: Action, model_text: str, gen: Mapping[str, Any]) -> Observation:
        """Do what `action` says, record the turn as a `Step`, and return what the model sees next. The one code
        path of every protocol and of TRL's tool calls."""
        traj = self.trajectory
        m = traj.metrics
        turn = len(traj.steps)
        shown: Any  # what the next prompt shows for this turn (None: the turn is dropped from the history)
        if action.kind == "answer":
            obs, shown = Observation(kind="none"), None
            traj.final_answer = action.content
            m["answered"] = 1
        elif action.kind == "invalid":
            m["invalid_turns"] += 1
            obs = self._impl.invalid_observation(action, self.family)
            shown = obs if obs.kind != "none" else None
        elif action.kind == "problem":
            m["diagnoses"] += 1
            # the reference's own extraction (unknown labels kept) decides the tips, as in its evaluation
            labels = reference_problems(model_text) or sorted(parse_diagnosis(action.content))
            self._diagnosis = labels
            obs = shown = Observation(kind="text", text=P.tips_text(labels, self.prompt_style), tool="problem")
        elif action.kind in ("search", "code") and self.tools_off:
            m["tools_off_calls"] = m.get("tools_off_calls", 0) + 1
            obs = shown = Observation(kind="text", text=P.TOOLS_OFF_TEXT, tool=action.kind,
                                      error_category="tools_off")
        elif action.kind == "search":
            obs = shown = self._run_search(action.content, turn)
        elif action.kind == "code":
            obs = shown = self._run_code(action.content, turn)
        else:  # pragma: no cover - parse_action only returns the kinds above
            raise ValueError(f"unknown action kind {action.kind!r}")
        traj.steps.append(Step(turn=turn, model_text=model_text, action=action, observation=obs,
                               prompt_tokens=int(gen.get("prompt_tokens", 0)),
                               completion_tokens=int(gen.get("completion_tokens", 0)),
                               generate_s=float(gen.get("generate_s", 0.0))))
        self._history.append((model_text, shown))
        m["turns"] = len(traj.steps)
        for key in ("prompt_tokens", "completion_tokens", "image_tokens"):
            m[key] += int(gen.get(key, 0))
        m["generate_s"] = round(m["generate_s"] + float(gen.get("generate_s", 0.0)), 6)
        m["tool_s"] = round(m["tool_s"] + obs.elapsed_s, 6)
        if action.kind == "answer" or len(traj.steps) >= self.max_turns:
            self._end()
        return obs

    @not_a_tool
    def replace_last_shown(self, model_text: str, shown: Any) -> None:
        """Replace what the history shows for the latest turn (tool-call turns show the tool's own reply)."""
        if self._history:
            self._history[-1] = (model_text, shown)

    # ---------------------------------------------------------------------------------------------- internals
    def _image_reply(self, obs: Observation) -> list[dict]:
        """A code tool's reply as TRL feeds it back: the processed image (when there is one) and a status line."""
        text = obs.text or P.format_observation_code(obs.kind != "error", obs.error, protocol="chat",
                                                     has_image=obs.image is not None)
        if obs.image is not None:
            from PIL import Image

            with Image.open(obs.image) as im:
                img = im.convert("RGB")
            return [{"type": "image", "image": img}, {"type": "text", "text": text}]
        return [{"type": "text", "text": text}]

    def _call_text(self, kind: str, **arguments: Any) -> str:
        """A tool call as the text the model would have written for it (when TRL calls a tool directly)."""
        return tool_call_text(TOOL_FOR_ACTION[kind][0], **arguments)

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

    def _tool(self, kind: str, payload: Any, **arguments: Any) -> Observation:
        """A TRL tool call → the same `act` as a text turn. Called from TRL directly, the turn's text is the call
        itself; called through a text turn (`pending_turn`, set by the tool-call protocol), the whole turn is
        recorded with its token counts."""
        t = self._need_task()
        raw = self._call_text(kind, **arguments)
        gen: Mapping[str, Any] = {}
        think, clean = "", False
        if self.pending_turn is not None:
            raw, gen, think, clean = self.pending_turn
        if self._done:
            self.calls_after_end += 1
            return Observation(kind="text", text="The episode is over (answered or out of turns); no more tool calls.",
                               error_category="invalid_action")
        if not isinstance(payload, str) or not payload.strip():
            action = Action(kind="invalid", raw=raw, error=f"empty or non-text argument for {kind}")
        elif kind not in allowed_actions(t.kind):
            action = Action(kind="invalid", raw=raw, error=f"{kind} is not available for {t.kind} tasks")
        elif kind == "problem":
            labels = parse_diagnosis(payload)
            if not labels:
                action = Action(kind="invalid", raw=raw, error=f"no known degradation label in {payload[:80]!r}")
            else:
                content = "{" + ", ".join(f"'{x}'" for x in sorted(labels)) + "}"
                action = Action(kind="problem", content=content, raw=raw)
        elif kind == "code":
            code, err = strip_code_fences(payload)  # the one fence rule, as for text turns
            action = Action(kind="code", content=code, raw=raw) if err is None and code else Action(
                kind="invalid", raw=raw, error=err or "empty code")
        else:
            action = Action(kind=kind, content=payload.strip(), raw=raw)
        action.think = think
        if action.kind != "invalid":
            action.blocks = [kind]
            action.format_ok = clean
        return self.act(action, raw, gen)

    def _run_search(self, query: str, turn: int) -> Observation:
        from arftlib.tools.search import safe_search

        m = self.trajectory.metrics
        m["tool_calls"] += 1
        m["searches"] += 1
        t0 = time.perf_counter()
        hits, err = safe_search(self._search_for(self._need_task()), query, self.search_k)
        dt = round(time.perf_counter() - t0, 6)
        if err is not None:
            self._tool_error(turn, "search", err)
            return Observation(kind="error", text=P.render_search_error(err), error=err, elapsed_s=dt,
                               tool="search", error_category="search_error")
        return Observation(kind="text", text=P.render_search_hits(hits, self.search_k, with_title=self.search_with_title),
                           hits=[h.to_dict() for h in hits], elapsed_s=dt, tool="search")

    def _search_for(self, task: Task):
        if self._search is not None:
            return self._search
        from arftlib.tools.search import shared_search

        options = dict(self.search_options)
        corpus = task.metadata.get("corpus") if isinstance(task.metadata, Mapping) else None
        # "wiki" (the build's name for the shipped Wikipedia corpus) is the local backend's default corpus
        if self.search_backend == "local" and corpus and corpus != "wiki" and "corpus" not in options:
            options["corpus"] = corpus
        return shared_search(self.search_backend, **options)

    def _code_observation(self, ok: bool, error: str | None = None, *, stdout: str = "", has_image: bool = False
                          ) -> str:
        chat = self.protocol == "chat"
        text = P.format_observation_code(ok, error, protocol="chat" if chat else "tags", stdout=stdout,
                                         has_image=has_image if ok else None)
        if chat and ok and has_image and self.question_after_image:
            text += "\n" + P.query_block(self._need_task().question)
        return text

    def _run_code(self, code: str, turn: int) -> Observation:
        m = self.trajectory.metrics
        if m["images_shown"] >= self.image_budget:
            m["image_budget_refusals"] += 1
            return Observation(kind="text", tool="code", error_category="image_budget", text=(
                f"The image budget of this episode ({self.image_budget} processed images) is used up; the code "
                f"was not run. Give the final answer."))
        m["tool_calls"] += 1
        m["code_runs"] += 1
        if self._image is None:
            err = "this task has no image to process"
            self._tool_error(turn, "code", err)
            return Observation(kind="error", text=self._code_observation(False, err), error=err, tool="code",
                               error_category="no_input_image")
        if self.reference_crop and self._diagnosis and self._diagnosis[0] == "crop":
            box = extract_crop_box(self._need_task().question)
            if box is not None:
                from PIL import Image

                with Image.open(self._image) as im:
                    w, h = im.size
                code = apply_reference_crop(code, grid_box_to_pixels(box, w, h))
        runner = self._code_runner
        if runner is None:
            from arftlib.tools.sandbox import run_image_code as runner
        out_dir = self._ensure_dir()
        res = runner(code, self._image, timeout_s=self.sandbox_timeout_s, memory_mb=self.sandbox_memory_mb,
                     output_dir=str(out_dir))
        elapsed = round(float(res.elapsed_s), 6)
        category = getattr(res, "category", None) or ("ok" if res.ok else "error")
        if category == "infra":
            raise RuntimeError(f"task {self._need_task().id!r}, turn {turn}: the code sandbox itself failed "
                               f"({res.error}); this is not the model's fault and is not scored")
        if not res.ok or not res.output_image:
            err = res.error or ("the code wrote no path_to_output_image.jpg" if res.ok else "the code failed")
            if res.output_image and os.path.exists(res.output_image):
                os.unlink(res.output_image)
            self._tool_error(turn, "code", err)
            cat = _CODE_ERRORS.get(category, "no_output_image" if res.ok else "code_error")
            return Observation(kind="error", text=self._code_observation(False, err, stdout=res.stdout), error=err,
                               elapsed_s=elapsed, tool="code", error_category=cat)
        src = Path(res.output_image)
        dest = out_dir / f"t{turn:02d}{src.suffix.lower() or '.img'}"
        os.replace(src, dest)
        self._image = str(dest)
        m["images_shown"] += 1
        return Observation(kind="image", text=self._code_observation(True, stdout=res.stdout, has_image=True),
                           image=str(dest), elapsed_s=elapsed, tool="code")

    def _tool_error(self, turn: int, tool: str, error: str) -> None:
        self.trajectory.metrics["tool_errors"] += 1
        self.trajectory.errors.append(f"turn {turn}: {tool}: {error}")

    def _end(self) -> None:
        """Close the episode: finished, answer scores (and rewards when a rubric is set)."""
        from arftlib.metrics import f1_em

        traj = self.trajectory
        self._done = True
        traj.finished = True
        t = traj.task
        if t.answers:
            style = t.family
            f1, em = f1_em(traj.final_answer, t.answers, style, "reference")
            f1c, emc = f1_em(traj.final_answer, t.answers, style, "corrected")
            traj.metrics.update(f1=f1, em=em, f1_corrected=f1c, em_corrected=emc)
        if self.rubric is not None:
            self.rubric.score_episode(traj)


class TagToolEnv(AgentEnv):
    """`AgentEnv` whose tools are the paper's tag actions (the "tags" tool form): TRL calls `search`, `code` and
    `problem` with the payload of the tag the model wrote; `<answer>` is no call (it ends the episode). The JSON
    form's `run_code`, `diagnose` and `answer` are not tools here."""

    run_code = None  # not functions: TRL does not offer them in this form
    diagnose = None
    answer = None

    def search(self, content: str) -> str:  # type: ignore[override]
        """Search a text encyclopedia with one precise, text-only query.

        Args:
            content: The query.

        Returns:
            The top results as `<information> 1. Content:... </information>`.
        """
        obs = self._tool("search", content, content=content)
        return obs.text or (obs.error or "")

    def code(self, content: str) -> list[dict]:
        """Run Python/OpenCV code on the current image and return the processed image.

        Args:
            content: The code (a ```python fence may wrap it); it reads 'path_to_input_image.jpg' and writes
                'path_to_output_image.jpg'.

        Returns:
            The processed image and a status line, or the error message if the code failed.
        """
        return self._image_reply(self._tool("code", content, content=content))

    def problem(self, content: str) -> str:
        """Name what is wrong with the image, and get a hint for the next step.

        Args:
            content: The issues as a set of labels, e.g. "{'dark', 'rotation90'}".

        Returns:
            A hint on what to do next.
        """
        obs = self._tool("problem", content, content=content)
        return (obs.text or obs.error or "").rstrip("\n")

    def _call_text(self, kind: str, **arguments: Any) -> str:
        return f"<{kind}>{arguments.get('content', '')}</{kind}>"

    def __init__(self, **settings: Any):
        settings.setdefault("tool_calls", "tags")
        if settings["tool_calls"] != "tags":
            raise ValueError(f"TagToolEnv is the 'tags' tool form; got tool_calls={settings['tool_calls']!r}")
        super().__init__(**settings)


def make_env(**settings: Any) -> AgentEnv:
    """An environment for `settings` (`AgentEnv` keyword arguments): `TagToolEnv` for the "tags" tool form."""
    return (TagToolEnv if _tool_format(settings.get("tool_calls")) == "tags" else AgentEnv)(**settings)


def env_factory(**settings: Any):
    """A zero-argument factory (TRL's `environment_factory`, the rollout loop's `env_factory`) for `settings`."""
    return functools.partial(make_env, **settings)
