"""Drift end to end: a persona built from what a prose-answering model wrote, tier 0 in `completed`, tier 1 after it
(and after a worker died), against real uvicorn servers and a real HTTP fake upstream."""

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench.drift_set import FIXTURES
from personas.steps import CALIBRATION_TURNS
from tests.conftest import LiveServer, start_uvicorn
from tests.e2e.helpers import JSON, SSE, make_persona, make_session, messages, parse_wire, wait_for
from tests.e2e.test_providers import step_of
from tests.fakes.upstream import Answer, Behaviour, FakeUpstream, words

LABELLED = json.loads((FIXTURES / "labelled.json").read_text(encoding="utf-8"))
HELD_OUT = json.loads((FIXTURES / "held_out.json").read_text(encoding="utf-8"))
QUILLON = next(p for p in LABELLED["personas"] if p["name"] == "Mara Quillon")
# Six replies in the voice the prose gave, six generic-assistant ones: the held-out part of the labelled set.
IN_VOICE = HELD_OUT["personas"]["Mara Quillon"]["in_character"][:6]
GENERIC = HELD_OUT["personas"]["Mara Quillon"]["generic"][:6]


def last_user_message(body: dict[str, Any]) -> str:
    return next(str(m["content"]) for m in reversed(body["messages"]) if m["role"] == "user")


def prose_model(body: dict[str, Any]) -> Behaviour:
    """A model that ignores `response_format`: every pipeline step in prose, chat replies by the user's message."""
    step = step_of(body)
    if step is not None:
        return Answer(words(QUILLON["steps"][step]))
    said = last_user_message(body)
    if said in CALIBRATION_TURNS:
        return Answer(words(QUILLON["calibration_replies"][CALIBRATION_TURNS.index(said)]))
    scripted = {item["user"]: item["reply"] for item in IN_VOICE + GENERIC}
    return Answer(words(scripted.get(said, "The glass is falling. Tea first.")))


@pytest.fixture(scope="module")
def prose_upstream(server_factory: Any) -> Iterator[tuple[FakeUpstream, LiveServer]]:
    fake = FakeUpstream("openai").start()
    fake.reset(prose_model)
    server = server_factory(
        MOONBORN_LLM_PROVIDER="openai",
        MOONBORN_LLM_BASE_URL=fake.url,
        MOONBORN_LLM_API_KEY="test",
        MOONBORN_LLM_MODEL="small-local-model",
    )
    yield fake, server
    server.stop()
    fake.stop()


def test_a_persona_answered_in_prose_carries_what_the_model_wrote_and_drift_holds_on_it(
    prose_upstream: tuple[FakeUpstream, LiveServer],
) -> None:
    fake, server = prose_upstream
    fake.reset(prose_model)
    with server.client() as client:
        response = client.post("/v1/personas", json={"prompt": QUILLON["prompt"]}, headers=JSON, timeout=120)
        assert response.status_code == 201, response.text
        persona = response.json()
    # The persona is the lighthouse keeper the model described, not a template around the prompt.
    card = persona["card"]
    assert persona["name"] == card["name"] == "Mara Quillon"
    assert "Skerrow" in card["description"] and QUILLON["prompt"] not in card["description"]
    assert card["firstMes"].startswith("*looks up from the logbook") or "Margit" in card["firstMes"]
    assert "Mind the sky, not the screen." in persona["systemPrompt"] or "Mara Quillon" in persona["systemPrompt"]
    steps = {s["step"]: s for s in persona["steps"]}
    assert not {"name", "hook"} & set(steps["soul_draft"]["fallbackFields"])
    assert not {"first_message", "alternate_greetings", "examples"} & set(steps["dialogue_seed"]["fallbackFields"])
    # Six steps, then the calibration turns, each asked of the model once, in character.
    chat_calls = [c for c in fake.calls if step_of(c.body) is None]
    assert sorted(last_user_message(c.body) for c in chat_calls) == sorted(CALIBRATION_TURNS)
    # The calibration replies are asked with the prompt a chat reply gets: the system prompt, then the card's fields.
    assert all(c.body["messages"][0]["content"].startswith(persona["systemPrompt"]) for c in chat_calls)
    assert all(card["description"] in c.body["messages"][0]["content"] for c in chat_calls)

    session = make_session(server, persona["id"])
    flagged = {"in voice": 0, "generic": 0}
    with server.client() as client:
        for kind, items in (("in voice", IN_VOICE), ("generic", GENERIC)):
            for item in items:
                response = client.post(
                    f"/v1/chat/sessions/{session}/messages", json={"content": item["user"]}, headers=SSE, timeout=60
                )
                events, _ = parse_wire(response.content)
                assert [e.event for e in events][-1] == "completed"
                text = "".join(e.data["delta"] for e in events if e.event == "token")
                # (compared as a flag, so a failure does not print the held-out reply)
                same = " ".join(text.split()) == " ".join(item["reply"].split())
                assert same, "the stream is not the upstream's reply"
                flagged[kind] += events[-1].data["drifted"]
    assert flagged["in voice"] <= 1, flagged
    assert flagged["generic"] >= 5, flagged


def test_tier1_scores_arrive_after_completed_and_show_in_the_messages(server: LiveServer) -> None:
    persona = make_persona(server, prompt="A retired lighthouse keeper on a windy northern island")
    session = make_session(server, persona)
    completed = []
    with server.client() as client:
        for text in ("Tell me about the lamp.", "What do you miss most?"):
            events, _ = parse_wire(
                client.post(f"/v1/chat/sessions/{session}/messages", json={"content": text}, headers=SSE).content
            )
            assert [e.event for e in events][:1] == ["message.started"] and events[-1].event == "completed"
            assert set(events[-1].data) == {"messageId", "driftScore", "driftThreshold", "drifted"}
            completed.append(events[-1].data)

    def scored() -> bool:
        return all(m["driftTier1"] is not None for m in messages(server, session) if m["role"] == "assistant")

    wait_for(scored, timeout=30, interval=0.2)
    replies = [m for m in messages(server, session) if m["role"] == "assistant"]
    for reply, event in zip(replies, completed, strict=True):
        assert reply["id"] == event["messageId"]
        assert (reply["driftScore"], reply["driftThreshold"], reply["drifted"]) == (
            event["driftScore"],
            event["driftThreshold"],
            event["drifted"],
        )
        tier1 = reply["driftTier1"]
        assert set(tier1) == {"status", "score", "threshold", "drifted", "scoredAt"}
        # No backlog here: every reply is scored by the full model, none passed over by the cascade.
        assert tier1["status"] == "scored"
        assert 0.0 <= tier1["score"] <= 1.0 and tier1["drifted"] == (tier1["score"] > tier1["threshold"])


def test_replies_whose_worker_died_before_tier1_ran_are_scored_after_a_restart(
    server_factory: Any, tmp_path: Any
) -> None:
    # No tier-1 worker in the first process: its replies' tier-1 jobs wait in the database.
    server = server_factory(
        MOONBORN_DRIFT_TIER1_WORKER="false", MOONBORN_DEMO_DELAY_MS="20", MOONBORN_DEMO_REPLY_TOKENS="400"
    )
    persona = make_persona(server)
    session = make_session(server, persona)
    with server.client() as client:
        done = client.post(
            f"/v1/chat/sessions/{session}/messages?on_disconnect=continue", json={"content": "Hi"}, headers=SSE,
            timeout=60,
        )  # fmt: skip
        assert parse_wire(done.content)[0][-1].event == "completed"
        with client.stream(
            "POST", f"/v1/chat/sessions/{session}/messages?on_disconnect=continue", json={"content": "And?"},
            headers=SSE,
        ) as response:  # fmt: skip
            for chunk in response.iter_raw():
                if chunk.count(b"event: token") >= 1:
                    break
            time.sleep(0.3)
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait()
    restarted = start_uvicorn(server.env | {"MOONBORN_DRIFT_TIER1_WORKER": "true"}, tmp_path, server.keys)
    try:

        def replies() -> list[dict[str, Any]]:
            return [m for m in messages(restarted, session) if m["role"] == "assistant"]

        wait_for(lambda: all(r["driftTier1"] is not None for r in replies()), timeout=60, interval=0.25)
        finished, killed = replies()
        assert finished["status"] == "completed" and killed["status"] == "failed"
        assert killed["content"] and killed["driftScore"] is None
        for reply in (finished, killed):
            assert 0.0 <= reply["driftTier1"]["score"] <= 1.0
    finally:
        restarted.stop()
