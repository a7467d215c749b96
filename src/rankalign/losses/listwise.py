"""Listwise preference objectives: one loss per ranked list of K candidates (variable K, ties, padding).

Notation (DESIGN.md): ``rho_i = log pi_theta(y_i|x) - log pi_ref(y_i|x)`` (the policy log-prob itself
when ``ref_logps`` is None), ``ranks`` ``[B, K]`` with 0 best, equal values tied and ``-1`` padding.

**Ties.** A tie group (candidates sharing a rank) contributes no ordering between its members. For the
Plackett–Luce family (``pl_dpo``, ``pro`` and the reward model's ``pl_reward``) each member of a group
is "chosen" against itself and the candidates of *strictly lower* groups only (the Davidson–Luce /
"each member over the lower groups" convention); tied companions are not in its denominator, so the
loss does not depend on their order, and the last group contributes nothing. Without ties this is the
ordinary Plackett–Luce likelihood. Pair-based objectives (``lipo_lambda``, ``all_pairs_dpo``,
``best_vs_rest``) skip tied pairs. ``listnet`` gives tied candidates equal target probability.

**Padding.** Padded entries (rank -1) are replaced by zeros before any arithmetic, so whatever values they
hold (even NaN or 1e30) can change neither a row's loss nor its gradient, and receive zero gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (
    Pairs,
    list_tensor,
    log_ratios,
    ordered_pairs,
    resolve_list_ranks,
    valid_mask,
    zero_padding,
)
from ._registry import Range, register

__all__ = ["pl_dpo", "pro", "lipo_lambda", "all_pairs_dpo", "listnet", "best_vs_rest", "sppo", "win_rates_from_ranks"]


# ---------------------------------------------------------------------------------------------- helpers
def grades_from_ranks(ranks: Tensor, dtype: torch.dtype) -> Tensor:
    """Default grades when none are given: ``g = max_rank - rank`` per list (best gets the largest).

    For a strict ranking of K this is K-1, ..., 1, 0; tied candidates get equal grades; padding gets 0.
    """
    valid = valid_mask(ranks)
    worst = torch.where(valid, ranks, torch.full_like(ranks, -1)).amax(1, keepdim=True)
    return torch.where(valid, worst - ranks, torch.zeros_like(ranks)).to(dtype)


def _grades_or_default(grades, ranks: Tensor, policy_logps: Tensor, valid: Tensor, dtype: torch.dtype) -> Tensor:
    """The given ``[B, K]`` grades (padding zeroed), or :func:`grades_from_ranks` in ``dtype`` when None.

    A list with a NaN grade on a present candidate has no grades (a training batch that mixes scored and
    unscored lists carries NaN rows for the unscored ones) and gets :func:`grades_from_ranks` for the whole
    list; an infinite grade is a ValueError."""
    default = grades_from_ranks(ranks, dtype)
    if grades is None:
        return default
    given = list_tensor(grades, policy_logps, valid, "grades").to(dtype)
    if bool(torch.isinf(given).any()):
        raise ValueError(f"grades must be finite, got {given[torch.isinf(given)][0].item()}")
    missing = (torch.isnan(given) & valid).any(1, keepdim=True)
    return torch.where(missing, default, given)


def _winner_loser_keys(ranks: Tensor) -> tuple[Tensor, Tensor]:
    """``ranks`` as ``[K, B]`` comparison keys (candidates first: the batch is the contiguous dimension)
    with padding ranked last as a winner and first as a loser, so ``win[i] < lose[j]`` holds exactly when
    i is strictly preferred to j and both are present."""
    valid = valid_mask(ranks)
    as_winner = torch.where(valid, ranks, torch.full_like(ranks, torch.iinfo(ranks.dtype).max))
    as_loser = torch.where(valid, ranks, torch.full_like(ranks, -1))
    return as_winner.t().contiguous(), as_loser.t().contiguous()


def _pair_signs(ranks: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Every unordered column pair once, ``first < second`` (``[P]`` index vectors, P = K(K-1)/2), and
    the orientation of each, ``[P, B]`` (pairs first: the batch is the contiguous dimension, so the
    gathers copy whole rows): +1 when ``first`` is strictly preferred, -1 when ``second`` is, 0 for tied
    pairs and pairs touching padding (the pairs of :func:`ordered_pairs`, as a sign)."""
    k = ranks.shape[1]
    first, second = torch.triu_indices(k, k, offset=1, device=ranks.device)
    as_winner, as_loser = _winner_loser_keys(ranks)  # a pair touching padding is never ordered
    first_wins = as_winner.index_select(0, first) < as_loser.index_select(0, second)
    second_wins = as_winner.index_select(0, second) < as_loser.index_select(0, first)
    return first, second, first_wins.to(dtype) - second_wins.to(dtype)


def _pair_take(values: Tensor, first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, K]`` values at the ``first`` and ``second`` member of each pair of :func:`_pair_signs`,
    ``[P, B]`` each."""
    columns = values.t().contiguous()
    return columns.index_select(0, first), columns.index_select(0, second)


def _pair_differences(values: Tensor, first: Tensor, second: Tensor, sign: Tensor) -> Tensor:
    """``values[winner] - values[loser]`` for each pair of :func:`_pair_signs`, ``[P, B]`` (exactly, up
    to the sign of a zero), 0 for an unordered pair: finite wherever ``values`` is."""
    at_first, at_second = _pair_take(values, first, second)
    return (at_first - at_second) * sign


def _scaled_log_ratios(policy_logps: Tensor, ref_logps: Tensor | None, valid: Tensor, beta: float) -> Tensor:
    """``beta * rho`` with padding zeroed (zeroed on each input first, so NaN padding cannot reach rho)."""
    policy = zero_padding(policy_logps, valid)
    ref = None if ref_logps is None else zero_padding(ref_logps, valid)
    return beta * log_ratios(policy, ref)


def plackett_luce_nll(scores: Tensor, ranks: Tensor) -> Tensor:
    """Plackett–Luce negative log-likelihood of each list, ``[B]``, with ties and padding.

    ``-sum_i [s_i - log(exp(s_i) + sum_{j below i} exp(s_j))]`` over present candidates i, where "below"
    means strictly lower rank. Without ties this is ``-sum_k log[exp(s_tau(k)) / sum_{m >= k}
    exp(s_tau(m))]``; a candidate with nothing below it (the last group, K = 1, all-tie lists)
    contributes exactly 0. ``scores`` must already be padding-free. The list is sorted once and the
    denominators are suffix log-sum-exps, ``O(K log K)`` per list.
    """
    return _plackett_luce_sorted(scores, ranks)


def _plackett_luce_sorted(scores: Tensor, ranks: Tensor) -> Tensor:
    """:func:`plackett_luce_nll`: sort by rank, then a suffix log-sum-exp below each tie group."""
    batch = scores.shape[0]
    last = torch.iinfo(torch.long).max
    key = torch.where(ranks >= 0, ranks, torch.full_like(ranks, last))  # padding sorts to the end
    if bool((key[:, 1:] >= key[:, :-1]).all()):  # already in ranking order (e.g. ranks=None): no sort
        key_sorted, sorted_scores = key, scores
    else:
        key_sorted, order = torch.sort(key, dim=1, stable=True)
        sorted_scores = scores.gather(1, order)
    present = key_sorted != last
    # A very negative finite score for padding: exp() of it is 0, and no -inf reaches a backward pass.
    floor = torch.finfo(scores.dtype).min / 4
    sorted_scores = torch.where(present, sorted_scores, torch.full_like(scores, floor))
    suffix = torch.cat([_suffix_logsumexp(sorted_scores), sorted_scores.new_full((batch, 1), floor)], dim=1)
    present_after = torch.cat([present, present.new_zeros((batch, 1))], dim=1)
    if bool((key_sorted[:, 1:] != key_sorted[:, :-1]).all()):  # no ties: below starts at the next position
        lower = suffix[:, 1:]
        has_below = present_after[:, 1:]
    else:  # first position strictly below each candidate's tie group (K when nothing is below)
        below_start = torch.searchsorted(key_sorted.contiguous(), key_sorted.contiguous(), right=True)
        lower = suffix.gather(1, below_start)
        has_below = present_after.gather(1, below_start)
    # log(exp(s) + exp(lower)) - s = softplus(lower - s), written as -logsigmoid(s - lower): exact, stable.
    # A step with nothing below is replaced by 0 (its value is log 1), so a -inf score there cannot give inf.
    per_step = -F.logsigmoid(sorted_scores - lower)
    return zero_padding(per_step, present & has_below).sum(1)


def _pro_ranking_with_temperatures(scores: Tensor, ranks: Tensor, rewards: Tensor) -> Tensor:
    """PRO's L_PRO with reward-gap temperatures, ``[B]``: step k's logits are ``(r_k - r_i) s_i`` for the
    candidates i strictly below k and ``max_i (r_k - r_i) s_k`` for k itself (gaps clamped at 0)."""
    # Work on [K, K, B] (step k, candidate i, list b): the batch is the contiguous dimension.
    as_winner, as_loser = _winner_loser_keys(ranks)
    below = as_winner.unsqueeze(1) < as_loser.unsqueeze(0)  # [k, i, b]: i strictly below k, both present
    below_f = below.to(scores.dtype)
    scores_t = scores.t()  # [K, B]
    with torch.no_grad():  # constants of the step softmaxes, built in place (few [K, K, B] buffers)
        rewards_t = rewards.t().contiguous()
        # gaps are constants (rewards carry no gradient), 0 off the below-set; multiplying by the mask is
        # exact when every reward is finite, else where() keeps non-finite gaps of other pairs out
        gap = (rewards_t.unsqueeze(1) - rewards_t.unsqueeze(0)).clamp_min_(0.0)
        gap = gap.mul_(below_f) if bool(torch.isfinite(rewards).all()) else torch.where(below, gap, 0.0)
        # Detached shift = max logit of the step (it cancels in value and gradient). A finite floor stands
        # in off the below-set (so for a step with nothing below); such a step contributes exactly 0.
        floor = torch.finfo(scores.dtype).min / 4
        buffer = (below_f - 1.0).mul_(-floor).addcmul_(gap, scores_t.detach().unsqueeze(0))
        shift = buffer.amax(1)
        # minus the shift on the below-set, 0 off it: exp() sees 0 there (then masked), never overflows
        neg_shift_below = torch.mul(below_f, (-shift).unsqueeze(1), out=buffer)
        empty = (below_f.sum(1) == 0).to(scores.dtype)  # log(0 + 1) for a step with nothing below
    own = gap.amax(1) * scores_t  # 1/T_k^k = max_{i below k} (r_k - r_i); 0 when nothing is below
    # sum_{i below k} exp((r_k - r_i) s_i - shift_k): the exponent is 0 off the below-set (masked after exp)
    terms = torch.addcmul(neg_shift_below, gap, scores_t.unsqueeze(0)).exp() * below_f
    others = (terms.sum(1) + empty).log() + shift
    per_step = -F.logsigmoid(own - others)  # log(exp(own) + exp(others)) - own
    return zero_padding(per_step, valid_mask(ranks).t()).sum(0)


def _suffix_logsumexp(values: Tensor) -> Tensor:
    """``out[:, p] = logsumexp(values[:, p:])``. For the small K of preference lists a loop of
    ``logaddexp`` over columns is several times faster (forward + backward) than ``torch.logcumsumexp``."""
    k = values.shape[1]
    if k > 32:
        return torch.logcumsumexp(values.flip(1), dim=1).flip(1)
    rows = values.t().contiguous()  # [K, B]: each column of ``values`` contiguous (several times faster)
    columns = [rows[k - 1]]
    for p in range(k - 2, -1, -1):
        columns.append(torch.logaddexp(columns[-1], rows[p]))
    return torch.stack(columns[::-1], dim=1)


def _dpo_per_pair(reward_chosen: Tensor, reward_rejected: Tensor) -> Tensor:
    """-log sigmoid(beta rho_w - beta rho_l) on already-scaled rewards (the DPO pair term)."""
    return -F.logsigmoid(reward_chosen - reward_rejected)


# --------------------------------------------------------------------------------------------- objectives
@register("pl_dpo", family="listwise",
          paper="Rafailov et al., Direct Preference Optimization: Your Language Model is Secretly a "
                "Reward Model, NeurIPS 2023 (arXiv:2305.18290), Appendix A.3 (Plackett-Luce)")
def pl_dpo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
           lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1) -> Tensor:
    r"""Plackett–Luce DPO: the ranking likelihood of the implicit rewards ``beta * rho``.

    Model: the ranking tau is drawn from a Plackett–Luce model on ``r_i = beta rho_i``, and the loss is its
    negative log-likelihood (DPO paper, Appendix A.3)::

        L = -sum_{k=1}^{K-1} log [ exp(beta rho_tau(k)) / sum_{m >= k} exp(beta rho_tau(m)) ]

    Intuition: repeatedly pick the best remaining candidate with a softmax over implicit rewards, so every
    candidate is pushed above all candidates ranked below it, in proportion to how likely the policy
    currently is to get that choice wrong. At K = 2 it is DPO: ``-log sigma(beta (rho_w - rho_l))``.

    Parameters
    ----------
    policy_logps, ref_logps : ``[B, K]`` summed response log-probs; ``ref_logps=None`` is reference-free.
    ranks : ``[B, K]`` long, 0 best, ties equal, -1 padding. None: column order; if None and ``grades``
        are given, ranks are derived from the grades (higher is better, equal grades tie).
    lengths, grades : accepted for the common signature; ``lengths`` is unused.
    beta : float, the KL-strength of DPO (TRL's ``beta``), default 0.1.

    Ties: each member of a tie group is chosen against itself and the strictly lower groups only (module
    docstring), so tied members are never ordered and the last group (or an all-tie list, or K = 1)
    contributes 0. Padding (-1) is excluded. Returns the per-list loss ``[B]``.
    """
    ranks = resolve_list_ranks(policy_logps, ranks, grades)
    rewards = _scaled_log_ratios(policy_logps, ref_logps, valid_mask(ranks), beta)
    return plackett_luce_nll(rewards, ranks)


@register("pro", family="listwise", reference_free=True,
          paper="Song et al., Preference Ranking Optimization for Human Alignment, AAAI 2024 (arXiv:2306.17492)",
          ranges={"sft_form": Range(kind="choice", choices=("authors", "mean_token"))})
def pro(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
        lengths: Tensor | None = None, grades: Tensor | None = None, sft_weight: float = 0.05,
        sft_form: str = "authors") -> Tensor:
    r"""Preference Ranking Optimization (PRO): peel-off softmax on length-averaged scores plus SFT.

    Scores: ``s_i = log pi_theta(y_i|x) / |y_i|`` (the mean token log-prob; PRO is reference-free, and
    this is the default ``ref_logps=None``; if ``ref_logps`` is given, ``s_i = rho_i / |y_i|``).
    With candidates in ranking order y^1 > ... > y^n (notation of the paper)::

        L_PRO = -sum_{k=1}^{n-1} log [ exp(s_k / T_k^k) / sum_{i=k}^{n} exp(s_i / T_k^i) ]
        T_k^i = 1 / (r_k - r_i)   for i > k,        T_k^k = min_{i > k} T_k^i
        L     = L_PRO + sft_weight * L_SFT
        L_SFT = (n - 1)^2 * (-log pi_theta(y^1|x))      sft_form="authors" (default)
        L_SFT = -log pi_theta(y^1|x) / |y^1|            sft_form="mean_token"

    where r are the ``grades`` (the paper's reward-model scores). Without grades every T = 1 and each
    step is a plain softmax over the remaining candidates. Intuition: the best response must beat all
    others, the second all but the best, and so on; with rewards, a step contrasts candidates more
    sharply the larger their reward gap, and the best candidate's own logit is scaled by its largest gap.
    At K = 2, T = 1 and ``sft_weight = 0`` this is Bradley–Terry on length-averaged scores,
    ``-log sigma(s_1 - s_2)``.

    Parameters
    ----------
    policy_logps : ``[B, K]`` summed policy log-probs.
    ref_logps : optional ``[B, K]``; None (default) is the paper's reference-free PRO.
    ranks : ``[B, K]`` ranks (0 best, ties equal, -1 padding). None: derived from ``grades`` when given,
        else column order.
    lengths : ``[B, K]`` response token counts, required (PRO is defined on length-averaged scores).
    grades : optional ``[B, K]`` rewards r for the temperatures. The ordering comes from ``ranks``; gaps
        ``r_k - r_i`` that are negative (grades disagreeing with ranks) are clamped to 0. A list with a NaN
        grade on a present candidate (a list without scores in a batch with scored ones) has every T = 1.
    sft_weight : float, the weight (the paper's beta) of the SFT term; default 0.05, the value in the
        paper's experiments as we read them. 0 gives the ranking term alone.
    sft_form : {"authors", "mean_token"}
        "authors" (default): the form in the authors' released training code, the *summed* (not
        length-averaged) negative log-prob of the best candidate times ``(n - 1)^2``, n the number of
        candidates in the list (padding excluded), so the SFT term grows with the list as the ranking
        term does. "mean_token": the negative mean token log-prob of the best candidate, no factor (a
        reading of the paper's text; rankalign's default before it followed the authors' code).

    Conventions: when the best group is tied the SFT term averages over its members; a list with one
    group (K = 1, all tied) has no ranking term but keeps its SFT term (with ``(n - 1)^2 = 0`` for
    K = 1 under "authors"). Ties: step k's softmax contains candidate k and the strictly
    lower groups only, as for ``pl_dpo``; padding is excluded. Returns ``[B]``.
    """
    if lengths is None:
        raise ValueError("pro needs lengths ([B, K] response token counts): PRO scores are length-averaged")
    if sft_form not in ("authors", "mean_token"):
        raise ValueError(f"sft_form must be 'authors' or 'mean_token', got {sft_form!r}")
    ranks = resolve_list_ranks(policy_logps, ranks, grades)
    valid = valid_mask(ranks)
    lengths = list_tensor(lengths, policy_logps, valid, "lengths", fill=1.0)
    policy = zero_padding(policy_logps, valid)
    scores = log_ratios(policy, None if ref_logps is None else zero_padding(ref_logps, valid)) / lengths
    if grades is None:
        ranking = plackett_luce_nll(scores, ranks)
    else:
        rewards = list_tensor(grades, policy_logps, valid, "grades")
        if bool(torch.isinf(rewards).any()):
            raise ValueError(f"grades must be finite, got {rewards[torch.isinf(rewards)][0].item()}")
        # a list with a NaN grade has no rewards (an unscored list in a batch with scored ones): every T = 1
        missing = (torch.isnan(rewards) & valid).any(1)
        ranking = _pro_ranking_with_temperatures(scores, ranks, rewards.masked_fill(missing.unsqueeze(1), 0.0))
        if bool(missing.any()):
            ranking = torch.where(missing, plackett_luce_nll(scores, ranks), ranking)
    if sft_weight == 0:
        return ranking
    best_rank = torch.where(valid, ranks, torch.full_like(ranks, torch.iinfo(torch.long).max)).amin(1, keepdim=True)
    best = valid & (ranks == best_rank)
    if sft_form == "mean_token":
        sft = -(zero_padding(policy / lengths, best)).sum(1) / best.sum(1).clamp_min(1)
    else:
        n = valid.sum(1).to(policy.dtype)
        sft = (n - 1) ** 2 * (-(zero_padding(policy, best)).sum(1) / best.sum(1).clamp_min(1))
    return ranking + sft_weight * sft


@register("lipo_lambda", family="listwise",
          paper="Liu et al., LiPO: Listwise Preference Optimization through Learning-to-Rank, arXiv 2024 "
                "(arXiv:2402.01878)")
def lipo_lambda(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
                lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1) -> Tensor:
    r"""LiPO-λ: pairwise logistic losses weighted by the LambdaLoss / NDCG swap weight.

    With ``s_i = beta rho_i`` (the paper's LiPO-λ objective)::

        L = -sum_{g_i > g_j} Delta_ij log sigma(s_i - s_j)
        Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|,   G = 2^g - 1,   D(tau) = log2(1 + tau)

    where tau_i is the 1-based position of candidate i when the list is sorted by the *current* model
    scores s (descending); G and D are the gain and the (base-2, DCG) discount of LambdaLoss. Delta is
    computed from detached scores: the weights are not differentiated.
    Intuition: a pair matters more when the grades differ more and when swapping the two would move
    them across important (top) positions, as in LambdaRank's NDCG weights.

    Parameters
    ----------
    policy_logps, ref_logps : ``[B, K]``; ``ref_logps=None`` is reference-free.
    ranks : ``[B, K]`` ranks; the summed pairs are the strictly ordered pairs of ``ranks`` (ties and
        padding skipped). None: derived from ``grades`` when given (so pairs are exactly ``g_i > g_j``),
        else column order.
    grades : optional ``[B, K]`` label values g (the paper uses values in [0, 1]). Default: derived from
        the ranks as ``g = max_rank - rank`` (K-1, ..., 1, 0 for a strict list of K); so is a list with a
        NaN grade on a present candidate (a list without scores in a batch with scored ones). A grade whose
        gain ``2^g - 1`` overflows the dtype (g >= 128 in float32) is a ValueError.
    lengths : unused (common signature).
    beta : float, default 0.1.

    Conventions: the loss is the paper's *sum* over pairs, not normalised by the number of pairs (divide
    yourself if lists of different K should count equally). Candidates with equal current scores get
    positions in column order (a stable sort). At K = 2 with default grades, G = (1, 0) and the positions
    are {1, 2} whichever way the scores lie, so ``Delta = 1 * (1/log2(2) - 1/log2(3)) = 1 - ln 2 / ln 3``
    and LiPO-λ is that constant (about 0.3691) times DPO. Returns ``[B]``.
    """
    ranks = resolve_list_ranks(policy_logps, ranks, grades)
    valid = valid_mask(ranks)
    scores = _scaled_log_ratios(policy_logps, ref_logps, valid, beta)
    grades = _grades_or_default(grades, ranks, policy_logps, valid, scores.dtype)
    first, second, sign = _pair_signs(ranks, scores.dtype)
    scores_t = scores.t().contiguous()  # [K, B]: the batch contiguous, each pair side gathered as whole rows
    with torch.no_grad():
        gains = torch.exp2(grades.t().contiguous()) - 1.0
        if not bool(torch.isfinite(gains).all()):
            largest = grades.amax().item()
            limit = math.log2(torch.finfo(gains.dtype).max)
            raise ValueError(f"lipo_lambda: the gain 2^g - 1 of grade {largest:g} overflows {gains.dtype} (grades "
                             f"below {limit:.0f} fit); rescale the grades (the paper's lie in [0, 1]) or compute "
                             f"in float64")
        position = _positions_by_score_t(scores_t.detach(), valid.t().contiguous())
        inverse_discount = 1.0 / torch.log2(1.0 + position)
        weights = ((gains.index_select(0, first) - gains.index_select(0, second)).abs()
                   * (inverse_discount.index_select(0, first) - inverse_discount.index_select(0, second)).abs())
        weights = weights * sign.abs()  # 0 off the ordered pairs (every gain is finite)
    # -log sigma(s_w - s_l) per pair, [P, B]; an unordered pair sees 0 (finite) and has weight 0
    log_sig = F.logsigmoid((scores_t.index_select(0, first) - scores_t.index_select(0, second)) * sign)
    return -(log_sig * weights).sum(0)


def _positions_by_score_t(scores_t: Tensor, valid_t: Tensor) -> Tensor:
    """1-based position of each present candidate, sorted by score descending, on ``[K, B]`` (candidates first).

    Counted rather than sorted: ``position_i = 1 + #{j : s_j > s_i} + #{j < i : s_j = s_i}``, the position
    of a stable descending sort, on ``[K, K, B]`` comparisons (the batch contiguous)."""
    key = torch.where(valid_t, scores_t, torch.full_like(scores_t, -math.inf))
    k = scores_t.shape[0]
    earlier = torch.ones(k, k, dtype=torch.bool, device=scores_t.device).triu(1).unsqueeze(2)  # [j, i]: j < i
    other, this = key.unsqueeze(1), key.unsqueeze(0)  # [j, 1, b], [1, i, b]
    ahead = torch.where(earlier, other >= this, other > this)  # [j, i, b]: j sorts before i
    return (ahead.sum(0) + 1).to(scores_t.dtype)


@register("all_pairs_dpo", family="listwise",
          paper="Rafailov et al., Direct Preference Optimization, NeurIPS 2023 (arXiv:2305.18290), applied to "
                "every ordered pair of a ranking (as in Ouyang et al., InstructGPT, arXiv:2203.02155)")
def all_pairs_dpo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
                  lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1,
                  pair_weights: Tensor | None = None) -> Tensor:
    r"""All-pairs DPO: the (weighted) mean DPO loss over every strictly ordered pair of the list.

    ``L = sum_{i > j} w_ij * -log sigma(beta (rho_i - rho_j)) / sum_{i > j} w_ij`` over pairs with i
    ranked strictly above j. Intuition: a ranking of K is the K(K-1)/2 pairwise preferences it implies,
    each a DPO term; averaging keeps the scale of one pair whatever K is (InstructGPT treats the pairs of
    one ranking as one batch element for the same reason). At K = 2 it is DPO.

    Parameters
    ----------
    policy_logps, ref_logps : ``[B, K]``; ``ref_logps=None`` is reference-free.
    ranks : ``[B, K]``; None: from ``grades`` if given, else column order. Tied pairs and pairs with
        padding are skipped; a list without an ordered pair (K = 1, all tied) has loss 0.
    pair_weights : optional ``[B, K, K]``; ``[b, i, j]`` weights the pair where i beats j (entries of
        other pairs are ignored). The loss is the weighted *mean* (weights are relative within a list).
    lengths, grades : unused beyond deriving ranks (common signature).
    beta : float, default 0.1.
    """
    ranks = resolve_list_ranks(policy_logps, ranks, grades)
    rewards = _scaled_log_ratios(policy_logps, ref_logps, valid_mask(ranks), beta)
    first, second, sign = _pair_signs(ranks, rewards.dtype)
    if pair_weights is None:
        weights = sign.abs()
    else:
        batch, k = ranks.shape
        pair_weights = torch.as_tensor(pair_weights, device=rewards.device).to(rewards.dtype)
        if pair_weights.shape != (batch, k, k):
            raise ValueError(f"pair_weights has shape {tuple(pair_weights.shape)}, expected {(batch, k, k)}")
        first_wins, second_wins = _pair_take(pair_weights.reshape(batch, k * k), first * k + second,
                                             second * k + first)  # [b, first, second], [b, second, first]
        weights = torch.where(sign > 0, first_wins, torch.where(sign < 0, second_wins, torch.zeros_like(sign)))
    # -log sigma(beta (rho_w - rho_l)) per pair; an unordered pair sees 0 (finite) and has weight 0. The
    # weighted mean over pairs, 0 for a list without one.
    log_sig = F.logsigmoid(_pair_differences(rewards, first, second, sign))
    total = -(log_sig * weights).sum(0)
    return total / weights.sum(0).clamp_min(torch.finfo(rewards.dtype).tiny)


@register("listnet", family="listwise",
          paper="Cao et al., Learning to Rank: From Pairwise Approach to Listwise Approach (ListNet), ICML 2007")
def listnet(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
            lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1,
            temperature: float = 1.0) -> Tensor:
    r"""ListNet (top-one): cross-entropy between the grade distribution and the implicit-reward softmax.

    ``L = -sum_i p_i log q_i``, ``p = softmax(g / temperature)``, ``q = softmax(beta rho)`` over the
    present candidates of a list. Intuition: the probability that each candidate is ranked first should
    match between the labels and the model (ListNet's top-one probability). As in the paper this is the
    cross-entropy, so its minimum is the entropy of p, not 0.

    Parameters
    ----------
    policy_logps, ref_logps : ``[B, K]``; ``ref_logps=None`` is reference-free.
    ranks : ``[B, K]`` (only -1 padding matters when grades are given). None: derived from ``grades``
        when given (a NaN grade pads), else column order.
    grades : optional ``[B, K]`` label scores; default ``g = max_rank - rank`` from the ranks, also for a
        list with a NaN grade on a present candidate (a list without scores in a batch with scored ones).
    lengths : unused.
    beta : float, default 0.1; temperature : float, the target softmax temperature, default 1.

    Ties get equal target probability; padding is left out of both softmaxes; K = 1 gives 0.
    """
    ranks = resolve_list_ranks(policy_logps, ranks, grades)
    valid = valid_mask(ranks)
    rewards = _scaled_log_ratios(policy_logps, ref_logps, valid, beta)
    grades = _grades_or_default(grades, ranks, policy_logps, valid, rewards.dtype)
    any_valid = valid.any(1, keepdim=True)
    masked = ~valid & any_valid  # an entirely padded row keeps finite zeros (its loss is 0 anyway)
    log_q = torch.log_softmax(rewards.masked_fill(masked, -math.inf), dim=1)
    target = torch.softmax((grades / temperature).masked_fill(masked, -math.inf), dim=1)
    cross = target * zero_padding(log_q, valid)
    return -zero_padding(cross, valid).sum(1)


@register("best_vs_rest", family="listwise",
          paper="Rafailov et al., Direct Preference Optimization, NeurIPS 2023 (arXiv:2305.18290), best "
                "candidate against each of the others")
def best_vs_rest(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
                 lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1) -> Tensor:
    r"""Best-vs-rest DPO: mean DPO loss of every best-group candidate against every lower candidate.

    ``L = mean_{i in best group, j below} -log sigma(beta (rho_i - rho_j))``. Intuition: only the top
    choice is trusted (a best-of-K pick, or a noisy tail of the ranking); the order among the rest is
    ignored. These are exactly the pairs of ``RankedList.to_pairs("best_vs_rest", ties=False)``: every
    member of the best rank group with every member of a lower group. At K = 2 it is DPO.

    Parameters: as :func:`all_pairs_dpo` without weights. Ties inside the best group are never ordered
    (each member is paired with the lower groups); ties below it are irrelevant; padding is skipped; a
    list with one group (K = 1, all tied) has loss 0.
    """
    ranks = resolve_list_ranks(policy_logps, ranks, grades)
    valid = valid_mask(ranks)
    rewards = _scaled_log_ratios(policy_logps, ref_logps, valid, beta)
    best_rank = torch.where(valid, ranks, torch.full_like(ranks, torch.iinfo(torch.long).max)).amin(1, keepdim=True)
    best = valid & (ranks == best_rank)
    if bool((best.sum(1) == 1).all()):  # one best candidate per list: K - 1 pairs, no pair enumeration
        best_reward = rewards.gather(1, best.long().argmax(1, keepdim=True))
        rest = valid & ~best
        per_candidate = zero_padding(_dpo_per_pair(best_reward, rewards), rest)
        return per_candidate.sum(1) / rest.sum(1).clamp_min(1).to(rewards.dtype)
    pairs = ordered_pairs(ranks)
    winner_is_best = best.gather(1, pairs.winner)
    best_pairs = Pairs(winner=pairs.winner, loser=pairs.loser, valid=pairs.valid & winner_is_best)
    chosen, rejected = best_pairs.take(rewards)
    return best_pairs.mean(_dpo_per_pair(chosen, rejected))


#: How :func:`sppo` estimates ``P(y_i beats the policy)`` from a ranking (see :func:`win_rates_from_ranks`).
SPPO_ESTIMATORS = ("all_samples", "leave_one_out")


def sppo_win_rates(pairwise: Tensor, valid: Tensor, estimator: str = "all_samples") -> Tensor:
    """Each candidate's ``P(y_i beats the policy)`` from the pairwise ``P(y_i > y_j)`` of its group of n samples.

    * ``"all_samples"``: SPPO's estimator (Wu et al. 2024, and the authors' code), the mean over all n
      samples with ``P(y_i > y_i) = 1/2``;
    * ``"leave_one_out"``: the mean over the *other* n - 1; its centred value ``P_i - 1/2`` is n/(n - 1)
      times the all-samples one.

    ``pairwise`` is ``[B, K, K]`` (its diagonal is not read), ``valid`` ``[B, K]``; 0.5 for a group of one
    and at padding (where it is never used).
    """
    if estimator not in SPPO_ESTIMATORS:
        raise ValueError(f"estimator must be one of {SPPO_ESTIMATORS}, got {estimator!r}")
    both = valid.unsqueeze(2) & valid.unsqueeze(1)
    off_diagonal = ~torch.eye(pairwise.shape[-1], dtype=torch.bool, device=pairwise.device)
    beats = torch.where(both & off_diagonal, pairwise, torch.zeros_like(pairwise)).sum(2)
    others = (valid.sum(1, keepdim=True) - 1).to(pairwise.dtype)
    if estimator == "all_samples":
        rates = (beats + 0.5) / (others + 1).clamp_min(1)
    else:
        rates = beats / others.clamp_min(1)
    return torch.where(valid & (others > 0), rates, torch.full_like(rates, 0.5))


def win_rates_from_ranks(ranks: Tensor, dtype: torch.dtype = torch.float32, *,
                         estimator: str = "leave_one_out") -> Tensor:
    """:func:`sppo_win_rates` of hard comparisons from a ranking: ``P(y_i > y_j)`` is 1, 1/2 (tie) or 0, so
    ``"leave_one_out"`` gives ``(#below + #tied/2) / (n - 1)`` and ``"all_samples"``
    ``(#below + #tied/2 + 1/2) / n``."""
    pairwise = ((ranks.unsqueeze(2) < ranks.unsqueeze(1)).to(dtype)
                + 0.5 * (ranks.unsqueeze(2) == ranks.unsqueeze(1)).to(dtype))
    return sppo_win_rates(pairwise, valid_mask(ranks), estimator)


@register("sppo", family="listwise",
          paper="Wu, Sun, Yuan, Ji, Yang, Gu, Self-Play Preference Optimization for Language Model Alignment, "
                "ICLR 2025 (arXiv:2405.00675)",
          ranges={"estimator": Range(kind="choice", choices=SPPO_ESTIMATORS)})
def sppo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
         lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1,
         estimator: str = "all_samples") -> Tensor:
    """Self-Play Preference Optimisation with soft win probabilities (SPPO; Wu et al., ICLR 2025, Eq. 4.7).

    Each sampled response's log-ratio against the previous self-play policy is regressed onto its
    centred win probability, with ``eta = 1/beta``::

        loss = (1/n) sum_i (rho_i - (P_i - 1/2) / beta)^2

    ``P_i = P(y_i beats pi_t | x)``, estimated from a group of n samples of pi_t (``grades``, in [0, 1]).
    The paper (and the authors' code) average a preference model's ``P(y_i > y_k)`` over *all* n samples,
    ``y_i`` itself included (``P(y_i > y_i) = 1/2``): ``P_i = (1/n) sum_k P(y_i > y_k)``; pass those as
    ``grades`` for soft preferences. With ``grades=None`` the ranking's hard comparisons give ``P_i``
    (:func:`win_rates_from_ranks`, ties counting 1/2) by the paper's estimator, ``estimator="all_samples"``:
    ``(#below + #tied/2 + 1/2) / n``, e.g. 3/4 and 1/4 on a strict pair. ``estimator="leave_one_out"``
    averages over the *other* n - 1 samples instead (1 and 0 on a strict pair: then the loss is half of
    ``sppo_hard``, a mean over the two responses where ``sppo_hard`` sums them); its centred targets are
    n/(n-1) times the paper's. Intuition: a response that beats the current policy more often than not
    gets a higher log-ratio, in proportion to its margin; unlike DPO the targets are absolute, so the
    objective cannot push log-ratios without bound. Padding (-1) is excluded.
    """
    ranks = resolve_list_ranks(policy_logps, ranks, None)
    valid = valid_mask(ranks)
    if grades is None:
        rates = win_rates_from_ranks(ranks, policy_logps.dtype, estimator=estimator)
    else:
        rates = list_tensor(grades, policy_logps, valid, "grades", fill=0.5)
    rho = _scaled_log_ratios(policy_logps, ref_logps, valid, 1.0)
    per_response = zero_padding((rho - (rates - 0.5) / beta) ** 2, valid)
    return per_response.sum(1) / valid.sum(1).clamp_min(1)
