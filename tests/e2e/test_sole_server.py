"""Without REDIS_URL a database has one server: a second one refuses to start and leaves the first's runs alone."""

import subprocess
import sys
import threading

from tests.conftest import ROOT, free_port
from tests.e2e.helpers import SSE, make_persona, make_session, parse_wire

REFUSAL = (
    "Moonborn cannot start: another Moonborn server process is serving this database without REDIS_URL; run one "
    "process, or set REDIS_URL so that several share their runs.\n"
)


def test_a_second_server_of_the_same_database_without_redis_refuses_to_start(server_factory):
    server = server_factory(MOONBORN_DEMO_DELAY_MS="20", MOONBORN_DEMO_REPLY_TOKENS="150")
    session_id = make_session(server, make_persona(server))
    body = bytearray()
    started = threading.Event()

    def stream() -> None:
        with (
            server.client() as client,
            client.stream(
                "POST", f"/v1/chat/sessions/{session_id}/messages?stream=true", json={"content": "Go on."}, headers=SSE
            ) as response,
        ):
            for chunk in response.iter_raw():
                body.extend(chunk)
                started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(30)
    second = subprocess.run(
        [sys.executable, "-m", "uvicorn", "moonborn_site.asgi:application", "--port", str(free_port())],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    reader.join(timeout=60)
    assert second.returncode == 1
    assert second.stderr == REFUSAL
    events, _ = parse_wire(bytes(body))
    assert events[-1].event == "completed"
    with server.client() as client:
        reply = client.get(f"/v1/chat/sessions/{session_id}/messages").json()["results"][-1]
    assert reply["status"] == "completed"
    assert sum(event.event == "token" for event in events) == 150
