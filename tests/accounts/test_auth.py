"""Key authentication: one function (`api_key_authenticate`), and the async front of it the ASGI view uses."""

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from accounts import auth
from accounts.models import ApiKey
from accounts.services import api_key_authenticate, api_key_create, api_key_revoke

# key_owner looks keys up in the database thread (runs.db), which needs real transactions.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("header", "key"),
    [(None, None), ("Bearer mb_a_b", "mb_a_b"), ("bearer  mb_a_b ", "mb_a_b"), ("Bearer ", ""), ("Basic x", "")],
)
def test_one_parser_reads_the_bearer_header(header: str | None, key: str | None) -> None:
    assert auth.bearer(header) == key


def test_a_key_records_its_last_use_at_most_once_a_minute() -> None:
    row, key = api_key_create(username="alice")
    assert api_key_authenticate(key=key) == row.owner
    row.refresh_from_db()
    first = row.last_used_at
    assert first is not None
    assert api_key_authenticate(key=key) == row.owner
    row.refresh_from_db()
    assert row.last_used_at == first
    ApiKey.objects.filter(pk=row.pk).update(last_used_at=first - timedelta(seconds=61))
    api_key_authenticate(key=key)
    row.refresh_from_db()
    assert row.last_used_at is not None and row.last_used_at > first


async def test_a_burst_on_one_key_is_one_lookup_and_a_revoked_key_is_refused_once_its_second_is_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    row, key = await sync_to_async(api_key_create)(username="alice")
    calls: list[str] = []
    real = auth.db

    async def counted(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        calls.append(fn.__name__)
        return await real(fn, *args, **kwargs)

    class Clock:
        now = 1_000.0

        @classmethod
        def monotonic(cls) -> float:
            return cls.now

    monkeypatch.setattr(auth, "db", counted)
    monkeypatch.setattr(auth, "time", Clock)
    owners = await asyncio.gather(*(auth.key_owner(key) for _ in range(50)))
    assert (owners, calls) == ([row.owner_id] * 50, ["_owner_id"])
    await sync_to_async(api_key_revoke)(prefix=row.prefix)
    assert await auth.key_owner(key) == row.owner_id  # trusted for KEY_CACHE_SECONDS
    Clock.now += auth.KEY_CACHE_SECONDS + 0.01
    assert await auth.key_owner(key) is None
    assert await auth.key_owner(key) is None  # a refusal is not kept: every try asks
    assert await auth.key_owner("mb_12345678_nope") is None
    assert calls == ["_owner_id"] * 4
