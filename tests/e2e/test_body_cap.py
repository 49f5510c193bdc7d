"""Bodies capped at the ASGI edge (moonborn_site.edge): a huge unauthenticated POST gets 413 before Django reads it,
nothing is spooled to disk, and a reply streaming meanwhile goes on."""

import json
import select
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from tests.e2e.helpers import SSE, make_persona, make_session, parse_wire

HUNDRED_MB = 100 * 1024 * 1024
PIECE = 64 * 1024
CAP_MESSAGE = {
    "error": {"code": "payload_too_large", "message": "The request body is larger than 65536 bytes.", "details": {}}
}


def connect(base_url: str) -> socket.socket:
    parts = urlsplit(base_url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), body[:length]


def declared_upload(base_url: str) -> tuple[int, bytes]:
    """POST that declares 100 MB and sends none of it: the answer comes from the headers alone."""
    with connect(base_url) as sock:
        sock.sendall(
            f"POST /v1/personas HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {HUNDRED_MB}\r\n\r\n".encode()
        )
        return read_response(sock)


def chunked_upload(base_url: str) -> tuple[int, bytes, int]:
    """POST 100 MB with chunked encoding (no length declared) until the server answers: (status, body, bytes sent)."""
    with connect(base_url) as sock:
        sock.sendall(
            b"POST /v1/personas HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = f"{PIECE:x}\r\n".encode() + b"x" * PIECE + b"\r\n"
        sent = 0
        sock.setblocking(False)
        while sent < HUNDRED_MB:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                break
            if writable:
                try:
                    sent += sock.send(piece)
                except (BrokenPipeError, ConnectionResetError, BlockingIOError):
                    break
        sock.setblocking(True)
        status, body = read_response(sock)
        return status, body, sent


def test_a_huge_unauthenticated_post_is_refused_at_the_edge_while_a_reply_streams(server_factory, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    server = server_factory(TMPDIR=str(spool), MOONBORN_DEMO_DELAY_MS="20", MOONBORN_DEMO_REPLY_TOKENS="150")
    session_id = make_session(server, make_persona(server))
    arrivals: list[float] = []
    body = bytearray()

    def stream() -> None:
        with (
            server.client() as client,
            client.stream(
                "POST",
                f"/v1/chat/sessions/{session_id}/messages?stream=true",
                json={"content": "Tell me a long story."},
                headers=SSE,
            ) as response,
        ):
            for chunk in response.iter_raw():
                arrivals.append(time.monotonic())
                body.extend(chunk)

    reader = threading.Thread(target=stream)
    reader.start()
    while len(arrivals) < 10:
        time.sleep(0.01)

    status, answer = declared_upload(server.base_url)
    assert (status, json.loads(answer)) == (413, CAP_MESSAGE)
    status, answer, sent = chunked_upload(server.base_url)
    assert (status, json.loads(answer)) == (413, CAP_MESSAGE)
    assert sent < HUNDRED_MB  # the server answered long before the whole body was sent
    reader.join(timeout=60)

    events, _ = parse_wire(bytes(body))
    assert [event.event for event in events][-1] == "completed"
    assert sum(event.event == "token" for event in events) == 150
    # The stream never stopped while the uploads were refused (tokens every 20 ms; a stall would be seconds).
    assert max(b - a for a, b in zip(arrivals, arrivals[1:], strict=False)) < 1.0
    assert list(Path(spool).iterdir()) == []


def test_a_card_import_has_its_own_larger_cap(server):
    with connect(server.base_url) as sock:
        sock.sendall(
            f"POST /v1/personas/import HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.keys['alice']}\r\n"
            f"Content-Type: image/png\r\nContent-Length: {HUNDRED_MB}\r\n\r\n".encode()
        )
        status, answer = read_response(sock)
    assert status == 413
    assert (
        json.loads(answer)["error"]["message"]
        == f"The request body is larger than {8 * 1024 * 1024 + 64 * 1024} bytes."
    )
    # A body over the API's cap but within the card's reaches the import (which reads it as a card).
    with server.client() as client:
        response = client.post(
            "/v1/personas/import", content=b"{" + b" " * 200_000 + b"}", headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_card"
