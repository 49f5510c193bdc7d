"""Resume with Last-Event-ID, 204 after the end, and several followers of one run."""

import threading

import httpx
import pytest

from tests.e2e.helpers import LORE_TOOL, SSE, make_persona, make_session, parse_wire
from tests.e2e.test_disconnect import read_until


def test_resume_replays_exactly_the_missing_events_then_follows_live(server_factory):
    server = server_factory(MOONBORN_DEMO_DELAY_MS="20", MOONBORN_DEMO_REPLY_TOKENS="60")
    session_id = make_session(server, make_persona(server))
    with server.client() as client:
        with client.stream(
            "POST",
            f"/v1/chat/sessions/{session_id}/messages?on_disconnect=continue",
            json={"content": "A long tale, please"},
            headers=SSE,
        ) as response:
            body = read_until(response.iter_raw(), 10)
        first, _ = parse_wire(body[: body.rindex(b"\n\n") + 2])
        message_id = first[0].data["messageId"]
        last_seen = first[-1].id
        url = f"/v1/chat/sessions/{session_id}/messages/{message_id}/events"
        with client.stream("GET", url, headers={**SSE, "Last-Event-ID": str(last_seen)}) as resumed:
            assert resumed.status_code == 200
            assert resumed.headers["content-type"] == "text/event-stream; charset=utf-8"
            rest, _ = parse_wire(resumed.read())
        # Replayed and live events together: exactly the ones after `last_seen`, then the end.
        assert [e.id for e in rest] == list(range(last_seen + 1, 65))
        assert rest[-1].event == "completed"
        full = first + rest
        assert [e.event for e in full] == ["message.started", *LORE_TOOL] + ["token"] * 60 + ["completed"]
        stored = client.get(f"/v1/chat/sessions/{session_id}/messages/{message_id}").json()
        assert stored["content"] == "".join(e.data["delta"] for e in full if e.event == "token")

        # The query parameter works like the header.
        with client.stream("GET", f"{url}?lastEventId=62") as tail:
            assert [e.id for e in parse_wire(tail.read())[0]] == [63, 64]
        # A client that saw the terminal event gets 204: an EventSource stops reconnecting.
        assert client.get(url, headers={"Last-Event-ID": "64"}).status_code == 204


def test_persona_events_resume_and_204(server):
    with server.client() as client:
        with client.stream("POST", "/v1/personas?stream=true", json={"prompt": "A court jester"}) as response:
            events, _ = parse_wire(response.read())
        persona_id = events[0].data["personaId"]
        with client.stream("GET", f"/v1/personas/{persona_id}/events", headers={"Last-Event-ID": "5"}) as resumed:
            replayed, _ = parse_wire(resumed.read())
        assert replayed == events[5:]
        with client.stream("GET", f"/v1/personas/{persona_id}/events") as everything:
            assert parse_wire(everything.read())[0] == events
        assert client.get(f"/v1/personas/{persona_id}/events", headers={"Last-Event-ID": "14"}).status_code == 204


def test_bad_last_event_id_is_a_400(server):
    persona_id = make_persona(server)
    with server.client() as client:
        response = client.get(f"/v1/personas/{persona_id}/events", headers={"Last-Event-ID": "abc"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


BAD_EVENT_ID = {
    "error": {
        "code": "validation_error",
        "message": "Last-Event-ID must be a non-negative integer event id.",
        "details": {},
    }
}


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        # "²" passes str.isdigit() and int() refuses it; "٣" passes both; 4,300 digits are past int()'s limit.
        pytest.param({"Last-Event-ID": "²".encode("latin-1")}, {}, id="superscript-header"),
        pytest.param({}, {"lastEventId": "²"}, id="superscript-query"),
        pytest.param({}, {"lastEventId": "٣"}, id="arabic-indic-query"),
        pytest.param({"Last-Event-ID": "1" * 4300}, {}, id="4300-digits"),
        pytest.param({"Last-Event-ID": str(2**63)}, {}, id="past-64-bits"),
    ],
)
def test_a_last_event_id_of_other_than_ascii_digits_or_past_64_bits_is_a_400(server, headers, params):
    persona_id = make_persona(server)
    with server.client() as client:
        response = client.get(f"/v1/personas/{persona_id}/events", headers=headers, params=params)
        largest = client.get(f"/v1/personas/{persona_id}/events", headers={"Last-Event-ID": str(2**63 - 1)})
    assert (response.status_code, response.json()) == (400, BAD_EVENT_ID)
    assert largest.status_code == 204


def test_two_followers_receive_identical_events(server_factory):
    server = server_factory(MOONBORN_DEMO_DELAY_MS="20", MOONBORN_DEMO_REPLY_TOKENS="60")
    session_id = make_session(server, make_persona(server))
    bodies: dict[str, bytes] = {}
    with (
        server.client() as client,
        client.stream(
            "POST", f"/v1/chat/sessions/{session_id}/messages?stream=true", json={"content": "Hi both"}
        ) as response,
    ):
        chunks = response.iter_raw()
        head = read_until(chunks, 1)
        message_id = parse_wire(head[: head.index(b"\n\n") + 2])[0][0].data["messageId"]

        def follow() -> None:
            with (
                httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=30) as c,
                c.stream("GET", f"/v1/chat/sessions/{session_id}/messages/{message_id}/events") as r,
            ):
                bodies["follower"] = r.read()

        thread = threading.Thread(target=follow)
        thread.start()
        bodies["origin"] = head + b"".join(chunks)
        thread.join(timeout=30)
    origin, _ = parse_wire(bodies["origin"])
    follower, _ = parse_wire(bodies["follower"])
    assert origin == follower
    assert [e.id for e in origin] == list(range(1, 65))
    assert origin[-1].event == "completed"
