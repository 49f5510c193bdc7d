"""The API's shared pieces: the JSON error body, DRF's exception handler and pagination."""

from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

# HTTP status → the error code of api.md's error body.
STATUS_CODES: dict[int, str] = {
    400: "validation_error",
    401: "authentication_failed",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    502: "provider_error",
    503: "service_unavailable",
    504: "provider_timeout",
}

STATUS_MESSAGES: dict[int, str] = {
    400: "The request is not valid.",
    401: "Authentication credentials were not provided or are not valid.",
    403: "You do not have permission to do this.",
    404: "Not found.",
    405: "Method not allowed.",
    413: "The request body is too large.",
    500: "Internal server error.",
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(
    status_code: int, message: str | None = None, *, code: str | None = None, details: dict[str, Any] | None = None
) -> JsonResponse:
    """A plain Django JSON error response, for async views and middleware."""
    response = JsonResponse(
        error_body(
            code or STATUS_CODES.get(status_code, "error"),
            message or STATUS_MESSAGES.get(status_code, "Request failed."),
            details,
        ),
        status=status_code,
    )
    if status_code == 401:
        response["WWW-Authenticate"] = 'Bearer realm="moonborn"'
    return response


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF errors in the api.md body: {"error": {"code", "message", "details"}}."""
    if isinstance(exc, RequestDataTooBig):
        exc = exceptions.APIException("The request body is too large.")
        exc.status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # An unexpected exception: the middleware answers 500 in the same body.
    assert isinstance(exc, exceptions.APIException)
    code = STATUS_CODES.get(response.status_code, "error")
    if isinstance(exc, exceptions.ValidationError):
        details = (
            {_camel(k): v for k, v in exc.detail.items()}
            if isinstance(exc.detail, dict)
            else {"nonFieldErrors": exc.detail}
        )
        first = next(iter(details.items()), None)
        message = "The request is not valid."
        if first is not None:
            field, errors = first
            text = errors[0] if isinstance(errors, list) and errors else errors
            message = f"{field}: {text}" if field != "nonFieldErrors" else str(text)
        response.data = error_body(code, message, details)
    else:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        response.data = error_body(code, str(detail))
    return response


class NewestFirstCursorPagination(CursorPagination):
    ordering = "-created_at"
    page_size_query_param = "limit"
    max_page_size = 200
    cursor_query_description = "Where the page starts: the `cursor` of a `next` or `previous` link."
    page_size_query_description = f"Results per page (at most {max_page_size})."

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The page's OpenAPI 3.1 schema: DRF's own is OpenAPI 3.0's (`nullable`) and has an example of another API."""
        link = {"type": ["string", "null"], "format": "uri"}
        return {
            "type": "object",
            "properties": {
                "next": {**link, "description": "The next page; null on the last."},
                "previous": {**link, "description": "The previous page; null on the first."},
                "results": schema,
            },
            "required": ["next", "previous", "results"],
        }


class InOrderCursorPagination(NewestFirstCursorPagination):
    """For a conversation: oldest message first."""

    ordering = "index"


class RecentRunsCursorPagination(NewestFirstCursorPagination):
    ordering = "-started_at"


def owner_id(request: Any) -> int:
    """The authenticated owner's id (DRF's permission classes guarantee one)."""
    pk = request.user.pk
    assert isinstance(pk, int)
    return pk


def json_response(data: Any, status_code: int = 200) -> JsonResponse:
    """A camelCase JSON response for async views (DRF's renderer does the same for sync ones)."""
    from djangorestframework_camel_case.util import camelize

    response = JsonResponse(camelize(data), status=status_code, safe=False)
    response["Vary"] = "Accept"
    return response


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The object is in a state that does not allow this."
    default_code = "conflict"
