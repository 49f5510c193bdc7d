"""Run short synchronous database work from async code without holding a connection."""

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")


def _release_connections() -> None:
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
        _release_connections()


async def db(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Call a sync service function in a worker thread and give its connection back afterwards."""
    return await sync_to_async(_call_and_close, thread_sensitive=False)(fn, *args, **kwargs)
