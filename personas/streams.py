"""Persona endpoints that start, follow or stop a generation run (async)."""

from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from drf_spectacular.utils import OpenApiResponse

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
from runs.db import db
from runs.hub import Hub, OnDisconnect, get_hub
from runs.idempotency import claim_or_replay
from runs.sse import sse_response
from runs.streaming import (
    cancel_owned,
    give_back,
    refuse_while_unavailable,
    reserve_slot,
    resumable,
    serve_run,
    sse_frames,
    start_run,
)

from . import services
from .models import Persona
from .pipeline import PipelineInput, generate_persona
from .serializers import PERSONA_EVENTS, PersonaCreateSerializer, PersonaSerializer
from .views import persona_json


def _location(persona_id: str) -> str:
    return f"/v1/personas/{persona_id}"


async def _owned_persona_json(owner_id: int, persona_id: str) -> dict[str, object]:
    try:
        return await db(persona_json, owner_id=owner_id, persona_id=persona_id)
    except Persona.DoesNotExist:
        raise ApiError(404, f"No persona {persona_id}.") from None


NOTHING_TO_FOLLOW = nothing_to_follow("run", "GET /v1/personas/{persona_id}")


@async_operation(
    request=PersonaCreateSerializer,
    responses={
        201: OpenApiResponse(PersonaSerializer, description="Without streaming: the finished persona."),
        204: NOTHING_TO_FOLLOW,
    },
    events=PERSONA_EVENTS,
    parameters=[
        STREAM,
        on_disconnect_parameter(OnDisconnect.CONTINUE),
        IDEMPOTENCY_KEY,
        LAST_EVENT_ID,
        LOCATION,
    ],
    errors={
        409: "The Idempotency-Key was used with a different body (`idempotency_conflict`) or its first request is "
        "still being processed (`conflict`); without streaming, the generation was cancelled (`cancelled`).",
        502: "Without streaming: the model provider failed (`provider_error`).",
        503: "The server is shutting down or could not start the run (`server_shutdown`, `service_unavailable`), or "
        "the model provider failed too many calls in a row and gets none for a while (`provider_unavailable`, with "
        "`Retry-After`).",
        504: "Without streaming: the model provider timed out (`provider_timeout`).",
    },
)
@async_api_view
async def persona_create(request: HttpRequest, user: AbstractBaseUser) -> HttpResponseBase:
    """`POST /v1/personas`: start the six-step pipeline; stream it, or answer 201 when it is done."""
    data = validate(PersonaCreateSerializer, read_json_object(request))
    stream = wants_stream(request)
    policy = on_disconnect(request, OnDisconnect.CONTINUE)
    hub = get_hub()
    claim = await claim_or_replay(request, user.pk, kind="persona", body=data)
    if isinstance(claim, str):
        return await _serve(hub, claim, user.pk, stream=stream, policy=policy, after=last_event_id(request))
    slot = None
    try:
        provider = get_provider()
        refuse_while_unavailable(provider)
        slot = await reserve_slot(hub, user.pk)
        persona, usage = await db(
            services.persona_create,
            owner_id=user.pk,
            prompt=data["prompt"],
            name=data["name"],
            requested_model=data["model"],
            provider=provider.name,
            model=provider.model,
        )
    except BaseException:
        if slot is not None:
            await give_back(hub, slot)
        if claim is not None:
            await claim.release()
        raise
    if claim is not None:
        await claim.bind(persona.id)
    job = PipelineInput(persona_id=persona.id, usage_id=usage.id, prompt=persona.prompt, name_hint=persona.name)
    await start_run(
        hub, persona.id, owner_id=user.pk, flow=generate_persona(job, provider), on_disconnect=policy, slot=slot
    )
    return await _serve(hub, persona.id, user.pk, stream=stream, policy=policy)


async def _serve(
    hub: Hub, persona_id: str, owner_id: int, *, stream: bool, policy: OnDisconnect, after: int | None = None
) -> HttpResponseBase:
    return await serve_run(
        hub,
        persona_id,
        owner_id=owner_id,
        stream=stream,
        policy=policy,
        location=_location(persona_id),
        result=lambda: _owned_persona_json(owner_id, persona_id),
        after=after,
    )


@async_operation(
    responses={204: NOTHING_TO_FOLLOW},
    events=PERSONA_EVENTS,
    parameters=[LAST_EVENT_ID, LAST_EVENT_ID_QUERY, on_disconnect_parameter(None), LOCATION],
)
@async_api_view
async def persona_events(request: HttpRequest, user: AbstractBaseUser, persona_id: str) -> HttpResponseBase:
    """`GET /v1/personas/{id}/events`: replay after `Last-Event-ID`, then follow live; 204 when over."""
    after = last_event_id(request)
    policy = on_disconnect(request, None)
    exists = await db(Persona.objects.filter(owner_id=user.pk, pk=persona_id).exists)
    if not exists:
        raise ApiError(404, f"No persona {persona_id}.")
    hub = get_hub()
    if not await resumable(hub, persona_id, owner_id=user.pk, after=after):
        return HttpResponse(status=204)
    return sse_response(sse_frames(hub, persona_id, after=after, on_disconnect=policy), location=_location(persona_id))


@async_operation(responses={200: OpenApiResponse(PersonaSerializer, description="The persona as it now is.")})
@async_api_view
async def persona_cancel(request: HttpRequest, user: AbstractBaseUser, persona_id: str) -> HttpResponseBase:
    """`POST /v1/personas/{id}/cancel`: stop the generation; answer the persona as it now is."""
    await _owned_persona_json(user.pk, persona_id)
    await cancel_owned(get_hub(), persona_id, user.pk)
    return json_response(await _owned_persona_json(user.pk, persona_id))


@async_operation(responses={204: OpenApiResponse(description="Deleted, with its chats.")})
@async_api_view
async def persona_delete(request: HttpRequest, user: AbstractBaseUser, persona_id: str) -> HttpResponseBase:
    """`DELETE /v1/personas/{id}`: stop its generation and replies, then delete it and its chats."""
    await _owned_persona_json(user.pk, persona_id)
    hub = get_hub()
    # Its runs end as `cancelled` (clean-up done) before their rows go.
    for run_id in [persona_id, *await db(services.persona_streaming_replies, persona_id=persona_id)]:
        await cancel_owned(hub, run_id, user.pk)
    await db(services.persona_delete, owner_id=user.pk, persona_id=persona_id)
    return HttpResponse(status=204)
