"""Reward-model objectives on scores ``[B, K]``: one scalar reward per candidate, same ``ranks`` convention.

Every function is ``fn(scores, *, ranks=None, grades=None, <params>) -> Tensor[B]``: ``scores`` are the
reward model's outputs (not log-probs, no reference model), ``ranks`` ``[B, K]`` long with 0 best, equal
values tied and ``-1`` padding (None: column order, or derived from ``grades`` when only grades are
given), ``grades`` ``[B, K]`` float labels where an objective uses them. Padded entries are replaced
before any arithmetic, so their values never change a row's loss and receive zero gradient.
Returns the per-list loss ``[B]``; reductions and record weights are the caller's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import list_tensor, ordered_pairs, resolve_list_ranks, valid_mask, zero_padding
from ._registry import register
from .listwise import plackett_luce_nll

__all__ = ["bt_reward", "pl_reward", "davidson_reward", "bce_reward", "rating_regression",
           "general_preference_logits", "general_preference_loss"]


def _scores_and_ranks(scores: Tensor, ranks, grades) -> tuple[Tensor, Tensor]:
    if scores.dim() != 2:
        raise ValueError(f"reward objectives take [B, K] scores, got shape {tuple(scores.shape)}")
    ranks = resolve_list_ranks(scores, ranks, grades)
    return zero_padding(scores, valid_mask(ranks)), ranks


def _required_grades(scores: Tensor, grades, valid: Tensor, name: str) -> Tensor:
    if grades is None:
        raise ValueError(f"{name} needs grades ([B, K] targets per candidate)")
    return list_tensor(grades, scores, valid, "grades")


@register("bt_reward", family="reward",
          paper="Bradley & Terry, Rank Analysis of Incomplete Block Designs, Biometrika 1952; margin: Touvron "
                "et al., Llama 2 (arXiv:2307.09288); centring: Eisenstein et al. (arXiv:2312.09244), as in TRL")
def bt_reward(scores: Tensor, *, ranks: Tensor | None = None, grades: Tensor | None = None,
              margin: Tensor | None = None, center_rewards_coefficient: float = 0.0) -> Tensor:
    r"""Bradley–Terry reward-model loss with an optional margin and reward centring.

    Per ordered pair (winner w, loser l)::

        -log sigma(s_w - s_l - m) + c * (s_w + s_l)^2

    averaged over the strictly ordered pairs of the list. Intuition: maximise the Bradley–Terry
    likelihood ``P(w > l) = sigma(s_w - s_l)``; the margin m asks for a larger gap on clearer preferences
    (Llama 2), and the centring term (TRL's ``center_rewards_coefficient``) keeps the rewards near zero
    mean, since BT only identifies differences.

    Parameters
    ----------
    scores : ``[B, K]`` rewards. ranks, grades : see module docstring (grades only derive ranks here).
    margin : optional ``[B]`` (one margin per list, used for all its pairs: TRL's per-pair margin at
        K = 2) or ``[B, K, K]`` with ``[b, i, j]`` the margin of the pair where i beats j.
    center_rewards_coefficient : float c, default 0 (TRL's default None means off).

    K > 2: mean over strictly ordered pairs (the shared pair decomposition); tied pairs and padding are
    skipped, and a list without an ordered pair (K = 1, all tied) has loss 0, centring included.
    """
    scores, ranks = _scores_and_ranks(scores, ranks, grades)
    batch, k = scores.shape
    pairs = ordered_pairs(ranks)
    chosen, rejected = pairs.take(scores)
    gap = chosen - rejected
    if margin is not None:
        margin = torch.as_tensor(margin, device=scores.device).to(scores.dtype)
        if margin.shape == (batch,):
            gap = gap - margin.unsqueeze(1)
        elif margin.shape == (batch, k, k):
            gap = gap - margin.reshape(batch, k * k).gather(1, pairs.winner * k + pairs.loser)
        else:
            raise ValueError(f"margin has shape {tuple(margin.shape)}, expected {(batch,)} or {(batch, k, k)}")
    per_pair = -F.logsigmoid(gap)
    if center_rewards_coefficient:
        per_pair = per_pair + center_rewards_coefficient * (chosen + rejected) ** 2
    return pairs.mean(per_pair)


@register("pl_reward", family="reward",
          paper="Plackett, The Analysis of Permutations, JRSS C 1975; Luce, Individual Choice Behavior, 1959")
def pl_reward(scores: Tensor, *, ranks: Tensor | None = None, grades: Tensor | None = None) -> Tensor:
    r"""Plackett–Luce ranking loss: the negative log-likelihood of the observed ranking under the scores.

    ``L = -sum_k log [exp(s_tau(k)) / sum_{m >= k} exp(s_tau(m))]``. Intuition: the ranking is built by
    repeatedly choosing the best remaining candidate with probability proportional to ``exp(s)``; at
    K = 2 this is Bradley–Terry. Ties and padding as for ``pl_dpo``: each member of a tie group is chosen
    against itself and the strictly lower groups only, so tied members are never ordered and the last
    group contributes 0 (Davidson–Luce-style handling without a tie parameter).
    """
    scores, ranks = _scores_and_ranks(scores, ranks, grades)
    return plackett_luce_nll(scores, ranks)


@register("davidson_reward", family="reward",
          paper="Davidson, On Extending the Bradley-Terry Model to Accommodate Ties in Paired Comparison "
                "Experiments, JASA 1970")
def davidson_reward(scores: Tensor, *, ranks: Tensor | None = None, grades: Tensor | None = None,
                    nu: float | Tensor = 1.0) -> Tensor:
    r"""Davidson tie model: Bradley–Terry with an explicit probability for a tie.

    With ``pi = exp(s)`` and tie parameter ``nu > 0``, for every pair {i, j}::

        P(i > j) = pi_i / (pi_i + pi_j + nu sqrt(pi_i pi_j))
        P(tie)   = nu sqrt(pi_i pi_j) / (pi_i + pi_j + nu sqrt(pi_i pi_j))

    computed in log space: ``log P(i > j) = s_i - logsumexp(s_i, s_j, log nu + (s_i + s_j) / 2)``.
    Intuition: a tie is most likely when the two rewards are close; nu sets how common ties are.

    The per-list loss is the mean negative log-likelihood over all pairs of present candidates, strictly
    ordered pairs using P(i > j) and tied pairs (equal rank) using P(tie); padding is skipped; K = 1 gives
    0. ``nu`` may be a float or a (learnable) 0-dim tensor; it must be positive.
    """
    scores, ranks = _scores_and_ranks(scores, ranks, grades)
    nu = torch.as_tensor(nu, dtype=scores.dtype, device=scores.device)
    if bool((nu <= 0).any()):
        raise ValueError("davidson_reward needs nu > 0")
    pairs = ordered_pairs(ranks)  # every unordered pair, winner first; tied pairs oriented by column
    valid = valid_mask(ranks)
    present = valid.gather(1, pairs.winner) & valid.gather(1, pairs.loser)
    tied = present & ~pairs.valid
    first, second = pairs.take(scores)
    tie_logit = torch.log(nu) + 0.5 * (first + second)
    log_normaliser = torch.logsumexp(torch.stack([first, second, tie_logit.expand_as(first)]), dim=0)
    log_p = torch.where(tied, tie_logit, first) - log_normaliser
    per_pair = torch.where(present, -log_p, torch.zeros_like(log_p))
    return per_pair.sum(1) / present.sum(1).clamp_min(1).to(scores.dtype)


@register("bce_reward", family="reward",
          paper="Pointwise logistic regression on labels, e.g. Cobbe et al., Training Verifiers to Solve Math "
                "Word Problems (arXiv:2110.14168)")
def bce_reward(scores: Tensor, *, ranks: Tensor | None = None, grades: Tensor | None = None) -> Tensor:
    r"""Pointwise binary cross-entropy of ``sigma(s)`` against labels in [0, 1].

    ``L = mean_i -[g_i log sigma(s_i) + (1 - g_i) log sigma(-s_i)]`` over the present candidates.
    Intuition: each candidate is judged on its own (good/bad, or a probability of good), so the reward is
    a calibrated logit rather than only a difference. ``grades`` (required) hold the labels; ``ranks``
    only mark padding here. Returns ``[B]``; an entirely padded row gives 0.
    """
    scores, ranks = _scores_and_ranks(scores, ranks, None)
    valid = valid_mask(ranks)
    labels = _required_grades(scores, grades, valid, "bce_reward")
    if not bool(((labels >= 0) & (labels <= 1)).all()):  # NaN fails too
        raise ValueError("bce_reward needs grades (labels) in [0, 1]")
    per_item = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
    return zero_padding(per_item, valid).sum(1) / valid.sum(1).clamp_min(1).to(scores.dtype)


@register("rating_regression", family="reward",
          paper="Least-squares regression on ratings, e.g. Wang et al., HelpSteer (arXiv:2311.09528)")
def rating_regression(scores: Tensor, *, ranks: Tensor | None = None, grades: Tensor | None = None) -> Tensor:
    r"""Mean squared error between the scores and the ratings: ``L = mean_i (s_i - g_i)^2``.

    Intuition: when annotators give absolute ratings, regress on them directly instead of on the ranking
    they imply. ``grades`` (required) are the ratings, in their own units; ``ranks`` only mark padding.
    Returns ``[B]`` (mean over present candidates; an entirely padded row gives 0).
    """
    scores, ranks = _scores_and_ranks(scores, ranks, None)
    valid = valid_mask(ranks)
    targets = _required_grades(scores, grades, valid, "rating_regression")
    per_item = (scores - targets) ** 2
    return zero_padding(per_item, valid).sum(1) / valid.sum(1).clamp_min(1).to(scores.dtype)


# ------------------------------------------------------------------------- general preference model
def general_preference_logits(first: Tensor, second: Tensor, eigenvalues: Tensor | None = None) -> Tensor:
    """Logit of ``P(first > second)`` under the general preference model, embeddings ``[..., 2k]``.

    Zhang et al. 2024 ("General Preference Modeling with Preference Representations for Aligning Language
    Models", arXiv:2410.02197) score a pair with a skew-symmetric operator, ``P(y_1 > y_2 | x) =
    sigma(<R^> v_1, v_2>)``, ``R^> = diag(lambda_i [[0, -1], [1, 0]])``; in their code (2-D loss and
    high-dimensional loss alike) block i contributes ``lambda_i (v_1[2i] v_2[2i+1] - v_1[2i+1] v_2[2i])``, i.e.
    ``v_2^T R v_1 = -v_1^T R v_2`` with R as written. We follow that sign, so their embeddings and
    checkpoints keep their preferences; the opposite convention is ``general_preference_logits(second,
    first)``. ``eigenvalues`` (block scales lambda) broadcast against ``[..., k]`` (per prompt: ``[B, 1, k]``
    against ``[B, P, 2k]`` embeddings); None means 1. Not in the registry: it scores preference
    *embeddings*, not scalar scores.
    """
    if first.shape[-1] % 2:
        raise ValueError(f"preference embeddings need an even last dimension, got {first.shape[-1]}")
    a = first.unflatten(-1, (-1, 2))
    b = second.unflatten(-1, (-1, 2))
    per_block = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    if eigenvalues is not None:
        per_block = per_block * eigenvalues.to(per_block.dtype)
    return per_block.sum(-1)


def general_preference_loss(embeddings: Tensor, *, ranks: Tensor | None = None,
                            eigenvalues: Tensor | None = None) -> Tensor:
    """Negative log-likelihood of the observed preferences under the general preference model.

    Per ordered pair (winner w, loser l) of a list: ``-log sigma(logit(v_w, v_l))`` with
    :func:`general_preference_logits` (the authors' sign), averaged over the list's
    strictly ordered pairs (the same pair decomposition as ``bt_reward``; ties and padding skipped, a
    list without an ordered pair gives 0).

    Parameters
    ----------
    embeddings : Tensor [B, K, 2k]
    ranks : Tensor [B, K] long, optional
        0 best, equal = tie, -1 padding; None: column order (column 0 best).
    eigenvalues : Tensor [k] or [B, k], optional
        Block scales lambda (default 1); ``[B, k]``: one set per list (a prompt-dependent gate).

    Returns
    -------
    Tensor [B]
    """
    batch, k, _ = embeddings.shape
    if ranks is None:
        ranks = torch.arange(k, device=embeddings.device).expand(batch, k)
    pairs = ordered_pairs(ranks)
    index = lambda which: which.unsqueeze(-1).expand(-1, -1, embeddings.shape[-1])  # noqa: E731
    winners = embeddings.gather(1, index(pairs.winner))
    losers = embeddings.gather(1, index(pairs.loser))
    if eigenvalues is not None and eigenvalues.dim() == 2:
        eigenvalues = eigenvalues.unsqueeze(1)  # [B, 1, k] against the [B, P, 2k] pairs
    logits = general_preference_logits(winners, losers, eigenvalues)
    return pairs.mean(-F.logsigmoid(logits))
