"""Bootstrap confidence intervals, empirical win rates, and online Elo.

The bootstrap resamples the *unique rows* of the data: the deduplicated (pair, outcome) cells for
paired comparisons, the distinct rankings for Plackett-Luce. A replicate draws the whole data set at
once as multinomial counts over those rows (with probabilities proportional to their observed counts),
which is the same distribution as resampling the individual comparisons with replacement but costs
O(unique rows) instead of O(comparisons). Each replicate is refitted exactly, warm-started at the
full-data estimate, by chord iterations with the full-data Hessian (Newton as the fallback).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np
import scipy.linalg
from scipy import sparse

from rankalign.data.errors import DataError
from rankalign.errors import UsageError

from . import _newton
from ._sufficient import PairCounts, check_identifiable, validate_comparisons
from .pairwise import _extra_columns, _pairwise_objective
from .plackett_luce import _pl_edges, _pl_objective
from .result import ELO_OFFSET, ELO_SCALE, RatingResult


def multinomial(rng, total, probabilities, cdf=None):
    """One Multinomial(total, probabilities) draw, exactly, in O(cells + sqrt(total)) vectorised work.

    Independent Poisson(total * p_i) counts are, given their sum T, Multinomial(T, p). Removing T - total
    balls chosen uniformly at random (T > total), or adding total - T independent draws from p
    (T < total), turns that into Multinomial(total, p). numpy's ``multinomial`` draws one binomial per
    cell in sequence, several times slower for tens of thousands of cells.
    """
    counts = rng.poisson(total * probabilities)
    excess = int(counts.sum()) - int(total)
    if excess > 0:
        ends = np.cumsum(counts)
        removed = rng.choice(int(ends[-1]), size=excess, replace=False)
        counts -= np.bincount(np.searchsorted(ends, removed, side="right"), minlength=len(counts))
    elif excess < 0:
        cdf = np.cumsum(probabilities) if cdf is None else cdf
        added = np.searchsorted(cdf, rng.random(-excess) * cdf[-1], side="right")
        counts += np.bincount(np.minimum(added, len(counts) - 1), minlength=len(counts))
    return counts


def _refit(objective, x, free, factor):
    """Refit from ``x`` by chord iterations (the full-data Hessian, factorised once), else Newton.

    A bootstrap replicate's Hessian differs from the full-data one by O(1/sqrt(N)), so the chord
    method converges linearly at that rate; each step costs a gradient and a triangular solve.
    """
    if factor is not None:
        estimate = np.array(x, dtype=np.float64)
        for _ in range(40):
            _, gradient, _ = objective(estimate, 1)
            step = scipy.linalg.cho_solve(factor, gradient[free], check_finite=False)
            if not np.all(np.isfinite(step)):
                break
            estimate[free] += step
            if np.max(np.abs(step)) < 1e-8:  # ratings to 1e-8, far below any standard error
                return estimate
        x = estimate if np.all(np.isfinite(estimate)) else x
    return _newton.maximise(objective, x, free, tol=1e-13, max_iter=50)[0]


def _chord_factor(objective, x, free):
    """Cholesky factor of -H at the full-data estimate (dense problems only), or None."""
    hessian = objective(x, 2)[2]
    if sparse.issparse(hessian):
        return None
    try:
        return scipy.linalg.cho_factor(-hessian[np.ix_(free, free)], check_finite=False)
    except np.linalg.LinAlgError:
        return None


def _has_estimate(n_items, winners, losers, estimate) -> bool:
    """True when a replicate has a finite maximum-likelihood estimate: its win graph is strongly connected
    (Zermelo/Ford, Hunter 2004; :func:`check_identifiable`) and the refit did not run off (separation in a
    parameter the graph does not cover, such as the home effect or the tie parameter)."""
    if not np.all(np.isfinite(estimate)) or np.max(np.abs(estimate)) > _newton.DIVERGED:
        return False
    if winners is None:
        return True
    try:
        check_identifiable(n_items, winners, losers)
    except DataError:
        return False
    return True


def _pairwise_cells(counts: PairCounts):
    """Unique (row, outcome) cells with positive counts: row index, outcome (0, 1, 2), count."""
    table = np.stack([counts.wins_first, counts.ties, counts.wins_second], axis=1)
    rows, outcomes = np.nonzero(table > 0)
    return rows, outcomes, table[rows, outcomes]


def _bootstrap_pairwise_chunk(model, counts, has_tau, prior, home, x, free, ref_index, n_boot, seed,
                              progress=None):
    rng = np.random.default_rng(seed)
    rows, outcomes, cell_counts = _pairwise_cells(counts)
    total = int(round(cell_counts.sum()))
    probabilities = cell_counts / cell_counts.sum()
    n_rows = len(counts.first)
    work = PairCounts(counts.n_items, counts.first, counts.second, np.zeros(n_rows), np.zeros(n_rows),
                      np.zeros(n_rows), counts.home, counts.features)
    objective = _pairwise_objective(model, work, _extra_columns(work, home), has_tau, prior)
    targets = (work.wins_first, work.ties, work.wins_second)
    cells = [(rows[outcomes == k], np.flatnonzero(outcomes == k)) for k in range(3)]
    out = np.empty((n_boot, len(x)))
    cdf = np.cumsum(probabilities)
    free_index = np.arange(len(x)) if free is None else free
    with _newton.single_thread_blas():
        for target, source in zip(targets, (counts.wins_first, counts.ties, counts.wins_second)):
            target[:] = source
        factor = _chord_factor(objective, x, free_index)
        for b in range(n_boot):
            draw = multinomial(rng, total, probabilities, cdf).astype(np.float64)
            for target, (cell_rows, cell_index) in zip(targets, cells):
                target[:] = 0.0
                target[cell_rows] = draw[cell_index]  # each (row, outcome) cell is unique
            estimate = _refit(objective, x, free_index, factor)
            out[b] = _newton.apply_gauge(estimate, counts.n_items, ref_index)
            if prior == 0:
                a_beats = (work.wins_first + work.ties) > 0
                b_beats = (work.wins_second + work.ties) > 0
                winners = np.concatenate([work.first[a_beats], work.second[b_beats]])
                losers = np.concatenate([work.second[a_beats], work.first[b_beats]])
            else:  # the prior keeps the item ratings finite; the other parameters can still run off
                winners = losers = None
            if not _has_estimate(counts.n_items, winners, losers, estimate):
                out[b] = np.nan
            if progress is not None:
                progress(1)
    return out


def _bootstrap_pl_chunk(groups, prior, npseudo, x, free, ref_index, n_boot, seed, progress=None):
    rng = np.random.default_rng(seed)
    n = len(x)
    sizes = [len(w) for _, _, w in groups]
    observed = np.concatenate([w for _, _, w in groups])
    total = int(round(observed.sum()))
    probabilities = observed / observed.sum()
    work = [(orders, stages, np.zeros(len(w))) for orders, stages, w in groups]
    objective = _pl_objective(n, work, prior, npseudo)
    bounds = np.cumsum([0] + sizes)
    out = np.empty((n_boot, n))
    cdf = np.cumsum(probabilities)
    free_index = np.arange(n) if free is None else free
    with _newton.single_thread_blas():
        for g, (_, _, weights) in enumerate(work):
            weights[:] = observed[bounds[g]:bounds[g + 1]]
        factor = _chord_factor(objective, x, free_index)
        for b in range(n_boot):
            draw = multinomial(rng, total, probabilities, cdf).astype(np.float64)
            for g, (_, _, weights) in enumerate(work):
                weights[:] = draw[bounds[g]:bounds[g + 1]]
            estimate = _refit(objective, x, free_index, factor)
            out[b] = _newton.apply_gauge(estimate, n, ref_index)
            if prior == 0 and npseudo == 0:
                drawn = [(orders[w > 0], stages, w[w > 0]) for orders, stages, w in work]
                winners, losers = _pl_edges([g for g in drawn if len(g[2])])
            else:
                winners = losers = None
            if not _has_estimate(n, winners, losers, estimate):
                out[b] = np.nan
            if progress is not None:
                progress(1)
    return out


def bootstrap(result: RatingResult, n_boot: int = 1000, *, seed: int = 0, n_jobs: int = 1,
              ci_level: float | None = None, progress=None) -> RatingResult:
    """Percentile bootstrap intervals for a fitted :class:`RatingResult` (any model of this package).

    Parameters
    ----------
    result : RatingResult
        A fit from :mod:`rankalign.stats.pairwise` or :func:`fit_plackett_luce` (it carries its data).
    n_boot : int
        Number of replicates.
    seed : int
        Seed of the multinomial draws (replicates are reproducible for a given ``seed`` and ``n_jobs``).
    n_jobs : int
        Worker processes (``-1``: all cores). Replicates are split into ``n_jobs`` chunks with
        independent seeds spawned from ``seed``.
    ci_level : float, optional
        Interval level (default: the result's).
    progress : callable, optional
        Called with the number of replicates just finished (for a progress bar).

    Returns
    -------
    RatingResult
        A copy with ``ci_low``/``ci_high`` the percentile interval, ``se`` the bootstrap standard
        deviation and ``ci_method="bootstrap"``; the replicate parameter vectors (gauge applied) are
        kept in ``state["bootstrap_samples"]`` ([n_boot, parameters]).

    Notes
    -----
    A resample of sparse data can have no maximum-likelihood estimate: an item that never wins (or never
    loses) in it has its rating at -inf (+inf), and Newton stops wherever it gives up. Such replicates are
    detected (the win graph of the resample is not strongly connected, or the refit runs past
    ``|x| > 35``), **left out** of the percentiles and the standard deviation, and counted in
    ``state["bootstrap_failed"]`` (their rows of ``bootstrap_samples`` are NaN); the CLI prints a warning.
    Leaving them out narrows the intervals of items near the edge of the data; a prior (``prior > 0``)
    keeps every replicate instead. When fewer than 2 replicates (or fewer than half) have an estimate, a
    :class:`~rankalign.data.errors.DataError` is raised.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise UsageError(f"the bootstrap needs a whole number of at least 2 replicates, got {n_boot!r}")
    if ci_level is not None:
        _newton.check_ci_level(ci_level)
    state = result.state
    if "x" not in state:
        raise ValueError("this result does not carry its data; refit with a fit_* function first")
    level = result.ci_level if ci_level is None else ci_level
    n_jobs = (os.cpu_count() or 1) if n_jobs == -1 else max(1, int(n_jobs))
    n_jobs = min(n_jobs, n_boot)
    seeds = np.random.SeedSequence(seed).spawn(n_jobs)
    sizes = [n_boot // n_jobs + (1 if j < n_boot % n_jobs else 0) for j in range(n_jobs)]
    if "counts" in state:
        has_tau = result.model in ("davidson", "rao-kupper")
        jobs = [(_bootstrap_pairwise_chunk, (result.model, state["counts"], has_tau, result.prior,
                                             state["home"], state["x"], state["free"], state["ref_index"],
                                             size, seeds[j])) for j, size in enumerate(sizes)]
    else:
        jobs = [(_bootstrap_pl_chunk, (state["groups"], result.prior, state["npseudo"], state["x"],
                                       state["free"], state["ref_index"], size, seeds[j]))
                for j, size in enumerate(sizes)]
    if n_jobs == 1:
        samples = jobs[0][0](*jobs[0][1], progress=progress)
    else:
        with ProcessPoolExecutor(max_workers=n_jobs) as pool:
            futures = [pool.submit(function, *arguments) for function, arguments in jobs]
            parts = []
            for future, size in zip(futures, sizes):
                parts.append(future.result())
                if progress is not None:
                    progress(size)
            samples = np.concatenate(parts)
    n = len(result.items)
    ok = np.all(np.isfinite(samples), axis=1)
    failed = int(n_boot - ok.sum())
    if ok.sum() < max(2, n_boot / 2):
        raise DataError(f"{failed} of {n_boot} bootstrap replicates have no maximum-likelihood estimate "
                        "(the resampled data separate some item), too many for a bootstrap interval",
                        reason="not_identified", hint="use the Wald intervals (no --bootstrap) or add --prior ALPHA")
    ratings = samples[ok, :n]
    point = _newton.apply_gauge(np.asarray(state["x"], dtype=np.float64), n, state["ref_index"])[:n]
    if result.scale == "elo":
        ratings = ratings * ELO_SCALE + ELO_OFFSET
        point = point * ELO_SCALE + ELO_OFFSET
    if result.anchor is not None:  # the anchor's constant shift (RatingResult.anchored) moves the replicates too
        ratings = ratings + float(np.mean(result.ratings - point))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(ratings, [tail, 1.0 - tail], axis=0)
    new_state = dict(state, bootstrap_samples=samples, bootstrap_failed=failed)
    return replace(result, se=ratings.std(axis=0, ddof=1), ci_low=low, ci_high=high, ci_method="bootstrap",
                   ci_level=level, state=new_state)


def battle_count_matrix(first, second, count=None, *, n_items=None) -> np.ndarray:
    """Games (summed counts) between row and column item, either order; symmetric, 0 on the diagonal."""
    first, second, _, count, n_items = validate_comparisons(first, second, np.ones(len(first)), count,
                                                            n_items=n_items)
    games = np.zeros((n_items, n_items))
    np.add.at(games, (first, second), count)
    np.add.at(games, (second, first), count)
    return games


def win_rate_matrix(first, second, outcome, count=None, *, n_items=None) -> np.ndarray:
    """Empirical share of games row item won against column item (a tie counts 1/2); NaN if never met."""
    first, second, outcome, count, n_items = validate_comparisons(first, second, outcome, count, n_items=n_items)
    games = battle_count_matrix(first, second, count, n_items=n_items)
    wins = np.zeros((n_items, n_items))
    np.add.at(wins, (first, second), count * outcome)
    np.add.at(wins, (second, first), count * (1.0 - outcome))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(games > 0, wins / games, np.nan)


def online_elo(first, second, outcome, *, n_items=None, k: float = 4.0, initial: float = ELO_OFFSET,
               scale: float = 400.0, base: float = 10.0) -> np.ndarray:
    """Online Elo ratings: one pass over the comparisons *in the given order* (order dependent).

    For each comparison, E = 1 / (1 + base^((R_second - R_first) / scale)) and both ratings move by
    ``k * (S - E)`` (S = 1, 0.5, 0 for a win, tie, loss of ``first``). ``k = 4`` is Chatbot Arena's
    choice for its online Elo; chess federations use 10-40. Unlike the maximum-likelihood fits, the
    result depends on the order of the rows and does not converge to the Bradley-Terry estimate; it is
    provided as a baseline. Rows with a ``count`` should be expanded before calling this.
    """
    for name, value, low in (("k", k, 0.0), ("initial", initial, -math.inf), ("scale", scale, 0.0), ("base", base, 1.0)):
        if not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value) and value > low
                or (name == "k" and value == 0)):
            raise UsageError(f"{name} must be a finite number{f' > {low:g}' if low > -math.inf else ''}, got {value!r}")
    first, second, outcome, _, n_items = validate_comparisons(first, second, outcome, None, n_items=n_items)
    ratings = np.full(n_items, float(initial))
    log_base = math.log(base)
    for a, b, s in zip(first.tolist(), second.tolist(), outcome.tolist()):
        expected = 1.0 / (1.0 + math.exp(log_base * (ratings[b] - ratings[a]) / scale))
        delta = k * (s - expected)
        ratings[a] += delta
        ratings[b] -= delta
    return ratings
