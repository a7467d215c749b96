"""Unpaired preference objectives: one response per example with a desirable/undesirable label.

Tensor convention (DESIGN.md): ``policy_logps``, ``ref_logps`` are ``[B]`` summed log-probs of each
example's response, ``labels`` ``[B]`` is bool (True = desirable) or a float in [0, 1], read as the
probability that the response is desirable: a float label mixes the desirable and undesirable terms
linearly (``l * desirable + (1 - l) * undesirable``), which is the boolean loss for labels 0 and 1.
``rho = log pi_theta - log pi_ref`` (the policy log-prob itself when ``ref_logps`` is None). Every
function returns the per-example loss ``[B]``; reductions are the caller's.

``bco_pair`` is the exception: BCO applied to paired data, so it takes ``[B, K]`` log-probs and ``ranks``
like the pairwise objectives and is registered in the ``pairwise`` family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import log_ratios, pairwise_loss, resolve_list_ranks, valid_mask, zero_padding
from ._registry import register

__all__ = ["kto", "bco", "bco_pair", "apo_zero_unpaired", "BCORunningMean", "kto_reference_point"]


def _unpaired_inputs(policy_logps: Tensor, ref_logps: Tensor | None, labels) -> tuple[Tensor, Tensor]:
    """``(rho, label)`` as ``[B]`` tensors, the label as a float in [0, 1] of rho's dtype."""
    if policy_logps.dim() != 1:
        raise ValueError(f"unpaired objectives take [B] log-probs, got shape {tuple(policy_logps.shape)}")
    rho = log_ratios(policy_logps, ref_logps)
    if labels is None:
        raise ValueError(f"unpaired objectives need labels, a [B] = ({rho.shape[0]},) bool or float tensor "
                         "(True / 1 = desirable)")
    label = torch.as_tensor(labels, device=rho.device)
    if label.shape != rho.shape:
        raise ValueError(f"labels has shape {tuple(label.shape)}, expected {tuple(rho.shape)}")
    label = label.to(rho.dtype)
    if not bool(((label >= 0) & (label <= 1)).all()):  # a NaN label fails too (it would drop both terms)
        raise ValueError("labels must be bool or floats in [0, 1]")
    return rho, label


def _mix(label: Tensor, desirable: Tensor, undesirable: Tensor) -> Tensor:
    """``l * desirable + (1 - l) * undesirable`` without 0 * inf: a term with zero weight is dropped."""
    left = torch.where(label > 0, label * desirable, torch.zeros_like(desirable))
    right = torch.where(label < 1, (1 - label) * undesirable, torch.zeros_like(undesirable))
    return left + right


def kto_reference_point(kl_policy_logps: Tensor, kl_ref_logps: Tensor | None = None) -> Tensor:
    """KTO's reference point z0: ``max(0, mean(log pi_theta(y'|x) - log pi_ref(y'|x)))``, detached.

    ``kl_*_logps`` are ``[B]`` log-probs of *mismatched* pairs (each prompt with another example's
    response), the KTO paper's batch estimate of KL(pi_theta || pi_ref). Returns a 0-dim tensor.
    """
    with torch.no_grad():
        return log_ratios(kl_policy_logps, kl_ref_logps).mean().clamp_min(0.0)


@register("kto", family="unpaired",
          paper="Ethayarajh et al., KTO: Model Alignment as Prospect Theoretic Optimization, ICML 2024 "
                "(arXiv:2402.01306)")
def kto(policy_logps: Tensor, ref_logps: Tensor | None = None, *, labels, z0: float | Tensor | None = None,
        kl_policy_logps: Tensor | None = None, kl_ref_logps: Tensor | None = None, beta: float = 0.1,
        desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Tensor:
    r"""Kahneman–Tversky Optimization: a prospect-theory value of the implicit reward against z0.

    Paper: loss = lambda_y - v(x, y), i.e.::

        desirable:    lambda_D * (1 - sigma(beta (rho - z0)))
        undesirable:  lambda_U * (1 - sigma(beta (z0 - rho)))

    with ``z0 = max(0, KL estimate)`` detached (no gradient flows through it). Intuition: a desirable
    response should have an implicit reward above the reference point, an undesirable one below it; the
    sigmoid saturates, so examples already far on the right side stop contributing (loss aversion is set
    by the weights). TRL's ``KTOTrainer`` (``loss_type="kto"``) writes the same ``1 - sigma`` form, with
    the same weight names; ``1 - sigma(x)`` is computed as ``sigma(-x)``, exact and finite.

    Parameters
    ----------
    policy_logps, ref_logps : ``[B]`` summed log-probs; ``ref_logps=None`` uses rho = policy log-prob.
    labels : ``[B]`` bool (True = desirable) or float in [0, 1] (module docstring).
    z0 : optional precomputed reference point (float or 0-dim tensor); it is detached and clamped at 0.
    kl_policy_logps, kl_ref_logps : optional ``[B]`` log-probs of mismatched (prompt, other response)
        pairs; when ``z0`` is None, ``z0 = kto_reference_point(kl_policy_logps, kl_ref_logps)``, the
        batch mean of their log-ratios, clamped at 0. With neither, z0 = 0 (TRL's choice when the KL
        term is disabled).
    beta : float, default 0.1. desirable_weight, undesirable_weight : lambda_D and lambda_U, default 1
        (the paper suggests lambda_D n_D / (lambda_U n_U) in [1, 4/3] for unbalanced data).

    Returns the per-example loss ``[B]``.
    """
    rho, label = _unpaired_inputs(policy_logps, ref_logps, labels)
    if z0 is not None:
        reference_point = torch.as_tensor(z0, dtype=rho.dtype, device=rho.device).detach().clamp_min(0.0)
    elif kl_policy_logps is not None:
        reference_point = kto_reference_point(kl_policy_logps, kl_ref_logps).to(rho.dtype)
    else:
        reference_point = rho.new_zeros(())
    margin = beta * (rho - reference_point)
    desirable = desirable_weight * torch.sigmoid(-margin)   # 1 - sigma(beta (rho - z0))
    undesirable = undesirable_weight * torch.sigmoid(margin)  # 1 - sigma(beta (z0 - rho))
    return _mix(label, desirable, undesirable)


# ----------------------------------------------------------------------------------------------------- BCO
@dataclass
class BCORunningMean:
    """The reward shift delta of BCO, kept by the caller across steps.

    The paper sets delta to a moving average of the implicit rewards. Call :meth:`update` once per step
    with that step's rewards ``beta * rho`` (detached; every desirable and undesirable example of the
    batch, or chosen and rejected for ``bco_pair``), *before* computing the loss, then pass
    ``delta=running.mean`` — the order of TRL's former ``BCOTrainer``. With ``momentum=None`` (default)
    ``mean`` is the plain average of the per-step batch means over all steps so far (that trainer's
    ``RunningMoments`` fed one batch mean per step); with ``momentum=m`` it is an exponential moving
    average ``delta <- m delta + (1 - m) batch_mean`` (first step: the batch mean).
    ``state_dict``/``load_state_dict`` let a trainer checkpoint and resume it.
    """

    momentum: float | None = None
    mean: float = 0.0
    count: int = 0

    def update(self, rewards: Tensor) -> float:
        """Fold in one step's rewards; return the new ``mean``."""
        batch_mean = float(torch.as_tensor(rewards).detach().double().mean())
        if self.count == 0 or self.momentum is None:
            self.mean += (batch_mean - self.mean) / (self.count + 1)
        else:
            self.mean = self.momentum * self.mean + (1.0 - self.momentum) * batch_mean
        self.count += 1
        return self.mean

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.momentum, self.mean, self.count = state["momentum"], float(state["mean"]), int(state["count"])


def _bco_shift(delta, like: Tensor) -> Tensor:
    """BCO's delta as a detached 0-dim tensor (a vector would broadcast silently against the batch)."""
    shift = torch.as_tensor(delta, dtype=like.dtype, device=like.device).detach()
    if shift.dim() != 0:
        raise ValueError(f"delta must be a float or a 0-dim tensor (the running mean reward), got shape "
                         f"{tuple(shift.shape)}")
    return shift


def _bco_terms(reward: Tensor, delta) -> tuple[Tensor, Tensor]:
    """BCO's (desirable, undesirable) terms: ``-log sigma(r - delta)``, ``-log sigma(-(r - delta))``."""
    shifted = reward - delta
    return -F.logsigmoid(shifted), -F.logsigmoid(-shifted)


@register("bco", family="unpaired",
          paper="Jung et al., Binary Classifier Optimization for Large Language Model Alignment, "
                "arXiv 2024 (arXiv:2404.04656)")
def bco(policy_logps: Tensor, ref_logps: Tensor | None = None, *, labels, beta: float = 0.1,
        delta: float | Tensor = 0.0) -> Tensor:
    r"""Binary Classifier Optimization: logistic regression of the label on the shifted implicit reward.

    ``r = beta rho``; desirable: ``-log sigma(r - delta)``; undesirable: ``-log sigma(-(r - delta))``.
    Intuition: train a binary classifier whose logit is the implicit reward; the shift delta (the running
    mean of rewards, :class:`BCORunningMean`) centres the logit so that the classifier's decision boundary
    follows the rewards as they drift, which the paper shows tightens the bound on the DPO loss.

    Parameters
    ----------
    policy_logps, ref_logps : ``[B]``; labels : ``[B]`` bool or float in [0, 1].
    beta : float, default 0.1.
    delta : the reward shift, a float or 0-dim tensor kept by the caller (detached here); default 0
        (no shift). The paper's underlying-distribution-matching density-ratio weights (for prompts
        that differ between the desirable and undesirable sets) are not part of this function; multiply
        the returned per-example loss by them if you use them.

    Returns the per-example loss ``[B]``.
    """
    rho, label = _unpaired_inputs(policy_logps, ref_logps, labels)
    shift = _bco_shift(delta, rho)
    desirable, undesirable = _bco_terms(beta * rho, shift)
    return _mix(label, desirable, undesirable)


@register("bco_pair", family="pairwise",
          paper="Jung et al., Binary Classifier Optimization for Large Language Model Alignment, "
                "arXiv 2024 (arXiv:2404.04656), on paired data (TRL DPO loss_type='bco_pair')")
def bco_pair(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
             lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1,
             delta: float | Tensor = 0.0) -> Tensor:
    r"""BCO on preference pairs: the chosen response is desirable, the rejected one undesirable.

    Per pair: ``-log sigma(beta rho_w - delta) - log sigma(-(beta rho_l - delta))`` (the sum of the two
    BCO terms). Following the paper, ``delta`` is the running mean of the rewards of both chosen and
    rejected responses (:class:`BCORunningMean`, kept by the caller). TRL 1.16's DPO
    ``loss_type="bco_pair"`` applies no shift: that is ``delta=0``, our default.

    Takes ``[B, K]`` log-probs and ``ranks`` like every pairwise objective; K > 2, ties and padding go
    through the shared pair decomposition (mean over strictly ordered pairs; tied pairs and padding
    skipped; 0 for a list without an ordered pair). ``lengths`` and ``grades`` are unused.
    """
    shift = _bco_shift(delta, policy_logps)
    # Zero padded entries first: pairs touching padding are dropped, but NaN there would poison gradients.
    ranks = resolve_list_ranks(policy_logps, ranks, grades)
    valid = valid_mask(ranks)
    policy_logps = zero_padding(policy_logps, valid)
    ref_logps = None if ref_logps is None else zero_padding(ref_logps, valid)

    def per_pair(chosen, rejected, ref_chosen, ref_rejected):
        desirable, _ = _bco_terms(beta * log_ratios(chosen, ref_chosen), shift)
        _, undesirable = _bco_terms(beta * log_ratios(rejected, ref_rejected), shift)
        return desirable + undesirable

    return pairwise_loss(per_pair, policy_logps, ref_logps, ranks)


@register("apo_zero_unpaired", family="unpaired",
          paper="D'Oosterlinck et al., Anchored Preference Optimization and Contrastive Revisions, "
                "arXiv 2024 (arXiv:2408.06266)")
def apo_zero_unpaired(policy_logps: Tensor, ref_logps: Tensor | None = None, *, labels,
                      beta: float = 0.1) -> Tensor:
    r"""APO-zero for unpaired data: raise desirable likelihoods, lower undesirable ones, anchored at 0.

    desirable: ``1 - sigma(beta rho)``; undesirable: ``sigma(beta rho)`` (TRL ``KTOTrainer``
    ``loss_type="apo_zero_unpaired"``). Intuition: when desirable responses are better than what the
    model already produces, push their implicit reward up and the undesirable ones' down, each
    independently of the other, with the reference model (rho = 0) as anchor.

    Parameters: ``[B]`` log-probs, ``labels`` ``[B]`` bool or float in [0, 1], ``beta`` default 0.1.
    Returns ``[B]``.
    """
    rho, label = _unpaired_inputs(policy_logps, ref_logps, labels)
    reward = beta * rho
    return _mix(label, torch.sigmoid(-reward), torch.sigmoid(reward))
