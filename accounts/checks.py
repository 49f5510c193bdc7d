"""`manage.py check` (and the server's start) refuses a production configuration that is not safe."""

from typing import Any

from django.core.checks import Error, register

# Django's own minimum for `check --deploy` (security.W009): long, and not a handful of repeated characters.
SECRET_KEY_MIN_LENGTH = 50
SECRET_KEY_MIN_UNIQUE_CHARACTERS = 5
# Keys that were published: the one this repository shipped as its default, and Django's startproject prefix.
PUBLISHED_KEYS = ("insecure-moonborn-development-key-change-me-in-production",)
PUBLISHED_PREFIXES = ("django-insecure-",)


def secret_key_error() -> str | None:
    """One sentence when DEBUG is off and DJANGO_SECRET_KEY is missing, short or published; else None."""
    from django.conf import settings

    if settings.DEBUG:
        return None
    key = settings.SECRET_KEY_FROM_ENV
    weak = (
        len(key) < SECRET_KEY_MIN_LENGTH
        or len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS
        or key in PUBLISHED_KEYS
        or key.startswith(PUBLISHED_PREFIXES)
    )
    if not weak:
        return None
    return (
        f"DJANGO_SECRET_KEY must be set to a random string of at least {SECRET_KEY_MIN_LENGTH} characters when "
        "DJANGO_DEBUG is off (make one with: python -c 'import secrets; print(secrets.token_urlsafe(50))')."
    )


@register()
def secret_key(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    error = secret_key_error()
    return [] if error is None else [Error(error, id="moonborn.E003")]
