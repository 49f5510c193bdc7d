"""Admin for API keys (never showing their hash) and usage records (read-only)."""

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from moonborn_site.adminkit import ReadOnly

from .keys import KEY_PREFIX
from .models import ApiKey, UsageRecord
from .services import api_key_revoke


class KeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "active"), ("revoked", "revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    # `key_hash` is deliberately absent from every list, form and search below.
    list_display = ("key_display", "owner", "name", "created_at", "last_used_at", "revoked_at", "active")
    list_select_related = ("owner",)
    list_filter = (KeyStateFilter,)
    search_fields = ("prefix", "name", "owner__username")
    ordering = ("-created_at",)
    fields = ("key_display", "owner", "name", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("key_display", "owner", "created_at", "last_used_at", "revoked_at")
    actions = ("revoke_selected",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Keys are made with `manage.py create_api_key`, which prints the plain key once.
        return False

    @admin.display(description="key", ordering="prefix")
    def key_display(self, api_key: ApiKey) -> str:
        return f"{KEY_PREFIX}{api_key.prefix}_…"

    @admin.display(description="active", boolean=True, ordering="revoked_at")
    def active(self, api_key: ApiKey) -> bool:
        return api_key.is_active

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(prefix=api_key.prefix)
            revoked += 1
        if revoked:
            self.message_user(request, f"Revoked {revoked} key{'s' if revoked != 1 else ''}.", messages.SUCCESS)
        else:
            self.message_user(request, "The selected keys were already revoked.", messages.WARNING)


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnly, admin.ModelAdmin):
    list_display = (
        "kind",
        "run_id",
        "owner",
        "provider",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "status",
        "started_at",
        "ended_at",
    )
    list_select_related = ("owner",)
    list_filter = ("kind", "status")
    search_fields = ("run_id", "owner__username", "model", "provider")
    ordering = ("-started_at",)
    fields = list_display
    readonly_fields = list_display
