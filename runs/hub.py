"""The run hub: runs are server-side tasks whose numbered events any number of followers read.

A run is started from a flow (an async iterator of `Event`s). The hub drives it in a task of its own,
detached from the request that started it, numbers each event 1, 2, 3…, encodes it once and keeps
the frames so that a follower can start at any id (`Last-Event-ID`). The HTTP responses only follow.

`Hub` is what callers use. `InProcessHub` keeps everything in this process (the embedded default);
`runs.redis_hub.RedisHub` adds a Redis event log so that any worker can follow, resume or cancel any run.
"""

import asyncio
import contextvars
import logging
import uuid
from array import array
from bisect import bisect_right
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, Self

from django.conf import settings
from django.utils.module_loading import import_string

from moonborn_site.state import process_state

from .events import Event, RunError, error_event
from .sse import HEARTBEAT, encode_event

logger = logging.getLogger(__name__)


class OnDisconnect(StrEnum):
    CANCEL = "cancel"
    CONTINUE = "continue"


# The `cancelled` error of a run that its server's shutdown stopped.
SHUTDOWN_CANCELLED = "The server shut down before the run finished."


class RunNotFound(LookupError):
    """The run is unknown here: never started, or its events are past retention."""


@dataclass(frozen=True)
class Slot:
    """One of an owner's run slots, taken by a request before it stores anything and given to the run it starts
    (or given back if it starts none): the limit's check and the count's rise are one step."""

    owner_id: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


class RunInfo(NamedTuple):
    owner_id: int
    done: bool
    last_event_id: int
    terminal: Event | None


def shutdown_frame(last_event_id: int) -> bytes:
    """The frame a follower gets when this server shuts down while the run goes on.

    It repeats the id of the last event the follower received, so a client that resumes with
    `Last-Event-ID` (on another worker) continues exactly where it stopped.
    """
    return encode_event(
        last_event_id,
        "error",
        {"error": "The server is shutting down; resume this stream.", "code": "server_shutdown", "retryable": True},
    )


class Departure:
    """Tells a follower that its client has left: it stops at once, even while waiting for the next event.

    Set by whoever watches the connection (`runs.asgi.SseStream`), from another task than the relaying follower's.
    """

    __slots__ = ("left", "_wake")

    def __init__(self) -> None:
        self.left = False
        self._wake: Callable[[], None] | None = None

    def set(self) -> None:
        self.left = True
        if self._wake is not None:
            self._wake()


# At most about this many bytes of frames in one write to a follower.
WRITE_LIMIT = 64 * 1024

Write = Callable[[bytes], Awaitable[None]]
# Starts a write and returns its coroutine (see `Hub.relay`).
StartWrite = Callable[[bytes], Coroutine[Any, Any, None]]


class _Rest:
    """The rest of a write whose coroutine was started in another task and suspended there.

    Awaiting it in the follower's task goes on driving the coroutine: first hand the task what it suspended on,
    then resume it (or throw the task's cancellation into it) until it ends.
    """

    __slots__ = ("coro", "suspended_on")

    def __init__(self, coro: Coroutine[Any, Any, None], suspended_on: Any) -> None:
        self.coro = coro
        self.suspended_on = suspended_on

    def __await__(self) -> Generator[Any, None, None]:
        suspended_on, self.suspended_on = self.suspended_on, None
        while True:
            try:
                yield suspended_on
            except BaseException as exc:
                try:
                    suspended_on = self.coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                suspended_on = self.coro.send(None)
            except StopIteration:
                return


class _Pusher:
    """A relaying follower that is caught up: the producer writes each new frame to its client itself.

    The write is the server's `send`, which as a rule ends without suspending (the socket takes the bytes). Then
    the follower's task is not woken at all: one task switch per event instead of two. A write that suspends
    (the client reads slowly), or fails, or the run's end, wakes the follower to take over.
    """

    __slots__ = ("start_write", "waiter", "position", "rest", "error", "sleeping", "heartbeat_seconds")

    def __init__(
        self, start_write: StartWrite, sleeping: dict["asyncio.Future[bool]", float], heartbeat_seconds: float
    ) -> None:
        self.start_write = start_write
        self.waiter: asyncio.Future[bool] | None = None
        self.position = 0
        self.rest: _Rest | None = None
        self.error: Exception | None = None
        self.sleeping = sleeping
        self.heartbeat_seconds = heartbeat_seconds

    def push(self, frames: bytes, first: int, event_id: int, last: bool) -> bool:
        """Write events `first`…`event_id` (the next ones for this follower); False once the follower must take
        over."""
        waiter = self.waiter
        if waiter is None or waiter.done():
            return False  # not waiting, or already woken: it catches up by itself
        if self.position != first - 1:
            waiter.set_result(False)
            return False
        coro = self.start_write(frames)
        self.position = event_id
        try:
            suspended_on = coro.send(None)
        except StopIteration:
            if not last:
                self.sleeping[waiter] = waiter.get_loop().time() + self.heartbeat_seconds
                return True
        except Exception as exc:
            self.error = exc
        else:
            self.rest = _Rest(coro, suspended_on)
        waiter.set_result(False)
        return False

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(False)


@dataclass(eq=False, slots=True)
class _Run:
    id: str
    owner_id: int
    on_disconnect: OnDisconnect
    # The frames, back to back, and where each one ends: a long or idle stream's log costs its bytes and 4 more
    # per event, not a bytes object and a list slot each (~60 bytes) for every token.
    log: bytearray = field(default_factory=bytearray)
    ends: array = field(default_factory=lambda: array("I"))
    done: bool = False
    followers: int = 0
    terminal: Event | None = None
    task: "asyncio.Task[None] | None" = None
    # Followers waiting for the next event; each gets False when one comes (True: time for a heartbeat).
    waiters: list["asyncio.Future[bool]"] = field(default_factory=list)
    # Relaying followers that are caught up: they get each new frame written at once.
    pushers: list[_Pusher] = field(default_factory=list)
    # Called once, when the terminal event is appended (the hub's count of its owner's active runs).
    on_done: Callable[["_Run"], None] | None = None
    # While not None: the events after this id are logged but not yet handed to the followers (`release`).
    held: int | None = None
    # Cancelled because this process is stopping (`Hub.stop_runs`), not by anyone who asked.
    stopped: bool = False

    @property
    def count(self) -> int:
        """How many events the run has (the id of its last one)."""
        return len(self.ends)

    def frames_after(self, position: int, limit: int = WRITE_LIMIT) -> tuple[bytes, int]:
        """The frames of the events after id `position`, joined, up to about `limit` bytes; and the last id in them.

        Bounded so that a follower far behind (a slow client, a fast producer) hands the transport a bounded write
        and then waits for it to drain, instead of copying the whole log into its buffer.
        """
        start = self.ends[position - 1] if position else 0
        end = max(position + 1, bisect_right(self.ends, start + limit, lo=position))
        with memoryview(self.log) as view:
            return bytes(view[start : self.ends[end - 1]]), end

    def append(self, event: Event) -> bytes:
        frame = encode_event(len(self.ends) + 1, event.type, event.data)
        self.append_frame(frame, event if event.is_terminal else None)
        return frame

    def append_frame(self, frame: bytes, terminal: Event | None) -> None:
        self.log += frame
        self.ends.append(len(self.log))
        if terminal is not None and not self.done:
            self.done = True
            self.terminal = terminal
            if self.on_done is not None:
                self.on_done(self)
        if self.held is None:
            event_id = len(self.ends)
            self._hand_over(frame, event_id, event_id)

    def hold(self) -> None:
        """Log the events from now on without handing them to the followers, until `release`."""
        if self.held is None:
            self.held = len(self.ends)

    def release(self) -> None:
        """Hand the events logged since `hold` to the followers in one piece: one write for a caught-up client."""
        held, self.held = self.held, None
        if held is None or held == len(self.ends):
            return
        start = self.ends[held - 1] if held else 0
        self._hand_over(bytes(self.log[start:]), held + 1, len(self.ends))

    def _hand_over(self, frames: bytes, first: int, event_id: int) -> None:
        """Events `first`…`event_id` (their frames, joined) to the pushers; wake the waiting followers."""
        pushers = self.pushers
        if pushers:
            last = self.done
            if len(pushers) == 1:
                # The usual case (one client per stream): no list made per event.
                if not pushers[0].push(frames, first, event_id, last):
                    self.pushers = []
            else:
                self.pushers = [pusher for pusher in pushers if pusher.push(frames, first, event_id, last)]
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(False)

    def wake(self) -> None:
        """Wake every follower waiting for this run (to leave, or to see the server shutting down)."""
        pushers, self.pushers = self.pushers, []
        for pusher in pushers:
            pusher.wake()
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(False)

    def info(self) -> RunInfo:
        return RunInfo(self.owner_id, self.done, len(self.ends), self.terminal)


class _Follower:
    """One follower of a run: its place in the run, the heartbeat its client is owed, its leaving. `follow` and
    `relay` each drive one: they send what `to_send` answers, `wait` while it answers nothing, `leave` at the end."""

    __slots__ = ("hub", "run", "policy", "position", "loop", "heartbeat_at", "for_shutdown")

    def __init__(self, hub: "Hub", run: _Run, policy: OnDisconnect, after: int) -> None:
        self.hub = hub
        self.run = run
        self.policy = policy
        self.position = max(0, after)
        self.loop = asyncio.get_running_loop()
        self.heartbeat_at = self.loop.time() + hub.heartbeat_seconds
        # Released by the server's shutdown: not a disconnect, the run goes on whatever the policy.
        self.for_shutdown = False

    def to_send(self) -> bytes | None:
        """What the client gets now: the frames after the position, joined up to WRITE_LIMIT (each keeps its id), or
        the `server_shutdown` frame (then None); b"" while there is nothing yet (then `wait`); None at the run's end."""
        run = self.run
        if self.for_shutdown:
            return None
        if self.position < run.count:
            chunk, self.position = run.frames_after(self.position)
            return chunk
        if run.done:
            return None
        if self.hub.shutting_down:
            self.for_shutdown = True
            return shutdown_frame(self.position)
        return b""

    def sent(self) -> None:
        """The client got a write: its next heartbeat is owed a period from now."""
        self.heartbeat_at = self.loop.time() + self.hub.heartbeat_seconds

    async def wait(self, pusher: _Pusher | None = None) -> bool:
        """Wait for the next event or the shutdown (False) or until a heartbeat is owed (True). As a `pusher`, the
        follower gets the new events written by the producer meanwhile."""
        run, hub = self.run, self.hub
        waiter: asyncio.Future[bool] = self.loop.create_future()
        if pusher is None:
            run.waiters.append(waiter)
        else:
            pusher.waiter = waiter
            pusher.position = self.position
            run.pushers.append(pusher)
        hub._sleeping[waiter] = self.heartbeat_at
        hub._start_ticker(self.loop)
        try:
            return await waiter
        finally:
            # A push moves the heartbeat owed (`_Pusher.push`): the next one is owed from the producer's last write.
            self.heartbeat_at = hub._sleeping.pop(waiter, self.heartbeat_at)
            if pusher is not None:
                pusher.waiter = None
                if pusher in run.pushers:
                    run.pushers.remove(pusher)
                self.position = pusher.position

    def leave(self) -> None:
        """Stop following: leaving before the run's end, but for the shutdown, is a disconnect (`on_disconnect`)."""
        self.hub._left(self.run, self.policy, cancel_if_last=not self.run.done and not self.for_shutdown)


class Hub:
    """A run hub, as callers use it, and the machinery every backend shares: runs driven, logged and followed here.

    A backend decides where runs are shared, by overriding the storage hooks (`_lookup`, `_joined`, `_left`,
    `_publish`, `_finished`, `info`, …): `InProcessHub` nowhere, `runs.redis_hub.RedisHub` through Redis.
    `get_hub` builds the one `MOONBORN_HUB_BACKEND` names, as Django builds its cache backends.
    """

    # Whether other processes produce runs through this hub (then a reaper must watch for dead ones).
    shared = False

    async def ping(self) -> None:
        """Raise when the store the hub shares runs through cannot be reached (in process: nothing to reach)."""

    async def aclose(self) -> None:
        """Release the hub's connections (in process: none)."""

    @classmethod
    def from_settings(cls) -> Self:
        """The hub the settings describe (`get_hub` builds the process's one with it)."""
        return cls(
            retention_seconds=settings.MOONBORN_EVENT_RETENTION_SECONDS,
            heartbeat_seconds=settings.MOONBORN_SSE_HEARTBEAT_SECONDS,
        )

    def __init__(self, *, retention_seconds: float, heartbeat_seconds: float) -> None:
        self.retention_seconds = retention_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.shutting_down = False
        self._runs: dict[str, _Run] = {}
        # owner id → how many of the runs this process produces for them have not ended
        self._active: dict[int, int] = {}
        # Slots taken by requests that have not started their run yet: token → owner id, and owner id → how many.
        self._slots: dict[str, int] = {}
        self._reserved: dict[int, int] = {}
        # A waiting follower's future → when it is owed a heartbeat. One task wakes the overdue ones, instead of a
        # timer armed and disarmed for every event of every stream.
        self._sleeping: dict[asyncio.Future[bool], float] = {}
        self._ticker: asyncio.Task[None] | None = None

    # -- producing ---------------------------------------------------------------------------------

    async def reserve(self, owner_id: int, *, limit: int) -> Slot | None:
        """Take one of the owner's `limit` slots, or None when runs going and slots taken fill them.

        Checked and taken without awaiting anything: two requests can never both see the last free slot.
        """
        if self._active.get(owner_id, 0) + self._reserved.get(owner_id, 0) >= limit:
            return None
        slot = Slot(owner_id)
        self._take(slot)
        return slot

    async def release(self, slot: Slot) -> None:
        """Give back a slot whose request started no run (it failed, or was refused after reserving)."""
        self._give_back(slot)

    def _take(self, slot: Slot) -> None:
        self._slots[slot.token] = slot.owner_id
        self._reserved[slot.owner_id] = self._reserved.get(slot.owner_id, 0) + 1

    def _give_back(self, slot: Slot) -> None:
        if self._slots.pop(slot.token, None) is None:
            return  # already given back, or its run started
        left = self._reserved.get(slot.owner_id, 0) - 1
        if left > 0:
            self._reserved[slot.owner_id] = left
        else:
            self._reserved.pop(slot.owner_id, None)

    async def start(
        self,
        run_id: str,
        *,
        owner_id: int,
        flow: AsyncIterator[Event],
        on_disconnect: OnDisconnect,
        slot: Slot | None = None,
    ) -> None:
        """Start driving `flow` as run `run_id` in a task detached from the caller's request (in `slot`, if the
        request reserved one: the run counts where the slot did)."""
        self._start_local(run_id, owner_id=owner_id, flow=flow, on_disconnect=on_disconnect)
        if slot is not None:
            self._give_back(slot)

    def _start_local(
        self, run_id: str, *, owner_id: int, flow: AsyncIterator[Event], on_disconnect: OnDisconnect
    ) -> _Run:
        if run_id in self._runs:
            raise ValueError(f"run {run_id} already exists")
        run = _Run(id=run_id, owner_id=owner_id, on_disconnect=on_disconnect, on_done=self._ended)
        self._runs[run_id] = run
        self._active[owner_id] = self._active.get(owner_id, 0) + 1
        # A fresh context: the task must not inherit the request's (asgiref's per-request thread
        # executor among it), since it outlives the request.
        loop = asyncio.get_running_loop()
        run.task = loop.create_task(self._drive(run, flow), name=f"run:{run_id}", context=contextvars.Context())
        # What the flow publishes in its first step (a reply's `message.started`, its lorebook call) reaches a
        # client in one write: the release is the next callback after that step, as callbacks run in order.
        run.hold()
        loop.call_soon(run.release)
        return run

    async def _drive(self, run: _Run, flow: AsyncIterator[Event]) -> None:
        try:
            async for event in flow:
                self._publish(run, event)
                if event.is_terminal:
                    break
            else:
                if not run.done:
                    logger.error("run %s ended without a terminal event", run.id)
                    self._publish(run, error_event("The run ended unexpectedly.", "internal_error", retryable=True))
        except asyncio.CancelledError:
            if not run.done:
                message = SHUTDOWN_CANCELLED if run.stopped else "The run was cancelled."
                self._publish(run, error_event(message, "cancelled", retryable=False))
            raise
        except RunError as exc:
            if not run.done:
                self._publish(run, error_event(str(exc), exc.code, retryable=exc.retryable))
        except Exception:
            logger.exception("run %s failed", run.id)
            if not run.done:
                self._publish(run, error_event("Internal error while generating.", "internal_error", retryable=True))
        finally:
            aclose = getattr(flow, "aclose", None)
            if aclose is not None:
                await asyncio.shield(aclose())
            await asyncio.shield(self._finished(run))
            asyncio.get_running_loop().call_later(self.retention_seconds, self._forget, run)

    def _publish(self, run: _Run, event: Event) -> None:
        run.append(event)

    def _ended(self, run: _Run) -> None:
        left = self._active.get(run.owner_id, 0) - 1
        if left > 0:
            self._active[run.owner_id] = left
        else:
            self._active.pop(run.owner_id, None)

    async def _finished(self, run: _Run) -> None:
        """Hook: the run has ended and its flow's clean-up is done."""

    def _forget(self, run: _Run) -> None:
        if self._runs.get(run.id) is run:
            del self._runs[run.id]

    # -- reading -----------------------------------------------------------------------------------

    async def info(self, run_id: str) -> RunInfo | None:
        """Who owns the run, whether it ended and its last event id; None if unknown here."""
        run = self._runs.get(run_id)
        return None if run is None else run.info()

    async def _lookup(self, run_id: str) -> _Run | None:
        return self._runs.get(run_id)

    async def follow(
        self, run_id: str, *, after: int = 0, on_disconnect: OnDisconnect | None = None, first: bytes = b""
    ) -> AsyncGenerator[bytes, None]:
        """Yield the run's frames after id `after` (the first chunk prefixed with `first`), then live ones, joined
        when several are ready.

        Yields `HEARTBEAT` after `heartbeat_seconds` without an event. A follower that leaves before
        the terminal event (its response was cancelled or closed) cancels the run
        when its policy is `cancel` and no other follower is left. When the server shuts down, the follower gets a
        `server_shutdown` error (the run goes on) and ends.
        """
        follower = await self._join(run_id, after, on_disconnect)
        try:
            while (chunk := follower.to_send()) is not None:
                # With nothing to send yet, a `first` still goes (a resume of a quiet run): the stream opens now.
                if not chunk and not first:
                    if not await follower.wait():
                        continue
                    chunk = HEARTBEAT
                yield first + chunk if first else chunk
                first = b""
                follower.sent()
        finally:
            follower.leave()

    async def relay(
        self,
        run_id: str,
        *,
        write: Write,
        start_write: StartWrite,
        finish_write: Callable[[Awaitable[None]], Awaitable[None]],
        after: int = 0,
        on_disconnect: OnDisconnect | None = None,
        departure: Departure | None = None,
        first: bytes = b"",
    ) -> None:
        """Write the run's frames after id `after` (the first write prefixed with `first`), then live ones.

        `follow`, with the writing done here: while the follower is caught up, the producer writes each new event
        with `start_write` as it publishes it (`_Pusher`), and this task sleeps until a write suspends or fails, the
        run ends, a heartbeat is due, the client leaves or the server shuts down. `write` serves this task's own
        writes; `finish_write` awaits a write that the producer began and that suspended (a slow client).
        Leaving, cancellation and shutdown are as for `follow`.
        """
        follower = await self._join(run_id, after, on_disconnect)
        pusher = _Pusher(start_write, self._sleeping, self.heartbeat_seconds)
        if departure is not None:
            departure._wake = pusher.wake
        try:
            while not (departure is not None and departure.left) and (chunk := follower.to_send()) is not None:
                # With nothing to send yet, a `first` still goes (a resume of a quiet run): the stream opens now.
                if not chunk and not first:
                    heartbeat = await follower.wait(pusher)
                    rest, pusher.rest = pusher.rest, None
                    if rest is not None:
                        await finish_write(rest)
                    error, pusher.error = pusher.error, None
                    if error is not None:
                        raise error
                    if not heartbeat:
                        continue
                    chunk = HEARTBEAT
                await write(first + chunk if first else chunk)
                first = b""
                follower.sent()
        finally:
            if pusher.rest is not None:
                # Cancelled before it could finish a write the producer began: that write ends here, unsent.
                pusher.rest.coro.close()
            follower.leave()

    async def _join(self, run_id: str, after: int, on_disconnect: OnDisconnect | None) -> _Follower:
        """A new follower of the run from id `after` on, counted as followed; its policy is the run's unless given."""
        run = await self._lookup(run_id)
        if run is None:
            raise RunNotFound(run_id)
        await self._joined(run)
        return _Follower(self, run, on_disconnect or run.on_disconnect, after)

    def _start_ticker(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start `_tick` on `loop` unless it runs there already."""
        if self._ticker is None or self._ticker.done() or self._ticker.get_loop() is not loop:
            self._ticker = loop.create_task(self._tick(), name="moonborn-heartbeats", context=contextvars.Context())

    async def _tick(self) -> None:
        """Wake the followers that are owed a heartbeat (for the life of the process, from the first follower on).

        It stays rather than ending when no follower waits: a stream's follower waits between every two events.
        """
        loop = asyncio.get_running_loop()
        every = min(1.0, self.heartbeat_seconds / 4)
        while True:
            await asyncio.sleep(every)
            now = loop.time()
            for waiter, due in list(self._sleeping.items()):
                if due <= now and not waiter.done():
                    waiter.set_result(True)

    async def _joined(self, run: _Run) -> None:
        run.followers += 1

    def _left(self, run: _Run, policy: OnDisconnect, *, cancel_if_last: bool) -> None:
        run.followers -= 1
        if cancel_if_last and policy is OnDisconnect.CANCEL and run.followers == 0 and run.task is not None:
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
        """Wait until a run of this process has ended and its clean-up is done."""
        run = self._runs.get(run_id)
        if run is None:
            raise RunNotFound(run_id)
        if run.task is not None:
            await asyncio.wait({run.task})

    async def active_count(self, owner_id: int) -> int:
        """The owner's runs going and slots taken for runs about to start."""
        return self._active.get(owner_id, 0) + self._reserved.get(owner_id, 0)

    def local_run_ids(self) -> set[str]:
        """Ids of the runs this process is producing and that have not ended."""
        return {run.id for run in self._runs.values() if run.task is not None and not run.done}

    # -- recovery ----------------------------------------------------------------------------------

    async def is_alive(self, run_id: str) -> bool:
        """Whether a live process is still producing the run (here: only this one can)."""
        return run_id in self.local_run_ids()

    async def abandon(self, run_id: str, owner_id: int, message: str) -> None:
        """End the log of a run whose process died. No log of another process lives here."""

    # -- shutdown ----------------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Stop taking new runs and release every follower with a `server_shutdown` error."""
        self.shutting_down = True
        for run in list(self._runs.values()):
            run.wake()

    async def drain(self, within: float) -> None:
        """Wait (up to `within` seconds) for the runs this process produces to finish."""
        tasks = self._going()
        if tasks:
            logger.info("draining %d run(s) before shutdown", len(tasks))
            await asyncio.wait(tasks, timeout=within)

    async def stop_runs(self, within: float) -> tuple[int, int]:
        """Cancel every run this process still produces and wait (up to `within` seconds) for their clean-up, in
        which each stores how far it got; return how many were cancelled and how many had not ended by then.

        For a process that is about to exit: no other process can take a run over, so cancelled and stored is the
        best end a run that has not finished can have. Runs whose terminal event is out are not cancelled: only
        their clean-up is waited for.
        """
        tasks = self._going()
        cancelled = 0
        for run in self._runs.values():
            if run.task is not None and not run.task.done() and not run.done:
                run.stopped = True
                run.task.cancel()
                cancelled += 1
        if not tasks:
            return 0, 0
        _, pending = await asyncio.wait(tasks, timeout=within)
        return cancelled, len(pending)

    def _going(self) -> set["asyncio.Task[None]"]:
        """The tasks of the runs this process produces that have not ended (their clean-up included)."""
        return {run.task for run in self._runs.values() if run.task is not None and not run.task.done()}


class InProcessHub(Hub):
    """The embedded default: runs and their logs live in this process's memory, for this process's followers."""


def _backend() -> Hub:
    backend: type[Hub] = import_string(settings.MOONBORN_HUB_BACKEND)
    return backend.from_settings()


def get_hub() -> Hub:
    """Return the process's hub, built on first use by the backend `MOONBORN_HUB_BACKEND` names (the Redis one when
    REDIS_URL is set), as Django builds its cache backends."""
    return process_state("runs.hub", _backend)
