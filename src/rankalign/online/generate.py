"""Sampling K completions per prompt, with each prompt prefilled once.

:func:`sample_groups` runs the prompts of a batch through the model once (left-padded, explicit position
ids), then repeats the resulting key/value cache K times along the batch axis (``prefill="shared"``),
so the K completions of a prompt decode from one prefill. ``prefill="repeated"`` is the usual layout
(each prompt repeated K times *before* the prefill: K times the prompt compute); it is kept as the
reference the shared path is tested against, and the two give the same logits up to float rounding.

Sampling at each step: ``logits / temperature``, nucleus (top-p) filtering (the smallest set of most
probable tokens whose probability reaches ``top_p``, Holtzman et al. 2020, "The Curious Case of Neural
Text Degeneration"), one multinomial draw per row from a seeded ``torch.Generator``; ``temperature=0``
is greedy (argmax). A row stops after it samples ``eos_token_id`` (the EOS is kept in its completion)
or after ``max_new_tokens`` tokens.

:func:`vllm_available` is the guard for the optional vLLM backend (:mod:`rankalign.online.vllm_backend`):
it needs the ``vllm`` package and a CUDA device; the transformers path here is the default and the tested one.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

PREFILLS = ("shared", "repeated")
DECODERS = ("auto", "transformers")


@dataclass
class SampledGroups:
    """K sampled completions for each of B prompts.

    Attributes
    ----------
    prompt_ids : list of list of int
        The prompts as given (unpadded).
    completion_ids : list (B) of list (K) of list of int
        Sampled tokens of each completion, ending with EOS when the row stopped on it.
    token_logps : list (B) of list (K) of list of float
        ``log pi(token | context)`` of each sampled token under the model's *untempered* distribution
        (``log_softmax(logits)``, before temperature and top-p).
    finished : list (B) of list (K) of bool
        Whether the completion ended with EOS (False: cut at ``max_new_tokens``).
    seconds : dict
        Wall time of the ``prefill`` and of the ``decode`` loop.
    decoder : str
        What ran the decoding steps: ``"lean"`` (:class:`rankalign.online.lean_decode.LeanDecoder`) or
        ``"transformers"`` (the model's forward).
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[list[int]]]
    token_logps: list[list[list[float]]]
    finished: list[list[bool]]
    seconds: dict = field(default_factory=dict)
    decoder: str = "transformers"

    @property
    def k(self) -> int:
        return len(self.completion_ids[0]) if self.completion_ids else 0


def vllm_available() -> bool:
    """True when the optional vLLM backend could run here: ``vllm`` importable and a CUDA device present."""
    if not torch.cuda.is_available():
        return False
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def _preallocate(cache, extra: int) -> None:
    """Give every layer of a transformers ``DynamicCache`` room for ``extra`` more positions, so that each
    decoding step writes its key and value in place instead of concatenating the whole cache again
    (``torch.cat`` per layer per step: a quarter of the decode time of a small model). Any other cache
    (sliding-window, quantised, static) is left as it is."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # an older transformers: its default cache keeps concatenating
        return
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        return
    for layer in layers:
        layer.__class__ = _PreallocatedLayer
        layer.reserve(extra)


try:
    from transformers.cache_utils import DynamicLayer as _DynamicLayer
except ImportError:  # pragma: no cover - transformers < 4.56 has no cache layers
    _DynamicLayer = object


class _PreallocatedLayer(_DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of buffers with room to grow (:func:`_preallocate`)."""

    def reserve(self, extra: int) -> None:
        length = self.keys.shape[-2]
        keys = self.keys.new_empty(*self.keys.shape[:-2], length + extra, self.keys.shape[-1])
        values = self.values.new_empty(*self.values.shape[:-2], length + extra, self.values.shape[-1])
        keys[..., :length, :] = self.keys
        values[..., :length, :] = self.values
        self._room = (keys, values)
        self.keys, self.values = keys[..., :length, :], values[..., :length, :]

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = self._room
        start, stop = self.keys.shape[-2], self.keys.shape[-2] + key_states.shape[-2]
        if stop > keys.shape[-2] or key_states.shape[:-2] != keys.shape[:-2]:  # out of room: concatenate
            self.__class__ = _DynamicLayer
            return _DynamicLayer.update(self, key_states, value_states, *args, **kwargs)
        keys[..., start:stop, :] = key_states
        values[..., start:stop, :] = value_states
        self.keys, self.values = keys[..., :stop, :], values[..., :stop, :]
        return self.keys, self.values


def _cache_keyword(model) -> str:
    """The keyword a model's forward takes its key/value cache under (``cache`` in transformers >= 5.x)."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _returned_cache(outputs):
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else getattr(outputs, "past_key_values", None)


def filter_top_p(logits: Tensor, top_p: float) -> Tensor:
    """Logits with every token outside the nucleus set to ``-inf``.

    The nucleus is the smallest set of most probable tokens whose total probability is >= ``top_p``
    (the most probable token is always kept). ``top_p >= 1`` returns ``logits`` unchanged.
    """
    if top_p >= 1.0:
        return logits
    if not 0.0 < top_p:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    # drop a token when the tokens before it already reach top_p
    drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(logits: Tensor, *, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """One token per row of ``logits [N, V]``: argmax when ``temperature == 0``, else a draw from
    ``softmax(filter_top_p(logits / temperature))``."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = filter_top_p(logits.float() / temperature, top_p)
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def checked_request(prompts: Sequence[Sequence[int]], k: int, max_new_tokens: int) -> list[list[int]]:
    """The prompts as lists, after checking a sampling request (``k`` and ``max_new_tokens`` >= 1, no empty
    prompt): shared by every generation backend."""
    if k < 1 or max_new_tokens < 1:
        raise ValueError(f"k and max_new_tokens must be >= 1, got k={k}, max_new_tokens={max_new_tokens}")
    prompts = [list(p) for p in prompts]
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty (the first token needs a context)")
    return prompts


def _left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int, device) -> tuple[Tensor, Tensor, Tensor]:
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids):] = torch.as_tensor(list(ids), dtype=torch.long)
        mask[row, width - len(ids):] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids.to(device), mask.to(device), positions.to(device)


@torch.no_grad()
def sample_groups(model, prompts: Sequence[Sequence[int]], k: int, *, max_new_tokens: int = 64,
                  temperature: float = 1.0, top_p: float = 1.0, eos_token_id: int | None = None,
                  pad_token_id: int = 0, seed: int | None = None, generator: torch.Generator | None = None,
                  prefill: str = "shared", decoder: str = "auto") -> SampledGroups:
    """Sample ``k`` completions for each prompt from a causal LM.

    Parameters
    ----------
    model : transformers causal LM
        Any model whose forward takes ``attention_mask``, ``position_ids``, a key/value cache and
        ``logits_to_keep`` (Llama-, GPT-2-, Qwen-style ... models in transformers).
    prompts : sequence of sequence of int
        Prompt token ids (each non-empty; different lengths are left-padded).
    k : int
        Completions per prompt.
    max_new_tokens : int
        Longest completion, EOS included.
    temperature, top_p : float
        See :func:`next_tokens`; ``temperature=0`` is greedy.
    eos_token_id : int, optional
        A row stops after sampling it (default: the model config's ``eos_token_id``).
    pad_token_id : int
        Fills prompt padding (never attended to).
    seed, generator
        The draws use ``generator``, or a new one seeded with ``seed``; the global RNG is not touched.
    prefill : {"shared", "repeated"}
        ``"shared"``: prefill each prompt once and repeat its key/value cache ``k`` times.
        ``"repeated"``: repeat each prompt ``k`` times, then prefill (the usual layout; for checks).
    decoder : {"auto", "transformers"}
        ``"auto"``: decode with :class:`~rankalign.online.lean_decode.LeanDecoder` (the step computed
        straight from the weights) when the model is a Llama-family one it handles and its first step
        agrees with the model's own forward (checked on every call; otherwise a warning and the
        transformers step). ``"transformers"``: always the model's forward.

    Returns
    -------
    SampledGroups
    """
    import time

    if prefill not in PREFILLS:
        raise ValueError(f"unknown prefill {prefill!r}; choose one of {', '.join(PREFILLS)}")
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    prompts = checked_request(prompts, k, max_new_tokens)
    if eos_token_id is None:
        eos_token_id = getattr(model.config, "eos_token_id", None)
        if isinstance(eos_token_id, (list, tuple)):
            eos_token_id = eos_token_id[0]
    device = next(model.parameters()).device
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else int(seed))
    was_training = model.training
    model.eval()
    cache_keyword = _cache_keyword(model)
    try:
        start = time.perf_counter()
        rows = prompts if prefill == "shared" else [p for p in prompts for _ in range(k)]
        input_ids, mask, positions = _left_pad(rows, pad_token_id, device)
        # without padding the model's own causal mask over the cache is the whole story: skip building
        # (and growing) a padding mask at every step
        padded = bool((mask == 0).any())
        outputs = model(input_ids=input_ids, attention_mask=mask if padded else None, position_ids=positions,
                        use_cache=True, logits_to_keep=1)
        cache = _returned_cache(outputs)
        logits = outputs.logits[:, -1, :]
        if prefill == "shared" and k > 1:
            cache.batch_repeat_interleave(k)
            logits = logits.repeat_interleave(k, dim=0)
            mask = mask.repeat_interleave(k, dim=0)
            positions = positions.repeat_interleave(k, dim=0)
        _preallocate(cache, max_new_tokens)
        lean = None
        if decoder == "auto" and max_new_tokens > 1:
            from rankalign.online.lean_decode import LeanDecoder

            try:
                lean = LeanDecoder.build(model, cache, mask if padded else None, max_new_tokens)
            except Exception as error:  # noqa: BLE001 - any failure means: the model's own forward
                _warn_lean(model, f"the lean decoding step could not be set up ({type(error).__name__}: {error})")
        used = "transformers"
        prefill_seconds = time.perf_counter() - start
        start = time.perf_counter()
        n_rows = logits.shape[0]
        position = positions[:, -1]
        done = torch.zeros(n_rows, dtype=torch.bool, device=device)
        tokens, logps = [], []
        for step in range(max_new_tokens):
            token = next_tokens(logits, temperature=temperature, top_p=top_p, generator=generator)
            token = torch.where(done, torch.full_like(token, pad_token_id), token)
            logps.append(torch.log_softmax(logits.float(), dim=-1).gather(1, token[:, None]).squeeze(1))
            tokens.append(token)
            if eos_token_id is not None:
                done = done | (token == eos_token_id)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            if padded:
                mask = torch.cat([mask, torch.ones((n_rows, 1), dtype=mask.dtype, device=device)], dim=1)
            position = position + 1
            if lean is not None and used == "lean":
                logits = lean.step(token, position)
                continue
            # the first step: the lean step runs first, then the model's own step overwrites the cache slot
            # the lean one wrote, so a lean step that disagrees leaves nothing behind
            candidate = None
            if lean is not None:
                try:
                    candidate = lean.step(token, position)
                except Exception as error:  # noqa: BLE001 - the model's step below rewrites the slot
                    _warn_lean(model, f"the lean decoding step failed ({type(error).__name__}: {error})")
                    lean = None
            outputs = model(input_ids=token[:, None], attention_mask=mask if padded else None,
                            position_ids=position[:, None], use_cache=True, logits_to_keep=1,
                            **{cache_keyword: cache})
            cache = _returned_cache(outputs)
            logits = outputs.logits[:, -1, :]
            if candidate is not None:
                used, lean = _check_lean(lean, model, candidate, logits)
        decode_seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
    token_grid = torch.stack(tokens, dim=1).tolist()
    logp_grid = torch.stack(logps, dim=1).tolist()
    completions, completion_logps, finished = [], [], []
    for b in range(len(prompts)):
        group, group_logps, group_finished = [], [], []
        for j in range(k):
            row = token_grid[b * k + j]
            length = row.index(eos_token_id) + 1 if eos_token_id is not None and eos_token_id in row else len(row)
            group.append(row[:length])
            group_logps.append(logp_grid[b * k + j][:length])
            group_finished.append(eos_token_id is not None and length > 0 and row[length - 1] == eos_token_id)
        completions.append(group)
        completion_logps.append(group_logps)
        finished.append(group_finished)
    return SampledGroups(prompt_ids=prompts, completion_ids=completions, token_logps=completion_logps,
                         finished=finished, seconds={"prefill": prefill_seconds, "decode": decode_seconds},
                         decoder=used)


_WARNED: set = set()


def _check_lean(lean, model, candidate, reference):
    """``("lean", lean)`` when the lean step's logits ``candidate`` match the transformers step's
    ``reference``, else a warning (once per model class) and ``("transformers", None)``."""
    from rankalign.online.lean_decode import agrees

    ok, difference = agrees(candidate, reference)
    if ok:
        return "lean", lean
    _warn_lean(model, f"the lean decoding step differs from the model's forward by {difference:.3g} in the logits")
    return "transformers", None


def _warn_lean(model, why: str) -> None:
    """Say once per model class why decoding falls back to the model's forward."""
    name = type(model).__name__
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(f"{name}: {why}; decoding with the model's forward", stacklevel=4)


__all__ = ["DECODERS", "PREFILLS", "SampledGroups", "sample_groups", "next_tokens", "filter_top_p", "vllm_available"]
