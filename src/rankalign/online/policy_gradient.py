"""One GRPO or RLOO update on sampled groups, with each group's prompt computed once.

A group (one prompt, K sampled completions) is packed by the engine as one prefix-shared list
(:func:`rankalign.engine.pack_lists`, ``layout="shared"``): the prompt's tokens run through the model
once, and each completion attends to them and to itself only. Per-token log-probs come from
:func:`rankalign.engine.token_logps` and are laid out as ``[B, K, T]`` for the token-level objective
(:func:`rankalign.losses.policy_gradient.grpo`); RLOO uses the summed ``[B, K]`` log-probs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..engine import TokenizedList, pack_lists, token_logps
from ..losses import get, group_advantages, rank_rewards
from .generate import SampledGroups

POLICY_GRADIENT_OBJECTIVES = ("grpo", "rloo")


def groups_to_lists(groups: SampledGroups, rewards: Sequence[Sequence[float]] | None = None) -> list[TokenizedList]:
    """One :class:`~rankalign.engine.TokenizedList` per prompt, its K sampled completions as responses.

    Ranks follow ``rewards`` (higher is better, equal rewards tie) when given, else column order; the
    rewards travel as grades. Completions are kept as sampled (token ids), so the update scores exactly
    the sampled tokens, duplicates included.
    """
    lists = []
    for b, (prompt, completions) in enumerate(zip(groups.prompt_ids, groups.completion_ids)):
        if rewards is None:
            ranks, grades = list(range(len(completions))), None
        else:
            grades = [float(r) for r in rewards[b]]
            levels = sorted(set(grades), reverse=True)
            ranks = [levels.index(g) for g in grades]  # dense: 0 best, equal rewards tie
        lists.append(TokenizedList(prompt_ids=list(prompt), response_ids=[list(c) for c in completions],
                                   ranks=ranks, grades=grades, index=b))
    return lists


def token_grid(flat: Tensor, batch) -> tuple[Tensor, Tensor]:
    """Flat per-token values ``[N]`` (``batch.target_*`` order) as ``[B, K, T]`` plus the real-token mask.

    A response's tokens are contiguous and in order in the flat layout, so a token's position in its
    response is its index minus the first index of its segment.
    """
    segments = batch.target_segment
    count = batch.num_lists * batch.max_k
    index = torch.arange(flat.shape[0], device=flat.device)
    first = torch.full((count,), flat.shape[0], dtype=torch.long, device=flat.device)
    first = first.scatter_reduce(0, segments, index, reduce="amin")
    position = index - first[segments]
    longest = int(batch.lengths.max().item())
    grid = flat.new_zeros((batch.num_lists, batch.max_k, longest))
    row, column = segments // batch.max_k, segments % batch.max_k
    grid = grid.index_put((row, column, position), flat)
    mask = torch.zeros(grid.shape, dtype=torch.bool, device=flat.device)
    mask[row, column, position] = True
    return grid, mask


def _rewards_tensor(rewards, ranks, shape) -> Tensor:
    if rewards is not None:
        out = torch.as_tensor(rewards, dtype=torch.float32)
    elif ranks is not None:
        out = rank_rewards(torch.as_tensor(ranks))
    else:
        raise ValueError("a policy-gradient update needs rewards or ranks from the judge")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"rewards/ranks have shape {tuple(out.shape)}, expected {tuple(shape)}")
    return out


def policy_gradient_loss(model, groups: SampledGroups, *, rewards=None, ranks=None, objective: str = "grpo",
                         ref_model=None, beta: float = 0.04, clip_epsilon: float = 0.2, layout: str = "shared",
                         pad_token_id: int = 0, old_token_logps: Tensor | None = None) -> tuple[Tensor, dict]:
    """The mean GRPO or RLOO loss over the groups (differentiable) and a few diagnostics.

    Parameters
    ----------
    model : causal LM (the policy)
    groups : SampledGroups
        B prompts with K completions each (from :func:`rankalign.online.sample_groups`).
    rewards : array-like [B, K], optional
        The judge's scores. Without them, ``ranks`` ([B, K], 0 best, ties equal) give rank rewards
        (:func:`rankalign.losses.rank_rewards`): a rankings-only judge.
    objective : {"grpo", "rloo"}
    ref_model : causal LM, optional
        The reference for the KL term (GRPO: k3 per token; RLOO: KL-shaped reward); None or ``beta=0``
        skips it (and its forward pass).
    beta, clip_epsilon : float
    layout : {"shared", "duplicated"}
        ``"shared"``: each prompt once per group (the default); ``"duplicated"``: once per completion.
    old_token_logps : Tensor [B, K, T], optional
        Sampling-policy log-probs for GRPO's ratio (None: one update per batch, ratio 1).

    Returns
    -------
    (loss, metrics) : scalar Tensor and a dict of floats (``reward``, ``advantage_abs``, ``kl``, ``tokens``)
    """
    if objective not in POLICY_GRADIENT_OBJECTIVES:
        raise ValueError(f"unknown policy-gradient objective {objective!r}; choose one of "
                         f"{', '.join(POLICY_GRADIENT_OBJECTIVES)}")
    shape = (len(groups.completion_ids), groups.k)
    reward_tensor = _rewards_tensor(rewards, ranks, shape)
    lists = groups_to_lists(groups)
    device = next(model.parameters()).device
    batch = pack_lists(lists, layout=layout, pad_token_id=pad_token_id).to(device)
    policy_tokens = token_logps(model, batch)
    use_reference = ref_model is not None and beta != 0
    ref_tokens = None
    if use_reference:
        with torch.no_grad():
            ref_tokens = token_logps(ref_model, batch)
    metrics = {"reward": float(torch.nanmean(reward_tensor)), "tokens": float(policy_tokens.shape[0])}
    reward_tensor = reward_tensor.to(device)
    if objective == "grpo":
        grid, mask = token_grid(policy_tokens, batch)
        ref_grid = token_grid(ref_tokens, batch)[0] if use_reference else None
        advantages = group_advantages(reward_tensor, kind="grpo")
        per_list = get("grpo")(grid, ref_grid, advantages=advantages, token_mask=mask,
                               old_token_logps=old_token_logps, clip_epsilon=clip_epsilon, beta=beta)
        if use_reference:
            from ..losses import k3_kl

            kl = torch.where(mask, k3_kl(grid.detach(), ref_grid), torch.zeros_like(grid))
            metrics["kl"] = float(kl.sum() / mask.sum().clamp_min(1))
    else:
        sums = policy_tokens.new_zeros(batch.num_lists * batch.max_k).index_add(0, batch.target_segment,
                                                                                policy_tokens)
        policy_logps = sums.view(batch.num_lists, batch.max_k)
        ref_logps = None
        if use_reference:
            ref_sums = ref_tokens.new_zeros(policy_logps.numel()).index_add(0, batch.target_segment, ref_tokens)
            ref_logps = ref_sums.view_as(policy_logps)
            metrics["kl"] = float((policy_logps.detach() - ref_logps).mean())
        advantages = group_advantages(reward_tensor, kind="rloo")
        per_list = get("rloo")(policy_logps, ref_logps, rewards=reward_tensor, beta=beta)
    metrics["advantage_abs"] = float(advantages.abs().mean())
    return per_list.mean(), metrics


def sampling_token_logps(model, groups: SampledGroups, *, layout: str = "shared", pad_token_id: int = 0) -> Tensor:
    """``[B, K, T]`` per-token log-probs of the sampled completions under ``model`` now (no gradient):
    GRPO's pi_old for updates after the first on the same groups."""
    batch = pack_lists(groups_to_lists(groups), layout=layout, pad_token_id=pad_token_id)
    batch = batch.to(next(model.parameters()).device)
    with torch.no_grad():
        return token_grid(token_logps(model, batch), batch)[0]


def policy_gradient_step(model, optimizer, groups: SampledGroups, *, max_grad_norm: float | None = 1.0,
                         iterations: int = 1, **loss_options) -> dict:
    """``iterations`` optimiser steps on :func:`policy_gradient_loss` for one batch of groups (model in
    train mode); returns the last step's metrics plus ``loss`` and ``grad_norm``.

    With ``iterations > 1`` (GRPO's mu) the sampling policy's log-probs are taken once, before the first
    update, and every update uses the clipped ratio against them (the first one at ratio 1).
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    model.train()
    if iterations > 1 and loss_options.get("objective", "grpo") == "grpo" and loss_options.get("old_token_logps") is None:
        loss_options["old_token_logps"] = sampling_token_logps(
            model, groups, layout=loss_options.get("layout", "shared"), pad_token_id=loss_options.get("pad_token_id", 0))
    metrics: dict = {}
    for _ in range(iterations):
        loss, metrics = policy_gradient_loss(model, groups, **loss_options)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm))
        optimizer.step()
        metrics["loss"] = float(loss.detach())
    return metrics


__all__ = ["POLICY_GRADIENT_OBJECTIVES", "groups_to_lists", "token_grid", "policy_gradient_loss",
           "policy_gradient_step", "sampling_token_logps"]
