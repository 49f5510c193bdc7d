"""An SSE decoder following the WHATWG event-stream rules: lines end at CR, LF or CRLF only; comments, `retry:`,
multi-line data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RawEvent:
    id: str
    event: str
    data: str


BOM = b"\xef\xbb\xbf"


class LineSplitter:
    """Cut a byte stream into lines at CR, LF or CRLF, and nowhere else.

    httpx's `iter_lines` follows `str.splitlines`, which also breaks at U+2028, U+2029, U+0085 and a few
    control characters: any of them raw inside a `data:` line would cut the event's JSON in two. CR and LF
    bytes never occur inside a UTF-8 sequence, so the bytes are cut first and each line decoded whole.
    """

    def __init__(self) -> None:
        self._rest = b""
        self._after_cr = False
        self._first = True

    def feed(self, chunk: bytes) -> list[str]:
        if self._after_cr:
            # The last chunk ended in CR and that line went out: an LF here completes the same CRLF.
            self._after_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        data = self._rest + chunk if self._rest else chunk
        if b"\r" in data:
            # A CR at the very end already ends its line; waiting for a possible LF would hold the line back.
            self._after_cr = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, self._rest = data.split(b"\n")
        if lines and self._first:
            # The stream may open with a byte order mark, which is not part of the first field's name.
            self._first = False
            lines[0] = lines[0].removeprefix(BOM)
        return [line.decode("utf-8", errors="replace") for line in lines]


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
