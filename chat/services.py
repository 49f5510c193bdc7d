"""Writes for chat sessions and messages."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.db import connection, transaction
from django.db.models import Case, Count, F, Q, Sum, Value, When
from django.utils import timezone

from accounts.models import UsageRecord
from moonborn_site.ids import new_message_id
from moonborn_site.state import Lru, process_state
from personas.models import Persona, PersonaDriftStats, PersonaStep

from .drift import CALIBRATION_VERSION, centroid
from .lorebook import Book, parse_book
from .models import ChatSession, DriftJob, Message
from .prompt import Character
from .scoring import calibrate_persona, tier0
from .turn_store import read_turns, turn_sql

# Weight of the newest reply in a session's drift average.
EWMA_WEIGHT = 0.3
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

    # The card's character fields, for the prompt (chat.prompt), and its lorebook parsed once (chat.lorebook).
    character: Character
    book: Book | None
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
    # Also the run id of its usage record.
    assistant_message_id: str
    turn: int
    persona_id: str
    persona_name: str
    voice: PersonaVoice
    history: tuple[tuple[str, str], ...]
    user_content: str
    # Anchor centroids of the owner's other ready personas (float32 rows), for the bleed component.
    other_centroids: bytes = b""


# (persona id, updated_at) → its voice. Every write to a persona sets updated_at, so a changed persona is read
# again; concurrent replies of one persona share one copy of its vectors and calibration instead of each decoding
# and holding its own (~20 KiB a reply).
VOICE_CACHE_SIZE = 256


def persona_voice(*, persona_id: str, updated_at: datetime) -> PersonaVoice:
    """The voice of this version of the persona, from the process cache or the database."""
    key = (persona_id, updated_at)
    voices = process_state("chat.voices", lambda: Lru[PersonaVoice](VOICE_CACHE_SIZE))
    voice = voices.get(key)
    if voice is not None:
        return voice
    row = Persona.objects.filter(pk=persona_id).values(
        "name",
        "card",
        "system_prompt",
        "post_history_instructions",
        "drift_anchors",
        "drift_samples",
        "calibration_replies",
        "anchor_vectors",
        "calibration",
        "embedding_model",
    )[0]
    embedder = tier0()
    if row["embedding_model"] != embedder.model_id or (row["calibration"] or {}).get("version") != CALIBRATION_VERSION:
        # Calibrated with another tier-0 table or procedure (or before tiers): calibrate again from its texts, once.
        calibrated = calibrate_persona(
            embedder,
            anchors=row["drift_anchors"] or [""],
            samples=row["drift_samples"],
            reviewed=list((row["calibration_replies"] or {}).values()),
        )
        Persona.objects.filter(pk=persona_id).update(
            anchor_vectors=calibrated.anchor_vectors,
            embedding_model=calibrated.embedding_model,
            calibration=calibrated.calibration,
            drift_threshold=calibrated.threshold,
        )
        row["anchor_vectors"] = calibrated.anchor_vectors
        row["embedding_model"] = calibrated.embedding_model
        row["calibration"] = calibrated.calibration
    output = PersonaStep.objects.filter(persona_id=persona_id, name="voice_print").values_list("output", flat=True)
    steps: dict[str, Any] = output.first() or {}
    card: dict[str, Any] = dict(row["card"] or {})
    # The persona's own columns are what an admin edits: they win over the copies in the card.
    card["system_prompt"] = row["system_prompt"]
    card["post_history_instructions"] = row["post_history_instructions"]
    voice = PersonaVoice(
        character=Character.from_card(card, name=row["name"]),
        book=parse_book(card.get("character_book")),
        anchor_texts=tuple(row["drift_anchors"]),
        catchphrases=tuple(steps.get("catchphrases") or ()),
        anchor_vectors=bytes(row["anchor_vectors"]),
        calibration=row["calibration"],
        embedding_model=row["embedding_model"],
    )
    voices.put(key, voice)
    return voice


@dataclass(frozen=True)
class TurnRequest:
    """One request's turn, for `message_create_turns`."""

    owner_id: int
    session_id: str
    content: str
    provider: str
    model: str


TurnOutcome = ReplyJob | ChatSession.DoesNotExist | ChatConflict


@transaction.atomic
def message_create_turns(*, requests: list[TurnRequest]) -> list[TurnOutcome]:
    """Store the turns of several requests in one transaction, with a few statements for all of them.

    Each request's outcome, in order: its reply's job, or the error that refused it (ChatSession.DoesNotExist →
    404, ChatConflict → 409). A refused turn writes nothing. Two turns of one session in one call are two requests
    racing: the first is taken, the second refused as the session's reply is then streaming.
    """
    sql = turn_sql()
    now = timezone.now()
    at = connection.ops.adapt_datetimefield_value(now)
    outcomes: list[TurnOutcome] = [
        ChatSession.DoesNotExist(f"No chat session {request.session_id}.") for request in requests
    ]
    with connection.cursor() as cursor:
        read = read_turns(cursor, sql, requests)
        sessions = read.sessions
        taken: dict[str, tuple[int, int]] = {}  # session id → (request number, the user message's index)
        for number, request in enumerate(requests):
            found = sessions.get(request.session_id)
            if found is None or found.owner_id != request.owner_id:
                continue
            if found.persona_status != Persona.Status.READY:
                outcomes[number] = ChatConflict(
                    f"Persona {found.persona_id} is {found.persona_status}; chats need a ready persona."
                )
            elif found.last_status == Message.Status.STREAMING or request.session_id in taken:
                outcomes[number] = ChatConflict(
                    "A reply is still being generated in this session; wait for it or cancel it."
                )
            else:
                taken[request.session_id] = (number, 0 if found.last_index is None else int(found.last_index) + 1)
        if not taken:
            return outcomes
        ids = list(taken)
        empty = Message._meta.get_field("drift_components").get_db_prep_save({}, connection)
        made = []  # (request number, user message id, reply id, index)
        rows: list[tuple[Any, ...]] = []
        for sid, (number, index) in taken.items():
            request = requests[number]
            user_id, reply_id = new_message_id(), new_message_id()
            made.append((number, user_id, reply_id, index))
            rows.append(
                (user_id, sid, index, Message.Role.USER, request.content, Message.Status.COMPLETED, "", "", False)
                + (empty, empty, empty, "", at)
            )
            rows.append(
                (reply_id, sid, index + 1, Message.Role.ASSISTANT, "", Message.Status.STREAMING, request.model, "")
                + (False, empty, empty, empty, "", at)
            )
        cursor.execute(sql.messages(len(rows)), sql.table(rows))
        # Each reply's tier-1 job, made with it: scored after it ends, however it ends (chat.tier1).
        cursor.execute(sql.drift_jobs(len(made)), sql.table([(reply_id, at, "", 0) for _, _, reply_id, _ in made]))
        # The replies' usage records: their run id is the reply's id (how the reply's end finds its record).
        usage = [
            (requests[number].owner_id, UsageRecord.Kind.CHAT, reply_id, requests[number].provider)
            + (requests[number].model, 0, 0, UsageRecord.Status.RUNNING, at)
            for number, _, reply_id, _ in made
        ]
        cursor.execute(sql.usage(len(usage)), sql.table(usage))
        cursor.execute(sql.touch(len(ids)), [at, *sql.in_list(ids)])
    for number, user_id, reply_id, index in made:
        request = requests[number]
        session = sessions[request.session_id]
        voice = persona_voice(persona_id=session.persona_id, updated_at=session.persona_version)
        bleed = [
            (pid, version)
            for pid, version, model in read.others.get(request.owner_id, ())
            if pid != session.persona_id and model == voice.embedding_model
        ][:BLEED_PERSONAS_LIMIT]
        outcomes[number] = ReplyJob(
            session_id=request.session_id,
            user_message_id=user_id,
            assistant_message_id=reply_id,
            turn=index // 2,
            persona_id=session.persona_id,
            persona_name=session.persona_name,
            voice=voice,
            history=tuple(read.histories.get(request.session_id, ())),
            user_content=request.content,
            other_centroids=_stacked_centroids(bleed),
        )
    return outcomes


# (persona id, updated_at) → the centroid of its anchor vectors (None: it has none), for the bleed component of
# its owner's other personas' replies. Every write to a persona sets updated_at.
CENTROID_CACHE_SIZE = 4096
# The centroid of a persona without anchor vectors (cached like the others: it is not read again).
_NO_CENTROID = np.empty(0, dtype=np.float32)


def _stacked_centroids(personas: list[tuple[str, Any]]) -> bytes:
    """Anchor centroids of these personas, in order, as float32 rows (b"" if none or of mixed sizes)."""
    if not personas:
        return b""
    cache = process_state("chat.centroids", lambda: Lru[np.ndarray](CENTROID_CACHE_SIZE))
    found = {persona_id: cache.get((persona_id, version)) for persona_id, version in personas}
    missing = [persona_id for persona_id, centroid in found.items() if centroid is None]
    if missing:
        rows = Persona.objects.filter(pk__in=missing).values_list("id", "anchor_vectors")
        dim = tier0().dim
        loaded = {pid: _anchor_centroid(bytes(raw), dim) for pid, raw in rows}
        for persona_id, version in personas:
            if found[persona_id] is None:
                found[persona_id] = centroid = loaded.get(persona_id, _NO_CENTROID)
                cache.put((persona_id, version), centroid)
    centroids = [c for c in (found[pid] for pid, _ in personas) if c is not None and c.size]
    if not centroids or len({c.size for c in centroids}) != 1:
        return b""
    return np.stack(centroids).tobytes()


def _anchor_centroid(raw: bytes, dim: int) -> np.ndarray:
    vectors = np.frombuffer(raw, dtype=np.float32)
    if not raw or vectors.size % dim:
        return _NO_CENTROID
    return centroid(vectors.reshape(-1, dim)).astype(np.float32)


@transaction.atomic
def messages_progress(*, updates: list[tuple[str, str]]) -> None:
    """Save the partial content of replies that are still streaming: (message id, content) pairs.

    One statement per PROGRESS_ROWS rows, since a busy process saves thousands at a time: the database does the
    work in one call (which releases the GIL), where a statement per row would hand the GIL back and forth with
    the event loop thousands of times and hold up every stream. Always the same statement, so the connection
    caches one, not one per size (a statement for thousands of rows is large, and SQLite's cache keeps a hundred
    of them); a short last group is filled with rows that match nothing.
    """
    sql = turn_sql().progress(PROGRESS_ROWS)
    for start in range(0, len(updates), PROGRESS_ROWS):
        rows = updates[start : start + PROGRESS_ROWS]
        rows += [("", "")] * (PROGRESS_ROWS - len(rows))  # no message has the id ""
        with connection.cursor() as cursor:
            cursor.execute(sql, [value for row in rows for value in row] + [Message.Status.STREAMING])


# Rows per progress statement.
PROGRESS_ROWS = 200


@transaction.atomic
def message_complete(
    *,
    message_id: str,
    content: str,
    drift_score: float,
    drift_threshold: float,
    flagged: bool,
    drift_components: dict[str, Any],
    prompt_tokens: int,
    completion_tokens: int,
    lore: dict[str, Any] | None = None,
) -> None:
    """Store a finished reply with its drift score (and the lore its prompt used), update the session's drift
    average, its persona's drift counters and usage.

    In plain SQL, like the turn: every reply ends here, and the ORM's statements cost ~2 ms of CPU each time.
    Raises Message.DoesNotExist if the reply is gone (its session was deleted).
    """
    sql = turn_sql()
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    components = Message._meta.get_field("drift_components").get_db_prep_save(drift_components, connection)
    lore_value = Message._meta.get_field("lore").get_db_prep_save(lore or {}, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql.session_drift, [message_id])
        row = cursor.fetchone()
        if row is None:
            raise Message.DoesNotExist(f"No message {message_id}.")
        session_id, previous, streak, persona_id, role, old_score, old_flagged = row
        cursor.execute(
            sql.complete,
            [
                content,
                Message.Status.COMPLETED,
                drift_score,
                drift_threshold,
                flagged,
                components,
                lore_value,
                now,
                message_id,
            ],
        )
        if cursor.rowcount == 0:
            # Gone since it was read: a session delete took it, and counted it out as it was (chat_sessions_delete).
            raise Message.DoesNotExist(f"No message {message_id}.")
        if role == Message.Role.ASSISTANT and old_score is None:
            cursor.execute(sql.drift_stats_add, [persona_id, int(flagged), drift_score])
        elif role == Message.Role.ASSISTANT:
            # Scored again: the new score replaces the one its persona's counters have.
            cursor.execute(
                sql.drift_stats_change, [int(flagged) - int(bool(old_flagged)), drift_score - old_score, persona_id]
            )
        ewma = drift_score if previous is None else EWMA_WEIGHT * drift_score + (1 - EWMA_WEIGHT) * previous
        streak = int(streak) + 1 if ewma > drift_threshold else 0
        # Set once: the first turn of a sustained drift (COALESCE keeps an earlier one).
        sustained = now if streak >= SUSTAINED_DRIFT_TURNS else None
        cursor.execute(sql.session_drifted, [ewma, streak, sustained, now, session_id])
        cursor.execute(
            sql.usage_ended,
            [UsageRecord.Status.COMPLETED, prompt_tokens, completion_tokens, now, message_id, UsageRecord.Kind.CHAT],
        )


@dataclass(frozen=True)
class ReplyStop:
    """The end of a reply that did not finish, for `messages_stop`."""

    message_id: str
    content: str
    # `cancelled` or `failed`.
    status: str
    error: str
    prompt_tokens: int
    completion_tokens: int
    lore: dict[str, Any] | None = None


# Rows per stop statement: always the same statement (a short last group is filled with rows that match nothing),
# as for progress.
STOP_ROWS = 200


@transaction.atomic
def messages_stop(*, stops: list[ReplyStop]) -> None:
    """End replies that did not finish, keeping what each had produced (and the lore its prompt used), and their
    usage, in one transaction with a statement per STOP_ROWS replies for each table.

    A reply no longer `streaming` (it completed meanwhile, or a reaper failed it) and a usage record no longer
    `running` keep what they have.
    """
    sql = turn_sql()
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    lore_field = Message._meta.get_field("lore")
    replies, usage = sql.stops(STOP_ROWS), sql.usage_stops(STOP_ROWS)
    with connection.cursor() as cursor:
        for start in range(0, len(stops), STOP_ROWS):
            group = stops[start : start + STOP_ROWS]
            padding = STOP_ROWS - len(group)  # no message has the id ""
            rows: list[Any] = [now]
            for stop in group:
                lore = lore_field.get_db_prep_save(stop.lore or {}, connection)
                rows += (stop.message_id, stop.content, stop.status, stop.error, lore)
            rows += ["", "", "", "", "{}"] * padding
            cursor.execute(replies, [*rows, Message.Status.STREAMING])
            counts: list[Any] = [now]
            for stop in group:
                counts += (stop.message_id, stop.status, stop.prompt_tokens, stop.completion_tokens)
            counts += ["", "", 0, 0] * padding
            cursor.execute(usage, [*counts, UsageRecord.Kind.CHAT, UsageRecord.Status.RUNNING])


def message_stop(
    *,
    message_id: str,
    content: str,
    status: str,
    error: str,
    prompt_tokens: int,
    completion_tokens: int,
    lore: dict[str, Any] | None = None,
) -> None:
    """End one reply that did not finish (`messages_stop`)."""
    messages_stop(stops=[ReplyStop(message_id, content, status, error, prompt_tokens, completion_tokens, lore)])


def lore_state(*, session_id: str, before_index: int) -> dict[str, Any]:
    """The lorebook state the session's last reply before `before_index` left for the next turn ({} if none)."""
    lore = (
        Message.objects.filter(session_id=session_id, role=Message.Role.ASSISTANT, index__lt=before_index)
        .order_by("-index")
        .values_list("lore", flat=True)
        .first()
    )
    state = (lore or {}).get("state")
    return dict(state) if isinstance(state, dict) else {}


def message_review(*, message_id: str, review: str, reviewer_id: int | None) -> Message:
    """Record an admin's in/out-of-character verdict on a scored reply and recalibrate its persona.

    ``review`` is a ``Message.Review`` value or ``""`` to clear it. An in-character reply joins the persona's
    calibration set (the newest ``CALIBRATION_REPLIES_LIMIT`` are kept); any other verdict takes it out. Tier 0 is
    calibrated again at once (the static table: milliseconds); tier 1's calibration is dropped, and the tier-1
    worker makes it again the next time it scores one of the persona's replies. Raises ``Message.DoesNotExist`` for
    anything but a scored assistant reply, ``ValueError`` for an unknown verdict.
    """
    if review not in {"", *Message.Review.values}:
        raise ValueError(f"unknown review {review!r}")
    message = Message.objects.select_related("session").get(
        pk=message_id, role=Message.Role.ASSISTANT, drift_score__isnull=False
    )
    now = timezone.now()
    with transaction.atomic():
        Message.objects.filter(pk=message.pk).update(
            review=review, reviewed_by_id=reviewer_id if review else None, reviewed_at=now if review else None
        )
        persona = Persona.objects.select_for_update().get(pk=message.session.persona_id)
        replies: dict[str, str] = dict(persona.calibration_replies or {})
        replies.pop(message.pk, None)
        if review == Message.Review.IN_CHARACTER:
            replies[message.pk] = message.content
        replies = dict(list(replies.items())[-CALIBRATION_REPLIES_LIMIT:])
        persona.calibration_replies = replies
        if persona.drift_anchors:
            calibrated = calibrate_persona(
                tier0(), anchors=persona.drift_anchors, samples=persona.drift_samples, reviewed=list(replies.values())
            )
            persona.anchor_vectors = calibrated.anchor_vectors
            persona.embedding_model = calibrated.embedding_model
            persona.calibration = calibrated.calibration
            persona.drift_threshold = calibrated.threshold
            persona.tier1_calibration = {}
        persona.save(
            update_fields=[
                "calibration_replies",
                "anchor_vectors",
                "embedding_model",
                "calibration",
                "drift_threshold",
                "tier1_calibration",
                "updated_at",
            ]
        )
    message.refresh_from_db()
    return message


# -- tier 1 (chat.tier1) ------------------------------------------------------------------------------------------

# A job claimed this many times without being scored is given up (its reply keeps its tier-0 score).
TIER1_MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class Tier1Job:
    message_id: str
    content: str
    persona_id: str
    owner_id: int
    # Tier 0's verdict (None: the reply ended before tier 0 ran: cancelled, failed, or its process died).
    tier0_score: float | None
    tier0_flagged: bool
    # Replies waiting for tier 1 when the job was taken, this one included.
    waiting: int


@dataclass(frozen=True)
class Tier1Score:
    score: float
    threshold: float
    flagged: bool
    components: dict[str, Any]


@dataclass(frozen=True)
class Tier1Skip:
    """A reply tier 1 passed over: tier 0 was certain, and the worker had a backlog (chat.tier1)."""

    reason: str
    components: dict[str, Any]


@dataclass
class Tier1Persona:
    """What the tier-1 worker needs of a persona: its texts, and its tier-1 calibration if it has one."""

    id: str
    owner_id: int
    name: str
    anchors: list[str]
    samples: list[str]
    reviewed: list[str]
    tier1_anchor_vectors: bytes
    tier1_embedding_model: str
    tier1_calibration: dict[str, Any]


def drift_jobs_claim(*, worker_id: str, limit: int, lease_seconds: float) -> list[Tier1Job]:
    """Claim up to ``limit`` tier-1 jobs whose replies no longer stream (oldest first) for ``lease_seconds``.

    Claimed by an UPDATE that only takes jobs still free, then read back by the claim's id: two workers that pick
    the same jobs never both get them. Jobs claimed ``TIER1_MAX_ATTEMPTS`` times are given up first.
    """
    now = timezone.now()
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    with transaction.atomic():
        worn = DriftJob.objects.filter(free, attempts__gte=TIER1_MAX_ATTEMPTS)
        given_up = list(worn.values_list("message_id", flat=True)[:limit])
        if given_up:
            Message.objects.filter(pk__in=given_up).update(
                tier1_components={"error": f"not scored after {TIER1_MAX_ATTEMPTS} attempts"}
            )
            DriftJob.objects.filter(pk__in=given_up).delete()
        ready = (
            DriftJob.objects.filter(free, attempts__lt=TIER1_MAX_ATTEMPTS)
            .exclude(message__status=Message.Status.STREAMING)
            .order_by("created_at")
        )
        ids = list(ready.values_list("message_id", flat=True)[:limit])
        if not ids:
            return []
        waiting = ready.count() if len(ids) == limit else len(ids)
        claim = f"{worker_id}@{now.timestamp():.6f}"[:64]
        DriftJob.objects.filter(free, pk__in=ids).update(
            claimed_by=claim, claimed_until=now + timedelta(seconds=lease_seconds), attempts=F("attempts") + 1
        )
        rows = Message.objects.filter(drift_job__claimed_by=claim).values_list(
            "id", "content", "session__persona_id", "session__owner_id", "drift_score", "flagged"
        )
        return [
            Tier1Job(
                message_id=m,
                content=c,
                persona_id=p,
                owner_id=o,
                tier0_score=score,
                tier0_flagged=flagged,
                waiting=waiting,
            )  # fmt: skip
            for m, c, p, o, score, flagged in rows
        ]


def tier1_personas(*, owner_ids: list[int], persona_ids: list[str]) -> dict[str, Tier1Persona]:
    """The personas of these replies and their owners' other ready ones (the newest BLEED_PERSONAS_LIMIT each)."""
    found: dict[str, Tier1Persona] = {}
    fields = (
        "id", "owner_id", "name", "drift_anchors", "drift_samples", "calibration_replies", "tier1_anchor_vectors",
        "tier1_embedding_model", "tier1_calibration",
    )  # fmt: skip
    rows = list(Persona.objects.filter(pk__in=persona_ids).values_list(*fields))
    for owner_id in owner_ids:
        ready = Persona.objects.filter(owner_id=owner_id, status=Persona.Status.READY).order_by("-created_at")
        rows += ready.values_list(*fields)[:BLEED_PERSONAS_LIMIT]
    for pid, owner, name, anchors, samples, reviewed, vectors, model, calibration in rows:
        found[pid] = Tier1Persona(
            id=pid,
            owner_id=int(owner),
            name=name,
            anchors=list(anchors or []),
            samples=list(samples or []),
            reviewed=list((reviewed or {}).values()),
            tier1_anchor_vectors=bytes(vectors or b""),
            tier1_embedding_model=model,
            tier1_calibration=calibration or {},
        )
    return found


def persona_tier1_store(*, calibrations: dict[str, Any]) -> None:
    """Store personas' tier-1 calibrations (``chat.scoring.PersonaCalibration`` by persona id).

    Not a change of the persona as the replies see it, so `updated_at` stays (no cached voice is dropped).
    """
    with transaction.atomic():
        for persona_id, calibrated in calibrations.items():
            Persona.objects.filter(pk=persona_id).update(
                tier1_anchor_vectors=calibrated.anchor_vectors,
                tier1_embedding_model=calibrated.embedding_model,
                tier1_calibration=calibrated.calibration,
            )


def message_tier1_store(*, worker_id: str, results: dict[str, Tier1Score | Tier1Skip | None]) -> None:
    """Store the tier-1 outcomes of claimed jobs and delete the jobs: a score; a skip (the time and the reason, no
    score); or None (nothing to score: an empty reply)."""
    now = timezone.now()
    with transaction.atomic():
        for message_id, result in results.items():
            if isinstance(result, Tier1Score):
                Message.objects.filter(pk=message_id).update(
                    tier1_score=result.score,
                    tier1_threshold=result.threshold,
                    tier1_flagged=result.flagged,
                    tier1_components=result.components,
                    tier1_scored_at=now,
                )
            elif isinstance(result, Tier1Skip):
                Message.objects.filter(pk=message_id).update(
                    tier1_components={"skipped": result.reason, **result.components}, tier1_scored_at=now
                )
        DriftJob.objects.filter(pk__in=list(results)).delete()


def chat_session_delete(*, owner_id: int, session_id: str) -> bool:
    ids = list(ChatSession.objects.filter(owner_id=owner_id, pk=session_id).values_list("pk", flat=True))
    return chat_sessions_delete(session_ids=ids) > 0


@transaction.atomic
def chat_sessions_delete(*, session_ids: list[str]) -> int:
    """Delete these sessions with their messages, their replies taken out of their personas' drift counters; the
    number of sessions deleted.

    Their replies are locked first (PostgreSQL; SQLite has one writer at a time), scored or not: a reply being
    stored meanwhile is either stored before they are counted, or finds itself deleted and adds nothing
    (message_complete).
    """
    replies = Message.objects.filter(session_id__in=session_ids, role=Message.Role.ASSISTANT)
    if connection.features.has_select_for_update:
        list(replies.select_for_update(of=("self",)).values_list("pk", flat=True))
    counted = (
        replies.filter(drift_score__isnull=False)
        .order_by()
        .values_list("session__persona_id")
        .annotate(replies=Count("pk"), flagged=Count("pk", filter=Q(flagged=True)), drift_sum=Sum("drift_score"))
    )
    for persona_id, count, flagged, drift_sum in counted:
        PersonaDriftStats.objects.filter(persona_id=persona_id).update(
            replies=F("replies") - count,
            flagged=F("flagged") - flagged,
            # Back to an exact zero with the last reply, not what the additions and subtractions leave over.
            drift_sum=Case(When(replies=count, then=Value(0.0)), default=F("drift_sum") - drift_sum),
        )
    _, deleted = ChatSession.objects.filter(pk__in=session_ids).delete()
    return deleted.get(ChatSession._meta.label, 0)
