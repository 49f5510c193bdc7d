"""Helpers for end-to-end tests against a real uvicorn server."""

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import connect_sse

from tests.conftest import ROOT, LiveServer

SSE = {"Accept": "text/event-stream"}

# Browser tests: Debian's Chromium, headless, cut off from the network it cannot reach anyway.
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
JSON = {"Accept": "application/json"}
# A generated persona has a lorebook: every reply consults it (`tool_start`, `tool_end`) before its first token.
LORE_TOOL = ["tool_start", "tool_end"]

FRAME = re.compile(rb"id: (\d+)\nevent: ([a-z][a-z0-9_.]*)\ndata: ([^\n]*)\n\n")
HEARTBEAT = b": heartbeat\n"


@dataclass(frozen=True)
class WireEvent:
    id: int
    event: str
    data: dict[str, Any]


def parse_wire(body: bytes) -> tuple[list[WireEvent], int]:
    """Parse a whole SSE body strictly: `retry:` first, then frames and heartbeats, nothing else."""
    assert body.startswith(b"retry: 3000\n"), body[:40]
    rest = body[len(b"retry: 3000\n") :]
    events: list[WireEvent] = []
    heartbeats = 0
    while rest:
        if rest.startswith(HEARTBEAT):
            heartbeats += 1
            rest = rest[len(HEARTBEAT) :]
            continue
        match = FRAME.match(rest)
        assert match is not None, f"not a frame: {rest[:120]!r}"
        events.append(WireEvent(int(match.group(1)), match.group(2).decode(), json.loads(match.group(3))))
        rest = rest[match.end() :]
    return events, heartbeats


def make_persona(
    server: LiveServer, user: str = "alice", prompt: str = "A cheerful baker in a mountain village"
) -> str:
    with server.client(user) as client:
        response = client.post("/v1/personas", json={"prompt": prompt}, headers=JSON, timeout=60)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "ready"
    return str(response.json()["id"])


def make_session(server: LiveServer, persona_id: str, user: str = "alice") -> str:
    with server.client(user) as client:
        response = client.post("/v1/chat/sessions", json={"personaId": persona_id})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def stream_events(client: httpx.Client, method: str, url: str, **kwargs: Any) -> list[WireEvent]:
    """Read a whole stream with httpx-sse, a real SSE client."""
    out = []
    with connect_sse(client, method, url, **kwargs) as source:
        for sse in source.iter_sse():
            out.append(WireEvent(int(sse.id), sse.event, json.loads(sse.data)))
    return out


def messages(server: LiveServer, session_id: str, user: str = "alice") -> list[dict[str, Any]]:
    with server.client(user) as client:
        response = client.get(f"/v1/chat/sessions/{session_id}/messages")
    assert response.status_code == 200, response.text
    return list(response.json()["results"])


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02, explain: Any = None) -> float:
    """Poll until `predicate()` is true; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time" + (f":\n{explain()}" if explain else ""))
        time.sleep(interval)
    return time.monotonic() - start
