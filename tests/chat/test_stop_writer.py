"""chat.stops.StopWriter: the ends of unfinished replies, stored together in the database thread."""

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import DatabaseError

from accounts.models import UsageRecord
from chat import services, stops
from chat.models import Message
from chat.services import STOP_ROWS, ReplyJob, ReplyStop, TurnRequest, message_create_turns
from tests.factories import ChatSessionFactory, PersonaFactory

# The writer stores the ends in the database thread (runs.db), which needs real transactions.
pytestmark = pytest.mark.django_db(transaction=True)


@sync_to_async
def streaming_replies(count: int) -> list[str]:
    """`count` replies left streaming, each in a session of its own, with their usage records running."""
    persona = PersonaFactory()
    sessions = ChatSessionFactory.create_batch(count, persona=persona, owner=persona.owner)
    requests = [
        TurnRequest(owner_id=persona.owner_id, session_id=s.pk, content="Hello.", provider="demo", model="demo")
        for s in sessions
    ]
    jobs = message_create_turns(requests=requests)
    assert all(isinstance(job, ReplyJob) for job in jobs)
    return [job.assistant_message_id for job in jobs if isinstance(job, ReplyJob)]


def end(message_id: str, number: int, status: str = "cancelled") -> ReplyStop:
    return ReplyStop(
        message_id=message_id,
        content=f"As far as reply {number} got",
        status=status,
        error="Cancelled." if status == "cancelled" else "The model failed.",
        prompt_tokens=100 + number,
        completion_tokens=number,
        lore={"activated": [f"entry {number}"], "historyDropped": 0},
    )


@sync_to_async
def stored(message_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """Message id → (content, status, error, lore, ended, usage status, prompt tokens, completion tokens)."""
    usage = {
        u.run_id: (u.status, u.prompt_tokens, u.completion_tokens)
        for u in UsageRecord.objects.filter(run_id__in=message_ids)
    }
    return {
        m.pk: (m.content, m.status, m.error, m.lore, m.completed_at is not None, *usage[m.pk])
        for m in Message.objects.filter(pk__in=message_ids)
    }


def expected(stop: ReplyStop) -> tuple[Any, ...]:
    return (
        stop.content, stop.status, stop.error, stop.lore, True, stop.status, stop.prompt_tokens, stop.completion_tokens,
    )  # fmt: skip


def counting_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each group of ends the writer hands the database thread."""
    sizes: list[int] = []
    real = stops.db

    async def counted(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(args[0]))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(stops, "db", counted)
    return sizes


async def test_ends_that_wait_together_share_one_transaction_and_each_keeps_its_content_and_usage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = await streaming_replies(2 * STOP_ROWS + 50)
    sizes = counting_writes(monkeypatch)
    writer = stops.StopWriter()
    ends = [
        end(message_id, number, "failed" if number % 7 == 0 else "cancelled") for number, message_id in enumerate(ids)
    ]
    await asyncio.gather(*(writer.stop(stop) for stop in ends))
    assert sizes == [len(ids)]
    assert (writer.batches, writer.stops) == (1, len(ids))
    assert await stored(ids) == {stop.message_id: expected(stop) for stop in ends}


async def test_more_ends_than_a_batch_are_written_batch_after_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = await streaming_replies(25)
    monkeypatch.setattr(stops, "BATCH_LIMIT", 10)
    sizes = counting_writes(monkeypatch)
    writer = stops.StopWriter()
    ends = [end(message_id, number) for number, message_id in enumerate(ids)]
    await asyncio.gather(*(writer.stop(stop) for stop in ends))
    assert sizes == [10, 10, 5]
    assert await stored(ids) == {stop.message_id: expected(stop) for stop in ends}


async def test_a_reply_that_ended_otherwise_keeps_its_end() -> None:
    completed, failed, streaming = await streaming_replies(3)

    @sync_to_async
    def end_otherwise() -> None:
        services.message_complete(
            message_id=completed, content="The whole reply", drift_score=0.1, drift_threshold=0.9, flagged=False,
            drift_components={}, prompt_tokens=7, completion_tokens=3,
        )  # fmt: skip
        Message.objects.filter(pk=failed).update(status=Message.Status.FAILED, content="What the reaper kept")
        UsageRecord.objects.filter(run_id=failed).update(status=UsageRecord.Status.FAILED)

    await end_otherwise()
    writer = stops.StopWriter()
    ends = [end(message_id, number) for number, message_id in enumerate((completed, failed, streaming))]
    await asyncio.gather(*(writer.stop(stop) for stop in ends))
    after = await stored([completed, failed, streaming])
    assert after[completed][:2] == ("The whole reply", "completed")
    assert after[completed][5:] == ("completed", 7, 3)
    assert after[failed][:2] == ("What the reaper kept", "failed")
    assert after[failed][5:] == ("failed", 0, 0)
    assert after[streaming] == expected(ends[2])


async def test_an_end_that_cannot_be_written_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = await streaming_replies(4)
    real = services.messages_stop

    def refusing(*, stops: list[ReplyStop]) -> None:
        if any(stop.message_id == ids[1] for stop in stops):
            raise DatabaseError("disk I/O error")
        real(stops=stops)

    monkeypatch.setattr(stops, "messages_stop", refusing)
    writer = stops.StopWriter()
    ends = [end(message_id, number) for number, message_id in enumerate(ids)]
    outcomes = await asyncio.gather(*(writer.stop(stop) for stop in ends), return_exceptions=True)
    assert [type(outcome).__name__ for outcome in outcomes] == ["NoneType", "DatabaseError", "NoneType", "NoneType"]
    after = await stored(ids)
    assert after[ids[1]][1] == "streaming"
    assert {i: after[i] for i in ids if i != ids[1]} == {
        s.message_id: expected(s) for s in ends if s.message_id != ids[1]
    }


async def test_an_end_whose_reply_is_cancelled_while_it_waits_is_stored_all_the_same() -> None:
    (message_id,) = await streaming_replies(1)
    writer = stops.StopWriter()
    stop = end(message_id, 3)
    waiting = asyncio.ensure_future(writer.stop(stop))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert writer._task is not None
    await writer._task
    assert await stored([message_id]) == {message_id: expected(stop)}
