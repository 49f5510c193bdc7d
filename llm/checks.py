"""`manage.py check` (and every command that runs checks) reports bad provider settings."""

from typing import Any

from django.core.checks import Error, register


@register()
def provider_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """One error with one sentence when the MOONBORN_LLM_* / MOONBORN_EMBEDDINGS settings cannot work."""
    from .providers import configuration_error

    error = configuration_error()
    return [] if error is None else [Error(error, id="moonborn.E001")]


@register()
def drift_table(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """One error when there is neither a tier-0 drift table nor the MiniLM weights to build one."""
    from django.conf import settings

    from .static_embeddings import table_error

    error = table_error(settings.MOONBORN_CACHE_DIR)
    return [] if error is None else [Error(error, id="moonborn.E002")]
