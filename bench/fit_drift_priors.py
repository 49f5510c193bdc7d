"""Fit each drift tier's priors from the labelled set's dev part and write ``chat/drift_priors.json``.

    .venv/bin/python bench/fit_drift_priors.py            # writes chat/drift_priors.json
    .venv/bin/python bench/fit_drift_priors.py --check    # exits 1 if the committed file differs from a new fit

A prior is what a persona's null is shrunk toward when its calibration is thin (few anchors, no samples): for each
component (centroid log distance, generic register, bleed margin) the median over the dev personas of their nulls'
means and spreads, weighing ``MEAN_WEIGHT`` and ``SD_WEIGHT`` pseudo-observations, with a floor on the spread at
half the smallest persona's. The single-text priors are how far each persona's samples lie from one of its anchors
alone. The threshold is the score that the dev in-character replies exceed at rate alpha, with those priors: the
Sidak bound assumes independent components, and real components are not, so it flags fewer replies than alpha.
Only ``tests/fixtures/drift/labelled.json`` is read (its personas, their calibration replies and dev replies);
``held_out.json`` never is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moonborn_site.settings")

# How many pseudo-observations a prior's location and spread weigh. The location is persona-specific (a terse
# persona lies farther from its centroid than a wordy one), so it weighs little; the spread is much alike across
# personas on these scales, so it weighs a few.
MEAN_WEIGHT = 0.5
SD_WEIGHT = 4.0
# Anchors of each persona taken alone for the single-text priors.
SINGLE_ANCHORS = 4
PRIORS_PATH = ROOT / "chat" / "drift_priors.json"


def _summary(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std())


def fit(embedder: Any) -> dict[str, Any]:
    """The priors of one embedder, with the per-persona figures they came from."""
    from bench import drift_set
    from chat.drift import DEFAULT_PRIORS, Calibration, bleed_null, centroid, distance_statistic, register_statistic
    from chat.scoring import calibrate_persona, embed_replies, pieces, reference_matrix, register

    personas = drift_set.load("dev")
    made = {p.name: calibrate_persona(embedder, anchors=p.anchors, samples=p.samples) for p in personas}
    centroids = {n: centroid(reference_matrix(c.anchor_vectors, embedder.dim)) for n, c in made.items()}
    stats: dict[str, list[tuple[float, float]]] = {"distance": [], "register": [], "bleed": []}
    for p in personas:
        cal = Calibration.from_dict(made[p.name].calibration)
        stats["distance"].append(_summary(list(np.repeat(cal.null_distances, cal.null_counts))))
        stats["register"].append(_summary(list(np.repeat(cal.null_registers, cal.null_counts))))
        others = np.stack([c for n, c in centroids.items() if n != p.name])
        margins, counts = bleed_null(
            reference_matrix(made[p.name].anchor_vectors, embedder.dim),
            others,
            n_anchors=cal.n_anchors,
        )
        stats["bleed"].append(_summary(list(np.repeat(margins, counts))))
    # A persona with one reference text: its real replies (the samples) against each of its first anchors alone.
    single: dict[str, list[tuple[float, float]]] = {"distance": [], "register": []}
    pooled: dict[str, list[float]] = {"distance": [], "register": []}
    for p in personas:
        if not p.samples:
            continue
        distances: list[float] = []
        registers: list[float] = []
        for anchor in p.anchors[:SINGLE_ANCHORS]:
            one = Calibration.from_dict(calibrate_persona(embedder, anchors=[anchor]).calibration)
            vectors = embed_replies(embedder, p.samples)
            line = embedder.embed([anchor])[0]
            distances += [float(distance_statistic(float(v @ line))) for v in vectors]
            assert one.persona_pieces is not None
            registers += [register_statistic(x, register(), one.persona_pieces) for x in pieces(p.samples)]
        single["distance"].append(_summary(distances))
        single["register"].append(_summary(registers))
        pooled["distance"] += distances
        pooled["register"] += registers
    priors: dict[str, Any] = {}
    for component, rows in single.items():
        # All such a persona has, and its own location is unknown: the spread is the pooled one, within personas
        # and between them (a persona whose replies sit farther from its one line than most must not be flagged
        # wholesale).
        priors[f"single_{component}"] = {
            "mean": round(float(np.median([m for m, _ in rows])), 6),
            "sd": round(float(np.std(pooled[component])), 6),
            "mean_weight": SD_WEIGHT,
            "sd_weight": SD_WEIGHT,
            "sd_floor": round(0.5 * float(min(s for _, s in rows)), 6),
        }
    for component, rows in stats.items():
        means = [m for m, _ in rows]
        sds = [s for _, s in rows if s > 0]
        default = getattr(DEFAULT_PRIORS, component)
        priors[component] = {
            "mean": round(float(np.median(means)), 6),
            "sd": round(float(np.median(sds)) if sds else default.sd, 6),
            "mean_weight": MEAN_WEIGHT,
            "sd_weight": SD_WEIGHT,
            "sd_floor": round(0.5 * float(min(sds)) if sds else default.sd_floor, 6),
        }
    return {
        "priors": priors,
        "personas": {p.name: {c: [round(v, 4) for v in stats[c][i]] for c in stats} for i, p in enumerate(personas)},
    }


def build() -> dict[str, Any]:
    import django

    django.setup()
    from bench import drift_set
    from chat import drift
    from chat.drift import CALIBRATION_VERSION, embedder_family
    from chat.scoring import tier0, tier1

    # The nulls do not depend on the priors, but calibrating reads them: read none (not the file being replaced).
    drift.PRIORS_FILE = ROOT / "chat" / "no-such-priors.json"
    drift._fitted_priors.cache_clear()

    source = drift_set.FIXTURES / "labelled.json"
    out: dict[str, Any] = {
        "about": (
            "Drift priors per embedder, fitted by bench/fit_drift_priors.py on the dev part of the labelled set "
            "(each persona: [mean, sd] of its null per component). Do not edit by hand: run the script."
        ),
        "calibration_version": CALIBRATION_VERSION,
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "embedders": {},
    }
    embedders = (tier0(), tier1())
    for embedder in embedders:
        out["embedders"][embedder_family(embedder.model_id)] = fit(embedder)
    # The threshold: with these priors in place, the score that the dev in-character replies exceed at rate alpha.
    fitted = {family: drift.Priors.from_dict(entry["priors"]) for family, entry in out["embedders"].items()}
    drift._fitted_priors = lambda: fitted  # type: ignore[assignment]
    for embedder in embedders:
        entry = out["embedders"][embedder_family(embedder.model_id)]
        entry["priors"].update(fit_threshold(embedder))
    return out


def fit_threshold(embedder: Any) -> dict[str, float]:
    """The (1 - DRIFT_ALPHA) quantile of the dev in-character replies' scores (those without a hard-rule hit,
    which score 1 whatever the threshold), as the ``threshold`` of the embedder's priors."""
    from bench import drift_set
    from chat.scoring import DRIFT_ALPHA

    scores = drift_set.score_set(drift_set.load("dev"), embedder)
    own = [r.score for s in scores for r in s.in_character if not r.hard_rule_hits]
    return {"threshold": round(float(np.quantile(own, 1.0 - DRIFT_ALPHA)), 4), "threshold_alpha": DRIFT_ALPHA}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    args = parser.parse_args()
    text = json.dumps(build(), indent=1, ensure_ascii=False) + "\n"
    if args.check:
        same = PRIORS_PATH.is_file() and PRIORS_PATH.read_text(encoding="utf-8") == text
        print("chat/drift_priors.json is " + ("up to date" if same else "out of date: run bench/fit_drift_priors.py"))
        return 0 if same else 1
    PRIORS_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {PRIORS_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
