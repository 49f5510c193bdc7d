"""Admin for chat sessions and messages, read-only, with the drift flag of each reply visible.

The one thing an admin writes here is a review: the flag queue (and the list actions) mark a reply in or out of
character, and in-character verdicts join the persona's calibration (``services.message_review``).
"""

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import Truncator

from moonborn_site.adminkit import ReadOnly, ReadOnlyInline, pretty_json

from . import services
from .charts import sparkline
from .models import ChatSession, Message

FLAG_QUEUE_SIZE = 100

EMPTY = "—"
EXCERPT_CHARS = 80


def tier1_badge(message: Message) -> SafeString:
    """Tier 1's score and verdict, marked when the tiers disagree ("—" until the tier-1 worker has run)."""
    if message.tier1_score is None:
        skipped = message.tier1_scored_at is not None
        return format_html(
            '<span class="tier1-{}" style="color: #777;">{}</span>',
            "skipped" if skipped else "pending",
            "skipped: tier 0 was certain" if skipped else "—",
        )
    drifted = bool(message.tier1_flagged)
    disagree = message.drift_score is not None and drifted != message.flagged
    return format_html(
        '<span class="tier1{}" title="tier-1 drift {} over threshold {}" style="color: {};">{} {}{}</span>',
        " tiers-disagree" if disagree else "",
        format_score(message.tier1_score),
        format_score(message.tier1_threshold),
        "#ba2121" if drifted else "#777",
        format_score(message.tier1_score),
        "⚑ drifted" if drifted else "in character",
        " (tiers disagree)" if disagree else "",
    )


class TiersFilter(admin.SimpleListFilter):
    """Replies on which tier 0 (the `completed` verdict) and tier 1 (the full embedder) disagree."""

    title = "drift tiers"
    parameter_name = "tiers"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("disagree", "disagree"), ("agree", "agree"), ("pending", "tier 1 pending")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> QuerySet[Message]:
        disagree = Q(flagged=True, tier1_flagged=False) | Q(flagged=False, tier1_flagged=True)
        if self.value() == "disagree":
            return queryset.filter(disagree)
        if self.value() == "agree":
            return queryset.filter(tier1_flagged__isnull=False).exclude(disagree)
        if self.value() == "pending":
            return queryset.filter(role=Message.Role.ASSISTANT, tier1_flagged__isnull=True)
        return queryset


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


def _quote(text: Any) -> str:
    return f"“{text}”"


def _quote_all(keys: Any) -> str:
    return ", ".join(_quote(key) for key in keys) if isinstance(keys, list) else ""


def _plural(n: Any, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def lore_entry_name(record: dict[str, Any]) -> str:
    """An entry as the web UI names it: its name, else "entry <id>"."""
    return str(record.get("name") or f"entry {record.get('entry')}")


def lore_reason(reason: Any) -> str:
    """Why an entry went into a reply's prompt, or was left out (the reason records of ``chat.lorebook``), in the
    web UI's words: "key “lighthouse”", "always on", "via entry 3, key “storm”", "over the token budget"..."""
    r: dict[str, Any] = reason if isinstance(reason, dict) else {}
    kind = r.get("kind")
    key = "" if r.get("key") is None else f"key {_quote(r['key'])}"
    secondary = r.get("secondary")
    found = _quote_all(secondary) if isinstance(secondary, list) and secondary else ""
    if kind == "key":
        additional = r.get("additional")
        return f"{key} and {_quote_all(additional)}" if isinstance(additional, list) and additional else key
    if kind == "secondary_key":
        if r.get("logic") == "NOT_ANY":
            return f"{key}, no secondary key"
        if r.get("logic") == "NOT_ALL":
            return f"{key}, not every secondary key"
        return f"{key} and {found}" if found else key
    if kind == "constant":
        return "always on"
    if kind == "recursion":
        return f"via entry {r.get('via')}" + (f", {key}" if key else "")
    if kind == "decorator":
        decorator = r.get("decorator")
        if decorator == "@@additional_keys":
            return f"{key} but none of {_quote_all(r.get('keys'))} (@@additional_keys)"
        if decorator == "@@exclude_keys":
            return f"{key} but {_quote(r.get('excluded'))} excludes it (@@exclude_keys)"
        value = "" if r.get("value") is None else f" {r['value']}"
        turn = "" if r.get("turn") is None else f" (turn {r['turn']})"
        return f"decorator {decorator}{value}{turn}"
    if kind == "budget":
        tokens = _plural(r.get("tokens"), "token", "tokens")
        return f"over the token budget ({tokens}; {r.get('used')} of {r.get('budget')} used)"
    if kind == "scan_depth":
        return f"{key} only beyond the last {_plural(r.get('scan_depth'), 'message', 'messages')}"
    if kind == "secondary_keys":
        return f"{key} but secondary keys not met ({r.get('logic')}, {f'found {found}' if found else 'none found'})"
    if kind == "recursion_limit":
        return f"{key} via entry {r.get('via')}, past the recursion limit"
    return str(kind or "unknown")


def _lore_records(lore: dict[str, Any], name: str) -> list[dict[str, Any]]:
    records = lore.get(name)
    return [record for record in records if isinstance(record, dict)] if isinstance(records, list) else []


def lore_summary(message: Message) -> str:
    """ "2 entries · 1 skipped" for a reply that consulted a lorebook, "—" otherwise."""
    lore = message.lore if isinstance(message.lore, dict) else {}
    if "activated" not in lore:
        return EMPTY
    activated, skipped = _lore_records(lore, "activated"), _lore_records(lore, "skipped")
    text = _plural(len(activated), "entry", "entries") if activated else "no entries"
    return f"{text} · {len(skipped)} skipped" if skipped else text


def _lore_rows(records: list[dict[str, Any]], css: str) -> SafeString:
    rows = format_html_join(
        "",
        '<li data-entry="{}"><strong>{}</strong>{} — {}</li>',
        (
            (
                record.get("entry"),
                lore_entry_name(record),
                f" (entry {record.get('entry')})" if record.get("name") else "",
                lore_reason(record.get("reason")),
            )
            for record in records
        ),
    )
    return format_html('<ul class="{}" style="margin: 0 0 .4em; padding-left: 1.5em;">{}</ul>', css, rows)


def lore_detail(message: Message) -> SafeString:
    """The lore a reply's prompt used: each entry that went in and why, each candidate left out and why, the tokens
    they took, how many history messages the budget left out, and the state carried to the next turn."""
    lore = message.lore if isinstance(message.lore, dict) else {}
    if not lore:
        return format_html("{}", EMPTY)
    activated, skipped = _lore_records(lore, "activated"), _lore_records(lore, "skipped")
    parts: list[SafeString] = []
    if "activated" in lore:
        parts.append(
            format_html(
                '<p style="margin: 0 0 .2em;"><strong>In the prompt</strong> ({}, {}):</p>{}',
                _plural(len(activated), "entry", "entries"),
                _plural(lore.get("tokens", 0), "token", "tokens"),
                _lore_rows(activated, "lore-activated")
                if activated
                else format_html('<p style="margin: 0 0 .4em; color: #777;">{}</p>', "no entry"),
            )
        )
        if skipped:
            parts.append(
                format_html(
                    '<p style="margin: 0 0 .2em;"><strong>Left out</strong> ({}):</p>{}',
                    _plural(len(skipped), "candidate", "candidates"),
                    _lore_rows(skipped, "lore-skipped"),
                )
            )
    dropped = lore.get("historyDropped")
    if dropped:
        parts.append(
            format_html(
                '<p style="margin: 0 0 .2em;">{} left out of the prompt by its budget.</p>',
                _plural(dropped, "earlier message", "earlier messages"),
            )
        )
    state = lore.get("state")
    if isinstance(state, dict) and any(state.get(name) for name in ("kept", "spent")):
        parts.append(
            format_html(
                '<p style="margin: 0; color: #777;">Carried to the next turn: kept {}; spent {}.</p>',
                ", ".join(str(i) for i in state.get("kept") or ()) or "none",
                ", ".join(str(i) for i in state.get("spent") or ()) or "none",
            )
        )
    return format_html('<div class="lore">{}</div>', format_html_join("", "{}", ((part,) for part in parts)))


class MessageColumns:
    """A message's columns, in its session's inline and in the message list."""

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

    @admin.display(description="lore")
    def lore_display(self, message: Message) -> str:
        return lore_summary(message)


class MessageInline(MessageColumns, ReadOnlyInline):
    model = Message
    fields = (
        "index",
        "role",
        "content_excerpt",
        "status",
        "drift_score_display",
        "threshold_display",
        "flag",
        "lore_display",
    )
    readonly_fields = fields
    ordering = ("index",)
    show_change_link = True


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
        "sustained_display",
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
        "drift_streak",
        "sustained_display",
        "drift_sparkline",
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

    # Deleted as the API deletes one: the session's replies are taken out of its persona's drift counters.
    def delete_model(self, request: HttpRequest, obj: ChatSession) -> None:
        services.chat_sessions_delete(session_ids=[obj.pk])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ChatSession]) -> None:
        services.chat_sessions_delete(session_ids=list(queryset.values_list("pk", flat=True)))

    @admin.display(description="messages", ordering="message_total")
    def message_count(self, session: ChatSession) -> int:
        return int(getattr(session, "message_total", 0))

    @admin.display(description="flagged", ordering="flagged_total")
    def flagged_count(self, session: ChatSession) -> int:
        return int(getattr(session, "flagged_total", 0))

    @admin.display(description="drift EWMA", ordering="drift_ewma")
    def drift_ewma_display(self, session: ChatSession) -> str:
        return format_score(session.drift_ewma)

    @admin.display(description="sustained drift", ordering="sustained_drift_at")
    def sustained_display(self, session: ChatSession) -> SafeString:
        if session.sustained_drift_at is None:
            return format_html("{}", "no")
        return format_html(
            '<span class="sustained-drift" style="color: #ba2121; font-weight: bold;">since {}</span>',
            session.sustained_drift_at.strftime("%Y-%m-%d %H:%M"),
        )

    @admin.display(description="drift per turn")
    def drift_sparkline(self, session: ChatSession) -> SafeString:
        turns = list(session.messages.filter(role=Message.Role.ASSISTANT, drift_score__isnull=False).order_by("index"))
        if not turns:
            return format_html("{}", EMPTY)
        chart = sparkline(
            [m.drift_score for m in turns],
            [m.flagged for m in turns],
            threshold=session.persona.drift_threshold,
            chart_id=f"spark-{session.pk}",
        )
        return mark_safe(chart)  # built by chat.charts, every label escaped


@admin.register(Message)
class MessageAdmin(MessageColumns, ReadOnly, admin.ModelAdmin):
    # Read-only: a message is part of its session's numbered history (delete the session instead).

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
        "tier1_display",
        "lore_display",
        "review",
        "created_at",
    )
    list_select_related = ("session", "session__persona")
    list_filter = ("flagged", "tier1_flagged", TiersFilter, "review", "session__persona", "role", "status")
    actions = ("mark_in_character", "mark_out_of_character", "clear_review")
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
        "review",
        "reviewed_by",
        "reviewed_at",
        "drift_components_pretty",
        "lore_pretty",
        "tier1_display",
        "tier1_scored_at",
        "tier1_components_pretty",
        "created_at",
        "completed_at",
    )
    readonly_fields = fields

    @admin.display(description="persona", ordering="session__persona__name")
    def persona(self, message: Message) -> str:
        return str(message.session.persona)

    @admin.display(description="session")
    def session_link(self, message: Message) -> SafeString:
        url = reverse("admin:chat_chatsession_change", args=[message.session_id])
        return format_html('<a href="{}">{}</a>', url, message.session)

    @admin.display(description="drift components")
    def drift_components_pretty(self, message: Message) -> SafeString:
        return pretty_json(message.drift_components)

    @admin.display(description="lore in the prompt")
    def lore_pretty(self, message: Message) -> SafeString:
        return lore_detail(message)

    @admin.display(description="tier 1", ordering="tier1_score")
    def tier1_display(self, message: Message) -> SafeString:
        return tier1_badge(message)

    @admin.display(description="tier-1 components")
    def tier1_components_pretty(self, message: Message) -> SafeString:
        return pretty_json(message.tier1_components)

    # -- reviews: the flag queue and the list actions -----------------------------------------------------------

    def has_review_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("chat.change_message"))

    def _review(self, request: HttpRequest, queryset: QuerySet[Message], review: str) -> None:
        reviewer = request.user.pk if isinstance(request.user.pk, int) else None
        done = 0
        for pk in queryset.filter(role=Message.Role.ASSISTANT, drift_score__isnull=False).values_list("pk", flat=True):
            services.message_review(message_id=pk, review=review, reviewer_id=reviewer)
            done += 1
        label = dict(Message.Review.choices).get(review, "not reviewed")
        self.message_user(request, f"{done} repl{'y' if done == 1 else 'ies'} marked {label}; calibration updated.")

    @admin.action(description="Mark in character (joins the persona's calibration)", permissions=["review"])
    def mark_in_character(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        self._review(request, queryset, Message.Review.IN_CHARACTER)

    @admin.action(description="Mark out of character", permissions=["review"])
    def mark_out_of_character(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        self._review(request, queryset, Message.Review.OUT_OF_CHARACTER)

    @admin.action(description="Clear the review", permissions=["review"])
    def clear_review(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        self._review(request, queryset, "")

    def get_urls(self) -> list[URLPattern]:
        own = [
            path("flag-queue/", self.admin_site.admin_view(self.flag_queue_view), name="chat_message_flag_queue"),
        ]
        return own + super().get_urls()

    def flag_queue_view(self, request: HttpRequest) -> HttpResponse:
        """Flagged replies nobody has reviewed yet, newest first, each with in/out-of-character buttons."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            if not self.has_review_permission(request):
                raise PermissionDenied
            review = request.POST.get("review", "")
            if review not in Message.Review.values:
                self.message_user(request, "Choose in character or out of character.", messages.ERROR)
            else:
                try:
                    message = services.message_review(
                        message_id=request.POST.get("message", ""),
                        review=review,
                        reviewer_id=request.user.pk if isinstance(request.user.pk, int) else None,
                    )
                except Message.DoesNotExist:
                    self.message_user(request, "That reply does not exist or has no drift score.", messages.ERROR)
                else:
                    label = dict(Message.Review.choices)[review]
                    self.message_user(request, f"Reply {message.pk} marked {label}; calibration updated.")
            target = request.POST.get("next", "")
            if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
                target = reverse("admin:chat_message_flag_queue")
            return HttpResponseRedirect(target)
        queue = list(
            Message.objects.filter(Q(flagged=True) | Q(tier1_flagged=True), review="", role=Message.Role.ASSISTANT)
            .select_related("session", "session__persona")
            .order_by("-created_at")[:FLAG_QUEUE_SIZE]
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Flag queue: flagged replies to review",
            "queue": queue,
            "can_review": self.has_review_permission(request),
            "reviewed_count": Message.objects.exclude(review="").count(),
        }
        return TemplateResponse(request, "admin/chat/message/flag_queue.html", context)
