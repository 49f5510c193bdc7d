"""Admin for personas: pipeline progress and drift statistics, generated data read-only."""

import json
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Avg, Case, Count, FloatField, IntegerField, OuterRef, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from chat.models import Message

from .models import STEP_NAMES, Persona, PersonaStep

EMPTY = "—"


def pretty_json(value: Any) -> SafeString:
    """A JSON value indented in a <pre> block (escaped)."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
    return format_html('<pre style="white-space: pre-wrap; margin: 0;">{}</pre>', text)


def annotate_persona_stats(queryset: QuerySet[Persona]) -> QuerySet[Persona]:
    """Add steps done and the drift statistics of the persona's replies, each as a correlated subquery.

    A reply is an assistant message with a drift score, as in `personas.services.persona_queryset`.
    Subqueries rather than joins: steps × messages joins would multiply rows and the counts with them.
    """
    replies = (
        Message.objects.filter(session__persona=OuterRef("pk"), role=Message.Role.ASSISTANT, drift_score__isnull=False)
        .order_by()
        .values("session__persona")
    )
    steps_done = (
        PersonaStep.objects.filter(persona=OuterRef("pk"), status=PersonaStep.Status.COMPLETED)
        .order_by()
        .values("persona")
        .annotate(n=Count("pk"))
        .values("n")
    )
    flagged_indicator = Case(When(flagged=True, then=Value(1.0)), default=Value(0.0), output_field=FloatField())
    return queryset.annotate(
        steps_done=Coalesce(Subquery(steps_done, output_field=IntegerField()), Value(0)),
        reply_count=Coalesce(
            Subquery(replies.annotate(n=Count("pk")).values("n"), output_field=IntegerField()), Value(0)
        ),
        mean_drift=Subquery(replies.annotate(m=Avg("drift_score")).values("m"), output_field=FloatField()),
        flagged_share=Subquery(replies.annotate(s=Avg(flagged_indicator)).values("s"), output_field=FloatField()),
    )


def format_drift(value: float | None) -> str:
    return EMPTY if value is None else f"{value:.3f}"


def format_share(value: float | None) -> str:
    return EMPTY if value is None else f"{value * 100:.1f}%"


class PersonaChangeList(ChangeList):
    """The changelist rows leave out the large generated fields no column shows."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: list[str | None] | None = None) -> QuerySet:
        return (
            super()
            .get_queryset(request, exclude_parameters)
            .defer(
                "card",
                "calibration",
                "anchor_vectors",
                "drift_anchors",
                "system_prompt",
                "post_history_instructions",
                "prompt",
            )
        )


class PersonaStepInline(admin.TabularInline):
    model = PersonaStep
    fields = ("position", "name", "status", "model", "duration", "fallback", "output_pretty", "completed_at")
    readonly_fields = fields
    ordering = ("position",)
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="duration")
    def duration(self, step: PersonaStep) -> str:
        return EMPTY if step.duration_ms is None else f"{step.duration_ms} ms"

    @admin.display(description="fallback fields")
    def fallback(self, step: PersonaStep) -> str:
        return ", ".join(str(f) for f in step.fallback_fields) if step.fallback_fields else EMPTY

    @admin.display(description="output")
    def output_pretty(self, step: PersonaStep) -> SafeString:
        return pretty_json(step.output)


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    list_display = (
        "name_display",
        "id",
        "owner",
        "status",
        "steps_display",
        "drift_threshold_display",
        "reply_count_display",
        "mean_drift_display",
        "flagged_share_display",
        "created_at",
    )
    list_display_links = ("name_display", "id")
    list_filter = ("status", ("owner", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("owner",)
    search_fields = ("name", "id", "prompt")
    ordering = ("-created_at",)
    inlines = (PersonaStepInline,)
    # Only the name and the status are editable; everything else came out of the pipeline.
    fieldsets = (
        (None, {"fields": ("id", "name", "status", "owner", "prompt", "requested_model", "error")}),
        (
            "Generation",
            {"fields": ("steps_display", "duration_ms", "created_at", "updated_at", "completed_at")},
        ),
        ("Card", {"fields": ("card_pretty", "system_prompt", "post_history_instructions")}),
        (
            "Drift",
            {
                "fields": (
                    "drift_anchors_display",
                    "embedding_model",
                    "drift_threshold",
                    "calibration_pretty",
                    "reply_count_display",
                    "mean_drift_display",
                    "flagged_share_display",
                )
            },
        ),
    )
    readonly_fields = (
        "id",
        "owner",
        "prompt",
        "requested_model",
        "error",
        "steps_display",
        "duration_ms",
        "created_at",
        "updated_at",
        "completed_at",
        "card_pretty",
        "system_prompt",
        "post_history_instructions",
        "drift_anchors_display",
        "embedding_model",
        "drift_threshold",
        "calibration_pretty",
        "reply_count_display",
        "mean_drift_display",
        "flagged_share_display",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Persona]:
        return annotate_persona_stats(super().get_queryset(request))

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return PersonaChangeList

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Personas are produced by the generation pipeline (POST /v1/personas), never typed in.
        return False

    @admin.display(description="name", ordering="name")
    def name_display(self, persona: Persona) -> str:
        return persona.name or EMPTY

    @admin.display(description="steps done", ordering="steps_done")
    def steps_display(self, persona: Persona) -> str:
        return f"{getattr(persona, 'steps_done', 0)}/{len(STEP_NAMES)}"

    @admin.display(description="drift threshold", ordering="drift_threshold")
    def drift_threshold_display(self, persona: Persona) -> str:
        return format_drift(persona.drift_threshold)

    @admin.display(description="replies", ordering="reply_count")
    def reply_count_display(self, persona: Persona) -> str:
        count = getattr(persona, "reply_count", 0)
        if not count:
            return "0"
        url = reverse("admin:chat_message_changelist")
        return format_html(
            '<a href="{}?session__persona__id__exact={}&amp;role__exact=assistant">{}</a>', url, persona.pk, count
        )

    @admin.display(description="mean drift", ordering="mean_drift")
    def mean_drift_display(self, persona: Persona) -> str:
        return format_drift(getattr(persona, "mean_drift", None))

    @admin.display(description="flagged share", ordering="flagged_share")
    def flagged_share_display(self, persona: Persona) -> str:
        return format_share(getattr(persona, "flagged_share", None))

    @admin.display(description="card")
    def card_pretty(self, persona: Persona) -> SafeString:
        return pretty_json(persona.card)

    @admin.display(description="calibration")
    def calibration_pretty(self, persona: Persona) -> SafeString:
        return pretty_json(persona.calibration)

    @admin.display(description="drift anchors")
    def drift_anchors_display(self, persona: Persona) -> str:
        anchors = persona.drift_anchors or []
        if not anchors:
            return EMPTY
        items = format_html_join("", "<li>{}</li>", ((str(anchor),) for anchor in anchors))
        return format_html('<ol style="margin: 0; padding-left: 1.5em;">{}</ol>', items)
