"""What goes wrong in a flow, named so that a dead letter says which step failed and why."""

from __future__ import annotations

from sampan.bus.retry import Unretryable


class StepFailed(Exception):
    """A step raised; the message names the step (``steps[2].enrich``) and the cause."""

    def __init__(self, label: str, cause: BaseException) -> None:
        super().__init__(f"{label}: {type(cause).__name__}: {cause}")
        self.label = label
        self.cause = cause


class UnretryableStepFailed(StepFailed, Unretryable):
    """A step failed in a way no retry can fix: the message is dead-lettered at once."""


class InvalidMessage(Unretryable):
    """The message does not fit what the step requires (a JSON Schema, a sequence number)."""


class RejectedByDestination(Unretryable):
    """The destination refused the message for good (an HTTP 4xx other than 408/429)."""


def step_failure(label: str, cause: BaseException) -> StepFailed:
    if isinstance(cause, StepFailed):
        return cause  # already names the innermost step
    if isinstance(cause, Unretryable):
        return UnretryableStepFailed(label, cause)
    return StepFailed(label, cause)
