"""The `chat` protocol: system + user(image, query), then assistant turns and observation turns (role `user`, or
`tool` with `observation_role="tool"`); a processed image comes back as a new image block; invalid turns and
tool errors are shown as text (`prompts.format_observation_invalid`)."""

from __future__ import annotations

from arftlib import prompts as P
from arftlib.env.protocol import Protocol
from arftlib.types import Action, Observation


class ChatProtocol(Protocol):
    name = "chat"

    def invalid_observation(self, action: Action, family: str) -> Observation:
        return Observation(kind="text", text=P.format_observation_invalid(action.error, family), error=action.error,
                           error_category="invalid_action")
