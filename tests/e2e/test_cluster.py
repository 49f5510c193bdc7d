"""Several real uvicorn workers on PostgreSQL and Redis: runs reach across workers, survive faults."""

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL, Cluster, LiveServer, manage, start_uvicorn
from tests.e2e.helpers import JSON, LORE_TOOL, WireEvent, parse_wire, stream_events, wait_for
from tests.e2e.test_disconnect import read_until

SLOW = {"MOONBORN_DEMO_DELAY_MS": "30", "MOONBORN_DEMO_REPLY_TOKENS": "150"}


def client(server: LiveServer, cluster: Cluster, user: str = "alice", **kwargs: Any) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {cluster.keys[user]}"}, timeout=60, **kwargs
    )


def ready_session(server: LiveServer, cluster: Cluster) -> str:
    with client(server, cluster) as c:
        persona = c.post("/v1/personas", json={"prompt": "A ferry pilot between two islands"}, headers=JSON)
        assert persona.status_code == 201, persona.text
        session = c.post("/v1/chat/sessions", json={"personaId": persona.json()["id"]})
        assert session.status_code == 201
        return str(session.json()["id"])


def complete_events(body: bytes) -> list[WireEvent]:
    return parse_wire(body[: body.rindex(b"\n\n") + 2])[0]


def stored_messages(server: LiveServer, cluster: Cluster, session_id: str) -> list[dict[str, Any]]:
    with client(server, cluster) as c:
        return list(c.get(f"/v1/chat/sessions/{session_id}/messages").json()["results"])


def test_a_run_on_worker_a_is_followed_resumed_and_cancelled_through_worker_b(cluster_factory):
    cluster = cluster_factory(2, MOONBORN_DEMO_DELAY_MS="30", MOONBORN_DEMO_REPLY_TOKENS="2000")
    a, b = cluster.workers
    session_id = ready_session(a, cluster)
    results: dict[str, bytes] = {}
    with (
        client(a, cluster) as ca,
        ca.stream(
            "POST", f"/v1/chat/sessions/{session_id}/messages?stream=true", json={"content": "Across the water?"}
        ) as origin,
    ):
        chunks = origin.iter_raw()
        head = read_until(chunks, 1)
        message_id = complete_events(head)[0].data["messageId"]
        events_url = f"/v1/chat/sessions/{session_id}/messages/{message_id}/events"

        def follow_on_b() -> None:
            with client(b, cluster) as cb, cb.stream("GET", events_url) as follower:
                results["follower"] = follower.read()

        follower_thread = threading.Thread(target=follow_on_b)
        follower_thread.start()
        body = head + read_until(chunks, 20)
        with client(b, cluster) as cb, cb.stream("GET", events_url, headers={"Last-Event-ID": "5"}) as resumed:
            resumed_body = read_until(resumed.iter_raw(), 10)
        with client(b, cluster) as cb:
            asked = time.monotonic()
            cancelled = cb.post(f"/v1/chat/sessions/{session_id}/messages/{message_id}/cancel")
        for chunk in chunks:
            body += chunk
        ended = time.monotonic()
        follower_thread.join(timeout=10)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert ended - asked < 1.0
    origin_events = parse_wire(body)[0]
    assert origin_events[-1].event == "error"
    assert origin_events[-1].data == {"error": "The run was cancelled.", "code": "cancelled", "retryable": False}
    assert [e.id for e in origin_events] == list(range(1, len(origin_events) + 1))
    # Worker B delivered exactly worker A's events: from the start, and after Last-Event-ID 5.
    assert parse_wire(results["follower"])[0] == origin_events
    assert complete_events(resumed_body) == origin_events[5 : 5 + len(complete_events(resumed_body))]
    assert complete_events(resumed_body)[0].id == 6
    stored = stored_messages(b, cluster, session_id)[-1]
    assert stored["status"] == "cancelled"
    assert stored["content"] == "".join(e.data["delta"] for e in origin_events if e.event == "token")


def test_idempotent_retries_create_one_persona_and_one_reply_across_workers(cluster_factory):
    cluster = cluster_factory(2, **SLOW)
    a, b = cluster.workers
    body = {"prompt": "A glass-blower with a secret"}
    with client(a, cluster) as ca, client(b, cluster) as cb:
        first = ca.post("/v1/personas", json=body, headers={**JSON, "Idempotency-Key": "persona-1"})
        again = cb.post("/v1/personas", json=body, headers={**JSON, "Idempotency-Key": "persona-1"})
        assert first.status_code == again.status_code == 201
        assert first.json()["id"] == again.json()["id"]
        other_body = cb.post(
            "/v1/personas", json={"prompt": "Someone else"}, headers={**JSON, "Idempotency-Key": "persona-1"}
        )
        assert other_body.status_code == 409
        assert other_body.json()["error"]["code"] == "idempotency_conflict"
        assert [p["id"] for p in ca.get("/v1/personas").json()["results"]] == [first.json()["id"]]
        # Bob's keys are his own.
        with client(a, cluster, "bob") as bob:
            assert (
                bob.post("/v1/personas", json=body, headers={**JSON, "Idempotency-Key": "persona-1"}).json()["id"]
                != first.json()["id"]
            )

        session = ca.post("/v1/chat/sessions", json={"personaId": first.json()["id"]}).json()["id"]
        url = f"/v1/chat/sessions/{session}/messages?stream=true&on_disconnect=continue"
        key = {"Idempotency-Key": "reply-1"}
        with ca.stream("POST", url, json={"content": "Tell me"}, headers=key) as response:
            seen = complete_events(read_until(response.iter_raw(), 6))
        # The client dropped; its retry to the other worker resumes the same run after what it saw.
        with cb.stream(
            "POST", url, json={"content": "Tell me"}, headers={**key, "Last-Event-ID": str(seen[-1].id)}
        ) as retry:
            rest = parse_wire(retry.read())[0]
        assert [e.id for e in seen + rest] == list(range(1, 155))  # started, the lorebook pair, 150 tokens, completed
        assert rest[-1].event == "completed"
        assert rest[-1].data["messageId"] == seen[0].data["messageId"]
        messages = stored_messages(a, cluster, session)
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["content"] == "".join(e.data["delta"] for e in seen + rest if e.event == "token")

        # Two identical requests at the same moment, to both workers: one reply.
        replies: list[httpx.Response] = []

        def post(c: httpx.Client) -> None:
            replies.append(
                c.post(
                    f"/v1/chat/sessions/{session}/messages",
                    json={"content": "Once"},
                    headers={**JSON, "Idempotency-Key": "reply-2"},
                )
            )

        threads = [threading.Thread(target=post, args=(c,)) for c in (ca, cb)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert [r.status_code for r in replies] == [201, 201]
    assert replies[0].json()["messageId"] == replies[1].json()["messageId"]
    assert len(stored_messages(a, cluster, session)) == 4


def pg_connections(database_url: str) -> int:
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


# A staff user's session: /healthz shows its run and task counts to staff only.
STAFF_SESSION = (
    "from django.contrib.auth import get_user_model; from django.test import Client; "
    "user, _ = get_user_model().objects.update_or_create(username='ops', defaults={'is_staff': True}); "
    "client = Client(); client.force_login(user); print(client.cookies['sessionid'].value)"
)


def staff_cookies(env: dict[str, str]) -> dict[str, str]:
    return {"sessionid": manage("shell", "-c", STAFF_SESSION, env=env).strip().splitlines()[-1]}


def health(server: LiveServer, cookies: dict[str, str]) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/healthz", cookies=cookies, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_concurrent_streams_across_two_workers_get_every_event_exactly_once(cluster_factory):
    """A short soak for CI (bench/soak.py runs the long one): 40 streams at once over 2 workers."""
    cluster = cluster_factory(
        2,
        MOONBORN_DEMO_DELAY_MS="10",
        MOONBORN_DEMO_REPLY_TOKENS="60",
        MOONBORN_MAX_STREAMS_PER_KEY="1000",
        MOONBORN_DB_POOL_MAX_IDLE_SECONDS="0.5",
    )
    a, b = cluster.workers
    # One run on each worker first, so the baseline includes each worker's own background tasks.
    sessions = [ready_session(worker, cluster) for worker in (a, b)]
    with client(a, cluster) as ca:
        persona_id = ca.get(f"/v1/chat/sessions/{sessions[0]}").json()["personaId"]
        sessions = [ca.post("/v1/chat/sessions", json={"personaId": persona_id}).json()["id"] for _ in range(40)]
    staff = staff_cookies(cluster.env)
    baseline = {w.base_url: health(w, staff)["tasks"] for w in (a, b)}
    connections_before = pg_connections(cluster.env["DATABASE_URL"])
    outcomes: list[tuple[int, list[WireEvent]]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        worker = (a, b)[i % 2]
        with (
            client(worker, cluster) as c,
            c.stream(
                "POST", f"/v1/chat/sessions/{sessions[i]}/messages?stream=true", json={"content": f"Hello {i}"}
            ) as response,
        ):
            events = parse_wire(response.read())[0] if response.status_code == 200 else []
        with lock:
            outcomes.append((response.status_code, events))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(status for status, _ in outcomes) == [200] * 40
    for _, events in outcomes:
        assert [e.id for e in events] == list(range(1, 65))
        assert [e.event for e in events] == ["message.started", *LORE_TOOL] + ["token"] * 60 + ["completed"]

    # Back to where they started: no leaked tasks, no leaked database connections.
    def settled() -> bool:
        tasks = {w.base_url: health(w, staff)["tasks"] for w in (a, b)}
        connections = pg_connections(cluster.env["DATABASE_URL"])
        return tasks == baseline and connections <= connections_before

    wait_for(settled, timeout=40, interval=0.5)
    assert "Traceback" not in a.log() + b.log()


def test_concurrency_limit_counts_runs_on_every_worker(cluster_factory):
    cluster = cluster_factory(2, MOONBORN_MAX_STREAMS_PER_KEY="1", **SLOW)
    a, b = cluster.workers
    first, second = ready_session(a, cluster), ready_session(a, cluster)
    with (
        client(a, cluster) as ca,
        ca.stream("POST", f"/v1/chat/sessions/{first}/messages?stream=true", json={"content": "Busy"}) as response,
    ):
        chunks = response.iter_raw()
        read_until(chunks, 2)
        with client(b, cluster) as cb:
            refused = cb.post(f"/v1/chat/sessions/{second}/messages", json={"content": "Me too"}, headers=JSON)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert stored_messages(b, cluster, second) == []


def test_sigterm_releases_streams_and_the_client_resumes_on_the_other_worker(cluster_factory):
    cluster = cluster_factory(2, MOONBORN_SHUTDOWN_DRAIN_SECONDS="30", **SLOW)
    a, b = cluster.workers
    session_id = ready_session(b, cluster)
    with (
        client(a, cluster) as ca,
        ca.stream(
            "POST", f"/v1/chat/sessions/{session_id}/messages?stream=true", json={"content": "Keep talking"}
        ) as response,
    ):
        chunks = response.iter_raw()
        body = read_until(chunks, 12)
        a.process.send_signal(signal.SIGTERM)
        for chunk in chunks:
            body += chunk
    first = parse_wire(body)[0]
    shutdown = first[-1]
    assert shutdown.event == "error"
    assert shutdown.data == {
        "error": "The server is shutting down; resume this stream.",
        "code": "server_shutdown",
        "retryable": True,
    }
    # The shutdown error repeats the last id the client got, so Last-Event-ID resumes without a gap.
    assert shutdown.id == first[-2].id
    message_id = first[0].data["messageId"]
    with (
        client(b, cluster) as cb,
        cb.stream(
            "GET",
            f"/v1/chat/sessions/{session_id}/messages/{message_id}/events",
            headers={"Last-Event-ID": str(shutdown.id)},
        ) as resumed,
    ):
        rest = parse_wire(resumed.read())[0]
    events = first[:-1] + rest
    assert [e.id for e in events] == list(range(1, 155))  # started, the lorebook pair, 150 tokens, completed
    assert events[-1].event == "completed"
    stored = stored_messages(b, cluster, session_id)[-1]
    assert stored["status"] == "completed"
    assert stored["content"] == "".join(e.data["delta"] for e in events if e.event == "token")
    # Worker A finished its run, then exited.
    assert a.process.wait(timeout=30) is not None


def test_worker_killed_mid_reply_is_reaped_by_the_other_worker(cluster_factory):
    cluster = cluster_factory(
        2,
        MOONBORN_WORKER_TTL_SECONDS="1",
        MOONBORN_REAPER_SECONDS="0.5",
        MOONBORN_DEMO_DELAY_MS="30",
        MOONBORN_DEMO_REPLY_TOKENS="2000",
    )
    a, b = cluster.workers
    session_id = ready_session(b, cluster)
    with (
        client(a, cluster) as ca,
        ca.stream(
            "POST",
            f"/v1/chat/sessions/{session_id}/messages?stream=true&on_disconnect=continue",
            json={"content": "Go on"},
        ) as response,
    ):
        head = complete_events(read_until(response.iter_raw(), 20))
        message_id = head[0].data["messageId"]
        time.sleep(0.5)  # let a progress flush land
        os.kill(a.process.pid, signal.SIGKILL)
    with (
        client(b, cluster) as cb,
        cb.stream(
            "GET", f"/v1/chat/sessions/{session_id}/messages/{message_id}/events", headers={"Last-Event-ID": "20"}
        ) as follower,
    ):
        tail = parse_wire(follower.read())[0]
    assert tail[-1].event == "error"
    assert tail[-1].data["code"] == "internal_error"
    stored = stored_messages(b, cluster, session_id)[-1]
    assert stored["status"] == "failed"
    assert stored["content"].startswith("".join(e.data["delta"] for e in head if e.event == "token"))
    with client(b, cluster) as cb:
        usage = next(u for u in cb.get("/v1/usage").json()["results"] if u["runId"] == message_id)
    assert usage["status"] == "failed"


def test_kill_9_then_restart_fails_the_unfinished_runs(server_factory, tmp_path):
    server = server_factory(MOONBORN_DEMO_DELAY_MS="29", MOONBORN_DEMO_REPLY_TOKENS="2000")
    with server.client() as c:
        persona = c.post("/v1/personas", json={"prompt": "A night watchman"}, headers=JSON).json()["id"]
        session = c.post("/v1/chat/sessions", json={"personaId": persona}).json()["id"]
    with (
        server.client() as c,
        c.stream(
            "POST", f"/v1/chat/sessions/{session}/messages?stream=true&on_disconnect=continue", json={"content": "Hi"}
        ) as response,
    ):
        head = complete_events(read_until(response.iter_raw(), 20))
        with (
            server.client() as other,
            other.stream("POST", "/v1/personas?stream=true", json={"prompt": "Half made"}) as generating,
        ):
            persona_head = complete_events(read_until(generating.iter_raw(), 3))
            time.sleep(0.5)
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait()
    restarted = start_uvicorn(server.env, tmp_path, server.keys)
    try:
        with restarted.client() as c:
            reply = c.get(f"/v1/chat/sessions/{session}/messages").json()["results"][-1]
            half = c.get(f"/v1/personas/{persona_head[0].data['personaId']}").json()
            usage = {u["runId"]: u["status"] for u in c.get("/v1/usage").json()["results"]}
        assert reply["status"] == "failed"
        assert reply["content"].startswith("".join(e.data["delta"] for e in head if e.event == "token"))
        assert half["status"] == "failed"
        assert half["steps"][0]["status"] in ("completed", "failed")
        assert usage[reply["id"]] == "failed"
        assert usage[half["id"]] == "failed"
    finally:
        restarted.stop()


def test_a_client_that_stops_reading_is_dropped_without_growing_memory(server_factory):
    # A reply far longer than the server can write before the drop: the run produces ~100,000 tokens a second when
    # nothing reads them, and the drop comes a few seconds in (once the socket buffers are full, plus the timeout).
    total = 10_000_000
    # No tier-1 worker here: loading the full embedder to score the dropped reply would grow the process too, and
    # this test measures what a stream that nobody reads costs.
    server = server_factory(
        MOONBORN_SSE_WRITE_TIMEOUT_SECONDS="2",
        MOONBORN_DEMO_DELAY_MS="0",
        MOONBORN_DEMO_REPLY_TOKENS=str(total),
        MOONBORN_DRIFT_TIER1_WORKER="false",
    )
    with server.client() as c:
        persona = c.post("/v1/personas", json={"prompt": "A chatterbox"}, headers=JSON).json()["id"]
        session = c.post("/v1/chat/sessions", json={"personaId": persona}).json()["id"]

    def rss_kib() -> int:
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])

    before = rss_kib()
    payload = json.dumps({"content": "Talk forever"}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1])))
    sock.sendall(
        f"POST /v1/chat/sessions/{session}/messages?stream=true HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {server.keys['alice']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    # Now read nothing more: the server must drop this client after the write timeout.
    try:

        def status() -> str:
            with server.client() as c:
                return str(c.get(f"/v1/chat/sessions/{session}/messages").json()["results"][-1]["status"])

        # The kernel's socket buffers fill first (megabytes on loopback); then 2 s of blocked writes.
        wait_for(lambda: status() != "streaming", timeout=60, interval=0.25, explain=server.log)
        assert status() == "cancelled"
        with server.client() as c:
            reply = c.get(f"/v1/chat/sessions/{session}/messages").json()["results"][-1]
        assert 0 < len(reply["content"].split()) < total
        assert rss_kib() - before < 150 * 1024
    finally:
        sock.close()


@pytest.mark.parametrize("path", ["/healthz"])
def test_health_endpoint(server, path):
    response = httpx.get(server.base_url + path, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "failed": []}
    staff = httpx.get(server.base_url + path, cookies=staff_cookies(server.env), timeout=10)
    assert staff.status_code == 200
    body = staff.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert body["redis"] == "not configured"
    assert body["shuttingDown"] is False


def test_requests_after_postgresql_dropped_every_connection_succeed(cluster_factory):
    """A database restart (or a proxy closing idle connections) leaves the pool's connections dead: each is
    checked before it is handed out, so no request gets one."""
    cluster = cluster_factory(1, MOONBORN_DEMO_DELAY_MS="1", MOONBORN_DEMO_REPLY_TOKENS="5")
    worker = cluster.workers[0]
    session = ready_session(worker, cluster)
    name = cluster.env["DATABASE_URL"].rsplit("/", 1)[1]
    with client(worker, cluster) as c:
        for attempt in range(3):
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                dropped = conn.execute(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s)"
                    " AS t",
                    (name,),
                ).fetchone()
            assert dropped is not None and dropped[0] >= 1  # the pool keeps at least one connection open
            reply = c.post(
                f"/v1/chat/sessions/{session}/messages", json={"content": f"Still there? {attempt}"}, headers=JSON
            )
            assert reply.status_code == 201, reply.text
            events = stream_events(
                c, "POST", f"/v1/chat/sessions/{session}/messages", json={"content": f"And now? {attempt}"}
            )
            assert [e.event for e in events] == ["message.started", *LORE_TOOL] + ["token"] * 5 + ["completed"]
    assert len(stored_messages(worker, cluster, session)) == 12
    assert "Traceback" not in worker.log()
