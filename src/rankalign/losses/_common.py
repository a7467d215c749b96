"""Shared tensor helpers for every objective: ranks, log-ratios, the pair decomposition, per-list metrics.

Conventions (DESIGN.md, "Tensor conventions"):

* ``policy_logps``, ``ref_logps``: ``[B, K]`` summed log-probabilities of each candidate's response.
* ``ranks``: ``[B, K]`` long; 0 best, equal values tie, ``-1`` pads a list shorter than K.
  ``None`` means column order is the ranking (column 0 best, no ties).
* A per-list loss is ``[B]``; reduction and record weights are the caller's.

The **pair decomposition** used whenever a pairwise objective sees K > 2 (or ties): every unordered pair
of valid candidates ``{i, j}`` with different ranks becomes one ordered pair (winner, loser); tied pairs
and pairs touching padding are left out; the list's loss is the *mean* over its pairs (0 for a list with
no ordered pair, e.g. K = 1 or all tied). For K = 2 without ties this is exactly the pairwise loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def resolve_ranks(policy_logps: Tensor, ranks: Tensor | None) -> Tensor:
    """``ranks`` as a ``[B, K]`` long tensor on ``policy_logps``' device (column order when None)."""
    batch, k = policy_logps.shape[:2]
    if ranks is None:
        return torch.arange(k, device=policy_logps.device).expand(batch, k)
    ranks = torch.as_tensor(ranks, device=policy_logps.device)
    if ranks.shape != policy_logps.shape[:2]:
        raise ValueError(f"ranks has shape {tuple(ranks.shape)}, expected {tuple(policy_logps.shape[:2])}")
    # Float ranks are read only if they hold whole numbers: .long() would truncate 0.7 and 0.3 (scores passed
    # as ranks) into a silent tie. Checked on this (unusual) path only, so long ranks never wait on the device.
    if ranks.is_floating_point() and not bool((torch.isfinite(ranks) & (ranks == ranks.round())).all()):
        raise ValueError("ranks must be whole numbers (0 best, equal values tie, -1 pads); got non-integer or "
                         "non-finite values -- pass scores as grades instead")
    return ranks.long()


def valid_mask(ranks: Tensor) -> Tensor:
    """``[B, K]`` bool: True where a candidate is present (rank >= 0)."""
    return ranks >= 0


def log_ratios(policy_logps: Tensor, ref_logps: Tensor | None) -> Tensor:
    """rho = log pi_theta(y|x) - log pi_ref(y|x); the policy log-prob itself when reference-free."""
    if ref_logps is None:
        return policy_logps
    if ref_logps.shape != policy_logps.shape:
        raise ValueError(f"ref_logps has shape {tuple(ref_logps.shape)}, expected {tuple(policy_logps.shape)}")
    return policy_logps - ref_logps


def better_mask(ranks: Tensor) -> Tensor:
    """``[B, K, K]`` bool: ``[b, i, j]`` is True when candidate i is strictly preferred to j (both valid)."""
    valid = valid_mask(ranks)
    both = valid.unsqueeze(2) & valid.unsqueeze(1)
    return (ranks.unsqueeze(2) < ranks.unsqueeze(1)) & both


def tie_mask(ranks: Tensor) -> Tensor:
    """``[B, K, K]`` bool: ``[b, i, j]`` True for i != j tied (same rank, both valid)."""
    valid = valid_mask(ranks)
    k = ranks.shape[1]
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=ranks.device)
    return (ranks.unsqueeze(2) == ranks.unsqueeze(1)) & valid.unsqueeze(2) & valid.unsqueeze(1) & off_diagonal


@dataclass
class Pairs:
    """Ordered pairs of one batch, ``[B, P]`` each, P = K(K-1)/2 (every unordered pair, oriented).

    ``winner``/``loser`` are candidate indices; ``valid`` marks pairs with a strict preference
    between two present candidates. Use :meth:`take` to gather any ``[B, K]`` tensor into ``[B, P]``.
    """

    winner: Tensor
    loser: Tensor
    valid: Tensor

    def take(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """``(values at winners, values at losers)``, each ``[B, P]``."""
        return values.gather(1, self.winner), values.gather(1, self.loser)

    def mean(self, per_pair: Tensor, weights: Tensor | None = None) -> Tensor:
        """Per-list (weighted) mean over valid pairs, ``[B]``; 0 for a list with no valid pair.

        Invalid entries are replaced (not multiplied) so a non-finite value there cannot leak NaNs.
        """
        w = self.valid.to(per_pair.dtype)
        if weights is not None:
            w = w * weights
        safe = torch.where(self.valid, per_pair, torch.zeros_like(per_pair))
        total = (safe * w).sum(1)
        return total / w.sum(1).clamp_min(torch.finfo(per_pair.dtype).tiny)


def ordered_pairs(ranks: Tensor) -> Pairs:
    """All unordered index pairs of K columns, each oriented winner -> loser by ``ranks``."""
    batch, k = ranks.shape
    first, second = torch.triu_indices(k, k, offset=1, device=ranks.device)
    rank_first = ranks[:, first]
    rank_second = ranks[:, second]
    first_wins = rank_first <= rank_second
    winner = torch.where(first_wins, first.expand(batch, -1), second.expand(batch, -1))
    loser = torch.where(first_wins, second.expand(batch, -1), first.expand(batch, -1))
    valid = (rank_first >= 0) & (rank_second >= 0) & (rank_first != rank_second)
    return Pairs(winner=winner.long(), loser=loser.long(), valid=valid)


def pairwise_loss(per_pair_fn, policy_logps: Tensor, ref_logps: Tensor | None, ranks: Tensor | None,
                  *extra: Tensor | None) -> Tensor:
    """Apply a pairwise objective through the pair decomposition (module docstring).

    ``per_pair_fn(chosen_policy, rejected_policy, chosen_ref, rejected_ref, *chosen_rejected_extras)``
    receives ``[B, P]`` tensors (``None`` for a missing reference or extra) and returns the ``[B, P]``
    per-pair loss. ``extra`` tensors (``[B, K]``, e.g. lengths) are gathered the same way and passed as
    ``(chosen, rejected)`` pairs in order.
    """
    if ranks is None and policy_logps.shape[1] == 2:
        # Plain pairs (column 0 chosen, no ties, no padding): the decomposition is the identity, so skip
        # the gathers and masks -- this is the hot path of pairwise training.
        def columns(values):
            if values is None:
                return None, None
            values = torch.as_tensor(values, device=policy_logps.device).to(policy_logps.dtype)
            return values[:, :1], values[:, 1:]

        gathered = [part for tensor in (ref_logps, *extra) for part in columns(tensor)]
        return per_pair_fn(policy_logps[:, :1], policy_logps[:, 1:], *gathered).squeeze(1)
    ranks = resolve_ranks(policy_logps, ranks)
    pairs = ordered_pairs(ranks)
    if pairs.winner.shape[1] == 0:  # K = 1: nothing to compare
        return policy_logps.sum(1) * 0.0
    # Invalid pairs (ties, padding) get harmless stand-in inputs (log-prob 0, length 1) *before* the
    # objective runs: masking only the output would still send NaN gradients through padded entries.
    def take(values: Tensor, fill: float) -> tuple[Tensor, Tensor]:
        winner, loser = pairs.take(values)
        stand_in = torch.full_like(winner, fill)
        return torch.where(pairs.valid, winner, stand_in), torch.where(pairs.valid, loser, stand_in)

    chosen, rejected = take(policy_logps, 0.0)
    if ref_logps is None:
        ref_chosen = ref_rejected = None
    else:
        ref_chosen, ref_rejected = take(ref_logps, 0.0)
    gathered = []
    for tensor in extra:
        if tensor is None:
            gathered.extend([None, None])
        else:
            gathered.extend(take(torch.as_tensor(tensor, device=policy_logps.device).to(policy_logps.dtype), 1.0))
    per_pair = per_pair_fn(chosen, rejected, ref_chosen, ref_rejected, *gathered)
    return pairs.mean(per_pair)


def pairwise_ratio_loss(per_pair_fn, policy_logps: Tensor, ref_logps: Tensor | None, ranks: Tensor | None,
                        *extra: Tensor | None) -> Tensor:
    """:func:`pairwise_loss` for objectives of the log-ratios alone: ``rho = log pi - log pi_ref`` is
    computed once per candidate (:func:`log_ratios`), then decomposed into pairs;
    ``per_pair_fn(rho_winner, rho_loser, *chosen_rejected_extras)`` gets ``[B, P]`` tensors (a stand-in 0
    where the pair is a tie or padding, as the policy and reference get there)."""
    if ref_logps is not None:
        ref_logps = torch.as_tensor(ref_logps, device=policy_logps.device).to(policy_logps.dtype)
    rho = log_ratios(policy_logps, ref_logps)
    return pairwise_loss(lambda rho_w, rho_l, _ref_w, _ref_l, *pairs: per_pair_fn(rho_w, rho_l, *pairs),
                         rho, None, ranks, *extra)


# ------------------------------------------------------------------------------------ list helpers
def zero_padding(values: Tensor, valid: Tensor, fill: float = 0.0) -> Tensor:
    """``values`` with padded entries replaced by ``fill`` (replaced, not multiplied: NaN cannot leak)."""
    return torch.where(valid, values, torch.full_like(values, fill))


def ranks_from_grades(grades: Tensor) -> Tensor:
    """Competition ranks from grades (higher grade = better): ``rank_i = #{j : g_j > g_i}``; NaN pads.

    Equal grades give equal ranks (ties); a NaN grade marks padding (rank -1).
    """
    present = ~torch.isnan(grades)
    filled = torch.where(present, grades, torch.full_like(grades, -math.inf))
    above = (filled.unsqueeze(1) > filled.unsqueeze(2)) & present.unsqueeze(1)  # [b, i, j]: g_j > g_i
    ranks = above.sum(2)
    return torch.where(present, ranks, torch.full_like(ranks, -1)).long()


def resolve_list_ranks(policy_logps: Tensor, ranks: Tensor | None, grades: Tensor | None) -> Tensor:
    """``ranks`` if given; else ranks derived from ``grades`` if given; else column order."""
    if ranks is None and grades is not None:
        grades = torch.as_tensor(grades, device=policy_logps.device)
        if grades.shape != policy_logps.shape[:2]:
            raise ValueError(f"grades has shape {tuple(grades.shape)}, expected {tuple(policy_logps.shape[:2])}")
        return ranks_from_grades(grades.to(policy_logps.dtype))
    return resolve_ranks(policy_logps, ranks)


def list_tensor(values, policy_logps: Tensor, valid: Tensor, name: str, fill: float = 0.0) -> Tensor:
    """A ``[B, K]`` side tensor (lengths, grades) in ``policy_logps``' dtype with padding filled."""
    values = torch.as_tensor(values, device=policy_logps.device).to(policy_logps.dtype)
    if values.shape != policy_logps.shape[:2]:
        raise ValueError(f"{name} has shape {tuple(values.shape)}, expected {tuple(policy_logps.shape[:2])}")
    return zero_padding(values, valid, fill)


# ---------------------------------------------------------------------------------------------- metrics
@torch.no_grad()
def preference_metrics(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
                       beta: float = 0.1) -> dict[str, Tensor]:
    """Per-list diagnostics beside any loss, computed once for every objective.

    Returns ``[B]`` tensors:

    * ``reward_best`` / ``reward_worst``: mean implicit reward beta * rho of the best / worst rank group;
    * ``margin``: mean over ordered pairs of beta * (rho_winner - rho_loser);
    * ``reward_accuracy``: share of ordered pairs with rho_winner > rho_loser (implicit-reward accuracy);
    * ``ranking_accuracy``: share of ordered pairs with log pi(y_w) > log pi(y_l) (policy likelihood only);
    * ``pairs``: number of ordered pairs in the list.
    Lists without an ordered pair get 0 for the pair averages (check ``pairs``).
    """
    ranks = resolve_ranks(policy_logps, ranks)
    rewards = beta * log_ratios(policy_logps, ref_logps)
    pairs = ordered_pairs(ranks)
    valid = valid_mask(ranks)
    out: dict[str, Tensor] = {}
    big = torch.iinfo(torch.long).max
    best = torch.where(valid, ranks, torch.full_like(ranks, big)).min(1, keepdim=True).values
    worst = torch.where(valid, ranks, torch.full_like(ranks, -1)).max(1, keepdim=True).values
    for name, target in (("reward_best", best), ("reward_worst", worst)):
        members = (ranks == target) & valid
        out[name] = (rewards * members).sum(1) / members.sum(1).clamp_min(1)
    if pairs.winner.shape[1] == 0:
        zeros = policy_logps.new_zeros(policy_logps.shape[0])
        out.update(margin=zeros, reward_accuracy=zeros, ranking_accuracy=zeros, pairs=zeros)
        return out
    reward_w, reward_l = pairs.take(rewards)
    logp_w, logp_l = pairs.take(policy_logps)
    out["margin"] = pairs.mean(reward_w - reward_l)
    out["reward_accuracy"] = pairs.mean((reward_w > reward_l).to(rewards.dtype))
    out["ranking_accuracy"] = pairs.mean((logp_w > logp_l).to(rewards.dtype))
    out["pairs"] = pairs.valid.sum(1).to(rewards.dtype)
    return out
