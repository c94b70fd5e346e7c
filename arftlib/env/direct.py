"""The `direct` protocol — the no-tool baseline: one turn, and the whole turn is the answer (the reference's
"direct inference" scripts score the raw output)."""

from __future__ import annotations

from arftlib.env.protocol import Protocol
from arftlib.types import Action, Observation


class DirectProtocol(Protocol):
    name = "direct"

    def read(self, env, text: str) -> Action:
        return Action(kind="answer", content=text, raw=text, blocks=["answer"])

    def read_final(self, text: str, env) -> Action | None:
        return self.read(env, text)

    def invalid_observation(self, action: Action, family: str) -> Observation:  # pragma: no cover - never invalid
        return Observation(kind="none", error=action.error, error_category="invalid_action")
