"""The labelled drift set (``tests/fixtures/drift/``): its personas built the way the service builds them, scored
by either tier, and the figures the acceptance asks for. Used by ``tests/chat/test_drift_quality.py``,
``bench/drift_quality.py`` (the figures of ``bench/RESULTS-drift.md``) and ``bench/fit_drift_priors.py``.

A persona is built from its source as the service would build it:

* ``hand-written``: the anchors a JSON-answering model gave, and its calibration replies as samples;
* ``pipeline-prose``: the six prose answers parsed step by step (``personas.steps.parse_output``), the anchors
  recovered from them (``drift_anchor_texts``), and the calibration replies as samples;
* ``card``: the card parsed as an import parses it, its anchors taken as an import takes them, and no samples (an
  import makes no model call).

Calibration replies that break a hard rule are dropped, as ``personas.pipeline.calibration_samples`` drops them.
Every persona belongs to one owner: the others are its "other personas" for the bleed component, and their
in-character replies are its other-persona drift. ``held_out.json`` is read only when asked for
(``split="held_out"``): choosing statistics and fitting priors use ``split="dev"``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "drift"
Split = Literal["dev", "held_out"]


@dataclass
class LabelledPersona:
    name: str
    source: str
    style: str
    anchors: list[str]
    samples: list[str]
    in_character: list[str] = field(default_factory=list)
    generic: list[str] = field(default_factory=list)


def _replies(items: Sequence[Any]) -> list[str]:
    return [item["reply"] if isinstance(item, dict) else str(item) for item in items]


def build_persona(entry: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(anchors, samples) of a labelled persona, made the way the service makes them from its source."""
    from chat.drift import hard_rule_hits
    from personas.cards import anchor_texts_from_card, parse_card
    from personas.steps import STEPS, PipelineState, drift_anchor_texts, parse_output

    name = entry["name"]
    samples = [" ".join(s.split()) for s in entry.get("calibration_replies", [])]
    samples = [s for s in samples if s and not hard_rule_hits(s, name)]
    if entry["source"] == "hand-written":
        return list(entry["anchors"]), samples
    if entry["source"] == "pipeline-prose":
        state = PipelineState(prompt=entry["prompt"])
        prose: list[str] = []
        for step in STEPS:
            result = parse_output(step, entry["steps"][step], state)
            state = state.with_output(step, result.output)
            if not result.parsed_json:
                prose.append(entry["steps"][step])
        return drift_anchor_texts(state, prose_answers=prose), samples
    if entry["source"] == "card":
        card = parse_card(entry["card"])
        return anchor_texts_from_card(card.data) or [card.name], []
    raise ValueError(f"unknown source {entry['source']!r}")


def load(split: Split) -> list[LabelledPersona]:
    """The labelled personas with the replies of ``split``."""
    data = json.loads((FIXTURES / "labelled.json").read_text(encoding="utf-8"))
    held = (
        json.loads((FIXTURES / "held_out.json").read_text(encoding="utf-8"))["personas"] if split == "held_out" else {}
    )
    out = []
    for entry in data["personas"]:
        anchors, samples = build_persona(entry)
        replies = entry["dev"] if split == "dev" else held[entry["name"]]
        out.append(
            LabelledPersona(
                name=entry["name"],
                source=entry["source"],
                style=entry["style"],
                anchors=anchors,
                samples=samples,
                in_character=_replies(replies["in_character"]),
                generic=_replies(replies["generic"]),
            )
        )
    return out


@dataclass
class PersonaScores:
    """One persona's scores on a split: its own replies, generic ones, the other personas' (all as results)."""

    name: str
    source: str
    style: str
    in_character: list[Any]
    generic: list[Any]
    other_persona: list[Any]


def score_set(personas: list[LabelledPersona], embedder: Any) -> list[PersonaScores]:
    """Calibrate every persona with ``embedder`` and score the split's replies, as one owner's roster."""
    from chat.drift import centroid
    from chat.scoring import calibrate_persona, embed_replies, reference_matrix, score_vector

    calibrations = {p.name: calibrate_persona(embedder, anchors=p.anchors, samples=p.samples) for p in personas}
    centroids = {
        name: centroid(reference_matrix(c.anchor_vectors, embedder.dim)).astype(np.float32)
        for name, c in calibrations.items()
    }
    texts = [t for p in personas for t in p.in_character + p.generic]
    vectors = dict(zip(texts, embed_replies(embedder, texts), strict=True))
    out = []
    for p in personas:
        cal = calibrations[p.name]
        others = np.stack([c for name, c in centroids.items() if name != p.name])

        def score(text: str, cal: Any = cal, others: Any = others, name: str = p.name) -> Any:
            return score_vector(
                text,
                vectors[text],
                embedder,
                anchor_vectors=cal.anchor_vectors,
                calibration=cal.calibration,
                persona_name=name,
                other_centroids=others.tobytes(),
            )

        out.append(
            PersonaScores(
                name=p.name,
                source=p.source,
                style=p.style,
                in_character=[score(t) for t in p.in_character],
                generic=[score(t) for t in p.generic],
                other_persona=[score(t) for o in personas if o.name != p.name for t in o.in_character],
            )
        )
    return out


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Probability that a drifted reply scores above an in-character one (ties count half)."""
    pos = np.asarray(positives)[:, None]
    neg = np.asarray(negatives)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


@dataclass(frozen=True)
class Figures:
    """What the acceptance asks of a tier on a split."""

    generic_auroc: float
    other_auroc: float
    in_character_flagged: int
    in_character_total: int
    generic_flagged: int
    generic_total: int
    # name → (in-character flagged, in-character total, generic flagged, generic total, other flagged, other total)
    per_persona: dict[str, tuple[int, int, int, int, int, int]]

    @property
    def false_flag_rate(self) -> float:
        return self.in_character_flagged / self.in_character_total

    @property
    def generic_flag_rate(self) -> float:
        return self.generic_flagged / self.generic_total


def figures(scores: list[PersonaScores]) -> Figures:
    own = [r.score for s in scores for r in s.in_character]
    generic = [r.score for s in scores for r in s.generic]
    other = [r.score for s in scores for r in s.other_persona]
    per = {
        s.name: (
            sum(r.flagged for r in s.in_character),
            len(s.in_character),
            sum(r.flagged for r in s.generic),
            len(s.generic),
            sum(r.flagged for r in s.other_persona),
            len(s.other_persona),
        )
        for s in scores
    }
    return Figures(
        generic_auroc=auroc(generic, own),
        other_auroc=auroc(other, own),
        in_character_flagged=sum(v[0] for v in per.values()),
        in_character_total=sum(v[1] for v in per.values()),
        generic_flagged=sum(v[2] for v in per.values()),
        generic_total=sum(v[3] for v in per.values()),
        per_persona=per,
    )
