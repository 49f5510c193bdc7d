"""The life of a server process around its runs: recovery at start, slow consumers, SIGTERM.

- At start, runs that a dead process left `generating`/`streaming` become `failed` (what they had
  saved is kept); with Redis a periodic reaper does the same for runs of workers that died.
- A stream whose client stops reading is dropped after MOONBORN_SSE_WRITE_TIMEOUT_SECONDS of blocked
  writes; its run then follows its `on_disconnect` policy. The server never buffers for it.
- On SIGTERM the process closes its listening sockets (new connections are refused; another worker sharing them
  takes them), takes no new runs on the connections it has (503), releases every follower with a `server_shutdown`
  error carrying its last event id (so the client resumes elsewhere without a gap) and lets its runs finish. With
  MOONBORN_SHUTDOWN_CANCEL_SECONDS of MOONBORN_SHUTDOWN_DRAIN_SECONDS left, it cancels the runs still going, waits
  for each to store how far it got (the replies' ends in shared transactions, chat.stops), then lets the server
  exit.
"""

import asyncio
import fcntl
import logging
import os
import signal
import threading
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from types import FrameType
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from moonborn_site.serving import close_listeners

from .asgi import GuardedSend
from .db import db
from .hub import Hub, get_hub
from .services import orphan_candidates, orphan_run_fail
from .sse import open_streams

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ORPHAN_ERROR = "The server running this stopped before it finished."


async def reap_orphans(hub: Hub, *, older_than_seconds: float) -> int:
    """Fail every run in the database that no live process is producing; return how many."""
    reaped = 0
    for run_id, owner_id in await db(orphan_candidates, older_than_seconds=older_than_seconds):
        if await hub.is_alive(run_id):
            continue
        if not await db(orphan_run_fail, run_id=run_id, error=ORPHAN_ERROR):
            continue  # Another worker's reaper got there first.
        await hub.abandon(run_id, owner_id, ORPHAN_ERROR)
        logger.warning("run %s was left unfinished by a process that stopped; marked failed", run_id)
        reaped += 1
    return reaped


ONE_SERVER_ONLY = (
    "another Moonborn server process is serving this database without REDIS_URL; run one process, or set REDIS_URL "
    "so that several share their runs."
)
# What this process holds while it serves as the only server of its database: released by the kernel (a file lock)
# or the database (a session's advisory lock) when the process ends, however it ends.
_sole_server: Any = None


def sole_server_error() -> str | None:
    """Without REDIS_URL this process must be its database's only server: the recovery at start fails every
    unfinished run, and another server's would be live. One sentence when another holds the database; else None
    (and this process holds it from now on)."""
    global _sole_server
    if settings.REDIS_URL or _sole_server is not None:
        return None
    database = settings.DATABASES["default"]
    engine = database["ENGINE"]
    if engine == "django.db.backends.sqlite3":
        name = str(database["NAME"])
        if name == ":memory:" or "mode=memory" in name:
            return None
        lock = os.open(f"{name}.server-lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            return ONE_SERVER_ONLY
        _sole_server = lock
    elif engine == "django.db.backends.postgresql":
        import psycopg
        from django.db import connections

        # A connection of its own, outside Django's pool, open as long as the process: its session holds the lock.
        session = psycopg.connect(autocommit=True, **connections["default"].get_connection_params())
        held = session.execute("SELECT pg_try_advisory_lock(%s)", [SOLE_SERVER_LOCK]).fetchone()
        if not (held and held[0]):
            session.close()
            return ONE_SERVER_ONLY
        _sole_server = session
    return None


# The advisory lock's key: any fixed 64-bit number ("moonborn" in ASCII), per database.
SOLE_SERVER_LOCK = int.from_bytes(b"moonborn", "big") - (1 << 63)


def recover_at_start() -> None:
    """Reap orphans once, before serving (in a thread: the server's event loop may be running)."""

    def work() -> None:
        async def reap() -> None:
            hub: Hub = import_string(settings.MOONBORN_HUB_BACKEND).from_settings()
            try:
                # A shared hub's runs belong to the workers that still beat; one process owns every run of the
                # in-process hub, so all its unfinished runs are orphans.
                older_than = settings.MOONBORN_WORKER_TTL_SECONDS if hub.shared else 0
                await reap_orphans(hub, older_than_seconds=older_than)
            finally:
                await hub.aclose()

        try:
            asyncio.run(reap())
        except Exception:
            logger.exception("could not recover unfinished runs at start")

    thread = threading.Thread(target=work, name="moonborn-recovery")
    thread.start()
    thread.join()


class StreamGuard:
    """ASGI wrapper: drop SSE responses whose writes stay blocked; drain on SIGTERM."""

    def __init__(self, app: Any) -> None:
        self.app: ASGIApp = app
        self.write_timeout = settings.MOONBORN_SSE_WRITE_TIMEOUT_SECONDS
        # The task blocked in a stream write → when the write began.
        self._blocked: dict[asyncio.Task[Any], float] = {}
        # The tasks the watchdog cancelled (weakly: a task of Django's own ends inside Django).
        self._dropped: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._draining = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._loop is None:
            self._on_first_request()
        assert self._loop is not None
        guarded_send = GuardedSend(send, self._blocked, self._loop)

        streams: list[Any] = []
        token = open_streams.set(streams)
        try:
            await self.app(scope, receive, guarded_send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task not in self._dropped:
                raise
            # The watchdog dropped this stream (its client stopped reading): an ending, not a failure.
            task.uncancel()
        finally:
            open_streams.reset(token)
            for frames in streams:
                # Runs the follower's clean-up now (a dropped slow client, an aborted response).
                await frames.aclose()

    def _on_first_request(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn(self._watch_writes())
        self._spawn(self._reap_periodically())
        if threading.current_thread() is threading.main_thread():
            self._install_sigterm()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        assert self._loop is not None
        task: asyncio.Task[Any] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_writes(self) -> None:
        assert self._loop is not None
        interval = max(0.05, min(1.0, self.write_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = self._loop.time()
            for task, since in list(self._blocked.items()):
                if now - since > self.write_timeout:
                    self._blocked.pop(task, None)
                    self._dropped.add(task)
                    logger.warning("dropping a stream whose client stopped reading for %.0f s", now - since)
                    # As if the client had disconnected: Django closes the response's iterator and
                    # the run follows its on_disconnect policy.
                    task.cancel()

    async def _reap_periodically(self) -> None:
        hub = get_hub()
        if not hub.shared:
            return  # The in-process hub's orphans were all reaped at start.
        while True:
            await asyncio.sleep(settings.MOONBORN_REAPER_SECONDS)
            try:
                await reap_orphans(hub, older_than_seconds=2 * settings.MOONBORN_WORKER_TTL_SECONDS)
            except Exception:
                logger.exception("the reaper failed; it will try again")

    def _install_sigterm(self) -> None:
        previous = signal.getsignal(signal.SIGTERM)
        loop = self._loop
        assert loop is not None

        def handle(sig: int, frame: FrameType | None) -> None:
            if self._draining:
                self._exit(previous, sig, frame)
                return
            self._draining = True
            # The drain is timed from the signal: a loop busy with thousands of streams starts its task late.
            loop.call_soon_threadsafe(self._spawn, self._drain_then_exit(previous, sig, loop.time()))

        signal.signal(signal.SIGTERM, handle)

    async def _drain_then_exit(self, previous: Any, sig: int, signalled: float) -> None:
        loop = asyncio.get_running_loop()
        budget = settings.MOONBORN_SHUTDOWN_DRAIN_SECONDS
        hub = get_hub()
        try:
            # Before the followers are released: a client told to resume elsewhere must not land here again.
            if not close_listeners(loop):
                logger.warning(
                    "SIGTERM: the listening sockets stay open until the server exits (they close at once with "
                    "--loop moonborn_site.serving:BurstAcceptLoop); new runs get 503"
                )
            hub.begin_shutdown()
            logger.info("SIGTERM: releasing followers and finishing runs before exit")
            await hub.drain(max(0.0, signalled + budget - settings.MOONBORN_SHUTDOWN_CANCEL_SECONDS - loop.time()))
            stopping = loop.time()
            cancelled, unfinished = await hub.stop_runs(max(0.0, signalled + budget - stopping))
            if cancelled:
                logger.warning(
                    "SIGTERM: %d run(s) still going after %.1f s cancelled; storing their ends took %.2f s",
                    cancelled,
                    stopping - signalled,
                    loop.time() - stopping,
                )
            if unfinished:
                logger.error(
                    "SIGTERM: %d run(s) had not ended when the drain ran out; they are left to the recovery of "
                    "unfinished runs",
                    unfinished,
                )
        finally:
            self._exit(previous, sig, None)

    @staticmethod
    def _exit(previous: Any, sig: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(sig, frame)  # The server's own handler (uvicorn's): a graceful exit.
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(sig)
