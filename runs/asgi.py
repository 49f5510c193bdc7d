"""Serving a stream on ASGI directly: the fast path of the stream endpoints that open the most streams.

A request that Django would serve with a stream costs it an `HttpRequest`, a `StreamingHttpResponse`, a thread
hop for `request_started` and another for closing the response, and ~35 KiB that live as long as the stream
(shared/spec/performance.md). A fast path parses the few things it needs from the ASGI scope, does the stream's
database work in one `db()` call, and writes the run's frames itself. It handles only the well-formed case it was
made for: anything else (an error to report, an unusual header) goes to Django with the body replayed, so the
JSON errors, and everything that can be checked before the first byte, have one implementation.
"""

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from django.conf import settings
from django.http import HttpResponseBase

from moonborn_site.middleware import InlineSecurityMiddleware

from .hub import Departure

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class LeanRequest:
    """What a fast path reads from an HTTP scope: query parameters and headers (first value of each)."""

    __slots__ = ("scope", "query", "headers")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        raw_query = scope.get("query_string", b"")
        self.query: dict[str, str] = {}
        if raw_query:
            for name, value in parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True):
                self.query.setdefault(name, value)
        self.headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            self.headers.setdefault(name.lower(), value.decode("latin-1"))

    def is_secure(self) -> bool:
        return bool(self.scope.get("scheme") == "https")


async def read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """Read the request body, stopping once it is past `limit` bytes: (what was read, whether more is to come).

    A client that left before sending it all counts as more to come: the body is not whole.
    """
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(parts), True
        chunk = message.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        more = bool(message.get("more_body", False))
        if not more or size > limit:
            return b"".join(parts), more


def replaying(body: bytes, more: bool, receive: Receive) -> Receive:
    """A `receive` that hands out the body already read, then what `receive` gives."""
    pending: Message | None = {"type": "http.request", "body": body, "more_body": more}

    async def replay() -> Message:
        nonlocal pending
        if pending is not None:
            message, pending = pending, None
            return message
        return await receive()

    return replay


_security: InlineSecurityMiddleware | None = None


def asgi_headers(request: LeanRequest, response: HttpResponseBase) -> list[tuple[bytes, bytes]]:
    """The response's headers as Django's API handler would send them (its security headers included)."""
    global _security
    if _security is None:
        _security = InlineSecurityMiddleware(lambda request: HttpResponseBase())
    # SecurityMiddleware reads only `is_secure()` of the request, for HSTS.
    _security.process_response(request, response)  # type: ignore[arg-type]
    return [(name.encode("ascii"), value.encode("latin-1")) for name, value in response.items()]


async def send_response(request: LeanRequest, response: HttpResponseBase, send: Send) -> None:
    """Send a complete (non-streaming) Django response."""
    await send(
        {"type": "http.response.start", "status": response.status_code, "headers": asgi_headers(request, response)}
    )
    await send({"type": "http.response.body", "body": response.content})  # type: ignore[attr-defined]


class SseStream:
    """A stream ready to be served: the frames of a run's follower, its departure, the response headers."""

    __slots__ = ("frames", "departure", "headers")

    def __init__(
        self, frames: AsyncGenerator[bytes, None], departure: Departure, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.frames = frames
        self.departure = departure
        self.headers: list[tuple[bytes, bytes]] | None = headers

    async def serve(self, receive: Receive, send: Send) -> None:
        """Send a 200 with the headers, then each chunk of the frames until they end.

        A small task listens for the client's disconnect and sets the departure: the follower then leaves its run
        at once, and the run follows its `on_disconnect` policy. A write that stays blocked is the watchdog's
        (`runs.lifecycle.StreamGuard`): it cancels this task.
        """
        departure, frames = self.departure, self.frames

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            departure.set()

        watcher = asyncio.get_running_loop().create_task(until_disconnect())
        try:
            headers, self.headers = self.headers, None
            # Sent, then let go: ~1 KiB of header bytes would otherwise live as long as the stream (hours, maybe).
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            del headers
            async for chunk in frames:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            await frames.aclose()


def body_limit() -> int:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return limit if limit is not None else 1 << 62
