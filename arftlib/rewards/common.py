"""What the reward components share: the gold step of a step-wise sample, the first answer, evidence before it.

A component reads a `Trajectory`: its task (answers, degradations, gold chain, clean image), the parsed `Action`
of every scored step and each step's typed `Observation`. A step-wise sample (`traj.start_step` set) is one
policy turn in place of gold step `start_step`; an episode (`start_step` None) is the whole chain.
"""

from __future__ import annotations

from typing import Any

from arftlib.parse import ReferenceTurn, reference_turn
from arftlib.turns import gold_turn
from arftlib.types import Step, Trajectory

__all__ = ["answer_index", "evidence_before", "gold_action", "gold_reference", "gold_step", "policy_steps"]


def gold_step(traj: Trajectory) -> dict[str, Any] | None:
    """The gold-chain entry a step-wise sample replaces, None for an episode. Raises when `start_step` does not
    index the task's gold chain."""
    if traj.start_step is None:
        return None
    chain = traj.task.gold_chain
    if not 0 <= traj.start_step < len(chain):
        raise ValueError(f"trajectory {traj.episode_id!r}: start_step {traj.start_step} is outside the gold chain of "
                         f"task {traj.task.id!r} ({len(chain)} steps)")
    return chain[traj.start_step]


def gold_action(traj: Trajectory) -> str | None:
    """The action of the gold step a step-wise sample replaces (None for an episode)."""
    step = gold_step(traj)
    return None if step is None else str(step["action"])


def gold_reference(traj: Trajectory) -> ReferenceTurn:
    """The gold step's turn (the reference's `solution`) as the reference's rewards read it."""
    step = gold_step(traj)
    if step is None:
        raise ValueError(f"trajectory {traj.episode_id!r} is not a step-wise sample (start_step is None)")
    return reference_turn(gold_turn(step, traj.task))


def policy_steps(traj: Trajectory) -> list[Step]:
    """The scored steps: what the policy wrote (a step-wise sample's gold prefix and display-only turns are not)."""
    return traj.scored_steps


def answer_index(steps: list[Step]) -> int | None:
    """Index of the first step that is a single, valid answer (strict policy), or None."""
    return next((j for j, s in enumerate(steps) if s.action.strict_kind == "answer"), None)


def evidence_before(steps: list[Step], j: int | None) -> bool:
    """Whether a successful tool observation came before step `j` (before the end when `j` is None)."""
    end = len(steps) if j is None else j
    return any(s.observation is not None and s.observation.is_evidence for s in steps[:end])
