"""Serving a stream on ASGI directly: the fast path of the stream endpoints that open the most streams.

A request that Django would serve with a stream costs it an `HttpRequest`, a `StreamingHttpResponse`, a thread
hop for `request_started` and another for closing the response, and ~35 KiB that live as long as the stream
(per-stream memory: bench/RESULTS.md). A fast path parses the few things it needs from the ASGI scope, does the stream's
database work in one `db()` call, and writes the run's frames itself. It handles only the well-formed case it was
made for: anything else (an error to report, an unusual header) goes to Django with the body replayed, so the
JSON errors, and everything that can be checked before the first byte, have one implementation.
"""

# Annotations as strings: `SseStream.serve` defines its writers per stream, and evaluated annotations would make a
# tuple and a `Coroutine[...]` alias for each, kept as long as the stream.
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpResponseBase
from django.http.request import split_domain_port, validate_host

from moonborn_site.handlers import release_request_thread
from moonborn_site.middleware import InlineSecurityMiddleware

from .hub import Departure, Hub, OnDisconnect
from .sse import RETRY, SSE_CONTENT_TYPE, sse_headers

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

    def host_allowed(self) -> bool:
        """Whether Django's `get_host()` accepts this request's host: ALLOWED_HOSTS, or DEBUG's localhost names.

        False too without a Host header: Django then takes the server's name, which is its to judge.
        """
        name = b"host"
        if settings.USE_X_FORWARDED_HOST and b"x-forwarded-host" in self.headers:
            name = b"x-forwarded-host"
        elif name not in self.headers:
            return False
        # Django joins a repeated header's values with commas (which no allowed host matches): so here.
        host = ",".join(value.decode("latin-1") for header, value in self.scope["headers"] if header.lower() == name)
        allowed = settings.ALLOWED_HOSTS
        if settings.DEBUG and not allowed:
            allowed = [".localhost", "127.0.0.1", "[::1]"]
        domain, _ = split_domain_port(host)
        return bool(domain) and validate_host(domain, allowed)


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


# The SSE response's headers, but for its Location, for a plain and a secure request (HSTS): built once each.
_sse_templates: dict[bool, list[tuple[bytes, bytes]]] = {}
_LOCATION = "\x00location\x00"


@receiver(setting_changed)
def _forget_sse_templates(**kwargs: Any) -> None:
    _sse_templates.clear()


def sse_asgi_headers(request: LeanRequest, *, location: str) -> list[tuple[bytes, bytes]]:
    """The headers of `runs.sse.sse_response(…, location=location)` as Django's API handler would send them."""
    secure = request.is_secure()
    template = _sse_templates.get(secure)
    if template is None:
        response = HttpResponseBase(content_type=SSE_CONTENT_TYPE)
        sse_headers(response, location=_LOCATION)
        template = _sse_templates[secure] = asgi_headers(request, response)
    marker, value = _LOCATION.encode("latin-1"), location.encode("latin-1")
    return [(name, value if current == marker else current) for name, current in template]


async def send_response(request: LeanRequest, response: HttpResponseBase, send: Send) -> None:
    """Send a complete (non-streaming) Django response."""
    await send(
        {"type": "http.response.start", "status": response.status_code, "headers": asgi_headers(request, response)}
    )
    await send({"type": "http.response.body", "body": response.content})  # type: ignore[attr-defined]


class GuardedSend:
    """The `send` that `runs.lifecycle.StreamGuard` hands the app: a stream's blocked writes are timed.

    A write to a stream that stays blocked past the write timeout gets the task waiting on it cancelled by the
    guard's watchdog. `start` is the server's own `send`, for writes begun in another task than the stream's
    (`runs.hub.InProcessHub.relay`); the stream's task awaits their rest with `finish`, timed like its own.
    """

    __slots__ = ("start", "blocked", "loop", "is_stream")

    def __init__(self, send: Send, blocked: dict[asyncio.Task[Any], float], loop: asyncio.AbstractEventLoop) -> None:
        self.start = send
        # The task blocked in a stream write → when the write began (the watchdog's).
        self.blocked = blocked
        self.loop = loop
        self.is_stream = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.is_stream = any(
                name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                for name, value in message.get("headers", ())
            )
            if self.is_stream:
                release_request_thread()
            await self.start(message)
            return
        if not self.is_stream:
            await self.start(message)
            return
        await self.finish(self.start(message))

    async def finish(self, write: Awaitable[None]) -> None:
        """Await a stream write, timed for the watchdog."""
        task = asyncio.current_task()
        assert task is not None
        self.blocked[task] = self.loop.time()
        try:
            await write
        finally:
            self.blocked.pop(task, None)


class SseStream:
    """A run ready to be relayed to a client: the run, how to follow it, the response headers."""

    __slots__ = ("hub", "run_id", "on_disconnect", "headers")

    def __init__(self, hub: Hub, run_id: str, on_disconnect: OnDisconnect, headers: list[tuple[bytes, bytes]]) -> None:
        self.hub = hub
        self.run_id = run_id
        self.on_disconnect = on_disconnect
        self.headers: list[tuple[bytes, bytes]] | None = headers

    async def serve(self, receive: Receive, send: Send) -> None:
        """Send a 200 with the headers, then `retry:` and the run's frames until its end (`Hub.relay`).

        A small task listens for the client's disconnect and sets the departure: the follower then leaves its run
        at once, and the run follows its `on_disconnect` policy. A write that stays blocked is the watchdog's
        (`runs.lifecycle.StreamGuard`): it cancels this task.
        """
        departure = Departure()

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            departure.set()

        def start_write(chunk: bytes) -> Coroutine[Any, Any, None]:
            return start({"type": "http.response.body", "body": chunk, "more_body": True})

        async def write(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        if isinstance(send, GuardedSend):
            start: Callable[[Message], Coroutine[Any, Any, None]] = send.start  # type: ignore[assignment]
            finish_write: Callable[[Awaitable[None]], Awaitable[None]] = send.finish
        else:
            start = send  # type: ignore[assignment]
            finish_write = _awaited

        watcher = asyncio.get_running_loop().create_task(until_disconnect())
        try:
            headers, self.headers = self.headers, None
            # Sent, then let go: ~1 KiB of header bytes would otherwise live as long as the stream (hours, maybe).
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            del headers
            await self.hub.relay(
                self.run_id,
                write=write,
                start_write=start_write,
                finish_write=finish_write,
                on_disconnect=self.on_disconnect,
                departure=departure,
                first=RETRY,
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()


async def _awaited(write: Awaitable[None]) -> None:
    await write


def body_limit() -> int:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return limit if limit is not None else 1 << 62
