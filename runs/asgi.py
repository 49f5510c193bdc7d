"""Writing a run's frames to an ASGI connection: the guarded `send` of every stream, and a stream served on ASGI
directly (`SseStream`, for the ASGI views of moonborn_site.handlers).

A request that Django would serve with a stream costs it an `HttpRequest`, a `StreamingHttpResponse`, a thread
hop for `request_started` and another for closing the response, and ~35 KiB that live as long as the stream
(per-stream memory: bench/RESULTS.md).
"""

# Annotations as strings: `SseStream.serve` defines its writers per stream, and evaluated annotations would make a
# tuple and a `Coroutine[...]` alias for each, kept as long as the stream.
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from moonborn_site.handlers import release_request_thread

from .hub import Departure, Hub, OnDisconnect
from .sse import RETRY

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class GuardedSend:
    """The `send` that `runs.lifecycle.StreamGuard` hands the app: a stream's blocked writes are timed.

    A write to a stream that stays blocked past the write timeout gets the task waiting on it cancelled by the
    guard's watchdog. `start` is the server's own `send`, for writes begun in another task than the stream's
    (`Hub.relay`); the stream's task awaits their rest with `finish`, timed like its own.
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
