"""Training a :class:`~rankalign.reward.RewardModel` with a registered reward objective: one plain loop.

The objectives are the registered functions of :mod:`rankalign.losses.reward` (``bt_reward``,
``pl_reward``, ``davidson_reward``, ``bce_reward``, ``rating_regression``); this module only batches the
lists, scores them with :func:`~rankalign.reward.model.reward_scores` and averages the per-list losses
with the records' weights. For larger runs use ``rankalign.train``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from .. import losses
from .._optim import adamw
from ..engine.cpu_memory import preallocate_optimizer_state, retain_if_cpu
from ..errors import RankalignWarning, UsageError
from .general import general_preference_loss
from .model import RewardModel, center_ensemble_heads, prepare_lists, reward_scores, score_lists

__all__ = ["train_reward_model", "pairwise_accuracy", "attribute_names_from", "bootstrap_head_weights"]

_GRADE_OBJECTIVES = ("bce_reward", "rating_regression")
# the general preference model's objective (embeddings [B, K, 2k], not scores [B, K]; see .general)
GENERAL_PREFERENCE = "general_preference"


def _grades(model: RewardModel, chunk, max_k: int, *, per_attribute: bool) -> Tensor | None:
    """``[B, K]`` (or ``[B, K, A]``) float targets from the records' scores; NaN where missing."""
    shape = (len(chunk), max_k, model.num_attributes) if per_attribute else (len(chunk), max_k)
    grades = torch.full(shape, math.nan)
    found = False
    for b, item in enumerate(chunk):
        if item.grades is None:
            continue
        for k, value in enumerate(item.grades):
            if value is None:
                continue
            if isinstance(value, Mapping):
                if per_attribute:
                    for a, name in enumerate(model.attribute_names):
                        if name in value:
                            grades[b, k, a] = float(value[name])
                            found = True
                    continue
                value = sum(value.values()) / len(value)
            if per_attribute:
                grades[b, k, :] = float(value)
            else:
                grades[b, k] = float(value)
            found = True
    return grades if found else None


def _ranks(chunk, max_k: int) -> Tensor:
    ranks = torch.full((len(chunk), max_k), -1, dtype=torch.long)
    for b, item in enumerate(chunk):
        ranks[b, :item.k] = torch.tensor(item.ranks, dtype=torch.long)
    return ranks


def _weighted_mean(per_list: Tensor, weights: Tensor, total: Tensor | None = None) -> Tensor:
    """``sum w l / sum w``; with ``total`` (the whole batch's ``sum w``) a micro-batch's share of that mean."""
    total = weights.sum() if total is None else total
    return (per_list * weights).sum() / total.to(per_list).clamp_min(torch.finfo(per_list.dtype).tiny)


def _batch_loss(model, tokenizer, chunk, objective, params, layout, max_length,
                head_weights: Tensor | None = None, totals: Tensor | None = None) -> Tensor:
    """The weighted-mean loss of the lists in ``chunk``; ``totals`` (one weight sum per head or attribute
    column, or one for a single reward) are the whole batch's when ``chunk`` is one of its micro-batches, so
    that the micro-batches' losses add up to the batch's."""
    rewards, attributes, eigenvalues = reward_scores(model, tokenizer, chunk, layout=layout, max_length=max_length,
                                                     return_eigenvalues=True)
    max_k = attributes.shape[1]
    ranks = _ranks(chunk, max_k).to(attributes.device)
    weights = torch.tensor([item.weight for item in chunk], dtype=attributes.dtype, device=attributes.device)
    if objective == GENERAL_PREFERENCE:
        return _weighted_mean(general_preference_loss(attributes, ranks=ranks, eigenvalues=eigenvalues), weights,
                              None if totals is None else totals[0])
    columns = None  # (scores [B, K], ranks, grades) per head or attribute, averaged
    if objective.name in _GRADE_OBJECTIVES and model.num_attributes > 1 and model.ensemble_size == 1:
        # one target per attribute (HelpSteer-style ratings): the objective runs on each attribute column
        grades = _grades(model, chunk, max_k, per_attribute=True)
        if grades is None:
            raise ValueError(f"{objective.name} needs records with scores for the attributes "
                             f"{model.attribute_names}")
        grades = grades.to(rewards.device)
        columns = []
        for a in range(model.num_attributes):
            column = grades[..., a]
            column_ranks = torch.where(torch.isnan(column), torch.full_like(ranks, -1), ranks)
            columns.append((attributes[..., a], column_ranks, torch.nan_to_num(column)))
    else:
        grades = _grades(model, chunk, max_k, per_attribute=False)
        if objective.name in _GRADE_OBJECTIVES:
            if grades is None:
                raise ValueError(f"{objective.name} needs records with scores (or Judgment labels)")
            ranks = torch.where(torch.isnan(grades), torch.full_like(ranks, -1), ranks.cpu()).to(rewards.device)
            grades = torch.nan_to_num(grades)
        grades = None if grades is None else grades.to(rewards.device)
        if model.ensemble_size > 1:
            # every head fits the data on its own (bootstrap-weighted), not their mean
            columns = [(attributes[..., e], ranks, grades) for e in range(model.ensemble_size)]
        else:
            return _weighted_mean(objective(rewards, ranks=ranks, grades=grades, **params), weights,
                                  None if totals is None else totals[0])
    total = 0.0
    for c, (scores, column_ranks, column_grades) in enumerate(columns):
        per_list = objective(scores, ranks=column_ranks, grades=column_grades, **params)
        column_weights = weights if head_weights is None else weights * head_weights[:, c].to(weights)
        column_total = None if totals is None else totals[c if head_weights is not None else 0]
        total = total + _weighted_mean(per_list, column_weights, column_total)
    return total / len(columns)


def _disable_dropout(model: torch.nn.Module) -> None:
    """Dropout probability 0 in every ``nn.Dropout`` of ``model`` (attention layers read their ``p`` too)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _list_length(item) -> int:
    """Tokens (causal lists: prompt + responses) or characters (encoder lists: prompt + longest response)."""
    if hasattr(item, "response_ids"):
        return len(item.prompt_ids) + sum(len(r) for r in item.response_ids)
    return len(item.prompt or "") + max((len(r) for r in item.responses), default=0)


def _length_grouped_batches(order: list[int], lists, batch_size: int, generator) -> list[list[int]]:
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: -_list_length(lists[i]))
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def _row_shapes(model: RewardModel, tokenizer, lists, layout: str, max_length: int | None) -> list[tuple[int, int]]:
    """(rows, tokens per row) of each list as the forward pass lays it out: an encoder's k (prompt, response)
    pairs, a causal list packed into one row (shared layout) or k prompt + response rows (duplicated)."""
    if model.kind == "encoder":
        limit = max_length or getattr(model.backbone.config, "max_position_embeddings", None) or 10 ** 9
        prompts = [item.prompt for item in lists for _ in item.responses]
        responses = [r for item in lists for r in item.responses]
        if all(p is None for p in prompts):
            lengths = [len(ids) for ids in tokenizer(responses)["input_ids"]]
        else:
            lengths = [len(ids) for ids in tokenizer([p or "" for p in prompts], responses)["input_ids"]]
        shapes, start = [], 0
        for item in lists:
            shapes.append((item.k, min(limit, max(lengths[start:start + item.k], default=1))))
            start += item.k
        return shapes
    if layout == "shared":
        return [(1, len(item.prompt_ids) + sum(len(r) for r in item.response_ids)) for item in lists]
    return [(item.k, len(item.prompt_ids) + max((len(r) for r in item.response_ids), default=0)) for item in lists]


def _weight_totals(chunk, head_weights: Tensor | None) -> Tensor:
    """A batch's weight sums, one per ensemble head (list weight x bootstrap count) or one in all."""
    weights = torch.tensor([item.weight for item in chunk], dtype=torch.float64)
    if head_weights is None:
        return weights.sum().reshape(1)
    return (weights[:, None] * head_weights.to(weights)).sum(0)


def _micro_batches(batch_order: list[int], shapes: list[tuple[int, int]], budget: int | None) -> list[list[int]]:
    """Split a batch, in order, into runs whose padded size (rows x longest row) stays within ``budget``
    tokens (a list larger than the budget is a micro-batch of its own)."""
    if budget is None:
        return [batch_order]
    out, current, rows, longest = [], [], 0, 0
    for i in batch_order:
        k, length = shapes[i]
        if current and (rows + k) * max(longest, length) > budget:
            out.append(current)
            current, rows, longest = [], 0, 0
        current.append(i)
        rows, longest = rows + k, max(longest, length)
    return out + [current] if current else out


def bootstrap_head_weights(n_lists: int, heads: int, seed: int) -> Tensor:
    """``[N, E]`` Poisson(1) weights: head e sees list n ``w[n, e]`` times (the online bootstrap of Oza & Russell
    2001, as used for reward-model ensembles), so heads on one backbone fit different resamples of the data."""
    generator = torch.Generator().manual_seed(seed + 7919)
    return torch.poisson(torch.ones(n_lists, heads), generator=generator)


def attribute_names_from(records: Iterable) -> list[str]:
    """The attribute names of per-attribute scores (``scores=[{name: value}, ...]``), in first-seen order."""
    names: dict[str, None] = {}
    for record in records:
        for value in getattr(record, "scores", None) or ():
            if isinstance(value, Mapping):
                names.update(dict.fromkeys(str(k) for k in value))
    return list(names)


def pairwise_accuracy(scores: Iterable[Tensor], records: Iterable) -> float:
    """Share of strictly ordered pairs whose better-ranked candidate has the higher score (ties count 0).

    ``scores`` are :func:`~rankalign.reward.score_lists` outputs for ``records`` (ranked candidates only).
    Pooled over all pairs, with the shared pair decomposition of :mod:`rankalign.losses` (``eval`` is a
    higher layer; ``rankalign.eval.listwise_reward_accuracy`` gives the same number).
    """
    from ..losses import preference_metrics

    rows, ranks = [], []
    for values, record in zip(scores, records):
        rows.append([float(v) for v in values])
        ranks.append([r for r in record.dense_ranks() if r is not None] if hasattr(record, "dense_ranks") else [0])
    if not rows:
        raise ValueError("no scored records")
    width = max(len(r) for r in rows)
    padded_scores = torch.tensor([r + [0.0] * (width - len(r)) for r in rows], dtype=torch.float64)
    padded_ranks = torch.tensor([r + [-1] * (width - len(r)) for r in ranks], dtype=torch.long)
    metrics = preference_metrics(padded_scores, None, ranks=padded_ranks)
    pairs = metrics["pairs"].sum()
    if pairs == 0:
        return math.nan
    return float((metrics["ranking_accuracy"] * metrics["pairs"]).sum() / pairs)


def _check_settings(*, epochs, batch_size, lr, weight_decay, max_grad_norm, warmup_ratio) -> float | None:
    """Each optimiser setting in its range, or a UsageError naming it; returns ``max_grad_norm`` with 0 read as
    None (off), as the reward config documents: clipping to norm 0 would zero every gradient, and a negative
    norm would reverse them (the clip coefficient turns negative)."""
    def real(value) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)

    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise UsageError(f"{name} must be a whole number >= 1, got {value!r}")
    if not (real(lr) and lr > 0):
        raise UsageError(f"lr must be a finite number > 0, got {lr!r}")
    if not (real(weight_decay) and weight_decay >= 0):
        raise UsageError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if max_grad_norm is not None and not (real(max_grad_norm) and max_grad_norm >= 0):
        raise UsageError(f"max_grad_norm must be a finite number >= 0 (0 or None: no clipping), got {max_grad_norm!r}")
    if not (real(warmup_ratio) and 0 <= warmup_ratio < 1):
        raise UsageError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
    return None if max_grad_norm is None or max_grad_norm == 0 else float(max_grad_norm)


# reward objectives that learn only from strictly ordered pairs (a tied or one-candidate list gives them 0)
_PAIR_OBJECTIVES = ("bt_reward", "pl_reward", GENERAL_PREFERENCE)


def _check_learnable(lists, objective: str) -> None:
    """A DataError when no list gives ``objective`` anything to learn (its loss and gradient would be 0 on every
    step): the pair-based objectives need a list with two candidates of different rank, Davidson's tie model
    a list with two candidates; the score objectives check their scores when they read them."""
    from ..data.errors import DataError

    if objective in _PAIR_OBJECTIVES and not any(len(set(item.ranks)) >= 2 for item in lists):
        raise DataError(f"none of the {len(lists)} lists holds two candidates of different rank (each has one "
                        f"candidate, or all of its candidates tie): objective {objective!r} learns from strictly "
                        "ordered pairs only, so its loss would be 0", field="ranks", reason="no_ordered_pair",
                        hint="rank the candidates, or use davidson_reward (ties) or bce_reward/rating_regression "
                             "(scores)")
    if objective == "davidson_reward" and not any(item.k >= 2 for item in lists):
        raise DataError(f"each of the {len(lists)} lists has one candidate: davidson_reward compares candidates, "
                        "so there is nothing to learn", field="candidates", reason="one_candidate")


def train_reward_model(model: RewardModel, tokenizer, records: Iterable, *, objective: str = "bt_reward",
                       epochs: int = 1, lr: float = 1e-4, batch_size: int = 8, seed: int = 0,
                       weight_decay: float = 0.0, max_length: int | None = None, layout: str = "shared",
                       objective_params: Mapping | None = None, max_grad_norm: float | None = 1.0,
                       eval_records: Iterable | None = None, progress: bool = False,
                       bootstrap: bool = True, lr_scheduler: str = "constant", warmup_ratio: float = 0.0,
                       resume_state: Mapping | None = None, on_step=None,
                       group_by_length: bool = False, disable_dropout: bool = True,
                       micro_batch_tokens: int | None = 4096, center_heads: bool = True) -> list[dict]:
    """Fit ``model`` on ranked lists with a registered reward objective (AdamW, shuffled mini-batches).

    Parameters
    ----------
    model : RewardModel
        Trained in place (left in eval mode at the end).
    tokenizer : transformers tokenizer
    records : iterable of RankedList / Judgment (or their mappings)
        Lists of any K; ``weight`` weights each list's loss.
    objective : str
        A registered reward objective (``rankalign.losses.names()`` of family "reward"): ``"bt_reward"``
        (pairs, or the mean over a list's ordered pairs), ``"pl_reward"`` (the list's Plackett-Luce
        likelihood), ``"davidson_reward"`` (ties), ``"bce_reward"``/``"rating_regression"`` (on the
        records' scores or Judgment labels; per attribute for a multi-attribute head whose attribute
        names match the score mappings), or ``"general_preference"`` for a general preference model
        (:func:`~rankalign.reward.general.general_preference_loss` on the embeddings).
    epochs, lr, batch_size, weight_decay : optimiser settings.
    seed : int
        Seeds the shuffling and dropout: the same seed gives the same history and weights.
    max_length : int, optional
        Token cap per prompt + response.
    layout : {"shared", "duplicated"}
        Causal backbones only (see :func:`score_lists`).
    objective_params : mapping, optional
        Hyper-parameters for the objective (``{"nu": 0.5}`` for Davidson, ...).
    max_grad_norm : float, optional
        Gradient-norm clipping (None or 0: off).
    eval_records : iterable of RankedList, optional
        Held-out lists: after each epoch their pairwise accuracy is added to that epoch's last history
        entry as ``"eval_accuracy"`` (scalar reward models only).
    progress : bool
        Show a progress bar over steps.
    lr_scheduler : {"constant", "linear"}, warmup_ratio : float
        Learning-rate schedule: linear warm-up over ``warmup_ratio`` of the steps, then constant or linear
        decay to 0.
    resume_state : mapping, optional
        ``{"step", "optimizer", "scheduler", "rng", "history"}`` from a checkpoint: the first ``step`` steps
        are skipped (the data order is re-drawn from ``seed``, so the run continues where it stopped).
    on_step : callable, optional
        ``on_step(step, state)`` after every optimiser step, ``state`` holding the optimizer, scheduler,
        history and ``end_of_epoch`` (``rankalign reward train`` writes its checkpoints here).
    group_by_length : bool
        Batch lists of similar length together (within shuffled windows of 50 batches, batches then
        shuffled; as ``group_by_length`` of transformers' Trainer): less padding, the same data per epoch.
    disable_dropout : bool
        Set every dropout probability of the model to 0 before training (default, as TRL's RewardTrainer
        does): the chosen and rejected responses of a pair would otherwise be scored under different dropout
        masks, which adds noise to the very reward difference the loss is about; it also lets PyTorch's
        fused attention run without materialising the attention matrix (less memory, faster on CPU).
    micro_batch_tokens : int or None
        Run each batch's forward and backward in micro-batches of at most this many padded tokens (rows x
        longest row), accumulating their gradients before the one optimiser step: each micro-batch's loss
        is its share of the batch's weighted mean, so the loss and the gradient are the batch's (up to float
        rounding) while the activations held for the backward pass are bounded by the budget instead of by
        the batch's longest lists. None: the whole batch at once.
    bootstrap : bool
        Ensembles (``model.ensemble_size > 1``): weight each head's loss on each list by a Poisson(1) draw
        (:func:`bootstrap_head_weights`), so the heads differ by data as well as by initialisation.
    center_heads : bool
        Ensembles: after training, shift each head so that its mean reward over (up to 512 of) the
        training lists' candidates is 0 (:func:`~rankalign.reward.center_ensemble_heads`; idempotent), so
        the heads' spread does not include the arbitrary constant each Bradley-Terry head is free to
        carry. Heads without a bias (causal backbones) are left as trained, with a warning.

    Returns
    -------
    list of dict
        One entry per optimiser step: ``{"epoch", "step", "loss", "lr", "lists"}`` (and ``"eval_accuracy"`` at the end of
        each epoch when ``eval_records`` is given).
    """
    retained = retain_if_cpu(model)  # no page faults per step on the CPU (engine/cpu_memory.py)
    if (objective == GENERAL_PREFERENCE) != (model.preference_dim is not None):
        raise ValueError("a general preference model (preference_dim set) trains with "
                         "objective='general_preference', and only such a model does")
    if objective == GENERAL_PREFERENCE:
        fn = GENERAL_PREFERENCE
    else:
        fn = losses.get(objective)
        if fn.family != "reward":
            raise ValueError(f"{objective!r} is a {fn.family} objective; reward models take one of "
                             f"{', '.join(n for n in losses.names() if losses.get(n).family == 'reward')}")
    if objective_params is not None and not isinstance(objective_params, Mapping):
        raise UsageError(f"objective_params must be a mapping, got {type(objective_params).__name__}")
    params = dict(objective_params or {})
    if fn == GENERAL_PREFERENCE:
        if params:
            raise UsageError(f"objective 'general_preference' takes no objective_params, got {sorted(params)}")
    else:
        fn.check_params(params, "objective_params")  # names and ranges, before any record is read
    max_grad_norm = _check_settings(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                                    max_grad_norm=max_grad_norm, warmup_ratio=warmup_ratio)
    records = list(records)
    lists = prepare_lists(model, tokenizer, records, max_length=max_length)
    eval_records = None if eval_records is None else list(eval_records)
    if eval_records is not None and model.preference_dim is not None:
        raise ValueError("eval_records needs a scalar reward model (pairwise accuracy of rewards)")
    if not lists:
        raise ValueError("no ranked list to train on")
    _check_learnable(lists, objective)
    if disable_dropout:
        _disable_dropout(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    head_weights = (bootstrap_head_weights(len(lists), model.ensemble_size, seed)
                    if model.ensemble_size > 1 and bootstrap else None)
    if micro_batch_tokens is not None and micro_batch_tokens < 1:
        raise ValueError(f"micro_batch_tokens must be >= 1 or None, got {micro_batch_tokens}")
    shapes = None if micro_batch_tokens is None else _row_shapes(model, tokenizer, lists, layout, max_length)
    history: list[dict] = []
    steps_per_epoch = math.ceil(len(lists) / batch_size)
    bar = task = None
    if progress:  # rich, on stderr: the progress style of every rankalign command
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn(f"reward {objective}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       TextColumn("{task.fields[loss]}"), console=Console(stderr=True))
        bar.start()
        task = bar.add_task("reward", total=epochs * steps_per_epoch, loss="")
    total_steps = epochs * steps_per_epoch
    warmup = int(round(warmup_ratio * total_steps))

    def schedule(step: int) -> float:  # multiplier of lr at optimiser step `step` (0-based)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if lr_scheduler == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
        return 1.0

    if lr_scheduler not in ("constant", "linear"):
        raise ValueError(f"lr_scheduler must be 'constant' or 'linear', got {lr_scheduler!r}")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        optimizer = adamw(trainable, lr=lr, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        start_step = 0
        if resume_state is not None:
            optimizer.load_state_dict(resume_state["optimizer"])
            scheduler.load_state_dict(resume_state["scheduler"])
            torch.set_rng_state(resume_state["rng"])
            start_step = int(resume_state["step"])
            history.extend(resume_state.get("history", []))
            if bar is not None:
                bar.update(task, advance=start_step)
        if retained:  # Adam's state before the first step, unless resumed (engine/cpu_memory.py)
            preallocate_optimizer_state(optimizer)
        model.train()
        step = 0
        for epoch in range(epochs):
            # every epoch's order is drawn even when it is skipped, so a resumed run sees the same batches
            order = torch.randperm(len(lists), generator=generator).tolist()
            batches = [order[start:start + batch_size] for start in range(0, len(lists), batch_size)]
            if group_by_length:
                batches = _length_grouped_batches(order, lists, batch_size, generator)
            for number, batch_order in enumerate(batches):
                if step < start_step:
                    step += 1
                    continue
                chunk = [lists[i] for i in batch_order]
                optimizer.zero_grad(set_to_none=True)
                micro = _micro_batches(batch_order, shapes, micro_batch_tokens)
                totals = None if len(micro) == 1 else _weight_totals(chunk, None if head_weights is None
                                                                     else head_weights[batch_order])
                loss = 0.0
                for part in micro:
                    part_loss = _batch_loss(model, tokenizer, [lists[i] for i in part], fn, params, layout,
                                            max_length, None if head_weights is None else head_weights[part],
                                            totals)
                    part_loss.backward()
                    loss = loss + part_loss.detach()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                history.append({"epoch": epoch, "step": step, "loss": float(loss),
                                "lr": scheduler.get_last_lr()[0], "lists": len(chunk)})
                if bar is not None:
                    bar.update(task, advance=1, loss=f"loss {history[-1]['loss']:.4f}")
                if on_step is not None:
                    on_step(step, {"optimizer": optimizer, "scheduler": scheduler, "history": history,
                                   "end_of_epoch": number == len(batches) - 1})
            if eval_records and step > start_step:
                scores = score_lists(model, tokenizer, eval_records, max_length=max_length, layout=layout)
                history[-1]["eval_accuracy"] = pairwise_accuracy(scores, eval_records)
                model.train()
    if bar is not None:
        bar.stop()
    model.eval()
    if center_heads and model.ensemble_size > 1:
        if model.head.bias is None:
            warnings.warn("the ensemble's heads have no bias (causal sequence-classification layout) and are "
                          "not centred; their spread includes each head's arbitrary offset", RankalignWarning,
                          stacklevel=2)
        else:
            center_ensemble_heads(model, tokenizer, records, layout=layout, max_length=max_length)
    return history
