"""A Rubric as TRL reward functions — the one thin adapter between TRL's reward signature and Trajectories.

TRL's `GRPOTrainer` calls each reward function as `f(prompts=…, completions=…, completion_ids=…, **columns,
environments=…, trainer_state=…, log_extra=…, log_metric=…) -> list[float | None]`, one function per logged
name. `TRLRewards(rubric)` hands TRL one such function per rubric component (`reward_funcs()`, weights in
`weights`, so TRL logs `rewards/<component>`); on the first call of a batch it turns the batch into
`Trajectory` objects ONCE and scores them with the rubric (`Rubric.score`); every component function then
returns its column of those scores. The trajectories and scores of the latest batch stay available
(`last_trajectories`, `last_scores`) for the training run's trajectory log.

Where the trajectories come from:
* agentic rollouts (TRL passes `environments`): each environment already recorded its episode; the adapter only
  closes it from the completion (`env.toolcalls.close_from_trl`: the last call-less turn, the assistant text of
  each call) — nothing is parsed or scored twice;
* step-wise rows (columns `task` and `step_index`, made by `data.stepwise`): the completion is the policy's turn
  in place of that gold step (`env.core.step_sample`) — read only, or acted on by an environment
  (`env_factory()`) when a component reads observations (`Rubric.needs_observations`, e.g. `executed_code`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from arftlib.rewards.rubric import Rubric
from arftlib.types import Trajectory

__all__ = ["TRLRewards", "completion_text", "episode_stats"]


def completion_text(completion: Any) -> str:
    """The text of a single-turn completion: a string as is, or the (last) assistant message of a
    conversational completion, with a think block TRL's response parser moved out put back."""
    from arftlib.env.toolcalls import assistant_text

    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return assistant_text(completion)
    if isinstance(completion, (list, tuple)):
        msgs = [m for m in completion if isinstance(m, Mapping) and m.get("role") == "assistant"]
        if not msgs:
            raise ValueError(f"a conversational completion without an assistant message: {completion!r:.200}")
        return assistant_text(msgs[-1])
    raise TypeError(f"a completion must be a str or a list of messages, got {type(completion).__name__}")


class TRLRewards:
    """`rubric` as TRL reward functions (see the module docstring). `env_factory` makes the environment that acts
    on step-wise samples when the rubric needs observations (default: `AgentEnv(protocol="tags")`)."""

    def __init__(self, rubric: Rubric, *, env_factory: Callable[[], Any] | None = None, num_generations: int = 1,
                 max_turns: int | None = None):
        self.rubric = rubric
        self._env_factory = env_factory
        self.num_generations = int(num_generations)  # group size, for the per-batch episode statistics
        self.max_turns = max_turns  # an episode that used them all without answering counts as unfinished
        self._completions: Any = None  # the batch the cache belongs to (held, so its identity stays unique)
        self._envs: list[Any] = []  # environments that acted on this batch's step-wise samples
        self.last_trajectories: list[Trajectory] = []
        self.last_scores: list[dict[str, float | None]] = []

    @property
    def names(self) -> list[str]:
        return list(self.rubric.names)

    @property
    def weights(self) -> list[float]:
        return list(self.rubric.weights)

    def reward_funcs(self) -> list[Callable[..., list[float | None]]]:
        """One TRL reward function per component, named like the component (pair with `self.weights`)."""
        return [_ComponentFunc(self, name) for name in self.rubric.names]

    def trajectories(self, completions: Sequence[Any], environments: Sequence[Any] | None = None,
                     **columns: Any) -> list[Trajectory]:
        """The batch as Trajectories (see the module docstring); raises naming the missing column."""
        n = len(completions)
        if environments is not None:
            if len(environments) != n:
                raise RuntimeError(f"TRL passed {len(environments)} environments for {n} completions")
            from arftlib.env.toolcalls import close_from_trl

            return [close_from_trl(env, comp) for env, comp in zip(environments, completions)]
        for col in ("task", "step_index"):
            if columns.get(col) is None:
                raise KeyError(f"reward adapter for {self.rubric.name!r}: step-wise rows need a {col!r} column "
                               "(data.stepwise builds it); got columns " + ", ".join(sorted(columns)))
            if len(columns[col]) != n:
                raise ValueError(f"column {col!r} has {len(columns[col])} values for {n} completions")
        from arftlib.env.core import step_sample
        from arftlib.rows import task_from_value

        for env in self._envs:  # the previous batch's tool images are no longer needed
            env.close()
        self._envs = []
        out = []
        for i, comp in enumerate(completions):
            env = None
            if self.rubric.needs_observations:  # one environment per sample: its files live until the next batch
                env = self._env_factory() if self._env_factory is not None else _default_env()
                self._envs.append(env)
            task = task_from_value(columns["task"][i])
            out.append(step_sample(task, int(columns["step_index"][i]), completion_text(comp), env=env))
        return out

    def batch(self, completions: Sequence[Any], environments: Sequence[Any] | None, log_metric: Any = None,
              **columns: Any) -> list[dict[str, float | None]]:
        """Scores of this batch, computed on the first call and reused by the other components' calls. With TRL's
        `log_metric`, the batch's episode statistics are logged once (`episode_stats`)."""
        if completions is not self._completions:
            trajs = self.trajectories(completions, environments, **columns)
            self.last_scores = self.rubric.score(trajs)
            self.last_trajectories = trajs
            self._completions = completions
            if log_metric is not None:
                for name, value in episode_stats(trajs, self.max_turns).items():
                    log_metric(name, value)
        return self.last_scores


def episode_stats(trajs: Sequence[Trajectory], max_turns: int | None = None) -> dict[str, float]:
    """What the tool-use monitor and the curves read, averaged over a batch of trajectories: `episode/tool_calls`
    (tool calls per episode: searches and code runs), `episode/turns` (scored turns), `episode/answered`,
    `episode/unfinished` (unanswered with the turn budget spent), `episode/tool_errors`."""
    n = max(1, len(trajs))
    calls = turns = answered = unfinished = errors = 0.0
    for t in trajs:
        steps = t.scored_steps
        calls += sum(s.action.kind in ("search", "code") and s.observation is not None
                     and s.observation.tool in ("search", "code") for s in steps)
        turns += len(steps)
        answered += t.final_answer is not None
        unfinished += t.final_answer is None and max_turns is not None and len(steps) >= max_turns
        errors += sum(1 for s in steps if s.observation is not None and s.observation.error_category is not None)
    return {"episode/tool_calls": calls / n, "episode/turns": turns / n, "episode/answered": answered / n,
            "episode/unfinished": unfinished / n, "episode/tool_errors": errors / n}


class _ComponentFunc:
    """One rubric component as a TRL reward function (picklable: a module-level class)."""

    def __init__(self, adapter: TRLRewards, name: str):
        self.adapter = adapter
        self.__name__ = name  # TRL logs `rewards/<__name__>/mean`

    def __call__(self, prompts=None, completions=None, completion_ids=None, environments=None, trainer_state=None,
                 log_extra=None, log_metric=None, **columns) -> list[float | None]:
        scores = self.adapter.batch(completions, environments, log_metric=log_metric, **columns)
        return [s[self.__name__] for s in scores]

    def __repr__(self) -> str:
        return f"<reward {self.__name__}>"


def _default_env():
    from arftlib.env.core import AgentEnv

    return AgentEnv(protocol="tags")
