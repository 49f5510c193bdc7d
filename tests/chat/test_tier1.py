"""Tier 1 of drift (chat/tier1.py): the database queue, claims and leases, scoring after the reply's end."""

import json
from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError
from django.utils import timezone

from bench.drift_set import FIXTURES, build_persona
from chat import services, tier1
from chat.drift import priors_for
from chat.models import DriftJob, Message
from chat.scoring import DRIFT_ALPHA
from chat.scoring import tier1 as tier1_embedder
from personas.models import Persona
from tests.factories import ChatSessionFactory, UserFactory, calibrated_persona, stored_turn

pytestmark = pytest.mark.django_db

LABELLED = json.loads((FIXTURES / "labelled.json").read_text(encoding="utf-8"))

# Captain Redbeard of the labelled drift set, built as the service builds it (its anchors and samples).
ANCHORS, SAMPLES = build_persona(next(p for p in LABELLED["personas"] if p["name"] == "Captain Redbeard"))
IN_CHARACTER = "Arr, the wind be turnin' and the rum be low, lad. Hoist the colours and mind the reef!"
GENERIC = (
    "Great question! Here are a few tips for sailing in rough weather: 1. Check the forecast. 2. Reef your sails "
    "early. 3. Make sure everyone wears a life jacket. Let me know if you'd like more details!"
)


@pytest.fixture(autouse=True)
def inline_db(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's database calls run in the test's own thread and transaction (the SQLite thread would not see
    the test's uncommitted rows)."""
    monkeypatch.setattr(tier1, "db_sync", lambda fn, /, *args, **kwargs: fn(*args, **kwargs))


def turn(persona: Persona, content: str = "Tell me of the sea.") -> services.ReplyJob:
    session = ChatSessionFactory(persona=persona, owner=persona.owner)
    return stored_turn(session, content)


def finish(job: services.ReplyJob, content: str) -> None:
    services.message_complete(
        message_id=job.assistant_message_id,
        content=content,
        drift_score=0.5,
        drift_threshold=0.98,
        flagged=False,
        drift_components={},
        prompt_tokens=1,
        completion_tokens=1,
    )


def run(worker: str = "w1", limit: int = 16, lease: float = 60.0) -> int:
    return tier1.tier1_run_batch(worker_id=worker, limit=limit, lease_seconds=lease)


def test_a_turn_queues_its_reply_and_the_job_waits_while_it_streams() -> None:
    persona = calibrated_persona(anchors=ANCHORS, samples=SAMPLES)
    job = turn(persona)
    queued = DriftJob.objects.get()
    assert queued.message_id == job.assistant_message_id and queued.attempts == 0 and queued.claimed_until is None
    assert run() == 0  # still streaming
    assert DriftJob.objects.get().attempts == 0


def test_a_finished_reply_gets_its_tier1_score_and_the_persona_its_tier1_calibration() -> None:
    persona = calibrated_persona(anchors=ANCHORS, samples=SAMPLES)
    updated_at = Persona.objects.get(pk=persona.pk).updated_at
    first, second = turn(persona), turn(persona)
    finish(first, IN_CHARACTER)
    finish(second, GENERIC)

    assert run() == 2

    assert not DriftJob.objects.exists()
    own, generic = (
        Message.objects.get(pk=first.assistant_message_id),
        Message.objects.get(pk=second.assistant_message_id),
    )
    embedder = tier1_embedder()
    for message in (own, generic):
        assert message.tier1_scored_at is not None
        assert 0.0 <= message.tier1_score <= 1.0
        assert message.tier1_threshold == round(priors_for(embedder.model_id).threshold_for(DRIFT_ALPHA), 4)
        assert message.tier1_flagged == (message.tier1_score > message.tier1_threshold)
        assert message.tier1_components["embedding_model"] == embedder.model_id
        assert set(message.tier1_components["components"]) >= {"centroid_p", "generic_p", "bleed_p"}
        # Tier 0's figures are left as `completed` carried them.
        assert (message.drift_score, message.flagged) == (0.5, False)
    assert own.tier1_flagged is False
    assert generic.tier1_flagged is True
    assert generic.tier1_score > own.tier1_score
    stored = Persona.objects.get(pk=persona.pk)
    assert stored.tier1_embedding_model == embedder.model_id
    assert stored.tier1_calibration["n_anchors"] == len(ANCHORS)
    assert stored.tier1_calibration["n_samples"] == len(SAMPLES)
    assert len(bytes(stored.tier1_anchor_vectors)) == 4 * embedder.dim * (len(ANCHORS) + len(SAMPLES))
    assert stored.updated_at == updated_at  # not a change the replies see: cached voices stay
    assert run() == 0


def test_cancelled_and_failed_replies_are_scored_and_empty_ones_only_leave_the_queue() -> None:
    persona = calibrated_persona(anchors=ANCHORS, samples=SAMPLES)
    cancelled, failed, empty = turn(persona), turn(persona), turn(persona)
    for job, status, content in (
        (cancelled, "cancelled", "Arr, the"),
        (failed, "failed", IN_CHARACTER),
        (empty, "failed", ""),
    ):
        services.message_stop(
            message_id=job.assistant_message_id, content=content, status=status, error="", prompt_tokens=0,
            completion_tokens=0,
        )  # fmt: skip

    assert run() == 3

    assert not DriftJob.objects.exists()
    assert Message.objects.get(pk=cancelled.assistant_message_id).tier1_score is not None
    assert Message.objects.get(pk=failed.assistant_message_id).tier1_score is not None
    assert Message.objects.get(pk=empty.assistant_message_id).tier1_score is None


def test_a_claim_is_taken_by_one_worker_until_its_lease_runs_out() -> None:
    persona = calibrated_persona(anchors=ANCHORS, samples=SAMPLES)
    job = turn(persona)
    finish(job, IN_CHARACTER)
    claimed = services.drift_jobs_claim(worker_id="w1", limit=8, lease_seconds=60)
    assert [j.message_id for j in claimed] == [job.assistant_message_id]
    assert claimed[0].persona_id == persona.pk and claimed[0].owner_id == persona.owner_id
    # Another worker finds nothing while the lease holds.
    assert services.drift_jobs_claim(worker_id="w2", limit=8, lease_seconds=60) == []
    # The first worker died: its lease runs out, and another takes the job over.
    DriftJob.objects.update(claimed_until=timezone.now() - timedelta(seconds=1))
    again = services.drift_jobs_claim(worker_id="w2", limit=8, lease_seconds=60)
    assert [j.message_id for j in again] == [job.assistant_message_id]
    assert DriftJob.objects.get().attempts == 2


def test_a_job_that_keeps_failing_is_given_up_with_the_reason() -> None:
    persona = calibrated_persona(anchors=ANCHORS, samples=SAMPLES)
    job = turn(persona)
    finish(job, IN_CHARACTER)
    DriftJob.objects.update(attempts=services.TIER1_MAX_ATTEMPTS)
    assert services.drift_jobs_claim(worker_id="w1", limit=8, lease_seconds=60) == []
    assert not DriftJob.objects.exists()
    message = Message.objects.get(pk=job.assistant_message_id)
    assert message.tier1_score is None
    assert message.tier1_components == {"error": f"not scored after {services.TIER1_MAX_ATTEMPTS} attempts"}


def test_bleed_in_tier1_uses_the_owners_other_personas(monkeypatch: pytest.MonkeyPatch) -> None:
    owner = UserFactory()
    pirate = calibrated_persona(anchors=ANCHORS, samples=SAMPLES, owner=owner, name="Captain Redbeard")
    other = calibrated_persona(
        anchors=["Good morning, dearie, come in out of the cold.", "I've a pot of tea on and scones in the oven."],
        owner=owner,
        name="Grandma Willow",
    )
    stranger = calibrated_persona(anchors=["Beep."], owner=UserFactory(), name="Unit 7")
    seen: list[bytes] = []
    real = tier1.score_vector

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["other_centroids"])
        return real(*args, **kwargs)

    monkeypatch.setattr(tier1, "score_vector", spy)
    job = turn(pirate)
    finish(job, IN_CHARACTER)
    assert run() == 1
    dim = tier1_embedder().dim
    assert len(seen) == 1 and len(seen[0]) == 4 * dim  # the owner's one other persona, not the stranger's
    assert Persona.objects.get(pk=other.pk).tier1_calibration  # calibrated for the bleed component
    assert not Persona.objects.get(pk=stranger.pk).tier1_calibration


def test_a_review_recalibrates_tier0_now_and_drops_tier1_for_the_worker_to_redo() -> None:
    persona = calibrated_persona(anchors=ANCHORS, samples=SAMPLES)
    job = turn(persona)
    finish(job, GENERIC)
    assert run() == 1
    assert Persona.objects.get(pk=persona.pk).tier1_calibration
    services.message_review(message_id=job.assistant_message_id, review=Message.Review.IN_CHARACTER, reviewer_id=None)
    stored = Persona.objects.get(pk=persona.pk)
    assert stored.calibration_replies == {job.assistant_message_id: GENERIC}
    assert stored.calibration["n_replies"] == 1
    assert stored.tier1_calibration == {}


def test_the_worker_loop_scores_until_its_server_is_gone(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    """The loop of the process each server starts: it scores while there is work, naps while there is none, and ends
    when the server it serves is gone (its parent pid changes)."""
    settings.MOONBORN_DRIFT_TIER1_POLL_SECONDS = 0.01
    settings.MOONBORN_EMBED_NICE = 0
    taken = iter([2, 1, 0, 0, 3])
    batches: list[int] = []
    parent = {"pid": 4242}

    def fake_batch(**kwargs: Any) -> int:
        batches.append(kwargs["limit"])
        if len(batches) == 5:
            parent["pid"] = 1  # the server died: the worker was handed to init
        return next(taken)

    monkeypatch.setattr(tier1, "tier1_run_batch", fake_batch)
    monkeypatch.setattr(tier1.os, "getppid", lambda: parent["pid"])
    worker = tier1.Tier1Worker(parent=4242)
    worker.run()
    assert batches == [settings.MOONBORN_DRIFT_TIER1_BATCH] * 5


def test_a_failing_batch_is_logged_and_the_loop_goes_on(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    def broken(**kwargs: Any) -> int:
        raise RuntimeError("the embeddings server is down")

    monkeypatch.setattr(tier1, "tier1_run_batch", broken)
    assert tier1.Tier1Worker().run_once() == 0
    assert "tier-1 drift scoring failed; it will try again" in caplog.text


def test_a_database_outage_is_one_warning_without_a_traceback(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    def cut(**kwargs: Any) -> int:
        raise OperationalError("terminating connection due to administrator command")

    monkeypatch.setattr(tier1, "tier1_run_batch", cut)
    assert tier1.Tier1Worker().run_once() == 0
    [record] = [r for r in caplog.records if r.name == "chat.tier1"]
    assert (record.levelname, record.exc_info) == ("WARNING", None)
    assert record.getMessage() == (
        "tier-1 drift scoring could not reach the database (terminating connection due to administrator command);"
        " it will try again"
    )


def test_behind_a_backlog_tier1_scores_what_tier0_was_unsure_of_and_a_sample(settings: Any) -> None:
    settings.MOONBORN_DRIFT_TIER1_CASCADE_BACKLOG = 3
    persona = calibrated_persona(anchors=ANCHORS, samples=SAMPLES)
    jobs = [turn(persona) for _ in range(6)]
    tier0 = [(0.2, False), (0.95, True), (0.85, False), (0.1, False), (None, False), (0.3, False)]
    for job, (score, flagged) in zip(jobs, tier0, strict=True):
        if score is None:  # ended before tier 0 ran: failed mid-stream
            services.message_stop(
                message_id=job.assistant_message_id, content=IN_CHARACTER, status="failed", error="", prompt_tokens=0,
                completion_tokens=0,
            )  # fmt: skip
            continue
        finish(job, IN_CHARACTER)
        Message.objects.filter(pk=job.assistant_message_id).update(drift_score=score, flagged=flagged)
    claimed = services.drift_jobs_claim(worker_id="probe", limit=6, lease_seconds=60)
    assert {j.waiting for j in claimed} == {6}
    sampled = {j.message_id for j in claimed if not tier1.tier0_was_certain(j) and (j.tier0_score or 1) < 0.8}
    DriftJob.objects.update(claimed_until=None)

    assert run(limit=6) == 6

    outcome = {m.pk: m for m in Message.objects.filter(pk__in=[j.assistant_message_id for j in jobs])}
    for job, (score, flagged) in zip(jobs, tier0, strict=True):
        message = outcome[job.assistant_message_id]
        certain = (
            score is not None
            and score < tier1.CASCADE_SCORE
            and not flagged
            and job.assistant_message_id not in sampled
        )
        assert message.tier1_scored_at is not None
        if certain:
            assert message.tier1_score is None
            assert message.tier1_components == {
                "skipped": "tier 0 was certain and tier 1 had a backlog",
                "tier0_score": score,
                "waiting": 6,
            }
        else:
            assert message.tier1_score is not None, (score, flagged)
    # Without a backlog every reply is scored.
    settings.MOONBORN_DRIFT_TIER1_CASCADE_BACKLOG = 64
    later = turn(persona)
    finish(later, IN_CHARACTER)
    Message.objects.filter(pk=later.assistant_message_id).update(drift_score=0.05)
    assert run() == 1
    assert Message.objects.get(pk=later.assistant_message_id).tier1_score is not None
