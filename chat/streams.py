"""Chat endpoints that start, follow or stop a reply run (async)."""

from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from drf_spectacular.utils import OpenApiResponse

from accounts.auth import bearer, key_owner
from moonborn_site.api import json_response
from moonborn_site.handlers import LeanChain, LeanRequest
from moonborn_site.http import (
    ApiError,
    async_api_view,
    disconnect_policy,
    last_event_id,
    on_disconnect,
    parse_json_object,
    read_json_object,
    stream_wanted,
    validate,
    wants_stream,
)
from moonborn_site.middleware import ServeWithDjango
from moonborn_site.openapi import (
    IDEMPOTENCY_KEY,
    LAST_EVENT_ID,
    LAST_EVENT_ID_QUERY,
    LOCATION,
    STREAM,
    async_operation,
    nothing_to_follow,
    on_disconnect_parameter,
)
from runs.asgi import SseStream
from runs.db import db
from runs.hub import Hub, OnDisconnect, get_hub
from runs.idempotency import claim_or_replay
from runs.sse import sse_response
from runs.streaming import cancel_owned, resumable, serve_run, sse_frames

from . import services
from .models import Message
from .serializers import CHAT_EVENTS, MessageCreateSerializer, MessageSerializer, ReplySerializer, plain_message_content
from .turns import reply_start
from .views import message_json, reply_json


def _location(session_id: str, message_id: str) -> str:
    return f"/v1/chat/sessions/{session_id}/messages/{message_id}"


async def _owned_message(owner_id: int, session_id: str, message_id: str) -> dict[str, object]:
    try:
        return await db(message_json, owner_id=owner_id, session_id=session_id, message_id=message_id)
    except Message.DoesNotExist:
        raise ApiError(404, f"No message {message_id} in chat session {session_id}.") from None


NOTHING_TO_FOLLOW = nothing_to_follow("reply", "GET …/messages/{message_id}")


@async_operation(
    request=MessageCreateSerializer,
    responses={
        201: OpenApiResponse(ReplySerializer, description="Without streaming: the finished reply."),
        204: NOTHING_TO_FOLLOW,
    },
    events=CHAT_EVENTS,
    parameters=[
        STREAM,
        on_disconnect_parameter(OnDisconnect.CANCEL),
        IDEMPOTENCY_KEY,
        LAST_EVENT_ID,
        LOCATION,
    ],
    errors={
        409: "The persona is not `ready` (`conflict`), the Idempotency-Key was used with a different body "
        "(`idempotency_conflict`) or its first request is still being processed (`conflict`); without streaming, "
        "the reply was cancelled (`cancelled`).",
        502: "Without streaming: the model provider failed (`provider_error`).",
        503: "The server is shutting down, the database is not answering or the run could not start "
        "(`server_shutdown`, `service_unavailable`), or the model provider failed too many calls in a row and gets "
        "none for a while (`provider_unavailable`, with `Retry-After`).",
        504: "Without streaming: the model provider timed out (`provider_timeout`).",
    },
)
@async_api_view
async def message_create(request: HttpRequest, user: AbstractBaseUser, session_id: str) -> HttpResponseBase:
    """`POST /v1/chat/sessions/{id}/messages`: store the message and stream (or return) the reply."""
    data = validate(MessageCreateSerializer, read_json_object(request))
    stream = wants_stream(request)
    policy = on_disconnect(request, OnDisconnect.CANCEL)
    hub = get_hub()
    claim = await claim_or_replay(request, user.pk, kind="chat", body={"session": session_id, **data})
    if isinstance(claim, str):
        return await _serve(hub, session_id, claim, user.pk, stream=stream, policy=policy, after=last_event_id(request))
    try:
        message_id = await reply_start(
            owner_id=user.pk, session_id=session_id, content=data["content"], on_disconnect=policy
        )
    except BaseException:
        if claim is not None:
            await claim.release()
        raise
    if claim is not None:
        await claim.bind(message_id)
    return await _serve(hub, session_id, message_id, user.pk, stream=stream, policy=policy)


async def message_create_asgi(
    request: LeanRequest, body: bytes, chain: LeanChain, *, session_id: str
) -> SseStream | HttpResponseBase:
    """`message_create` on ASGI directly, for a streamed reply asked for with an API key (moonborn_site.handlers).

    The same service as the view (`reply_start`); without an `HttpRequest`, a `StreamingHttpResponse` and their
    thread hops, an open stream costs less memory and its start less CPU. Anything else (an idempotent retry, a
    JSON caller, a key that is not an active one) is the view's: ServeWithDjango.
    """
    headers = request.headers
    key = bearer(headers.get(b"authorization"))
    if request.scope["method"] != "POST" or not key or b"idempotency-key" in headers:
        raise ServeWithDjango
    try:
        if not stream_wanted(request.query.get("stream"), headers.get(b"accept", "")):
            raise ServeWithDjango
        policy = disconnect_policy(request.query.get("on_disconnect"), OnDisconnect.CANCEL)
        if policy is None:
            raise ServeWithDjango
        data = parse_json_object(body)
        content = plain_message_content(data) or validate(MessageCreateSerializer, data)["content"]
        owner_id = await key_owner(key)
        if owner_id is None:
            raise ServeWithDjango  # the view answers 401 as for every other request
        message_id = await reply_start(owner_id=owner_id, session_id=session_id, content=content, on_disconnect=policy)
    except ApiError as exc:
        return exc.response()
    location = _location(session_id, message_id)
    return SseStream(get_hub(), message_id, policy, chain.sse_headers(request, location=location))


async def _serve(
    hub: Hub,
    session_id: str,
    message_id: str,
    owner_id: int,
    *,
    stream: bool,
    policy: OnDisconnect,
    after: int | None = None,
) -> HttpResponseBase:
    return await serve_run(
        hub,
        message_id,
        owner_id=owner_id,
        stream=stream,
        policy=policy,
        location=_location(session_id, message_id),
        result=lambda: db(reply_json, owner_id=owner_id, session_id=session_id, message_id=message_id),
        after=after,
    )


@async_operation(
    responses={204: NOTHING_TO_FOLLOW},
    events=CHAT_EVENTS,
    parameters=[LAST_EVENT_ID, LAST_EVENT_ID_QUERY, on_disconnect_parameter(None), LOCATION],
)
@async_api_view
async def message_events(
    request: HttpRequest, user: AbstractBaseUser, session_id: str, message_id: str
) -> HttpResponseBase:
    """`GET …/messages/{id}/events`: replay after `Last-Event-ID`, then follow live; 204 when over."""
    after = last_event_id(request)
    policy = on_disconnect(request, None)
    await _owned_message(user.pk, session_id, message_id)
    hub = get_hub()
    if not await resumable(hub, message_id, owner_id=user.pk, after=after):
        return HttpResponse(status=204)
    return sse_response(
        sse_frames(hub, message_id, after=after, on_disconnect=policy), location=_location(session_id, message_id)
    )


@async_operation(
    responses={200: OpenApiResponse(MessageSerializer, description="The reply as it now is, with what it produced.")}
)
@async_api_view
async def message_cancel(
    request: HttpRequest, user: AbstractBaseUser, session_id: str, message_id: str
) -> HttpResponseBase:
    """`POST …/messages/{id}/cancel`: stop the reply, keep what it produced, answer the message."""
    await _owned_message(user.pk, session_id, message_id)
    await cancel_owned(get_hub(), message_id, user.pk)
    return json_response(await _owned_message(user.pk, session_id, message_id))


@async_operation(responses={204: OpenApiResponse(description="Deleted, with its messages.")})
@async_api_view
async def session_delete(request: HttpRequest, user: AbstractBaseUser, session_id: str) -> HttpResponseBase:
    """`DELETE /v1/chat/sessions/{id}`: stop a reply in progress, then delete the session."""
    streaming = await db(
        lambda: list(
            Message.objects.filter(
                session__owner_id=user.pk, session_id=session_id, status=Message.Status.STREAMING
            ).values_list("id", flat=True)
        )
    )
    for message_id in streaming:
        await cancel_owned(get_hub(), message_id, user.pk)
    if not await db(services.chat_session_delete, owner_id=user.pk, session_id=session_id):
        raise ApiError(404, f"No chat session {session_id}.")
    return HttpResponse(status=204)
