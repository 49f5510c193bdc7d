"""Exceptions raised by the client; each API error carries the api.md `code`."""

from __future__ import annotations

import json
from typing import Any

import httpx


class MoonbornError(Exception):
    """Base class of every error the client raises."""


class APIConnectionError(MoonbornError):
    """The server could not be reached, or a stream could not be resumed."""


class APIError(MoonbornError):
    """A non-2xx answer: `status`, `code` (e.g. `validation_error`), `message`, `details`."""

    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after


class BadRequestError(APIError):
    """400: malformed or invalid input."""


class AuthenticationError(APIError):
    """401: missing or bad credentials."""


class PermissionDeniedError(APIError):
    """403: e.g. a missing CSRF token on a session-authenticated request."""


class NotFoundError(APIError):
    """404: no such object for this owner."""


class ConflictError(APIError):
    """409: the object is in the wrong state (e.g. chatting with a persona that is not ready)."""


class PayloadTooLargeError(APIError):
    """413: the request body is too large."""


class RateLimitError(APIError):
    """429: too many concurrent streams; `retry_after` holds the server's `Retry-After` seconds."""


class ProviderError(APIError):
    """502/503/504: the model provider failed."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitError,
    502: ProviderError,
    503: ProviderError,
    504: ProviderError,
}


def error_from_response(response: httpx.Response, body: bytes) -> APIError:
    """Build the matching APIError from an error response and its (already read) body."""
    code, message = "http_error", f"HTTP {response.status_code}"
    details: dict[str, Any] = {}
    try:
        payload = json.loads(body)
        error = payload["error"]
        code = str(error.get("code", code))
        message = str(error.get("message", message))
        details = error.get("details") or {}
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    retry_after: float | None = None
    header = response.headers.get("Retry-After")
    if header is not None:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None
    cls = _BY_STATUS.get(response.status_code, APIError)
    return cls(status=response.status_code, code=code, message=message, details=details, retry_after=retry_after)
