"""Request parsing and the wrapper shared by the async (SSE) API views."""

import functools
import json
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, cast, overload

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from djangorestframework_camel_case.util import underscoreize
from rest_framework import serializers

from accounts.auth import authenticate
from runs.hub import OnDisconnect

from .api import error_response

P = ParamSpec("P")


class ApiError(Exception):
    """An error answered with a real HTTP status and the JSON error body."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.details = details
        self.headers: dict[str, str] = {}

    def response(self) -> HttpResponseBase:
        """The JSON error response this error answers with, its headers (`Retry-After`, …) included."""
        response = error_response(self.status, self.message, code=self.code, details=self.details)
        for name, value in self.headers.items():
            response[name] = value
        return response


def read_json_object(request: HttpRequest) -> dict[str, Any]:
    """Parse the body as a JSON object with snake_case keys; 400 or 413 otherwise."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if limit is not None and declared > limit:
        raise ApiError(413, f"The request body is larger than {limit} bytes.")
    try:
        body = request.body
    except RequestDataTooBig:
        raise ApiError(413, f"The request body is larger than {limit} bytes.") from None
    if limit is not None and len(body) > limit:
        raise ApiError(413, f"The request body is larger than {limit} bytes.")
    return parse_json_object(body)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a request body as a JSON object with snake_case keys; 400 otherwise."""
    if not body.strip():
        raise ApiError(400, "The request body must be a JSON object.")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"Malformed JSON: {exc}.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"The request body must be a JSON object, not {type(data).__name__}.")
    if all(type(value) in _SCALARS and type(key) is str and _snake_key(key) for key, value in data.items()):
        # What underscoreize returns for it, without its regular expression per key (a stream's start pays it).
        return data
    return underscoreize(data)


# A key that underscoreize leaves as it is (no capitals, no digits), and the values it does not descend into.
_snake_key = re.compile(r"[a-z_]+").fullmatch
_SCALARS = frozenset({str, int, float, bool, type(None)})


# One unbound instance per serializer class and thread. Building a serializer deep-copies its declared fields
# (~0.1 ms for a one-field serializer), a third of the event loop's work per request when a thousand streams
# start at once; validating does not change the instance, so one can serve every request of its thread.
_serializers = threading.local()


def validate(serializer_class: type[serializers.Serializer], data: dict[str, Any]) -> dict[str, Any]:
    """Validate with a DRF serializer (no database); 400 with the field errors otherwise."""
    made: dict[type[serializers.Serializer], serializers.Serializer] = _serializers.__dict__.setdefault("made", {})
    serializer = made.get(serializer_class)
    if serializer is None:
        serializer = made[serializer_class] = serializer_class()
    try:
        # What `is_valid()` runs on `initial_data`; its errors are the `detail` of this exception.
        return dict(serializer.run_validation(data))
    except serializers.ValidationError as exc:
        from .api import _camel

        # A root serializer's errors are a dict: per field, or `non_field_errors`.
        details = {_camel(k): v for k, v in cast(dict[str, Any], exc.detail).items()}
        field, errors = next(iter(details.items()))
        text = errors[0] if isinstance(errors, list) and errors else errors
        raise ApiError(400, f"{field}: {text}", details=details) from None


def wants_stream(request: HttpRequest) -> bool:
    """SSE for `?stream=true` or `Accept: text/event-stream`; JSON when Accept is only JSON."""
    return stream_wanted(request.GET.get("stream"), request.headers.get("Accept", ""))


def stream_wanted(stream: str | None, accept: str) -> bool:
    """`wants_stream` from the raw `stream` query parameter and `Accept` header."""
    if stream is not None and stream.lower() not in ("true", "false", "1", "0"):
        raise ApiError(400, "stream must be true or false.")
    types = {part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()}
    if types == {"application/json"}:
        return False
    if stream is not None:
        return stream.lower() in ("true", "1")
    return "text/event-stream" in types


@overload
def on_disconnect(request: HttpRequest, default: OnDisconnect) -> OnDisconnect: ...


@overload
def on_disconnect(request: HttpRequest, default: None) -> OnDisconnect | None: ...


def on_disconnect(request: HttpRequest, default: OnDisconnect | None) -> OnDisconnect | None:
    """The `?on_disconnect=cancel|continue` policy of this request, else `default`."""
    return disconnect_policy(request.GET.get("on_disconnect"), default)


def disconnect_policy(value: str | None, default: OnDisconnect | None) -> OnDisconnect | None:
    """`on_disconnect` from the raw query parameter."""
    if value is None:
        return default
    try:
        return OnDisconnect(value)
    except ValueError:
        raise ApiError(400, "on_disconnect must be cancel or continue.") from None


# ASCII digits only, as many as the largest id (a signed 64-bit integer) has: `str.isdigit()` also takes "²" and
# other digits that `int()` refuses or reads, and `int()` refuses more than 4,300 digits; either was a 500.
EVENT_ID_PATTERN = r"[0-9]{1,19}"
_EVENT_ID = re.compile(EVENT_ID_PATTERN).fullmatch
MAX_EVENT_ID = 2**63 - 1


def last_event_id(request: HttpRequest) -> int:
    """The id after which a follower resumes: `Last-Event-ID` header or `?lastEventId=`."""
    value = (request.headers.get("Last-Event-ID") or request.GET.get("lastEventId") or "0").strip()
    if _EVENT_ID(value) is None or int(value) > MAX_EVENT_ID:
        raise ApiError(400, "Last-Event-ID must be a non-negative integer event id.")
    return int(value)


AsyncApiView = Callable[Concatenate[HttpRequest, AbstractBaseUser, P], Awaitable[HttpResponseBase]]


def async_api_view(view: AsyncApiView[P]) -> Callable[Concatenate[HttpRequest, P], Awaitable[HttpResponseBase]]:
    """Authenticate (401), then call `view(request, user, …)`; an ApiError becomes its JSON error."""

    @functools.wraps(view)
    async def wrapper(request: HttpRequest, *args: P.args, **kwargs: P.kwargs) -> HttpResponseBase:
        user = await authenticate(request)
        if isinstance(user, str):
            return error_response(403, user, code="csrf_failed")
        if user is None:
            return error_response(401)
        try:
            return await view(request, user, *args, **kwargs)
        except ApiError as exc:
            return exc.response()

    # Session requests are CSRF-checked inside authenticate(); API-key requests need no CSRF.
    return csrf_exempt(wrapper)


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of turning them into strings."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)
