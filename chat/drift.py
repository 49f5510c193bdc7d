"""Persona drift scoring: how far out of character is an assistant reply? Pure functions (numpy, no Django, no DB).

Every persona has *drift anchors*: 8-30 short texts in its voice (greeting, alternate greetings, example dialogue
lines, catchphrases). At persona creation the anchors are embedded and :func:`calibrate` is run; every assistant reply
is embedded once and scored with :func:`score_reply`. The score is in [0, 1] (0 = fully in character, 1 = fully out)
and the reply is flagged iff ``score > calibration.threshold``.

Components of a reply with unit embedding ``r`` (persona centroid ``P`` = normalised mean of the anchor vectors,
generic centroid ``G`` = normalised mean of the embedded :func:`generic_assistant_texts`):

(a) ``centroid_distance`` = 1 - cos(r, P);
(b) ``generic_margin`` = cos(r, G) - cos(r, P): positive when the reply sounds more like a generic assistant than
    like the persona;
(c) hard rules (:func:`hard_rule_hits`): AI self-reference, assistant disclaimers, another model's or person's name
    in a self-introduction.
(d) ``bleed_margin`` = max_j cos(r, O_j) - cos(r, P), with ``O_j`` the anchor centroids of the owner's *other*
    personas: positive when the reply sounds more like one of them than like itself. Its null is computed when
    scoring (:func:`bleed_null`), from the same pseudo-replies, because the roster changes after calibration.

(a), (b) and (d) are turned into upper-tail p-values against the persona's own *null distribution*, built from its
anchors alone (deterministically, no sampling):

* Leave-one-out (kept in the calibration for inspection, as ``centroid_distances`` / ``generic_margins``): each
  anchor scored against the centroid of the others.
* Leave-pair-out pseudo-replies (the null actually used, ``null_distances`` / ``null_margins``): for every pair of
  anchors, the normalised mean of the two scored against the centroid of the remaining ones. Replies are longer than
  anchor lines and blend several strands of the voice; a two-line blend is a closer model of an in-character reply
  than a single short line, whose embedding is noisier (on hand-written personas, real in-character replies sit about
  1 sd *below* the single-anchor LOO distances, and many generic-assistant replies only 1.5-2.5 sd above, too close
  to flag at any useful alpha; against the pair null they sit about 4 to 11 sd above). With fewer than 4 anchors the
  single-anchor values are used.

The p-value of an observed value ``x`` (:func:`tail_p_value`) is ``max(parametric, empirical)``:

* parametric: the survival function of a Student-t *posterior predictive* distribution (normal model, conjugate
  normal-inverse-gamma prior, :func:`fit_tail`). The prior is platform-wide (``DISTANCE_PRIOR`` / ``MARGIN_PRIOR``)
  and weighs like a few pseudo-anchors, so a persona with few anchors is shrunk toward it, the tail is smooth and
  heavier when data are scarce, and the scale has a floor. This is what lets a genuinely far reply get a p-value far
  below 1/(n+1), which a plain rank p-value with ~10 anchors can never do;
* empirical: ``#{null values >= x} / (N + 1)``; a safeguard, so that a reply that is no further out than a
  noticeable share of the persona's own pseudo-replies is never flagged, whatever the normal fit says.

The drift score is ``1 - min(p_a, p_b, p_c, p_d)`` with ``p_c`` = 0 when a hard rule fires (score 1) and 1
otherwise. The threshold is ``(1 - alpha) ** (1/3)`` (about ``1 - alpha/3``; Sidak correction for the three statistical
components), so that a reply drawn from the persona's null distribution is flagged with probability about ``alpha``.
Replies an admin marks in character join the null (``calibrate(reply_vectors=...)``): the feedback loop.
Scoring takes well under a millisecond given the vectors.
"""

from __future__ import annotations

import itertools
import math
import re
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from chat.generic_assistant import GENERIC_ASSISTANT_TEXTS

__all__ = [
    "CALIBRATION_VERSION",
    "DISTANCE_PRIOR",
    "MARGIN_PRIOR",
    "BLEED_PRIOR",
    "Calibration",
    "DriftResult",
    "TailFit",
    "TailPrior",
    "bleed_null",
    "calibrate",
    "centroid",
    "fit_tail",
    "generic_assistant_texts",
    "hard_rule_hits",
    "null_scores",
    "score_reply",
    "student_t_sf",
    "tail_p_value",
    "threshold_for_alpha",
]

#: Bump when anything that changes calibrations changes (the statistics, the priors, the generic texts, the embedder).
CALIBRATION_VERSION = 2

#: Number of statistical components (a), (b) and (d) combined by the minimum p-value (Sidak-corrected threshold).
N_STATISTICAL_COMPONENTS = 3

#: Anchors averaged into one pseudo-reply for the null distribution (falls back to 1 with fewer than 4 anchors).
PSEUDO_REPLY_SIZE = 2

#: Decimals kept for the null values stored in a calibration (keeps the JSON small; 1e-6 is far below any effect).
_STORE_DECIMALS = 6

FloatArray = npt.NDArray[np.floating[Any]]


# --- statistics --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TailPrior:
    """Platform-wide normal-inverse-gamma prior for one component's null distribution.

    ``mean`` / ``sd``: typical location and spread of a persona's null values; ``mean_weight`` (kappa0) and
    ``sd_weight`` (2 * alpha0) are how many pseudo-anchors the prior location and spread are worth; ``sd_floor`` is a
    hard lower bound on the fitted scale (near-duplicate anchors must not make every reply look far out).
    """

    mean: float
    sd: float
    mean_weight: float = 1.0
    sd_weight: float = 4.0
    sd_floor: float = 0.02

    def to_dict(self) -> dict[str, float]:
        return {
            "mean": self.mean,
            "sd": self.sd,
            "mean_weight": self.mean_weight,
            "sd_weight": self.sd_weight,
            "sd_floor": self.sd_floor,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TailPrior:
        return cls(
            mean=float(data["mean"]),
            sd=float(data["sd"]),
            mean_weight=float(data["mean_weight"]),
            sd_weight=float(data["sd_weight"]),
            sd_floor=float(data["sd_floor"]),
        )


# Priors for the leave-pair-out null of all-MiniLM-L6-v2 embeddings of persona anchors; set from hand-written
# personas in distinct voices (per-persona pair-null means 0.48-0.59 / -0.46..-0.26, sds 0.04-0.06 / 0.075-0.09).
DISTANCE_PRIOR = TailPrior(mean=0.53, sd=0.06, mean_weight=1.0, sd_weight=4.0, sd_floor=0.02)
MARGIN_PRIOR = TailPrior(mean=-0.38, sd=0.09, mean_weight=1.0, sd_weight=4.0, sd_floor=0.03)
# The bleed null's location depends on how close the owner's personas are to each other (per-persona means -0.08..0.04,
# sds 0.04-0.07 on the five personas of tests/fixtures/drift_labelled.json), so its prior is wide and weighs little.
BLEED_PRIOR = TailPrior(mean=-0.02, sd=0.06, mean_weight=1.0, sd_weight=4.0, sd_floor=0.02)


@dataclass(frozen=True)
class TailFit:
    """Student-t predictive distribution of a null statistic: location, scale, degrees of freedom."""

    loc: float
    scale: float
    df: float

    def sf(self, x: float) -> float:
        """P(X >= x) under this distribution."""
        return student_t_sf((x - self.loc) / self.scale, self.df)

    def to_dict(self) -> dict[str, float]:
        return {"loc": self.loc, "scale": self.scale, "df": self.df}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TailFit:
        return cls(loc=float(data["loc"]), scale=float(data["scale"]), df=float(data["df"]))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """Survival function P(T >= t) of Student's t with ``df`` > 0 degrees of freedom (normal for df = inf)."""
    if math.isnan(t) or not df > 0:
        raise ValueError(f"student_t_sf: invalid arguments t={t!r}, df={df!r}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    if math.isinf(df) or df > 1e7:
        return 0.5 * math.erfc(t / math.sqrt(2.0))
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T >= |t|)
    return tail if t >= 0 else 1.0 - tail


def fit_tail(values: Sequence[float] | FloatArray, *, n_eff: float | None = None, prior: TailPrior) -> TailFit:
    """Posterior predictive Student-t of a null statistic: normal model with a normal-inverse-gamma prior.

    ``values`` are the null values; ``n_eff`` is how many independent observations they are worth (the anchors, when
    the values are the many overlapping leave-pair-out pseudo-replies; default ``len(values)``). With no values the
    prior alone is returned. Deterministic.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(v)):
        raise ValueError("fit_tail: non-finite null values")
    n = float(len(v)) if n_eff is None else float(n_eff)
    if len(v) == 0:
        n = 0.0
    kappa0 = prior.mean_weight
    alpha0 = prior.sd_weight / 2.0
    beta0 = alpha0 * prior.sd**2
    if n > 0:
        mean = float(v.mean())
        var = float(v.var())  # spread of the null values around their mean
        ss = n * var  # sum of squares, expressed for n_eff observations
    else:
        mean, ss = prior.mean, 0.0
    kappa_n = kappa0 + n
    mu_n = (kappa0 * prior.mean + n * mean) / kappa_n
    alpha_n = alpha0 + n / 2.0
    beta_n = beta0 + ss / 2.0 + kappa0 * n * (mean - prior.mean) ** 2 / (2.0 * kappa_n)
    scale = math.sqrt(beta_n * (kappa_n + 1.0) / (alpha_n * kappa_n))
    return TailFit(loc=mu_n, scale=max(scale, prior.sd_floor), df=2.0 * alpha_n)


def tail_p_value(x: float, null: Sequence[float], fit: TailFit) -> float:
    """Upper-tail p-value of ``x`` against a persona null: ``max(fit.sf(x), #{null >= x} / (len(null) + 1))``.

    ``null`` must be sorted ascending (as stored in a :class:`Calibration`). ``+inf`` gives 0, ``-inf`` gives 1;
    NaN raises ``ValueError``.
    """
    if math.isnan(x):
        raise ValueError("tail_p_value: x is NaN")
    parametric = fit.sf(x)
    n_ge = len(null) - bisect_left(null, x)
    empirical = n_ge / (len(null) + 1)
    return min(1.0, max(parametric, empirical))


# --- calibration -------------------------------------------------------------------------------------------------


def _unit_rows(m: FloatArray) -> npt.NDArray[np.float64]:
    a = np.asarray(m, dtype=np.float64)
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    out: npt.NDArray[np.float64] = a / np.maximum(norms, 1e-12)
    return out


def _check_matrix(name: str, m: FloatArray, dim: int | None = None) -> npt.NDArray[np.float64]:
    a = np.asarray(m, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array of row vectors, got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{name} has dimension {a.shape[1]}, expected {dim}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values")
    return _unit_rows(a)


def _centroid(unit_rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    c: npt.NDArray[np.float64] = unit_rows.mean(axis=0)
    return c / max(float(np.linalg.norm(c)), 1e-12)


def centroid(vectors: FloatArray) -> npt.NDArray[np.float64]:
    """Unit mean direction of some embeddings (rows, normalised first): a persona's anchor centroid."""
    return _centroid(_check_matrix("vectors", vectors))


@dataclass(frozen=True)
class Calibration:
    """Per-persona calibration of drift scoring (JSON-serialisable with :meth:`to_dict` / :meth:`from_dict`).

    ``centroid_distances`` / ``generic_margins``: leave-one-out values of each anchor (in anchor order).
    ``null_distances`` / ``null_margins``: the null distribution actually scored against (sorted; leave-pair-out
    pseudo-replies, or the LOO values when ``pseudo_reply_size`` is 1), ``distance_fit`` / ``margin_fit`` their
    Student-t tails. ``threshold``: flag iff score > threshold.
    """

    version: int
    alpha: float
    threshold: float
    n_anchors: int
    n_generic: int
    dim: int
    pseudo_reply_size: int
    centroid_distances: tuple[float, ...]
    generic_margins: tuple[float, ...]
    null_distances: tuple[float, ...]
    null_margins: tuple[float, ...]
    distance_fit: TailFit
    margin_fit: TailFit
    distance_prior: TailPrior = field(default=DISTANCE_PRIOR)
    margin_prior: TailPrior = field(default=MARGIN_PRIOR)
    n_replies: int = 0

    @property
    def is_current(self) -> bool:
        """False when made by another version of the calibration procedure: recalibrate."""
        return self.version == CALIBRATION_VERSION

    def matches(self, anchor_vectors: FloatArray, generic_vectors: FloatArray) -> bool:
        """Whether this calibration was made for anchor/generic sets of these sizes and dimension."""
        a, g = np.asarray(anchor_vectors), np.asarray(generic_vectors)
        return (
            a.ndim == 2
            and g.ndim == 2
            and a.shape == (self.n_anchors, self.dim)
            and g.shape == (self.n_generic, self.dim)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "alpha": self.alpha,
            "threshold": self.threshold,
            "n_anchors": self.n_anchors,
            "n_generic": self.n_generic,
            "dim": self.dim,
            "pseudo_reply_size": self.pseudo_reply_size,
            "centroid_distances": list(self.centroid_distances),
            "generic_margins": list(self.generic_margins),
            "null_distances": list(self.null_distances),
            "null_margins": list(self.null_margins),
            "distance_fit": self.distance_fit.to_dict(),
            "margin_fit": self.margin_fit.to_dict(),
            "distance_prior": self.distance_prior.to_dict(),
            "margin_prior": self.margin_prior.to_dict(),
            "n_replies": self.n_replies,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` on a malformed dict (e.g. an unknown older layout)."""
        try:
            return cls(
                version=int(data["version"]),
                alpha=float(data["alpha"]),
                threshold=float(data["threshold"]),
                n_anchors=int(data["n_anchors"]),
                n_generic=int(data["n_generic"]),
                dim=int(data["dim"]),
                pseudo_reply_size=int(data["pseudo_reply_size"]),
                centroid_distances=tuple(float(x) for x in data["centroid_distances"]),
                generic_margins=tuple(float(x) for x in data["generic_margins"]),
                null_distances=tuple(float(x) for x in data["null_distances"]),
                null_margins=tuple(float(x) for x in data["null_margins"]),
                distance_fit=TailFit.from_dict(data["distance_fit"]),
                margin_fit=TailFit.from_dict(data["margin_fit"]),
                distance_prior=TailPrior.from_dict(data["distance_prior"]),
                margin_prior=TailPrior.from_dict(data["margin_prior"]),
                n_replies=int(data.get("n_replies", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a drift calibration: {exc!r}") from exc


def threshold_for_alpha(alpha: float) -> float:
    """Score threshold for a family-wise false-flag rate ``alpha`` over the statistical components."""
    return float((1.0 - alpha) ** (1.0 / N_STATISTICAL_COMPONENTS))


def _pseudo_replies(
    anchors: npt.NDArray[np.float64], size: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Unit pseudo-replies (normalised mean of each ``size``-subset of anchors) and the unit centroid of the rest."""
    total = anchors.sum(axis=0)
    subsets = np.array(list(itertools.combinations(range(anchors.shape[0]), size)), dtype=np.intp).reshape(-1, size)
    subset_sum = anchors[subsets].sum(axis=1)  # (m, dim)
    rest = total[None, :] - subset_sum
    rest /= np.maximum(np.linalg.norm(rest, axis=1, keepdims=True), 1e-12)
    pseudo = subset_sum / np.maximum(np.linalg.norm(subset_sum, axis=1, keepdims=True), 1e-12)
    return pseudo, rest


def _null_values(
    anchors: npt.NDArray[np.float64], generic_centroid: npt.NDArray[np.float64], size: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(distances, margins) of each ``size``-subset pseudo-reply against the centroid of the other anchors."""
    pseudo, rest = _pseudo_replies(anchors, size)
    sim_persona = np.einsum("ij,ij->i", pseudo, rest)
    sim_generic = pseudo @ generic_centroid
    return 1.0 - sim_persona, sim_generic - sim_persona


def _reply_weight(n_null: int, n_anchors: int) -> int:
    """How many times a reviewed reply's value is repeated in a null: as much weight as one anchor's share."""
    return max(1, math.ceil(n_null / max(n_anchors, 1)))


def calibrate(
    anchor_vectors: FloatArray,
    *,
    generic_vectors: FloatArray,
    alpha: float = 0.05,
    reply_vectors: FloatArray | None = None,
) -> Calibration:
    """Calibrate drift scoring for a persona from its embedded anchors (rows; unit-normalised here if not already).

    ``generic_vectors``: the embedded :func:`generic_assistant_texts` (same embedder). ``alpha``: the target rate at
    which replies like the persona's own (pseudo-)replies get flagged. ``reply_vectors``: real replies an admin
    marked as in character; each joins the null (scored against the full anchor centroid) with the weight of one
    anchor, so a persona whose real voice strays further from its anchors than the pseudo-replies predict stops
    being flagged for it. Deterministic. Needs at least one anchor; with fewer than 4 the null is leave-one-out, and
    with 1 it is the platform prior alone (plus any reviewed replies).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    anchors = _check_matrix("anchor_vectors", anchor_vectors)
    dim = anchors.shape[1]
    generic = _check_matrix("generic_vectors", generic_vectors, dim)
    g_centroid = _centroid(generic)
    n = anchors.shape[0]

    def stored(values: npt.NDArray[np.float64]) -> tuple[float, ...]:
        return tuple(round(float(x), _STORE_DECIMALS) for x in values)

    if n >= 2:
        loo_d, loo_m = _null_values(anchors, g_centroid, 1)
    else:
        loo_d = loo_m = np.zeros(0)
    size = PSEUDO_REPLY_SIZE if n >= 2 * PSEUDO_REPLY_SIZE else 1
    null_d, null_m = (loo_d, loo_m) if size == 1 else _null_values(anchors, g_centroid, size)
    n_eff = float(n) if n >= 2 else 0.0
    n_replies = 0
    if reply_vectors is not None and np.asarray(reply_vectors).size:
        replies = _check_matrix("reply_vectors", reply_vectors, dim)
        n_replies = replies.shape[0]
        centroid = _centroid(anchors)
        sim_persona = replies @ centroid
        weight = _reply_weight(len(null_d), n)
        null_d = np.concatenate([null_d, np.repeat(1.0 - sim_persona, weight)])
        null_m = np.concatenate([null_m, np.repeat(replies @ g_centroid - sim_persona, weight)])
        n_eff += n_replies
    null_distances = tuple(sorted(stored(null_d)))
    null_margins = tuple(sorted(stored(null_m)))
    return Calibration(
        version=CALIBRATION_VERSION,
        alpha=float(alpha),
        threshold=threshold_for_alpha(alpha),
        n_anchors=n,
        n_generic=generic.shape[0],
        dim=dim,
        pseudo_reply_size=size,
        centroid_distances=stored(loo_d),
        generic_margins=stored(loo_m),
        null_distances=null_distances,
        null_margins=null_margins,
        distance_fit=fit_tail(null_distances, n_eff=n_eff, prior=DISTANCE_PRIOR),
        margin_fit=fit_tail(null_margins, n_eff=n_eff, prior=MARGIN_PRIOR),
        n_replies=n_replies,
    )


def null_scores(anchor_vectors: FloatArray, calibration: Calibration, *, generic_vectors: FloatArray) -> list[float]:
    """Drift scores of the calibration's own pseudo-replies (the distribution the threshold was set on), sorted."""
    anchors = _check_matrix("anchor_vectors", anchor_vectors)
    generic = _check_matrix("generic_vectors", generic_vectors, anchors.shape[1])
    if anchors.shape[0] < 2:
        return []
    distances, margins = _null_values(anchors, _centroid(generic), calibration.pseudo_reply_size)
    scores = [
        1.0
        - min(
            tail_p_value(float(d), calibration.null_distances, calibration.distance_fit),
            tail_p_value(float(m), calibration.null_margins, calibration.margin_fit),
        )
        for d, m in zip(distances, margins, strict=True)
    ]
    return sorted(scores)


def bleed_null(anchor_vectors: FloatArray, other_centroids: FloatArray, *, pseudo_reply_size: int) -> tuple[float, ...]:
    """Sorted null of the bleed margin: each pseudo-reply's closeness to the nearest other persona minus its own.

    Computed when scoring (about 0.1 ms), because the owner's roster of other personas changes after calibration.
    """
    anchors = _check_matrix("anchor_vectors", anchor_vectors)
    others = _check_matrix("other_centroids", other_centroids, anchors.shape[1])
    if anchors.shape[0] < 2:
        return ()
    pseudo, rest = _pseudo_replies(anchors, pseudo_reply_size if anchors.shape[0] >= 2 * pseudo_reply_size else 1)
    margins = (pseudo @ others.T).max(axis=1) - np.einsum("ij,ij->i", pseudo, rest)
    return tuple(sorted(float(x) for x in margins))


# --- scoring -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftResult:
    """Drift of one reply. ``rule``: the component that set the score (``"hard_rule"``, ``"centroid_distance"`` or
    ``"generic_margin"``); ``hard_rule_hits``: what :func:`hard_rule_hits` found."""

    score: float
    threshold: float
    flagged: bool
    components: dict[str, float]
    rule: str = ""
    hard_rule_hits: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "threshold": self.threshold,
            "flagged": self.flagged,
            "components": dict(self.components),
            "rule": self.rule,
            "hard_rule_hits": list(self.hard_rule_hits),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftResult:
        return cls(
            score=float(data["score"]),
            threshold=float(data["threshold"]),
            flagged=bool(data["flagged"]),
            components={str(k): float(v) for k, v in data["components"].items()},
            rule=str(data.get("rule", "")),
            hard_rule_hits=tuple(str(x) for x in data.get("hard_rule_hits", ())),
        )


@dataclass(frozen=True)
class ScoringContext:
    """What scoring a persona's replies needs that does not depend on the reply: made once, used for many."""

    anchors: npt.NDArray[np.float64]
    anchor_centroid: npt.NDArray[np.float64]
    generic_centroid: npt.NDArray[np.float64]
    calibration: Calibration
    stale: bool
    others: npt.NDArray[np.float64] | None = None
    bleed_null: tuple[float, ...] = ()
    bleed_fit: TailFit | None = None


def scoring_context(
    anchor_vectors: FloatArray,
    calibration: Calibration,
    *,
    generic_vectors: FloatArray,
    other_centroids: FloatArray | None = None,
) -> ScoringContext:
    """Check the persona's vectors and compute what :func:`score_prepared` needs from them (see :func:`score_reply`)."""
    anchors = _check_matrix("anchor_vectors", anchor_vectors)
    dim = anchors.shape[1]
    generic = _check_matrix("generic_vectors", generic_vectors, dim)
    if calibration.dim != dim:
        raise ValueError(f"calibration is for dimension {calibration.dim}, vectors have {dim}")
    context = ScoringContext(
        anchors=anchors,
        anchor_centroid=_centroid(anchors),
        generic_centroid=_centroid(generic),
        calibration=calibration,
        stale=not calibration.matches(anchors, generic) or not calibration.is_current,
    )
    if other_centroids is not None and np.asarray(other_centroids).size:
        others = _check_matrix("other_centroids", other_centroids, dim)
        null = bleed_null(anchors, others, pseudo_reply_size=calibration.pseudo_reply_size)
        fit = fit_tail(null, n_eff=float(calibration.n_anchors) if null else 0.0, prior=BLEED_PRIOR)
        context = replace(context, others=others, bleed_null=null, bleed_fit=fit)
    return context


def score_reply(
    text: str,
    reply_vector: FloatArray,
    anchor_vectors: FloatArray,
    calibration: Calibration,
    *,
    generic_vectors: FloatArray,
    persona_name: str = "",
    other_centroids: FloatArray | None = None,
) -> DriftResult:
    """Score one reply (its text and its embedding) against the persona's anchors and calibration.

    ``other_centroids``: unit anchor centroids of the owner's other personas (rows), for the bleed component; without
    them that component's p-value is 1.
    """
    context = scoring_context(
        anchor_vectors, calibration, generic_vectors=generic_vectors, other_centroids=other_centroids
    )
    return score_prepared(text, reply_vector, context, persona_name=persona_name)


def score_prepared(
    text: str, reply_vector: FloatArray, context: ScoringContext, *, persona_name: str = ""
) -> DriftResult:
    """:func:`score_reply` with the persona's part made beforehand (:func:`scoring_context`)."""
    calibration = context.calibration
    dim = context.anchors.shape[1]
    reply = np.asarray(reply_vector, dtype=np.float64).reshape(-1)
    if reply.shape[0] != dim or not np.all(np.isfinite(reply)):
        raise ValueError(f"reply_vector must be a finite vector of dimension {dim}, got shape {reply.shape}")
    reply = reply / max(float(np.linalg.norm(reply)), 1e-12)

    sim_persona = float(reply @ context.anchor_centroid)
    sim_generic = float(reply @ context.generic_centroid)
    distance = 1.0 - sim_persona
    margin = sim_generic - sim_persona
    p_distance = tail_p_value(distance, calibration.null_distances, calibration.distance_fit)
    p_margin = tail_p_value(margin, calibration.null_margins, calibration.margin_fit)
    hits = tuple(hard_rule_hits(text, persona_name))
    p_hard = 0.0 if hits else 1.0
    bleed, p_bleed, bleed_z, nearest = 0.0, 1.0, 0.0, -1
    if context.others is not None and context.bleed_fit is not None:
        sims = context.others @ reply
        nearest = int(np.argmax(sims))
        bleed = float(sims[nearest]) - sim_persona
        fit = context.bleed_fit
        p_bleed = tail_p_value(bleed, context.bleed_null, fit)
        bleed_z = (bleed - fit.loc) / fit.scale

    candidates = (
        ("hard_rule", p_hard),
        ("centroid_distance", p_distance),
        ("generic_margin", p_margin),
        ("persona_bleed", p_bleed),
    )
    rule, p_min = min(candidates, key=lambda kv: kv[1])  # ties: first listed
    score = min(1.0, max(0.0, 1.0 - p_min))
    flagged = score > calibration.threshold
    stale = context.stale
    components = {
        "centroid_distance": distance,
        "centroid_p": p_distance,
        "centroid_z": (distance - calibration.distance_fit.loc) / calibration.distance_fit.scale,
        "generic_margin": margin,
        "generic_p": p_margin,
        "generic_z": (margin - calibration.margin_fit.loc) / calibration.margin_fit.scale,
        "persona_similarity": sim_persona,
        "generic_similarity": sim_generic,
        "bleed_margin": bleed,
        "bleed_p": p_bleed,
        "bleed_z": bleed_z,
        "bleed_nearest": float(nearest),
        "hard_rule_p": p_hard,
        "hard_rule_count": float(len(hits)),
        "fired_hard_rule": float(flagged and rule == "hard_rule"),
        "fired_centroid_distance": float(flagged and rule == "centroid_distance"),
        "fired_generic_margin": float(flagged and rule == "generic_margin"),
        "fired_persona_bleed": float(flagged and rule == "persona_bleed"),
        "calibration_stale": float(stale),
    }
    return DriftResult(
        score=score, threshold=calibration.threshold, flagged=flagged, components=components, rule=rule,
        hard_rule_hits=hits,
    )  # fmt: skip


def generic_assistant_texts() -> tuple[str, ...]:
    """Typical generic-assistant replies: embed them once and pass as ``generic_vectors``."""
    return GENERIC_ASSISTANT_TEXTS


# --- hard rules --------------------------------------------------------------------------------------------------

_I_AM = r"\bI(?:'m| am)\s+"
_HEDGE = r"(?:just |only |merely |simply |actually |really |basically )?"
_AI_KIND = (
    r"(?:(?:large|helpful|friendly|virtual|digital|automated|conversational|artificial|general[- ]purpose) )*"
    r"(?:ai|a\.i\.|artificial intelligence|(?:ai |large )?language model|llm|chat ?bot|ai (?:model|system|assistant)"
    r"|virtual assistant|digital assistant|machine learning model|computer program)"
)
_AI_NAMES = r"(?-i:ChatGPT|Chat GPT|GPT-?\d[\w.-]*|GPT|OpenAI|Claude|Bard|Gemini|Copilot|Bing Chat|LLaMA|Llama|Grok)"
_MAKERS = r"(?-i:OpenAI|Anthropic|Google(?: DeepMind)?|DeepMind|Meta(?: AI)?|Microsoft|Mistral(?: AI)?|xAI)"
_NEG = r"(?:do not|don't|dont|cannot|can't|am not able to|am unable to)"
_INNER = r"(?:feelings|emotions|opinions|experiences|beliefs|preferences|desires|consciousness|sentience)"

_HARD_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (rule, re.compile(pattern, re.IGNORECASE))
    for rule, pattern in (
        ("ai_self_reference", r"\bas an? " + _AI_KIND + r"\b"),
        ("ai_self_reference", _I_AM + _HEDGE + r"(?:an? |your )" + _AI_KIND + r"\b"),
        ("ai_self_reference", r"\b(?:ai|large) language model\b|\blanguage model\b"),
        (
            "assistant_identity",
            _I_AM + _HEDGE + r"an? assistant\b(?=\s*(?:[.,;:!?)]|$|and\b|that\b|here\b|(?:created|designed|"
            r"developed|made|built|trained|programmed)\b))",
        ),
        (
            "model_identity",
            r"\b(?:I(?:'m| am)|my name is|this is|as|call me|I'm called|I am called)\s+" + _AI_NAMES + r"\b",
        ),
        (
            "model_identity",
            r"\bI(?:'m| am|'ve been| have been| was)\s+(?:created|developed|trained|built|made|designed|programmed)"
            r"\s+by\s+" + _MAKERS + r"\b",
        ),
        ("no_feelings", r"\bI " + _NEG + r" (?:have|possess|experience|feel) (?:any )?(?:personal|human|real|subjective"
         r"|genuine|true) " + _INNER + r"\b"),
        ("no_feelings", r"\bI " + _NEG + r" have " + _INNER + r"(?:,| or| and) (?:personal )?" + _INNER + r"\b"),
        ("no_feelings", r"\bI " + _NEG + r" have " + _INNER + r" (?:like|as|the way) (?:humans|a human|people) do\b"),
        ("no_feelings", r"\bI(?:'m| am) (?:not capable of|incapable of) (?:feeling|having) (?:emotions|feelings)\b"),
        (
            "assistant_limitations",
            r"\bI " + _NEG + r" (?:have access to|access|browse) (?:the internet|real-time (?:information|data)|"
            r"current events)\b|\bmy (?:knowledge|training)(?: data)? ?cut-?off\b|\bmy training data\b",
        ),
    )
)  # fmt: skip

# Self-introductions that name someone: "my name is X", "call me X", "the name's X", "Hello, I'm X", "I am X, the ...".
_NAME = r"(?P<name>[^\W\d_][\w'-]*(?:[ \t]+[^\W\d_][\w'-]*)?)"
_INTRO_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\bmy name(?:'s| is)\s+" + _NAME,
        r"\b(?:the )?name's\s+" + _NAME,
        r"\b(?:you (?:can|may) )?call me\s+" + _NAME,
        r"\b(?:hello|hi|hey|greetings|good (?:morning|afternoon|evening|day)|howdy|ahoy|welcome)\b[\s,!.]*"
        r"(?:(?:there|friend|everyone|all)[\s,!.]*)?(?:I am|I'm)\s+" + _NAME,
        r"(?:^|[.!?]\s+)(?:I am|I'm)\s+" + _NAME + r"(?=\s*,\s*(?:a|an|the|your)\b)",
        r"(?:^|[.!?]\s+)(?:I am|I'm)\s+(?P<name>(?-i:Mr|Mrs|Ms|Miss|Dr|Doctor|Sir|Dame|Lady|Lord|Madam|Captain|Capt"
        r"|Inspector|Detective|Professor|Sergeant|Officer|Constable)\.?[ \t]+[^\W\d_][\w'-]*)",
    )
)
_TITLES = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "miss",
        "mister",
        "dr",
        "doctor",
        "sir",
        "dame",
        "lady",
        "lord",
        "madam",
        "madame",
        "captain",
        "capt",
        "cap'n",
        "inspector",
        "detective",
        "professor",
        "prof",
        "sergeant",
        "sgt",
        "officer",
        "constable",
        "grandma",
        "granny",
        "grandpa",
        "gran",
        "nana",
        "auntie",
        "aunt",
        "uncle",
        "father",
        "mother",
        "sister",
        "brother",
        "saint",
        "st",
        "king",
        "queen",
        "prince",
        "princess",
        "master",
        "mistress",
        "old",
        "young",
        "little",
        "big",
        "the",
        "a",
        "an",
        "your",
        "dear",
    }
)
_NOT_NAMES = frozenset(
    {
        "sorry",
        "not",
        "here",
        "just",
        "only",
        "afraid",
        "glad",
        "happy",
        "so",
        "very",
        "really",
        "quite",
        "fine",
        "well",
        "back",
        "home",
        "sure",
        "certain",
    }
)


def _name_tokens(name: str) -> list[str]:
    tokens = [t.strip("'-").lower() for t in re.split(r"[\s,]+", name) if t.strip("'-")]
    return [t for t in tokens if t not in _TITLES]


def _same_person(said: list[str], persona: list[str]) -> bool:
    for s in said:
        for p in persona:
            if s == p or (min(len(s), len(p)) >= 3 and (s.startswith(p) or p.startswith(s))):
                return True
    return False


def _in_quotes(text: str, pos: int) -> bool:
    before = text[:pos]
    return before.count('"') % 2 == 1 or before.count("\u201c") > before.count("\u201d")


def _wrong_name_hits(text: str, persona_name: str) -> list[str]:
    persona = _name_tokens(persona_name)
    if not persona:
        return []
    hits = []
    for pattern in _INTRO_PATTERNS:
        for m in pattern.finditer(text):
            words = m.group("name").split()
            kept = []
            for w in words:  # keep the capitalised run: "Sherlock Holmes", not "Sherlock and"
                if not w[0].isupper():
                    break
                kept.append(w)
            if not kept or kept[0].lower() in _NOT_NAMES or _in_quotes(text, m.start()):
                continue
            said = _name_tokens(" ".join(kept))
            if said and not _same_person(said, persona):
                hits.append(f"wrong_name: {' '.join(kept)}")
    return hits


def hard_rule_hits(text: str, persona_name: str) -> list[str]:
    """Out-of-character giveaways in ``text``, as ``"rule: matched text"`` strings (empty list if none).

    Rules: AI self-reference ("as an AI", "I'm a language model", "language model"), assistant identity ("I am an
    assistant."), another model's identity ("I'm ChatGPT", "I was trained by OpenAI"), disclaimers of inner life
    ("I don't have personal feelings"), assistant limitations ("my knowledge cutoff"), and a self-introduction with
    a name that is not the persona's (``persona_name``; titles like "Captain" are ignored, prefixes like "Red" for
    "Redbeard" accepted, quoted speech skipped; skipped entirely when ``persona_name`` is empty). Patterns are
    deliberately specific: a persona who merely mentions an assistant or feelings is not hit.
    """
    norm = text.replace("\u2019", "'").replace("\u2018", "'")
    hits: list[str] = []
    for rule, pattern in _HARD_RULES:
        for m in pattern.finditer(norm):
            hits.append(f"{rule}: {m.group(0).strip()}")
    hits.extend(_wrong_name_hits(norm, persona_name))
    return list(dict.fromkeys(hits))
