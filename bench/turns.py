"""A turn's database work against the length of the conversation: in-process, one SQLite database, no server.

For each length, a session is filled with that many completed messages, then `message_create_turns` (what the
database thread runs for a streamed request: key, session, history, the two messages, usage) is timed for one turn
after another, each reply marked completed before the next. Medians and p90 of the turns, in milliseconds.

    .venv/bin/python bench/turns.py                   # this checkout
    .venv/bin/python bench/turns.py --root /tmp/old   # another checkout's code (A/B: run both, alternating)
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose code is measured")
    parser.add_argument("--lengths", default="0,1000,5000,20000", help="messages already in the session")
    parser.add_argument("--turns", type=int, default=200, help="turns timed per length")
    args = parser.parse_args()
    root = args.root.resolve()
    sys.path.insert(0, str(ROOT))
    from bench import loadgen, perf

    lengths = [int(n) for n in args.lengths.split(",")]
    perf.ROOT = root
    with tempfile.TemporaryDirectory(prefix="moonborn-turns-") as tmp:
        mb = perf.Moonborn(Path(tmp))
        mb.make_sessions(len(lengths))
        os.environ.update(mb.server_env(0, 100))
        os.environ["DJANGO_SETTINGS_MODULE"] = "moonborn_site.settings"
        os.chdir(root)
        sys.path.insert(0, str(root))
        import django

        django.setup()
        from chat.models import Message
        from chat.services import TurnRequest, message_create_turns
        from runs.db import _call_and_close

        print(f"{root}: one turn's database work (ms) by messages already in the session", flush=True)
        for session_id, length in zip(mb.sessions, lengths, strict=True):
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
                    key=mb.key, session_id=session_id, content="And then?", provider="demo", model="demo"
                )
                began = time.perf_counter()
                (outcome,) = _call_and_close(message_create_turns, requests=[request])
                took.append((time.perf_counter() - began) * 1000)
                if not isinstance(outcome, tuple):
                    raise RuntimeError(f"turn refused: {outcome!r}")
                Message.objects.filter(pk=outcome[1].assistant_message_id).update(
                    status=Message.Status.COMPLETED, content="Aye."
                )
            spread = loadgen.percentiles(took[10:], (50, 90))  # the first turns fill caches
            print(f"  {length:>6,} messages: p50 {spread['p50']:.3f} · p90 {spread['p90']:.3f}", flush=True)


if __name__ == "__main__":
    main()
