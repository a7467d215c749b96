"""Plackett-Luce with ties: the Davidson-Luce model (Firth, Kosmidis & Turner 2019; R PlackettLuce).

A ranking is a sequence of levels C_1 > C_2 > ... > C_J; items in one level are tied. Each level is
chosen from the items not yet placed, A_j = C_j + C_{j+1} + ..., with probability

    f(C_j) / sum_{k=1}^{min(D, |A_j|)} sum_{S in A_j, |S| = k} f(S),
    f(S) = delta_{|S|} (prod_{i in S} alpha_i)^(1/|S|),   delta_1 = 1,

where D is the largest tie size in the data and alpha_i = exp(theta_i). For paired comparisons with
ties this is Davidson's (1970) model with nu = delta_2. Here *every* level is a choice, including a
bottom level of several items (a tie for last place, as PlackettLuce reads it) -- unlike
:func:`rankalign.stats.fit_plackett_luce` without ties, which reads a bottom group as unordered.

Each stage is a multinomial-logit choice among subsets S with linear predictor
eta_S = log delta_|S| + mean_{i in S} theta_i, so the log-likelihood, gradient and Hessian come from
one sparse design matrix J (subsets x parameters): gradient J^T w (y - p), Hessian
-(J^T diag(w p) J - G^T diag(w) G) with G the per-stage expectation of J's rows. The number of subsets
grows as |A|^D, so this is meant for short rankings or low tie orders (as in PlackettLuce itself).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy import sparse
from scipy.special import ndtri

from rankalign.data.errors import DataError

from . import _newton
from ._sufficient import check_identifiable, check_penalties
from .plackett_luce import _item_index, _ranking_weights
from .result import RatingResult


def _levels(ranking, row, n_items):
    levels = []
    seen = set()
    for position, level in enumerate(ranking):
        members = list(level) if isinstance(level, (list, tuple, set, frozenset, np.ndarray)) else [level]
        members = [int(m) for m in members]
        for item in members:
            if item in seen:
                raise DataError(f"item {item} appears twice in the ranking", line=row + 1,
                                field=f"ranking[{position}]", reason="duplicate_candidate")
            if not 0 <= item < n_items:
                raise DataError(f"item index {item} outside 0..{n_items - 1}", line=row + 1,
                                field=f"ranking[{position}]", reason="unknown_item")
            seen.add(item)
        if members:
            levels.append(members)
    return levels


def _design(rankings, weights, n_items):
    """Enumerate every stage's alternatives; return the design and the largest tie order D."""
    all_levels = [_levels(r, row, n_items) for row, r in enumerate(rankings)]
    max_tie = max((len(level) for levels in all_levels for level in levels), default=1)
    n_params = n_items + max_tie - 1
    rows, cols, vals = [], [], []
    stage_start, chosen, stage_weight = [], [], []
    alternative = 0
    for levels, weight in zip(all_levels, weights):
        if weight <= 0:
            continue
        for j, level in enumerate(levels):
            remaining = [item for later in levels[j:] for item in later]
            if len(remaining) == 1:
                continue  # a last single item is placed with probability 1
            stage_start.append(alternative)
            stage_weight.append(weight)
            target = frozenset(level)
            for k in range(1, min(max_tie, len(remaining)) + 1):
                for subset in combinations(remaining, k):
                    rows.extend([alternative] * k)
                    cols.extend(subset)
                    vals.extend([1.0 / k] * k)
                    if k > 1:
                        rows.append(alternative)
                        cols.append(n_items + k - 2)
                        vals.append(1.0)
                    if k == len(target) and frozenset(subset) == target:
                        chosen.append(alternative)
                    alternative += 1
    if not stage_start:
        raise DataError("no ranking orders two or more items", reason="empty")
    design = sparse.csr_matrix((vals, (rows, cols)), shape=(alternative, n_params))
    return (design, np.asarray(stage_start), np.asarray(chosen), np.asarray(stage_weight, dtype=np.float64),
            max_tie, all_levels)


def _objective(n_items, design, stage_start, chosen, stage_weight, prior):
    n_alternatives, n_params = design.shape
    stage_of = np.repeat(np.arange(len(stage_start)), np.diff(np.append(stage_start, n_alternatives)))
    alt_weight = stage_weight[stage_of]
    indicator = np.zeros(n_alternatives)
    np.add.at(indicator, chosen, stage_weight)
    design_t = design.T.tocsr()
    dense = n_params <= _newton.DENSE_LIMIT

    def objective(x, order):
        theta = x[:n_items]
        eta = design @ x
        top = np.maximum.reduceat(eta, stage_start)
        shifted = np.exp(eta - top[stage_of])
        log_norm = top + np.log(np.add.reduceat(shifted, stage_start))
        value = float(stage_weight @ (eta[chosen] - log_norm)) - prior * float(theta @ theta)
        if order == 0:
            return value, None, None
        p = shifted / np.exp(log_norm - top)[stage_of]
        gradient = design_t @ (indicator - alt_weight * p)
        gradient[:n_items] -= 2.0 * prior * theta
        if order == 1:
            return value, gradient, None
        weighted = design.multiply((alt_weight * p)[:, None]).tocsr()
        expectation = sparse.csr_matrix((p, (stage_of, np.arange(n_alternatives))),
                                        shape=(len(stage_start), n_alternatives)) @ design
        hessian = -(design_t @ weighted) + expectation.T @ expectation.multiply(stage_weight[:, None]).tocsr()
        diagonal = np.zeros(n_params)
        diagonal[:n_items] = -2.0 * prior
        hessian = hessian + sparse.diags(diagonal)
        return value, gradient, (hessian.toarray() if dense else hessian.tocsr())

    return objective


def fit_davidson_luce(rankings, weights=None, *, n_items=None, items=None, prior=0.0, npseudo=0.0,
                      reference=None, ci_level=0.95, check=True) -> RatingResult:
    """Plackett-Luce with ties of any order (Davidson-Luce), by maximum likelihood or MAP.

    Parameters
    ----------
    rankings : sequence of sequences
        Levels best first; a level is an item index or a list of tied item indices.
    weights, n_items, items, prior, npseudo, reference, ci_level
        As in :func:`rankalign.stats.fit_plackett_luce` (``npseudo`` adds pair rankings won and lost
        against a hypothetical item at log-worth 0; with ties they can also be tied, as in PlackettLuce).

    Returns
    -------
    RatingResult
        ``model="davidson-luce"``; ``params["tie2"]``, ``params["tie3"]``, ... are log delta_k with
        ``tie<k>_se``; ``params["max_tie"]`` is D. With a single tie order this is PlackettLuce's
        ``coef()`` (log-worths, then log tie parameters).
    """
    rankings = list(rankings)
    if not rankings:
        raise DataError("no rankings", reason="empty")
    check_penalties(prior, npseudo)
    weights = _ranking_weights(weights, len(rankings))
    if items is not None and n_items is None:
        n_items = len(items)
    if n_items is None:
        n_items = 1 + max(_item_index(i, row, position) for row, r in enumerate(rankings)
                          for position, i in enumerate(
                              i for level in r
                              for i in (level if isinstance(level, (list, tuple, set, frozenset)) else [level])))
    items = [str(i) for i in range(n_items)] if items is None else [str(i) for i in items]
    if n_items < 2:
        raise DataError(f"need at least two items to rate, got {n_items}")
    # pseudo-rankings (PlackettLuce's npseudo): each item wins and loses npseudo times against a ghost
    # item at log-worth 0; they are ordinary pair rankings, so with ties (D >= 2) their normaliser has
    # the tie alternative too, as in PlackettLuce
    ghost = n_items if npseudo > 0 else None
    n_fit = n_items + (ghost is not None)
    fit_rankings, fit_weights = rankings, weights
    if ghost is not None:
        fit_rankings = rankings + [[i, ghost] for i in range(n_items)] + [[ghost, i] for i in range(n_items)]
        fit_weights = np.concatenate([weights, np.full(2 * n_items, float(npseudo))])
    data_design, data_starts, data_chosen, data_weights, max_tie, all_levels = _design(rankings, weights, n_fit)
    if ghost is None:
        design, stage_start, chosen, stage_weight = data_design, data_starts, data_chosen, data_weights
    else:
        design, stage_start, chosen, stage_weight, _, _ = _design(fit_rankings, fit_weights, n_fit)
    _newton.check_items(items)
    _newton.check_ci_level(ci_level)
    ref_index = _newton.reference_index(reference, items)
    regularised = prior > 0 or ghost is not None
    if check and not regularised:
        winners, losers = [], []
        for levels in all_levels:
            for j, level in enumerate(levels):
                for a in level:
                    for b in level:
                        if a != b:
                            winners.append(a)
                            losers.append(b)
                if j + 1 < len(levels):
                    for a in level:
                        for b in levels[j + 1]:
                            winners.append(a)
                            losers.append(b)
        check_identifiable(n_items, winners, losers, items, what="rankings")
    n_params = n_fit + max_tie - 1
    fixed = ghost if ghost is not None else (None if prior > 0 else 0)
    free = np.delete(np.arange(n_params), [] if fixed is None else [fixed])
    objective = _objective(n_fit, design, stage_start, chosen, stage_weight, prior)
    x, _, _, hessian, iterations = _newton.maximise(objective, np.zeros(n_params), free)
    names = [f"the rating of {item!r}" for item in items] + (["the ghost item"] if ghost is not None else [])
    names += [f"log delta{k}, the Davidson-Luce tie parameter (nu) for {k}-way ties" for k in range(2, max_tie + 1)]
    _newton.require_identified(x, hessian, free, names[:n_params],
                               {i: "every ranking ties these items" for i in range(n_fit, n_params)})
    data_objective = _objective(n_fit, data_design, data_starts, data_chosen, data_weights, 0.0)
    log_likelihood = data_objective(x, 0)[0]
    se_free = free
    if ghost is not None and prior == 0:  # as PlackettLuce's vcov: information of the data alone
        hessian = data_objective(x, 2)[2]
        se_free = np.delete(np.arange(n_params), [0 if ref_index is None else ref_index, ghost])
    keep = np.delete(np.arange(n_params), [] if ghost is None else [ghost])
    n_out = len(keep)
    estimate = _newton.apply_gauge(x[keep], n_items, ref_index)
    if n_params <= _newton.DENSE_LIMIT:
        cov = _newton.covariance(hessian, se_free, n_params)[np.ix_(keep, keep)]
        a = _newton.gauge_matrix(n_items, n_out, ref_index)
        cov = a @ cov @ a.T
        se = np.sqrt(np.maximum(np.diag(cov), 0.0))
        cov_items = cov[:n_items, :n_items]
    else:
        se, cov_items = np.full(n_out, np.nan), None
    z = ndtri(0.5 + ci_level / 2.0)
    params = {"max_tie": int(max_tie)}
    for k in range(2, max_tie + 1):
        params[f"tie{k}"] = float(estimate[n_items + k - 2])
        params[f"tie{k}_se"] = float(se[n_items + k - 2])
    if npseudo:
        params["npseudo"] = float(npseudo)
    appearances = np.zeros(n_items)
    for levels, w in zip(all_levels, weights):
        for level in levels:
            appearances[level] += w
    ratings = estimate[:n_items]
    return RatingResult(items=items, ratings=ratings, se=se[:n_items], ci_low=ratings - z * se[:n_items],
                        ci_high=ratings + z * se[:n_items], n=np.rint(appearances).astype(np.int64),
                        log_likelihood=float(log_likelihood), model="davidson-luce", scale="logit",
                        reference=None if ref_index is None else items[ref_index], prior=float(prior),
                        ci_level=ci_level, ci_method="wald", params=params, covariance=cov_items,
                        iterations=iterations)
