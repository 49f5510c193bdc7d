"""`GET /healthz`: the status for anyone, the details for staff and the log."""

import logging

import pytest
from django.db import OperationalError
from django.test import Client

from runs import health
from tests.factories import UserFactory

# The database check runs in the database thread (runs.db), which needs real transactions.
pytestmark = pytest.mark.django_db(transaction=True)


def signed_in(**flags: bool) -> Client:
    client = Client()
    client.force_login(UserFactory(**flags))
    return client


def test_anyone_gets_the_status_only() -> None:
    for client in (Client(), signed_in()):
        response = client.get("/healthz")
        assert (response.status_code, response.json()) == (200, {"status": "ok", "failed": []})


def test_staff_get_the_checks_and_the_counts() -> None:
    response = signed_in(is_staff=True).get("/healthz")
    assert response.status_code == 200
    body = response.json()
    tasks = body.pop("tasks")
    assert isinstance(tasks, int) and tasks >= 1
    assert body == {
        "status": "ok",
        "failed": [],
        "shuttingDown": False,
        "activeRuns": 0,
        "database": "ok",
        "redis": "not configured",
    }


def test_a_failed_check_is_named_without_its_exception_and_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    database_ok = health._database_ok
    down = True

    def database() -> None:
        if down:
            raise OperationalError('connection to server at "10.0.0.5", port 5432 failed:\nConnection refused')
        database_ok()

    monkeypatch.setattr(health, "_database_ok", database)
    staff = signed_in(is_staff=True)
    with caplog.at_level(logging.WARNING, logger="runs.health"):
        public = [Client().get("/healthz") for _ in range(3)]
        detailed = staff.get("/healthz")
        down = False
        recovered = Client().get("/healthz")
    assert [(r.status_code, r.json()) for r in public] == [(503, {"status": "unavailable", "failed": ["database"]})] * 3
    assert detailed.status_code == 503
    assert {k: v for k, v in detailed.json().items() if k != "tasks"} == {
        "status": "unavailable",
        "failed": ["database"],
        "shuttingDown": False,
        "activeRuns": 0,
        "database": "error: OperationalError",
        "redis": "not configured",
    }
    assert (recovered.status_code, recovered.json()) == (200, {"status": "ok", "failed": []})
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "ERROR",
            'health check database failed: OperationalError: connection to server at "10.0.0.5", port 5432 failed:'
            "\\nConnection refused",
        ),
        ("WARNING", "health check database: ok again"),
    ]
