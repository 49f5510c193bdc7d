"""A load generator for SSE streams: asyncio, raw HTTP/1.1 sockets, chunked decoding.

Every `token` event is counted and every stream's ids are checked for gaps and duplicates (ids must
run 1, 2, 3… with the terminal event last). Reports tokens/s, time to first token and inter-token gap
percentiles, errors, and the server's CPU (from /proc/<pid>/stat) and RSS per open stream.

Used by `bench/perf.py` and `tests/bench/test_bench_smoke.py`; also runnable by hand:

    python bench/loadgen.py --port 8000 --path '/stream?tokens=200' --slots 50 --per-slot 2 --tokens 200
"""

import argparse
import asyncio
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

TERMINAL = (b"completed", b"pipeline.completed", b"error")
# One unit of the stream: `retry:`, a heartbeat comment, or a whole frame (id, event, one data line).
_UNIT = re.compile(rb"retry: \d+\n|: heartbeat\n|id: (\d+)\nevent: ([a-z][a-z0-9_.]*)\ndata: [^\n]*\n\n")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Target:
    """One request: method, path, headers and body, sent on its own connection."""

    path: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass
class StreamResult:
    status: int = 0
    error: str = ""
    ids: list[int] = field(default_factory=list)
    tokens: int = 0
    terminal: str = ""
    started: float = 0.0
    first_token: float = 0.0
    token_times: list[float] = field(default_factory=list)
    max_gap: float = 0.0
    last_event: float = 0.0


@dataclass
class Report:
    streams: int
    ok_streams: int
    errors: int
    error_samples: list[str]
    tokens: int
    seconds: float
    tokens_per_s: float
    ttft_ms: dict[str, float]
    gap_ms: dict[str, float]
    cpu_seconds: float
    cpu_us_per_token: float
    client_cpu_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def install_fast_loop() -> None:
    """Use uvloop when it is installed: the client needs headroom over the servers it measures."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 90, 99)) -> dict[str, float]:
    """Nearest-rank percentiles, plus the maximum; empty input gives an empty dict."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {f"p{p}": ordered[min(len(ordered) - 1, max(0, -(-p * len(ordered) // 100) - 1))] for p in points}
    out["max"] = ordered[-1]
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat(5); the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_kib(pid: int) -> int:
    """Resident set size of the process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class HttpError(Exception):
    pass


class SseReader:
    """Decode a chunked (or plain) HTTP body and split it into SSE frames, recording each one."""

    def __init__(self, result: StreamResult, chunked: bool) -> None:
        self.result = result
        self.chunked = chunked
        self.raw = bytearray()  # undecoded transfer-encoding bytes
        self.body = bytearray()  # decoded SSE bytes not yet parsed
        self.done = False

    def feed(self, data: bytes, now: float) -> None:
        if self.done:
            return  # the rest of the last chunk's line, or trailers: no more events
        if not self.chunked:
            self.body += data
        else:
            self.raw += data
            self._dechunk()
        self._frames(now)

    def _dechunk(self) -> None:
        raw = self.raw
        pos = 0
        while True:
            line_end = raw.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(bytes(raw[pos:line_end]).split(b";", 1)[0], 16)
            start = line_end + 2
            if size == 0:
                self.done = True
                pos = len(raw)
                break
            if len(raw) < start + size + 2:
                break
            self.body += raw[start : start + size]
            pos = start + size + 2
        del raw[:pos]

    def _frames(self, now: float) -> None:
        body = self.body
        result = self.result
        pos = 0
        for match in _UNIT.finditer(body):
            if match.start() != pos:
                raise HttpError(f"malformed SSE at {bytes(body[pos : pos + 80])!r}")
            pos = match.end()
            event_id = match.group(1)
            if event_id is None:
                continue  # retry: or a heartbeat
            result.ids.append(int(event_id))
            kind = match.group(2)
            if result.last_event:
                result.max_gap = max(result.max_gap, now - result.last_event)
            result.last_event = now
            if kind == b"token":
                result.tokens += 1
                if not result.first_token:
                    result.first_token = now
                result.token_times.append(now)
            elif kind in TERMINAL:
                result.terminal = kind.decode()
        if body.find(b"\n\n", pos) >= 0:
            raise HttpError(f"malformed SSE at {bytes(body[pos : pos + 80])!r}")
        del body[:pos]


def _request_bytes(host: str, port: int, target: Target) -> bytes:
    head = [f"{target.method} {target.path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in target.headers]
    if target.body or target.method in ("POST", "PUT", "PATCH"):
        head.append(f"Content-Length: {len(target.body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + target.body


class _StreamProtocol(asyncio.Protocol):
    """Parse the response as it arrives, in the transport's callback: no task wake-up per read."""

    def __init__(self, result: StreamResult, keep_times: bool) -> None:
        self.result = result
        self.keep_times = keep_times
        self.head = bytearray()
        self.sse: SseReader | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        try:
            if self.sse is None:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                status_line, *header_lines = self.head[:end].decode("latin-1").split("\r\n")
                self.result.status = int(status_line.split(" ", 2)[1])
                if self.result.status != 200:
                    self.result.error = f"HTTP {self.result.status}"
                    self._finish()
                    return
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
                self.sse = SseReader(self.result, headers.get("transfer-encoding", "").lower() == "chunked")
                data = bytes(self.head[end + 4 :])
            self.sse.feed(data, now)
            if not self.keep_times:
                self.result.token_times.clear()
            if self.sse.done:
                self._finish()
        except (HttpError, ValueError) as exc:
            self.result.error = f"{type(exc).__name__}: {exc}"[:200]
            self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.result.error:
            self.result.error = f"{type(exc).__name__}: {exc}"[:200]
        self._finish()

    def _finish(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


async def read_stream(
    host: str, port: int, target: Target, *, keep_times: bool = True, stop: asyncio.Event | None = None
) -> StreamResult:
    """Send one request and read its SSE stream to the end (or until `stop` is set)."""
    result = StreamResult(started=time.perf_counter())
    loop = asyncio.get_running_loop()
    transport: asyncio.BaseTransport | None = None
    waiter = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        transport, protocol = await loop.create_connection(lambda: _StreamProtocol(result, keep_times), host, port)
        # uvloop's transports do not subclass asyncio's, so no isinstance() here.
        cast(asyncio.WriteTransport, transport).write(_request_bytes(host, port, target))
        if waiter is None:
            await protocol.finished
        else:
            await asyncio.wait((protocol.finished, waiter), return_when=asyncio.FIRST_COMPLETED)
    except OSError as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        if waiter is not None:
            waiter.cancel()
        if transport is not None:
            transport.abort()
    return result


def check_stream(result: StreamResult, expected_tokens: int) -> str:
    """Return why a finished stream is wrong ('' when it is right): status, ids, count, terminal event."""
    if result.error:
        return result.error
    ids = result.ids
    if ids != list(range(1, len(ids) + 1)):
        dup = len(ids) - len(set(ids))
        return f"ids not 1..n ({dup} duplicates, first {ids[:5]}, last {ids[-5:]})"
    if result.tokens != expected_tokens:
        return f"{result.tokens} tokens, expected {expected_tokens}"
    if result.terminal != "completed":
        return f"ended with {result.terminal or 'no terminal event'}"
    return ""


async def run_streams(
    host: str,
    port: int,
    slots: Sequence[Target],
    *,
    per_slot: int,
    expected_tokens: int,
    delay_ms: float = 0.0,
    server_pid: int | None = None,
) -> Report:
    """Run `len(slots)` concurrent loops, each reading `per_slot` streams one after another."""
    results: list[StreamResult] = []

    async def slot(target: Target) -> None:
        for _ in range(per_slot):
            results.append(await read_stream(host, port, target))

    cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
    client0 = time.process_time()
    began = time.perf_counter()
    await asyncio.gather(*(slot(t) for t in slots))
    seconds = time.perf_counter() - began
    cpu = (cpu_seconds(server_pid) - cpu0) if server_pid else 0.0
    problems = [p for p in (check_stream(r, expected_tokens) for r in results) if p]
    tokens = sum(r.tokens for r in results)
    ttft = [(r.first_token - r.started) * 1000 for r in results if r.first_token]
    gaps = [(b - a) * 1000 - delay_ms for r in results for a, b in zip(r.token_times, r.token_times[1:], strict=False)]
    return Report(
        streams=len(results),
        ok_streams=len(results) - len(problems),
        errors=len(problems),
        error_samples=sorted(set(problems))[:5],
        tokens=tokens,
        seconds=seconds,
        tokens_per_s=tokens / seconds if seconds else 0.0,
        ttft_ms=percentiles(ttft),
        gap_ms=percentiles(gaps),
        cpu_seconds=cpu,
        cpu_us_per_token=cpu / tokens * 1e6 if tokens else 0.0,
        client_cpu_seconds=time.process_time() - client0,
    )


@dataclass
class IdleReport:
    wanted: int
    opened: int
    alive: int
    errors: int
    error_samples: list[str]
    hold_seconds: float
    worst_gap_s: float
    gap_p99_s: float
    rss_before_kib: int
    rss_open_kib: int
    kib_per_stream: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def hold_idle(
    host: str,
    port: int,
    targets: Sequence[Target],
    *,
    server_pid: int,
    open_per_s: float,
    hold_s: float,
    alive_within_s: float = 2.5,
) -> IdleReport:
    """Open one stream per target (at `open_per_s`), hold them all for `hold_s`, measure, close them."""
    rss_before = rss_kib(server_pid)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[StreamResult]] = []

    async def one(target: Target) -> StreamResult:
        return await read_stream(host, port, target, keep_times=False, stop=stop)

    began = time.perf_counter()
    for i, target in enumerate(targets):
        tasks.append(asyncio.ensure_future(one(target)))
        lag = began + (i + 1) / open_per_s - time.perf_counter()
        if lag > 0:
            await asyncio.sleep(lag)
    all_open = time.perf_counter()
    await asyncio.sleep(hold_s)
    measured = time.perf_counter()
    rss_open = rss_kib(server_pid)
    stop.set()
    finished = await asyncio.gather(*tasks)
    streams = list(finished)
    opened = sum(1 for r in streams if r.status == 200)
    alive = sum(1 for r in streams if r.status == 200 and measured - r.last_event <= alive_within_s)
    problems = [r.error for r in streams if r.error]
    # A stream's worst gap between events; the ramp-up counts too, so this is conservative.
    gaps = [r.max_gap for r in streams if r.status == 200 and r.last_event > all_open]
    return IdleReport(
        wanted=len(targets),
        opened=opened,
        alive=alive,
        errors=len(problems),
        error_samples=sorted(set(problems))[:5],
        hold_seconds=measured - all_open,
        worst_gap_s=max(gaps, default=0.0),
        gap_p99_s=percentiles(gaps).get("p99", 0.0),
        rss_before_kib=rss_before,
        rss_open_kib=rss_open,
        kib_per_stream=(rss_open - rss_before) / alive if alive else 0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--body", default="")
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--per-slot", type=int, default=1)
    parser.add_argument("--tokens", type=int, required=True, help="token events expected per stream")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--server-pid", type=int)
    args = parser.parse_args()
    headers = tuple((k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in args.header))
    target = Target(args.path, args.method, headers, args.body.encode())
    install_fast_loop()
    report = asyncio.run(
        run_streams(
            args.host,
            args.port,
            [target] * args.slots,
            per_slot=args.per_slot,
            expected_tokens=args.tokens,
            delay_ms=args.delay_ms,
            server_pid=args.server_pid,
        )
    )
    print(json.dumps(report.as_dict(), indent=2))


if __name__ == "__main__":
    main()
