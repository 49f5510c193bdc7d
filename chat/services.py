"""Writes for chat sessions and messages."""

import base64
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.keys import hash_key, prefix_of
from accounts.models import ApiKey, UsageRecord
from moonborn_site.ids import new_message_id
from personas.models import Persona, PersonaStep

from .drift import centroid
from .models import ChatSession, Message
from .scoring import embed_reply, recalibrate, warm_up

# Weight of the newest reply in a session's drift average.
EWMA_WEIGHT = 0.3
# How many earlier messages go into the model's context.
HISTORY_LIMIT = 40
# Consecutive replies with the session's drift average over the threshold that make "sustained drift".
SUSTAINED_DRIFT_TURNS = 3
# How many of the owner's other personas the bleed component compares a reply with (the most recent ones).
BLEED_PERSONAS_LIMIT = 50
# How many reviewed in-character replies (the most recent) a persona's calibration takes in.
CALIBRATION_REPLIES_LIMIT = 200


class ChatConflict(Exception):
    """The session or persona is in a state that does not allow the action."""


def chat_session_create(*, owner_id: int, persona_id: str, title: str = "") -> ChatSession:
    """Open a session with one of the owner's `ready` personas. Raises Persona.DoesNotExist, ChatConflict."""
    persona = Persona.objects.get(owner_id=owner_id, pk=persona_id)
    if persona.status != Persona.Status.READY:
        raise ChatConflict(f"Persona {persona.id} is {persona.status}; chats need a ready persona.")
    return ChatSession.objects.create(owner_id=owner_id, persona=persona, title=title)


@dataclass(frozen=True)
class PersonaVoice:
    """What a reply needs from its persona: one per persona version, shared (read-only) by all its replies."""

    system_prompt: str
    post_history_instructions: str
    anchor_texts: tuple[str, ...]
    catchphrases: tuple[str, ...]
    anchor_vectors: bytes
    calibration: dict[str, Any]
    embedding_model: str


@dataclass(frozen=True)
class ReplyJob:
    """Everything a reply run needs, read once before it starts."""

    session_id: str
    user_message_id: str
    assistant_message_id: str
    usage_id: int
    turn: int
    persona_id: str
    persona_name: str
    voice: PersonaVoice
    history: tuple[tuple[str, str], ...]
    user_content: str
    # Anchor centroids of the owner's other ready personas (float32 rows), for the bleed component.
    other_centroids: bytes = b""


# (persona id, updated_at) → its voice, most recently used last. Every write to a persona sets updated_at, so a
# changed persona is read again; concurrent replies of one persona share one copy of its vectors and calibration
# instead of each decoding and holding its own (~20 KiB a reply).
_voices: OrderedDict[tuple[str, datetime], PersonaVoice] = OrderedDict()
_voices_lock = threading.Lock()
VOICE_CACHE_SIZE = 256


def persona_voice(*, persona_id: str, updated_at: datetime) -> PersonaVoice:
    """The voice of this version of the persona, from the process cache or the database."""
    key = (persona_id, updated_at)
    with _voices_lock:
        voice = _voices.get(key)
        if voice is not None:
            _voices.move_to_end(key)
            return voice
    row = Persona.objects.filter(pk=persona_id).values(
        "system_prompt",
        "post_history_instructions",
        "drift_anchors",
        "anchor_vectors",
        "calibration",
        "embedding_model",
    )[0]
    output = PersonaStep.objects.filter(persona_id=persona_id, name="voice_print").values_list("output", flat=True)
    steps: dict[str, Any] = output.first() or {}
    voice = PersonaVoice(
        system_prompt=row["system_prompt"],
        post_history_instructions=row["post_history_instructions"],
        anchor_texts=tuple(row["drift_anchors"]),
        catchphrases=tuple(steps.get("catchphrases") or ()),
        anchor_vectors=bytes(row["anchor_vectors"]),
        calibration=row["calibration"],
        embedding_model=row["embedding_model"],
    )
    with _voices_lock:
        _voices[key] = voice
        while len(_voices) > VOICE_CACHE_SIZE:
            _voices.popitem(last=False)
    return voice


@transaction.atomic
def message_create_turn(*, owner_id: int, session_id: str, content: str, provider: str, model: str) -> ReplyJob:
    """Store the user's message and an empty streaming assistant reply; return the reply's job.

    Raises ChatSession.DoesNotExist (404) or ChatConflict (409).
    """
    return _create_turn(owner_id=owner_id, session_id=session_id, content=content, provider=provider, model=model)


@dataclass(frozen=True)
class TurnRequest:
    """One streamed request's turn, for `message_create_turns_by_key`."""

    key: str
    session_id: str
    content: str
    provider: str
    model: str


TurnOutcome = tuple[int, ReplyJob] | None | ChatSession.DoesNotExist | ChatConflict | IntegrityError


@transaction.atomic
def message_create_turns_by_key(*, requests: list[TurnRequest]) -> list[TurnOutcome]:
    """Store the turns of several requests in one transaction, each authenticated by its API key.

    Each request's outcome, in order: (owner id, job); None when its key is not an active one; or the error that
    refused it (ChatSession.DoesNotExist → 404, ChatConflict → 409, IntegrityError: another turn of the session
    got there first). A refused turn changes nothing and leaves the others alone.
    """
    outcomes: list[TurnOutcome] = []
    for request in requests:
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    owner_id = _key_owner(cursor, _sql(), request.key)
                if owner_id is None:
                    outcomes.append(None)
                    continue
                job = _create_turn(
                    owner_id=owner_id,
                    session_id=request.session_id,
                    content=request.content,
                    provider=request.provider,
                    model=request.model,
                )
                outcomes.append((owner_id, job))
        except (ChatSession.DoesNotExist, ChatConflict, IntegrityError) as exc:
            outcomes.append(exc)
    return outcomes


class _TurnSql:
    """The turn's statements, in plain SQL: the ORM would spend ~3 ms of CPU building them on every turn.

    Built once per database vendor from the models' tables and columns, so they follow the models.
    """

    def __init__(self) -> None:
        q = connection.ops.quote_name
        key, user = q(ApiKey._meta.db_table), q(get_user_model()._meta.db_table)
        session, persona = q(ChatSession._meta.db_table), q(Persona._meta.db_table)
        message, usage = q(Message._meta.db_table), q(UsageRecord._meta.db_table)
        index = q("index")
        self.key = (
            f"SELECT k.id, k.owner_id FROM {key} k JOIN {user} u ON u.id = k.owner_id"
            " WHERE k.key_hash = %s AND k.revoked_at IS NULL AND u.is_active"
        )
        # Written at most once a minute per key: authentication is on every request's path.
        self.key_used = (
            f"UPDATE {key} SET last_used_at = %s WHERE id = %s AND (last_used_at IS NULL OR last_used_at < %s)"
        )
        # Only the session row is locked (PostgreSQL): one turn at a time per session, any number per persona.
        lock = " FOR UPDATE OF s" if connection.features.has_select_for_update_of else ""
        self.session = (
            f"SELECT p.id, p.name, p.status, p.updated_at, p.embedding_model FROM {session} s"
            f" JOIN {persona} p ON p.id = s.persona_id WHERE s.owner_id = %s AND s.id = %s{lock}"
        )
        self.state = (
            f"SELECT MAX({index}), COALESCE(SUM(CASE WHEN status = %s THEN 1 ELSE 0 END), 0)"
            f" FROM {message} WHERE session_id = %s"
        )
        self.history = (
            f"SELECT role, content FROM {message} WHERE session_id = %s AND content <> ''"
            f" ORDER BY {index} DESC LIMIT {HISTORY_LIMIT}"
        )
        columns = (
            f"id, session_id, {index}, role, content, status, model, error, flagged, drift_components, review,"
            " created_at"
        )
        row = "(" + ", ".join(["%s"] * 12) + ")"
        self.messages = f"INSERT INTO {message} ({columns}) VALUES {row}, {row}"
        returning = " RETURNING id" if connection.features.can_return_columns_from_insert else ""
        self.usage = (
            f"INSERT INTO {usage} (owner_id, kind, run_id, provider, model, prompt_tokens, completion_tokens,"
            f" status, started_at) VALUES (%s, %s, %s, %s, %s, 0, 0, %s, %s){returning}"
        )
        self.touch = f"UPDATE {session} SET updated_at = %s WHERE id = %s"
        self.others = (
            f"SELECT id, updated_at FROM {persona} WHERE owner_id = %s AND status = %s AND embedding_model = %s"
            f" AND id <> %s AND LENGTH(anchor_vectors) > 0 ORDER BY created_at DESC LIMIT {BLEED_PERSONAS_LIMIT}"
        )


_turn_sql: dict[str, _TurnSql] = {}


def _sql() -> _TurnSql:
    sql = _turn_sql.get(connection.vendor)
    if sql is None:
        sql = _turn_sql[connection.vendor] = _TurnSql()
    return sql


def _key_owner(cursor: Any, sql: _TurnSql, key: str) -> int | None:
    """The owner of an active API key (recording its use at most once a minute), or None."""
    if prefix_of(key) is None:
        return None
    cursor.execute(sql.key, [hash_key(key)])
    row = cursor.fetchone()
    if row is None:
        return None
    key_id, owner_id = row
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value
    cursor.execute(sql.key_used, [adapt(now), key_id, adapt(now - timedelta(seconds=60))])
    return int(owner_id)


def _create_turn(*, owner_id: int, session_id: str, content: str, provider: str, model: str) -> ReplyJob:
    sql = _sql()
    with connection.cursor() as cursor:
        cursor.execute(sql.session, [owner_id, session_id])
        row = cursor.fetchone()
        if row is None:
            raise ChatSession.DoesNotExist(f"No chat session {session_id}.")
        persona_id, persona_name, persona_status, persona_version, embedding_model = row
        if persona_status != Persona.Status.READY:
            raise ChatConflict(f"Persona {persona_id} is {persona_status}; chats need a ready persona.")
        cursor.execute(sql.state, [Message.Status.STREAMING, session_id])
        last, streaming = cursor.fetchone()
        if streaming:
            raise ChatConflict("A reply is still being generated in this session; wait for it or cancel it.")
        index = 0 if last is None else int(last) + 1
        cursor.execute(sql.history, [session_id])
        earlier = cursor.fetchall()
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        empty = Message._meta.get_field("drift_components").get_db_prep_save({}, connection)
        user_id, reply_id = new_message_id(), new_message_id()
        cursor.execute(
            sql.messages,
            [
                *(user_id, session_id, index, Message.Role.USER, content, Message.Status.COMPLETED, ""),
                *("", False, empty, "", now),
                *(reply_id, session_id, index + 1, Message.Role.ASSISTANT, "", Message.Status.STREAMING, model),
                *("", False, empty, "", now),
            ],
        )
        cursor.execute(
            sql.usage, [owner_id, UsageRecord.Kind.CHAT, reply_id, provider, model, UsageRecord.Status.RUNNING, now]
        )
        usage_id = cursor.fetchone()[0] if connection.features.can_return_columns_from_insert else cursor.lastrowid
        cursor.execute(sql.touch, [now, session_id])
        cursor.execute(sql.others, [owner_id, Persona.Status.READY, embedding_model, persona_id])
        others = cursor.fetchall()
    voice = persona_voice(persona_id=persona_id, updated_at=persona_version)
    return ReplyJob(
        session_id=session_id,
        user_message_id=user_id,
        assistant_message_id=reply_id,
        usage_id=int(usage_id),
        turn=index // 2,
        persona_id=persona_id,
        persona_name=persona_name,
        voice=voice,
        history=tuple((str(role), str(text)) for role, text in reversed(earlier)),
        user_content=content,
        other_centroids=_stacked_centroids(others, embedding_model),
    )


# (persona id, updated_at) → the centroid of its anchor vectors (None: it has none), for the bleed component of
# its owner's other personas' replies. Every write to a persona sets updated_at.
_centroids: OrderedDict[tuple[str, Any], "np.ndarray | None"] = OrderedDict()
_centroids_lock = threading.Lock()
CENTROID_CACHE_SIZE = 4096


def _stacked_centroids(personas: list[tuple[str, Any]], embedding_model: str) -> bytes:
    """Anchor centroids of these personas, in order, as float32 rows (b"" if none or of mixed sizes)."""
    if not personas:
        return b""
    found: dict[str, np.ndarray | None] = {}
    missing = []
    with _centroids_lock:
        for persona_id, version in personas:
            key = (persona_id, version)
            if key in _centroids:
                _centroids.move_to_end(key)
                found[persona_id] = _centroids[key]
            else:
                missing.append(key)
    if missing:
        rows = Persona.objects.filter(pk__in=[pid for pid, _ in missing]).values_list(
            "id", "anchor_vectors", "drift_anchors"
        )
        loaded = {pid: _anchor_centroid(bytes(raw), anchors) for pid, raw, anchors in rows}
        with _centroids_lock:
            for key in missing:
                found[key[0]] = _centroids[key] = loaded.get(key[0])
            while len(_centroids) > CENTROID_CACHE_SIZE:
                _centroids.popitem(last=False)
    centroids = [c for c in (found[pid] for pid, _ in personas) if c is not None]
    if not centroids or len({c.size for c in centroids}) != 1:
        return b""
    return np.stack(centroids).tobytes()


def _anchor_centroid(raw: bytes, anchors: list[str]) -> "np.ndarray | None":
    vectors = np.frombuffer(raw, dtype=np.float32)
    if not raw or not anchors or vectors.size % len(anchors):
        return None
    return centroid(vectors.reshape(len(anchors), -1)).astype(np.float32)


def other_persona_centroids(*, owner_id: int, persona_id: str, embedding_model: str) -> bytes:
    """Anchor centroids of the owner's other ready personas embedded by the same model, float32 rows (b"" if none)."""
    personas = list(
        Persona.objects.filter(owner_id=owner_id, status=Persona.Status.READY, embedding_model=embedding_model)
        .exclude(pk=persona_id)
        .exclude(anchor_vectors=b"")
        .order_by("-created_at")
        .values_list("id", "updated_at")[:BLEED_PERSONAS_LIMIT]
    )
    return _stacked_centroids(personas, embedding_model)


@transaction.atomic
def messages_progress(*, updates: list[tuple[str, str]]) -> None:
    """Save the partial content of replies that are still streaming: (message id, content) pairs.

    One statement run for all rows (executemany), since a busy process saves thousands at a time.
    """
    table = connection.ops.quote_name(Message._meta.db_table)
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {table} SET content = %s WHERE id = %s AND status = %s",
            [(content, message_id, Message.Status.STREAMING) for message_id, content in updates],
        )


@transaction.atomic
def message_complete(
    *,
    message_id: str,
    content: str,
    drift_score: float,
    drift_threshold: float,
    flagged: bool,
    drift_components: dict[str, Any],
    usage_id: int,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    """Store a finished reply with its drift score, update the session's drift average and usage."""
    message = Message.objects.select_related("session").get(pk=message_id)
    message.content = content
    message.status = Message.Status.COMPLETED
    message.drift_score = drift_score
    message.drift_threshold = drift_threshold
    message.flagged = flagged
    message.drift_components = drift_components
    message.completed_at = timezone.now()
    message.save()
    session = message.session
    previous = session.drift_ewma
    session.drift_ewma = drift_score if previous is None else EWMA_WEIGHT * drift_score + (1 - EWMA_WEIGHT) * previous
    session.drift_streak = session.drift_streak + 1 if session.drift_ewma > drift_threshold else 0
    if session.drift_streak >= SUSTAINED_DRIFT_TURNS and session.sustained_drift_at is None:
        session.sustained_drift_at = timezone.now()
    session.save(update_fields=["drift_ewma", "drift_streak", "sustained_drift_at", "updated_at"])
    UsageRecord.objects.filter(pk=usage_id).update(
        status=UsageRecord.Status.COMPLETED,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        ended_at=timezone.now(),
    )


@transaction.atomic
def message_stop(
    *,
    message_id: str,
    content: str,
    status: str,
    error: str,
    usage_id: int,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    """End a reply that did not finish (`cancelled` or `failed`), keeping what it had produced."""
    Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(
        content=content, status=status, error=error, completed_at=timezone.now()
    )
    UsageRecord.objects.filter(pk=usage_id).update(
        status=status, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, ended_at=timezone.now()
    )


def message_review(*, message_id: str, review: str, reviewer_id: int | None) -> Message:
    """Record an admin's in/out-of-character verdict on a scored reply and recalibrate its persona.

    ``review`` is a ``Message.Review`` value or ``""`` to clear it. An in-character reply's vector joins the persona's
    calibration set (the newest ``CALIBRATION_REPLIES_LIMIT`` are kept); any other verdict takes it out. The reply is
    embedded before the transaction, so no database lock is held while the model runs. Raises
    ``Message.DoesNotExist`` for anything but a scored assistant reply, ``ValueError`` for an unknown verdict.
    """
    if review not in {"", *Message.Review.values}:
        raise ValueError(f"unknown review {review!r}")
    message = Message.objects.select_related("session").get(
        pk=message_id, role=Message.Role.ASSISTANT, drift_score__isnull=False
    )
    vector = embed_reply(message.content) if review == Message.Review.IN_CHARACTER else None
    warm_up()  # the generic-assistant vectors, so the transaction below only does milliseconds of numpy
    now = timezone.now()
    with transaction.atomic():
        Message.objects.filter(pk=message.pk).update(
            review=review, reviewed_by_id=reviewer_id if review else None, reviewed_at=now if review else None
        )
        persona = Persona.objects.select_for_update().get(pk=message.session.persona_id)
        replies: dict[str, str] = dict(persona.calibration_replies or {})
        replies.pop(message.pk, None)
        if vector is not None:
            replies[message.pk] = base64.b64encode(vector.astype(np.float32).tobytes()).decode("ascii")
        replies = dict(list(replies.items())[-CALIBRATION_REPLIES_LIMIT:])
        persona.calibration_replies = replies
        if persona.anchor_vectors:
            calibrated = recalibrate(
                anchor_vectors=bytes(persona.anchor_vectors),
                reply_vectors=[base64.b64decode(v) for v in replies.values()],
            )
            persona.calibration = calibrated.calibration
            persona.drift_threshold = calibrated.threshold
        persona.save(update_fields=["calibration_replies", "calibration", "drift_threshold", "updated_at"])
    message.refresh_from_db()
    return message


def chat_session_delete(*, owner_id: int, session_id: str) -> bool:
    deleted, _ = ChatSession.objects.filter(owner_id=owner_id, pk=session_id).delete()
    return deleted > 0
