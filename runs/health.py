"""`GET /healthz`: is this worker fit to take traffic (database, Redis, not shutting down)?

Anyone can probe it (a load balancer has no credentials), so the public answer says only whether the worker
serves and which checks failed. Why a check failed, and the worker's run and task counts, are for staff (a Django
session of a staff user) and for the log, where a failure is written once when it begins, not at every probe.
"""

import asyncio
import logging

from django.db import connection
from django.http import HttpRequest, JsonResponse

from moonborn_site.logtext import loggable
from moonborn_site.state import process_state

from .db import db
from .hub import get_hub

logger = logging.getLogger(__name__)


def _failing() -> dict[str, str]:
    """Check → the exception class of its failure last logged: a load balancer probes every few seconds."""
    return process_state("runs.health.failing", dict[str, str])


def _database_ok() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _failed(check: str, exc: Exception) -> str:
    """Log a check's failure when it begins (or its kind changes); the staff answer's value for it."""
    kind = type(exc).__name__
    if _failing().get(check) != kind:
        _failing()[check] = kind
        logger.error("health check %s failed: %s: %s", check, kind, loggable(str(exc)))
    return f"error: {kind}"


def _passed(check: str, state: str) -> str:
    if _failing().pop(check, None) is not None:
        logger.warning("health check %s: %s again", check, state)
    return state


async def _is_staff(request: HttpRequest) -> bool:
    user = await request.auser()
    return bool(user.is_active and user.is_staff)


async def health(request: HttpRequest) -> JsonResponse:
    """200 when this worker can serve; 503 (so a load balancer takes it out) when it cannot."""
    hub = get_hub()
    checks: dict[str, str] = {}
    try:
        await db(_database_ok)
        checks["database"] = _passed("database", "ok")
    except Exception as exc:
        checks["database"] = _failed("database", exc)
    if not hub.shared:
        checks["redis"] = "not configured"
    else:
        try:
            await hub.ping()
            checks["redis"] = _passed("redis", "ok")
        except Exception as exc:
            checks["redis"] = _failed("redis", exc)
    failed = [name for name, state in checks.items() if state not in ("ok", "not configured")]
    if hub.shutting_down:
        failed.append("shuttingDown")
    healthy = not failed
    body: dict[str, object] = {"status": "ok" if healthy else "unavailable", "failed": failed}
    if await _is_staff(request):
        body |= {
            "shuttingDown": hub.shutting_down,
            "activeRuns": len(hub.local_run_ids()),
            "tasks": len(asyncio.all_tasks()),
            **checks,
        }
    response = JsonResponse(body, status=200 if healthy else 503)
    # Django logs every 5xx response (django.request), here once per probe: the failure is logged above, once.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response
