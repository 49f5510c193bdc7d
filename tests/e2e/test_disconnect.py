"""What a client disconnect does: chat replies cancel (and stop billing), persona runs continue."""

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.helpers import JSON, LORE_TOOL, SSE, make_persona, make_session, messages, parse_wire, wait_for

SLOW = {"MOONBORN_DEMO_DELAY_MS": "40", "MOONBORN_DEMO_REPLY_TOKENS": "400"}


@pytest.fixture(scope="module")
def slow_server(server_factory):
    return server_factory(**SLOW)


def read_until(chunks: Iterator[bytes], n_events: int) -> bytes:
    """Read raw bytes from `chunks` until `n_events` complete frames have arrived.

    Keep a reference to `chunks` to go on reading: a dropped iterator closes the connection.
    """
    body = b""
    for chunk in chunks:
        body += chunk
        if body.count(b"\n\n") >= n_events:
            break
    return body


def usage_for(server, run_id: str) -> dict:
    with server.client() as client:
        records = client.get("/v1/usage").json()["results"]
    return next(r for r in records if r["runId"] == run_id)


def test_chat_reply_stops_within_a_second_of_the_client_closing(slow_server):
    session_id = make_session(slow_server, make_persona(slow_server))
    client = httpx.Client(base_url=slow_server.base_url, headers=slow_server.headers(), timeout=30)
    with client.stream(
        "POST", f"/v1/chat/sessions/{session_id}/messages", json={"content": "Talk to me"}, headers=SSE
    ) as response:
        # message.started, the lorebook's tool_start and tool_end, then five tokens.
        body = read_until(response.iter_raw(), 8)
        closed_at = time.monotonic()
    client.close()
    received = body[: body.rindex(b"\n\n") + 2]
    events, _ = parse_wire(received)
    message_id = events[0].data["messageId"]
    seen_text = "".join(e.data["delta"] for e in events if e.event == "token")

    def cancelled() -> bool:
        return messages(slow_server, session_id)[-1]["status"] == "cancelled"

    wait_for(cancelled, timeout=5)
    assert time.monotonic() - closed_at < 1.0
    reply = messages(slow_server, session_id)[-1]
    assert reply["id"] == message_id
    # The partial reply is kept: at least what the client saw, far less than the whole reply.
    assert reply["content"].startswith(seen_text)
    assert 5 <= len(reply["content"].split()) < 60
    usage = usage_for(slow_server, message_id)
    assert usage["status"] == "cancelled"
    assert usage["completionTokens"] == len(reply["content"].split())
    time.sleep(0.5)
    assert usage_for(slow_server, message_id) == usage


def test_persona_generation_continues_after_the_client_leaves(slow_server):
    with (
        slow_server.client() as client,
        client.stream("POST", "/v1/personas?stream=true", json={"prompt": "A wandering cartographer"}) as response,
    ):
        body = read_until(response.iter_raw(), 2)
    events, _ = parse_wire(body[: body.rindex(b"\n\n") + 2])
    assert [e.event for e in events[:2]] == ["pipeline.started", "step.started"]
    persona_id = events[0].data["personaId"]

    def status() -> str:
        with slow_server.client() as client:
            return str(client.get(f"/v1/personas/{persona_id}").json()["status"])

    wait_for(lambda: status() != "generating", timeout=30)
    assert status() == "ready"


def test_on_disconnect_continue_lets_a_chat_reply_finish(server_factory):
    server = server_factory(MOONBORN_DEMO_DELAY_MS="10", MOONBORN_DEMO_REPLY_TOKENS="60")
    session_id = make_session(server, make_persona(server))
    with (
        server.client() as client,
        client.stream(
            "POST",
            f"/v1/chat/sessions/{session_id}/messages?stream=true&on_disconnect=continue",
            json={"content": "Keep going"},
        ) as response,
    ):
        read_until(response.iter_raw(), 3)
    wait_for(lambda: messages(server, session_id)[-1]["status"] != "streaming", timeout=10)
    reply = messages(server, session_id)[-1]
    assert reply["status"] == "completed"
    assert len(reply["content"].split()) == 60


def test_on_disconnect_cancel_stops_a_persona_generation(slow_server):
    with (
        slow_server.client() as client,
        client.stream(
            "POST", "/v1/personas?stream=true&on_disconnect=cancel", json={"prompt": "A nervous alchemist"}
        ) as response,
    ):
        body = read_until(response.iter_raw(), 2)
    events, _ = parse_wire(body[: body.rindex(b"\n\n") + 2])
    persona_id = events[0].data["personaId"]

    def persona() -> dict:
        with slow_server.client() as client:
            return dict(client.get(f"/v1/personas/{persona_id}").json())

    wait_for(lambda: persona()["status"] != "generating", timeout=5)
    assert persona()["status"] == "cancelled"
    assert usage_for(slow_server, persona_id)["status"] == "cancelled"


def test_cancel_endpoint_stops_a_reply_and_returns_it(slow_server):
    session_id = make_session(slow_server, make_persona(slow_server))
    with (
        slow_server.client() as client,
        client.stream(
            "POST", f"/v1/chat/sessions/{session_id}/messages?stream=true", json={"content": "Go on"}
        ) as response,
    ):
        chunks = response.iter_raw()
        body = read_until(chunks, 4)
        message_id = parse_wire(body[: body.rindex(b"\n\n") + 2])[0][0].data["messageId"]
        with slow_server.client() as other:
            cancelled = other.post(f"/v1/chat/sessions/{session_id}/messages/{message_id}/cancel")
        rest = b"".join(chunks)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    events, _ = parse_wire(body + rest)
    assert events[-1].event == "error"
    assert events[-1].data == {"error": "The run was cancelled.", "code": "cancelled", "retryable": False}
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    tokens = "".join(e.data["delta"] for e in events if e.event == "token")
    assert messages(slow_server, session_id)[-1]["content"] == tokens == cancelled.json()["content"]


def test_cancel_endpoint_stops_a_persona_generation(slow_server):
    with (
        slow_server.client() as client,
        client.stream("POST", "/v1/personas?stream=true", json={"prompt": "A retired stage magician"}) as response,
    ):
        chunks = response.iter_raw()
        body = read_until(chunks, 3)
        persona_id = parse_wire(body[: body.rindex(b"\n\n") + 2])[0][0].data["personaId"]
        with slow_server.client() as other:
            cancelled = other.post(f"/v1/personas/{persona_id}/cancel")
        rest = b"".join(chunks)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    events, _ = parse_wire(body + rest)
    assert events[-1].event == "error" and events[-1].data["code"] == "cancelled"
    steps = cancelled.json()["steps"]
    assert steps[-1]["status"] == "cancelled"
    assert all(s["status"] == "completed" for s in steps[:-1])


def test_a_failed_reply_keeps_what_it_produced(server_factory):
    server = server_factory(MOONBORN_DEMO_FAIL_AFTER_TOKENS="5")
    session_id = make_session(server, make_persona(server))
    with server.client() as client:
        with client.stream(
            "POST", f"/v1/chat/sessions/{session_id}/messages?stream=true", json={"content": "Hello"}
        ) as response:
            events, _ = parse_wire(response.read())
        json_reply = client.post(f"/v1/chat/sessions/{session_id}/messages", json={"content": "Again"}, headers=JSON)
    assert [e.event for e in events] == ["message.started", *LORE_TOOL] + ["token"] * 5 + ["error"]
    assert events[-1].data["code"] == "provider_error"
    assert events[-1].data["retryable"] is True
    stored = messages(server, session_id)
    assert stored[1]["status"] == "failed"
    assert stored[1]["content"] == "".join(e.data["delta"] for e in events[3:8])
    assert json_reply.status_code == 502
    assert json_reply.json()["error"]["code"] == "provider_error"
    assert messages(server, session_id)[-1]["status"] == "failed"


def test_deleting_a_persona_cancels_its_streaming_reply_first(slow_server):
    persona_id = make_persona(slow_server)
    session_id = make_session(slow_server, persona_id)
    with (
        slow_server.client() as c,
        c.stream(
            "POST", f"/v1/chat/sessions/{session_id}/messages?stream=true", json={"content": "Still talking"}
        ) as response,
    ):
        chunks = response.iter_raw()
        head = read_until(chunks, 3)
        with slow_server.client() as other:
            assert other.delete(f"/v1/personas/{persona_id}").status_code == 204
        events, _ = parse_wire(head + b"".join(chunks))
    assert events[-1].event == "error"
    assert events[-1].data == {"error": "The run was cancelled.", "code": "cancelled", "retryable": False}
    with slow_server.client() as c:
        assert c.get(f"/v1/personas/{persona_id}").status_code == 404
        assert c.get(f"/v1/chat/sessions/{session_id}").status_code == 404
