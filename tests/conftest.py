"""Shared fixtures. `server_factory` starts real uvicorn processes on free loopback ports."""

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

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
}


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each server (migrating once saves seconds per server)."""
    path = tmp_path_factory.mktemp("template") / "db.sqlite3"
    env = {**os.environ, **BASE_ENV, "DATABASE_URL": f"sqlite:///{path}"}
    manage("migrate", "--noinput", env=env)
    return path


@pytest.fixture(scope="session")
def server_factory(migrated_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator["object"]:
    """Start uvicorn servers on demand, one per distinct environment, shared by the session."""
    servers: dict[tuple[tuple[str, str], ...], LiveServer] = {}

    def start(**overrides: str) -> LiveServer:
        key = tuple(sorted(overrides.items()))
        if key in servers and servers[key].process.poll() is None:
            return servers[key]
        workdir = tmp_path_factory.mktemp("server")
        db_path = workdir / "db.sqlite3"
        shutil.copy(migrated_db, db_path)
        env = {**os.environ, **BASE_ENV, **overrides, "DATABASE_URL": f"sqlite:///{db_path}"}
        keys = {user: manage("create_api_key", user, env=env).strip().splitlines()[-1] for user in ("alice", "bob")}
        port = free_port()
        log_path = workdir / "server.log"
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
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(f"uvicorn did not start:\n{server.log()}") from None
                time.sleep(0.1)
        servers[key] = server
        return server

    yield start
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def server(server_factory: "object") -> LiveServer:
    """The default server: demo model, 5 ms a token, 24 tokens a reply."""
    return server_factory()  # type: ignore[operator, no-any-return]
