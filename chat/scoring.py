"""Glue between the embedder and the pure drift scorer. CPU work: call it in a worker thread."""

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from llm.embeddings import get_embedder

from .drift import Calibration, DriftResult, calibrate, generic_assistant_texts, score_reply

DRIFT_ALPHA = 0.05


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


def score_text(text: str, *, anchor_vectors: bytes, calibration: dict[str, Any], persona_name: str) -> DriftResult:
    """Score one finished reply against its persona."""
    embedder = get_embedder()
    anchors = np.frombuffer(anchor_vectors, dtype=np.float32).reshape(-1, embedder.dim)
    vector = embedder.embed([text])[0]
    return score_reply(
        text,
        vector,
        anchors,
        Calibration.from_dict(calibration),
        generic_vectors=_generic_vectors(),
        persona_name=persona_name,
    )


def score_record(result: DriftResult, calibration: dict[str, Any]) -> dict[str, Any]:
    """What is stored with a score: its components, the rule that decided it, the model and calibration."""
    return {
        "components": result.components,
        "rule": result.rule,
        "hard_rule_hits": list(result.hard_rule_hits),
        "embedding_model": get_embedder().model_id,
        "calibration_version": calibration.get("version"),
    }


def warm_up() -> None:
    """Load the model and the generic-assistant vectors before the first request needs them."""
    _generic_vectors()
