"""Lists whose cost must not grow with the number of messages: `GET /v1/personas` and the admin persona list.

For each database (SQLite, PostgreSQL) and each size (1,000 and 100,000 messages): a fresh migrated database, one
owner with 25 ready personas (one generated through the API by the demo model, the rest copies of its row: card,
anchors and vectors, ~21 KB each) and chat sessions of 40 messages spread evenly over them, half user messages, half
scored replies (one in ten flagged); then a real server (uvicorn, one worker, as the README's production command)
answers 20 requests to each page, after 3 to warm it, over one keep-alive connection each: the API with its key,
the admin changelist (`/admin/personas/persona/`) signed in as a superuser. PostgreSQL is analysed after the rows
are written, as its autovacuum does; SQLite is left as a deployment leaves it. Each size's table row gives the p50
and p90 of the requests' wall time at the client, in milliseconds, the p50 against that at the smallest size, and the
server process's CPU time per request (PostgreSQL's own work not included).

    .venv/bin/python bench/lists.py
    .venv/bin/python bench/lists.py --root /tmp/old      # another checkout's code (its server and its models)
    .venv/bin/python bench/lists.py --databases sqlite --sizes 1000 --requests 5
"""

import argparse
import json
import os
import random
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PERSONAS = 25
SESSION_MESSAGES = 40
ADMIN = ("bench-admin", "correct horse battery staple")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose code is measured")
    parser.add_argument("--databases", default="sqlite,postgres", help="sqlite, postgres or both")
    parser.add_argument("--sizes", default="1000,100000", help="messages in the database, over all personas")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per page")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # the seeding subprocess
    parser.add_argument("--template", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = args.root.resolve()
    if args.seed:
        seed(root, args.template, args.seed)
        return
    sys.path.insert(0, str(ROOT))
    from bench import perf

    perf.ROOT = root
    sizes = [int(n) for n in args.sizes.split(",")]
    rows = []
    loads: list[float] = []
    for kind in args.databases.split(","):
        for size in sizes:
            with database(kind) as url:
                api, admin, load = measure(perf, root, url, size, args.requests)
            rows.append((kind, size, api, admin))
            loads.append(load)
            print(
                f"{kind} {size:,} messages: API p50 {api[0]:.1f} ms · admin p50 {admin[0]:.1f} ms"
                f" · load average {load:.1f}",
                flush=True,
            )
    # The machine's other work shows in every figure: its 1-minute load average as each size was timed.
    print(
        f"\n{root}: p50 (p90) in ms over {args.requests} requests; ×: p50 against the smallest size;"
        f" load average {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores"
    )
    print("| database | messages | `GET /v1/personas` | × | server CPU | admin persona list | × | server CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, size, api, admin in rows:
        base = next(row for row in rows if row[0] == kind)
        cells = [
            f"{page[0]:.1f} ({page[1]:.1f}) | {page[0] / first[0]:.2f} | {page[2]:.1f}"
            for page, first in ((api, base[2]), (admin, base[3]))
        ]
        print(f"| {'SQLite' if kind == 'sqlite' else 'PostgreSQL'} | {size:,} | {' | '.join(cells)} |")


@contextmanager
def database(kind: str) -> Iterator[str]:
    """A new empty database's URL: a SQLite file, or a PostgreSQL database dropped afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="moonborn-lists-") as tmp:
            yield f"sqlite:///{tmp}/bench.sqlite3"
        return
    if kind != "postgres":
        raise SystemExit(f"unknown database {kind!r}")
    import psycopg

    name = f"moonborn_bench_lists_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgres://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def measure(perf: Any, root: Path, url: str, size: int, requests: int) -> tuple[Any, ...]:
    """The p50 and p90 of each page, and the load average as they were timed."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "MOONBORN_LOG_LEVEL": "WARNING",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "MOONBORN_DEMO_DELAY_MS": "0",
        # Nothing here for tier 1 to score: its worker process would only poll beside the server.
        "MOONBORN_DRIFT_TIER1_WORKER": "false",
        # Plain HTTP on loopback: the admin's cookies must come back.
        "DJANGO_SESSION_COOKIE_SECURE": "false",
        "DJANGO_CSRF_COOKIE_SECURE": "false",
    }
    py = sys.executable
    subprocess.run([py, "manage.py", "migrate", "--noinput", "-v0"], cwd=root, env=env, check=True)
    made = subprocess.run(
        [py, "manage.py", "create_api_key", "bench"], cwd=root, env=env, check=True, capture_output=True, text=True
    )
    key = made.stdout.strip().splitlines()[-1]
    with perf.running("moonborn", "moonborn_site.asgi:application", env, "/healthz") as server:
        base = f"http://127.0.0.1:{server.port}"
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        with httpx.Client(base_url=base, headers=headers, timeout=120) as api:
            made_persona = api.post("/v1/personas", json={"prompt": "A lighthouse keeper who counts ships"})
            made_persona.raise_for_status()
            template = made_persona.json()["id"]
            script = [py, str(Path(__file__).resolve()), "--root", str(root), "--seed", str(size)]
            subprocess.run([*script, "--template", template], cwd=root, env=env, check=True)
            with signed_in(base) as admin:
                check(api, admin, size)
                load = os.getloadavg()[0]
                pages = (
                    timed(api, "/v1/personas", requests, server.pid),
                    timed(admin, "/admin/personas/persona/", requests, server.pid),
                )
                return (*pages, (load + os.getloadavg()[0]) / 2)


@contextmanager
def signed_in(base: str) -> Iterator[httpx.Client]:
    """A client signed in to the admin as the superuser the seeding made."""
    with httpx.Client(base_url=base, timeout=120) as client:
        page = client.get("/admin/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert token is not None, page.text[:500]
        done = client.post(
            "/admin/login/",
            data={"username": ADMIN[0], "password": ADMIN[1], "csrfmiddlewaretoken": token[1], "next": "/admin/"},
            headers={"Referer": f"{base}/admin/login/"},
        )
        if done.status_code != 302:
            raise RuntimeError(f"admin login failed: {done.status_code} {done.text[:500]}")
        yield client


def check(api: httpx.Client, admin: httpx.Client, size: int) -> None:
    """Both pages answer every persona, and the API's reply counts add up to the replies written."""
    listed = api.get("/v1/personas")
    listed.raise_for_status()
    personas = listed.json()["results"]
    replies = sum(p["drift"]["replies"] for p in personas)
    if len(personas) != PERSONAS or replies != size // 2:
        raise RuntimeError(f"{len(personas)} personas, {replies} replies; expected {PERSONAS}, {size // 2}")
    page = admin.get("/admin/personas/persona/")
    page.raise_for_status()
    if page.text.count('class="drift-health ') != PERSONAS:
        raise RuntimeError("the admin list does not show every persona")


def timed(client: httpx.Client, path: str, requests: int, pid: int) -> tuple[float, float, float]:
    """p50 and p90 (nearest rank) of `requests` GETs, after 3 that warm the server's caches, and the server process's
    CPU per request (its own work, SQLite's included, PostgreSQL's not: what the machine's other work does not
    stretch)."""
    from bench.loadgen import cpu_seconds

    took = []
    for _ in range(3):
        client.get(path).raise_for_status()
    cpu = cpu_seconds(pid)
    for _ in range(requests):
        began = time.perf_counter()
        response = client.get(path)
        took.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
    cpu_ms = (cpu_seconds(pid) - cpu) * 1000 / requests
    took.sort()
    return statistics.median(took), took[max(0, -(-len(took) * 9 // 10) - 1)], cpu_ms


def seed(root: Path, template_id: str, size: int) -> None:
    """In the checkout `root`: copies of the template persona, the sessions and messages, the superuser."""
    sys.path.insert(0, str(root))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moonborn_site.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from chat.models import ChatSession, Message
    from moonborn_site.ids import new_persona_id
    from personas import services
    from personas.models import Persona, PersonaStep

    rng = random.Random(size)
    now = timezone.now()
    get_user_model().objects.create_superuser(ADMIN[0], password=ADMIN[1])
    template = Persona.objects.get(pk=template_id)
    steps = list(PersonaStep.objects.filter(persona=template))
    with transaction.atomic():
        personas = [template]
        for number in range(1, PERSONAS):
            copy = Persona.objects.get(pk=template_id)
            copy.id, copy.name = new_persona_id(), f"{template.name} {number}"
            copy.save(force_insert=True)
            personas.append(copy)
            for step in steps:
                step.pk, step.persona = None, copy
            PersonaStep.objects.bulk_create(steps)
        per_persona = size // PERSONAS
        sessions = []
        for persona in personas:
            for start in range(0, per_persona, SESSION_MESSAGES):
                drifted = rng.random() < 0.1
                sessions.append(
                    (
                        ChatSession(
                            owner_id=persona.owner_id,
                            persona=persona,
                            title=f"Chat {start // SESSION_MESSAGES}",
                            drift_ewma=rng.random(),
                            sustained_drift_at=now if drifted else None,
                        ),
                        min(SESSION_MESSAGES, per_persona - start),
                    )
                )
        ChatSession.objects.bulk_create([session for session, _ in sessions], batch_size=1000)
        batch: list[Message] = []
        for session, count in sessions:
            for index in range(count):
                reply = index % 2 == 1
                score = round(rng.betavariate(2, 5), 4) if reply else None
                batch.append(
                    Message(
                        session=session,
                        index=index,
                        role=Message.Role.ASSISTANT if reply else Message.Role.USER,
                        content=f"Message {index}: the harbour, the ferry and the weather at dawn, again and again.",
                        status=Message.Status.COMPLETED,
                        model="demo" if reply else "",
                        drift_score=score,
                        drift_threshold=0.5 if reply else None,
                        flagged=bool(reply and rng.random() < 0.1),
                        completed_at=now,
                    )
                )
            if len(batch) >= 5000:
                Message.objects.bulk_create(batch)
                batch = []
        Message.objects.bulk_create(batch)
        # Rows written here, not by the chat services: the counters the services keep are counted once.
        recount = getattr(services, "persona_drift_stats_recount", None)
        if recount is not None:
            recount(persona_ids=[p.pk for p in personas])
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    print(json.dumps({"personas": len(personas), "sessions": len(sessions), "messages": size}), file=sys.stderr)


if __name__ == "__main__":
    main()
