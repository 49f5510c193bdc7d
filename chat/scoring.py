"""Glue between the embedder and the pure drift scorer. CPU work: call it in a worker thread.

A reply is embedded in *chunks*: consecutive sentences, cut at the first sentence end after at least
``CHUNK_MIN_WORDS`` words (:func:`split_chunks`). The reply's vector is the mean of its chunk vectors weighted by
their word-piece counts, normalised. A short reply is one chunk, i.e. exactly the model's own embedding; a long one
is a blend of its parts, which is how the calibration's pseudo-replies are built (means of anchor lines), and it is
never truncated at the model's 256 tokens. Chunking is what lets a streaming reply be embedded while it streams
(:class:`StreamingEmbedding`): when the last token arrives only the last chunk is left to embed.
"""

import asyncio
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from llm.embeddings import get_embedder

from .drift import Calibration, DriftResult, calibrate, generic_assistant_texts, null_scores, score_reply

DRIFT_ALPHA = 0.05
# A chunk ends at the first sentence end after this many words.
CHUNK_MIN_WORDS = 24
# A sentence end: terminal punctuation (and closing quotes or brackets) followed by whitespace.
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]*]*(?=\s)")

# One worker for all reply embeddings: chunks of concurrent replies queue instead of oversubscribing the two
# cores with several multi-threaded BLAS calls at once.
_EMBED_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

Vector = npt.NDArray[np.float32]


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


def _embed_chunk(chunk: str) -> tuple[Vector, int]:
    """(unit vector, weight): the weight is the chunk's word-piece count, or its word count for an embedder
    without a tokenizer."""
    embedder = get_embedder()
    vector = embedder.embed([chunk])[0]
    tokenize = getattr(embedder, "tokenize", None)
    weight = len(tokenize([chunk])[0]) if tokenize is not None else len(chunk.split())
    return vector, max(weight, 1)


def _combine(parts: list[tuple[Vector, int]]) -> Vector:
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
    return _combine([_embed_chunk(chunk) for chunk in split_chunks(text)])


class StreamingEmbedding:
    """Embeds a reply chunk by chunk while it streams, on the embedding worker thread.

    ``feed(delta)`` per token costs a regex over the open chunk (a few hundred characters at most); ``vector(text)``
    embeds what is left and combines. ``cancel()`` drops queued chunks (a chunk already being embedded finishes).
    """

    def __init__(self) -> None:
        self._open = ""
        self._futures: list[Future[tuple[Vector, int]]] = []

    def feed(self, delta: str) -> None:
        self._open += delta
        if not any(c.isspace() for c in delta):
            return  # a chunk can only close once the whitespace after its sentence end has arrived
        chunks, self._open = take_chunks(self._open)
        for chunk in chunks:
            self._futures.append(_EMBED_POOL.submit(_embed_chunk, chunk))

    async def vector(self) -> Vector:
        """The vector of everything fed: equal to ``embed_reply(<all deltas joined>)``."""
        chunks, rest = take_chunks(self._open)
        for chunk in chunks:
            self._futures.append(_EMBED_POOL.submit(_embed_chunk, chunk))
        if rest.strip() or not self._futures:
            self._futures.append(_EMBED_POOL.submit(_embed_chunk, rest))
        parts = [await asyncio.wrap_future(f) for f in self._futures]
        self._futures = []
        return _combine(parts)

    def cancel(self) -> None:
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
    anchors = np.frombuffer(anchor_vectors, dtype=np.float32).reshape(-1, dim)
    others = np.frombuffer(other_centroids, dtype=np.float32).reshape(-1, dim) if other_centroids else None
    return score_reply(
        text,
        vector,
        anchors,
        Calibration.from_dict(calibration),
        generic_vectors=_generic_vectors(),
        persona_name=persona_name,
        other_centroids=others,
    )


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
