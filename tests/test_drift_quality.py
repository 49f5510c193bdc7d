"""Drift quality on the committed labelled set (``tests/fixtures/drift_labelled.json``), with the real embedder.

Five personas, each with 12 anchors, 12 in-character replies (the last 6 held out) and 12 generic-assistant replies.
Each persona is scored as one owner's roster: the other four are its "other personas" (the bleed component), and their
in-character replies are the "sounds like another persona" drift.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chat.drift import DriftResult, calibrate, centroid, generic_assistant_texts, score_reply
from chat.scoring import (
    CHUNK_MIN_WORDS,
    DRIFT_ALPHA,
    EmbeddingQueue,
    Part,
    StreamingEmbedding,
    embed_reply,
    split_chunks,
)
from chat.text import ReplyText
from llm.embeddings import get_embedder

FIXTURE = Path(__file__).parent / "fixtures" / "drift_labelled.json"


@dataclass(frozen=True)
class Scored:
    in_character: list[DriftResult]
    held_out: list[DriftResult]
    generic: list[DriftResult]
    other_persona: list[DriftResult]


def auroc(positives: list[float], negatives: list[float]) -> float:
    """Probability that a drifted reply scores above an in-character one (ties count half)."""
    pos = np.asarray(positives)[:, None]
    neg = np.asarray(negatives)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


@pytest.fixture(scope="module")
def labelled() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def scored(labelled: dict[str, Any]) -> dict[str, Scored]:
    embedder = get_embedder()
    generic_vectors = embedder.embed(generic_assistant_texts())
    personas = labelled["personas"]
    held_from = labelled["held_out_from"]
    # Anchors are embedded whole (as card_compile does), replies the way the chat flow does (chat.scoring).
    vectors = {
        name: {k: embedder.embed(v) if k == "anchors" else np.stack([embed_reply(t) for t in v]) for k, v in p.items()}
        for name, p in personas.items()
    }
    centroids = {name: centroid(v["anchors"]) for name, v in vectors.items()}
    out = {}
    for name, texts in personas.items():
        anchors = vectors[name]["anchors"]
        calibration = calibrate(anchors, generic_vectors=generic_vectors, alpha=DRIFT_ALPHA)
        others = np.array([c for other, c in centroids.items() if other != name])

        def score(text: str, vec: np.ndarray, *, cal=calibration, a=anchors, o=others, n=name) -> DriftResult:
            return score_reply(text, vec, a, cal, generic_vectors=generic_vectors, persona_name=n, other_centroids=o)

        own = [score(t, v) for t, v in zip(texts["in_character"], vectors[name]["in_character"], strict=True)]
        out[name] = Scored(
            in_character=own,
            held_out=own[held_from:],
            generic=[score(t, v) for t, v in zip(texts["generic"], vectors[name]["generic"], strict=True)],
            other_persona=[
                score(t, v)
                for other in personas
                if other != name
                for t, v in zip(personas[other]["in_character"], vectors[other]["in_character"], strict=True)
            ],
        )
    return out


def test_labelled_set_shape(labelled: dict[str, Any]) -> None:
    personas = labelled["personas"]
    generic = set(generic_assistant_texts())
    assert len(personas) >= 5
    for data in personas.values():
        assert len(data["anchors"]) == len(data["in_character"]) == len(data["generic"]) == 12
        assert not set(data["in_character"]) & set(data["anchors"])
        assert not set(data["generic"]) & generic
    assert labelled["held_out_from"] == 6


def test_generic_assistant_drift_auroc(scored: dict[str, Scored]) -> None:
    in_char = [r.score for s in scored.values() for r in s.in_character]
    generic = [r.score for s in scored.values() for r in s.generic]
    assert len(in_char) == len(generic) == 60
    # measured 0.999
    assert auroc(generic, in_char) >= 0.95


def test_other_persona_drift_auroc(scored: dict[str, Scored]) -> None:
    # Per persona, so each in-character reply is compared with replies scored against the same persona.
    pos = [r.score for s in scored.values() for r in s.other_persona]
    neg = [r.score for s in scored.values() for r in s.in_character]
    assert len(pos) == 240
    # measured 0.938
    assert auroc(pos, neg) >= 0.90
    assert any(r.rule == "persona_bleed" and r.flagged for s in scored.values() for r in s.other_persona)


def test_false_flag_rate_on_held_out_in_character_replies(scored: dict[str, Scored]) -> None:
    held = [r for s in scored.values() for r in s.held_out]
    assert len(held) == 30
    rate = sum(r.flagged for r in held) / len(held)
    # measured 2/30 = 0.067 at alpha 0.05
    assert rate <= DRIFT_ALPHA + 0.05, [(r.score, r.rule) for r in held if r.flagged]


def test_bleed_component_is_recorded(scored: dict[str, Scored]) -> None:
    for s in scored.values():
        for r in s.in_character + s.other_persona:
            assert 0.0 <= r.components["bleed_p"] <= 1.0
            assert r.components["bleed_nearest"] in {0.0, 1.0, 2.0, 3.0}
            assert r.score == pytest.approx(
                1.0
                - min(
                    r.components["centroid_p"],
                    r.components["generic_p"],
                    r.components["bleed_p"],
                    r.components["hard_rule_p"],
                )
            )


def test_long_replies_are_split_at_sentence_ends(labelled: dict[str, Any]) -> None:
    text = " ".join(labelled["personas"]["Zed"]["in_character"])
    chunks = split_chunks(text)
    assert "".join(chunks) == text
    assert len(chunks) > 3
    for chunk in chunks[:-1]:
        assert len(chunk.split()) >= CHUNK_MIN_WORDS
        assert chunk.rstrip()[-1] in ".!?"
    assert split_chunks("Short one.") == ["Short one."]
    assert split_chunks("") == [""]


def test_streaming_embedding_equals_the_offline_embedding(labelled: dict[str, Any]) -> None:
    text = " ".join(labelled["personas"]["Lady Marigold Fairweather"]["in_character"][:5])
    words = text.split(" ")
    deltas = [words[0]] + [" " + w for w in words[1:]]
    assert "".join(deltas) == text

    async def stream() -> np.ndarray:
        reply = ReplyText()
        embedding = StreamingEmbedding(reply)
        for delta in deltas:
            reply.append(delta)
            embedding.feed(delta)
        return await embedding.vector()

    streamed = asyncio.run(stream())
    offline = embed_reply(text)
    # The same chunks, embedded in other batches: equal up to float32 rounding (BLAS sums in another order).
    assert np.abs(streamed - offline).max() <= 1e-6
    assert float(np.linalg.norm(offline)) == pytest.approx(1.0, abs=1e-5)
    # a single chunk is the model's own embedding of the whole text
    short = labelled["personas"]["Zed"]["in_character"][0]
    assert np.array_equal(embed_reply(short), get_embedder().embed([short])[0])


class _Queue(EmbeddingQueue):
    """The real queue, told whether it is idle, recording what it is given."""

    def __init__(self, *, idle: bool) -> None:
        super().__init__()
        self.is_idle = idle
        self.batches: list[list[str]] = []

    def idle(self) -> bool:
        return self.is_idle

    def submit(self, chunks: list[str]) -> list[Future[Part]]:
        self.batches.append(list(chunks))
        return super().submit(chunks)


@pytest.mark.parametrize(("idle", "ahead_max", "ahead"), [(True, 8, True), (False, 8, False), (True, 0, False)])
def test_chunks_are_embedded_ahead_only_when_the_queue_is_idle_and_few_replies_stream(
    labelled: dict[str, Any], settings: Any, idle: bool, ahead_max: int, ahead: bool
) -> None:
    # ahead_max 0: even this one reply is more than may embed ahead.
    settings.MOONBORN_EMBED_AHEAD_MAX_REPLIES = ahead_max
    text = " ".join(labelled["personas"]["Captain Redbeard"]["in_character"][:5])
    words = text.split(" ")
    deltas = [words[0]] + [" " + w for w in words[1:]]
    chunks = split_chunks(text)
    queue = _Queue(idle=idle)

    async def stream() -> np.ndarray:
        reply = ReplyText()
        embedding = StreamingEmbedding(reply, queue)
        for delta in deltas:
            reply.append(delta)
            embedding.feed(delta)
        ahead = [chunk for batch in queue.batches for chunk in batch]
        # Ahead: every finished chunk went ahead, the last one (still open) waits for the end. Else none went.
        assert ahead == (chunks[:-1] if ahead else [])
        assert queue.streaming == 1
        return await embedding.vector()

    vector = asyncio.run(stream())
    # At the end, whatever had not gone ahead goes in one batch.
    assert queue.batches[-1] == (chunks[-1:] if ahead else chunks)
    assert queue.streaming == 0
    assert np.abs(vector - embed_reply(text)).max() <= 1e-6
