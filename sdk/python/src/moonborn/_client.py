"""The Moonborn clients: `Moonborn` (sync) and `AsyncMoonborn`, both on httpx."""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from typing import Any

import httpx

from ._streaming import JSON_HEADERS, SSE_HEADERS, AsyncEventStream, EventStream, origin
from .errors import APIConnectionError, error_from_response

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=60.0)


def _settings(api_key: str | None, base_url: str | None) -> tuple[str, str]:
    key = api_key or os.environ.get("MOONBORN_API_KEY")
    if not key:
        raise ValueError("Pass api_key or set MOONBORN_API_KEY.")
    url = (base_url or os.environ.get("MOONBORN_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    return key, url


def _key_only_for(base_url: httpx.URL) -> Callable[[httpx.Request], None]:
    """A request hook that takes the API key off every request leaving the base URL's origin.

    httpx runs it before each request it sends, redirects included: httpx itself keeps Authorization on a
    redirect from http to https of the same host, and a caller's own client may follow redirects anywhere.
    """
    home = origin(base_url)

    def drop_key(request: httpx.Request) -> None:
        if origin(request.url) != home:
            request.headers.pop("Authorization", None)

    return drop_key


def _async_hook(hook: Callable[[httpx.Request], None]) -> Callable[[httpx.Request], Coroutine[Any, Any, None]]:
    # An AsyncClient awaits its hooks.
    async def run(request: httpx.Request) -> None:
        hook(request)

    return run


def _body(prompt: str, name: str | None, model: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt}
    if name is not None:
        body["name"] = name
    if model is not None:
        body["model"] = model
    return body


def _parse(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise error_from_response(response, response.content)
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


class _Base:
    max_reconnects: int
    reconnect_delay: float | None


class Moonborn(_Base):
    """Synchronous client. `Moonborn(api_key, base_url)`; use as a context manager or call `close()`."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        max_reconnects: int = 5,
        reconnect_delay: float | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        key, url = _settings(api_key, base_url)
        self.base_url = url
        self.max_reconnects = max_reconnects
        self.reconnect_delay = reconnect_delay
        self._http = http_client or httpx.Client(timeout=timeout)
        self._http.base_url = httpx.URL(url)
        self._http.headers["Authorization"] = f"Bearer {key}"
        hooks = self._http.event_hooks
        self._http.event_hooks = {**hooks, "request": [*hooks["request"], _key_only_for(self._http.base_url)]}
        self.personas = Personas(self)
        self.chat = Chat(self)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Make one JSON call; raise the matching APIError for an error answer."""
        try:
            response = self._http.request(method, path, headers=JSON_HEADERS, **kwargs)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"Could not reach {self.base_url}: {exc}") from exc
        return _parse(response)

    def stream(
        self, method: str, path: str, *, cancel_on_close: bool, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> EventStream:
        """Open an event stream (raises before the first event for HTTP errors)."""
        request = self._http.build_request(method, path, headers={**SSE_HEADERS, **(headers or {})}, **kwargs)
        return EventStream(
            self._http,
            request,
            cancel_on_close=cancel_on_close,
            max_reconnects=self.max_reconnects,
            reconnect_delay=self.reconnect_delay,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Moonborn:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Personas:
    """`client.personas`: generate, list, fetch, delete, cancel."""

    def __init__(self, client: Moonborn) -> None:
        self._client = client

    def create_stream(self, prompt: str, *, name: str | None = None, model: str | None = None) -> EventStream:
        """Start a generation and stream its six steps; a dropped connection resumes automatically."""
        return self._client.stream("POST", "/v1/personas", json=_body(prompt, name, model), cancel_on_close=False)

    def create(self, prompt: str, *, name: str | None = None, model: str | None = None) -> dict[str, Any]:
        """Generate a persona and return it finished."""
        return dict(self._client.request("POST", "/v1/personas", json=_body(prompt, name, model)))

    def events(self, persona_id: str, *, last_event_id: int = 0) -> EventStream:
        """Replay a generation's events after `last_event_id` and follow it to the end."""
        return self._client.stream(
            "GET",
            f"/v1/personas/{persona_id}/events",
            headers={"Last-Event-ID": str(last_event_id)},
            cancel_on_close=False,
        )

    def get(self, persona_id: str) -> dict[str, Any]:
        return dict(self._client.request("GET", f"/v1/personas/{persona_id}"))

    def list(self, *, cursor: str | None = None) -> dict[str, Any]:
        """One page: `{"results": [...], "next": url | None}`."""
        return dict(self._client.request("GET", "/v1/personas", params={"cursor": cursor} if cursor else None))

    def delete(self, persona_id: str) -> None:
        self._client.request("DELETE", f"/v1/personas/{persona_id}")

    def cancel(self, persona_id: str) -> dict[str, Any]:
        return dict(self._client.request("POST", f"/v1/personas/{persona_id}/cancel"))


class Sessions:
    """`client.chat.sessions`: open, list, fetch, delete chat sessions."""

    def __init__(self, client: Moonborn) -> None:
        self._client = client

    def create(self, persona_id: str) -> dict[str, Any]:
        return dict(self._client.request("POST", "/v1/chat/sessions", json={"personaId": persona_id}))

    def get(self, session_id: str) -> dict[str, Any]:
        return dict(self._client.request("GET", f"/v1/chat/sessions/{session_id}"))

    def list(self, *, cursor: str | None = None) -> dict[str, Any]:
        return dict(self._client.request("GET", "/v1/chat/sessions", params={"cursor": cursor} if cursor else None))

    def delete(self, session_id: str) -> None:
        self._client.request("DELETE", f"/v1/chat/sessions/{session_id}")


class Chat:
    """`client.chat`: sessions, streamed and JSON replies, history, cancel."""

    def __init__(self, client: Moonborn) -> None:
        self._client = client
        self.sessions = Sessions(client)

    def stream_message(self, session_id: str, content: str, *, on_disconnect: str = "continue") -> EventStream:
        """Send a message and stream the reply.

        The server is asked to keep generating across a dropped connection so the stream can resume;
        closing the stream before its end (or `cancel()`) stops the reply.
        """
        return self._client.stream(
            "POST",
            f"/v1/chat/sessions/{session_id}/messages",
            params={"on_disconnect": on_disconnect},
            json={"content": content},
            cancel_on_close=True,
        )

    def send_message(self, session_id: str, content: str) -> dict[str, Any]:
        """Send a message and return the finished reply (`messageId`, `content`, `driftScore`, …)."""
        return dict(self._client.request("POST", f"/v1/chat/sessions/{session_id}/messages", json={"content": content}))

    def messages(self, session_id: str, *, cursor: str | None = None) -> dict[str, Any]:
        """One page of the conversation, in order."""
        return dict(
            self._client.request(
                "GET", f"/v1/chat/sessions/{session_id}/messages", params={"cursor": cursor} if cursor else None
            )
        )

    def events(self, session_id: str, message_id: str, *, last_event_id: int = 0) -> EventStream:
        """Replay a reply's events after `last_event_id` and follow it to the end."""
        return self._client.stream(
            "GET",
            f"/v1/chat/sessions/{session_id}/messages/{message_id}/events",
            headers={"Last-Event-ID": str(last_event_id)},
            cancel_on_close=False,
        )

    def cancel(self, session_id: str, message_id: str) -> dict[str, Any]:
        return dict(self._client.request("POST", f"/v1/chat/sessions/{session_id}/messages/{message_id}/cancel"))


class AsyncMoonborn(_Base):
    """Asyncio client with the same calls as `Moonborn`; stream calls are awaited, then iterated."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        max_reconnects: int = 5,
        reconnect_delay: float | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        key, url = _settings(api_key, base_url)
        self.base_url = url
        self.max_reconnects = max_reconnects
        self.reconnect_delay = reconnect_delay
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self._http.base_url = httpx.URL(url)
        self._http.headers["Authorization"] = f"Bearer {key}"
        hooks = self._http.event_hooks
        drop_key = _async_hook(_key_only_for(self._http.base_url))
        self._http.event_hooks = {**hooks, "request": [*hooks["request"], drop_key]}
        self.personas = AsyncPersonas(self)
        self.chat = AsyncChat(self)

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Make one JSON call; raise the matching APIError for an error answer."""
        try:
            response = await self._http.request(method, path, headers=JSON_HEADERS, **kwargs)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"Could not reach {self.base_url}: {exc}") from exc
        return _parse(response)

    async def stream(
        self, method: str, path: str, *, cancel_on_close: bool, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> AsyncEventStream:
        """Open an event stream (raises before the first event for HTTP errors)."""
        request = self._http.build_request(method, path, headers={**SSE_HEADERS, **(headers or {})}, **kwargs)
        stream = AsyncEventStream(
            self._http,
            cancel_on_close=cancel_on_close,
            max_reconnects=self.max_reconnects,
            reconnect_delay=self.reconnect_delay,
        )
        return await stream._open(request)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncMoonborn:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncPersonas:
    def __init__(self, client: AsyncMoonborn) -> None:
        self._client = client

    async def create_stream(
        self, prompt: str, *, name: str | None = None, model: str | None = None
    ) -> AsyncEventStream:
        return await self._client.stream("POST", "/v1/personas", json=_body(prompt, name, model), cancel_on_close=False)

    async def create(self, prompt: str, *, name: str | None = None, model: str | None = None) -> dict[str, Any]:
        return dict(await self._client.request("POST", "/v1/personas", json=_body(prompt, name, model)))

    async def events(self, persona_id: str, *, last_event_id: int = 0) -> AsyncEventStream:
        return await self._client.stream(
            "GET",
            f"/v1/personas/{persona_id}/events",
            headers={"Last-Event-ID": str(last_event_id)},
            cancel_on_close=False,
        )

    async def get(self, persona_id: str) -> dict[str, Any]:
        return dict(await self._client.request("GET", f"/v1/personas/{persona_id}"))

    async def list(self, *, cursor: str | None = None) -> dict[str, Any]:
        return dict(await self._client.request("GET", "/v1/personas", params={"cursor": cursor} if cursor else None))

    async def delete(self, persona_id: str) -> None:
        await self._client.request("DELETE", f"/v1/personas/{persona_id}")

    async def cancel(self, persona_id: str) -> dict[str, Any]:
        return dict(await self._client.request("POST", f"/v1/personas/{persona_id}/cancel"))


class AsyncSessions:
    def __init__(self, client: AsyncMoonborn) -> None:
        self._client = client

    async def create(self, persona_id: str) -> dict[str, Any]:
        return dict(await self._client.request("POST", "/v1/chat/sessions", json={"personaId": persona_id}))

    async def get(self, session_id: str) -> dict[str, Any]:
        return dict(await self._client.request("GET", f"/v1/chat/sessions/{session_id}"))

    async def list(self, *, cursor: str | None = None) -> dict[str, Any]:
        return dict(
            await self._client.request("GET", "/v1/chat/sessions", params={"cursor": cursor} if cursor else None)
        )

    async def delete(self, session_id: str) -> None:
        await self._client.request("DELETE", f"/v1/chat/sessions/{session_id}")


class AsyncChat:
    def __init__(self, client: AsyncMoonborn) -> None:
        self._client = client
        self.sessions = AsyncSessions(client)

    async def stream_message(
        self, session_id: str, content: str, *, on_disconnect: str = "continue"
    ) -> AsyncEventStream:
        return await self._client.stream(
            "POST",
            f"/v1/chat/sessions/{session_id}/messages",
            params={"on_disconnect": on_disconnect},
            json={"content": content},
            cancel_on_close=True,
        )

    async def send_message(self, session_id: str, content: str) -> dict[str, Any]:
        return dict(
            await self._client.request("POST", f"/v1/chat/sessions/{session_id}/messages", json={"content": content})
        )

    async def messages(self, session_id: str, *, cursor: str | None = None) -> dict[str, Any]:
        return dict(
            await self._client.request(
                "GET", f"/v1/chat/sessions/{session_id}/messages", params={"cursor": cursor} if cursor else None
            )
        )

    async def events(self, session_id: str, message_id: str, *, last_event_id: int = 0) -> AsyncEventStream:
        return await self._client.stream(
            "GET",
            f"/v1/chat/sessions/{session_id}/messages/{message_id}/events",
            headers={"Last-Event-ID": str(last_event_id)},
            cancel_on_close=False,
        )

    async def cancel(self, session_id: str, message_id: str) -> dict[str, Any]:
        return dict(await self._client.request("POST", f"/v1/chat/sessions/{session_id}/messages/{message_id}/cancel"))
