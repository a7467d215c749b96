"""Reward models: a ``transformers`` backbone and a linear head, scoring whole ranked lists.

A :class:`RewardModel` maps (prompt, response) to ``num_attributes`` numbers and, through a weighting, to
one scalar reward. Two kinds of backbone:

* **causal** (Llama, GPT-2, ...: the base transformer of a causal LM). A list of K responses is packed
  with :func:`rankalign.engine.pack_lists` in the prefix-shared layout: the prompt is computed once and
  every response sees the prompt and itself only, with position ids restarting where the prompt ends.
  The reward is read from the hidden state of each response's *last token* (the EOS the tokenizer
  appends), which in a causal model has seen the prompt and the whole response -- the usual reward-model
  readout (Ouyang et al. 2022, "Training language models to follow instructions with human feedback").
  The shared layout gives the same hidden states as the duplicated layout (prompt + response per row) up
  to float32 rounding, which the tests check.
* **encoder** (BERT, MiniLM, RoBERTa, ...: bidirectional). Prefix sharing does not apply: in a
  bidirectional model the prompt's hidden states depend on the response that follows it, so a prompt
  cannot be computed once for K responses. Each (prompt, response) pair is therefore encoded on its own
  row (the duplicated form, as a sentence pair), and the hidden states are mean-pooled over the pair's
  tokens: encoders are pre-trained (and sentence encoders fine-tuned) with mean pooling or a [CLS]
  objective, and mean pooling does not depend on a pooler layer the checkpoint may lack.

Multi-attribute heads (``num_attributes > 1``, e.g. helpfulness/correctness/verbosity as in HelpSteer)
reduce to the scalar reward with fixed weights (given, or equal weights by default) or learned weights
(``attribute_weights="learned"``), in the spirit of ArmoRM (Wang et al. 2024, "Interpretable Preferences via
Multi-Objective Reward Modeling and Mixture-of-Experts") without its gating network.

Saving follows ``transformers``' convention: the backbone's ``config.json`` and ``model.safetensors`` (so
``AutoModel.from_pretrained`` loads the backbone alone), plus ``reward_head.safetensors`` and
``reward_config.json``; every file is written atomically; nothing is unpickled, and
``trust_remote_code`` is False.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from .._atomic import atomic_write_json, atomic_write_path
from ..data.errors import DataError
from ..data.records import Judgment, RankedList
from ..engine.logps import base_hidden_states, base_model_of, choose_layout
from ..engine.packing import PackedBatch, pack_lists
from ..engine.tokenize import TokenizedList, tokenize_records
from ..errors import UsageError

__all__ = ["RewardModel", "score_lists", "reward_scores", "preference_probabilities", "ENCODER_MODEL_TYPES", "REWARD_CONFIG_NAME",
           "write_file_atomic", "load", "encoder_inputs", "ensemble_scores", "center_ensemble_heads", "sequence_classification_class"]

REWARD_CONFIG_NAME = "reward_config.json"
REWARD_EXTRA_NAME = "reward_extra.safetensors"
BACKBONE_WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 2

# Bidirectional encoders (model_type values); any other backbone is treated as causal unless told.
ENCODER_MODEL_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "mpnet",
    "camembert", "modernbert", "nomic_bert", "xlm", "ernie", "megatron-bert", "luke",
})
BACKBONE_KINDS = ("causal", "encoder")


# ---------------------------------------------------------------------------------------------- helpers
write_file_atomic = atomic_write_path  # ``write(temp_path)``, then moved into place


def _detect_kind(backbone) -> str:
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    return "encoder" if model_type in ENCODER_MODEL_TYPES else "causal"


def _text(value) -> str:
    """A prompt or response as plain text for an encoder (chat messages as ``role: content`` lines)."""
    if value is None or isinstance(value, str):
        return value
    return "\n".join(f"{m['role']}: {m['content']}" for m in value)


# ---------------------------------------------------------------------------------------------- layout
def sequence_classification_class(config):
    """The ``transformers`` ``*ForSequenceClassification`` class for a backbone config (``LlamaFor...``,
    ``BertFor...``, ...), or None when transformers has none for this model type."""
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification._model_mapping[type(config)]
    except KeyError:
        return None


def _classifier_layout(config) -> tuple[str, str, bool]:
    """(base-model prefix, head attribute name, head has a bias) of the ``*ForSequenceClassification`` class.

    The class is built on the meta device (no memory, no weights) and inspected: its base model sits at
    ``base_model_prefix`` and the head must be one ``nn.Linear`` child (``score`` for causal LMs, bias-free;
    ``classifier`` with a bias for BERT-style encoders). Classes with a deeper head (RoBERTa's two-layer
    classifier) are refused: their head cannot hold a linear reward head exactly.
    """
    import copy

    cls = sequence_classification_class(config)
    if cls is None:
        raise ValueError(f"transformers has no sequence-classification class for model type "
                         f"{getattr(config, 'model_type', '?')!r}; this backbone cannot be saved as one")
    probe_config = copy.deepcopy(config)
    probe_config.num_labels = 1
    with torch.device("meta"):
        probe = cls(probe_config)
    prefix = probe.base_model_prefix
    linears = [(name, module) for name, module in probe.named_children()
               if name != prefix and isinstance(module, nn.Linear)]
    others = [name for name, module in probe.named_children()
              if name != prefix and not isinstance(module, (nn.Linear, nn.Dropout)) and any(True for _ in module.parameters())]
    if len(linears) != 1 or others:
        raise ValueError(f"{cls.__name__}: the head is not a single linear layer ({', '.join(n for n, _ in probe.named_children())}); "
                         "rankalign saves linear reward heads only")
    name, module = linears[0]
    return prefix, name, module.bias is not None


def _has_classifier_layout(config) -> bool:
    try:
        _classifier_layout(config)
    except ValueError:
        return False
    return True


def _safe_pad_token_id(tokenizer, config) -> int | None:
    """A padding id that never ends our inputs: the ``*ForSequenceClassification`` classes of causal LMs read
    the *last non-padding* token, and our readout is the EOS the tokenizer appends, so the padding id must
    differ from EOS (many tokenizers pad with EOS). Falls back to another special token (UNK first)."""
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else getattr(config, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else getattr(config, "pad_token_id", None)
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    if pad is not None and pad not in eos_ids:
        return pad
    if tokenizer is None:
        return None
    bos = getattr(tokenizer, "bos_token_id", None)
    candidates = [getattr(tokenizer, "unk_token_id", None), *getattr(tokenizer, "all_special_ids", [])]
    for candidate in candidates:
        if candidate is not None and candidate not in eos_ids and candidate != bos:
            return int(candidate)
    raise ValueError("the tokenizer pads with EOS and has no other special token; add a pad token before "
                     "saving a causal reward model as a sequence classifier")


# ---------------------------------------------------------------------------------------------- model
POOLINGS = ("last", "mean", "cls")


def _check_count(name: str, value, minimum: int = 1) -> None:
    """A :class:`~rankalign.errors.UsageError` naming ``name`` unless ``value`` is a whole number >= ``minimum``
    (2.5 heads are not silently 2, and True is not 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise UsageError(f"{name} must be a whole number >= {minimum}, got {value!r}")


def _check_batch_size(batch_size) -> None:
    _check_count("batch_size", batch_size)


class RewardModel(nn.Module):
    """A backbone and a linear reward head with ``num_attributes`` outputs (or an ensemble of heads).

    Parameters
    ----------
    backbone : transformers.PreTrainedModel
        A causal LM (its base transformer is used, the LM head is dropped) or a base model
        (``AutoModel``: ``LlamaModel``, ``BertModel``, ...).
    num_attributes : int
        Outputs of the head: 1 for a scalar reward, more for a multi-attribute reward.
    attribute_names : sequence of str, optional
        Names of the attributes (default ``"reward"`` or ``"attribute_0"``, ...); records whose ``scores``
        are mappings are matched to the head's outputs by these names, and a saved model's config carries
        them as ``id2label`` / ``label2id``.
    attribute_weights : sequence of float, "learned", or None
        How attributes combine into the scalar reward ``r = sum_a w_a s_a``: fixed weights, learned
        weights (initialised equal, ``1/A``), or None for equal fixed weights ``1/A``.
    kind : {"causal", "encoder"}, optional
        Default: "encoder" for the bidirectional model types in :data:`ENCODER_MODEL_TYPES`, else "causal".
    pooling : {"last", "mean", "cls"}, optional
        Causal backbones read the last token ("last", the only choice). Encoders pool with "mean" (default:
        what sentence encoders such as MiniLM were trained with) or "cls" (the checkpoint's pooler on
        [CLS], exactly what ``BertForSequenceClassification`` computes).
    preference_dim : int, optional
        Make this a *general preference model* (Zhang et al. 2024, see :mod:`rankalign.reward.general`):
        the head embeds each response into ``preference_dim = 2k`` dimensions and a pair is scored by the
        authors' ``v_1 . R^T v_2`` convention (see :func:`general_preference_logits`). Such a model has no
        scalar reward: use :func:`preference_probabilities`, and train it with
        ``objective="general_preference"``. ``num_attributes`` and the weights are then unused.
    prompt_gate : bool
        General preference model only (causal backbones): make the block scales prompt-dependent,
        ``lambda(x) = k softmax(W h_x / sqrt(H))`` from the hidden state ``h_x`` of the prompt's last token
        (the eigenvalue gate of Zhang et al. 2024; the ``sqrt(H)`` temperature is their code's).
    ensemble_size : int
        ``E > 1`` heads on the shared backbone (scalar rewards only): ``score_lists`` gives their mean, and
        :func:`ensemble_scores` the mean, spread and conservative ``mean - k std`` per candidate.
    seed : int
        Seed for the head's initial weights (the global RNG state is left unchanged).

    Calling the model on a batch is not its interface: use :func:`score_lists` (inference) and
    :func:`reward_scores` (differentiable scores of prepared lists), or ``train_reward_model``.
    """

    def __init__(self, backbone, *, num_attributes: int = 1, attribute_names: Sequence[str] | None = None,
                 attribute_weights: Sequence[float] | str | None = None, kind: str | None = None,
                 pooling: str | None = None, preference_dim: int | None = None, prompt_gate: bool = False,
                 ensemble_size: int = 1, seed: int = 0):
        super().__init__()
        if not isinstance(backbone, nn.Module) or getattr(backbone, "config", None) is None:
            raise UsageError(f"backbone must be a transformers model (a causal LM or a base model such as BertModel), "
                             f"got {type(backbone).__name__}", hint="e.g. AutoModel.from_pretrained(path)")
        _check_count("num_attributes", num_attributes)
        _check_count("ensemble_size", ensemble_size)
        if preference_dim is not None:
            _check_count("preference_dim", preference_dim, minimum=2)
        if attribute_names is not None and (isinstance(attribute_names, (str, bytes)) or not all(
                isinstance(name, str) and name for name in attribute_names)):
            raise UsageError(f"attribute_names must be a list of non-empty strings, got {attribute_names!r}")
        if attribute_weights is not None and not isinstance(attribute_weights, str):
            if isinstance(attribute_weights, (numbers.Number, bytes)) or not all(
                    isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w)
                    for w in attribute_weights):
                raise UsageError(f"attribute_weights must be a list of finite numbers, 'learned' or None, got "
                                 f"{attribute_weights!r}")
        self.preference_dim = None if preference_dim is None else int(preference_dim)
        self.ensemble_size = int(ensemble_size)
        if self.preference_dim is not None:
            if self.preference_dim < 2 or self.preference_dim % 2:
                raise ValueError(f"preference_dim must be even and >= 2, got {preference_dim}")
            num_attributes = self.preference_dim
            attribute_names = [f"preference_{a}" for a in range(num_attributes)]
            attribute_weights = None
        elif prompt_gate:
            raise ValueError("prompt_gate applies to a general preference model (set preference_dim)")
        if self.ensemble_size > 1:
            if num_attributes != 1 or self.preference_dim is not None:
                raise ValueError("an ensemble has scalar heads: num_attributes=1 and no preference_dim")
            num_attributes = self.ensemble_size
            attribute_names = [f"reward_{e}" for e in range(self.ensemble_size)]
            attribute_weights = None  # the ensemble reward is the mean of the heads
        if num_attributes < 1:
            raise ValueError(f"num_attributes must be >= 1, got {num_attributes}")
        self.backbone = base_model_of(backbone)
        self.kind = kind or _detect_kind(self.backbone)
        if self.kind not in BACKBONE_KINDS:
            raise ValueError(f"kind must be one of {BACKBONE_KINDS}, got {kind!r}")
        self.pooling = pooling or ("mean" if self.kind == "encoder" else "last")
        if self.pooling not in POOLINGS or (self.kind == "causal") != (self.pooling == "last"):
            raise ValueError(f"pooling {self.pooling!r} does not fit a {self.kind} backbone "
                             "(causal: 'last'; encoder: 'mean' or 'cls')")
        if prompt_gate and self.kind != "causal":
            raise ValueError("prompt_gate needs a causal backbone (the prompt's hidden state is read once)")
        if attribute_names is None:
            attribute_names = ["reward"] if num_attributes == 1 else [f"attribute_{a}" for a in
                                                                       range(num_attributes)]
        attribute_names = [str(name) for name in attribute_names]
        if len(attribute_names) != num_attributes or len(set(attribute_names)) != num_attributes:
            raise ValueError(f"need {num_attributes} distinct attribute names, got {attribute_names}")
        self.attribute_names = attribute_names
        config = self.backbone.config
        hidden_size = config.hidden_size
        dtype = next(self.backbone.parameters()).dtype
        # the head's bias follows the transformers sequence-classification layout, so a save loads exactly
        bias = _classifier_layout(config)[2] if _has_classifier_layout(config) else True
        dropout = (getattr(config, "classifier_dropout", None) or getattr(config, "hidden_dropout_prob", 0.0) or 0.0
                   if self.kind == "encoder" else 0.0)
        self.head_dropout = nn.Dropout(float(dropout))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = nn.Linear(hidden_size, num_attributes, bias=bias, dtype=dtype)
            nn.init.normal_(self.head.weight, std=1.0 / (hidden_size ** 0.5 * (1 if self.ensemble_size > 1 else num_attributes)))
            if bias:
                nn.init.zeros_(self.head.bias)
            self.prompt_gate = None
            if prompt_gate:
                self.prompt_gate = nn.Linear(hidden_size, self.preference_dim // 2, bias=False, dtype=dtype)
                nn.init.normal_(self.prompt_gate.weight, std=1.0 / (hidden_size + 1))
        self.learned_weights = isinstance(attribute_weights, str)
        if self.learned_weights and attribute_weights != "learned":
            raise ValueError(f"attribute_weights must be a list of floats, 'learned' or None, "
                             f"got {attribute_weights!r}")
        if attribute_weights is None or self.learned_weights:
            weights = torch.full((num_attributes,), 1.0 / num_attributes, dtype=dtype)
        else:
            weights = torch.as_tensor([float(w) for w in attribute_weights], dtype=dtype)
            if weights.shape != (num_attributes,):
                raise ValueError(f"{len(weights)} attribute weights for {num_attributes} attributes")
        if self.learned_weights:
            self.attribute_weights = nn.Parameter(weights)
        else:
            self.register_buffer("attribute_weights", weights)

    @property
    def num_attributes(self) -> int:
        return self.head.out_features

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def combine(self, attributes: Tensor) -> Tensor:
        """Scalar reward ``[..., ]`` from attribute scores ``[..., A]`` (``sum_a w_a s_a``; an ensemble's mean)."""
        if self.preference_dim is not None:
            raise ValueError("a general preference model has no scalar reward; use preference_probabilities")
        if self.num_attributes == 1:
            return attributes[..., 0]
        return attributes @ self.attribute_weights.to(attributes.dtype)

    def eigenvalues(self, prompt_hidden: Tensor | None) -> Tensor | None:
        """Block scales ``[B, k]`` of a prompt-gated general preference model (None: all 1)."""
        if self.prompt_gate is None or prompt_hidden is None:
            return None
        blocks = self.preference_dim // 2
        gate = self.prompt_gate(prompt_hidden) / math.sqrt(prompt_hidden.shape[-1])
        return blocks * torch.softmax(gate.float(), dim=-1).to(prompt_hidden.dtype)

    def reward_config(self) -> dict:
        """The JSON-serialisable settings that rebuild this head around its backbone."""
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "pooling": self.pooling,
            "num_attributes": self.num_attributes,
            "attribute_names": list(self.attribute_names),
            "attribute_weights": [float(w) for w in self.attribute_weights.detach().cpu()],
            "learned_weights": self.learned_weights,
            "backbone_class": type(self.backbone).__name__,
            "preference_dim": self.preference_dim,
            "prompt_gate": self.prompt_gate is not None,
            "ensemble_size": self.ensemble_size,
        }

    # ------------------------------------------------------------------------------- persistence
    def merge_adapter(self) -> None:
        """Fold a LoRA adapter on the backbone into its weights (peft ``merge_and_unload``); no-op without one."""
        if hasattr(self.backbone, "merge_and_unload"):
            self.backbone = base_model_of(self.backbone.merge_and_unload())

    def save_pretrained(self, directory: str | os.PathLike, *, tokenizer=None) -> Path:
        """Save as a ``transformers`` ``*ForSequenceClassification`` model, every file written atomically.

        ``AutoModelForSequenceClassification.from_pretrained(directory)`` then loads every weight (the
        backbone under its ``base_model_prefix``, our head as the class's ``score``/``classifier``) and its
        ``logits`` are the per-attribute scores (a scalar model: the reward). ``config.json`` names the
        outputs (``id2label``/``label2id`` = attribute names) and carries our settings under
        ``rankalign_reward`` (pooling, attribute weights, ensemble size, ...). Identical scores need the
        same inputs and pooling: causal backbones read the EOS token (``pad_token_id`` in the config is set
        to a non-EOS id so the class reads it too); encoders with ``pooling="cls"`` match the class exactly,
        while ``pooling="mean"`` (MiniLM's) is only reproduced by :func:`rankalign.reward.load`.
        General preference models (their prompt gate) and ensembles load the same way; the extra prompt-gate
        weights go to ``reward_extra.safetensors``. A LoRA adapter is merged first. The tokenizer's files
        are written when ``tokenizer`` is given, and ``reward_config.json`` last (a complete save).
        """
        import copy

        from safetensors.torch import save_file

        self.merge_adapter()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(self.backbone.config)
        prefix, head_name, head_bias = _classifier_layout(config)
        if head_bias != (self.head.bias is not None):
            raise ValueError(f"the head's bias ({self.head.bias is not None}) does not match "
                             f"{sequence_classification_class(config).__name__}'s ({head_bias})")
        config.architectures = [sequence_classification_class(config).__name__]
        config.num_labels = self.num_attributes
        config.id2label = dict(enumerate(self.attribute_names))
        config.label2id = {name: i for i, name in enumerate(self.attribute_names)}
        config.problem_type = "regression"
        if self.kind == "causal":
            config.pad_token_id = _safe_pad_token_id(tokenizer, config)
        config.rankalign_reward = self.reward_config()
        atomic_write_json(directory / "config.json", config.to_dict(), sort_keys=True)
        state = {f"{prefix}.{k}": v.detach().contiguous().cpu() for k, v in self.backbone.state_dict().items()}
        state[f"{head_name}.weight"] = self.head.weight.detach().contiguous().cpu()
        if self.head.bias is not None:
            state[f"{head_name}.bias"] = self.head.bias.detach().contiguous().cpu()
        _drop_tied_copies(state)
        write_file_atomic(directory / BACKBONE_WEIGHTS_NAME,
                          lambda temp: save_file(state, temp, metadata={"format": "pt"}))
        if self.prompt_gate is not None:
            extra = {"prompt_gate.weight": self.prompt_gate.weight.detach().contiguous().cpu()}
            write_file_atomic(directory / REWARD_EXTRA_NAME,
                              lambda temp: save_file(extra, temp, metadata={"format": "pt"}))
        if tokenizer is not None:
            saved_pad = tokenizer.pad_token_id
            if self.kind == "causal" and config.pad_token_id is not None and saved_pad != config.pad_token_id:
                tokenizer.pad_token = tokenizer.convert_ids_to_tokens(config.pad_token_id)
            try:
                with tempfile.TemporaryDirectory(dir=directory, prefix=".tokenizer.") as staging:
                    for name in tokenizer.save_pretrained(staging):
                        name = Path(name)
                        if name.is_file():
                            os.replace(name, directory / name.name)
            finally:
                if saved_pad is not None and tokenizer.pad_token_id != saved_pad:
                    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(saved_pad)
        atomic_write_json(directory / REWARD_CONFIG_NAME, self.reward_config(), sort_keys=True)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, torch_dtype=None,
                        trust_remote_code: bool = False) -> RewardModel:
        """Load a model saved by :meth:`save_pretrained` (safetensors only; no pickle, no remote code)."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModelForSequenceClassification

        from rankalign.engine.sources import UnreadableModel, check_weights

        directory = Path(directory)
        check_weights(directory, allowable=False)  # a weights file cut short is named, pickle is refused
        config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
        settings = getattr(config, "rankalign_reward", None)
        if not isinstance(settings, Mapping):
            raise FileNotFoundError(f"{directory / 'config.json'}: no rankalign_reward settings "
                                    "(was this saved by RewardModel.save_pretrained?)")
        version = settings.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{directory / 'config.json'}: rankalign_reward format_version {version!r} is not "
                             f"supported (expected {FORMAT_VERSION})")
        kwargs = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        classifier = AutoModelForSequenceClassification.from_pretrained(directory, **kwargs)
        prefix, head_name, _ = _classifier_layout(classifier.config)
        backbone = getattr(classifier, prefix)
        try:
            ensemble = int(settings.get("ensemble_size", 1))
            model = cls(backbone, num_attributes=1 if ensemble > 1 else int(settings["num_attributes"]),
                        attribute_names=None if ensemble > 1 else settings["attribute_names"],
                        attribute_weights="learned" if settings.get("learned_weights") else
                        (None if ensemble > 1 else settings["attribute_weights"]),
                        kind=settings["kind"], pooling=settings.get("pooling"),
                        preference_dim=settings.get("preference_dim"), prompt_gate=bool(settings.get("prompt_gate")),
                        ensemble_size=ensemble)
        except KeyError as error:
            raise UnreadableModel(f"{directory / 'config.json'}: rankalign_reward lacks {error}") from None
        except (TypeError, ValueError) as error:
            raise UnreadableModel(f"{directory / 'config.json'}: rankalign_reward settings do not describe a "
                                  f"reward model ({error})") from None
        head = getattr(classifier, head_name)
        with torch.no_grad():
            model.head.weight.copy_(head.weight)
            if model.head.bias is not None:
                model.head.bias.copy_(head.bias)
            model.attribute_weights.copy_(torch.as_tensor(settings["attribute_weights"]))
            if model.prompt_gate is not None:
                model.prompt_gate.weight.copy_(load_file(directory / REWARD_EXTRA_NAME)["prompt_gate.weight"])
        return model.eval()


def _drop_tied_copies(state: dict) -> None:
    """safetensors refuses tensors sharing memory: keep one name per storage (transformers re-ties on load)."""
    seen = {}
    for name in list(state):
        tensor = state[name]
        key = (tensor.data_ptr(), tensor.shape, tensor.stride()) if tensor.numel() else None
        if key is not None and key in seen:
            state[name] = tensor.clone()
        elif key is not None:
            seen[key] = name


def load(directory: str | os.PathLike, *, torch_dtype=None) -> tuple[RewardModel, object]:
    """``(RewardModel, tokenizer)`` of a saved reward model: the documented way to get the exact scores.

    ``AutoModelForSequenceClassification.from_pretrained(directory)`` loads the same weights; it gives the
    same scores for causal backbones (inputs from :func:`rankalign.engine.tokenize_records`) and for
    encoders saved with ``pooling="cls"`` (inputs from :func:`encoder_inputs`), but an encoder trained with
    ``pooling="mean"`` (the default, as MiniLM was trained) pools differently in that class: use this.
    """
    from transformers import AutoTokenizer

    model = RewardModel.from_pretrained(directory, torch_dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    return model, tokenizer


# ---------------------------------------------------------------------------------------------- batches
@dataclass
class EncoderList:
    """One ranked list for an encoder backbone: plain-text prompt and responses, dense ranks."""

    prompt: str | None
    responses: list[str]
    ranks: list[int]
    grades: list | None
    weight: float
    index: int

    @property
    def k(self) -> int:
        return len(self.responses)


def _as_record(record, index: int):
    if isinstance(record, Mapping):
        try:
            return Judgment.from_dict(record) if "response" in record else RankedList.from_dict(record)
        except DataError as error:
            raise error.at(line=index) from None
    return record


def _encoder_lists(records: Iterable) -> list[EncoderList]:
    out, unranked = [], 0
    for index, record in enumerate(records):
        record = _as_record(record, index)
        if isinstance(record, Judgment):
            label = None if record.label is None else float(record.label)
            out.append(EncoderList(_text(record.prompt), [_text(record.response)], [0], [label],
                                   float(getattr(record, "weight", 1.0)), index))
            continue
        keep = [i for i, r in enumerate(record.ranks) if r is not None]
        if not keep:
            unranked += 1
            continue
        dense = record.dense_ranks()
        grades = None if record.scores is None else [record.scores[i] for i in keep]
        out.append(EncoderList(_text(record.prompt), [_text(record.candidates[i]) for i in keep],
                               [dense[i] for i in keep], grades, float(record.weight), index))
    if unranked:
        warnings.warn(f"reward model inputs: {unranked} records without a ranked candidate left out", stacklevel=4)
    return out


def prepare_lists(model: RewardModel, tokenizer, records: Iterable, *, max_length: int | None = None) -> list:
    """Records -> the per-list inputs :func:`reward_scores` takes (token lists, or text lists for encoders).

    Causal backbones use :func:`rankalign.engine.tokenize_records` (prompt tokens once, BOS/EOS added,
    truncation explicit); unranked candidates are left out, as there. With ``max_length``, a prompt keeps
    at most its last ``ceil(max_length / 2)`` tokens, so no response is left without tokens.
    """
    records = list(records)
    if model.kind == "encoder":
        return _encoder_lists(records)
    # a prompt longer than half of max_length keeps its last half (a dialogue's latest turns), so every
    # response keeps at least half of the budget, as the encoder path guarantees; without this cut a prompt
    # of max_length tokens would leave its responses nothing
    max_prompt = None if max_length is None else max(1, max_length - max_length // 2)
    lists, report = tokenize_records(tokenizer, records, max_length=max_length, max_prompt_tokens=max_prompt)
    if report.prompts_truncated or report.responses_truncated or report.dropped:
        warnings.warn(f"reward model inputs: {report}", stacklevel=3)
    # keep per-attribute scores (tokenize_records averages mappings into one grade per response)
    out = []
    for item in lists:
        record = _as_record(records[item.index], item.index)
        if isinstance(record, RankedList) and record.scores is not None:
            item = replace(item, grades=[record.scores[i] for i, r in enumerate(record.ranks) if r is not None])
        elif isinstance(record, Judgment) and record.label is not None:
            item = replace(item, grades=[float(record.label)])
        out.append(item)
    return out


def _prompt_end_index(batch: PackedBatch) -> Tensor:
    """``[B]`` flat index of each list's last prompt token (the position that predicts response token 0)."""
    cells = batch.num_lists * batch.max_k
    first = torch.full((cells,), torch.iinfo(torch.long).max, dtype=torch.long, device=batch.target_index.device)
    first = first.scatter_reduce(0, batch.target_segment, batch.target_index, reduce="amin").view_as(batch.lengths)
    return first[:, 0]


def _last_token_index(batch: PackedBatch) -> Tensor:
    """``[B, K]`` flat index into ``[R * T]`` of each response's last token (0 at padding).

    Token 0 of response k is predicted by the last prompt token, at flat position L (the smallest target
    index of the cell in either layout). In the shared layout the list's responses follow the prompt in
    order, so response k ends at ``L + sum_{m <= k} len_m``; in the duplicated layout each row holds one
    response, which ends at ``L + len_k``.
    """
    cells = batch.num_lists * batch.max_k
    first = torch.full((cells,), torch.iinfo(torch.long).max, dtype=torch.long, device=batch.target_index.device)
    first = first.scatter_reduce(0, batch.target_segment, batch.target_index, reduce="amin").view_as(batch.lengths)
    lengths = batch.lengths.to(first.device)
    offset = lengths.cumsum(1) if batch.layout == "shared" else lengths
    index = first + offset
    return torch.where(lengths > 0, index, torch.zeros_like(index))


def _causal_attributes(model: RewardModel, lists: Sequence[TokenizedList], layout: str,
                       max_tokens_per_row: int | None = None) -> tuple[Tensor, Tensor | None]:
    # the engine's layout probe decides whether this backbone computes the shared layout correctly
    layout = choose_layout(model.backbone, layout)
    pad_id = getattr(model.backbone.config, "pad_token_id", None) or 0
    # grades may hold per-attribute mappings here (see prepare_lists); the packer needs none of them
    lists = [replace(item, grades=None) for item in lists]
    batch = pack_lists(lists, layout=layout, pad_token_id=pad_id,
                       max_tokens_per_row=max_tokens_per_row if layout == "shared" else None).to(model.device)
    hidden = base_hidden_states(model.backbone, batch)
    flat = hidden.reshape(-1, hidden.shape[-1])
    last = flat.index_select(0, _last_token_index(batch).reshape(-1))
    attributes = model.head(last).view(batch.num_lists, batch.max_k, -1)
    prompt_hidden = flat.index_select(0, _prompt_end_index(batch)) if model.prompt_gate is not None else None
    return attributes, prompt_hidden


def encoder_inputs(tokenizer, prompts: Sequence[str | None], responses: Sequence[str], limit: int | None
                   ) -> tuple[dict[str, Tensor], int]:
    """Sentence-pair inputs for an encoder, truncated so that the response and the prompt's *end* survive.

    Each row is the tokenizer's own pair encoding (``[CLS] prompt [SEP] response [SEP]`` for BERT-style
    models), or the single-sequence encoding when every prompt is None. When a pair exceeds ``limit``
    tokens, the response keeps its first ``max(budget - len(prompt), budget // 2)`` tokens and the prompt
    its *last* tokens (the latest turn of a dialogue is what the response answers; the tokenizer's own
    ``longest_first`` truncation would cut the end of the prompt instead). The cut is made on the text at
    token offsets, and the tokenizer's truncation to ``limit`` stays on as a guard.

    Returns the padded tensors (``input_ids``, ``attention_mask``, ``token_type_ids`` where the tokenizer
    uses them) and the number of truncated pairs. Feeding these to the saved
    ``*ForSequenceClassification`` model reproduces :func:`score_lists` for ``pooling="cls"``; for mean
    pooling use :func:`load` (see :meth:`RewardModel.save_pretrained`).
    """
    single = all(p is None for p in prompts)
    prompts = [None] * len(responses) if single else [p or "" for p in prompts]
    truncated = 0
    if limit is not None and responses:
        special = tokenizer.num_special_tokens_to_add(pair=not single)
        budget = max(limit - special, 1)
        response_enc = tokenizer(list(responses), add_special_tokens=False, return_offsets_mapping=True)
        prompt_enc = None if single else tokenizer(prompts, add_special_tokens=False, return_offsets_mapping=True)
        responses = list(responses)
        for i in range(len(responses)):
            n_response = len(response_enc["input_ids"][i])
            n_prompt = 0 if single else len(prompt_enc["input_ids"][i])
            if n_prompt + n_response <= budget:
                continue
            truncated += 1
            keep = min(n_response, max(budget - n_prompt, budget // 2)) if not single else budget
            if keep < n_response:
                responses[i] = responses[i][:response_enc["offset_mapping"][i][keep - 1][1]] if keep else ""
            if not single and n_prompt > budget - keep:
                drop = n_prompt - (budget - keep)
                prompts[i] = prompts[i][prompt_enc["offset_mapping"][i][drop][0]:] if drop < n_prompt else ""
    texts = (responses,) if single else (prompts, responses)
    encoded = tokenizer(*texts, padding=True, truncation=limit is not None, max_length=limit, return_tensors="pt")
    inputs = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return inputs, truncated


def _pool(model: RewardModel, outputs, attention_mask: Tensor) -> Tensor:
    """Encoder pooling: ``"mean"`` over the pair's tokens, or ``"cls"`` (the checkpoint's pooler on [CLS], as
    the ``*ForSequenceClassification`` classes do)."""
    hidden = outputs[0] if not hasattr(outputs, "last_hidden_state") else outputs.last_hidden_state
    if model.pooling == "cls":
        pooled = getattr(outputs, "pooler_output", None)
        return hidden[:, 0] if pooled is None else pooled
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def _encoder_attributes(model: RewardModel, tokenizer, lists: Sequence[EncoderList],
                        max_length: int | None) -> Tensor:
    prompts = [item.prompt for item in lists for _ in item.responses]
    responses = [r for item in lists for r in item.responses]
    limit = max_length or getattr(model.backbone.config, "max_position_embeddings", None)
    inputs, truncated = encoder_inputs(tokenizer, prompts, responses, limit)
    if truncated:
        warnings.warn(f"{truncated} of {len(responses)} prompt/response pairs exceed {limit} tokens and are "
                      "truncated (the prompt's start first, then the response's end)", stacklevel=4)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    outputs = model.backbone(**inputs)
    pooled = model.head_dropout(_pool(model, outputs, inputs["attention_mask"]))
    attributes = model.head(pooled)
    max_k = max(item.k for item in lists)
    out = attributes.new_zeros(len(lists), max_k, attributes.shape[-1])
    start = 0
    for b, item in enumerate(lists):
        out[b, :item.k] = attributes[start:start + item.k]
        start += item.k
    return out


def reward_scores(model: RewardModel, tokenizer, lists: Sequence, *, layout: str = "shared",
                  max_length: int | None = None, max_tokens_per_row: int | None = None,
                  return_eigenvalues: bool = False):
    """Differentiable scores of prepared lists (from :func:`prepare_lists`).

    Returns
    -------
    rewards : Tensor [B, K] or None
        Scalar rewards (attributes combined; an ensemble's mean), 0 at padding; None for a general
        preference model.
    attributes : Tensor [B, K, A]
        Per-attribute head outputs (an ensemble's per-head rewards; a general preference model's embeddings).
    eigenvalues : Tensor [B, k] or None
        Only with ``return_eigenvalues``: a prompt-gated general preference model's block scales per list.
    """
    prompt_hidden = None
    if model.kind == "encoder":
        attributes = _encoder_attributes(model, tokenizer, lists, max_length)
    else:
        attributes, prompt_hidden = _causal_attributes(model, lists, layout, max_tokens_per_row)
    k = [item.k for item in lists]
    present = torch.arange(attributes.shape[1], device=attributes.device)[None, :] < torch.tensor(
        k, device=attributes.device)[:, None]
    attributes = torch.where(present.unsqueeze(-1), attributes, torch.zeros_like(attributes))
    rewards = None if model.preference_dim is not None else model.combine(attributes)
    if return_eigenvalues:
        return rewards, attributes, model.eigenvalues(prompt_hidden)
    return rewards, attributes


@torch.no_grad()
def score_lists(model: RewardModel, tokenizer, records: Iterable, *, batch_size: int = 16,
                layout: str = "shared", max_length: int | None = None, max_tokens_per_row: int | None = None,
                return_attributes: bool = False) -> list[Tensor]:
    """Score every ranked candidate of every record: one ``[K]`` tensor of rewards per scored record.

    Parameters
    ----------
    model : RewardModel
    tokenizer : transformers tokenizer (the backbone's)
    records : iterable of RankedList, Judgment or their mappings
        Unranked candidates (rank None) are not scored; K counts the ranked ones.
    batch_size : int
        Lists per forward pass.
    layout : {"shared", "duplicated"}
        Causal backbones: the prompt once per list (default) or once per response; the two agree to
        float rounding. Encoders always use the duplicated form.
    max_length : int, optional
        Prompt + response token cap (reported truncation, as in ``tokenize_records``).
    max_tokens_per_row : int, optional
        Shared layout: pack several lists into one row while they fit (see ``pack_lists``).
    return_attributes : bool
        Return ``[K, A]`` per-attribute scores instead of the scalar rewards.

    Returns
    -------
    list of Tensor, float32 on the CPU, ``[K]`` (or ``[K, A]``)
        One per record, in order; a record without any ranked candidate gets an empty tensor.
    """
    if model.preference_dim is not None and not return_attributes:
        raise ValueError("a general preference model has no scalar reward; use preference_probabilities "
                         "(or return_attributes=True for the embeddings)")
    _check_batch_size(batch_size)
    was_training = model.training
    model.eval()
    try:
        records = list(records)
        lists = prepare_lists(model, tokenizer, records, max_length=max_length)
        empty = torch.zeros((0, model.num_attributes) if return_attributes else (0,))
        out: list[Tensor] = [empty] * len(records)
        for start in range(0, len(lists), batch_size):
            chunk = lists[start:start + batch_size]
            rewards, attributes = reward_scores(model, tokenizer, chunk, layout=layout, max_length=max_length,
                                                max_tokens_per_row=max_tokens_per_row)
            values = attributes if return_attributes else rewards
            for b, item in enumerate(chunk):
                out[item.index] = values[b, :item.k].float().cpu()
        return out
    finally:
        model.train(was_training)


@torch.no_grad()
def preference_probabilities(model: RewardModel, tokenizer, records: Iterable, *, batch_size: int = 16,
                             layout: str = "shared", max_length: int | None = None) -> list[Tensor]:
    """``[K, K]`` matrices ``P[i, j] = P(candidate i > candidate j)`` for every record's ranked candidates.

    A general preference model (``preference_dim`` set) gives ``sigma(logit(v_i, v_j; lambda(x)))`` with the
    authors' sign (:func:`general_preference_logits`) and, for a prompt-gated model, the prompt's block
    scales; it need not be transitive. A scalar reward model gives Bradley-Terry ``sigma(r_i - r_j)``.
    Either way ``P + P^T = 1`` and the diagonal is 1/2.
    """
    from .general import general_preference_logits

    _check_batch_size(batch_size)
    records = list(records)
    if model.preference_dim is None:
        scores = score_lists(model, tokenizer, records, batch_size=batch_size, layout=layout,
                             max_length=max_length)
        return [torch.sigmoid(s[:, None] - s[None, :]) for s in scores]
    was_training = model.training
    model.eval()
    try:
        lists = prepare_lists(model, tokenizer, records, max_length=max_length)
        out: list[Tensor] = [torch.zeros(0, 0)] * len(records)
        for start in range(0, len(lists), batch_size):
            chunk = lists[start:start + batch_size]
            _, embeddings, eigenvalues = reward_scores(model, tokenizer, chunk, layout=layout, max_length=max_length,
                                                       return_eigenvalues=True)
            for b, item in enumerate(chunk):
                v = embeddings[b, :item.k].float().cpu()
                scale = None if eigenvalues is None else eigenvalues[b].float().cpu()
                out[item.index] = torch.sigmoid(general_preference_logits(v[:, None, :], v[None, :, :], scale))
        return out
    finally:
        model.train(was_training)


@torch.no_grad()
def center_ensemble_heads(model: RewardModel, tokenizer, records: Iterable, *, limit: int | None = 512,
                          batch_size: int = 16, layout: str = "shared", max_length: int | None = None) -> Tensor:
    """Shift each ensemble head's bias so that its mean reward over ``records``' candidates is 0.

    A Bradley-Terry (or Plackett-Luce) head is identified only up to an additive constant: the loss sees
    reward differences, so two heads that rank every candidate alike may still differ by an arbitrary
    offset, and that offset would count as disagreement in the ensemble's spread everywhere. Centring
    each head on the training candidates (Coste et al. 2024, "Reward Model Ensembles Help Mitigate
    Overoptimization", normalise each member on the training data) removes it: no ranking of any head or
    of the mean changes, and the spread measures how the heads disagree about *differences* from the
    training distribution. ``limit``: at most this many records (the first ones) are scored.

    Returns the ``[E]`` offsets subtracted. Heads without a bias (the causal sequence-classification
    layout, ``score`` with no bias) cannot hold an offset: a ValueError says so.
    """
    if model.ensemble_size < 2:
        raise ValueError("center_ensemble_heads needs a model with ensemble_size >= 2")
    if model.head.bias is None:
        raise ValueError("this ensemble's head has no bias (causal sequence-classification layout), so its "
                         "heads cannot hold an offset and cannot be centred")
    records = list(records)[:limit]
    heads = [v for v in score_lists(model, tokenizer, records, batch_size=batch_size, layout=layout,
                                    max_length=max_length, return_attributes=True) if v.numel()]
    if not heads:
        raise ValueError("no ranked candidate to centre the ensemble's heads on")
    offsets = torch.cat(heads).double().mean(0)
    model.head.bias.sub_(offsets.to(model.head.bias))
    return offsets


@torch.no_grad()
def ensemble_scores(model: RewardModel, tokenizer, records: Iterable, *, k: float = 1.0, batch_size: int = 16,
                    layout: str = "shared", max_length: int | None = None) -> list[dict[str, Tensor]]:
    """Mean, spread and conservative score of an ensemble's heads for every record's ranked candidates.

    With head rewards ``r_1..r_E`` for a candidate: ``mean = (1/E) sum_e r_e``, ``std`` the sample standard
    deviation over heads (``E - 1`` in the denominator), ``conservative = mean - k std`` (a lower confidence
    bound: a candidate the heads disagree on is trusted less, the usual guard against reward hacking;
    Coste et al. 2024, "Reward Model Ensembles Help Mitigate Overoptimization", arXiv:2310.02743).

    The spread is meaningful once each head is centred on the training candidates
    (:func:`center_ensemble_heads`, which :func:`~rankalign.reward.train_reward_model` applies to every
    ensemble it trains whose head has a bias, ``center_heads=True``; a causal backbone's bias-free head is
    left as trained, so its spread includes each head's offset).

    Returns one dict per record with ``heads`` ``[K, E]`` and ``mean``, ``std``, ``conservative`` ``[K]``.
    """
    if model.ensemble_size < 2:
        raise ValueError("ensemble_scores needs a model with ensemble_size >= 2")
    if isinstance(k, bool) or not isinstance(k, numbers.Real) or not math.isfinite(k):
        raise UsageError(f"k must be a finite number (mean - k std), got {k!r}")
    heads = score_lists(model, tokenizer, records, batch_size=batch_size, layout=layout, max_length=max_length,
                        return_attributes=True)
    out = []
    for values in heads:
        values = values.double()
        mean = values.mean(-1)
        std = values.std(-1, unbiased=True) if values.numel() else mean
        out.append({"heads": values, "mean": mean, "std": std, "conservative": mean - k * std})
    return out
