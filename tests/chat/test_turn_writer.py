"""chat.turns.TurnWriter: the turns of concurrent streamed requests, stored together in the database thread."""

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import DatabaseError

from chat import turns
from chat.models import ChatSession, Message
from chat.services import ChatConflict, ReplyJob, TurnOutcome, TurnRequest, message_create_turns
from tests.factories import ChatSessionFactory, UserFactory

# The writer stores the turns in the database thread (runs.db), which needs real transactions.
pytestmark = pytest.mark.django_db(transaction=True)


def ask(session_id: str, owner_id: int, content: str = "Hello.") -> TurnRequest:
    return TurnRequest(owner_id=owner_id, session_id=session_id, content=content, provider="demo", model="demo")


@sync_to_async
def setting() -> tuple[int, list[str], str]:
    """A user, three of their sessions, and a session of someone else's."""
    owner = UserFactory()
    mine = [ChatSessionFactory(owner=owner, persona__owner=owner).pk for _ in range(3)]
    return owner.pk, mine, ChatSessionFactory().pk


def counting_db_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the writer's calls into the database thread (by the name of the function called)."""
    calls: list[str] = []
    real = turns.db

    async def counted(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        calls.append(fn.__name__)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(turns, "db", counted)
    return calls


def held_first_batch(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Hold the first batch in the database thread until `release` is set; `holding` is set once it is held."""
    holding, release = threading.Event(), threading.Event()

    def held(*, requests: list[TurnRequest]) -> list[TurnOutcome]:
        if not holding.is_set():
            holding.set()
            assert release.wait(10)
        return message_create_turns(requests=requests)

    monkeypatch.setattr(turns, "message_create_turns", held)
    return holding, release


async def until(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 10)


async def settled(writer: turns.TurnWriter) -> None:
    """Wait until the writer has written everything and resumed every request."""
    while writer._task is not None and not writer._task.done() or writer._resuming:
        await asyncio.sleep(0.01)


async def test_turns_that_wait_together_share_one_transaction_and_each_gets_its_own_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, (first, second, _), others = await setting()
    calls = counting_db_calls(monkeypatch)
    writer = turns.TurnWriter()
    outcomes = await asyncio.gather(
        writer.create(ask(first, key)),
        writer.create(ask(second, key)),
        writer.create(ask(second, key, "Racing the one before.")),
        writer.create(ask(others, key)),
    )
    assert [type(outcome).__name__ for outcome in outcomes] == ["ReplyJob", "ReplyJob", "ChatConflict", "DoesNotExist"]
    assert isinstance(outcomes[2], ChatConflict) and isinstance(outcomes[3], ChatSession.DoesNotExist)
    assert (writer.batches, writer.turns, calls) == (1, 4, ["_drain"])
    replies = [outcome.assistant_message_id for outcome in outcomes if isinstance(outcome, ReplyJob)]
    stored = await sync_to_async(lambda: sorted(Message.objects.filter(pk__in=replies).values_list("status")))()
    assert stored == [("streaming",), ("streaming",)]


async def test_turns_that_arrive_while_a_batch_is_stored_go_in_the_next_batch_of_the_same_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, (first, second, third), _ = await setting()
    calls = counting_db_calls(monkeypatch)
    holding, release = held_first_batch(monkeypatch)
    writer = turns.TurnWriter()
    early = asyncio.ensure_future(writer.create(ask(first, key)))
    await until(holding)
    later = [asyncio.ensure_future(writer.create(ask(session, key))) for session in (second, third)]
    await asyncio.sleep(0)  # both are waiting now
    release.set()
    outcomes = await asyncio.gather(early, *later)
    assert [outcome.session_id for outcome in outcomes if isinstance(outcome, ReplyJob)] == [first, second, third]
    # Written by the call that was already in the database thread: no trip back to the event loop in between.
    assert (writer.batches, writer.turns, calls) == (2, 3, ["_drain"])


async def test_one_call_writes_a_bounded_number_of_batches_so_other_database_work_gets_its_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, sessions, _ = await setting()
    monkeypatch.setattr(turns, "BATCH_LIMIT", 1)
    monkeypatch.setattr(turns, "DRAIN_BATCHES", 2)
    calls = counting_db_calls(monkeypatch)
    writer = turns.TurnWriter()
    outcomes = await asyncio.gather(*(writer.create(ask(session, key)) for session in sessions))
    assert all(isinstance(outcome, ReplyJob) for outcome in outcomes)
    assert (writer.batches, writer.turns, calls) == (3, 3, ["_drain", "_drain"])


async def test_a_batch_that_fails_is_stored_one_turn_at_a_time_so_a_bad_turn_fails_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, (first, second, third), _ = await setting()

    def failing(*, requests: list[TurnRequest]) -> list[TurnOutcome]:
        if any(request.content == "Boom." for request in requests):
            raise DatabaseError("disk I/O error")
        return message_create_turns(requests=requests)

    monkeypatch.setattr(turns, "message_create_turns", failing)
    writer = turns.TurnWriter()
    outcomes = await asyncio.gather(
        writer.create(ask(first, key)),
        writer.create(ask(second, key, "Boom.")),
        writer.create(ask(third, key)),
        return_exceptions=True,
    )
    assert [type(outcome).__name__ for outcome in outcomes] == ["ReplyJob", "DatabaseError", "ReplyJob"]
    assert await sync_to_async(Message.objects.filter(session_id=second).count)() == 0
    assert await sync_to_async(Message.objects.filter(session_id__in=[first, third]).count)() == 4


async def test_a_request_gone_while_its_turn_was_stored_has_its_reply_ended_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, (first, second, _), _ = await setting()
    holding, release = held_first_batch(monkeypatch)
    writer = turns.TurnWriter()
    gone = asyncio.ensure_future(writer.create(ask(first, key)))
    await until(holding)
    gone.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await gone
    await settled(writer)
    reply = await sync_to_async(
        lambda: Message.objects.values_list("role", "status", "content", "error").get(
            session_id=first, role=Message.Role.ASSISTANT
        )
    )()
    assert reply == ("assistant", "cancelled", "", "Cancelled before the reply started.")
    # The session is not left blocked by a reply that nobody produces: its next turn is taken.
    assert isinstance(await writer.create(ask(first, key, "Again.")), ReplyJob)
    assert isinstance(await writer.create(ask(second, key)), ReplyJob)


async def test_a_writer_serves_requests_again_after_it_has_been_idle() -> None:
    key, (first, second, _), _ = await setting()
    writer = turns.TurnWriter()
    assert isinstance(await writer.create(ask(first, key)), ReplyJob)
    await settled(writer)
    assert isinstance(await writer.create(ask(second, key)), ReplyJob)
    assert (writer.batches, writer.turns) == (2, 2)
