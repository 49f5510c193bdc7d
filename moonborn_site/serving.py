"""uvicorn's event loop for Moonborn: uvloop, whose TCP servers take waiting connections in bursts.

libuv accepts one connection per turn of the loop (since libuv#3696, which uvloop 0.23 bundles), and a turn of a
loop serving hundreds of streams takes milliseconds. A burst of clients then waits in the kernel's accept queue:
of 1,000 streams opened at once, a third reached Moonborn 0.9-3 s late while every client had connected within
25 ms (bench/RESULTS.md). Here a readable listening socket gives up to ACCEPT_BURST connections per
turn, as asyncio's own loop does (it takes up to the backlog). Bounded, so that one of several workers sharing a
socket does not take a whole burst while its loop is busy. Everything else is uvloop's.

The loop also keeps the servers it made, so that a worker told to stop (runs.lifecycle) closes its listening sockets
at once (`close_listeners`) instead of at the end of its drain.

    uvicorn moonborn_site.asgi:application --loop moonborn_site.serving:BurstAcceptLoop
"""

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

import uvloop

logger = logging.getLogger(__name__)

# Connections taken per turn of the loop from one listening socket.
ACCEPT_BURST = 64
# After running out of file descriptors (or memory), wait this long before accepting again, as asyncio does.
ACCEPT_RETRY_SECONDS = 1.0
# accept() failures that a later attempt may not have: asyncio's list.
_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class BurstAcceptLoop(uvloop.Loop):
    """uvloop, but a plain TCP server takes up to ACCEPT_BURST waiting connections per turn of the loop; and the
    servers it made can be told to stop listening (`close_listeners`)."""

    def __init__(self) -> None:
        super().__init__()
        self.servers: list[asyncio.AbstractServer] = []

    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: ProtocolFactory,
        host: str | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        reuse_port: bool | None = None,
        **options: Any,
    ) -> asyncio.AbstractServer:
        """Serve on `sock` or on `host`:`port`; TLS, SO_REUSEPORT, Unix sockets and other options: uvloop's own."""
        plain = not options and ssl is None and not reuse_port and (host is None or isinstance(host, str))
        if not plain or (sock is not None and sock.family not in (socket.AF_INET, socket.AF_INET6)):
            delegated: Any = super().create_server  # uvloop's stubs know its overloads, not this pass-through
            server: asyncio.AbstractServer = await delegated(
                protocol_factory, host, port, sock=sock, backlog=backlog, ssl=ssl, reuse_port=reuse_port, **options
            )
            self.servers.append(server)
            return server
        sockets = [sock] if sock is not None else await self._listening_sockets(host, port)
        for listening in sockets:
            listening.listen(backlog)
            listening.setblocking(False)
        burst = BurstServer(self, sockets, protocol_factory)
        burst._start()
        self.servers.append(burst)
        return burst

    async def _listening_sockets(self, host: str | None, port: int | None) -> list[socket.socket]:
        """Bound sockets for every address of `host` (all interfaces when None or ""), as asyncio binds them."""
        infos = await self.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                listening = socket.socket(family, kind, proto)
                sockets.append(listening)
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    # Each family its own socket, as asyncio does (an IPv6 socket would also take IPv4 otherwise).
                    listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    listening.bind(address)
                except OSError as exc:
                    reason = (exc.strerror or str(exc)).lower()
                    message = f"error while attempting to bind on address {address!r}: {reason}"
                    raise OSError(exc.errno, message) from None
        except BaseException:
            for listening in sockets:
                listening.close()
            raise
        return sockets


class BurstServer(asyncio.AbstractServer):
    """A TCP server whose listening sockets are read by the loop itself, up to ACCEPT_BURST connections a turn."""

    def __init__(
        self, loop: BurstAcceptLoop, sockets: Iterable[socket.socket], protocol_factory: ProtocolFactory
    ) -> None:
        self._loop = loop
        self._sockets = list(sockets)
        self._protocol_factory = protocol_factory
        self._serving = False
        # Connections being handed to their transports (a task each, until the protocol has its transport).
        self._opening: set[asyncio.Task[Any]] = set()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def _start(self) -> None:
        if self._serving or not self._sockets:
            return
        self._serving = True
        for listening in self._sockets:
            self._loop.add_reader(listening.fileno(), self._accept, listening)

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                connection, _ = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # none waiting (or one that gave up before it was taken)
            except OSError as exc:
                if exc.errno not in _TRANSIENT:
                    raise
                logger.error("could not accept a connection (%s); accepting again in %.0f s", exc, ACCEPT_RETRY_SECONDS)
                self._loop.remove_reader(listening.fileno())
                self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume, listening)
                return
            connection.setblocking(False)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            opening = self._loop.create_task(self._loop.connect_accepted_socket(self._protocol_factory, connection))
            self._opening.add(opening)
            opening.add_done_callback(self._opened)

    def _resume(self, listening: socket.socket) -> None:
        if self._serving:
            self._loop.add_reader(listening.fileno(), self._accept, listening)

    def _opened(self, opening: "asyncio.Task[Any]") -> None:
        self._opening.discard(opening)
        if not opening.cancelled() and opening.exception() is not None:
            logger.error("could not open an accepted connection", exc_info=opening.exception())

    def close(self) -> None:
        """Stop accepting and close the listening sockets; the connections already made stay open."""
        self._serving = False
        sockets, self._sockets = self._sockets, []
        for listening in sockets:
            self._loop.remove_reader(listening.fileno())  # (not registered while waiting to accept again)
            listening.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        self._start()

    async def serve_forever(self) -> None:
        self._start()
        await self._loop.create_future()  # until cancelled, as asyncio's Server

    async def wait_closed(self) -> None:
        """Return once closed: uvicorn waits for the connections itself."""
        while self._opening:
            await asyncio.gather(*self._opening, return_exceptions=True)


def close_listeners(loop: asyncio.AbstractEventLoop) -> bool:
    """Close the listening sockets of every server `loop` made: from now on a new connection is refused (another
    worker sharing the socket takes it), and those already open are served on. False when `loop` is not a
    BurstAcceptLoop, which is the one that knows its servers."""
    if not isinstance(loop, BurstAcceptLoop):
        return False
    for server in loop.servers:
        server.close()
    return True
