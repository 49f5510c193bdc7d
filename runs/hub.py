"""The run hub: runs are server-side tasks whose numbered events any number of followers read.

A run is started from a flow (an async iterator of `Event`s). The hub drives it in a task of its own,
detached from the request that started it, numbers each event 1, 2, 3…, encodes it once and keeps
the frames so that a follower can start at any id (`Last-Event-ID`). The HTTP responses only follow.
"""

import asyncio
import contextvars
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from django.conf import settings

from .events import Event, RunError, error_event
from .sse import HEARTBEAT, encode_event

logger = logging.getLogger(__name__)


class OnDisconnect(StrEnum):
    CANCEL = "cancel"
    CONTINUE = "continue"


class RunNotFound(LookupError):
    """The run is unknown here: never started, or its events are past retention."""


@dataclass(eq=False)
class _Run:
    id: str
    owner_id: int
    on_disconnect: OnDisconnect
    frames: list[bytes] = field(default_factory=list)
    done: bool = False
    followers: int = 0
    terminal: Event | None = None
    task: "asyncio.Task[None] | None" = None
    waiters: list["asyncio.Future[None]"] = field(default_factory=list)

    def append(self, event: Event) -> None:
        self.frames.append(encode_event(len(self.frames) + 1, event.type, event.data))
        if event.is_terminal:
            self.done = True
            self.terminal = event
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class RunHub(Protocol):
    def start(self, run_id: str, *, owner_id: int, flow: AsyncIterator[Event], on_disconnect: OnDisconnect) -> None: ...

    def exists(self, run_id: str) -> bool: ...

    def follow(
        self, run_id: str, *, after: int = 0, on_disconnect: OnDisconnect | None = None
    ) -> AsyncGenerator[bytes, None]: ...

    async def cancel(self, run_id: str, *, wait: float = 5.0) -> bool: ...

    async def wait(self, run_id: str) -> None: ...


class InProcessHub:
    """The embedded default: runs and their logs live in this process's memory."""

    def __init__(self, *, retention_seconds: float, heartbeat_seconds: float) -> None:
        self.retention_seconds = retention_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self._runs: dict[str, _Run] = {}

    # -- producing ---------------------------------------------------------------------------------

    def start(self, run_id: str, *, owner_id: int, flow: AsyncIterator[Event], on_disconnect: OnDisconnect) -> None:
        """Start driving `flow` as run `run_id` in a task detached from the caller's request."""
        if run_id in self._runs:
            raise ValueError(f"run {run_id} already exists")
        run = _Run(id=run_id, owner_id=owner_id, on_disconnect=on_disconnect)
        self._runs[run_id] = run
        # A fresh context: the task must not inherit the request's (asgiref's per-request thread
        # executor among it), since it outlives the request.
        run.task = asyncio.get_running_loop().create_task(
            self._drive(run, flow), name=f"run:{run_id}", context=contextvars.Context()
        )

    async def _drive(self, run: _Run, flow: AsyncIterator[Event]) -> None:
        try:
            async for event in flow:
                run.append(event)
                if event.is_terminal:
                    break
            else:
                if not run.done:
                    logger.error("run %s ended without a terminal event", run.id)
                    run.append(error_event("The run ended unexpectedly.", "internal_error", retryable=True))
        except asyncio.CancelledError:
            if not run.done:
                run.append(error_event("The run was cancelled.", "cancelled", retryable=False))
            raise
        except RunError as exc:
            if not run.done:
                run.append(error_event(str(exc), exc.code, retryable=exc.retryable))
        except Exception:
            logger.exception("run %s failed", run.id)
            if not run.done:
                run.append(error_event("Internal error while generating.", "internal_error", retryable=True))
        finally:
            aclose = getattr(flow, "aclose", None)
            if aclose is not None:
                await asyncio.shield(aclose())
            loop = asyncio.get_running_loop()
            loop.call_later(self.retention_seconds, self._forget, run)

    def _forget(self, run: _Run) -> None:
        if self._runs.get(run.id) is run:
            del self._runs[run.id]

    # -- following ---------------------------------------------------------------------------------

    def exists(self, run_id: str) -> bool:
        return run_id in self._runs

    def last_event_id(self, run_id: str) -> int:
        run = self._get(run_id)
        return len(run.frames)

    def is_done(self, run_id: str) -> bool:
        return self._get(run_id).done

    def owner_of(self, run_id: str) -> int | None:
        run = self._runs.get(run_id)
        return None if run is None else run.owner_id

    def terminal_event(self, run_id: str) -> Event | None:
        return self._get(run_id).terminal

    def _get(self, run_id: str) -> _Run:
        try:
            return self._runs[run_id]
        except KeyError:
            raise RunNotFound(run_id) from None

    async def follow(
        self, run_id: str, *, after: int = 0, on_disconnect: OnDisconnect | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Yield the run's frames after id `after`, then live ones, joined when several are ready.

        Yields `HEARTBEAT` after `heartbeat_seconds` without an event. A follower that leaves before
        the terminal event (its response was cancelled or closed) cancels the run when its policy
        is `cancel` and no other follower is left.
        """
        run = self._get(run_id)
        policy = on_disconnect or run.on_disconnect
        position = max(0, after)
        run.followers += 1
        loop = asyncio.get_running_loop()
        try:
            while True:
                frames = run.frames
                if position < len(frames):
                    end = len(frames)
                    # Coalesce every frame that is already waiting into one write.
                    chunk = frames[position] if end - position == 1 else b"".join(frames[position:end])
                    position = end
                    yield chunk
                    continue
                if run.done:
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                run.waiters.append(waiter)
                try:
                    async with asyncio.timeout(self.heartbeat_seconds):
                        await waiter
                except TimeoutError:
                    yield HEARTBEAT
        finally:
            run.followers -= 1
            if not run.done and policy is OnDisconnect.CANCEL and run.followers == 0 and run.task is not None:
                logger.info("run %s: last follower left, cancelling", run.id)
                run.task.cancel()

    # -- control -----------------------------------------------------------------------------------

    async def cancel(self, run_id: str, *, wait: float = 5.0) -> bool:
        """Cancel the run and wait (up to `wait` seconds) for its clean-up. False if it had ended."""
        run = self._runs.get(run_id)
        if run is None or run.task is None or run.task.done():
            return False
        run.task.cancel()
        await asyncio.wait({run.task}, timeout=wait)
        return True

    async def wait(self, run_id: str) -> None:
        """Wait until the run has ended and its clean-up is done."""
        run = self._get(run_id)
        if run.task is not None:
            await asyncio.wait({run.task})

    def active_count(self, owner_id: int) -> int:
        return sum(1 for run in self._runs.values() if run.owner_id == owner_id and not run.done)


_hub: InProcessHub | None = None


def get_hub() -> InProcessHub:
    """Return the process's hub, built from settings on first use."""
    global _hub
    if _hub is None:
        _hub = InProcessHub(
            retention_seconds=settings.MOONBORN_EVENT_RETENTION_SECONDS,
            heartbeat_seconds=settings.MOONBORN_SSE_HEARTBEAT_SECONDS,
        )
    return _hub
