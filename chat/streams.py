"""Chat endpoints that start, follow or stop a reply run (async)."""

from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from llm.providers import get_provider
from moonborn_site.api import json_response
from moonborn_site.http import (
    ApiError,
    async_api_view,
    last_event_id,
    on_disconnect,
    read_json_object,
    validate,
    wants_stream,
)
from runs.db import db
from runs.hub import InProcessHub, OnDisconnect, get_hub
from runs.idempotency import claim_or_replay
from runs.sse import sse_response
from runs.streaming import cancel_owned, check_capacity, resumable, serve_run, sse_frames, start_run

from . import services
from .models import ChatSession, Message
from .replies import generate_reply
from .serializers import MessageCreateSerializer
from .views import message_json, reply_json


def _location(session_id: str, message_id: str) -> str:
    return f"/v1/chat/sessions/{session_id}/messages/{message_id}"


async def _owned_message(owner_id: int, session_id: str, message_id: str) -> dict[str, object]:
    try:
        return await db(message_json, owner_id=owner_id, session_id=session_id, message_id=message_id)
    except Message.DoesNotExist:
        raise ApiError(404, f"No message {message_id} in chat session {session_id}.") from None


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
        await check_capacity(hub, user.pk)
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
        hub, job.assistant_message_id, owner_id=user.pk, flow=generate_reply(job, provider), on_disconnect=policy
    )
    return await _serve(hub, session_id, job.assistant_message_id, user.pk, stream=stream, policy=policy)


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


@async_api_view
async def message_cancel(
    request: HttpRequest, user: AbstractBaseUser, session_id: str, message_id: str
) -> HttpResponseBase:
    """`POST …/messages/{id}/cancel`: stop the reply, keep what it produced, answer the message."""
    await _owned_message(user.pk, session_id, message_id)
    await cancel_owned(get_hub(), message_id, user.pk)
    return json_response(await _owned_message(user.pk, session_id, message_id))


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
