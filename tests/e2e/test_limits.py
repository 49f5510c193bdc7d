"""MOONBORN_MAX_STREAMS_PER_KEY: one run too many gets 429 with Retry-After, and changes nothing."""

import asyncio
import time

import httpx

from tests.conftest import LiveServer
from tests.e2e.helpers import JSON, make_persona, make_session, messages
from tests.e2e.test_disconnect import read_until


def test_one_run_too_many_is_429(server_factory):
    server = server_factory(
        MOONBORN_MAX_STREAMS_PER_KEY="1", MOONBORN_DEMO_DELAY_MS="30", MOONBORN_DEMO_REPLY_TOKENS="200"
    )
    session_id = make_session(server, make_persona(server))
    other_session = make_session(server, make_persona(server, prompt="A second baker"))
    with (
        server.client() as client,
        client.stream(
            "POST", f"/v1/chat/sessions/{session_id}/messages?stream=true", json={"content": "Busy?"}
        ) as response,
    ):
        chunks = response.iter_raw()
        read_until(chunks, 2)
        refused = client.post(f"/v1/chat/sessions/{other_session}/messages", json={"content": "Me too"}, headers=JSON)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "rate_limited"
        assert messages(server, other_session) == []
        # Bob's runs are counted apart from alice's.
        with server.client("bob") as bob:
            assert bob.post("/v1/personas", json={"prompt": "A bob persona"}, headers=JSON).status_code == 201
    # The closed stream cancelled its run (within a second): alice may start another.
    time.sleep(1.0)
    with server.client() as client:
        reply = client.post(f"/v1/chat/sessions/{other_session}/messages", json={"content": "Now?"}, headers=JSON)
    assert reply.status_code == 201


# -- a burst: the limit is checked and taken in one step ------------------------------------------------

BURST = 200
BURST_LIMIT = "5"
# Runs that outlast the burst: every accepted one is still going when the last request is answered.
SLOW_RUNS = {
    "MOONBORN_MAX_STREAMS_PER_KEY": BURST_LIMIT,
    "MOONBORN_DEMO_DELAY_MS": "40",
    "MOONBORN_DEMO_REPLY_TOKENS": "400",
}


async def _burst(base_urls: list[str], key: str, requests: list[tuple[str, dict[str, str]]]) -> list[int]:
    """Send every POST at once (spread over `base_urls`), each asking for a stream; hold every stream that opened
    until all are answered, then close them; return the statuses in order."""
    limits = httpx.Limits(max_connections=len(requests) + 10)
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    clients = [httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) for url in base_urls]
    try:
        built = [
            clients[n % len(clients)].build_request("POST", path, json=body) for n, (path, body) in enumerate(requests)
        ]
        responses = await asyncio.gather(
            *(clients[n % len(clients)].send(request, stream=True) for n, request in enumerate(built))
        )
        statuses = [response.status_code for response in responses]
        for response in responses:
            await response.aclose()
        return statuses
    finally:
        for client in clients:
            await client.aclose()


def _persona_count(server: LiveServer) -> int:
    with server.client() as client:
        return sum(1 for _ in client.get("/v1/personas?limit=200").json()["results"])


def test_two_hundred_persona_posts_at_once_start_exactly_the_limit(server_factory):
    server = server_factory(**SLOW_RUNS)
    before = _persona_count(server)
    requests = [("/v1/personas?stream=true", {"prompt": f"A burst persona {n}"}) for n in range(BURST)]
    statuses = asyncio.run(_burst([server.base_url], server.keys["alice"], requests))
    assert sorted(statuses) == [200] * 5 + [429] * (BURST - 5)
    assert _persona_count(server) == before + 5


def test_two_hundred_chat_posts_at_once_start_exactly_the_limit(server_factory):
    # bob: alice's persona runs of the test above may still be going on this server.
    server = server_factory(**SLOW_RUNS)
    persona_id = make_persona(server, user="bob", prompt="A burst listener")
    with server.client("bob") as client:
        sessions = [client.post("/v1/chat/sessions", json={"personaId": persona_id}).json()["id"] for _ in range(BURST)]
    requests = [(f"/v1/chat/sessions/{session}/messages?stream=true", {"content": "Hello?"}) for session in sessions]
    statuses = asyncio.run(_burst([server.base_url], server.keys["bob"], requests))
    assert sorted(statuses) == [200] * 5 + [429] * (BURST - 5)
    replied = [session for session in sessions if messages(server, session, user="bob")]
    assert len(replied) == 5


def test_two_hundred_posts_at_once_across_two_workers_start_exactly_the_limit(cluster_factory):
    cluster = cluster_factory(2, **SLOW_RUNS)
    requests = [("/v1/personas?stream=true", {"prompt": f"A burst persona {n}"}) for n in range(BURST)]
    statuses = asyncio.run(_burst([worker.base_url for worker in cluster.workers], cluster.keys["alice"], requests))
    assert sorted(statuses) == [200] * 5 + [429] * (BURST - 5)
    assert _persona_count(cluster.workers[0]) == 5
