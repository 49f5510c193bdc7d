"""personas.selectors: the drift statistics the API and the admin both show, from the personas' counters in one
query, and the recount the counters are checked against."""

import importlib

import pytest
from django.apps import apps
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat.models import Message
from personas.models import Persona, PersonaDriftStats, PersonaStep
from personas.selectors import drift_counts, with_drift_stats
from personas.serializers import PersonaSerializer
from personas.services import persona_queryset
from tests.factories import ChatSessionFactory, MessageFactory, PersonaFactory

pytestmark = pytest.mark.django_db


def stats(persona: Persona) -> tuple[int, int, float | None, float | None]:
    row = with_drift_stats(Persona.objects.filter(pk=persona.pk)).get()
    return row.reply_count, row.flagged_count, row.mean_drift, row.flagged_share  # type: ignore[attr-defined]


def test_only_scored_replies_count_across_every_session_of_the_persona() -> None:
    persona = PersonaFactory()
    first, second = ChatSessionFactory(persona=persona), ChatSessionFactory(persona=persona)
    MessageFactory(session=first, index=0, role=Message.Role.USER, drift_score=None, flagged=False)
    MessageFactory(session=first, index=1, drift_score=0.25, flagged=False)
    MessageFactory(session=first, index=2, drift_score=0.75, flagged=True)
    MessageFactory(session=second, index=0, drift_score=0.5, flagged=True)
    # Still streaming: no score yet, not a reply to count.
    MessageFactory(session=second, index=1, drift_score=None, status=Message.Status.STREAMING)
    # Another persona's replies are not this one's.
    MessageFactory(drift_score=0.9, flagged=True)
    assert stats(persona) == (3, 2, pytest.approx(0.5), pytest.approx(2 / 3))


def test_a_persona_without_replies_has_zero_counts_and_no_means() -> None:
    assert stats(PersonaFactory()) == (0, 0, None, None)


def test_steps_beside_the_replies_do_not_multiply_the_counts() -> None:
    persona = PersonaFactory()
    for position, name in enumerate(("soul_draft", "lore_weave", "psyche_profile")):
        PersonaStep.objects.create(persona=persona, name=name, position=position, status=PersonaStep.Status.COMPLETED)
    session = ChatSessionFactory(persona=persona)
    MessageFactory(session=session, index=1, drift_score=0.4, flagged=True)
    MessageFactory(session=session, index=3, drift_score=0.6, flagged=False)
    row = persona_queryset(owner_id=persona.owner_id).get()
    assert PersonaSerializer(row).data["drift"] == {
        "replies": 2,
        "flagged": 1,
        "flagged_share": 0.5,
        "mean_score": 0.5,
    }


def test_the_list_reads_its_statistics_in_one_query_whatever_the_number_of_personas() -> None:
    owner = PersonaFactory().owner
    for _ in range(4):
        MessageFactory(session=ChatSessionFactory(persona=PersonaFactory(owner=owner)), drift_score=0.3)
    with CaptureQueriesContext(connection) as queries:
        rows = list(persona_queryset(owner_id=owner.pk))
    # One for the personas with their statistics, one for their steps (prefetched).
    assert len(queries) == 2
    assert sorted(row.reply_count for row in rows) == [0, 1, 1, 1, 1]  # type: ignore[attr-defined]


def test_the_list_reads_the_counters_and_no_message() -> None:
    persona = PersonaFactory()
    MessageFactory(session=ChatSessionFactory(persona=persona), drift_score=0.3)
    with CaptureQueriesContext(connection) as queries:
        (row,) = persona_queryset(owner_id=persona.owner_id)
    assert row.reply_count == 1  # type: ignore[attr-defined]
    assert [q["sql"] for q in queries.captured_queries if "chat_message" in q["sql"]] == []


def test_the_migration_counts_the_replies_already_stored() -> None:
    counted, quiet = PersonaFactory(), PersonaFactory()
    first, second = ChatSessionFactory(persona=counted), ChatSessionFactory(persona=counted)
    MessageFactory(session=first, index=0, role=Message.Role.USER, drift_score=None)
    MessageFactory(session=first, index=1, drift_score=0.25, flagged=True)
    MessageFactory(session=second, index=1, drift_score=0.5)
    MessageFactory(session=second, index=3, drift_score=None, status=Message.Status.STREAMING)
    ChatSessionFactory(persona=quiet)
    PersonaDriftStats.objects.all().delete()

    importlib.import_module("personas.migrations.0004_persona_drift_stats").count_replies(apps, None)

    rows = {row.persona_id: (row.replies, row.flagged, row.drift_sum) for row in PersonaDriftStats.objects.all()}
    assert rows == {counted.pk: (2, 1, 0.75)}
    assert drift_counts(persona_ids=[counted.pk, quiet.pk]) == {counted.pk: (2, 1, 0.75), quiet.pk: (0, 0, 0.0)}
