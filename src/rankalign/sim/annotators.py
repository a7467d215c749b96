"""Simulated annotators: choice models with temperature, flip noise, ties, ratings, picks and thumbs.

An annotator scores a candidate by a utility ``u = w^T c`` of the candidate's *utility components* ``c``
(the features of the tabular world, or the text world's reward components) with its own weights ``w``
(default: the world's gold weights), then answers through a noisy choice model. Every function takes a
seeded ``numpy.random.Generator`` and is deterministic for it. Annotations come back as the same
records the readers return: :class:`~rankalign.data.RankedList` (pairs, rankings, ratings, best-of-K
picks) and :class:`~rankalign.data.Judgment` (thumbs up/down), each carrying the annotator id.

Choice models (``Annotator.choice``), with ``T`` the temperature:

* ``"bradley_terry"`` / ``"plackett_luce"``: a ranking is a Plackett-Luce draw with strengths
  ``exp(u / T)`` (Luce 1959; Plackett 1975), sampled exactly by sorting ``u / T + Gumbel noise``; for a
  pair, ``P(a > b) = sigmoid((u_a - u_b) / T)`` (Bradley & Terry 1952).
* ``"thurstone"``: sort ``u + T * z`` with ``z ~ N(0, 1)`` per candidate (Thurstone 1927, case V); for a
  pair, ``P(a > b) = Phi((u_a - u_b) / (T sqrt 2))``.
* ``"deterministic"``: sort by ``u`` (exact ties share a rank).

Noise on top: ``flip_rate`` eps reverses the whole ranking with probability eps (for a pair, the
preference is flipped); ``tie_strength`` nu > 0 gives Davidson (1970) ties on pairs,
``P(tie) = nu sqrt(pi_a pi_b) / (pi_a + pi_b + nu sqrt(pi_a pi_b))`` with ``pi = exp(u / T)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from ..data.records import Judgment, RankedList
from ..errors import UsageError
from ..stats import pair_probabilities as rating_model_probabilities

CHOICE_MODELS = ("bradley_terry", "plackett_luce", "thurstone", "deterministic")


@dataclass(frozen=True)
class Annotator:
    """One simulated annotator.

    Parameters
    ----------
    id : str
        Written to every record's ``annotator``.
    weights : tuple of float, optional
        Own utility weights over the world's utility components; None uses the world's gold weights.
    choice : str
        One of :data:`CHOICE_MODELS`.
    temperature : float
        T > 0 of the choice model (higher = noisier); ignored by ``"deterministic"``.
    flip_rate : float
        eps in [0, 1/2]: probability of reversing the ranking (flipping a pair).
    tie_strength : float
        Davidson's nu >= 0 for pairs (0 = never tie).
    rating_center, rating_slope, rating_noise : float
        1-5 ratings: ``clip(round(center + slope * u + rating_noise * z), 1, 5)``, z ~ N(0, 1).
    thumbs_threshold : float
        Thumbs up with probability ``sigmoid((u - threshold) / T)`` (then flipped with ``flip_rate``).
    group : str, optional
        The annotator's group in a population (recorded in ``meta``).
    """

    id: str
    weights: tuple[float, ...] | None = None
    choice: str = "bradley_terry"
    temperature: float = 1.0
    flip_rate: float = 0.0
    tie_strength: float = 0.0
    rating_center: float = 3.0
    rating_slope: float = 1.0
    rating_noise: float = 0.5
    thumbs_threshold: float = 0.0
    group: str | None = None

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id:
            raise UsageError(f"id must be a non-empty string (every record's annotator), got {self.id!r}")
        if self.choice not in CHOICE_MODELS:
            raise UsageError(f"unknown choice model {self.choice!r}; choose one of {', '.join(CHOICE_MODELS)}")
        for name in ("temperature", "flip_rate", "tie_strength", "rating_center", "rating_slope", "rating_noise",
                     "thumbs_threshold"):
            _check_finite(name, getattr(self, name))
        if not self.temperature > 0:
            raise UsageError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.flip_rate <= 0.5:
            raise UsageError(f"flip_rate must be in [0, 0.5], got {self.flip_rate}",
                             hint="above 1/2 the annotator prefers the worse candidate more often than not")
        if self.tie_strength < 0:
            raise UsageError(f"tie_strength must be >= 0, got {self.tie_strength}")
        if self.rating_noise < 0:
            raise UsageError(f"rating_noise must be >= 0 (a standard deviation), got {self.rating_noise}")
        if self.group is not None and not isinstance(self.group, str):
            raise UsageError(f"group must be a string or None, got {self.group!r}")
        if self.weights is not None:
            try:
                weights = () if isinstance(self.weights, (str, bytes)) else tuple(self.weights)
            except TypeError:
                weights = ()
            if not weights:
                raise UsageError(f"weights must be a non-empty sequence of numbers (one per utility component), "
                                 f"got {self.weights!r}")
            for i, weight in enumerate(weights):
                _check_finite(f"weights[{i}]", weight)
            object.__setattr__(self, "weights", tuple(float(w) for w in weights))

    def utilities(self, components: np.ndarray, gold_weights: np.ndarray | None = None) -> np.ndarray:
        """``u = components @ w`` for components of shape (..., C); ``w`` is own weights or ``gold_weights``."""
        weights = self.weights if self.weights is not None else gold_weights
        if weights is None:
            raise ValueError(f"annotator {self.id!r} has no weights and no gold weights were given")
        components = np.asarray(components, dtype=np.float64)
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or components.ndim < 1 or components.shape[-1] != weights.shape[0]:
            source = "its own" if self.weights is not None else "the gold weights"
            raise UsageError(f"annotator {self.id!r}: {weights.size} weights ({source}) for components of shape "
                             f"{components.shape}; the last axis must hold one component per weight")
        return components @ weights


def _check_finite(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value!r}")


def _check_count(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise UsageError(f"{name} must be a whole number >= {minimum}, got {value!r}")


# ------------------------------------------------------------------------------------------ probabilities
def pair_probabilities(annotator: Annotator, u_a, u_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(P(a > b), P(tie), P(b > a))`` for utilities ``u_a``, ``u_b`` (arrays broadcast), noise included.

    These are the true preference rates alpha that the idealised ranking accuracy needs. The choice
    models are the rating models of :mod:`rankalign.stats` on the utility difference scaled by the
    temperature T: Bradley-Terry sigma(d / T); Thurstone Phi(d / (T sqrt 2)) (each utility perceived with
    N(0, T^2) noise); Davidson ties with nu = ``tie_strength`` on d / T; deterministic: the larger utility
    wins, equal utilities tie. Flip noise then swaps win and loss with probability ``flip_rate``.
    """
    u_a, u_b = np.asarray(u_a, dtype=np.float64), np.asarray(u_b, dtype=np.float64)
    t = annotator.temperature
    diff = u_a - u_b
    if annotator.choice == "deterministic":  # equal utilities share a rank (sample_ranks): a sure tie
        win, tie, loss_ = ((diff > 0).astype(np.float64), (diff == 0).astype(np.float64),
                           (diff < 0).astype(np.float64))
    elif annotator.choice == "thurstone":
        win, tie, loss_ = rating_model_probabilities("thurstone", diff / (t * math.sqrt(2.0)), {})
    elif annotator.tie_strength > 0:
        win, tie, loss_ = rating_model_probabilities("davidson", diff / t, {"nu": annotator.tie_strength})
    else:
        win, tie, loss_ = rating_model_probabilities("bt", diff / t, {})
    eps = annotator.flip_rate
    return (1 - eps) * win + eps * loss_, tie, (1 - eps) * loss_ + eps * win


# ---------------------------------------------------------------------------------------------- choices
def _ranks_from_scores(scores: np.ndarray) -> list[int]:
    """Dense ranks, 0 for the highest score, equal scores tied."""
    order = -np.asarray(scores, dtype=np.float64)
    levels = {v: r for r, v in enumerate(sorted(set(order.tolist())))}
    return [levels[v] for v in order.tolist()]


def sample_ranks(annotator: Annotator, utilities: np.ndarray, rng: np.random.Generator) -> list[int]:
    """One ranking (ranks, 0 best) of K candidates with the given utilities, noise included.

    For K = 2 with ``tie_strength > 0`` the Davidson model decides (win / tie / loss); otherwise the
    choice model ranks all K and ``flip_rate`` reverses the ranking with that probability.
    """
    u = np.asarray(utilities, dtype=np.float64)
    k = len(u)
    if k == 2 and annotator.tie_strength > 0 and annotator.choice != "deterministic":
        win, tie, _ = pair_probabilities(annotator, u[0], u[1])
        draw = rng.random()
        if draw < win:
            return [0, 1]
        if draw < win + tie:
            return [0, 0]
        return [1, 0]
    if annotator.choice in ("bradley_terry", "plackett_luce"):
        noisy = u / annotator.temperature + rng.gumbel(size=k)
    elif annotator.choice == "thurstone":
        noisy = u + annotator.temperature * rng.standard_normal(k)
    else:
        noisy = u
    ranks = _ranks_from_scores(noisy)
    if annotator.flip_rate > 0 and rng.random() < annotator.flip_rate:
        top = max(ranks)
        ranks = [top - r for r in ranks]
    return ranks


def sample_best(annotator: Annotator, utilities: np.ndarray, rng: np.random.Generator) -> int:
    """Index of the candidate picked as best of K (the first choice of the choice model).

    With probability ``flip_rate`` the pick is replaced by a uniformly random *other* candidate.
    """
    u = np.asarray(utilities, dtype=np.float64)
    if annotator.choice in ("bradley_terry", "plackett_luce"):
        best = int(np.argmax(u / annotator.temperature + rng.gumbel(size=len(u))))
    elif annotator.choice == "thurstone":
        best = int(np.argmax(u + annotator.temperature * rng.standard_normal(len(u))))
    else:
        best = int(np.argmax(u))
    if len(u) > 1 and annotator.flip_rate > 0 and rng.random() < annotator.flip_rate:
        others = [i for i in range(len(u)) if i != best]
        best = int(others[rng.integers(len(others))])
    return best


def sample_ratings(annotator: Annotator, utilities: np.ndarray, rng: np.random.Generator) -> list[float]:
    """1-5 ratings: ``clip(round(center + slope * u + noise * z), 1, 5)``."""
    u = np.asarray(utilities, dtype=np.float64)
    raw = annotator.rating_center + annotator.rating_slope * u + annotator.rating_noise * rng.standard_normal(len(u))
    return [float(v) for v in np.clip(np.rint(raw), 1, 5)]


def sample_thumbs(annotator: Annotator, utilities: np.ndarray, rng: np.random.Generator) -> list[bool]:
    """Thumbs up with probability ``sigmoid((u - threshold) / T)``, each flipped with ``flip_rate``."""
    u = np.asarray(utilities, dtype=np.float64)
    p_up = expit((u - annotator.thumbs_threshold) / annotator.temperature)
    up = rng.random(len(u)) < p_up
    flip = rng.random(len(u)) < annotator.flip_rate
    return [bool(v) for v in up ^ flip]


# ----------------------------------------------------------------------------------------- annotations
ANNOTATION_KINDS = ("ranking", "ratings", "best_of", "thumbs")


def annotate(annotator: Annotator, prompt, candidates: Sequence, components: np.ndarray,
             rng: np.random.Generator, *, kind: str = "ranking", gold_weights: np.ndarray | None = None,
             meta: dict | None = None) -> RankedList | list[Judgment]:
    """One annotation of ``candidates`` (one prompt) as records the readers return.

    ``components`` is (K, C): each candidate's utility components. ``kind``:

    * ``"ranking"``: a full ranking (a pair when K = 2), ``RankedList`` with ranks from the choice model;
    * ``"ratings"``: 1-5 ratings, ``RankedList.from_scores`` (equal ratings tie), ratings kept in ``scores``;
    * ``"best_of"``: a best-of-K pick, ranks ``[1, .., 0, .., 1]``;
    * ``"thumbs"``: one ``Judgment`` (thumbs up = True) per candidate.
    """
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
        raise UsageError(f"candidates must be a list of responses, got {type(candidates).__name__}")
    if np.ndim(components) != 2 or np.shape(components)[0] != len(candidates):
        raise UsageError(f"components must be (K, C), one row per candidate: {len(candidates)} candidates, "
                         f"components of shape {np.shape(components)}")
    utilities = annotator.utilities(components, gold_weights)
    meta = {**(meta or {}), **({"group": annotator.group} if annotator.group else {})}
    if kind == "ranking":
        return RankedList(prompt=prompt, candidates=list(candidates), ranks=sample_ranks(annotator, utilities, rng),
                          annotator=annotator.id, meta=meta)
    if kind == "ratings":
        return RankedList.from_scores(sample_ratings(annotator, utilities, rng), candidates=list(candidates),
                                      prompt=prompt, annotator=annotator.id, meta=meta)
    if kind == "best_of":
        best = sample_best(annotator, utilities, rng)
        ranks = [0 if i == best else 1 for i in range(len(candidates))]
        return RankedList(prompt=prompt, candidates=list(candidates), ranks=ranks, annotator=annotator.id, meta=meta)
    if kind == "thumbs":
        return [Judgment(prompt=prompt, response=c, label=up, annotator=annotator.id, meta=meta)
                for c, up in zip(candidates, sample_thumbs(annotator, utilities, rng))]
    raise ValueError(f"unknown annotation kind {kind!r}; choose one of {', '.join(ANNOTATION_KINDS)}")


def make_population(groups: Sequence[tuple[str, int, Sequence[float] | None]], **annotator_settings) -> list[Annotator]:
    """Annotators in groups that may disagree: ``groups`` is ``[(name, size, weights), ...]``.

    Each member gets id ``"{name}-{i}"``, the group's utility ``weights`` (None = gold) and the shared
    ``annotator_settings`` (choice, temperature, flip_rate, ...).
    """
    population = []
    seen = set()
    for index, group in enumerate(groups):
        if not isinstance(group, (tuple, list)) or len(group) != 3:
            raise UsageError(f"groups[{index}] must be (name, size, weights), got {group!r}")
        name, size, weights = group
        if not isinstance(name, str) or not name:
            raise UsageError(f"groups[{index}]: the name must be a non-empty string, got {name!r}")
        if name in seen:  # two groups of one name would give two annotators each id
            raise UsageError(f"groups[{index}]: group name {name!r} is used twice")
        seen.add(name)
        _check_count(f"groups[{index}] ({name!r}): size", size, 1)
        for i in range(size):
            population.append(Annotator(id=f"{name}-{i}", weights=weights, group=name, **annotator_settings))
    if not population:
        raise UsageError("empty population: give at least one group of size >= 1")
    return population


def annotate_items(population: Sequence[Annotator], items: Sequence[tuple], rng: np.random.Generator, *,
                   kind: str = "ranking", gold_weights: np.ndarray | None = None,
                   annotations_per_item: int = 1) -> list:
    """Annotate ``items = [(prompt, candidates, components), ...]``, each by annotators drawn at random.

    Returns a flat list of records (thumbs contribute one ``Judgment`` per candidate).
    """
    if not population:
        raise UsageError("population is empty: give at least one annotator")
    if not all(isinstance(a, Annotator) for a in population):
        raise UsageError("population must hold Annotator objects")
    _check_count("annotations_per_item", annotations_per_item, 1)
    records: list = []
    for prompt, candidates, components in items:
        for _ in range(annotations_per_item):
            annotator = population[int(rng.integers(len(population)))]
            out = annotate(annotator, prompt, candidates, components, rng, kind=kind, gold_weights=gold_weights)
            records.extend(out if isinstance(out, list) else [out])
    return records


__all__ = [
    "CHOICE_MODELS", "ANNOTATION_KINDS", "Annotator", "pair_probabilities", "sample_ranks", "sample_best",
    "sample_ratings", "sample_thumbs", "annotate", "make_population", "annotate_items",
]
