"""The small typed events that flows yield and the hub numbers, stores and sends."""

from dataclasses import dataclass, field
from typing import Any

# Every run ends with exactly one of these.
TERMINAL_EVENTS = frozenset({"pipeline.completed", "completed", "error"})


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


class RunError(Exception):
    """A failure that ends a run with an `error` event carrying `code` and `retryable`."""

    code = "internal_error"
    retryable = False

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable


def error_event(message: str, code: str, *, retryable: bool) -> Event:
    return Event("error", {"error": message, "code": code, "retryable": retryable})
