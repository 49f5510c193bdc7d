"""Drift quality on the labelled set, both tiers: the figures of ``bench/RESULTS-drift.md``.

    .venv/bin/python bench/drift_quality.py                 # held-out replies (the acceptance figures)
    .venv/bin/python bench/drift_quality.py --split dev     # the replies statistics and priors were chosen on
    .venv/bin/python bench/drift_quality.py --baseline      # also today's method before tiers, for comparison

Every persona of ``tests/fixtures/drift/`` is built as the service builds it (``bench/drift_set.py``), calibrated
with each tier's embedder and scored on the split's in-character and generic-assistant replies; the other personas'
in-character replies are its other-persona drift. ``--baseline`` adds the method the service used before the tiers, on
the same replies: the pipeline's parser, the drift maths and the generic texts of ``--baseline-rev`` (read from git),
MiniLM, anchors only, and the priors set by hand then.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moonborn_site.settings")


def table(label: str, figures: object) -> str:
    from bench.drift_set import Figures

    assert isinstance(figures, Figures)
    lines = [
        f"### {label}",
        "",
        f"- AUROC, generic-assistant vs in-character: **{figures.generic_auroc:.3f}**",
        f"- AUROC, other-persona vs in-character: **{figures.other_auroc:.3f}**",
        f"- in-character replies flagged: **{figures.in_character_flagged}/{figures.in_character_total}"
        f" = {figures.false_flag_rate:.1%}**",
        f"- generic-assistant replies flagged: **{figures.generic_flagged}/{figures.generic_total}"
        f" = {figures.generic_flag_rate:.1%}**",
        "",
        "| persona | in character flagged | generic flagged | other-persona flagged |",
        "| --- | --- | --- | --- |",
    ]
    for name, (own, own_n, gen, gen_n, oth, oth_n) in figures.per_persona.items():
        lines.append(f"| {name} | {own}/{own_n} | {gen}/{gen_n} | {oth}/{oth_n} |")
    return "\n".join(lines)


def _module_from_git(rev: str, path: str, name: str, replace: dict[str, str]) -> object:
    """A module of the project as it was at ``rev`` (its source from git), with some imports pointed elsewhere."""
    import subprocess
    import types

    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True)
    text = source.stdout
    for old, new in replace.items():
        text = text.replace(old, new)
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(text, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def baseline(rev: str, split: str) -> object:
    """The figures of the method of ``rev`` (one embedder, anchors only) on the labelled set's ``split``."""
    import json

    import numpy as np

    from bench import drift_set
    from chat.scoring import embed_replies, tier1
    from personas.cards import anchor_texts_from_card, parse_card

    generic = _module_from_git(rev, "chat/generic_assistant.py", "baseline_generic", {})
    drift = _module_from_git(
        rev, "chat/drift.py", "baseline_drift", {"from chat.generic_assistant import": "from baseline_generic import"}
    )
    steps = _module_from_git(rev, "personas/steps.py", "baseline_steps", {})
    assert generic is not None
    embedder = tier1()
    data = json.loads((drift_set.FIXTURES / "labelled.json").read_text(encoding="utf-8"))
    replies = {p.name: p for p in drift_set.load(split)}  # type: ignore[arg-type]
    anchors: dict[str, list[str]] = {}
    for entry in data["personas"]:
        if entry["source"] == "hand-written":
            anchors[entry["name"]] = list(entry["anchors"])
        elif entry["source"] == "card":
            card = parse_card(entry["card"])
            anchors[entry["name"]] = anchor_texts_from_card(card.data) or [card.name]
        else:
            state = steps.PipelineState(prompt=entry["prompt"])  # type: ignore[attr-defined]
            for step in steps.STEPS:  # type: ignore[attr-defined]
                state = state.with_output(step, steps.parse_output(step, entry["steps"][step], state).output)  # type: ignore[attr-defined]
            anchors[entry["name"]] = steps.drift_anchor_texts(state)  # type: ignore[attr-defined]
    generic_vectors = embedder.embed(list(drift.generic_assistant_texts()))  # type: ignore[attr-defined]
    vectors = {name: embedder.embed(texts) for name, texts in anchors.items()}
    centroids = {name: drift.centroid(v) for name, v in vectors.items()}  # type: ignore[attr-defined]
    scores = []
    for name, p in replies.items():
        cal = drift.calibrate(vectors[name], generic_vectors=generic_vectors)  # type: ignore[attr-defined]
        others = np.stack([c for n, c in centroids.items() if n != name])

        def score(texts: list[str], cal: object = cal, others: object = others, name: str = name) -> list[object]:
            return [
                drift.score_reply(  # type: ignore[attr-defined]
                    t,
                    v,
                    vectors[name],
                    cal,
                    generic_vectors=generic_vectors,
                    persona_name=name,
                    other_centroids=others,
                )  # fmt: skip
                for t, v in zip(texts, embed_replies(embedder, texts), strict=True)
            ]

        scores.append(
            drift_set.PersonaScores(
                name=name,
                source=p.source,
                style=p.style,
                in_character=score(p.in_character),
                generic=score(p.generic),
                other_persona=score([t for o in replies.values() if o.name != name for t in o.in_character]),
            )
        )
    return drift_set.figures(scores)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=["held_out", "dev"], default="held_out")
    parser.add_argument("--baseline", action="store_true", help="also the method before the tiers, on the same set")
    parser.add_argument("--baseline-rev", default="82b1fb6", help="the commit whose method --baseline runs")
    args = parser.parse_args()
    import django

    django.setup()
    from bench import drift_set
    from chat.scoring import tier0, tier1

    personas = drift_set.load(args.split)
    print(f"{len(personas)} personas, split {args.split}\n")
    for label, embedder in (("tier 0", tier0()), ("tier 1", tier1())):
        figures = drift_set.figures(drift_set.score_set(personas, embedder))
        print(table(f"{label} ({embedder.model_id})", figures))
        print()
    if args.baseline:
        before = baseline(args.baseline_rev, args.split)
        print(table(f"before the tiers ({args.baseline_rev}: MiniLM, anchors only)", before))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
