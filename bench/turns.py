"""A turn's database work: in-process, one SQLite database, no server.

By the length of the conversation (the default): for each length, a session is filled with that many completed
messages, then `message_create_turns` (what the database thread runs for a streamed request: key, session,
history, the two messages, usage) is timed for one turn after another, each reply marked completed before the
next. Medians and p90 of the turns, in milliseconds.

With `--batch N`: one call for the turns of N sessions at once, as when a thousand streams start, timed alone and
while another thread runs Python the whole time (as the event loop does then: the database thread waits for the
GIL after each statement). Each way with the same N every time, and with a new N every time (N, N-1, ...): a
statement whose text depends on N is prepared again for each new N. Medians and maxima, and the statements run.

    .venv/bin/python bench/turns.py                   # this checkout
    .venv/bin/python bench/turns.py --root /tmp/old   # another checkout's code (A/B: run both, alternating)
    .venv/bin/python bench/turns.py --batch 256
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose code is measured")
    parser.add_argument("--lengths", default="0,1000,5000,20000", help="messages already in the session")
    parser.add_argument("--turns", type=int, default=200, help="turns timed per length (or batches per way)")
    parser.add_argument("--batch", type=int, default=0, help="time batches of this many turns instead")
    args = parser.parse_args()
    root = args.root.resolve()
    sys.path.insert(0, str(ROOT))
    from bench import loadgen, perf

    lengths = [int(n) for n in args.lengths.split(",")]
    perf.ROOT = root
    with tempfile.TemporaryDirectory(prefix="moonborn-turns-") as tmp:
        mb = perf.Moonborn(Path(tmp))
        mb.make_sessions(args.batch or len(lengths))
        os.environ.update(mb.server_env(0, 100))
        os.environ["DJANGO_SETTINGS_MODULE"] = "moonborn_site.settings"
        os.chdir(root)
        sys.path.insert(0, str(root))
        import django

        django.setup()
        from chat.models import ChatSession, Message
        from chat.services import ReplyJob, TurnRequest, message_create_turns
        from runs.db import _call_and_close

        if args.batch:
            batches(root, mb, args.batch, args.turns)
            return
        print(f"{root}: one turn's database work (ms) by messages already in the session", flush=True)
        for session_id, length in zip(mb.sessions, lengths, strict=True):
            owner_id = ChatSession.objects.get(pk=session_id).owner_id
            for start in range(0, length, 5000):
                Message.objects.bulk_create(
                    Message(
                        session_id=session_id,
                        index=index,
                        role=Message.Role.USER if index % 2 == 0 else Message.Role.ASSISTANT,
                        content=f"Line {index} of a long conversation about ships and lamps.",
                        status=Message.Status.COMPLETED,
                    )
                    for index in range(start, min(length, start + 5000))
                )
            took = []
            for _ in range(args.turns):
                request = TurnRequest(
                    owner_id=owner_id, session_id=session_id, content="And then?", provider="demo", model="demo"
                )
                began = time.perf_counter()
                (outcome,) = _call_and_close(message_create_turns, requests=[request])
                took.append((time.perf_counter() - began) * 1000)
                if not isinstance(outcome, ReplyJob):
                    raise RuntimeError(f"turn refused: {outcome!r}")
                Message.objects.filter(pk=outcome.assistant_message_id).update(
                    status=Message.Status.COMPLETED, content="Aye."
                )
            spread = loadgen.percentiles(took[10:], (50, 90))  # the first turns fill caches
            print(f"  {length:>6,} messages: p50 {spread['p50']:.3f} · p90 {spread['p90']:.3f}", flush=True)


def batches(root: Path, mb: Any, size: int, times: int) -> None:
    """Time `times` batches of `size` turns (and of sizes counting down from `size`), alone and with a busy thread."""
    from django.db import connection

    from chat.models import ChatSession, Message
    from chat.services import ReplyJob, TurnRequest, message_create_turns

    owner_id = ChatSession.objects.get(pk=mb.sessions[0]).owner_id
    statements: list[str] = []

    def note(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.append(sql)
        return execute(sql, params, many, context)

    def batch(count: int) -> float:
        requests = [
            TurnRequest(owner_id=owner_id, session_id=session_id, content="And then?", provider="demo", model="demo")
            for session_id in mb.sessions[:count]
        ]
        statements.clear()
        began = time.perf_counter()
        with connection.execute_wrapper(note):
            outcomes = message_create_turns(requests=requests)
        took = (time.perf_counter() - began) * 1000
        if not all(isinstance(outcome, ReplyJob) for outcome in outcomes):
            raise RuntimeError(f"turns refused: {[o for o in outcomes if not isinstance(o, ReplyJob)][:3]!r}")
        Message.objects.filter(status=Message.Status.STREAMING).update(status=Message.Status.COMPLETED, content="Aye.")
        return took

    busy = threading.Event()

    def spin() -> None:  # stands for the event loop: Python, all the time
        while busy.is_set():
            pass

    print(f"{root}: a batch of {size} turns' database work (ms)", flush=True)
    batch(size)  # the key's last use, the persona's voice: what the first turns of a process do once
    spinner = threading.Thread(target=spin)
    for when in ("alone", "with a busy thread"):
        if when != "alone":
            busy.set()
            spinner.start()
            time.sleep(0.05)
        for way, sizes in (("the same size", [size] * times), ("a new size", range(size, size - times, -1))):
            took = [batch(count) for count in sizes]
            print(
                f"  {when}, {way} each time: median {statistics.median(took):.1f} · max {max(took):.1f}"
                f" · {len(statements)} statements",
                flush=True,
            )
    busy.clear()
    spinner.join()


if __name__ == "__main__":
    main()
