"""The one way to start a reply (`reply_start`), for the Django view and the ASGI fast path alike.

Turns of concurrent requests reach the database together: one transaction for all that are waiting.

A process asked for a thousand replies at once would otherwise run a thousand transactions, each in a worker
thread of its own, contending for the database (SQLite has one writer at a time and backs off by sleeping). Here
one `db()` call takes every turn that is waiting and stores them in one transaction (a refused turn changes
nothing), then the turns that arrived meanwhile in the next, while the event loop hands the requests of the
batch before their outcomes. A lone request pays nothing extra: it is taken at once.
"""

import asyncio
import logging
from collections import deque

from django.db import DatabaseError

from llm.providers import get_provider
from moonborn_site.http import ApiError
from moonborn_site.state import process_state
from runs.db import db, release_connections
from runs.hub import OnDisconnect, get_hub
from runs.streaming import give_back, refuse_while_unavailable, reserve_slot, start_run

from .models import ChatSession
from .replies import generate_reply
from .services import (
    ChatConflict,
    ReplyJob,
    ReplyStop,
    TurnOutcome,
    TurnRequest,
    message_create_turns,
)
from .stops import get_stop_writer

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
            elif isinstance(outcome, ReplyJob):
                # Its request was cancelled while waiting (the server is stopping): no run will produce this
                # reply, so it ends now, empty, instead of blocking its session as `streaming`.
                await _abandon(outcome)


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
        await get_stop_writer().stop(
            ReplyStop(
                message_id=job.assistant_message_id,
                content="",
                status="cancelled",
                error="Cancelled before the reply started.",
                prompt_tokens=0,
                completion_tokens=0,
            )
        )
    except Exception:
        logger.exception("could not end the abandoned reply %s", job.assistant_message_id)


def get_turn_writer() -> TurnWriter:
    return process_state("chat.turn_writer", TurnWriter)


async def reply_start(*, owner_id: int, session_id: str, content: str, on_disconnect: OnDisconnect) -> str:
    """Start a reply to `content` in one of the owner's sessions; return the reply's id, which is its run's.

    The provider first (503 while its breaker refuses calls), then a run slot (429 past the owner's limit, 503 while
    shutting down), then the turn, stored with the others waiting (404, 409: nothing stored), then the run (503 if
    the hub cannot take it). Whatever refuses the request leaves nothing behind: the slot goes back.
    """
    provider = get_provider()
    refuse_while_unavailable(provider)
    hub = get_hub()
    slot = await reserve_slot(hub, owner_id)
    try:
        request = TurnRequest(
            owner_id=owner_id, session_id=session_id, content=content, provider=provider.name, model=provider.model
        )
        job = await get_turn_writer().create(request)
    except BaseException as exc:
        await give_back(hub, slot)
        if isinstance(exc, DatabaseError):
            error = ApiError(503, "The database is not answering; retry.", code="service_unavailable")
            error.headers["Retry-After"] = "1"
            raise error from None
        raise
    if isinstance(job, ChatSession.DoesNotExist):
        await give_back(hub, slot)
        raise ApiError(404, f"No chat session {session_id}.")
    if isinstance(job, ChatConflict):
        await give_back(hub, slot)
        raise ApiError(409, str(job), code="conflict")
    message_id = job.assistant_message_id
    flow = generate_reply(job, provider)
    await start_run(hub, message_id, owner_id=owner_id, flow=flow, on_disconnect=on_disconnect, slot=slot)
    return message_id
