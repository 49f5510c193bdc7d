"""The Python SDK's stream reading and where it sends its key, against scripted HTTP answers (httpx.MockTransport)."""

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from moonborn import (
    AsyncMoonborn,
    Completed,
    MessageStarted,
    Moonborn,
    MoonbornError,
    Token,
    ToolEnd,
    ToolStart,
    UnknownEvent,
)
from moonborn._sse import LineSplitter
from moonborn._streaming import same_origin_location

KEY = "mb_test"
BASE = "http://api.test"
POST_URL = f"{BASE}/v1/chat/sessions/ses_1/messages?on_disconnect=continue"
LOCATION = "/v1/chat/sessions/ses_1/messages/msg_1"
SSE = {"Content-Type": "text/event-stream; charset=utf-8", "Location": LOCATION}
# U+2028, U+2029 and U+0085 raw inside the JSON, as a server may write them (JSON allows it), with every line
# ending SSE knows: CRLF, CR alone, LF.
BODY = (
    "retry: 3000\r\n"
    'id: 1\r\nevent: message.started\r\ndata: {"messageId":"msg_1","userMessageId":"msg_0"}\r\n\r\n'
    'id: 2\revent: token\rdata: {"delta":"one\u2028two\u2029"}\r\r'
    'id: 3\nevent: token\ndata: {"delta":"three\x85four 😀\\r\\nfive"}\n\n'
    'id: 4\nevent: completed\ndata: {"messageId":"msg_1","driftScore":0.25,"driftThreshold":0.5,"drifted":false}\n\n'
).encode()
TEXT = "one\u2028two\u2029three\x85four 😀\r\nfive"


# The lorebook's tool call before the first token, then an event type this SDK does not know (a newer server's).
LORE = {
    "activated": [{"entry": "3", "name": "The lamp", "reason": {"kind": "constant"}}],
    "skipped": [{"entry": "7", "name": "Kraken", "reason": {"kind": "budget", "tokens": 90, "budget": 64, "used": 40}}],
    "tokens": 12,
}
TOOL_BODY = (
    'id: 1\nevent: message.started\ndata: {"messageId":"msg_1","userMessageId":"msg_0"}\n\n'
    'id: 2\nevent: tool_start\ndata: {"callId":"call_1","tool":"lorebook","args":{"turn":1}}\n\n'
    'id: 3\nevent: tool_end\ndata: {"callId":"call_1","tool":"lorebook","status":"ok","result":'
    + json.dumps(LORE, separators=(",", ":"))
    + ',"durationMs":0.31}\n\n'
    'id: 4\nevent: memory.recalled\ndata: {"items":[1,2]}\n\n'
    'id: 5\nevent: token\ndata: {"delta":"Hello"}\n\n'
    'id: 6\nevent: completed\ndata: {"messageId":"msg_1","driftScore":0.1,"driftThreshold":0.5,"drifted":false}\n\n'
).encode()
TOOL_TYPES = [MessageStarted, ToolStart, ToolEnd, UnknownEvent, Token, Completed]


def assert_tool_events(events: list[Any]) -> None:
    assert [type(e) for e in events] == TOOL_TYPES
    assert [e.id for e in events] == [1, 2, 3, 4, 5, 6]
    start, end, unknown = events[1], events[2], events[3]
    assert (start.type, start.call_id, start.tool, start.args) == ("tool_start", "call_1", "lorebook", {"turn": 1})
    assert (end.type, end.call_id, end.tool, end.status) == ("tool_end", "call_1", "lorebook", "ok")
    assert (end.result, end.duration_ms) == (LORE, 0.31)
    assert (unknown.type, unknown.data) == ("memory.recalled", {"items": [1, 2]})


def chunks(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def sync_client(handle: Callable[[httpx.Request], httpx.Response], **kwargs: object) -> Moonborn:
    http = httpx.Client(transport=httpx.MockTransport(handle), **kwargs)  # type: ignore[arg-type]
    return Moonborn(KEY, BASE, http_client=http, reconnect_delay=0)


def async_client(handle: Callable[[httpx.Request], httpx.Response], **kwargs: object) -> AsyncMoonborn:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handle), **kwargs)  # type: ignore[arg-type]
    return AsyncMoonborn(KEY, BASE, http_client=http, reconnect_delay=0)


async def trickle(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_line_splitter_cuts_only_at_cr_lf_and_crlf():
    splitter = LineSplitter()
    lines = []
    # A BOM, a UTF-8 sequence cut between chunks, CR then LF in two chunks (one CRLF), a CR alone.
    for chunk in [b"\xef\xbb\xbfa\xe2\x80", b"\xa8b\r", b"\nc\xc2\x85d\r", b"\r", b"\ne\xe2\x80\xa9\n", b"f"]:
        lines += splitter.feed(chunk)
    assert lines == ["a\u2028b", "c\x85d", "", "e\u2029"]


@pytest.mark.parametrize("size", [1, 2, 7, len(BODY)])
def test_sync_stream_reads_unicode_line_breaks_inside_the_data(size):
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, headers=SSE, content=iter(chunks(BODY, size)))

    with sync_client(handle) as client:
        stream = client.chat.stream_message("ses_1", "hi")
        events = stream.until_done()
    assert [type(e) for e in events] == [MessageStarted, Token, Token, Completed]
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert [e.delta for e in events if isinstance(e, Token)] == ["one\u2028two\u2029", "three\x85four 😀\r\nfive"]
    assert stream.text == TEXT
    assert (stream.done, stream.location) == (True, LOCATION)
    assert [str(r.url) for r in requests] == [POST_URL]


@pytest.mark.parametrize("size", [1, 7, len(BODY)])
async def test_async_stream_reads_unicode_line_breaks_inside_the_data(size):
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, content=trickle(chunks(BODY, size)))

    async with async_client(handle) as client:
        stream = await client.chat.stream_message("ses_1", "hi")
        events = await stream.until_done()
    assert [type(e) for e in events] == [MessageStarted, Token, Token, Completed]
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert stream.text == TEXT


@pytest.mark.parametrize(
    ("location", "kept"),
    [
        (LOCATION, LOCATION),
        (f"{BASE}{LOCATION}", f"{BASE}{LOCATION}"),
        (f"HTTP://API.test:80{LOCATION}", f"{BASE}{LOCATION}"),
        ("msg_1", f"{BASE}/msg_1"),
    ],
)
def test_a_location_on_the_base_urls_origin_is_kept(location, kept):
    assert same_origin_location(httpx.URL(f"{BASE}/"), location) == kept


@pytest.mark.parametrize(
    "location",
    [
        "https://evil.example/v1/chat/sessions/ses_1/messages/msg_1",
        "//evil.example/v1/chat/sessions/ses_1/messages/msg_1",
        f"https://api.test{LOCATION}",
        f"http://api.test:8080{LOCATION}",
        "javascript:alert(1)",
        "http://[::1",
    ],
)
def test_a_location_on_another_origin_is_refused_before_the_key_goes_there(location):
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.method != "POST":
            return httpx.Response(204)
        # The stream ends before its terminal event: a client would resume at the Location.
        started = b'id: 1\nevent: message.started\ndata: {"messageId":"msg_1","userMessageId":"msg_0"}\n\n'
        return httpx.Response(200, headers={**SSE, "Location": location}, content=iter([started]))

    with sync_client(handle) as client, pytest.raises(MoonbornError, match="Refusing the stream's Location") as refused:
        client.chat.stream_message("ses_1", "hi").until_done()
    assert str(refused.value) == (
        f"Refusing the stream's Location {location!r}: it is not on http://api.test,"
        " and the client sends its API key only there."
    )
    assert [(str(r.url), r.headers["Authorization"]) for r in requests] == [(POST_URL, f"Bearer {KEY}")]


def test_a_stream_resumes_at_an_absolute_location_on_the_base_urls_origin():
    requests: list[httpx.Request] = []
    first, rest = BODY.split(b"id: 3\n")

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.method == "POST":
            return httpx.Response(200, headers={**SSE, "Location": f"{BASE}{LOCATION}"}, content=iter([first]))
        return httpx.Response(200, headers={**SSE, "Location": f"{BASE}{LOCATION}"}, content=iter([b"id: 3\n" + rest]))

    with sync_client(handle) as client:
        stream = client.chat.stream_message("ses_1", "hi")
        events = stream.until_done()
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert stream.text == TEXT
    assert [(r.method, str(r.url), r.headers["Authorization"], r.headers.get("Last-Event-ID")) for r in requests] == [
        ("POST", POST_URL, f"Bearer {KEY}", None),
        ("GET", f"{BASE}{LOCATION}/events", f"Bearer {KEY}", "2"),
    ]


def redirecting(seen: list[tuple[str, str | None]]) -> Callable[[httpx.Request], httpx.Response]:
    """http://api.test → https://api.test (httpx keeps Authorization there) → http://evil.example."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("Authorization")))
        if request.url.host == "evil.example":
            return httpx.Response(200, json={"results": [], "next": None})
        if request.url.scheme == "http":
            return httpx.Response(307, headers={"Location": "https://api.test/v1/personas"})
        return httpx.Response(302, headers={"Location": "http://evil.example/v1/personas"})

    return handle


def test_a_callers_client_that_follows_redirects_sends_the_key_only_to_the_base_urls_origin():
    seen: list[tuple[str, str | None]] = []
    with sync_client(redirecting(seen), follow_redirects=True) as client:
        assert client.personas.list() == {"results": [], "next": None}
    assert seen == [
        (f"{BASE}/v1/personas", f"Bearer {KEY}"),
        ("https://api.test/v1/personas", None),
        ("http://evil.example/v1/personas", None),
    ]


async def test_an_async_client_that_follows_redirects_sends_the_key_only_to_the_base_urls_origin():
    seen: list[tuple[str, str | None]] = []
    async with async_client(redirecting(seen), follow_redirects=True) as client:
        assert await client.personas.list() == {"results": [], "next": None}
    assert seen == [
        (f"{BASE}/v1/personas", f"Bearer {KEY}"),
        ("https://api.test/v1/personas", None),
        ("http://evil.example/v1/personas", None),
    ]


@pytest.mark.parametrize("size", [1, 9, len(TOOL_BODY)])
def test_sync_stream_types_the_tool_events_and_keeps_an_unknown_event_without_failing(size: int) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, content=iter(chunks(TOOL_BODY, size)))

    with sync_client(handle) as client:
        stream = client.chat.stream_message("ses_1", "hi")
        events = stream.until_done()
    assert_tool_events(events)
    assert (stream.text, stream.done, stream.last_event_id) == ("Hello", True, 6)


@pytest.mark.parametrize("size", [1, len(TOOL_BODY)])
async def test_async_stream_types_the_tool_events_and_keeps_an_unknown_event_without_failing(size: int) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, content=trickle(chunks(TOOL_BODY, size)))

    async with async_client(handle) as client:
        stream = await client.chat.stream_message("ses_1", "hi")
        events = await stream.until_done()
    assert_tool_events(events)
    assert (stream.text, stream.done, stream.last_event_id) == ("Hello", True, 6)
