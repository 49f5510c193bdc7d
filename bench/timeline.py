"""Where a round of N simultaneous chat streams loses its time, seen from both ends of the socket.

Moonborn runs on uvicorn (SQLite, `demo` provider) wrapped in `bench/timeline_asgi.py`, which notes when each
request reached the application, when its headers and each token were written, and every garbage collection. The
load generator's clock and the server's are the same (`time.perf_counter` is CLOCK_MONOTONIC on Linux), so per
round this prints, in ms from the first connect:

- client start · server entry · entry → headers · headers → first token · client first token (p50 p90 p99 max)
- jitter p99 (gap minus the delay), and the late gaps (over 25 ms late) by 100 ms of the round, as the client saw
  them and as the server wrote them: the same bins on both sides means the server was late, not the client
- the round's collections: how many, the longest, their sum

    .venv/bin/python bench/timeline.py                                  # 3 rounds of 1,000 streams, 100 × 20 ms
    .venv/bin/python bench/timeline.py --gc-threshold 50000,50,1000     # with other collector thresholds
"""

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import loadgen, perf

LATE_MS = 25.0


def spread(values: Sequence[float]) -> str:
    if not values:
        return "none"
    points = loadgen.percentiles(values)
    return f"p50 {points['p50']:7.1f} · p90 {points['p90']:7.1f} · p99 {points['p99']:7.1f} · max {max(values):7.1f}"


def late_bins(streams: Sequence[Sequence[float]], t0: float, delay_ms: float) -> tuple[list[float], str]:
    """Every gap's lateness (ms), and the late gaps by 100 ms bin of the round ("1.2s:323/2933 …")."""
    lateness: list[float] = []
    late: Counter[int] = Counter()
    every: Counter[int] = Counter()
    for times in streams:
        for before, after in zip(times, times[1:], strict=False):
            behind = (after - before) * 1000 - delay_ms
            lateness.append(behind)
            slot = int((after - t0) * 10)
            every[slot] += 1
            if behind > LATE_MS:
                late[slot] += 1
    bins = " ".join(f"{slot / 10:.1f}s:{late[slot]}/{every[slot]}" for slot in sorted(every) if late[slot])
    return lateness, bins or "none"


def report(rnd: int, results: Sequence[loadgen.StreamResult], timeline: dict[str, Any], delay_ms: float) -> list[str]:
    t0 = min(result.started for result in results)
    requests = timeline["requests"]
    rows = [
        ("client start", [(r.started - t0) * 1000 for r in results]),
        ("server entry", [(entered - t0) * 1000 for entered, _, _ in requests]),
        ("entry → headers", [(headers - entered) * 1000 for entered, headers, _ in requests if headers]),
        ("headers → first token", [(tokens[0] - headers) * 1000 for _, headers, tokens in requests if tokens]),
        ("client first token", [(r.first_token - t0) * 1000 for r in results if r.first_token]),
    ]
    lines = [f"{rnd} {name}: {spread(values)} ms" for name, values in rows]
    lateness, client_bins = late_bins([r.token_times for r in results], t0, delay_ms)
    _, server_bins = late_bins([tokens for _, _, tokens in requests], t0, delay_ms)
    jitter = loadgen.percentiles(lateness)["p99"] if lateness else 0.0
    late = sum(behind > LATE_MS for behind in lateness)
    lines.append(f"{rnd} jitter p99 {jitter:.1f} ms · {late} of {len(lateness)} gaps over {LATE_MS:g} ms late")
    lines.append(f"{rnd} late gaps by 100 ms, client: {client_bins}")
    lines.append(f"{rnd} late gaps by 100 ms, server: {server_bins}")
    written = sum(len(tokens) for _, _, tokens in requests)
    lines.append(f"{rnd} the server wrote {written} tokens to {sum(bool(t) for _, _, t in requests)} streams")
    pauses = [ms for began, ms, _ in timeline["collections"] if began >= t0]
    longest = max(pauses, default=0.0)
    lines.append(f"{rnd} collections: {len(pauses)} · longest {longest:.1f} ms · sum {sum(pauses):.1f} ms")
    return lines


async def one_round(port: int, targets: Sequence[loadgen.Target]) -> list[loadgen.StreamResult]:
    return list(await asyncio.gather(*(loadgen.read_stream(perf.HOST, port, target) for target in targets)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=1000, help="streams at once")
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--pause", type=float, default=45.0, help="seconds after a round (its replies' embeddings)")
    parser.add_argument("--gc-threshold", default="", help="a,b,c for gc.set_threshold in the server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="moonborn-timeline-") as tmp:
        mb = perf.Moonborn(Path(tmp))
        mb.make_sessions(args.n * args.rounds + 3)
        sessions = iter(mb.sessions)
        env = {**mb.server_env(int(args.delay_ms), args.tokens), "BENCH_GC_THRESHOLD": args.gc_threshold}
        with perf.running("moonborn-timeline", "bench.timeline_asgi:app", env, "/healthz") as server:
            base = f"http://{perf.HOST}:{server.port}"
            warm = mb.targets([next(sessions) for _ in range(3)])
            asyncio.run(loadgen.run_streams(perf.HOST, server.port, warm, per_slot=1, expected_tokens=args.tokens))
            httpx.get(f"{base}/_timeline", timeout=30)
            time.sleep(2)
            for rnd in range(args.rounds):
                targets = mb.targets([next(sessions) for _ in range(args.n)])
                results = asyncio.run(one_round(server.port, targets))
                problems = [p for p in (loadgen.check_stream(r, args.tokens) for r in results) if p]
                if problems:
                    raise RuntimeError(f"{len(problems)} streams wrong: {sorted(set(problems))[:3]}")
                timeline = httpx.get(f"{base}/_timeline", timeout=30).json()
                for line in report(rnd, results, timeline, args.delay_ms):
                    print(line, flush=True)
                if rnd < args.rounds - 1:
                    time.sleep(args.pause)


if __name__ == "__main__":
    main()
