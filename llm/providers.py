"""Choose the model provider from settings, the way Django picks EMAIL_BACKEND."""

from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .base import Provider
from .demo import DemoProvider

PROVIDERS = ("demo",)


@cache
def get_provider() -> Provider:
    """Return the process's provider, configured by the MOONBORN_LLM_* settings."""
    name = settings.MOONBORN_LLM_PROVIDER
    if name == "demo":
        return DemoProvider(
            model=settings.MOONBORN_LLM_MODEL or "demo",
            delay_ms=settings.MOONBORN_DEMO_DELAY_MS,
            reply_tokens=settings.MOONBORN_DEMO_REPLY_TOKENS,
            fail_after_tokens=settings.MOONBORN_DEMO_FAIL_AFTER_TOKENS,
        )
    raise ImproperlyConfigured(
        f"MOONBORN_LLM_PROVIDER={name!r} is not a provider Moonborn knows; use one of: {', '.join(PROVIDERS)}."
    )
