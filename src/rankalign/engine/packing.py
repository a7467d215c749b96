"""Packing token lists into model rows: the prefix-shared layout and the duplicated layout.

**Shared layout** (one list computes its prompt once). A row holds one or more lists; a list is laid out
as ``prompt, response_1, ..., response_K``. Position ids of the prompt are ``0..P-1`` and every response's
position ids restart at ``P``, so each response sees the same positions it would see after the prompt
alone. The additive attention mask ``[R, 1, T, T]`` lets a token at query index q attend to key index
k <= q of the same list when the key is a prompt token or a token of q's own response; everything else is
blocked (``finfo.min``). A response therefore sees the prompt and its own past tokens only, which is the
duplicated layout's attention pattern, and its log-probs equal the duplicated layout's up to float
rounding.

**Duplicated layout** (the baseline, and the fallback for models without custom 4D masks): one row per
(list, response), ``prompt + response``, right padding, a ``[R, T]`` 0/1 mask.

**Targets.** Token j of a response is predicted by the hidden state one position before it in the
same sequence: by the previous response token for j > 0, and by the *last prompt token* for j = 0 (in
the shared layout that position is shared by the list's K responses). ``target_index`` holds these
flat positions into ``[R * T]``, ``target_ids`` the tokens and ``target_segment`` the output cell
``b * K + k`` each token's log-prob is summed into.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from .tokenize import TokenizedList

LAYOUTS = ("shared", "duplicated")


@dataclass
class PackedBatch:
    """A batch of B lists packed into R rows of T tokens (see the module docstring).

    Attributes
    ----------
    input_ids, position_ids : Tensor [R, T] long
    attention_mask : Tensor
        ``[R, 1, T, T]`` additive float mask (0 attend, ``finfo.min`` blocked) for ``"shared"``;
        ``[R, T]`` 0/1 long for ``"duplicated"``.
    target_index : Tensor [N] long
        Flat index into ``[R * T]`` of the hidden state predicting each response token.
    target_ids : Tensor [N] long
        The response tokens, in the same order.
    target_segment : Tensor [N] long
        ``b * K + k``: the (list, response) cell each token belongs to.
    ranks : Tensor [B, K] long (-1 padding)
    lengths : Tensor [B, K] long (0 padding)
    weights : Tensor [B] float
    grades : Tensor [B, K] float or None (NaN padding)
    labels : Tensor [B] float or None (Judgment labels; NaN where a list has none)
    list_index : Tensor [B] long
    layout : str
    prompt_spans : Tensor [B, 2] long or None
        Shared layout: each list's prompt as (flat start ``row * T + t``, length); with ``response_spans``
        what :mod:`rankalign.engine.attention` computes the attention from (None: the masked path only).
    response_spans : Tensor [C, 3] long or None
        Shared layout: each response as (flat start, length, list b), in packing order.
    source : tuple of TokenizedList or None
        The lists themselves (kept on the host), so a batch can be repacked in the other layout.
    num_tokens : int
        Tokens the model runs over, padding excluded.
    """

    input_ids: Tensor
    position_ids: Tensor
    attention_mask: Tensor
    target_index: Tensor
    target_ids: Tensor
    target_segment: Tensor
    ranks: Tensor
    lengths: Tensor
    weights: Tensor
    grades: Tensor | None
    labels: Tensor | None
    list_index: Tensor
    layout: str
    source: tuple | None = None
    num_tokens: int = 0
    prompt_spans: Tensor | None = None
    response_spans: Tensor | None = None

    @property
    def num_lists(self) -> int:
        return int(self.ranks.shape[0])

    @property
    def max_k(self) -> int:
        return int(self.ranks.shape[1])

    def to(self, device, **kwargs) -> PackedBatch:
        """A copy with every tensor on ``device`` (``source`` stays on the host); kwargs go to ``Tensor.to``."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device, **kwargs) if isinstance(value, Tensor) else value
        return PackedBatch(**moved)

    def to_dict(self) -> dict:
        """Plain dict of the fields (``transformers.Trainer`` moves the tensors to the device)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data) -> PackedBatch:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


# ---------------------------------------------------------------------------------------------- helpers
def _assign_rows(lists: Sequence[TokenizedList], budget: int | None) -> list[list[int]]:
    """First-fit decreasing: longest lists first, each into the first row with room within ``budget``.

    A list longer than the budget gets a row of its own (a list is never split across rows). The order
    of lists inside the batch does not matter: every output is indexed by the list's batch position.
    """
    if budget is None:
        return [[b] for b in range(len(lists))]
    rows: list[list[int]] = []
    room: list[int] = []
    for b in sorted(range(len(lists)), key=lambda i: -lists[i].shared_length):
        size = lists[b].shared_length
        for r in range(len(rows)):
            if room[r] >= size:
                rows[r].append(b)
                room[r] -= size
                break
        else:
            rows.append([b])
            room.append(budget - size)
    return rows


def _round_up(length: int, multiple: int | None) -> int:
    if multiple:
        return -(-length // multiple) * multiple
    return length


def _list_fields(lists: Sequence[TokenizedList], max_k: int):
    """ranks, lengths, weights, grades, labels, list_index tensors for the batch."""
    count = len(lists)
    ranks = torch.full((count, max_k), -1, dtype=torch.long)
    lengths = torch.zeros((count, max_k), dtype=torch.long)
    any_grades = any(item.grades is not None for item in lists)
    grades = torch.full((count, max_k), float("nan")) if any_grades else None
    any_labels = any(item.label is not None for item in lists)
    labels = torch.full((count,), float("nan")) if any_labels else None
    for b, item in enumerate(lists):
        k = item.k
        ranks[b, :k] = torch.tensor(item.ranks, dtype=torch.long)
        lengths[b, :k] = torch.tensor([len(r) for r in item.response_ids], dtype=torch.long)
        if grades is not None and item.grades is not None:
            grades[b, :k] = torch.tensor(item.grades, dtype=torch.float32)
        if labels is not None and item.label is not None:
            labels[b] = float(item.label)
    weights = torch.tensor([item.weight for item in lists], dtype=torch.float32)
    list_index = torch.tensor([item.index for item in lists], dtype=torch.long)
    return ranks, lengths, weights, grades, labels, list_index


def block_attention_mask(group: Tensor, segment: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The shared layout's additive mask ``[R, 1, T, T]`` from per-token list and segment ids.

    Parameters
    ----------
    group : Tensor [R, T] long
        Which list of the row a token belongs to (-1 for padding).
    segment : Tensor [R, T] long
        0 for prompt tokens, k + 1 for tokens of response k (-1 for padding).

    A query q may attend to key k iff ``k <= q``, both belong to the same list, the key is valid, and the
    key is a prompt token or in q's own segment. A padding query attends to itself only (a fully blocked
    row would give NaNs in some attention kernels).

    Each token gets one integer code, ``group * S + segment`` (S = segments per list), and padding a
    code of its own (negative, unique per position). Then "same list and (prompt key or same segment)"
    is ``key_code == query_code or key_code == code of the query's prompt``: two comparisons instead
    of four, which matters because everything here is ``R x T x T``.
    """
    length = group.shape[1]
    device = group.device
    position = torch.arange(length, device=device)
    stride = int(segment.max().item()) + 1 if segment.numel() else 1
    valid = group >= 0
    pad_code = -1 - position.expand_as(group)
    code = torch.where(valid, group * stride + segment, pad_code).to(torch.int32)
    prompt_code = torch.where(valid, group * stride, pad_code).to(torch.int32)
    key = code[:, None, :]
    allowed = (key == code[:, :, None]) | (key == prompt_code[:, :, None])
    allowed &= position[:, None] >= position[None, :]                        # causal: key <= query
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=device)
    mask = torch.where(allowed, torch.zeros((), dtype=dtype, device=device), blocked)
    return mask.unsqueeze(1)


def _causal_block(size: int, blocked: float) -> np.ndarray:
    """``[size, size]`` additive causal mask: 0 on and below the diagonal, ``blocked`` above."""
    return np.triu(np.full((size, size), blocked, dtype=np.float32), k=1)


def _pack_shared(lists, max_tokens_per_row, pad_token_id, pad_to_multiple_of, max_k):
    rows = _assign_rows(lists, max_tokens_per_row)
    length = _round_up(max(sum(lists[b].shared_length for b in row) for row in rows), pad_to_multiple_of)
    n_rows = len(rows)
    input_ids = np.full((n_rows, length), pad_token_id, dtype=np.int64)
    position_ids = np.zeros((n_rows, length), dtype=np.int64)
    # The mask is filled block by block (one slice per prompt and two per response) rather than by
    # comparing ids over R x T x T, which is several times slower: start fully blocked, then open the
    # prompt's causal block, each response's view of its prompt and each response's causal block.
    blocked = float(torch.finfo(torch.float32).min)
    mask = np.full((n_rows, length, length), blocked, dtype=np.float32)
    longest = max(max(len(item.prompt_ids), *(len(r) for r in item.response_ids)) for item in lists)
    causal = _causal_block(longest, blocked)
    target_index, target_ids, target_segment = [], [], []
    prompt_spans = np.zeros((len(lists), 2), dtype=np.int64)
    response_spans = []
    for r, row in enumerate(rows):
        start = 0
        for b in row:
            item = lists[b]
            prompt_len = len(item.prompt_ids)
            pieces = [item.prompt_ids, *item.response_ids]
            stop = start + sum(len(p) for p in pieces)
            input_ids[r, start:stop] = np.concatenate([np.asarray(p, dtype=np.int64) for p in pieces])
            position_ids[r, start:start + prompt_len] = np.arange(prompt_len)
            prompt_spans[b] = (r * length + start, prompt_len)
            mask[r, start:start + prompt_len, start:start + prompt_len] = causal[:prompt_len, :prompt_len]
            last_prompt = r * length + start + prompt_len - 1
            offset = start + prompt_len
            for k, response in enumerate(item.response_ids):
                size = len(response)
                position_ids[r, offset:offset + size] = prompt_len + np.arange(size)
                mask[r, offset:offset + size, start:start + prompt_len] = 0.0
                mask[r, offset:offset + size, offset:offset + size] = causal[:size, :size]
                # token j is predicted at flat position offset + j - 1; token 0 by the last prompt token
                predict = r * length + offset - 1 + np.arange(size)
                predict[0] = last_prompt
                target_index.append(predict)
                target_ids.append(np.asarray(response, dtype=np.int64))
                target_segment.append(np.full(size, b * max_k + k, dtype=np.int64))
                response_spans.append((r * length + offset, size, b))
                offset += size
            start = stop
        padding = np.arange(start, length)
        mask[r, padding, padding] = 0.0  # a padding query attends to itself only (no empty softmax rows)
    spans = {"prompt_spans": torch.from_numpy(prompt_spans),
             "response_spans": torch.tensor(response_spans, dtype=torch.long).view(-1, 3)}
    return (torch.from_numpy(input_ids), torch.from_numpy(position_ids), torch.from_numpy(mask).unsqueeze(1),
            target_index, target_ids, target_segment, spans)


def _pack_duplicated(lists, pad_token_id, pad_to_multiple_of, max_k):
    sequences = [(b, k) for b, item in enumerate(lists) for k in range(item.k)]
    length = _round_up(max(len(lists[b].prompt_ids) + len(lists[b].response_ids[k]) for b, k in sequences),
                       pad_to_multiple_of)
    n_rows = len(sequences)
    input_ids = np.full((n_rows, length), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((n_rows, length), dtype=np.int64)
    target_index, target_ids, target_segment = [], [], []
    for r, (b, k) in enumerate(sequences):
        item = lists[b]
        prompt_len, response = len(item.prompt_ids), item.response_ids[k]
        size = prompt_len + len(response)
        input_ids[r, :prompt_len] = item.prompt_ids
        input_ids[r, prompt_len:size] = response
        attention_mask[r, :size] = 1
        target_index.append(r * length + prompt_len - 1 + np.arange(len(response)))
        target_ids.append(np.asarray(response, dtype=np.int64))
        target_segment.append(np.full(len(response), b * max_k + k, dtype=np.int64))
    position_ids = torch.arange(length).expand(n_rows, length).clone()
    return (torch.from_numpy(input_ids), position_ids, torch.from_numpy(attention_mask),
            target_index, target_ids, target_segment)


# ---------------------------------------------------------------------------------------------- public
def pack_lists(lists: Sequence[TokenizedList], *, layout: str = "shared", max_tokens_per_row: int | None = None,
               pad_token_id: int = 0, pad_to_multiple_of: int | None = None) -> PackedBatch:
    """Pack B token lists into model rows.

    Parameters
    ----------
    lists : sequence of TokenizedList
        Each with a non-empty prompt and non-empty responses (as :func:`tokenize_records` makes them).
    layout : {"shared", "duplicated"}
        Prefix-shared rows (one or more lists per row) or one row per (list, response).
    max_tokens_per_row : int, optional
        Shared layout only: pack several lists into one row while they fit in this many tokens (first
        fit decreasing). None: one list per row. Dense attention kernels compute the whole ``T x T``
        score matrix of a row, masked or not, so this pays off for many short lists of uneven length
        (less padding), not for long ones.
    pad_token_id : int
        Token id for padding (never attended to, never a target).
    pad_to_multiple_of : int, optional
        Round the row length up to a multiple of this.

    Returns
    -------
    PackedBatch
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    lists = list(lists)
    if not lists:
        raise ValueError("pack_lists needs at least one list")
    for item in lists:
        if not item.prompt_ids:
            raise ValueError(f"list {item.index}: empty prompt (the first response token needs a predictor)")
        if not item.response_ids or any(len(r) == 0 for r in item.response_ids):
            raise ValueError(f"list {item.index}: every list needs at least one non-empty response")
    max_k = max(item.k for item in lists)
    if layout == "shared":
        *packed, spans = _pack_shared(lists, max_tokens_per_row, pad_token_id, pad_to_multiple_of, max_k)
    else:
        packed, spans = _pack_duplicated(lists, pad_token_id, pad_to_multiple_of, max_k), {}
    input_ids, position_ids, attention_mask, target_index, target_ids, target_segment = packed
    ranks, lengths, weights, grades, labels, list_index = _list_fields(lists, max_k)
    return PackedBatch(
        input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
        target_index=torch.from_numpy(np.concatenate(target_index)),
        target_ids=torch.from_numpy(np.concatenate(target_ids)),
        target_segment=torch.from_numpy(np.concatenate(target_segment)),
        ranks=ranks, lengths=lengths, weights=weights, grades=grades, labels=labels, list_index=list_index,
        layout=layout, source=tuple(lists),
        num_tokens=sum(item.shared_length if layout == "shared" else item.duplicated_length for item in lists),
        **spans,
    )


class ListCollator:
    """Collate TokenizedLists into a :class:`PackedBatch` (for ``DataLoader`` / ``transformers.Trainer``).

    Parameters
    ----------
    layout, max_tokens_per_row, pad_token_id, pad_to_multiple_of
        As in :func:`pack_lists`.
    return_dict : bool
        Return ``PackedBatch.to_dict()`` (a mapping ``transformers.Trainer`` moves to the device) instead
        of the dataclass.
    """

    def __init__(self, *, layout: str = "shared", max_tokens_per_row: int | None = None, pad_token_id: int = 0,
                 pad_to_multiple_of: int | None = None, return_dict: bool = False):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        self.layout = layout
        self.max_tokens_per_row = max_tokens_per_row
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_dict = return_dict

    def __call__(self, lists: Sequence[TokenizedList]):
        batch = pack_lists(lists, layout=self.layout, max_tokens_per_row=self.max_tokens_per_row,
                           pad_token_id=self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of)
        return batch.to_dict() if self.return_dict else batch
