"""Interoperability: real SSE clients read the persona and chat streams identically.

httpx-sse, the `eventsource` npm package (GET: the resume endpoint), `eventsource-parser`,
`@microsoft/fetch-event-source` (openWhenHidden), `curl -N` and the seed's own read loop, each
reading a real stream from a real server: same events, same text, no phantom empty events.
"""

import json
import re
import shutil
import subprocess
from typing import Any

from tests.conftest import ROOT
from tests.e2e.helpers import SSE, make_persona, make_session, messages, parse_wire, stream_events

INTEROP = ROOT / "tests" / "interop"
TYPES = {
    "pipeline.started",
    "step.started",
    "step.completed",
    "pipeline.completed",
    "message.started",
    "token",
    "completed",
    "error",
}
PROMPT = "A lamplighter in a city of canals"
QUESTION = "What does the city sound like at dusk?"
IDS = re.compile(r"^(per|msg|ses)_[0-9a-z]+$")

Event = tuple[int, str, dict[str, Any]]


def node(client: str, url: str, key: str, body: str = "") -> dict[str, Any]:
    assert (INTEROP / "node_modules").exists(), "run `npm ci` in tests/interop (scripts/install --dev does)"
    executable = shutil.which("node")
    assert executable is not None
    done = subprocess.run(
        [executable, "read.mjs", client, url, body],
        cwd=INTEROP,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "MOONBORN_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def as_events(raw: list[dict[str, Any]]) -> list[Event]:
    """Check each dispatched event is a real one (no phantom empty events) and decode it."""
    out = []
    for event in raw:
        assert event["event"] in TYPES, f"phantom or unknown event: {event}"
        assert event["data"], f"empty data: {event}"
        assert str(event["id"]).isdigit(), f"event without an id: {event}"
        out.append((int(event["id"]), event["event"], json.loads(event["data"])))
    return out


def normalized(events: list[Event]) -> list[Event]:
    """Blank what differs between two runs of the same request: ids and timings."""
    out = []
    for number, kind, data in events:
        clean = {}
        for key, value in data.items():
            if isinstance(value, str) and IDS.match(value):
                clean[key] = value[:4]
            elif key == "durationMs":
                assert isinstance(value, int) and value >= 0
                clean[key] = "ms"
            else:
                clean[key] = value
        out.append((number, kind, clean))
    return out


def curl(url: str, key: str, body: str) -> list[Event]:
    executable = shutil.which("curl")
    assert executable is not None
    done = subprocess.run(
        [
            executable,
            "-sS",
            "-N",
            "-X",
            "POST",
            url,
            "-H",
            f"Authorization: Bearer {key}",
            "-H",
            "Content-Type: application/json",
            "-H",
            "Accept: text/event-stream",
            "-d",
            body,
        ],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    events, heartbeats = parse_wire(done.stdout)
    assert heartbeats == 0
    return [(e.id, e.event, e.data) for e in events]


def httpx_sse(server, method: str, url: str, body: dict[str, Any]) -> list[Event]:
    with server.client() as client:
        return [(e.id, e.event, e.data) for e in stream_events(client, method, url, json=body, headers=SSE)]


def test_every_client_reads_the_persona_stream_identically(server):
    key = server.keys["alice"]
    url = f"{server.base_url}/v1/personas?stream=true"
    body = json.dumps({"prompt": PROMPT})

    reference = httpx_sse(server, "POST", "/v1/personas?stream=true", {"prompt": PROMPT})
    assert [kind for _, kind, _ in reference] == ["pipeline.started"] + ["step.started", "step.completed"] * 6 + [
        "pipeline.completed"
    ]
    assert [number for number, _, _ in reference] == list(range(1, 15))
    persona_id = reference[0][2]["personaId"]

    reads = {
        "eventsource-parser": node("eventsource-parser", url, key, body),
        "fetch-event-source": node("fetch-event-source", url, key, body),
        "seed": node("seed", url, key, body),
    }
    assert reads["eventsource-parser"]["retry"] == 3000
    assert reads["fetch-event-source"]["status"] == 200
    for name, read in reads.items():
        assert normalized(as_events(read["events"])) == normalized(reference), name
    assert normalized(curl(url, key, body)) == normalized(reference)

    # The same run replayed from the resume endpoint reads exactly the same, ids and all; after
    # the terminal event the EventSource reconnects with Last-Event-ID and the 204 stops it.
    replay = node("eventsource", f"{server.base_url}/v1/personas/{persona_id}/events?lastEventId=0", key)
    assert as_events(replay["events"]) == reference
    assert (replay["opens"], replay["closedByServer"]) == (1, True)


def test_every_client_reads_the_chat_stream_identically(server):
    key = server.keys["alice"]
    persona_id = make_persona(server, prompt=PROMPT)
    body = json.dumps({"content": QUESTION})

    def fresh_url() -> tuple[str, str]:
        session_id = make_session(server, persona_id)
        return session_id, f"{server.base_url}/v1/chat/sessions/{session_id}/messages?stream=true"

    session_id, _ = fresh_url()
    reference = httpx_sse(server, "POST", f"/v1/chat/sessions/{session_id}/messages?stream=true", {"content": QUESTION})
    kinds = [kind for _, kind, _ in reference]
    assert kinds == ["message.started"] + ["token"] * 24 + ["completed"]
    assert [number for number, _, _ in reference] == list(range(1, 27))
    text = "".join(data["delta"] for _, kind, data in reference if kind == "token")
    stored = messages(server, session_id)[-1]
    assert (stored["content"], stored["status"]) == (text, "completed")
    message_id = stored["id"]

    results: dict[str, list[Event]] = {}
    for name in ("eventsource-parser", "fetch-event-source", "seed"):
        session, url = fresh_url()
        read = node(name, url, key, body)
        results[name] = as_events(read["events"])
        assert messages(server, session)[-1]["content"] == text, name
        if name == "seed":
            assert read["text"] == text
    session, url = fresh_url()
    results["curl -N"] = curl(url, key, body)
    assert messages(server, session)[-1]["content"] == text
    for name, events in results.items():
        assert normalized(events) == normalized(reference), name
        assert "".join(data["delta"] for _, kind, data in events if kind == "token") == text, name

    replay = node("eventsource", f"{server.base_url}/v1/chat/sessions/{session_id}/messages/{message_id}/events", key)
    assert as_events(replay["events"]) == reference
    assert (replay["opens"], replay["closedByServer"]) == (1, True)
