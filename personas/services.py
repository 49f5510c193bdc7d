"""Writes for personas and their pipeline steps."""

from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import UsageRecord

from .models import Persona, PersonaDriftStats, PersonaStep
from .selectors import SCORING_FIELDS, drift_counts, with_drift_stats


def persona_queryset(*, owner_id: int) -> QuerySet[Persona]:
    """The owner's personas with their steps and the drift statistics of their chats, as the API shows them (without
    the columns only drift scoring reads)."""
    personas = Persona.objects.filter(owner_id=owner_id).defer(*SCORING_FIELDS).prefetch_related("steps")
    return with_drift_stats(personas)


@transaction.atomic
def persona_create(
    *, owner_id: int, prompt: str, name: str, requested_model: str, provider: str, model: str
) -> tuple[Persona, UsageRecord]:
    """Create a persona in `generating` state and the usage record of its generation."""
    persona = Persona.objects.create(owner_id=owner_id, prompt=prompt, name=name, requested_model=requested_model)
    usage = UsageRecord.objects.create(
        owner_id=owner_id, kind=UsageRecord.Kind.PERSONA, run_id=persona.id, provider=provider, model=model
    )
    return persona, usage


def persona_step_start(*, persona_id: str, name: str, position: int, model: str) -> None:
    PersonaStep.objects.update_or_create(
        persona_id=persona_id,
        name=name,
        defaults={"position": position, "status": PersonaStep.Status.RUNNING, "model": model},
    )


def persona_step_complete(
    *,
    persona_id: str,
    name: str,
    output: dict[str, Any],
    raw_output: str,
    fallback_fields: list[str],
    duration_ms: int,
    model: str,
) -> None:
    PersonaStep.objects.filter(persona_id=persona_id, name=name).update(
        status=PersonaStep.Status.COMPLETED,
        model=model,
        output=output,
        raw_output=raw_output,
        fallback_fields=fallback_fields,
        duration_ms=duration_ms,
        completed_at=timezone.now(),
    )


@transaction.atomic
def persona_finish(
    *,
    persona_id: str,
    card: dict[str, Any],
    system_prompt: str,
    post_history_instructions: str,
    drift_anchors: list[str],
    drift_samples: list[str],
    anchor_vectors: bytes,
    embedding_model: str,
    drift_threshold: float,
    calibration: dict[str, Any],
    duration_ms: int,
    usage_id: int,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    """Store the finished card and calibration and mark the persona `ready`."""
    Persona.objects.filter(pk=persona_id).update(
        status=Persona.Status.READY,
        name=card.get("name") or "",
        card=card,
        system_prompt=system_prompt,
        post_history_instructions=post_history_instructions,
        drift_anchors=drift_anchors,
        drift_samples=drift_samples,
        anchor_vectors=anchor_vectors,
        embedding_model=embedding_model,
        drift_threshold=drift_threshold,
        calibration=calibration,
        duration_ms=duration_ms,
        completed_at=timezone.now(),
        updated_at=timezone.now(),
    )
    UsageRecord.objects.filter(pk=usage_id).update(
        status=UsageRecord.Status.COMPLETED,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        ended_at=timezone.now(),
    )


@transaction.atomic
def persona_stop(
    *, persona_id: str, status: str, error: str, usage_id: int, prompt_tokens: int, completion_tokens: int
) -> None:
    """End a generation that did not finish (`failed` or `cancelled`), keeping the steps it made."""
    Persona.objects.filter(pk=persona_id, status=Persona.Status.GENERATING).update(
        status=status, error=error, completed_at=timezone.now(), updated_at=timezone.now()
    )
    PersonaStep.objects.filter(persona_id=persona_id, status=PersonaStep.Status.RUNNING).update(
        status=status, completed_at=timezone.now()
    )
    UsageRecord.objects.filter(pk=usage_id).update(
        status=status, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, ended_at=timezone.now()
    )


def persona_streaming_replies(*, persona_id: str) -> list[str]:
    """Ids of the replies still streaming in this persona's chats."""
    from chat.models import Message

    return list(
        Message.objects.filter(session__persona_id=persona_id, status=Message.Status.STREAMING).values_list(
            "id", flat=True
        )
    )


def persona_delete(*, owner_id: int, persona_id: str) -> bool:
    deleted, _ = Persona.objects.filter(owner_id=owner_id, pk=persona_id).delete()
    return deleted > 0


@transaction.atomic
def persona_drift_stats_recount(*, persona_ids: list[str]) -> None:
    """Set these personas' drift counters to what their messages hold (`selectors.drift_counts`).

    For rows written other than by the chat services (a repair, a data load): the services keep the counters right
    as they write, and this reads every message of the personas. The counters are locked before the messages are
    counted: a reply stored meanwhile writes its message before its counter, so it is counted here or adds itself
    after, never both.
    """
    ids = list(Persona.objects.filter(pk__in=persona_ids).values_list("pk", flat=True))
    PersonaDriftStats.objects.bulk_create([PersonaDriftStats(persona_id=pk) for pk in ids], ignore_conflicts=True)
    list(PersonaDriftStats.objects.select_for_update().filter(persona_id__in=ids).values_list("pk"))
    for persona_id, counts in drift_counts(persona_ids=ids).items():
        PersonaDriftStats.objects.filter(persona_id=persona_id).update(
            replies=counts.replies, flagged=counts.flagged, drift_sum=counts.drift_sum
        )
