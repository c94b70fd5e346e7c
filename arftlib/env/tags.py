"""The `tags` protocol — the paper's: the whole history in ONE user message, exactly as the reference evaluation
builds it (`prompts.build_messages(task, "tags", history)`); the image in the message is the latest image code
produced. A turn with no usable action is ignored (nothing is added; the same prompt is generated from again,
as in the reference); failed code adds the turn only (the reference shows the model no tool errors)."""

from __future__ import annotations

from arftlib.env.protocol import Protocol
from arftlib.types import Action, Observation


class TagsProtocol(Protocol):
    name = "tags"
    reference_crop = True  # the reference rewrites crop slices in model code to the question's box

    def invalid_observation(self, action: Action, family: str) -> Observation:
        return Observation(kind="none", error=action.error, error_category="invalid_action")
