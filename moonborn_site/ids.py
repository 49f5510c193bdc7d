"""Opaque, prefixed, time-sortable public ids (`per_…`, `ses_…`, `msg_…`)."""

from ulid import ULID


def new_id(prefix: str) -> str:
    return f"{prefix}_{str(ULID()).lower()}"


def new_persona_id() -> str:
    return new_id("per")


def new_session_id() -> str:
    return new_id("ses")


def new_message_id() -> str:
    return new_id("msg")
