"""One contract for a streamed `POST /v1/chat/sessions/{id}/messages` with an API key, through both entry points.

Such a request is served by the ASGI fast path (`chat.streams.message_create_fast`) unless `MOONBORN_ASGI_FAST_PATH`
is false, when Django's API handler serves it with the view `chat.streams.message_create` like any other request.
Every case below runs once per entry (`[asgi]`, `[django]`) against a server of its own, and asserts one expected
answer, written out whole, for both: so the two answers are the same, to the byte where the wire is compared (error
bodies and headers as sent; streams with their ids, timings, token words and drift figures blanked, since the demo
model's words are seeded by the persona's id and the two servers' personas differ).

One server environment per entry: replies of 8 tokens 150 ms apart, heartbeats after 0.1 s of silence (so a
heartbeat falls in every gap between two tokens, and streams are slow enough to catch in the middle), two runs at
once per user. The slow-client case makes the server's writes block with one large event (a lorebook whose
entries have long names) rather than with a second environment of many fast tokens.
"""

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from httpx_sse import connect_sse

from runs.sse import HEARTBEAT
from tests.conftest import ROOT, LiveServer
from tests.e2e.helpers import SSE, WireEvent, make_session, messages, parse_wire, wait_for
from tests.e2e.test_disconnect import read_until

ENTRIES = {"asgi": "true", "django": "false"}
TOKENS = 8
DELAY_MS = 150
ENV = {
    "MOONBORN_DEMO_DELAY_MS": str(DELAY_MS),
    "MOONBORN_DEMO_REPLY_TOKENS": str(TOKENS),
    "MOONBORN_SSE_HEARTBEAT_SECONDS": "0.1",
    "MOONBORN_MAX_STREAMS_PER_KEY": "2",
    # Tier-1 drift scores would change the stored replies after the fact (and cost a process per server).
    "MOONBORN_DRIFT_TIER1_WORKER": "false",
}

# A card with a lorebook of three entries: a reply consults it (`tool_start`, `tool_end`) before its first token.
CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Mara Quillon",
        "description": "{{char}} keeps the lighthouse on Skerry Rock and trusts no weather app.",
        "personality": "gruff, dry, loyal to {{user}} once earned",
        "scenario": "{{user}} rows out to Skerry Rock in a squall and knocks on {{char}}'s door.",
        "first_mes": "*opens the door a crack* You picked a fine night, {{user}}.",
        "mes_example": "",
        "character_book": {
            "entries": [
                {"id": 1, "keys": ["lighthouse"], "content": "The lighthouse was built in 1871.", "enabled": True},
                {"id": 2, "keys": ["kraken"], "content": "A kraken sleeps under the rock.", "enabled": True},
                {"id": 3, "keys": [], "constant": True, "content": "{{char}} reads the sky.", "enabled": True},
            ]
        },
    },
}
QUESTION = "What keeps the lighthouse lit?"
# The `tool_end` result of QUESTION, as written on the wire.
LORE_RESULT = (
    b'{"activated":[{"entry":"1","name":"","reason":{"kind":"key","key":"lighthouse"}},'
    b'{"entry":"3","name":"","reason":{"kind":"constant"}}],"skipped":[],"tokens":15}'
)

# What every JSON error under /v1/ is sent with, but its date (in order, as sent).
ERROR_HEADERS = [
    ("server", "uvicorn"),
    ("content-type", "application/json"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
    ("transfer-encoding", "chunked"),
]
UNAUTHORIZED_HEADERS = [*ERROR_HEADERS[:2], ("www-authenticate", 'Bearer realm="moonborn"'), *ERROR_HEADERS[2:]]
# A body past the cap is refused at the ASGI edge (moonborn_site.edge), before either entry point.
TOO_LARGE_HEADERS = [
    ("server", "uvicorn"),
    ("content-type", "application/json"),
    ("content-length", "114"),
    ("connection", "close"),
]
# The headers of a stream, but its date and Location (in order, as sent).
SSE_HEADERS = [
    ("server", "uvicorn"),
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
    ("location", "*"),
    ("vary", "Accept"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
    ("transfer-encoding", "chunked"),
]


def error(code: str, message: str, details: str = "{}") -> bytes:
    """An error body exactly as sent (Django's JsonResponse: `json.dumps` with its default separators)."""
    return f'{{"error": {{"code": "{code}", "message": "{message}", "details": {details}}}}}'.encode()


UNAUTHORIZED = error("authentication_failed", "Authentication credentials were not provided or are not valid.")
TOO_LARGE = error("payload_too_large", "The request body is larger than 65536 bytes.")


# -- servers and the world they hold ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(ENTRIES))
def entry(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def live(server_factory: Any, entry: str) -> Iterator[LiveServer]:
    """The entry's server (the tests of one entry run together, then its server stops)."""
    server: LiveServer = server_factory(MOONBORN_ASGI_FAST_PATH=ENTRIES[entry], **ENV)
    yield server
    server.stop()


def import_card(server: LiveServer, card: dict[str, Any] = CARD, user: str = "alice") -> str:
    """A ready persona from a card: instant, where a generated one would take the slow demo model seconds."""
    with server.client(user) as client:
        response = client.post(
            "/v1/personas/import", content=json.dumps(card), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def persona(live: LiveServer) -> str:
    return import_card(live)


@pytest.fixture(scope="module")
def session(live: LiveServer, persona: str) -> str:
    """An idle session of alice's with one finished exchange, for the requests that must change nothing."""
    session_id = make_session(live, persona)
    with live.client() as client:
        response = client.post(f"/v1/chat/sessions/{session_id}/messages?stream=true", json={"content": "Hello"})
    assert response.status_code == 200
    assert messages(live, session_id)[-1]["status"] == "completed"
    return session_id


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One client for the many short requests (a client costs an SSL context to make)."""
    with httpx.Client(timeout=30) as client:
        yield client


def snapshot(http: httpx.Client, server: LiveServer, *users: str) -> dict[str, Any]:
    """Everything of theirs a refused request could have changed: sessions, every message, usage records."""
    state: dict[str, Any] = {}
    for user in users:

        def get(path: str, user: str = user) -> list[dict[str, Any]]:
            response = http.get(f"{server.base_url}{path}", headers=server.headers(user))
            assert response.status_code == 200, response.text
            return list(response.json()["results"])

        sessions = get("/v1/chat/sessions?limit=200")
        state[user] = {
            "sessions": sessions,
            "messages": {s["id"]: get(f"/v1/chat/sessions/{s['id']}/messages?limit=200") for s in sessions},
            "usage": get("/v1/usage?limit=200"),
        }
    return state


def rows(state: dict[str, Any]) -> dict[str, Any]:
    """A snapshot's rows only (for a snapshot taken while a reply streams: its content and times move on)."""
    return {
        user: {
            "messages": {sid: [(m["id"], m["role"]) for m in found] for sid, found in mine["messages"].items()},
            "usage": [u["runId"] for u in mine["usage"]],
        }
        for user, mine in state.items()
    }


# -- requests ---------------------------------------------------------------------------------------------------

# The two ways to ask for a stream (api.md, "Stream or JSON"); each case is sent both ways.
FORMS = ("accept", "query")


def stream_request(
    server: LiveServer,
    session_id: str,
    form: str,
    *,
    query: str = "",
    user: str = "alice",
    headers: list[tuple[str, str]] | None = None,
    **body: Any,
) -> httpx.Request:
    """A streamed POST of a message, asked for with `Accept: text/event-stream` or with `?stream=true`."""
    params = [query] if query else []
    wanted = [("Accept", "text/event-stream")]
    if form == "query":
        params.insert(0, "stream=true")
        wanted = []
    url = f"{server.base_url}/v1/chat/sessions/{session_id}/messages" + ("?" + "&".join(params) if params else "")
    credentials = headers if headers is not None else [("Authorization", f"Bearer {server.keys[user]}")]
    if "json" in body:
        body = {"content": json.dumps(body.pop("json")).encode()}
    return httpx.Request("POST", url, headers=[*credentials, *wanted, ("Content-Type", "application/json")], **body)


def headers_of(response: httpx.Response) -> list[tuple[str, str]]:
    """The response's headers in order, as sent, but its date; a stream's Location as `*`."""
    return [
        (name, "*" if name == "location" else value) for name, value in response.headers.multi_items() if name != "date"
    ]


def assert_refused(
    response: httpx.Response, status: int, body: bytes, headers: list[tuple[str, str]] = ERROR_HEADERS
) -> None:
    """The whole answer: status, the body's bytes, every header as sent (its date aside)."""
    answer = f"{response.status_code} {response.headers.get('content-type')}: {response.content[:300]!r}"
    assert (response.status_code, response.content, headers_of(response)) == (status, body, headers), answer


# -- 1. errors that change nothing ------------------------------------------------------------------------------


def chunked(body: bytes) -> Callable[[], Iterator[bytes]]:
    """A body sent with `Transfer-Encoding: chunked` (no length declared: the cap is met while it arrives)."""

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 16384):
            yield body[start : start + 16384]

    return pieces


OVER_THE_CAP = b'{"content": "' + b"y" * 65536 + b'"}'
S = "{session}"

# (name, session, query, body, credentials, status, error body, headers); `{session}` is alice's idle session.
ERRORS: list[tuple[str, str, str, Any, Any, int, bytes, list[tuple[str, str]]]] = [
    (
        "unknown key",
        S,
        "",
        {"content": "Hi"},
        [("Authorization", "Bearer mb_00000000_not-a-real-key")],
        401,
        UNAUTHORIZED,
        UNAUTHORIZED_HEADERS,
    ),
    (
        "bearer without a key",
        S,
        "",
        {"content": "Hi"},
        [("Authorization", "Bearer")],
        401,
        UNAUTHORIZED,
        UNAUTHORIZED_HEADERS,
    ),
    (
        "malformed json",
        S,
        "",
        b'{"content"',
        None,
        400,
        error("invalid_json", "Malformed JSON: Expecting ':' delimiter: line 1 column 11 (char 10)."),
        ERROR_HEADERS,
    ),
    (
        "empty body",
        S,
        "",
        b"",
        None,
        400,
        error("validation_error", "The request body must be a JSON object."),
        ERROR_HEADERS,
    ),
    (
        "not an object",
        S,
        "",
        b'["Hi"]',
        None,
        400,
        error("validation_error", "The request body must be a JSON object, not list."),
        ERROR_HEADERS,
    ),
    (
        "missing content",
        S,
        "",
        {},
        None,
        400,
        error("validation_error", "content: This field is required.", '{"content": ["This field is required."]}'),
        ERROR_HEADERS,
    ),
    (
        "blank content",
        S,
        "",
        {"content": " \n\t "},
        None,
        400,
        error(
            "validation_error", "content: This field may not be blank.", '{"content": ["This field may not be blank."]}'
        ),
        ERROR_HEADERS,
    ),
    (
        "content not a string",
        S,
        "",
        {"content": 5},
        None,
        400,
        error("validation_error", "content: Not a valid string.", '{"content": ["Not a valid string."]}'),
        ERROR_HEADERS,
    ),
    (
        "content too long",
        S,
        "",
        {"content": "y" * 8001},
        None,
        400,
        error(
            "validation_error",
            "content: Ensure this field has no more than 8000 characters.",
            '{"content": ["Ensure this field has no more than 8000 characters."]}',
        ),
        ERROR_HEADERS,
    ),
    (
        "bad on_disconnect",
        S,
        "on_disconnect=maybe",
        {"content": "Hi"},
        None,
        400,
        error("validation_error", "on_disconnect must be cancel or continue."),
        ERROR_HEADERS,
    ),
    (
        "bad stream flag",
        S,
        "stream=perhaps",
        {"content": "Hi"},
        None,
        400,
        error("validation_error", "stream must be true or false."),
        ERROR_HEADERS,
    ),
    (
        "unknown session",
        "ses_nope",
        "",
        {"content": "Hi"},
        None,
        404,
        error("not_found", "No chat session ses_nope."),
        ERROR_HEADERS,
    ),
    (
        "another owner's session",
        S,
        "",
        {"content": "Hi"},
        "bob",
        404,
        error("not_found", "No chat session {session}."),
        ERROR_HEADERS,
    ),
    ("body over the cap", S, "", OVER_THE_CAP, None, 413, TOO_LARGE, TOO_LARGE_HEADERS),
    ("chunked body over the cap", S, "", chunked(OVER_THE_CAP), None, 413, TOO_LARGE, TOO_LARGE_HEADERS),
    # A parameter or header given twice: Django reads a query parameter's last value and joins a repeated header's
    # values (api.md's answer is the Django view's).
    (
        "on_disconnect twice, the last one bad",
        S,
        "on_disconnect=cancel&on_disconnect=maybe",
        {"content": "Hi"},
        None,
        400,
        error("validation_error", "on_disconnect must be cancel or continue."),
        ERROR_HEADERS,
    ),
    (
        "two Authorization headers",
        S,
        "",
        {"content": "Hi"},
        "alice+bob",
        401,
        UNAUTHORIZED,
        UNAUTHORIZED_HEADERS,
    ),
]


@pytest.mark.parametrize(
    ("name", "target", "query", "body", "credentials", "status", "expected", "headers"),
    ERRORS,
    ids=[case[0] for case in ERRORS],
)
def test_an_error_is_the_same_whole_answer_and_changes_nothing(
    http, live, session, name, target, query, body, credentials, status, expected, headers
):
    target = target.format(session=session)
    if credentials == "bob":
        credentials = [("Authorization", f"Bearer {live.keys['bob']}")]
    elif credentials == "alice+bob":
        credentials = [("Authorization", f"Bearer {live.keys[user]}") for user in ("alice", "bob")]
    before = snapshot(http, live, "alice", "bob")
    for form in FORMS:
        if "stream=" in query and form == "query":
            continue
        content = body() if callable(body) else body
        kwargs = {"json": content} if isinstance(content, dict) else {"content": content}
        response = http.send(stream_request(live, target, form, query=query, headers=credentials, **kwargs))
        assert_refused(response, status, expected.replace(b"{session}", session.encode()), headers)
    assert snapshot(http, live, "alice", "bob") == before


def test_a_repeated_stream_flag_is_read_as_django_reads_it(live, persona):
    """`?stream=true&stream=false` is `stream=false` to Django (a QueryDict's last value): the JSON answer."""
    session_id = make_session(live, persona)
    with live.client() as client:
        response = client.post(
            f"/v1/chat/sessions/{session_id}/messages?stream=true&stream=false", json={"content": "Hi"}
        )
    stored = messages(live, session_id)
    assert (response.status_code, response.headers["content-type"]) == (201, "application/json")
    assert response.json()["messageId"] == stored[-1]["id"]


# In one Django process: two keys for carol (the second to look at her messages once the first is revoked), then,
# on a line from stdin, the first one's revocation (a `manage.py` command costs seconds of start-up).
KEYS_THEN_REVOKE = """
import sys
from django.core.management import call_command
call_command("create_api_key", "carol")
call_command("create_api_key", "carol")
sys.stdout.flush()
key = sys.stdin.readline().strip()
call_command("revoke_api_key", key)
"""


def test_a_revoked_key_is_401_even_after_it_streamed(http, live):
    """The fast path keeps key → owner for its concurrency check; the turn itself authenticates the key again."""
    with subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-c", KEYS_THEN_REVOKE],
        cwd=ROOT,
        env=live.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as keys:
        assert keys.stdin is not None and keys.stdout is not None
        made: list[str] = []
        while len(made) < 2:  # the keys, each alone on its line (the shell may print a banner first)
            line = keys.stdout.readline()
            assert line, "the key-making process ended early"
            if line.startswith("mb_"):
                made.append(line.strip())
        live.keys["carol"], live.keys["carol-spare"] = made
        persona_id = import_card(live, user="carol")
        session_id = make_session(live, persona_id, user="carol")
        with live.client("carol") as client:
            # One stream with the key, whole: on the fast path its owner is now known without the database.
            response = client.post(f"/v1/chat/sessions/{session_id}/messages", json={"content": "Hi"}, headers=SSE)
        assert response.status_code == 200
        before = messages(live, session_id, user="carol")
        assert [m["status"] for m in before] == ["completed", "completed"]
        keys.stdin.write(live.keys["carol"] + "\n")
        keys.stdin.close()
        assert keys.stdout.read().startswith("Revoked ")
        assert keys.wait(timeout=60) == 0
    for form in FORMS:
        response = http.send(stream_request(live, session_id, form, user="carol", json={"content": "Still me?"}))
        assert_refused(response, 401, UNAUTHORIZED, UNAUTHORIZED_HEADERS)
    assert messages(live, session_id, user="carol-spare") == before


def first_frames(response: httpx.Response, n: int) -> tuple[list[WireEvent], Iterator[bytes]]:
    """The first `n` events of an open stream, and its chunk iterator (keep it to go on reading)."""
    chunks = response.iter_raw()
    head = read_until(chunks, n)
    events, _ = parse_wire(head[: head.rindex(b"\n\n") + 2])
    return events, chunks


def test_a_message_while_a_reply_streams_is_409(http, live, persona):
    session_id = make_session(live, persona)
    with (
        live.client() as client,
        client.stream(
            "POST", f"/v1/chat/sessions/{session_id}/messages", json={"content": QUESTION}, headers=SSE
        ) as streaming,
    ):
        (started, *_), _chunks = first_frames(streaming, 1)
        before = snapshot(http, live, "alice")
        for form in FORMS:
            response = http.send(stream_request(live, session_id, form, json={"content": "Me too"}))
            assert_refused(
                response,
                409,
                error("conflict", "A reply is still being generated in this session; wait for it or cancel it."),
            )
        assert rows(snapshot(http, live, "alice")) == rows(before)
    # The stream closed: its reply is cancelled, and the session takes messages again.
    wait_for(lambda: messages(live, session_id)[-1]["status"] == "cancelled", timeout=5)
    assert messages(live, session_id)[-1]["id"] == started.data["messageId"]


def test_one_run_over_the_users_limit_is_429(http, live):
    """MOONBORN_MAX_STREAMS_PER_KEY=2: bob's third run at once is refused (bob's: no other test keeps his runs)."""
    persona_id = import_card(live, user="bob")
    busy = [make_session(live, persona_id, user="bob") for _ in range(2)]
    idle = make_session(live, persona_id, user="bob")
    with ExitStack() as stack:
        client = stack.enter_context(live.client("bob"))
        # Each stream's chunk iterator is kept: a dropped one would close its stream (and so end its run).
        open_streams = [
            first_frames(
                stack.enter_context(
                    client.stream(
                        "POST", f"/v1/chat/sessions/{session_id}/messages?stream=true", json={"content": "Hi"}
                    )
                ),
                1,
            )
            for session_id in busy
        ]
        before = snapshot(http, live, "bob")
        for form in FORMS:
            response = http.send(stream_request(live, idle, form, user="bob", json={"content": "Me too"}))
            assert_refused(
                response,
                429,
                error("rate_limited", "At most 2 runs may go at once; wait for one to finish."),
                [*ERROR_HEADERS[:2], ("retry-after", "1"), *ERROR_HEADERS[2:]],
            )
        assert rows(snapshot(http, live, "bob")) == rows(before)
        assert messages(live, idle, user="bob") == []
        assert len(open_streams) == 2
    for session_id in busy:
        wait_for(
            lambda session_id=session_id: messages(live, session_id, "bob")[-1]["status"] == "cancelled", timeout=5
        )


# -- 2. a successful stream --------------------------------------------------------------------------------------

HEARTBEAT_LINE = re.compile(rb"^: heartbeat\n", re.MULTILINE)


def skeleton(body: bytes) -> bytes:
    """The wire with heartbeats left out and what differs between two servers' runs blanked: message and call ids,
    timings, the token words and the drift figures."""
    body = HEARTBEAT_LINE.sub(b"", body)
    body = re.sub(rb"\b(msg|call)_[0-9a-z]{26}\b", rb"\1_*", body)
    body = re.sub(rb'"delta":"(?:[^"\\]|\\.)*"', b'"delta":"*"', body)
    body = re.sub(rb'"(durationMs|driftScore|driftThreshold)":[-0-9.e]+', rb'"\1":*', body)
    return re.sub(rb'"drifted":(?:true|false)', b'"drifted":*', body)


def expected_skeleton(*, turn: int = 1, tokens: int = TOKENS) -> bytes:
    """The whole wire of a reply to QUESTION, as `skeleton` leaves it."""
    return b"".join(
        [
            b"retry: 3000\n",
            b'id: 1\nevent: message.started\ndata: {"messageId":"msg_*","userMessageId":"msg_*"}\n\n',
            b'id: 2\nevent: tool_start\ndata: {"callId":"call_*","tool":"lorebook","args":{"turn":%d}}\n\n' % turn,
            b'id: 3\nevent: tool_end\ndata: {"callId":"call_*","tool":"lorebook","status":"ok","result":'
            + LORE_RESULT
            + b',"durationMs":*}\n\n',
            *(b'id: %d\nevent: token\ndata: {"delta":"*"}\n\n' % (4 + i) for i in range(tokens)),
            b'id: %d\nevent: completed\ndata: {"messageId":"msg_*","driftScore":*,"driftThreshold":*,"drifted":*}\n\n'
            % (4 + tokens),
        ]
    )


def assert_reply_stored(server: LiveServer, session_id: str, events: list[WireEvent], content: str = QUESTION) -> None:
    """The stream's events are the stored exchange: ids, the reply's words, its drift figures."""
    stored = messages(server, session_id)[-2:]
    started, completed = events[0].data, events[-1].data
    assert [(m["id"], m["role"], m["status"]) for m in stored] == [
        (started["userMessageId"], "user", "completed"),
        (started["messageId"], "assistant", "completed"),
    ]
    assert stored[0]["content"] == content
    assert stored[1]["content"] == "".join(e.data["delta"] for e in events if e.event == "token")
    assert (stored[1]["driftScore"], stored[1]["driftThreshold"]) == (
        completed["driftScore"],
        completed["driftThreshold"],
    )
    assert completed["drifted"] is (completed["driftScore"] > completed["driftThreshold"])


def test_a_successful_stream_is_the_whole_expected_wire(live, persona):
    session_id = make_session(live, persona)
    with (
        live.client() as client,
        client.stream(
            "POST",
            f"/v1/chat/sessions/{session_id}/messages",
            json={"content": QUESTION},
            headers={**SSE, "Accept-Encoding": "gzip"},
        ) as response,
    ):
        body = response.read()
    assert (response.status_code, headers_of(response)) == (200, SSE_HEADERS)
    assert body.startswith(b"retry: 3000\nid: 1\nevent: message.started\n")
    events, _ = parse_wire(body)
    assert [e.event for e in events] == ["message.started", "tool_start", "tool_end", *["token"] * TOKENS, "completed"]
    assert [e.id for e in events] == list(range(1, TOKENS + 5))
    assert skeleton(body) == expected_skeleton()
    message_id = events[0].data["messageId"]
    assert response.headers["location"] == f"/v1/chat/sessions/{session_id}/messages/{message_id}"
    assert events[1].data["callId"] == events[2].data["callId"]
    assert events[-1].data["messageId"] == message_id
    assert_reply_stored(live, session_id, events)


# -- 3. disconnect ----------------------------------------------------------------------------------------------


def test_a_client_that_leaves_cancels_the_reply_within_a_second(live, persona):
    session_id = make_session(live, persona)
    with (
        live.client() as client,
        client.stream(
            "POST", f"/v1/chat/sessions/{session_id}/messages", json={"content": QUESTION}, headers=SSE
        ) as response,
    ):
        # message.started, the lorebook's tool_start and tool_end, then three tokens.
        events, _chunks = first_frames(response, 6)
    closed_at = time.monotonic()
    seen = "".join(e.data["delta"] for e in events if e.event == "token")
    wait_for(lambda: messages(live, session_id)[-1]["status"] != "streaming", timeout=5)
    assert time.monotonic() - closed_at < 1.0
    reply = messages(live, session_id)[-1]
    assert (reply["id"], reply["status"]) == (events[0].data["messageId"], "cancelled")
    assert reply["content"].startswith(seen)
    assert 3 <= len(reply["content"].split()) < TOKENS
    with live.client() as client:
        usage = next(u for u in client.get("/v1/usage").json()["results"] if u["runId"] == reply["id"])
    assert (usage["status"], usage["completionTokens"]) == ("cancelled", len(reply["content"].split()))


def test_on_disconnect_continue_finishes_the_reply_after_the_client_leaves(live, persona):
    session_id = make_session(live, persona)
    with (
        live.client() as client,
        client.stream(
            "POST",
            f"/v1/chat/sessions/{session_id}/messages?stream=true&on_disconnect=continue",
            json={"content": QUESTION},
        ) as response,
    ):
        events, _chunks = first_frames(response, 4)
    seen = "".join(e.data["delta"] for e in events if e.event == "token")
    wait_for(lambda: messages(live, session_id)[-1]["status"] != "streaming", timeout=10)
    reply = messages(live, session_id)[-1]
    assert (reply["id"], reply["status"]) == (events[0].data["messageId"], "completed")
    assert reply["content"].startswith(seen)
    assert len(reply["content"].split()) == TOKENS


# -- 4. heartbeats ----------------------------------------------------------------------------------------------

SSE_CONTENT = {"Content-Type": "text/event-stream; charset=utf-8"}


def test_a_quiet_stream_gets_heartbeat_lines_between_its_events(live, persona):
    """A token every 150 ms, a heartbeat owed after 100 ms of silence: one or more in every gap before a token."""
    session_id = make_session(live, persona)
    with live.client() as client:
        response = client.post(f"/v1/chat/sessions/{session_id}/messages?stream=true", json={"content": QUESTION})
    body = response.content
    assert response.status_code == 200
    events, heartbeats = parse_wire(body)  # strict: a heartbeat is `: heartbeat\n`, then the next frame directly
    assert HEARTBEAT == b": heartbeat\n"
    assert b": heartbeat\n\n" not in body
    marks = re.findall(rb"^(?:: heartbeat|event: ([a-z_.]+))$", body, re.MULTILINE)
    shape = re.sub(r"(HB )+", "HB ", " ".join(mark.decode() or "HB" for mark in marks) + " ").split()
    # Heartbeats (a run of them as one `HB`) fall where the stream is quiet: before every token, the model's pace;
    # and before `completed` when storing the reply outlasts the interval.
    quiet = ["message.started", "tool_start", "tool_end", *["HB", "token"] * TOKENS]
    assert shape in ([*quiet, "completed"], [*quiet, "HB", "completed"])
    assert heartbeats >= TOKENS
    assert skeleton(body) == expected_skeleton()
    assert_reply_stored(live, session_id, events)
    # A real SSE client sees the same events and nothing for the heartbeats.
    replay = httpx.MockTransport(lambda request: httpx.Response(200, headers=SSE_CONTENT, content=body))
    with httpx.Client(transport=replay) as client, connect_sse(client, "GET", "http://replay/") as source:
        seen = [(int(sse.id), sse.event, json.loads(sse.data)) for sse in source.iter_sse()]
    assert seen == [(e.id, e.event, e.data) for e in events]


# -- 5. a slow client -------------------------------------------------------------------------------------------

# 300 entries with 2,000-character names: the reply's `tool_end` lists each (activated or left out by the budget),
# ~0.6 MB in one event. A client with a small receive window and segment size keeps the server's socket buffer small
# too: while it does not read, ~0.1 MB waits in the kernel (`ss`: Send-Q ~90 KB, its Recv-Q ~6 KB) and the rest in
# the server, whose write is blocked until the client reads again.
BIG_NAMES = [f"{n:03d} " + "n" * 1996 for n in range(300)]
BIG_CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        **CARD["data"],
        "character_book": {
            "token_budget": 50,
            "entries": [
                {"id": n, "name": name, "keys": [], "constant": True, "content": "The lamp is lit.", "enabled": True}
                for n, name in enumerate(BIG_NAMES)
            ],
        },
    },
}


def open_raw_stream(server: LiveServer, session_id: str, content: str) -> tuple[socket.socket, bytes]:
    """POST a streamed message on a socket whose receive window is small; return it and what has arrived (the
    response head at least)."""
    parts = urlsplit(server.base_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.settimeout(30)
    sock.connect((parts.hostname, parts.port))
    body = json.dumps({"content": content}).encode()
    sock.sendall(
        f"POST /v1/chat/sessions/{session_id}/messages HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {server.keys['alice']}\r\nAccept: text/event-stream\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(512)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return sock, head + b"\r\n\r\n" + rest


def dechunk(data: bytes) -> bytes:
    """A chunked HTTP/1.1 body, whole (up to its last, empty chunk)."""
    body = bytearray()
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(body)
        body += data[:size]
        assert data[size : size + 2] == b"\r\n"
        data = data[size + 2 :]


def test_a_slow_client_gets_every_event_once_in_order(live):
    persona_id = import_card(live, BIG_CARD)
    session_id = make_session(live, persona_id)
    sock, received = open_raw_stream(live, session_id, QUESTION)
    with sock:
        # The client stops reading: the reply goes on to its end regardless, its events waiting for the client.
        wait_for(lambda: messages(live, session_id)[-1]["status"] != "streaming", timeout=15)
        # Then it reads again, in small pieces, with pauses.
        reads = 0
        while True:
            chunk = sock.recv(2048)
            if not chunk:
                break
            received += chunk
            reads += 1
            if reads % 64 == 0:
                time.sleep(0.01)
    head, _, chunked_body = received.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    assert b"\r\ntransfer-encoding: chunked\r\n" in head.lower() + b"\r\n"
    body = dechunk(chunked_body)
    events, _ = parse_wire(body)
    assert [e.event for e in events] == ["message.started", "tool_start", "tool_end", *["token"] * TOKENS, "completed"]
    assert [e.id for e in events] == list(range(1, TOKENS + 5))
    result = events[2].data["result"]
    assert sorted(r["name"] for r in result["activated"] + result["skipped"]) == BIG_NAMES
    assert len(body) > 600_000
    assert_reply_stored(live, session_id, events)
