"""Bad input of every kind gets the right status and the JSON error body, never a 500."""

import httpx
import pytest

from tests.e2e.helpers import JSON, LORE_TOOL, SSE, make_persona, make_session, parse_wire

OK_PERSONA = {"prompt": "A kind blacksmith"}


@pytest.fixture(scope="module")
def world(server):
    """A ready persona and a session of alice's, and the counts the bad requests must not change."""
    persona_id = make_persona(server)
    session_id = make_session(server, persona_id)
    return {"persona": persona_id, "session": session_id}


def counts(server) -> tuple[int, int, int, int]:
    with server.client() as client:
        personas = len(client.get("/v1/personas?limit=200").json()["results"])
        sessions = len(client.get("/v1/chat/sessions?limit=200").json()["results"])
        usage = len(client.get("/v1/usage?limit=200").json()["results"])
        per_session = sum(
            len(client.get(f"/v1/chat/sessions/{s['id']}/messages?limit=200").json()["results"])
            for s in client.get("/v1/chat/sessions?limit=200").json()["results"]
        )
    return personas, sessions, usage, per_session


S = "{session}"
P = "{persona}"

CASES = [
    # (name, method, path, body bytes or json, extra headers, status, code)
    ("malformed json", "POST", "/v1/personas", b'{"prompt": ', {}, 400, "invalid_json"),
    ("invalid utf-8", "POST", "/v1/personas", b'{"prompt": "\xff\xfe"}', {}, 400, "invalid_json"),
    ("empty body", "POST", "/v1/personas", b"", {}, 400, "validation_error"),
    ("json array", "POST", "/v1/personas", b"[1, 2]", {}, 400, "validation_error"),
    ("json string", "POST", "/v1/personas", b'"prompt"', {}, 400, "validation_error"),
    ("json null", "POST", "/v1/personas", b"null", {}, 400, "validation_error"),
    ("json number", "POST", "/v1/personas", b"42", {}, 400, "validation_error"),
    ("missing prompt", "POST", "/v1/personas", {"name": "x"}, {}, 400, "validation_error"),
    ("prompt number", "POST", "/v1/personas", {"prompt": 123}, {}, 400, "validation_error"),
    ("prompt null", "POST", "/v1/personas", {"prompt": None}, {}, 400, "validation_error"),
    ("prompt list", "POST", "/v1/personas", {"prompt": ["a"]}, {}, 400, "validation_error"),
    ("prompt bool", "POST", "/v1/personas", {"prompt": True}, {}, 400, "validation_error"),
    ("prompt object", "POST", "/v1/personas", {"prompt": {"a": 1}}, {}, 400, "validation_error"),
    ("empty prompt", "POST", "/v1/personas", {"prompt": ""}, {}, 400, "validation_error"),
    ("blank prompt", "POST", "/v1/personas", {"prompt": "   \n\t"}, {}, 400, "validation_error"),
    ("long prompt", "POST", "/v1/personas", {"prompt": "x" * 4001}, {}, 400, "validation_error"),
    ("name number", "POST", "/v1/personas", {"prompt": "ok", "name": 5}, {}, 400, "validation_error"),
    ("long name", "POST", "/v1/personas", {"prompt": "ok", "name": "n" * 201}, {}, 400, "validation_error"),
    ("model bool", "POST", "/v1/personas", {"prompt": "ok", "model": False}, {}, 400, "validation_error"),
    ("bad on_disconnect", "POST", "/v1/personas?on_disconnect=maybe", OK_PERSONA, {}, 400, "validation_error"),
    ("bad stream flag", "POST", "/v1/personas?stream=perhaps", OK_PERSONA, {}, 400, "validation_error"),
    ("oversized body", "POST", "/v1/personas", b'{"prompt": "' + b"x" * 200_000 + b'"}', {}, 413, "payload_too_large"),
    ("session persona missing", "POST", "/v1/chat/sessions", {}, {}, 400, "validation_error"),
    ("session persona number", "POST", "/v1/chat/sessions", {"personaId": 7}, {}, 400, "validation_error"),
    ("session persona unknown", "POST", "/v1/chat/sessions", {"personaId": "per_nope"}, {}, 404, "not_found"),
    ("session malformed", "POST", "/v1/chat/sessions", b"{nope", {}, 400, "validation_error"),
    ("session array", "POST", "/v1/chat/sessions", b"[]", {}, 400, "validation_error"),
    ("message malformed", "POST", f"/v1/chat/sessions/{S}/messages", b'{"content"', {}, 400, "invalid_json"),
    ("message non-object", "POST", f"/v1/chat/sessions/{S}/messages", b'["hi"]', {}, 400, "validation_error"),
    ("message missing", "POST", f"/v1/chat/sessions/{S}/messages", {}, {}, 400, "validation_error"),
    ("message number", "POST", f"/v1/chat/sessions/{S}/messages", {"content": 1}, {}, 400, "validation_error"),
    ("message empty", "POST", f"/v1/chat/sessions/{S}/messages", {"content": ""}, {}, 400, "validation_error"),
    ("message blank", "POST", f"/v1/chat/sessions/{S}/messages", {"content": "  "}, {}, 400, "validation_error"),
    ("message long", "POST", f"/v1/chat/sessions/{S}/messages", {"content": "y" * 8001}, {}, 400, "validation_error"),
    (
        "message oversized",
        "POST",
        f"/v1/chat/sessions/{S}/messages",
        b'{"content": "' + b"y" * 100_000 + b'"}',
        {},
        413,
        "payload_too_large",
    ),
    ("message unknown session", "POST", "/v1/chat/sessions/ses_nope/messages", {"content": "hi"}, {}, 404, "not_found"),
    ("persona unknown", "GET", "/v1/personas/per_nope", None, {}, 404, "not_found"),
    ("persona events unknown", "GET", "/v1/personas/per_nope/events", None, {}, 404, "not_found"),
    ("persona cancel unknown", "POST", "/v1/personas/per_nope/cancel", None, {}, 404, "not_found"),
    ("persona delete unknown", "DELETE", "/v1/personas/per_nope", None, {}, 404, "not_found"),
    ("session unknown", "GET", "/v1/chat/sessions/ses_nope", None, {}, 404, "not_found"),
    ("messages unknown", "GET", "/v1/chat/sessions/ses_nope/messages", None, {}, 404, "not_found"),
    ("message unknown", "GET", f"/v1/chat/sessions/{S}/messages/msg_nope", None, {}, 404, "not_found"),
    ("message events unknown", "GET", f"/v1/chat/sessions/{S}/messages/msg_nope/events", None, {}, 404, "not_found"),
    ("message cancel unknown", "POST", f"/v1/chat/sessions/{S}/messages/msg_nope/cancel", None, {}, 404, "not_found"),
    ("unknown url", "GET", "/v1/nothing-here", None, {}, 404, "not_found"),
    ("trailing slash", "GET", "/v1/personas/", None, {}, 404, "not_found"),
    ("put personas", "PUT", "/v1/personas", OK_PERSONA, {}, 405, "method_not_allowed"),
    ("patch persona", "PATCH", f"/v1/personas/{P}", {"name": "x"}, {}, 405, "method_not_allowed"),
    ("get cancel", "GET", f"/v1/personas/{P}/cancel", None, {}, 405, "method_not_allowed"),
    ("post events", "POST", f"/v1/personas/{P}/events", None, {}, 405, "method_not_allowed"),
    ("delete usage", "DELETE", "/v1/usage", None, {}, 405, "method_not_allowed"),
    ("put messages", "PUT", f"/v1/chat/sessions/{S}/messages", {"content": "x"}, {}, 405, "method_not_allowed"),
    ("bad cursor", "GET", "/v1/personas?cursor=bz1hYmM%3D", None, {}, 404, "not_found"),
    ("bad limit", "GET", "/v1/personas?limit=abc", None, {}, 200, None),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "body", "headers", "status", "code"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_gets_a_json_error_and_changes_nothing(
    server, world, name, method, path, body, headers, status, code
):
    before = counts(server)
    url = server.base_url + path.format(**world)
    kwargs: dict = {"headers": {**server.headers(), **JSON, **headers}, "timeout": 30}
    if isinstance(body, bytes):
        kwargs["content"] = body
        kwargs["headers"]["Content-Type"] = "application/json"
    elif body is not None:
        kwargs["json"] = body
    response = httpx.request(method, url, **kwargs)
    assert response.status_code == status, response.text
    if code is not None:
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert set(error) == {"code", "message", "details"}
        assert error["code"] == code
        assert error["message"] and isinstance(error["message"], str)
        assert "Traceback" not in response.text
        if status == 405:
            assert response.headers["allow"]
    assert counts(server) == before


HOST_REFUSED = {
    "error": {
        "code": "validation_error",
        "message": "The Host header names a host this server does not serve.",
        "details": {},
    }
}


def test_an_api_key_request_for_a_host_outside_allowed_hosts_is_a_400_and_changes_nothing(server, world):
    before = counts(server)
    evil = {**server.headers(), "Host": "evil.example"}
    session_url = f"{server.base_url}/v1/chat/sessions/{world['session']}/messages"
    responses = {
        # The ASGI fast path of a streamed chat reply (chat.streams.message_create_fast).
        "fast path": httpx.post(session_url, json={"content": "Hi"}, headers={**evil, **SSE}, timeout=30),
        # A DRF view and an async view behind the API handler (moonborn_site.handlers.ApiHandler).
        "drf": httpx.post(
            f"{server.base_url}/v1/chat/sessions", json={"personaId": world["persona"]}, headers={**evil, **JSON}
        ),
        "async view": httpx.post(f"{server.base_url}/v1/personas", json=OK_PERSONA, headers={**evil, **JSON}),
        "read": httpx.get(f"{server.base_url}/v1/personas", headers=evil),
        "with a port": httpx.get(f"{server.base_url}/v1/personas", headers={**evil, "Host": "evil.example:443"}),
    }
    assert {name: (r.status_code, r.json()) for name, r in responses.items()} == dict.fromkeys(
        responses, (400, HOST_REFUSED)
    )
    assert counts(server) == before


def test_chat_with_a_persona_still_generating_is_409(server_factory):
    server = server_factory(MOONBORN_DEMO_DELAY_MS="60")
    with (
        server.client() as client,
        client.stream("POST", "/v1/personas?stream=true", json={"prompt": "A slow thinker"}) as response,
    ):
        head = b""
        chunks = response.iter_raw()
        for chunk in chunks:
            head += chunk
            if b"\n\n" in head:
                break
        persona_id = parse_wire(head[: head.index(b"\n\n") + 2])[0][0].data["personaId"]
        conflict = client.post("/v1/chat/sessions", json={"personaId": persona_id})
        assert conflict.status_code == 409
        assert conflict.json()["error"]["code"] == "conflict"
        client.post(f"/v1/personas/{persona_id}/cancel")


def test_a_second_message_while_a_reply_streams_is_409(server_factory):
    server = server_factory(MOONBORN_DEMO_DELAY_MS="40", MOONBORN_DEMO_REPLY_TOKENS="400")
    session_id = make_session(server, make_persona(server))
    with (
        server.client() as client,
        client.stream(
            "POST", f"/v1/chat/sessions/{session_id}/messages?stream=true", json={"content": "First"}
        ) as response,
    ):
        chunks = response.iter_raw()
        next(chunks)
        second = client.post(f"/v1/chat/sessions/{session_id}/messages", json={"content": "Second"}, headers=JSON)
        assert second.status_code == 409
        assert second.json()["error"]["code"] == "conflict"


def test_server_streams_normally_after_bad_input(server, world):
    with (
        server.client() as client,
        client.stream(
            "POST", f"/v1/chat/sessions/{world['session']}/messages?stream=true", json={"content": "Still there?"}
        ) as response,
    ):
        events, _ = parse_wire(response.read())
    assert [e.event for e in events] == ["message.started", *LORE_TOOL] + ["token"] * 24 + ["completed"]
    assert "Traceback" not in server.log()
