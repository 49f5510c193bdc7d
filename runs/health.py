"""`GET /healthz`: is this worker fit to take traffic (database, Redis, not shutting down)?"""

import asyncio

from django.db import connection
from django.http import HttpRequest, JsonResponse

from .db import db
from .hub import get_hub


def _database_ok() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def health(request: HttpRequest) -> JsonResponse:
    """200 when this worker can serve; 503 (so a load balancer takes it out) when it cannot."""
    hub = get_hub()
    checks: dict[str, str] = {}
    try:
        await db(_database_ok)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    redis = getattr(hub, "redis", None)
    if redis is None:
        checks["redis"] = "not configured"
    else:
        try:
            await redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
    healthy = not hub.shutting_down and all(v in ("ok", "not configured") for v in checks.values())
    body = {
        "status": "ok" if healthy else "unavailable",
        "shuttingDown": hub.shutting_down,
        "activeRuns": len(hub.local_run_ids()),
        "tasks": len(asyncio.all_tasks()),
        **checks,
    }
    return JsonResponse(body, status=200 if healthy else 503)
