"""Event streams that resume after a dropped connection with `Last-Event-ID`, sync and async."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any

import httpx

from ._sse import LineSplitter, SSEDecoder
from .errors import APIConnectionError, APIError, MoonbornError, error_from_response
from .events import TERMINAL, Event, Token, parse_event

SSE_HEADERS = {"Accept": "text/event-stream"}
JSON_HEADERS = {"Accept": "application/json"}


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port (None for the scheme's default, as httpx.URL gives it)."""
    return url.scheme, url.host, url.port


def same_origin_location(base_url: httpx.URL, location: str) -> str:
    """Where a `Location` points, for the client to send its API key there; refuse another origin.

    A path (the server's own form) stays a path, joined to the base URL as every request path is. Anything
    else is resolved against the base URL and kept whole, if it is on the base URL's origin.
    """
    try:
        target = base_url.join(location)
    except (httpx.InvalidURL, ValueError):
        # httpx raises either for a malformed URL (a bad port gives ValueError).
        target = None
    if target is None or origin(target) != origin(base_url):
        raise MoonbornError(
            f"Refusing the stream's Location {location!r}: it is not on {base_url.scheme}://{base_url.netloc.decode()},"
            " and the client sends its API key only there."
        )
    return location if location.startswith("/") else str(target)


class _StreamState:
    """What both stream flavours track: where the run lives and the last event seen."""

    def __init__(
        self, *, base_url: httpx.URL, cancel_on_close: bool, max_reconnects: int, reconnect_delay: float | None
    ) -> None:
        self.base_url = base_url
        self.location: str | None = None
        self.last_event_id = 0
        self.done = False
        self.cancelled = False
        self.text = ""
        self._cancel_on_close = cancel_on_close
        self._max_reconnects = max_reconnects
        self._reconnect_delay = reconnect_delay
        self._retry_ms: int | None = None
        self._closed = False

    @property
    def resume_url(self) -> str | None:
        return None if self.location is None else f"{self.location}/events"

    @property
    def cancel_url(self) -> str | None:
        return None if self.location is None else f"{self.location}/cancel"

    def _delay(self) -> float:
        if self._reconnect_delay is not None:
            return self._reconnect_delay
        return (self._retry_ms if self._retry_ms is not None else 3000) / 1000

    def _record(self, event: Event) -> None:
        if event.id:
            self.last_event_id = event.id
        if isinstance(event, Token):
            self.text += event.delta
        if event.type in TERMINAL:
            self.done = True

    def _check(self, response: httpx.Response, body: bytes | None) -> bool:
        """Return False for 204 (nothing left to replay); raise for errors."""
        if response.status_code == 204:
            return False
        if response.status_code >= 400:
            raise error_from_response(response, body or b"")
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith("text/event-stream"):
            raise APIError(
                status=response.status_code,
                code="not_a_stream",
                message=f"Expected an event stream, got {content_type or 'no content type'}.",
            )
        location = response.headers.get("Location")
        if location is not None:
            self.location = same_origin_location(self.base_url, location)
        return True


class EventStream(_StreamState):
    """A live stream of typed events. Iterate it; `cancel()` stops the run; `close()` hangs up."""

    def __init__(
        self,
        http: httpx.Client,
        request: httpx.Request,
        *,
        cancel_on_close: bool,
        max_reconnects: int,
        reconnect_delay: float | None,
    ) -> None:
        super().__init__(
            base_url=http.base_url,
            cancel_on_close=cancel_on_close,
            max_reconnects=max_reconnects,
            reconnect_delay=reconnect_delay,
        )
        self._http = http
        self._response: httpx.Response | None = self._send(request)
        self._events = self._iterate()

    def _send(self, request: httpx.Request) -> httpx.Response | None:
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"Could not reach {request.url}: {exc}") from exc
        body = response.read() if response.status_code >= 400 else None
        try:
            is_stream = self._check(response, body)
        except MoonbornError:
            response.close()
            raise
        if not is_stream:
            response.close()
            return None
        return response

    def _reconnect(self) -> httpx.Response | None:
        assert self.resume_url is not None
        request = self._http.build_request(
            "GET", self.resume_url, headers={**SSE_HEADERS, "Last-Event-ID": str(self.last_event_id)}
        )
        return self._send(request)

    def _iterate(self) -> Generator[Event, None, None]:
        failures = 0
        try:
            while self._response is not None:
                lines, decoder = LineSplitter(), SSEDecoder()
                cause: Exception | None = None
                try:
                    for chunk in self._response.iter_bytes():
                        for line in lines.feed(chunk):
                            raw = decoder.feed(line)
                            self._retry_ms = decoder.retry_ms if decoder.retry_ms is not None else self._retry_ms
                            if raw is None:
                                continue
                            event = parse_event(raw)
                            self._record(event)
                            failures = 0
                            yield event
                            if self.done:
                                return
                except httpx.TransportError as exc:
                    cause = exc
                self._response.close()
                self._response = None
                if self._closed:
                    return
                # The connection ended before the terminal event: resume after the last event seen.
                while self._response is None:
                    failures += 1
                    if self.resume_url is None or failures > self._max_reconnects:
                        raise APIConnectionError("The stream dropped and could not be resumed.") from cause
                    time.sleep(self._delay())
                    try:
                        self._response = self._reconnect()
                    except APIConnectionError as exc:
                        cause = exc
                        continue
                    if self._response is None:
                        self.done = True
                        return
        finally:
            if self._response is not None:
                self._response.close()
                self._response = None

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def until_done(self) -> list[Event]:
        """Read the rest of the stream and return its events."""
        return list(self)

    def cancel(self) -> dict[str, Any]:
        """Stop the run on the server; the stream then ends with its terminal event."""
        if self.cancel_url is None:
            raise MoonbornError("This stream has no run to cancel.")
        try:
            response = self._http.post(self.cancel_url, headers=JSON_HEADERS)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"Could not cancel: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_response(response, response.content)
        self.cancelled = True
        return dict(response.json()) if response.content else {}

    def close(self) -> None:
        """Hang up. A chat reply closed before its end is cancelled, as the server does on disconnect."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.done and not self.cancelled and self._cancel_on_close and self.cancel_url is not None:
                # Best effort: the run may have just ended; closing must still release the connection.
                with contextlib.suppress(MoonbornError, httpx.HTTPError):
                    self.cancel()
        finally:
            self._events.close()
            if self._response is not None:
                self._response.close()
                self._response = None


class AsyncEventStream(_StreamState):
    """The asyncio flavour of EventStream: `async for event in stream`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        cancel_on_close: bool,
        max_reconnects: int,
        reconnect_delay: float | None,
    ) -> None:
        super().__init__(
            base_url=http.base_url,
            cancel_on_close=cancel_on_close,
            max_reconnects=max_reconnects,
            reconnect_delay=reconnect_delay,
        )
        self._http = http
        self._response: httpx.Response | None = None
        self._events = self._iterate()

    async def _open(self, request: httpx.Request) -> AsyncEventStream:
        self._response = await self._send(request)
        return self

    async def _send(self, request: httpx.Request) -> httpx.Response | None:
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"Could not reach {request.url}: {exc}") from exc
        body = await response.aread() if response.status_code >= 400 else None
        try:
            is_stream = self._check(response, body)
        except MoonbornError:
            await response.aclose()
            raise
        if not is_stream:
            await response.aclose()
            return None
        return response

    async def _reconnect(self) -> httpx.Response | None:
        assert self.resume_url is not None
        request = self._http.build_request(
            "GET", self.resume_url, headers={**SSE_HEADERS, "Last-Event-ID": str(self.last_event_id)}
        )
        return await self._send(request)

    async def _iterate(self) -> AsyncGenerator[Event, None]:
        failures = 0
        try:
            while self._response is not None:
                lines, decoder = LineSplitter(), SSEDecoder()
                cause: Exception | None = None
                try:
                    async for chunk in self._response.aiter_bytes():
                        for line in lines.feed(chunk):
                            raw = decoder.feed(line)
                            self._retry_ms = decoder.retry_ms if decoder.retry_ms is not None else self._retry_ms
                            if raw is None:
                                continue
                            event = parse_event(raw)
                            self._record(event)
                            failures = 0
                            yield event
                            if self.done:
                                return
                except httpx.TransportError as exc:
                    cause = exc
                await self._response.aclose()
                self._response = None
                if self._closed:
                    return
                while self._response is None:
                    failures += 1
                    if self.resume_url is None or failures > self._max_reconnects:
                        raise APIConnectionError("The stream dropped and could not be resumed.") from cause
                    await asyncio.sleep(self._delay())
                    try:
                        self._response = await self._reconnect()
                    except APIConnectionError as exc:
                        cause = exc
                        continue
                    if self._response is None:
                        self.done = True
                        return
        finally:
            if self._response is not None:
                await self._response.aclose()
                self._response = None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return await self._events.__anext__()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def until_done(self) -> list[Event]:
        """Read the rest of the stream and return its events."""
        return [event async for event in self]

    async def cancel(self) -> dict[str, Any]:
        """Stop the run on the server; the stream then ends with its terminal event."""
        if self.cancel_url is None:
            raise MoonbornError("This stream has no run to cancel.")
        try:
            response = await self._http.post(self.cancel_url, headers=JSON_HEADERS)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"Could not cancel: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_response(response, response.content)
        self.cancelled = True
        return dict(response.json()) if response.content else {}

    async def aclose(self) -> None:
        """Hang up. A chat reply closed before its end is cancelled, as the server does on disconnect."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.done and not self.cancelled and self._cancel_on_close and self.cancel_url is not None:
                # Best effort: the run may have just ended; closing must still release the connection.
                with contextlib.suppress(MoonbornError, httpx.HTTPError):
                    await self.cancel()
        finally:
            await self._events.aclose()
            if self._response is not None:
                await self._response.aclose()
                self._response = None
