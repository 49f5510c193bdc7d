"""Choose the model provider from settings, the way Django picks EMAIL_BACKEND."""

from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from moonborn_site.state import process_state

from .base import Provider
from .demo import DemoProvider

PROVIDERS = ("demo", "openai", "anthropic")
EMBEDDINGS = ("local", "openai")


def api_key(provider: str) -> str:
    """MOONBORN_LLM_API_KEY, else the provider's own variable (OPENAI_API_KEY, ANTHROPIC_API_KEY)."""
    if settings.MOONBORN_LLM_API_KEY:
        return str(settings.MOONBORN_LLM_API_KEY)
    if provider == "anthropic":
        return str(settings.MOONBORN_ANTHROPIC_API_KEY)
    return str(settings.MOONBORN_OPENAI_API_KEY)


def _is_openai_itself(base_url: str) -> bool:
    return not base_url or (urlsplit(base_url).hostname or "").endswith("openai.com")


def configuration_error() -> str | None:
    """One sentence saying what is wrong with the provider settings, or None when they can work."""
    name = settings.MOONBORN_LLM_PROVIDER
    base_url = settings.MOONBORN_LLM_BASE_URL
    if name not in PROVIDERS:
        return f"MOONBORN_LLM_PROVIDER={name!r} is not a provider Moonborn knows; use one of: {', '.join(PROVIDERS)}."
    if base_url and urlsplit(base_url).scheme not in ("http", "https"):
        return f"MOONBORN_LLM_BASE_URL={base_url!r} is not an http(s) URL."
    if settings.MOONBORN_LLM_TIMEOUT_SECONDS <= 0:
        return "MOONBORN_LLM_TIMEOUT_SECONDS must be a positive number of seconds."
    if settings.MOONBORN_LLM_BREAKER_FAILURES < 0:
        return "MOONBORN_LLM_BREAKER_FAILURES must be a number of calls, or 0 to turn the breaker off."
    if settings.MOONBORN_LLM_BREAKER_SECONDS <= 0:
        return "MOONBORN_LLM_BREAKER_SECONDS must be a positive number of seconds."
    if name == "openai" and not api_key("openai") and _is_openai_itself(base_url):
        return (
            "MOONBORN_LLM_PROVIDER=openai needs an API key: set MOONBORN_LLM_API_KEY (or OPENAI_API_KEY), "
            "or set MOONBORN_LLM_BASE_URL to a local OpenAI-compatible server."
        )
    if name == "anthropic" and not api_key("anthropic"):
        return "MOONBORN_LLM_PROVIDER=anthropic needs an API key: set MOONBORN_LLM_API_KEY (or ANTHROPIC_API_KEY)."
    embeddings = settings.MOONBORN_EMBEDDINGS
    if embeddings not in EMBEDDINGS:
        return f"MOONBORN_EMBEDDINGS={embeddings!r} is not an embedder Moonborn knows; use one of: local, openai."
    if embeddings == "openai":
        embed_url = settings.MOONBORN_EMBEDDINGS_BASE_URL or (base_url if name == "openai" else "")
        if not embeddings_api_key() and _is_openai_itself(embed_url):
            return (
                "MOONBORN_EMBEDDINGS=openai needs an API key (MOONBORN_LLM_API_KEY or OPENAI_API_KEY) "
                "or MOONBORN_EMBEDDINGS_BASE_URL pointing at a local OpenAI-compatible server."
            )
    return None


def embeddings_api_key() -> str:
    if settings.MOONBORN_LLM_PROVIDER == "openai" or not settings.MOONBORN_LLM_API_KEY:
        return api_key("openai")
    # MOONBORN_LLM_API_KEY belongs to another provider here: only OPENAI_API_KEY fits.
    return str(settings.MOONBORN_OPENAI_API_KEY)


def get_provider() -> Provider:
    """Return the process's provider, configured by the MOONBORN_LLM_* settings."""
    return process_state("llm.provider", _make_provider)


def _make_provider() -> Provider:
    error = configuration_error()
    if error is not None:
        raise ImproperlyConfigured(error)
    name = settings.MOONBORN_LLM_PROVIDER
    timeout = float(settings.MOONBORN_LLM_TIMEOUT_SECONDS)
    retries = max(0, int(settings.MOONBORN_LLM_MAX_RETRIES))
    breaker_failures = int(settings.MOONBORN_LLM_BREAKER_FAILURES)
    breaker_seconds = float(settings.MOONBORN_LLM_BREAKER_SECONDS)
    if name == "openai":
        from .openai_provider import OpenAIProvider

        return OpenAIProvider(
            model=settings.MOONBORN_LLM_MODEL,
            api_key=api_key("openai"),
            base_url=settings.MOONBORN_LLM_BASE_URL,
            timeout=timeout,
            retries=retries,
            structured_output=settings.MOONBORN_LLM_STRUCTURED_OUTPUT,
            breaker_failures=breaker_failures,
            breaker_seconds=breaker_seconds,
        )
    if name == "anthropic":
        from .anthropic_provider import AnthropicProvider

        return AnthropicProvider(
            model=settings.MOONBORN_LLM_MODEL,
            api_key=api_key("anthropic"),
            base_url=settings.MOONBORN_LLM_BASE_URL,
            timeout=timeout,
            retries=retries,
            breaker_failures=breaker_failures,
            breaker_seconds=breaker_seconds,
        )
    return DemoProvider(
        model=settings.MOONBORN_LLM_MODEL or "demo",
        delay_ms=settings.MOONBORN_DEMO_DELAY_MS,
        reply_tokens=settings.MOONBORN_DEMO_REPLY_TOKENS,
        fail_after_tokens=settings.MOONBORN_DEMO_FAIL_AFTER_TOKENS,
    )
