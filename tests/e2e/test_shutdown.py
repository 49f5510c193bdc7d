"""SIGTERM with a thousand open streams: the worker refuses new connections at once, cancels the runs still going
when its drain runs out, stores every reply and exits."""

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from tests.conftest import LiveServer, manage, start_uvicorn
from tests.e2e.helpers import JSON, make_persona, parse_wire

STREAMS = 1000
# Replies far longer than the drain: every run is still going when it runs out.
SLOW = {"MOONBORN_DEMO_DELAY_MS": "300", "MOONBORN_DEMO_REPLY_TOKENS": "100000"}
# A short drain that still leaves the runs 3 s to finish before the rest are cancelled.
DRAIN = {"MOONBORN_SHUTDOWN_DRAIN_SECONDS": "8", "MOONBORN_SHUTDOWN_CANCEL_SECONDS": "5"}
# One key opens every stream; no tier-1 worker competing for the two cores.
MANY = {
    "MOONBORN_MAX_STREAMS_PER_KEY": "5000",
    "MOONBORN_RATE_POSTS_PER_MINUTE": "0",
    "MOONBORN_DRIFT_TIER1_WORKER": "false",
}


class Stream(asyncio.Protocol):
    """One raw HTTP/1.1 response, kept whole; `tokened` once it has a token, `ended` once the server closed it."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self.tokened = False
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.raw += data
        if not self.tokened and b"\nevent: token\n" in self.raw:
            self.tokened = True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and the body (chunked transfer decoded)."""
        head, _, rest = bytes(self.raw).partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        if headers.get("transfer-encoding") != "chunked":
            return int(status_line.split()[1]), headers, rest
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                return int(status_line.split()[1]), headers, body
            body, rest = body + rest[:size], rest[size + 2 :]


def request(
    method: str, path: str, key: str, body: dict[str, Any] | None = None, close: bool = True, **headers: str
) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {key}"]
    lines += ["Connection: close"] if close else []
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def sessions_of(server: LiveServer, persona_id: str, count: int) -> list[str]:
    """`count` new sessions with the persona, made in the database in one statement (a request each would take most
    of the test's time)."""
    made = manage(
        "shell",
        "-c",
        "import json; from chat.models import ChatSession; from personas.models import Persona;"
        f" persona = Persona.objects.get(pk={persona_id!r});"
        " made = ChatSession.objects.bulk_create("
        f"[ChatSession(owner_id=persona.owner_id, persona=persona) for _ in range({count})]);"
        " print(json.dumps([session.pk for session in made]))",
        env=server.env,
    )
    return list(json.loads(made.strip().splitlines()[-1]))


def stored_replies(database_url: str, message_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """Message id → (status, content, error, usage status, prompt tokens, completion tokens), as the database has
    them after the process exited."""
    query = (
        "SELECT m.id, m.status, m.content, m.error, u.status, u.prompt_tokens, u.completion_tokens"
        " FROM chat_message m JOIN accounts_usagerecord u ON u.run_id = m.id AND u.kind = 'chat'"
        " WHERE m.role = 'assistant'"
    )
    if database_url.startswith("sqlite:///"):
        with closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as conn:
            rows = conn.execute(query).fetchall()
    else:
        import psycopg

        with psycopg.connect(database_url.replace("postgres://", "postgresql://", 1)) as conn:
            rows = conn.execute(query).fetchall()
    wanted = set(message_ids)
    return {row[0]: tuple(row[1:]) for row in rows if row[0] in wanted}


def test_sigterm_with_a_thousand_open_streams_stores_every_reply_and_exits_refusing_new_connections(
    server_factory, tmp_path: Path
):
    setup = server_factory(**MANY)
    persona_id = make_persona(setup)
    setup.stop()  # the database has one server at a time (runs.lifecycle.sole_server_error)
    sessions = sessions_of(setup, persona_id, STREAMS + 1)
    server = start_uvicorn({**setup.env, **SLOW, **DRAIN}, tmp_path, setup.keys)
    key = setup.keys["alice"]
    port = int(server.base_url.rsplit(":", 1)[1])

    async def scenario() -> dict[str, Any]:
        loop = asyncio.get_running_loop()

        async def open_stream(session_id: str) -> Stream:
            transport, stream = await loop.create_connection(Stream, "127.0.0.1", port)
            stream_request = request(
                "POST", f"/v1/chat/sessions/{session_id}/messages", key, {"content": "Tell me a long story."},
                Accept="text/event-stream",
            )  # fmt: skip
            transport.write(stream_request)
            return stream

        streams = await asyncio.gather(*(open_stream(s) for s in sessions[:STREAMS]))
        deadline = time.monotonic() + 60
        while not all(stream.tokened for stream in streams):
            assert time.monotonic() < deadline, f"{sum(s.tokened for s in streams)} of {STREAMS} streams have a token"
            await asyncio.sleep(0.1)
        # A connection the server has answered on before the signal; its next request goes after it.
        kept_transport, kept = await loop.create_connection(Stream, "127.0.0.1", port)
        kept_transport.write(request("GET", "/healthz", key, close=False))
        while not kept.raw.endswith(b"}"):
            await asyncio.sleep(0.01)
        assert kept.raw.startswith(b"HTTP/1.1 200 "), bytes(kept.raw)
        kept.raw.clear()

        signalled = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*(stream.ended for stream in streams)), timeout=30)
        released = time.monotonic() - signalled
        try:
            accepted, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            accepted.close()
            refused = False
        except ConnectionRefusedError:
            refused = True
        kept_transport.write(
            request("POST", f"/v1/chat/sessions/{sessions[-1]}/messages", key, {"content": "Still there?"}, **JSON)
        )
        await asyncio.wait_for(kept.ended, timeout=30)
        asked_at = time.monotonic() - signalled
        exit_code = await asyncio.to_thread(server.process.wait, 35 - (time.monotonic() - signalled))
        return {
            "streams": [stream.response() for stream in streams],
            "released": released,
            "refused": refused,
            "answer": kept.response(),
            "asked_at": asked_at,
            "exit_code": exit_code,
            "exited": time.monotonic() - signalled,
        }

    try:
        outcome = asyncio.run(scenario())
    except subprocess.TimeoutExpired:
        raise AssertionError("the server did not exit within 35 s of SIGTERM:\n" + server.log()[-3000:]) from None
    finally:
        server.stop()

    # The runs had the drain but for its last MOONBORN_SHUTDOWN_CANCEL_SECONDS to finish; then all was done in time.
    runs_part = float(DRAIN["MOONBORN_SHUTDOWN_DRAIN_SECONDS"]) - float(DRAIN["MOONBORN_SHUTDOWN_CANCEL_SECONDS"])
    assert runs_part <= outcome["exited"] < 35
    # uvicorn ends the process with the signal it was stopped by, once its own shutdown is done.
    assert outcome["exit_code"] == -signal.SIGTERM
    # While the runs still went on: a new connection is refused, and a new run on a connection made before gets 503.
    assert outcome["refused"] is True
    assert outcome["asked_at"] < runs_part
    status, headers, body = outcome["answer"]
    assert (status, headers["retry-after"]) == (503, "1")
    assert json.loads(body)["error"]["code"] == "server_shutdown"

    seen: dict[str, tuple[str, int]] = {}  # message id → (the text its client saw, how many tokens)
    for status, _, body in outcome["streams"]:
        assert status == 200
        events, _ = parse_wire(body)
        assert events[-1].event == "error"
        assert events[-1].data == {
            "error": "The server is shutting down; resume this stream.",
            "code": "server_shutdown",
            "retryable": True,
        }
        assert events[-1].id == events[-2].id
        tokens = [e.data["delta"] for e in events if e.event == "token"]
        assert tokens
        seen[events[0].data["messageId"]] = ("".join(tokens), len(tokens))
    assert len(seen) == STREAMS

    replies = stored_replies(server.env["DATABASE_URL"], list(seen))
    assert len(replies) == STREAMS
    for message_id, (status, content, error, usage_status, prompt_tokens, completion_tokens) in replies.items():
        text, tokens = seen[message_id]
        # The run went on after its client was released: what it stored begins with what the client saw.
        assert content.startswith(text), (message_id, content[:80], text[:80])
        assert (status, error, usage_status) == ("cancelled", "Cancelled.", "cancelled")
        assert prompt_tokens > 0
        assert completion_tokens >= tokens
    log = server.log()
    assert "Traceback" not in log
    stopped = re.search(
        r"SIGTERM: (\d+) run\(s\) still going after ([\d.]+) s cancelled; storing their ends took ([\d.]+) s", log
    )
    assert stopped is not None, log[-3000:]
    assert int(stopped.group(1)) == STREAMS
