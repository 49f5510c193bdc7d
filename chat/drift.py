"""Persona drift scoring: how far out of character is an assistant reply? Pure functions (numpy, no Django, no DB).

A persona has *reference texts*: its anchors (greetings, example lines, catchphrases) and its samples (in-character
replies its own model wrote when the persona was made). At creation they are embedded and :func:`calibrate` is run;
every reply is embedded and scored with :func:`score_reply`. The score is in [0, 1] (0 = fully in character, 1 =
fully out) and the reply is flagged iff ``score > calibration.threshold``. The same procedure serves any embedder:
the static tier-0 table and the full tier-1 model each have their own vectors, calibration and priors.

Components of a reply with unit embedding ``r`` and word pieces ``w`` (persona centroid ``P`` = normalised mean of
the reference vectors):

(a) ``centroid_distance``: log(1 - cos(r, P)), how far the reply is from the persona (on the log scale a terse
    persona's and a wordy one's spreads are alike: see :func:`distance_statistic`);
(b) ``generic_register``: how much more likely the reply's word pieces are under the generic assistant's language
    than under the persona's own (:func:`register_statistic`: a unigram log-likelihood ratio, the generic side
    from :func:`generic_assistant_texts`, the persona side from its reference texts, both smoothed toward a Zipf
    background). "Certainly", "Here are a few tips", "It's important to" weigh toward the assistant; "arr",
    "reckon", "dearie" toward the persona. Unlike a distance between mean vectors it is not drowned by the topic a
    reply shares with the persona, which is what a drifting reply still talks about;
(c) hard rules (:func:`hard_rule_hits`): AI self-reference, assistant disclaimers, another model's or person's name
    in a self-introduction;
(d) ``bleed_margin`` = max_j cos(r, O_j) - cos(r, P), with ``O_j`` the centroids of the owner's *other* personas:
    positive when the reply sounds more like one of them than like itself. Its null is computed when scoring
    (:func:`bleed_null`), from the same null points, because the roster changes after calibration.

(a), (b) and (d) are turned into upper-tail p-values against the persona's own *null distribution*
(:func:`_null_points`), built from its reference texts alone (deterministically, no sampling):

* each sample left out in turn and scored against the rest: a real reply of the persona's model, as a new reply is
  scored. The samples weigh ``SAMPLE_SHARE`` (three quarters) of the null;
* each pair of anchors blended (the normalised mean of the two; their word pieces together) and scored against the
  rest: a reply blends several strands of a voice, and a single short line's embedding is noisier than a reply's.
  A persona without samples (an imported card: no model was asked) has only these. With fewer than 4 anchors the
  single anchors are used.

The p-value of an observed value ``x`` (:func:`tail_p_value`) is ``max(parametric, empirical)``:

* parametric: the survival function of a Student-t *posterior predictive* distribution (normal model, conjugate
  normal-inverse-gamma prior, :func:`fit_tail`). The prior is the embedder's (:class:`Priors`, fitted on the
  labelled set's dev part by ``bench/fit_drift_priors.py``) and weighs like a few pseudo-observations, so a thin
  calibration is shrunk toward it and its tail is wider, never narrower: it never flags everything;
* empirical: ``#{null points >= x} / (N + 1)``, each point counted once (a sample weighs more in the fit, but it
  is still one observation); a safeguard, so that a reply that is no further out than a noticeable share of the
  persona's own null points is never flagged, whatever the normal fit says.

The drift score is ``1 - min(p_a, p_b, p_c, p_d)`` with ``p_c`` = 0 when a hard rule fires (score 1) and 1
otherwise. The threshold is ``(1 - alpha) ** (1/3)`` (about ``1 - alpha/3``; Sidak correction for the three statistical
components), so that a reply drawn from the persona's null distribution is flagged with probability about ``alpha``.
Replies an admin marks in character join the null (``calibrate(reply_vectors=...)``): the feedback loop.
Scoring takes well under a millisecond given the vector and the word pieces.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from chat.generic_assistant import GENERIC_ASSISTANT_TEXTS

__all__ = [
    "CALIBRATION_VERSION",
    "DEFAULT_PRIORS",
    "Calibration",
    "DriftResult",
    "Priors",
    "RegisterModel",
    "TailFit",
    "TailPrior",
    "bleed_null",
    "calibrate",
    "centroid",
    "fit_tail",
    "generic_assistant_texts",
    "hard_rule_hits",
    "null_scores",
    "priors_for",
    "register_model",
    "register_statistic",
    "score_reply",
    "student_t_sf",
    "tail_p_value",
    "threshold_for_alpha",
]

#: Bump when anything that changes calibrations changes (the statistics, the priors, the generic texts, the embedder).
CALIBRATION_VERSION = 3

#: Number of statistical components (a), (b) and (d) combined by the minimum p-value (Sidak-corrected threshold).
N_STATISTICAL_COMPONENTS = 3

#: Anchors averaged into one pseudo-reply for the null distribution (falls back to 1 with fewer than 4 anchors).
PSEUDO_REPLY_SIZE = 2

#: Calibrations on fewer reference texts than this keep the Sidak threshold rather than the fitted one: the fit
#: was made on personas of 7 or more texts, and with two or three a persona's null says too little to go lower.
FITTED_THRESHOLD_REFERENCE = 6

#: Replies of fewer word pieces than this are judged on their register alone (see score_prepared). On the labelled
#: set's dev part, scoring the distance and bleed of one-line replies flagged 12 of the one-line persona's 36
#: in-character replies (5 without), while the other personas' figures moved by a reply or two.
SHORT_REPLY_PIECES = 20

#: 1 - cos below which replies count as on the centroid (keeps the log finite).
DISTANCE_FLOOR = 1e-4

#: The share of the null that a persona's samples make up when it has any (the rest: its anchors' pseudo-replies).
#: Mostly samples: they are replies, written to varied turns; anchors are a card's lines, narrower in topic and
#: length, and with half the null theirs a terse persona's real replies read as far out (the one-line persona of
#: the labelled set's dev part: 13 of its 36 in-character replies flagged with a half share, 9 with this one, against
#: 5 % over all personas).
SAMPLE_SHARE = 0.75

#: Dirichlet smoothing of the register's two language models, in word pieces of the Zipf background: the generic
#: corpus is large (~50,000 pieces), so a few thousand only soften its rare pieces; a persona's reference texts are a
#: few hundred pieces, so they are smoothed lightly, or every persona would sound like the background.
GENERIC_SMOOTHING = 2000.0
PERSONA_SMOOTHING = 50.0

#: Decimals kept for the null values stored in a calibration (keeps the JSON small; 1e-6 is far below any effect).
_STORE_DECIMALS = 6

FloatArray = npt.NDArray[np.floating[Any]]
Pieces = Sequence[int]


# --- statistics --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TailPrior:
    """An embedder's normal-inverse-gamma prior for one component's null distribution.

    ``mean`` / ``sd``: typical location and spread of a persona's null values; ``mean_weight`` (kappa0) and
    ``sd_weight`` (2 * alpha0) are how many pseudo-observations the prior location and spread are worth;
    ``sd_floor`` is a hard lower bound on the fitted scale (near-duplicate anchors must not make every reply look far
    out).
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


@dataclass(frozen=True)
class Priors:
    """One embedder's priors for the three statistical components (``chat/drift_priors.json``).

    ``single_distance`` / ``single_register``: what a persona with a single reference text (one greeting, and no
    model to ask) is scored against, having no null of its own: how far real replies lie from one line of their
    persona, which is much farther than from a centroid of twenty. Without them such a persona's distance and
    register are not scored.
    """

    distance: TailPrior
    register: TailPrior
    bleed: TailPrior
    single_distance: TailPrior | None = None
    single_register: TailPrior | None = None
    # The score over which a reply is flagged, at ``threshold_alpha``: the (1 - alpha) quantile of the dev part's
    # in-character replies' scores. None: the Sidak bound (threshold_for_alpha).
    threshold: float | None = None
    threshold_alpha: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "distance": self.distance.to_dict(),
            "register": self.register.to_dict(),
            "bleed": self.bleed.to_dict(),
        }
        if self.single_distance is not None and self.single_register is not None:
            out["single_distance"] = self.single_distance.to_dict()
            out["single_register"] = self.single_register.to_dict()
        if self.threshold is not None:
            out["threshold"] = self.threshold
            out["threshold_alpha"] = self.threshold_alpha
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Priors:
        single = "single_distance" in data and "single_register" in data
        return cls(
            distance=TailPrior.from_dict(data["distance"]),
            register=TailPrior.from_dict(data["register"]),
            bleed=TailPrior.from_dict(data["bleed"]),
            single_distance=TailPrior.from_dict(data["single_distance"]) if single else None,
            single_register=TailPrior.from_dict(data["single_register"]) if single else None,
            threshold=float(data["threshold"]) if data.get("threshold") is not None else None,
            threshold_alpha=float(data["threshold_alpha"]) if data.get("threshold_alpha") is not None else None,
        )

    def threshold_for(self, alpha: float) -> float:
        """The flagging threshold at ``alpha``: the fitted one when it was fitted at that alpha, else Sidak's."""
        if self.threshold is not None and self.threshold_alpha == alpha:
            return self.threshold
        return threshold_for_alpha(alpha)


#: The priors of an embedder without fitted ones (e.g. an OpenAI-compatible one): all-MiniLM-L6-v2-like sentence
#: embeddings, whose in-character nulls sit around a log distance of -0.7 (1 - cos ~ 0.5) with spreads of 0.1-0.2 and
#: bleed margins around -0.05; the register does not depend on the embedder. Wide, and weighing little, so that a
#: persona's own null decides.
DEFAULT_PRIORS = Priors(
    distance=TailPrior(mean=-0.7, sd=0.2, mean_weight=0.5, sd_weight=4.0, sd_floor=0.05),
    register=TailPrior(mean=0.0, sd=1.0, mean_weight=0.5, sd_weight=4.0, sd_floor=0.2),
    bleed=TailPrior(mean=-0.05, sd=0.07, mean_weight=0.5, sd_weight=4.0, sd_floor=0.02),
)
PRIORS_FILE = Path(__file__).with_name("drift_priors.json")


def embedder_family(model_id: str) -> str:
    """What priors are kept under: the model id without its table checksum (``name:checksum``)."""
    return model_id.split(":", 1)[0]


@functools.cache
def _fitted_priors() -> dict[str, Priors]:
    if not PRIORS_FILE.is_file():
        return {}
    data = json.loads(PRIORS_FILE.read_text(encoding="utf-8"))
    return {family: Priors.from_dict(entry["priors"]) for family, entry in data.get("embedders", {}).items()}


def priors_for(model_id: str) -> Priors:
    """The priors fitted for this embedder (``bench/fit_drift_priors.py`` writes them), else the defaults."""
    return _fitted_priors().get(embedder_family(model_id), DEFAULT_PRIORS)


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


# --- Student-t tails ---------------------------------------------------------------------------------------------


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


# --- the register: generic-assistant language against the persona's own ---------------------------------------


@dataclass(frozen=True)
class RegisterModel:
    """The generic assistant's unigram language model over word pieces, and the Zipf background both sides are
    smoothed toward (the frequency of a piece estimated from its rank in the vocabulary, as the static table's SIF
    weights are). Made once per process from :func:`generic_assistant_texts` (:func:`register_model`)."""

    log_generic: npt.NDArray[np.float64]  # (vocabulary,) log p(piece | generic assistant)
    background: npt.NDArray[np.float64]  # (vocabulary,) p(piece) under the Zipf background

    @property
    def vocabulary(self) -> int:
        return int(self.background.shape[0])


def zipf_background(vocabulary: int) -> npt.NDArray[np.float64]:
    """p(piece) from its rank in the vocabulary (Zipf's law), summing to 1."""
    inv_rank = 1.0 / np.arange(2, vocabulary + 2, dtype=np.float64)
    out: npt.NDArray[np.float64] = inv_rank / inv_rank.sum()
    return out


def register_model(generic_pieces: Sequence[Pieces], vocabulary: int) -> RegisterModel:
    """The register's generic side from the generic-assistant texts' word pieces (ids below ``vocabulary``)."""
    background = zipf_background(vocabulary)
    counts = np.zeros(vocabulary, dtype=np.float64)
    for pieces in generic_pieces:
        np.add.at(counts, np.asarray(pieces, dtype=np.intp), 1.0)
    total = float(counts.sum())
    log_generic = np.log(counts + GENERIC_SMOOTHING * background) - math.log(total + GENERIC_SMOOTHING)
    return RegisterModel(log_generic=log_generic, background=background)


@dataclass(frozen=True, eq=False)
class PieceCounts:
    """How often each word piece occurs in some texts: sorted unique ids and their counts (what a persona's side of
    the register is made of, stored in its calibration)."""

    ids: npt.NDArray[np.intp]
    counts: npt.NDArray[np.float64]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, PieceCounts)
            and np.array_equal(self.ids, other.ids)
            and np.array_equal(self.counts, other.counts)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside: not hashable, like a list

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    @classmethod
    def of(cls, texts: Sequence[Pieces]) -> PieceCounts:
        flat = np.fromiter((i for t in texts for i in t), dtype=np.intp)
        ids, counts = np.unique(flat, return_counts=True)
        return cls(ids=ids.astype(np.intp), counts=counts.astype(np.float64))

    def minus(self, texts: Sequence[Pieces]) -> PieceCounts:
        """These counts without the pieces of ``texts`` (which must be among them)."""
        removed = PieceCounts.of(texts)
        counts = self.counts.copy()
        counts[np.searchsorted(self.ids, removed.ids)] -= removed.counts
        return PieceCounts(ids=self.ids, counts=counts)

    def lookup(self, pieces: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        """The count of each of ``pieces`` (0 for a piece not among them)."""
        if not self.ids.size:
            return np.zeros(pieces.shape, dtype=np.float64)
        at = np.minimum(np.searchsorted(self.ids, pieces), self.ids.size - 1)
        out: npt.NDArray[np.float64] = np.where(self.ids[at] == pieces, self.counts[at], 0.0)
        return out

    def to_dict(self) -> dict[str, list[int]]:
        return {"ids": [int(i) for i in self.ids], "counts": [int(c) for c in self.counts]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PieceCounts:
        return cls(
            ids=np.asarray(data["ids"], dtype=np.intp).reshape(-1),
            counts=np.asarray(data["counts"], dtype=np.float64).reshape(-1),
        )


def register_statistic(pieces: Pieces, model: RegisterModel, persona: PieceCounts) -> float:
    """Mean over the reply's word pieces of log p(piece | generic assistant) - log p(piece | persona).

    Positive when the reply reads more like the assistant than like the persona's own texts. A reply with no word
    piece gives -inf (nothing to judge: p-value 1).
    """
    x = np.asarray(pieces, dtype=np.intp)
    x = x[(x >= 0) & (x < model.vocabulary)]
    if not x.size:
        return -math.inf
    own = np.log(persona.lookup(x) + PERSONA_SMOOTHING * model.background[x]) - math.log(
        persona.total + PERSONA_SMOOTHING
    )
    return float((model.log_generic[x] - own).mean())


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
    """Unit mean direction of some embeddings (rows, normalised first): a persona's centroid."""
    return _centroid(_check_matrix("vectors", vectors))


def distance_statistic(sim_persona: Any) -> Any:
    """The centroid component's statistic: log(1 - cos(reply, centroid)).

    On the log scale a persona's spread is about the same whatever its location: a terse persona's replies lie far
    from its centroid and far apart, a wordy one's close and close together (the static table's distances range
    from ~0.04 to ~0.25 across personas, with spreads in proportion), so one prior fits them all.
    """
    return np.log(np.maximum(1.0 - np.asarray(sim_persona, dtype=np.float64), DISTANCE_FLOOR))


@dataclass(frozen=True)
class Calibration:
    """Per-persona calibration of drift scoring (JSON-serialisable with :meth:`to_dict` / :meth:`from_dict`).

    The persona's *reference* texts are its ``n_anchors`` anchors followed by its ``n_samples`` samples; its centroid
    is their vectors'. ``null_distances`` / ``null_registers``: the null distribution of components (a) and (b), one
    value per null point (in the same order: see :func:`calibrate`), and ``null_counts`` how many times each point
    counts in the fits; ``distance_fit`` / ``register_fit``: their Student-t tails; ``persona_pieces``: the reference
    texts' word pieces (the persona's side of the register). ``threshold``: flag iff score > threshold.
    """

    version: int
    alpha: float
    threshold: float
    n_anchors: int
    n_generic: int
    dim: int
    pseudo_reply_size: int
    null_distances: tuple[float, ...]
    null_registers: tuple[float, ...]
    null_counts: tuple[int, ...]
    distance_fit: TailFit
    register_fit: TailFit
    persona_pieces: PieceCounts | None = None
    priors: Priors = field(default=DEFAULT_PRIORS)
    n_samples: int = 0
    n_replies: int = 0
    # The nulls sorted, for the p-values (derived, not stored).
    sorted_distances: tuple[float, ...] = field(init=False, repr=False, compare=False)
    sorted_registers: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sorted_distances", tuple(sorted(self.null_distances)))
        object.__setattr__(self, "sorted_registers", tuple(sorted(r for r in self.null_registers if r > -math.inf)))

    @property
    def n_reference(self) -> int:
        return self.n_anchors + self.n_samples

    @property
    def is_current(self) -> bool:
        """False when made by another version of the calibration procedure: recalibrate."""
        return self.version == CALIBRATION_VERSION

    def matches(self, reference_vectors: FloatArray, generic_vectors: FloatArray) -> bool:
        """Whether this calibration was made for reference/generic sets of these sizes and dimension."""
        a, g = np.asarray(reference_vectors), np.asarray(generic_vectors)
        return (
            a.ndim == 2
            and g.ndim == 2
            and a.shape == (self.n_reference, self.dim)
            and g.shape == (self.n_generic, self.dim)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "alpha": self.alpha,
            "threshold": self.threshold,
            "n_anchors": self.n_anchors,
            "n_samples": self.n_samples,
            "n_generic": self.n_generic,
            "dim": self.dim,
            "pseudo_reply_size": self.pseudo_reply_size,
            "null_distances": list(self.null_distances),
            "null_registers": list(self.null_registers),
            "null_counts": list(self.null_counts),
            "distance_fit": self.distance_fit.to_dict(),
            "register_fit": self.register_fit.to_dict(),
            "persona_pieces": self.persona_pieces.to_dict() if self.persona_pieces is not None else None,
            "priors": self.priors.to_dict(),
            "n_replies": self.n_replies,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` on a malformed dict (e.g. an older layout)."""
        try:
            pieces = data["persona_pieces"]
            return cls(
                version=int(data["version"]),
                alpha=float(data["alpha"]),
                threshold=float(data["threshold"]),
                n_anchors=int(data["n_anchors"]),
                n_samples=int(data.get("n_samples", 0)),
                n_generic=int(data["n_generic"]),
                dim=int(data["dim"]),
                pseudo_reply_size=int(data["pseudo_reply_size"]),
                null_distances=tuple(float(x) for x in data["null_distances"]),
                null_registers=tuple(float(x) for x in data["null_registers"]),
                null_counts=tuple(int(x) for x in data["null_counts"]),
                distance_fit=TailFit.from_dict(data["distance_fit"]),
                register_fit=TailFit.from_dict(data["register_fit"]),
                persona_pieces=PieceCounts.from_dict(pieces) if pieces is not None else None,
                priors=Priors.from_dict(data["priors"]),
                n_replies=int(data.get("n_replies", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a drift calibration: {exc!r}") from exc


def threshold_for_alpha(alpha: float) -> float:
    """Score threshold for a family-wise false-flag rate ``alpha`` over the statistical components."""
    return float((1.0 - alpha) ** (1.0 / N_STATISTICAL_COMPONENTS))


@dataclass(frozen=True)
class _NullPoints:
    """The null's points: each a blend of some reference texts (``members``), scored against the rest."""

    members: list[tuple[int, ...]]
    vectors: npt.NDArray[np.float64]  # (m, dim) unit vectors of the points
    rests: npt.NDArray[np.float64]  # (m, dim) unit centroids of the reference texts each leaves out
    counts: npt.NDArray[np.intp]  # (m,) how many times each counts


def _pseudo_size(n_anchors: int) -> int:
    return PSEUDO_REPLY_SIZE if n_anchors >= 2 * PSEUDO_REPLY_SIZE else 1


def _null_points(reference: npt.NDArray[np.float64], n_anchors: int) -> _NullPoints:
    """Each sample left out alone (a real reply scored as a new reply is), counted so that the samples weigh
    ``SAMPLE_SHARE`` of the null, and the anchors' ``_pseudo_size``-subsets (leave-pair-out pseudo-replies).
    Empty with fewer than two reference texts (there is no "rest" to score against)."""
    n_ref = reference.shape[0]
    if n_ref < 2:
        return _NullPoints([], np.zeros((0, reference.shape[1])), np.zeros((0, reference.shape[1])), np.zeros(0, int))
    size = _pseudo_size(n_anchors)
    anchor_sets = list(itertools.combinations(range(n_anchors), size)) if n_anchors >= 2 else []
    sample_sets = [(i,) for i in range(n_anchors, n_ref)]
    each = 1
    if anchor_sets and sample_sets:
        each = max(1, math.ceil(SAMPLE_SHARE * len(anchor_sets) / ((1.0 - SAMPLE_SHARE) * len(sample_sets))))
    members = anchor_sets + sample_sets
    counts = np.array([1] * len(anchor_sets) + [each] * len(sample_sets), dtype=np.intp)
    total = reference.sum(axis=0)
    vectors = np.stack([reference[list(m)].sum(axis=0) for m in members])
    rests = total[None, :] - vectors
    rests /= np.maximum(np.linalg.norm(rests, axis=1, keepdims=True), 1e-12)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return _NullPoints(members, vectors, rests, counts)


def _null_registers(
    points: _NullPoints, pieces: Sequence[Pieces], register: RegisterModel, persona: PieceCounts
) -> npt.NDArray[np.float64]:
    """The register statistic of each null point: its texts' pieces against the persona's other texts."""
    out = []
    for members in points.members:
        chosen = [pieces[i] for i in members]
        out.append(register_statistic([p for t in chosen for p in t], register, persona.minus(chosen)))
    return np.asarray(out, dtype=np.float64)


def calibrate(
    anchor_vectors: FloatArray,
    *,
    generic_vectors: FloatArray,
    alpha: float = 0.05,
    sample_vectors: FloatArray | None = None,
    reply_vectors: FloatArray | None = None,
    priors: Priors = DEFAULT_PRIORS,
    register: RegisterModel | None = None,
    reference_pieces: Sequence[Pieces] = (),
    reply_pieces: Sequence[Pieces] = (),
) -> Calibration:
    """Calibrate drift scoring for a persona from its embedded anchors and samples (rows; unit-normalised here).

    ``generic_vectors``: the embedded :func:`generic_assistant_texts` (same embedder). ``alpha``: the target rate at
    which replies like the persona's own get flagged. ``sample_vectors``: in-character replies the persona's own
    model wrote (the best model of its real replies, see :func:`_null_points`). ``reply_vectors``: real replies an
    admin marked as in character; each joins the null (scored against the full reference set) with the weight of
    one reference text. ``priors``: the embedder's (:func:`priors_for`). ``register`` with ``reference_pieces`` (the
    word pieces of the anchors then the samples) and ``reply_pieces`` (of the reviewed replies) turn on the register
    component; without them its p-value is 1. Deterministic. Needs at least one anchor; with one reference text the
    null is the prior alone (plus any reviewed replies).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    anchors = _check_matrix("anchor_vectors", anchor_vectors)
    dim = anchors.shape[1]
    generic = _check_matrix("generic_vectors", generic_vectors, dim)
    samples = (
        _check_matrix("sample_vectors", sample_vectors, dim)
        if sample_vectors is not None and np.asarray(sample_vectors).size
        else np.zeros((0, dim))
    )
    reference = np.concatenate([anchors, samples])
    n, n_ref = anchors.shape[0], reference.shape[0]
    if register is not None and len(reference_pieces) != n_ref:
        raise ValueError(f"reference_pieces must have one entry per anchor and sample ({n_ref})")
    persona = PieceCounts.of(reference_pieces) if register is not None else None

    points = _null_points(reference, n)
    sim = np.einsum("ij,ij->i", points.vectors, points.rests)
    null_d = distance_statistic(sim)
    null_r = (
        _null_registers(points, reference_pieces, register, persona)
        if register is not None and persona is not None
        else np.zeros(0)
    )
    counts = points.counts
    n_eff = float(n_ref) if n_ref >= 2 else 0.0
    n_replies = 0
    if reply_vectors is not None and np.asarray(reply_vectors).size:
        replies = _check_matrix("reply_vectors", reply_vectors, dim)
        n_replies = replies.shape[0]
        weight = _reply_weight(int(counts.sum()), n_ref)
        null_d = np.concatenate([null_d, distance_statistic(replies @ _centroid(reference))])
        counts = np.concatenate([counts, np.full(n_replies, weight, dtype=np.intp)])
        if register is not None and persona is not None:
            if len(reply_pieces) != n_replies:
                raise ValueError("reply_pieces must have one entry per reviewed reply")
            values = [register_statistic(p, register, persona) for p in reply_pieces]
            null_r = np.concatenate([null_r, np.asarray(values, dtype=np.float64)])
        n_eff += n_replies

    def stored(values: npt.NDArray[np.float64]) -> tuple[float, ...]:
        return tuple(round(float(x), _STORE_DECIMALS) for x in values)

    # A reference text without word pieces (whitespace) has no register: count it as the least generic of the rest.
    finite_r = null_r[np.isfinite(null_r)]
    null_r = np.where(np.isfinite(null_r), null_r, finite_r.min() if finite_r.size else 0.0)
    distance_prior, register_prior = priors.distance, priors.register
    # One reference text: no null of its own, and the usual priors (of centroids of many texts) would put every
    # reply far out. Score against how far real replies lie from a single line, or not at all.
    single = n_ref < 2 and not null_d.size
    if single:
        distance_prior = priors.single_distance or _UNSCORED
        register_prior = priors.single_register or _UNSCORED
    return Calibration(
        version=CALIBRATION_VERSION,
        alpha=float(alpha),
        # The fitted threshold is for calibrations like the ones it was fitted on; a thin one keeps the Sidak bound.
        threshold=priors.threshold_for(alpha) if n_ref >= FITTED_THRESHOLD_REFERENCE else threshold_for_alpha(alpha),
        n_anchors=n,
        n_samples=samples.shape[0],
        n_generic=generic.shape[0],
        dim=dim,
        pseudo_reply_size=_pseudo_size(n),
        null_distances=stored(null_d),
        null_registers=stored(null_r),
        null_counts=tuple(int(c) for c in counts),
        distance_fit=fit_tail(np.repeat(null_d, counts), n_eff=n_eff, prior=distance_prior),
        register_fit=fit_tail(
            np.repeat(null_r, counts) if null_r.size else null_r,
            n_eff=n_eff if null_r.size else 0.0,
            prior=register_prior,
        ),  # fmt: skip
        persona_pieces=persona,
        priors=priors,
        n_replies=n_replies,
    )


# A prior so wide that nothing is out in its tail: a component that cannot be scored gives p-values near 1.
_UNSCORED = TailPrior(mean=0.0, sd=1e6, mean_weight=1.0, sd_weight=4.0, sd_floor=1e6)


def _reply_weight(n_null: int, n_reference: int) -> int:
    """How many times a reviewed reply's value is repeated in a null: as much weight as one reference text's share."""
    return max(1, math.ceil(n_null / max(n_reference, 1)))


def null_scores(calibration: Calibration) -> list[float]:
    """Drift scores of the calibration's own null points (the distribution the threshold was set on), sorted."""
    registers = calibration.null_registers or (-math.inf,) * len(calibration.null_distances)
    scores = [
        1.0
        - min(
            tail_p_value(d, calibration.sorted_distances, calibration.distance_fit),
            tail_p_value(r, calibration.sorted_registers, calibration.register_fit),
        )
        for d, r in zip(calibration.null_distances, registers, strict=True)
    ]
    return sorted(scores)


def bleed_null(
    reference_vectors: FloatArray, other_centroids: FloatArray, *, n_anchors: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp]]:
    """The null of the bleed margin: each null point's closeness to the nearest other persona minus its own, and
    how many times each counts.

    Computed when scoring (about 0.1 ms), because the owner's roster of other personas changes after calibration.
    """
    reference = _check_matrix("reference_vectors", reference_vectors)
    others = _check_matrix("other_centroids", other_centroids, reference.shape[1])
    points = _null_points(reference, n_anchors)
    if not points.members:
        return np.zeros(0), np.zeros(0, dtype=np.intp)
    margins = (points.vectors @ others.T).max(axis=1) - np.einsum("ij,ij->i", points.vectors, points.rests)
    return margins, points.counts


# --- scoring -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftResult:
    """Drift of one reply. ``rule``: the component that set the score (``"hard_rule"``, ``"centroid_distance"``,
    ``"generic_register"`` or ``"persona_bleed"``); ``hard_rule_hits``: what :func:`hard_rule_hits` found."""

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

    reference: npt.NDArray[np.float64]
    persona_centroid: npt.NDArray[np.float64]
    calibration: Calibration
    stale: bool
    register: RegisterModel | None = None
    others: npt.NDArray[np.float64] | None = None
    bleed_null: tuple[float, ...] = ()
    bleed_fit: TailFit | None = None


def scoring_context(
    reference_vectors: FloatArray,
    calibration: Calibration,
    *,
    generic_vectors: FloatArray,
    register: RegisterModel | None = None,
    other_centroids: FloatArray | None = None,
) -> ScoringContext:
    """Check the persona's vectors and compute what :func:`score_prepared` needs from them (see :func:`score_reply`)."""
    reference = _check_matrix("reference_vectors", reference_vectors)
    dim = reference.shape[1]
    generic = _check_matrix("generic_vectors", generic_vectors, dim)
    if calibration.dim != dim:
        raise ValueError(f"calibration is for dimension {calibration.dim}, vectors have {dim}")
    context = ScoringContext(
        reference=reference,
        persona_centroid=_centroid(reference),
        calibration=calibration,
        stale=not calibration.matches(reference, generic) or not calibration.is_current,
        register=register if calibration.persona_pieces is not None else None,
    )
    # Bleed compares the persona's centroid with the others': with one reference text it is no centroid, and every
    # reply would seem closer to the others (not scored then).
    if other_centroids is not None and np.asarray(other_centroids).size and calibration.n_reference >= 2:
        others = _check_matrix("other_centroids", other_centroids, dim)
        margins, counts = bleed_null(reference, others, n_anchors=calibration.n_anchors)
        fit = fit_tail(
            np.repeat(margins, counts),
            n_eff=float(calibration.n_reference) if margins.size else 0.0,
            prior=calibration.priors.bleed,
        )
        context = replace(context, others=others, bleed_null=tuple(sorted(float(m) for m in margins)), bleed_fit=fit)
    return context


def score_reply(
    text: str,
    reply_vector: FloatArray,
    reference_vectors: FloatArray,
    calibration: Calibration,
    *,
    generic_vectors: FloatArray,
    register: RegisterModel | None = None,
    reply_pieces: Pieces | None = None,
    persona_name: str = "",
    other_centroids: FloatArray | None = None,
) -> DriftResult:
    """Score one reply (its text, its embedding and its word pieces) against the persona's reference vectors and
    calibration.

    ``other_centroids``: unit centroids of the owner's other personas (rows), for the bleed component; without them
    that component's p-value is 1. Without ``register`` (or a calibration made without one) the register's is 1.
    """
    context = scoring_context(
        reference_vectors,
        calibration,
        generic_vectors=generic_vectors,
        register=register,
        other_centroids=other_centroids,
    )
    return score_prepared(text, reply_vector, context, reply_pieces=reply_pieces, persona_name=persona_name)


def score_prepared(
    text: str,
    reply_vector: FloatArray,
    context: ScoringContext,
    *,
    reply_pieces: Pieces | None = None,
    persona_name: str = "",
) -> DriftResult:
    """:func:`score_reply` with the persona's part made beforehand (:func:`scoring_context`)."""
    calibration = context.calibration
    dim = context.reference.shape[1]
    reply = np.asarray(reply_vector, dtype=np.float64).reshape(-1)
    if reply.shape[0] != dim or not np.all(np.isfinite(reply)):
        raise ValueError(f"reply_vector must be a finite vector of dimension {dim}, got shape {reply.shape}")
    reply = reply / max(float(np.linalg.norm(reply)), 1e-12)

    sim_persona = float(reply @ context.persona_centroid)
    distance = float(distance_statistic(np.float64(sim_persona)))
    # A short reply's vector is mostly its topic (a mean of a dozen word pieces), and topic is what a terse persona's
    # next line changes: its distance and bleed say little, and it is judged on its words (the register) alone.
    short = reply_pieces is not None and len(reply_pieces) < SHORT_REPLY_PIECES
    p_distance = 1.0 if short else tail_p_value(distance, calibration.sorted_distances, calibration.distance_fit)
    register, p_register = 0.0, 1.0
    if context.register is not None and calibration.persona_pieces is not None and reply_pieces is not None:
        register = register_statistic(reply_pieces, context.register, calibration.persona_pieces)
        p_register = tail_p_value(register, calibration.sorted_registers, calibration.register_fit)
    hits = tuple(hard_rule_hits(text, persona_name))
    p_hard = 0.0 if hits else 1.0
    bleed, p_bleed, bleed_z, nearest = 0.0, 1.0, 0.0, -1
    if context.others is not None and context.bleed_fit is not None and not short:
        sims = context.others @ reply
        nearest = int(np.argmax(sims))
        bleed = float(sims[nearest]) - sim_persona
        fit = context.bleed_fit
        p_bleed = tail_p_value(bleed, context.bleed_null, fit)
        bleed_z = (bleed - fit.loc) / fit.scale

    candidates = (
        ("hard_rule", p_hard),
        ("centroid_distance", p_distance),
        ("generic_register", p_register),
        ("persona_bleed", p_bleed),
    )
    rule, p_min = min(candidates, key=lambda kv: kv[1])  # ties: first listed
    score = min(1.0, max(0.0, 1.0 - p_min))
    flagged = score > calibration.threshold
    register_fit = calibration.register_fit
    components = {
        "centroid_distance": 1.0 - sim_persona,
        "centroid_log_distance": distance,
        "centroid_p": p_distance,
        "centroid_z": (distance - calibration.distance_fit.loc) / calibration.distance_fit.scale,
        "generic_register": register if math.isfinite(register) else 0.0,
        "generic_p": p_register,
        "generic_z": (register - register_fit.loc) / register_fit.scale if math.isfinite(register) else 0.0,
        "persona_similarity": sim_persona,
        "bleed_margin": bleed,
        "bleed_p": p_bleed,
        "bleed_z": bleed_z,
        "bleed_nearest": float(nearest),
        "hard_rule_p": p_hard,
        "hard_rule_count": float(len(hits)),
        "fired_hard_rule": float(flagged and rule == "hard_rule"),
        "fired_centroid_distance": float(flagged and rule == "centroid_distance"),
        "fired_generic_register": float(flagged and rule == "generic_register"),
        "fired_persona_bleed": float(flagged and rule == "persona_bleed"),
        "calibration_stale": float(context.stale),
        "short_reply": float(short),
    }
    return DriftResult(
        score=score, threshold=calibration.threshold, flagged=flagged, components=components, rule=rule,
        hard_rule_hits=hits,
    )  # fmt: skip


def generic_assistant_texts() -> tuple[str, ...]:
    """Typical generic-assistant replies: embed them once and pass as ``generic_vectors`` (and their word pieces to
    :func:`register_model`)."""
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


# Every rule's pattern in one alternation: it matches somewhere iff one of them does (one pass, not eleven).
_ANY_HARD_RULE = re.compile("|".join(f"(?:{p.pattern})" for _, p in _HARD_RULES), re.IGNORECASE)


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
    # One pass of all the rules at once first: most replies hit none, and then each rule's own pass is not needed.
    if _ANY_HARD_RULE.search(norm):
        for rule, pattern in _HARD_RULES:
            for m in pattern.finditer(norm):
                hits.append(f"{rule}: {m.group(0).strip()}")
    hits.extend(_wrong_name_hits(norm, persona_name))
    return list(dict.fromkeys(hits))
