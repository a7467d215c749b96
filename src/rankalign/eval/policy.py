"""Everything ``rankalign eval`` reports about a policy, from log-probabilities alone (NumPy, no torch).

:func:`evaluate_logps` takes the ``[N, K]`` summed log-probabilities of each candidate under the policy
(and, optionally, the reference), the ranks, and the known preference rates, and returns one dict of
metrics. ``rankalign eval`` computes the log-probabilities with the engine and calls it; the simulation
lab and user scripts can call it directly on log-probabilities they already have.

Preference rates (``alpha``) are given per ordered pair: ``alpha[n, i, j]`` is the rate at which people
prefer candidate ``i`` to candidate ``j`` of list ``n`` (NaN where unknown). :func:`pair_rates_from_shares`
builds that array from per-candidate preference shares (Luce's choice axiom / Bradley--Terry strengths).
"""

from __future__ import annotations

import math

import numpy as np

from .metrics import (
    _as_float_array,
    _correct,
    _host,
    _idealised_correct,
    _no_nan,
    clustered_mean_with_se,
    group_metrics,
    likelihood_displacement,
    ordered_pair_indices,
    preference_calibration,
)

__all__ = ["evaluate_logps", "pair_rates_from_shares"]


def pair_rates_from_shares(shares) -> np.ndarray:
    """Pairwise preference rates from per-candidate shares: ``alpha_ij = s_i / (s_i + s_j)``.

    Luce's choice axiom (Luce 1959, "Individual Choice Behavior"), i.e. Bradley--Terry with strengths
    ``s``: for a pair whose shares sum to 1 (``[0.8, 0.2]``: 80% of annotators chose the first), the rate
    is the share itself. ``shares`` is ``[N, K]`` non-negative (NaN unknown); pairs with ``s_i + s_j = 0``
    or a NaN share get NaN. Returns ``[N, K, K]``.
    """
    shares = np.asarray(shares, dtype=np.float64)
    if shares.ndim != 2:
        raise ValueError(f"shares must be [N, K], got shape {shares.shape}")
    if np.any(shares[np.isfinite(shares)] < 0):
        raise ValueError("preference shares must be non-negative")
    numerator = shares[:, :, None]
    denominator = shares[:, :, None] + shares[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(denominator > 0, numerator / denominator, np.nan)
    return rates


def _alpha_per_pair(alpha, n_lists: int, k: int, list_of_pair, winner, loser) -> np.ndarray | None:
    if alpha is None:
        return None
    alpha = _as_float_array(alpha, "alpha")
    if alpha.ndim == 0:
        return np.full(list_of_pair.shape, float(alpha))
    if alpha.shape != (n_lists, k, k):
        raise ValueError(f"alpha must be a number or an [N, K, K] array of pairwise rates, shape "
                         f"({n_lists}, {k}, {k}); got {alpha.shape}")
    return alpha[list_of_pair, winner, loser]


def evaluate_logps(policy_logps, ranks, *, ref_logps=None, alpha=None, beta: float = 0.1,
                   n_bins: int = 10, groups=None, lengths=None) -> dict:
    """Ranking accuracy, idealised ranking accuracy, implicit-reward margins and calibration of a policy.

    Pairs: every ordered pair of each list (ties and padding left out; see
    :func:`~rankalign.eval.metrics.ordered_pair_indices`). Accuracies are shares over pairs, with
    cluster-robust SEs that treat the list as the unit (:func:`~rankalign.eval.metrics.clustered_mean_with_se`).

    * ``ranking_accuracy``: share of pairs with ``log pi(y_w) > log pi(y_l)`` (Chen et al. 2024);
    * with ``lengths``, ``length_normalised_ranking_accuracy``: the same with per-token log-probabilities
      ``log pi(y) / |y|`` (the score SimPO optimises; a gap between the two shows a length effect).
    With ``ref_logps``:

    * ``reference_ranking_accuracy``: the same for the reference model;
    * ``reward_accuracy``: share with implicit reward ``beta * rho_w > beta * rho_l``,
      ``rho = log pi - log pi_ref`` (Rafailov et al. 2023, "Direct Preference Optimization");
    * ``margin``: mean implicit-reward margin ``beta * (rho_w - rho_l)``;
    * ``ece`` / ``calibration``: calibration of ``P(y_w > y_l) = sigma(beta (rho_w - rho_l))`` against the
      labels (the known rate ``alpha`` where given, else 1), both orientations of every pair
      (:func:`~rankalign.eval.metrics.preference_calibration`);
    * ``likelihood_displacement``: change of ``log pi`` from the reference to the policy for the chosen
      (winner) and rejected (loser) side of every pair, and of their margin (Razin et al. 2024); SEs with
      the list as the unit.
    With ``ref_logps`` and ``alpha``:

    * ``idealised_ranking_accuracy``: the DPO optimum's ranking accuracy on the pairs with a known rate
      (Chen et al. 2024, Theorem 3.1), ``ranking_accuracy_on_alpha_pairs`` the policy's own on the same
      pairs, and ``alignment_gap`` = idealised - actual.

    Parameters
    ----------
    policy_logps, ref_logps : array-like [N, K]
        Summed log-probabilities of each candidate (any value at padding).
    ranks : array-like [N, K]
        0 best, equal = tie, -1 padding.
    alpha : float or array-like [N, K, K], optional
        True preference rates (``alpha[n, i, j]``: rate of i over j; NaN unknown).
    beta : float
        The objective's KL coefficient (scales implicit rewards).
    n_bins : int
        Bins of the reliability table.
    lengths : array-like [N, K], optional
        Response lengths in tokens (> 0 for present candidates).
    groups : sequence of hashable, length N, optional
        A group per list (annotator, population, topic): adds ``groups``, the per-group ranking accuracy
        (and implicit-reward accuracy with a reference) over each group's pairs, with the worst group
        (:func:`~rankalign.eval.metrics.group_metrics`; SEs there, too, treat the list as the unit).

    Returns
    -------
    dict
        Estimates as ``(value, se)`` tuples; counts as ints; NaN where a metric cannot be computed.
    """
    policy = _as_float_array(policy_logps, "policy_logps")
    ranks = np.asarray(_host(ranks))
    if policy.ndim != 2 or ranks.shape != policy.shape:
        raise ValueError(f"policy_logps and ranks must both be [N, K]; got {policy.shape} and {ranks.shape}")
    list_of_pair, winner, loser = ordered_pair_indices(ranks)
    out: dict = {"lists": int(policy.shape[0]), "lists_with_pairs": int(np.unique(list_of_pair).size),
                 "pairs": int(list_of_pair.size), "beta": float(beta)}
    policy_w, policy_l = policy[list_of_pair, winner], policy[list_of_pair, loser]
    _no_nan(np.concatenate([policy_w, policy_l]), "policy_logps (at ranked candidates)")
    ranking_correct = _correct(policy_w, policy_l, "strict")
    out["ranking_accuracy"] = clustered_mean_with_se(ranking_correct, list_of_pair)
    if lengths is not None:
        lengths = _as_float_array(lengths, "lengths")
        if lengths.shape != policy.shape:
            raise ValueError(f"lengths has shape {lengths.shape}, expected {policy.shape}")
        length_w, length_l = lengths[list_of_pair, winner], lengths[list_of_pair, loser]
        if not (np.all(length_w > 0) and np.all(length_l > 0)):  # NaN fails too
            raise ValueError("lengths must be positive for every ranked candidate")
        out["length_normalised_ranking_accuracy"] = clustered_mean_with_se(
            _correct(policy_w / length_w, policy_l / length_l, "strict"), list_of_pair)
    group_of_pair = None
    if groups is not None:
        groups = list(groups)
        if len(groups) != policy.shape[0]:
            raise ValueError(f"{len(groups)} group labels for {policy.shape[0]} lists")
        group_of_pair = [groups[i] for i in list_of_pair]
        out["groups"] = {"ranking_accuracy": group_metrics(ranking_correct, group_of_pair,
                                                           all_groups=list(dict.fromkeys(groups)),
                                                           clusters=list_of_pair)}
    if ref_logps is None:
        if alpha is not None:
            raise ValueError("alpha (true preference rates) needs ref_logps: the idealised ranking accuracy is "
                             "defined by the reference model")
        return out

    reference = _as_float_array(ref_logps, "ref_logps")
    if reference.shape != policy.shape:
        raise ValueError(f"ref_logps has shape {reference.shape}, expected {policy.shape}")
    ref_w, ref_l = reference[list_of_pair, winner], reference[list_of_pair, loser]
    _no_nan(np.concatenate([ref_w, ref_l]), "ref_logps (at ranked candidates)")
    out["reference_ranking_accuracy"] = clustered_mean_with_se(_correct(ref_w, ref_l, "strict"), list_of_pair)
    log_ratio_gap = (policy_w - ref_w) - (policy_l - ref_l)
    out["reward_accuracy"] = clustered_mean_with_se(_correct(log_ratio_gap, np.zeros_like(log_ratio_gap),
                                                             "strict"), list_of_pair)
    out["margin"] = clustered_mean_with_se(beta * log_ratio_gap, list_of_pair)
    if group_of_pair is not None:
        out["groups"]["reward_accuracy"] = group_metrics(
            _correct(log_ratio_gap, np.zeros_like(log_ratio_gap), "strict"), group_of_pair,
            all_groups=list(dict.fromkeys(groups)), clusters=list_of_pair)

    rates = _alpha_per_pair(alpha, policy.shape[0], policy.shape[1], list_of_pair, winner, loser)
    known = np.zeros(list_of_pair.shape, dtype=bool) if rates is None else np.isfinite(rates)
    out["pairs_with_alpha"] = int(known.sum())
    if known.any():
        ideal = _idealised_correct(ref_w[known], ref_l[known], rates[known], beta, "strict")
        actual = _correct(policy_w[known], policy_l[known], "strict")
        out["idealised_ranking_accuracy"] = clustered_mean_with_se(ideal, list_of_pair[known])
        out["ranking_accuracy_on_alpha_pairs"] = clustered_mean_with_se(actual, list_of_pair[known])
        out["alignment_gap"] = clustered_mean_with_se(ideal - actual, list_of_pair[known])
    else:
        for name in ("idealised_ranking_accuracy", "ranking_accuracy_on_alpha_pairs", "alignment_gap"):
            out[name] = (math.nan, math.nan)

    outcomes = np.where(known, rates, 1.0) if rates is not None else np.ones_like(log_ratio_gap)
    ece, table = preference_calibration(log_ratio_gap, beta=beta, outcomes=outcomes, n_bins=n_bins)
    out["ece"] = ece
    out["calibration"] = table
    before = np.stack([ref_w, ref_l], axis=1)
    after = np.stack([policy_w, policy_l], axis=1)
    out["likelihood_displacement"] = likelihood_displacement(before, after, which="both",
                                                             clusters=list_of_pair) if before.size else {}
    return out
