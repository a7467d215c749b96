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
import itertools
import math
import numbers
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


# objectives that learn from a list whose candidates all tie (TruncationReport.unordered_lists names them):
# every other policy objective gets zero loss and zero gradient from lists without a strictly ordered pair
TIE_AWARE_OBJECTIVES = ("listnet", "sppo", "pro")


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_training_lists(lists: Sequence, objective, vocab_sizes: dict[str, int | None]) -> None:
    """Refuse training lists that would crash mid-run or train on nothing, once, before the reference pass.

    ``objective`` is the registered :class:`~rankalign.losses.Objective`; ``vocab_sizes`` maps a model's name
    (``"model"``, ``"ref_model"``) to its vocabulary size (None: unknown, not checked). A list must be a
    :class:`~rankalign.engine.TokenizedList` with a prompt, K >= 1 non-empty responses, one whole rank >= 0
    per response (and one grade, when grades are given), a finite weight >= 0, and token ids that are whole
    numbers inside every model's vocabulary (an id past it is an IndexError on the CPU and a device assert on
    a GPU). The data must give the objective something to learn: some list with a positive weight; for an
    unpaired objective (KTO, BCO) every list is one response with a label; for the others some list holds
    two responses of different rank (all-tied lists are enough for :data:`TIE_AWARE_OBJECTIVES` only).
    A :class:`~rankalign.data.errors.DataError` names the list and the field (``lists[3].ranks``).
    """
    from rankalign.data.errors import DataError
    from rankalign.engine import TokenizedList
    from rankalign.errors import UsageError

    if isinstance(lists, (str, bytes)) or not isinstance(lists, Sequence):
        raise UsageError(f"train_lists must be a sequence of TokenizedList, got {type(lists).__name__}")
    if not lists:
        raise DataError("no training lists: the training data is empty", reason="empty",
                        hint="pass at least one TokenizedList (or record)")
    for i, item in enumerate(lists):
        if not isinstance(item, TokenizedList):
            raise UsageError(f"lists[{i}]: expected a rankalign.engine.TokenizedList, got {type(item).__name__}")
        k = len(item.response_ids)
        if not item.prompt_ids:
            raise DataError("empty prompt (the first response token needs a predictor)",
                            field=f"lists[{i}].prompt_ids", reason="empty_prompt")
        if k == 0 or any(len(response) == 0 for response in item.response_ids):
            raise DataError("a list needs at least one response, and no response may be empty",
                            field=f"lists[{i}].response_ids", reason="empty_response")
        if len(item.ranks) != k:
            raise DataError(f"{len(item.ranks)} ranks for {k} responses", field=f"lists[{i}].ranks",
                            reason="rank_count")
        if not all(_whole(r) and r >= 0 for r in item.ranks):
            raise DataError(f"ranks must be whole numbers >= 0 (0 best), got {list(item.ranks)}",
                            field=f"lists[{i}].ranks", reason="rank_out_of_range")
        if item.grades is not None and len(item.grades) != k:
            raise DataError(f"{len(item.grades)} grades for {k} responses", field=f"lists[{i}].grades",
                            reason="grade_count")
        weight = item.weight
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) or weight < 0:
            raise DataError(f"weight must be a finite number >= 0, got {weight!r}", field=f"lists[{i}].weight",
                            reason="bad_weight")
    if not any(item.weight > 0 for item in lists):
        raise DataError(f"all {len(lists)} lists have weight 0, so the loss would be 0", field="weight",
                        reason="bad_weight")
    _check_token_ids(lists, vocab_sizes)
    name = objective.name
    if objective.family == "unpaired":
        for i, item in enumerate(lists):
            if len(item.response_ids) != 1 or item.label is None:
                raise DataError(f"objective {name!r} trains on unpaired data, one response with a label per list "
                                f"(Judgments); this list has K = {len(item.response_ids)} and label {item.label!r}",
                                field=f"lists[{i}]", reason="not_unpaired",
                                hint="pass Judgment records, or choose a pairwise or listwise objective")
        return
    if name in TIE_AWARE_OBJECTIVES:
        if not any(len(item.response_ids) >= 2 for item in lists):
            raise DataError(f"each of the {len(lists)} lists has one response: objective {name!r} compares the "
                            "responses of a list, so there is nothing to learn", field="response_ids",
                            reason="one_candidate")
        return
    if not any(len(set(item.ranks)) >= 2 for item in lists):
        raise DataError(f"none of the {len(lists)} lists holds two responses of different rank (each has one "
                        f"response, or all of its responses tie): objective {name!r} learns from strictly "
                        "ordered pairs only, so its loss and gradient would be 0", field="ranks",
                        reason="no_ordered_pair",
                        hint=f"rank the candidates, or use a tie-aware objective ({', '.join(TIE_AWARE_OBJECTIVES)}) "
                             "or an unpaired one (kto, bco) on Judgments")


def _token_fields(item):
    yield "prompt_ids", item.prompt_ids
    for j, response in enumerate(item.response_ids):
        yield f"response_ids[{j}]", response


def _check_token_ids(lists, vocab_sizes) -> None:
    """Token ids are whole numbers in [0, vocab) for every model: one tensor over all ids (fast); only when
    something is wrong, a scan that names the first offending list and field."""
    from rankalign.data.errors import DataError
    from rankalign.errors import UsageError

    flat = list(itertools.chain.from_iterable(values for item in lists for _, values in _token_fields(item)))
    try:
        ids = torch.as_tensor(flat)
        whole = not (ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        whole = False
    if not whole:
        for i, item in enumerate(lists):
            for field_name, values in _token_fields(item):
                bad = next((t for t in values if not _whole(t)), None)
                if bad is not None:
                    raise DataError(f"token ids must be whole numbers, got {bad!r}",
                                    field=f"lists[{i}].{field_name}", reason="bad_type")
        raise DataError("token ids must be whole numbers", reason="bad_type")
    low, high = int(ids.min()), int(ids.max())
    for model_name, size in vocab_sizes.items():
        if size is None or (low >= 0 and high < size):
            continue
        for i, item in enumerate(lists):
            for field_name, values in _token_fields(item):
                bad = next((int(t) for t in values if not 0 <= t < size), None)
                if bad is not None:
                    raise UsageError(
                        f"lists[{i}].{field_name}: token id {bad} is outside the vocabulary of {model_name} "
                        f"({size} tokens, ids 0..{size - 1}); were the lists tokenized with another tokenizer?",
                        hint="tokenize with the model's own tokenizer, or build the model with "
                             "vocab_size=len(tokenizer)")


def tokenize_training_data(tokenizer, records_or_lists, config):
    """Records (RankedList / Judgment) are tokenized; TokenizedLists pass through."""
    from rankalign.data.errors import DataError
    from rankalign.data.records import Judgment, RankedList
    from rankalign.engine import TokenizedList, tokenize_records

    items = list(records_or_lists)
    if not items:
        raise DataError("no training data: the records (or lists) are empty", reason="empty")
    if all(isinstance(i, TokenizedList) for i in items):
        return items, None
    if config.data_form == "pairs":
        expanded = []
        for record in items:
            if isinstance(record, RankedList) and record.k > 2:
                # tied pairs included, as a tied list of two passes through: the report counts them under
                # unordered_lists, strict pair objectives give them zero loss, tie-aware ones learn from them
                # (dropping them dropped an all-tied list of three or more without a count)
                expanded.extend(record.to_pairs(config.pair_strategy, ties=True))
            else:
                expanded.append(record)
        items = expanded
    if not all(isinstance(i, (RankedList, Judgment)) for i in items):
        raise TypeError("train_preference takes RankedList/Judgment records or engine TokenizedLists")
    return tokenize_records(tokenizer, items, max_prompt_tokens=config.max_prompt_tokens,
                            max_response_tokens=config.max_response_tokens, on_empty=config.on_empty)
