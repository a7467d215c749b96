"""Which comparison to show next: Bayesian Bradley-Terry ratings and three selection rules.

The belief about the item strengths theta is the Laplace approximation of the Bradley-Terry posterior
under a Gaussian prior theta_i ~ N(0, s^2): mean = the MAP estimate, covariance = the inverse Hessian of
the negative log-posterior, both from :func:`rankalign.stats.fit_pairwise` (``prior = 1 / (2 s^2)``). A
K-wise vote enters as every pair it implies (ties as half a win each), as in ``rankalign rate``.

Rules (:data:`SAMPLERS`):

* ``"info"`` -- expected information gain. Under the linearised model the outcome of i vs j tells about
  the difference d = theta_i - theta_j with Fisher information p(1 - p), p = sigmoid(mu_i - mu_j), so the
  mutual information between the outcome and d is ``0.5 log(1 + p (1 - p) Var(d))`` with
  ``Var(d) = S_ii + S_jj - 2 S_ij`` (MacKay 1992, "Information-based objective functions for active data
  selection"; the same quantity as BALD, Houlsby et al. 2011, for a Gaussian belief). The pair with the
  largest gain is shown; for K > 2 items are added greedily by the sum of their gains with those chosen.
* ``"ucb"`` -- K-Sort Arena-style match-making (Li et al. 2024, "K-Sort Arena: Efficient and Reliable
  Benchmarking for Generative Models via K-wise Human Preferences"): the anchor is the item with the
  highest upper confidence bound ``mu_i + c sigma_i``; its K - 1 opponents are drawn at random among the
  2(K - 1) items whose strength is closest to the anchor's after an exploration bonus,
  ``-|mu_j - mu_anchor| + c sigma_j``, so that close, uncertain match-ups near the top are played first.
  It spends its votes on the leaders, not on the order of the whole list.
* ``"uniform"`` -- K distinct items uniformly at random (the baseline).

Ties between equal scores are broken at random, so that no rule keeps showing the first items of a file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import expit

from rankalign.data.records import RankedList
from rankalign.stats import fit_pairwise, pair_counts

SAMPLERS = ("info", "ucb", "uniform")


def vote_comparisons(votes: Sequence[tuple[Sequence[int], Sequence[int]]]):
    """``(first, second, outcome)`` arrays from votes ``(item indices, ranks)``: every pair a vote implies.

    ``outcome`` is 1.0 when ``first`` is ranked above ``second`` and 0.5 for a tie (the pairs of
    :meth:`rankalign.data.RankedList.pair_indices`, strategy ``"all"``).
    """
    first, second, outcome = [], [], []
    for indices, ranks in votes:
        ranked = RankedList(candidates=[str(i) for i in indices], ranks=list(ranks))
        for a, b, tie in ranked.pair_indices("all", ties=True):
            first.append(int(indices[a]))
            second.append(int(indices[b]))
            outcome.append(0.5 if tie else 1.0)
    return np.asarray(first, np.int64), np.asarray(second, np.int64), np.asarray(outcome, np.float64)


def bt_posterior(n_items: int, first, second, outcome, *, prior_variance: float = 1.0):
    """Laplace approximation of the Bradley-Terry posterior with prior theta_i ~ N(0, prior_variance).

    Returns ``(mean [n], covariance [n, n])`` in the mean-zero gauge (differences, which is all the rules
    use, do not depend on the gauge). With no comparisons the belief is the prior.
    """
    if prior_variance <= 0:
        raise ValueError(f"prior_variance must be > 0, got {prior_variance}")
    if len(first) == 0:
        return np.zeros(n_items), np.eye(n_items) * prior_variance
    counts = pair_counts(first, second, outcome, n_items=n_items)
    result = fit_pairwise("bradley-terry", counts, prior=1.0 / (2.0 * prior_variance))
    return np.asarray(result.ratings, np.float64), np.asarray(result.covariance, np.float64)


def pair_information(mean, cov):
    """Matrix of expected information gains ``0.5 log(1 + p (1 - p) Var(theta_i - theta_j))``; diagonal 0."""
    mean = np.asarray(mean, np.float64)
    cov = np.asarray(cov, np.float64)
    var = np.diag(cov)
    var_diff = np.maximum(var[:, None] + var[None, :] - 2.0 * cov, 0.0)
    p = expit(mean[:, None] - mean[None, :])
    gain = 0.5 * np.log1p(p * (1.0 - p) * var_diff)
    np.fill_diagonal(gain, 0.0)
    return gain


def _argmax_random(scores, rng):
    scores = np.asarray(scores, np.float64)
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return int(best[rng.integers(len(best))])


def choose(rule: str, mean, cov, k: int, rng: np.random.Generator, *, allowed: Sequence[int] | None = None,
           exploration: float = 1.0) -> list[int]:
    """Pick ``k`` distinct item indices to compare next under ``rule`` (see the module docstring).

    ``allowed`` restricts the choice (e.g. to the items that answered the chosen prompt).
    """
    if rule not in SAMPLERS:
        raise ValueError(f"unknown sampler {rule!r}; choose one of {', '.join(SAMPLERS)}")
    mean = np.asarray(mean, np.float64)
    pool = np.arange(len(mean)) if allowed is None else np.asarray(sorted(set(allowed)), np.int64)
    if k < 2 or k > len(pool):
        raise ValueError(f"cannot choose {k} items out of {len(pool)}")
    if rule == "uniform":
        return [int(i) for i in rng.choice(pool, size=k, replace=False)]
    cov = np.asarray(cov, np.float64)
    sub_mean, sub_cov = mean[pool], cov[np.ix_(pool, pool)]
    if rule == "info":
        gain = pair_information(sub_mean, sub_cov)
        pairs = gain.copy()
        np.fill_diagonal(pairs, -np.inf)  # decided pairs gain 0, as an item against itself does: never pick that
        flat = _argmax_random(pairs.ravel(), rng)
        chosen = [flat // len(pool), flat % len(pool)]
        while len(chosen) < k:
            total = gain[:, chosen].sum(axis=1)
            total[chosen] = -np.inf
            chosen.append(_argmax_random(total, rng))
    else:
        sigma = np.sqrt(np.maximum(np.diag(sub_cov), 0.0))
        anchor = _argmax_random(sub_mean + exploration * sigma, rng)
        closeness = -np.abs(sub_mean - sub_mean[anchor]) + exploration * sigma
        closeness[anchor] = -np.inf
        # the K-1 opponents are drawn among the 2(K-1) best match-ups, so that a decided pair is not replayed
        shortlist = np.argsort(-closeness + rng.uniform(0, 1e-9, len(closeness)))[:min(len(pool) - 1, 2 * (k - 1))]
        chosen = [anchor, *(int(i) for i in rng.choice(shortlist, size=k - 1, replace=False))]
    order = rng.permutation(k)  # the position on screen carries no information
    return [int(pool[chosen[i]]) for i in order]
