"""Chat endpoints that start, follow or stop a reply run (async)."""

import asyncio
from collections import OrderedDict

from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from drf_spectacular.utils import OpenApiResponse

from accounts.auth import user_for_key
from accounts.keys import hash_key
from llm.base import Provider
from llm.providers import get_provider
from moonborn_site.api import json_response
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
from moonborn_site.throttle import api_refusal, caller, throttled
from runs.asgi import (
    ASGIApp,
    LeanRequest,
    Receive,
    Scope,
    Send,
    SseStream,
    body_limit,
    read_body,
    replaying,
    send_response,
    sse_asgi_headers,
)
from runs.db import db
from runs.hub import InProcessHub, OnDisconnect, Slot, get_hub
from runs.idempotency import claim_or_replay
from runs.sse import sse_response
from runs.streaming import cancel_owned, give_back, reserve_slot, resumable, serve_run, sse_frames, start_run

from . import services
from .models import ChatSession, Message
from .replies import generate_reply
from .serializers import CHAT_EVENTS, MessageCreateSerializer, MessageSerializer, ReplySerializer, plain_message_content
from .turns import get_turn_writer
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
        503: "The server is shutting down or could not start the run (`server_shutdown`, `service_unavailable`).",
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
    slot = None
    try:
        slot = await reserve_slot(hub, user.pk)
        provider = get_provider()
        job = await db(
            services.message_create_turn,
            owner_id=user.pk,
            session_id=session_id,
            content=data["content"],
            provider=provider.name,
            model=provider.model,
        )
    except BaseException as exc:
        if slot is not None:
            await give_back(hub, slot)
        if claim is not None:
            await claim.release()
        if isinstance(exc, ChatSession.DoesNotExist):
            raise ApiError(404, f"No chat session {session_id}.") from None
        if isinstance(exc, services.ChatConflict):
            raise ApiError(409, str(exc), code="conflict") from None
        raise
    if claim is not None:
        await claim.bind(job.assistant_message_id)
    await start_run(
        hub,
        job.assistant_message_id,
        owner_id=user.pk,
        flow=generate_reply(job, provider),
        on_disconnect=policy,
        slot=slot,
    )
    return await _serve(hub, session_id, job.assistant_message_id, user.pk, stream=stream, policy=policy)


# API key hash → its owner's id, for the concurrency check that comes before the turn's transaction (which
# authenticates the key again: a revoked key is refused there). Bounded; a hash, never the key, is kept.
_key_owners: OrderedDict[str, int] = OrderedDict()
KEY_OWNERS_SIZE = 1024
_key_lookups: dict[str, "asyncio.Future[int | None]"] = {}


async def _key_owner(key: str) -> int | None:
    """The owner of an active API key, from the cache or (one lookup for concurrent requests) the database."""
    digest = hash_key(key)
    owner_id = _key_owners.get(digest)
    if owner_id is not None:
        return owner_id
    lookup = _key_lookups.get(digest)
    if lookup is None:
        lookup = _key_lookups[digest] = asyncio.ensure_future(db(_owner_id_for_key, key))
        lookup.add_done_callback(lambda _: _key_lookups.pop(digest, None))
    # Shielded: one waiter that is cancelled does not cancel the others' lookup.
    owner_id = await asyncio.shield(lookup)
    if owner_id is not None:
        _key_owners[digest] = owner_id
        while len(_key_owners) > KEY_OWNERS_SIZE:
            _key_owners.popitem(last=False)
    return owner_id


def _owner_id_for_key(key: str) -> int | None:
    user = user_for_key(key)
    return None if user is None else int(user.pk)


async def message_create_fast(scope: Scope, receive: Receive, send: Send, *, session_id: str, django: ASGIApp) -> None:
    """`message_create` for a streamed reply requested with an API key, on ASGI directly (see runs.asgi).

    One `db()` call authenticates the key and stores the turn. Whatever is not that case, and every error that
    changes nothing (401, 400, 404, 409, 413, 429), is left to the Django view with the body replayed.
    """
    stream = await _start_fast(scope, receive, send, session_id, django)
    if stream is not None:
        # Only the stream lives as long as the stream: the request's pieces were left in _start_fast (an open
        # stream's memory counts by the thousand).
        await stream.serve(receive, send)


async def _start_fast(scope: Scope, receive: Receive, send: Send, session_id: str, django: ASGIApp) -> SseStream | None:
    """Start the reply and return it ready to relay; None once answered otherwise."""
    request = LeanRequest(scope)
    scheme, _, key = request.headers.get(b"authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        # The same count as Django's ThrottleMiddleware, once: a request handed on to Django is not counted again.
        scope["moonborn.counted"] = True
        refusal = await api_refusal("POST", scope["path"], caller({"authorization": f"Bearer {key}"}, {}, ""))
        if refusal is not None:
            await send_response(request, throttled(refusal), send)
            return None
    limit = body_limit()
    body, more = await read_body(receive, limit)
    hub = get_hub()
    started = None if more or len(body) > limit else await _fast_turn(request, body, session_id, hub)
    if started is None:
        await django(scope, replaying(body, more, receive), send)
        return None
    owner_id, job, provider, policy, slot = started
    message_id = job.assistant_message_id
    try:
        await start_run(
            hub, message_id, owner_id=owner_id, flow=generate_reply(job, provider), on_disconnect=policy, slot=slot
        )
    except ApiError as exc:  # the hub could not take the run (its rows are failed now): answer, nothing to retry
        await send_response(request, exc.response(), send)
        return None
    return SseStream(hub, message_id, policy, sse_asgi_headers(request, location=_location(session_id, message_id)))


async def _fast_turn(
    request: LeanRequest, body: bytes, session_id: str, hub: InProcessHub
) -> tuple[int, services.ReplyJob, Provider, OnDisconnect, Slot] | None:
    """Store the turn of a well-formed streamed request: (owner id, job, provider, policy, the run's slot); None for
    Django (with no slot kept)."""
    headers = request.headers
    scheme, _, key = headers.get(b"authorization", "").partition(" ")
    key = key.strip()
    if b"idempotency-key" in headers or scheme.lower() != "bearer" or not key:
        return None
    if not request.host_allowed():
        return None  # Django's API handler refuses the host (400) before anything is read or stored
    try:
        if not stream_wanted(request.query.get("stream"), headers.get(b"accept", "")):
            return None
        policy = disconnect_policy(request.query.get("on_disconnect"), OnDisconnect.CANCEL)
        data = parse_json_object(body)
        content = plain_message_content(data) or validate(MessageCreateSerializer, data)["content"]
        owner_id = await _key_owner(key)
        if owner_id is None or policy is None:
            return None
        slot = await reserve_slot(hub, owner_id)
    except ApiError:
        return None  # Django's view answers with the error body
    try:
        provider = get_provider()
        made = await get_turn_writer().create(
            services.TurnRequest(
                key=key, session_id=session_id, content=content, provider=provider.name, model=provider.model
            )
        )
    except BaseException as exc:
        await give_back(hub, slot)
        if isinstance(exc, ApiError | DatabaseError):
            # Django's view answers: the error body, or the same turn again (a transient database error).
            return None
        raise
    if not isinstance(made, tuple):
        await give_back(hub, slot)
        return None
    return made[0], made[1], provider, policy, slot


async def _serve(
    hub: InProcessHub,
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
