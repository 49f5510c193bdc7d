"""Interoperability: real SSE clients read the persona and chat streams identically.

httpx-sse, the `eventsource` npm package (GET: the resume endpoint), `eventsource-parser`,
`@microsoft/fetch-event-source` (openWhenHidden), `curl -N` and the seed's own read loop, each
reading a real stream from a real server: same events, same text, no phantom empty events. A reply
with line breaks of every kind in its text is read by all of them and by both SDKs.
"""

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from moonborn import AsyncMoonborn, Moonborn

from llm.demo import step_output
from tests.conftest import ROOT, LiveServer
from tests.e2e.helpers import LORE_TOOL, SSE, make_persona, make_session, messages, parse_wire, stream_events
from tests.e2e.test_providers import step_of
from tests.fakes.upstream import Answer, Behaviour, FakeUpstream, words

INTEROP = ROOT / "tests" / "interop"
TYPES = {
    "pipeline.started",
    "step.started",
    "step.completed",
    "pipeline.completed",
    "message.started",
    "tool_start",
    "tool_end",
    "token",
    "completed",
    "error",
}
PROMPT = "A lamplighter in a city of canals"
QUESTION = "What does the city sound like at dusk?"
IDS = re.compile(r"^(per|msg|ses|call)_[0-9a-z]+$")

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
                # A step's duration is whole milliseconds; a tool call's, a fraction of one (a JSON number).
                numeric = (int, float) if kind == "tool_end" else (int,)
                assert isinstance(value, numeric) and not isinstance(value, bool) and value >= 0
                clean[key] = "ms"
            else:
                clean[key] = value
        out.append((number, kind, clean))
    return out


def assert_lorebook_call(events: list[Event], name: str) -> None:
    """The reply's lorebook call, as this client read it: `tool_start` then `tool_end`, one `callId`, both right
    after `message.started` and before the first `token`."""
    kinds = [kind for _, kind, _ in events]
    assert kinds[:4] == ["message.started", *LORE_TOOL, "token"], name
    assert kinds.count("tool_start") == kinds.count("tool_end") == 1, name
    (_, _, start), (_, _, end) = events[1:3]
    assert start["callId"].startswith("call_") and IDS.match(start["callId"]), name
    assert end["callId"] == start["callId"], name
    assert (start["tool"], start["args"]) == ("lorebook", {"turn": 1}), name
    assert (end["tool"], end["status"]) == ("lorebook", "ok"), name
    assert set(end["result"]) == {"activated", "skipped", "tokens"}, name


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
    assert kinds == ["message.started", *LORE_TOOL] + ["token"] * 24 + ["completed"]
    assert [number for number, _, _ in reference] == list(range(1, 29))
    assert_lorebook_call(reference, "httpx-sse")
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
        assert_lorebook_call(events, name)

    replay = node("eventsource", f"{server.base_url}/v1/chat/sessions/{session_id}/messages/{message_id}/events", key)
    assert as_events(replay["events"]) == reference
    assert_lorebook_call(as_events(replay["events"]), "eventsource")
    assert (replay["opens"], replay["closedByServer"]) == (1, True)


# U+2028, U+2029 and U+0085 (line breaks to str.splitlines), an emoji and a CRLF, inside deltas and alone in one.
UNICODE_REPLY = (
    "The tide\u2028turns",
    " twice\u2029a day",
    " —\x85 and",
    " the 🌊 hums",
    "\r\nall night",
    "\u2028",
    ".",
)
UNICODE_TEXT = "".join(UNICODE_REPLY)


def unicode_model(body: dict[str, Any]) -> Behaviour:
    """Every pipeline step answered as the demo model would; every chat reply is UNICODE_REPLY."""
    step = step_of(body)
    if step is None:
        return Answer(UNICODE_REPLY)
    return Answer(words(json.dumps(step_output(step, {"prompt": PROMPT}))))


@pytest.fixture(scope="module")
def unicode_server(server_factory: Any) -> Iterator[LiveServer]:
    fake = FakeUpstream("openai").start()
    fake.reset(unicode_model)
    server = server_factory(
        MOONBORN_LLM_PROVIDER="openai",
        MOONBORN_LLM_BASE_URL=fake.url,
        MOONBORN_LLM_API_KEY="test",
        MOONBORN_LLM_MODEL="fake-model",
    )
    yield server
    server.stop()
    fake.stop()


def sdk_events(events: list[Any]) -> list[Event]:
    return [(e.id, e.type, e.data) for e in events]


async def async_sdk_reply(server: LiveServer, session_id: str) -> tuple[list[Event], str]:
    async with AsyncMoonborn(server.keys["alice"], server.base_url) as client:
        stream = await client.chat.stream_message(session_id, QUESTION)
        return sdk_events(await stream.until_done()), stream.text


def test_every_client_and_both_sdks_read_a_reply_with_unicode_line_breaks(unicode_server):
    server = unicode_server
    key = server.keys["alice"]
    persona_id = make_persona(server, prompt=PROMPT)
    body = json.dumps({"content": QUESTION})

    def fresh_url() -> tuple[str, str]:
        session_id = make_session(server, persona_id)
        return session_id, f"{server.base_url}/v1/chat/sessions/{session_id}/messages?stream=true"

    # On the wire the three characters are JSON escapes: no client can find a line break in a data line.
    session_id, _ = fresh_url()
    with server.client() as client:
        raw = client.post(f"/v1/chat/sessions/{session_id}/messages", json={"content": QUESTION}, headers=SSE).content
    assert [b"\xe2\x80\xa8" in raw, b"\xe2\x80\xa9" in raw, b"\xc2\x85" in raw] == [False, False, False]
    wire, _ = parse_wire(raw)
    assert [e.event for e in wire[:3]] == ["message.started", *LORE_TOOL]
    assert [(e.event, e.data.get("delta")) for e in wire[3:-1]] == [("token", delta) for delta in UNICODE_REPLY]
    assert b'data: {"delta":"The tide\\u2028turns"}\n\n' in raw
    assert b'data: {"delta":"\\r\\nall night"}\n\n' in raw
    assert 'data: {"delta":" the 🌊 hums"}\n\n'.encode() in raw

    session_id, _ = fresh_url()
    reference = httpx_sse(server, "POST", f"/v1/chat/sessions/{session_id}/messages?stream=true", {"content": QUESTION})
    assert [kind for _, kind, _ in reference] == ["message.started", *LORE_TOOL] + ["token"] * len(UNICODE_REPLY) + [
        "completed"
    ]
    assert [number for number, _, _ in reference] == list(range(1, len(UNICODE_REPLY) + 5))
    assert_lorebook_call(reference, "httpx-sse")
    assert [data["delta"] for _, kind, data in reference if kind == "token"] == list(UNICODE_REPLY)
    stored = messages(server, session_id)[-1]
    assert (stored["content"], stored["status"]) == (UNICODE_TEXT, "completed")
    message_id = stored["id"]

    results: dict[str, list[Event]] = {}
    texts: dict[str, str] = {}
    for name in ("eventsource-parser", "fetch-event-source", "seed", "moonborn-sdk"):
        session, url = fresh_url()
        read = node(name, url, key, body)
        results[name] = as_events(read["events"])
        assert messages(server, session)[-1]["content"] == UNICODE_TEXT, name
        if "text" in read:
            texts[name] = read["text"]
    session, url = fresh_url()
    results["curl -N"] = curl(url, key, body)
    with Moonborn(key, server.base_url) as client:
        session = make_session(server, persona_id)
        stream = client.chat.stream_message(session, QUESTION)
        results["python sdk"] = sdk_events(stream.until_done())
        texts["python sdk"] = stream.text
        # The resume endpoint, read again from the start by the SDK.
        results["python sdk, replayed"] = sdk_events(client.chat.events(session_id, message_id).until_done())
    session = make_session(server, persona_id)
    results["python sdk, async"], texts["python sdk, async"] = asyncio.run(async_sdk_reply(server, session))
    assert texts == {name: UNICODE_TEXT for name in ("seed", "moonborn-sdk", "python sdk", "python sdk, async")}
    for name, events in results.items():
        assert normalized(events) == normalized(reference), name
        assert "".join(data["delta"] for _, kind, data in events if kind == "token") == UNICODE_TEXT, name
        assert_lorebook_call(events, name)

    replay = node("eventsource", f"{server.base_url}/v1/chat/sessions/{session_id}/messages/{message_id}/events", key)
    assert as_events(replay["events"]) == reference
    assert_lorebook_call(as_events(replay["events"]), "eventsource")
    assert results["python sdk, replayed"] == reference
    assert (replay["opens"], replay["closedByServer"]) == (1, True)
