"""Every error under /v1/ is the JSON error body of api.md: never an HTML page or a traceback."""

import logging
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from django.middleware.security import SecurityMiddleware

from .api import STATUS_CODES, STATUS_MESSAGES, error_response

logger = logging.getLogger(__name__)

API_PREFIX = "/v1/"


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
        response = self.get_response(request)
        assert isinstance(response, HttpResponseBase)
        return self.rewrite(request, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = await self.get_response(request)  # type: ignore[misc]
        return self.rewrite(request, response)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponseBase | None:
        if request.path.startswith(API_PREFIX):
            logger.exception("unhandled error on %s %s", request.method, request.path, exc_info=exception)
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
