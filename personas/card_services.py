"""Character cards of personas: building the export, and the write that imports one."""

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from chat.scoring import PersonaCalibration, calibrate_persona, tier0

from .cards import MAX_DURATION_MS, ImportedCard, anchor_texts_from_card, card_v3
from .models import STEP_NAMES, Persona, PersonaStep


def persona_card(*, persona: Persona) -> dict[str, Any]:
    """The persona as a CCv3 card, with Moonborn's data under ``extensions.moonborn``."""
    # The persona's own columns win over the copies in its card: they are what chats use.
    data = dict(persona.card or {})
    data["name"] = persona.name
    data["system_prompt"] = persona.system_prompt
    data["post_history_instructions"] = persona.post_history_instructions
    calibration = persona.calibration or {}
    moonborn = {
        "personaId": persona.id,
        "prompt": persona.prompt,
        "requestedModel": persona.requested_model,
        "steps": [
            {
                "step": step.name,
                "status": step.status,
                "model": step.model,
                "durationMs": step.duration_ms,
                "fallbackFields": list(step.fallback_fields),
                "output": step.output,
            }
            for step in persona.steps.all()
        ],
        "driftAnchors": list(persona.drift_anchors),
        "driftSamples": list(persona.drift_samples),
        "embeddingModel": persona.embedding_model,
        "driftThreshold": persona.drift_threshold,
        "calibration": {
            "version": calibration.get("version"),
            "alpha": calibration.get("alpha"),
            "anchors": calibration.get("n_anchors"),
            "samples": calibration.get("n_samples", 0),
            "reviewedReplies": calibration.get("n_replies", 0),
        },
    }
    return card_v3(data, moonborn)


@dataclass(frozen=True)
class PreparedImport:
    """What importing a card needs, computed before the write (embedding takes CPU time, not a transaction)."""

    card: ImportedCard
    anchors: list[str]
    samples: list[str]
    calibrated: PersonaCalibration


def card_import_prepare(*, card: ImportedCard) -> PreparedImport:
    """Choose the drift anchors and samples (Moonborn's own, else the card's greetings and dialogue) and calibrate
    tier 0 on them (tier 1 is calibrated by the tier-1 worker, off the request).

    The calibration is always recomputed here: figures carried in a file are informative only, so an edited card
    cannot lower its own drift flags. What it embeds is bounded by the card's parsing: at most MAX_ANCHORS anchors
    and MAX_ANCHORS samples (80 texts) of at most MAX_ANCHOR_CHARS characters, ~0.1 s of CPU at the most.
    """
    anchors = list(card.moonborn.get("driftAnchors") or []) or anchor_texts_from_card(card.data)
    if not anchors:
        anchors = [card.name]
    samples = list(card.moonborn.get("driftSamples") or [])
    calibrated = calibrate_persona(tier0(), anchors=anchors, samples=samples)
    return PreparedImport(card=card, anchors=anchors, samples=samples, calibrated=calibrated)


def _duration_ms(value: object) -> int | None:
    """A step's duration from a card, or None when it is not one a PositiveIntegerField can hold (it is informative:
    a bad one is dropped rather than refusing the card)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DURATION_MS:
        return value
    return None


@transaction.atomic
def persona_import(*, owner_id: int, prepared: PreparedImport) -> Persona:
    """Create a `ready` persona of the owner from an imported card (steps restored when Moonborn data has them)."""
    card = prepared.card
    data = dict(card.data)
    moonborn = card.moonborn
    prompt = str(moonborn.get("prompt") or "") or f"Imported {card.spec} card: {card.name}"
    now = timezone.now()
    persona = Persona.objects.create(
        owner_id=owner_id,
        prompt=prompt,
        name=card.name,
        requested_model=str(moonborn.get("requestedModel") or ""),
        status=Persona.Status.READY,
        card=data,
        system_prompt=str(card.data.get("system_prompt") or ""),
        post_history_instructions=str(card.data.get("post_history_instructions") or ""),
        drift_anchors=prepared.anchors,
        drift_samples=prepared.samples,
        anchor_vectors=prepared.calibrated.anchor_vectors,
        embedding_model=prepared.calibrated.embedding_model,
        drift_threshold=prepared.calibrated.threshold,
        calibration=prepared.calibrated.calibration,
        completed_at=now,
    )
    steps = [s for s in moonborn.get("steps") or [] if s.get("step") in STEP_NAMES]
    PersonaStep.objects.bulk_create(
        PersonaStep(
            persona=persona,
            name=s["step"],
            position=STEP_NAMES.index(s["step"]),
            status=s.get("status") if s.get("status") in PersonaStep.Status.values else PersonaStep.Status.COMPLETED,
            output=s.get("output") or {},
            fallback_fields=[str(f) for f in s.get("fallbackFields") or [] if isinstance(f, str)],
            model=str(s.get("model") or "")[:200],
            duration_ms=_duration_ms(s.get("durationMs")),
            completed_at=now,
        )
        for s in {s["step"]: s for s in steps}.values()
    )
    return persona
