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

import logging
import re
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import import_module
from typing import Any, cast
from urllib.parse import parse_qsl

from asgiref.sync import SyncToAsync, ThreadSensitiveContext
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import setting_changed
from django.db import close_old_connections
from django.dispatch import receiver
from django.http import HttpResponseBase
from django.http.request import split_domain_port, validate_host
from django.urls import get_resolver
from django.utils.module_loading import import_string

from runs.sse import SSE_CONTENT_TYPE, sse_headers

from .middleware import API_PREFIX, ServeWithDjango
from .state import forget, process_state

logger = logging.getLogger(__name__)


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


class LeanRequest:
    """What an ASGI view reads from an HTTP scope, as Django reads it: query parameters (the last value of each) and
    headers (a repeated one's values joined with commas)."""

    __slots__ = ("scope", "query", "headers")

    def __init__(self, scope: Any) -> None:
        self.scope = scope
        raw_query = scope.get("query_string", b"")
        self.query: dict[str, str] = dict(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True))
        self.headers: dict[bytes, str] = {}
        for name, raw in scope["headers"]:
            name, value = name.lower(), raw.decode("latin-1")
            self.headers[name] = f"{self.headers[name]},{value}" if name in self.headers else value

    def is_secure(self) -> bool:
        return bool(self.scope.get("scheme") == "https")

    def host_allowed(self) -> bool:
        """Whether Django's `get_host()` accepts this request's host: ALLOWED_HOSTS, or DEBUG's localhost names.

        False too without a Host header: Django then takes the server's name, which is its to judge.
        """
        name = b"x-forwarded-host" if settings.USE_X_FORWARDED_HOST and b"x-forwarded-host" in self.headers else b"host"
        host = self.headers.get(name)
        if host is None:
            return False
        allowed = settings.ALLOWED_HOSTS
        if settings.DEBUG and not allowed:
            allowed = [".localhost", "127.0.0.1", "[::1]"]
        domain, _ = split_domain_port(host)
        return bool(domain) and validate_host(domain, allowed)


class LeanChain:
    """`MOONBORN_API_MIDDLEWARE` for the requests served on ASGI directly, so that none of it can be skipped.

    Each middleware there says what it does for such a request: `lean_request(request)` (a refusal, or None; or
    ServeWithDjango) before the view, in the list's order; `lean_response(request, response)` on the way out, in
    reverse. `build` returns None when one of them says neither: then Django's API handler serves everything.
    """

    def __init__(self, before: list[Callable[..., Any]], after: list[Callable[..., Any]]) -> None:
        self.before = before
        self.after = after
        # The headers of an SSE response, but for its Location, for a plain and a secure request: built once each.
        self.sse_templates: dict[bool, list[tuple[bytes, bytes]]] = {}

    @classmethod
    def build(cls) -> "LeanChain | None":
        before: list[Callable[..., Any]] = []
        after: list[Callable[..., Any]] = []
        for path in settings.MOONBORN_API_MIDDLEWARE:
            middleware = import_string(path)
            if not hasattr(middleware, "lean_request") and not hasattr(middleware, "lean_response"):
                logger.warning("%s has no lean hooks: Django's API handler serves every API request", path)
                return None
            if hasattr(middleware, "lean_request"):
                before.append(middleware.lean_request)
            if hasattr(middleware, "lean_response"):
                after.insert(0, middleware.lean_response)
        return cls(before, after)

    async def refusal(self, request: LeanRequest) -> HttpResponseBase | None:
        for hook in self.before:
            refused = await hook(request)
            if refused is not None:
                return cast(HttpResponseBase, refused)
        return None

    def headers(self, request: LeanRequest, response: HttpResponseBase) -> list[tuple[bytes, bytes]]:
        """The response's headers as Django's API handler would send them."""
        for hook in self.after:
            hook(request, response)
        return [(name.encode("ascii"), value.encode("latin-1")) for name, value in response.items()]

    def sse_headers(self, request: LeanRequest, *, location: str) -> list[tuple[bytes, bytes]]:
        """The headers of `runs.sse.sse_response(…, location=location)` as Django's API handler would send them."""
        secure = request.is_secure()
        template = self.sse_templates.get(secure)
        if template is None:
            response = HttpResponseBase(content_type=SSE_CONTENT_TYPE)
            sse_headers(response, location=_LOCATION)
            template = self.sse_templates[secure] = self.headers(request, response)
        marker, value = _LOCATION.encode("latin-1"), location.encode("latin-1")
        return [(name, value if current == marker else current) for name, current in template]

    async def send(self, request: LeanRequest, response: HttpResponseBase, send: Any) -> None:
        """Send a complete (non-streaming) response."""
        headers = self.headers(request, response)
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": response.content})  # type: ignore[attr-defined]


_LOCATION = "\x00location\x00"


def lean_chain() -> LeanChain | None:
    return process_state("moonborn_site.lean_chain", LeanChain.build)


@receiver(setting_changed)
def _forget_chain(*, setting: str, **kwargs: Any) -> None:
    if setting in {"MOONBORN_API_MIDDLEWARE", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS"}:
        forget("moonborn_site.lean_chain")


async def read_body(receive: Any, limit: int) -> tuple[bytes, bool]:
    """Read the request body, stopping once it is past `limit` bytes: (what was read, whether more is to come).

    A client that left before sending it all counts as more to come: the body is not whole.
    """
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(parts), True
        chunk = message.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        more = bool(message.get("more_body", False))
        if not more or size > limit:
            return b"".join(parts), more


def replaying(body: bytes, more: bool, receive: Any) -> Any:
    """A `receive` that hands out the body already read, then what `receive` gives."""
    pending: dict[str, Any] | None = {"type": "http.request", "body": body, "more_body": more}

    async def replay() -> dict[str, Any]:
        nonlocal pending
        if pending is not None:
            message, pending = pending, None
            return message
        return cast(dict[str, Any], await receive())

    return replay


class ByCredentials:
    """Send API-key requests under /v1/ to `api`, every other request to `full`.

    An API-key request whose route has an ASGI view (`asgi_views` in the URLconf, by URL name) goes to it, through
    the lean hooks of the API middleware (`LeanChain`): the view reads the request, calls the same service as the
    Django view, and serves; what it does not serve itself goes to `api` with the body replayed.
    """

    def __init__(self, full: Any, api: Any) -> None:
        self.full = full
        self.api = api
        self.views: list[tuple[re.Pattern[str], dict[str, Any], Any]] = []
        if settings.MOONBORN_ASGI_FAST_PATH:
            views = getattr(import_module(settings.ROOT_URLCONF), "asgi_views", {})
            self.views = [(*_route(name), view) for name, view in views.items()]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith(API_PREFIX)
            and any(name == b"authorization" for name, _ in scope["headers"])
        ):
            if not scope.get("root_path"):
                for route, converters, view in self.views:
                    match = route.fullmatch(scope["path"])
                    if match is not None:
                        kwargs = {name: converters[name].to_python(value) for name, value in match.groupdict().items()}
                        await self.lean(view, kwargs, scope, receive, send)
                        return
            await self.api(scope, receive, send)
        else:
            await self.full(scope, receive, send)

    async def lean(self, view: Any, kwargs: dict[str, Any], scope: Any, receive: Any, send: Any) -> None:
        """Serve with an ASGI view: the chain's refusals, the body, the view; Django for what it leaves."""
        chain = lean_chain()
        if chain is None:
            await self.api(scope, receive, send)
            return
        request = LeanRequest(scope)
        body: bytes | None = None  # until read: then Django gets it replayed
        more = False
        try:
            refused = await chain.refusal(request)
            if refused is not None:
                await chain.send(request, refused, send)
                return
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            limit = limit if limit is not None else 1 << 62
            body, more = await read_body(receive, limit)
            if more or len(body) > limit:
                raise ServeWithDjango
            served = await view(request, body, chain, **kwargs)
        except ServeWithDjango:
            await self.api(scope, receive if body is None else replaying(body, more, receive), send)
            return
        if isinstance(served, HttpResponseBase):
            await chain.send(request, served, send)
        else:
            del request, body  # only the stream lives as long as the stream (thousands are open at once)
            await served.serve(receive, send)


def _route(name: str) -> tuple[re.Pattern[str], dict[str, Any]]:
    """The path pattern of the URL named `name` and its converters, from the URLconf: matching a path costs a
    regular expression, not a walk of the resolver (~0.1 ms)."""
    ((form, _),), _, _, converters = get_resolver().reverse_dict.getlist(name)[0]
    parts = re.split(r"%\((\w+)\)s", form)
    pattern = "".join(
        re.escape(part) if n % 2 == 0 else f"(?P<{part}>{converters[part].regex})" for n, part in enumerate(parts)
    )
    return re.compile("/" + pattern), converters


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
