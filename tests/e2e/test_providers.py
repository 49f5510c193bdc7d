"""Moonborn with real providers: a uvicorn server whose upstream is a fake OpenAI or Anthropic server.

The fakes (tests/fakes/upstream.py) are real HTTP servers on loopback speaking the real wire formats,
so these tests go through the official SDKs, their HTTP clients and real sockets.
"""

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llm.demo import step_output
from personas.steps import CALIBRATION_TURNS, STEP_FIELDS, STEP_GUIDANCE, STEPS
from tests.conftest import ROOT, LiveServer, free_port
from tests.e2e.helpers import JSON, LORE_TOOL, SSE, make_persona, make_session, messages, parse_wire, wait_for
from tests.fakes.upstream import MODEL_SUFFIX, Answer, Behaviour, Drop, Fail, FakeUpstream, Hang, prompt_tokens, words

TIMEOUT = 2.0
REPLY = words("*sets down the lamp oil* The gale came at dusk, and I kept the light burning till dawn.")
PROMPT = "A retired lighthouse keeper on a windy northern island"


def step_of(body: dict[str, Any]) -> str | None:
    """Which pipeline step a request is for, from its system text (None for a chat reply)."""
    system = str(body.get("system", "")) + "".join(
        str(m["content"]) for m in body.get("messages", []) if m.get("role") == "system"
    )
    return next((step for step in STEPS if STEP_GUIDANCE[step] in system), None)


def json_answers(body: dict[str, Any]) -> Behaviour:
    step = step_of(body)
    if step is None:
        return Answer(REPLY)
    return Answer(words(json.dumps(step_output(step, {"prompt": PROMPT}))))


@pytest.fixture(scope="module", params=["openai", "anthropic"])
def upstream(request: pytest.FixtureRequest, server_factory: Any) -> Iterator[tuple[FakeUpstream, LiveServer]]:
    fake = FakeUpstream(request.param).start()
    server = server_factory(
        MOONBORN_LLM_PROVIDER=request.param,
        MOONBORN_LLM_BASE_URL=fake.url,
        MOONBORN_LLM_API_KEY="test",
        MOONBORN_LLM_MODEL="fake-model",
        MOONBORN_LLM_TIMEOUT_SECONDS=str(TIMEOUT),
        MOONBORN_LLM_MAX_RETRIES="1",
    )
    fake.reset(json_answers)
    yield fake, server
    server.stop()
    fake.stop()


def usage_for(server: LiveServer, run_id: str) -> dict[str, Any]:
    with server.client() as client:
        records = client.get("/v1/usage").json()["results"]
    return dict(next(r for r in records if r["runId"] == run_id))


def test_persona_and_chat_stream_the_upstreams_tokens(upstream: tuple[FakeUpstream, LiveServer]) -> None:
    fake, server = upstream
    fake.reset(json_answers)
    with server.client() as client:
        response = client.post("/v1/personas?stream=true", json={"prompt": PROMPT}, timeout=60)
    events, _ = parse_wire(response.content)
    persona_id = events[0].data["personaId"]
    expected = [("pipeline.started", {"personaId": persona_id})]
    for step in STEPS:
        expected += [
            ("step.started", {"step": step}),
            ("step.completed", {"step": step, "model": "fake-model" + MODEL_SUFFIX}),
        ]
    expected.append(("pipeline.completed", {"personaId": persona_id}))
    assert [(e.event, {k: v for k, v in e.data.items() if k != "durationMs"}) for e in events] == expected
    # The six steps, then the persona's own model answering the calibration turns in character (drift's samples).
    assert [step_of(c.body) for c in fake.calls] == [*STEPS, *[None] * len(CALIBRATION_TURNS)]
    # (Anthropic's API has the post-history instructions in the user's turn, after a blank line.)
    asked = [next(m["content"] for m in reversed(c.body["messages"]) if m["role"] == "user") for c in fake.calls[6:]]
    assert sorted(a.split("\n\n")[0] for a in asked) == sorted(CALIBRATION_TURNS)
    with server.client() as client:
        persona = client.get(f"/v1/personas/{persona_id}").json()
    assert persona["status"] == "ready"
    # Every answer parsed; only card_compile's personality was empty (the fake answers each step alone).
    assert [s["fallbackFields"] for s in persona["steps"]] == [[], [], [], [], [], ["personality"]]
    # The stored steps carry the upstream's model name too, as the events did.
    assert {s["model"] for s in persona["steps"]} == {"fake-model" + MODEL_SUFFIX}

    session_id = make_session(server, persona_id)
    fake.reset()
    with server.client() as client:
        response = client.post(
            f"/v1/chat/sessions/{session_id}/messages", json={"content": "Tell me of the gale."}, headers=SSE
        )
    events, _ = parse_wire(response.content)
    assert [e.event for e in events] == ["message.started", *LORE_TOOL, *["token"] * len(REPLY), "completed"]
    assert [e.data["delta"] for e in events[3:-1]] == list(REPLY)
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    message_id = events[0].data["messageId"]
    reply = messages(server, session_id)[-1]
    assert (reply["id"], reply["status"], reply["content"]) == (message_id, "completed", "".join(REPLY))
    usage = usage_for(server, message_id)
    assert (usage["status"], usage["promptTokens"], usage["completionTokens"]) == (
        "completed",
        prompt_tokens(fake.calls[0].body),
        len(REPLY),
    )


def test_a_client_disconnect_closes_the_upstream_within_a_second(upstream: tuple[FakeUpstream, LiveServer]) -> None:
    fake, server = upstream
    fake.reset(json_answers)
    session_id = make_session(server, make_persona(server, prompt=PROMPT))
    long_reply = words(" ".join(f"word{i}" for i in range(400)))
    fake.reset(None, Answer(long_reply, delay=0.03))
    client = httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=30)
    with client.stream(
        "POST", f"/v1/chat/sessions/{session_id}/messages", json={"content": "Talk to me"}, headers=SSE
    ) as response:
        body = b""
        for chunk in response.iter_raw():
            body += chunk
            # message.started, the lorebook's tool_start and tool_end, then five tokens.
            if body.count(b"\n\n") >= 8:
                break
        closed_at = time.monotonic()
    client.close()
    events, _ = parse_wire(body[: body.rindex(b"\n\n") + 2])
    message_id = events[0].data["messageId"]
    call = fake.calls[0]
    fake.wait_over(call, 2.0)
    assert call.closed_at is not None
    assert call.finished_at is None
    assert call.closed_at - closed_at < 1.0
    wait_for(lambda: messages(server, session_id)[-1]["status"] == "cancelled", timeout=3)
    reply = messages(server, session_id)[-1]
    assert reply["id"] == message_id
    assert reply["content"] == "".join(long_reply[: len(reply["content"].split())])
    # The usage record stops at the cancel: one token per delta the upstream sent before it.
    usage = usage_for(server, message_id)
    assert usage["status"] == "cancelled"
    assert 5 <= usage["completionTokens"] == len(reply["content"].split()) <= len(call.sent) < 100
    time.sleep(0.5)
    assert usage_for(server, message_id) == usage
    assert len(fake.calls) == 1


FAILURES = [
    pytest.param([Fail(500), Fail(500)], 0, "provider_error", "model provider answered HTTP 500.", id="http-500"),
    pytest.param([Fail(429), Fail(429)], 0, "provider_error", "is rate limiting requests (HTTP 429).", id="http-429"),
    pytest.param([Drop(REPLY[:5])], 5, "provider_error", "model provider failed or was dropped.", id="dropped"),
    pytest.param(
        [Hang()], 0, "provider_timeout", f"did not send its first token within {TIMEOUT:g} seconds.", id="hang"
    ),
]


@pytest.mark.parametrize(("script", "n_tokens", "code", "sentence"), FAILURES)
def test_upstream_failures_end_the_stream_with_an_error_event(
    upstream: tuple[FakeUpstream, LiveServer], script: list[Behaviour], n_tokens: int, code: str, sentence: str
) -> None:
    fake, server = upstream
    fake.reset(json_answers)
    session_id = make_session(server, make_persona(server, prompt=PROMPT))
    fake.reset(lambda body: Answer(REPLY), *script)
    started = time.monotonic()
    with server.client() as client:
        response = client.post(f"/v1/chat/sessions/{session_id}/messages", json={"content": "Storm?"}, headers=SSE)
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT + 2
    events, _ = parse_wire(response.content)
    assert [e.event for e in events] == ["message.started", *LORE_TOOL, *["token"] * n_tokens, "error"]
    assert [e.data["delta"] for e in events[3:-1]] == list(REPLY[:n_tokens])
    error = events[-1].data
    assert (error["code"], error["retryable"]) == (code, True)
    assert error["error"].endswith(sentence), error
    message_id = events[0].data["messageId"]
    reply = messages(server, session_id)[-1]
    assert (reply["id"], reply["status"], reply["content"]) == (message_id, "failed", "".join(REPLY[:n_tokens]))
    assert usage_for(server, message_id)["status"] == "failed"
    # Nothing is left open upstream, and nothing is left running here: the session takes a new message.
    for call in fake.calls:
        fake.wait_over(call, 1.0)
    assert len(fake.calls) == len(script)
    with server.client() as client:
        again = client.post(f"/v1/chat/sessions/{session_id}/messages", json={"content": "Again?"}, headers=JSON)
    assert again.status_code == 201, again.text
    assert again.json()["content"] == "".join(REPLY)


@pytest.mark.parametrize(
    ("script", "status", "code"),
    [
        pytest.param([Fail(503), Fail(503)], 502, "provider_error", id="http-503"),
        pytest.param([Hang()], 504, "provider_timeout", id="hang"),
    ],
)
def test_json_callers_get_the_provider_status(
    upstream: tuple[FakeUpstream, LiveServer], script: list[Behaviour], status: int, code: str
) -> None:
    fake, server = upstream
    fake.reset(json_answers)
    session_id = make_session(server, make_persona(server, prompt=PROMPT))
    fake.reset(lambda body: Answer(REPLY), *script)
    with server.client() as client:
        response = client.post(f"/v1/chat/sessions/{session_id}/messages", json={"content": "Storm?"}, headers=JSON)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert messages(server, session_id)[-1]["status"] == "failed"


def prose_answers(body: dict[str, Any]) -> Behaviour:
    step = step_of(body)
    if step is None:
        return Answer(REPLY)
    text = {
        "soul_draft": "Meet Old Brann, who kept the light at Skerry Head for forty winters.",
        "lore_weave": "He was born to fisherfolk. His brother drowned young, and the lamp became his penance.",
        "psyche_profile": "Gruff, loyal and secretly sentimental; he hates idle talk and loves a well-trimmed wick.",
        "voice_print": "He talks in short, salt-worn sentences and says 'aye' more than he needs to.",
        "dialogue_seed": "Aye, come in out of the wind. Mind the step, it's seen more storms than you.",
        "card_compile": "A weathered keeper who talks little and watches the sea a great deal.",
    }[step]
    return Answer(words(text))


def test_the_pipeline_completes_when_every_step_answers_in_prose(upstream: tuple[FakeUpstream, LiveServer]) -> None:
    fake, server = upstream
    fake.reset(prose_answers)
    # A server without structured output: the openai provider must fall back to asking for prose.
    fake.reject_response_format = True
    with server.client() as client:
        response = client.post("/v1/personas?stream=true", json={"prompt": PROMPT}, timeout=60)
    events, _ = parse_wire(response.content)
    assert [e.event for e in events] == [
        "pipeline.started",
        *["step.started", "step.completed"] * 6,
        "pipeline.completed",
    ]
    persona_id = events[0].data["personaId"]
    with server.client() as client:
        persona = client.get(f"/v1/personas/{persona_id}").json()
    assert persona["status"] == "ready"
    steps = {s["step"]: s for s in persona["steps"]}
    # Nothing parsed as JSON: the prose gave the name, the hook and the backstory, in the model's own words; the
    # rest came from the fallbacks, and each step says which.
    assert steps["soul_draft"]["output"]["name"] == "Old Brann"
    assert (
        steps["soul_draft"]["output"]["hook"] == "Meet Old Brann, who kept the light at Skerry Head for forty winters."
    )
    assert steps["soul_draft"]["fallbackFields"] == [f for f in STEP_FIELDS["soul_draft"] if f not in ("name", "hook")]
    assert steps["lore_weave"]["output"]["backstory"] == (
        "He was born to fisherfolk. His brother drowned young, and the lamp became his penance."
    )
    assert all(s["fallbackFields"] for s in persona["steps"])
    assert persona["systemPrompt"].startswith("You are Old Brann. Stay in character as Old Brann")
    asked_for_json = ["response_format" in c.body for c in fake.calls]
    calibration = [False] * len(CALIBRATION_TURNS)  # chat replies: never asked for JSON
    if fake.flavour == "openai":
        # The first step asked for a JSON schema, was refused (HTTP 400), and asked again for prose;
        # every later step asked for prose straight away.
        assert asked_for_json == [True] + [False] * 6 + calibration
    else:
        assert asked_for_json == [False] * 6 + calibration
    session_id = make_session(server, persona_id)
    with server.client() as client:
        reply = client.post(f"/v1/chat/sessions/{session_id}/messages", json={"content": "Evening."}, headers=JSON)
    assert reply.status_code == 201, reply.text
    assert reply.json()["content"] == "".join(REPLY)


def start_uvicorn(**overrides: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOONBORN_", "OPENAI_", "ANTHROPIC_"))}
    env.update(overrides)
    command = [sys.executable, "-m", "uvicorn", "moonborn_site.asgi:application", "--port", str(free_port())]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("overrides", "sentence"),
    [
        pytest.param(
            {"MOONBORN_LLM_PROVIDER": "openai"},
            "MOONBORN_LLM_PROVIDER=openai needs an API key: set MOONBORN_LLM_API_KEY (or OPENAI_API_KEY), "
            "or set MOONBORN_LLM_BASE_URL to a local OpenAI-compatible server.",
            id="openai-without-key",
        ),
        pytest.param(
            {"MOONBORN_LLM_PROVIDER": "anthropic"},
            "MOONBORN_LLM_PROVIDER=anthropic needs an API key: set MOONBORN_LLM_API_KEY (or ANTHROPIC_API_KEY).",
            id="anthropic-without-key",
        ),
        pytest.param(
            {"MOONBORN_LLM_PROVIDER": "llama"},
            "MOONBORN_LLM_PROVIDER='llama' is not a provider Moonborn knows; use one of: demo, openai, anthropic.",
            id="unknown-provider",
        ),
    ],
)
def test_bad_provider_settings_stop_the_server_with_one_sentence(overrides: dict[str, str], sentence: str) -> None:
    done = start_uvicorn(**overrides)
    assert done.returncode != 0
    assert done.stderr == f"Moonborn cannot start: {sentence}\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOONBORN_", "OPENAI_", "ANTHROPIC_"))}
    check = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env={**env, **overrides}, capture_output=True, text=True
    )
    assert check.returncode != 0
    assert f"(moonborn.E001) {sentence}" in check.stderr


def test_drift_scoring_can_embed_through_the_openai_compatible_server(server_factory: Any) -> None:
    fake = FakeUpstream("openai").start()
    try:
        fake.reset(json_answers)
        server = server_factory(
            MOONBORN_LLM_PROVIDER="openai",
            MOONBORN_LLM_BASE_URL=fake.url,
            MOONBORN_LLM_API_KEY="test",
            MOONBORN_LLM_MODEL="fake-model",
            MOONBORN_EMBEDDINGS="openai",
            MOONBORN_EMBEDDINGS_MODEL="fake-embed",
        )
        session_id = make_session(server, make_persona(server, prompt=PROMPT))
        with server.client() as client:
            reply = client.post(f"/v1/chat/sessions/{session_id}/messages", json={"content": "Evening."}, headers=JSON)
        assert reply.status_code == 201, reply.text
        assert reply.json()["content"] == "".join(REPLY)
        assert 0.0 <= reply.json()["driftScore"] <= 1.0  # tier 0: the static table, no upstream call

        def tier1() -> Any:
            return messages(server, session_id)[-1]["driftTier1"]

        # Tier 1 embeds through the upstream, after the reply: the persona's texts (its calibration), then the
        # finished reply, alone.
        wait_for(lambda: tier1() is not None, timeout=30, interval=0.2)
        embedded = [c.body["input"] for c in fake.calls if c.path == "/v1/embeddings"]
        assert {c.body["model"] for c in fake.calls if c.path == "/v1/embeddings"} == {"fake-embed"}
        assert embedded[-1] == ["".join(REPLY)]
        assert 0.0 <= tier1()["score"] <= 1.0
        server.stop()
    finally:
        fake.stop()
