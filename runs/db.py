"""Run short synchronous database work from async code without holding a connection."""

import functools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")


def release_connections() -> None:
    """Give back what the call used: CONN_MAX_AGE = 0, so open streams and long runs hold no connection.

    The exception is a file SQLite database, where a worker thread keeps its connection: there is no server
    connection to give back, a WAL-mode connection outside a transaction holds no lock, and opening one costs
    ~0.4 ms (Django registers its SQL functions on each), several times per reply. A connection left broken
    or inside a transaction is closed all the same.
    """
    for conn in connections.all(initialized_only=True):
        if (
            conn.vendor == "sqlite"
            and not conn.is_in_memory_db()  # type: ignore[attr-defined]
            and conn.connection is not None
            and not conn.in_atomic_block
            and conn.get_autocommit()
            and not conn.errors_occurred
        ):
            continue
        conn.close_if_unusable_or_obsolete()


def _call_and_close(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    try:
        return fn(*args, **kwargs)
    finally:
        release_connections()


# The wrapper that runs a call in its worker thread, made on first use: the database's vendor decides the thread and
# never changes. Asking `connections["default"]` on every call would make a new connection object on the event loop
# in each new context (each request's, each run's: ~50 µs), and building a SyncToAsync costs ~9 µs.
_run_in_thread: Callable[..., Awaitable[Any]] | None = None
_sqlite_thread: ThreadPoolExecutor | None = None
_made_lock = threading.Lock()


def _sqlite_executor() -> ThreadPoolExecutor | None:
    """The one thread that does all the work on a SQLite database (None for a database server).

    SQLite takes one writer at a time, and a writer that finds it taken sleeps and retries (for up to 100 ms
    a time): under load, writes from several threads wait on each other far longer than they take. In one
    thread they simply queue, and that thread keeps its connection.
    """
    global _sqlite_thread
    if connections["default"].vendor != "sqlite":
        return None
    with _made_lock:
        if _sqlite_thread is None:
            _sqlite_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
    return _sqlite_thread


def _wrapper() -> Callable[..., Awaitable[Any]]:
    """`_call_and_close` for async callers: in the SQLite thread, or in the loop's pool for a database server."""
    global _run_in_thread
    if _run_in_thread is None:
        _run_in_thread = sync_to_async(_call_and_close, thread_sensitive=False, executor=_sqlite_executor())
    return _run_in_thread


def db_sync(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """`db` for a background thread (not the event loop): the call runs in the SQLite thread, so that it queues
    behind the requests' writes instead of contending with them for the file, or here for a database server."""
    executor = _sqlite_executor()
    if executor is None:
        return _call_and_close(fn, *args, **kwargs)
    return executor.submit(functools.partial(_call_and_close, fn, *args, **kwargs)).result()


async def db(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Call a sync service function in a worker thread and give its connection back afterwards."""
    result: R = await _wrapper()(fn, *args, **kwargs)
    return result
