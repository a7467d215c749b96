"""The one function that scores token lists with a causal LM: ``score_lists``.

Every caller that needs ``log pi(y_k | x)`` for whole data sets (evaluation, the reference cache,
simulations) goes through :func:`score_lists`; training calls :func:`~rankalign.engine.sequence_logps` on
its own batches. What it does, in order:

1. choose the layout once (:func:`~rankalign.engine.logps.choose_layout`: prefix-shared when the layout
   probe accepts the model) and say which and why, on one line;
2. load the lists' log-probs from a :class:`~rankalign.engine.reference.ReferenceCache` when one is given
   and valid;
3. sort the lists by length, longest first (less padding per batch; the biggest batch runs first, so a
   batch that does not fit in memory fails at once), and cut them into batches of ``batch_size`` lists
   and at most ``max_tokens_per_batch`` padded tokens;
4. run each batch without gradients, in eval mode, in the engine's autocast
   (:func:`~rankalign.engine.logps.autocast_context`), the output head applied only at response positions
   (:func:`~rankalign.engine.sequence_logps`), with a progress bar;
5. return every list's ``[K]`` log-probs and token counts in the input order (and save the cache).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .cpu_memory import retain_if_cpu
from .logps import _device, autocast_context, choose_layout, sequence_logps
from .packing import pack_lists
from .reference import ReferenceCache, reference_cache_key
from .tokenize import TokenizedList


@dataclass
class ListScores:
    """Summed response log-probs of B lists, in the input order.

    Attributes
    ----------
    logps : list of Tensor
        One float32 CPU tensor ``[K_b]`` per list: ``log pi(y_k | x)``.
    lengths : list of Tensor
        One long tensor ``[K_b]`` per list: response token counts.
    layout : str
        The layout the lists were scored in ("shared" or "duplicated"; "cache" when loaded from a cache).
    """

    logps: list[Tensor]
    lengths: list[Tensor]
    layout: str

    def padded(self) -> tuple[Tensor, Tensor]:
        """``([B, K] float64 log-probs, [B, K] long token counts)``, 0 where a list has fewer than K."""
        k = max((len(values) for values in self.logps), default=0)
        logps = torch.zeros(len(self.logps), k, dtype=torch.float64)
        lengths = torch.zeros(len(self.logps), k, dtype=torch.long)
        for row, (values, counts) in enumerate(zip(self.logps, self.lengths)):
            logps[row, :len(values)] = values.double()
            lengths[row, :len(counts)] = counts
        return logps, lengths


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens_per_batch: int | None = None) -> list[list[int]]:
    """Indices cut into batches of similar length, longest first.

    A batch holds at most ``batch_size`` items and, when ``max_tokens_per_batch`` is given, at most that
    many padded tokens (items x the longest item's length); an item longer than the budget gets a batch of
    its own.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and (
                max_tokens_per_batch is None or (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens_per_batch):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _footprint(item: TokenizedList, layout: str) -> int:
    """Tokens the list occupies once padded: one row of all of it when shared, else K rows of its longest
    prompt + response."""
    if layout == "shared":
        return item.shared_length
    return item.k * (len(item.prompt_ids) + max(len(r) for r in item.response_ids))


@contextlib.contextmanager
def _progress(enabled: bool, total: int, description: str):
    if not enabled or total == 0:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # on stderr, so that a command printing JSON to stdout stays machine-readable
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _autocast_setting(model, precision: str | None) -> str | None:
    """The autocast dtype the scoring runs in, for the cache key (None for full precision)."""
    with autocast_context(model, precision):
        device_type = _device(model).type
        if torch.is_autocast_enabled(device_type):
            return str(torch.get_autocast_dtype(device_type)).replace("torch.", "")
    return None


def _process_group() -> tuple[int, int]:
    """``(rank, world size)`` of the default torch.distributed group; ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_processes(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (one all-reduce; the flag itself without a group)."""
    import torch.distributed as dist

    if _process_group()[1] == 1:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def _gather_scores(mine: dict[int, Tensor], size: int) -> list[Tensor]:
    """Every process's ``{list index: [K] log-probs}`` merged into one list in the input order."""
    import torch.distributed as dist

    parts: list = [None] * _process_group()[1]
    dist.all_gather_object(parts, {i: values.tolist() for i, values in mine.items()})
    results: list[Tensor | None] = [None] * size
    for part in parts:
        for i, values in part.items():
            results[i] = torch.tensor(values, dtype=torch.float32)
    missing = [i for i, values in enumerate(results) if values is None]
    if missing:
        raise RuntimeError(f"split scoring: no process scored lists {missing[:5]}")
    return results


def score_lists(model, lists: Sequence[TokenizedList], *, batch_size: int = 8, layout: str = "auto",
                max_tokens_per_batch: int | None = None, max_tokens_per_row: int | None = None,
                pad_token_id: int = 0, chunk_size: int = 1024, precision: str | None = "auto", cache_dir=None,
                settings: Mapping | None = None, tokenizer=None, progress: bool = True,
                description: str = "log-probs", announce: bool = True,
                split_across_processes: bool = False) -> ListScores:
    """Summed log-probability ``log pi(y_k | x) = sum_t log pi(y_k,t | x, y_k,<t)`` of every response.

    Parameters
    ----------
    model : causal LM (PEFT-wrapped is fine)
        Run in eval mode without gradients; its training flag is restored.
    lists : sequence of TokenizedList
    batch_size : int
        Lists per forward pass (lists are sorted by length first, see the module docstring).
    layout : {"auto", "shared", "duplicated"}
        "auto": prefix-shared when the layout probe accepts the model (:func:`choose_layout`).
    max_tokens_per_batch : int, optional
        Also cap a batch at this many padded tokens (lists x the longest list's tokens, a list counting
        K rows in the duplicated layout).
    max_tokens_per_row : int, optional
        Shared layout: several lists per row (see :func:`~rankalign.engine.pack_lists`).
    pad_token_id, chunk_size
        As in :func:`~rankalign.engine.pack_lists` and :func:`~rankalign.engine.sequence_logps`.
    precision : {"auto", None, "fp32", "bf16", "fp16"}
        Autocast (:func:`~rankalign.engine.logps.autocast_context`). "auto": bfloat16 autocast on a CUDA
        device that supports it, full precision on the CPU; None: only what ``accelerate`` set up.
    cache_dir : str or Path, optional
        Reference cache (:class:`~rankalign.engine.ReferenceCache`): load when valid, else compute and
        save. The key covers the weights, ``tokenizer``, the token lists, ``settings`` and the autocast
        dtype when there is one.
    settings : mapping, optional
        Anything else the numbers depend on (part of the cache key).
    tokenizer : optional
        Part of the cache key when given.
    progress : bool
        Show a progress bar (rich, on stderr).
    description : str
        The progress bar's label.
    announce : bool
        Print (once per model) which layout is used and why.
    split_across_processes : bool
        Under torch.distributed (``accelerate launch``), every process must call this with the same
        lists: the batches are dealt out round-robin (batch j to process j mod P), each process scores
        its share, and the scores are gathered so that every process returns all of them; the first
        process writes the cache while the others wait. A batch is packed exactly as in one process,
        so the scores, and the cache, are those of one process. A cache valid on every process is
        loaded without scoring anything.

    Returns
    -------
    ListScores
        ``logps`` and ``lengths``, one ``[K_b]`` tensor each per list, in the input order.
    """
    lists = list(lists)
    lengths = [torch.tensor([len(r) for r in item.response_ids], dtype=torch.long) for item in lists]
    rank, world = _process_group() if split_across_processes else (0, 1)
    split = world > 1
    cache = key = None
    if cache_dir is not None:
        key_settings = dict(settings or {})
        autocast_dtype = _autocast_setting(model, precision)
        if autocast_dtype is not None:
            key_settings["autocast"] = autocast_dtype
        cache = ReferenceCache(cache_dir)
        key = reference_cache_key(model, lists, tokenizer=tokenizer, settings=key_settings)
        cached = cache.load(key, [item.k for item in lists])
        if split and not _all_processes(cached is not None):  # all load, or all compute
            cached = None
        if cached is not None:
            return ListScores(cached, lengths, "cache")
        if cache.last_miss_reason not in ("missing", None):
            warnings.warn(f"reference cache {cache.manifest_path} not used: {cache.last_miss_reason}; recomputing",
                          stacklevel=2)
    if not lists:
        return ListScores([], [], "shared" if layout == "auto" else layout)
    layout = choose_layout(model, layout, announce=announce)
    device = _device(model)
    retain_if_cpu(device)  # no page faults per batch on the CPU (engine/cpu_memory.py)
    batches = length_batches([_footprint(item, layout) for item in lists], batch_size, max_tokens_per_batch)
    batches = batches[rank::world]  # this process's share (all of them in one process)
    results: list[Tensor | None] = [None] * len(lists)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _progress(progress and rank == 0, sum(map(len, batches)), description) as advance:
            for indices in batches:
                batch = pack_lists([lists[i] for i in indices], layout=layout, pad_token_id=pad_token_id,
                                   max_tokens_per_row=max_tokens_per_row if layout == "shared" else None)
                logps = sequence_logps(model, batch.to(device), chunk_size=chunk_size,
                                       precision=precision).float().cpu()
                for row, i in enumerate(indices):
                    results[i] = logps[row, :lists[i].k].clone()
                advance(len(indices))
    finally:
        model.train(was_training)
    if split:
        import torch.distributed as dist

        results = _gather_scores({i: values for i, values in enumerate(results) if values is not None}, len(lists))
        if cache is not None and rank == 0:
            cache.save(key, results, settings=settings)
        dist.barrier()  # the cache is whole before any process moves on (and reads it on a resume)
    elif cache is not None:
        cache.save(key, results, settings=settings)
    return ListScores(results, lengths, layout)


__all__ = ["ListScores", "score_lists", "length_batches"]
