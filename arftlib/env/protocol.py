"""What every protocol module implements: read a model turn into an `Action` and say what an invalid turn shows.

A protocol renders turns for the policy (`prompts.build_messages(task, protocol, history)`, called by
`AgentEnv.messages`) and reads them back; it never runs a tool — `AgentEnv.act` does, the same way for all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from arftlib.types import Action, Observation

if TYPE_CHECKING:  # pragma: no cover
    from arftlib.env.core import AgentEnv


class Protocol:
    """Base: a text turn is parsed by the environment's policy (`AgentEnv.read_turn`) and acted on."""

    name = "chat"
    reference_crop = False  # whether the reference's crop-box rewrite of model code is on by default

    def step(self, env: "AgentEnv", text: str, gen: Mapping[str, Any]) -> Observation:
        return env.act(self.read(env, text), text, gen)

    def read(self, env: "AgentEnv", text: str) -> Action:
        return env.read_turn(text)

    def read_final(self, text: str, env: "AgentEnv") -> Action | None:
        """What a turn given to `AgentEnv.finish` (after the loop stopped) acts on: an answer, or nothing."""
        action = env.read_turn(text)
        return action if action.kind == "answer" else None

    def invalid_observation(self, action: Action, family: str) -> Observation:
        """What the model sees after a turn that could not be acted on."""
        raise NotImplementedError
