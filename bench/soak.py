"""Soak: N concurrent chat streams for T seconds across 2 uvicorn workers (PostgreSQL + Redis).

Checks every stream receives every event exactly once (ids 1..n, no gaps, no duplicates), counts
non-2xx answers, records worker memory, database connections and asyncio tasks before and after, and how long
after `completed` each reply got its tier-1 drift verdict (every one within 60 s, or the run fails).

    .venv/bin/python bench/soak.py --streams 200 --seconds 120      # the recorded run
    .venv/bin/python bench/soak.py --streams 20 --seconds 10         # a quick check

Needs PostgreSQL (127.0.0.1:5432, trust) and Redis (127.0.0.1:6379): `scripts/services` starts them.
"""

import argparse
import asyncio
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG = "postgresql://postgres@127.0.0.1:5432/postgres"
FRAME = re.compile(rb"id: (\d+)\nevent: ([a-z.]+)\ndata: [^\n]*\n\n")
# Prints a session key of a staff user ("soak-ops"): /healthz shows its task counts to staff only.
STAFF_SESSION = (
    "from django.contrib.auth import get_user_model; from django.test import Client; "
    "user, _ = get_user_model().objects.update_or_create(username='soak-ops', defaults={'is_staff': True}); "
    "client = Client(); client.force_login(user); print(client.cookies['sessionid'].value)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def pg_connections(name: str) -> int:
    with psycopg.connect(PG, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()
    return int(row[0]) if row else 0


async def one_stream(client: httpx.AsyncClient, session: str, expected_tokens: int, stats: dict) -> None:
    url = f"/v1/chat/sessions/{session}/messages?stream=true"
    async with client.stream("POST", url, json={"content": "Tell me more"}) as response:
        if response.status_code != 200:
            stats["non_2xx"] += 1
            await response.aread()
            return
        buffer = b""
        ids: list[int] = []
        kinds: list[str] = []
        async for chunk in response.aiter_raw():
            buffer += chunk
            end = 0
            for match in FRAME.finditer(buffer):
                ids.append(int(match.group(1)))
                kinds.append(match.group(2).decode())
                end = match.end()
            buffer = buffer[end:]
    stats["streams"] += 1
    stats["tokens"] += kinds.count("token")
    if ids != list(range(1, expected_tokens + 3)) or kinds[-1] != "completed":
        stats["bad_streams"] += 1


async def soak(args: argparse.Namespace) -> dict:
    name = f"moonborn_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "MOONBORN_REDIS_PREFIX": f"soak-{uuid.uuid4().hex[:8]}",
        "MOONBORN_DEMO_DELAY_MS": str(args.delay_ms),
        "MOONBORN_DEMO_REPLY_TOKENS": str(args.tokens),
        "MOONBORN_MAX_STREAMS_PER_KEY": "100000",
        # One key opens every stream of the load: no per-key request rate (the counting itself stays on).
        "MOONBORN_RATE_POSTS_PER_MINUTE": "100000000",
        "MOONBORN_RATE_SESSIONS_PER_MINUTE": "100000000",
        "MOONBORN_DB_POOL_MAX_IDLE_SECONDS": "1",
        "MOONBORN_LOG_LEVEL": "WARNING",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    }
    py = sys.executable
    subprocess.run([py, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    key = (
        subprocess.run(
            [py, "manage.py", "create_api_key", "soak"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    staff_session = (
        subprocess.run(
            [py, "manage.py", "shell", "-c", STAFF_SESSION],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    staff = {"sessionid": staff_session}
    ports = [free_port(), free_port()]
    workers = [
        subprocess.Popen(
            [
                py,
                "-m",
                "uvicorn",
                "moonborn_site.asgi:application",
                "--port",
                str(p),
                "--log-level",
                "warning",
                "--no-access-log",
                # Longer than any lane's pause between two streams: a connection the server closes as idle while the
                # client takes it for its next stream is a read error of the harness, not of the server.
                "--timeout-keep-alive",
                "75",
            ],
            cwd=ROOT,
            env=env,
        )
        for p in ports
    ]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    headers = {"Authorization": f"Bearer {key}"}
    try:
        for base in bases:
            for _ in range(200):
                try:
                    httpx.get(f"{base}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
        limits = httpx.Limits(max_connections=args.streams + 10, max_keepalive_connections=args.streams + 10)
        clients = [httpx.AsyncClient(base_url=b, headers=headers, timeout=120, limits=limits) for b in bases]
        persona = (
            await clients[0].post(
                "/v1/personas", json={"prompt": "A patient tide-clock maker"}, headers={"Accept": "application/json"}
            )
        ).json()["id"]
        sessions = [
            (await clients[i % 2].post("/v1/chat/sessions", json={"personaId": persona})).json()["id"]
            for i in range(max(2, args.streams))
        ]
        # Warm both workers (their background tasks start with their first run).
        for i in range(2):
            await one_stream(
                clients[i], sessions[i], args.tokens, {"non_2xx": 0, "streams": 0, "tokens": 0, "bad_streams": 0}
            )
        await asyncio.sleep(2)  # the warm-up streams' last tasks end
        before = {
            "rss_kib": [rss_kib(w.pid) for w in workers],
            "tasks": [httpx.get(f"{b}/healthz", cookies=staff).json()["tasks"] for b in bases],
            "db_connections": pg_connections(name),
        }
        stats = {"non_2xx": 0, "streams": 0, "tokens": 0, "bad_streams": 0}
        deadline = time.monotonic() + args.seconds
        mid_rss: list[list[int]] = []

        async def lane(i: int) -> None:
            while time.monotonic() < deadline:
                await one_stream(clients[i % 2], sessions[i], args.tokens, stats)

        async def sample() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(args.seconds / 4)
                mid_rss.append([rss_kib(w.pid) for w in workers])

        started = time.monotonic()
        await asyncio.gather(sample(), *(lane(i) for i in range(args.streams)))
        elapsed = time.monotonic() - started
        await asyncio.sleep(3)
        after = {
            "rss_kib": [rss_kib(w.pid) for w in workers],
            "tasks": [httpx.get(f"{b}/healthz", cookies=staff).json()["tasks"] for b in bases],
        }
        for _ in range(60):
            after["db_connections"] = pg_connections(name)
            if after["db_connections"] <= before["db_connections"]:
                break
            await asyncio.sleep(1)
        for c in clients:
            await c.aclose()
        tier1 = await asyncio.to_thread(tier1_lags, name, args.tier1_wait)
        return {
            "streams_concurrent": args.streams,
            "seconds": round(elapsed, 1),
            "workers": 2,
            "tokens_per_reply": args.tokens,
            "delay_ms": args.delay_ms,
            **stats,
            "tokens_per_s": round(stats["tokens"] / elapsed),
            "before": before,
            "during_rss_kib": mid_rss,
            "after": after,
            "tier1": tier1,
        }
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=60)
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def tier1_lags(name: str, wait: float) -> dict:
    """How long after `completed` each reply got its tier-1 verdict (scored, or skipped by the cascade), waiting up
    to `wait` seconds for the last ones."""
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    query = (
        "SELECT EXTRACT(EPOCH FROM (tier1_scored_at - completed_at)), tier1_score IS NOT NULL FROM chat_message"
        " WHERE role = 'assistant' AND status = 'completed'"
    )
    deadline = time.monotonic() + wait
    while True:
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(query).fetchall()
        pending = sum(1 for lag, _ in rows if lag is None)
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(2)
    lags = sorted(float(lag) for lag, _ in rows if lag is not None)

    def q(p: float) -> float:
        return round(lags[min(len(lags) - 1, int(p * len(lags)))], 2) if lags else 0.0

    return {
        "replies": len(rows),
        "pending": pending,
        "scored": sum(1 for lag, scored in rows if lag is not None and scored),
        "skipped": sum(1 for lag, scored in rows if lag is not None and not scored),
        "lag_p50_s": q(0.5),
        "lag_p99_s": q(0.99),
        "lag_max_s": round(lags[-1], 2) if lags else 0.0,
        "within_60_s": sum(1 for lag in lags if lag <= 60.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--delay-ms", type=int, default=20)
    parser.add_argument("--tier1-wait", type=float, default=300, help="seconds to wait for the last tier-1 verdicts")
    args = parser.parse_args()
    result = asyncio.run(soak(args))
    print(json.dumps(result, indent=2))
    tier1 = result["tier1"]
    ok = (
        result["bad_streams"] == 0
        and result["non_2xx"] == 0
        and result["after"]["tasks"] == result["before"]["tasks"]
        and tier1["pending"] == 0
        and tier1["within_60_s"] == tier1["replies"]
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
