"""Moonborn's ASGI application with a recorder around it, for `bench/timeline.py` (not for serving).

For each request it notes when uvicorn handed it over, when its response headers were written and when each
`token` frame was written; and it notes every garbage collection (start, duration, generation). `GET /_timeline`
answers all of it as JSON and forgets it. The recording costs a list append per write: a stream's timings shift by
a microsecond or so, which is far below what it is meant to find.

`BENCH_GC_THRESHOLD=a,b,c` replaces the collector's thresholds after start-up (to compare settings).
"""

import gc
import json
import os
import time
from typing import Any

from moonborn_site.asgi import application

if os.environ.get("BENCH_GC_THRESHOLD"):
    first, second, third = (int(part) for part in os.environ["BENCH_GC_THRESHOLD"].split(","))
    gc.set_threshold(first, second, third)

# Per request: [entered, headers written, [token write times]]
_requests: list[list[Any]] = []
# Per collection: [began, milliseconds, generation]
_collections: list[list[float]] = []
_began = 0.0


def _on_gc(phase: str, info: dict[str, int]) -> None:
    global _began
    if phase == "start":
        _began = time.perf_counter()
    else:
        _collections.append([_began, (time.perf_counter() - _began) * 1e3, info["generation"]])


gc.callbacks.append(_on_gc)


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        await application(scope, receive, send)
        return
    if scope["path"] == "/_timeline":
        body = json.dumps({"requests": _requests, "collections": _collections}).encode()
        _requests.clear()
        _collections.clear()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    tokens: list[float] = []
    row: list[Any] = [time.perf_counter(), 0.0, tokens]
    _requests.append(row)

    async def recording_send(message: Any) -> None:
        if message["type"] == "http.response.start":
            row[1] = time.perf_counter()
        else:
            count = message.get("body", b"").count(b"event: token")
            if count:
                tokens.extend([time.perf_counter()] * count)
        await send(message)

    await application(scope, receive, recording_send)
