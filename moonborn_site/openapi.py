"""What the API's views declare for its OpenAPI schema: the error body, the streaming parameters, the `error` event and
the declaration an async (SSE) view carries. `moonborn_site.schema` turns these into the schema."""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from runs.events import RunError
from runs.hub import OnDisconnect
from runs.streaming import ERROR_STATUS

from .api import STATUS_CODES
from .http import EVENT_ID_PATTERN, MAX_EVENT_ID

SSE_MEDIA_TYPE = "text/event-stream"
JSON_MEDIA_TYPE = "application/json"

ERROR_COMPONENT = "Error"
ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}
# `moonborn_site.api.error_body`: what every non-2xx answer carries. No serializer makes that body, so its schema is
# stated here, once; the codes listed are the ones `error_response` gives each status.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The body of every non-2xx answer: never an HTML page, never a traceback.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {
                    "type": "string",
                    "description": "What went wrong, for programs (a status's own code, or a more precise one such as "
                    "`invalid_json`, `csrf_failed`, `idempotency_conflict`, `invalid_card`, `provider_unavailable`).",
                    "examples": sorted(set(STATUS_CODES.values())),
                },
                "message": {"type": "string", "description": "What went wrong, for people: one sentence."},
                "details": {
                    "type": "object",
                    "additionalProperties": True,
                    "description": "For `validation_error`: each invalid field (camelCase) and its errors; else empty.",
                },
            },
            "required": ["code", "message", "details"],
        }
    },
    "required": ["error"],
}


def error(description: str) -> OpenApiResponse:
    """An error answer with the error body, for `@extend_schema(responses=…)` and `AsyncOperation.errors`."""
    return OpenApiResponse(ERROR_REF, description=description)


# The codes an `error` event carries: a failed run's (`RunError` and its provider subclasses) and those the hub
# gives a cancelled run and a server shutting down.
STREAM_ERROR_CODES = sorted({*ERROR_STATUS, RunError.code})


class StreamErrorData(serializers.Serializer):
    """The run failed or was stopped after the stream began (terminal: nothing follows it). Everything that can be
    checked before the first byte is answered with an HTTP status instead."""

    error = serializers.CharField(help_text="What happened, in one sentence.")
    code = serializers.ChoiceField(choices=STREAM_ERROR_CODES)
    retryable = serializers.BooleanField(help_text="Whether the same request may succeed if made again.")


STREAM = OpenApiParameter(
    "stream",
    OpenApiTypes.BOOL,
    OpenApiParameter.QUERY,
    description="`true`: answer with the event stream; `false`: wait and answer with the JSON result. Without it, "
    "the `Accept` header decides (`text/event-stream` streams); an `Accept` of only `application/json` always gets "
    "JSON.",
)


def nothing_to_follow(what: str, result: str) -> OpenApiResponse:
    """The 204 of a resume: nothing is left to follow of the `what` (a run, a reply); its result is at `result`."""
    return OpenApiResponse(
        description=f"The client has seen the {what}'s terminal event, or the {what} ended longer ago than events are "
        f"kept: stop reconnecting (the result is in `{result}`)."
    )


def on_disconnect_parameter(default: OnDisconnect | None) -> OpenApiParameter:
    """`?on_disconnect=`: what the run does when this response's client goes away."""
    usual = f"`{default}`" if default is not None else "the policy of the request that started the run"
    return OpenApiParameter(
        "on_disconnect",
        str,
        OpenApiParameter.QUERY,
        enum=[policy.value for policy in OnDisconnect],
        description=f"What the run does when this client disconnects: stop (`cancel`) or finish server-side "
        f"(`continue`). Default: {usual}.",
    )


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    description="1 to 255 printable characters. Repeating an earlier key of the same owner (within 24 h) creates "
    "nothing new: the request attaches to the first one's run (after `Last-Event-ID`) or gets its JSON. The same key "
    "with a different body is a 409 `idempotency_conflict`.",
)

_EVENT_ID_SCHEMA = {"type": "string", "pattern": f"^{EVENT_ID_PATTERN}$"}
_EVENT_ID_RULE = f"a non-negative integer, at most {MAX_EVENT_ID}"

LAST_EVENT_ID = OpenApiParameter(
    "Last-Event-ID",
    _EVENT_ID_SCHEMA,
    OpenApiParameter.HEADER,
    description=f"Resume after this event `id` ({_EVENT_ID_RULE}); sent by EventSource when it reconnects.",
)
LAST_EVENT_ID_QUERY = OpenApiParameter(
    "lastEventId",
    _EVENT_ID_SCHEMA,
    OpenApiParameter.QUERY,
    description="The same as the `Last-Event-ID` header, for clients that cannot set headers; the header wins.",
)
LOCATION = OpenApiParameter(
    "Location",
    str,
    OpenApiParameter.HEADER,
    response=[200, 201],
    description="The URL of the resource being produced.",
)


@dataclass(frozen=True)
class AsyncOperation:
    """What an async (non-DRF) API view accepts and answers.

    `responses` are the JSON answers (a serializer, or an `OpenApiResponse`; `None` for no body), `events` the event
    stream's event types with each one's `data`, in the order a run sends them, and `errors` the error answers this
    view adds to those every operation has (401, 404 on a path with ids, …).
    """

    request: type[serializers.Serializer] | None = None
    responses: Mapping[int, type[serializers.Serializer] | OpenApiResponse | None] = field(default_factory=dict)
    events: Mapping[str, type[serializers.Serializer]] = field(default_factory=dict)
    parameters: Sequence[OpenApiParameter] = ()
    errors: Mapping[int, str] = field(default_factory=dict)


OPERATION_ATTRIBUTE = "openapi_operation"
View = TypeVar("View", bound=Callable[..., Any])


def async_operation(
    *,
    request: type[serializers.Serializer] | None = None,
    responses: Mapping[int, type[serializers.Serializer] | OpenApiResponse | None] | None = None,
    events: Mapping[str, type[serializers.Serializer]] | None = None,
    parameters: Sequence[OpenApiParameter] = (),
    errors: Mapping[int, str] | None = None,
) -> Callable[[View], View]:
    """Attach an `AsyncOperation` to an async API view (outermost, so that it is on the function the URL routes to)."""
    operation = AsyncOperation(request, responses or {}, events or {}, parameters, errors or {})

    def attach(view: View) -> View:
        setattr(view, OPERATION_ATTRIBUTE, operation)
        return view

    return attach


def operation_of(view: Callable[..., Any]) -> AsyncOperation | None:
    operation = getattr(view, OPERATION_ATTRIBUTE, None)
    return operation if isinstance(operation, AsyncOperation) else None
