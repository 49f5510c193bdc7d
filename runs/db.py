"""Run short synchronous database work from async code without holding a connection."""

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

P = ParamSpec("P")
R = TypeVar("R")


def _call_and_close(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    try:
        return fn(*args, **kwargs)
    finally:
        # CONN_MAX_AGE = 0: a worker thread gives its connection back after every call, so open
        # streams and long runs hold none.
        close_old_connections()


async def db(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Call a sync service function in a worker thread and close its connection afterwards."""
    return await sync_to_async(_call_and_close, thread_sensitive=False)(fn, *args, **kwargs)
