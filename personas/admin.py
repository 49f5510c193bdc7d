"""Admin for personas: pipeline progress, drift statistics and the drift dashboard, character card import/export."""

import io
import json
import re
import unicodedata
import zipfile
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from chat.charts import Point, histogram, line_chart, sparkline
from chat.models import ChatSession, Message
from chat.scoring import DRIFT_ALPHA, calibration_scores
from moonborn_site.adminkit import ReadOnlyInline, pretty_json

from .card_services import card_import_prepare, persona_card, persona_import
from .cards import CardError, parse_card_bytes
from .models import STEP_NAMES, Persona, PersonaStep
from .selectors import SCORING_FIELDS, with_drift_stats

EMPTY = "—"


# The most of a persona's name that a card's file name keeps (the id that follows makes it unique).
CARD_FILENAME_NAME_LIMIT = 60


def card_filename(persona: Persona) -> str:
    """`{name}-{id}.json`, safe as a ZIP member and a download's name whatever the persona is called.

    A name is anyone's text (`../../etc/passwd`, `C:\\x`, a NUL, 200 characters): it is cut down to ASCII letters,
    digits and `_` with single `-` between runs of them, and bounded; the id (letters, digits, `_`) makes each name
    unique in an archive. An unzip tool writes the member where its name says: never outside its folder here.
    """
    ascii_name = unicodedata.normalize("NFKD", persona.name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9_]+", "-", ascii_name).strip("-_")[:CARD_FILENAME_NAME_LIMIT].strip("-_")
    return f"{slug}-{persona.id}.json" if slug else f"{persona.id}.json"


def annotate_persona_stats(queryset: QuerySet[Persona]) -> QuerySet[Persona]:
    """The drift statistics of `personas.selectors.with_drift_stats`, and what only the admin shows: the steps done
    and the sessions in sustained drift, each a correlated subquery (joins would multiply rows and counts)."""
    steps_done = (
        PersonaStep.objects.filter(persona=OuterRef("pk"), status=PersonaStep.Status.COMPLETED)
        .order_by()
        .values("persona")
        .annotate(n=Count("pk"))
        .values("n")
    )
    sustained = (
        ChatSession.objects.filter(persona=OuterRef("pk"), sustained_drift_at__isnull=False)
        .order_by()
        .values("persona")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return with_drift_stats(queryset).annotate(
        sustained_sessions=Coalesce(Subquery(sustained, output_field=IntegerField()), Value(0)),
        steps_done=Coalesce(Subquery(steps_done, output_field=IntegerField()), Value(0)),
    )


def format_drift(value: float | None) -> str:
    return EMPTY if value is None else f"{value:.3f}"


def format_share(value: float | None) -> str:
    return EMPTY if value is None else f"{value * 100:.1f}%"


# Health badge: the flag rate is compared with alpha, the rate the calibration expects on in-character replies.
HEALTH_COLOURS = {"healthy": "#2e7d32", "watch": "#b26a00", "drifting": "#ba2121", "no data": "#777"}


def drift_health(reply_count: int, flagged_share: float | None, sustained_sessions: int) -> str:
    """`no data`, `healthy` (flag rate within alpha + 5 points), `watch` (up to 3 alpha + 5 points) or `drifting`.

    Any session in sustained drift makes the persona `drifting` whatever its flag rate.
    """
    if not reply_count or flagged_share is None:
        return "no data"
    if sustained_sessions or flagged_share > 3 * DRIFT_ALPHA + 0.05:
        return "drifting"
    if flagged_share > DRIFT_ALPHA + 0.05:
        return "watch"
    return "healthy"


def health_badge(label: str, title: str) -> SafeString:
    return format_html(
        '<span class="drift-health drift-health-{}" title="{}" style="display: inline-block; padding: 1px 6px; '
        'border-radius: 3px; background: {}; color: #fff; font-weight: bold; white-space: nowrap;">{}</span>',
        label.replace(" ", "-"),
        title,
        HEALTH_COLOURS[label],
        label,
    )


class CardImportForm(forms.Form):
    owner = forms.ModelChoiceField(queryset=get_user_model().objects.order_by("username"))
    card = forms.FileField(help_text="A Character Card V3 or V2: JSON, or a PNG with a ccv3/chara text chunk.")


class PersonaChangeList(ChangeList):
    """The changelist rows leave out the large generated fields no column shows."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: list[str | None] | None = None) -> QuerySet:
        return (
            super()
            .get_queryset(request, exclude_parameters)
            .defer(*SCORING_FIELDS, "card", "drift_anchors", "system_prompt", "post_history_instructions", "prompt")
        )


class PersonaStepInline(ReadOnlyInline):
    model = PersonaStep
    fields = ("position", "name", "status", "model", "duration", "fallback", "output_pretty", "completed_at")
    readonly_fields = fields
    ordering = ("position",)

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
        "drift_health_display",
        "created_at",
    )
    actions = ("export_cards",)
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
                    "drift_dashboard_link",
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
        "drift_dashboard_link",
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

    @admin.display(description="drift health")
    def drift_health_display(self, persona: Persona) -> SafeString:
        replies = int(getattr(persona, "reply_count", 0) or 0)
        share = getattr(persona, "flagged_share", None)
        sustained = int(getattr(persona, "sustained_sessions", 0) or 0)
        label = drift_health(replies, share, sustained)
        title = f"flag rate {format_share(share)} vs alpha {DRIFT_ALPHA:.0%}; {sustained} session(s) in sustained drift"
        return health_badge(label, title)

    @admin.display(description="drift dashboard")
    def drift_dashboard_link(self, persona: Persona) -> SafeString:
        url = reverse("admin:personas_persona_drift", args=[persona.pk])
        return format_html('<a class="button" href="{}">Open the drift dashboard</a>', url)

    # -- drift dashboard -------------------------------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<path:object_id>/drift/",
                self.admin_site.admin_view(self.drift_dashboard_view),
                name="personas_persona_drift",
            ),
            path("import-card/", self.admin_site.admin_view(self.import_card_view), name="personas_persona_import"),
        ]
        return own + super().get_urls()

    def drift_dashboard_view(self, request: HttpRequest, object_id: str) -> TemplateResponse:
        """Drift over time against the threshold, the score histogram against the calibration set, drift by turn,
        the persona's sessions with a per-turn sparkline, and its flagged replies waiting for review."""
        persona = get_object_or_404(annotate_persona_stats(Persona.objects.all()), pk=object_id)
        if not self.has_view_permission(request, persona):
            raise PermissionDenied
        newest = Message.objects.filter(
            session__persona=persona, role=Message.Role.ASSISTANT, drift_score__isnull=False
        ).order_by("-completed_at", "-created_at", "-pk")[:DASHBOARD_REPLIES]
        replies = list(reversed(newest))
        threshold = persona.drift_threshold
        over_time = [
            Point(
                i,
                float(m.drift_score or 0.0),
                m.flagged,
                f"{m.session_id} turn {m.index // 2 + 1}: {m.drift_score:.3f}",
            )
            for i, m in enumerate(replies)
        ]
        by_turn = [
            Point(
                m.index // 2 + 1,
                float(m.drift_score or 0.0),
                m.flagged,
                f"turn {m.index // 2 + 1}: {m.drift_score:.3f}",
            )
            for m in replies
        ]
        calibration = calibration_scores(
            anchor_vectors=bytes(persona.anchor_vectors), calibration=persona.calibration or {}
        )
        sessions = []
        for session in ChatSession.objects.filter(persona=persona).order_by("-created_at")[:DASHBOARD_SESSIONS]:
            turns = list(
                session.messages.filter(role=Message.Role.ASSISTANT, drift_score__isnull=False).order_by("index")
            )
            sessions.append(
                {
                    "session": session,
                    "url": reverse("admin:chat_chatsession_change", args=[session.pk]),
                    "turns": len(turns),
                    "flagged": sum(m.flagged for m in turns),
                    "ewma": format_drift(session.drift_ewma),
                    "sparkline": mark_safe(  # built by chat.charts, every label escaped
                        sparkline(
                            [m.drift_score for m in turns],
                            [m.flagged for m in turns],
                            threshold=threshold,
                            chart_id=f"spark-{session.pk}",
                        )
                    ),
                }
            )
        # Flagged by either tier (tier 1 scores after `completed`, and may disagree).
        flagged = [m for m in reversed(replies) if (m.flagged or m.tier1_flagged) and not m.review][:DASHBOARD_FLAGS]
        share = getattr(persona, "flagged_share", None)
        sustained = int(getattr(persona, "sustained_sessions", 0) or 0)
        health = drift_health(int(getattr(persona, "reply_count", 0) or 0), share, sustained)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": persona,
            "persona": persona,
            "title": f"Drift dashboard: {persona}",
            "health": health_badge(health, f"flag rate {format_share(share)} vs alpha {DRIFT_ALPHA:.0%}"),
            "flag_rate": format_share(share),
            "alpha": f"{DRIFT_ALPHA:.0%}",
            "threshold": format_drift(threshold),
            "reply_count": len(replies),
            "mean_drift": format_drift(getattr(persona, "mean_drift", None)),
            "sustained_sessions": sustained,
            "calibration": persona.calibration or {},
            "chart_over_time": mark_safe(  # built by chat.charts, every label escaped
                line_chart(
                    over_time,
                    threshold=threshold,
                    title="Drift over time",
                    x_label="replies, oldest first",
                    chart_id="chart-over-time",
                )  # fmt: skip
            ),
            "chart_histogram": mark_safe(
                histogram(
                    [p.y for p in over_time],
                    calibration,
                    threshold=threshold,
                    title="Drift score distribution",
                    chart_id="chart-histogram",
                )  # fmt: skip
            ),
            "chart_by_turn": mark_safe(
                line_chart(
                    by_turn,
                    threshold=threshold,
                    title="Drift by turn",
                    x_label="turn in session",
                    chart_id="chart-by-turn",
                    connect=False,
                )  # fmt: skip
            ),
            "sessions": sessions,
            "flagged": flagged,
            "flag_queue_url": reverse("admin:chat_message_flag_queue"),
            "change_url": reverse("admin:personas_persona_change", args=[persona.pk]),
        }
        return TemplateResponse(request, "admin/personas/persona/drift_dashboard.html", context)

    # -- character cards -------------------------------------------------------------------------------------------

    @admin.action(description="Export as Character Card V3 (JSON)")
    def export_cards(self, request: HttpRequest, queryset: QuerySet[Persona]) -> HttpResponse | None:
        personas = list(queryset.filter(status=Persona.Status.READY).prefetch_related("steps"))
        if not personas:
            self.message_user(request, "Only ready personas have a card; none was selected.", messages.WARNING)
            return None
        files = {card_filename(p): json.dumps(persona_card(persona=p), ensure_ascii=False, indent=2) for p in personas}
        if len(files) == 1:
            (name, text), = files.items()  # fmt: skip
            response = HttpResponse(text, content_type="application/json; charset=utf-8")
        else:
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for filename, text in files.items():
                    archive.writestr(filename, text)
            name = "moonborn-cards.zip"
            response = HttpResponse(buffer.getvalue(), content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response

    def import_card_view(self, request: HttpRequest) -> HttpResponse:
        """Upload a card (JSON or PNG) and create a ready persona for the chosen owner."""
        if not self.has_view_permission(request) or not request.user.has_perm("personas.change_persona"):
            raise PermissionDenied
        form = CardImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["card"]
            try:
                if upload.size > CARD_UPLOAD_MAX_BYTES:
                    raise CardError(f"A card may be at most {CARD_UPLOAD_MAX_BYTES} bytes.")
                card = parse_card_bytes(upload.read())
            except CardError as exc:
                form.add_error("card", str(exc))
            else:
                persona = persona_import(
                    owner_id=form.cleaned_data["owner"].pk, prepared=card_import_prepare(card=card)
                )
                self.message_user(request, f"Imported {card.spec} card as {persona.name} ({persona.id}).")
                return HttpResponseRedirect(reverse("admin:personas_persona_change", args=[persona.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Import a character card",
            "form": form,
        }
        return TemplateResponse(request, "admin/personas/persona/import_card.html", context)


# How much the dashboard shows: the newest replies, sessions and unreviewed flags.
DASHBOARD_REPLIES = 2000
DASHBOARD_SESSIONS = 50
DASHBOARD_FLAGS = 50
CARD_UPLOAD_MAX_BYTES = 8 * 1024 * 1024
