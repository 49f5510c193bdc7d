"""Fake model upstreams: real HTTP servers on loopback that speak the real wire formats.

`FakeUpstream("openai")` answers `POST /v1/chat/completions` with chunked `data:` frames ending in
`data: [DONE]` (and a usage chunk when `stream_options.include_usage` is set), and `POST
/v1/embeddings`. `FakeUpstream("anthropic")` answers `POST /v1/messages` with the typed events
`message_start`, `content_block_start`, `ping`, `content_block_delta`…, `content_block_stop`,
`message_delta`, `message_stop`. Each request is recorded as a `Call`, including when its client
closed the connection. Behaviours are scripted per request: `Answer`, `Fail` (an HTTP error before
the first token, with a `Retry-After`), `Drop` (the connection dies mid-stream) and `Hang` (nothing is ever sent).
"""

import hashlib
import json
import math
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Flavour = Literal["openai", "anthropic"]
MODEL_SUFFIX = "-2026-01-15"


@dataclass(frozen=True)
class Answer:
    deltas: tuple[str, ...]
    delay: float = 0.0  # seconds before each delta
    hold: threading.Event | None = None  # after the first delta, the rest wait until it is set (at most 30 s)


@dataclass(frozen=True)
class Fail:
    status: int
    message: str = "upstream failure"
    retry_after: str = "0"  # the `Retry-After` header sent with it


@dataclass(frozen=True)
class Drop:
    deltas: tuple[str, ...]  # sent, then the connection is cut without ending the body


@dataclass(frozen=True)
class Hang:
    pass


Behaviour = Answer | Fail | Drop | Hang


@dataclass
class Call:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    opened_at: float = field(default_factory=time.monotonic)
    sent: list[str] = field(default_factory=list)
    closed_at: float | None = None  # the client closed before the answer ended
    finished_at: float | None = None  # the answer was sent whole

    @property
    def over(self) -> bool:
        return self.closed_at is not None or self.finished_at is not None


def words(text: str) -> tuple[str, ...]:
    """Split text into word-sized deltas that join back to exactly `text`."""
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        out.append(word if i == 0 else " " + word)
    return tuple(d for d in out if d)


def prompt_tokens(body: dict[str, Any]) -> int:
    """The fake's own 'tokenizer': one token per 3 characters of every message and the system text."""
    text = str(body.get("system", "")) + "".join(str(m.get("content", "")) for m in body.get("messages", []))
    return len(text) // 3 + 1


class FakeUpstream:
    def __init__(self, flavour: Flavour, *, api_key: str = "test") -> None:
        self.flavour = flavour
        self.api_key = api_key
        self.calls: list[Call] = []
        self.script: deque[Behaviour] = deque()
        self.responder: Callable[[dict[str, Any]], Behaviour] = lambda body: Answer(words("Hello there."))
        self.reject_response_format = False
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"fake-{flavour}", daemon=True)

    @property
    def url(self) -> str:
        port = self.server.server_address[1]
        return f"http://127.0.0.1:{port}/v1" if self.flavour == "openai" else f"http://127.0.0.1:{port}"

    def start(self) -> "FakeUpstream":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def reset(self, responder: Callable[[dict[str, Any]], Behaviour] | None = None, *script: Behaviour) -> None:
        """Forget earlier calls; answer with `script` first, then with `responder`."""
        with self.lock:
            self.calls.clear()
            self.script = deque(script)
            self.reject_response_format = False
            if responder is not None:
                self.responder = responder

    def next_behaviour(self, body: dict[str, Any]) -> Behaviour:
        with self.lock:
            if self.script:
                return self.script.popleft()
        return self.responder(body)

    def record(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)

    def wait_over(self, call: Call, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not call.over:
            if time.monotonic() > deadline:
                raise AssertionError(f"the upstream call to {call.path} is still open")
            time.sleep(0.01)


def _handler(fake: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        # -- plumbing ------------------------------------------------------------------------------

        def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def _client_left(self, wait: float) -> bool:
            """Wait up to `wait` seconds; True as soon as the client closes its connection."""
            readable, _, _ = select.select([self.connection], [], [], wait)
            if not readable:
                return False
            try:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def _error_body(self, status: int, message: str) -> dict[str, Any]:
            if fake.flavour == "anthropic":
                kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
                return {"type": "error", "error": {"type": kind, "message": message}}
            return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}

        # -- requests ------------------------------------------------------------------------------

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            call = Call(self.path, body, {k.lower(): v for k, v in self.headers.items()})
            fake.record(call)
            if fake.flavour == "openai":
                authorised = self.headers.get("Authorization") == f"Bearer {fake.api_key}"
                routes = {"/v1/chat/completions": self._openai_chat, "/v1/embeddings": self._openai_embeddings}
            else:
                # The API takes `x-api-key`; newer SDKs send the key as a bearer token.
                authorised = fake.api_key in (self.headers.get("x-api-key"), _bearer(self.headers.get("Authorization")))
                routes = {"/v1/messages": self._anthropic_messages}
            route = routes.get(self.path.split("?")[0])
            if route is None:
                self._json(404, self._error_body(404, f"no route {self.path}"))
            elif not authorised:
                self._json(401, self._error_body(401, "invalid api key sk-...secret"))
            else:
                route(call)
            if call.finished_at is None and call.closed_at is None:
                call.finished_at = time.monotonic()

        def _openai_embeddings(self, call: Call) -> None:
            inputs = call.body["input"]
            inputs = [inputs] if isinstance(inputs, str) else inputs
            data = [
                {"object": "embedding", "index": i, "embedding": fake_vector(text)} for i, text in enumerate(inputs)
            ]
            self._json(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": call.body["model"] + MODEL_SUFFIX,
                    "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
                },
            )

        def _stream(
            self, call: Call, frames: Callable[[str], list[bytes]], head: list[bytes], tail: Callable[[], list[bytes]]
        ) -> None:
            # `tail` carries usage counted from what was sent, so it is built after the deltas.
            behaviour = fake.next_behaviour(call.body)
            if isinstance(behaviour, Fail):
                self._json(
                    behaviour.status,
                    self._error_body(behaviour.status, behaviour.message),
                    {"retry-after": behaviour.retry_after},
                )
                return
            if isinstance(behaviour, Hang):
                # Headers never come: wait until the client gives up (or the fake stops).
                while not fake.stopping.is_set():
                    if self._client_left(0.05):
                        call.closed_at = time.monotonic()
                        self.close_connection = True
                        return
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for frame in head:
                    self._chunk(frame)
                delay = behaviour.delay if isinstance(behaviour, Answer) else 0.0
                hold = behaviour.hold if isinstance(behaviour, Answer) else None
                for number, delta in enumerate(behaviour.deltas):
                    if number == 1 and hold is not None:
                        hold.wait(30)
                    if self._client_left(delay):
                        call.closed_at = time.monotonic()
                        self.close_connection = True
                        return
                    for frame in frames(delta):
                        self._chunk(frame)
                    call.sent.append(delta)
                if isinstance(behaviour, Drop):
                    # Cut the connection without the chunked terminator: a broken body.
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    call.finished_at = time.monotonic()
                    return
                for frame in tail():
                    self._chunk(frame)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                call.closed_at = time.monotonic()
                self.close_connection = True

        def _openai_chat(self, call: Call) -> None:
            body = call.body
            if fake.reject_response_format and "response_format" in body:
                self._json(400, self._error_body(400, "response_format is not supported by this server"))
                return
            model = str(body["model"]) + MODEL_SUFFIX
            base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1767225600, "model": model}
            with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            extra = {"usage": None} if with_usage else {}

            def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return b"data: " + json.dumps({**base, "choices": [choice], **extra}).encode() + b"\n\n"

            def tail() -> list[bytes]:
                frames = [chunk({}, "stop")]
                if with_usage:
                    usage = {
                        "prompt_tokens": prompt_tokens(body),
                        "completion_tokens": len(call.sent),
                        "total_tokens": prompt_tokens(body) + len(call.sent),
                    }
                    frames.append(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
                return [*frames, b"data: [DONE]\n\n"]

            self._stream(call, lambda d: [chunk({"content": d})], [chunk({"role": "assistant", "content": ""})], tail)

        def _anthropic_messages(self, call: Call) -> None:
            body = call.body
            model = str(body["model"]) + MODEL_SUFFIX

            def event(kind: str, data: dict[str, Any]) -> bytes:
                return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

            head = [
                event(
                    "message_start",
                    {
                        "message": {
                            "id": "msg_fake",
                            "type": "message",
                            "role": "assistant",
                            "content": [],
                            "model": model,
                            "stop_reason": None,
                            "stop_sequence": None,
                            "usage": {"input_tokens": prompt_tokens(body), "output_tokens": 1},
                        }
                    },
                ),
                event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
                event("ping", {}),
            ]

            def delta(text: str) -> list[bytes]:
                return [event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})]

            def tail() -> list[bytes]:
                return [
                    event("content_block_stop", {"index": 0}),
                    event(
                        "message_delta",
                        {
                            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"output_tokens": len(call.sent)},
                        },
                    ),
                    event("message_stop", {}),
                ]

            self._stream(call, delta, head, tail)

    return Handler


def _bearer(header: str | None) -> str | None:
    return header[len("Bearer ") :] if header and header.startswith("Bearer ") else None


def fake_vector(text: str, dim: int = 384) -> list[float]:
    """A deterministic unit vector for `text` (the fake embedding model)."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(digest[i % len(digest)] - 127.5) / 127.5 + math.sin(i + len(text)) for i in range(dim)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
