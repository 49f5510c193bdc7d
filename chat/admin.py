"""Admin for chat sessions and messages, read-only, with the drift flag of each reply visible."""

import json
from typing import Any

from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from .models import ChatSession, Message

EMPTY = "—"
EXCERPT_CHARS = 80


def drift_flag(message: Message) -> SafeString:
    """A red "⚑ drifted" badge for a flagged reply, a muted "in character" for a scored one, "—" otherwise."""
    if message.flagged:
        return format_html(
            '<span class="drift-flag" title="drift {} over threshold {}" style="display: inline-block; '
            "padding: 1px 6px; border-radius: 3px; background: #ba2121; color: #fff; font-weight: bold; "
            'white-space: nowrap;">{}</span>',
            format_score(message.drift_score),
            format_score(message.drift_threshold),
            "⚑ drifted",
        )
    if message.drift_score is None:
        return format_html("{}", EMPTY)
    return format_html('<span class="drift-ok" style="color: #777;">{}</span>', "in character")


def format_score(value: float | None) -> str:
    return EMPTY if value is None else f"{value:.3f}"


def excerpt(message: Message) -> str:
    return Truncator(" ".join(message.content.split())).chars(EXCERPT_CHARS) or EMPTY


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("index", "role", "content_excerpt", "status", "drift_score_display", "threshold_display", "flag")
    readonly_fields = fields
    ordering = ("index",)
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="content")
    def content_excerpt(self, message: Message) -> str:
        return excerpt(message)

    @admin.display(description="drift score")
    def drift_score_display(self, message: Message) -> str:
        return format_score(message.drift_score)

    @admin.display(description="threshold")
    def threshold_display(self, message: Message) -> str:
        return format_score(message.drift_threshold)

    @admin.display(description="drift flag")
    def flag(self, message: Message) -> SafeString:
        return drift_flag(message)


@admin.register(ChatSession)
class ChatSessionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "title",
        "persona",
        "owner",
        "message_count",
        "flagged_count",
        "drift_ewma_display",
        "created_at",
    )
    list_select_related = ("persona", "owner")
    list_filter = (("persona", admin.RelatedOnlyFieldListFilter), ("owner", admin.RelatedOnlyFieldListFilter))
    search_fields = ("id", "title", "persona__name", "persona__id")
    ordering = ("-created_at",)
    fields = (
        "id",
        "title",
        "persona",
        "owner",
        "message_count",
        "flagged_count",
        "drift_ewma_display",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
    inlines = (MessageInline,)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ChatSession]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                message_total=Count("messages"),
                flagged_total=Count("messages", filter=Q(messages__flagged=True)),
            )
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="messages", ordering="message_total")
    def message_count(self, session: ChatSession) -> int:
        return int(getattr(session, "message_total", 0))

    @admin.display(description="flagged", ordering="flagged_total")
    def flagged_count(self, session: ChatSession) -> int:
        return int(getattr(session, "flagged_total", 0))

    @admin.display(description="drift EWMA", ordering="drift_ewma")
    def drift_ewma_display(self, session: ChatSession) -> str:
        return format_score(session.drift_ewma)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "session",
        "persona",
        "index",
        "role",
        "content_excerpt",
        "status",
        "drift_score_display",
        "threshold_display",
        "flag",
        "created_at",
    )
    list_select_related = ("session", "session__persona")
    list_filter = ("flagged", "session__persona", "role", "status")
    search_fields = ("id", "content", "session__id")
    ordering = ("-created_at",)
    fields = (
        "id",
        "session_link",
        "persona",
        "index",
        "role",
        "status",
        "model",
        "content",
        "error",
        "drift_score_display",
        "threshold_display",
        "flag",
        "drift_components_pretty",
        "created_at",
        "completed_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A message is part of its session's numbered history; delete the session instead.
        return False

    @admin.display(description="persona", ordering="session__persona__name")
    def persona(self, message: Message) -> str:
        return str(message.session.persona)

    @admin.display(description="session")
    def session_link(self, message: Message) -> SafeString:
        url = reverse("admin:chat_chatsession_change", args=[message.session_id])
        return format_html('<a href="{}">{}</a>', url, message.session)

    @admin.display(description="content")
    def content_excerpt(self, message: Message) -> str:
        return excerpt(message)

    @admin.display(description="drift score", ordering="drift_score")
    def drift_score_display(self, message: Message) -> str:
        return format_score(message.drift_score)

    @admin.display(description="threshold", ordering="drift_threshold")
    def threshold_display(self, message: Message) -> str:
        return format_score(message.drift_threshold)

    @admin.display(description="drift flag", ordering="flagged")
    def flag(self, message: Message) -> SafeString:
        return drift_flag(message)

    @admin.display(description="drift components")
    def drift_components_pretty(self, message: Message) -> SafeString:
        text = json.dumps(message.drift_components, indent=2, ensure_ascii=False)
        return format_html('<pre style="white-space: pre-wrap; margin: 0;">{}</pre>', text)
