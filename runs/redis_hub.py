"""The Redis run hub: every run's events in a Redis Stream, so any worker can follow, resume or cancel.

The worker that produces a run keeps its frames in memory, exactly like `runs.hub.InProcessHub`, and copies
each one to the stream `<prefix>:run:<id>:events` with the entry id `0-<event id>`; its own followers
read memory. Another worker follows through one local mirror per run, fed by a single blocking
`XREAD` loop, so N followers on a worker cost one Redis reader. Cancels travel over pub/sub to the
worker that runs the run. Follower counts (for `on_disconnect`) and each owner's active runs live in
Redis too, and every worker keeps a liveness key that the reaper uses to find runs whose worker died.
"""

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Self

import redis.asyncio as aioredis
from django.conf import settings

from .events import TERMINAL_EVENTS, Event, error_event
from .hub import Hub, OnDisconnect, RunInfo, Slot, _Run
from .sse import encode_event

logger = logging.getLogger(__name__)

# How long a run's keys live while it runs (a worker that dies leaves them to expire).
RUNNING_TTL_SECONDS = 24 * 3600
# How long a mirror of a finished remote run stays in memory for more followers.
MIRROR_LINGER_SECONDS = 5.0
# How long a slot taken by a request stays taken if its worker dies before starting the run or giving it back.
SLOT_SECONDS = 60.0

# The owner's runs going (a set) plus slots taken (a sorted set, scored by when each lapses) are checked against the
# limit and a slot is taken in one step, on the Redis server: no two workers can both take the last free slot.
RESERVE_SCRIPT = """
local now = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('SCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then
    return 0
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""


class RedisHub(Hub):
    shared = True

    @classmethod
    def from_settings(cls) -> Self:
        return cls(
            settings.REDIS_URL,
            retention_seconds=settings.MOONBORN_EVENT_RETENTION_SECONDS,
            heartbeat_seconds=settings.MOONBORN_SSE_HEARTBEAT_SECONDS,
            worker_ttl_seconds=settings.MOONBORN_WORKER_TTL_SECONDS,
        )

    def __init__(
        self,
        url: str,
        *,
        retention_seconds: float,
        heartbeat_seconds: float,
        worker_ttl_seconds: float = 15.0,
        prefix: str | None = None,
        max_connections: int = 1000,
    ) -> None:
        super().__init__(retention_seconds=retention_seconds, heartbeat_seconds=heartbeat_seconds)
        # A blocking pool: under load a command waits for a free connection instead of failing.
        # Each mirrored remote run holds one connection in its blocking XREAD.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=10)
        # Typed loosely: redis-py answers bytes here (no decode_responses), which its stubs do not know.
        self.redis: Any = aioredis.Redis(connection_pool=pool)
        self.prefix = prefix or settings.MOONBORN_REDIS_PREFIX
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.worker_ttl = worker_ttl_seconds
        self._mirrors: dict[str, _Run] = {}
        self._queues: dict[str, asyncio.Queue[tuple[bytes, Event]]] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closing = False
        self._reserve = self.redis.register_script(RESERVE_SCRIPT)

    @property
    def _retention_ms(self) -> int:
        return max(1, int(self.retention_seconds * 1000))

    async def ping(self) -> None:
        await self.redis.ping()

    async def aclose(self) -> None:
        """Stop the background tasks and close the connections (tests; a server just exits)."""
        self._closing = True
        for task in list(self._background):
            if not task.get_name().startswith("moonborn:cancel-listener"):
                task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.redis.aclose()

    # -- keys --------------------------------------------------------------------------------------

    def _events_key(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}:events"

    def _meta_key(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}"

    def _active_key(self, owner_id: int) -> str:
        return f"{self.prefix}:owner:{owner_id}:active"

    def _slots_key(self, owner_id: int) -> str:
        return f"{self.prefix}:owner:{owner_id}:slots"

    def _worker_key(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def _cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"

    # -- background tasks --------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> "asyncio.Task[Any]":
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _ensure_started(self) -> None:
        if self._started:
            return
        self._started = True
        await self.redis.set(self._worker_key(self.worker_id), "1", px=int(self.worker_ttl * 1000))
        self._spawn(self._keep_alive(), "moonborn:keep-alive")
        self._spawn(self._listen_for_cancels(), "moonborn:cancel-listener")

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.worker_ttl / 3)
            try:
                await self.redis.set(self._worker_key(self.worker_id), "1", px=int(self.worker_ttl * 1000))
            except aioredis.RedisError:
                logger.exception("could not refresh the worker liveness key")

    async def _listen_for_cancels(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self._cancel_channel)
        try:
            while not self._closing:
                # A short poll with a stop flag: redis-py's pub/sub read does not end promptly when
                # its task is cancelled.
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if message is None or message.get("type") != "message":
                    continue
                run = self._runs.get(message["data"].decode())
                if run is not None and run.task is not None and not run.task.done():
                    logger.info("run %s: cancelled through another worker", run.id)
                    run.task.cancel()
        finally:
            await pubsub.aclose()

    # -- producing ---------------------------------------------------------------------------------

    async def reserve(self, owner_id: int, *, limit: int) -> Slot | None:
        await self._ensure_started()
        slot = Slot(owner_id)
        keys = [self._active_key(owner_id), self._slots_key(owner_id)]
        now_ms = int(time.time() * 1000)
        taken = await self._reserve(keys=keys, args=[limit, now_ms, int(SLOT_SECONDS * 1000), slot.token])
        return slot if taken else None

    async def release(self, slot: Slot) -> None:
        await self.redis.zrem(self._slots_key(slot.owner_id), slot.token)

    async def start(
        self,
        run_id: str,
        *,
        owner_id: int,
        flow: AsyncIterator[Event],
        on_disconnect: OnDisconnect,
        slot: Slot | None = None,
    ) -> None:
        await self._ensure_started()
        meta = {"owner": owner_id, "policy": on_disconnect.value, "worker": self.worker_id, "followers": 0}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._meta_key(run_id), mapping=meta)
            pipe.expire(self._meta_key(run_id), RUNNING_TTL_SECONDS)
            # The run takes the slot's place in the count in the same transaction.
            pipe.sadd(self._active_key(owner_id), run_id)
            if slot is not None:
                pipe.zrem(self._slots_key(owner_id), slot.token)
            await pipe.execute()
        queue: asyncio.Queue[tuple[bytes, Event]] = asyncio.Queue()
        self._queues[run_id] = queue
        run = self._start_local(run_id, owner_id=owner_id, flow=flow, on_disconnect=on_disconnect)
        self._writers[run_id] = self._spawn(self._write(run, queue), f"moonborn:writer:{run_id}")

    def _publish(self, run: _Run, event: Event) -> None:
        frame = run.append(event)
        self._queues[run.id].put_nowait((frame, event))

    async def _write(self, run: _Run, queue: "asyncio.Queue[tuple[bytes, Event]]") -> None:
        """Copy the run's frames to its stream in order, several per round trip when they pile up."""
        key = self._events_key(run.id)
        written = 0
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            terminal = next((event for _, event in batch if event.is_terminal), None)
            for attempt in range(5):
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for number, (frame, event) in enumerate(batch, start=written + 1):
                            # An explicit entry id makes a retried batch idempotent (XADD refuses old ids).
                            pipe.xadd(key, {"f": frame, "t": event.type}, id=f"0-{number}")
                        if terminal is not None:
                            pipe.hset(
                                self._meta_key(run.id), mapping={"done": 1, "terminal": json.dumps(terminal.data)}
                            )
                            pipe.srem(self._active_key(run.owner_id), run.id)
                            pipe.pexpire(self._meta_key(run.id), self._retention_ms)
                            pipe.pexpire(key, self._retention_ms)
                        else:
                            pipe.expire(key, RUNNING_TTL_SECONDS)
                        await pipe.execute(raise_on_error=False)
                    break
                except aioredis.RedisError:
                    logger.warning("run %s: writing events to Redis failed (attempt %d)", run.id, attempt + 1)
                    await asyncio.sleep(0.1 * 2**attempt)
            else:
                logger.error("run %s: events %d+ could not be written to Redis", run.id, written + 1)
            written += len(batch)
            if terminal is not None:
                return

    async def _finished(self, run: _Run) -> None:
        writer = self._writers.pop(run.id, None)
        if writer is not None:
            # Followers elsewhere see the terminal event only once it is in Redis.
            await asyncio.wait({writer}, timeout=10)
        self._queues.pop(run.id, None)

    # -- reading -----------------------------------------------------------------------------------

    async def info(self, run_id: str) -> RunInfo | None:
        run = self._runs.get(run_id) or self._mirrors.get(run_id)
        if run is not None and (run.task is not None or run.done):
            return run.info()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._meta_key(run_id))
            pipe.xlen(self._events_key(run_id))
            meta, length = await pipe.execute()
        if not meta:
            return None
        terminal = None
        if meta.get(b"done"):
            terminal_data = json.loads(meta.get(b"terminal", b"{}"))
            last_type = await self.redis.xrevrange(self._events_key(run_id), count=1)
            event_type = last_type[0][1][b"t"].decode() if last_type else "error"
            terminal = Event(event_type, terminal_data)
        return RunInfo(int(meta[b"owner"]), bool(meta.get(b"done")), int(length), terminal)

    async def _lookup(self, run_id: str) -> _Run | None:
        await self._ensure_started()
        run = self._runs.get(run_id) or self._mirrors.get(run_id)
        if run is not None:
            return run
        meta = await self.redis.hgetall(self._meta_key(run_id))
        if not meta:
            return None
        run = self._mirrors.get(run_id)  # another follower may have made it meanwhile
        if run is None:
            run = _Run(id=run_id, owner_id=int(meta[b"owner"]), on_disconnect=OnDisconnect(meta[b"policy"].decode()))
            self._mirrors[run_id] = run
            self._spawn(self._mirror(run), f"moonborn:mirror:{run_id}")
        return run

    async def _mirror(self, run: _Run) -> None:
        """Feed a local copy of a remote run from its stream until its terminal event."""
        key = self._events_key(run.id)
        last = "0-0"
        try:
            while not run.done:
                response = await self.redis.xread({key: last}, count=1000, block=1000)
                if not response:
                    if not await self.redis.exists(self._meta_key(run.id)):
                        # Past retention (or never finished): end the copy where it is.
                        run.done = True
                        run.wake()
                    continue
                for entry_id, fields in response[0][1]:
                    last = entry_id.decode()
                    event_type = fields[b"t"].decode()
                    terminal = None
                    if event_type in TERMINAL_EVENTS:
                        frame = fields[b"f"]
                        data = json.loads(frame.split(b"\ndata: ", 1)[1].rstrip(b"\n"))
                        terminal = Event(event_type, data)
                    run.append_frame(fields[b"f"], terminal)
        except Exception:
            logger.exception("mirror of run %s failed", run.id)
            run.done = True
            run.wake()
        finally:
            asyncio.get_running_loop().call_later(MIRROR_LINGER_SECONDS, self._forget_mirror, run)

    def _forget_mirror(self, run: _Run) -> None:
        if self._mirrors.get(run.id) is run:
            del self._mirrors[run.id]

    async def _joined(self, run: _Run) -> None:
        run.followers += 1
        await self.redis.hincrby(self._meta_key(run.id), "followers", 1)

    def _left(self, run: _Run, policy: OnDisconnect, *, cancel_if_last: bool) -> None:
        run.followers -= 1
        self._spawn(self._leave(run, policy, cancel_if_last), f"moonborn:leave:{run.id}")

    async def _leave(self, run: _Run, policy: OnDisconnect, cancel_if_last: bool) -> None:
        remaining = await self.redis.hincrby(self._meta_key(run.id), "followers", -1)
        if cancel_if_last and policy is OnDisconnect.CANCEL and remaining <= 0 and not run.done:
            logger.info("run %s: last follower left, cancelling", run.id)
            await self.cancel(run.id, wait=0)

    # -- control -----------------------------------------------------------------------------------

    async def cancel(self, run_id: str, *, wait: float = 5.0) -> bool:
        if run_id in self._runs:
            return await super().cancel(run_id, wait=wait)
        info = await self.info(run_id)
        if info is None or info.done:
            return False
        await self.redis.publish(self._cancel_channel, run_id)
        if wait > 0:
            run = await self._lookup(run_id)
            deadline = asyncio.get_running_loop().time() + wait
            while run is not None and not run.done and asyncio.get_running_loop().time() < deadline:
                waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                run.waiters.append(waiter)
                try:
                    async with asyncio.timeout(max(0.0, deadline - asyncio.get_running_loop().time())):
                        await waiter
                except TimeoutError:
                    break
        return True

    async def active_count(self, owner_id: int) -> int:
        """The owner's runs going on every worker, and slots taken for runs about to start."""
        await self._ensure_started()
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.scard(self._active_key(owner_id))
            pipe.zcount(self._slots_key(owner_id), now_ms, "+inf")
            runs, slots = await pipe.execute()
        return int(runs) + int(slots)

    # -- recovery ----------------------------------------------------------------------------------

    async def is_alive(self, run_id: str) -> bool:
        """Whether some live worker is still producing the run."""
        if await super().is_alive(run_id):
            return True
        worker = await self.redis.hget(self._meta_key(run_id), "worker")
        if worker is None or await self.redis.hget(self._meta_key(run_id), "done"):
            return False
        return bool(await self.redis.exists(self._worker_key(worker.decode())))

    async def abandon(self, run_id: str, owner_id: int, message: str) -> None:
        """End a run whose worker died: a terminal `error` event, so its followers stop waiting."""
        key = self._events_key(run_id)
        length = int(await self.redis.xlen(key))
        event = error_event(message, "internal_error", retryable=True)
        frame = encode_event(length + 1, event.type, event.data)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {"f": frame, "t": event.type}, id=f"0-{length + 1}")
            pipe.hset(self._meta_key(run_id), mapping={"done": 1, "terminal": json.dumps(event.data)})
            pipe.srem(self._active_key(owner_id), run_id)
            pipe.pexpire(key, self._retention_ms)
            pipe.pexpire(self._meta_key(run_id), self._retention_ms)
            await pipe.execute()
