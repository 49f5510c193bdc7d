"""Turns of concurrent streamed requests reach the database together: one transaction for all that are waiting.

A process asked for a thousand replies at once would otherwise run a thousand transactions, each in a worker
thread of its own, contending for the database (SQLite has one writer at a time and backs off by sleeping). Here
one task takes every turn that is waiting, stores them in one `db()` call (each turn in a savepoint of its own,
so a refused one changes nothing), and hands each request its outcome. A lone request pays nothing extra: it
is taken at once.
"""

import asyncio
import logging

from runs.db import db

from .services import (
    ReplyJob,
    TurnOutcome,
    TurnRequest,
    message_create_turns_by_key,
    message_stop,
)

logger = logging.getLogger(__name__)

# At most this many turns in one transaction, so that its lock is held for milliseconds, not seconds.
BATCH_LIMIT = 256


class TurnWriter:
    """Store the turns of this process's streamed requests in shared transactions, one batch at a time."""

    def __init__(self) -> None:
        self._waiting: list[tuple[TurnRequest, asyncio.Future[TurnOutcome]]] = []
        self._task: asyncio.Task[None] | None = None
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
        while self._waiting:
            batch = self._waiting[:BATCH_LIMIT]
            del self._waiting[:BATCH_LIMIT]
            try:
                outcomes = await db(message_create_turns_by_key, requests=[request for request, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.turns += len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
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
