"""Safe defaults, request rates and sign-in throttling (moonborn_site.settings, accounts.checks, moonborn_site.throttle)."""

import os
import secrets
import subprocess
import sys

import pytest
from django.contrib.auth.models import User
from django.contrib.auth.tokens import default_token_generator
from django.test import Client
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from rest_framework.test import APIClient

from accounts.services import api_key_create
from chat.models import ChatSession
from moonborn_site import throttle
from tests.conftest import ROOT
from tests.factories import PersonaFactory

# The environment of a deployment that set what the README's Production section says.
PRODUCTION = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_ALLOWED_HOSTS": "moonborn.example.com",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "true",
    "DJANGO_SECURE_SSL_REDIRECT": "true",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "DJANGO_SECURE_HSTS_PRELOAD": "true",
}
# What the server says, alone on stderr, when DEBUG is off and the key is not a real one.
REFUSAL = (
    "Moonborn cannot start: DJANGO_SECRET_KEY must be set to a random string of at least 50 characters when "
    "DJANGO_DEBUG is off (make one with: python -c 'import secrets; print(secrets.token_urlsafe(50))').\n"
)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter whose environment has no Django settings but `env`'s."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith(("DJANGO_", "MOONBORN_"))}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "moonborn_site.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(autouse=True)
def one_minute(monkeypatch):
    """A clock that stays in one rate window for the whole test (the counters are fresh: tests/conftest.py)."""

    class Clock:
        @staticmethod
        def time() -> float:
            return 1_800_000_030.0

    monkeypatch.setattr(throttle, "time", Clock)


# -- safe defaults ----------------------------------------------------------------------------------


def test_debug_is_off_unless_it_is_set():
    done = run_python("import django; django.setup(); from django.conf import settings; print(settings.DEBUG)")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "False\n"


@pytest.mark.parametrize(
    "key",
    [
        None,
        "short-key",
        "insecure-moonborn-development-key-change-me-in-production",
        "django-insecure-" + "x1y2z3" * 10,
        "ab" * 40,
    ],
)
def test_the_server_refuses_to_start_with_debug_off_and_no_real_key(key):
    env = {"DJANGO_DEBUG": "false"} if key is None else {"DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": key}
    done = run_python("import moonborn_site.asgi", **env)
    assert done.returncode == 1
    assert done.stderr == REFUSAL


def test_manage_py_check_reports_the_key_too():
    done = run_python(
        "import sys; from django.core.management import execute_from_command_line; "
        "execute_from_command_line(['manage.py', 'check'])",
        DJANGO_DEBUG="false",
    )
    assert done.returncode == 1
    assert "(moonborn.E003) DJANGO_SECRET_KEY must be set to a random string of at least 50 characters" in done.stderr


def test_check_deploy_with_production_settings_reports_nothing():
    done = run_python(
        "from django.core.management import execute_from_command_line; "
        "execute_from_command_line(['manage.py', 'check', '--deploy', '--fail-level', 'WARNING'])",
        **PRODUCTION,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "System check identified no issues (0 silenced).\n"


def test_production_switches_are_read_from_the_environment():
    done = run_python(
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SECURE_PROXY_SSL_HEADER, s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, "
        "s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_HSTS_PRELOAD, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE)",
        **PRODUCTION,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "('HTTP_X_FORWARDED_PROTO', 'https') True 31536000 True True True True\n"


@pytest.mark.django_db
def test_users_made_by_create_api_key_have_unusable_passwords():
    api_key, _ = api_key_create(username="dora")
    assert not api_key.owner.has_usable_password()
    assert not Client().login(username="dora", password="")


@pytest.mark.django_db
def test_a_forged_password_reset_token_gets_404():
    api_key, _ = api_key_create(username="erin")
    user = api_key.owner
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    client = Client()
    assert client.get(f"/accounts/reset/{uid}/{token}/").status_code == 404
    assert client.get(f"/accounts/reset/{uid}/set-password/").status_code == 404
    assert client.post("/accounts/password_reset/", {"email": "erin@example.com"}).status_code == 404


@pytest.mark.django_db
def test_sign_in_logout_and_password_change_stay_mounted():
    User.objects.create_user("fay", password="a-long-horse-battery")
    client = Client()
    assert client.get("/accounts/login/").status_code == 200
    assert client.post("/accounts/login/", {"username": "fay", "password": "a-long-horse-battery"}).status_code == 302
    assert client.get("/accounts/password_change/").status_code == 200
    assert client.post("/accounts/logout/").status_code in (200, 302)


# -- rates ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_21st_wrong_password_in_a_minute_is_throttled():
    User.objects.create_user("gus", password="a-long-horse-battery")
    client = Client()
    for _ in range(20):
        response = client.post("/accounts/login/", {"username": "gus", "password": "wrong"})
        assert response.status_code == 200  # the form again, with its error
    throttled = client.post("/accounts/login/", {"username": "gus", "password": "wrong"})
    assert (throttled.status_code, throttled["Retry-After"]) == (429, "30")
    assert throttled.content == b"Too many failed sign-ins; try again in a minute."
    # The right password waits out the minute too, and the admin's sign-in is the same account.
    right = {"username": "gus", "password": "a-long-horse-battery"}
    assert client.post("/accounts/login/", right).status_code == 429
    assert client.post("/admin/login/", right).status_code == 429
    # Another account is not locked out by gus's failures.
    User.objects.create_user("hal", password="a-long-horse-battery")
    assert client.post("/accounts/login/", {"username": "hal", "password": "a-long-horse-battery"}).status_code == 302


@pytest.mark.django_db
def test_sign_ins_from_one_address_are_throttled_across_accounts():
    client = Client()
    for n in range(100):
        assert client.post("/accounts/login/", {"username": f"nobody{n}", "password": "x"}).status_code == 200
    assert client.post("/accounts/login/", {"username": "nobody-else", "password": "x"}).status_code == 429


@pytest.mark.django_db
def test_new_sessions_past_the_rate_get_429_and_change_nothing(settings):
    settings.MOONBORN_RATE_SESSIONS_PER_MINUTE = 3
    api_key, key = api_key_create(username="ida")
    persona = PersonaFactory(owner=api_key.owner)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    for _ in range(3):
        assert client.post("/v1/chat/sessions", {"personaId": persona.id}, format="json").status_code == 201
    refused = client.post("/v1/chat/sessions", {"personaId": persona.id}, format="json")
    assert refused.status_code == 429
    assert refused["Retry-After"] == "30"
    assert refused.json() == {
        "error": {
            "code": "rate_limited",
            "message": "At most 3 new chat sessions a minute per key; retry later.",
            "details": {},
        }
    }
    assert ChatSession.objects.filter(owner=api_key.owner).count() == 3
    # Another key has its own budget.
    other, other_key = api_key_create(username="jon")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {other_key}")
    other_persona = PersonaFactory(owner=other.owner)
    assert client.post("/v1/chat/sessions", {"personaId": other_persona.id}, format="json").status_code == 201


@pytest.mark.django_db
def test_every_post_counts_against_the_write_rate(settings):
    settings.MOONBORN_RATE_POSTS_PER_MINUTE = 4
    api_key, key = api_key_create(username="kim")
    persona = PersonaFactory(owner=api_key.owner)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.post("/v1/chat/sessions", {"personaId": persona.id}, format="json").status_code == 201
    assert client.post("/v1/personas/import", b"{}", content_type="application/json").status_code == 400
    assert client.post("/v1/chat/sessions", {"personaId": "per_nope"}, format="json").status_code == 404
    assert client.post("/v1/chat/sessions", {"personaId": persona.id}, format="json").status_code == 201
    refused = client.post("/v1/chat/sessions", {"personaId": persona.id}, format="json")
    assert refused.status_code == 429
    assert refused.json()["error"]["message"] == "At most 4 requests that write a minute per key; retry later."
    assert ChatSession.objects.filter(owner=api_key.owner).count() == 2
    # Reads are not counted.
    assert client.get("/v1/chat/sessions").status_code == 200


@pytest.mark.django_db
def test_imports_have_their_own_rate(settings):
    settings.MOONBORN_RATE_IMPORTS_PER_MINUTE = 1
    _, key = api_key_create(username="lee")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.post("/v1/personas/import", b"{}", content_type="application/json").status_code == 400
    refused = client.post("/v1/personas/import", b"{}", content_type="application/json")
    assert refused.status_code == 429
    assert refused.json()["error"]["message"] == "At most 1 card imports a minute per key; retry later."


async def test_redis_counters_are_shared_by_every_worker():
    prefix = f"test-{secrets.token_hex(6)}"
    workers = [throttle.RedisCounters("redis://127.0.0.1:6379/0", prefix) for _ in range(2)]
    try:
        assert [await workers[n % 2].hit("posts:key:a") for n in range(5)] == [1, 2, 3, 4, 5]
        assert await workers[1].peek("posts:key:a") == 5
        assert await workers[0].peek("posts:key:b") == 0
        ttl = await workers[0].redis.ttl(f"{prefix}:rate:posts:key:a:{int(throttle.time.time()) // 60}")
        assert 0 < ttl <= throttle.WINDOW_SECONDS + 5
    finally:
        for counters in workers:
            await counters.redis.aclose()
