"""Writes that span apps for runs: ending orphaned runs whose process died."""

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from accounts.models import UsageRecord
from chat.models import Message
from personas.models import Persona, PersonaStep


def orphan_candidates(*, older_than_seconds: float) -> list[tuple[str, int]]:
    """(run id, owner id) of every persona still `generating` and reply still `streaming`."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    personas = Persona.objects.filter(status=Persona.Status.GENERATING, created_at__lt=cutoff).values_list(
        "id", "owner_id"
    )
    replies = Message.objects.filter(status=Message.Status.STREAMING, created_at__lt=cutoff).values_list(
        "id", "session__owner_id"
    )
    return [*personas, *replies]


@transaction.atomic
def orphan_run_fail(*, run_id: str, error: str) -> bool:
    """Mark a run whose process died `failed`, keeping what it had saved; freeze its usage.

    Returns False when the run had already ended (another worker's reaper got there first).
    """
    now = timezone.now()
    if run_id.startswith("per_"):
        changed = Persona.objects.filter(pk=run_id, status=Persona.Status.GENERATING).update(
            status=Persona.Status.FAILED, error=error, completed_at=now, updated_at=now
        )
        PersonaStep.objects.filter(persona_id=run_id, status=PersonaStep.Status.RUNNING).update(
            status=PersonaStep.Status.FAILED, completed_at=now
        )
    else:
        changed = Message.objects.filter(pk=run_id, status=Message.Status.STREAMING).update(
            status=Message.Status.FAILED, error=error, completed_at=now
        )
    UsageRecord.objects.filter(run_id=run_id, status=UsageRecord.Status.RUNNING).update(
        status=UsageRecord.Status.FAILED, ended_at=now
    )
    return changed > 0
