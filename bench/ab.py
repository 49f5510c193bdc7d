"""A/B: two checkouts of Moonborn against each other, interleaved (single-stream TTFT and 1,000 paced streams).

Each tree gets its own SQLite database and uvicorn processes (demo delay 0 and 20 ms); rounds alternate which
tree goes first. Used to tell a change's effect from the machine's drift between runs:

    git worktree add /tmp/old <commit>
    .venv/bin/python bench/ab.py /tmp/old . --rounds 4
"""

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import loadgen, perf


def start(root: Path, name: str, env: dict[str, str]) -> perf.Server:
    perf.ROOT = root  # the servers (and the set-up commands) run from this checkout
    return perf.start_server(name, "moonborn_site.asgi:application", env, "/healthz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--c1000", type=int, default=1000)
    parser.add_argument("--single", type=int, default=20)
    args = parser.parse_args()
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    n = args.c1000
    with tempfile.TemporaryDirectory() as tmp:
        setups = {}
        for tag, root in trees.items():
            perf.ROOT = root
            workdir = Path(tmp) / tag
            workdir.mkdir()
            mb = perf.Moonborn(workdir)
            mb.make_sessions(n * args.rounds + args.rounds + 10)
            setups[tag] = (mb, iter(mb.sessions))
        servers: dict[str, tuple[perf.Server, perf.Server]] = {}
        try:
            for tag, (mb, pool) in setups.items():
                fast = start(trees[tag], f"{tag}-0ms", mb.server_env(0, 200))
                paced = start(trees[tag], f"{tag}-20ms", mb.server_env(20, 100))
                servers[tag] = (fast, paced)
                for server, tokens in ((fast, 200), (paced, 100)):
                    warm = mb.targets([next(pool) for _ in range(3)])
                    asyncio.run(loadgen.run_streams(perf.HOST, server.port, warm, per_slot=1, expected_tokens=tokens))
            for rnd in range(args.rounds):
                for tag in list(setups) if rnd % 2 == 0 else list(setups)[::-1]:
                    mb, pool = setups[tag]
                    fast, paced = servers[tag]
                    single = loadgen.run_streams(
                        perf.HOST, fast.port, mb.targets([next(pool)]), per_slot=args.single, expected_tokens=200
                    )
                    one = perf.summarize(asyncio.run(single))
                    time.sleep(1)
                    many = loadgen.run_streams(
                        perf.HOST,
                        paced.port,
                        mb.targets([next(pool) for _ in range(n)]),
                        per_slot=1,
                        expected_tokens=100,
                        delay_ms=20.0,
                    )
                    c1000 = perf.summarize(asyncio.run(many))
                    print(
                        f"{rnd} {tag}: single TTFT p50 {one['ttft_p50_ms']:.2f} ms · c{n} TTFT p99"
                        f" {c1000['ttft_p99_ms']:,.0f} ms, jitter p99 {c1000['jitter_p99_ms']:.1f} ms ·"
                        f" errors {one['errors'] + c1000['errors']}",
                        flush=True,
                    )
                    time.sleep(1.5)
        finally:
            for pair in servers.values():
                for server in pair:
                    server.stop()


if __name__ == "__main__":
    main()
