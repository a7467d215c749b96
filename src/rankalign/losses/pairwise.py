"""Pairwise preference objectives: DPO and its relatives, as pure functions of log-probabilities.

Notation (DESIGN.md, "Formula sheet"): for a pair (winner w, loser l) of responses to one prompt,
``ell`` is the policy's summed log-probability of a response, ``rho = log pi_theta(y|x) - log pi_ref(y|x)``
its log-ratio against the reference, ``h = rho_w - rho_l``, ``|y|`` its length in tokens, and
``sigma`` the logistic function. Objectives that use a reference fall back to ``rho = ell`` when
``ref_logps`` is None (reference-free use); objectives that never use a reference (SimPO, CPO, ORPO)
accept ``ref_logps`` for a uniform signature and ignore it.

Every objective here has the signature of DESIGN.md "Tensor conventions",
``fn(policy_logps, ref_logps=None, *, ranks=None, lengths=None, grades=None, **params) -> Tensor[B]``,
and is defined on one pair. Lists of K > 2 candidates, ties and padding go through the shared pair
decomposition (:func:`rankalign.losses._common.pairwise_loss`): every pair of present candidates with
different ranks is one (winner, loser) pair, tied pairs and pairs touching padding (rank -1) are
skipped, and a list's loss is the mean over its pairs (0 for a list without any, e.g. K = 1 or all
tied; such a list also gets a zero gradient). Padding therefore never changes a row's loss.

All per-pair formulas are written with ``logsigmoid``/``softplus`` so losses and gradients stay finite
for log-ratio differences of +-1e4; the two places that need ``exp`` of a log-ratio (DiscoPOP's
exponential branch and the forward-KL / alpha f-divergences) are rewritten or capped (see each).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import pairwise_loss, pairwise_ratio_loss
from ._registry import Range, register

# exp() arguments of the f-divergence scores are capped here so that exp and its gradient stay finite
# in float32 (exp(50) ~ 5e21); beyond the cap that term's gradient is zero (like TRL's capped exp).
EXP_CAP = 50.0
# EXO's margin beta * h is capped here: sigma(-1e4) is 0 in float64, so nothing finite changes (see exo)
EXO_MARGIN_CAP = 1e4

_DPO = ("Rafailov, Sharma, Mitchell, Ermon, Manning, Finn, Direct Preference Optimization: Your Language "
        "Model is Secretly a Reward Model, NeurIPS 2023 (arXiv:2305.18290)")


def _require_lengths(lengths: Tensor | None, name: str, policy_logps: Tensor) -> Tensor:
    if lengths is None:
        raise ValueError(f"{name} needs `lengths` ([B, K] response token counts); pass lengths=torch.ones_like("
                         "policy_logps) if the log-probabilities are already averaged per token")
    lengths = torch.as_tensor(lengths, device=policy_logps.device)
    if lengths.shape != policy_logps.shape[:2]:  # a [B, K'] or [B] tensor would broadcast silently on K = 2
        raise ValueError(f"{name}: lengths has shape {tuple(lengths.shape)}, expected {tuple(policy_logps.shape[:2])} "
                         "(one token count per candidate)")
    return lengths


def _safe_length(length: Tensor) -> Tensor:
    # Lengths are token counts (>= 1 for a real response). Padded candidates may carry 0; the pair
    # decomposition discards them, but the division must not produce inf/NaN there (a NaN would poison
    # the gradient through torch.where), so counts below 1 are read as 1.
    return length.clamp_min(1.0)


def _logistic_pair(margin: Tensor, eps: float) -> Tensor:
    """-(1 - eps) log sigma(margin) - eps log sigma(-margin)."""
    loss = -F.logsigmoid(margin)
    if eps:
        loss = (1.0 - eps) * loss - eps * F.logsigmoid(-margin)
    return loss


# ------------------------------------------------------------------------------------------------ DPO
@register("dpo", family="pairwise", paper=_DPO)
def dpo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
        lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1,
        label_smoothing: float = 0.0) -> Tensor:
    """Direct Preference Optimization (Rafailov et al., NeurIPS 2023), with conservative DPO (cDPO).

    Per pair::

        loss = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h),   h = rho_w - rho_l

    ``eps = label_smoothing`` = 0 is DPO: the Bradley-Terry likelihood of the preference under the
    implicit reward ``beta * rho``. ``eps > 0`` is cDPO (Mitchell, "A note on DPO with noisy
    preferences", 2023): the expected DPO loss when each label is flipped with probability eps, which
    keeps the margin finite (its minimiser is sigma(beta h) = 1 - eps instead of h -> infinity).
    Same parameter name as TRL (``label_smoothing``). ``eps`` must lie in [0, 0.5) (registry range; 0.5 or more reverses the labels).

    ``ref_logps=None`` gives the reference-free variant (rho = log pi_theta). ``lengths``/``grades``
    are unused. K > 2, ties and padding: the module's pair decomposition (mean over strictly ordered
    pairs).

    Returns
    -------
    Tensor ``[B]``: the per-list loss.
    """

    def per_pair(rho_w, rho_l):
        h = rho_w - rho_l
        return _logistic_pair(beta * h, label_smoothing)

    return pairwise_ratio_loss(per_pair, policy_logps, ref_logps, ranks)


@register("robust_dpo", family="pairwise",
          paper="Chowdhury, Kini, Natarajan, Provably Robust DPO: Aligning Language Models with Noisy "
                "Feedback, ICML 2024 (arXiv:2403.00409)")
def robust_dpo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
               lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1,
               label_smoothing: float = 0.0) -> Tensor:
    """Provably robust DPO (rDPO; Chowdhury, Kini and Natarajan, ICML 2024).

    Per pair, with flip rate ``eps = label_smoothing``::

        loss = [(1 - eps)(-log sigma(beta h)) - eps(-log sigma(-beta h))] / (1 - 2 eps)

    Intuition: if each observed label is the true one with probability 1 - eps and flipped with
    probability eps, this loss is an *unbiased* estimate of the clean DPO loss: its expectation over
    the random flip equals -log sigma(beta h) exactly, for every h (unlike cDPO, which is the
    expectation of the noisy loss, not an unbiased estimate of the clean one). Unlike DPO it is not
    bounded below for eps > 0 on a single pair; it is the expectation that is well behaved.

    ``eps`` must lie in [0, 0.5) (at 0.5 the labels carry no information); eps = 0 is DPO. Same
    parameter name as TRL's ``loss_type="robust"``. ``ref_logps=None``: reference-free. K > 2, ties,
    padding: the module's pair decomposition.
    """

    def per_pair(rho_w, rho_l):
        margin = beta * (rho_w - rho_l)
        clean = -F.logsigmoid(margin)
        if not label_smoothing:  # exactly DPO; 0 * flipped would be NaN at an infinite margin (-inf log-prob)
            return clean
        flipped = -F.logsigmoid(-margin)
        return ((1.0 - label_smoothing) * clean - label_smoothing * flipped) / (1.0 - 2.0 * label_smoothing)

    return pairwise_ratio_loss(per_pair, policy_logps, ref_logps, ranks)


@register("ipo", family="pairwise",
          paper="Azar, Rowland, Piot, Guo, Calandriello, Valko, Munos, A General Theoretical Paradigm to "
                "Understand Learning from Human Preferences, AISTATS 2024 (arXiv:2310.12036)")
def ipo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
        lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1,
        length_normalize: bool = False) -> Tensor:
    """Identity Preference Optimisation (IPO; Azar et al., AISTATS 2024, Eq. 17).

    Per pair, with ``beta`` playing the role of the paper's regulariser tau::

        loss = (h - 1 / (2 beta))^2,   h = rho_w - rho_l   (summed log-ratios, the paper's definition)

    Intuition: a squared regression of the log-ratio margin onto the fixed target 1/(2 tau), so the
    margin cannot run to infinity on deterministic preferences as DPO's can. Under a preference rate
    alpha the population minimiser is h* = (2 alpha - 1) / (2 beta).

    Convention: the paper uses sequence (summed) log-ratios. TRL's ``loss_type="ipo"`` divides each
    log-ratio by its response length first (h = rho_w/|y_w| - rho_l/|y_l|); ``length_normalize=True``
    gives that variant and needs ``lengths``. ``ref_logps=None``: reference-free. K > 2, ties, padding:
    the module's pair decomposition.
    """
    target = 1.0 / (2.0 * beta)
    if length_normalize:
        lengths = _require_lengths(lengths, "ipo(length_normalize=True)", policy_logps)

        def per_pair(rho_w, rho_l, len_chosen, len_rejected):
            h = (rho_w / _safe_length(len_chosen)
                 - rho_l / _safe_length(len_rejected))
            return (h - target) ** 2

        return pairwise_ratio_loss(per_pair, policy_logps, ref_logps, ranks, lengths)

    def per_pair_summed(rho_w, rho_l):
        return (rho_w - rho_l - target) ** 2

    return pairwise_ratio_loss(per_pair_summed, policy_logps, ref_logps, ranks)


@register("hinge", family="pairwise",
          paper="Zhao, Joshi, Liu, Khalman, Saleh, Liu, SLiC-HF: Sequence Likelihood Calibration with Human "
                "Feedback, arXiv 2023 (arXiv:2305.10425)")
def hinge(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
          lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1) -> Tensor:
    """Hinge (SLiC) calibration loss (Zhao et al., SLiC-HF, 2023), in the normalised form of RSO.

    Per pair::

        loss = max(0, 1 - beta h),   h = rho_w - rho_l

    Intuition: push the winner's log-ratio above the loser's by a margin of 1/beta, and stop pushing
    once it is there. SLiC-HF writes the rank-calibration loss on policy log-probabilities,
    max(0, delta - log pi(y_w) + log pi(y_l)), plus a separate regulariser; with ``ref_logps=None``
    this function is exactly that with delta = 1/beta (scaled by beta). With a reference it is the
    "normalised likelihood" form of Liu et al. (RSO, ICLR 2024, arXiv:2309.06657) that TRL uses for
    ``loss_type="hinge"``. SLiC's regularisation term is the caller's to add. K > 2, ties, padding: the
    module's pair decomposition.
    """

    def per_pair(rho_w, rho_l):
        return torch.relu(1.0 - beta * (rho_w - rho_l))

    return pairwise_ratio_loss(per_pair, policy_logps, ref_logps, ranks)


@register("r_dpo", family="pairwise",
          paper="Park, Rafailov, Ermon, Finn, Disentangling Length from Quality in Direct Preference "
                "Optimization, Findings of ACL 2024 (arXiv:2403.19159)")
def r_dpo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
          lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1, alpha: float = 0.05,
          label_smoothing: float = 0.0) -> Tensor:
    """Length-regularised DPO (R-DPO; Park, Rafailov, Ermon and Finn, Findings of ACL 2024).

    Per pair, with ``|y|`` the response's token count::

        loss = -log sigma(beta h + alpha (|y_w| - |y_l|)),   h = rho_w - rho_l   (summed log-ratios)

    Derivation and sign: the paper regularises the RLHF objective with a length penalty,
    max E[r(x, y) - alpha |y|] - beta KL(pi || pi_ref). Its optimal policy gives
    r(x, y) = beta rho(y) + alpha |y| + beta log Z(x), and the Bradley-Terry likelihood of the preference
    under that reward is the loss above: the length term enters with a **plus** sign, outside beta.
    Intuition: the part of a preference that the length difference already explains (a longer winner)
    no longer has to be explained by the policy's log-ratios, so a pair whose winner is longer pushes
    less and one whose winner is shorter pushes more; the implicit reward beta * rho is the
    length-penalised reward, which stops DPO's drift towards ever longer answers. (Writing
    ``- alpha (|y_w| - |y_l|)`` instead, as some re-implementations do, would reward length.)

    ``alpha`` (>= 0) is the paper's alpha, in logits per token of length difference; alpha = 0 is DPO.
    Neither the paper nor TRL fixes a default (TRL has no R-DPO; its ``ld_alpha`` is LD-DPO and its
    ``rpo_alpha`` is RPO's NLL weight, both different methods). The paper tunes alpha per dataset; the
    default 0.05 is our choice of a small value, not the paper's. Its effect scales with the typical
    token-length gap of the data (a 20-token gap at alpha = 0.05 shifts the logit by 1), so tune it
    together with beta. ``label_smoothing`` eps > 0 applies the cDPO smoothing
    -(1 - eps) log sigma(m) - eps log sigma(-m) to the logit m (not in the paper; default 0). Needs
    ``lengths`` (``rankalign train`` passes each response's token count).
    ``ref_logps=None``: reference-free (rho = log pi_theta). K > 2, ties, padding: the module's pair
    decomposition.
    """
    lengths = _require_lengths(lengths, "r_dpo", policy_logps)

    def per_pair(rho_w, rho_l, len_chosen, len_rejected):
        margin = beta * (rho_w - rho_l) + alpha * (len_chosen - len_rejected)
        return _logistic_pair(margin, label_smoothing)

    return pairwise_ratio_loss(per_pair, policy_logps, ref_logps, ranks, lengths)


@register("dpop", family="pairwise",
          paper="Pal, Karkhanis, Dooley, Roberts, Naidu, White, Smaug: Fixing Failure Modes of Preference "
                "Optimisation with DPO-Positive, arXiv 2024 (arXiv:2402.13228)")
def dpop(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
         lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1,
         dpop_lambda: float = 50.0) -> Tensor:
    """DPO-Positive (DPOP; Pal et al., "Smaug", 2024).

    Per pair, with summed (sequence) log-ratios as in DPO::

        loss = -log sigma(beta * (rho_w - rho_l - lambda * max(0, -rho_w))),
        max(0, -rho_w) = max(0, log pi_ref(y_w|x) - log pi_theta(y_w|x))

    The penalty sits inside the beta-scaled logit, on the whole-sequence log-probabilities of the
    preferred response (the paper's L_DPOP).

    Intuition: DPO only needs the *gap* rho_w - rho_l to grow, and on pairs that differ in a few tokens
    it often gets there by lowering the preferred response's likelihood too (the failure mode the paper
    proves and observes). DPOP adds a hinge that is zero while the policy keeps the preferred response
    at least as likely as the reference does (rho_w >= 0; the gradient is then exactly DPO's) and
    otherwise charges lambda per nat that the preferred response lost.

    ``dpop_lambda`` (>= 0; ``lambda`` is a Python keyword) is the paper's lambda; 0 is DPO. Default 50,
    the larger of the two values the paper trains with (50, and 5 on some datasets); treat it as a
    per-dataset setting. At beta = 0.1 it charges 5 logits per nat the preferred response drops. TRL has
    no DPOP loss. No label smoothing: flipping the logit would turn the penalty into a reward for lowering
    the preferred response. ``lengths``/``grades`` are unused. ``ref_logps=None``: reference-free
    (rho = log pi_theta, so the hinge is -log pi_theta(y_w), always active: the module's uniform-reference
    convention). K > 2, ties, padding: the module's pair decomposition, so a candidate's penalty enters
    once for every pair it wins.
    """

    def per_pair(rho_w, rho_l):
        penalty = torch.relu(-rho_w)
        return -F.logsigmoid(beta * (rho_w - rho_l - dpop_lambda * penalty))

    return pairwise_ratio_loss(per_pair, policy_logps, ref_logps, ranks)


# ------------------------------------------------------------------------------- reference-free family
@register("simpo", family="pairwise", reference_free=True,
          paper="Meng, Xia, Chen, SimPO: Simple Preference Optimization with a Reference-Free Reward, "
                "NeurIPS 2024 (arXiv:2405.14734)")
def simpo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
          lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 2.0,
          gamma: float = 0.5, label_smoothing: float = 0.0) -> Tensor:
    """SimPO (Meng, Xia and Chen, NeurIPS 2024, Eq. 6): reference-free, length-normalised, with a margin.

    Per pair::

        loss = -log sigma(beta * ell_w / |y_w| - beta * ell_l / |y_l| - gamma)

    Intuition: the implicit reward is the policy's average per-token log-likelihood (the quantity that
    decoding ranks by), scaled by beta; the winner must beat the loser by the target margin gamma.

    ``gamma`` is the paper's gamma, an absolute margin on the scale of the logit beta * (difference of
    average log-probs); it equals TRL's ``simpo_gamma`` (TRL subtracts simpo_gamma / beta inside
    beta * (...)). The SimPO reference code parametrises the same margin as ``gamma_beta_ratio`` =
    gamma / beta. Defaults beta = 2, gamma = 0.5 are within the paper's recommended ranges.
    ``label_smoothing`` eps > 0 applies the cDPO smoothing -(1 - eps) log sigma(m) - eps log sigma(-m)
    to the margin m, as the SimPO code and TRL allow (not in the paper; default 0). Needs ``lengths``;
    ``ref_logps`` is ignored. K > 2, ties, padding: the module's pair decomposition.
    """
    lengths = _require_lengths(lengths, "simpo", policy_logps)

    def per_pair(chosen, rejected, ref_chosen, ref_rejected, len_chosen, len_rejected):
        margin = beta * (chosen / _safe_length(len_chosen) - rejected / _safe_length(len_rejected)) - gamma
        return _logistic_pair(margin, label_smoothing)

    return pairwise_loss(per_pair, policy_logps, None, ranks, lengths)


@register("cpo", family="pairwise", reference_free=True,
          paper="Xu, Sharaf, Chen, Tan, Shen, Van Durme, Murray, Kim, Contrastive Preference Optimization: "
                "Pushing the Boundaries of LLM Performance in Machine Translation, ICML 2024 (arXiv:2401.08417)")
def cpo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
        lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1, alpha: float = 1.0,
        nll_length_normalize: bool = False, label_smoothing: float = 0.0) -> Tensor:
    """Contrastive Preference Optimisation (CPO; Xu et al., ICML 2024, Eq. 3 plus the NLL term).

    Per pair::

        loss = -log sigma(beta * ell_w - beta * ell_l) + alpha * (-ell_w)

    Intuition: DPO with a uniform reference (which cancels), plus a behaviour-cloning (NLL) term on the
    preferred response that keeps the policy on the preferred data.

    Conventions. The paper's NLL term is -log pi_theta(y_w|x), the *summed* sequence log-likelihood, and
    its weight is 1; ``alpha`` (TRL: ``cpo_alpha``, default 1.0) scales it. TRL (and the authors'
    ALMA-R code) compute the NLL as the token-mean cross-entropy over the chosen responses;
    ``nll_length_normalize=True`` gives the per-response version of that (-ell_w / |y_w|, needs
    ``lengths``). ``label_smoothing`` eps > 0 smooths the preference term as in cDPO (TRL's CPO option;
    not in the paper; default 0). ``ref_logps`` is ignored. K > 2, ties, padding: the module's pair
    decomposition, so a candidate's NLL enters once per pair it wins (at K = 2 exactly the paper's loss).
    """
    if nll_length_normalize:
        lengths = _require_lengths(lengths, "cpo(nll_length_normalize=True)", policy_logps)

        def per_pair(chosen, rejected, ref_chosen, ref_rejected, len_chosen, len_rejected):
            preference = _logistic_pair(beta * (chosen - rejected), label_smoothing)
            return preference - alpha * chosen / _safe_length(len_chosen)

        return pairwise_loss(per_pair, policy_logps, None, ranks, lengths)

    def per_pair_summed(chosen, rejected, ref_chosen, ref_rejected):
        return _logistic_pair(beta * (chosen - rejected), label_smoothing) - alpha * chosen

    return pairwise_loss(per_pair_summed, policy_logps, None, ranks)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate over the whole range (Maechler, "Accurately computing
    log(1 - exp(-|a|))", 2012): log(-expm1(x)) near 0, log1p(-exp(x)) far from it."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@register("orpo", family="pairwise", reference_free=True,
          paper="Hong, Lee, Thorne, ORPO: Monolithic Preference Optimization without Reference Model, "
                "EMNLP 2024 (arXiv:2403.07691)")
def orpo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
         lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1) -> Tensor:
    """Odds-Ratio Preference Optimisation (ORPO; Hong, Lee and Thorne, EMNLP 2024, Eqs. 6-7).

    With length-averaged log-probabilities ``m = ell / |y|`` (so P(y|x) = exp(m)), the odds
    ``odds(y) = P / (1 - P)`` and ``log odds = m - log(1 - exp(m))``, per pair::

        loss = -m_w + lambda * (-log sigma(log odds_w - log odds_l)),   lambda = beta

    Intuition: supervised fine-tuning on the preferred response, plus a penalty that raises the odds of
    generating it relative to the rejected one; no reference model. ``beta`` is the paper's lambda, as
    in TRL's ORPOTrainer (default 0.1). log(1 - exp(m)) is computed with :func:`log1mexp`; m is capped
    just below 0 (at -eps of the dtype) so a response of probability 1 gives a large finite log-odds.
    The NLL term is the length-averaged one of the paper (L_SFT, the usual token-mean cross-entropy).
    Needs ``lengths``; ``ref_logps`` is ignored. K > 2, ties, padding: the module's pair decomposition.
    """
    lengths = _require_lengths(lengths, "orpo", policy_logps)

    def per_pair(chosen, rejected, ref_chosen, ref_rejected, len_chosen, len_rejected):
        eps = torch.finfo(chosen.dtype).eps
        mean_chosen = (chosen / _safe_length(len_chosen)).clamp(max=-eps)
        mean_rejected = (rejected / _safe_length(len_rejected)).clamp(max=-eps)
        log_odds = (mean_chosen - log1mexp(mean_chosen)) - (mean_rejected - log1mexp(mean_rejected))
        return -mean_chosen - beta * F.logsigmoid(log_odds)

    return pairwise_loss(per_pair, policy_logps, None, ranks, lengths)


@register("ln_dpo", family="pairwise",
          paper="Lambert et al., Tulu 3: Pushing Frontiers in Open Language Model Post-Training, arXiv 2024 "
                "(arXiv:2411.15124)")
def ln_dpo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
           lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 5.0) -> Tensor:
    """Length-normalised DPO (as used for Tulu 3; Lambert et al., 2024).

    Per pair::

        loss = -log sigma(beta * rho_w / |y_w| - beta * rho_l / |y_l|)

    Intuition: DPO on per-token log-ratios, which removes DPO's incentive to prefer longer responses.
    Because per-token log-ratios are small, the useful beta is much larger than DPO's: the default 5 is
    the value Tulu 3 used. TRL's ``loss_type="sigmoid_norm"`` is the same loss. Needs ``lengths``.
    ``ref_logps=None``: reference-free. K > 2, ties, padding: the module's pair decomposition.
    """
    lengths = _require_lengths(lengths, "ln_dpo", policy_logps)

    def per_pair(rho_w, rho_l, len_chosen, len_rejected):
        h = (rho_w / _safe_length(len_chosen)
             - rho_l / _safe_length(len_rejected))
        return -F.logsigmoid(beta * h)

    return pairwise_ratio_loss(per_pair, policy_logps, ref_logps, ranks, lengths)


@register("soft_dpo", family="pairwise",
          paper="Furuta, Lee, Gu, Matsuo, Faust, Zen, Gur, Geometric-Averaged Preference Optimization for Soft "
                "Preference Labels, NeurIPS 2024 (arXiv:2409.06691)")
def soft_dpo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
             lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1,
             preference_prob: Tensor | None = None) -> Tensor:
    """Soft-label DPO: DPO against a per-pair preference probability p (e.g. Furuta et al., NeurIPS 2024).

    Per pair::

        loss = -p log sigma(beta h) - (1 - p) log sigma(-beta h),   h = rho_w - rho_l

    Intuition: the cross-entropy between the annotated preference probability p and the model's
    Bradley-Terry probability sigma(beta h); its minimiser is sigma(beta h*) = p, so uncertain pairs pull
    the margin towards a finite value instead of infinity. cDPO is the special case p = 1 - eps.

    Where p comes from (exactly one source; neither means p = 1, i.e. DPO):

    * ``preference_prob``: a ``[B]`` tensor for K = 2 lists, the probability that **column 0** is
      preferred to column 1 (independent of ``ranks``; when ``ranks`` put column 1 first, the pair
      winner -> loser gets 1 - preference_prob). Lists with K != 2 must use ``grades``.
    * ``grades``: ``[B, K]`` scores; each ordered pair gets the Bradley-Terry probability
      p = sigma(g_w - g_l) (grades are labels: not differentiated).

    K > 2, ties, padding: pairs come from ``ranks`` (default: column order) through the module's pair
    decomposition, so tied or padded pairs are skipped even though a soft label could express a tie
    (to train on a tie, give the two candidates distinct ranks and p = 0.5). ``ref_logps=None``:
    reference-free.
    """
    if preference_prob is not None and grades is not None:
        raise ValueError("soft_dpo: pass either preference_prob or grades, not both")
    if preference_prob is not None:
        if policy_logps.shape[1] != 2:
            raise ValueError(f"soft_dpo: preference_prob is for K = 2 lists, got K = {policy_logps.shape[1]}; "
                             "use grades for longer lists")
        prob = torch.as_tensor(preference_prob, device=policy_logps.device, dtype=policy_logps.dtype)
        if prob.shape != policy_logps.shape[:1]:
            raise ValueError(f"soft_dpo: preference_prob has shape {tuple(prob.shape)}, "
                             f"expected ({policy_logps.shape[0]},)")
        if not bool(((prob >= 0) & (prob <= 1)).all()):  # NaN fails too
            raise ValueError("soft_dpo: preference_prob must lie in [0, 1]")
        # column b holds P(column b beats the other one); gathering it at the pair's winner gives p.
        win_prob = torch.stack([prob, 1.0 - prob], dim=1).detach()

        def per_pair_prob(rho_w, rho_l, p_chosen, p_rejected):
            margin = beta * (rho_w - rho_l)
            return -p_chosen * F.logsigmoid(margin) - (1.0 - p_chosen) * F.logsigmoid(-margin)

        return pairwise_ratio_loss(per_pair_prob, policy_logps, ref_logps, ranks, win_prob)

    if grades is not None:
        grades = torch.as_tensor(grades, device=policy_logps.device).to(policy_logps.dtype).detach()
        if grades.shape != policy_logps.shape[:2]:
            raise ValueError(f"soft_dpo: grades has shape {tuple(grades.shape)}, expected {tuple(policy_logps.shape[:2])}")

        def per_pair_grades(rho_w, rho_l, grade_chosen, grade_rejected):
            margin = beta * (rho_w - rho_l)
            p = torch.sigmoid(grade_chosen - grade_rejected)
            return -p * F.logsigmoid(margin) - (1.0 - p) * F.logsigmoid(-margin)

        return pairwise_ratio_loss(per_pair_grades, policy_logps, ref_logps, ranks, grades)

    return dpo(policy_logps, ref_logps, ranks=ranks, beta=beta)


# ----------------------------------------------------------------------- distribution-matching family
@register("exo", family="pairwise",
          ranges={"label_smoothing": Range(0.0, 0.5, low_open=True, high_open=True,
                                           why="0 makes the loss infinite, 0.5 or more reverses the labels")},
          paper="Ji, Lu, Zhang, Deng, Zhao, Wang, Gao, Towards Efficient Exact Optimization of Language Model "
                "Alignment, ICML 2024 (arXiv:2402.00856)")
def exo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
        lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1,
        label_smoothing: float = 1e-3) -> Tensor:
    """EXO for pairwise preferences (Ji et al., ICML 2024, EXO-pref with K = 2).

    The model distribution over the two responses is q = softmax(beta * rho) (q_w = sigma(beta h)), the
    label distribution is p = (1 - eps, eps) with ``eps = label_smoothing``; per pair::

        loss = KL(q || p) = q_w (log q_w - log(1 - eps)) + q_l (log q_l - log eps),   q_l = sigma(-beta h)

    Intuition: the reverse KL from the model's implicit preference distribution to the (smoothed)
    labels, which is mode-seeking like the RLHF objective it exactly optimises, unlike DPO's forward
    KL. Its minimum, 0, is at beta h = log((1 - eps) / eps). ``beta`` is the paper's beta_pi (with fixed
    pair labels the paper's beta_r plays no role); eps must lie in (0, 0.5) (eps = 0 makes the loss
    infinite for any finite h, eps >= 0.5 reverses the labels); the default 1e-3 is TRL's recommended value for ``loss_type="exo_pair"``
    (the authors' code writes the loser's label as log-weight -10 next to 0 for the winner, i.e.
    eps = e^-10 / (1 + e^-10) ~ 4.5e-5 up to a constant offset of log(1 + e^-10)).
    ``ref_logps=None``: reference-free. K > 2, ties, padding: the module's pair decomposition (EXO's
    K-response form over a list is a different objective and is not what this computes).
    """
    log_p_w = math.log1p(-label_smoothing)
    log_p_l = math.log(label_smoothing)

    def per_pair(rho_w, rho_l):
        # Beyond |margin| = EXO_MARGIN_CAP both terms and their gradients have reached their limits in every
        # float dtype; the cap keeps an infinite margin (a -inf log-prob) from giving 0 * inf = NaN.
        margin = (beta * (rho_w - rho_l)).clamp(-EXO_MARGIN_CAP, EXO_MARGIN_CAP)
        log_q_w = F.logsigmoid(margin)
        log_q_l = F.logsigmoid(-margin)
        return log_q_w.exp() * (log_q_w - log_p_w) + log_q_l.exp() * (log_q_l - log_p_l)

    return pairwise_ratio_loss(per_pair, policy_logps, ref_logps, ranks)


@register("nca", family="pairwise",
          paper="Chen, Xu, Wu, Zhu, Noise Contrastive Alignment of Language Models with Explicit Rewards, "
                "NeurIPS 2024 (arXiv:2402.05369)")
def nca(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
        lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1) -> Tensor:
    """Noise Contrastive Alignment, pairwise form (NCA; Chen et al., NeurIPS 2024).

    With rewards r = beta * rho, per pair::

        loss = -log sigma(r_w) - 1/2 log sigma(-r_w) - 1/2 log sigma(-r_l)

    Intuition: instead of DPO's relative comparison, each response's *absolute* reward is classified
    against noise: the winner is pushed up, and both responses are regularised down with weight 1/K,
    which keeps the chosen likelihood from falling (as it often does under DPO). This is the paper's
    NCA loss with K = 2 responses and the hard label (1, 0); TRL's ``loss_type="nca_pair"`` is the same.
    ``ref_logps=None``: reference-free. K > 2, ties, padding: the module's pair decomposition.
    """

    def per_pair(rho_w, rho_l):
        reward_w = beta * rho_w
        reward_l = beta * rho_l
        return -F.logsigmoid(reward_w) - 0.5 * F.logsigmoid(-reward_w) - 0.5 * F.logsigmoid(-reward_l)

    return pairwise_ratio_loss(per_pair, policy_logps, ref_logps, ranks)


_APO = ("D'Oosterlinck, Xu, Develder, Demeester, Singh, Potts, Kiela, Mehri, Anchored Preference Optimization "
        "and Contrastive Revisions: Addressing Underspecification in Alignment, TACL 2025 (arXiv:2408.06266)")


@register("apo_zero", family="pairwise", paper=_APO)
def apo_zero(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
             lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1) -> Tensor:
    """Anchored Preference Optimisation, APO-zero (D'Oosterlinck et al., TACL 2025, Eq. 7).

    Per pair::

        loss = (1 - sigma(beta rho_w)) + sigma(beta rho_l)

    Intuition: anchors each response to the reference separately: the winner's likelihood goes up and
    the loser's goes down (not just their difference), for data whose winners are better than what the
    model already produces. The paper writes -sigma(beta rho_w) + sigma(beta rho_l); the constant 1
    (as in TRL's ``loss_type="apo_zero"``) changes no gradient and makes the loss lie in [0, 2].
    ``ref_logps=None``: reference-free. K > 2, ties, padding: the module's pair decomposition.
    """

    def per_pair(rho_w, rho_l):
        return torch.sigmoid(-beta * rho_w) + torch.sigmoid(beta * rho_l)

    return pairwise_ratio_loss(per_pair, policy_logps, ref_logps, ranks)


@register("apo_down", family="pairwise", paper=_APO)
def apo_down(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
             lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1) -> Tensor:
    """Anchored Preference Optimisation, APO-down (D'Oosterlinck et al., TACL 2025, Eq. 8).

    Per pair::

        loss = sigma(beta rho_w) + (1 - sigma(beta (rho_w - rho_l)))

    Intuition: for data whose winners are *worse* than the model's own outputs: push both likelihoods
    down, the loser's more than the winner's. The paper writes sigma(beta rho_w) - sigma(beta h); the
    constant 1 (as in TRL's ``loss_type="apo_down"``) changes no gradient and makes the loss lie in
    [0, 2]. ``ref_logps=None``: reference-free. K > 2, ties, padding: the module's pair decomposition.
    """

    def per_pair(rho_w, rho_l):
        return torch.sigmoid(beta * rho_w) + torch.sigmoid(-beta * (rho_w - rho_l))

    return pairwise_ratio_loss(per_pair, policy_logps, ref_logps, ranks)


@register("sppo_hard", family="pairwise",
          paper="Wu, Sun, Yuan, Ji, Yang, Gu, Self-Play Preference Optimization for Language Model Alignment, "
                "ICLR 2025 (arXiv:2405.00675)")
def sppo_hard(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
              lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1) -> Tensor:
    """Self-Play Preference Optimisation with hard labels (SPPO; Wu et al., ICLR 2025, Eq. 4.7 / Alg. 1).

    SPPO regresses each response's log-ratio onto eta * (P(y beats pi_t) - 1/2). With the hard
    probabilities P = 1 for the winner and 0 for the loser, and beta = 1/eta, per pair::

        loss = (rho_w - 1/(2 beta))^2 + (rho_l + 1/(2 beta))^2

    Intuition: move the winner's log-ratio up to +1/(2 beta) and the loser's down to -1/(2 beta), each
    anchored separately (like IPO, but per response). ``rho`` is taken against the reference (the
    previous self-play policy pi_t in the paper); this is TRL's ``loss_type="sppo_hard"``. The paper's
    soft version uses win probabilities estimated by a preference model (see ``soft_dpo``/grades for
    soft labels in the DPO family). ``ref_logps=None``: reference-free. K > 2, ties, padding: the
    module's pair decomposition.
    """
    target = 0.5 / beta

    def per_pair(rho_w, rho_l):
        return (rho_w - target) ** 2 + (rho_l + target) ** 2

    return pairwise_ratio_loss(per_pair, policy_logps, ref_logps, ranks)


@register("discopop", family="pairwise",
          paper="Lu, Holt, Fanconi, Chan, Foerster, van der Schaar, Lange, Discovering Preference Optimization "
                "Algorithms with and for Large Language Models, NeurIPS 2024 (arXiv:2406.08414)")
def discopop(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
             lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.05,
             discopop_tau: float = 0.05) -> Tensor:
    """DiscoPOP, the log-ratio modulated loss (LRML; Lu et al., NeurIPS 2024, Eq. 5).

    With x = beta * h and the gate g = sigma(x / tau), per pair::

        loss = (1 - g) * (-log sigma(x)) + g * exp(-x)

    Intuition: a loss discovered by LLM-driven search: logistic (DPO) for pairs the model gets wrong,
    exponential for pairs it already gets right, blended by a sharp sigmoid gate at temperature tau;
    the blend is non-convex around x = 0. ``discopop_tau`` is TRL's name (default 0.05, the paper's);
    the default beta = 0.05 is the paper's setting (at beta = tau the gate is sigma(h), as in the
    discovered code). g * exp(-x) is computed as exp(log sigma(x / tau) - x), which stays finite where
    exp(-x) alone overflows. ``ref_logps=None``: reference-free. K > 2, ties, padding: the module's
    pair decomposition.
    """

    def per_pair(rho_w, rho_l):
        x = beta * (rho_w - rho_l)
        logistic = torch.sigmoid(-x / discopop_tau) * F.softplus(-x)
        exponential = torch.exp(F.logsigmoid(x / discopop_tau) - x)
        return logistic + exponential

    return pairwise_ratio_loss(per_pair, policy_logps, ref_logps, ranks)


# --------------------------------------------------------------------------------- f-divergence DPO
DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


def f_divergence_score(rho: Tensor, divergence: str, alpha: float = 0.5) -> Tensor:
    """f'(u) at u = pi_theta / pi_ref = exp(rho), for the divergences of Wang et al. (ICLR 2024), in log space.

    * ``reverse_kl``: f(u) = u log u,  f'(u) = log u + 1  -> rho (+1 cancels in differences);
    * ``forward_kl``: f(u) = -log u,   f'(u) = -1/u       -> -exp(-rho);
    * ``js``: f(u) = u log u - (u + 1) log((u + 1)/2),  f'(u) = log(2u / (1 + u)) -> log 2 + log sigma(rho);
    * ``alpha`` (alpha in (0, 1)): f(u) = (u^(1-a) - (1-a) u - a) / (a (a - 1)),
      f'(u) = (1 - u^(-a)) / a -> (1 - exp(-a rho)) / a  (alpha -> 0 gives log u, alpha = 1 forward KL).

    Arguments of exp are capped at :data:`EXP_CAP`, so scores and gradients stay finite.
    """
    if divergence == "reverse_kl":
        return rho
    if divergence == "forward_kl":
        return -torch.exp((-rho).clamp(max=EXP_CAP))
    if divergence == "js":
        return math.log(2.0) + F.logsigmoid(rho)
    if divergence == "alpha":
        if alpha == 0:
            return rho
        return -torch.expm1((-alpha * rho).clamp(max=EXP_CAP)) / alpha
    raise ValueError(f"unknown divergence {divergence!r}; expected one of {', '.join(DIVERGENCES)}")


@register("f_dpo", family="pairwise",
          ranges={"divergence": Range(kind="choice", choices=DIVERGENCES), "alpha": Range(0.0, 1.0)},
          paper="Wang, Jiang, Yang, Liu, Chen, Beyond Reverse KL: Generalizing Direct Preference Optimization "
                "with Diverse Divergence Constraints, ICLR 2024 (arXiv:2309.16240)")
def f_dpo(policy_logps: Tensor, ref_logps: Tensor | None = None, *, ranks: Tensor | None = None,
          lengths: Tensor | None = None, grades: Tensor | None = None, beta: float = 0.1,
          divergence: str = "reverse_kl", alpha: float = 0.5) -> Tensor:
    """f-DPO (Wang et al., ICLR 2024): DPO under an f-divergence constraint instead of the reverse KL.

    With u = pi_theta(y|x) / pi_ref(y|x) = exp(rho) and f' the derivative of the divergence's generator
    (see :func:`f_divergence_score`), per pair::

        loss = -log sigma(beta f'(u_w) - beta f'(u_l))

    Intuition: the optimal policy of the f-constrained RLHF problem makes the implicit reward
    beta f'(pi/pi_ref) instead of beta log(pi/pi_ref); reverse KL recovers DPO, forward KL and JS are
    more mass-covering (more diverse generations), alpha-divergences interpolate.

    ``divergence`` in {"reverse_kl", "forward_kl", "js", "alpha"}; ``alpha`` is the paper's alpha for
    the alpha-divergence (f'(u) = (1 - u^(-alpha)) / alpha; alpha -> 0 is reverse KL, alpha = 1 forward
    KL; default 0.5). Conventions: TRL's ``f_alpha_divergence_coef`` is 1 - alpha in this
    parametrisation (TRL computes (u^(c - 1) - 1) / (c - 1)), and TRL writes forward KL as 1 - 1/u; both
    differ from ours by constants that cancel in the difference. exp(-rho) terms are capped (EXP_CAP)
    for finite gradients when pi_theta << pi_ref. ``ref_logps=None`` scores the policy log-probs
    directly. K > 2, ties, padding: the module's pair decomposition.
    """

    def per_pair(rho_w, rho_l):
        score_w = f_divergence_score(rho_w, divergence, alpha)
        score_l = f_divergence_score(rho_l, divergence, alpha)
        return -F.logsigmoid(beta * (score_w - score_l))

    return pairwise_ratio_loss(per_pair, policy_logps, ref_logps, ranks)
