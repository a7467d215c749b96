"""Plackett-Luce ratings from complete, partial and top-k rankings, and Luce choice for best-of-K.

Model (Plackett 1975, Luce 1959): a ranking ``o_0 > o_1 > ... > o_{L-1}`` of a subset of the items is a
sequence of choices, each stage picking the best of the items not yet chosen:

    P = prod_{s < k} exp(theta_{o_s}) / sum_{j >= s} exp(theta_{o_j})

with ``k = L - 1`` stages for a complete ranking of the L items. A *top-k* ranking (``k`` items ordered,
the rest of the set left unordered below them) keeps only the first ``k`` stages, each still choosing
from everything not yet chosen; a best-of-K *choice* is the case ``k = 1`` (Luce's choice axiom: the
winner over the whole set). Ties inside a ranking (two items sharing a level above the bottom) are
rejected with a clear error here; :func:`rankalign.stats.fit_davidson_luce` fits the Davidson-Luce
generalisation used by the R package PlackettLuce (``rankalign rate --model pl --ties davidson-luce``). Note that PlackettLuce reads a bottom group of several items as a *tie*, while
we read it as "not ordered among themselves" (top-k), as :class:`rankalign.data.RankedList` documents.

Fitting is Newton's method with the exact Hessian of the log-likelihood, vectorised over rankings of
the same length (one Python loop over the few stages). Gauge, prior and standard errors follow
:mod:`rankalign.stats.pairwise`; in addition ``npseudo`` reproduces PlackettLuce's pseudo-rankings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.special import expit, ndtri

from rankalign.data.errors import DataError

from . import _newton
from ._sufficient import as_vector, check_identifiable, check_penalties
from .result import RatingResult


def _item_index(item, row, position) -> int:
    """An item index as an int; a DataError for anything that is not a whole number (2.7, "a", True, nan)."""
    if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer, float, np.floating)):
        raise DataError(f"item indices are whole numbers, got {item!r}", line=row + 1,
                        field=f"ranking[{position}]", reason="bad_type")
    if isinstance(item, (float, np.floating)) and not (np.isfinite(item) and float(item).is_integer()):
        raise DataError(f"item indices are whole numbers, got {float(item)!r}", line=row + 1,
                        field=f"ranking[{position}]", reason="bad_type")
    return int(item)


def _normalise_ranking(ranking, row, n_items):
    """Return (order list, number of stages) for one ranking given as a list of levels."""
    if isinstance(ranking, (str, bytes)) or not isinstance(ranking, Sequence):
        raise DataError("a ranking must be a list of items (best first)", line=row + 1, field="ranking",
                        reason="bad_type")
    levels = [list(level) if isinstance(level, (list, tuple, set, frozenset, np.ndarray)) else [level]
              for level in ranking]
    levels = [level for level in levels if level]
    order = [_item_index(item, row, position)
             for position, item in enumerate(item for level in levels for item in level)]
    if len(order) != len(set(order)):
        seen = set()
        for position, item in enumerate(order):
            if item in seen:
                raise DataError(f"item {item} appears twice in the ranking", line=row + 1,
                                field=f"ranking[{position}]", reason="duplicate_candidate")
            seen.add(item)
    for position, item in enumerate(order):
        if not 0 <= item < n_items:
            raise DataError(f"item index {item} outside 0..{n_items - 1}", line=row + 1,
                            field=f"ranking[{position}]", reason="unknown_item")
    for position, level in enumerate(levels[:-1]):
        if len(level) > 1:
            raise DataError(
                f"items {level} are tied inside the ranking (level {position}); plain Plackett-Luce allows "
                "only an unordered bottom group: fit ties with fit_davidson_luce (rankalign rate --ties "
                "davidson-luce)", line=row + 1, field="ranking",
                reason="tie_in_ranking")
    # every level but the last is a choice stage; the last is either a forced single item or the
    # unordered bottom group, which is only ever chosen from
    return order, len(levels) - 1


def rankings_to_arrays(rankings, weights=None, *, n_items=None):
    """Group rankings by (length, stages) into padded index arrays.

    Returns ``(n_items, groups)`` with ``groups`` a list of ``(orders [R, L] int64, stages, weights [R])``.
    Rankings with fewer than one stage (a single item, or only an unordered group) carry no information
    and are dropped.
    """
    if isinstance(rankings, np.ndarray) and rankings.ndim == 2 and np.issubdtype(rankings.dtype, np.integer):
        return _complete_rankings_array(rankings, weights, n_items)
    rankings = list(rankings)
    if not rankings:
        raise DataError("no rankings", reason="empty")
    if all(isinstance(r, (list, tuple)) for r in rankings[:1000]):
        try:
            array = np.array(rankings)
        except ValueError:  # ragged
            array = None
        if array is not None and array.ndim == 2 and np.issubdtype(array.dtype, np.integer):
            return _complete_rankings_array(array, weights, n_items)
    weights = _ranking_weights(weights, len(rankings))
    if n_items is None:  # the largest index named (each ranking checked as below, without the range)
        n_items = 1 + max(max(_normalise_ranking(ranking, row, math.inf)[0], default=-1)
                          for row, ranking in enumerate(rankings))
    buckets: dict[tuple[int, int], tuple[list, list]] = {}
    for row, ranking in enumerate(rankings):
        order, stages = _normalise_ranking(ranking, row, n_items)
        if stages < 1 or weights[row] == 0:
            continue
        bucket = buckets.setdefault((len(order), stages), ([], []))
        bucket[0].append(order)
        bucket[1].append(weights[row])
    if not buckets:
        raise DataError("no ranking orders two or more items", reason="empty")
    groups = [(np.asarray(orders, dtype=np.int64), stages, np.asarray(w, dtype=np.float64))
              for (length, stages), (orders, w) in sorted(buckets.items())]
    return int(n_items), groups


def _ranking_weights(weights, n_rankings: int) -> np.ndarray:
    """Per-ranking weights (default 1), checked: one per ranking, finite, >= 0 (the row is named)."""
    weights = np.ones(n_rankings) if weights is None else as_vector(weights, "weights")
    if len(weights) != n_rankings:
        raise DataError(f"{len(weights)} weights for {n_rankings} rankings", field="weights",
                        reason="length_mismatch")
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        raise DataError(f"weight must be finite and >= 0, got {weights[bad[0]]}", line=int(bad[0]) + 1,
                        field="weight", reason="negative_weight")
    return weights


def _complete_rankings_array(orders, weights, n_items):
    """Fast path: an [R, L] integer array of complete rankings (best first), validated vectorised."""
    orders = np.asarray(orders, dtype=np.int64)
    if orders.shape[0] == 0:
        raise DataError("no rankings", reason="empty")
    if orders.shape[1] < 2:
        raise DataError("no ranking orders two or more items", reason="empty")
    weights = _ranking_weights(weights, len(orders))
    if n_items is None:
        n_items = int(orders.max()) + 1
    bad = np.argwhere((orders < 0) | (orders >= n_items))
    if bad.size:
        row, position = bad[0]
        raise DataError(f"item index {orders[row, position]} outside 0..{n_items - 1}", line=int(row) + 1,
                        field=f"ranking[{position}]", reason="unknown_item")
    ordered = np.sort(orders, axis=1)
    repeated = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
    if repeated.size:
        row = int(repeated[0])
        _normalise_ranking(orders[row].tolist(), row, n_items)  # raises, naming the position
    keep = weights > 0
    return int(n_items), [(orders[keep], orders.shape[1] - 1, weights[keep])]


def _suffix_logsumexp(t):
    """``out[:, s] = log sum_{j >= s} exp(t[:, j])`` (max-shifted cumulative sums; exact fallback)."""
    top = float(t.max()) if t.size else 0.0  # one shift for all rows; rows that underflow are redone
    suffix = np.cumsum(np.exp(t - top)[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(divide="ignore"):
        out = top + np.log(suffix)
    # a suffix far below the shift underflows (the last column is the smallest); redo those rows exactly
    bad = np.flatnonzero(suffix[:, -1] < 1e-250)
    if bad.size:
        out[bad] = np.logaddexp.accumulate(t[bad, ::-1], axis=1)[:, ::-1]
    return out


def _pl_objective(n, groups, prior, npseudo):
    dense = n <= _newton.DENSE_LIMIT
    # index arrays do not depend on theta: build them once
    member_index, pair_keys, pair_slices = [], [], []
    for orders, stages, _ in groups:
        for s in range(stages):
            idx = orders[:, s:]
            member_index.append(idx.ravel())
            upper_a, upper_b = np.triu_indices(idx.shape[1], 1)
            pair_slices.append((upper_a, upper_b))
            pair_keys.append((idx[:, upper_a] * n + idx[:, upper_b]).ravel())
    member_index = np.concatenate(member_index)
    pair_keys = np.concatenate(pair_keys)

    def objective(x, order):
        theta = x
        value = -prior * float(theta @ theta)
        # group weights are read at every call, so a bootstrap can overwrite them in place
        gradient = -2.0 * prior * theta
        if order:
            for orders, stages, weights in groups:
                gradient += np.bincount(orders[:, :stages].ravel(), np.repeat(weights, stages), n)
        diag = np.full(n, -2.0 * prior)
        if npseudo > 0:  # npseudo wins and npseudo losses against a hypothetical item at log-worth 0
            value += npseudo * float(np.sum(theta - 2.0 * np.logaddexp(0.0, theta)))
            p = expit(theta)
            gradient = gradient + npseudo * (1.0 - 2.0 * p)
            diag = diag - 2.0 * npseudo * p * (1.0 - p)
        member_wp, member_wpq, pair_vals = [], [], []
        stage = 0
        for orders, stages, weights in groups:
            t = theta[orders]
            # suffix log-sum-exp: log_norm[:, s] = log sum_{j >= s} exp(t_j)
            log_norm = _suffix_logsumexp(t)[:, :stages]
            value += float(weights @ (t[:, :stages].sum(axis=1) - log_norm.sum(axis=1)))
            if order == 0:
                continue
            for s in range(stages):
                p = np.exp(t[:, s:] - log_norm[:, s:s + 1])  # [R, L - s] choice probabilities
                wp = weights[:, None] * p
                # the stage's Hessian is -(diag(p) - p p^T), weighted: diagonal part, and
                # + w p_a p_b for each unordered pair a < b of the choice set (mirrored below)
                member_wp.append(wp.ravel())
                if order == 2:
                    member_wpq.append((wp * (1.0 - p)).ravel())
                    upper_a, upper_b = pair_slices[stage]
                    pair_vals.append((wp[:, upper_a] * p[:, upper_b]).ravel())
                stage += 1
        if order == 0:
            return value, None, None
        gradient -= np.bincount(member_index, np.concatenate(member_wp), n)
        if order == 1:
            return value, gradient, None
        diag -= np.bincount(member_index, np.concatenate(member_wpq), n)
        vals = np.concatenate(pair_vals)
        if dense:
            upper = np.bincount(pair_keys, vals, n * n).reshape(n, n)
            hessian = upper + upper.T
            hessian[np.diag_indices(n)] += diag
        else:
            rows, cols = pair_keys // n, pair_keys % n
            hessian = sparse.csr_matrix((np.concatenate([vals, vals, diag]),
                                         (np.concatenate([rows, cols, np.arange(n)]),
                                          np.concatenate([cols, rows, np.arange(n)]))), shape=(n, n))
        return value, gradient, hessian

    return objective


def _pl_edges(groups):
    """Winner -> loser edges whose reachability equals that of all implied pairwise wins."""
    winners, losers = [], []
    for orders, stages, _ in groups:
        for s in range(stages):
            if s + 1 < stages:
                winners.append(orders[:, s])
                losers.append(orders[:, s + 1])
            else:  # the last chosen item beats everything left in its set
                for j in range(s + 1, orders.shape[1]):
                    winners.append(orders[:, s])
                    losers.append(orders[:, j])
    return np.concatenate(winners), np.concatenate(losers)


def fit_plackett_luce(rankings, weights=None, *, n_items=None, items=None, prior=0.0, npseudo=0.0,
                      reference=None, ci_level=0.95, start=None, check=True) -> RatingResult:
    """Plackett-Luce ratings (log-worths) by maximum likelihood, MAP, or with pseudo-rankings.

    Parameters
    ----------
    rankings : sequence of sequences
        Each ranking lists item indices best first. An element may be a list/tuple/set of items, which
        is only allowed as the *last* element: an unordered bottom group (top-k ranking; ``[w, [a, b, c]]``
        is a best-of-4 choice of ``w``). See the module docstring for the likelihood.
    weights : float array, optional
        Multiplicity of each ranking (e.g. the counts of a PrefLib .soc file).
    n_items, items : optional
        Number of items / their names.
    prior : float
        alpha of the penalty ``alpha * sum theta^2`` (Gaussian prior N(0, 1/(2 alpha)) per log-worth).
    npseudo : float
        PlackettLuce's pseudo-rankings (R ``PlackettLuce(npseudo = ...)``, whose default is 0.5):
        each item gets ``npseudo`` wins and ``npseudo`` losses against a hypothetical item whose log-worth
        is fixed at 0, which connects any network. 0 (our default) gives the exact MLE, as
        ``PlackettLuce(npseudo = 0)`` does.
    reference : str or int, optional
        Item fixed at 0. ``coef()`` of PlackettLuce reports log-worths with the first item as reference.
        Default: mean-zero log-worths.

    Returns
    -------
    RatingResult
        ``n`` counts the (weighted) rankings each item appears in; ``log_likelihood`` excludes prior and
        pseudo-data terms. With ``npseudo > 0`` the standard errors come from the observed information
        of the data alone (pseudo-rankings excluded), as PlackettLuce's ``vcov`` reports them.
    """
    check_penalties(prior, npseudo)
    if items is not None and n_items is None:
        n_items = len(items)
    n, groups = rankings_to_arrays(rankings, weights, n_items=n_items)
    items = [str(i) for i in range(n)] if items is None else [str(i) for i in items]
    if n < 2:
        raise DataError(f"need at least two items to rate, got {n}")
    _newton.check_items(items)
    _newton.check_ci_level(ci_level)
    ref_index = _newton.reference_index(reference, items)
    regularised = prior > 0 or npseudo > 0
    if check and not regularised:
        winners, losers = _pl_edges(groups)
        check_identifiable(n, winners, losers, items, what="rankings")
    free = None if regularised else np.arange(1, n)
    objective = _pl_objective(n, groups, prior, npseudo)
    x0 = np.zeros(n) if start is None else np.array(start, dtype=np.float64)
    x, _, _, hessian, iterations = _newton.maximise(objective, x0, free)
    if check:
        _newton.require_identified(x, hessian, free, [f"the rating of {item!r}" for item in items])
    log_likelihood = _pl_objective(n, groups, 0.0, 0.0)(x, 0)[0]
    appearances = np.zeros(n)
    for orders, _, w in groups:
        appearances += np.bincount(orders.ravel(), np.repeat(w, orders.shape[1]), n)
    estimate = _newton.apply_gauge(x, n, ref_index)
    if npseudo > 0 and prior == 0:
        # PlackettLuce's vcov: observed information of the data alone (pseudo-rankings left out) at the
        # estimate, with one item fixed (the data alone identify only differences)
        hessian = _pl_objective(n, groups, 0.0, 0.0)(x, 2)[2]
        se_free = np.delete(np.arange(n), 0 if ref_index is None else ref_index)
    else:
        se_free = free
    if n <= _newton.DENSE_LIMIT:
        cov = _newton.covariance(hessian, se_free, n)
        a = _newton.gauge_matrix(n, n, ref_index)
        cov = a @ cov @ a.T
        se = np.sqrt(np.maximum(np.diag(cov), 0.0))
    else:
        cov, se = None, np.full(n, np.nan)
    z = ndtri(0.5 + ci_level / 2.0)
    return RatingResult(items=items, ratings=estimate, se=se, ci_low=estimate - z * se,
                        ci_high=estimate + z * se, n=np.rint(appearances).astype(np.int64),
                        log_likelihood=float(log_likelihood), model="plackett-luce", scale="logit",
                        reference=None if ref_index is None else items[ref_index], prior=float(prior),
                        ci_level=ci_level, ci_method="wald",
                        params={"npseudo": float(npseudo)} if npseudo else {}, covariance=cov,
                        iterations=iterations,
                        state={"x": x, "free": free, "groups": groups, "ref_index": ref_index,
                               "npseudo": npseudo})


def fit_luce_choice(winners, choice_sets, weights=None, **kwargs) -> RatingResult:
    """Luce (1959) choice model for best-of-K picks: P(w chosen from S) = exp(theta_w) / sum_{j in S} exp(theta_j).

    ``winners[r]`` is the index chosen from ``choice_sets[r]`` (which must contain it). This is the
    Plackett-Luce likelihood of the top-1 ranking ``[w, rest]``; keyword arguments go to
    :func:`fit_plackett_luce`.
    """
    rankings = []
    for row, (winner, choice_set) in enumerate(zip(winners, choice_sets)):
        rest = [int(j) for j in choice_set if int(j) != int(winner)]
        if len(rest) == len(list(choice_set)):
            raise DataError(f"winner {winner} is not in its choice set", line=row + 1, field="winner",
                            reason="winner_not_in_set")
        rankings.append([int(winner), rest])
    return fit_plackett_luce(rankings, weights, **kwargs)
