"""Reference log-probs: computed once, cached on disk, validated; or the PEFT base with the adapter off.

The cache key is a sha256 over everything the numbers depend on: the reference model's weights (every
state-dict tensor's name, dtype, shape and bytes) and its class and config (rotary base, norm epsilon,
activation, ...: what the weights do), the tokenizer (its serialised JSON, chat template and
special tokens), the tokenized data (every list's prompt and response ids) and the settings (a JSON
object). A cache directory holds ``<name>.safetensors`` (all lists' log-probs flattened, with offsets)
and ``<name>.json`` (a manifest with the key, the number of lists, each list's K and the sha256 of the
safetensors file). Loading checks all of them; a cache that does not match (other weights, data or
settings; a corrupt or truncated file; another number of lists) is reported and recomputed, never used.
Files are written to a temporary name in the same directory and moved into place (``os.replace``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .._atomic import atomic_write_bytes
from .logps import sequence_logps, unwrap_model
from .tokenize import TokenizedList

CACHE_FORMAT = 1


# ------------------------------------------------------------------------------------------------ hashing
# config fields that record where a model came from or what a forward returns, not what it computes
_CONFIG_BOOKKEEPING = ("_name_or_path", "transformers_version", "_commit_hash", "architectures", "dtype",
                       "torch_dtype", "use_cache", "output_hidden_states", "output_attentions", "return_dict")


def _hash_model(digest, model) -> None:
    inner = unwrap_model(model)
    # the config too: rotary frequencies, norm epsilons, activations and logit scaling change the numbers
    # without changing a single weight (rotary frequencies are not even in the state dict)
    config = getattr(inner, "config", None)
    described = config.to_dict() if hasattr(config, "to_dict") else {}
    described = {key: value for key, value in described.items() if key not in _CONFIG_BOOKKEEPING}
    digest.update(f"{type(inner).__name__}|{json.dumps(described, sort_keys=True, default=str)}\n".encode())
    state = inner.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit words
            tensor = tensor.view(torch.int16)
        digest.update(tensor.cpu().contiguous().numpy().tobytes())


def _hash_tokenizer(digest, tokenizer) -> None:
    if tokenizer is None:
        digest.update(b"tokenizer:none\n")
        return
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    digest.update(json.dumps({k: str(v) for k, v in tokenizer.special_tokens_map.items()}, sort_keys=True).encode())


def _hash_lists(digest, lists: Sequence[TokenizedList]) -> None:
    import numpy as np

    for item in lists:
        digest.update(b"L")
        digest.update(np.asarray(item.prompt_ids, dtype=np.int64).tobytes())
        for response in item.response_ids:
            digest.update(b"R")
            digest.update(np.asarray(response, dtype=np.int64).tobytes())


def reference_cache_key(model, lists: Sequence[TokenizedList], *, tokenizer=None,
                        settings: Mapping | None = None) -> str:
    """sha256 (hex) of (model weights, tokenizer, token data, settings, cache format)."""
    digest = hashlib.sha256()
    digest.update(f"rankalign-reference-cache-v{CACHE_FORMAT}\n".encode())
    _hash_model(digest, model)
    _hash_tokenizer(digest, tokenizer)
    _hash_lists(digest, lists)
    digest.update(json.dumps(dict(settings or {}), sort_keys=True, default=str).encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ cache
class ReferenceCache:
    """Reference log-probs of a data set on disk, one entry per directory and name.

    Parameters
    ----------
    directory : str or Path
        Where ``<name>.safetensors`` and ``<name>.json`` live.
    name : str
        File stem (default ``"reference_logps"``).

    ``load(key, ks)`` returns the per-list log-prob tensors only when the manifest's key, list count,
    per-list K and file hash all match; otherwise it returns None and records why in
    :attr:`last_miss_reason` (``"missing"``, ``"stale key"``, ``"corrupt"``, ``"list count"``, ...).
    """

    def __init__(self, directory, name: str = "reference_logps"):
        self.directory = Path(directory)
        self.name = name
        self.last_miss_reason: str | None = None

    @property
    def tensor_path(self) -> Path:
        return self.directory / f"{self.name}.safetensors"

    @property
    def manifest_path(self) -> Path:
        return self.directory / f"{self.name}.json"

    def _miss(self, reason: str):
        self.last_miss_reason = reason
        return None

    def load(self, key: str, ks: Sequence[int]) -> list[Tensor] | None:
        """The cached per-list log-probs ``[K_b]`` for ``key``, or None (see :attr:`last_miss_reason`)."""
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        self.last_miss_reason = None
        if not self.manifest_path.exists() and not self.tensor_path.exists():
            return self._miss("missing")
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as error:
            return self._miss(f"corrupt manifest ({error})")
        if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
            return self._miss("corrupt manifest (unknown format)")
        if manifest.get("key") != key:
            return self._miss("stale key (reference weights, tokenizer, data or settings changed)")
        if manifest.get("num_lists") != len(ks):
            return self._miss(f"list count ({manifest.get('num_lists')} cached, {len(ks)} now)")
        if manifest.get("ks") != [int(k) for k in ks]:
            return self._miss("responses per list differ")
        try:
            raw = self.tensor_path.read_bytes()
        except OSError as error:
            return self._miss(f"missing tensor file ({error})")
        if hashlib.sha256(raw).hexdigest() != manifest.get("sha256"):
            return self._miss("corrupt tensor file (sha256 mismatch)")
        try:
            tensors = load_safetensors(raw)
        except (SafetensorError, ValueError, RuntimeError) as error:
            return self._miss(f"corrupt tensor file ({error})")
        values, offsets = tensors.get("logps"), tensors.get("offsets")
        if values is None or offsets is None or offsets.numel() != len(ks) + 1 \
                or int(offsets[-1]) != values.numel() or offsets.diff().tolist() != [int(k) for k in ks]:
            return self._miss("corrupt tensor file (offsets do not match)")
        return [values[int(offsets[i]):int(offsets[i + 1])].clone() for i in range(len(ks))]

    def save(self, key: str, logps: Sequence[Tensor], *, settings: Mapping | None = None) -> None:
        """Write the per-list log-probs atomically: tensors first, then the manifest that vouches for them."""
        from safetensors.torch import save as save_safetensors

        ks = [int(t.numel()) for t in logps]
        values = torch.cat([t.detach().float().cpu().reshape(-1) for t in logps]) if logps else torch.zeros(0)
        offsets = torch.zeros(len(ks) + 1, dtype=torch.long)
        offsets[1:] = torch.tensor(ks, dtype=torch.long).cumsum(0) if ks else offsets[1:]
        raw = save_safetensors({"logps": values.contiguous(), "offsets": offsets}, metadata={"key": key})
        atomic_write_bytes(self.tensor_path, raw)
        manifest = {"format": CACHE_FORMAT, "key": key, "num_lists": len(ks), "ks": ks,
                    "sha256": hashlib.sha256(raw).hexdigest(), "settings": dict(settings or {})}
        atomic_write_bytes(self.manifest_path, (json.dumps(manifest, indent=1, default=str) + "\n").encode())


# ------------------------------------------------------------------------------------------------ compute
def compute_reference_logps(model, lists: Sequence[TokenizedList], *, batch_size: int = 8, cache_dir=None,
                            settings: Mapping | None = None, progress: bool = True, tokenizer=None,
                            layout: str | None = None, max_tokens_per_row: int | None = None,
                            chunk_size: int = 1024, split_across_processes: bool = False) -> list[Tensor]:
    """Summed log-probs of every response under the reference model, ``[K_b]`` per list, cached.

    :func:`~rankalign.engine.score_lists` with a cache, in the precision the model runs in (no autocast
    beyond what ``accelerate`` set up, so that reference and policy log-probs are computed alike).

    Parameters
    ----------
    model : causal LM
        The reference (run in eval mode without gradients; its training flag is restored).
    lists : sequence of TokenizedList
    batch_size : int
        Lists per forward pass (sorted by length to limit padding).
    cache_dir : str or Path, optional
        Use a :class:`ReferenceCache` there: load when valid, else compute and save.
    settings : mapping, optional
        Anything else the numbers depend on (a precision flag, a data-set name); part of the key.
    progress : bool
        Show a progress bar (rich) while computing.
    tokenizer : optional
        Part of the cache key when given.
    layout : {"shared", "duplicated"}, optional
        Default: shared when the model supports it.
    max_tokens_per_row, chunk_size
        As in :func:`pack_lists` and :func:`sequence_logps`.
    split_across_processes : bool
        Under torch.distributed, every process scores a share of the batches and all get every list's
        log-probs; the first process writes the cache (see :func:`~rankalign.engine.score_lists`).

    Returns
    -------
    list of Tensor
        One float32 CPU tensor ``[K_b]`` per list, in the input order.
    """
    from .scoring import score_lists

    return score_lists(model, lists, batch_size=batch_size, layout=layout or "auto",
                       max_tokens_per_row=max_tokens_per_row, chunk_size=chunk_size, precision=None,
                       cache_dir=cache_dir, settings=settings, tokenizer=tokenizer, progress=progress,
                       description="reference log-probs", split_across_processes=split_across_processes).logps


# ------------------------------------------------------------------------------------------------ PEFT
@contextlib.contextmanager
def adapter_disabled(model):
    """Context in which a PEFT model computes as its base model (adapters off); a no-op for other models."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


def peft_reference_logps(model, batch, *, chunk_size: int = 1024) -> Tensor:
    """Reference log-probs ``[B, K]`` of a PEFT model's frozen base: the same model, adapters disabled.

    Saves holding a second copy of the weights; computed without gradients.
    """
    if not hasattr(model, "disable_adapter"):
        raise TypeError(f"{type(model).__name__} is not a PEFT model (no disable_adapter); pass a reference model")
    with torch.no_grad(), adapter_disabled(model):
        return sequence_logps(model, batch, chunk_size=chunk_size)
