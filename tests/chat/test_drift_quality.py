"""Drift quality on the labelled set (``tests/fixtures/drift/``), both tiers, on the held-out replies.

13 personas built as the service builds them (``bench/drift_set.py``): five hand-written, three generated through
the pipeline by a model that answered every step in prose, three imported from community cards, one whose replies
are one line and one whose replies are 300+ words. Each has 12 held-out in-character and 12 held-out
generic-assistant replies; the other personas' in-character replies are its other-persona drift. Statistics, priors
and thresholds were chosen on the dev replies only (``bench/fit_drift_priors.py``; the held-out replies were scored
once, after: ``tests/fixtures/drift/README.md``). The figures are those of ``bench/RESULTS-drift.md``
(``bench/drift_quality.py``).
"""

from __future__ import annotations

import pytest

from bench import drift_set
from chat.scoring import CHUNK_MIN_WORDS, DRIFT_ALPHA, split_chunks, tier0, tier1

# The method before the tiers (MiniLM, anchors only, the parser that dropped prose), on these held-out replies:
# `bench/drift_quality.py --baseline` (it flagged 37 of their 156 in-character replies). Tier 1 must be no worse.
BASELINE_GENERIC_AUROC = 0.959
BASELINE_OTHER_AUROC = 0.891


@pytest.fixture(scope="module")
def held_out() -> list[drift_set.LabelledPersona]:
    return drift_set.load("held_out")


@pytest.fixture(scope="module")
def tier0_figures(held_out: list[drift_set.LabelledPersona]) -> drift_set.Figures:
    return drift_set.figures(drift_set.score_set(held_out, tier0()))


@pytest.fixture(scope="module")
def tier1_figures(held_out: list[drift_set.LabelledPersona]) -> drift_set.Figures:
    return drift_set.figures(drift_set.score_set(held_out, tier1()))


def test_the_labelled_set_looks_like_production(held_out: list[drift_set.LabelledPersona]) -> None:
    sources = [p.source for p in held_out]
    assert len(held_out) >= 12
    assert sources.count("pipeline-prose") >= 3 and sources.count("card") >= 2
    assert {p.style for p in held_out} >= {"short", "long"}
    for p in held_out:
        assert len(p.in_character) >= 12 and len(p.generic) >= 12, p.name
        assert len(p.anchors) >= 4, p.name
        if p.style == "short":
            assert max(len(t.split()) for t in p.in_character) <= 25
        if p.style == "long":
            assert min(len(t.split()) for t in p.in_character) >= 300
    # The held-out replies are not part of what the personas are built from, nor of the dev replies.
    dev = {p.name: p for p in drift_set.load("dev")}
    for p in held_out:
        built = set(p.anchors) | set(p.samples) | set(dev[p.name].in_character) | set(dev[p.name].generic)
        assert not built & (set(p.in_character) | set(p.generic)), p.name


@pytest.mark.parametrize("tier", ["tier0_figures", "tier1_figures"])
def test_flag_rates_hold_overall(tier: str, request: pytest.FixtureRequest) -> None:
    # measured: tier 0 5/156 and 148/156, tier 1 8/156 and 141/156
    figures: drift_set.Figures = request.getfixturevalue(tier)
    assert figures.false_flag_rate <= DRIFT_ALPHA + 0.05
    assert figures.generic_flag_rate >= 0.90


def test_the_verdict_of_completed_holds_on_every_persona(tier0_figures: drift_set.Figures) -> None:
    """Tier 0 is what `completed` carries: no persona where its threshold fails wholesale, in either direction.
    (Tier 1 is not held to this: on the one-line persona it flags 8 of 12 generic replies.)"""
    for name, (own, own_n, generic, generic_n, _, _) in tier0_figures.per_persona.items():
        assert own_n >= 12 and generic_n >= 12
        assert own <= 3, (name, own, own_n)
        assert generic >= 9, (name, generic, generic_n)


def test_tier0_ranks_drift(tier0_figures: drift_set.Figures) -> None:
    # measured 0.990 and 0.952
    assert tier0_figures.generic_auroc >= 0.97
    assert tier0_figures.other_auroc >= 0.90


def test_tier1_is_no_worse_than_the_method_before_the_tiers(tier1_figures: drift_set.Figures) -> None:
    # measured 0.984 and 0.954
    assert tier1_figures.generic_auroc >= BASELINE_GENERIC_AUROC
    assert tier1_figures.other_auroc >= BASELINE_OTHER_AUROC


def test_every_component_is_recorded(held_out: list[drift_set.LabelledPersona]) -> None:
    scores = drift_set.score_set(held_out[:3], tier0())
    for s in scores:
        for r in s.in_character + s.generic + s.other_persona:
            parts = r.components
            assert 0.0 <= parts["bleed_p"] <= 1.0 and 0 <= parts["bleed_nearest"] < len(held_out) - 1
            assert r.score == pytest.approx(
                1.0 - min(parts["centroid_p"], parts["generic_p"], parts["bleed_p"], parts["hard_rule_p"])
            )


def test_long_replies_are_split_at_sentence_ends_for_tier1(held_out: list[drift_set.LabelledPersona]) -> None:
    long = next(p for p in held_out if p.style == "long")
    text = long.in_character[0]
    chunks = split_chunks(text)
    assert "".join(chunks) == text
    assert len(chunks) > 3
    for chunk in chunks[:-1]:
        assert len(chunk.split()) >= CHUNK_MIN_WORDS
        assert chunk.rstrip()[-1] in ".!?\u2026\"'\u201d\u2019)*]"
    assert split_chunks("Short one.") == ["Short one."]
    assert split_chunks("") == [""]


@pytest.mark.parametrize("anchors", [1, 2, 3])
def test_a_thin_calibration_never_flags_everything(anchors: int) -> None:
    """A persona with only a line or three to go on (an imported card with a greeting, a model that quoted little)
    and no samples: its real replies are not flagged wholesale (the dev replies, as a behaviour, not a figure)."""
    thin = [
        drift_set.LabelledPersona(p.name, p.source, p.style, p.anchors[:anchors], [], p.in_character, p.generic)
        for p in drift_set.load("dev")
    ]
    figures = drift_set.figures(drift_set.score_set(thin, tier0()))
    assert figures.false_flag_rate <= DRIFT_ALPHA + 0.05
    # The bar of the held-out figures, 3 of 12, for the dev part's 48 per persona.
    assert max(own / total for own, total, *_ in figures.per_persona.values()) <= 0.25
    # Still not blind: the hard rules, and with more lines the statistics, catch some generic replies.
    assert figures.generic_flagged > figures.in_character_flagged
