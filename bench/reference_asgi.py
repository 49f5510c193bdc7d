"""The bare-ASGI reference: Moonborn's chat-stream frames with no application logic at all.

    python -m uvicorn bench.reference_asgi:app --port 8001 --log-level warning --no-access-log

Any path, any method; the query sets `tokens` (default 200) and `delay_ms` (default 0). The stream is
what a Moonborn chat reply looks like on the wire: `retry: 3000`, `message.started` (id 1), one `token`
event per word (ids 2…), `completed`; one `send()` per event, as a plain ASGI app writes it.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WORDS = ("The", " lamp", " turns", " slowly", " over", " the", " dark", " water,", " and", " I", " watch.")
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def frame(event_id: int, event: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event_id}\nevent: {event}\ndata: {payload}\n\n".encode()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    query = parse_qs(scope.get("query_string", b"").decode())
    tokens = int(query.get("tokens", ["200"])[0])
    delay = float(query.get("delay_ms", ["0"])[0]) / 1000.0
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    gone = asyncio.Event()

    async def watch() -> None:
        # Stop producing when the client leaves, as any real server must (a flag check per token).
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.ensure_future(watch())
    try:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        body = b"retry: 3000\n" + frame(1, "message.started", {"messageId": "msg_reference"})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        for i in range(tokens):
            if delay:
                await asyncio.sleep(delay)
            if gone.is_set():
                return
            chunk = frame(i + 2, "token", {"delta": WORDS[i % len(WORDS)]})
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        done = frame(tokens + 2, "completed", {"messageId": "msg_reference", "driftScore": 0.5})
        await send({"type": "http.response.body", "body": done, "more_body": False})
    finally:
        watcher.cancel()
