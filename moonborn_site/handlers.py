"""The ASGI side of Django, trimmed for API-key requests.

Requests under /v1/ with an `Authorization` header authenticate by API key, so the session, CSRF, auth and
messages middleware have nothing to do for them; each of those stock middlewares still costs a thread hop per
request on the async path (shared/spec/performance.md, finding 2). They go to a second Django handler whose
middleware is `MOONBORN_API_MIDDLEWARE`; everything else (the browser UI, the admin, session calls to the API)
goes through the full `MIDDLEWARE`.
"""

from typing import Any

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

from .middleware import API_PREFIX


class ApiHandler(ASGIHandler):
    """Django's ASGI handler with `MOONBORN_API_MIDDLEWARE` instead of `MIDDLEWARE`."""

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler.load_middleware reads settings.MIDDLEWARE; point it at the API list while it builds the
        # chain (once, at start-up, before any request).
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.MOONBORN_API_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = full


class ByCredentials:
    """Send API-key requests under /v1/ to `api`, every other request to `full`."""

    def __init__(self, full: Any, api: Any) -> None:
        self.full = full
        self.api = api

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith(API_PREFIX)
            and any(name == b"authorization" for name, _ in scope["headers"])
        ):
            await self.api(scope, receive, send)
        else:
            await self.full(scope, receive, send)


def release_request_thread() -> None:
    """Let the current request's worker thread go while its response streams.

    Django gives each request a thread of its own for its sync work (asgiref's ThreadSensitiveContext) and keeps
    it until the response ends: one idle OS thread per open stream. A stream does its database work before it
    starts and in the run's own tasks, so the thread can go now; the few sync calls Django makes when the
    response ends get a fresh one.
    """
    context = SyncToAsync.thread_sensitive_context.get(None)
    if context is None:
        return
    executor = SyncToAsync.context_to_thread_executor.pop(context, None)
    if executor is not None:
        executor.shutdown(wait=False)
