"""The in-process run hub, driven directly (no server, no database)."""

import asyncio
from contextlib import aclosing

import pytest

from runs.events import Event, RunError
from runs.hub import InProcessHub, OnDisconnect, RunNotFound
from runs.sse import HEARTBEAT, encode_event


def make_hub(**kwargs):
    return InProcessHub(retention_seconds=kwargs.get("retention", 60), heartbeat_seconds=kwargs.get("heartbeat", 5))


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


async def test_follow_yields_every_event_numbered_in_order():
    hub = make_hub()
    hub.start("run1", owner_id=1, flow=ticking(5, delay=0.001), on_disconnect=OnDisconnect.CANCEL)
    assert await collect(hub, "run1") == b"".join(frames_of(5))
    assert hub.terminal_event("run1") == Event("completed", {"messageId": "msg_1"})


async def test_two_followers_get_identical_bytes():
    hub = make_hub()
    hub.start("run1", owner_id=1, flow=ticking(20, delay=0.001), on_disconnect=OnDisconnect.CANCEL)
    first, second = await asyncio.gather(collect(hub, "run1"), collect(hub, "run1"))
    assert first == second == b"".join(frames_of(20))


async def test_resume_after_an_id_replays_exactly_the_rest():
    hub = make_hub()
    hub.start("run1", owner_id=1, flow=ticking(6), on_disconnect=OnDisconnect.CONTINUE)
    await hub.wait("run1")
    assert await collect(hub, "run1", after=4) == b"".join(frames_of(6)[4:])
    assert await collect(hub, "run1", after=8) == b""


async def test_follower_coalesces_frames_that_are_already_waiting():
    hub = make_hub()
    hub.start("run1", owner_id=1, flow=ticking(50), on_disconnect=OnDisconnect.CONTINUE)
    await hub.wait("run1")
    chunks = []
    async with aclosing(hub.follow("run1")) as frames:
        async for chunk in frames:
            chunks.append(chunk)
    assert chunks == [b"".join(frames_of(50))]


async def test_heartbeat_while_quiet():
    hub = make_hub(heartbeat=0.05)

    async def slow():
        yield Event("message.started", {})
        await asyncio.sleep(0.18)
        yield Event("completed", {})

    hub.start("run1", owner_id=1, flow=slow(), on_disconnect=OnDisconnect.CONTINUE)
    body = await collect(hub, "run1")
    started = encode_event(1, "message.started", {})
    completed = encode_event(2, "completed", {})
    assert body.startswith(started + HEARTBEAT)
    assert body.endswith(HEARTBEAT + completed)
    assert body.count(HEARTBEAT) in (2, 3)


async def test_last_follower_leaving_cancels_a_cancel_run():
    hub = make_hub()
    cleanup: list[str] = []
    hub.start("run1", owner_id=1, flow=ticking(1000, delay=0.01, cleanup=cleanup), on_disconnect=OnDisconnect.CANCEL)
    async with aclosing(hub.follow("run1")) as frames:
        async for _ in frames:
            break
    await hub.wait("run1")
    assert cleanup == ["cancelled"]
    terminal = hub.terminal_event("run1")
    assert terminal == Event("error", {"error": "The run was cancelled.", "code": "cancelled", "retryable": False})


async def test_follower_leaving_a_continue_run_leaves_it_running():
    hub = make_hub()
    hub.start("run1", owner_id=1, flow=ticking(20, delay=0.002), on_disconnect=OnDisconnect.CONTINUE)
    async with aclosing(hub.follow("run1")) as frames:
        async for _ in frames:
            break
    await hub.wait("run1")
    assert hub.terminal_event("run1") == Event("completed", {"messageId": "msg_1"})


async def test_run_keeps_going_while_another_follower_remains():
    hub = make_hub()
    hub.start("run1", owner_id=1, flow=ticking(30, delay=0.002), on_disconnect=OnDisconnect.CANCEL)
    staying = asyncio.create_task(collect(hub, "run1"))
    await asyncio.sleep(0)
    async with aclosing(hub.follow("run1")) as frames:
        async for _ in frames:
            break
    assert await staying == b"".join(frames_of(30))


async def test_follower_policy_overrides_the_run_policy():
    hub = make_hub()
    cleanup: list[str] = []
    hub.start("run1", owner_id=1, flow=ticking(1000, delay=0.01, cleanup=cleanup), on_disconnect=OnDisconnect.CONTINUE)
    async with aclosing(hub.follow("run1", on_disconnect=OnDisconnect.CANCEL)) as frames:
        async for _ in frames:
            break
    await hub.wait("run1")
    assert cleanup == ["cancelled"]


async def test_cancel_waits_for_clean_up():
    hub = make_hub()
    cleanup: list[str] = []
    hub.start("run1", owner_id=1, flow=ticking(1000, delay=0.01, cleanup=cleanup), on_disconnect=OnDisconnect.CONTINUE)
    await asyncio.sleep(0.03)
    assert await hub.cancel("run1") is True
    assert cleanup == ["cancelled"]
    assert await hub.cancel("run1") is False


async def test_run_error_becomes_an_error_event():
    hub = make_hub()

    async def failing():
        yield Event("message.started", {})
        raise RunError("upstream said no", code="provider_error", retryable=True)

    hub.start("run1", owner_id=1, flow=failing(), on_disconnect=OnDisconnect.CONTINUE)
    body = await collect(hub, "run1")
    assert body == encode_event(1, "message.started", {}) + encode_event(
        2, "error", {"error": "upstream said no", "code": "provider_error", "retryable": True}
    )


async def test_unexpected_exception_is_an_internal_error_event():
    hub = make_hub()

    async def broken():
        yield Event("message.started", {})
        raise KeyError("bug")

    hub.start("run1", owner_id=1, flow=broken(), on_disconnect=OnDisconnect.CONTINUE)
    await hub.wait("run1")
    assert hub.terminal_event("run1") == Event(
        "error", {"error": "Internal error while generating.", "code": "internal_error", "retryable": True}
    )


async def test_runs_are_forgotten_after_retention():
    hub = make_hub(retention=0.05)
    hub.start("run1", owner_id=1, flow=ticking(1), on_disconnect=OnDisconnect.CONTINUE)
    await hub.wait("run1")
    assert hub.exists("run1")
    await asyncio.sleep(0.1)
    assert not hub.exists("run1")
    with pytest.raises(RunNotFound):
        await hub.follow("run1").__anext__()


async def test_active_count_counts_only_live_runs_of_the_owner():
    hub = make_hub()
    hub.start("a", owner_id=1, flow=ticking(100, delay=0.01), on_disconnect=OnDisconnect.CONTINUE)
    hub.start("b", owner_id=2, flow=ticking(100, delay=0.01), on_disconnect=OnDisconnect.CONTINUE)
    hub.start("c", owner_id=1, flow=ticking(0), on_disconnect=OnDisconnect.CONTINUE)
    await hub.wait("c")
    assert hub.active_count(1) == 1
    assert hub.active_count(2) == 1
    await hub.cancel("a")
    await hub.cancel("b")
    assert hub.active_count(1) == 0
