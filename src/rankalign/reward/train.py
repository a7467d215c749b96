"""Training a :class:`~rankalign.reward.RewardModel` with a registered reward objective: one plain loop.

The objectives are the registered functions of :mod:`rankalign.losses.reward` (``bt_reward``,
``pl_reward``, ``davidson_reward``, ``bce_reward``, ``rating_regression``); this module only batches the
lists, scores them with :func:`~rankalign.reward.model.reward_scores` and averages the per-list losses
with the records' weights. For larger runs use ``rankalign.train``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from .. import losses
from .general import general_preference_loss
from .model import RewardModel, prepare_lists, reward_scores, score_lists

__all__ = ["train_reward_model", "pairwise_accuracy"]

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


def _batch_loss(model, tokenizer, chunk, objective, params, layout, max_length) -> Tensor:
    rewards, attributes = reward_scores(model, tokenizer, chunk, layout=layout, max_length=max_length)
    max_k = attributes.shape[1]
    ranks = _ranks(chunk, max_k).to(attributes.device)
    weights = torch.tensor([item.weight for item in chunk], dtype=attributes.dtype, device=attributes.device)
    if objective == GENERAL_PREFERENCE:
        per_list = general_preference_loss(attributes, ranks=ranks)
    elif objective.name in _GRADE_OBJECTIVES and model.num_attributes > 1:
        # one target per attribute (HelpSteer-style ratings): the objective runs on each attribute column
        grades = _grades(model, chunk, max_k, per_attribute=True)
        if grades is None:
            raise ValueError(f"{objective.name} needs records with scores")
        grades = grades.to(rewards.device)
        per_list = 0.0
        for a in range(model.num_attributes):
            column = grades[..., a]
            column_ranks = torch.where(torch.isnan(column), torch.full_like(ranks, -1), ranks)
            per_list = per_list + objective(attributes[..., a], ranks=column_ranks,
                                            grades=torch.nan_to_num(column), **params)
        per_list = per_list / model.num_attributes
    else:
        grades = _grades(model, chunk, max_k, per_attribute=False)
        if objective.name in _GRADE_OBJECTIVES:
            if grades is None:
                raise ValueError(f"{objective.name} needs records with scores (or Judgment labels)")
            ranks = torch.where(torch.isnan(grades), torch.full_like(ranks, -1), ranks.cpu()).to(rewards.device)
            grades = torch.nan_to_num(grades)
        per_list = objective(rewards, ranks=ranks, grades=None if grades is None else grades.to(rewards.device),
                             **params)
    return (per_list * weights).sum() / weights.sum().clamp_min(torch.finfo(attributes.dtype).tiny)


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


def train_reward_model(model: RewardModel, tokenizer, records: Iterable, *, objective: str = "bt_reward",
                       epochs: int = 1, lr: float = 1e-4, batch_size: int = 8, seed: int = 0,
                       weight_decay: float = 0.0, max_length: int | None = None, layout: str = "shared",
                       objective_params: Mapping | None = None, max_grad_norm: float | None = 1.0,
                       eval_records: Iterable | None = None, progress: bool = False) -> list[dict]:
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
        Gradient-norm clipping (None: off).
    eval_records : iterable of RankedList, optional
        Held-out lists: after each epoch their pairwise accuracy is added to that epoch's last history
        entry as ``"eval_accuracy"`` (scalar reward models only).
    progress : bool
        Show a progress bar over steps.

    Returns
    -------
    list of dict
        One entry per optimiser step: ``{"epoch", "step", "loss"}`` (and ``"eval_accuracy"`` at the end of
        each epoch when ``eval_records`` is given).
    """
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
    params = dict(objective_params or {})
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    lists = prepare_lists(model, tokenizer, records, max_length=max_length)
    eval_records = None if eval_records is None else list(eval_records)
    if eval_records is not None and model.preference_dim is not None:
        raise ValueError("eval_records needs a scalar reward model (pairwise accuracy of rewards)")
    if not lists:
        raise ValueError("no ranked list to train on")
    trainable = [p for p in model.parameters() if p.requires_grad]
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
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
        model.train()
        step = 0
        for epoch in range(epochs):
            order = torch.randperm(len(lists), generator=generator).tolist()
            for start in range(0, len(lists), batch_size):
                chunk = [lists[i] for i in order[start:start + batch_size]]
                loss = _batch_loss(model, tokenizer, chunk, fn, params, layout, max_length)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
                optimizer.step()
                step += 1
                history.append({"epoch": epoch, "step": step, "loss": float(loss.detach())})
                if bar is not None:
                    bar.update(task, advance=1, loss=f"loss {history[-1]['loss']:.4f}")
            if eval_records:
                scores = score_lists(model, tokenizer, eval_records, max_length=max_length, layout=layout)
                history[-1]["eval_accuracy"] = pairwise_accuracy(scores, eval_records)
                model.train()
    if bar is not None:
        bar.stop()
    model.eval()
    return history
