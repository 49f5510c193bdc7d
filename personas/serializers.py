from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from moonborn_site.http import StrictCharField
from moonborn_site.openapi import StreamErrorData

from .models import STEP_NAMES, Persona, PersonaStep


class PersonaCreateSerializer(serializers.Serializer):
    prompt = StrictCharField(min_length=1, max_length=4000, trim_whitespace=True)
    name = StrictCharField(required=False, allow_blank=True, max_length=200, default="")
    model = StrictCharField(required=False, allow_blank=True, max_length=200, default="")


class PersonaStepSerializer(serializers.ModelSerializer):
    step = serializers.ChoiceField(choices=STEP_NAMES, source="name")

    class Meta:
        model = PersonaStep
        fields = ["step", "status", "model", "duration_ms", "output", "fallback_fields", "started_at", "completed_at"]


class PersonaDriftSerializer(serializers.Serializer):
    """Drift over the persona's chats: its scored replies, how many were flagged, and their mean score."""

    replies = serializers.IntegerField(min_value=0)
    flagged = serializers.IntegerField(min_value=0)
    flagged_share = serializers.FloatField(allow_null=True, min_value=0, max_value=1)
    mean_score = serializers.FloatField(allow_null=True, min_value=0, max_value=1)


class PersonaSerializer(serializers.ModelSerializer):
    steps = PersonaStepSerializer(many=True, read_only=True)
    model = serializers.SerializerMethodField()
    drift = serializers.SerializerMethodField()

    class Meta:
        model = Persona
        fields = [
            "id",
            "name",
            "status",
            "prompt",
            "model",
            "created_at",
            "updated_at",
            "completed_at",
            "duration_ms",
            "error",
            "steps",
            "card",
            "system_prompt",
            "post_history_instructions",
            "drift_threshold",
            "drift_anchors",
            "embedding_model",
            "drift",
        ]

    def get_model(self, persona: Persona) -> str:
        steps = list(persona.steps.all())
        return steps[0].model if steps else persona.requested_model

    @extend_schema_field(PersonaDriftSerializer)
    def get_drift(self, persona: Persona) -> dict[str, Any]:
        replies = getattr(persona, "reply_count", 0) or 0
        flagged = getattr(persona, "flagged_count", 0) or 0
        mean = getattr(persona, "mean_drift", None)
        return {
            "replies": replies,
            "flagged": flagged,
            "flagged_share": round(flagged / replies, 4) if replies else None,
            "mean_score": round(mean, 4) if mean is not None else None,
        }


# The events of a persona generation (personas.pipeline), in the order a run sends them: their `data`.


class PipelineStartedData(serializers.Serializer):
    """The generation began (first): the persona a client that drops re-fetches."""

    persona_id = serializers.CharField()


class StepStartedData(serializers.Serializer):
    """One of the six steps began."""

    step = serializers.ChoiceField(choices=STEP_NAMES)


class StepCompletedData(serializers.Serializer):
    """One of the six steps is done and stored."""

    step = serializers.ChoiceField(choices=STEP_NAMES)
    duration_ms = serializers.IntegerField(min_value=0)
    model = serializers.CharField(help_text="The model that wrote the step.")


class PipelineCompletedData(serializers.Serializer):
    """The persona is ready (terminal)."""

    persona_id = serializers.CharField()
    duration_ms = serializers.IntegerField(min_value=0)


PERSONA_EVENTS: dict[str, type[serializers.Serializer]] = {
    "pipeline.started": PipelineStartedData,
    "step.started": StepStartedData,
    "step.completed": StepCompletedData,
    "pipeline.completed": PipelineCompletedData,
    "error": StreamErrorData,
}
