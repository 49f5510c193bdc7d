"""Route one URL's methods to sync DRF views and async SSE views (Django forbids mixing them in a class)."""

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol, cast

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from .api import error_response


class MethodDispatcher(Protocol):
    """The view `by_method` returns; `handlers` (method → view) is what the OpenAPI schema is generated from."""

    handlers: Mapping[str, Callable[..., Any]]

    async def __call__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase: ...


def by_method(**views: Callable[..., Any]) -> MethodDispatcher:
    """An async view dispatching on the HTTP method; 405 with `Allow` for the others."""
    handlers = {method.upper(): view for method, view in views.items()}
    allowed = ", ".join(sorted(handlers))

    async def dispatch(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        view = handlers.get(request.method or "")
        if view is None:
            response = error_response(405, f"Method {request.method} not allowed. Allowed: {allowed}.")
            response["Allow"] = allowed
            return response
        if iscoroutinefunction(view):
            return await view(request, *args, **kwargs)
        return await sync_to_async(view)(request, *args, **kwargs)

    # Each handler does its own CSRF check (DRF's SessionAuthentication, or async_api_view).
    dispatcher = cast(MethodDispatcher, csrf_exempt(dispatch))
    dispatcher.handlers = MappingProxyType(handlers)
    return dispatcher
