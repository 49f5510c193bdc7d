"""Turns of concurrent streamed requests reach the database together: one transaction for all that are waiting.

A process asked for a thousand replies at once would otherwise run a thousand transactions, each in a worker
thread of its own, contending for the database (SQLite has one writer at a time and backs off by sleeping). Here
one `db()` call takes every turn that is waiting and stores them in one transaction (a refused turn changes
nothing), then the turns that arrived meanwhile in the next, while the event loop hands the requests of the
batch before their outcomes. A lone request pays nothing extra: it is taken at once.
"""

import asyncio
import logging
from collections import deque

from runs.db import db, release_connections

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
# At most this many batches in one call to the database thread, so that other database work waits for no more.
DRAIN_BATCHES = 4
# The requests of a batch resume this many at a time, each group in a turn of the event loop of its own: the
# streams already running get their tokens out in between instead of waiting for a whole batch's starts.
RESUME_GROUP = 16

# A request's turn and the future its request awaits the outcome on.
Waiting = tuple[TurnRequest, asyncio.Future[TurnOutcome]]


class TurnWriter:
    """Store the turns of this process's streamed requests in shared transactions, one batch at a time."""

    def __init__(self) -> None:
        # Appended to on the event loop, taken from in the database thread: a deque's append and popleft are atomic.
        self._waiting: deque[Waiting] = deque()
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
            await db(self._drain, loop)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the database thread: write the waiting turns, batch after batch, handing each batch to the loop.

        The thread goes on to the next batch while the loop resumes the last one's requests. When a thousand
        requests arrive at once, the loop is slow to take a result and send the next batch out (up to ~50 ms each
        time), and every request waiting had been waiting on that too.
        """
        for _ in range(DRAIN_BATCHES):  # then other database work queued meanwhile gets its turn
            batch: list[Waiting] = []
            while self._waiting and len(batch) < BATCH_LIMIT:
                batch.append(self._waiting.popleft())
            if not batch:
                return
            outcomes = _write([request for request, _ in batch])
            self.batches += 1
            self.turns += len(batch)
            try:
                loop.call_soon_threadsafe(self._resume_soon, batch, outcomes)
            except RuntimeError:  # the loop is closed: the server stopped, and the next start recovers the rows
                logger.warning("%d turns were stored after the event loop closed", len(batch))

    def _resume_soon(
        self,
        batch: list[Waiting],
        outcomes: list[TurnOutcome | BaseException],
    ) -> None:
        resume = asyncio.get_running_loop().create_task(self._resume(batch, outcomes), name="moonborn-turns-resume")
        self._resuming.add(resume)
        resume.add_done_callback(self._resuming.discard)

    async def _resume(
        self,
        batch: list[Waiting],
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


def _write(requests: list[TurnRequest]) -> list[TurnOutcome | BaseException]:
    try:
        return list(message_create_turns(requests=requests))
    except Exception as exc:
        # The next statements take a fresh connection if this one broke, as between two db() calls.
        release_connections()
        if len(requests) == 1:
            return [exc]
    # One request must not fail the others: each on its own, then.
    outcomes: list[TurnOutcome | BaseException] = []
    for request in requests:
        try:
            outcomes += message_create_turns(requests=[request])
        except Exception as alone:
            release_connections()
            outcomes.append(alone)
    return outcomes


async def _abandon(job: ReplyJob) -> None:
    try:
        await db(
            message_stop,
            message_id=job.assistant_message_id,
            content="",
            status="cancelled",
            error="Cancelled before the reply started.",
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
