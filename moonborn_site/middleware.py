"""Every error under /v1/ is the JSON error body of api.md: never an HTML page or a traceback."""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponseBase
from django.middleware.security import SecurityMiddleware

from .api import STATUS_CODES, STATUS_MESSAGES, error_response
from .logtext import loggable

logger = logging.getLogger(__name__)
security_logger = logging.getLogger("django.security.DisallowedHost")

API_PREFIX = "/v1/"
HOST_REFUSED = "The Host header names a host this server does not serve."


class ServeWithDjango(Exception):
    """Raised by a lean hook or an ASGI view (moonborn_site.handlers): Django serves this request (body replayed)."""


class ApiErrorMiddleware:
    """Replace any non-JSON error response (404, 405, 500, …) under /v1/ with the JSON error body.

    Async-capable, so it adds no thread hop on the streaming path.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self.__acall__(request)
        refused = self.refuse_host(request)
        if refused is not None:
            return refused
        response = self.get_response(request)
        assert isinstance(response, HttpResponseBase)
        return self.rewrite(request, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        refused = self.refuse_host(request)
        if refused is not None:
            return refused
        response = await self.get_response(request)  # type: ignore[misc]
        return self.rewrite(request, response)

    @staticmethod
    def refuse_host(request: HttpRequest) -> HttpResponseBase | None:
        """A 400 for an API request whose host is not in ALLOWED_HOSTS; None for any other request.

        Django checks the host in CommonMiddleware (`request.get_host()`), which the API handler's middleware
        (`MOONBORN_API_MIDDLEWARE`) leaves out: the check is made here, for every request under /v1/, so that both
        handlers refuse a foreign host with the same JSON error.
        """
        if not request.path.startswith(API_PREFIX):
            return None
        try:
            request.get_host()
        except DisallowedHost as exc:
            # Logged as Django's handler logs it (the host quoted with %r), for the alerts that watch that logger.
            security_logger.error(str(exc), extra={"status_code": 400, "request": request})
            return error_response(400, HOST_REFUSED)
        return None

    @staticmethod
    async def lean_request(request: Any) -> None:
        """For a request served on ASGI directly: a host it does not serve is Django's to refuse (and log)."""
        if not request.host_allowed():
            raise ServeWithDjango

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponseBase | None:
        if request.path.startswith(API_PREFIX):
            # The method and path are the client's text: escaped, so that a CR or LF in them forges no log line.
            logger.exception(
                "unhandled error on %s %s", loggable(request.method or ""), loggable(request.path), exc_info=exception
            )
            return error_response(500)
        return None

    @staticmethod
    def rewrite(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if not request.path.startswith(API_PREFIX) or response.status_code < 400:
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        status = response.status_code
        message = STATUS_MESSAGES.get(status, "Request failed.")
        if status == 405 and response.has_header("Allow"):
            message = f"Method {request.method} not allowed. Allowed: {response['Allow']}."
        new = error_response(status, message, code=STATUS_CODES.get(status, "error"))
        for header in ("Allow", "Retry-After", "WWW-Authenticate"):
            if response.has_header(header):
                new[header] = response[header]
        return new


class InlineSecurityMiddleware(SecurityMiddleware):
    """Django's SecurityMiddleware with its hooks called inline on an async request.

    The stock MiddlewareMixin runs each hook in a worker thread (a thread hop per request and per response); these
    two only read settings and set headers, so they run on the event loop.
    """

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.process_request(request)
        if response is None:
            response = await self.get_response(request)  # type: ignore[misc]
        return self.process_response(request, response)

    @staticmethod
    def lean_response(request: Any, response: HttpResponseBase) -> None:
        """For a request served on ASGI directly: the same headers (`process_response` reads only `is_secure()`)."""
        InlineSecurityMiddleware(lambda request: response).process_response(request, response)  # type: ignore[arg-type]
