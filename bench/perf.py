"""Streaming performance: Moonborn against the bare-ASGI reference, interleaved in one run.

Scenarios (issue 7), each against `bench/reference_asgi.py` and Moonborn's chat stream (uvicorn, one
worker, SQLite, the `demo` provider), both on uvicorn with uvloop + httptools:

  single  one stream at a time, 200 tokens, no delay: tokens/s, time to first token
  c50     50 concurrent streams, 200 tokens, no delay: tokens/s
  c1000   1,000 concurrent streams, 100 tokens at 20 ms: TTFT p99, inter-token jitter p99
  idle    N open streams at 1 event/s, held by one process: how many stay alive, RSS per stream

The first three run in `--rounds` interleaved rounds (reference and Moonborn alternate which goes
first); the table reports medians. `idle` runs once per server, each on a fresh process.

With `--plain-django`, a third server takes part in every scenario: `bench/reference_django.py`, the same frames
from a minimal Django async view (what the issue says Moonborn must beat), in turn with the other two.

    .venv/bin/python bench/perf.py                          # the recorded run (~10 minutes)
    .venv/bin/python bench/perf.py --rounds 1 --c1000 100 --idle 500 --idle-hold 5   # a quick look
    .venv/bin/python bench/perf.py --plain-django           # and the plain Django view in every scenario
"""

import argparse
import asyncio
import json
import os
import resource
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
# Run as a script (`python bench/perf.py`), so the project root is not on the path by itself.
sys.path.insert(0, str(ROOT))
from bench import loadgen  # noqa: E402

PY = sys.executable
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(name: str, app: str, env: dict[str, str], health: str) -> Server:
    port = free_port()
    process = subprocess.Popen(
        [PY, "-m", "uvicorn", app, "--host", HOST, "--port", str(port), "--log-level", "warning", "--no-access-log"]
        + serving_options(app),
        cwd=ROOT,
        env=env,
    )
    server = Server(name, port, process)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        try:
            httpx.get(f"http://{HOST}:{port}{health}", timeout=1)
            return server
        except httpx.TransportError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"{name} did not start") from None
            time.sleep(0.1)


def serving_options(app: str) -> list[str]:
    """Moonborn runs as its README's production command says; the references on uvicorn as it comes."""
    if app.startswith("bench.reference") or not (ROOT / "moonborn_site" / "serving.py").exists():
        return []  # (a checkout from before moonborn_site.serving, in an A/B)
    return ["--loop", "moonborn_site.serving:BurstAcceptLoop"]


@contextmanager
def running(name: str, app: str, env: dict[str, str], health: str) -> Iterator[Server]:
    server = start_server(name, app, env, health)
    try:
        yield server
    finally:
        server.stop()


class Moonborn:
    """A migrated SQLite database, one API key, one ready persona and a pool of chat sessions."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.database = workdir / "bench.sqlite3"
        self.copies = 0
        self.env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{self.database}",
            "MOONBORN_MAX_STREAMS_PER_KEY": "1000000",
            # One key opens every stream of the load: no per-key request rate (the counting itself stays on).
            "MOONBORN_RATE_POSTS_PER_MINUTE": "100000000",
            "MOONBORN_RATE_SESSIONS_PER_MINUTE": "100000000",
            "MOONBORN_LOG_LEVEL": "WARNING",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "MOONBORN_DEMO_DELAY_MS": "0",
        }
        subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=self.env, check=True)
        made = subprocess.run(
            [PY, "manage.py", "create_api_key", "bench"],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        self.key = made.stdout.strip().splitlines()[-1]
        self.sessions: list[str] = []
        self.overrides: dict[str, str] = {}

    def server_env(self, delay_ms: int, tokens: int) -> dict[str, str]:
        """A server's environment, with a copy of the database of its own: without Redis a database has one server
        (runs.lifecycle.sole_server_error), and servers measured side by side must not share one anyway."""
        self.copies += 1
        copy = self.workdir / f"bench-{self.copies}.sqlite3"
        with closing(sqlite3.connect(self.database)) as source, closing(sqlite3.connect(copy)) as target:
            source.backup(target)
        demo = {"MOONBORN_DEMO_DELAY_MS": str(delay_ms), "MOONBORN_DEMO_REPLY_TOKENS": str(tokens)}
        return {**self.env, "DATABASE_URL": f"sqlite:///{copy}", **demo, **self.overrides}

    def make_sessions(self, count: int) -> None:
        """Create a persona and `count` sessions through the API (one server, then stopped)."""
        with running("moonborn-setup", "moonborn_site.asgi:application", self.env, "/healthz") as server:
            asyncio.run(self._make_sessions(server.port, count))

    async def _make_sessions(self, port: int, count: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Accept": "application/json"}
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", headers=headers, timeout=120) as client:
            made = await client.post("/v1/personas", json={"prompt": "A lighthouse keeper who counts ships"})
            made.raise_for_status()
            persona = made.json()["id"]
            gate = asyncio.Semaphore(8)

            async def one() -> str:
                async with gate:
                    response = await client.post("/v1/chat/sessions", json={"personaId": persona})
                    response.raise_for_status()
                    return str(response.json()["id"])

            self.sessions = list(await asyncio.gather(*(one() for _ in range(count))))

    def targets(self, sessions: list[str]) -> list[loadgen.Target]:
        return chat_targets(self.key, sessions)


def chat_targets(key: str, sessions: list[str]) -> list[loadgen.Target]:
    """One chat-reply stream request per session."""
    headers = (
        ("Authorization", f"Bearer {key}"),
        ("Accept", "text/event-stream"),
        ("Content-Type", "application/json"),
    )
    body = json.dumps({"content": "Tell me about the night the lamp went out."}).encode()
    return [loadgen.Target(f"/v1/chat/sessions/{s}/messages", "POST", headers, body) for s in sessions]


def reference_targets(count: int, tokens: int, delay_ms: int) -> list[loadgen.Target]:
    return [loadgen.Target(f"/stream?tokens={tokens}&delay_ms={delay_ms}")] * count


def summarize(rep: loadgen.Report) -> dict[str, Any]:
    return {
        "tokens_per_s": rep.tokens_per_s,
        "ttft_p50_ms": rep.ttft_ms.get("p50", 0.0),
        "ttft_p99_ms": rep.ttft_ms.get("p99", 0.0),
        "jitter_p99_ms": rep.gap_ms.get("p99", 0.0),
        "errors": rep.errors,
        "error_samples": rep.error_samples,
        "streams": rep.streams,
        "tokens": rep.tokens,
        "server_cpu_us_per_token": rep.cpu_us_per_token,
        "client_cpu_s": rep.client_cpu_seconds,
        "seconds": rep.seconds,
    }


# The plain-Django reference: its own settings, none of Moonborn's.
DJANGO_APP = "bench.reference_django:application"


def reference_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"}


def run_rounds(args: argparse.Namespace, mb: Moonborn, log: list[dict[str, Any]]) -> None:
    pools = iter(mb.sessions)
    with ExitStack() as stack:
        ref = stack.enter_context(running("reference", "bench.reference_asgi:app", reference_env(), "/"))
        fast = stack.enter_context(
            running("moonborn-0ms", "moonborn_site.asgi:application", mb.server_env(0, 200), "/healthz")
        )
        paced = stack.enter_context(
            running("moonborn-20ms", "moonborn_site.asgi:application", mb.server_env(20, 100), "/healthz")
        )
        plain = stack.enter_context(running("django", DJANGO_APP, reference_env(), "/")) if args.plain_django else None
        c1000 = [next(pools) for _ in range(args.c1000)]
        # Steady state only: the embedder loads in the background at start-up, and first requests
        # pay for imports and caches. A few streams on each server before anything is measured.
        warm_ups = [
            (ref, reference_targets(1, 200, 0), 200),
            (fast, mb.targets([next(pools) for _ in range(3)]), 200),
            (paced, mb.targets([next(pools) for _ in range(3)]), 100),
        ]
        if plain is not None:
            warm_ups.append((plain, reference_targets(1, 200, 0), 200))
        for server, slots, tokens in warm_ups:
            warm = asyncio.run(loadgen.run_streams(HOST, server.port, slots, per_slot=1, expected_tokens=tokens))
            if warm.errors:
                raise RuntimeError(f"{server.name} warm-up failed: {warm.error_samples}")
        for rnd in range(args.rounds):
            single = [next(pools)]
            c50 = [next(pools) for _ in range(50)]
            plan = [
                ("single", dict(per_slot=args.single, expected_tokens=200, delay_ms=0.0),
                 ref, reference_targets(1, 200, 0), fast, mb.targets(single)),
                ("c50", dict(per_slot=args.c50_each, expected_tokens=200, delay_ms=0.0),
                 ref, reference_targets(50, 200, 0), fast, mb.targets(c50)),
                ("c1000", dict(per_slot=1, expected_tokens=100, delay_ms=20.0),
                 ref, reference_targets(args.c1000, 100, 20), paced, mb.targets(c1000)),
            ]  # fmt: skip
            for scenario, kw, ref_server, ref_slots, mb_server, mb_slots in plan:
                order = [("reference", ref_server, ref_slots), ("moonborn", mb_server, mb_slots)]
                if plain is not None:
                    order.append(("django", plain, ref_slots))
                # Each server goes first in turn (with two: reference first in even rounds, Moonborn in odd ones).
                turn = rnd % len(order)
                for who, server, slots in order[turn:] + order[:turn]:
                    rep = asyncio.run(
                        loadgen.run_streams(HOST, server.port, slots, server_pid=server.pid, **kw)  # type: ignore[arg-type]
                    )
                    row = {"round": rnd, "scenario": scenario, "server": who, **summarize(rep)}
                    log.append(row)
                    print(json.dumps(row), flush=True)
                    time.sleep(args.pause)


def run_idle(args: argparse.Namespace, mb: Moonborn, log: list[dict[str, Any]]) -> None:
    tokens = int(args.idle_hold + args.idle / args.idle_rate + 120)
    for who in ("reference", "moonborn", "django") if args.plain_django else ("reference", "moonborn"):
        if who == "reference":
            ctx = running("reference-idle", "bench.reference_asgi:app", reference_env(), "/")
        elif who == "django":
            ctx = running("django-idle", DJANGO_APP, reference_env(), "/")
        else:
            env = mb.server_env(1000, tokens)
            ctx = running("moonborn-idle", "moonborn_site.asgi:application", env, "/healthz")
        with ctx as server:
            time.sleep(2)  # let start-up (the embedder warm-up thread) settle before the RSS baseline
            if who == "moonborn":
                slots = mb.targets(mb.sessions[-args.idle :])
            else:
                slots = reference_targets(args.idle, tokens, 1000)
            rep = asyncio.run(
                loadgen.hold_idle(
                    HOST, server.port, slots, server_pid=server.pid, open_per_s=args.idle_rate, hold_s=args.idle_hold
                )
            )
            row = {"scenario": "idle", "server": who, **rep.as_dict()}
            log.append(row)
            print(json.dumps(row), flush=True)


def table(log: list[dict[str, Any]]) -> str:
    def med(scenario: str, who: str, key: str) -> float:
        values = [r[key] for r in log if r["scenario"] == scenario and r["server"] == who]
        return statistics.median(values) if values else float("nan")

    def ratio(value: float, to: float) -> str:
        # A run too short for the server's CPU clock (10 ms ticks) measures 0 µs per token: no ratio to that.
        return f"{value / to:.2f}×" if to else "–"

    def errors(scenario: str, who: str) -> int:
        return sum(r["errors"] for r in log if r["scenario"] == scenario and r["server"] == who)

    plain = any(r["server"] == "django" for r in log)
    columns = ["scenario", "metric", "reference", "Moonborn", "ratio (Moonborn / reference)"]
    if plain:
        columns += ["plain Django view", "ratio (Moonborn / Django)", "errors ref · Moonborn · Django"]
    else:
        columns.append("errors ref · Moonborn")
    rows = [f"| {' | '.join(columns)} |", "| " + " | ".join("---" for _ in columns) + " |"]
    for scenario, key, label, fmt in (
        ("single", "tokens_per_s", "tokens/s", "{:,.0f}"),
        ("single", "ttft_p50_ms", "TTFT p50 (ms)", "{:.2f}"),
        ("single", "server_cpu_us_per_token", "server CPU per token (µs)", "{:.1f}"),
        ("c50", "tokens_per_s", "tokens/s", "{:,.0f}"),
        ("c50", "server_cpu_us_per_token", "server CPU per token (µs)", "{:.1f}"),
        ("c1000", "ttft_p99_ms", "TTFT p99 (ms)", "{:,.0f}"),
        ("c1000", "jitter_p99_ms", "inter-token jitter p99 (ms)", "{:.1f}"),
        ("c1000", "tokens_per_s", "tokens/s", "{:,.0f}"),
    ):
        ref, mb = med(scenario, "reference", key), med(scenario, "moonborn", key)
        errs = f"{errors(scenario, 'reference')} · {errors(scenario, 'moonborn')}"
        if plain:
            django = med(scenario, "django", key)
            versus = f"{fmt.format(django)} | {ratio(mb, django)} | "
            errs += f" · {errors(scenario, 'django')}"
        else:
            versus = ""
        rows.append(
            f"| {scenario} | {label} | {fmt.format(ref)} | {fmt.format(mb)} | {ratio(mb, ref)} | {versus}{errs} |"
        )
    for row in log:
        if row["scenario"] == "idle":
            rows.append(
                f"| idle | {row['server']}: alive {row['alive']:,} of {row['wanted']:,} · worst gap "
                f"{row['worst_gap_s']:.2f} s · RSS {row['rss_open_kib'] / 1024:,.0f} MiB | "
                f"KiB per stream {row['kib_per_stream']:.1f} |{' |' * (len(columns) - 4)} {row['errors']} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single", type=int, default=30, help="streams one after another in `single`")
    parser.add_argument("--c50-each", type=int, default=4, help="streams per slot in `c50`")
    parser.add_argument("--c1000", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=10000, help="streams to hold in `idle` (0: skip)")
    parser.add_argument("--idle-rate", type=float, default=400.0, help="streams opened per second")
    parser.add_argument("--idle-hold", type=float, default=15.0)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between measurements")
    parser.add_argument("--moonborn-env", action="append", default=[], help="NAME=VALUE for Moonborn's servers")
    parser.add_argument(
        "--plain-django", action="store_true", help="also measure bench/reference_django.py in every scenario"
    )
    parser.add_argument("--out", type=Path, help="write every measurement here as JSON")
    args = parser.parse_args()
    # Each open stream is a socket on both ends; the sandbox allows 20,000 per process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loadgen.install_fast_loop()
    log: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="moonborn-perf-") as tmp:
        mb = Moonborn(Path(tmp))
        mb.overrides = dict(item.split("=", 1) for item in args.moonborn_env)
        started = time.monotonic()
        mb.make_sessions(args.c1000 + 6 + args.rounds * 51 + args.idle)
        print(f"# {len(mb.sessions)} sessions in {time.monotonic() - started:.1f} s", flush=True)
        run_rounds(args, mb, log)
        if args.idle:
            run_idle(args, mb, log)
    if args.out:
        args.out.write_text(json.dumps(log, indent=1))
    print(table(log))


if __name__ == "__main__":
    main()
