"""The one place Server-Sent Events frames are written (api.md, "Streaming envelope")."""

import json
import re
from collections.abc import AsyncGenerator
from contextvars import ContextVar
from json.encoder import encode_basestring
from typing import Any

from django.http import HttpResponseBase, StreamingHttpResponse

# The stream's first line; no blank line follows it, so clients dispatch no phantom event.
RETRY = b"retry: 3000\n"
# A comment and a single newline: a blank line after it would make clients dispatch an empty event.
HEARTBEAT = b": heartbeat\n"

# One encoder for every frame: json.dumps with options builds a new one per call.
_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_SAFE_EVENT = re.compile(r"^[a-z][a-z0-9_.]*$")
_checked_types: set[str] = set()
# JSON for one string, as `_json` writes it (ensure_ascii=False).
_string = encode_basestring
# JSON lets U+0085, U+2028 and U+2029 stand raw in a string, but str.splitlines (httpx's iter_lines and
# the clients built on it) breaks lines there: raw, they would cut a data line in two. Escaped, the
# frame decodes to the same text in every client.
_LINE_BREAKS = (("\x85", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def _escape_line_breaks(frame: str) -> str:
    for char, escape in _LINE_BREAKS:
        frame = frame.replace(char, escape)
    return frame


def encode_event(event_id: int, event_type: str, data: dict[str, Any]) -> bytes:
    """Encode one frame: `id`, `event`, one line of compact JSON, blank line."""
    if event_type not in _checked_types:
        if not _SAFE_EVENT.match(event_type):
            raise ValueError(f"unsafe SSE event type: {event_type!r}")
        _checked_types.add(event_type)
    if event_type == "token" and len(data) == 1 and type(data.get("delta")) is str:
        # The frame of nearly every event, written without the general encoder: same bytes, a third of the time.
        frame = f'id: {int(event_id)}\nevent: token\ndata: {{"delta":{_string(data["delta"])}}}\n\n'
    else:
        # JSON escapes control characters, so the payload can never contain a raw CR or LF.
        frame = f"id: {int(event_id)}\nevent: {event_type}\ndata: {_json.encode(data)}\n\n"
    # isascii() reads a flag, so an ASCII frame (most tokens) pays nothing for the line-break check.
    if frame.isascii() or not ("\u2028" in frame or "\u2029" in frame or "\x85" in frame):
        return frame.encode()
    return _escape_line_breaks(frame).encode()


# The response iterators of the current request, closed by runs.lifecycle.StreamGuard when the
# request ends: Django closes only its own wrapper, and an iterator left open until garbage
# collection would keep its run's follower (and so the on_disconnect policy) waiting.
open_streams: ContextVar[list[AsyncGenerator[bytes, None]] | None] = ContextVar("open_streams", default=None)


SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


def sse_headers(response: HttpResponseBase, *, location: str) -> None:
    """Set api.md's headers of an SSE response (besides its content type)."""
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    response["Location"] = location
    response["Vary"] = "Accept"


def sse_response(frames: AsyncGenerator[bytes, None], *, location: str) -> StreamingHttpResponse:
    """Wrap an async iterator of ready-encoded frames in a streaming response with api.md's headers."""
    registry = open_streams.get()
    if registry is not None:
        registry.append(frames)
    response = StreamingHttpResponse(frames, content_type=SSE_CONTENT_TYPE)
    sse_headers(response, location=location)
    return response
