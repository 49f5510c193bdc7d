"""Writes for chat sessions and messages."""

import base64
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from django.db import connection, transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from accounts.models import UsageRecord
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
    session = (
        ChatSession.objects.select_for_update()
        .select_related("persona")
        # The rest of the persona (some of it large) comes from persona_voice(), once per version.
        .only("id", "persona", "persona__name", "persona__status", "persona__updated_at")
        .get(owner_id=owner_id, pk=session_id)
    )
    persona = session.persona
    if persona.status != Persona.Status.READY:
        raise ChatConflict(f"Persona {persona.id} is {persona.status}; chats need a ready persona.")
    state = session.messages.aggregate(
        last=Max("index"), streaming=Count("pk", filter=Q(status=Message.Status.STREAMING))
    )
    if state["streaming"]:
        raise ChatConflict("A reply is still being generated in this session; wait for it or cancel it.")
    index = 0 if state["last"] is None else state["last"] + 1
    earlier = list(
        session.messages.exclude(content="").order_by("-index").values_list("role", "content")[:HISTORY_LIMIT]
    )
    user = Message.objects.create(session=session, index=index, role=Message.Role.USER, content=content)
    reply = Message.objects.create(
        session=session, index=index + 1, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING, model=model
    )
    usage = UsageRecord.objects.create(
        owner_id=owner_id, kind=UsageRecord.Kind.CHAT, run_id=reply.id, provider=provider, model=model
    )
    ChatSession.objects.filter(pk=session.pk).update(updated_at=timezone.now())
    voice = persona_voice(persona_id=persona.id, updated_at=persona.updated_at)
    return ReplyJob(
        session_id=session.id,
        user_message_id=user.id,
        assistant_message_id=reply.id,
        usage_id=usage.id,
        turn=index // 2,
        persona_id=persona.id,
        persona_name=persona.name,
        voice=voice,
        history=tuple(reversed(earlier)),
        user_content=content,
        other_centroids=other_persona_centroids(
            owner_id=owner_id, persona_id=persona.id, embedding_model=voice.embedding_model
        ),
    )


def other_persona_centroids(*, owner_id: int, persona_id: str, embedding_model: str) -> bytes:
    """Anchor centroids of the owner's other ready personas embedded by the same model, float32 rows (b"" if none)."""
    rows = (
        Persona.objects.filter(owner_id=owner_id, status=Persona.Status.READY, embedding_model=embedding_model)
        .exclude(pk=persona_id)
        .exclude(anchor_vectors=b"")
        .order_by("-created_at")
        .values_list("anchor_vectors", "drift_anchors")[:BLEED_PERSONAS_LIMIT]
    )
    centroids = []
    dims = set()
    for raw, anchors in rows:
        vectors = np.frombuffer(bytes(raw), dtype=np.float32)
        if not anchors or vectors.size % len(anchors):
            continue
        dim = vectors.size // len(anchors)
        dims.add(dim)
        centroids.append(centroid(vectors.reshape(-1, dim)).astype(np.float32))
    if not centroids or len(dims) != 1:
        return b""
    return np.stack(centroids).tobytes()


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
