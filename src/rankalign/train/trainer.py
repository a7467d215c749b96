"""`PreferenceTrainer`: any registered objective on ranked lists, on top of ``transformers.Trainer``.

The Trainer supplies the optimiser, schedulers, checkpoints (safetensors weights plus optimiser,
scheduler and RNG state), accelerate/DeepSpeed/FSDP and the logging integrations. This module adds
what is specific to preference learning:

* a batch is B *lists* (a pair is a list of two), packed by :func:`rankalign.engine.pack_lists`
  (prompt once, responses after it in the ``shared`` layout) and scored by
  :func:`rankalign.engine.sequence_logps`;
* reference log-probs are computed once before training (:func:`rankalign.engine.compute_reference_logps`,
  cached on disk), or, with a LoRA adapter and no reference model, from the base model with the adapter
  disabled;
* the loss of an optimiser step is the weighted mean of the per-list losses over *all* lists of the
  step -- every micro-batch of the gradient accumulation and every process -- so accumulating 4 x 2
  lists gives the gradient of one batch of 8, and 2 processes give the same step as one;
* the data order is a fixed function of (seed, epoch), so a run resumed from a checkpoint sees the same
  batches as an uninterrupted one;
* KTO's reference point z0 (Ethayarajh et al. 2024) is estimated for every micro-batch, as TRL's
  ``KTOTrainer`` does: prompt i with the response of example (i + 1) mod B (:func:`mismatched_pairs`,
  packed by the collator beside the batch), policy and reference log-probs of those pairs without
  gradient, their mean log-ratio summed over processes, clamped at 0 by the objective. Unlike TRL, under
  several processes the pairs are built over the *global* micro-batch (every process's lists, gathered
  in rank order), so 2 processes of B lists estimate the z0 of 1 process of 2B lists. These
  reference log-probs are not cached: they depend on which examples share a batch (batch size,
  process count). The reference for them is ``ref_model``, the adapter-disabled base of a PEFT model,
  or -- with neither -- a frozen copy of the policy taken when the trainer is built (one extra copy of
  the weights in memory). ``loss_params["z0"]`` switches the estimate off and uses that fixed value;
* BCO's reward shift delta (Jung et al. 2024) is the running mean of the implicit rewards kept by the
  trainer (:class:`~rankalign.losses.unpaired.BCORunningMean`), updated with each training micro-batch's
  detached rewards over all processes before its loss, saved as ``rankalign_objective_state.json`` in
  every checkpoint and restored on resume; ``loss_params["delta"]`` fixes it instead;
* metrics beside the loss: implicit rewards, margins, reward and ranking accuracy
  (:func:`rankalign.losses.preference_metrics`), a per-token log-ratio "KL" estimate and
  tokens/s, to the console, TensorBoard and ``output_dir/metrics.jsonl``.

Logged metrics (means over the lists of the logging window, summed over processes first):

``loss`` the weighted objective; ``objective`` its unweighted per-list mean; ``rewards/best`` and
``rewards/worst`` the mean implicit reward beta * rho of the best / worst rank group; ``rewards/margin``
the mean over ordered pairs of beta * (rho_winner - rho_loser); ``rewards/accuracy`` the share of ordered
pairs with rho_winner > rho_loser; ``ranking_accuracy`` the share with log pi(y_w) > log pi(y_l) (the
policy's own likelihood, no reference); for unpaired data ``rewards/desirable`` / ``rewards/undesirable``.
``kl_per_token`` = sum(log pi_theta(y|x) - log pi_ref(y|x)) / sum(|y|) over the *training responses*:
the per-token log-ratio on the data. It is not KL(pi_theta || pi_ref), which is the expectation of that
log-ratio under the policy's own samples; on off-policy preference data it can be negative. It shows
how far the policy has moved on the responses it is trained on (0 at the start). For KTO with z0
estimated (no ``loss_params.z0``): ``kl`` the mean over the window's batches of the mismatched-pair
estimate mean_i [log pi_theta(y_{i+1}|x_i) - log pi_ref(y_{i+1}|x_i)] and ``z0`` the mean of the
reference point used, max(0, kl) per batch (:meth:`PreferenceTrainer._kto_kl_estimate`). For BCO and
``bco_pair`` with delta kept by the trainer (no ``loss_params.delta``): ``bco_delta`` the running reward
mean after the last step. ``tokens`` are the
tokens the model ran over (prompt once per list in the shared layout, padding excluded) and
``tokens_per_second`` their rate over the window's wall time.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from rankalign import losses
from rankalign._atomic import atomic_write_json, writing
from rankalign.engine.cpu_memory import preallocate_optimizer_state, retain_if_cpu
from rankalign.losses.unpaired import BCORunningMean

from .callbacks import (
    CHECKPOINT_MARKER,
    METRICS_FILE,
    CheckpointMarkerCallback,
    MetricsFileCallback,
    RichProgressCallback,
    last_complete_checkpoint,
)
from .checkpoints import run_fingerprint, select_checkpoint, verify_checkpoint
from .config import check_config, config_to_dict
from .data import (
    EpochShuffleSampler,
    ListDataset,
    PreferenceCollator,
    check_training_lists,
    mismatched_pairs,
    tokenize_training_data,
)

# the TrainingArguments that change what a run computes (part of PreferenceTrainer's default fingerprint)
_FINGERPRINT_ARGUMENTS = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "seed",
                          "optim", "weight_decay", "lr_scheduler_type", "warmup_steps", "max_grad_norm")
# per-run objective state (BCO's running reward mean) saved in every checkpoint folder
OBJECTIVE_STATE_FILE = "rankalign_objective_state.json"

# names that lived in this module before the split into data / callbacks / trainer
__all__ = ["PreferenceTrainer", "TrainResult", "compute_reference", "make_training_arguments", "maybe_apply_peft",
           "train_preference", "bf16_available", "OBJECTIVE_STATE_FILE", "CHECKPOINT_MARKER", "METRICS_FILE",
           "CheckpointMarkerCallback", "RichProgressCallback", "MetricsFileCallback", "last_complete_checkpoint",
           "EpochShuffleSampler", "ListDataset", "PreferenceCollator", "mismatched_pairs"]


# -------------------------------------------------------------------------------------- model helpers
def _engine_model(model):
    """The causal LM the engine runs: the PEFT base model (adapters active) or the model itself."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


# objective families that another trainer runs, and where
_OTHER_TRAINERS = {
    "reward": "reward objectives train a RewardModel: rankalign.reward.train_reward_model or `rankalign reward train`",
    "policy_gradient": "GRPO and RLOO train on sampled groups: rankalign.online.run_policy_gradient",
}


def _vocab_size(model) -> int | None:
    """The number of token ids ``model`` can embed and predict (the smaller of its input embedding and output
    head), or None when it has neither (nothing to check)."""
    if model is None:
        return None
    inner = _engine_model(model)
    sizes = []
    for getter, attribute in (("get_input_embeddings", "num_embeddings"), ("get_output_embeddings", "out_features")):
        try:
            module = getattr(inner, getter)()
        except (AttributeError, NotImplementedError):
            module = None
        size = getattr(module, attribute, None)
        if isinstance(size, int) and size > 0:
            sizes.append(size)
    if not sizes:
        size = getattr(getattr(inner, "config", None), "vocab_size", None)
        return size if isinstance(size, int) and size > 0 else None
    return min(sizes)


def _check_loaded(name: str, model) -> None:
    """A :class:`~rankalign.errors.UsageError` unless ``model`` is a torch module whose weights hold values (a
    model built under ``torch.device("meta")`` or loaded with ``device_map="meta"`` has none, and fails deep
    inside autocast or ``.to()``)."""
    from rankalign.errors import UsageError

    if model is None:
        return
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{name} must be a torch model (a transformers PreTrainedModel), got {type(model).__name__}")
    if any(parameter.is_meta for parameter in model.parameters()):
        raise UsageError(f"{name} has weights on the meta device (shapes without values): it was never loaded",
                         hint="load the weights (from_pretrained without device_map='meta', or to_empty() and "
                              "load a state dict) before training")


def bf16_available() -> bool:
    """True where the hardware computes in bfloat16 natively (a CUDA device that supports it)."""
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())

# ------------------------------------------------------------------------------------------- trainer
class PreferenceTrainer(transformers.Trainer):
    """``transformers.Trainer`` whose loss is a registered preference objective on packed ranked lists.

    Parameters
    ----------
    model : PreTrainedModel or PeftModel
        The policy.
    args : transformers.TrainingArguments
        ``per_device_train_batch_size`` counts lists; ``gradient_accumulation_steps`` micro-batches of lists.
        ``remove_unused_columns`` is forced to False (batches are packed lists, not dataset columns).
    train_lists : sequence of rankalign.engine.TokenizedList
        Pairwise, listwise (K > 2, ties, padding) or unpaired lists (K = 1 with ``label``).
    objective : str
        A name from :func:`rankalign.losses.names`.
    loss_params : dict
        Keyword parameters of the objective (``beta`` also scales the logged implicit rewards).
    ref_model : PreTrainedModel, optional
        Reference policy. By default its log-probs are computed once before training and cached
        (``precompute_reference=True``); otherwise it runs under ``no_grad`` at every step.
    ref_logps : sequence of Tensor, optional
        Precomputed reference log-probs, one ``[K]`` tensor per list (skips the reference pass).
    layout : {"shared", "duplicated"}
        Packing layout; "shared" falls back to "duplicated" with a warning when the model cannot take a
        4D attention mask (:func:`rankalign.engine.supports_shared_layout`).
    reference_cache_dir : path, optional
        On-disk cache for the reference log-probs.

    Notes
    -----
    KTO without ``loss_params["z0"]`` estimates z0 per micro-batch from mismatched pairs and BCO
    without ``loss_params["delta"]`` keeps a running reward mean (module docstring). With gradient
    accumulation both work per micro-batch, so a run's z0 values depend on the micro-batch size; KTO's
    mismatched pairs span the global micro-batch (all processes), so they do not depend on the number
    of processes.
    """

    def __init__(self, model, args: transformers.TrainingArguments, train_lists, *, objective: str = "dpo",
                 loss_params: dict | None = None, ref_model=None, ref_logps=None, layout: str = "shared",
                 reference_cache_dir: str | os.PathLike | None = None, precompute_reference: bool = True,
                 max_tokens_per_row: int | None = None, pad_token_id: int | None = None,
                 processing_class=None, callbacks=None, reference_batch_size: int = 8):
        from rankalign import engine
        from rankalign.errors import UsageError

        args.remove_unused_columns = False
        self.objective = losses.get(objective)
        if self.objective.family in _OTHER_TRAINERS:
            raise UsageError(f"objective {self.objective.name!r} is a {self.objective.family} objective, which "
                             "PreferenceTrainer does not train; it takes a pairwise, listwise or unpaired objective",
                             hint=_OTHER_TRAINERS[self.objective.family])
        if loss_params is not None and not isinstance(loss_params, Mapping):
            raise UsageError(f"loss_params must be a mapping of the objective's parameters, got "
                             f"{type(loss_params).__name__}")
        self.loss_params = dict(loss_params or {})
        import inspect

        keyword_params = {p.name for p in inspect.signature(self.objective.fn).parameters.values()
                          if p.kind is inspect.Parameter.KEYWORD_ONLY}
        self.objective.check_params(self.loss_params, "loss_params")  # names and ranges, from the registry
        self.beta = float(self.loss_params.get("beta", self.objective.params.get("beta", 1.0)))
        self.unpaired = self.objective.family == "unpaired"
        # KTO: z0 estimated per batch from mismatched pairs, unless loss_params fixes z0
        self.estimate_z0 = (self.unpaired and {"z0", "kl_policy_logps"} <= keyword_params
                            and "z0" not in self.loss_params)
        # BCO: the reward shift delta is the running mean of the rewards, unless loss_params fixes delta
        self.bco_running = (BCORunningMean() if "delta" in keyword_params and "delta" not in self.loss_params
                            else None)

        if layout not in ("auto", "shared", "duplicated"):
            raise UsageError(f"layout must be auto, shared or duplicated, got {layout!r}")
        # once per run, before the reference pass: lists that fit the objective and every model's vocabulary
        for name, candidate in (("model", model), ("ref_model", ref_model)):
            _check_loaded(name, candidate)
        check_training_lists(train_lists, self.objective,
                             {"model": _vocab_size(model), "ref_model": _vocab_size(ref_model)})

        # shared only when the engine's layout probe accepts the model; says once which layout and why
        self.layout = engine.choose_layout(_engine_model(model), layout)

        self.ref_model = None
        if not self.objective.reference_free and ref_logps is None:
            if ref_model is not None and not precompute_reference:
                self.ref_model = ref_model.eval()
                for parameter in self.ref_model.parameters():
                    parameter.requires_grad_(False)
            else:
                ref_logps = compute_reference(model, train_lists, ref_model=ref_model,
                                              cache_dir=reference_cache_dir, batch_size=reference_batch_size,
                                              layout=layout)
        if self.objective.reference_free:
            ref_logps = None
        # the reference for the mismatched pairs (not cacheable: they depend on the batch composition)
        self._kl_reference = None
        if self.estimate_z0 and not self.objective.reference_free:
            if ref_model is not None:
                self._kl_reference = ref_model.eval()
            elif not hasattr(model, "disable_adapter"):  # a PEFT model uses its adapter-disabled base
                self._kl_reference = copy.deepcopy(model).eval()  # the policy before training
            if self._kl_reference is not None:
                for parameter in self._kl_reference.parameters():
                    parameter.requires_grad_(False)

        if pad_token_id is None:
            tokenizer = processing_class
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
            if pad_token_id is None:
                pad_token_id = getattr(getattr(_engine_model(model), "config", None), "pad_token_id", None) or 0
        collator = PreferenceCollator(layout=self.layout, pad_token_id=pad_token_id, max_tokens_per_row=max_tokens_per_row,
                                      mismatched_pairs=self.estimate_z0)
        dataset = ListDataset(train_lists, ref_logps)
        callbacks = list(callbacks or [])
        callbacks.append(MetricsFileCallback(Path(args.output_dir) / METRICS_FILE))
        callbacks.append(CheckpointMarkerCallback(lambda: self.fingerprint))
        # what proves a checkpoint belongs to this training (train_preference replaces it with the run's)
        self.fingerprint = run_fingerprint(
            {"objective": self.objective.name, "loss_params": self.loss_params, "layout": layout,
             **{key: getattr(args, key, None) for key in _FINGERPRINT_ARGUMENTS}}, train_lists, model)
        super().__init__(model=model, args=args, train_dataset=dataset, data_collator=collator,
                         processing_class=processing_class, callbacks=callbacks)
        _check_requested_backend(self)
        if not args.disable_tqdm:
            self.remove_callback(transformers.trainer_callback.ProgressCallback)
            self.add_callback(RichProgressCallback)
        self.loss_is_scaled_for_ga = True
        self._step_weight: torch.Tensor | None = None
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._last_log_time: float | None = None
        self._tokens_total = 0.0  # this process's tokens over the whole run (for TrainResult.tokens_per_second)

    # ---------------------------------------------------------------------------- data order
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return EpochShuffleSampler(len(dataset), seed=self.args.data_seed if self.args.data_seed is not None
                                   else self.args.seed)

    # ----------------------------------------------------------------------- loss normalising
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Fetch the step's micro-batches and the total list weight over them and over all processes."""
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        total = sum((b["weights"].sum() for b in batch_samples), torch.tensor(0.0)).to(device).float()
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(total, reduction="sum")
        self._step_weight = total
        return batch_samples, None

    # --------------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Weighted per-list objective: sum_i w_i loss_i / (sum of w over the whole optimiser step).

        Multiplied by the number of processes because DistributedDataParallel averages gradients.
        """
        from rankalign.engine import PackedBatch, sequence_logps

        inputs = dict(inputs)
        ref_logps = inputs.pop("ref_logps", None)
        kl_inputs = inputs.pop("kl_batch", None)
        batch = PackedBatch(**inputs)
        num_tokens = batch.num_tokens

        # the engine runs inside the wrapper's forward (DDP, FSDP2, DeepSpeed: rankalign.engine.call_as_forward)
        policy_logps = sequence_logps(model, batch)

        if ref_logps is None and self.ref_model is not None:
            with torch.no_grad():
                ref_logps = sequence_logps(_engine_model(self.ref_model), batch)
        if ref_logps is not None:
            ref_logps = ref_logps.to(policy_logps.dtype)

        step_params = {}
        if self.estimate_z0:
            if kl_inputs is None:
                raise ValueError("KTO's z0 estimate needs the collator's mismatched pairs (kl_batch)")
            step_params["z0"] = self._kto_kl_estimate(model, self._global_mismatched_pairs(batch, kl_inputs))
        if self.bco_running is not None:
            if model.training:
                self._update_bco_running_mean(policy_logps.detach(), ref_logps, batch)
            step_params["delta"] = self.bco_running.mean
        per_list = self._objective_loss(policy_logps, ref_logps, batch, step_params)
        weights = batch.weights.to(per_list.dtype)
        if model.training and self._step_weight is not None:
            norm = self._step_weight.to(per_list.dtype).clamp_min(torch.finfo(per_list.dtype).tiny)
            loss = (per_list * weights).sum() / norm * self.accelerator.num_processes
        else:
            loss = (per_list * weights).sum() / weights.sum().clamp_min(torch.finfo(per_list.dtype).tiny)
        if model.training:
            self._accumulate_metrics(policy_logps.detach(), ref_logps, batch, per_list.detach(), num_tokens)
        return (loss, {"policy_logps": policy_logps.detach()}) if return_outputs else loss

    def _objective_loss(self, policy_logps, ref_logps, batch, step_params=None):
        params = {**self.loss_params, **(step_params or {})}
        if self.unpaired:
            labels = batch.labels
            if labels is None:
                raise ValueError(f"objective {self.objective.name!r} needs unpaired data (Judgments with labels)")
            ref = None if ref_logps is None else ref_logps[:, 0]
            return self.objective(policy_logps[:, 0], ref, labels=labels, **params)
        return self.objective(policy_logps, ref_logps, ranks=batch.ranks, lengths=batch.lengths,
                              grades=batch.grades, **params)

    def _sum_over_processes(self, values: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="sum")
        return values

    def _global_mismatched_pairs(self, batch, kl_inputs):
        """KTO's mismatched pairs of this process's lists, built over the *global* micro-batch.

        One process: the collator's pairs (prompt i with the response of (i + 1) mod B). Several: every
        process's lists are gathered in rank order -- the order of the one-process batch of the same global
        size, since process r gets the r-th per-device batch of each step -- and this process keeps the
        pairs of its own prompts, so the estimate equals one process's. TRL's ``KTOTrainer`` pairs inside
        each process's batch instead; we do not keep that, because then z0, and the loss, change with the
        number of processes.
        """
        from accelerate.utils import gather_object

        from rankalign.engine import PackedBatch

        if self.accelerator.num_processes == 1:
            return PackedBatch(**kl_inputs)
        if batch.source is None:
            raise ValueError("KTO's mismatched pairs over several processes need the batch's source lists")
        gathered = gather_object([list(batch.source)])
        start = sum(len(lists) for lists in gathered[:self.accelerator.process_index])
        pairs = mismatched_pairs([item for lists in gathered for item in lists])[start:start + len(batch.source)]
        fields = self.data_collator._pack(pairs)
        return PackedBatch(**{name: value.to(self.args.device) if torch.is_tensor(value) else value
                              for name, value in fields.items()})

    @torch.no_grad()
    def _kto_kl_estimate(self, model, kl_batch) -> torch.Tensor:
        """KTO's KL estimate (Ethayarajh et al. 2024) on the batch's mismatched pairs, over all processes.

        ``mean_i [log pi_theta(y_{i+1} | x_i) - log pi_ref(y_{i+1} | x_i)]`` with both log-probs computed
        without gradient: the policy as it is at this step, the reference from ``ref_model``, the
        adapter-disabled base of a PEFT model, or a frozen copy of the policy taken before training.
        Under several processes the sums and counts are added over processes (TRL gathers the
        per-process estimates), so every rank uses the same value. Returned unclamped (float64, 0-dim);
        the objective detaches it and clamps it at 0 (:func:`rankalign.losses.unpaired.kto`).
        """
        from rankalign.engine import peft_reference_logps, sequence_logps

        inner = self.accelerator.unwrap_model(model)
        policy = sequence_logps(model, kl_batch)[:, 0].double()
        if self.objective.reference_free:
            reference = torch.zeros_like(policy)
        elif self._kl_reference is not None:
            self._kl_reference.to(policy.device)
            reference = sequence_logps(_engine_model(self._kl_reference), kl_batch)[:, 0].double()
        else:
            reference = peft_reference_logps(inner, kl_batch)[:, 0].double()
        totals = self._sum_over_processes(torch.stack([(policy - reference).sum(),
                                                       policy.new_tensor(float(policy.numel()))]))
        kl = totals[0] / totals[1].clamp_min(1.0)
        if model.training:
            self._add_metric("kto_kl", kl)
            self._add_metric("kto_z0", kl.clamp_min(0.0))
            self._add_metric("kto_batches", 1.0)
        return kl

    @torch.no_grad()
    def _update_bco_running_mean(self, policy_logps, ref_logps, batch) -> None:
        """Fold this micro-batch's implicit rewards ``beta * rho`` (every process's) into BCO's delta.

        Jung et al. 2024 shift the rewards by their running mean; per
        :class:`~rankalign.losses.unpaired.BCORunningMean` it is updated *before* the loss with the
        detached rewards of every response of the batch (desirable and undesirable, or chosen and
        rejected for ``bco_pair``; padding excluded), summed over processes so that all ranks keep the
        same delta.
        """
        valid = batch.ranks >= 0
        rho = policy_logps - (0.0 if ref_logps is None else ref_logps)
        rewards = torch.where(valid, self.beta * rho.double(), torch.zeros_like(rho, dtype=torch.float64))
        totals = self._sum_over_processes(torch.stack([rewards.sum(), valid.sum().to(rewards)]))
        if float(totals[1]) > 0:
            self.bco_running.update((totals[0] / totals[1]).reshape(1))

    def _add_metric(self, name, value) -> None:
        value = torch.as_tensor(value, dtype=torch.float64).detach().to(self.args.device)
        previous = self._metric_sums.get(name)
        self._metric_sums[name] = value if previous is None else previous + value.to(previous.device)

    @torch.no_grad()
    def _accumulate_metrics(self, policy_logps, ref_logps, batch, per_list, num_tokens):
        sums = self._metric_sums
        valid = batch.ranks >= 0

        def add(name, value):
            value = torch.as_tensor(value, dtype=torch.float64, device=policy_logps.device).detach()
            sums[name] = sums.get(name, torch.zeros((), dtype=torch.float64, device=value.device)) + value

        add("lists", per_list.numel())
        add("objective", per_list.double().sum())
        if not self.unpaired:
            metrics = losses.preference_metrics(policy_logps, ref_logps, ranks=batch.ranks, beta=self.beta)
            has_pairs = (metrics["pairs"] > 0).double()
            add("pair_lists", has_pairs.sum())
            for name in ("margin", "reward_accuracy", "ranking_accuracy"):
                add(name, (metrics[name].double() * has_pairs).sum())
            for name in ("reward_best", "reward_worst"):
                add(name, metrics[name].double().sum())
        else:
            rewards = self.beta * (policy_logps[:, 0] - (0 if ref_logps is None else ref_logps[:, 0]))
            desirable = batch.labels.to(policy_logps.device).double() >= 0.5
            add("desirable", desirable.sum())
            add("reward_desirable", (rewards.double() * desirable).sum())
            add("reward_undesirable", (rewards.double() * ~desirable).sum())
        if ref_logps is not None:
            ratio = torch.where(valid, policy_logps - ref_logps, torch.zeros_like(policy_logps))
            add("log_ratio_sum", ratio.double().sum())
            add("response_tokens", torch.where(valid, batch.lengths, torch.zeros_like(batch.lengths)).double().sum())
        if num_tokens:
            add("tokens", float(num_tokens))
            self._tokens_total += float(num_tokens)

    def _reduce_metrics(self) -> dict[str, float]:
        """Sum the accumulated metrics over processes and turn them into means for the log."""
        if not self._metric_sums:
            return {}
        names = sorted(self._metric_sums)
        stacked = torch.stack([self._metric_sums[n] for n in names]).to(self.args.device)
        if self.accelerator.num_processes > 1:
            stacked = self.accelerator.reduce(stacked, reduction="sum")
        sums = dict(zip(names, stacked.tolist()))
        self._metric_sums = {}
        out: dict[str, float] = {}
        lists = max(sums.get("lists", 0.0), 1.0)
        out["objective"] = sums.get("objective", 0.0) / lists
        if "pair_lists" in sums:
            pair_lists = max(sums["pair_lists"], 1.0)
            out["rewards/margin"] = sums["margin"] / pair_lists
            out["rewards/accuracy"] = sums["reward_accuracy"] / pair_lists
            out["ranking_accuracy"] = sums["ranking_accuracy"] / pair_lists
            out["rewards/best"] = sums["reward_best"] / lists
            out["rewards/worst"] = sums["reward_worst"] / lists
        if "desirable" in sums:
            desirable = sums["desirable"]
            out["rewards/desirable"] = sums["reward_desirable"] / max(desirable, 1.0)
            out["rewards/undesirable"] = sums["reward_undesirable"] / max(lists - desirable, 1.0)
        if sums.get("response_tokens", 0.0) > 0:
            out["kl_per_token"] = sums["log_ratio_sum"] / sums["response_tokens"]
        if sums.get("kto_batches", 0.0) > 0:
            # already averaged over processes: divide the per-process sums by the processes' batch count
            out["kl"] = sums["kto_kl"] / sums["kto_batches"]
            out["z0"] = sums["kto_z0"] / sums["kto_batches"]
        if self.bco_running is not None:
            out["bco_delta"] = self.bco_running.mean
        if "tokens" in sums:
            now = time.perf_counter()
            if self._last_log_time is not None and now > self._last_log_time:
                out["tokens_per_second"] = sums["tokens"] / (now - self._last_log_time)
            out["tokens"] = sums["tokens"]
            self._last_log_time = now
        return out

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs = {**logs, **self._reduce_metrics()}
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``transformers.Trainer.train``; also restores the objective state saved with the checkpoint.

        ``resume_from_checkpoint=True`` uses the rule of :func:`rankalign.train.checkpoints.select_checkpoint`
        (the newest checkpoint marked complete whose files are whole, carrying this run's fingerprint), the
        same as ``rankalign train``; a path is checked against the fingerprint too.
        """
        if resume_from_checkpoint is True:
            resume_from_checkpoint = select_checkpoint(self.args.output_dir, self.fingerprint)
            if resume_from_checkpoint is None:
                raise ValueError(f"no complete checkpoint to resume from in {self.args.output_dir}")
        elif resume_from_checkpoint:
            verify_checkpoint(resume_from_checkpoint, self.fingerprint)
        if self.bco_running is not None:
            self.bco_running = BCORunningMean(momentum=self.bco_running.momentum)
        if resume_from_checkpoint:
            self._load_objective_state(resume_from_checkpoint)
        # no page faults per step on the CPU (engine/cpu_memory.py); a resumed run loads its optimizer state
        self._preallocate_state = retain_if_cpu(self.args.device) and not resume_from_checkpoint
        self._last_log_time = time.perf_counter()
        return super().train(resume_from_checkpoint or None, *args, **kwargs)

    def create_optimizer(self, *args, **kwargs):
        """``transformers.Trainer.create_optimizer``; on the CPU, Adam's state is created before the first step
        (:func:`rankalign.engine.cpu_memory.preallocate_optimizer_state`: training is unchanged, the second
        step stops page-faulting)."""
        optimizer = super().create_optimizer(*args, **kwargs)
        if getattr(self, "_preallocate_state", False) and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            preallocate_optimizer_state(optimizer)
        return optimizer

    # ----------------------------------------------------------------------------- checkpoints
    def _objective_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"objective": self.objective.name, "global_step": self.state.global_step}
        if self.bco_running is not None:
            state["bco_running_mean"] = self.bco_running.state_dict()
        return state

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, plus ``rankalign_objective_state.json`` (BCO's delta) beside it; a failed
        write (a full disk) is an OutputError naming the checkpoint folder."""
        with writing(Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"):
            super()._save_checkpoint(model, trial)
        if self.bco_running is not None and self.args.should_save:
            directory = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            atomic_write_json(directory / OBJECTIVE_STATE_FILE, self._objective_state())

    def _load_objective_state(self, checkpoint: str | os.PathLike) -> None:
        if self.bco_running is None:
            return
        path = Path(checkpoint) / OBJECTIVE_STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; objective {self.objective.name!r} keeps a running reward "
                                    "mean that must be restored for an exact resume")
        try:
            state = json.loads(path.read_text())
            self.bco_running.load_state_dict(state["bco_running_mean"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: field 'bco_running_mean': unreadable ({error})") from None


# --------------------------------------------------------------------------------------- references
def compute_reference(model, lists, *, ref_model=None, cache_dir=None, batch_size: int = 8,
                      layout: str = "shared", progress: bool = True) -> list[torch.Tensor]:
    """Reference log-probs, one ``[K]`` tensor per list, computed once (cached when ``cache_dir`` is set).

    The reference is ``ref_model`` when given; else, for a PEFT model, the base model with the adapter
    disabled; else a frozen copy of the policy as it is now (before training), which is DPO's
    π_ref = π_SFT when the policy starts from the SFT model.

    Under several processes (``accelerate launch``) the pass is split: each process scores a share of the
    batches, the shares are gathered so every process holds all lists' log-probs, and the first process
    writes the cache, which a resumed run loads on every process without scoring again. The numbers, and
    the cache, are those of one process.
    """
    from rankalign.engine import adapter_disabled, compute_reference_logps

    def run(reference, settings):
        return compute_reference_logps(reference, lists, batch_size=batch_size, cache_dir=cache_dir,
                                       settings=settings, progress=progress, layout=layout,
                                       split_across_processes=True)

    if ref_model is not None:
        return run(ref_model, {"layout": layout, "reference": "ref_model"})
    if hasattr(model, "disable_adapter"):
        with adapter_disabled(model):
            return run(model, {"layout": layout, "reference": "base model, adapter disabled"})
    return run(model, {"layout": layout, "reference": "policy before training"})


# ------------------------------------------------------------------------------------ one-call API
@dataclass
class TrainResult:
    """What :func:`train_preference` returns."""

    history: list[dict[str, Any]]
    model: Any
    wall_time: float
    tokens_per_second: float
    output_dir: str
    global_step: int
    truncation: Any = None
    data_report: Any = None
    final_metrics: dict[str, Any] = field(default_factory=dict)
    note: str | None = None  # set instead of training, e.g. when the run in output_dir already finished


def make_training_arguments(config, *, world_size: int = 1) -> transformers.TrainingArguments:
    """``TrainingArguments`` for a :class:`~rankalign.train.config.TrainConfig`."""
    bf16 = bf16_available() if config.bf16 == "auto" else bool(config.bf16)
    cpu_deepspeed = _launched_with("DEEPSPEED") and not torch.cuda.is_available()
    if cpu_deepspeed:
        check_extension_lock("deepspeed_shm_comm")
    tensorboard_dir = str(Path(config.output_dir) / "tensorboard")
    if "tensorboard" in config.report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = tensorboard_dir
    # DeepSpeed's CPU start loads its C++ op with a bare print() ("DeepSpeed ... built successfully"), which
    # would land in `rankalign train --json`'s stdout: send what is printed while the arguments (and with
    # them the distributed state) are built to stderr
    with contextlib.redirect_stdout(sys.stderr) if cpu_deepspeed else contextlib.nullcontext():
        return _training_arguments(config, bf16, cpu_deepspeed)


def _training_arguments(config, bf16: bool, cpu_deepspeed: bool) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.lr,
        optim=config.optimizer,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="steps" if config.save_steps > 0 else "no",
        save_steps=max(config.save_steps, 1),
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        report_to=list(config.report_to) or "none",
        remove_unused_columns=False,
        bf16=bf16,
        disable_tqdm=not config.progress,
        dataloader_num_workers=0,
        # DeepSpeed through accelerate needs use_cpu=False; without a GPU it runs on its CPU accelerator over
        # gloo, which must then be named: accelerate finds no backend for a non-CPU state on a machine without
        # an accelerator and would count each process as a world of one (DeepSpeed's batch check then fails)
        use_cpu=not cpu_deepspeed and not torch.cuda.is_available(),
        ddp_backend="gloo" if cpu_deepspeed else None,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


STALE_LOCK_SECONDS = 600  # building DeepSpeed's CPU communication op takes about a minute on 2 cores


def check_extension_lock(name: str, *, stale_after: float = STALE_LOCK_SECONDS) -> None:
    """Raise instead of waiting forever on a build lock that a killed process left behind.

    DeepSpeed on its CPU accelerator compiles a C++ op (``deepspeed_shm_comm``) with torch's JIT builder the
    first time it starts. The builder holds ``<torch_extensions>/<name>/lock`` while it compiles; a process
    killed meanwhile leaves the file, and every later start waits on it without a message or an end. A lock
    older than ``stale_after`` seconds is such a leftover (the builder takes the lock even when the op was
    built before, so it blocks a start either way).
    """
    from torch.utils import cpp_extension

    from rankalign.errors import RankalignError

    try:
        folder = Path(cpp_extension._get_build_directory(name, False))
    except Exception:  # a private torch helper; without it there is nothing to check
        return
    lock = folder / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > stale_after:
        raise RankalignError(
            f"{lock} has been there for {age / 60:.0f} min: a build of DeepSpeed's {name} op was killed and "
            "left its lock, and DeepSpeed would wait on it forever",
            hint=f"delete {lock} (no other process is building it) and start again")


def _launched_with(backend: str) -> bool:
    """Whether ``accelerate launch`` was given a config for ``backend`` ("FSDP" or "DEEPSPEED")."""
    return os.environ.get(f"ACCELERATE_USE_{backend}", "false").lower() == "true"


def _check_requested_backend(trainer) -> None:
    """Say once, before training, when accelerate runs another backend than its config asked for.

    accelerate (1.15) turns an FSDP config into FSDP only on accelerators (GPUs): on a machine without
    one the processes run as DDP over gloo, each holding the whole model. The losses are the same; the
    memory is not.
    """
    import warnings

    from rankalign.errors import RankalignWarning

    if not trainer.accelerator.is_main_process:
        return
    if trainer.accelerator.num_processes > 1:
        from rankalign.engine.logps import _announce

        _announce(f"processes: {trainer.accelerator.num_processes}, backend: "
                  f"{trainer.accelerator.distributed_type.value}")
    for backend, enabled in (("FSDP", trainer.is_fsdp_enabled), ("DEEPSPEED", trainer.is_deepspeed_enabled)):
        if _launched_with(backend) and not enabled:
            warnings.warn(f"the accelerate config asks for {backend} but accelerate runs "
                          f"{trainer.accelerator.distributed_type.value} here (FSDP needs a GPU in accelerate); "
                          "every process holds the whole model, the per-step losses are unchanged",
                          RankalignWarning, stacklevel=3)


def maybe_apply_peft(model, config):
    """Wrap ``model`` in a LoRA adapter when ``config.peft.enabled``."""
    if not config.peft.enabled:
        return model
    return config.peft.wrap(model, task_type="CAUSAL_LM")


def train_preference(model, tokenizer, records_or_lists, config, *, ref_model=None,
                     resume_from_checkpoint: str | bool | None = None, callbacks=None,
                     tokenized=None, final_dir: str | os.PathLike | None = None) -> TrainResult:
    """Train ``model`` on preference data with the objective and settings of ``config``; one call.

    Parameters
    ----------
    model : PreTrainedModel
        The policy (wrapped in LoRA here when ``config.peft.enabled``).
    tokenizer : PreTrainedTokenizerBase
        Used to tokenize records (not needed when ``records_or_lists`` are TokenizedLists).
    records_or_lists : sequence of RankedList, Judgment or rankalign.engine.TokenizedList
    config : rankalign.train.TrainConfig
    ref_model : PreTrainedModel, optional
        Reference policy; default: a snapshot of ``model`` before training (or the adapter-disabled base).
    resume_from_checkpoint : path or bool, optional
        ``True`` resumes from the last complete checkpoint in ``output_dir`` when there is one; it must
        carry this run's fingerprint (config without the resume-changeable keys, the records, the model
        source; :mod:`rankalign.train.checkpoints`) or a ``ResumeError`` is raised. Every checkpoint
        written here carries that fingerprint.
    tokenized : (lists, truncation report), optional
        ``records_or_lists`` already tokenized (by :func:`~rankalign.train.data.tokenize_training_data`
        with this config), so that a caller that reported the truncation first does not tokenize twice.
    final_dir : path, optional
        Save the trained weights there (safetensors). Under FSDP or DeepSpeed the full weights are
        gathered from every process (``Trainer.save_model``, which every process calls); otherwise the
        first process saves ``model.save_pretrained``.

    Returns
    -------
    TrainResult
        The logged history (one dict per logging step), the trained model, wall time and tokens/s.
    """
    check_config(config)
    transformers.set_seed(config.seed)
    lists, report = tokenized or tokenize_training_data(tokenizer, records_or_lists, config)
    model = maybe_apply_peft(model, config)
    args = make_training_arguments(config)
    started = time.perf_counter()
    trainer = PreferenceTrainer(
        model, args, lists, objective=config.objective, loss_params=config.loss_params, ref_model=ref_model,
        layout=config.layout, reference_cache_dir=config.reference_cache_dir,
        precompute_reference=config.precompute_reference, max_tokens_per_row=config.max_tokens_per_row,
        pad_token_id=getattr(tokenizer, "pad_token_id", None), processing_class=tokenizer, callbacks=callbacks)
    trainer.fingerprint = run_fingerprint(config_to_dict(config), records_or_lists, model, config.model)
    if resume_from_checkpoint is True:  # the newest whole checkpoint of this run, or a fresh start
        resume_from_checkpoint = select_checkpoint(config.output_dir, trainer.fingerprint)
    output = trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)
    wall = time.perf_counter() - started
    if final_dir is not None:
        with writing(final_dir):  # a full disk names the folder instead of "basic_ios::clear"
            if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
                trainer.save_model(str(final_dir))  # a collective: the shards are gathered
            elif trainer.accelerator.is_main_process:
                trainer.accelerator.unwrap_model(trainer.model).save_pretrained(final_dir)
    history = [dict(row) for row in trainer.state.log_history]
    tokens = torch.tensor(trainer._tokens_total, dtype=torch.float64, device=trainer.args.device)
    if trainer.accelerator.num_processes > 1:
        tokens = trainer.accelerator.reduce(tokens, reduction="sum")
    tokens = float(tokens)
    train_runtime = output.metrics.get("train_runtime", wall) or wall
    return TrainResult(history=history, model=trainer.model, wall_time=wall,
                       tokens_per_second=tokens / train_runtime if train_runtime > 0 else math.nan,
                       output_dir=config.output_dir, global_step=trainer.state.global_step, truncation=report,
                       final_metrics=dict(output.metrics))
