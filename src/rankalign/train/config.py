"""The training configuration: one dataclass, mirrored key for key by the YAML file.

``rankalign train CONFIG.yaml --set lr=1e-4 --set peft.r=8`` reads the YAML into :class:`TrainConfig`,
applies the ``--set`` overrides (converted to the field's type), validates, and saves the resolved
configuration beside the checkpoints as ``output_dir/train_config.yaml``.

Unknown keys are errors that name the key, where it was found, and the closest known key (difflib).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rankalign._atomic import atomic_write_text
from rankalign.errors import UsageError

LAYOUTS = ("shared", "duplicated")
DATA_FORMS = ("lists", "pairs")


class ConfigError(UsageError):
    """A configuration problem; the message names the source (file or ``--set``) and the key."""


@dataclass
class PeftConfig:
    """LoRA options (``peft``). ``enabled: false`` trains all weights.

    With LoRA and no explicit reference model, the reference is the base model with the adapter
    disabled (its log-probs are computed once, before training, and cached).

    ``top_layers: N`` puts the adapter only in the ``target_modules`` inside the last N decoder blocks
    (a target outside the blocks, e.g. ``lm_head``, is then not adapted). Nothing below them is trained, so
    the backward pass stops at the lowest adapted layer: on
    SmolLM2-135M (30 layers) a LoRA step with ``top_layers: 15`` takes about 0.55x the time of one with
    the adapter in every layer. ``null`` (the default) adapts every layer.
    """

    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    top_layers: int | None = None

    def validate(self) -> None:
        """Raise :class:`ConfigError` unless ``r`` >= 1, ``alpha`` > 0, ``dropout`` in [0, 1) and
        ``top_layers`` >= 1 or null."""
        import math

        checks = [(self.r >= 1, f"peft.r must be >= 1, got {self.r}"),
                  (math.isfinite(self.alpha) and self.alpha > 0, f"peft.alpha must be > 0, got {self.alpha}"),
                  (0 <= self.dropout < 1, f"peft.dropout must be in [0, 1), got {self.dropout}"),
                  (self.top_layers is None or self.top_layers >= 1,
                   f"peft.top_layers must be >= 1 or null, got {self.top_layers}"),
                  (bool(self.target_modules), "peft.target_modules must name at least one module")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def lora_config(self, model, **extra):
        """The ``peft.LoraConfig`` these options describe for ``model`` (its ``config.num_hidden_layers``
        sizes ``top_layers``)."""
        from peft import LoraConfig

        targets: list[str] | str = list(self.target_modules)
        if self.top_layers is not None:
            import re

            import torch

            total = getattr(getattr(model, "config", None), "num_hidden_layers", None)
            if not isinstance(total, int):
                raise ConfigError(f"peft.top_layers: {type(model).__name__} has no config.num_hidden_layers; "
                                  "leave top_layers null")
            if self.top_layers > total:
                raise ConfigError(f"peft.top_layers is {self.top_layers} but the model has {total} layers")
            # the list of decoder blocks ("layers" in Llama, "h" in GPT-2), found by its length
            blocks = next((name for name, module in model.named_modules()
                           if isinstance(module, torch.nn.ModuleList) and len(module) == total and name), None)
            if blocks is None:
                raise ConfigError(f"peft.top_layers: no list of {total} layers found in {type(model).__name__}")
            # one regular expression (PEFT matches a string target in full against module names): the target
            # modules inside the last `top_layers` blocks, with or without a prefix before the block list
            indices = "|".join(str(i) for i in range(total - self.top_layers, total))
            names = "|".join(re.escape(m) for m in self.target_modules)
            targets = rf"(?:.*\.)?{re.escape(blocks)}\.(?:{indices})\.(?:.*\.)?(?:{names})"
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          **extra)

    def wrap(self, model, **extra):
        """``model`` wrapped in the LoRA adapter of :meth:`lora_config` (``peft.get_peft_model``). PEFT asks
        the model for ``is_gradient_checkpointing``, a name transformers 5 deprecates with a FutureWarning
        on every run; that one warning is silenced here, not rankalign's own or any other."""
        from peft import get_peft_model

        lora = self.lora_config(model, **extra)
        with peft_quietly():
            return get_peft_model(model, lora)


@contextlib.contextmanager
def peft_quietly():
    """Silence the one FutureWarning PEFT triggers on transformers 5 by reading the deprecated
    ``is_gradient_checkpointing`` (when it wraps a model or loads an adapter); every other warning passes."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


ONLINE_BACKENDS = ("transformers", "vllm")


def check_sampling(*, max_new_tokens, temperature, top_p, per_round=0, per_round_key: str = "prompts_per_round",
                   prefix: str = "") -> None:
    """A :class:`ConfigError` naming the key and value of the first sampling setting out
    of range: ``max_new_tokens >= 1``, a finite ``temperature > 0`` (0 is greedy decoding: the K completions
    of a prompt come out identical, so there is nothing to rank), ``0 < top_p <= 1``, and the prompts per
    round (``per_round_key``) ``>= 0`` (0: all of them). ``prefix`` goes before each key (``"online."``)."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"{prefix}max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"{prefix}temperature must be a finite number > 0, got {temperature!r}")
    if temperature == 0:
        raise ConfigError(f"{prefix}temperature: 0 is greedy decoding, which makes the K completions of a prompt "
                          "identical, so no group would have two candidates to rank; use a temperature > 0 (1.0, "
                          "the default, samples from the policy itself)")
    if not 0 < top_p <= 1:
        raise ConfigError(f"{prefix}top_p must be in (0, 1], got {top_p!r}")
    if not isinstance(per_round, int) or per_round < 0:
        raise ConfigError(f"{prefix}{per_round_key} must be a whole number >= 0 (0: every prompt), got {per_round!r}")


@dataclass
class OnlineConfig:
    """The ``online:`` section (:mod:`rankalign.online`): ``enabled: true`` makes ``rankalign train`` run
    rounds of sample -> judge -> train on the prompts of ``data`` instead of training on the file.

    ``rounds``: sample-judge-train rounds; ``k``: completions sampled per prompt; ``prompts_per_round``:
    prompts per round, cycling through the prompt set (0: all of them every round); ``max_new_tokens``,
    ``temperature``, ``top_p``: sampling; ``refresh_reference``: the reference becomes the policy at the
    start of each round (iterative DPO); ``replay``: each round trains on the lists of every round so far
    (read back from the round folders, never re-judged), not only its own; ``curriculum`` and
    ``curriculum_stages``: easy-to-hard pairs;
    ``judge``: ``"module:attribute"`` of a judge object or of a function returning one (for ``rankalign
    train``); ``judge_options``: keyword arguments for that function. ``backend``: ``"transformers"``
    (default) or ``"vllm"`` (:class:`rankalign.online.vllm_backend.VLLMSampler`, needs the vllm package
    and a GPU), with ``vllm_options`` passed to it (``gpu_memory_utilization``, ``dtype`` ...).
    """

    enabled: bool = False
    rounds: int = 3
    k: int = 4
    prompts_per_round: int = 0
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    refresh_reference: bool = False
    replay: bool = False
    curriculum: bool = False
    curriculum_stages: int = 3
    judge: str | None = None
    judge_options: dict[str, Any] = field(default_factory=dict)
    backend: str = "transformers"
    vllm_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.rounds < 1 or self.k < 2:
            raise ConfigError(f"online: rounds must be >= 1 and k >= 2, got rounds={self.rounds}, k={self.k}")
        check_sampling(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                       per_round=self.prompts_per_round, prefix="online.")
        if self.curriculum and self.curriculum_stages < 1:
            raise ConfigError("online: curriculum_stages must be >= 1")
        if self.backend not in ONLINE_BACKENDS:
            raise ConfigError(f"online: backend must be one of {', '.join(ONLINE_BACKENDS)}, got {self.backend!r}")
        if not isinstance(self.vllm_options, dict):
            raise ConfigError(f"online: vllm_options must be a mapping of vllm.LLM arguments, got "
                              f"{type(self.vllm_options).__name__}")


@dataclass
class TrainConfig:
    """Everything one training run needs. Every field is a YAML key of the same name.

    Model and data
        ``model`` (and ``reference_model``): any spec :func:`rankalign.engine.resolve_model` accepts: a
        local transformers folder, a ``.gguf`` file (converted once to a cached safetensors folder), a
        fetched name such as ``smollm2-135m`` (``rankalign models fetch smollm2-135m``), an ``owner/name``
        already in the local Hugging Face cache, or ``tiny:<arch>`` (``tiny:llama``, ``tiny:gpt2``), a small
        model built from a config by :func:`rankalign.engine.tiny_causal_lm` with ``tiny_model`` keyword
        overrides. Weights load from safetensors only unless ``allow_bin: true``; remote code runs only
        with ``trust_remote_code: true``.
        ``tokenizer``: a local tokenizer directory; ``"train"`` builds a BPE tokenizer on the data's
        text with :func:`rankalign.engine.build_tokenizer` (``tokenizer_vocab_size``). Default: the
        model directory's tokenizer.
        ``data``: a data file read by :func:`rankalign.data.read` with ``data_options`` (e.g.
        ``layout``, ``map``); ``data_form``: ``lists`` (keep ranked lists whole) or ``pairs`` (decompose
        with ``pair_strategy``, tied pairs included: the tokenization report counts them as unordered lists,
        pair objectives give them zero loss, tie-aware ones learn from them). ``max_records`` keeps the first N records (0 = all). ``eval_split``: the
        share of distinct prompts held out (0 = none); the split is drawn on the whole file with
        ``eval_split_seed`` (``max_records`` then caps the training side only) and written to
        ``output_dir/split/{train,heldout}.jsonl`` (``rankalign eval --run OUTPUT_DIR``).
        ``weight_by_reliability: true`` multiplies each record's weight by its annotator's reliability
        ``(1 - 2 flip rate)^2`` (:func:`rankalign.stats.annotators.weight_by_reliability`).

    Objective
        ``objective``: a name in :func:`rankalign.losses.names`; ``loss_params``: its keyword parameters
        (``beta`` ...). ``beta`` is also the scale of the logged implicit rewards. ``kto``: without
        ``z0`` the trainer estimates z0 per micro-batch from mismatched pairs (KTO paper, TRL's
        KTOTrainer); ``z0: 0.0`` (or any value) fixes it. ``bco``/``bco_pair``: without ``delta`` the
        trainer keeps the running mean of the rewards (BCO paper) and checkpoints it; ``delta`` fixes it.

    Optimisation
        ``batch_size``: lists per device per micro-step; ``gradient_accumulation``: micro-steps per
        optimiser step (the global batch is ``batch_size * gradient_accumulation * processes`` lists);
        ``lr``, ``optimizer`` (a TrainingArguments ``optim`` name of :data:`OPTIMIZERS`, or of bitsandbytes
        when it is installed), ``weight_decay``, ``warmup_steps``, ``lr_scheduler`` (one of :data:`SCHEDULERS`),
        ``max_grad_norm``;
        ``epochs`` or ``max_steps`` (> 0 wins); ``seed`` fixes initialisation and the data order.
    """

    # model and tokenizer
    model: str = "tiny:llama"
    tiny_model: dict[str, Any] = field(default_factory=dict)
    allow_bin: bool = False
    trust_remote_code: bool = False
    tokenizer: str | None = None
    tokenizer_vocab_size: int = 512
    # data
    data: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    data_form: str = "lists"
    pair_strategy: str = "best_vs_rest"
    max_records: int = 0
    weight_by_reliability: bool = False
    eval_split: float = 0.0
    eval_split_seed: int = 0
    max_prompt_tokens: int | None = 256
    max_response_tokens: int | None = 64
    on_empty: str = "drop"
    # objective
    objective: str = "dpo"
    loss_params: dict[str, Any] = field(default_factory=dict)
    # optimisation
    batch_size: int = 4
    gradient_accumulation: int = 1
    lr: float = 1e-4
    optimizer: str = "adamw_torch"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler: str = "constant"
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int = -1
    seed: int = 0
    # engine
    layout: str = "shared"
    max_tokens_per_row: int | None = None
    reference_cache_dir: str | None = None
    precompute_reference: bool = True
    reference_model: str | None = None
    # output
    output_dir: str = "runs/train"
    save_steps: int = 0
    save_total_limit: int | None = 2
    logging_steps: int = 1
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    resume: bool = True
    progress: bool = True
    # hardware
    bf16: str | bool = "auto"
    peft: PeftConfig = field(default_factory=PeftConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)

    def validate(self) -> None:
        """The one validation step: raise :class:`ConfigError` for any value outside its valid range or
        values that cannot work together, before any data or model is read.

        Ranges: the objective must be registered and ``loss_params`` must be its parameters, each within
        the range the losses registry declares (:data:`rankalign.losses.PARAM_RANGES`, e.g. ``beta > 0``,
        ``label_smoothing`` in [0, 0.5)); ``lr > 0``; ``batch_size``, ``gradient_accumulation``,
        ``logging_steps``, ``tokenizer_vocab_size`` >= 1; ``max_records``, ``warmup_steps``,
        ``save_steps``, ``weight_decay``, ``max_grad_norm`` (0: no clipping) >= 0; ``epochs > 0`` or ``max_steps > 0``;
        token limits >= 1 or null; ``peft`` as :meth:`PeftConfig.validate` says;
        paths that must be folders (``output_dir``, ``reference_cache_dir``) are not files.
        """
        import math

        from rankalign.data import PAIR_STRATEGIES

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.layout in LAYOUTS, f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        need(self.data_form in DATA_FORMS, f"data_form must be one of {DATA_FORMS}, got {self.data_form!r}")
        need(self.pair_strategy in PAIR_STRATEGIES,
             f"pair_strategy must be one of {', '.join(PAIR_STRATEGIES)}, got {self.pair_strategy!r}")
        need(self.on_empty in ("error", "drop"), f"on_empty must be 'error' or 'drop', got {self.on_empty!r}")
        need(self.batch_size >= 1 and self.gradient_accumulation >= 1,
             "batch_size and gradient_accumulation must be >= 1")
        need(self.max_steps > 0 or (math.isfinite(self.epochs) and self.epochs > 0), "set epochs > 0 or max_steps > 0")
        need(self.max_steps >= -1, f"max_steps must be > 0, or -1 to train for `epochs`, got {self.max_steps}")
        need(math.isfinite(self.epochs) and self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}")
        _check_name("lr_scheduler", self.lr_scheduler, SCHEDULERS)
        _check_optimizer(self.optimizer)
        need(self.bf16 in ("auto", True, False), f"bf16 must be auto, true or false, got {self.bf16!r}")
        need(0.0 <= self.eval_split < 1.0, f"eval_split must be in [0, 1), got {self.eval_split}")
        check_optimisation(self)
        for name in ("warmup_steps",):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("logging_steps", "tokenizer_vocab_size"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_prompt_tokens", "max_response_tokens", "save_total_limit"):
            value = getattr(self, name)
            need(value is None or value >= 1, f"{name} must be >= 1 or null, got {value}")
        self.peft.validate()
        for name in ("output_dir", "reference_cache_dir"):
            value = getattr(self, name)
            need(not value or not Path(value).exists() or Path(value).is_dir(),
                 f"{name} {value!r} is a file; it must be a folder")
        check_inputs_outside_output(self.output_dir, model=self.model, reference_model=self.reference_model,
                                    tokenizer=self.tokenizer)
        check_tiny_model(self.tiny_model)
        if self.online.enabled:
            self.online.validate()
        self.validate_objective()

    def validate_objective(self) -> None:
        """``objective`` is registered (close matches suggested) and ``loss_params`` are its parameters,
        each within the registry's range."""
        from rankalign import losses

        try:
            objective = losses.get(self.objective)
        except KeyError as error:
            raise ConfigError(f"objective: {error.args[0]}", hint=getattr(error, "hint", None)) from None
        try:
            objective.check_params(self.loss_params, "loss_params")
        except UsageError as error:
            raise ConfigError(str(error), hint=error.hint) from None


def check_config(config) -> None:
    """Validate a :class:`~rankalign.train.config.TrainConfig` built in Python as a YAML config is validated.

    ``load_config`` converts every YAML value to its field's declared type before
    :meth:`~rankalign.train.config.TrainConfig.validate` checks the ranges; a config constructed in Python skips
    that conversion, so here each field (and each field of ``peft`` and ``online``) must already have its
    declared type -- ``epochs="2"``, ``report_to="none"`` or ``peft={...}`` would otherwise fail deep inside
    transformers -- and then ``validate()`` runs. Values are checked, never converted. A
    :class:`~rankalign.train.config.ConfigError` names the field."""
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a rankalign.train.TrainConfig, got {type(config).__name__}",
                          hint="TrainConfig(objective='dpo', ...) or rankalign.train.load_config(path)")
    _check_field_types(config, "")
    config.validate()


def _check_field_types(config, prefix: str) -> None:
    import typing

    hints = typing.get_type_hints(type(config))
    for field_ in dataclasses.fields(config):
        value = getattr(config, field_.name)
        annotation = hints[field_.name]
        where = f"{prefix}{field_.name}"
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, annotation):
                raise ConfigError(f"{where}: expected a {annotation.__name__}, got {type(value).__name__}",
                                  hint=f"{where}={annotation.__name__}(...)")
            _check_field_types(value, f"{where}.")
        elif not _has_type(value, annotation):
            raise ConfigError(f"{where}: expected {_type_name(annotation)}, got {value!r}")


def _has_type(value, annotation) -> bool:
    """Whether ``value`` has the declared type (ints for a float field; no bool for a number; a list's items too)."""
    import numbers
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, option) for option in typing.get_args(annotation))
    if annotation is typing.Any:
        return True
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(annotation) or (typing.Any,)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _type_name(annotation) -> str:
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation) or (typing.Any,)
        return f"a list of {_type_name(item).removeprefix('a ')}s"
    if origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
            type(None): "None"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def check_tiny_model(options) -> None:
    """A :class:`ConfigError` for a ``tiny_model`` key that :func:`rankalign.engine.tiny_causal_lm` does not
    take (``hiden_size`` was ignored, and the model built with the default width)."""
    if not options:
        return
    if not isinstance(options, dict):
        raise ConfigError(f"tiny_model must be a mapping of tiny_causal_lm options, got {options!r}")
    from rankalign.engine.tiny import tiny_model_options

    known = tiny_model_options()
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            raise ConfigError(f"tiny_model.{key}: not an option of the tiny model (hidden_size, layers, heads, "
                              "intermediate_size, or another field of a Llama/GPT-2 config)",
                              hint=f"did you mean {close[0]!r}?" if close else None)


def check_inputs_outside_output(output_dir, **inputs) -> None:
    """A :class:`ConfigError` when a model (or tokenizer) the run reads lies inside its ``output_dir``: the
    run's checkpoints and ``final/`` would replace it while it is still the reference (``eval --run`` then
    compares the policy with itself). ``inputs`` maps config keys to specs; names that are not local paths
    (``tiny:llama``, ``smollm2-135m``) are ignored."""
    if not output_dir:
        return
    root = os.path.realpath(output_dir)
    for key, spec in inputs.items():
        if not spec or not isinstance(spec, str) or not os.path.exists(spec):
            continue
        path = os.path.realpath(spec)
        if path == root or os.path.commonpath([root, path]) == root:
            raise ConfigError(f"{key} {spec!r} lies inside output_dir {output_dir!r}: this run would overwrite "
                              "it while reading it", hint="copy it elsewhere, or choose another output_dir")


def check_optimisation(config) -> None:
    """The settings a policy run (:class:`TrainConfig`) and a reward run share, each in its range, or a
    :class:`ConfigError` naming it: ``lr`` > 0 and finite; ``weight_decay`` and ``max_grad_norm`` (0 or null:
    no clipping) >= 0 and finite; ``seed`` (and ``split_seed``) in [0, 2**32), the range torch and numpy
    seed with; ``max_records`` and ``save_steps`` >= 0; ``max_tokens_per_row`` >= 1 or null; ``data_options``
    as :func:`check_data_options` says."""
    import math

    def number(name):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return value

    lr = number("lr")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be > 0, got {lr}")
    if not (math.isfinite(number("weight_decay")) and config.weight_decay >= 0):
        raise ConfigError(f"weight_decay must be >= 0, got {config.weight_decay}")
    clip = config.max_grad_norm
    if clip is not None and not (math.isfinite(number("max_grad_norm")) and clip >= 0):
        raise ConfigError(f"max_grad_norm must be >= 0 (0 turns clipping off), got {clip}")
    for name in ("seed", "split_seed", "eval_split_seed"):
        value = getattr(config, name, 0)
        if not 0 <= value < 2**32:
            raise ConfigError(f"{name} must be in [0, 2**32), got {value}")
    for name in ("max_records", "save_steps"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(config, name)}")
    rows = config.max_tokens_per_row
    if rows is not None and rows < 1:
        raise ConfigError(f"max_tokens_per_row must be >= 1 or null, got {rows}")
    check_data_options(config.data_options)


def check_data_options(options) -> None:
    """``data_options`` are keyword arguments of :func:`rankalign.data.read` (``layout``, ``mapping``,
    ``outcomes``, ``skip_invalid``, ``format``), or a :class:`ConfigError` naming the unknown ones."""
    import inspect

    from rankalign.data import read

    if not isinstance(options, dict):
        raise ConfigError(f"data_options must be a mapping, got {type(options).__name__}")
    known = [name for name, parameter in inspect.signature(read).parameters.items()
             if parameter.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        raise ConfigError(f"data_options: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}",
                          hint=f"did you mean {close[0]!r}?" if close else None)


# transformers' schedules that run from max_steps and warmup_steps alone (others need an eval loop, as
# reduce_lr_on_plateau, or extra arguments, as cosine_with_min_lr and warmup_stable_decay)
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
              "inverse_sqrt")
# transformers' optimisers that need nothing beyond torch; those of bitsandbytes need that package
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop")
BITSANDBYTES_OPTIMIZERS = ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit",
                           "lion_32bit", "paged_lion_8bit", "paged_lion_32bit")


def _check_name(key: str, value, known: tuple[str, ...], extra: tuple[str, ...] = ()) -> None:
    """``value`` is one of ``known`` (or of ``extra``, listed only in the message), else a
    :class:`ConfigError` naming ``key`` with the close matches."""
    if value in known or value in extra:
        return
    names = known + extra
    close = difflib.get_close_matches(str(value), names, n=1)
    raise ConfigError(f"{key}: {value!r} is not one of {', '.join(names)}",
                      hint=f"did you mean {close[0]!r}?" if close else None)


def _check_optimizer(value) -> None:
    _check_name("optimizer", value, OPTIMIZERS, BITSANDBYTES_OPTIMIZERS)
    if value in BITSANDBYTES_OPTIMIZERS:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(f"optimizer {value!r} needs the bitsandbytes package, which is not installed",
                              hint="pip install bitsandbytes (a GPU package), or use adamw_torch")


# ------------------------------------------------------------------------------------------ conversion
def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# names other tools use for our keys (TrainingArguments, TRL), suggested before difflib's guess
SYNONYMS = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation",
    "loss": "objective",
    "loss_type": "objective",
    "beta": "loss_params.beta",
    "lora": "peft",
    "model_name_or_path": "model",
    "dataset": "data",
}


def _closest_key(key: str, known) -> str | None:
    """Our key that ``key`` most likely means: a synonym's target (``learning_rate`` -> ``lr``), also when the
    synonym is misspelt (``learnig_rate``), else the most similar of ``known`` (similarity >= 0.5), else None."""
    meaning = {name: name for name in known}
    meaning.update({name: target for name, target in SYNONYMS.items() if target.split(".")[0] in known})
    close = difflib.get_close_matches(key, list(meaning), n=1, cutoff=0.5)
    return meaning[close[0]] if close else None


def _unknown_key_error(key: str, known, where: str) -> ConfigError:
    close = _closest_key(key, known)
    hint = f"; did you mean {close!r}?" if close else f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def _yaml_value(text: str, where: str):
    """A ``--set`` value parsed as YAML; a syntax error (an unclosed bracket or quote) is a ConfigError."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: not a valid YAML value ({problem}): {text!r}") from None


def _convert(value, annotation, where: str):
    """Convert ``value`` (from YAML or a ``--set`` string) to ``annotation``; raise ConfigError if it does not fit."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        if isinstance(value, str) and value.strip().lower() in ("null", "none", "~") and type(None) in options:
            return None
        errors = []
        # try the non-str options first so "3" becomes 3 for int | None, but a str option keeps text
        for option in sorted((o for o in options if o is not type(None)), key=lambda o: o is str):
            try:
                return _convert(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be null")
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return build_dataclass(annotation, value, where)
    if origin is list:
        (item_type,) = typing.get_args(annotation) or (Any,)
        if isinstance(value, str):
            text = value.strip()
            parsed = _yaml_value(text, where) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
            value = parsed
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = _yaml_value(value, where)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    number = float(value)
                except ValueError:
                    number = None
                if number is not None and number.is_integer():
                    return int(number)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, bool) or isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported type {annotation!r}")


def build_dataclass(cls, mapping: dict, where: str = "config"):
    """``cls(**mapping)`` with every value converted and every unknown key reported with a suggestion."""
    types_by_name = _field_types(cls)
    values = {}
    for key, value in mapping.items():
        if key not in types_by_name:
            raise _unknown_key_error(str(key), types_by_name, where)
        values[key] = _convert(value, types_by_name[key], f"{where}: {key}")
    return cls(**values)


def apply_override(config: TrainConfig, assignment: str) -> TrainConfig:
    """Apply one ``key=value`` (dotted keys reach nested sections, e.g. ``peft.r=16``), converting the type.

    A value is converted to the field's declared type: ``lr=3e-4`` gives a float, ``max_steps=10`` an int,
    ``bf16=false`` a bool, ``report_to=tensorboard,jsonl`` a list, ``loss_params={beta: 0.2}`` or
    ``loss_params.beta=0.2`` a mapping entry (parsed as YAML).
    """
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    target = config
    where = "--set"
    for depth, part in enumerate(parts):
        types_by_name = _field_types(type(target))
        if part not in types_by_name:
            raise _unknown_key_error(part, types_by_name, f"--set {key}")
        annotation = types_by_name[part]
        last = depth == len(parts) - 1
        if last:
            setattr(target, part, _convert(raw, annotation, f"{where} {key}"))
            return config
        current = getattr(target, part)
        if dataclasses.is_dataclass(current):
            target = current
            continue
        if isinstance(current, dict):
            # a free-form mapping such as loss_params: the rest of the key is one entry, value parsed as YAML
            entry = ".".join(parts[depth + 1:])
            current[entry] = _yaml_value(raw, f"--set {key}")
            return config
        raise ConfigError(f"--set {key}: {part!r} is not a section")
    return config


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = (), *, cls=None):
    """Read a YAML config (or start from the defaults when ``path`` is None), apply overrides, validate.

    ``cls`` is the config dataclass (default :class:`TrainConfig`; ``rankalign reward train`` passes
    :class:`rankalign.train.reward.RewardTrainConfig`): the same conversion, ``--set`` and validation for both.
    Relative paths in the fields named by ``cls.PATH_FIELDS`` are resolved against the config file.
    """
    cls = cls or TrainConfig
    if path is None:
        config = cls()
    else:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(error, "problem", None) or "syntax error"
            raise ConfigError(f"{where}: not valid YAML: {problem}",
                              hint="check quotes and brackets on that line") from None
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 text ({error.reason})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
        config = build_dataclass(cls, data, where=str(path))
        base = path.parent
        # relative data/model/tokenizer paths are read relative to the config file when they exist there
        for name in getattr(cls, "PATH_FIELDS", ("data", "model", "tokenizer", "reference_model")):
            value = getattr(config, name)
            if value and not value.startswith("tiny:") and value != "train" and not os.path.isabs(value):
                candidate = base / value
                if candidate.exists() and not Path(value).exists():
                    setattr(config, name, str(candidate))
    for assignment in overrides:
        apply_override(config, assignment)
    try:
        config.validate()
    except ConfigError as error:
        raise ConfigError(f"{path or 'config'}: {error}", hint=error.hint) from None
    return config


def config_to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config, directory: str | os.PathLike, name: str = "train_config.yaml") -> Path:
    """Write the resolved config as YAML into ``directory`` atomically (:func:`rankalign._atomic.atomic_write_text`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    atomic_write_text(target, text)
    return target
