"""The run hubs, driven directly (no server, no database): the same suite for both backends.

The Redis cases use the real Redis server on 127.0.0.1:6379 (scripts/services starts it), each test
under a key prefix of its own.
"""

import asyncio
import uuid
from contextlib import aclosing

import pytest

from runs.events import Event, RunError
from runs.hub import Departure, InProcessHub, OnDisconnect, RunNotFound, shutdown_frame
from runs.redis_hub import RedisHub
from runs.sse import HEARTBEAT, RETRY, encode_event

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["memory", "redis"])
async def make_hub(request):
    """Build hubs of the parametrized backend; Redis hubs of one test share a prefix (one cluster)."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    made: list[InProcessHub] = []

    def build(**kwargs):
        retention = kwargs.get("retention", 60)
        heartbeat = kwargs.get("heartbeat", 5)
        if request.param == "memory":
            hub = InProcessHub(retention_seconds=retention, heartbeat_seconds=heartbeat)
        else:
            hub = RedisHub(
                REDIS_URL,
                retention_seconds=retention,
                heartbeat_seconds=heartbeat,
                prefix=prefix,
                worker_ttl_seconds=kwargs.get("worker_ttl", 15),
            )
        made.append(hub)
        return hub

    build.backend = request.param
    yield build
    for hub in made:
        if isinstance(hub, RedisHub):
            await hub.aclose()


async def ticking(n: int, *, delay: float = 0.0, cleanup: list[str] | None = None):
    try:
        yield Event("message.started", {"messageId": "msg_1"})
        for i in range(n):
            await asyncio.sleep(delay)
            yield Event("token", {"delta": f"t{i}"})
        yield Event("completed", {"messageId": "msg_1"})
    except asyncio.CancelledError:
        if cleanup is not None:
            cleanup.append("cancelled")
        raise


def frames_of(n: int) -> list[bytes]:
    frames = [encode_event(1, "message.started", {"messageId": "msg_1"})]
    frames += [encode_event(i + 2, "token", {"delta": f"t{i}"}) for i in range(n)]
    frames.append(encode_event(n + 2, "completed", {"messageId": "msg_1"}))
    return frames


async def collect(hub, run_id, **kwargs) -> bytes:
    out = []
    async with aclosing(hub.follow(run_id, **kwargs)) as frames:
        async for chunk in frames:
            out.append(chunk)
    return b"".join(out)


async def test_follow_yields_every_event_numbered_in_order(make_hub):
    hub = make_hub()
    await hub.start("run1", owner_id=1, flow=ticking(5, delay=0.001), on_disconnect=OnDisconnect.CANCEL)
    assert await collect(hub, "run1") == b"".join(frames_of(5))
    assert (await hub.info("run1")).terminal == Event("completed", {"messageId": "msg_1"})


async def test_two_followers_get_identical_bytes(make_hub):
    hub = make_hub()
    await hub.start("run1", owner_id=1, flow=ticking(20, delay=0.001), on_disconnect=OnDisconnect.CANCEL)
    first, second = await asyncio.gather(collect(hub, "run1"), collect(hub, "run1"))
    assert first == second == b"".join(frames_of(20))


async def test_resume_after_an_id_replays_exactly_the_rest(make_hub):
    hub = make_hub()
    await hub.start("run1", owner_id=1, flow=ticking(6), on_disconnect=OnDisconnect.CONTINUE)
    await hub.wait("run1")
    assert await collect(hub, "run1", after=4) == b"".join(frames_of(6)[4:])
    assert await collect(hub, "run1", after=8) == b""


async def test_follower_coalesces_frames_that_are_already_waiting(make_hub):
    hub = make_hub()
    await hub.start("run1", owner_id=1, flow=ticking(50), on_disconnect=OnDisconnect.CONTINUE)
    await hub.wait("run1")
    chunks = []
    async with aclosing(hub.follow("run1")) as frames:
        async for chunk in frames:
            chunks.append(chunk)
    assert chunks == [b"".join(frames_of(50))]


async def test_heartbeat_while_quiet(make_hub):
    hub = make_hub(heartbeat=0.05)

    async def slow():
        yield Event("message.started", {})
        await asyncio.sleep(0.18)
        yield Event("completed", {})

    await hub.start("run1", owner_id=1, flow=slow(), on_disconnect=OnDisconnect.CONTINUE)
    body = await collect(hub, "run1")
    started = encode_event(1, "message.started", {})
    completed = encode_event(2, "completed", {})
    assert body.startswith(started + HEARTBEAT)
    assert body.endswith(HEARTBEAT + completed)
    assert body.count(HEARTBEAT) in (2, 3)


async def test_last_follower_leaving_cancels_a_cancel_run(make_hub):
    hub = make_hub()
    cleanup: list[str] = []
    await hub.start(
        "run1", owner_id=1, flow=ticking(1000, delay=0.01, cleanup=cleanup), on_disconnect=OnDisconnect.CANCEL
    )
    async with aclosing(hub.follow("run1")) as frames:
        async for _ in frames:
            break
    await hub.wait("run1")
    assert cleanup == ["cancelled"]
    terminal = (await hub.info("run1")).terminal
    assert terminal == Event("error", {"error": "The run was cancelled.", "code": "cancelled", "retryable": False})


async def test_follower_leaving_a_continue_run_leaves_it_running(make_hub):
    hub = make_hub()
    await hub.start("run1", owner_id=1, flow=ticking(20, delay=0.002), on_disconnect=OnDisconnect.CONTINUE)
    async with aclosing(hub.follow("run1")) as frames:
        async for _ in frames:
            break
    await hub.wait("run1")
    assert (await hub.info("run1")).terminal == Event("completed", {"messageId": "msg_1"})


async def test_run_keeps_going_while_another_follower_remains(make_hub):
    hub = make_hub()
    await hub.start("run1", owner_id=1, flow=ticking(30, delay=0.002), on_disconnect=OnDisconnect.CANCEL)
    async with aclosing(hub.follow("run1")) as staying:
        received = [await anext(staying)]  # it has joined (on Redis, joining is a round trip)
        async with aclosing(hub.follow("run1")) as frames:
            async for _ in frames:
                break
        received += [chunk async for chunk in staying]
    assert b"".join(received) == b"".join(frames_of(30))


async def test_follower_policy_overrides_the_run_policy(make_hub):
    hub = make_hub()
    cleanup: list[str] = []
    await hub.start(
        "run1", owner_id=1, flow=ticking(1000, delay=0.01, cleanup=cleanup), on_disconnect=OnDisconnect.CONTINUE
    )
    async with aclosing(hub.follow("run1", on_disconnect=OnDisconnect.CANCEL)) as frames:
        async for _ in frames:
            break
    await hub.wait("run1")
    assert cleanup == ["cancelled"]


async def test_cancel_waits_for_clean_up(make_hub):
    hub = make_hub()
    cleanup: list[str] = []
    await hub.start(
        "run1", owner_id=1, flow=ticking(1000, delay=0.01, cleanup=cleanup), on_disconnect=OnDisconnect.CONTINUE
    )
    await asyncio.sleep(0.03)
    assert await hub.cancel("run1") is True
    assert cleanup == ["cancelled"]
    assert await hub.cancel("run1") is False


async def test_run_error_becomes_an_error_event(make_hub):
    hub = make_hub()

    async def failing():
        yield Event("message.started", {})
        raise RunError("upstream said no", code="provider_error", retryable=True)

    await hub.start("run1", owner_id=1, flow=failing(), on_disconnect=OnDisconnect.CONTINUE)
    body = await collect(hub, "run1")
    assert body == encode_event(1, "message.started", {}) + encode_event(
        2, "error", {"error": "upstream said no", "code": "provider_error", "retryable": True}
    )


async def test_unexpected_exception_is_an_internal_error_event(make_hub):
    hub = make_hub()

    async def broken():
        yield Event("message.started", {})
        raise KeyError("bug")

    await hub.start("run1", owner_id=1, flow=broken(), on_disconnect=OnDisconnect.CONTINUE)
    await hub.wait("run1")
    assert (await hub.info("run1")).terminal == Event(
        "error", {"error": "Internal error while generating.", "code": "internal_error", "retryable": True}
    )


async def test_runs_are_forgotten_after_retention(make_hub):
    hub = make_hub(retention=0.05)
    await hub.start("run1", owner_id=1, flow=ticking(1), on_disconnect=OnDisconnect.CONTINUE)
    await hub.wait("run1")
    assert await hub.info("run1") is not None
    await asyncio.sleep(0.1)
    assert await hub.info("run1") is None
    with pytest.raises(RunNotFound):
        await hub.follow("run1").__anext__()


async def test_active_count_counts_only_live_runs_of_the_owner(make_hub):
    hub = make_hub()
    await hub.start("a", owner_id=1, flow=ticking(100, delay=0.01), on_disconnect=OnDisconnect.CONTINUE)
    await hub.start("b", owner_id=2, flow=ticking(100, delay=0.01), on_disconnect=OnDisconnect.CONTINUE)
    await hub.start("c", owner_id=1, flow=ticking(0), on_disconnect=OnDisconnect.CONTINUE)
    await hub.wait("c")
    assert await hub.active_count(1) == 1
    assert await hub.active_count(2) == 1
    await hub.cancel("a")
    await hub.cancel("b")
    assert await hub.active_count(1) == 0


# -- several workers sharing one Redis ------------------------------------------------------------


@pytest.fixture
async def two_workers():
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    hubs = [
        RedisHub(REDIS_URL, retention_seconds=60, heartbeat_seconds=5, prefix=prefix, worker_ttl_seconds=15)
        for _ in range(2)
    ]
    yield hubs
    for hub in hubs:
        await hub.aclose()


async def test_a_run_on_one_worker_is_followed_identically_on_another(two_workers):
    a, b = two_workers
    await a.start("run1", owner_id=1, flow=ticking(40, delay=0.002), on_disconnect=OnDisconnect.CONTINUE)
    on_a, on_b = await asyncio.gather(collect(a, "run1"), collect(b, "run1"))
    assert on_a == on_b == b"".join(frames_of(40))
    info = await b.info("run1")
    assert info.done and info.last_event_id == 42 and info.owner_id == 1
    assert info.terminal == Event("completed", {"messageId": "msg_1"})


async def test_resume_on_another_worker_replays_exactly_the_rest(two_workers):
    a, b = two_workers
    await a.start("run1", owner_id=1, flow=ticking(30, delay=0.002), on_disconnect=OnDisconnect.CONTINUE)
    assert await collect(b, "run1", after=17) == b"".join(frames_of(30)[17:])


async def test_cancel_through_another_worker_stops_the_run(two_workers):
    a, b = two_workers
    cleanup: list[str] = []
    await a.start(
        "run1", owner_id=1, flow=ticking(10_000, delay=0.01, cleanup=cleanup), on_disconnect=OnDisconnect.CONTINUE
    )
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    assert await b.cancel("run1") is True
    assert asyncio.get_running_loop().time() - started < 1.0
    assert cleanup == ["cancelled"]
    info = await b.info("run1")
    assert info.done
    assert info.terminal == Event("error", {"error": "The run was cancelled.", "code": "cancelled", "retryable": False})


async def test_last_follower_leaving_on_another_worker_cancels(two_workers):
    a, b = two_workers
    cleanup: list[str] = []
    await a.start(
        "run1", owner_id=1, flow=ticking(10_000, delay=0.01, cleanup=cleanup), on_disconnect=OnDisconnect.CANCEL
    )
    async with aclosing(b.follow("run1")) as frames:
        async for _ in frames:
            break
    await asyncio.wait_for(a.wait("run1"), timeout=2)
    assert cleanup == ["cancelled"]


async def test_active_runs_are_counted_across_workers(two_workers):
    a, b = two_workers
    await a.start("run1", owner_id=7, flow=ticking(10_000, delay=0.01), on_disconnect=OnDisconnect.CONTINUE)
    assert await b.active_count(7) == 1
    await b.cancel("run1")
    await asyncio.sleep(0.05)
    assert await b.active_count(7) == 0


async def test_a_run_whose_worker_died_is_detected_and_abandoned(two_workers):
    a, b = two_workers
    await a.start("run1", owner_id=1, flow=ticking(10_000, delay=0.01), on_disconnect=OnDisconnect.CONTINUE)
    try:
        await asyncio.sleep(0.05)
        assert await b.is_alive("run1") is True
        # Worker A stops writing and refreshing its liveness key (as if killed): B sees an orphan.
        stopped = list(a._background)
        for task in stopped:
            task.cancel()
        await asyncio.gather(*stopped, return_exceptions=True)
        await a.redis.delete(a._worker_key(a.worker_id))
        assert await b.is_alive("run1") is False
        follower = asyncio.create_task(collect(b, "run1"))
        await asyncio.sleep(0.05)
        await b.abandon("run1", 1, "The server running this run stopped.")
        body = await asyncio.wait_for(follower, timeout=3)
        assert body.endswith(
            b'event: error\ndata: {"error":"The server running this run stopped.","code":"internal_error","retryable":true}\n\n'
        )
        assert await b.active_count(1) == 0
    finally:
        a._runs["run1"].task.cancel()


async def test_shutdown_releases_followers_with_the_last_id_and_lets_the_run_finish(make_hub):
    hub = make_hub()
    await hub.start("run1", owner_id=1, flow=ticking(30, delay=0.005), on_disconnect=OnDisconnect.CANCEL)
    chunks = []
    async with aclosing(hub.follow("run1")) as frames:
        async for chunk in frames:
            chunks.append(chunk)
            if len(chunks) == 3:
                hub.begin_shutdown()
    body = b"".join(chunks)
    last_id = body.count(b"\n\n") - 1
    assert body.endswith(
        f"id: {last_id}\nevent: error\n".encode()
        + b'data: {"error":"The server is shutting down; resume this stream.","code":"server_shutdown","retryable":true}\n\n'
    )
    # Leaving because of the shutdown is not a disconnect: the run goes on to its end.
    await hub.drain(within=5)
    assert (await hub.info("run1")).terminal == Event("completed", {"messageId": "msg_1"})


async def test_stop_runs_cancels_the_runs_still_going_and_waits_for_their_clean_up(make_hub):
    hub = make_hub()
    stored: list[str] = []

    async def storing(run_id: str, n: int):
        try:
            yield Event("message.started", {"messageId": run_id})
            for i in range(n):
                await asyncio.sleep(0.01)
                yield Event("token", {"delta": f"t{i}"})
            yield Event("completed", {"messageId": run_id})
        finally:
            await asyncio.sleep(0.05)  # the reply's final write
            stored.append(run_id)

    for number in range(3):
        await hub.start(
            f"run{number}", owner_id=1, flow=storing(f"run{number}", 10_000), on_disconnect=OnDisconnect.CONTINUE
        )
    await hub.start("short", owner_id=1, flow=storing("short", 1), on_disconnect=OnDisconnect.CONTINUE)
    hub.begin_shutdown()
    await hub.drain(within=0.2)
    assert stored == ["short"]
    assert await hub.stop_runs(within=5) == (3, 0)
    assert sorted(stored) == ["run0", "run1", "run2", "short"]
    assert hub.local_run_ids() == set()
    for number in range(3):
        assert (await hub.info(f"run{number}")).terminal == Event(
            "error", {"error": "The server shut down before the run finished.", "code": "cancelled", "retryable": False}
        )
    assert (await hub.info("short")).terminal == Event("completed", {"messageId": "short"})
    assert await hub.active_count(1) == 0
    assert await hub.stop_runs(within=5) == (0, 0)


async def test_stop_runs_counts_the_runs_whose_clean_up_outlasts_it(make_hub):
    hub = make_hub()

    async def slow_to_end():
        try:
            yield Event("message.started", {"messageId": "msg_1"})
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.5)

    await hub.start("run1", owner_id=1, flow=slow_to_end(), on_disconnect=OnDisconnect.CONTINUE)
    await asyncio.sleep(0.01)
    assert await hub.stop_runs(within=0.05) == (1, 1)
    await hub.wait("run1")
    assert (await hub.info("run1")).terminal.data["code"] == "cancelled"


def test_a_follower_far_behind_gets_its_frames_in_bounded_writes() -> None:
    from runs.events import Event
    from runs.hub import WRITE_LIMIT, OnDisconnect, _Run

    run = _Run(id="msg_x", owner_id=1, on_disconnect=OnDisconnect.CANCEL)
    for i in range(20_000):
        run.append(Event("token", {"delta": f" w{i}"}))
    run.append(Event("token", {"delta": "x" * (2 * WRITE_LIMIT)}))  # one frame larger than the limit
    chunks, position = [], 0
    while position < run.count:
        chunk, position = run.frames_after(position)
        chunks.append(chunk)
    assert b"".join(chunks) == bytes(run.log)
    assert all(len(chunk) <= WRITE_LIMIT for chunk in chunks[:-1])  # whole frames, at most the limit...
    assert len(chunks[-1]) > 2 * WRITE_LIMIT  # ...except a single frame larger than it, sent whole
    assert len(chunks) > len(run.log) // WRITE_LIMIT - 1
    assert all(chunk.startswith(b"id: ") and chunk.endswith(b"\n\n") for chunk in chunks)


async def relay_live(hub, client: "Client", flow, **kwargs) -> asyncio.Future:
    """Start run `run1` from `flow` and `client`'s relay of it; the flow starts once the relay waits, caught up."""
    go = asyncio.Event()

    async def held():
        await go.wait()
        async for event in flow:
            yield event

    await hub.start("run1", owner_id=1, flow=held(), on_disconnect=OnDisconnect.CANCEL)
    relaying = asyncio.ensure_future(client.relay(hub, "run1", **kwargs))
    while not hub._runs["run1"].pushers:
        await asyncio.sleep(0.001)
    go.set()
    return relaying


class Client:
    """A client's end of `InProcessHub.relay`: what was written and by which task; writes can block or fail."""

    def __init__(self, *, block_at: int | None = None, fail_at: int | None = None) -> None:
        self.chunks: list[bytes] = []
        self.writers: list[asyncio.Task | None] = []
        self.block_at, self.fail_at = block_at, fail_at
        self.gate = asyncio.Event()
        self.finished = 0

    async def _write(self, chunk: bytes) -> None:
        self.writers.append(asyncio.current_task())
        if len(self.writers) == self.block_at:
            await self.gate.wait()  # a client that stopped reading for a while
        if len(self.writers) == self.fail_at:
            raise ConnectionResetError("the client is gone")
        self.chunks.append(chunk)

    def start_write(self, chunk: bytes):
        return self._write(chunk)

    async def write(self, chunk: bytes) -> None:
        await self._write(chunk)

    async def finish_write(self, rest) -> None:
        self.finished += 1
        await rest

    def relay(self, hub, run_id: str, **kwargs):
        return hub.relay(
            run_id, write=self.write, start_write=self.start_write, finish_write=self.finish_write, **kwargs
        )


async def test_relay_writes_every_event_once_and_the_producer_writes_the_live_ones(make_hub):
    hub = make_hub()
    client = Client()
    await (await relay_live(hub, client, ticking(20, delay=0.001), first=RETRY))
    # Nothing to send at first: the stream opened at once. Then one write per event, each made by the run's task
    # as it published the event: the follower's task slept throughout.
    assert client.chunks == [RETRY, *frames_of(20)]
    run_task = hub._runs["run1"].task
    assert [writer is run_task for writer in client.writers] == [False] + [True] * 22
    assert client.finished == 0


async def test_relay_of_a_finished_run_is_one_write_with_the_prefix(make_hub):
    hub = make_hub()
    await hub.start("run1", owner_id=1, flow=ticking(6), on_disconnect=OnDisconnect.CONTINUE)
    await hub.wait("run1")
    client = Client()
    await client.relay(hub, "run1", after=2, first=RETRY)
    assert client.chunks == [RETRY + b"".join(frames_of(6)[2:])]


async def test_relay_finishes_a_blocked_write_in_the_follower_and_loses_nothing(make_hub):
    hub = make_hub()
    await hub.start("run1", owner_id=1, flow=ticking(40, delay=0.002), on_disconnect=OnDisconnect.CANCEL)
    client = Client(block_at=5)
    relaying = asyncio.ensure_future(client.relay(hub, "run1"))
    while len(client.writers) < 5:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.03)  # the run goes on while the client does not read
    assert not relaying.done()
    client.gate.set()
    await relaying
    assert b"".join(client.chunks) == b"".join(frames_of(40))
    assert client.finished == 1  # the blocked write, begun by the run's task, ended in the follower's
    assert await hub.info("run1") == (1, True, 42, Event("completed", {"messageId": "msg_1"}))


async def test_relay_raises_a_failed_write_and_the_run_it_alone_followed_is_cancelled(make_hub):
    hub = make_hub()
    cleanup: list[str] = []
    client = Client(fail_at=4)
    relaying = await relay_live(hub, client, ticking(1000, delay=0.002, cleanup=cleanup))
    with pytest.raises(ConnectionResetError, match="the client is gone"):
        await relaying
    assert client.chunks == frames_of(1000)[:3]
    await hub.wait("run1")
    assert cleanup == ["cancelled"]
    assert (await hub.info("run1")).terminal.data["code"] == "cancelled"


async def test_relay_leaves_at_once_when_the_client_departs(make_hub):
    hub = make_hub()
    await hub.start("run1", owner_id=1, flow=ticking(10, delay=3600), on_disconnect=OnDisconnect.CONTINUE)
    client, departure = Client(), Departure()
    relaying = asyncio.ensure_future(client.relay(hub, "run1", departure=departure))
    while not client.chunks:
        await asyncio.sleep(0.001)
    departure.set()
    await relaying
    assert client.chunks == frames_of(10)[:1]
    # `continue`: the run goes on without its follower.
    assert not (await hub.info("run1")).done
    await hub.cancel("run1")


async def test_relay_heartbeats_only_while_quiet(make_hub):
    hub = make_hub(heartbeat=0.05)

    async def slow():
        yield Event("message.started", {})
        await asyncio.sleep(0.18)
        for i in range(30):  # ten times as many events as heartbeat periods: none of them is followed by one
            await asyncio.sleep(0.005)
            yield Event("token", {"delta": str(i)})
        yield Event("completed", {})

    await hub.start("run1", owner_id=1, flow=slow(), on_disconnect=OnDisconnect.CONTINUE)
    client = Client()
    await client.relay(hub, "run1")
    body = b"".join(client.chunks)
    started = encode_event(1, "message.started", {})
    tokens = b"".join(encode_event(i + 2, "token", {"delta": str(i)}) for i in range(30))
    assert body.startswith(started + HEARTBEAT)
    assert body.endswith(HEARTBEAT + tokens + encode_event(32, "completed", {}))
    assert body.count(HEARTBEAT) in (2, 3)


async def test_relay_is_released_at_shutdown_with_the_last_id_and_the_run_finishes(make_hub):
    hub = make_hub()
    await hub.start("run1", owner_id=1, flow=ticking(30, delay=0.005), on_disconnect=OnDisconnect.CANCEL)
    client = Client()
    relaying = asyncio.ensure_future(client.relay(hub, "run1"))
    while len(client.chunks) < 3:
        await asyncio.sleep(0.001)
    hub.begin_shutdown()
    await relaying
    body = b"".join(client.chunks)
    last_id = body.count(b"\n\n") - 1
    assert body == b"".join(frames_of(30)[:last_id]) + shutdown_frame(last_id)
    await hub.drain(within=5)
    assert (await hub.info("run1")).terminal == Event("completed", {"messageId": "msg_1"})


async def test_a_relay_cancelled_while_its_client_blocks_a_write_leaves_and_cancels_the_run(make_hub):
    hub = make_hub()
    cleanup: list[str] = []
    client = Client(block_at=5)
    relaying = await relay_live(hub, client, ticking(1000, delay=0.002, cleanup=cleanup))
    while client.finished == 0:  # the blocked write has passed from the run's task to the relay's
        await asyncio.sleep(0.001)
    relaying.cancel()  # what the write watchdog does to a stream whose client stopped reading
    with pytest.raises(asyncio.CancelledError):
        await relaying
    assert client.chunks == frames_of(1000)[:4]
    await hub.wait("run1")
    assert cleanup == ["cancelled"]
    assert (await hub.info("run1")).terminal.data["code"] == "cancelled"


# -- run slots: the per-owner limit checked and taken in one step -----------------------------------


async def test_slots_are_taken_up_to_the_limit_and_given_back(make_hub):
    hub = make_hub()
    first, second = await hub.reserve(1, limit=2), await hub.reserve(1, limit=2)
    assert first is not None and second is not None
    assert await hub.reserve(1, limit=2) is None
    assert await hub.reserve(2, limit=2) is not None  # another owner counts apart
    assert await hub.active_count(1) == 2
    await hub.release(first)
    await hub.release(first)  # a second release changes nothing
    assert await hub.active_count(1) == 1
    assert await hub.reserve(1, limit=2) is not None
    assert await hub.reserve(1, limit=2) is None


async def test_a_started_run_takes_its_slots_place_until_it_ends(make_hub):
    hub = make_hub()
    slot = await hub.reserve(1, limit=1)
    assert slot is not None
    await hub.start("run1", owner_id=1, flow=ticking(20, delay=0.005), on_disconnect=OnDisconnect.CONTINUE, slot=slot)
    assert await hub.active_count(1) == 1
    assert await hub.reserve(1, limit=1) is None
    await hub.release(slot)  # the run holds the place now: giving the slot back again frees nothing
    assert await hub.active_count(1) == 1
    await hub.wait("run1")
    for _ in range(200):
        if await hub.active_count(1) == 0:
            break
        await asyncio.sleep(0.01)
    assert await hub.active_count(1) == 0
    assert await hub.reserve(1, limit=1) is not None


async def test_two_hundred_reservations_at_once_take_exactly_the_limit(make_hub):
    hubs = [make_hub(), make_hub()] if make_hub.backend == "redis" else [make_hub()]
    taken = await asyncio.gather(*(hubs[n % len(hubs)].reserve(7, limit=5) for n in range(200)))
    assert sum(slot is not None for slot in taken) == 5
    assert await hubs[0].active_count(7) == 5
