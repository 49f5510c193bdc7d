"""API key format and hashing. A key is `mb_<prefix>_<secret>`; only its SHA-256 is stored."""

import hashlib
import secrets

KEY_PREFIX = "mb_"


def generate_key() -> tuple[str, str]:
    """Return a new (key, prefix). The prefix is public and names the key in lists and logs."""
    prefix = secrets.token_hex(4)
    return f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}", prefix


def hash_key(key: str) -> str:
    # The key carries 256 bits of randomness, so a fast hash is enough (no password stretching).
    return hashlib.sha256(key.encode()).hexdigest()


def prefix_of(key: str) -> str | None:
    parts = key.split("_")
    if len(parts) < 3 or f"{parts[0]}_" != KEY_PREFIX or len(parts[1]) != 8:
        return None
    return parts[1]
