"""The ends of replies that did not finish (`cancelled`, `failed`) reach the database together: one transaction for
all that are waiting.

Replies end together when a server stops: at the end of its drain every run still going is cancelled, and each
reply stores what it had produced as it ends. One transaction each, 10,000 ends queue in the database thread for
longer than a kill grace leaves (bench/RESULTS-shutdown.md). Here one `db()` call takes up to BATCH_LIMIT ends that
are waiting and stores them with a few statements (`messages_stop`), then the ends that arrived meanwhile in the
next. A lone end pays nothing extra: it is taken at once.
"""

import asyncio
import logging
from collections import deque

from moonborn_site.state import process_state
from runs.db import db, release_connections

from .services import ReplyStop, messages_stop

logger = logging.getLogger(__name__)

# At most this many ends in one transaction, so that other database work waits milliseconds behind one, not seconds.
BATCH_LIMIT = 1000

# An end and the future its reply awaits the write on.
Waiting = tuple[ReplyStop, asyncio.Future[None]]


class StopWriter:
    """Store the ends of this process's unfinished replies in shared transactions, one batch at a time."""

    def __init__(self) -> None:
        self._waiting: deque[Waiting] = deque()
        self._task: asyncio.Task[None] | None = None
        # How many transactions and ends were written (for tests, diagnostics and the shutdown's log).
        self.batches = 0
        self.stops = 0

    async def stop(self, reply: ReplyStop) -> None:
        """Store `reply`'s end (with the others waiting); raise what the write raised.

        A caller cancelled while it waits leaves its end in the queue: it is written all the same.
        """
        loop = asyncio.get_running_loop()
        written: asyncio.Future[None] = loop.create_future()
        self._waiting.append((reply, written))
        if self._task is None or self._task.done():
            # Detached from the reply that came first: it serves the others too.
            self._task = loop.create_task(self._run(), name="moonborn-stops")
        await written

    async def _run(self) -> None:
        while self._waiting:
            batch = [self._waiting.popleft() for _ in range(min(BATCH_LIMIT, len(self._waiting)))]
            try:
                outcomes: list[Exception | None] = await db(_write, [reply for reply, _ in batch])
            except asyncio.CancelledError:
                for _, written in batch:
                    written.cancel()
                raise
            except Exception as exc:  # the database thread itself is gone (the process is ending)
                outcomes = [exc] * len(batch)
            self.batches += 1
            self.stops += len(batch)
            for (_, written), outcome in zip(batch, outcomes, strict=True):
                if written.done():
                    continue  # its reply was cancelled while waiting; the end is stored all the same
                if outcome is None:
                    written.set_result(None)
                else:
                    written.set_exception(outcome)


def _write(stops: list[ReplyStop]) -> list[Exception | None]:
    """In the database thread: every end in one transaction; if that fails, each on its own, so that one end that
    cannot be written does not keep the others from the database."""
    try:
        messages_stop(stops=stops)
        return [None] * len(stops)
    except Exception as exc:
        # The next statements take a fresh connection if this one broke, as between two db() calls.
        release_connections()
        if len(stops) == 1:
            return [exc]
    outcomes: list[Exception | None] = []
    for stop in stops:
        try:
            messages_stop(stops=[stop])
            outcomes.append(None)
        except Exception as alone:
            release_connections()
            logger.error("could not store the end of reply %s: %s", stop.message_id, alone)
            outcomes.append(alone)
    return outcomes


def get_stop_writer() -> StopWriter:
    return process_state("chat.stop_writer", StopWriter)
