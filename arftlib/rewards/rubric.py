"""The Rubric: named per-sample reward components, batched, weighted, and logged each under its own name.

A component is a plain function `f(traj: Trajectory) -> float | None` (None: does not apply to this sample);
its `__name__` is its logged name. Optional attributes: `prepare(trajs)` (batch work done once before the
per-sample calls, e.g. embedding every query of a batch) and `needs_observations = True` (it reads tool
observations, so a step-wise sample must be acted on by the environment, not only parsed).

`Rubric([(component, weight), ...])`:
* `rubric.score(trajs)` → per sample `{name: value, …, "total": weighted sum}` (components returning None are
  left out of that sample's sum, as TRL's nansum does; total None when all are None); each component's values
  are kept in `rubric.last_components[name]`.
* `rubric.score_episode(traj)` — THE function that scores an agentic episode, for training (the TRL adapter,
  `rewards/trl.py`) and evaluation (`AgentEnv(rubric=…)`) alike: sets `traj.reward` and
  `traj.reward_components` and returns the scores; raises when no component applies.

Named rubrics: `paper_stepwise_rubric(kind)` reproduces the paper (format + accuracy per step type, weights 1);
`executed_stepwise_rubric(kind)` is the same with `executed_code` in place of the flat 0.9 (an ablation);
`agentic_rubric(kind, weights)` scores whole episodes (`AGENTIC_WEIGHTS`).

>>> from arftlib.types import Action, Step, Task, Trajectory
>>> task = Task(id="1", question="Q?", images=[], answers=["Paris"], kind="search")
>>> def episode(text, kind, content):
...     return Trajectory(task=task, steps=[Step(turn=0, model_text=text, action=Action(kind=kind, content=content,
...                       blocks=[kind], format_ok=text.startswith("<think>")))])
>>> r = Rubric([(answer_f1_corrected, 1.0), (format, 0.5)])
>>> [s["total"] for s in r.score([episode("<think>t</think><answer>Paris</answer>", "answer", "Paris"),
...                               episode("<answer>Rome</answer>", "answer", "Rome")])]
[1.5, 0.0]
>>> r.last_components
{'answer_f1_corrected': [1.0, 0.0], 'format': [1.0, 0.0]}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from arftlib.rewards import agentic as A
from arftlib.rewards import paper as PP
from arftlib.rewards.agentic import answer_f1_corrected, format  # noqa: F401  (doctest names)
from arftlib.rewards.image import executed_code
from arftlib.types import Trajectory, task_family

__all__ = ["AGENTIC_WEIGHTS", "Component", "Rubric", "agentic_rubric", "executed_stepwise_rubric",
           "paper_stepwise_rubric", "score_episode"]

RewardFunc = Callable[[Trajectory], Any]


class Component(NamedTuple):
    """One rubric entry: its logged name, the reward function and its weight."""

    name: str
    fn: RewardFunc
    weight: float


class Rubric:
    """Weighted reward components, each logged under its own name (see the module docstring)."""

    def __init__(self, components: Sequence[tuple[RewardFunc, float]], name: str = "rubric"):
        if not components:
            raise ValueError("a Rubric needs at least one (component, weight) pair")
        self.funcs: list[RewardFunc] = []
        self.weights: list[float] = []
        self.names: list[str] = []
        for item in components:
            if not (isinstance(item, tuple) and len(item) == 2 and callable(item[0])):
                raise TypeError(f"rubric components are (function, weight) pairs, got {item!r}")
            fn, w = item
            nm = getattr(fn, "__name__", None)
            if not nm or nm == "<lambda>":
                raise ValueError(f"reward component {fn!r} needs a proper __name__ (it is its logged name)")
            if nm in self.names or nm == "total":
                raise ValueError(f"duplicate or reserved component name {nm!r}")
            if not (isinstance(w, (int, float)) and math.isfinite(w)):
                raise ValueError(f"weight of {nm!r} must be a finite number, got {w!r}")
            self.funcs.append(fn)
            self.weights.append(float(w))
            self.names.append(nm)
        self.name = name
        self.last_components: dict[str, list[float | None]] = {}
        self.last_total: list[float | None] = []

    @property
    def components(self) -> list[Component]:
        """`(name, fn, weight)` per component, in order."""
        return [Component(n, f, w) for n, f, w in zip(self.names, self.funcs, self.weights)]

    @property
    def needs_observations(self) -> bool:
        """Whether a component reads tool observations (step-wise samples must then be acted on, not only read)."""
        return any(getattr(f, "needs_observations", False) for f in self.funcs)

    def _values(self, index: int, trajs: Sequence[Trajectory]) -> list[float | None]:
        name, fn = self.names[index], self.funcs[index]
        out: list[float | None] = []
        for j, t in enumerate(trajs):
            v = fn(t)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer))
                                  or not math.isfinite(v)):
                raise ValueError(f"reward component {name!r} returned {v!r} for sample {j} "
                                 f"(trajectory {t.episode_id!r}); expected a finite number or None")
            out.append(None if v is None else float(v))
        return out

    def score(self, trajs: Sequence[Trajectory]) -> list[dict[str, float | None]]:
        """Per sample: every component's value and the weighted total under "total"."""
        trajs = list(trajs)
        for t in trajs:
            if not isinstance(t, Trajectory):
                raise TypeError(f"rubric {self.name!r} scores Trajectory objects, got {type(t).__name__}")
        prepared = set()
        for fn in self.funcs:
            prep = getattr(fn, "prepare", None)
            if prep is not None and prep not in prepared:
                prep(trajs)
                prepared.add(prep)
        comps = {nm: self._values(k, trajs) for k, nm in enumerate(self.names)}
        totals: list[float | None] = []
        for j in range(len(trajs)):
            present = [(w, comps[nm][j]) for nm, w in zip(self.names, self.weights) if comps[nm][j] is not None]
            totals.append(sum(w * v for w, v in present) if present else None)
        self.last_components, self.last_total = comps, totals
        return [{**{nm: comps[nm][j] for nm in self.names}, "total": totals[j]} for j in range(len(trajs))]

    def __call__(self, trajs: Sequence[Trajectory]) -> list[float | None]:
        """The weighted total per sample."""
        return [s["total"] for s in self.score(trajs)]

    def score_episode(self, traj: Trajectory) -> dict[str, float]:
        """Score one finished trajectory: `{component: value, …, "total": …}` (components that do not apply are
        left out); sets `traj.reward` and `traj.reward_components`. Raises ValueError if no component applies."""
        res = self.score([traj])[0]
        if res["total"] is None:
            raise ValueError(f"no component of {self.name!r} applies to trajectory {traj.episode_id!r} "
                             f"(task {traj.task.id!r}, kind {traj.task.kind!r})")
        out = {k: v for k, v in res.items() if v is not None}
        traj.reward = float(out["total"])
        traj.reward_components = {k: float(v) for k, v in out.items() if k != "total"}
        return out

    def __repr__(self) -> str:
        parts = ", ".join(f"{nm}×{w:g}" for nm, w in zip(self.names, self.weights))
        return f"Rubric({self.name!r}: {parts})"


def score_episode(traj: Trajectory, rubric: Rubric) -> dict[str, float]:
    """`rubric.score_episode(traj)`: the one scoring of an agentic episode (training and evaluation)."""
    return rubric.score_episode(traj)


def paper_stepwise_rubric(kind: str) -> Rubric:
    """The paper's step-wise reward: format + accuracy, weights 1 (the reference's TRL defaults), with accuracy
    split by step type. kind "coding" → answer F1, flat code 0.9, diagnosis; "search"/"multihop" → answer F1,
    query similarity.

    >>> paper_stepwise_rubric("coding")
    Rubric('paper_stepwise_coding': paper_format×1, paper_answer_f1×1, paper_code_flat×1, paper_diagnosis×1)
    """
    fam = task_family(kind)
    if fam == "coding":
        comps = [(PP.paper_format, 1.0), (PP.paper_answer_f1, 1.0), (PP.paper_code_flat, 1.0),
                 (PP.paper_diagnosis, 1.0)]
    else:
        comps = [(PP.paper_format, 1.0), (PP.paper_answer_f1, 1.0), (PP.paper_search_similarity, 1.0)]
    return Rubric(comps, name=f"paper_stepwise_{fam}")


def executed_stepwise_rubric(kind: str) -> Rubric:
    """The paper's step-wise rubric with ONE change, for a clean ablation: coding code steps are rewarded by
    `executed_code` (run in the sandbox, scored by what the output image restores) instead of the flat 0.9.
    Search-family rubrics have no code steps, so for them it equals `paper_stepwise_rubric`.

    >>> executed_stepwise_rubric("coding").names
    ['paper_format', 'paper_answer_f1', 'executed_code', 'paper_diagnosis']
    """
    base = paper_stepwise_rubric(kind)
    comps = [((executed_code if c.fn is PP.paper_code_flat else c.fn), c.weight) for c in base.components]
    return Rubric(comps, name=f"executed_stepwise_{task_family(kind)}")


# Weights of the agentic rubric. Weight-0 components are logged for monitoring and do not move the total.
AGENTIC_WEIGHTS: dict[str, float] = {
    "grounded_answer_f1": 1.0,
    "format": 0.2,
    "query_similarity": 0.2,
    "diagnosis": 0.2,
    "executed_code": 0.5,
    "wasted_turns": -0.1,
    "repeated_queries": -0.2,
    "tool_spam": -0.2,
    "answer_after_evidence": 0.0,
    "answer_f1_reference": 0.0,
    "answer_em_reference": 0.0,
    "answer_f1_corrected": 0.0,
    "answer_em_corrected": 0.0,
}
_AGENTIC_FUNCS: dict[str, RewardFunc] = {
    "grounded_answer_f1": A.grounded_answer_f1, "format": A.format, "query_similarity": A.query_similarity,
    "diagnosis": A.diagnosis, "executed_code": executed_code, "wasted_turns": A.wasted_turns,
    "repeated_queries": A.repeated_queries, "tool_spam": A.tool_spam,
    "answer_after_evidence": A.answer_after_evidence, "answer_f1_reference": A.answer_f1_reference,
    "answer_em_reference": A.answer_em_reference, "answer_f1_corrected": A.answer_f1_corrected,
    "answer_em_corrected": A.answer_em_corrected,
}


def agentic_rubric(kind: str, weights: Mapping[str, float] | None = None) -> Rubric:
    """Whole-episode rubric: evidence-gated corrected answer F1, format, query similarity (search) or diagnosis +
    executed code (coding), penalties for wasted turns, repeated queries and tool spam, and the four F1/EM variants
    plus answer_after_evidence logged at weight 0. `weights` overrides AGENTIC_WEIGHTS.

    >>> agentic_rubric("search").names[:3]
    ['grounded_answer_f1', 'format', 'query_similarity']
    """
    w = {**AGENTIC_WEIGHTS, **(weights or {})}
    unknown = set(w) - set(AGENTIC_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown agentic component(s) {sorted(unknown)}; known: {sorted(AGENTIC_WEIGHTS)}")
    fam = task_family(kind)
    names = ["grounded_answer_f1", "format"] + (["diagnosis", "executed_code"] if fam == "coding"
                                                 else ["query_similarity"])
    names += ["wasted_turns", "repeated_queries", "tool_spam", "answer_after_evidence", "answer_f1_reference",
              "answer_em_reference", "answer_f1_corrected", "answer_em_corrected"]
    return Rubric([(_AGENTIC_FUNCS[n], w[n]) for n in names], name=f"agentic_{fam}")
