"""Provider outages end to end: a uvicorn server whose upstream is the fake OpenAI server.

A 429's `Retry-After` is waited out, one upstream call per try; ten failed calls in a row open the provider's breaker,
which refuses new runs with a fast 503 (no upstream call, nothing stored) and ends a run already going with an `error`
event, until a probe call after the cool-down succeeds.
"""

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.e2e.helpers import JSON, SSE, make_persona, make_session, messages, parse_wire, wait_for
from tests.fakes.upstream import Answer, Behaviour, Fail, FakeUpstream, words

TIMEOUT = 5.0
COOL_DOWN = 2.0
PROMPT = "A retired lighthouse keeper on a windy northern island"
REPLY = words("*sets down the lamp oil* The gale came at dusk, and I kept the light burning till dawn.")


@pytest.fixture(scope="module")
def upstream(server_factory: Any) -> Iterator[tuple[FakeUpstream, LiveServer]]:
    fake = FakeUpstream("openai").start()
    server = server_factory(
        MOONBORN_LLM_PROVIDER="openai",
        MOONBORN_LLM_BASE_URL=fake.url,
        MOONBORN_LLM_API_KEY="test",
        MOONBORN_LLM_MODEL="fake-model",
        MOONBORN_LLM_TIMEOUT_SECONDS=str(TIMEOUT),
        MOONBORN_LLM_MAX_RETRIES="2",
        # MOONBORN_LLM_BREAKER_FAILURES stays at its default, 10.
        MOONBORN_LLM_BREAKER_SECONDS=str(COOL_DOWN),
    )
    yield fake, server
    server.stop()
    fake.stop()


def prose(body: dict[str, Any]) -> Behaviour:
    # Every pipeline step and calibration reply answered in prose: the persona is made from the fallbacks.
    return Answer(words("Aye, the light is kept."))


@pytest.fixture(scope="module")
def persona_id(upstream: tuple[FakeUpstream, LiveServer]) -> str:
    fake, server = upstream
    fake.reset(prose)
    return make_persona(server, prompt=PROMPT)


def reply_url(session_id: str) -> str:
    return f"/v1/chat/sessions/{session_id}/messages"


def test_a_429_with_retry_after_is_waited_out_and_the_reply_streams(
    upstream: tuple[FakeUpstream, LiveServer], persona_id: str
) -> None:
    fake, server = upstream
    session_id = make_session(server, persona_id)
    fake.reset(lambda body: Answer(REPLY), Fail(429, retry_after="1"), Fail(429, retry_after="1"))
    started = time.monotonic()
    with server.client() as client:
        response = client.post(reply_url(session_id), json={"content": "Storm tonight?"}, headers=SSE)
    elapsed = time.monotonic() - started
    events, _ = parse_wire(response.content)
    assert events[-1].event == "completed"
    assert [e.data["delta"] for e in events if e.event == "token"] == list(REPLY)
    # One upstream call per try, each a second (the upstream's Retry-After) after the one before.
    assert len(fake.calls) == 3
    gaps = [later.opened_at - earlier.opened_at for earlier, later in zip(fake.calls, fake.calls[1:], strict=False)]
    assert all(1.0 <= gap < 1.4 for gap in gaps), gaps
    assert 2.0 <= elapsed < TIMEOUT
    reply = messages(server, session_id)[-1]
    assert (reply["status"], reply["content"]) == ("completed", "".join(REPLY))


def test_ten_failed_calls_open_the_breaker_until_a_probe_succeeds(
    upstream: tuple[FakeUpstream, LiveServer], persona_id: str
) -> None:
    fake, server = upstream
    sessions = [make_session(server, persona_id) for _ in range(11)]

    # A persona generation that is going when the breaker opens: its first step sends one token, then waits.
    hold = threading.Event()

    def outage(body: dict[str, Any]) -> Behaviour:
        # Pipeline steps ask for a JSON schema; chat replies never do.
        if "response_format" in body:
            return Answer(words("Meet Old Brann, who kept the light at Skerry Head."), hold=hold)
        return Fail(500)

    fake.reset(outage)

    def generate() -> httpx.Response:
        with server.client() as client:
            return client.post("/v1/personas?stream=true", json={"prompt": PROMPT}, timeout=60)

    def reply(session_id: str) -> httpx.Response:
        with server.client() as client:
            return client.post(reply_url(session_id), json={"content": "Storm?"}, headers=JSON)

    with ThreadPoolExecutor(max_workers=11) as pool:
        generation = pool.submit(generate)
        wait_for(lambda: any(call.sent for call in fake.calls), timeout=10)
        # Ten replies at once, each one call of three tries (MOONBORN_LLM_MAX_RETRIES=2): ten failed calls in a row.
        failed = list(pool.map(reply, sessions[:10]))
        assert [(r.status_code, r.json()["error"]["code"]) for r in failed] == [(502, "provider_error")] * 10
        assert len(fake.calls) == 1 + 10 * 3

        # Open: a reply (streamed, through the ASGI view; or JSON, through Django's) and a generation are refused at
        # once, with no upstream call and nothing stored.
        before = messages(server, sessions[10])
        with server.client() as client:
            personas_before = [p["id"] for p in client.get("/v1/personas").json()["results"]]
        refusals: list[tuple[httpx.Response, float]] = []
        with server.client() as client:
            for path, body, headers in [
                (reply_url(sessions[10]), {"content": "Anyone there?"}, SSE),
                (reply_url(sessions[10]), {"content": "Anyone there?"}, JSON),
                ("/v1/personas?stream=true", {"prompt": PROMPT}, SSE),
            ]:
                asked = time.monotonic()
                response = client.post(path, json=body, headers=headers)
                refusals.append((response, time.monotonic() - asked))
        refused_at = time.monotonic()
        for response, took in refusals:
            assert response.status_code == 503, response.text
            assert response.headers["Content-Type"] == "application/json"
            wait = response.headers["Retry-After"]
            assert wait in ("1", "2")
            assert response.json() == {
                "error": {
                    "code": "provider_unavailable",
                    "message": f"The openai model provider is unavailable after repeated failures; retry in {wait} "
                    "seconds.",
                    "details": {},
                }
            }
            assert took < 0.5, took
        assert len(fake.calls) == 31
        assert messages(server, sessions[10]) == before
        with server.client() as client:
            assert [p["id"] for p in client.get("/v1/personas").json()["results"]] == personas_before

        # The generation going on: its first step ends, and its next call is refused with an `error` event.
        hold.set()
        events, _ = parse_wire(generation.result(timeout=30).content)
    assert [(e.event, e.data.get("step")) for e in events] == [
        ("pipeline.started", None),
        ("step.started", "soul_draft"),
        ("step.completed", "soul_draft"),
        ("step.started", "lore_weave"),
        ("error", None),
    ]
    error = events[-1].data
    assert (error["code"], error["retryable"]) == ("provider_unavailable", True)
    assert error["error"].startswith("The openai model provider is unavailable after repeated failures; retry in ")
    assert len(fake.calls) == 31
    with server.client() as client:
        persona = client.get(f"/v1/personas/{events[0].data['personaId']}").json()
    assert (persona["status"], persona["error"]) == ("failed", error["error"])

    # After the cool-down, the next reply's call is the probe: it succeeds, and calls go through again.
    time.sleep(max(0.0, refused_at + int(refusals[-1][0].headers["Retry-After"]) - time.monotonic()))
    fake.reset(lambda body: Answer(REPLY))
    for session_id in (sessions[10], sessions[0]):
        response = reply(session_id)
        assert response.status_code == 201, response.text
        assert response.json()["content"] == "".join(REPLY)
    assert len(fake.calls) == 2
