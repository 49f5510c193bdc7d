"""The event loop's cost of a real provider's per-token deadline (`llm.base.resilient_stream`), in-process.

Every OpenAI and Anthropic stream runs through `resilient_stream`, which must notice an upstream that stops
sending (`MOONBORN_LLM_TIMEOUT_SECONDS` between two tokens). N streams of T deltas, one every `--delay-ms`, are
read at once three ways, interleaved by round, and the loop thread's CPU per delta is reported:

- `bare`: the upstream generator alone, no deadline (the floor);
- `timeout_at`: a generator with an `asyncio.timeout_at` around each wait (`resilient_stream` before, less its
  retries);
- `resilient_stream`: the project's.

    .venv/bin/python bench/provider_deadline.py              # 1,000 streams × 100 deltas at 20 ms, 3 rounds
"""

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llm.base import resilient_stream  # noqa: E402

LIMIT = 60.0


async def upstream(deltas: int, delay: float) -> AsyncGenerator[str, None]:
    for _ in range(deltas):
        await asyncio.sleep(delay)
        yield "x"


async def bare(deltas: int, delay: float) -> int:
    return sum([1 async for _ in upstream(deltas, delay)])


async def timeout_at(deltas: int, delay: float) -> int:
    async def stream() -> AsyncGenerator[str, None]:
        # resilient_stream's shape before, without its retries: a generator with a timeout around each wait.
        loop = asyncio.get_running_loop()
        gen = upstream(deltas, delay)
        try:
            while True:
                try:
                    async with asyncio.timeout_at(loop.time() + LIMIT):
                        delta = await anext(gen)
                except StopAsyncIteration:
                    return
                yield delta
        finally:
            await gen.aclose()

    return sum([1 async for _ in stream()])


async def resilient(deltas: int, delay: float) -> int:
    stream = resilient_stream(lambda: upstream(deltas, delay), limit_seconds=LIMIT, retries=0)
    return sum([1 async for _ in stream])


WAYS: dict[str, Callable[[int, float], Awaitable[int]]] = {
    "bare": bare,
    "timeout_at": timeout_at,
    "resilient_stream": resilient,
}


async def measure(way: Callable[[int, float], Awaitable[int]], streams: int, deltas: int, delay: float) -> float:
    """Loop-thread CPU per delta (µs) for `streams` streams read at once."""
    cpu = time.thread_time()
    counts = await asyncio.gather(*(way(deltas, delay) for _ in range(streams)))
    cpu = time.thread_time() - cpu
    if sum(counts) != streams * deltas:
        raise RuntimeError(f"{sum(counts)} deltas read, {streams * deltas} sent")
    return cpu / (streams * deltas) * 1e6


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--deltas", type=int, default=100)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    results: dict[str, list[float]] = {name: [] for name in WAYS}
    names = list(WAYS)
    for rnd in range(args.rounds):
        for name in names if rnd % 2 == 0 else names[::-1]:
            per_delta = uvloop.run(measure(WAYS[name], args.streams, args.deltas, args.delay_ms / 1000))
            results[name].append(per_delta)
            print(f"{rnd} {name}: {per_delta:.2f} µs of loop CPU per delta", flush=True)
    for name, values in results.items():
        print(f"median {name}: {statistics.median(values):.2f} µs per delta")


if __name__ == "__main__":
    main()
