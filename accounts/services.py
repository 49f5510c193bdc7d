"""Writes for API keys and usage records."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from .keys import generate_key, hash_key
from .models import ApiKey, IdempotencyKey

# A key's last use is written at most this often: authentication is on every request's path.
KEY_USE_PRECISION = timedelta(seconds=60)


@transaction.atomic
def api_key_create(*, username: str, name: str = "") -> tuple[ApiKey, str]:
    """Create a key for `username` (creating the user if needed); return it and the plain key once."""
    # A user made here signs in with keys only: an unusable password, so no login form or reset link opens it.
    user, _ = get_user_model().objects.get_or_create(username=username, defaults={"password": make_password(None)})
    key, prefix = generate_key()
    api_key = ApiKey.objects.create(owner=user, name=name, prefix=prefix, key_hash=hash_key(key))
    return api_key, key


def api_key_revoke(*, prefix: str) -> ApiKey:
    """Revoke the key with this prefix. Raises ApiKey.DoesNotExist."""
    api_key = ApiKey.objects.get(prefix=prefix)
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def api_key_authenticate(*, key: str) -> AbstractBaseUser | None:
    """Return the owner of an active key, or None. Records when the key was last used."""
    api_key = (
        ApiKey.objects.select_related("owner")
        .filter(key_hash=hash_key(key), revoked_at__isnull=True, owner__is_active=True)
        .first()
    )
    if api_key is None:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > KEY_USE_PRECISION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    return api_key.owner


IDEMPOTENCY_TTL = timedelta(hours=24)


def idempotency_claim(*, owner_id: int, key: str, kind: str, request_hash: str) -> tuple[IdempotencyKey, bool]:
    """Claim `key` for this request; return the row and whether this request is the first to use it."""
    IdempotencyKey.objects.filter(owner_id=owner_id, key=key, created_at__lt=timezone.now() - IDEMPOTENCY_TTL).delete()
    try:
        with transaction.atomic():
            row = IdempotencyKey.objects.create(owner_id=owner_id, key=key, kind=kind, request_hash=request_hash)
        return row, True
    except IntegrityError:
        return IdempotencyKey.objects.get(owner_id=owner_id, key=key), False


def idempotency_keys_purge() -> int:
    """Delete every key past its window; return how many. (A key that comes again is replaced at once anyway.)"""
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=timezone.now() - IDEMPOTENCY_TTL).delete()
    return deleted


def idempotency_bind(*, row_id: int, resource_id: str) -> None:
    IdempotencyKey.objects.filter(pk=row_id).update(resource_id=resource_id)


def idempotency_release(*, row_id: int) -> None:
    """Forget a claim whose request created nothing (it failed), so a retry can create."""
    IdempotencyKey.objects.filter(pk=row_id, resource_id="").delete()


def idempotency_resource(*, row_id: int) -> str | None:
    """The resource the claim created: its id, '' while being created, None if released."""
    return IdempotencyKey.objects.filter(pk=row_id).values_list("resource_id", flat=True).first()
