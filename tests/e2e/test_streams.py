"""Both streams end to end: exact event sequences, the wire format, headers, and the JSON fallback."""

import httpx

from tests.e2e.helpers import (
    JSON,
    LORE_TOOL,
    SSE,
    make_persona,
    make_session,
    messages,
    parse_wire,
    stream_events,
)

STEPS = ["soul_draft", "lore_weave", "psyche_profile", "voice_print", "dialogue_seed", "card_compile"]


def test_persona_stream_is_the_exact_event_sequence(server):
    with (
        server.client() as client,
        client.stream(
            "POST",
            "/v1/personas?stream=true",
            json={"prompt": "A grumpy ferryman on a misty river"},
            headers={"Accept-Encoding": "gzip"},
        ) as response,
    ):
        body = response.read()
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["vary"] == "Accept"
    assert "content-encoding" not in response.headers
    events, heartbeats = parse_wire(body)
    persona_id = events[0].data["personaId"]
    assert response.headers["location"] == f"/v1/personas/{persona_id}"
    assert persona_id.startswith("per_")
    assert heartbeats == 0
    assert [e.id for e in events] == list(range(1, 15))
    expected_types = ["pipeline.started"] + ["step.started", "step.completed"] * 6 + ["pipeline.completed"]
    assert [e.event for e in events] == expected_types
    for i, step in enumerate(STEPS):
        started, completed = events[1 + 2 * i], events[2 + 2 * i]
        assert started.data == {"step": step}
        assert set(completed.data) == {"step", "durationMs", "model"}
        assert completed.data["step"] == step
        assert completed.data["model"] == "demo"
        assert isinstance(completed.data["durationMs"], int) and completed.data["durationMs"] >= 0
    assert set(events[-1].data) == {"personaId", "durationMs"}
    assert events[-1].data["personaId"] == persona_id

    with server.client() as client:
        persona = client.get(f"/v1/personas/{persona_id}").json()
    assert persona["status"] == "ready"
    assert [s["step"] for s in persona["steps"]] == STEPS
    assert [s["durationMs"] for s in persona["steps"]] == [e.data["durationMs"] for e in events[2:14:2]]
    assert all(s["status"] == "completed" and s["model"] == "demo" and s["output"] for s in persona["steps"])
    assert persona["systemPrompt"].startswith("You are ")
    assert 0 < persona["driftThreshold"] < 1
    assert persona["durationMs"] == events[-1].data["durationMs"]


def test_chat_stream_is_the_exact_event_sequence_and_deltas_equal_the_stored_reply(server):
    session_id = make_session(server, make_persona(server))
    with (
        server.client() as client,
        client.stream(
            "POST",
            f"/v1/chat/sessions/{session_id}/messages",
            json={"content": "Walk me through your morning."},
            headers={**SSE, "Accept-Encoding": "gzip"},
        ) as response,
    ):
        body = response.read()
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events, _ = parse_wire(body)
    assert [e.id for e in events] == list(range(1, 29))
    assert [e.event for e in events] == ["message.started", *LORE_TOOL] + ["token"] * 24 + ["completed"]
    message_id = events[0].data["messageId"]
    assert set(events[0].data) == {"messageId", "userMessageId"}
    assert response.headers["location"] == f"/v1/chat/sessions/{session_id}/messages/{message_id}"
    start, end = events[1].data, events[2].data
    assert (start["tool"], end["tool"], end["status"], end["callId"]) == ("lorebook", "lorebook", "ok", start["callId"])
    assert set(end) == {"callId", "tool", "status", "result", "durationMs"}
    assert all(set(e.data) == {"delta"} and e.data["delta"] for e in events[3:-1])
    completed = events[-1].data
    assert set(completed) == {"messageId", "driftScore", "driftThreshold", "drifted"}
    assert completed["messageId"] == message_id
    assert 0 <= completed["driftScore"] <= 1
    assert completed["drifted"] == (completed["driftScore"] > completed["driftThreshold"])

    stored = messages(server, session_id)
    assert [(m["role"], m["status"]) for m in stored] == [("user", "completed"), ("assistant", "completed")]
    assert stored[0]["id"] == events[0].data["userMessageId"]
    assert stored[0]["content"] == "Walk me through your morning."
    assert stored[1]["id"] == message_id
    assert stored[1]["content"] == "".join(e.data["delta"] for e in events[3:-1])
    assert stored[1]["lore"]["activated"] == end["result"]["activated"]
    assert stored[1]["driftScore"] == completed["driftScore"]
    assert stored[1]["driftThreshold"] == completed["driftThreshold"]


def test_the_fast_path_answers_with_the_headers_and_wire_of_the_django_view(server):
    """An API-key stream is served on ASGI directly; with an Idempotency-Key the Django view serves it."""
    session_id = make_session(server, make_persona(server))
    answers = []
    for extra in ({}, {"Idempotency-Key": "the-django-view"}):
        with (
            server.client() as client,
            client.stream(
                "POST",
                f"/v1/chat/sessions/{session_id}/messages",
                json={"content": "Walk me through your morning."},
                headers={**SSE, **extra},
            ) as response,
        ):
            body = response.read()
        events, _ = parse_wire(body)
        headers = dict(response.headers)
        headers.pop("date")
        location = headers.pop("location")
        assert location == f"/v1/chat/sessions/{session_id}/messages/{events[0].data['messageId']}"
        assert body.startswith(b"retry: 3000\nid: 1\nevent: message.started\n")
        answers.append((response.status_code, headers, [(e.id, e.event) for e in events]))
    assert answers[0] == answers[1]
    assert answers[0][0] == 200
    assert answers[0][1]["content-type"] == "text/event-stream; charset=utf-8"
    assert answers[0][1]["x-content-type-options"] == "nosniff"


def test_httpx_sse_reads_the_same_events(server):
    session_id = make_session(server, make_persona(server))
    with server.client() as client:
        events = stream_events(
            client, "POST", f"/v1/chat/sessions/{session_id}/messages?stream=true", json={"content": "Hello!"}
        )
    assert [e.id for e in events] == list(range(1, 29))
    assert [e.event for e in events] == ["message.started", *LORE_TOOL] + ["token"] * 24 + ["completed"]


def test_heartbeat_is_a_comment_line_without_a_blank_line(server_factory):
    server = server_factory(
        MOONBORN_SSE_HEARTBEAT_SECONDS="0.1", MOONBORN_DEMO_DELAY_MS="250", MOONBORN_DEMO_REPLY_TOKENS="3"
    )
    with httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=60) as client:
        response = client.post("/v1/personas", json={"prompt": "A quiet monk"}, headers=JSON)
        session = client.post("/v1/chat/sessions", json={"personaId": response.json()["id"]}).json()["id"]
        with client.stream(
            "POST", f"/v1/chat/sessions/{session}/messages?stream=true", json={"content": "Hi"}
        ) as stream:
            body = stream.read()
        events, heartbeats = parse_wire(body)
        assert heartbeats >= 3
        assert b": heartbeat\n\n" not in body
        assert [e.event for e in events] == ["message.started", *LORE_TOOL, "token", "token", "token", "completed"]
        # A real client sees no phantom event for the heartbeats.
        from tests.e2e.helpers import stream_events

        seen = stream_events(
            client, "POST", f"/v1/chat/sessions/{session}/messages?stream=true", json={"content": "Again"}
        )
        assert [e.event for e in seen] == ["message.started", *LORE_TOOL, "token", "token", "token", "completed"]


def test_persona_json_fallback(server):
    with server.client() as client:
        response = client.post("/v1/personas?stream=true", json={"prompt": "A tired astronaut"}, headers=JSON)
        assert response.status_code == 201
        assert response.headers["vary"] == "Accept"
        body = response.json()
        assert response.headers["location"] == f"/v1/personas/{body['id']}"
        assert body == client.get(f"/v1/personas/{body['id']}").json()
    assert body["status"] == "ready"
    assert [s["step"] for s in body["steps"]] == STEPS


def test_chat_json_fallback(server):
    session_id = make_session(server, make_persona(server))
    with server.client() as client:
        response = client.post(
            f"/v1/chat/sessions/{session_id}/messages", json={"content": "Tell me a story"}, headers=JSON
        )
    assert response.status_code == 201
    assert response.headers["vary"] == "Accept"
    body = response.json()
    stored = messages(server, session_id)[-1]
    assert body["messageId"] == stored["id"]
    assert body["content"] == stored["content"] and len(stored["content"].split()) == 24
    assert body["driftScore"] == stored["driftScore"]
    assert body["driftThreshold"] == stored["driftThreshold"]
    assert body["status"] == "completed"
    assert response.headers["location"] == f"/v1/chat/sessions/{session_id}/messages/{body['messageId']}"


def test_default_without_accept_or_stream_is_json(server):
    with server.client() as client:
        response = client.post("/v1/personas", json={"prompt": "A lighthouse cat"})
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
