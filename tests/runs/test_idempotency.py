"""`Idempotency-Key`: a key is honoured for its window (24 h), and the keys past it are deleted."""

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import RequestFactory
from django.utils import timezone

from accounts.models import IdempotencyKey
from moonborn_site.state import process_state
from runs import idempotency
from runs.idempotency import Claim, claim_or_replay
from tests.factories import UserFactory

# claim_or_replay works in the database thread (runs.db), which needs real transactions.
pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/v1/chat/sessions/ses_1/messages"
BODY = {"session": "ses_1", "content": "Hello."}


async def claim(owner_id: int, key: str) -> Claim | str | None:
    request = RequestFactory().post(PATH, headers={"Idempotency-Key": key})
    return await claim_or_replay(request, owner_id, kind="chat", body=BODY)


@sync_to_async
def expired_row(owner_id: int, key: str) -> None:
    IdempotencyKey.objects.create(owner_id=owner_id, key=key, kind="chat", request_hash="0" * 64, resource_id="msg_x")
    backdate(owner_id, key)


def backdate(owner_id: int, key: str) -> None:
    IdempotencyKey.objects.filter(owner_id=owner_id, key=key).update(
        created_at=timezone.now() - timedelta(hours=24, seconds=1)
    )


@sync_to_async
def rows() -> list[tuple[str, str]]:
    return sorted(IdempotencyKey.objects.values_list("key", "resource_id"))


async def test_keys_past_their_window_are_purged_and_an_expired_key_is_a_new_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = await sync_to_async(UserFactory)()
    purges = process_state("runs.idempotency.purges", idempotency.PurgeClock)
    purges.next = float("inf")
    for key in ("fresh", "old"):
        first = await claim(owner.pk, key)
        assert isinstance(first, Claim)
        await first.bind(f"msg_{key}")
    await sync_to_async(backdate)(owner.pk, "old")
    await expired_row(owner.pk, "gone")

    # Within its window a key replays; nothing is stored, so nothing is purged.
    purges.next = 0.0
    assert await claim(owner.pk, "fresh") == "msg_fresh"
    assert await rows() == [("fresh", "msg_fresh"), ("gone", "msg_x"), ("old", "msg_old")]

    # Past it, the same key is a new request; storing it purges every expired key.
    assert isinstance(await claim(owner.pk, "old"), Claim)
    assert await rows() == [("fresh", "msg_fresh"), ("old", "")]

    # At most once a minute per process: a key stored seconds later purges nothing.
    await expired_row(owner.pk, "gone-too")
    assert isinstance(await claim(owner.pk, "new"), Claim)
    assert await rows() == [("fresh", "msg_fresh"), ("gone-too", "msg_x"), ("new", ""), ("old", "")]
