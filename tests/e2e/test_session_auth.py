"""The browser path: Django session auth with CSRF, same owner scoping as API keys."""

import re

import httpx

from tests.conftest import manage


def login(server, username: str, password: str) -> httpx.Client:
    manage(
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; U = get_user_model(); "
        f"u, _ = U.objects.get_or_create(username='{username}'); u.set_password('{password}'); u.save()",
        env=server.env,
    )
    client = httpx.Client(base_url=server.base_url, timeout=30)
    page = client.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    response = client.post(
        "/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token},
        headers={"Referer": f"{server.base_url}/accounts/login/"},
    )
    assert response.status_code == 302, response.text[:500]
    assert "sessionid" in client.cookies
    return client


def test_session_auth_needs_csrf_for_writes_and_scopes_to_the_owner(server):
    client = login(server, "dora", "correct horse battery staple")
    try:
        assert client.get("/v1/personas").status_code == 200
        no_csrf = client.post("/v1/personas", json={"prompt": "A cat"}, headers={"Accept": "application/json"})
        assert no_csrf.status_code == 403
        assert no_csrf.json()["error"]["code"] == "csrf_failed"
        csrf = {
            "X-CSRFToken": client.cookies["csrftoken"],
            "Referer": f"{server.base_url}/",
            "Accept": "application/json",
        }
        created = client.post("/v1/personas", json={"prompt": "A cat who keeps a bookshop"}, headers=csrf)
        assert created.status_code == 201, created.text
        persona_id = created.json()["id"]
        session = client.post("/v1/chat/sessions", json={"personaId": persona_id}, headers=csrf)
        assert session.status_code == 201
        no_csrf_session = client.post(
            "/v1/chat/sessions", json={"personaId": persona_id}, headers={"Accept": "application/json"}
        )
        assert no_csrf_session.status_code == 403
    finally:
        client.close()
    with server.client("alice") as alice:
        assert alice.get(f"/v1/personas/{persona_id}").status_code == 404
