"""`Idempotency-Key` on the POSTs that start runs: a retry attaches to the first request's run."""

import asyncio
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest

from accounts.models import IdempotencyKey
from accounts.services import (
    idempotency_bind,
    idempotency_claim,
    idempotency_keys_purge,
    idempotency_release,
    idempotency_resource,
)
from moonborn_site.http import ApiError
from moonborn_site.state import process_state

from .db import db

logger = logging.getLogger(__name__)

# How long a retry waits for the first request to have created its resource.
WAIT_SECONDS = 10.0

# Keys past their window (IDEMPOTENCY_TTL) are deleted by a request that stores a new key, at most this often per
# process: one indexed DELETE a minute keeps the table to a day of keys, whatever the traffic.
PURGE_INTERVAL_SECONDS = 60.0


class PurgeClock:
    """Whether this process's next purge of expired keys is due (then the one after is an interval away)."""

    def __init__(self) -> None:
        self.next = 0.0
        self.lock = threading.Lock()

    def due(self) -> bool:
        with self.lock:
            now = time.monotonic()
            if now < self.next:
                return False
            self.next = now + PURGE_INTERVAL_SECONDS
            return True


def _claim(*, owner_id: int, key: str, kind: str, request_hash: str) -> tuple[IdempotencyKey, bool]:
    """`idempotency_claim`, and when it stored a new key, the purge if one is due (in the same database call: the
    request has no further await at which a cancel could leave its claim unreleased)."""
    row, first = idempotency_claim(owner_id=owner_id, key=key, kind=kind, request_hash=request_hash)
    if first and process_state("runs.idempotency.purges", PurgeClock).due():
        try:
            idempotency_keys_purge()
        except DatabaseError:
            # The request is served all the same; the next purge is a minute away.
            logger.exception("could not delete the expired idempotency keys")
    return row, first


@dataclass(frozen=True)
class Claim:
    """This request is the first with its key: it creates, then binds what it created."""

    row_id: int

    async def bind(self, resource_id: str) -> None:
        await db(idempotency_bind, row_id=self.row_id, resource_id=resource_id)

    async def release(self) -> None:
        await db(idempotency_release, row_id=self.row_id)


def request_key(request: HttpRequest) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ApiError(400, "Idempotency-Key must be 1 to 255 printable characters.")
    return key


async def claim_or_replay(
    request: HttpRequest, owner_id: int, *, kind: str, body: dict[str, Any]
) -> Claim | str | None:
    """None without a key; a Claim when this request is the first; else the first request's resource id.

    The same key with a different request (path or body) is a 409.
    """
    key = request_key(request)
    if key is None:
        return None
    digest = hashlib.sha256(json.dumps([request.path, body], sort_keys=True).encode()).hexdigest()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while True:
        row, first = await db(_claim, owner_id=owner_id, key=key, kind=kind, request_hash=digest)
        if first:
            return Claim(row.id)
        if row.request_hash != digest:
            raise ApiError(
                409, "This Idempotency-Key was already used with a different request.", code="idempotency_conflict"
            )
        while loop.time() < deadline:
            resource = await db(idempotency_resource, row_id=row.id)
            if resource:
                return resource
            if resource is None:
                break  # The first request failed and released the key: this one may create.
            await asyncio.sleep(0.05)
        else:
            raise ApiError(409, "A request with this Idempotency-Key is still being processed.", code="conflict")
