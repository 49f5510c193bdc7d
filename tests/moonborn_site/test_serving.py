"""moonborn_site.serving: uvloop whose TCP servers take the connections waiting in bursts, not one per loop turn."""

import asyncio
import errno
import socket
from collections.abc import Callable, Iterator

import pytest
import uvloop

from moonborn_site import serving


class Recorded(asyncio.Protocol):
    def __init__(self, made: list[asyncio.BaseTransport]) -> None:
        self.made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(transport)


@pytest.fixture
def loop() -> Iterator[serving.BurstAcceptLoop]:
    made = serving.BurstAcceptLoop()
    yield made
    made.run_until_complete(asyncio.sleep(0.01))  # the closed transports' callbacks
    made.close()


def recorder() -> tuple[Callable[[], Recorded], list[asyncio.BaseTransport]]:
    """A protocol factory, and the transports of the connections made with it."""
    made: list[asyncio.BaseTransport] = []
    return lambda: Recorded(made), made


def waiting_clients(port: int, count: int) -> list[socket.socket]:
    """Clients whose connections the kernel has made and queued for the server to accept."""
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]


def turn(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))


def close_all(made: list[asyncio.BaseTransport], clients: list[socket.socket]) -> None:
    for transport in made:
        transport.close()
    for client in clients:
        client.close()


def test_the_connections_waiting_are_taken_in_one_turn_where_uvloop_takes_one_a_turn(
    loop: serving.BurstAcceptLoop,
) -> None:
    factory, made = recorder()
    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0, backlog=100))
    assert isinstance(server, serving.BurstServer)
    clients = waiting_clients(server.sockets[0].getsockname()[1], 50)
    turn(loop)
    assert len(made) == 50

    stock = uvloop.Loop()
    stock_factory, stock_made = recorder()
    stock_server = stock.run_until_complete(stock.create_server(stock_factory, "127.0.0.1", 0, backlog=100))
    stock_clients = waiting_clients(stock_server.sockets[0].getsockname()[1], 50)
    turn(stock)
    # What the loop is for: libuv takes one connection per turn of the loop (libuv#3696).
    assert len(stock_made) < 10
    stock_server.close()
    close_all(stock_made, stock_clients)
    stock.run_until_complete(asyncio.sleep(0.01))
    stock.close()
    server.close()
    close_all(made, clients)


def test_at_most_a_burst_is_taken_each_time_the_socket_is_read_and_the_rest_the_next_time(
    loop: serving.BurstAcceptLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving, "ACCEPT_BURST", 8)
    factory, made = recorder()
    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0, backlog=100))
    assert isinstance(server, serving.BurstServer)
    listening = server.sockets[0]
    clients = waiting_clients(listening.getsockname()[1], 20)
    # What the loop does when the socket is readable, twice, with no turn of the loop in between.
    server._accept(listening)
    assert len(server._opening) == 8
    server._accept(listening)
    assert len(server._opening) == 16
    for _ in range(5):
        turn(loop)
    assert (len(made), len(server._opening)) == (20, 0)
    server.close()
    close_all(made, clients)


def test_a_closed_server_takes_no_more_connections_and_keeps_those_it_made(loop: serving.BurstAcceptLoop) -> None:
    factory, made = recorder()
    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    clients = waiting_clients(port, 2)
    turn(loop)
    server.close()
    loop.run_until_complete(server.wait_closed())
    assert not server.is_serving()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    assert [transport.is_closing() for transport in made] == [False, False]
    close_all(made, clients)


def test_a_port_in_use_is_refused_as_asyncio_refuses_it(loop: serving.BurstAcceptLoop) -> None:
    factory, _ = recorder()
    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    with pytest.raises(OSError, match="address already in use") as refused:
        loop.run_until_complete(loop.create_server(factory, "127.0.0.1", port))
    assert refused.value.errno == errno.EADDRINUSE
    server.close()


def test_out_of_file_descriptors_it_waits_and_accepts_again(
    loop: serving.BurstAcceptLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving, "ACCEPT_RETRY_SECONDS", 0.05)

    class Exhausted(socket.socket):
        failures = 1

        def accept(self) -> tuple[socket.socket, object]:
            if Exhausted.failures:
                Exhausted.failures -= 1
                raise OSError(errno.EMFILE, "Too many open files")
            return super().accept()

    listening = Exhausted(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    factory, made = recorder()
    server = loop.run_until_complete(loop.create_server(factory, sock=listening))
    clients = waiting_clients(listening.getsockname()[1], 3)
    turn(loop)
    assert made == []  # the reader is off for a while, not spinning on the failure
    loop.run_until_complete(asyncio.sleep(0.2))
    assert len(made) == 3
    server.close()
    close_all(made, clients)


def test_what_it_does_not_serve_itself_is_uvloops(loop: serving.BurstAcceptLoop) -> None:
    factory, _ = recorder()
    shared = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0, reuse_port=True))
    assert not isinstance(shared, serving.BurstServer)
    shared.close()
    loop.run_until_complete(shared.wait_closed())


def test_close_listeners_closes_every_server_the_loop_made_and_keeps_the_connections(
    loop: serving.BurstAcceptLoop,
) -> None:
    factory, made = recorder()
    burst = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0))
    shared = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0, reuse_port=True))
    ports = [server.sockets[0].getsockname()[1] for server in (burst, shared)]
    clients = [socket.create_connection(("127.0.0.1", port)) for port in ports]
    loop.run_until_complete(asyncio.sleep(0.05))
    assert loop.servers == [burst, shared]
    assert serving.close_listeners(loop) is True
    loop.run_until_complete(asyncio.sleep(0.01))
    assert [server.is_serving() for server in (burst, shared)] == [False, False]
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
    assert [transport.is_closing() for transport in made] == [False, False]
    close_all(made, clients)


def test_close_listeners_leaves_another_loop_alone() -> None:
    other = asyncio.new_event_loop()
    try:
        assert serving.close_listeners(other) is False
    finally:
        other.close()
