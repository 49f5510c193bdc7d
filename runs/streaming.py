"""What the views use to serve a run: SSE frames for a follower, or its outcome for a JSON caller."""

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from django.conf import settings
from django.http import HttpResponse, HttpResponseBase

from llm.base import Provider
from llm.breaker import retry_after_header, unavailable_message
from moonborn_site.api import json_response
from moonborn_site.http import ApiError

from .db import db
from .events import Event
from .hub import Hub, OnDisconnect, Slot
from .services import orphan_run_fail
from .sse import RETRY, sse_response

logger = logging.getLogger(__name__)

# An `error` event's code → the HTTP status a JSON (non-streaming) caller gets.
ERROR_STATUS = {
    "provider_error": 502,
    "provider_timeout": 504,
    "provider_unavailable": 503,
    "cancelled": 409,
    "server_shutdown": 503,
}


def sse_frames(hub: Hub, run_id: str, *, after: int, on_disconnect: OnDisconnect | None) -> AsyncGenerator[bytes, None]:
    """The bytes of one SSE response: `retry:` then the run's frames after `after`, live."""
    return hub.follow(run_id, after=after, on_disconnect=on_disconnect, first=RETRY)


async def run_outcome(hub: Hub, run_id: str, *, on_disconnect: OnDisconnect | None) -> Event | None:
    """Follow a run to its end for a JSON caller; return its `error` event, or None on success."""
    async with aclosing(hub.follow(run_id, on_disconnect=on_disconnect)) as frames:
        async for _ in frames:
            pass
    info = await hub.info(run_id)
    if info is None or not info.done:
        # The server is shutting down before the run ended.
        return Event("error", {"error": "The server is shutting down; retry.", "code": "server_shutdown"})
    terminal = info.terminal
    return terminal if terminal is not None and terminal.type == "error" else None


def raise_for_outcome(error: Event | None) -> None:
    if error is not None:
        status = ERROR_STATUS.get(str(error.data.get("code")), 500)
        exc = ApiError(status, str(error.data.get("error")), code=str(error.data.get("code")))
        if status == 503:
            exc.headers["Retry-After"] = "1"
        raise exc


def refuse_while_unavailable(provider: Provider) -> None:
    """503 `provider_unavailable` while the provider's breaker refuses calls, with `Retry-After` the seconds it still
    will: a run started now would only fail at its first call, after its rows were stored."""
    wait = provider.unavailable_for()
    if wait is not None:
        error = ApiError(503, unavailable_message(provider.name, wait), code="provider_unavailable")
        error.headers["Retry-After"] = retry_after_header(wait)
        raise error


async def reserve_slot(hub: Hub, owner_id: int) -> Slot:
    """Take one of the owner's MOONBORN_MAX_STREAMS_PER_KEY run slots for a run about to start.

    503 while shutting down; 429 when every slot is taken. The slot goes to `start_run`, or back to the hub with
    `hub.release` when the request starts no run.
    """
    if hub.shutting_down:
        error = ApiError(503, "This server is shutting down; retry on another.", code="server_shutdown")
        error.headers["Retry-After"] = "1"
        raise error
    limit = settings.MOONBORN_MAX_STREAMS_PER_KEY
    slot = await hub.reserve(owner_id, limit=limit)
    if slot is None:
        error = ApiError(429, f"At most {limit} runs may go at once; wait for one to finish.", code="rate_limited")
        error.headers["Retry-After"] = "1"
        raise error
    return slot


async def give_back(hub: Hub, slot: Slot) -> None:
    """Return a slot whose request starts no run. Shielded: a request being cancelled still gives it back; a hub that
    cannot be reached leaves it to lapse (SLOT_SECONDS in Redis)."""
    try:
        await asyncio.shield(hub.release(slot))
    except Exception:
        logger.warning("could not give back a run slot of owner %s; it lapses by itself", slot.owner_id)


async def resumable(hub: Hub, run_id: str, *, owner_id: int, after: int) -> bool:
    """Whether a resume after `after` has anything to follow (else the endpoint answers 204)."""
    info = await hub.info(run_id)
    if info is None or info.owner_id != owner_id:
        return False
    return not (info.done and after >= info.last_event_id)


async def cancel_owned(hub: Hub, run_id: str, owner_id: int) -> None:
    """Cancel a run of this owner's, wherever it runs, and wait for its clean-up."""
    info = await hub.info(run_id)
    if info is not None and info.owner_id == owner_id:
        await hub.cancel(run_id)


async def serve_run(
    hub: Hub,
    run_id: str,
    *,
    owner_id: int,
    stream: bool,
    policy: OnDisconnect,
    location: str,
    result: Callable[[], Awaitable[dict[str, Any]]],
    after: int | None = None,
) -> HttpResponseBase:
    """Answer a POST that started run `run_id`, or a retry of it (`after` = its Last-Event-ID).

    Streams the run's events; or, for a JSON caller, waits for its end and answers 201 with `result()`.
    A retried stream whose run is over (or past retention) gets 204 if it had seen events, else JSON.
    """
    retry = after is not None
    start = after or 0
    if stream:
        if not retry or await resumable(hub, run_id, owner_id=owner_id, after=start):
            return sse_response(sse_frames(hub, run_id, after=start, on_disconnect=policy), location=location)
        if start > 0:
            return HttpResponse(status=204)
    info = await hub.info(run_id)
    if info is not None and info.owner_id == owner_id:
        if info.done:
            raise_for_outcome(info.terminal if info.terminal is not None and info.terminal.type == "error" else None)
        else:
            raise_for_outcome(await run_outcome(hub, run_id, on_disconnect=policy))
    response = json_response(await result(), 201)
    response["Location"] = location
    return response


async def start_run(
    hub: Hub,
    run_id: str,
    *,
    owner_id: int,
    flow: AsyncIterator[Event],
    on_disconnect: OnDisconnect,
    slot: Slot,
) -> None:
    """Start a run whose rows exist in the slot its request reserved; if the hub cannot take it, give the slot back,
    fail those rows and answer 503."""
    try:
        await hub.start(run_id, owner_id=owner_id, flow=flow, on_disconnect=on_disconnect, slot=slot)
    except Exception:
        logger.exception("could not start run %s", run_id)
        await give_back(hub, slot)
        aclose = getattr(flow, "aclose", None)
        if aclose is not None:
            await aclose()
        await db(orphan_run_fail, run_id=run_id, error="The run could not be started.")
        error = ApiError(503, "The run could not be started; retry.", code="service_unavailable")
        error.headers["Retry-After"] = "1"
        raise error from None
