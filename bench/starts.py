"""The event loop's cost of starting streams: N chat-stream requests at once, in-process, no sockets.

Each request goes through Moonborn's ASGI application as uvicorn would hand it over (the fast path: API key, turn
stored with the others waiting, run started, `message.started` written), with a `receive` and `send` that do no
I/O. Measured: the event loop thread's CPU per start, and the time from the burst to each stream's first frame.
Without the server, the load generator and the kernel, what is left is the application's own work per start, which
is what 1,000 simultaneous streams wait on (bench/RESULTS.md). The demo model's first token is held back (a 10 s
delay) so that only starts are measured.

    .venv/bin/python bench/starts.py                       # this checkout, 3 rounds of 1,000
    .venv/bin/python bench/starts.py /tmp/old . --rounds 4  # two checkouts interleaved (A/B)
    .venv/bin/python bench/starts.py --reference            # and bench/reference_asgi.py the same way

With `--reference` the bare-ASGI reference gets the same requests (its stream held back the same way) in rounds of
its own: what the reference's start costs, measured as Moonborn's is.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BODY = json.dumps({"content": "Tell me about the night the lamp went out."}).encode()


def measure(key: str, sessions: list[str], *, reference: bool = False) -> dict[str, Any]:
    """In this process (Django set up from the environment): start one stream per session at once.

    `reference`: the same requests to `bench/reference_asgi.py` instead (the session ids only name them).
    """
    import uvloop

    from bench.loadgen import percentiles

    if reference:
        from bench.reference_asgi import app as application
    else:
        from moonborn_site.asgi import application

    everyone = asyncio.Event()  # set when every stream expected has written its first frame

    async def start(session_id: str, began: float, seen: dict[str, float], gone: asyncio.Event, wanted: int) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": f"/v1/chat/sessions/{session_id}/messages",
            "raw_path": b"",
            # The reference's stream held back as the demo model's is (it reads these; Moonborn ignores them).
            "query_string": b"tokens=100&delay_ms=10000" if reference else b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"authorization", f"Bearer {key}".encode()),
                (b"accept", b"text/event-stream"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(BODY)).encode()),
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": BODY, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] != 200:
                raise RuntimeError(f"status {message['status']}")
            if b"event: message.started" in message.get("body", b"") and session_id not in seen:
                seen[session_id] = time.perf_counter() - began
                if len(seen) == wanted:
                    everyone.set()

        await application(scope, receive, send)

    async def until_started(tasks: list["asyncio.Future[None]"]) -> None:
        """Wait until every stream has written its first frame; raise what a request that ended first raised."""
        # Woken once, when the last stream has started (not polling: that would be loop time of its own).
        all_started = asyncio.ensure_future(everyone.wait())
        done, _ = await asyncio.wait([all_started, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if all_started not in done:
            all_started.cancel()
            ended = done.pop()
            raise ended.exception() or RuntimeError("a request ended before its stream started")
        everyone.clear()

    async def burst() -> dict[str, Any]:
        warm_gone = asyncio.Event()
        warm: dict[str, float] = {}
        warming = asyncio.ensure_future(start(sessions[0], time.perf_counter(), warm, warm_gone, 1))
        await until_started([warming])
        warm_gone.set()
        await warming
        await asyncio.sleep(0.5)
        seen: dict[str, float] = {}
        gone = asyncio.Event()
        cpu, began = time.thread_time(), time.perf_counter()
        tasks = [asyncio.ensure_future(start(s, began, seen, gone, len(sessions) - 1)) for s in sessions[1:]]
        await until_started(tasks)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - began
        # The clients leave: every run is cancelled and stores its (empty) reply before the process ends.
        gone.set()
        await asyncio.gather(*tasks)
        if not reference:
            from runs.hub import get_hub

            hub = get_hub()
            while hub.local_run_ids():
                await asyncio.sleep(0.05)
        first = percentiles([seconds * 1000 for seconds in seen.values()])
        return {
            "starts": len(seen),
            "loop_cpu_us_per_start": cpu / len(seen) * 1e6,
            "wall_ms": wall * 1000,
            "first_frame_p50_ms": first["p50"],
            "first_frame_p99_ms": first["p99"],
        }

    return uvloop.run(burst())


def child(args: argparse.Namespace) -> None:
    os.environ.update(json.loads(args.env))
    os.chdir(args.root)
    sys.path.insert(0, str(args.root))
    sessions = json.loads(Path(args.sessions).read_text())
    print(json.dumps(measure(args.key, sessions, reference=args.reference)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("trees", nargs="*", type=Path, help="checkouts to compare (default: this one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=1000, help="streams started at once")
    parser.add_argument("--reference", action="store_true", help="also measure bench/reference_asgi.py")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--env", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--sessions", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from bench import perf

    trees = [tree.resolve() for tree in args.trees] or [ROOT]
    per_run = args.n + 1  # one warm-up stream
    with tempfile.TemporaryDirectory(prefix="moonborn-starts-") as tmp:
        setups = []
        for number, tree in enumerate(trees):
            perf.ROOT = tree
            workdir = Path(tmp) / str(number)
            workdir.mkdir()
            mb = perf.Moonborn(workdir)
            mb.make_sessions(per_run * args.rounds)
            env = mb.server_env(10_000, 100)
            changed = {k: v for k, v in env.items() if k not in os.environ or os.environ[k] != v}
            setups.append((str(tree), tree, mb.key, mb.sessions, changed, []))
        if args.reference:
            names = [f"ref{i}" for i in range(per_run * args.rounds)]
            setups.append(("reference", ROOT, "", names, {}, ["--reference"]))
        for rnd in range(args.rounds):
            for name, tree, key, pool, env, extra in setups if rnd % 2 == 0 else setups[::-1]:
                sessions = Path(tmp) / "sessions.json"
                sessions.write_text(json.dumps(pool[rnd * per_run : (rnd + 1) * per_run]))
                made = subprocess.run(
                    [sys.executable, __file__, "--child", "--root", str(tree), "--env", json.dumps(env)]
                    + ["--key", key, "--sessions", str(sessions), *extra],
                    cwd=tree,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                row = json.loads(made.stdout.strip().splitlines()[-1])
                print(
                    f"{rnd} {name}: {row['starts']} starts · loop CPU {row['loop_cpu_us_per_start']:.0f} µs each ·"
                    f" first frame p50 {row['first_frame_p50_ms']:.0f} ms, p99 {row['first_frame_p99_ms']:.0f} ms",
                    flush=True,
                )


if __name__ == "__main__":
    main()
