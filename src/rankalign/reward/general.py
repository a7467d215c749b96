"""General preference heads: preferences that need not be transitive (cycles included).

A scalar reward orders every set of responses, so it cannot represent a cycle A > B > C > A: at most two
of the three pairs can be right. The general preference model of Zhang et al. 2024 ("General Preference
Modeling with Preference Representations for Aligning Language Models", arXiv:2410.02197) embeds each
response into ``2k`` dimensions, ``v = head(h)``, and scores a pair with a skew-symmetric operator::

    P(y_1 > y_2 | x) = sigma(<R v_1, v_2>) = sigma(v_2^T R v_1),   R = diag(lambda_1 J, ..., lambda_k J),
    J = [[0, -1], [1, 0]]

(the sign of the authors' paper and code; see :func:`general_preference_logits`)
``R^T = -R`` makes the model antisymmetric (``P(y_1 > y_2) = 1 - P(y_2 > y_1)``, ``P(y > y) = 1/2``), and
with ``k >= 1`` blocks a 3-cycle is representable (three vectors at 120 degrees in one 2-D block). The
paper optionally L2-normalises the embeddings and makes the block scales ``lambda`` prompt-dependent
(``lambda(x) = k softmax(W h_x / sqrt(H))``); this head keeps a fixed or learned vector (``lambda = 1`` by
default), and ``RewardModel(..., preference_dim=2k, prompt_gate=True)`` puts the prompt gate on a backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ..losses.reward import general_preference_logits, general_preference_loss

__all__ = ["skew_symmetric_operator", "general_preference_logits", "general_preference_loss",
           "GeneralPreferenceHead"]


def skew_symmetric_operator(dim: int, eigenvalues: Tensor | None = None, *, dtype=torch.float32) -> Tensor:
    """The ``[2k, 2k]`` block-diagonal operator ``R = diag(lambda_i [[0, -1], [1, 0]])`` (``dim = 2k``)."""
    if dim < 2 or dim % 2:
        raise ValueError(f"the preference dimension must be even and >= 2, got {dim}")
    blocks = dim // 2
    scales = torch.ones(blocks, dtype=dtype) if eigenvalues is None else torch.as_tensor(eigenvalues, dtype=dtype)
    if scales.shape != (blocks,):  # one scale would otherwise be broadcast to every block without a word
        raise UsageError(f"eigenvalues must hold one scale per 2x2 block ({blocks} for dim {dim}), got shape "
                         f"{tuple(scales.shape)}")
    operator = torch.zeros(dim, dim, dtype=dtype)
    index = torch.arange(blocks) * 2
    operator[index, index + 1] = -scales
    operator[index + 1, index] = scales
    return operator


class GeneralPreferenceHead(nn.Module):
    """Linear map from hidden states ``[..., H]`` to preference embeddings ``[..., 2k]``.

    Parameters
    ----------
    hidden_size : int
    preference_dim : int
        ``2k``, even.
    normalize : bool
        L2-normalise the embeddings (as in Zhang et al. 2024), which bounds every logit by ``max lambda``.
    learn_eigenvalues : bool
        Learn the block scales lambda (initialised at 1; with ``normalize`` they set the sharpness).
    """

    def __init__(self, hidden_size: int, preference_dim: int = 2, *, normalize: bool = False,
                 learn_eigenvalues: bool = False, bias: bool = True):
        super().__init__()
        if preference_dim < 2 or preference_dim % 2:
            raise ValueError(f"preference_dim must be even and >= 2, got {preference_dim}")
        self.projection = nn.Linear(hidden_size, preference_dim, bias=bias)
        self.normalize = normalize
        scales = torch.ones(preference_dim // 2)
        if learn_eigenvalues:
            self.eigenvalues = nn.Parameter(scales)
        else:
            self.register_buffer("eigenvalues", scales)

    def forward(self, hidden: Tensor) -> Tensor:
        embeddings = self.projection(hidden)
        return F.normalize(embeddings, dim=-1) if self.normalize else embeddings

    def preference_logits(self, first: Tensor, second: Tensor) -> Tensor:
        """Logit of ``P(first > second)`` for two embeddings from :meth:`forward`."""
        return general_preference_logits(first, second, self.eigenvalues)

    def loss(self, hidden: Tensor, *, ranks: Tensor | None = None) -> Tensor:
        """:func:`general_preference_loss` of hidden states ``[B, K, H]``."""
        return general_preference_loss(self(hidden), ranks=ranks, eigenvalues=self.eigenvalues)
