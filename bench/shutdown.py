"""Shutdown: a worker with N open streams from SIGTERM to its exit, and the final writes of its replies.

sigterm  one uvicorn worker (SQLite, the demo model with replies far longer than the drain, no tier-1 worker) with
         N open streams gets SIGTERM: when every stream had its `server_shutdown`, when a new connection was tried
         and how it was answered, when the runs were cancelled, how long storing their ends took (the worker's
         log), when the process exited; then every reply row is read from the database file.
writes   no server: N replies left streaming in a SQLite file, ended all at once as a shutdown's cancel ends them,
         through chat.stops (shared transactions), and one transaction each as the replies stored their ends
         before chat.stops (the ORM statements `message_stop` ran then), each from a coroutine of its own.

  .venv/bin/python bench/shutdown.py sigterm --streams 1000
  .venv/bin/python bench/shutdown.py sigterm --streams 10000 --delay-ms 1000 --rate 500
  .venv/bin/python bench/shutdown.py writes --replies 1000,10000
"""

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import loadgen, perf  # noqa: E402

# A reply's content when it is cut short: ~200 tokens of text.
PARTIAL = "The lamp went out at a quarter past two, and nobody on the island slept after that. " * 12


def ready_persona(mb: perf.Moonborn) -> str:
    """A persona made through the API of a server started for it (the demo model at full speed)."""
    setup_env = {**mb.env, "MOONBORN_DEMO_DELAY_MS": "0"}
    with perf.running("setup", "moonborn_site.asgi:application", setup_env, "/healthz") as setup:
        made = httpx.post(
            f"http://{perf.HOST}:{setup.port}/v1/personas",
            json={"prompt": "A lighthouse keeper who counts ships"},
            headers={"Authorization": f"Bearer {mb.key}", "Accept": "application/json"},
            timeout=120,
        )
        made.raise_for_status()
        return str(made.json()["id"])


def bulk_sessions(env: dict[str, str], persona_id: str, count: int) -> list[str]:
    """`count` sessions with the persona, made in one statement (a request each takes minutes for 10,000)."""
    code = (
        "import json; from chat.models import ChatSession; from personas.models import Persona;"
        f" persona = Persona.objects.get(pk={persona_id!r});"
        f" made = ChatSession.objects.bulk_create([ChatSession(owner_id=persona.owner_id, persona=persona)"
        f" for _ in range({count})], batch_size=2000);"
        " print(json.dumps([session.pk for session in made]))"
    )
    done = subprocess.run(
        [perf.PY, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


class Stream(asyncio.Protocol):
    def __init__(self) -> None:
        self.raw = bytearray()
        self.tokened = False
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.raw += data
        if not self.tokened and b"\nevent: token\n" in self.raw:
            self.tokened = True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


def sigterm(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="moonborn-shutdown-") as tmp:
        workdir = Path(tmp)
        mb = perf.Moonborn(workdir)
        persona_id = ready_persona(mb)
        sessions = bulk_sessions(mb.env, persona_id, args.streams)
        env = {
            **mb.server_env(args.delay_ms, 1_000_000),
            "MOONBORN_SHUTDOWN_DRAIN_SECONDS": str(args.drain),
            "MOONBORN_SHUTDOWN_CANCEL_SECONDS": str(args.cancel),
            "MOONBORN_DRIFT_TIER1_WORKER": "false",
            "MOONBORN_LOG_LEVEL": "WARNING",
        }
        database = env["DATABASE_URL"].removeprefix("sqlite:///")
        log_path = workdir / "server.log"
        port = perf.free_port()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [perf.PY, "-m", "uvicorn", "moonborn_site.asgi:application", "--host", perf.HOST, "--port", str(port)]
                + ["--log-level", "warning", "--no-access-log", "--loop", "moonborn_site.serving:BurstAcceptLoop"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"http://{perf.HOST}:{port}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the server did not start:\n{log_path.read_text()}") from None
                    time.sleep(0.1)
            loadgen.install_fast_loop()
            outcome = asyncio.run(measure(args, port, mb.key, sessions, process))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        log_text = log_path.read_text(errors="replace")
        with closing(sqlite3.connect(database)) as conn:
            rows = conn.execute(
                "SELECT m.status, u.status, COUNT(*), SUM(LENGTH(m.content) > 0), SUM(u.completion_tokens > 0),"
                " SUM(u.prompt_tokens > 0) FROM chat_message m"
                " JOIN accounts_usagerecord u ON u.run_id = m.id AND u.kind = 'chat'"
                " WHERE m.role = 'assistant' GROUP BY m.status, u.status"
            ).fetchall()
        outcome["replies"] = [
            {
                "status": m,
                "usage": u,
                "count": n,
                "with_content": c,
                "with_completion_tokens": t,
                "with_prompt_tokens": p,
            }
            for m, u, n, c, t, p in rows
        ]
        outcome["log"] = [line for line in log_text.splitlines() if "SIGTERM" in line or "Traceback" in line]
        signalled_wall = outcome.pop("signalled_wall")
        for line in outcome["log"]:
            if "storing their ends took" in line:
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()
                outcome["ends_stored_s"] = round(stamp - signalled_wall, 2)
        return outcome


async def measure(
    args: argparse.Namespace, port: int, key: str, sessions: list[str], process: subprocess.Popen[bytes]
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    payload = json.dumps({"content": "Tell me about the night the lamp went out."}).encode()

    def request(session_id: str) -> bytes:
        return (
            f"POST /v1/chat/sessions/{session_id}/messages HTTP/1.1\r\nHost: {perf.HOST}\r\n"
            f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\nContent-Type: application/json\r\n"
            f"Connection: close\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload

    streams: list[Stream] = []
    began = time.monotonic()
    for number, session_id in enumerate(sessions):
        transport, stream = await loop.create_connection(Stream, perf.HOST, port)
        transport.write(request(session_id))
        streams.append(stream)
        await asyncio.sleep(max(0.0, began + (number + 1) / args.rate - time.monotonic()))
    while not all(stream.tokened for stream in streams):
        if time.monotonic() - began > 600:
            raise RuntimeError(f"{sum(s.tokened for s in streams)} of {len(streams)} streams have a token")
        await asyncio.sleep(0.1)
    opened = time.monotonic() - began
    await asyncio.sleep(args.hold)

    # The exit is timed by a thread of its own: this loop is busy with the streams' ends when it comes.
    exit_at: list[float] = []
    watcher = threading.Thread(target=lambda: (process.wait(), exit_at.append(time.monotonic())))
    watcher.start()
    signalled, signalled_wall = time.monotonic(), time.time()
    os.kill(process.pid, signal.SIGTERM)
    await asyncio.gather(*(stream.ended for stream in streams))
    released = time.monotonic() - signalled
    try:
        accepted, _ = await loop.create_connection(asyncio.Protocol, perf.HOST, port)
        accepted.close()
        new_connection = "accepted"
    except ConnectionRefusedError:
        new_connection = "refused"
    tried = time.monotonic() - signalled
    await asyncio.to_thread(watcher.join)
    exited = exit_at[0] - signalled
    shutdown_frames = sum(b'"code":"server_shutdown"' in stream.raw for stream in streams)
    return {
        "streams": len(streams),
        "opened_s": round(opened, 2),
        "released_all_s": round(released, 2),
        "streams_with_server_shutdown": shutdown_frames,
        "new_connection": new_connection,
        "new_connection_tried_s": round(tried, 2),
        "exited_s": round(exited, 2),
        "exit_code": process.returncode,
        "signalled_wall": signalled_wall,
    }


def writes(args: argparse.Namespace) -> None:
    counts = [int(n) for n in args.replies.split(",")]
    with tempfile.TemporaryDirectory(prefix="moonborn-stops-") as tmp:
        mb = perf.Moonborn(Path(tmp))
        persona_id = ready_persona(mb)
        sessions = bulk_sessions(mb.env, persona_id, 2 * sum(counts))
        os.environ.update({**mb.env, "DJANGO_SETTINGS_MODULE": "moonborn_site.settings"})
        os.chdir(ROOT)
        import django

        django.setup()
        from django.db import transaction
        from django.utils import timezone

        from accounts.models import UsageRecord
        from chat.models import ChatSession, Message
        from chat.services import ReplyJob, ReplyStop, TurnRequest, message_create_turns
        from chat.stops import StopWriter
        from runs.db import db

        owner_id = ChatSession.objects.get(pk=sessions[0]).owner_id
        pool = iter(sessions)

        def streaming(count: int) -> list[str]:
            ids: list[str] = []
            while len(ids) < count:
                requests = [
                    TurnRequest(
                        owner_id=owner_id, session_id=next(pool), content="And then?", provider="demo", model="demo"
                    )
                    for _ in range(min(256, count - len(ids)))
                ]
                ids += [
                    job.assistant_message_id
                    for job in message_create_turns(requests=requests)
                    if isinstance(job, ReplyJob)
                ]
            return ids

        @transaction.atomic
        def one_transaction(*, stop: ReplyStop) -> None:
            """The ORM statements of `message_stop` before chat.stops, one transaction per reply."""
            Message.objects.filter(pk=stop.message_id, status=Message.Status.STREAMING).update(
                content=stop.content,
                status=stop.status,
                error=stop.error,
                lore=stop.lore or {},
                completed_at=timezone.now(),
            )
            UsageRecord.objects.filter(run_id=stop.message_id, kind=UsageRecord.Kind.CHAT).update(
                status=stop.status, prompt_tokens=stop.prompt_tokens, completion_tokens=stop.completion_tokens,
                ended_at=timezone.now(),
            )  # fmt: skip

        def ends(ids: list[str]) -> list[ReplyStop]:
            lore = {"activated": ["the lamp"], "skipped": [], "tokens": 40, "state": {}, "historyDropped": 0}
            return [ReplyStop(i, PARTIAL, "cancelled", "Cancelled.", 900, 200, lore) for i in ids]

        async def shared(stops: list[ReplyStop]) -> tuple[float, int]:
            writer = StopWriter()
            began = time.perf_counter()
            await asyncio.gather(*(writer.stop(stop) for stop in stops))
            return time.perf_counter() - began, writer.batches

        async def each(stops: list[ReplyStop]) -> tuple[float, int]:
            began = time.perf_counter()
            await asyncio.gather(*(db(one_transaction, stop=stop) for stop in stops))
            return time.perf_counter() - began, len(stops)

        print(f"ends of replies cut short (~{len(PARTIAL)} characters each), SQLite file, one process", flush=True)
        for count in counts:
            for name, way in (("chat.stops (shared transactions)", shared), ("one transaction each (before)", each)):
                ids = streaming(count)
                took, transactions = asyncio.run(way(ends(ids)))
                left = Message.objects.filter(pk__in=ids, status=Message.Status.STREAMING).count()
                result = f"{took:.2f} s, {transactions} transaction(s), {left} left streaming"
                print(f"  {count:>6,} replies, {name}: {result}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    term = modes.add_parser("sigterm")
    term.add_argument("--streams", type=int, default=1000)
    term.add_argument("--delay-ms", type=int, default=300, help="between a reply's tokens")
    term.add_argument("--rate", type=float, default=1000.0, help="streams opened per second")
    term.add_argument("--hold", type=float, default=2.0, help="seconds the streams run before SIGTERM")
    term.add_argument("--drain", type=float, default=8.0, help="MOONBORN_SHUTDOWN_DRAIN_SECONDS")
    term.add_argument("--cancel", type=float, default=5.0, help="MOONBORN_SHUTDOWN_CANCEL_SECONDS")
    ends = modes.add_parser("writes")
    ends.add_argument("--replies", default="1000,10000")
    args = parser.parse_args()
    if args.mode == "sigterm":
        print(json.dumps(sigterm(args), indent=2), flush=True)
    else:
        writes(args)


if __name__ == "__main__":
    main()
