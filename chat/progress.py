"""Partial reply content reaches the database on a timer: one write for all streaming replies, never per token.

Each streaming reply registers the list its deltas are appended to; every ``MOONBORN_PROGRESS_FLUSH_SECONDS``
one task saves the content of the replies that grew since the last save, in one transaction with one
statement run for all rows. A process with 10,000 replies streaming makes one write a second, not 10,000.
The reply's own final write (completed, cancelled or failed) is authoritative: a progress write only touches
a message that is still `streaming`.
"""

import asyncio
import logging

from django.conf import settings

from moonborn_site.state import process_state
from runs.db import db

from .services import messages_progress
from .text import ReplyText

logger = logging.getLogger(__name__)


class ProgressWriter:
    """Save the partial content of every streaming reply in this process, all at once, every `interval` s."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        # message id → (its text so far, how many of its deltas were saved)
        self._replies: dict[str, tuple[ReplyText, int]] = {}
        self._task: asyncio.Task[None] | None = None
        # How many reply contents were saved so far (for tests and diagnostics).
        self.saved = 0

    def track(self, message_id: str, text: ReplyText) -> None:
        """Save `text` from time to time until `untrack`."""
        self._replies[message_id] = (text, text.deltas)
        if self._task is None or self._task.done():
            # Detached from the request that started the first reply (like the runs themselves).
            self._task = asyncio.get_running_loop().create_task(self._run(), name="moonborn-progress")

    def untrack(self, message_id: str) -> None:
        self._replies.pop(message_id, None)

    async def flush(self) -> int:
        """Save what grew since the last save; return how many replies were written."""
        updates = []
        for message_id, (text, saved) in list(self._replies.items()):
            if text.deltas != saved:
                updates.append((message_id, text.text()))
                self._replies[message_id] = (text, text.deltas)
        if updates:
            await db(messages_progress, updates=updates)
            self.saved += len(updates)
        return len(updates)

    async def _run(self) -> None:
        while self._replies:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:
                # The final write of each reply still happens; a lost progress write only loses crash safety.
                logger.exception("could not save the progress of %d streaming replies", len(self._replies))


def get_progress_writer() -> ProgressWriter:
    return process_state("chat.progress_writer", lambda: ProgressWriter(settings.MOONBORN_PROGRESS_FLUSH_SECONDS))
