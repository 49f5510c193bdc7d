"""Authentication: `Authorization: Bearer <key>` for programs, the Django session for the browser.

One parser of the header (`bearer`) and one key authentication (`accounts.services.api_key_authenticate`): the
DRF views, the async views and the ASGI fast path (`key_owner`, in front of it) all come here.
"""

import asyncio
import time

from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.middleware.csrf import CsrfViewMiddleware
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from moonborn_site.state import Lru, process_state
from runs.db import db

from .keys import hash_key, prefix_of
from .services import api_key_authenticate


def bearer(header: str | None) -> str | None:
    """The API key of an `Authorization` header's value: None without one, '' when it is not `Bearer <key>`."""
    if header is None:
        return None
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return ""
    return key.strip()


def bearer_key(request: HttpRequest) -> str | None:
    return bearer(request.headers.get("Authorization"))


def user_for_key(key: str) -> AbstractBaseUser | None:
    if prefix_of(key) is None:
        return None
    return api_key_authenticate(key=key)


# How long an authenticated key's owner is taken from memory by `key_owner`: a revoked key is refused everywhere
# within this time. A burst of streams on one key costs one lookup, not one each.
KEY_CACHE_SECONDS = 1.0
KEY_CACHE_SIZE = 1024


class KeyOwners:
    """Key hash → (owner id, until when it is trusted); concurrent lookups of one key share one call to the
    database. A hash, never the key, is kept."""

    def __init__(self) -> None:
        self.owners = Lru[tuple[int, float]](KEY_CACHE_SIZE)
        self.lookups: dict[str, asyncio.Future[int | None]] = {}

    async def owner(self, key: str) -> int | None:
        digest = hash_key(key)
        known = self.owners.get(digest)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        lookup = self.lookups.get(digest)
        if lookup is None:
            lookup = self.lookups[digest] = asyncio.ensure_future(db(_owner_id, key))
            lookup.add_done_callback(lambda _: self.lookups.pop(digest, None))
        # Shielded: one waiter that is cancelled does not cancel the others' lookup.
        owner_id = await asyncio.shield(lookup)
        if owner_id is not None:
            self.owners.put(digest, (owner_id, time.monotonic() + KEY_CACHE_SECONDS))
        return owner_id


def _owner_id(key: str) -> int | None:
    user = user_for_key(key)
    return None if user is None else int(user.pk)


async def key_owner(key: str) -> int | None:
    """The id of the owner of an active API key (None: unknown, revoked, or its user is inactive)."""
    return await process_state("accounts.key_owners", KeyOwners).owner(key)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """DRF authentication by API key; 401 with `WWW-Authenticate: Bearer` when it fails."""

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, None] | None:
        key = bearer_key(request._request)
        if key is None:
            return None
        user = user_for_key(key) if key else None
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return user, None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="moonborn"'


def _csrf_failure(request: HttpRequest) -> str | None:
    """Run Django's CSRF check on a session-authenticated request; return why it failed, or None."""

    class Check(CsrfViewMiddleware):
        def _reject(self, request: HttpRequest, reason: str) -> HttpResponseForbidden:
            self.reason = reason
            return HttpResponseForbidden(reason)

    check = Check(lambda req: HttpResponse())
    check.reason = ""
    check.process_request(request)
    rejected = check.process_view(request, lambda req: HttpResponse(), (), {})
    return check.reason if rejected is not None else None


async def authenticate(request: HttpRequest) -> AbstractBaseUser | str | None:
    """Authenticate an async (SSE) view's request.

    Returns the user, None when no credentials were sent or they are wrong, or a string saying why
    a session request failed its CSRF check.
    """
    key = bearer_key(request)
    if key is not None:
        return await db(user_for_key, key) if key else None
    user = await request.auser()
    if not isinstance(user, AbstractBaseUser) or not user.is_authenticated:
        return None
    # Session authentication needs the CSRF check, as in DRF's SessionAuthentication.
    reason = _csrf_failure(request)
    if reason:
        return f"CSRF failed: {reason}"
    return user
