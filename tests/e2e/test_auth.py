"""401 without valid credentials; another owner's objects are 404 everywhere."""

import pytest

from tests.conftest import manage
from tests.e2e.helpers import JSON, make_persona, make_session, messages

ERROR_KEYS = {"code", "message", "details"}


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    assert body["error"]["code"] == code


ENDPOINTS = [
    ("GET", "/v1/personas", None),
    ("POST", "/v1/personas", {"prompt": "x"}),
    ("GET", "/v1/personas/per_x", None),
    ("GET", "/v1/personas/per_x/events", None),
    ("POST", "/v1/personas/per_x/cancel", None),
    ("GET", "/v1/chat/sessions", None),
    ("POST", "/v1/chat/sessions", {"personaId": "per_x"}),
    ("POST", "/v1/chat/sessions/ses_x/messages", {"content": "hi"}),
    ("GET", "/v1/chat/sessions/ses_x/messages", None),
    ("GET", "/v1/usage", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer mb_00000000_not-a-real-key", "Bearer", "Basic YWxpY2U6eA==", "Bearer garbage"]
)
def test_missing_or_bad_credentials_are_401(server, method, path, body, authorization):
    import httpx

    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.request(method, server.base_url + path, json=body, headers=headers, timeout=10)
    assert_error(response, 401, "authentication_failed")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_revoked_key_is_401(server):
    key = manage("create_api_key", "carol", env=server.env).strip().splitlines()[-1]
    import httpx

    assert httpx.get(f"{server.base_url}/v1/usage", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    manage("revoke_api_key", key.split("_")[1], env=server.env)
    response = httpx.get(f"{server.base_url}/v1/usage", headers={"Authorization": f"Bearer {key}"})
    assert_error(response, 401, "authentication_failed")


def test_another_owners_objects_are_404(server):
    persona_id = make_persona(server, "alice")
    session_id = make_session(server, persona_id, "alice")
    with server.client("alice") as alice:
        reply = alice.post(f"/v1/chat/sessions/{session_id}/messages", json={"content": "Hi"}, headers=JSON).json()
    message_id = reply["messageId"]
    base = f"/v1/chat/sessions/{session_id}"
    with server.client("bob") as bob:
        for method, path, body in [
            ("GET", f"/v1/personas/{persona_id}", None),
            ("GET", f"/v1/personas/{persona_id}/events", None),
            ("POST", f"/v1/personas/{persona_id}/cancel", None),
            ("DELETE", f"/v1/personas/{persona_id}", None),
            ("POST", "/v1/chat/sessions", {"personaId": persona_id}),
            ("GET", base, None),
            ("DELETE", base, None),
            ("GET", f"{base}/messages", None),
            ("POST", f"{base}/messages", {"content": "Hello from bob"}),
            ("GET", f"{base}/messages/{message_id}", None),
            ("GET", f"{base}/messages/{message_id}/events", None),
            ("POST", f"{base}/messages/{message_id}/cancel", None),
        ]:
            response = bob.request(method, path, json=body, headers=JSON)
            assert_error(response, 404, "not_found")
        assert persona_id not in [p["id"] for p in bob.get("/v1/personas").json()["results"]]
        assert session_id not in [s["id"] for s in bob.get("/v1/chat/sessions").json()["results"]]
        assert message_id not in [u["runId"] for u in bob.get("/v1/usage").json()["results"]]
    # Nothing bob did changed alice's objects.
    with server.client("alice") as alice:
        assert alice.get(f"/v1/personas/{persona_id}").json()["status"] == "ready"
    assert [m["content"] for m in messages(server, session_id)][0] == "Hi"
    assert len(messages(server, session_id)) == 2
