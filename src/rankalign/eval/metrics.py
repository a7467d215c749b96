"""Evaluation metrics for preference learning, as plain NumPy functions (no torch, no transformers).

Every function takes array-likes and works in float64. Conventions:

* A *pair* is ``(w, l)``: ``w`` the preferred (chosen) response, ``l`` the rejected one.
* A *list* is a row of ``[N, K]`` values with ``ranks`` ``[N, K]``: 0 best, equal ranks tie, ``-1`` pads a
  list shorter than K (DESIGN.md, "Tensor conventions"). Its ordered pairs are every two present
  candidates with different ranks; tied pairs are left out.
* Inputs may be lists, NumPy arrays or torch tensors (detached and copied to the host); torch is never
  imported here.
* Standard errors are those of a mean of independent per-unit outcomes: ``s / sqrt(n)`` with the sample
  standard deviation ``s`` (``ddof=1``). The unit is the prompt wherever several values share a prompt,
  so correlated samples of one prompt never shrink the SE.
* Accuracies count a tie in the compared values as wrong (``ties="strict"``, the convention of Chen et
  al. 2024) unless ``ties="half"`` is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

__all__ = [
    "mean_with_se",
    "clustered_mean_with_se",
    "ordered_pair_indices",
    "gold_win_rate",
    "gold_summary",
    "kl_estimate",
    "ranking_accuracy",
    "listwise_ranking_accuracy",
    "idealised_ranking_accuracy",
    "alignment_gap",
    "likelihood_displacement",
    "reward_accuracy",
    "listwise_reward_accuracy",
    "kendall_tau",
    "mean_kendall_tau",
    "expected_calibration_error",
    "preference_calibration",
    "cohens_kappa",
    "group_metrics",
]

TIE_MODES = ("strict", "half")


# ----------------------------------------------------------------------------------------------- helpers
def _host(values):
    """A torch tensor (possibly on a GPU, with grad) as a NumPy array; anything else unchanged."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu()
        if values.is_floating_point():  # bfloat16 has no NumPy dtype; float64 is what every metric uses
            values = values.double()
        return values.numpy()
    return values


def _as_float_array(values, name: str, *, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    array = np.asarray(_host(values), dtype=np.float64)
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if allowed is not None and array.ndim not in allowed:
        raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimension(s), got shape {array.shape}")
    return array


def _no_nan(values: np.ndarray, name: str) -> None:
    """Compared values must not be NaN: ``NaN > x`` is False, so a NaN would silently count as a wrong pair."""
    if np.isnan(values).any():
        where = np.flatnonzero(np.isnan(values))
        raise ValueError(f"{name} has NaN at {where.size} compared position(s) (first: {int(where[0])}); "
                         "a NaN cannot be compared -- drop those entries (in a ranked list: rank -1 pads)")


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}")


def _correct(better: np.ndarray, worse: np.ndarray, ties: str) -> np.ndarray:
    """1 where ``better > worse``, 0 where below; an exact tie counts 0 (``strict``) or 0.5 (``half``)."""
    if ties not in TIE_MODES:
        raise ValueError(f"ties must be one of {TIE_MODES}, got {ties!r}")
    out = (better > worse).astype(np.float64)
    if ties == "half":
        out = out + 0.5 * (better == worse)
    return out


def _share(outcomes: np.ndarray) -> float:
    return float(outcomes.mean()) if outcomes.size else math.nan


def ordered_pair_indices(ranks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(list, winner, loser)`` indices of every ordered pair of ``[N, K]`` ranks (1-D arrays each).

    Every two present candidates (rank >= 0) with different ranks form one pair, the lower rank winning;
    ties and padding are left out. Pairs come list by list, in the order of ``numpy.triu_indices(K, 1)``.
    """
    ranks = np.asarray(_host(ranks))
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be [N, K], got shape {ranks.shape}")
    if not np.issubdtype(ranks.dtype, np.integer):
        if not np.all(np.isfinite(ranks)) or not np.all(ranks == np.round(ranks)):
            raise ValueError("ranks must be integers (-1 for padding)")
        ranks = ranks.astype(np.int64)
    k = ranks.shape[1]
    first, second = np.triu_indices(k, 1)
    rank_a, rank_b = ranks[:, first], ranks[:, second]
    valid = (rank_a >= 0) & (rank_b >= 0) & (rank_a != rank_b)
    a_wins = rank_a < rank_b
    winner = np.where(a_wins, first, second)[valid]
    loser = np.where(a_wins, second, first)[valid]
    list_of_pair = np.broadcast_to(np.arange(ranks.shape[0])[:, None], valid.shape)[valid]
    return list_of_pair, winner, loser


def _ordered_pair_values(values: np.ndarray, ranks, name: str = "values") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values at winners and losers of every ordered pair, and the list each pair comes from (1-D each).
    Padding may hold anything; a NaN at a candidate that is part of a pair is an error (:func:`_no_nan`)."""
    values = _as_float_array(values, name, ndim=2)
    if np.shape(_host(ranks)) != values.shape:
        raise ValueError(f"ranks has shape {np.shape(_host(ranks))} but {name} has shape {values.shape}")
    list_of_pair, winner, loser = ordered_pair_indices(ranks)
    at_winner, at_loser = values[list_of_pair, winner], values[list_of_pair, loser]
    _no_nan(np.concatenate([at_winner, at_loser]), f"{name} (at ranked candidates)")
    return at_winner, at_loser, list_of_pair


def _average_pairs(correct: np.ndarray, list_of_pair: np.ndarray, n_lists: int, average: str,
                   weights: np.ndarray | None = None) -> float:
    """Share of correct pairs; ``weights`` (one per list, >= 0) weigh each list's pairs."""
    if weights is not None:
        weights = _as_float_array(weights, "weights", ndim=1)
        if weights.shape[0] != n_lists or not np.all(np.isfinite(weights) & (weights >= 0)):
            raise ValueError(f"weights must be {n_lists} finite non-negative numbers, one per list")
    if average == "pairs":
        if weights is None:
            return _share(correct)
        pair_weights = weights[list_of_pair]
        total = pair_weights.sum()
        return float((pair_weights * correct).sum() / total) if total > 0 else float("nan")
    if average == "lists":
        counts = np.bincount(list_of_pair, minlength=n_lists)
        sums = np.bincount(list_of_pair, weights=correct, minlength=n_lists)
        has_pairs = counts > 0
        if weights is None:
            return _share(sums[has_pairs] / counts[has_pairs])
        w = weights[has_pairs]
        return float((w * sums[has_pairs] / counts[has_pairs]).sum() / w.sum()) if w.sum() > 0 else float("nan")
    raise ValueError(f"average must be 'pairs' or 'lists', got {average!r}")


# ------------------------------------------------------------------------------------------ estimates
def mean_with_se(values, *, axis_is_prompt: bool = True) -> tuple[float, float]:
    """Mean and its standard error, ``(mean, s / sqrt(n))``.

    Parameters
    ----------
    values : array-like, shape [N] or [N, S]
        One value per unit, or ``S`` values (samples) per prompt. With 2-D input the unit is the prompt:
        each row is averaged first, so the SE accounts for the correlation of samples of one prompt
        (a cluster-robust SE with equal cluster sizes). NaN entries (missing values) are ignored, and
        rows with no value are dropped; infinities are kept and make the result infinite.
    axis_is_prompt : bool
        For 2-D input, False flattens it and treats every entry as independent.

    Returns
    -------
    (mean, se) : tuple of float
        ``mean = (1/n) sum_i v_i``, ``se = sqrt(sum_i (v_i - mean)^2 / (n - 1)) / sqrt(n)``.
        ``se`` is NaN for ``n < 2``; both are NaN for ``n = 0``.
    """
    array = _as_float_array(values, "values", ndim=(1, 2))
    if array.ndim == 2:
        if axis_is_prompt:
            present = ~np.isnan(array)
            counts = present.sum(1)
            sums = np.where(present, array, 0.0).sum(1)
            array = sums[counts > 0] / counts[counts > 0]
        else:
            array = array.ravel()
    array = array[~np.isnan(array)]
    n = array.size
    if n == 0:
        return math.nan, math.nan
    mean = float(array.mean())
    if n < 2:
        return mean, math.nan
    with np.errstate(invalid="ignore"):  # an infinite value gives an undefined spread: NaN, not a warning
        spread = array.std(ddof=1)
    return mean, float(spread / math.sqrt(n))


def clustered_mean_with_se(values, clusters) -> tuple[float, float]:
    """Mean of observations that come in clusters (e.g. the pairs of one ranked list), with a
    cluster-robust standard error.

    Liang & Zeger 1986, "Longitudinal data analysis using generalized linear models" (the sandwich
    estimator for a mean): with ``G`` clusters, cluster sums ``S_g``, sizes ``n_g`` and the pooled mean
    ``m = sum_g S_g / sum_g n_g``,

        se = sqrt( G / (G - 1) * sum_g (S_g - m n_g)^2 ) / sum_g n_g.

    With one observation per cluster this is exactly :func:`mean_with_se`'s ``s / sqrt(n)``. NaN ``se``
    for fewer than two clusters.
    """
    values = _as_float_array(values, "values", ndim=1)
    clusters = np.asarray(clusters)
    if clusters.shape != values.shape:
        raise ValueError(f"{values.size} values but {clusters.size} cluster labels")
    if values.size == 0:
        return math.nan, math.nan
    _, cluster_id = np.unique(clusters, return_inverse=True)
    sums = np.bincount(cluster_id, weights=values)
    sizes = np.bincount(cluster_id).astype(np.float64)
    total = sizes.sum()
    mean = float(sums.sum() / total)
    groups = sums.size
    if groups < 2:
        return mean, math.nan
    spread = groups / (groups - 1) * float(((sums - mean * sizes) ** 2).sum())
    return mean, math.sqrt(spread) / total


def gold_win_rate(policy_rewards, reference_rewards, ties: str = "half") -> tuple[float, float]:
    """Win rate of a policy against the reference policy under a gold reward, paired by prompt.

    AlpacaFarm (Dubois et al. 2023, "AlpacaFarm: A Simulation Framework for Methods that Learn from Human
    Feedback") scores a method by how often its response beats the reference policy's response to the
    same prompt. With ``S`` samples per prompt on either side, the prompt's outcome is the share of its
    ``S_policy * S_reference`` comparisons won:

        o_i = mean_{s, t} [ 1(r*(y_is) > r*(y'_it)) + c * 1(r*(y_is) = r*(y'_it)) ]

    and the rate is ``mean_i o_i`` with SE ``std(o, ddof=1) / sqrt(n)`` over prompts (the prompt is the
    independent unit).

    Parameters
    ----------
    policy_rewards, reference_rewards : array-like, shape [N] or [N, S]
        Gold rewards of the policy's and the reference policy's responses; row ``i`` is prompt ``i``.
        NaN marks a missing sample.
    ties : {"half", "win", "loss", "exclude"}
        A tie counts ``c = 0.5``, 1 or 0; ``"exclude"`` drops tied comparisons from ``o_i`` (and prompts
        whose comparisons all tie).

    Returns
    -------
    (rate, se) : tuple of float
    """
    outcomes, keep = _win_outcomes(policy_rewards, reference_rewards, ties)
    return mean_with_se(outcomes[keep])


def _win_outcomes(policy_rewards, reference_rewards, ties: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt outcomes ``o_i`` of :func:`gold_win_rate` (NaN where undefined) and the mask of prompts
    that have one."""
    policy = _as_float_array(policy_rewards, "policy_rewards", ndim=(1, 2))
    reference = _as_float_array(reference_rewards, "reference_rewards", ndim=(1, 2))
    policy = policy[:, None] if policy.ndim == 1 else policy
    reference = reference[:, None] if reference.ndim == 1 else reference
    if policy.shape[0] != reference.shape[0]:
        raise ValueError(f"{policy.shape[0]} prompts in policy_rewards but {reference.shape[0]} in reference_rewards")
    tie_credit = {"half": 0.5, "win": 1.0, "loss": 0.0, "exclude": None}
    if ties not in tie_credit:
        raise ValueError(f"ties must be one of {sorted(tie_credit)}, got {ties!r}")
    a = policy[:, :, None]
    b = reference[:, None, :]
    present = np.isfinite(a) & np.isfinite(b)
    wins = ((a > b) & present).sum((1, 2)).astype(np.float64)
    tied = ((a == b) & present).sum((1, 2)).astype(np.float64)
    total = present.sum((1, 2)).astype(np.float64)
    if tie_credit[ties] is None:
        total = total - tied
        score = wins
    else:
        score = wins + tie_credit[ties] * tied
    keep = total > 0
    outcomes = np.full(len(total), np.nan)
    outcomes[keep] = score[keep] / total[keep]
    return outcomes, keep


def paired_win_rate_difference(first_rewards, second_rewards, reference_rewards,
                               ties: str = "half") -> tuple[float, float]:
    """Difference of two policies' gold win rates against the same reference samples, paired by prompt.

    Both policies answer the same prompts and are compared with the same reference responses, so their
    per-prompt outcomes ``o_i`` (:func:`gold_win_rate`) share each prompt's difficulty. The difference is
    ``mean_i (o1_i - o2_i)`` with SE ``std(o1 - o2, ddof=1) / sqrt(n)`` over the prompts both have: the
    paired comparison (a paired t statistic is the ratio). Treating the two rates as independent (SE
    ``hypot(se1, se2)``) ignores that shared difficulty and overstates the uncertainty of the difference
    when the outcomes are positively correlated across prompts.

    Returns
    -------
    (difference, se) : tuple of float
    """
    first, keep_first = _win_outcomes(first_rewards, reference_rewards, ties)
    second, keep_second = _win_outcomes(second_rewards, reference_rewards, ties)
    keep = keep_first & keep_second
    return mean_with_se(first[keep] - second[keep])


def kl_estimate(policy_logps, ref_logps, *, estimator: str = "k1") -> tuple[float, float]:
    """Monte-Carlo estimate of KL(pi || pi_ref) from responses sampled from the policy pi.

    With ``y ~ pi`` and the log-ratio ``log r = log pi_ref(y) - log pi(y)``:

    * ``"k1"`` (the plain estimator): ``KL = E_pi[log pi(y) - log pi_ref(y)] = E_pi[-log r]``. Unbiased,
      but single samples can be negative and its variance is high when pi is far from pi_ref.
    * ``"k3"`` (J. Schulman 2020, "Approximating KL Divergence"): ``E_pi[(r - 1) - log r]``. Also unbiased,
      because ``E_pi[r] = 1``, and every term is >= 0 (``x - 1 >= log x``), so its variance is lower when
      the two policies are close. ``r - 1`` is computed as ``expm1(log r)``. When they are far apart
      (e.g. best-of-16 against its base), ``r`` is unbounded on the samples, the terms are heavy-tailed
      and k3's spread (and the reliability of its SE) is worse than k1's: prefer k1 there.

    Parameters
    ----------
    policy_logps, ref_logps : array-like, shape [M] or [N, S]
        Sequence log-probabilities of the sampled responses under pi and pi_ref. ``[N, S]`` is ``S``
        samples for each of ``N`` prompts: the estimate is then the mean over prompts of the per-prompt
        mean (KL of the policy averaged over the prompt distribution) and the SE treats the prompt as
        the unit.

    Returns
    -------
    (kl, se) : tuple of float
    """
    policy = _as_float_array(policy_logps, "policy_logps", ndim=(1, 2))
    reference = _as_float_array(ref_logps, "ref_logps", ndim=(1, 2))
    _same_shape(policy, reference, "policy_logps", "ref_logps")
    log_r = reference - policy
    if estimator == "k1":
        terms = -log_r
    elif estimator == "k3":
        with np.errstate(over="ignore"):
            terms = np.expm1(log_r) - log_r
    else:
        raise ValueError(f"estimator must be 'k1' or 'k3', got {estimator!r}")
    return mean_with_se(terms)


def gold_summary(policy_rewards, reference_rewards, policy_logps=None, ref_logps=None, *,
                 ties: str = "half", kl_estimator: str = "k1") -> dict[str, tuple[float, float]]:
    """The simulated-world scorecard of one policy: gold reward, win rate and KL, each with its SE.

    Returns ``{"gold_reward", "reference_gold_reward", "gold_reward_gain", "gold_win_rate"}`` and, when
    log-probabilities of the policy's samples are given, ``"kl"`` -- each a ``(value, se)`` tuple ready
    for an :class:`~rankalign.eval.report.EvalReport` row or a point of
    :func:`~rankalign.eval.report.plot_gold_reward_vs_kl`.

    ``gold_reward_gain`` is the paired per-prompt difference of mean gold rewards (policy minus
    reference), whose SE is smaller than that of the two means when prompts differ in difficulty.
    Arrays are ``[N]`` or ``[N, S]`` per prompt, as in :func:`gold_win_rate` and :func:`kl_estimate`.
    """
    policy = _as_float_array(policy_rewards, "policy_rewards", ndim=(1, 2))
    reference = _as_float_array(reference_rewards, "reference_rewards", ndim=(1, 2))
    if policy.shape[0] != reference.shape[0]:
        raise ValueError(f"{policy.shape[0]} prompts in policy_rewards but {reference.shape[0]} in reference_rewards")
    policy_2d = policy[:, None] if policy.ndim == 1 else policy
    reference_2d = reference[:, None] if reference.ndim == 1 else reference
    with np.errstate(invalid="ignore"):
        gain = np.nanmean(policy_2d, axis=1) - np.nanmean(reference_2d, axis=1)
    out = {
        "gold_reward": mean_with_se(policy_2d),
        "reference_gold_reward": mean_with_se(reference_2d),
        "gold_reward_gain": mean_with_se(gain),
        "gold_win_rate": gold_win_rate(policy, reference, ties=ties),
    }
    if (policy_logps is None) != (ref_logps is None):
        raise ValueError("give both policy_logps and ref_logps (log-probs of the policy's samples), or neither")
    if policy_logps is not None:
        out["kl"] = kl_estimate(policy_logps, ref_logps, estimator=kl_estimator)
    return out


# ------------------------------------------------------------------------------------ ranking accuracy
def ranking_accuracy(logps_w, logps_l, *, ties: str = "strict") -> float:
    """Share of pairs in which the model gives the preferred response the higher likelihood.

    Chen et al. 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings":
    ``RA = (1/N) sum_i 1[ log pi(y_w,i | x_i) > log pi(y_l,i | x_i) ]``. Only the policy's own likelihoods
    are compared (no reference model), which is what separates ranking accuracy from reward accuracy.

    Parameters
    ----------
    logps_w, logps_l : array-like, shape [N]
        Summed log-probabilities of the chosen and rejected responses.
    ties : {"strict", "half"}
        An exact tie counts as wrong (the paper's strict inequality) or as half right.

    Returns
    -------
    float
        NaN for no pairs.
    """
    w = _as_float_array(logps_w, "logps_w", ndim=1)
    l_ = _as_float_array(logps_l, "logps_l", ndim=1)
    _same_shape(w, l_, "logps_w", "logps_l")
    _no_nan(w, "logps_w")
    _no_nan(l_, "logps_l")
    return _share(_correct(w, l_, ties))


def listwise_ranking_accuracy(logps, ranks, *, ties: str = "strict", average: str = "pairs",
                              weights=None) -> float:
    """Ranking accuracy over every ordered pair of ranked lists.

    For each list, every two present candidates with different ranks form an ordered pair ``(w, l)``
    and count as correct when ``log pi(y_w) > log pi(y_l)`` (Chen et al. 2024's ranking accuracy applied
    to the pair decomposition of a ranking; K = 2 gives :func:`ranking_accuracy`).

    Parameters
    ----------
    logps : array-like, shape [N, K]
        Summed log-probabilities of each candidate.
    ranks : array-like, shape [N, K]
        0 best, equal = tie (left out), -1 = padding.
    ties : {"strict", "half"}
        How an exact tie in ``logps`` counts.
    average : {"pairs", "lists"}
        ``"pairs"``: share over all ordered pairs (lists with more pairs weigh more). ``"lists"``: mean
        over lists of each list's share (lists without an ordered pair are left out).
    weights : array-like, shape [N], optional
        Record weights: each list's pairs (or, with ``"lists"``, its share) count with its weight.

    Returns
    -------
    float
        NaN when there is no ordered pair.
    """
    logps = _as_float_array(logps, "logps", ndim=2)
    winner, loser, list_of_pair = _ordered_pair_values(logps, ranks, "logps")
    return _average_pairs(_correct(winner, loser, ties), list_of_pair, logps.shape[0], average, weights)


def _idealised_correct(ref_logps_w, ref_logps_l, alpha, beta: float, ties: str) -> np.ndarray:
    w = _as_float_array(ref_logps_w, "ref_logps_w", ndim=1)
    l_ = _as_float_array(ref_logps_l, "ref_logps_l", ndim=1)
    _same_shape(w, l_, "ref_logps_w", "ref_logps_l")
    _no_nan(w, "ref_logps_w")
    _no_nan(l_, "ref_logps_l")
    alpha = _as_float_array(alpha, "alpha")
    if alpha.shape not in ((), w.shape):
        raise ValueError(f"alpha must be a number or one rate per pair, shape {w.shape}; got {alpha.shape}")
    alpha = np.broadcast_to(alpha, w.shape)
    if np.any(~np.isfinite(alpha)) or np.any((alpha < 0) | (alpha > 1)):
        raise ValueError("alpha (the true preference rate) must lie in [0, 1]")
    if not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a positive finite number, got {beta}")
    interior = (alpha > 0) & (alpha < 1)
    safe = np.where(interior, alpha, 0.5)
    # log(alpha / (1 - alpha)) in a form that stays accurate near 0 and 1
    log_odds = np.log(safe) - np.log1p(-safe)
    score = (w - l_) + log_odds / beta
    correct = _correct(score, np.zeros_like(score), ties)
    # alpha = 1: the optimum puts all of pi_ref's mass ratio behind y_w (infinite reward gap) -> always right;
    # alpha = 0: always wrong. Decided here so that an infinite reference log-ratio cannot give inf - inf.
    correct = np.where(alpha >= 1, 1.0, np.where(alpha <= 0, 0.0, correct))
    return correct


def idealised_ranking_accuracy(ref_logps_w, ref_logps_l, alpha, beta: float, *, ties: str = "strict") -> float:
    """Ranking accuracy of the exact optimum of the DPO / RLHF objective.

    Chen et al. 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings" (Theorem 3.1):
    the optimum ``pi*(y|x) ∝ pi_ref(y|x) exp(r*(x, y) / beta)`` with a Bradley--Terry reward whose
    difference is ``r*(y_w) - r*(y_l) = log(alpha / (1 - alpha))``, ``alpha`` the true rate at which
    people prefer ``y_w``, ranks the pair correctly iff

        log pi_ref(y_w|x) - log pi_ref(y_l|x) + (1/beta) log(alpha / (1 - alpha)) > 0.

    So pairs whose reference log-ratio is below ``-(1/beta) log(alpha/(1-alpha))`` stay mis-ranked even
    at the optimum. Edge cases: ``alpha = 1`` always counts correct and ``alpha = 0`` always wrong (the
    log-odds is +-inf); ``alpha = 0.5`` leaves the reference's own ranking (a zero score is a tie, counted
    by ``ties``).

    Parameters
    ----------
    ref_logps_w, ref_logps_l : array-like, shape [N]
        Reference-model log-probabilities of the chosen and rejected responses.
    alpha : float or array-like, shape [N]
        True preference rate of ``y_w`` over ``y_l`` in [0, 1].
    beta : float
        KL coefficient of the objective, > 0.
    ties : {"strict", "half"}

    Returns
    -------
    float
    """
    return _share(_idealised_correct(ref_logps_w, ref_logps_l, alpha, beta, ties))


def alignment_gap(logps_w, logps_l, ref_logps_w, ref_logps_l, alpha, beta: float, *,
                  ties: str = "strict") -> dict[str, float]:
    """Ranking accuracy, idealised ranking accuracy, and the gap between them.

    The *alignment gap* (Chen et al. 2024) is ``idealised - actual``: how far a trained policy is from
    the ranking accuracy its own objective would reach at the optimum. Returns
    ``{"ranking_accuracy", "idealised_ranking_accuracy", "alignment_gap", "n"}``.
    """
    if np.shape(_host(logps_w)) != np.shape(_host(ref_logps_w)):
        raise ValueError(f"logps_w has shape {np.shape(_host(logps_w))} but ref_logps_w has shape "
                         f"{np.shape(_host(ref_logps_w))}: the policy and the reference must score the same pairs")
    actual = ranking_accuracy(logps_w, logps_l, ties=ties)
    ideal = idealised_ranking_accuracy(ref_logps_w, ref_logps_l, alpha, beta, ties=ties)
    return {"ranking_accuracy": actual, "idealised_ranking_accuracy": ideal,
            "alignment_gap": ideal - actual, "n": int(np.asarray(logps_w).size)}


# ------------------------------------------------------------------------------- likelihood dynamics
def _displacement_summary(before: np.ndarray, after: np.ndarray, clusters=None) -> dict[str, float]:
    with np.errstate(invalid="ignore"):  # -inf - -inf: no defined change, left out like a missing value
        change = after - before
    present = ~np.isnan(change)  # missing (NaN) log-probs are left out of every statistic and of n
    change = change[present]
    if clusters is None:
        mean, se = mean_with_se(change)
    else:
        mean, se = clustered_mean_with_se(change, np.asarray(clusters)[present])
    return {
        "mean_change": mean,
        "se": se,
        "median_change": float(np.median(change)) if change.size else math.nan,
        "share_decreased": _share((change < 0).astype(np.float64)),
        "n": int(change.size),
    }


def likelihood_displacement(logps_before, logps_after, which: str = "chosen", *, clusters=None) -> dict:
    """How responses' log-probabilities move during training.

    Razin et al. 2024, "Unintentional Unalignment: Likelihood Displacement in Direct Preference
    Optimization": preference objectives can *lower* ``log pi(y_w)`` while raising the margin, moving
    probability mass to responses outside the data. For each response the change is
    ``Delta = log pi_after(y) - log pi_before(y)``; reported are its mean (with SE), median, and the
    share of responses whose log-probability decreased (``Delta < 0``).

    Parameters
    ----------
    logps_before, logps_after : array-like, shape [N] or [N, 2]
        Log-probabilities before and after training (e.g. the reference and the trained policy). 1-D
        arrays are one kind of response, named by ``which``. ``[N, 2]`` holds (chosen, rejected) columns.
    which : {"chosen", "rejected", "both"}
        Which column to summarise for 2-D input; ``"both"`` returns ``{"chosen": ..., "rejected": ...,
        "margin": ...}`` where ``margin`` is the change of ``log pi(y_w) - log pi(y_l)``.
    clusters : sequence of hashable, length N, optional
        The unit each row belongs to (e.g. the ranked list a pair comes from): the SE is then
        cluster-robust (:func:`clustered_mean_with_se`), so the pairs of one list do not count as
        independent. Default: every row its own unit.

    Returns
    -------
    dict
        ``{"mean_change", "se", "median_change", "share_decreased", "n"}`` (nested per column for
        ``"both"``). A NaN log-prob (missing) leaves its response out of every statistic and of ``n``.
    """
    before = _as_float_array(logps_before, "logps_before", ndim=(1, 2))
    after = _as_float_array(logps_after, "logps_after", ndim=(1, 2))
    _same_shape(before, after, "logps_before", "logps_after")
    if clusters is not None and len(clusters) != before.shape[0]:
        raise ValueError(f"{len(clusters)} cluster labels for {before.shape[0]} rows")
    if which not in ("chosen", "rejected", "both"):
        raise ValueError(f"which must be 'chosen', 'rejected' or 'both', got {which!r}")
    if before.ndim == 1:
        if which == "both":
            raise ValueError("which='both' needs [N, 2] arrays of (chosen, rejected) log-probabilities")
        return _displacement_summary(before, after, clusters)
    if before.shape[1] != 2:
        raise ValueError(f"2-D log-probabilities must be [N, 2] (chosen, rejected), got shape {before.shape}")
    if which == "chosen":
        return _displacement_summary(before[:, 0], after[:, 0], clusters)
    if which == "rejected":
        return _displacement_summary(before[:, 1], after[:, 1], clusters)
    return {
        "chosen": _displacement_summary(before[:, 0], after[:, 0], clusters),
        "rejected": _displacement_summary(before[:, 1], after[:, 1], clusters),
        "margin": _displacement_summary(before[:, 0] - before[:, 1], after[:, 0] - after[:, 1], clusters),
    }


# -------------------------------------------------------------------------------------- reward models
def reward_accuracy(rewards_w, rewards_l, *, ties: str = "strict") -> float:
    """Share of pairs in which a reward model scores the preferred response higher.

    ``(1/N) sum_i 1[r(x_i, y_w,i) > r(x_i, y_l,i)]`` -- the accuracy reported for reward models (e.g.
    Ouyang et al. 2022, "Training language models to follow instructions with human feedback") and, with
    the implicit reward ``beta (log pi - log pi_ref)``, DPO's "reward accuracy" (Rafailov et al. 2023).
    """
    w = _as_float_array(rewards_w, "rewards_w", ndim=1)
    l_ = _as_float_array(rewards_l, "rewards_l", ndim=1)
    _same_shape(w, l_, "rewards_w", "rewards_l")
    _no_nan(w, "rewards_w")
    _no_nan(l_, "rewards_l")
    return _share(_correct(w, l_, ties))


def listwise_reward_accuracy(rewards, ranks, *, ties: str = "strict", average: str = "pairs") -> float:
    """:func:`reward_accuracy` over every ordered pair of ranked lists (see
    :func:`listwise_ranking_accuracy` for ``ranks``, ``ties`` and ``average``)."""
    rewards = _as_float_array(rewards, "rewards", ndim=2)
    winner, loser, list_of_pair = _ordered_pair_values(rewards, ranks, "rewards")
    return _average_pairs(_correct(winner, loser, ties), list_of_pair, rewards.shape[0], average)


def _count_inversions(values: np.ndarray) -> int:
    """Number of pairs ``i < j`` with ``values[i] > values[j]`` (strict), in O(n log^2 n).

    Bottom-up merge counting, vectorised per level: at width ``w`` every block of ``2w`` items is a
    left half followed by a right half; a right item forms an inversion with each left item of its block
    that is strictly larger. Sorting by (block, value, left-before-right) makes "left items <= r" a
    cumulative count. Every pair is counted once, at the level where it first shares a block.
    """
    values = np.asarray(values)
    n = values.size
    position = np.arange(n)
    total = 0
    width = 1
    while width < n:
        block = position // (2 * width)
        is_left = (position // width) % 2 == 0
        order = np.lexsort((~is_left, values, block))  # primary key last: block, then value, left first
        block_sorted = block[order]
        left_sorted = is_left[order]
        cumulative_left = np.cumsum(left_sorted)
        block_start = np.searchsorted(block_sorted, block_sorted, side="left")
        left_before_block = np.where(block_start > 0, cumulative_left[block_start - 1], 0)
        left_at_most = cumulative_left - left_before_block  # for a right item: left items with value <= it
        left_in_block = np.bincount(block, weights=is_left).astype(np.int64)[block_sorted]
        right = ~left_sorted
        total += int((left_in_block[right] - left_at_most[right]).sum())
        width *= 2
    return total


def _tied_pairs(*columns: np.ndarray) -> int:
    """Pairs equal in every given column: sum over groups of t(t-1)/2."""
    _, counts = np.unique(np.stack(columns, axis=1), axis=0, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def kendall_tau(x, y) -> float:
    """Kendall's tau-b rank correlation, with ties.

    Kendall 1945, "The treatment of ties in ranking problems":

        tau_b = (n_c - n_d) / sqrt((n_0 - n_x)(n_0 - n_y)),

    ``n_c``/``n_d`` the concordant/discordant pairs, ``n_0 = n(n-1)/2``, ``n_x = sum_t t(t-1)/2`` over
    groups of ``t`` tied values of ``x`` (``n_y`` likewise). ``n_c - n_d`` is counted exactly in
    O(n log^2 n) with Knight's method (Knight 1966, "A computer method for calculating Kendall's tau with
    ungrouped data"): sort by ``x`` then ``y``; the discordant pairs are then the inversions of ``y``, and
    ``n_c - n_d = n_0 - n_x - n_y + n_xy - 2 n_d`` with ``n_xy`` the pairs tied in both. NaN when fewer
    than two items or when either variable is constant (the denominator is 0), as in
    ``scipy.stats.kendalltau``.
    """
    x = _as_float_array(x, "x", ndim=1)
    y = _as_float_array(y, "y", ndim=1)
    _same_shape(x, y, "x", "y")
    if np.any(~np.isfinite(x)) or np.any(~np.isfinite(y)):
        raise ValueError("kendall_tau needs finite values")
    n = x.size
    if n < 2:
        return math.nan
    order = np.lexsort((y, x))
    discordant = _count_inversions(y[order])
    n0 = n * (n - 1) // 2
    tied_x, tied_y, tied_both = _tied_pairs(x), _tied_pairs(y), _tied_pairs(x, y)
    concordant_minus_discordant = n0 - tied_x - tied_y + tied_both - 2 * discordant
    denominator = math.sqrt(float(n0 - tied_x) * float(n0 - tied_y))
    if denominator == 0:
        return math.nan
    return concordant_minus_discordant / denominator


def mean_kendall_tau(scores, ranks) -> tuple[float, float]:
    """Mean over lists of Kendall's tau-b between model scores and human ranks, with its SE.

    Each row of ``scores`` ``[N, K]`` is compared with ``-ranks`` (rank 0 best, so a higher score should
    go with a lower rank); padding (``rank -1``) is left out. Lists where tau is undefined (fewer than two
    candidates, or all tied) are left out.
    """
    scores = _as_float_array(scores, "scores", ndim=2)
    ranks = np.asarray(_host(ranks))
    if ranks.shape != scores.shape:
        raise ValueError(f"ranks has shape {ranks.shape} but scores have shape {scores.shape}")
    taus = []
    for row_scores, row_ranks in zip(scores, ranks):
        present = row_ranks >= 0
        tau = kendall_tau(row_scores[present], -row_ranks[present].astype(np.float64)) \
            if present.sum() >= 2 else math.nan
        if math.isfinite(tau):
            taus.append(tau)
    return mean_with_se(np.asarray(taus, dtype=np.float64))


# ---------------------------------------------------------------------------------------- calibration
def expected_calibration_error(probs, outcomes, n_bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error with equal-width bins, and the reliability table behind it.

    Naeini et al. 2015, "Obtaining Well Calibrated Probabilities Using Bayesian Binning"; Guo et al. 2017,
    "On Calibration of Modern Neural Networks":

        ECE = sum_b (n_b / n) | mean_{i in b} y_i - mean_{i in b} p_i |,

    bins ``[b/B, (b+1)/B)`` for ``b < B - 1`` and ``[(B-1)/B, 1]`` for the last.

    Parameters
    ----------
    probs : array-like, shape [N]
        Predicted probabilities of the event, in [0, 1].
    outcomes : array-like, shape [N]
        What happened: 0/1 (bool) or a soft frequency in [0, 1] (e.g. the share of annotators who agreed).
    n_bins : int

    Returns
    -------
    (ece, table)
        ``table`` has one dict per bin: ``lower``, ``upper``, ``count``, ``mean_probability``,
        ``mean_outcome``, ``gap`` (outcome minus probability; NaN for an empty bin). ECE is NaN for N = 0.
    """
    p = _as_float_array(probs, "probs", ndim=1)
    y = _as_float_array(outcomes, "outcomes", ndim=1)
    _same_shape(p, y, "probs", "outcomes")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("probs must lie in [0, 1]")
    if np.any(~np.isfinite(y)) or np.any((y < 0) | (y > 1)):
        raise ValueError("outcomes must lie in [0, 1]")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, float, np.integer, np.floating)) \
            or not math.isfinite(n_bins) or int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    n_bins = int(n_bins)
    index = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    sum_p = np.bincount(index, weights=p, minlength=n_bins)
    sum_y = np.bincount(index, weights=y, minlength=n_bins)
    table = []
    ece = 0.0
    for b in range(n_bins):
        count = int(counts[b])
        mean_p = sum_p[b] / count if count else math.nan
        mean_y = sum_y[b] / count if count else math.nan
        table.append({"lower": b / n_bins, "upper": (b + 1) / n_bins, "count": count,
                      "mean_probability": float(mean_p), "mean_outcome": float(mean_y),
                      "gap": float(mean_y - mean_p) if count else math.nan})
        if count:
            ece += count * abs(mean_y - mean_p)
    return (ece / p.size if p.size else math.nan), table


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def preference_calibration(margins, *, beta: float = 1.0, outcomes=1.0,
                           n_bins: int = 10) -> tuple[float, list[dict]]:
    """Calibration of a model's preference probability ``P(y_w > y_l) = sigma(beta * h)``.

    ``h`` is the margin between chosen and rejected: the implicit-reward log-ratio difference
    ``(log pi - log pi_ref)(y_w) - (log pi - log pi_ref)(y_l)`` for DPO (Rafailov et al. 2023) with
    ``beta`` the objective's, or a reward-model score difference with ``beta = 1`` (Bradley--Terry).
    Because every pair is oriented with the chosen response first, the raw outcome is always 1; each
    pair therefore enters in both orientations, ``(sigma(beta h), y)`` and ``(sigma(-beta h), 1 - y)``,
    so that over- and under-confidence are both visible (a symmetric reliability diagram). ``outcomes``
    is the observed preference rate of ``y_w`` (1 for a hard label; ``alpha`` where known).

    Returns :func:`expected_calibration_error` of the 2N oriented pairs.
    """
    h = _as_float_array(margins, "margins", ndim=1)
    _no_nan(h, "margins")
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.integer, np.floating)) \
            or not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    y = _as_float_array(outcomes, "outcomes")
    if y.shape not in ((), h.shape):
        raise ValueError(f"outcomes must be a number or one rate per margin, shape {h.shape}; got {y.shape}")
    y = np.broadcast_to(y, h.shape).astype(np.float64)
    p = np.exp(_log_sigmoid(beta * h))
    q = np.exp(_log_sigmoid(-beta * h))
    return expected_calibration_error(np.concatenate([p, q]), np.concatenate([y, 1.0 - y]), n_bins)


# -------------------------------------------------------------------------------------------- agreement
def cohens_kappa(labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> float:
    """Cohen's kappa, chance-corrected agreement of two annotators on the same items.

    Cohen 1960, "A Coefficient of Agreement for Nominal Scales":
    ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed share of items labelled the same and
    ``p_e = sum_c p_a(c) p_b(c)`` the agreement expected from each annotator's label frequencies.
    Labels are any hashable values; ``"tie"`` (or any other value) is simply one more category. ``None``
    marks an item an annotator did not label; such items are left out. NaN when no item is left, or when
    ``p_e = 1`` (both annotators always use the same single category, so agreement cannot beat chance).
    """
    a = list(labels_a)
    b = list(labels_b)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} labels from annotator a but {len(b)} from annotator b")
    both = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    n = len(both)
    if n == 0:
        return math.nan
    categories = {c: i for i, c in enumerate(dict.fromkeys([x for x, _ in both] + [y for _, y in both]))}
    counts = np.zeros((len(categories), len(categories)), dtype=np.float64)
    for x, y in both:
        counts[categories[x], categories[y]] += 1
    p_observed = np.trace(counts) / n
    p_expected = float((counts.sum(1) / n) @ (counts.sum(0) / n))
    if p_expected >= 1.0:
        return math.nan
    return float((p_observed - p_expected) / (1.0 - p_expected))


# ----------------------------------------------------------------------------------------------- groups
def group_metrics(values, groups, *, all_groups: Sequence[Hashable] | None = None,
                  higher_is_better: bool = True, min_count: int = 1, clusters=None) -> dict:
    """Per-group mean (with SE) of a per-example metric, and the worst group.

    Worst-group performance (Sagawa et al. 2020, "Distributionally Robust Neural Networks") shows whether
    an aligned model serves every annotator population or only the majority.

    Parameters
    ----------
    values : array-like, shape [N]
        Per-example values (e.g. 0/1 correctness of a pair, a gold reward). NaN values are ignored.
    groups : sequence of hashable, length N
        The group of each example (annotator id, population, topic).
    all_groups : sequence, optional
        Groups to report even when they have no example (reported with ``n = 0`` and NaN mean).
    higher_is_better : bool
        The worst group is the one with the lowest mean (True) or the highest (False).
    min_count : int
        Groups with fewer examples are reported but cannot be the worst group.
    clusters : sequence of hashable, length N, optional
        The unit of each example (e.g. the ranked list a pair comes from): each group's SE is then
        cluster-robust (:func:`clustered_mean_with_se`). Default: examples are independent.

    Returns
    -------
    dict
        ``{"groups": {group: {"mean", "se", "n"}}, "worst_group", "worst_value", "best_group",
        "best_value", "gap"}`` with ``gap = |best - worst|``; the worst/best entries are None/NaN when no
        group is eligible.
    """
    values = _as_float_array(values, "values", ndim=1)
    groups = list(groups)
    if len(groups) != values.size:
        raise ValueError(f"{values.size} values but {len(groups)} group labels")
    if clusters is not None and len(clusters) != values.size:
        raise ValueError(f"{values.size} values but {len(clusters)} cluster labels")
    unit = list(range(values.size)) if clusters is None else list(clusters)
    members: dict = {g: [] for g in (all_groups or [])}
    for value, group, cluster in zip(values, groups, unit):
        members.setdefault(group, []).append((value, cluster))
    per_group = {}
    for group, rows in members.items():
        finite = [(v, c) for v, c in rows if math.isfinite(v)]
        array = np.asarray([v for v, _ in finite], dtype=np.float64)
        if clusters is None or not finite:
            mean, se = mean_with_se(array)
        else:
            mean, se = clustered_mean_with_se(array, np.asarray([c for _, c in finite]))
        per_group[group] = {"mean": mean, "se": se, "n": int(array.size)}
    eligible = [(g, r["mean"]) for g, r in per_group.items() if r["n"] >= max(1, min_count)]
    out = {"groups": per_group, "worst_group": None, "worst_value": math.nan,
           "best_group": None, "best_value": math.nan, "gap": math.nan}
    if eligible:
        pick_worst = min if higher_is_better else max
        pick_best = max if higher_is_better else min
        worst = pick_worst(eligible, key=lambda item: item[1])
        best = pick_best(eligible, key=lambda item: item[1])
        out.update(worst_group=worst[0], worst_value=worst[1], best_group=best[0], best_value=best[1],
                   gap=abs(best[1] - worst[1]))
    return out
