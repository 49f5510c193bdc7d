"""Glue between the embedders and the pure drift maths (:mod:`chat.drift`): two tiers, one procedure.

* **Tier 0** embeds with the static table distilled from the packaged MiniLM (:mod:`llm.static_embeddings`): ~0.3 ms
  of CPU for a 250-piece reply, so it runs on the reply's own path and its verdict is the one `completed` carries.
* **Tier 1** embeds with the full model (``MOONBORN_EMBEDDINGS``: the packaged MiniLM on numpy, or an
  OpenAI-compatible server), ~90 ms a reply on one core, so it runs after `completed` in the tier-1 worker
  (:mod:`chat.tier1`), batched, and its score is stored beside tier 0's.

Both calibrate a persona the same way, on the same texts: its anchors (greetings, example lines, catchphrases) and
its samples (in-character replies its own model wrote at creation), each tier with the priors fitted for its
embedder (:mod:`chat.drift`, ``chat/drift_priors.json``). A persona's tier-0 vectors and calibration are made when
it is made (or imported), tier 1's by the worker the first time it scores one of its replies.

A reply is embedded whole by tier 0. Tier 1 embeds it in *chunks* of whole sentences (at least ``CHUNK_MIN_WORDS``
words each; the reply's vector is their mean weighted by word pieces), so a long reply is never truncated at the
model's 256 tokens. Samples are embedded as replies are, anchors whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from django.conf import settings

from llm.embeddings import Embedder, get_embedder
from llm.static_embeddings import StaticEmbedder, get_static_embedder
from moonborn_site.state import Lru, Stoppable, process_state

from .drift import (
    Calibration,
    DriftResult,
    RegisterModel,
    ScoringContext,
    calibrate,
    generic_assistant_texts,
    null_scores,
    priors_for,
    register_model,
    score_prepared,
    scoring_context,
)

DRIFT_ALPHA = 0.05
# A tier-1 chunk ends at the first sentence end after this many words.
CHUNK_MIN_WORDS = 24
# A sentence end: terminal punctuation (and closing quotes or brackets) followed by whitespace.
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]*]*(?=\s)")

Vector = npt.NDArray[np.float32]

# Drift reads at most this many characters of a reply (cut at a space): ~4,000 word pieces, far past any reply a
# model writes under its token limit, and the bound on what one degenerate reply (a runaway stream of a million
# words, then cancelled) can cost either tier.
SCORED_CHARS = 20_000


def scored_part(text: str) -> str:
    """The part of a reply drift reads (all of it, up to ``SCORED_CHARS``)."""
    if len(text) <= SCORED_CHARS:
        return text
    cut = text.rfind(" ", 0, SCORED_CHARS)
    return text[: cut if cut > 0 else SCORED_CHARS]


def split_chunks(text: str) -> list[str]:
    """The chunks tier 1 embeds a reply in: consecutive sentences, cut at the first sentence end after at least
    ``CHUNK_MIN_WORDS`` words; what is left at the end is the last chunk."""
    chunks: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if len(text[start : match.end()].split()) >= CHUNK_MIN_WORDS:
            chunks.append(text[start : match.end()])
            start = match.end()
    rest = text[start:]
    if rest.strip() or not chunks:
        chunks.append(rest)
    return chunks


def embed_replies(embedder: Embedder, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """Replies' unit vectors, one row each, as a tier embeds replies.

    The static table embeds each whole. A full model embeds every chunk of every text in one call (it packs them
    into forward passes) and combines each text's chunks, weighted by their word pieces (words for an embedder
    without a tokenizer).
    """
    if isinstance(embedder, StaticEmbedder):
        return embedder.embed(texts)
    cut = [split_chunks(text) for text in texts]
    flat = [chunk for chunks in cut for chunk in chunks]
    vectors = embedder.embed(flat) if flat else np.zeros((0, embedder.dim), dtype=np.float32)
    tokenize = getattr(embedder, "tokenize", None)
    weights = [len(ids) for ids in tokenize(flat)] if tokenize is not None else [len(c.split()) for c in flat]
    out = np.zeros((len(texts), vectors.shape[1] if len(flat) else embedder.dim), dtype=np.float32)
    at = 0
    for row, chunks in enumerate(cut):
        n = len(chunks)
        if n == 1:
            out[row] = vectors[at]
        else:
            total = (vectors[at : at + n] * np.asarray(weights[at : at + n], dtype=np.float32)[:, None]).sum(axis=0)
            out[row] = total / np.float32(max(float(np.linalg.norm(total)), 1e-12))
        at += n
    return out


def tier0() -> StaticEmbedder:
    return get_static_embedder()


def tier1() -> Embedder:
    return get_embedder()


# Embedder model id → its embedding of the generic-assistant texts.
_generic_lock = threading.Lock()


def generic_vectors(embedder: Embedder) -> npt.NDArray[np.float32]:
    """The embedded generic-assistant texts (the "generic" pole), once per embedder.

    A full model takes ~15 s of CPU for them, so they are kept in ``MOONBORN_CACHE_DIR`` under a checksum of the
    model id and the texts: each process of a machine reads them instead of embedding them again.
    """
    generic = process_state("chat.generic_vectors", dict[str, npt.NDArray[np.float32]])
    with _generic_lock:
        found = generic.get(embedder.model_id)
        if found is None:
            found = generic[embedder.model_id] = _cached_generic_vectors(embedder)
    return found


def _cached_generic_vectors(embedder: Embedder) -> npt.NDArray[np.float32]:
    texts = generic_assistant_texts()
    if isinstance(embedder, StaticEmbedder):
        return embed_replies(embedder, texts)  # a quarter of a second: not worth a file
    digest = hashlib.sha256("\0".join((embedder.model_id, *texts)).encode()).hexdigest()[:24]
    path = Path(settings.MOONBORN_CACHE_DIR) / f"generic-vectors-{digest}.npy"
    with contextlib.suppress(OSError, ValueError):
        cached: npt.NDArray[np.float32] = np.load(path, allow_pickle=False)
        if cached.shape[0] == len(texts):
            return cached
    vectors = embed_replies(embedder, texts)
    with contextlib.suppress(OSError):  # a read-only cache directory: embed again in the next process
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, vectors, allow_pickle=False)
        tmp.replace(path)
    return vectors


@functools.cache
def register() -> RegisterModel:
    """The generic assistant's side of the register component, over the packaged MiniLM's word pieces (both tiers
    share it: the register reads the reply's words, not its embedding)."""
    static = tier0()
    return register_model([static.pieces(t) for t in generic_assistant_texts()], static.vocabulary)


def pieces(texts: Sequence[str]) -> list[list[int]]:
    """The word pieces of texts, as the register reads them."""
    static = tier0()
    return [static.pieces(t) for t in texts]


@dataclass(frozen=True)
class PersonaCalibration:
    """One tier's calibration of a persona: its reference vectors (anchors then samples), the embedder, the
    calibration (``Calibration.to_dict()``) and its threshold."""

    anchor_vectors: bytes
    embedding_model: str
    calibration: dict[str, Any]
    threshold: float


def calibrate_persona(
    embedder: Embedder, *, anchors: Sequence[str], samples: Sequence[str] = (), reviewed: Sequence[str] = ()
) -> PersonaCalibration:
    """Embed a persona's anchors and samples with ``embedder`` and calibrate its drift on them.

    ``reviewed``: replies an admin marked in character (the feedback loop), which join the null.
    """
    anchor_vectors = embedder.embed(list(anchors)).astype(np.float32)
    sample_vectors = embed_replies(embedder, list(samples)) if samples else None
    reviewed_vectors = embed_replies(embedder, list(reviewed)) if reviewed else None
    calibration = calibrate(
        anchor_vectors,
        generic_vectors=generic_vectors(embedder),
        alpha=DRIFT_ALPHA,
        sample_vectors=sample_vectors,
        reply_vectors=reviewed_vectors,
        priors=priors_for(embedder.model_id),
        register=register(),
        reference_pieces=pieces([*anchors, *samples]),
        reply_pieces=pieces(reviewed),
    )
    reference = anchor_vectors if sample_vectors is None else np.concatenate([anchor_vectors, sample_vectors])
    return PersonaCalibration(
        anchor_vectors=reference.astype(np.float32).tobytes(),
        embedding_model=embedder.model_id,
        calibration=calibration.to_dict(),
        threshold=calibration.threshold,
    )


def reference_matrix(anchor_vectors: bytes, dim: int) -> npt.NDArray[np.float32]:
    """A persona's stored reference vectors as rows (anchors then samples)."""
    return np.frombuffer(anchor_vectors, dtype=np.float32).reshape(-1, dim)


def score_vector(
    text: str,
    vector: Vector,
    embedder: Embedder,
    *,
    anchor_vectors: bytes,
    calibration: dict[str, Any],
    persona_name: str,
    other_centroids: bytes = b"",
    reply_pieces: Sequence[int] | None = None,
) -> DriftResult:
    """Score a reply whose vector ``embedder`` made, against the persona's calibration for that embedder (and, for
    bleed, the owner's other personas' centroids from the same embedder). ``reply_pieces``: the reply's word pieces
    if already known (tier 0 has them from its embedding)."""
    dim = int(vector.shape[-1])
    context = _scoring_context(embedder, anchor_vectors, calibration, other_centroids, dim)
    if reply_pieces is None:
        reply_pieces = tier0().pieces(text)
    return score_prepared(text, vector, context, reply_pieces=reply_pieces, persona_name=persona_name)


def score_tier0(
    text: str, *, anchor_vectors: bytes, calibration: dict[str, Any], persona_name: str, other_centroids: bytes = b""
) -> DriftResult:
    """Tier 0 of a finished reply: embed it with the static table and score it (well under a millisecond)."""
    embedder = tier0()
    text = scored_part(text)
    reply_pieces = embedder.pieces(text)
    return score_vector(
        text,
        embedder.vector(reply_pieces),
        embedder,
        anchor_vectors=anchor_vectors,
        calibration=calibration,
        persona_name=persona_name,
        other_centroids=other_centroids,
        reply_pieces=reply_pieces,
    )


class Tier0Scorer(Stoppable):
    """Tier 0 of every reply of the process, one at a time, in a thread of its own.

    A reply costs ~0.2 ms of CPU for 100 tokens, all of it holding the GIL. On the loop, or in a thread that takes
    them back to back, a thousand replies ending in the same half second would hold every other stream's next token
    for that long (measured: the jitter p99 of 1,000 streams doubled). So the thread gives the GIL back for
    ``YIELD_SECONDS`` after each reply while others wait: tokens keep their pace, and under a burst it is the
    `completed` events that wait.
    """

    YIELD_SECONDS = 0.0005

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], DriftResult], asyncio.AbstractEventLoop, asyncio.Future[DriftResult]] | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def score(self, call: Callable[[], DriftResult]) -> DriftResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[DriftResult] = loop.create_future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="moonborn-tier0", daemon=True)
                self._thread.start()
        self._jobs.put((call, loop, future))
        return await future

    def close(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            call, loop, future = job
            try:
                result = call()
            except BaseException as exc:  # handed to the awaiting reply, which fails with it
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)
            if not self._jobs.empty():
                time.sleep(self.YIELD_SECONDS)


def _settle(future: asyncio.Future[DriftResult], result: DriftResult | None, exc: BaseException | None) -> None:
    if future.cancelled():
        return  # the reply was cancelled while it waited
    if exc is not None:
        future.set_exception(exc)
    else:
        assert result is not None
        future.set_result(result)


async def score_tier0_async(
    text: str, *, anchor_vectors: bytes, calibration: dict[str, Any], persona_name: str, other_centroids: bytes = b""
) -> DriftResult:
    """:func:`score_tier0` in the tier-0 thread (:class:`Tier0Scorer`)."""
    call = functools.partial(
        score_tier0,
        text,
        anchor_vectors=anchor_vectors,
        calibration=calibration,
        persona_name=persona_name,
        other_centroids=other_centroids,
    )
    return await process_state("chat.tier0_scorer", Tier0Scorer).score(call)


# (id of the calibration dict, anchor vectors, other centroids, dim) → (that dict, its scoring context). Replies of
# one persona version share its calibration dict and vectors (chat.services.persona_voice), so they share the
# context too: checking and summarising the persona's vectors costs more than scoring a reply. The entry keeps
# the dict alive, so its id is not reused while cached.
CONTEXT_CACHE_SIZE = 256
Context = tuple[dict[str, Any], ScoringContext]


def _scoring_context(
    embedder: Embedder, anchor_vectors: bytes, calibration: dict[str, Any], other_centroids: bytes, dim: int
) -> ScoringContext:
    key = (id(calibration), anchor_vectors, other_centroids, dim)
    contexts = process_state(
        "chat.scoring_contexts", lambda: Lru[tuple[dict[str, Any], ScoringContext]](CONTEXT_CACHE_SIZE)
    )
    cached = contexts.get(key)
    if cached is not None and cached[0] is calibration:
        return cached[1]
    anchors = reference_matrix(anchor_vectors, dim)
    others = np.frombuffer(other_centroids, dtype=np.float32).reshape(-1, dim) if other_centroids else None
    context = scoring_context(
        anchors,
        Calibration.from_dict(calibration),
        generic_vectors=generic_vectors(embedder),
        register=register(),
        other_centroids=others,
    )
    contexts.put(key, (calibration, context))
    return context


def calibration_scores(*, anchor_vectors: bytes, calibration: dict[str, Any]) -> list[float]:
    """The scores of a persona's tier-0 calibration null, for the dashboard's histogram ([] if none)."""
    if not anchor_vectors or not calibration:
        return []
    try:
        parsed = Calibration.from_dict(calibration)
    except ValueError:
        return []
    if parsed.dim != tier0().dim or len(anchor_vectors) != 4 * parsed.n_reference * parsed.dim:
        return []  # calibrated with another embedder than the current one
    return null_scores(parsed)


def score_record(result: DriftResult, calibration: dict[str, Any], embedder: Embedder) -> dict[str, Any]:
    """What is stored with a score: its components, the rule that decided it, the embedder and calibration."""
    return {
        "components": result.components,
        "rule": result.rule,
        "hard_rule_hits": list(result.hard_rule_hits),
        "embedding_model": embedder.model_id,
        "calibration_version": calibration.get("version"),
        "calibration_replies": calibration.get("n_replies", 0),
    }


def warm_up() -> None:
    """Load the tier-0 table, its generic-assistant vectors and the register before the first reply needs them."""
    generic_vectors(tier0())
    register()
