"""Glue between the embedder and the pure drift scorer. CPU work: call it in a worker thread.

A reply is embedded in *chunks*: consecutive sentences, cut at the first sentence end after at least
``CHUNK_MIN_WORDS`` words (:func:`split_chunks`). The reply's vector is the mean of its chunk vectors weighted by
their word-piece counts, normalised. A short reply is one chunk, i.e. exactly the model's own embedding; a long one
is a blend of its parts, which is how the calibration's pseudo-replies are built (means of anchor lines), and it is
never truncated at the model's 256 tokens. Chunking is what lets a streaming reply be embedded while it streams
(:class:`StreamingEmbedding`): when the last token arrives only the last chunk is left to embed.
"""

import asyncio
import contextlib
import os
import re
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
from django.conf import settings

from llm.embeddings import get_embedder

from .drift import (
    Calibration,
    DriftResult,
    ScoringContext,
    calibrate,
    generic_assistant_texts,
    null_scores,
    score_prepared,
    scoring_context,
)
from .text import ReplyText

DRIFT_ALPHA = 0.05
# A chunk ends at the first sentence end after this many words.
CHUNK_MIN_WORDS = 24
# A sentence end: terminal punctuation (and closing quotes or brackets) followed by whitespace.
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]*]*(?=\s)")
_SPACE = re.compile(r"\s")
# How far before a delta a sentence end that the delta's whitespace completes can start (punctuation, closers).
_END_LOOKBACK = 16
# At most this many chunks go into one call of the embedder (which packs them into forward passes).
_MAX_BATCH_CHUNKS = 64

Vector = npt.NDArray[np.float32]
Part = tuple[Vector, int]


def take_chunks(text: str) -> tuple[list[str], str]:
    """Cut the complete chunks off the front of ``text``: (chunks, the rest still open)."""
    chunks: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if len(text[start : match.end()].split()) >= CHUNK_MIN_WORDS:
            chunks.append(text[start : match.end()])
            start = match.end()
    return chunks, text[start:]


def split_chunks(text: str) -> list[str]:
    """The chunks a finished reply is embedded in (the same cut :class:`StreamingEmbedding` makes as it streams)."""
    chunks, rest = take_chunks(text)
    if rest.strip() or not chunks:
        chunks.append(rest)
    return chunks


def embed_chunks(chunks: list[str]) -> list[Part]:
    """(unit vector, weight) per chunk, in one call of the embedder.

    The weight is the chunk's word-piece count, or its word count for an embedder without a tokenizer. A chunk's
    vector does not depend on the chunks it is embedded with beyond float32 rounding (the forward pass packs texts
    without padding; only BLAS's summation order changes with the batch).
    """
    embedder = get_embedder()
    vectors = embedder.embed(chunks)
    tokenize = getattr(embedder, "tokenize", None)
    weights = [len(ids) for ids in tokenize(chunks)] if tokenize is not None else [len(c.split()) for c in chunks]
    return [(vectors[i], max(weight, 1)) for i, weight in enumerate(weights)]


def _combine(parts: list[Part]) -> Vector:
    if len(parts) == 1:
        return parts[0][0]
    total = np.zeros(parts[0][0].shape[-1], dtype=np.float32)
    for vector, weight in parts:
        total += np.float32(weight) * vector
    norm = float(np.linalg.norm(total))
    out: Vector = total / np.float32(max(norm, 1e-12))
    return out


def embed_reply(text: str) -> Vector:
    """The reply's vector (see the module docstring), computed in one go."""
    return _combine(embed_chunks(split_chunks(text)))


class EmbeddingQueue:
    """One worker thread embeds the chunks of every reply in the process, in batches.

    Whatever is waiting when the worker comes round goes into one embedder call, so concurrent replies share
    forward passes (a pass over a few tokens costs about as much as reading the weights, ~6 ms here). The
    worker runs at a lower CPU priority (``MOONBORN_EMBED_NICE``, Linux sets it per thread): when the cores
    are short, streaming tokens comes before scoring them.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: deque[tuple[str, Future[Part]]] = deque()
        self._busy = False
        self._thread: threading.Thread | None = None
        # Replies streaming now (counted on the event loop by StreamingEmbedding), and whether that is few enough
        # to embed ahead: worked out when the count changes, so that no token reads the setting.
        self.streaming = 0
        self._few = True

    def idle(self) -> bool:
        """Whether the worker has nothing to do (so work submitted now starts at once)."""
        return not self._busy and not self._waiting

    def takes_ahead(self) -> bool:
        """Whether a streaming reply should send a finished chunk now rather than with the rest at its end.

        Only while few replies stream (``MOONBORN_EMBED_AHEAD_MAX_REPLIES``) and the worker is idle: then it hides
        the embedding in the time the model takes to write. With many replies, embedding ahead would keep a core
        busy with replies that may be minutes from their end (or cancelled); at their end their chunks are batched
        with everyone else's instead.
        """
        return self._few and self.idle()

    def count_streaming(self, change: int) -> None:
        """Count a reply that starts (+1) or stops (-1) streaming."""
        self.streaming += change
        self._few = self.streaming <= settings.MOONBORN_EMBED_AHEAD_MAX_REPLIES

    def submit(self, chunks: list[str]) -> list[Future[Part]]:
        futures: list[Future[Part]] = [Future() for _ in chunks]
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="moonborn-embed", daemon=True)
                self._thread.start()
            self._waiting.extend(zip(chunks, futures, strict=True))
            self._cond.notify()
        return futures

    def _work(self) -> None:
        _lower_priority(settings.MOONBORN_EMBED_NICE)
        while True:
            with self._cond:
                while not self._waiting:
                    self._busy = False
                    self._cond.wait()
                self._busy = True
                batch = [self._waiting.popleft() for _ in range(min(len(self._waiting), _MAX_BATCH_CHUNKS))]
            live = [(chunk, future) for chunk, future in batch if future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                parts = embed_chunks([chunk for chunk, _ in live])
            except BaseException as exc:  # handed to the awaiting reply, which fails with it
                for _, future in live:
                    future.set_exception(exc)
            else:
                for (_, future), part in zip(live, parts, strict=True):
                    future.set_result(part)


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's niceness by ``nice`` (Linux applies it to the thread alone)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):  # not permitted here: run at the normal priority
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


EMBEDDING_QUEUE = EmbeddingQueue()


class StreamingEmbedding:
    """Embeds a reply chunk by chunk while it streams, on :data:`EMBEDDING_QUEUE`.

    ``feed(delta)`` per token costs a regex over the open chunk (a few hundred characters at most). A finished
    chunk is sent ahead only when the queue takes it (:meth:`EmbeddingQueue.takes_ahead`): under load (many replies
    streaming) chunks wait and are embedded at the end with the rest, in one batch, so the work is never done twice
    and never crowds out tokens.
    ``vector()`` embeds what is left and combines; ``cancel()`` drops what has not started.
    """

    def __init__(self, text: ReplyText, queue: EmbeddingQueue = EMBEDDING_QUEUE) -> None:
        self._queue = queue
        # The reply's text, appended by the caller (read here, never copied: an open stream holds it once).
        self._text = text
        # Where the chunk still open starts in it (a byte offset).
        self._cut = 0
        self._futures: list[Future[Part]] = []
        self._streaming = True
        queue.count_streaming(+1)

    def _ended(self) -> None:
        if self._streaming:
            self._streaming = False
            self._queue.count_streaming(-1)

    def feed(self, delta: str) -> None:
        """Note that `delta` was appended to the text."""
        if not self._queue.takes_ahead():
            return  # under load chunks are cut at the end, all at once: nothing to do per token
        if not _SPACE.search(delta):
            return  # a chunk can only close once the whitespace after its sentence end has arrived
        text = self._text.text(self._cut)
        # Only a sentence end new with this delta can close a chunk (the earlier ones were all short of
        # CHUNK_MIN_WORDS and stay so): look for one near the end before scanning the whole open text.
        if not _SENTENCE_END.search(text, max(0, len(text) - len(delta) - _END_LOOKBACK)):
            return
        chunks, rest = take_chunks(text)
        if chunks:
            self._cut = self._text.size() - ReplyText.measure(rest)
            self._futures.extend(self._queue.submit(chunks))

    async def vector(self) -> Vector:
        """The vector of everything fed: ``embed_reply(<the text>)`` up to float32 rounding."""
        self._ended()
        todo, rest = take_chunks(self._text.text(self._cut))
        if rest.strip() or not (self._futures or todo):
            todo.append(rest)
        self._futures.extend(self._queue.submit(todo))
        parts = [await asyncio.wrap_future(f) for f in self._futures]
        self._futures = []
        return _combine(parts)

    def cancel(self) -> None:
        self._ended()
        for future in self._futures:
            future.cancel()
        self._futures = []


@cache
def _generic_vectors() -> np.ndarray:
    return get_embedder().embed(list(generic_assistant_texts()))


@dataclass(frozen=True)
class PersonaCalibration:
    anchor_vectors: bytes
    embedding_model: str
    calibration: dict[str, Any]
    threshold: float


def calibrate_persona(anchor_texts: list[str]) -> PersonaCalibration:
    """Embed a persona's anchors and calibrate its drift threshold (leave-one-out over them)."""
    embedder = get_embedder()
    vectors = embedder.embed(anchor_texts).astype(np.float32)
    calibration = calibrate(vectors, generic_vectors=_generic_vectors(), alpha=DRIFT_ALPHA)
    return PersonaCalibration(
        anchor_vectors=vectors.tobytes(),
        embedding_model=embedder.model_id,
        calibration=calibration.to_dict(),
        threshold=calibration.threshold,
    )


def recalibrate(*, anchor_vectors: bytes, reply_vectors: list[bytes]) -> PersonaCalibration:
    """Calibrate again from stored anchor vectors plus the vectors of replies reviewed as in character."""
    embedder = get_embedder()
    anchors = np.frombuffer(anchor_vectors, dtype=np.float32).reshape(-1, embedder.dim)
    replies = np.stack([np.frombuffer(v, dtype=np.float32) for v in reply_vectors]) if reply_vectors else None
    calibration = calibrate(anchors, generic_vectors=_generic_vectors(), alpha=DRIFT_ALPHA, reply_vectors=replies)
    return PersonaCalibration(
        anchor_vectors=anchor_vectors,
        embedding_model=embedder.model_id,
        calibration=calibration.to_dict(),
        threshold=calibration.threshold,
    )


def score_text(
    text: str,
    *,
    anchor_vectors: bytes,
    calibration: dict[str, Any],
    persona_name: str,
    other_centroids: bytes = b"",
) -> DriftResult:
    """Score one finished reply against its persona (and, for bleed, the owner's other personas' centroids)."""
    return score_vector(
        text,
        embed_reply(text),
        anchor_vectors=anchor_vectors,
        calibration=calibration,
        persona_name=persona_name,
        other_centroids=other_centroids,
    )


def score_vector(
    text: str,
    vector: Vector,
    *,
    anchor_vectors: bytes,
    calibration: dict[str, Any],
    persona_name: str,
    other_centroids: bytes = b"",
) -> DriftResult:
    """Score a reply whose vector is already computed (:func:`embed_reply` or :class:`StreamingEmbedding`)."""
    dim = int(vector.shape[-1])
    context = _scoring_context(anchor_vectors, calibration, other_centroids, dim)
    return score_prepared(text, vector, context, persona_name=persona_name)


# (id of the calibration dict, anchor vectors, other centroids, dim) → (that dict, its scoring context). Replies of
# one persona version share its calibration dict and vectors (chat.services.persona_voice), so they share the
# context too: checking and summarising the persona's vectors costs more than scoring a reply. The entry keeps
# the dict alive, so its id is not reused while cached.
_contexts: OrderedDict[tuple[int, bytes, bytes, int], tuple[dict[str, Any], ScoringContext]] = OrderedDict()
_contexts_lock = threading.Lock()
CONTEXT_CACHE_SIZE = 256


def _scoring_context(
    anchor_vectors: bytes, calibration: dict[str, Any], other_centroids: bytes, dim: int
) -> ScoringContext:
    key = (id(calibration), anchor_vectors, other_centroids, dim)
    with _contexts_lock:
        cached = _contexts.get(key)
        if cached is not None and cached[0] is calibration:
            _contexts.move_to_end(key)
            return cached[1]
    anchors = np.frombuffer(anchor_vectors, dtype=np.float32).reshape(-1, dim)
    others = np.frombuffer(other_centroids, dtype=np.float32).reshape(-1, dim) if other_centroids else None
    context = scoring_context(
        anchors, Calibration.from_dict(calibration), generic_vectors=_generic_vectors(), other_centroids=others
    )
    with _contexts_lock:
        _contexts[key] = (calibration, context)
        while len(_contexts) > CONTEXT_CACHE_SIZE:
            _contexts.popitem(last=False)
    return context


def calibration_scores(*, anchor_vectors: bytes, calibration: dict[str, Any]) -> list[float]:
    """The scores of a persona's calibration pseudo-replies, for the dashboard's histogram ([] if none)."""
    if not anchor_vectors or not calibration:
        return []
    try:
        parsed = Calibration.from_dict(calibration)
    except ValueError:
        return []
    anchors = np.frombuffer(anchor_vectors, dtype=np.float32)
    if anchors.size != parsed.n_anchors * parsed.dim:
        return []
    generic = _generic_vectors()
    if generic.shape[-1] != parsed.dim:
        return []  # calibrated with another embedder than the current one
    return null_scores(anchors.reshape(-1, parsed.dim), parsed, generic_vectors=generic)


def score_record(result: DriftResult, calibration: dict[str, Any]) -> dict[str, Any]:
    """What is stored with a score: its components, the rule that decided it, the model and calibration."""
    return {
        "components": result.components,
        "rule": result.rule,
        "hard_rule_hits": list(result.hard_rule_hits),
        "embedding_model": get_embedder().model_id,
        "calibration_version": calibration.get("version"),
        "calibration_replies": calibration.get("n_replies", 0),
    }


def warm_up() -> None:
    """Load the model and the generic-assistant vectors before the first request needs them."""
    _generic_vectors()
