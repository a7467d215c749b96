"""The result of a rating fit: ratings, uncertainty, model parameters, predictions, JSON."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.special import expit, log_ndtr

ELO_SCALE = 400.0 / math.log(10.0)
ELO_OFFSET = 1000.0


def davidson_probabilities(d, nu):
    """Davidson (1970): P(win), P(tie), P(loss) for log-strength difference ``d`` and tie parameter nu.

    With pi = exp(theta): P(i > j) = pi_i / (pi_i + pi_j + nu sqrt(pi_i pi_j)), P(tie) = nu sqrt(pi_i pi_j) / (...).
    Dividing by sqrt(pi_i pi_j) gives the softmax of (d/2, -d/2, log nu) used here.
    """
    z = np.stack(np.broadcast_arrays(np.asarray(d, float) / 2, -np.asarray(d, float) / 2,
                                     np.full(np.shape(d), math.log(nu))))
    z = z - z.max(axis=0)
    e = np.exp(z)
    p = e / e.sum(axis=0)
    return p[0], p[2], p[1]


def rao_kupper_probabilities(d, theta):
    """Rao & Kupper (1967): P(i > j) = pi_i / (pi_i + theta pi_j), P(tie) = 1 - P(i > j) - P(j > i), theta >= 1."""
    t = math.log(theta)
    win = expit(np.asarray(d, float) - t)
    loss = expit(-np.asarray(d, float) - t)
    return win, 1.0 - win - loss, loss


# models whose pairwise probability is the logistic sigma(d)
_LOGISTIC_MODELS = ("bradley-terry", "plackett-luce", "davidson-luce", "elo", "bt", "pl")


def pair_probabilities(model, d, params):
    """(P(first wins), P(tie), P(second wins)) for strength difference ``d`` under ``model``.

    Davidson-Luce with ties (``params["tie2"]`` = log delta_2) compares two items as Davidson's model with
    nu = delta_2 (a ranking of two is one choice among {i}, {j} and the tied {i, j}); without ties it is
    Plackett-Luce, whose pairwise probability is sigma(d).
    """
    d = np.asarray(d, dtype=np.float64)
    if model == "davidson-luce" and "tie2" in params:
        return davidson_probabilities(d, math.exp(params["tie2"]))
    if model == "davidson":
        if not params["nu"] >= 0:
            raise ValueError(f"the Davidson tie parameter nu must be >= 0, got {params['nu']!r}")
        return davidson_probabilities(d, params["nu"])
    if model == "rao-kupper":
        if not params["theta"] >= 1:
            raise ValueError(f"the Rao-Kupper tie parameter theta must be >= 1, got {params['theta']!r}")
        return rao_kupper_probabilities(d, params["theta"])
    if model == "thurstone":
        win = np.exp(log_ndtr(d))
        return win, np.zeros_like(d), 1.0 - win
    if model not in _LOGISTIC_MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of "
                         f"{', '.join(('davidson', 'rao-kupper', 'thurstone', *_LOGISTIC_MODELS))}")
    win = expit(d)  # Bradley-Terry, Plackett-Luce (pairwise marginal), Elo
    return win, np.zeros_like(d), 1.0 - win


@dataclass
class RatingResult:
    """Ratings of items with their uncertainty, from any of the models in :mod:`rankalign.stats`.

    Attributes
    ----------
    items : list of str
        Item names, in index order.
    ratings : float array [n]
        Log-strengths theta (logit scale for BT/Davidson/Rao-Kupper/PL, probit scale for Thurstone),
        in the gauge named by ``reference`` (None: mean zero; an item name: that item at 0).
    se : float array [n]
        Standard errors in that gauge (NaN when not computed). The reference item has se 0.
    ci_low, ci_high : float arrays [n]
        Confidence interval (``ci_method`` "wald": rating -/+ z se; "bootstrap": percentile interval).
    n : int array [n]
        Number of comparisons each item took part in, weighted (record weights, counts) and rounded; for
        Plackett-Luce, the rankings it appears in; for a pairwise model fitted to rankings, the pairs the
        rankings imply.
    log_likelihood : float
        Data log-likelihood at the estimate (prior or pseudo-data terms not included).
    model : str
    scale : str
        "logit" (or "probit" for Thurstone); :meth:`to_scale` ("elo") rescales.
    params : dict
        Other estimates: ``home`` (order effect h), ``weights`` (covariate weights w), ``nu`` (Davidson),
        ``theta`` (Rao-Kupper), with their standard errors as ``<name>_se``.
    covariance : float array [n, n], optional
        Covariance of ``ratings`` in the same gauge.
    anchor : (str, float), optional
        Set by :meth:`anchored`: that item's rating is fixed at that value on this scale (LMSYS anchors
        one model at a fixed Elo); the ratings, intervals and differences are otherwise unchanged.
    """

    items: list
    ratings: np.ndarray
    se: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    n: np.ndarray
    log_likelihood: float
    model: str
    scale: str = "logit"
    reference: str | None = None
    prior: float = 0.0
    ci_level: float = 0.95
    ci_method: str = "wald"
    params: dict = field(default_factory=dict)
    covariance: np.ndarray | None = None
    iterations: int = 0
    anchor: tuple | None = None
    # what a refit needs (raw parameter vector, free coordinates, the data): used by the bootstrap
    state: dict = field(default_factory=dict, repr=False, compare=False)

    def index(self, item) -> int:
        try:
            return self.items.index(item)
        except ValueError:
            raise KeyError(f"unknown item {item!r}") from None

    def _logit(self, values):
        values = np.asarray(values, dtype=np.float64)
        return (values - ELO_OFFSET) / ELO_SCALE if self.scale == "elo" else values

    def predict_proba(self, a, b, *, home: bool = False) -> dict[str, float]:
        """Predicted probabilities that ``a`` beats, ties with, or loses to ``b``.

        ``home=True`` adds the order (home) effect for ``a``. Under BT/Thurstone/PL the tie probability
        is 0 (a tie there was scored as half a win for each side).
        """
        theta = self._logit(self.ratings)
        d = theta[self.index(a)] - theta[self.index(b)]
        if home:
            d += self.params.get("home", 0.0)
        win, tie, loss = pair_probabilities(self.model, d, self.params)
        return {"win": float(win), "tie": float(tie), "loss": float(loss)}

    def win_matrix(self, *, tie_credit: float = 0.0) -> np.ndarray:
        """Predicted P(row item beats column item) on neutral ground; the diagonal is NaN.

        ``tie_credit=0.5`` gives the expected score P(win) + P(tie) / 2 instead, the quantity an observed
        win rate that counts a tie as half a win estimates (it differs from P(win) only under the tie
        models: Davidson, Rao-Kupper, Davidson-Luce).
        """
        theta = self._logit(self.ratings)
        win, tie, _ = pair_probabilities(self.model, theta[:, None] - theta[None, :], self.params)
        win = np.array(win + tie_credit * tie, dtype=np.float64)
        np.fill_diagonal(win, np.nan)
        return win

    def to_scale(self, scale: str) -> RatingResult:
        """The same result on another scale: "elo" (400/ln 10 · theta + 1000) or back to "logit".

        ``scale`` is "logit", "elo", "probit" or "natural" (the model's own: "probit" for Thurstone,
        "logit" for the others). The Elo scale is a rescaled logit scale, so a Thurstone (probit) result has
        no exact Elo or logit version and asking for one is a ValueError.
        """
        natural = "probit" if self.model == "thurstone" else "logit"
        if scale == "natural":
            scale = natural
        if scale not in ("logit", "elo", "probit"):
            raise ValueError(f"unknown scale {scale!r}; expected 'logit', 'elo', 'probit' or 'natural'")
        if scale == self.scale:
            return self
        if "probit" in (scale, self.scale):
            raise ValueError(f"{self.model} ratings are on the {self.scale} scale and have no exact {scale} "
                             f"version (the Elo scale rescales the logit scale of the logistic models)")
        if scale == "elo":
            factor, offset = ELO_SCALE, ELO_OFFSET
        else:
            factor, offset = 1.0 / ELO_SCALE, -ELO_OFFSET / ELO_SCALE
        cov = None if self.covariance is None else self.covariance * factor ** 2
        anchor = None if self.anchor is None else (self.anchor[0], self.anchor[1] * factor + offset)
        return replace(self, ratings=self.ratings * factor + offset, se=self.se * factor,
                       ci_low=self.ci_low * factor + offset, ci_high=self.ci_high * factor + offset,
                       scale=scale, covariance=cov, anchor=anchor)

    def order(self) -> np.ndarray:
        """Item indices from best to worst rating."""
        return np.argsort(-self.ratings, kind="stable")

    def anchored(self, item, value: float) -> RatingResult:
        """The same result shifted so that ``item`` is rated ``value`` on this scale (a change of gauge:
        differences, standard errors of differences and interval widths are unchanged)."""
        if not math.isfinite(float(value)):
            raise ValueError(f"an anchor value must be finite, got {value!r}")
        shift = float(value) - float(self.ratings[self.index(item)])
        return replace(self, ratings=self.ratings + shift, ci_low=self.ci_low + shift, ci_high=self.ci_high + shift,
                       anchor=(str(item), float(value)))

    def gauge(self) -> str:
        """What fixes the origin of the ratings, in the units shown: "mean 0", "mean 1000" (Elo scale),
        "ITEM = 0" or the anchor "ITEM = VALUE"."""
        if self.anchor is not None:
            return f"{self.anchor[0]} = {self.anchor[1]:g}"
        origin = ELO_OFFSET if self.scale == "elo" else 0.0
        return f"mean {origin:g}" if self.reference is None else f"{self.reference} = {origin:g}"

    def ranks(self) -> np.ndarray:
        """Rank of each item by rating (1 best; equal ratings share the better rank)."""
        ratings = self.ratings
        return 1 + (ratings[None, :] > ratings[:, None]).sum(axis=1)

    def rank_upper_bounds(self) -> np.ndarray:
        """The best rank each item can claim from its interval, as LMSYS's arena leaderboard shows it:
        1 + the number of items whose lower bound is above this item's upper bound (items with
        overlapping intervals are not ranked apart). Without intervals (NaN: not computed, e.g. above
        ``DENSE_LIMIT`` items) there is no uncertainty to widen the rank, so an item's bound is its rank."""
        bounds = 1 + (self.ci_low[None, :] > self.ci_high[:, None]).sum(axis=1)
        unknown = ~(np.isfinite(self.ci_low) & np.isfinite(self.ci_high))
        if unknown.any():
            bounds = np.where(unknown, self.ranks(), bounds)
        return bounds

    def to_dataframe(self):
        """The leaderboard as a ``pandas.DataFrame`` (best first): item, rank, rank_ub, rating, se,
        ci_low, ci_high, n. Needs pandas (not a dependency of rankalign)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("RatingResult.to_dataframe needs pandas: pip install pandas") from None
        order = self.order()
        ranks, upper = self.ranks(), self.rank_upper_bounds()
        return pd.DataFrame({"item": [str(self.items[i]) for i in order], "rank": ranks[order],
                             "rank_ub": upper[order], "rating": self.ratings[order], "se": self.se[order],
                             "ci_low": self.ci_low[order], "ci_high": self.ci_high[order], "n": self.n[order]})

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object of DESIGN.md: model, scale, log_likelihood, items (sorted best first, ``rank`` 1 = best)."""

        def number(x):
            x = float(x)
            return x if math.isfinite(x) else None

        ranks, upper = self.ranks(), self.rank_upper_bounds()
        out: dict[str, Any] = {
            "model": self.model,
            "scale": self.scale,
            "gauge": self.gauge(),
            "log_likelihood": float(self.log_likelihood),
            "items": [{"item": str(self.items[i]), "rank": int(ranks[i]), "rank_ub": int(upper[i]),
                       "rating": number(self.ratings[i]), "ci_low": number(self.ci_low[i]),
                       "ci_high": number(self.ci_high[i]), "n": int(self.n[i]), "se": number(self.se[i])}
                      for i in self.order()],
            "reference": self.reference,
            "anchor": None if self.anchor is None else {"item": self.anchor[0], "rating": self.anchor[1]},
            "prior": self.prior,
            "ci_level": self.ci_level,
            "ci_method": self.ci_method,
        }
        for key, value in self.params.items():
            if isinstance(value, np.ndarray):
                out[key] = [number(v) for v in value]
            elif isinstance(value, (list, tuple)):
                out[key] = list(value)
            else:
                out[key] = number(value) if isinstance(value, (float, int, np.floating)) else value
        return out

    def to_json(self, **kwargs) -> str:
        """:meth:`to_dict` as one JSON object."""
        return json.dumps(self.to_dict(), **kwargs)
