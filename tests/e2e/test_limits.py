"""MOONBORN_MAX_STREAMS_PER_KEY: one run too many gets 429 with Retry-After, and changes nothing."""

import time

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
