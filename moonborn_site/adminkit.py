"""What the admin pages share: records shown and never typed in, and JSON shown as it is stored."""

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString


class ReadOnly:
    """A record the API and its runs produce: the admin shows it and never adds, edits or deletes one."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(ReadOnly, admin.TabularInline):
    extra = 0
    max_num = 0
    can_delete = False


def pretty_json(value: Any) -> SafeString:
    """A JSON value indented in a <pre> block (escaped)."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
    return format_html('<pre style="white-space: pre-wrap; margin: 0;">{}</pre>', text)
