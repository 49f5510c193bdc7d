"""Turns of concurrent streamed requests reach the database together: one transaction for all that are waiting.

A process asked for a thousand replies at once would otherwise run a thousand transactions, each in a worker
thread of its own, contending for the database (SQLite has one writer at a time and backs off by sleeping). Here
one task takes every turn that is waiting, stores them in one `db()` call (a refused turn changes nothing), and
hands each request its outcome while the next batch is being stored. A lone request pays nothing extra: it is
taken at once.
"""

import asyncio
import logging

from runs.db import db

from .models import ChatSession
from .services import (
    ChatConflict,
    ReplyJob,
    TurnOutcome,
    TurnRequest,
    message_create_turns,
    message_stop,
)

logger = logging.getLogger(__name__)

# The outcomes that are answers (404, 409), not failures of the database.
TurnRefusals = (ChatSession.DoesNotExist, ChatConflict)
# At most this many turns in one transaction, so that its lock is held for milliseconds.
BATCH_LIMIT = 256
# The requests of a batch resume this many at a time, each group in a turn of the event loop of its own: the
# streams already running get their tokens out in between instead of waiting for a whole batch's starts.
RESUME_GROUP = 16


class TurnWriter:
    """Store the turns of this process's streamed requests in shared transactions, one batch at a time."""

    def __init__(self) -> None:
        self._waiting: list[tuple[TurnRequest, asyncio.Future[TurnOutcome]]] = []
        self._task: asyncio.Task[None] | None = None
        # Batches written whose requests are still being resumed.
        self._resuming: set[asyncio.Task[None]] = set()
        # How many transactions and turns were written (for tests and diagnostics).
        self.batches = 0
        self.turns = 0

    async def create(self, request: TurnRequest) -> TurnOutcome:
        """Store `request`'s turn (with the others waiting) and return its outcome."""
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[TurnOutcome] = loop.create_future()
        self._waiting.append((request, outcome))
        if self._task is None or self._task.done():
            # Detached from the request that came first: it serves the others too.
            self._task = loop.create_task(self._run(), name="moonborn-turns")
        return await outcome

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch = self._waiting[:BATCH_LIMIT]
            del self._waiting[:BATCH_LIMIT]
            outcomes = await self._write([request for request, _ in batch])
            self.batches += 1
            self.turns += len(batch)
            # The next batch goes to the database while this one's requests resume on the event loop: when a
            # thousand arrive at once, the last no longer waits for every earlier batch's starts as well.
            resume = loop.create_task(self._resume(batch, outcomes), name="moonborn-turns-resume")
            self._resuming.add(resume)
            resume.add_done_callback(self._resuming.discard)

    async def _write(self, requests: list[TurnRequest]) -> list[TurnOutcome | BaseException]:
        try:
            return list(await db(message_create_turns, requests=requests))
        except Exception as exc:
            if len(requests) == 1:
                return [exc]
        # One request must not fail the others: each on its own, then.
        outcomes: list[TurnOutcome | BaseException] = []
        for request in requests:
            try:
                outcomes += await db(message_create_turns, requests=[request])
            except Exception as alone:
                outcomes.append(alone)
        return outcomes

    async def _resume(
        self,
        batch: list[tuple[TurnRequest, asyncio.Future[TurnOutcome]]],
        outcomes: list[TurnOutcome | BaseException],
    ) -> None:
        for number, ((_, future), outcome) in enumerate(zip(batch, outcomes, strict=True)):
            if number and not number % RESUME_GROUP:
                await asyncio.sleep(0)
            if isinstance(outcome, BaseException) and not isinstance(outcome, TurnRefusals):
                if not future.done():
                    future.set_exception(outcome)
            elif not future.done():
                future.set_result(outcome)
            elif isinstance(outcome, tuple):
                # Its request was cancelled while waiting (the server is stopping): no run will produce this
                # reply, so it ends now, empty, instead of blocking its session as `streaming`.
                await _abandon(outcome[1])


async def _abandon(job: ReplyJob) -> None:
    try:
        await db(
            message_stop,
            message_id=job.assistant_message_id,
            content="",
            status="cancelled",
            error="Cancelled before the reply started.",
            usage_id=job.usage_id,
            prompt_tokens=0,
            completion_tokens=0,
        )
    except Exception:
        logger.exception("could not end the abandoned reply %s", job.assistant_message_id)


_writer: TurnWriter | None = None


def get_turn_writer() -> TurnWriter:
    global _writer
    if _writer is None:
        _writer = TurnWriter()
    return _writer
