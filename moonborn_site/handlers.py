"""The ASGI side of Django, trimmed for streaming.

Two things Django's stock ASGI handler costs per request (bench/RESULTS.md compares Moonborn with a plain Django view):

- A thread of its own for the request's sync work (asgiref's ThreadSensitiveContext), created when the request
  starts, joined by yet another thread when it ends, and held while the response streams: one idle OS thread
  per open stream. Here requests borrow single-thread executors from a small pool, and a streaming response
  gives its executor back as soon as its headers go out (:func:`release_request_thread`).
- A thread hop per stock middleware hook. Requests under /v1/ with an `Authorization` header authenticate by API
  key, so the session, CSRF, auth and messages middleware have nothing to do for them: they go to
  :class:`ApiHandler`, whose middleware is `MOONBORN_API_MIDDLEWARE`. Everything else (the browser UI, the admin,
  session calls to the API) goes through the full `MIDDLEWARE`.
"""

import re
from concurrent.futures import Executor, ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from asgiref.sync import SyncToAsync, ThreadSensitiveContext
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections

from .middleware import API_PREFIX


class _RequestThreads:
    """Single-thread executors lent to requests; up to `keep` idle ones are kept for the next requests.

    Used from the event loop's thread only. Django closes a request's database connections when it ends
    (CONN_MAX_AGE = 0), so a thread goes back clean, as in a WSGI server's thread pool.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._idle: list[ThreadPoolExecutor] = []

    def acquire(self) -> ThreadPoolExecutor:
        return self._idle.pop() if self._idle else ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def release(self, executor: ThreadPoolExecutor) -> None:
        if len(self._idle) < self.keep:
            self._idle.append(executor)
        else:
            executor.shutdown(wait=False)


_threads = _RequestThreads(keep=32)
# The sync calls Django makes when a stream ends (closing the response, `request_finished`) are short and touch
# no connection of the request's: the streams that gave their thread back share this one for them.
_stream_ends: Executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-end")


@dataclass
class _Lease:
    executor: ThreadPoolExecutor
    context: ThreadSensitiveContext
    returned: bool = False


_lease: ContextVar[_Lease | None] = ContextVar("moonborn_request_thread", default=None)


class PooledASGIHandler(ASGIHandler):
    """Django's ASGI handler, with the request's thread borrowed from a pool instead of created and joined."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)  # refuses it, as Django does
            return
        executor = _threads.acquire()
        context = ThreadSensitiveContext(executor=executor)
        lease = _Lease(executor, context)
        token = _lease.set(lease)
        try:
            async with context:
                await self.handle(scope, receive, send)
        finally:
            _lease.reset(token)
            if not lease.returned:
                lease.returned = True
                _threads.release(executor)


class ApiHandler(PooledASGIHandler):
    """The pooled handler with `MOONBORN_API_MIDDLEWARE` instead of `MIDDLEWARE`."""

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler.load_middleware reads settings.MIDDLEWARE; point it at the API list while it builds the
        # chain (once, at start-up, before any request).
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.MOONBORN_API_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = full


# POST /v1/chat/sessions/{id}/messages: the request that opens most streams, served by its fast path first.
_CHAT_MESSAGES = re.compile(r"/v1/chat/sessions/([^/]+)/messages")


class ByCredentials:
    """Send API-key requests under /v1/ to `api`, every other request to `full`.

    An API-key request for a chat reply goes to its ASGI fast path (`chat.streams.message_create_fast`), which
    hands whatever it does not serve itself to `api`.
    """

    def __init__(self, full: Any, api: Any, *, message_create_fast: Any) -> None:
        # Given by the application's composition (moonborn_site.asgi): the chat app depends on this module, not
        # the other way round.
        self.full = full
        self.api = api
        self.message_create_fast = message_create_fast if settings.MOONBORN_ASGI_FAST_PATH else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith(API_PREFIX)
            and any(name == b"authorization" for name, _ in scope["headers"])
        ):
            if self.message_create_fast is not None and scope["method"] == "POST" and not scope.get("root_path"):
                match = _CHAT_MESSAGES.fullmatch(scope["path"])
                if match is not None:
                    await self.message_create_fast(scope, receive, send, session_id=match[1], django=self.api)
                    return
            await self.api(scope, receive, send)
        else:
            await self.full(scope, receive, send)


def release_request_thread() -> None:
    """Give the current request's thread back to the pool while its response streams.

    A stream does its database work before it starts and in the run's own tasks (`runs.db.db`), so its request
    thread would only sit idle: one OS thread per open stream. What Django runs when the response ends goes to
    the shared stream-end thread instead.
    """
    lease = _lease.get()
    if lease is None or lease.returned:
        return
    lease.returned = True
    SyncToAsync.context_to_thread_executor[lease.context] = _stream_ends
    # The request may have used the database on its thread (a session lookup, say); Django would close that
    # connection when the response ends, on the thread that runs `request_finished`, which is no longer this one.
    # Close it now, on its own thread, before the thread serves anyone else (the executor runs one call at a time).
    lease.executor.submit(close_old_connections)
    _threads.release(lease.executor)
