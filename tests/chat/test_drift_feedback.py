"""The drift feedback loop and the session-level signals: reviews recalibrate a persona, EWMA, sustained drift."""

import numpy as np
import pytest

from accounts.models import UsageRecord
from bench import drift_set
from chat import services
from chat.drift import calibrate, centroid, hard_rule_hits, priors_for
from chat.models import ChatSession, Message
from chat.scoring import DRIFT_ALPHA, embed_replies, generic_vectors, pieces, register, score_tier0, tier0
from personas.models import Persona, PersonaDriftStats
from personas.selectors import DriftCounts, drift_counts
from personas.serializers import PersonaSerializer
from personas.services import persona_queryset
from tests.factories import (
    ChatSessionFactory,
    MessageFactory,
    PersonaFactory,
    UserFactory,
    calibrated_persona,
    stored_turn,
)

pytestmark = pytest.mark.django_db

DEV = {p.name: p for p in drift_set.load("dev")}
LADY = DEV["Lady Marigold Fairweather"]
ZED = DEV["Zed"]


def ready_persona(data: drift_set.LabelledPersona, name: str, owner: object = None) -> Persona:
    return calibrated_persona(anchors=data.anchors, samples=data.samples, name=name, owner=owner or UserFactory())


def score(persona: Persona, text: str, other_centroids: bytes = b"") -> float:
    persona.refresh_from_db()
    return score_tier0(
        text,
        anchor_vectors=bytes(persona.anchor_vectors),
        calibration=persona.calibration,
        persona_name=persona.name,
        other_centroids=other_centroids,
    ).score


def test_in_character_review_joins_the_calibration_and_lowers_that_replys_score() -> None:
    persona = ready_persona(LADY, "Lady Marigold Fairweather")
    # The reply of hers that her calibration finds the most out of character: an admin says it is in character.
    text = max((t for t in LADY.generic if not hard_rule_hits(t, LADY.name)), key=lambda t: score(persona, t))
    before = score(persona, text)
    assert before > persona.drift_threshold
    session = ChatSessionFactory(persona=persona)
    message = MessageFactory(session=session, index=1, content=text, drift_score=before, flagged=True)

    services.message_review(message_id=message.pk, review=Message.Review.IN_CHARACTER, reviewer_id=None)

    persona.refresh_from_db()
    message.refresh_from_db()
    assert message.review == "in_character" and message.reviewed_at is not None
    assert persona.calibration["n_replies"] == 1
    assert persona.calibration["n_anchors"] == len(LADY.anchors)
    assert persona.calibration["n_samples"] == len(LADY.samples)
    after = score(persona, text)
    assert after < before
    # The calibration is exactly what calibrate() makes from the anchors and samples plus that reply.
    embedder = tier0()
    expected = calibrate(
        embedder.embed(LADY.anchors),
        generic_vectors=generic_vectors(embedder),
        alpha=DRIFT_ALPHA,
        sample_vectors=embed_replies(embedder, LADY.samples),
        reply_vectors=embed_replies(embedder, [text]),
        priors=priors_for(embedder.model_id),
        register=register(),
        reference_pieces=pieces(LADY.anchors + LADY.samples),
        reply_pieces=pieces([text]),
    )
    assert persona.calibration == expected.to_dict()
    assert persona.calibration_replies == {message.pk: text}

    # Out of character (or cleared) takes it out of the calibration set again.
    services.message_review(message_id=message.pk, review=Message.Review.OUT_OF_CHARACTER, reviewer_id=None)
    persona.refresh_from_db()
    assert persona.calibration["n_replies"] == 0 and persona.calibration_replies == {}
    assert score(persona, text) == pytest.approx(before)


def test_review_refuses_unknown_verdicts_and_unscored_messages() -> None:
    message = MessageFactory(drift_score=None)
    with pytest.raises(Message.DoesNotExist):
        services.message_review(message_id=message.pk, review="in_character", reviewer_id=None)
    scored = MessageFactory()
    with pytest.raises(ValueError, match="unknown review"):
        services.message_review(message_id=scored.pk, review="maybe", reviewer_id=None)


def test_other_persona_centroids_are_the_owners_other_ready_personas() -> None:
    owner = UserFactory()
    lady = ready_persona(LADY, "Lady Marigold Fairweather", owner)
    zed = ready_persona(ZED, "Zed", owner)
    PersonaFactory(owner=owner, status=Persona.Status.GENERATING, anchor_vectors=zed.anchor_vectors)
    ready_persona(ZED, "Someone else's Zed")  # another owner
    foreign = ready_persona(ZED, "Zed, embedded elsewhere", owner)
    Persona.objects.filter(pk=foreign.pk).update(embedding_model="openai:text-embedding-3-small")
    # What a turn of Lady Marigold's carries for the bleed component.
    session = ChatSessionFactory(owner=owner, persona=lady)
    raw = stored_turn(session, "Hello.").other_centroids
    dim = tier0().dim
    rows = np.frombuffer(raw, dtype=np.float32).reshape(-1, dim)
    expected = centroid(np.frombuffer(bytes(zed.anchor_vectors), dtype=np.float32).reshape(-1, dim))
    assert rows.shape == (1, dim)
    assert np.allclose(rows[0], expected, atol=1e-6)
    # Zed's own words, scored as Lady Marigold: the bleed toward Zed is the component that decides.
    zed_line = max(ZED.in_character, key=len)
    with_bleed = score_tier0(
        zed_line,
        anchor_vectors=bytes(lady.anchor_vectors),
        calibration=lady.calibration,
        persona_name=lady.name,
        other_centroids=raw,
    )
    without = score_tier0(
        zed_line, anchor_vectors=bytes(lady.anchor_vectors), calibration=lady.calibration, persona_name=lady.name
    )
    assert with_bleed.components["bleed_p"] < without.components["bleed_p"] == 1.0


def test_a_persona_calibrated_with_another_embedder_is_calibrated_again_at_its_next_turn() -> None:
    """Personas made before the tiers (MiniLM vectors) or with another table: their first turn calibrates tier 0
    again from their texts, once."""
    persona = ready_persona(LADY, "Lady Marigold Fairweather")
    fresh = dict(persona.calibration)
    Persona.objects.filter(pk=persona.pk).update(
        embedding_model="sentence-transformers/all-MiniLM-L6-v2", anchor_vectors=b"\0" * 384 * 4, calibration={}
    )
    session = ChatSessionFactory(owner=persona.owner, persona=persona)
    job = stored_turn(session, "Hello.")
    stored = Persona.objects.get(pk=persona.pk)
    assert stored.embedding_model == tier0().model_id
    assert stored.calibration == fresh == job.voice.calibration


def complete(message: Message, score_value: float, threshold: float = 0.9) -> None:
    UsageRecord.objects.create(owner=message.session.owner, kind=UsageRecord.Kind.CHAT, run_id=message.id)
    services.message_complete(
        message_id=message.id,
        content="x",
        drift_score=score_value,
        drift_threshold=threshold,
        flagged=score_value > threshold,
        drift_components={},
        prompt_tokens=1,
        completion_tokens=1,
    )


def test_ewma_and_sustained_drift() -> None:
    session = ChatSessionFactory()
    scores = [0.2, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.1]
    expected_ewma, streaks, sustained = None, [], []
    for i, value in enumerate(scores):
        message = MessageFactory(session=session, index=i, status=Message.Status.STREAMING, drift_score=None)
        complete(message, value)
        session.refresh_from_db()
        expected_ewma = value if expected_ewma is None else 0.3 * value + 0.7 * expected_ewma
        assert session.drift_ewma == pytest.approx(expected_ewma)
        streaks.append(session.drift_streak)
        sustained.append(session.sustained_drift_at is not None)
    # EWMA: 0.2, 0.44, 0.608, 0.7256, 0.808, 0.865, 0.906, 0.664 against threshold 0.9
    assert streaks == [0, 0, 0, 0, 0, 0, 1, 0]
    assert sustained == [False] * 8
    for i, value in enumerate([1.0, 1.0, 1.0], start=len(scores)):
        message = MessageFactory(session=session, index=i, status=Message.Status.STREAMING, drift_score=None)
        complete(message, value)
    session.refresh_from_db()
    # 0.765, 0.835, 0.885: still under; three more over it make it sustained
    for i, value in enumerate([1.0, 1.0, 1.0], start=len(scores) + 3):
        message = MessageFactory(session=session, index=i, status=Message.Status.STREAMING, drift_score=None)
        complete(message, value)
    session.refresh_from_db()
    assert session.drift_streak == 3
    assert session.sustained_drift_at is not None
    marked = session.sustained_drift_at
    message = MessageFactory(session=session, index=20, status=Message.Status.STREAMING, drift_score=None)
    complete(message, 0.0)
    session.refresh_from_db()
    assert session.drift_streak == 0 and session.sustained_drift_at == marked


def counters(persona: Persona) -> DriftCounts:
    row = PersonaDriftStats.objects.filter(persona=persona).first()
    return DriftCounts(row.replies, row.flagged, row.drift_sum) if row else DriftCounts(0, 0, 0.0)


def reply(session: ChatSession, value: float, *, flagged: bool) -> str:
    """A turn stored as a request stores it, its reply completed with this score (scores that are binary fractions,
    so that sums are exact)."""
    job = stored_turn(session)
    services.message_complete(
        message_id=job.assistant_message_id,
        content="Aye.",
        drift_score=value,
        drift_threshold=0.9,
        flagged=flagged,
        drift_components={},
        prompt_tokens=1,
        completion_tokens=1,
    )
    return job.assistant_message_id


def test_the_drift_counters_equal_a_recount_through_completions_reviews_tier1_and_deletes() -> None:
    persona = calibrated_persona(anchors=LADY.anchors, samples=LADY.samples, name="Lady Marigold Fairweather")
    other = PersonaFactory(owner=persona.owner)
    first = ChatSessionFactory(persona=persona, owner=persona.owner)
    second = ChatSessionFactory(persona=persona, owner=persona.owner)
    elsewhere = ChatSessionFactory(persona=other, owner=persona.owner)
    reply(first, 0.25, flagged=False)
    flagged = reply(first, 0.75, flagged=True)
    reply(second, 0.5, flagged=True)
    stored_turn(second)  # left streaming: no score, not a reply to count
    reply(elsewhere, 0.125, flagged=False)
    assert counters(persona) == drift_counts(persona_ids=[persona.pk])[persona.pk] == (3, 2, 1.5)
    assert counters(other) == (1, 0, 0.125)

    # Reviews and tier 1 leave the tier-0 flag the statistics count as it is.
    services.message_review(message_id=flagged, review=Message.Review.IN_CHARACTER, reviewer_id=None)
    services.message_tier1_store(
        worker_id="w1",
        results={flagged: services.Tier1Score(score=0.1, threshold=0.9, flagged=False, components={})},
    )
    assert Message.objects.get(pk=flagged).flagged is True
    assert counters(persona) == drift_counts(persona_ids=[persona.pk])[persona.pk] == (3, 2, 1.5)

    assert services.chat_session_delete(owner_id=persona.owner_id, session_id=first.pk) is True
    assert counters(persona) == drift_counts(persona_ids=[persona.pk])[persona.pk] == (1, 1, 0.5)
    assert services.chat_session_delete(owner_id=persona.owner_id, session_id=elsewhere.pk) is True
    assert counters(other) == drift_counts(persona_ids=[other.pk])[other.pk] == (0, 0, 0.0)
    row = persona_queryset(owner_id=persona.owner_id).get(pk=persona.pk)
    assert PersonaSerializer(row).data["drift"] == {"replies": 1, "flagged": 1, "flagged_share": 1.0, "mean_score": 0.5}


def test_a_session_deleted_by_someone_else_changes_no_counters() -> None:
    session = ChatSessionFactory()
    reply(session, 0.5, flagged=False)
    assert services.chat_session_delete(owner_id=UserFactory().pk, session_id=session.pk) is False
    assert counters(session.persona) == (1, 0, 0.5)


def test_a_reply_stored_again_replaces_its_score_in_the_counters() -> None:
    session = ChatSessionFactory()
    message_id = reply(session, 0.75, flagged=True)
    services.message_complete(
        message_id=message_id,
        content="Aye, again.",
        drift_score=0.25,
        drift_threshold=0.9,
        flagged=False,
        drift_components={},
        prompt_tokens=1,
        completion_tokens=1,
    )
    assert counters(session.persona) == drift_counts(persona_ids=[session.persona_id])[session.persona_id]
    assert counters(session.persona) == (1, 0, 0.25)
