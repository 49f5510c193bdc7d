"""Starting a turn: what the reply job carries from its persona, read once per persona version."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import ApiKey, UsageRecord
from accounts.services import api_key_create, api_key_revoke
from chat.models import ChatSession, Message
from chat.scoring import tier0
from chat.services import ChatConflict, ReplyJob, TurnRequest, message_create_turn, message_create_turns
from personas.models import Persona
from tests.factories import ChatSessionFactory, MessageFactory, PersonaFactory, calibrated_persona

pytestmark = pytest.mark.django_db


def turn(session: ChatSession, text: str) -> ReplyJob:
    job = message_create_turn(
        owner_id=session.owner_id, session_id=session.pk, content=text, provider="demo", model="demo"
    )
    Message.objects.filter(pk=job.assistant_message_id).update(status=Message.Status.COMPLETED, content="Aye.")
    return job


def test_replies_share_their_persona_until_it_changes_and_then_read_it_again() -> None:
    persona = calibrated_persona(anchors=["Mind the lamp.", "Tea first."], system_prompt="You keep the lamp.")
    session = ChatSessionFactory(persona=persona, owner=persona.owner)
    first = turn(session, "Hello.")
    second = turn(session, "Still there?")
    assert (first.voice.character.system_prompt, first.voice.calibration) == ("You keep the lamp.", persona.calibration)
    # The same persona version: one shared copy, not one per reply.
    assert second.voice is first.voice

    persona.system_prompt = "You keep the lamp, and the logbook."
    persona.save()
    third = turn(session, "And now?")
    assert third.voice is not first.voice
    assert (third.voice.character.system_prompt, third.voice.calibration) == (
        "You keep the lamp, and the logbook.",
        persona.calibration,
    )
    assert [third.turn, third.history[-2:]] == [2, (("user", "Still there?"), ("assistant", "Aye."))]


def test_one_transaction_takes_the_turns_it_can_and_refuses_the_rest_exactly_as_alone() -> None:
    alice_key_row, alice_key = api_key_create(username="alice")
    bob_key_row, bob_key = api_key_create(username="bob")
    revoked_row, revoked_key = api_key_create(username="carol")
    api_key_revoke(prefix=revoked_row.prefix)
    alice, bob = alice_key_row.owner, bob_key_row.owner
    talked = ChatSessionFactory(owner=alice)
    MessageFactory(session=talked, index=0, role=Message.Role.USER, content="Hi.")
    MessageFactory(session=talked, index=1, role=Message.Role.ASSISTANT, content="Aye.")
    fresh = ChatSessionFactory(owner=alice)
    generating = ChatSessionFactory(owner=alice, persona=PersonaFactory(owner=alice, status=Persona.Status.GENERATING))
    bobs = ChatSessionFactory(owner=bob)

    def ask(session: ChatSession, key: str, text: str) -> TurnRequest:
        return TurnRequest(session_id=session.pk, content=text, provider="demo", model="demo", key=key)

    outcomes = message_create_turns(
        requests=[
            ask(talked, alice_key, "Again?"),
            ask(fresh, alice_key, "First."),
            ask(fresh, alice_key, "Racing the first."),  # the same session twice: its reply is streaming now
            ask(bobs, alice_key, "Not mine."),
            ask(generating, alice_key, "Too early."),
            ask(talked, revoked_key, "Revoked."),
            ask(bobs, bob_key, "Mine."),
            ask(talked, "mb_not_a_key", "Garbage."),
        ]
    )
    kinds = [type(o).__name__ if not isinstance(o, tuple) else o[0] for o in outcomes]
    assert kinds == [alice.pk, alice.pk, "ChatConflict", "DoesNotExist", "ChatConflict", "NoneType", bob.pk, "NoneType"]
    assert isinstance(outcomes[2], ChatConflict) and "still being generated" in str(outcomes[2])
    assert isinstance(outcomes[4], ChatConflict) and "generating" in str(outcomes[4])
    jobs = [o[1] for o in outcomes if isinstance(o, tuple)]
    assert [(j.session_id, j.turn, j.history, j.user_content) for j in jobs] == [
        (talked.pk, 1, (("user", "Hi."), ("assistant", "Aye.")), "Again?"),
        (fresh.pk, 0, (), "First."),
        (bobs.pk, 0, (), "Mine."),
    ]
    # Exactly the rows of the three turns taken: two messages each, a streaming reply, its usage record.
    for job in jobs:
        rows = Message.objects.filter(session_id=job.session_id).order_by("index")
        assert [(m.role, m.status, m.content) for m in rows][-2:] == [
            ("user", "completed", job.user_content),
            ("assistant", "streaming", ""),
        ]
        assert rows.last().pk == job.assistant_message_id  # type: ignore[union-attr]
        usage = UsageRecord.objects.get(run_id=job.assistant_message_id)
        assert (usage.kind, usage.owner_id, usage.status) == (
            "chat",
            rows[0].session.owner_id,
            "running",
        )
    assert Message.objects.filter(session__in=[generating]).count() == 0
    assert Message.objects.count() == 2 + 6
    assert UsageRecord.objects.count() == 3


def test_a_turn_carries_the_last_messages_with_content_of_its_own_session_only() -> None:
    from chat.services import HISTORY_LIMIT

    key_row, key = api_key_create(username="alice")
    long_talk, short_talk = ChatSessionFactory(owner=key_row.owner), ChatSessionFactory(owner=key_row.owner)
    said = []
    for index in range(HISTORY_LIMIT + 25):
        role = Message.Role.USER if index % 2 == 0 else Message.Role.ASSISTANT
        # Every seventh reply ended empty (cancelled before its first token): it is no part of the history.
        content = "" if index % 14 == 13 else f"line {index}"
        MessageFactory(session=long_talk, index=index, role=role, content=content, status=Message.Status.COMPLETED)
        if content:
            said.append((str(role), content))
    MessageFactory(session=short_talk, index=0, role=Message.Role.USER, content="Only this.")
    MessageFactory(session=short_talk, index=1, role=Message.Role.ASSISTANT, content="And this.")

    def ask(session: ChatSession) -> TurnRequest:
        return TurnRequest(session_id=session.pk, content="Go on.", provider="demo", model="demo", key=key)

    alone = message_create_turns(requests=[ask(long_talk)])[0]
    assert isinstance(alone, tuple)
    assert alone[1].history == tuple(said[-HISTORY_LIMIT:])
    Message.objects.filter(pk=alone[1].assistant_message_id).update(status=Message.Status.COMPLETED)
    together = message_create_turns(requests=[ask(short_talk), ask(long_talk)])
    assert [outcome[1].history for outcome in together if isinstance(outcome, tuple)] == [
        (("user", "Only this."), ("assistant", "And this.")),
        tuple([*said, ("user", "Go on.")][-HISTORY_LIMIT:]),
    ]


def test_a_turn_goes_after_the_last_message_and_waits_while_the_last_reply_streams() -> None:
    key_row, key = api_key_create(username="alice")
    session = ChatSessionFactory(owner=key_row.owner)
    # Indexes need not be dense (a deleted message leaves a hole): the next turn follows the highest.
    for index in (0, 1, 2, 7):
        role = Message.Role.USER if index % 2 == 0 else Message.Role.ASSISTANT
        MessageFactory(session=session, index=index, role=role, status=Message.Status.COMPLETED)

    def ask() -> TurnRequest:
        return TurnRequest(session_id=session.pk, content="Go on.", provider="demo", model="demo", key=key)

    (first,) = message_create_turns(requests=[ask()])
    assert isinstance(first, tuple) and first[1].turn == 4
    assert list(Message.objects.filter(session=session).values_list("index", "status"))[-2:] == [
        (8, "completed"),
        (9, "streaming"),
    ]
    (refused,) = message_create_turns(requests=[ask()])
    assert isinstance(refused, ChatConflict) and "still being generated" in str(refused)
    assert Message.objects.filter(session=session).count() == 6

    Message.objects.filter(pk=first[1].assistant_message_id).update(status=Message.Status.CANCELLED)
    (second,) = message_create_turns(requests=[ask()])
    assert isinstance(second, tuple) and second[1].turn == 5
    assert list(Message.objects.filter(session=session).values_list("index", "status"))[-2:] == [
        (10, "completed"),
        (11, "streaming"),
    ]


def test_a_turn_records_when_its_key_was_last_used_at_most_once_a_minute() -> None:
    key_row, key = api_key_create(username="alice")
    other_row, other_key = api_key_create(username="bob")
    sessions = [ChatSessionFactory(owner=key_row.owner) for _ in range(4)]
    bobs = ChatSessionFactory(owner=other_row.owner)

    def ask(session: ChatSession, key: str = key) -> TurnRequest:
        return TurnRequest(session_id=session.pk, content="Hello.", provider="demo", model="demo", key=key)

    def last_used(row: ApiKey) -> datetime | None:
        row.refresh_from_db()
        return row.last_used_at

    def key_writes(*requests: TurnRequest) -> int:
        with CaptureQueriesContext(connection) as queries:
            message_create_turns(requests=list(requests))
        return sum(q["sql"].startswith(f"UPDATE {connection.ops.quote_name('accounts_apikey')}") for q in queries)

    assert last_used(key_row) is None
    assert key_writes(ask(sessions[0])) == 1
    first = last_used(key_row)
    assert first is not None
    assert last_used(other_row) is None  # only the keys that were used
    # Within the minute the key is not written again, nor is a statement run for it.
    assert key_writes(ask(sessions[1])) == 0
    assert key_writes(ask(sessions[2]), ask(bobs, other_key)) == 1  # bob's key alone
    assert last_used(key_row) == first
    assert last_used(other_row) is not None
    ApiKey.objects.filter(pk=key_row.pk).update(last_used_at=first - timedelta(seconds=61))
    assert key_writes(ask(sessions[3])) == 1
    again = last_used(key_row)
    assert again is not None and again > first


def test_a_turn_compares_with_the_owners_newest_other_personas_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from chat import services

    key_row, key = api_key_create(username="alice")
    owner = key_row.owner
    session = ChatSessionFactory(owner=owner, persona__owner=owner)
    made = datetime(2026, 1, 1, tzinfo=UTC)
    # Other personas whose anchors all point along one axis each: their centroid tells which persona it is.
    dim, model = tier0().dim, tier0().model_id
    for axis, days in ((1, 3), (2, 1), (3, 2), (4, 4)):
        vectors = np.zeros((2, dim), dtype=np.float32)
        vectors[:, axis] = 1.0
        other = PersonaFactory(
            owner=owner, drift_anchors=["a", "b"], anchor_vectors=vectors.tobytes(), embedding_model=model
        )
        Persona.objects.filter(pk=other.pk).update(created_at=made + timedelta(days=days))
    monkeypatch.setattr(services, "BLEED_PERSONAS_LIMIT", 3)
    request = TurnRequest(session_id=session.pk, content="Hello.", provider="demo", model="demo", key=key)
    (outcome,) = message_create_turns(requests=[request])
    assert isinstance(outcome, tuple)
    centroids = np.frombuffer(outcome[1].other_centroids, dtype=np.float32).reshape(-1, dim)
    assert list(centroids.argmax(axis=1)) == [4, 1, 3]


@pytest.mark.parametrize(
    "text", ['q"uote\\back', "line\nnext\ttab", "\u2028\u2029", "é☾😀 漢字", "100% %s %(x)s ?", '[1, {"a": null}]']
)
def test_a_turn_stores_and_reads_back_the_users_words_exactly(text: str) -> None:
    # On SQLite a batch's rows travel as JSON (chat.services._TurnSql.table): nothing of the text may change.
    session = ChatSessionFactory()
    first = turn(session, text)
    second = turn(session, "And?")
    stored = Message.objects.get(session=session, index=0)
    assert (stored.content, stored.role, stored.status, stored.flagged) == (text, "user", "completed", False)
    assert (stored.created_at.tzinfo, stored.drift_components, stored.review) == (UTC, {}, "")
    assert first.user_content == text
    assert second.history == (("user", text), ("assistant", "Aye."))
