"""Training data for :class:`~rankalign.train.trainer.PreferenceTrainer`: dataset, sampler and collator.

* :func:`tokenize_training_data` turns records (``RankedList`` / ``Judgment``) into engine
  ``TokenizedList`` items with the config's truncation and pair strategy;
* :class:`ListDataset` holds the tokenized lists with their cached reference log-probs;
* :class:`EpochShuffleSampler` orders them as a fixed function of (seed, epoch), so a resumed run sees
  the batches an uninterrupted one sees;
* :class:`PreferenceCollator` packs B lists into one batch (:func:`rankalign.engine.pack_lists`), with
  KTO's :func:`mismatched_pairs` beside it when the objective estimates z0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


class ListDataset(Dataset):
    """Tokenized lists with their cached reference log-probs (``[K]`` each, or None)."""

    def __init__(self, lists: Sequence, ref_logps: Sequence[torch.Tensor] | None = None):
        if ref_logps is not None and len(ref_logps) != len(lists):
            raise ValueError(f"{len(ref_logps)} reference log-prob rows for {len(lists)} lists")
        self.lists = list(lists)
        self.ref_logps = None if ref_logps is None else [torch.as_tensor(r, dtype=torch.float32) for r in ref_logps]

    def __len__(self) -> int:
        return len(self.lists)

    def __getitem__(self, index: int):
        return self.lists[index], (None if self.ref_logps is None else self.ref_logps[index])


class EpochShuffleSampler(Sampler):
    """A permutation of the dataset that depends only on ``(seed, epoch)``.

    The Trainer calls :meth:`set_epoch` at the start of every epoch (also when it resumes in the middle
    of one, then skips the batches already seen), so an interrupted and resumed run sees exactly the
    batches an uninterrupted run sees.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.size))
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def mismatched_pairs(lists: Sequence) -> list:
    """KTO's mismatched (prompt, response) pairs of a batch: prompt i with the response of (i + 1) mod B.

    Ethayarajh et al., *KTO: Model Alignment as Prospect Theoretic Optimization* (ICML 2024), estimate
    the reference point z0 = KL(pi_theta || pi_ref) from responses that do not belong to their prompt;
    shifting the responses by one inside the batch is how TRL's ``KTOTrainer`` builds them. Each item is
    an unpaired :class:`~rankalign.engine.TokenizedList` (K = 1); the result keeps the prompt's label,
    weight and index (they are not used by the estimate). A batch of one pairs a prompt with its own
    response (there is no other in the batch).
    """
    from rankalign.engine import TokenizedList

    size = len(lists)
    out = []
    for i, item in enumerate(lists):
        other = lists[(i + 1) % size]
        if item.k != 1 or other.k != 1:
            raise ValueError(f"mismatched pairs are built from unpaired lists (K = 1); list {item.index} has "
                             f"K = {item.k}, list {other.index} K = {other.k}")
        out.append(TokenizedList(prompt_ids=list(item.prompt_ids), response_ids=[list(other.response_ids[0])],
                                 ranks=[0], weight=item.weight, label=item.label, index=item.index))
    return out


class PreferenceCollator:
    """Pack B lists with :func:`rankalign.engine.pack_lists`; return a dict the Trainer moves to the device.

    The dict holds the :class:`~rankalign.engine.PackedBatch` fields plus ``ref_logps`` (``[B, K]``,
    aligned with the batch's response columns, 0 at padding) when references were precomputed.

    With ``mismatched_pairs=True`` (KTO's KL estimate) the dict also holds ``kl_batch``: the fields of
    the packed :func:`mismatched_pairs` of the batch (prompt i with response (i + 1) mod B).
    """

    def __init__(self, *, layout: str = "shared", pad_token_id: int = 0, max_tokens_per_row: int | None = None,
                 mismatched_pairs: bool = False):
        self.layout = layout
        self.pad_token_id = pad_token_id
        self.max_tokens_per_row = max_tokens_per_row
        self.mismatched_pairs = mismatched_pairs

    def _pack(self, lists) -> dict[str, Any]:
        from rankalign.engine import pack_lists

        packed = pack_lists(lists, layout=self.layout, max_tokens_per_row=self.max_tokens_per_row,
                            pad_token_id=self.pad_token_id)
        return {f.name: getattr(packed, f.name) for f in dataclasses.fields(packed)}

    def __call__(self, items) -> dict[str, Any]:
        lists = [item[0] for item in items]
        out = self._pack(lists)
        if self.mismatched_pairs:
            out["kl_batch"] = self._pack(mismatched_pairs(lists))
        width = out["ranks"].shape[1]
        if items[0][1] is not None:
            ref = torch.zeros(len(items), width, dtype=torch.float32)
            for row, (_, values) in enumerate(items):
                ref[row, : values.shape[0]] = values
            out["ref_logps"] = ref
        return out


def tokenize_training_data(tokenizer, records_or_lists, config):
    """Records (RankedList / Judgment) are tokenized; TokenizedLists pass through."""
    from rankalign.data.records import Judgment, RankedList
    from rankalign.engine import TokenizedList, tokenize_records

    items = list(records_or_lists)
    if not items:
        raise ValueError("no training data")
    if all(isinstance(i, TokenizedList) for i in items):
        return items, None
    if config.data_form == "pairs":
        expanded = []
        for record in items:
            if isinstance(record, RankedList) and record.k > 2:
                expanded.extend(record.to_pairs(config.pair_strategy, ties=False))
            else:
                expanded.append(record)
        items = expanded
    if not all(isinstance(i, (RankedList, Judgment)) for i in items):
        raise TypeError("train_preference takes RankedList/Judgment records or engine TokenizedLists")
    return tokenize_records(tokenizer, items, max_prompt_tokens=config.max_prompt_tokens,
                            max_response_tokens=config.max_response_tokens, on_empty=config.on_empty)
