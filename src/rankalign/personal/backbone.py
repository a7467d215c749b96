"""Response features from a reward-model backbone, for the annotator-aware models.

The personal models (:mod:`rankalign.personal.models`, :mod:`rankalign.personal.vpl`) learn small heads --
PAL's projection and prototypes, VPL's encoder and reward network -- on top of a *frozen* backbone, the
"PAL-Tiny" setting of Chen et al. 2024: the backbone's pooled representation of each response is computed
once, here, with the same code path the reward models score with (:func:`rankalign.reward.reward_scores`:
mean pooling for encoders such as MiniLM, the last token for causal LMs), through an identity head.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def backbone_features(backbone, tokenizer, records: Iterable, *, kind: str | None = None, batch_size: int = 32,
                      max_length: int | None = None):
    """Features of every ranked candidate of ``records`` from ``backbone``: a callable feature source.

    Parameters
    ----------
    backbone : transformers model or :class:`rankalign.reward.RewardModel`
        Its base transformer is used, frozen (no gradient).
    tokenizer : the backbone's tokenizer.
    records : RankedList records (prompt + candidates); the feature of a candidate is the backbone's
        pooled representation of the (prompt, candidate) text pair, as the reward model would see it.

    Returns
    -------
    callable ``(prompt, candidate) -> float64 array [hidden]``, usable as ``features=`` of
    :func:`~rankalign.personal.fit_personal_reward` and :func:`~rankalign.personal.fit_vpl_reward`; it
    raises ``KeyError`` for a (prompt, candidate) not among ``records``.
    """
    from ..reward.model import RewardModel, prepare_lists, reward_scores
    from .models import _as_records

    base = backbone.backbone if isinstance(backbone, RewardModel) else backbone
    kind = kind or (backbone.kind if isinstance(backbone, RewardModel) else None)
    hidden = base.config.hidden_size
    identity = RewardModel(base, num_attributes=hidden, kind=kind)
    with torch.no_grad():
        identity.head.weight.copy_(torch.eye(hidden, dtype=identity.head.weight.dtype))
        if identity.head.bias is not None:  # a causal backbone's head has none
            identity.head.bias.zero_()
    records = _as_records(records)
    table: dict = {}
    identity.eval()
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            lists = prepare_lists(identity, tokenizer, chunk, max_length=max_length)
            _, attributes = reward_scores(identity, tokenizer, lists, max_length=max_length)
            for b, item in enumerate(lists):
                record = chunk[item.index]
                ranked = [c for c, r in zip(record.candidates, record.ranks) if r is not None]
                for k, candidate in enumerate(ranked):
                    table[(_key(record.prompt), _key(candidate))] = attributes[b, k].double().numpy().copy()

    def features(prompt, candidate) -> np.ndarray:
        return table[(_key(prompt), _key(candidate))]

    features.table = table
    return features


def _key(text):
    if text is None or isinstance(text, str):
        return text
    return tuple((m["role"], m["content"]) for m in text)


__all__ = ["backbone_features"]
