"""runs.db.db: sync work in a worker thread, called from async code."""

import asyncio
import contextvars
import threading

import pytest
from django.db import connection
from django.db.utils import ConnectionHandler

from runs.db import db

# db() hands back the worker thread's connection after each call, which needs database access.
pytestmark = pytest.mark.django_db(transaction=True)

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def _where(number: int, *, word: str) -> tuple[str, str, int, str]:
    return threading.current_thread().name, request_id.get(), number, word


async def test_the_call_runs_in_a_worker_thread_with_the_callers_context_and_arguments():
    request_id.set("req-1")
    thread, seen, number, word = await db(_where, 7, word="seven")
    assert (seen, number, word) == ("req-1", 7, "seven")
    assert thread != threading.current_thread().name
    if connection.vendor == "sqlite":
        # One thread for all SQLite work: writers queue instead of backing off on the database lock.
        assert thread.startswith("sqlite")
        assert (await db(_where, 1, word="one"))[0] == thread


async def test_concurrent_calls_each_take_their_own_context():
    async def call(value: str) -> str:
        request_id.set(value)
        return (await db(_where, 0, word=value))[1]

    assert await asyncio.gather(*(call(v) for v in ("a", "b", "c"))) == ["a", "b", "c"]


async def test_calls_from_new_contexts_make_no_connection_objects_on_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each request and each run has a context of its own, and `connections[...]` in a new context makes a new
    # connection object (~50 µs): the event loop must not, just to pick the thread.
    await db(_where, 0, word="first")
    made: list[str] = []
    create = ConnectionHandler.create_connection

    def counted(self: ConnectionHandler, alias: str) -> object:
        made.append(threading.current_thread().name)
        return create(self, alias)

    monkeypatch.setattr(ConnectionHandler, "create_connection", counted)
    loop = asyncio.get_running_loop()
    for number in range(5):
        await loop.create_task(db(_where, number, word="again"), context=contextvars.Context())
    assert threading.current_thread().name not in made


def _fail() -> None:
    raise LookupError("nothing here")


async def test_what_the_call_raises_reaches_the_caller():
    with pytest.raises(LookupError, match="nothing here"):
        await db(_fail)
