"""Authentication: `Authorization: Bearer <key>` for programs, the Django session for the browser."""

from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.middleware.csrf import CsrfViewMiddleware
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from runs.db import db

from .keys import prefix_of
from .services import api_key_authenticate


def bearer_key(request: HttpRequest) -> str | None:
    """The API key of an `Authorization: Bearer` header; '' when the header is malformed."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return ""
    return key.strip()


def user_for_key(key: str) -> AbstractBaseUser | None:
    if prefix_of(key) is None:
        return None
    return api_key_authenticate(key=key)


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
