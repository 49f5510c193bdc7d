"""What the views use to serve a run: SSE frames for a follower, or its outcome for a JSON caller."""

from collections.abc import AsyncIterator
from contextlib import aclosing

from django.conf import settings

from moonborn_site.http import ApiError

from .events import Event
from .hub import InProcessHub, OnDisconnect
from .sse import RETRY

# An `error` event's code → the HTTP status a JSON (non-streaming) caller gets.
ERROR_STATUS = {"provider_error": 502, "provider_timeout": 504, "cancelled": 409, "server_shutdown": 503}


async def sse_frames(
    hub: InProcessHub, run_id: str, *, after: int, on_disconnect: OnDisconnect | None
) -> AsyncIterator[bytes]:
    """The bytes of one SSE response: `retry:` then the run's frames after `after`, live."""
    if hub.last_event_id(run_id) <= after:
        # Nothing to send yet (a resume of a quiet run): open the stream now, not at the next event.
        yield RETRY
        prefix = b""
    else:
        prefix = RETRY
    async with aclosing(hub.follow(run_id, after=after, on_disconnect=on_disconnect)) as frames:
        async for chunk in frames:
            if prefix:
                chunk, prefix = prefix + chunk, b""
            yield chunk


async def run_outcome(hub: InProcessHub, run_id: str, *, on_disconnect: OnDisconnect | None) -> Event | None:
    """Follow a run to its end for a JSON caller; return its `error` event, or None on success."""
    async with aclosing(hub.follow(run_id, on_disconnect=on_disconnect)) as frames:
        async for _ in frames:
            pass
    terminal = hub.terminal_event(run_id)
    return terminal if terminal is not None and terminal.type == "error" else None


def raise_for_outcome(error: Event | None) -> None:
    if error is not None:
        status = ERROR_STATUS.get(str(error.data.get("code")), 500)
        raise ApiError(status, str(error.data.get("error")), code=str(error.data.get("code")))


def check_capacity(hub: InProcessHub, owner_id: int) -> None:
    """429 when the owner already has MOONBORN_MAX_STREAMS_PER_KEY runs going."""
    limit = settings.MOONBORN_MAX_STREAMS_PER_KEY
    if hub.active_count(owner_id) >= limit:
        error = ApiError(429, f"At most {limit} runs may go at once; wait for one to finish.", code="rate_limited")
        error.headers["Retry-After"] = "1"
        raise error
