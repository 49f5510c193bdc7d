"""An imported card's character and lorebook reach the model, and the stream shows the lorebook being consulted.

Through the real HTTP fake OpenAI-compatible upstream: the prompt it receives, and the `tool_start`/`tool_end`
events of the `lorebook` tool before the first token, resumable like every event.
"""

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.e2e.helpers import JSON, SSE, make_session, parse_wire
from tests.fakes.upstream import Answer, FakeUpstream, words

REPLY = words("*wipes the brass* The light has not gone out in forty winters.")
# A community-style card: empty system_prompt, macros everywhere, a lorebook of three entries.
CARD = {
    "spec": "chara_card_v3",
    "spec_version": "3.0",
    "data": {
        "name": "Mara Quillon",
        "description": "{{char}} keeps the lighthouse on Skerry Rock and trusts no weather app.",
        "personality": "gruff, dry, loyal to {{user}} once earned",
        "scenario": "{{user}} rows out to Skerry Rock in a squall and knocks on {{char}}'s door.",
        "first_mes": "*opens the door a crack* You picked a fine night, {{user}}.",
        "mes_example": "<START>\n{{user}}: Is it safe?\n{{char}}: Nothing out here is safe. Come in.",
        "system_prompt": "",
        "post_history_instructions": "",
        "creator_notes": "",
        "alternate_greetings": [],
        "tags": ["lighthouse"],
        "creator": "someone",
        "character_version": "1",
        "extensions": {"talkativeness": "0.5", "fav": False},
        "character_book": {
            "name": "Skerry Rock",
            "scan_depth": 4,
            "token_budget": 500,
            "recursive_scanning": False,
            "extensions": {},
            "entries": [
                {
                    "id": 1,
                    "keys": ["lighthouse"],
                    "content": "The Skerry Rock lighthouse was built in 1871; {{char}} winds its clockwork by hand.",
                    "enabled": True,
                    "insertion_order": 10,
                    "case_sensitive": False,
                    "constant": False,
                    "position": "after_char",
                    "extensions": {},
                },
                {
                    "id": 2,
                    "keys": ["kraken"],
                    "content": "Sailors say a kraken sleeps under the rock.",
                    "enabled": True,
                    "insertion_order": 20,
                    "constant": False,
                    "position": "after_char",
                    "extensions": {},
                },
                {
                    "id": 3,
                    "keys": ["weather"],
                    "content": "{{char}} reads the sky, the swell and the gulls, never a screen.",
                    "enabled": True,
                    "insertion_order": 5,
                    "constant": True,
                    "position": "before_char",
                    "extensions": {},
                },
            ],
        },
    },
}
LIGHTHOUSE = "The Skerry Rock lighthouse was built in 1871; Mara Quillon winds its clockwork by hand."
KRAKEN = "Sailors say a kraken sleeps under the rock."
CONSTANT = "Mara Quillon reads the sky, the swell and the gulls, never a screen."


@pytest.fixture(scope="module")
def upstream(server_factory: Any) -> Iterator[tuple[FakeUpstream, LiveServer]]:
    fake = FakeUpstream("openai").start()
    server = server_factory(
        MOONBORN_LLM_PROVIDER="openai",
        MOONBORN_LLM_BASE_URL=fake.url,
        MOONBORN_LLM_API_KEY="test",
        MOONBORN_LLM_MODEL="fake-model",
    )
    fake.reset(lambda body: Answer(REPLY))
    yield fake, server
    fake.stop()


def import_card(server: LiveServer) -> str:
    with server.client() as client:
        response = client.post(
            "/v1/personas/import", content=json.dumps(CARD), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def chat_calls(fake: FakeUpstream) -> list[dict[str, Any]]:
    return [call.body for call in fake.calls if call.path.endswith("/chat/completions")]


def test_an_imported_cards_character_and_activated_lore_reach_the_model(upstream):
    fake, server = upstream
    session_id = make_session(server, import_card(server))
    fake.reset()
    with server.client() as client:
        response = client.post(
            f"/v1/chat/sessions/{session_id}/messages?stream=true",
            json={"content": "What keeps the LIGHTHOUSE going?"},
            headers=SSE,
        )
    assert response.status_code == 200
    events, _ = parse_wire(response.content)
    kinds = [event.event for event in events]
    assert kinds == ["message.started", "tool_start", "tool_end"] + ["token"] * len(REPLY) + ["completed"]
    start, end = events[1].data, events[2].data
    assert start == {"callId": start["callId"], "tool": "lorebook", "args": {"turn": 1}}
    assert start["callId"].startswith("call_")
    assert end["callId"] == start["callId"]
    assert (end["tool"], end["status"]) == ("lorebook", "ok")
    assert [(a["entry"], a["reason"]["kind"]) for a in end["result"]["activated"]] == [("3", "constant"), ("1", "key")]
    assert "".join(event.data["delta"] for event in events if event.event == "token") == "".join(REPLY)

    (body,) = chat_calls(fake)
    system = body["messages"][0]
    assert system["role"] == "system"
    text = system["content"]
    assert "Mara Quillon keeps the lighthouse on Skerry Rock and trusts no weather app." in text
    assert "gruff, dry, loyal to User once earned" in text
    assert "User rows out to Skerry Rock in a squall and knocks on Mara Quillon's door." in text
    assert "{{char}}" not in text and "{{user}}" not in text
    assert LIGHTHOUSE in text and CONSTANT in text
    assert KRAKEN not in json.dumps(body)
    assert body["messages"][-1] == {"role": "user", "content": "What keeps the LIGHTHOUSE going?"}

    # The reply's row keeps what went into its prompt and why.
    with server.client() as client:
        reply = client.get(f"/v1/chat/sessions/{session_id}/messages").json()["results"][-1]
    assert [a["entry"] for a in reply["lore"]["activated"]] == ["3", "1"]


def test_an_absent_key_leaves_its_entry_out_and_a_constant_is_always_in(upstream):
    fake, server = upstream
    session_id = make_session(server, import_card(server))
    fake.reset()
    with server.client() as client:
        response = client.post(f"/v1/chat/sessions/{session_id}/messages", json={"content": "Evening."}, headers=JSON)
    assert response.status_code == 201
    (body,) = chat_calls(fake)
    prompt = json.dumps(body)
    assert CONSTANT in prompt
    assert LIGHTHOUSE not in prompt and KRAKEN not in prompt


def test_a_resume_between_the_tool_events_replays_them_exactly_once(upstream):
    fake, server = upstream
    session_id = make_session(server, import_card(server))
    fake.reset()
    with server.client() as client:
        response = client.post(
            f"/v1/chat/sessions/{session_id}/messages?stream=true",
            json={"content": "Any kraken about?"},
            headers=SSE,
        )
        whole, _ = parse_wire(response.content)
        message_id = whole[0].data["messageId"]
        tool_start = next(event for event in whole if event.event == "tool_start")
        resumed = client.get(
            f"/v1/chat/sessions/{session_id}/messages/{message_id}/events",
            headers={**SSE, "Last-Event-ID": str(tool_start.id)},
        )
    assert resumed.status_code == 200
    replayed, _ = parse_wire(resumed.content)
    assert replayed == [event for event in whole if event.id > tool_start.id]
    assert [event.event for event in replayed].count("tool_end") == 1
    assert [event.event for event in replayed].count("tool_start") == 0


def test_a_persona_without_a_lorebook_streams_no_tool_events(upstream):
    fake, server = upstream
    card = json.loads(json.dumps(CARD))
    del card["data"]["character_book"]
    with server.client() as client:
        made = client.post(
            "/v1/personas/import", content=json.dumps(card), headers={"Content-Type": "application/json"}
        )
        session_id = make_session(server, made.json()["id"])
        response = client.post(
            f"/v1/chat/sessions/{session_id}/messages?stream=true", json={"content": "Hello?"}, headers=SSE
        )
    events, _ = parse_wire(response.content)
    assert [event.event for event in events] == ["message.started"] + ["token"] * len(REPLY) + ["completed"]


def test_the_lore_fields_are_json_for_a_client(upstream):
    _, server = upstream
    session_id = make_session(server, import_card(server))
    with httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=30) as client:
        client.post(f"/v1/chat/sessions/{session_id}/messages", json={"content": "The lighthouse?"}, headers=JSON)
        reply = client.get(f"/v1/chat/sessions/{session_id}/messages").json()["results"][-1]
    assert set(reply["lore"]) == {"activated", "skipped", "tokens", "historyDropped"}
