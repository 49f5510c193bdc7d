"""Shared fixtures. `server_factory` starts real uvicorn processes on free loopback ports."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from moonborn_site import state

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def manage(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@dataclass
class LiveServer:
    base_url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path
    keys: dict[str, str] = field(default_factory=dict)

    def headers(self, user: str = "alice", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[user]}", **extra}

    def client(self, user: str = "alice", **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers(user), timeout=30, **kwargs)  # type: ignore[arg-type]

    def async_client(self, user: str = "alice", **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, headers=self.headers(user), timeout=30, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# Fast defaults for tests: short tokens, short waits. Tests that need others pass their own.
BASE_ENV = {
    "MOONBORN_DEMO_DELAY_MS": "5",
    "MOONBORN_DEMO_REPLY_TOKENS": "24",
    "MOONBORN_SSE_HEARTBEAT_SECONDS": "15",
    "MOONBORN_PROGRESS_FLUSH_SECONDS": "0.2",
    "MOONBORN_LOG_LEVEL": "WARNING",
    "DJANGO_DEBUG": "false",
    # DEBUG off refuses to start without a real key (accounts.checks).
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    # The servers speak plain HTTP on loopback: cookies that are Secure would never come back from the clients.
    "DJANGO_SESSION_COOKIE_SECURE": "false",
    "DJANGO_CSRF_COOKIE_SECURE": "false",
    "MOONBORN_SHUTDOWN_DRAIN_SECONDS": "5",
    "MOONBORN_SHUTDOWN_CANCEL_SECONDS": "2",
}


# The e2e servers use PostgreSQL when the suite runs with MOONBORN_TEST_DATABASE=postgres.
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def pg_execute(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


class Databases:
    """Fresh migrated databases for servers: copies of one migrated SQLite file, or PostgreSQL
    databases made from one migrated template."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.sqlite_template: Path | None = None
        self.pg_template: str | None = None
        self.pg_made: list[str] = []
        self.tag = uuid.uuid4().hex[:8]

    def new(self, kind: str) -> str:
        if kind == "postgres":
            if self.pg_template is None:
                self.pg_template = f"moonborn_e2e_tpl_{self.tag}"
                pg_execute(f"CREATE DATABASE {self.pg_template}")
                self.pg_made.append(self.pg_template)
                url = f"postgres://postgres@127.0.0.1:5432/{self.pg_template}"
                manage("migrate", "--noinput", env={**os.environ, **BASE_ENV, "DATABASE_URL": url})
            name = f"moonborn_e2e_{self.tag}_{len(self.pg_made)}"
            pg_execute(f"CREATE DATABASE {name} TEMPLATE {self.pg_template}")
            self.pg_made.append(name)
            return f"postgres://postgres@127.0.0.1:5432/{name}"
        if self.sqlite_template is None:
            self.sqlite_template = self.workdir / "template.sqlite3"
            manage(
                "migrate",
                "--noinput",
                env={**os.environ, **BASE_ENV, "DATABASE_URL": f"sqlite:///{self.sqlite_template}"},
            )
        path = self.workdir / f"db-{uuid.uuid4().hex[:8]}.sqlite3"
        shutil.copy(self.sqlite_template, path)
        return f"sqlite:///{path}"

    def drop_all(self) -> None:
        for name in reversed(self.pg_made):
            pg_execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    dbs = Databases(tmp_path_factory.mktemp("databases"))
    yield dbs
    dbs.drop_all()


DEFAULT_DB_KIND = os.environ.get("MOONBORN_TEST_DATABASE", "sqlite")


def start_uvicorn(env: dict[str, str], workdir: Path, keys: dict[str, str]) -> LiveServer:
    port = free_port()
    log_path = workdir / f"server-{port}.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "moonborn_site.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            # As the README's production command: uvloop, taking waiting connections in bursts.
            "--loop",
            "moonborn_site.serving:BurstAcceptLoop",
        ],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = LiveServer(f"http://127.0.0.1:{port}", env, process, log_path, keys)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited:\n{server.log()}")
        try:
            httpx.get(f"{server.base_url}/v1/usage", timeout=1)
            return server
        except httpx.TransportError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"uvicorn did not start:\n{server.log()}") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def server_factory(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator["object"]:
    """Start uvicorn servers on demand, one per distinct environment, shared by the session."""
    servers: dict[tuple[tuple[str, str], ...], LiveServer] = {}

    def start(**overrides: str) -> LiveServer:
        key = tuple(sorted(overrides.items()))
        if key in servers and servers[key].process.poll() is None:
            return servers[key]
        workdir = tmp_path_factory.mktemp("server")
        env = {**os.environ, **BASE_ENV, "DATABASE_URL": databases.new(DEFAULT_DB_KIND), **overrides}
        keys = {user: manage("create_api_key", user, env=env).strip().splitlines()[-1] for user in ("alice", "bob")}
        servers[key] = start_uvicorn(env, workdir, keys)
        return servers[key]

    yield start
    for server in servers.values():
        server.stop()


@dataclass
class Cluster:
    """Several uvicorn workers sharing one PostgreSQL database and one Redis."""

    env: dict[str, str]
    workdir: Path
    keys: dict[str, str]
    workers: list[LiveServer]

    def start_worker(self) -> LiveServer:
        worker = start_uvicorn(self.env, self.workdir, self.keys)
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


@pytest.fixture
def cluster_factory(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator["object"]:
    """Start N workers on PostgreSQL + Redis (a Redis key prefix of their own); stopped after the test."""
    made: list[Cluster] = []

    def start(workers: int = 2, **overrides: str) -> Cluster:
        workdir = tmp_path_factory.mktemp("cluster")
        env = {
            **os.environ,
            **BASE_ENV,
            "DATABASE_URL": databases.new("postgres"),
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "MOONBORN_REDIS_PREFIX": f"e2e-{uuid.uuid4().hex[:10]}",
            **overrides,
        }
        keys = {user: manage("create_api_key", user, env=env).strip().splitlines()[-1] for user in ("alice", "bob")}
        cluster = Cluster(env, workdir, keys, [])
        made.append(cluster)
        for _ in range(workers):
            cluster.start_worker()
        return cluster

    yield start
    for cluster in made:
        cluster.stop()


@pytest.fixture(scope="session")
def server(server_factory: "object") -> LiveServer:
    """The default server: demo model, 5 ms a token, 24 tokens a reply."""
    return server_factory()  # type: ignore[operator, no-any-return]


@pytest.fixture(autouse=True)
def fresh_process_state() -> Iterator[None]:
    """Every test starts from the process state a server starts with (moonborn_site.state)."""
    state.reset()
    yield
    state.reset()
