"""Judges: one small interface that turns K candidates for a prompt into a ranking.

A judge is any object with

* ``id`` (str): written as the ``annotator`` of every record it produces, so ``rate`` and ``eval`` treat
  judges like people (per-annotator accuracy, leaderboards of judges);
* ``rank(prompt, candidates) -> RankedList``: the candidates in their given order with ``ranks``
  (0 best, equal ranks tie), ``scores`` (the judge's number per candidate, higher better),
  ``annotator = judge.id`` and ``meta = {"judge": id, "confidence": c, ...}``.

``confidence`` is the judge's own probability that its ranking's ordered pairs are right, averaged over
those pairs: ``c = mean_{i above j} P(i > j)`` (1/2 for a coin, 1 for certainty; 1 when the ranking has
no ordered pair, e.g. everything tied). ``P`` is ``sigma(s_i - s_j)`` for a scalar reward (Bradley-Terry),
the ensemble's probability under the conservative scores, or the general preference model's own matrix.

Judges here: :class:`RewardModelJudge` (a scalar reward model), :class:`EnsembleJudge` (mean - k std of an
ensemble), :class:`PreferenceJudge` (pairwise probabilities, possibly intransitive, aggregated by
Copeland or Borda count) and :func:`ranking_from_scores` for anything that already has scores. The
simulation's annotators are judges through :class:`rankalign.sim.judges.AnnotatorJudge`. The on-policy loop
calls ``judge.rank`` once per prompt on its K samples and trains on the returned lists unchanged.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ..data.records import RankedList
from ..errors import UsageError

__all__ = ["Judge", "ranking_from_scores", "aggregate_pairwise", "RewardModelJudge", "EnsembleJudge",
           "PreferenceJudge", "AGGREGATIONS"]

AGGREGATIONS = ("copeland", "borda")


@runtime_checkable
class Judge(Protocol):
    """Anything with an ``id`` and ``rank(prompt, candidates) -> RankedList`` (see the module docstring)."""

    id: str

    def rank(self, prompt, candidates: Sequence) -> RankedList:
        ...


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _check_tolerance(tie_tolerance) -> float:
    """``tie_tolerance`` as a float, or a UsageError: a negative one would split exact ties, NaN would tie all."""
    if isinstance(tie_tolerance, bool) or not isinstance(tie_tolerance, numbers.Real) or not (
            math.isfinite(tie_tolerance) and tie_tolerance >= 0):
        raise UsageError(f"tie_tolerance must be a finite number >= 0, got {tie_tolerance!r}")
    return float(tie_tolerance)


def _check_reward_model(model, judge: str):
    from .model import RewardModel

    if not isinstance(model, RewardModel):
        raise UsageError(f"{judge} needs a rankalign.reward.RewardModel, got {type(model).__name__}",
                         hint="RewardModel(backbone) or rankalign.reward.load(path)[0]")


def _dense_ranks(scores: np.ndarray, tolerance: float) -> list[int]:
    """Rank 0 for the highest score; a candidate within ``tolerance`` of the previous one (sorted) ties with it."""
    order = np.argsort(-scores, kind="stable")
    ranks = [0] * len(scores)
    rank = 0
    for position, index in enumerate(order):
        if position and scores[order[position - 1]] - scores[index] > tolerance:
            rank += 1
        ranks[int(index)] = rank
    return ranks


def _confidence(ranks: Sequence[int], probabilities: np.ndarray) -> float:
    pairs = [probabilities[i, j] for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]]
    return float(np.mean(pairs)) if pairs else 1.0


def ranking_from_scores(judge_id: str, prompt, candidates: Sequence, scores, *, tie_tolerance: float = 0.0,
                        probabilities: np.ndarray | None = None, meta: dict | None = None) -> RankedList:
    """The :class:`RankedList` a judge returns, from one score per candidate (higher is better).

    Candidates whose sorted scores differ by at most ``tie_tolerance`` tie. ``probabilities`` ``[K, K]``
    (default ``sigma(s_i - s_j)``) give the confidence.
    """
    tie_tolerance = _check_tolerance(tie_tolerance)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(candidates),):
        raise ValueError(f"{len(candidates)} candidates but scores of shape {scores.shape}")
    ranks = _dense_ranks(scores, tie_tolerance)
    if probabilities is None:
        probabilities = _sigmoid(scores[:, None] - scores[None, :])
    info = {"judge": judge_id, "confidence": _confidence(ranks, np.asarray(probabilities, dtype=np.float64)),
            **(meta or {})}
    return RankedList(prompt=prompt, candidates=list(candidates), ranks=ranks, scores=[float(s) for s in scores],
                      annotator=judge_id, meta=info)


def aggregate_pairwise(probabilities, method: str = "copeland") -> np.ndarray:
    """One score per candidate from a ``[K, K]`` matrix ``P[i, j] = P(i > j)`` (need not be transitive).

    * ``"copeland"``: pairwise majority wins, ``sum_{j != i} [P_ij > 1/2] + 1/2 [P_ij = 1/2]``
      (Copeland's method); a 3-cycle gives its members equal scores, i.e. a tie;
    * ``"borda"``: expected wins, ``sum_{j != i} P_ij`` (the Borda count of the probabilities).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"probabilities must be [K, K], got {p.shape}")
    if not np.all((p >= 0) & (p <= 1)):  # NaN fails too
        raise UsageError(f"probabilities must lie in [0, 1], got {float(p[~((p >= 0) & (p <= 1))][0])}")
    off = ~np.eye(p.shape[0], dtype=bool)
    if method == "copeland":
        return np.where(off, (p > 0.5) + 0.5 * (p == 0.5), 0.0).sum(1)
    if method == "borda":
        return np.where(off, p, 0.0).sum(1)
    raise ValueError(f"unknown aggregation {method!r}; choose one of {', '.join(AGGREGATIONS)}")


def _single_list(prompt, candidates) -> RankedList:
    if isinstance(candidates, (str, bytes, Mapping)) or not isinstance(candidates, Sequence):
        raise UsageError(f"candidates must be a list of responses, got {type(candidates).__name__}"
                         + (" (one string: wrap it in a list)" if isinstance(candidates, str) else ""))
    if not candidates:
        raise ValueError("a judge needs at least one candidate")
    return RankedList(prompt=prompt, candidates=list(candidates), ranks=[0] * len(candidates))


def _model_name(model) -> str:
    config = getattr(model.backbone, "config", None)
    return str(getattr(config, "_name_or_path", "") or type(model.backbone).__name__)


class RewardModelJudge:
    """Ranks candidates by a scalar reward model's scores (:func:`~rankalign.reward.score_lists`).

    Parameters
    ----------
    model, tokenizer : a :class:`~rankalign.reward.RewardModel` (scalar or ensemble mean) and its tokenizer.
    id : str, optional
        Default ``"rm:<backbone name>"``.
    tie_tolerance : float
        Scores within this distance tie (0: only exact ties).
    max_length : int, optional
        Token cap per prompt + response.
    """

    def __init__(self, model, tokenizer, *, id: str | None = None, tie_tolerance: float = 0.0,
                 max_length: int | None = None):
        _check_reward_model(model, "RewardModelJudge")
        if model.preference_dim is not None:
            raise ValueError("a general preference model has no scalar reward; use PreferenceJudge")
        self.model, self.tokenizer = model, tokenizer
        self.id = id or f"rm:{_model_name(model)}"
        self.tie_tolerance, self.max_length = _check_tolerance(tie_tolerance), max_length

    def rank(self, prompt, candidates: Sequence) -> RankedList:
        from .model import score_lists

        scores = score_lists(self.model, self.tokenizer, [_single_list(prompt, candidates)],
                             max_length=self.max_length)[0].double().numpy()
        return ranking_from_scores(self.id, prompt, candidates, scores, tie_tolerance=self.tie_tolerance)


class EnsembleJudge:
    """Ranks by an ensemble's conservative score ``mean - k std`` (:func:`~rankalign.reward.ensemble_scores`).

    ``meta`` carries each candidate's ``mean`` and ``std``: a large spread flags a candidate the heads
    disagree on (out of distribution, or exploiting one head). The confidence uses
    ``P(i > j) = sigma(c_i - c_j)`` on the conservative scores c.
    """

    def __init__(self, model, tokenizer, *, k: float = 1.0, id: str | None = None, tie_tolerance: float = 0.0,
                 max_length: int | None = None):
        _check_reward_model(model, "EnsembleJudge")
        if model.ensemble_size < 2:
            raise ValueError("EnsembleJudge needs a model with ensemble_size >= 2")
        if isinstance(k, bool) or not isinstance(k, numbers.Real) or not math.isfinite(k):
            raise UsageError(f"k must be a finite number (the score is mean - k std), got {k!r}")
        self.model, self.tokenizer, self.k = model, tokenizer, float(k)
        self.id = id or f"ensemble{model.ensemble_size}:k={self.k:g}:{_model_name(model)}"
        self.tie_tolerance, self.max_length = _check_tolerance(tie_tolerance), max_length

    def rank(self, prompt, candidates: Sequence) -> RankedList:
        from .model import ensemble_scores

        result = ensemble_scores(self.model, self.tokenizer, [_single_list(prompt, candidates)], k=self.k,
                                 max_length=self.max_length)[0]
        return ranking_from_scores(self.id, prompt, candidates, result["conservative"].numpy(),
                                   tie_tolerance=self.tie_tolerance,
                                   meta={"mean": result["mean"].tolist(), "std": result["std"].tolist()})


class PreferenceJudge:
    """Ranks from pairwise probabilities ``P(i > j)``, which may be intransitive, aggregated into a ranking.

    ``model`` is a general preference :class:`~rankalign.reward.RewardModel` (or a scalar one, whose
    probabilities are Bradley-Terry); the K x K matrix comes from
    :func:`~rankalign.reward.preference_probabilities` and is aggregated by :func:`aggregate_pairwise`
    (``copeland`` by default: a preference cycle becomes a tie). ``meta["pairwise"]`` keeps the matrix.
    """

    def __init__(self, model, tokenizer, *, aggregate: str = "copeland", id: str | None = None,
                 max_length: int | None = None):
        _check_reward_model(model, "PreferenceJudge")
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregate!r}; choose one of {', '.join(AGGREGATIONS)}")
        self.model, self.tokenizer, self.aggregate = model, tokenizer, aggregate
        self.id = id or f"gpm:{aggregate}:{_model_name(model)}"
        self.max_length = max_length

    def rank(self, prompt, candidates: Sequence) -> RankedList:
        from .model import preference_probabilities

        matrix = preference_probabilities(self.model, self.tokenizer, [_single_list(prompt, candidates)],
                                          max_length=self.max_length)[0].double().numpy()
        scores = aggregate_pairwise(matrix, self.aggregate)
        return ranking_from_scores(self.id, prompt, candidates, scores, probabilities=matrix,
                                   meta={"pairwise": matrix.tolist(), "aggregate": self.aggregate})
