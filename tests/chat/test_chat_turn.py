"""Starting a turn: what the reply job carries from its persona, read once per persona version."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from accounts.models import UsageRecord
from chat.models import ChatSession, Message
from chat.scoring import tier0
from chat.services import ChatConflict, ReplyJob, TurnRequest, message_create_turns
from personas.models import Persona
from tests.factories import ChatSessionFactory, MessageFactory, PersonaFactory, UserFactory, calibrated_persona

pytestmark = pytest.mark.django_db


def ask(session: ChatSession, text: str = "Go on.", owner_id: int | None = None) -> TurnRequest:
    owner = session.owner_id if owner_id is None else owner_id
    return TurnRequest(owner_id=owner, session_id=session.pk, content=text, provider="demo", model="demo")


def turn(session: ChatSession, text: str) -> ReplyJob:
    (job,) = message_create_turns(requests=[ask(session, text)])
    assert isinstance(job, ReplyJob)
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
    alice, bob = UserFactory(), UserFactory()
    talked = ChatSessionFactory(owner=alice)
    MessageFactory(session=talked, index=0, role=Message.Role.USER, content="Hi.")
    MessageFactory(session=talked, index=1, role=Message.Role.ASSISTANT, content="Aye.")
    fresh = ChatSessionFactory(owner=alice)
    generating = ChatSessionFactory(owner=alice, persona=PersonaFactory(owner=alice, status=Persona.Status.GENERATING))
    bobs = ChatSessionFactory(owner=bob)

    outcomes = message_create_turns(
        requests=[
            ask(talked, "Again?"),
            ask(fresh, "First."),
            ask(fresh, "Racing the first."),  # the same session twice: its reply is streaming now
            ask(bobs, "Not mine.", owner_id=alice.pk),
            ask(generating, "Too early."),
            ask(bobs, "Mine."),
            ask(talked, "No such session.", owner_id=alice.pk + bob.pk),
        ]
    )
    kinds = [type(o).__name__ if not isinstance(o, ReplyJob) else o.session_id for o in outcomes]
    assert kinds == [talked.pk, fresh.pk, "ChatConflict", "DoesNotExist", "ChatConflict", bobs.pk, "DoesNotExist"]
    assert isinstance(outcomes[2], ChatConflict) and "still being generated" in str(outcomes[2])
    assert isinstance(outcomes[4], ChatConflict) and "generating" in str(outcomes[4])
    jobs = [o for o in outcomes if isinstance(o, ReplyJob)]
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
    from chat.turn_store import HISTORY_LIMIT

    owner = UserFactory()
    long_talk, short_talk = ChatSessionFactory(owner=owner), ChatSessionFactory(owner=owner)
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

    alone = message_create_turns(requests=[ask(long_talk)])[0]
    assert isinstance(alone, ReplyJob)
    assert alone.history == tuple(said[-HISTORY_LIMIT:])
    Message.objects.filter(pk=alone.assistant_message_id).update(status=Message.Status.COMPLETED)
    together = message_create_turns(requests=[ask(short_talk), ask(long_talk)])
    assert [outcome.history for outcome in together if isinstance(outcome, ReplyJob)] == [
        (("user", "Only this."), ("assistant", "And this.")),
        tuple([*said, ("user", "Go on.")][-HISTORY_LIMIT:]),
    ]


def test_a_turn_goes_after_the_last_message_and_waits_while_the_last_reply_streams() -> None:
    session = ChatSessionFactory()
    # Indexes need not be dense (a deleted message leaves a hole): the next turn follows the highest.
    for index in (0, 1, 2, 7):
        role = Message.Role.USER if index % 2 == 0 else Message.Role.ASSISTANT
        MessageFactory(session=session, index=index, role=role, status=Message.Status.COMPLETED)

    (first,) = message_create_turns(requests=[ask(session)])
    assert isinstance(first, ReplyJob) and first.turn == 4
    assert list(Message.objects.filter(session=session).values_list("index", "status"))[-2:] == [
        (8, "completed"),
        (9, "streaming"),
    ]
    (refused,) = message_create_turns(requests=[ask(session)])
    assert isinstance(refused, ChatConflict) and "still being generated" in str(refused)
    assert Message.objects.filter(session=session).count() == 6

    Message.objects.filter(pk=first.assistant_message_id).update(status=Message.Status.CANCELLED)
    (second,) = message_create_turns(requests=[ask(session)])
    assert isinstance(second, ReplyJob) and second.turn == 5
    assert list(Message.objects.filter(session=session).values_list("index", "status"))[-2:] == [
        (10, "completed"),
        (11, "streaming"),
    ]


def test_a_turn_compares_with_the_owners_newest_other_personas_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from chat import services

    owner = UserFactory()
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
    (outcome,) = message_create_turns(requests=[ask(session, "Hello.")])
    assert isinstance(outcome, ReplyJob)
    centroids = np.frombuffer(outcome.other_centroids, dtype=np.float32).reshape(-1, dim)
    assert list(centroids.argmax(axis=1)) == [4, 1, 3]


@pytest.mark.parametrize(
    "text", ['q"uote\\back', "line\nnext\ttab", "\u2028\u2029", "é☾😀 漢字", "100% %s %(x)s ?", '[1, {"a": null}]']
)
def test_a_turn_stores_and_reads_back_the_users_words_exactly(text: str) -> None:
    # On SQLite a batch's rows travel as JSON (chat.turn_store.TurnSql.table): nothing of the text may change.
    session = ChatSessionFactory()
    first = turn(session, text)
    second = turn(session, "And?")
    stored = Message.objects.get(session=session, index=0)
    assert (stored.content, stored.role, stored.status, stored.flagged) == (text, "user", "completed", False)
    assert (stored.created_at.tzinfo, stored.drift_components, stored.review) == (UTC, {}, "")
    assert first.user_content == text
    assert second.history == (("user", text), ("assistant", "Aye."))
