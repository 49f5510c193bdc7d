from typing import Any

from rest_framework import serializers

from moonborn_site.http import StrictCharField

from .models import Persona, PersonaStep


class PersonaCreateSerializer(serializers.Serializer):
    prompt = StrictCharField(min_length=1, max_length=4000, trim_whitespace=True)
    name = StrictCharField(required=False, allow_blank=True, max_length=200, default="")
    model = StrictCharField(required=False, allow_blank=True, max_length=200, default="")


class PersonaStepSerializer(serializers.ModelSerializer):
    step = serializers.CharField(source="name")

    class Meta:
        model = PersonaStep
        fields = ["step", "status", "model", "duration_ms", "output", "fallback_fields", "started_at", "completed_at"]


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
