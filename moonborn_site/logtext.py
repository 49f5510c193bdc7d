"""Text from outside (a request's path, an upstream's error message) made safe to put in a log line."""

# Past this many characters the rest is cut: an attacker-sized path or error body does not flood the log.
LOG_TEXT_LIMIT = 200


def loggable(text: str, limit: int = LOG_TEXT_LIMIT) -> str:
    """`text` with its non-printable characters escaped (CR and LF forge log lines), at most `limit` of them kept.

    Printable text, non-ASCII letters included, is kept as it is; `\\r`, `\\n`, `\\x1b`, `\\u2028` and the like are
    written as those escapes. A cut is marked with `…`.
    """
    kept = text[:limit]
    if not kept.isprintable():
        kept = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in kept)
    return kept + "…" if len(text) > limit else kept
