"""An SSE line decoder following the WHATWG event-stream rules (comments, `retry:`, multi-line data)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RawEvent:
    id: str
    event: str
    data: str


class SSEDecoder:
    """Turn decoded lines into events; a blank line dispatches, and only when data was seen."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id = ""
        self.retry_ms: int | None = None

    def feed(self, line: str) -> RawEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> RawEvent | None:
        # The last event id persists across events, as in EventSource; type and data do not.
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return RawEvent(id=self._id, event=event or "message", data="\n".join(data))
