"""Request rates: per API key (or browser session) on writes, and failed sign-ins per account and per address.

Counted in fixed one-minute windows, in this process (the embedded default) or in Redis when REDIS_URL is set, so
that every worker counts against the same budget. A rate of 0 turns a rule off. The concurrency limit (runs going at
once) is the hub's, `runs.streaming.reserve_slot`; this is how often.
"""

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from accounts.auth import bearer

from .api import error_response
from .middleware import API_PREFIX
from .state import process_state

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
# Where a password is tried. Both are Django's LoginView (the admin's is a subclass).
LOGIN_PATHS = ("/accounts/login/", "/admin/login/")
# An address may fail this many times the per-account number: several people may sign in from one address.
LOGIN_ADDRESS_FACTOR = 5
# Local windows kept before the old ones are swept (an address or a key that stopped coming is forgotten).
LOCAL_KEYS_SWEEP = 10_000


class Counters(Protocol):
    """Hit counts per key and window."""

    async def hit(self, key: str) -> int:
        """Count one hit on `key` in the current window; return the window's count, this one included."""
        ...

    async def peek(self, key: str) -> int:
        """The current window's count for `key`."""
        ...


def _window() -> int:
    return int(time.time()) // WINDOW_SECONDS


def retry_after() -> int:
    """Seconds until the current window ends."""
    return WINDOW_SECONDS - int(time.time()) % WINDOW_SECONDS


class LocalCounters:
    """This process's counts. Used from the event loop's thread (sync callers go through `async_to_sync`)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}

    async def hit(self, key: str) -> int:
        window = _window()
        count = self._counts.get((key, window), 0) + 1
        self._counts[(key, window)] = count
        if len(self._counts) > LOCAL_KEYS_SWEEP:
            self._counts = {entry: n for entry, n in self._counts.items() if entry[1] == window}
        return count

    async def peek(self, key: str) -> int:
        return self._counts.get((key, _window()), 0)


class RedisCounters:
    """Counts shared by every worker: one INCR per hit, the key expiring with its window."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as aioredis

        self.redis: Any = aioredis.Redis.from_url(url)
        self.prefix = prefix

    def _key(self, key: str) -> str:
        return f"{self.prefix}:rate:{key}:{_window()}"

    async def hit(self, key: str) -> int:
        name = self._key(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, WINDOW_SECONDS + 5)
            count, _ = await pipe.execute()
        return int(count)

    async def peek(self, key: str) -> int:
        return int(await self.redis.get(self._key(key)) or 0)


def _make_counters() -> Counters:
    if settings.REDIS_URL:
        return RedisCounters(settings.REDIS_URL, settings.MOONBORN_REDIS_PREFIX)
    return LocalCounters()


def get_counters() -> Counters:
    """The process's counters, built from settings on first use."""
    return process_state("moonborn_site.throttle", _make_counters)


@dataclass(frozen=True)
class Refusal:
    message: str
    retry_after: int


def _digest(value: str) -> str:
    # Keys and cookies are secrets: only a digest is kept in a counter's name.
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def caller(authorization: str | None, cookies: dict[str, str], address: str) -> str:
    """Who a write is counted against: its API key, else its browser session, else its address."""
    key = bearer(authorization)
    if key:
        return "key:" + _digest(key)
    session = cookies.get(settings.SESSION_COOKIE_NAME, "")
    if session:
        return "session:" + _digest(session)
    return "address:" + address


def _api_rules(method: str, path: str) -> list[tuple[str, int, str]]:
    """The rules a request under /v1/ counts against: (name, per minute, what it limits)."""
    if method != "POST":
        return []
    rules = [("posts", settings.MOONBORN_RATE_POSTS_PER_MINUTE, "requests that write")]
    if path == "/v1/personas/import":
        rules.append(("imports", settings.MOONBORN_RATE_IMPORTS_PER_MINUTE, "card imports"))
    elif path == "/v1/chat/sessions":
        rules.append(("sessions", settings.MOONBORN_RATE_SESSIONS_PER_MINUTE, "new chat sessions"))
    return [rule for rule in rules if rule[1] > 0]


async def api_refusal(method: str, path: str, who: str) -> Refusal | None:
    """Count a request under /v1/ against its caller's rates; a Refusal when one is used up (the request is refused
    and changes nothing)."""
    counters = get_counters()
    for name, per_minute, what in _api_rules(method, path):
        if await counters.hit(f"{name}:{who}") > per_minute:
            return Refusal(f"At most {per_minute} {what} a minute per key; retry later.", retry_after())
    return None


def client_address(meta: dict[str, Any]) -> str:
    """The client's address: behind a trusted proxy (DJANGO_SECURE_PROXY_SSL_HEADER) the one it appended last to
    X-Forwarded-For, else the connection's."""
    forwarded = meta.get("HTTP_X_FORWARDED_FOR", "")
    if forwarded and getattr(settings, "SECURE_PROXY_SSL_HEADER", None):
        return str(forwarded.split(",")[-1].strip())
    return str(meta.get("REMOTE_ADDR", ""))


def _login_keys(request: HttpRequest, username: str) -> list[tuple[str, int]]:
    per_minute = settings.MOONBORN_LOGIN_FAILURES_PER_MINUTE
    if per_minute <= 0:
        return []
    keys = [(f"login:address:{client_address(request.META)}", per_minute * LOGIN_ADDRESS_FACTOR)]
    if username:
        keys.append((f"login:user:{_digest(username.casefold())}", per_minute))
    return keys


async def login_refusal(request: HttpRequest) -> Refusal | None:
    """A Refusal when this sign-in's account or address has failed too often in the current minute."""
    username = request.POST.get("username", "") if request.method == "POST" else ""
    counters = get_counters()
    for key, per_minute in _login_keys(request, username):
        if await counters.peek(key) >= per_minute:
            return Refusal("Too many failed sign-ins; try again in a minute.", retry_after())
    return None


@receiver(user_login_failed)
def _count_login_failure(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any
) -> None:
    if request is None:
        return
    username = str(credentials.get("username", ""))
    for key, _limit in _login_keys(request, username):
        async_to_sync(get_counters().hit)(key)


def throttled(refusal: Refusal) -> HttpResponseBase:
    """The API's 429 for a refusal."""
    response = error_response(429, refusal.message, code="rate_limited")
    response["Retry-After"] = str(refusal.retry_after)
    return response


def _refused(request: HttpRequest, refusal: Refusal) -> HttpResponseBase:
    if request.path.startswith(API_PREFIX):
        return throttled(refusal)
    response = HttpResponse(refusal.message, status=429, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(refusal.retry_after)
    return response


class ThrottleMiddleware:
    """Refuse a write past its caller's rate, and a sign-in past its failures, with 429 and Retry-After.

    Async-capable: no thread hop on the API path. A request the chat fast path already counted carries
    `moonborn.counted` in its scope and is not counted twice.
    """

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        refusal = None
        if request.path.startswith(API_PREFIX):
            scope = getattr(request, "scope", {})
            if not scope.get("moonborn.counted"):
                who = caller(request.headers.get("Authorization"), request.COOKIES, client_address(request.META))
                refusal = await api_refusal(request.method or "", request.path, who)
        elif request.method == "POST" and request.path in LOGIN_PATHS:
            refusal = await login_refusal(request)
        if refusal is not None:
            return _refused(request, refusal)
        return await self.get_response(request)

    @staticmethod
    async def lean_request(request: Any) -> HttpResponseBase | None:
        """For a request served on ASGI directly: the same count, once (Django, if it serves it after all, does not
        count it again)."""
        request.scope["moonborn.counted"] = True
        who = caller(request.headers.get(b"authorization"), {}, "")
        refusal = await api_refusal(request.scope["method"], request.scope["path"], who)
        return None if refusal is None else throttled(refusal)
