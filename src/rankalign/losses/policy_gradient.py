"""Group-relative policy-gradient objectives (GRPO, RLOO) on groups of K sampled responses per prompt.

A group of K responses sampled for one prompt is a list, so the tensors follow the module conventions
(DESIGN.md), with two additions for token-level objectives:

* ``rewards``: ``[B, K]`` float, the judge's score of each response (NaN or ``valid=False`` pads).
* ``token_logps``/``old_token_logps``/``ref_token_logps``: ``[B, K, T]`` per-token log-probabilities of
  each response, ``token_mask`` ``[B, K, T]`` bool marking real tokens.

Advantages are computed once, by :func:`group_advantages`, and detached; every objective returns the
per-list loss ``[B]``.

**Rankings-only judges and ties.** A judge that only ranks (or whose scores tie) is turned into
rewards by :func:`rank_rewards`: ``r_i = (#responses ranked below i - #ranked above i) / (n - 1)``,
in ``[-1, 1]``, equal for tied responses (a tie contributes to neither count), 0 for every member of an
all-tied group. The group advantages are then computed on these rank rewards exactly as on scores:
this is the Borda score of the ranking, rescaled, so only the ordering the judge produced matters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import resolve_ranks
from ._registry import NON_NEGATIVE, register

_GRPO = ("Shao, Wang, Zhu, Xu, Song, Bi, Zhang, Zhang, Li, Wu, Guo, DeepSeekMath: Pushing the Limits of "
         "Mathematical Reasoning in Open Language Models, 2024 (arXiv:2402.03300)")
_RLOO = ("Ahmadian, Cremer, Galle, Fadaee, Kreutzer, Pietquin, Ustun, Hooker, Back to Basics: Revisiting "
         "REINFORCE Style Optimization for Learning from Human Feedback in LLMs, ACL 2024 (arXiv:2402.14740)")

ADVANTAGES = ("grpo", "rloo")

# exp() of a per-token log-ratio (GRPO's importance ratio and k3 KL term) is capped here, as in the pairwise
# module: exp and its gradient stay finite in float32 (exp(50) ~ 5e21); beyond it that term's gradient is 0.
EXP_CAP = 50.0


def _same_shape(value, name: str, like: Tensor, shape: str, objective: str) -> Tensor:
    """``value`` as a tensor on ``like``'s device, required to have the shape ``shape`` names (``"[B, K]"``:
    ``like``'s first two dimensions, ``"[B, K, T]"``: all three); no broadcasting."""
    value = torch.as_tensor(value, device=like.device)
    expected = tuple(like.shape[:shape.count(",") + 1])
    if tuple(value.shape) != expected:
        raise ValueError(f"{objective}: {name} has shape {tuple(value.shape)}, expected {shape} = {expected}")
    return value


def _valid(rewards: Tensor, valid: Tensor | None) -> Tensor:
    finite = torch.isfinite(rewards)
    return finite if valid is None else (valid.bool() & finite)


def rank_rewards(ranks: Tensor) -> Tensor:
    """Rewards from a ranking: ``(#below - #above) / (n - 1)`` per response (module docstring).

    Parameters
    ----------
    ranks : Tensor [B, K] long
        0 best, equal values tie, -1 padding.

    Returns
    -------
    Tensor [B, K] float32
        In ``[-1, 1]``; NaN at padding; 0 for a group of one.
    """
    ranks = torch.as_tensor(ranks)
    if ranks.dim() != 2:
        raise ValueError(f"ranks must be [B, K] (one ranked group per prompt), got shape {tuple(ranks.shape)}")
    valid = ranks >= 0
    both = valid.unsqueeze(2) & valid.unsqueeze(1)
    below = ((ranks.unsqueeze(2) < ranks.unsqueeze(1)) & both).sum(2)   # i strictly better than j
    above = ((ranks.unsqueeze(2) > ranks.unsqueeze(1)) & both).sum(2)
    n = valid.sum(1, keepdim=True)
    out = (below - above).float() / (n - 1).clamp_min(1).float()
    return torch.where(valid, out, torch.full_like(out, float("nan")))


def group_advantages(rewards: Tensor, *, kind: str = "grpo", valid: Tensor | None = None,
                     epsilon: float = 1e-4) -> Tensor:
    """Group-relative advantages of K responses to one prompt (detached).

    ``kind="grpo"`` (Shao et al. 2024, outcome supervision): ``A_i = (r_i - mean(r)) / (std(r) + epsilon)``
    over the group, ``std`` the unbiased sample standard deviation (as TRL's GRPOTrainer; the paper does
    not say which). A group whose rewards are all equal gets ``A = 0``.

    ``kind="rloo"`` (Ahmadian et al. 2024): the leave-one-out baseline,
    ``A_i = r_i - (1/(n-1)) sum_{j != i} r_j = n/(n-1) (r_i - mean(r))``.

    Parameters
    ----------
    rewards : Tensor [B, K]
        Scores of the responses (from a scoring judge, or :func:`rank_rewards` for a ranking).
    kind : {"grpo", "rloo"}
    valid : Tensor [B, K] bool, optional
        Present responses (default: the finite rewards). Groups may have different sizes n.
    epsilon : float
        Added to the standard deviation (GRPO only).

    Returns
    -------
    Tensor [B, K] float32
        0 at invalid entries and for groups of one (computed in float64, so extreme rewards keep their
        advantages).
    """
    if kind not in ADVANTAGES:
        raise ValueError(f"unknown advantage kind {kind!r}; choose one of {', '.join(ADVANTAGES)}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    # float64 for the statistics: in float32 the squares of rewards beyond ~1e19 overflow and every
    # advantage of the group would silently become 0
    rewards = torch.as_tensor(rewards).detach().double()
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, K] (one group of K responses per prompt), got shape {tuple(rewards.shape)}")
    if valid is not None:
        valid = _same_shape(valid, "valid", rewards, "[B, K]", "group_advantages")
    valid = _valid(rewards, valid)
    safe = torch.where(valid, rewards, torch.zeros_like(rewards))
    n = valid.sum(1, keepdim=True).float()
    mean = safe.sum(1, keepdim=True) / n.clamp_min(1)
    centred = torch.where(valid, safe - mean, torch.zeros_like(safe))
    if kind == "grpo":
        variance = (centred ** 2).sum(1, keepdim=True) / (n - 1).clamp_min(1)
        std = variance.sqrt()
        # an all-equal group has no signal: 0, not 0/0 (the division is guarded, not masked afterwards)
        advantages = torch.where(std > 0, centred / (std + epsilon).clamp_min(torch.finfo(std.dtype).tiny),
                                 torch.zeros_like(centred))
    else:
        advantages = centred * n / (n - 1).clamp_min(1)
    return torch.where(n > 1, advantages, torch.zeros_like(advantages)).float()


def k3_kl(token_logps: Tensor, ref_token_logps: Tensor) -> Tensor:
    """The k3 estimator of KL(pi || pi_ref) per token: ``exp(d) - d - 1`` with ``d = log pi_ref - log pi``.

    Unbiased for samples from pi and never negative (Schulman, "Approximating KL Divergence", 2020; the
    estimator GRPO uses, Shao et al. 2024, Eq. 4).
    """
    delta = ref_token_logps - token_logps
    return torch.expm1(delta) - delta


@register("grpo", family="policy_gradient", paper=_GRPO, ranges={"beta": NON_NEGATIVE})
def grpo(token_logps: Tensor, ref_token_logps: Tensor | None = None, *, advantages: Tensor | None = None,
         token_mask: Tensor | None = None, old_token_logps: Tensor | None = None, clip_epsilon: float = 0.2,
         beta: float = 0.04) -> Tensor:
    """Group Relative Policy Optimisation (GRPO; Shao et al. 2024, Eq. 3).

    Per token t of response i, with ratio ``q = pi(o_t) / pi_old(o_t)`` and the group advantage A_i::

        l_it = -[ min(q A_i, clip(q, 1 - eps, 1 + eps) A_i) - beta * KL3_it ]
        loss = (1/n) sum_i (1/|o_i|) sum_t l_it

    ``KL3`` is :func:`k3_kl` against the reference. Intuition: raise the probability of responses better
    than their group's average and lower the others, with PPO's clipped ratio keeping each update close
    to the sampling policy and the KL term anchoring the policy to the reference.

    Parameters
    ----------
    token_logps : Tensor [B, K, T]
        Current policy's per-token log-probs (differentiable).
    ref_token_logps : Tensor [B, K, T], optional
        Reference per-token log-probs; None (or ``beta=0``) drops the KL term.
    advantages : Tensor [B, K]
        From :func:`group_advantages` (required).
    token_mask : Tensor [B, K, T] bool, optional
        Real tokens (default: all).
    old_token_logps : Tensor [B, K, T], optional
        Log-probs of the sampling policy; None means one update per batch (pi_old = pi, detached),
        where the ratio is 1 and the gradient is ``A_i grad log pi``.
    clip_epsilon, beta : float

    The per-token log-ratios inside exp() (the importance ratio's log pi - log pi_old and the KL term's
    log pi_ref - log pi) are capped at :data:`EXP_CAP`, so loss and gradient stay finite however far apart
    the log-probs are; beyond the cap that term gets no gradient (like a clipped ratio).

    Returns
    -------
    Tensor [B]
    """
    if advantages is None:
        raise ValueError("grpo needs advantages [B, K] (see group_advantages)")
    advantages = _same_shape(advantages, "advantages", token_logps, "[B, K]", "grpo")
    if token_mask is None:
        token_mask = torch.ones_like(token_logps, dtype=torch.bool)
    token_mask = _same_shape(token_mask, "token_mask", token_logps, "[B, K, T]", "grpo").bool()
    safe = torch.where(token_mask, token_logps, torch.zeros_like(token_logps))
    if old_token_logps is None:
        old = safe.detach()
    else:
        old_token_logps = _same_shape(old_token_logps, "old_token_logps", token_logps, "[B, K, T]", "grpo")
        old = torch.where(token_mask, old_token_logps.to(safe.dtype), torch.zeros_like(safe))
    ratio = torch.exp((safe - old).clamp(max=EXP_CAP))
    advantage = advantages.detach().to(safe.dtype).unsqueeze(2)
    surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - clip_epsilon, 1 + clip_epsilon) * advantage)
    per_token = -surrogate
    if ref_token_logps is not None and beta != 0:
        ref = torch.where(token_mask, ref_token_logps, torch.zeros_like(safe))
        log_ratio = (ref - safe).clamp(max=EXP_CAP)  # k3 of the capped log-ratio: exp() stays finite
        per_token = per_token + beta * (torch.expm1(log_ratio) - log_ratio)
    per_token = torch.where(token_mask, per_token, torch.zeros_like(per_token))
    counts = token_mask.sum(2)
    per_response = per_token.sum(2) / counts.clamp_min(1)
    present = counts > 0
    return (per_response * present).sum(1) / present.sum(1).clamp_min(1)


@register("rloo", family="policy_gradient", paper=_RLOO, ranges={"beta": NON_NEGATIVE})
def rloo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, rewards: Tensor | None = None,
         ranks: Tensor | None = None, beta: float = 0.05) -> Tensor:
    """REINFORCE Leave-One-Out (RLOO; Ahmadian et al. 2024, Eq. 6), sequence level.

    Each response's reward is penalised by its KL sample ``beta * (log pi(y) - log pi_ref(y))`` (the
    paper's KL-shaped reward, detached), the leave-one-out baseline is subtracted
    (:func:`group_advantages` with ``kind="rloo"``), and::

        loss = -(1/n) sum_i A_i log pi(y_i | x)

    Intuition: each sample is judged against the mean of the other K - 1 samples of its prompt, an
    unbiased baseline that costs no value network.

    Parameters
    ----------
    policy_logps, ref_logps : Tensor [B, K]
        Summed response log-probs; ``ref_logps=None`` drops the KL shaping.
    rewards : Tensor [B, K], optional
        Judge scores (NaN pads). Without them the ranking (``ranks``, column order when None) is turned
        into :func:`rank_rewards`.
    ranks : Tensor [B, K] long, optional
        Used for padding (-1) and, without ``rewards``, as the reward.
    beta : float

    Returns
    -------
    Tensor [B]
    """
    ranks = resolve_ranks(policy_logps, ranks)
    valid = ranks >= 0
    if rewards is None:
        rewards = rank_rewards(ranks)
    rewards = _same_shape(rewards, "rewards", policy_logps, "[B, K]", "rloo").float()
    valid = valid & torch.isfinite(rewards)
    if ref_logps is not None and beta != 0:
        rewards = rewards - beta * (policy_logps - ref_logps).detach().float()
    advantages = group_advantages(rewards, kind="rloo", valid=valid)
    safe = torch.where(valid, policy_logps, torch.zeros_like(policy_logps))
    per_response = -(advantages.to(safe.dtype) * safe)
    return per_response.sum(1) / valid.sum(1).clamp_min(1)


__all__ = ["ADVANTAGES", "rank_rewards", "group_advantages", "k3_kl", "grpo", "rloo"]
