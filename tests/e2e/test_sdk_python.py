"""The Python SDK (sdk/python) against a real server: streams, JSON calls, cancel, resume, errors."""

import asyncio

import pytest
from moonborn import (
    APIConnectionError,
    AsyncMoonborn,
    AuthenticationError,
    BadRequestError,
    Completed,
    ConflictError,
    ErrorEvent,
    MessageStarted,
    Moonborn,
    NotFoundError,
    PipelineCompleted,
    PipelineStarted,
    StepCompleted,
    StepStarted,
    Token,
    ToolEnd,
    ToolStart,
)

from tests.e2e.cutproxy import CutProxy
from tests.e2e.helpers import make_persona, make_session, messages

STEPS = ["soul_draft", "lore_weave", "psyche_profile", "voice_print", "dialogue_seed", "card_compile"]
# A slow reply (60 tokens, 40 ms each) leaves time to cancel or cut it mid-stream.
SLOW = {"MOONBORN_DEMO_DELAY_MS": "40", "MOONBORN_DEMO_REPLY_TOKENS": "60"}


def sdk(server, base_url=None):
    return Moonborn(api_key=server.keys["alice"], base_url=base_url or server.base_url, reconnect_delay=0.05)


def assert_persona_events(events, persona_id):
    assert [type(e) for e in events] == [PipelineStarted] + [StepStarted, StepCompleted] * 6 + [PipelineCompleted]
    assert [e.id for e in events] == list(range(1, 15))
    assert [e.step for e in events if isinstance(e, StepCompleted)] == STEPS
    assert [e.step for e in events if isinstance(e, StepStarted)] == STEPS
    assert all(e.model == "demo" and e.duration_ms >= 0 for e in events if isinstance(e, StepCompleted))
    assert events[0].persona_id == events[-1].persona_id == persona_id


def assert_reply_events(events, stored):
    # A generated persona has a lorebook: the reply consults it (one tool call) before its first token.
    assert [type(e) for e in events[:3]] == [MessageStarted, ToolStart, ToolEnd]
    assert events[1].call_id == events[2].call_id
    assert all(isinstance(e, Token) for e in events[3:-1])
    assert isinstance(events[-1], Completed)
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert "".join(e.delta for e in events[3:-1]) == stored["content"]
    assert events[-1].message_id == events[0].message_id == stored["id"]
    assert events[-1].drift_score == stored["driftScore"]
    assert events[-1].drifted == (stored["driftScore"] > stored["driftThreshold"])


def test_sync_client_streams_a_persona_and_a_reply(server):
    with sdk(server) as client:
        stream = client.personas.create_stream("A lighthouse keeper who collects shells")
        events = stream.until_done()
        persona_id = events[0].persona_id
        assert stream.location == f"/v1/personas/{persona_id}"
        assert_persona_events(events, persona_id)
        assert client.personas.get(persona_id)["status"] == "ready"

        session = client.chat.sessions.create(persona_id)
        with client.chat.stream_message(session["id"], "Tell me about the storm.") as reply:
            events = list(reply)
        assert reply.done and not reply.cancelled
        stored = messages(server, session["id"])[-1]
        assert stored["status"] == "completed"
        assert reply.text == stored["content"]
        assert_reply_events(events, stored)
        assert len(events) == 24 + 4


def test_a_reply_streams_its_lorebook_call_as_typed_tool_events(server):
    with sdk(server) as client:
        session = client.chat.sessions.create(client.personas.create("A lighthouse keeper who collects shells")["id"])
        for turn in (1, 2):
            events = client.chat.stream_message(session["id"], "Tell me about the lighthouse.").until_done()
            start, end = events[1], events[2]
            assert isinstance(start, ToolStart) and isinstance(end, ToolEnd)
            assert (start.id, start.type, end.id, end.type) == (2, "tool_start", 3, "tool_end")
            assert start.call_id.startswith("call_")
            assert end.call_id == start.call_id
            assert (start.tool, start.args) == ("lorebook", {"turn": turn})
            assert (end.tool, end.status) == ("lorebook", "ok")
            assert set(end.result) == {"activated", "skipped", "tokens"}
            assert isinstance(end.duration_ms, float) and end.duration_ms >= 0
            assert start.data == {"callId": start.call_id, "tool": "lorebook", "args": {"turn": turn}}
            assert end.data["result"] == end.result
            # The history keeps what the tool found, without the state the server keeps for the next turn.
            history = client.chat.messages(session["id"])["results"]
            assert history[-1]["lore"] == {**end.result, "historyDropped": 0}
            assert history[-2]["lore"] is None
            assert isinstance(events[3], Token)


def test_sync_client_json_calls(server):
    with sdk(server) as client:
        persona = client.personas.create("A tired cartographer", name="Ines")
        assert persona["status"] == "ready"
        assert persona["name"] == "Ines"
        assert [s["step"] for s in persona["steps"]] == STEPS
        assert persona["id"] in [p["id"] for p in client.personas.list()["results"]]
        session = client.chat.sessions.create(persona["id"])
        assert session["personaId"] == persona["id"]
        assert client.chat.sessions.get(session["id"])["id"] == session["id"]
        reply = client.chat.send_message(session["id"], "Where are the maps?")
        history = client.chat.messages(session["id"])["results"]
        assert [(m["role"], m["status"]) for m in history] == [("user", "completed"), ("assistant", "completed")]
        assert history[0]["content"] == "Where are the maps?"
        assert reply["messageId"] == history[1]["id"]
        assert reply["content"] == history[1]["content"]
        client.chat.sessions.delete(session["id"])
        with pytest.raises(NotFoundError):
            client.chat.sessions.get(session["id"])


def test_errors_are_exceptions_with_the_api_code(server):
    with (
        Moonborn(api_key="mb_not_a_key", base_url=server.base_url) as stranger,
        pytest.raises(AuthenticationError) as auth,
    ):
        stranger.personas.list()
    assert (auth.value.status, auth.value.code) == (401, "authentication_failed")
    with sdk(server) as client:
        with pytest.raises(BadRequestError) as bad:
            client.personas.create_stream("")
        assert (bad.value.status, bad.value.code) == (400, "validation_error")
        assert "prompt" in bad.value.details
        with pytest.raises(NotFoundError) as missing:
            client.chat.stream_message("ses_nope", "hello")
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        bobs = make_persona(server, user="bob")
        with pytest.raises(NotFoundError):
            client.personas.get(bobs)
    with Moonborn(api_key="mb_x", base_url="http://127.0.0.1:9"), pytest.raises(APIConnectionError):
        Moonborn(api_key="mb_x", base_url="http://127.0.0.1:9").personas.list()


def test_chat_with_a_persona_still_generating_is_a_conflict(server_factory):
    server = server_factory(**SLOW)
    with sdk(server) as client:
        stream = client.personas.create_stream("A night-shift radio host")
        started = next(stream)
        assert isinstance(started, PipelineStarted)
        with pytest.raises(ConflictError) as conflict:
            client.chat.sessions.create(started.persona_id)
        assert (conflict.value.status, conflict.value.code) == (409, "conflict")
        assert isinstance(stream.until_done()[-1], PipelineCompleted)


def test_cancel_ends_the_reply_and_keeps_the_partial_text(server_factory):
    server = server_factory(**SLOW)
    session_id = make_session(server, make_persona(server))
    with sdk(server) as client:
        with client.chat.stream_message(session_id, "Talk for a while.") as reply:
            events = []
            for event in reply:
                events.append(event)
                # message.started, the lorebook's tool_start and tool_end, then three tokens.
                if len(events) == 6:
                    reply.cancel()
        assert isinstance(events[-1], ErrorEvent)
        assert (events[-1].code, events[-1].retryable) == ("cancelled", False)
        assert [type(e) for e in events[:3]] == [MessageStarted, ToolStart, ToolEnd]
        assert all(isinstance(e, Token) for e in events[3:-1])
        stored = messages(server, session_id)[-1]
        assert stored["status"] == "cancelled"
        assert stored["content"] == reply.text
        assert 3 <= len(events) - 4 < 60


def test_leaving_a_reply_early_cancels_it(server_factory):
    server = server_factory(**SLOW)
    session_id = make_session(server, make_persona(server))
    with sdk(server) as client, client.chat.stream_message(session_id, "Go on.") as reply:
        for event in reply:
            if isinstance(event, Token):
                break
    assert reply.cancelled
    stored = messages(server, session_id)[-1]
    assert stored["status"] == "cancelled"
    assert len(stored["content"].split()) < 60


def test_sync_stream_resumes_after_a_cut_connection_without_losing_or_repeating_tokens(server_factory):
    server = server_factory(**SLOW)
    session_id = make_session(server, make_persona(server))
    proxy = CutProxy(int(server.base_url.rsplit(":", 1)[1])).start()
    try:
        # Connection 0 is the POST: cut it 1200 bytes in, mid-frame, well before the 60th token.
        proxy.arm(cut_after=1200, connection=0)
        with sdk(server, proxy.base_url) as client:
            reply = client.chat.stream_message(session_id, "Tell me everything.")
            events = reply.until_done()
        assert (proxy.cuts, proxy.connections) == (1, 2)
        stored = messages(server, session_id)[-1]
        assert stored["status"] == "completed"
        assert_reply_events(events, stored)
        assert len(events) == 64
    finally:
        proxy.close()


def test_sync_persona_stream_resumes_after_a_cut_connection(server_factory):
    server = server_factory(**SLOW)
    proxy = CutProxy(int(server.base_url.rsplit(":", 1)[1])).start()
    try:
        proxy.arm(cut_after=700, connection=0)
        with sdk(server, proxy.base_url) as client:
            events = client.personas.create_stream("A beekeeper on a rooftop").until_done()
        assert (proxy.cuts, proxy.connections) == (1, 2)
        assert_persona_events(events, events[0].persona_id)
    finally:
        proxy.close()


async def test_async_client_streams_cancels_and_resumes(server_factory):
    server = server_factory(**SLOW)
    proxy = CutProxy(int(server.base_url.rsplit(":", 1)[1])).start()
    try:
        async with AsyncMoonborn(server.keys["alice"], proxy.base_url, reconnect_delay=0.05) as client:
            stream = await client.personas.create_stream("A glassblower who hums")
            events = await stream.until_done()
            assert_persona_events(events, events[0].persona_id)
            session = await client.chat.sessions.create(events[0].persona_id)

            # The client keeps connections alive, so cut the one that carries the chat POST.
            proxy.cut_on(b"on_disconnect=continue", after=1500)
            reply = await client.chat.stream_message(session["id"], "What are you making?")
            events = await reply.until_done()
            assert proxy.cuts == 1
            stored = (await client.chat.messages(session["id"]))["results"][-1]
            assert_reply_events(events, stored)

            async with await client.chat.stream_message(session["id"], "And after that?") as reply:
                seen = []
                async for event in reply:
                    seen.append(event)
                    # message.started, the lorebook's tool_start and tool_end, then two tokens.
                    if len(seen) == 5:
                        await reply.cancel()
            assert isinstance(seen[-1], ErrorEvent)
            assert seen[-1].code == "cancelled"
            stored = (await client.chat.messages(session["id"]))["results"][-1]
            assert (stored["status"], stored["content"]) == ("cancelled", reply.text)

            with pytest.raises(NotFoundError):
                await client.chat.sessions.get("ses_nope")
            await asyncio.sleep(0)
    finally:
        proxy.close()


def test_decoder_follows_the_event_stream_rules():
    from moonborn._sse import RawEvent, SSEDecoder

    decoder = SSEDecoder()
    lines = [
        "retry: 3000",
        "id: 1",
        "event: token",
        'data: {"delta":"a"}',
        "",
        ": heartbeat",
        "",
        "id: 2",
        "",
        "data: line one",
        "data:line two",
        "",
    ]
    out = [event for line in lines if (event := decoder.feed(line)) is not None]
    # A comment and an id-only block dispatch nothing; the id carries over, as in EventSource.
    assert out == [RawEvent("1", "token", '{"delta":"a"}'), RawEvent("2", "message", "line one\nline two")]
    assert decoder.retry_ms == 3000
