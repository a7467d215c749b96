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

import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from .._atomic import atomic_write_path
from ..data.errors import DataError
from ..data.records import Judgment, RankedList
from ..engine.logps import base_hidden_states, base_model_of, choose_layout
from ..engine.packing import PackedBatch, pack_lists
from ..engine.tokenize import TokenizedList, tokenize_records

__all__ = ["RewardModel", "score_lists", "reward_scores", "preference_probabilities", "ENCODER_MODEL_TYPES", "REWARD_CONFIG_NAME",
           "REWARD_HEAD_NAME", "write_file_atomic"]

REWARD_CONFIG_NAME = "reward_config.json"
REWARD_HEAD_NAME = "reward_head.safetensors"
BACKBONE_WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

# Bidirectional encoders (model_type values); any other backbone is treated as causal unless told.
ENCODER_MODEL_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "mpnet",
    "camembert", "modernbert", "nomic_bert", "xlm", "ernie", "megatron-bert", "luke",
})
BACKBONE_KINDS = ("causal", "encoder")


# ---------------------------------------------------------------------------------------------- helpers
write_file_atomic = atomic_write_path  # ``write(temp_path)``, then moved into place


def _write_json_atomic(path, data) -> None:
    def write(temp):
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")

    write_file_atomic(path, write)


def _detect_kind(backbone) -> str:
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    return "encoder" if model_type in ENCODER_MODEL_TYPES else "causal"


def _text(value) -> str:
    """A prompt or response as plain text for an encoder (chat messages as ``role: content`` lines)."""
    if value is None or isinstance(value, str):
        return value
    return "\n".join(f"{m['role']}: {m['content']}" for m in value)


# ---------------------------------------------------------------------------------------------- model
class RewardModel(nn.Module):
    """A backbone and a linear reward head with ``num_attributes`` outputs.

    Parameters
    ----------
    backbone : transformers.PreTrainedModel
        A causal LM (its base transformer is used, the LM head is dropped) or a base model
        (``AutoModel``: ``LlamaModel``, ``BertModel``, ...).
    num_attributes : int
        Outputs of the head: 1 for a scalar reward, more for a multi-attribute reward.
    attribute_names : sequence of str, optional
        Names of the attributes (default ``"reward"`` or ``"attribute_0"``, ...); records whose ``scores``
        are mappings are matched to the head's outputs by these names.
    attribute_weights : sequence of float, "learned", or None
        How attributes combine into the scalar reward ``r = sum_a w_a s_a``: fixed weights, learned
        weights (initialised equal, ``1/A``), or None for equal fixed weights ``1/A``.
    kind : {"causal", "encoder"}, optional
        Default: "encoder" for the bidirectional model types in :data:`ENCODER_MODEL_TYPES`, else "causal".
    preference_dim : int, optional
        Make this a *general preference model* (Zhang et al. 2024, see :mod:`rankalign.reward.general`):
        the head embeds each response into ``preference_dim = 2k`` dimensions and a pair is scored by
        ``sigma(v_i^T R v_j)`` with the skew-symmetric R (unit block scales, no normalisation). Such a model
        has no scalar reward: use :func:`preference_probabilities`, and train it with
        ``objective="general_preference"``. ``num_attributes`` and the weights are then unused.
    seed : int
        Seed for the head's initial weights (the global RNG state is left unchanged).

    Calling the model on a batch is not its interface: use :func:`score_lists` (inference) and
    :func:`reward_scores` (differentiable scores of prepared lists), or ``train_reward_model``.
    """

    def __init__(self, backbone, *, num_attributes: int = 1, attribute_names: Sequence[str] | None = None,
                 attribute_weights: Sequence[float] | str | None = None, kind: str | None = None,
                 preference_dim: int | None = None, seed: int = 0):
        super().__init__()
        self.preference_dim = None if preference_dim is None else int(preference_dim)
        if self.preference_dim is not None:
            if self.preference_dim < 2 or self.preference_dim % 2:
                raise ValueError(f"preference_dim must be even and >= 2, got {preference_dim}")
            num_attributes = self.preference_dim
            attribute_names = [f"preference_{a}" for a in range(num_attributes)]
            attribute_weights = None
        if num_attributes < 1:
            raise ValueError(f"num_attributes must be >= 1, got {num_attributes}")
        self.backbone = base_model_of(backbone)
        self.kind = kind or _detect_kind(self.backbone)
        if self.kind not in BACKBONE_KINDS:
            raise ValueError(f"kind must be one of {BACKBONE_KINDS}, got {kind!r}")
        if attribute_names is None:
            attribute_names = ["reward"] if num_attributes == 1 else [f"attribute_{a}" for a in
                                                                       range(num_attributes)]
        attribute_names = [str(name) for name in attribute_names]
        if len(attribute_names) != num_attributes or len(set(attribute_names)) != num_attributes:
            raise ValueError(f"need {num_attributes} distinct attribute names, got {attribute_names}")
        self.attribute_names = attribute_names
        hidden_size = self.backbone.config.hidden_size
        dtype = next(self.backbone.parameters()).dtype
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = nn.Linear(hidden_size, num_attributes, dtype=dtype)
            nn.init.normal_(self.head.weight, std=1.0 / (hidden_size ** 0.5 * num_attributes))
            nn.init.zeros_(self.head.bias)
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
        """Scalar reward ``[..., ]`` from attribute scores ``[..., A]`` (``sum_a w_a s_a``)."""
        if self.preference_dim is not None:
            raise ValueError("a general preference model has no scalar reward; use preference_probabilities")
        if self.num_attributes == 1:
            return attributes[..., 0]
        return attributes @ self.attribute_weights.to(attributes.dtype)

    def reward_config(self) -> dict:
        """The JSON-serialisable settings that rebuild this head around its backbone."""
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "num_attributes": self.num_attributes,
            "attribute_names": list(self.attribute_names),
            "attribute_weights": "learned" if self.learned_weights else
            [float(w) for w in self.attribute_weights.detach().cpu()],
            "backbone_class": type(self.backbone).__name__,
            "preference_dim": self.preference_dim,
        }

    # ------------------------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | os.PathLike, *, tokenizer=None) -> Path:
        """Save to ``directory`` in transformers' layout, every file written atomically.

        Writes the backbone's ``config.json`` and ``model.safetensors`` (loadable on their own with
        ``AutoModel.from_pretrained``), ``reward_head.safetensors`` (head weights and attribute weights),
        the tokenizer's files when ``tokenizer`` is given, and ``reward_config.json`` last, so a directory
        with a reward config holds a complete save.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.backbone.config
        config.architectures = [type(self.backbone).__name__]
        _write_json_atomic(directory / "config.json", config.to_dict())
        backbone_state = {k: v.detach().contiguous().cpu() for k, v in self.backbone.state_dict().items()}
        write_file_atomic(directory / BACKBONE_WEIGHTS_NAME,
                          lambda temp: save_file(backbone_state, temp, metadata={"format": "pt"}))
        head_state = {"weight": self.head.weight.detach().contiguous().cpu(),
                      "bias": self.head.bias.detach().contiguous().cpu(),
                      "attribute_weights": self.attribute_weights.detach().contiguous().cpu()}
        write_file_atomic(directory / REWARD_HEAD_NAME,
                          lambda temp: save_file(head_state, temp, metadata={"format": "pt"}))
        if tokenizer is not None:
            with tempfile.TemporaryDirectory(dir=directory, prefix=".tokenizer.") as staging:
                for name in tokenizer.save_pretrained(staging):
                    name = Path(name)
                    if name.is_file():
                        os.replace(name, directory / name.name)
        _write_json_atomic(directory / REWARD_CONFIG_NAME, self.reward_config())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, torch_dtype=None,
                        trust_remote_code: bool = False) -> RewardModel:
        """Load a model saved by :meth:`save_pretrained` (safetensors only; no pickle, no remote code)."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        directory = Path(directory)
        config_path = directory / REWARD_CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: no reward config (was this saved by RewardModel?)")
        with open(config_path, encoding="utf-8") as handle:
            settings = json.load(handle)
        version = settings.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{config_path}: format_version {version!r} is not supported "
                             f"(expected {FORMAT_VERSION})")
        kwargs = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        backbone = AutoModel.from_pretrained(directory, **kwargs)
        weights = settings["attribute_weights"]
        model = cls(backbone, num_attributes=int(settings["num_attributes"]),
                    attribute_names=settings["attribute_names"],
                    attribute_weights="learned" if weights == "learned" else weights, kind=settings["kind"],
                    preference_dim=settings.get("preference_dim"))
        state = load_file(directory / REWARD_HEAD_NAME)
        with torch.no_grad():
            model.head.weight.copy_(state["weight"])
            model.head.bias.copy_(state["bias"])
            model.attribute_weights.copy_(state["attribute_weights"])
        return model.eval()


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
    truncation explicit); unranked candidates are left out, as there.
    """
    records = list(records)
    if model.kind == "encoder":
        return _encoder_lists(records)
    lists, report = tokenize_records(tokenizer, records, max_length=max_length)
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
                       max_tokens_per_row: int | None = None) -> Tensor:
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
    return model.head(last).view(batch.num_lists, batch.max_k, -1)


def _encoder_attributes(model: RewardModel, tokenizer, lists: Sequence[EncoderList],
                        max_length: int | None) -> Tensor:
    prompts = [item.prompt for item in lists for _ in item.responses]
    responses = [r for item in lists for r in item.responses]
    limit = max_length or getattr(model.backbone.config, "max_position_embeddings", None)
    texts = (responses,) if all(p is None for p in prompts) else ([p or "" for p in prompts], responses)
    if limit is not None:
        # truncation is explicit: count the pairs that do not fit before cutting them
        full = tokenizer(*texts, truncation=False)["input_ids"]
        too_long = sum(len(ids) > limit for ids in full)
        if too_long:
            warnings.warn(f"{too_long} of {len(full)} prompt/response pairs exceed {limit} tokens and are "
                          "truncated (longest part first)", stacklevel=4)
    encoded = tokenizer(*texts, padding=True, truncation=limit is not None, max_length=limit, return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in encoded.items()
              if k in ("input_ids", "attention_mask", "token_type_ids")}
    outputs = model.backbone(**inputs)
    hidden = outputs[0] if not hasattr(outputs, "last_hidden_state") else outputs.last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    attributes = model.head(pooled)
    max_k = max(item.k for item in lists)
    out = attributes.new_zeros(len(lists), max_k, attributes.shape[-1])
    start = 0
    for b, item in enumerate(lists):
        out[b, :item.k] = attributes[start:start + item.k]
        start += item.k
    return out


def reward_scores(model: RewardModel, tokenizer, lists: Sequence, *, layout: str = "shared",
                  max_length: int | None = None, max_tokens_per_row: int | None = None) -> tuple[Tensor, Tensor]:
    """Differentiable scores of prepared lists (from :func:`prepare_lists`).

    Returns
    -------
    rewards : Tensor [B, K] or None
        Scalar rewards (attributes combined), 0 at padding; None for a general preference model.
    attributes : Tensor [B, K, A]
        Per-attribute head outputs (the preference embeddings of a general preference model).
    """
    if model.kind == "encoder":
        attributes = _encoder_attributes(model, tokenizer, lists, max_length)
    else:
        attributes = _causal_attributes(model, lists, layout, max_tokens_per_row)
    k = [item.k for item in lists]
    present = torch.arange(attributes.shape[1], device=attributes.device)[None, :] < torch.tensor(
        k, device=attributes.device)[:, None]
    attributes = torch.where(present.unsqueeze(-1), attributes, torch.zeros_like(attributes))
    rewards = None if model.preference_dim is not None else model.combine(attributes)
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

    A general preference model (``preference_dim`` set) gives ``sigma(v_i^T R v_j)`` (Zhang et al. 2024),
    which need not be transitive; a scalar reward model gives Bradley-Terry ``sigma(r_i - r_j)``. Either
    way ``P + P^T = 1`` and the diagonal is 1/2.
    """
    from .general import general_preference_logits

    records = list(records)
    if model.preference_dim is None:
        scores = score_lists(model, tokenizer, records, batch_size=batch_size, layout=layout,
                             max_length=max_length)
        return [torch.sigmoid(s[:, None] - s[None, :]) for s in scores]
    embeddings = score_lists(model, tokenizer, records, batch_size=batch_size, layout=layout,
                             max_length=max_length, return_attributes=True)
    return [torch.sigmoid(general_preference_logits(v[:, None, :], v[None, :, :])) for v in embeddings]
