"""Summed response log-probs from a causal LM, with the output head applied only where it is needed.

``sequence_logps`` runs the model's base transformer once over a :class:`PackedBatch`, selects the hidden
states that predict response tokens (prompt positions need hidden states for attention, not logits),
and applies the output projection to those positions only, ``chunk_size`` rows at a time. Each chunk's
log-probability of the target token is ``logit[target] - logsumexp(logits)``, so a ``[tokens, vocab]``
float32 log-softmax is never built, and the backward pass is written by hand (one softmax per chunk,
no autograd temporaries). With ``recompute_head`` the chunks' logits are recomputed in the backward pass
instead of being kept (as in "Cut Your Losses in Large-Vocabulary Language Models", Wijmans et al.
2024, without the fused kernel): peak memory is one chunk of logits, at the price of one more head
matmul.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import describe_attention, structured_attention
from .packing import PackedBatch, pack_lists
from .tokenize import TokenizedList

# recompute_head=None switches to recomputation above this many logits (256 MiB in float32)
RECOMPUTE_ABOVE_LOGITS = 1 << 26


# ---------------------------------------------------------------------------------------- model parts
def unwrap_model(model):
    """The ``PreTrainedModel`` under PEFT/DDP wrappers (LoRA layers stay in place, so they still apply)."""
    while True:
        if hasattr(model, "get_base_model") and callable(model.get_base_model) and model.get_base_model() is not model:
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module  # DistributedDataParallel and friends
        else:
            return model


def base_model_of(model):
    """The base transformer of a causal LM (``model.model``, ``model.transformer``); a base model itself.

    PEFT and DDP wrappers are looked through (:func:`unwrap_model`).
    """
    model = unwrap_model(model)
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    if isinstance(base, torch.nn.Module) and base is not model:
        return base
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        decoder = get_decoder()
        if isinstance(decoder, torch.nn.Module):
            return decoder
    return model


def decoder_and_head(model):
    """``(base transformer, output projection)`` of a causal LM (``model.model``/``model.transformer``)."""
    head = unwrap_model(model).get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(unwrap_model(model)).__name__} has no output embeddings (lm_head); is it a causal LM?")
    return base_model_of(model), head


# ---------------------------------------------------------------------------------------- distributed wrappers
# Backends under which the engine's split forward (decoder once, head at response positions only) is
# known to compute what a single process computes (tests/test_train_scaleout.py holds them to it).
SPLIT_FORWARD_BACKENDS = ("none", "ddp", "fsdp2", "deepspeed")


def call_as_forward(module, fn, *args, wrapper=None, **kwargs):
    """``fn(*args, **kwargs)`` run as ``module``'s forward, through ``(wrapper or module)(*args, **kwargs)``.

    Distributed training does its work in hooks around a module's forward: DistributedDataParallel
    prepares its gradient reducer in its forward; FSDP2 (``fully_shard``) all-gathers a shard unit's
    parameters in the unit's forward pre-hook and registers the backward's re-gather and reduce-scatter
    on the forward's outputs; DeepSpeed ZeRO-3 does the same for every submodule. The engine calls the
    decoder and the output head itself, so it runs that computation as the forward of the module the
    hooks belong to. ``module.forward`` is pointed at ``fn`` for exactly one call (restored before
    ``fn`` runs, so ``fn`` may call the real forward); an instance ``forward`` that was there before
    (accelerate's mixed-precision wrapper) is put back, not deleted.
    """
    saved = module.__dict__.get("forward")

    def restore():
        if saved is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = saved

    def once(*call_args, **call_kwargs):
        restore()
        return fn(*call_args, **call_kwargs)

    module.forward = once
    try:
        return (module if wrapper is None else wrapper)(*args, **kwargs)
    finally:
        restore()


def _fsdp2_class():
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return None
    return FSDPModule


def _own_class(module) -> type:
    """The class a module was built as: ``fully_shard`` swaps in ``FSDP<Class>(FSDPModule, Class)``."""
    cls, fsdp_module = type(module), _fsdp2_class()
    if fsdp_module is not None and issubclass(cls, fsdp_module):
        return next(base for base in cls.__bases__ if not issubclass(base, fsdp_module))
    return cls


def _wrapper_chain(model):
    """``model`` and every module :func:`unwrap_model` steps through on the way to the causal LM."""
    chain = [model]
    while True:
        current = chain[-1]
        if hasattr(current, "get_base_model") and callable(current.get_base_model) \
                and current.get_base_model() is not current:
            nxt = current.get_base_model()
        elif hasattr(current, "module") and isinstance(current.module, torch.nn.Module):
            nxt = current.module
        else:
            return chain
        if nxt in chain:
            return chain
        chain.append(nxt)


def distributed_backend(model) -> tuple[str, torch.nn.Module | None]:
    """``(backend, module whose forward must see the computation)`` for ``model``.

    Backends: ``"none"`` (a plain module, nothing to route), ``"ddp"`` (DistributedDataParallel),
    ``"deepspeed"`` (a DeepSpeed engine, any ZeRO stage), ``"fsdp2"`` (``fully_shard``: the outermost
    sharded module of the wrapper chain, PEFT included), ``"fsdp1"`` (FullyShardedDataParallel) and
    ``"wrapper:<Class>"`` for any other module wrapper with a ``.module``.
    """
    fsdp_module = _fsdp2_class()
    for current in _wrapper_chain(model):
        if fsdp_module is not None and isinstance(current, fsdp_module):
            return "fsdp2", current
        inner = getattr(current, "module", None)
        if not isinstance(inner, torch.nn.Module) or hasattr(current, "get_base_model"):
            continue
        name = type(current).__name__
        if isinstance(current, torch.nn.parallel.DistributedDataParallel):
            return "ddp", current
        if type(current).__module__.startswith("deepspeed"):
            return "deepspeed", current
        if name == "FullyShardedDataParallel":
            return "fsdp1", current
        return f"wrapper:{name}", current
    return "none", None


def _in_backend_forward(model, compute):
    """``compute()`` run inside the forward of the module the distributed backend hooks (see
    :func:`call_as_forward`); directly when there is none. ``compute`` must not route again."""
    backend, owner = distributed_backend(model)
    if owner is None:
        return compute()
    if backend == "fsdp2":
        return call_as_forward(owner, compute)
    return call_as_forward(owner.module, compute, wrapper=owner)


def _announce_fallback(model, backend: str) -> None:
    """Say once per model that the engine falls back to the model's own forward, and why."""
    inner = unwrap_model(model)
    if getattr(inner, "_rankalign_fallback_announced", None) == backend:
        return
    warnings.warn(f"engine: backend {backend} is not one the split forward supports "
                  f"({', '.join(SPLIT_FORWARD_BACKENDS)}); log-probs come from the model's own forward (the "
                  "output head at every position: [tokens, vocab] logits in memory), layout unchanged",
                  stacklevel=3)
    try:
        inner._rankalign_fallback_announced = backend
    except AttributeError:
        pass


def _logit_transform(model):
    """Scaling/capping some architectures apply to logits after the head (None when there is none)."""
    config = unwrap_model(model).config
    scale = getattr(config, "logit_scale", None)          # Cohere multiplies
    divide = getattr(config, "logits_scaling", None)      # Granite divides
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2 caps with tanh
    if not scale and not divide and not cap:
        return None

    def transform(logits: Tensor) -> Tensor:
        if scale:
            logits = logits * scale
        if divide:
            logits = logits / divide
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return transform


# ---------------------------------------------------------------------------------------- chunked gather
def _chunk_logps(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, transform=None) -> Tensor:
    logits = F.linear(hidden, weight, bias).float()
    if transform is not None:
        logits = transform(logits)
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


class _ChunkedTokenLogps(torch.autograd.Function):
    """``log softmax(h W^T + b)[target]`` per row, a chunk of rows at a time, with a hand-written backward.

    d logp_n / d logits_n = onehot(target_n) - softmax(logits_n), so with upstream gradient g_n the
    gradient of the logits is ``G = g * (onehot - softmax)`` chunk by chunk; then ``dh = G W``,
    ``dW = G^T h`` and ``db = sum_n G_n``. The softmax of each chunk is either kept from the forward pass
    (``recompute=False``: fewest passes over the logits, memory N x vocab) or recomputed in the backward
    pass (``recompute=True``: one chunk of logits in memory, one more matmul). Both are cheaper than
    autograd through ``gather`` and ``logsumexp``, which materialises several ``[N, vocab]`` temporaries.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, recompute):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        kept = []
        for start in range(0, hidden.shape[0], chunk_size):
            stop = start + chunk_size
            logits = F.linear(hidden[start:stop], weight, bias).float()
            log_norm = torch.logsumexp(logits, dim=-1)
            out[start:stop] = logits.gather(1, targets[start:stop, None]).squeeze(1) - log_norm
            if not recompute:
                kept.append(logits.sub_(log_norm[:, None]).exp_())  # softmax, in place
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk_size, ctx.kept = chunk_size, kept
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = None  # the first chunk's product allocates it (no zero fill of a vocab x hidden matrix)
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if (need_bias and bias is not None) else None
        for number, start in enumerate(range(0, hidden.shape[0], ctx.chunk_size)):
            stop = start + ctx.chunk_size
            h = hidden[start:stop]
            g = grad_out[start:stop].float()
            if ctx.kept:
                # in place: the kept softmax is used once (ctx.kept is dropped below, so a second
                # backward with retain_graph recomputes it instead)
                grad_logits = ctx.kept[number].mul_(-g[:, None])
                ctx.kept[number] = None
            else:
                grad_logits = torch.softmax(F.linear(h, weight, bias).float(), dim=-1).mul_(-g[:, None])
            grad_logits.scatter_add_(1, targets[start:stop, None], g[:, None])
            if need_hidden:
                grad_hidden[start:stop] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_weight:
                if grad_weight is None:
                    grad_weight = grad_logits.t() @ h.float()
                else:
                    grad_weight.addmm_(grad_logits.t(), h.float())
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        ctx.kept = None
        if need_weight and grad_weight is None:  # no rows
            grad_weight = torch.zeros_like(weight)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def gather_token_logps(hidden: Tensor, head: torch.nn.Module, targets: Tensor, *, chunk_size: int = 1024,
                       recompute_head: bool | None = None, transform=None) -> Tensor:
    """``log p(target_n | hidden_n)`` for each row n, with the head applied ``chunk_size`` rows at a time.

    Parameters
    ----------
    hidden : Tensor [N, H]
        Final hidden states at the positions that predict the targets.
    head : torch.nn.Linear
        The output projection (``model.get_output_embeddings()``).
    targets : Tensor [N] long
    chunk_size : int
        Rows per head application: at most ``chunk_size x vocab`` float32 logits exist at once (in the
        forward pass; in the backward pass too with ``recompute_head``).
    recompute_head : bool, optional
        Recompute each chunk's softmax in the backward pass instead of keeping it. None: recompute only
        when ``N x vocab`` exceeds :data:`RECOMPUTE_ABOVE_LOGITS` (kept softmaxes cost ``4 N vocab`` bytes).
    transform : callable, optional
        Applied to float32 logits before the softmax (logit scaling or soft-capping).

    Returns
    -------
    Tensor [N] float32
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if _own_class(head) is not torch.nn.Linear:
        # any other module (e.g. a LoRA-wrapped lm_head): call it rather than reading its weight
        pieces = []
        for start in range(0, hidden.shape[0], chunk_size):
            logits = head(hidden[start:start + chunk_size]).float()
            if transform is not None:
                logits = transform(logits)
            t = targets[start:start + chunk_size]
            pieces.append(logits.gather(1, t[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1))
        return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)

    def gather(hidden, targets):
        # head.weight is read inside the head's own forward, where FSDP2 and ZeRO-3 have gathered it
        weight, bias = head.weight, head.bias
        recompute = recompute_head
        if recompute is None:
            recompute = torch.is_grad_enabled() and hidden.shape[0] * weight.shape[0] > RECOMPUTE_ABOVE_LOGITS
        if transform is None:
            if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
                recompute = True  # nothing will be saved anyway
            return _ChunkedTokenLogps.apply(hidden, weight, bias, targets, chunk_size, bool(recompute))
        pieces = [_chunk_logps(hidden[start:start + chunk_size], weight, bias, targets[start:start + chunk_size],
                               transform) for start in range(0, hidden.shape[0], chunk_size)]
        return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)

    return call_as_forward(head, gather, hidden, targets)


# ---------------------------------------------------------------------------------------- the base forward
def _device(model) -> torch.device:
    return next(unwrap_model(model).parameters()).device


def _weight_dtype(model) -> torch.dtype:
    for parameter in unwrap_model(model).parameters():
        if parameter.dtype.is_floating_point:
            return parameter.dtype
    return torch.float32


def attention_mask_for(model, batch: PackedBatch) -> Tensor:
    """The attention mask the base transformer gets for ``batch``.

    The duplicated layout's ``[R, T]`` 0/1 mask is passed as is (transformers builds its own causal
    mask from it). The shared layout's block mask goes in as a 4D *additive* mask in the dtype the
    attention scores are computed in: the autocast dtype when autocast is on, else the weights' dtype.
    Built once per forward, it then reaches every layer unchanged: ``scaled_dot_product_attention``
    would turn a boolean mask into an additive one at every call (every layer, forward and backward),
    and autocast would cast a float32 mask to bfloat16 at every call.
    """
    mask = batch.attention_mask
    if batch.layout != "shared":
        return mask
    device_type = mask.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else _weight_dtype(model)
    if mask.dtype == dtype:
        return mask
    allowed = mask if mask.dtype == torch.bool else mask == 0
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def _structured_attention_enabled(model) -> bool:
    """False when the model opted out of :mod:`rankalign.engine.attention` (``rankalign_structured_attention``)."""
    return getattr(unwrap_model(model), "rankalign_structured_attention", True) is not False


def _hidden_states(model, batch: PackedBatch, base=None) -> Tensor:
    base = base_model_of(model) if base is None else base
    with structured_attention(base, batch, enabled=_structured_attention_enabled(model)):
        outputs = base(input_ids=batch.input_ids, attention_mask=attention_mask_for(model, batch),
                       position_ids=batch.position_ids, use_cache=False)
    return outputs[0] if not hasattr(outputs, "last_hidden_state") else outputs.last_hidden_state


def base_hidden_states(model, batch: PackedBatch, base=None) -> Tensor:
    """``[R, T, H]`` final hidden states of the base transformer of ``model`` over a packed batch.

    Under a distributed wrapper (DDP, FSDP2, DeepSpeed) the call runs inside the wrapper's forward
    (:func:`call_as_forward`).
    """
    return _in_backend_forward(model, lambda: _hidden_states(model, batch, base))


def _token_logps(model, batch: PackedBatch, chunk_size: int, recompute_head: bool | None,
                 hidden: Tensor | None = None) -> Tensor:
    """``[N]`` log-probability of every response token of the batch (``batch.target_ids``); no routing."""
    base, head = decoder_and_head(model)
    if hidden is None:
        hidden = _hidden_states(model, batch, base)
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.target_index)
    return gather_token_logps(hidden, head, batch.target_ids, chunk_size=chunk_size,
                              recompute_head=recompute_head, transform=_logit_transform(model))


def _own_forward_token_logps(owner, model, batch: PackedBatch) -> Tensor:
    """``[N]`` response-token log-probs from the wrapped model's own forward (logits at every position)."""
    outputs = owner(input_ids=batch.input_ids, attention_mask=attention_mask_for(model, batch),
                    position_ids=batch.position_ids, use_cache=False)
    logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
    flat = logits.reshape(-1, logits.shape[-1]).index_select(0, batch.target_index).float()
    return flat.gather(1, batch.target_ids[:, None]).squeeze(1) - torch.logsumexp(flat, dim=-1)


def _routed_token_logps(model, batch: PackedBatch, chunk_size: int, recompute_head: bool | None) -> Tensor:
    """:func:`_token_logps` inside the distributed backend's forward; for a backend the split forward
    does not support, the model's own forward, said once (:func:`_announce_fallback`)."""
    backend, owner = distributed_backend(model)
    if backend in SPLIT_FORWARD_BACKENDS:
        return _in_backend_forward(model, lambda: _token_logps(model, batch, chunk_size, recompute_head))
    _announce_fallback(model, backend)
    return _own_forward_token_logps(owner, model, batch)


def _sum_per_response(batch: PackedBatch, token_logps: Tensor) -> Tensor:
    sums = token_logps.new_zeros(batch.num_lists * batch.max_k)
    sums = sums.index_add(0, batch.target_segment, token_logps)
    return sums.view(batch.num_lists, batch.max_k)


def _forward_logps(model, batch: PackedBatch, chunk_size: int, recompute_head: bool | None) -> Tensor:
    return _sum_per_response(batch, _routed_token_logps(model, batch, chunk_size, recompute_head))


# ---------------------------------------------------------------------------------------- layout support
_FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3", "paged_attention")
_SPECIAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id",
                         "cls_token_id", "mask_token_id", "decoder_start_token_id")

# The probe list: a prompt and three responses; the second is short and follows a long first one, so a
# model that lets it see the first response (an ignored mask) changes its values by far more than rounding.
_PROBE_PROMPT_LENGTH, _PROBE_RESPONSE_LENGTHS = 6, (12, 4, 8)
# Tolerances of the layout probe. Float32 rounding moves a token's log-prob by ~1e-6 to 1e-5 and a final
# hidden state by ~1e-6 of its norm (on SmolLM2's real weights: 1.1e-5 and 1.2e-6; summed over a long
# response, ~3e-4); a model that lets a response see another response (an ignored block mask) moves them
# by 1e-2 to 1, even with random weights. Half precision rounds ~1e4 times more coarsely.
PROBE_TOLERANCES = {
    "float32": {"token_atol": 1e-3, "token_rtol": 1e-4, "hidden_rtol": 1e-3},
    "half": {"token_atol": 5e-2, "token_rtol": 1e-2, "hidden_rtol": 1e-1},
}


@dataclass(frozen=True)
class LayoutProbe:
    """The verdict on whether a model computes the shared layout correctly, and why.

    Attributes
    ----------
    accepted : bool
    reason : str
        One sentence: what was compared, the largest difference and the tolerance; for a rejection,
        the comparison that failed with both values.
    token_difference, hidden_difference : float or None
        Largest token log-prob difference and largest relative hidden-state difference (NaN or None when
        not measured).
    """

    accepted: bool
    reason: str
    token_difference: float | None = None
    hidden_difference: float | None = None


def _vocab_size(inner) -> int:
    """Rows of the input embedding (else of the output head, else ``config.vocab_size``)."""
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(inner, getter, lambda: None)() if hasattr(inner, getter) else None
        weight = getattr(module, "weight", None)
        if weight is not None:
            return int(weight.shape[0])
    return int(inner.config.vocab_size)


def _ordinary_token_ids(model, count: int, seed: int = 0) -> list[int]:
    """``count`` deterministic token ids that are not the config's special ids.

    Drawn from the middle three quarters of the vocabulary: tokenizers put their special and control
    tokens at the start (Llama, SmolLM2) or at the end (GPT-2, Qwen) of the vocabulary, and those can
    have untrained, degenerate embeddings that say nothing about the attention mask.
    """
    inner = unwrap_model(model)
    vocab = _vocab_size(inner)
    special: set[int] = set()
    for field in _SPECIAL_TOKEN_FIELDS:
        value = getattr(inner.config, field, None)
        for token in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(token, int):
                special.add(token)
    low, high = vocab // 8, vocab - vocab // 8
    if high - low < 2 * count:
        low, high = 0, vocab
    generator = torch.Generator().manual_seed(seed)
    drawn = torch.randint(low, high, (4 * count + len(special),), generator=generator).tolist()
    ids = [token for token in drawn if token not in special][:count]
    if len(ids) < count:
        raise ValueError(f"cannot draw {count} ordinary token ids from a vocabulary of {vocab}")
    return ids


def _probe_lengths(inner) -> tuple[int, tuple[int, ...]]:
    """The probe list's prompt and response lengths, shrunk to fit a model with few positions."""
    config = inner.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    total = _PROBE_PROMPT_LENGTH + sum(_PROBE_RESPONSE_LENGTHS)
    if not limit or limit >= total:
        return _PROBE_PROMPT_LENGTH, _PROBE_RESPONSE_LENGTHS
    scale = limit / total
    return (max(1, int(_PROBE_PROMPT_LENGTH * scale)),
            tuple(max(1, int(size * scale)) for size in _PROBE_RESPONSE_LENGTHS))


def _probe_shared_layout(model) -> LayoutProbe:
    """Run one list in both layouts (no autocast, no gradients) and compare.

    Two comparisons, both on ordinary tokens: (1) the final hidden state at every position that
    predicts a response token, ``|h_shared - h_dup| <= hidden_rtol * |h_dup|`` (vector norms); (2) for
    a causal LM, every response token's log-prob, ``|l_shared - l_dup| <= token_atol + token_rtol *
    |l_dup|``. Per token rather than summed, so the tolerance does not depend on response length.
    """
    inner = unwrap_model(model)
    name = type(inner).__name__
    prompt_len, response_lens = _probe_lengths(inner)
    ids = _ordinary_token_ids(model, prompt_len + sum(response_lens))
    responses, start = [], prompt_len
    for size in response_lens:
        responses.append(ids[start:start + size])
        start += size
    probe = TokenizedList(prompt_ids=ids[:prompt_len], response_ids=responses, ranks=list(range(len(responses))))
    dtype = _weight_dtype(model)
    tolerances = PROBE_TOLERANCES["float32" if dtype in (torch.float32, torch.float64) else "half"]
    has_head = inner.get_output_embeddings() is not None if hasattr(inner, "get_output_embeddings") else False
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            results = {}
            for layout in ("shared", "duplicated"):
                batch = pack_lists([probe], layout=layout).to(device)

                def both(batch=batch):
                    hidden = _hidden_states(model, batch)
                    flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.target_index).float()
                    logps = _token_logps(model, batch, 1024, False, hidden=hidden).float() if has_head else None
                    return flat, logps

                results[layout] = _in_backend_forward(model, both)
    except Exception as error:  # a model that rejects 4D masks outright
        return LayoutProbe(False, f"{name} raised {type(error).__name__} when given a 4D attention mask: "
                                  f"{str(error).splitlines()[0] if str(error) else ''}".rstrip(": "))
    finally:
        model.train(was_training)
    # where each probe token sits: (response k, token j)
    cells = [(k, j) for k, size in enumerate(response_lens) for j in range(size)]
    (hidden_shared, logps_shared), (hidden_dup, logps_dup) = results["shared"], results["duplicated"]
    norms = hidden_dup.norm(dim=-1)
    relative = (hidden_shared - hidden_dup).norm(dim=-1) / norms.clamp_min(torch.finfo(torch.float32).tiny)
    worst = int(relative.argmax())
    hidden_difference = float(relative[worst])
    if not hidden_difference <= tolerances["hidden_rtol"]:  # also catches NaN
        k, j = cells[worst]
        return LayoutProbe(False, f"{name}: final hidden state before response {k + 1}, token {j + 1} of the probe "
                                  f"list differs between layouts: norm shared {float(hidden_shared[worst].norm()):.6g}, "
                                  f"duplicated {float(norms[worst]):.6g}, relative difference "
                                  f"{hidden_difference:.3g} > tolerance {tolerances['hidden_rtol']:.3g}",
                           hidden_difference=hidden_difference)
    token_difference = None
    if logps_dup is not None:
        gap = (logps_shared - logps_dup).abs()
        allowed = tolerances["token_atol"] + tolerances["token_rtol"] * logps_dup.abs()
        excess = gap - allowed
        worst = int(torch.nan_to_num(excess, nan=float("inf")).argmax())
        token_difference = float(gap.max())
        if not gap[worst] <= allowed[worst]:
            k, j = cells[worst]
            return LayoutProbe(False, f"{name}: log-prob of response {k + 1}, token {j + 1} of the probe list differs "
                                      f"between layouts: shared {float(logps_shared[worst]):.6g}, duplicated "
                                      f"{float(logps_dup[worst]):.6g}, difference {float(gap[worst]):.3g} > "
                                      f"tolerance {float(allowed[worst]):.3g}",
                               token_difference=token_difference, hidden_difference=hidden_difference)
    compared = (f"token log-probs within {token_difference:.2g} (tolerance {tolerances['token_atol']:g} + "
                f"{tolerances['token_rtol']:g}·|log p|), " if token_difference is not None else "")
    return LayoutProbe(True, f"{name} honours the block attention mask: on a probe list, shared and duplicated "
                             f"{compared}final hidden states within {hidden_difference:.2g} relative (tolerance "
                             f"{tolerances['hidden_rtol']:g})", token_difference=token_difference,
                       hidden_difference=hidden_difference)


def probe_shared_layout(model) -> LayoutProbe:
    """Whether ``model`` computes the shared layout correctly, with the reason (cached on the model).

    A model can declare it by setting ``model.rankalign_shared_layout = True/False``. Flash-attention
    implementations take no custom masks. Otherwise one list is run in both layouts and compared (see
    :func:`_probe_shared_layout`): the shared layout's log-probs must equal the duplicated layout's up
    to rounding (DESIGN.md, "Engine principles").
    """
    inner = unwrap_model(model)
    name = type(inner).__name__
    declared = getattr(inner, "rankalign_shared_layout", None)
    if declared is not None:
        return LayoutProbe(bool(declared), f"{name} declares rankalign_shared_layout = {bool(declared)}")
    implementation = getattr(inner.config, "_attn_implementation", None)
    if implementation in _FLASH_IMPLEMENTATIONS:
        return LayoutProbe(False, f"{name} uses attention implementation {implementation!r}, which takes no "
                                  "custom 4D masks")
    cached = getattr(inner, "_rankalign_layout_probe", None)
    if cached is None:
        cached = _probe_shared_layout(model)
        if not cached.accepted:  # once per model: the verdict is cached below
            warnings.warn(f"shared layout rejected: {cached.reason}; using the duplicated layout", stacklevel=3)
        try:
            inner._rankalign_layout_probe = cached
        except AttributeError:
            pass
    return cached


def supports_shared_layout(model) -> bool:
    """Whether ``model`` computes the shared layout correctly (:func:`probe_shared_layout`'s verdict).

    When the probe rejects a model, a warning (once per model) names the comparison that failed, both
    values, the difference and the tolerance.
    """
    return probe_shared_layout(model).accepted


def choose_layout(model, layout: str = "auto", *, announce: bool = True) -> str:
    """Resolve ``layout`` ("auto", "shared" or "duplicated") for ``model`` and say once which and why.

    "auto" is "shared" when :func:`probe_shared_layout` accepts the model, else "duplicated"; an explicit
    "shared" for a model the probe rejects is also "duplicated" (its results would be wrong). With
    ``announce`` one line goes to stderr the first time a model's layout is chosen (not per batch).
    """
    if layout not in ("auto", "shared", "duplicated"):
        raise ValueError(f"unknown layout {layout!r}; choose auto, shared or duplicated")
    inner = unwrap_model(model)
    if layout == "duplicated":
        chosen, reason = "duplicated", "requested"
    else:
        verdict = probe_shared_layout(model)
        chosen = "shared" if verdict.accepted else "duplicated"
        reason = verdict.reason
    if announce and getattr(inner, "_rankalign_announced_layout", None) != chosen:
        if chosen == "shared":
            reason = f"{reason}; {describe_attention(base_model_of(model), _structured_attention_enabled(model))}"
        _announce(f"layout: {chosen} ({reason})")
        try:
            inner._rankalign_announced_layout = chosen
        except AttributeError:
            pass
    return chosen


def _announce(line: str) -> None:
    """One status line on stderr (rich), so that a command printing JSON to stdout stays machine-readable."""
    from rich.console import Console

    Console(stderr=True, soft_wrap=True, highlight=False).print(line, markup=False)


# ---------------------------------------------------------------------------------------- precision
def _accelerate_mixed_precision() -> str | None:
    """accelerate's configured mixed precision ("bf16", "fp16", ...) when its state exists, else None."""
    try:
        from accelerate.state import AcceleratorState
    except ImportError:
        return None
    if not AcceleratorState._shared_state:
        return None
    return getattr(AcceleratorState(), "mixed_precision", None)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_context(model, precision: str | None = None):
    """The autocast the engine's forward runs in.

    Parameters
    ----------
    precision : {None, "auto", "fp32", "bf16", "fp16"}
        None: the mixed precision ``accelerate`` put around ``model.forward`` (``Accelerator.prepare``
        wraps the forward in autocast and marks the model with ``_original_forward``; the engine calls
        the base transformer and the head itself, so it re-enters the same autocast), else none.
        "auto": that, or else bfloat16 autocast on a CUDA device that supports it when the weights are
        float32 (matmuls in bf16, softmaxes and the log-prob gather in float32); nothing on the CPU.
        "fp32": no autocast. "bf16"/"fp16": that autocast on the model's device.
    """
    if precision not in (None, *PRECISIONS):
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = _device(model)
    if precision == "fp32" or torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    if precision in ("bf16", "fp16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    if getattr(unwrap_model(model), "_original_forward", None) is not None:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(_accelerate_mixed_precision())
        if dtype is not None:
            return torch.autocast(device_type=device.type, dtype=dtype)
    if precision == "auto" and device.type == "cuda" and _weight_dtype(model) == torch.float32 \
            and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _check_positions(model, batch: PackedBatch) -> None:
    """A sequence longer than the model's position range is an error (use tokenize_records' limits)."""
    config = unwrap_model(model).config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not limit or batch.source is None:
        return
    longest = max(len(item.prompt_ids) + max(len(r) for r in item.response_ids) for item in batch.source)
    if longest > limit:
        worst = max(batch.source, key=lambda item: len(item.prompt_ids) + max(len(r) for r in item.response_ids))
        raise ValueError(f"list {worst.index}: prompt + response is {longest} tokens, more than the model's "
                         f"{limit} positions; truncate with tokenize_records(max_prompt_tokens=..., "
                         "max_response_tokens=... or max_length=...)")


def _attention_window(model) -> int | None:
    """The shortest sliding window (or attention chunk) of the model's layers, None when every layer sees the
    whole sequence."""
    config = unwrap_model(model).config
    layer_types = getattr(config, "layer_types", None)
    windows = []
    for field, kind in (("sliding_window", "sliding_attention"), ("attention_chunk_size", "chunked_attention")):
        value = getattr(config, field, None)
        if isinstance(value, int) and value > 0 and (not layer_types or kind in layer_types):
            windows.append(value)
    return min(windows, default=None)


def _exceeds_window(model, batch: PackedBatch) -> int | None:
    """The model's attention window when a list of ``batch`` has a prompt + response longer than it, else None.

    transformers builds a sliding window (or chunk) from token indices, which in the shared layout are not a
    response's positions; a 4D mask is taken as given, without the window. So the shared layout equals the
    duplicated one only while no sequence reaches the window (the layout probe's short list never does).
    """
    window = _attention_window(model)
    if window is None or batch.source is None:
        return None
    longest = max(len(item.prompt_ids) + max(len(r) for r in item.response_ids) for item in batch.source)
    return window if longest > window else None


def _usable_batch(model, batch: PackedBatch) -> PackedBatch:
    """``batch``, repacked as ``"duplicated"`` (with a warning) when the model cannot compute it shared."""
    _check_positions(model, batch)
    window = _exceeds_window(model, batch) if batch.layout == "shared" else None
    if window is not None:
        inner = unwrap_model(model)
        if not getattr(inner, "_rankalign_window_announced", False):
            warnings.warn(f"{type(inner).__name__} attends within a window of {window} tokens and a prompt + "
                          "response of this batch is longer; such batches use the duplicated layout (the "
                          "shared layout's mask would ignore the window)", stacklevel=3)
            try:
                inner._rankalign_window_announced = True
            except AttributeError:
                pass
        return pack_lists(batch.source, layout="duplicated").to(batch.input_ids.device)
    if batch.layout == "shared" and not supports_shared_layout(model):
        if batch.source is None:
            raise ValueError(f"{type(unwrap_model(model)).__name__} does not support the shared layout and this "
                             "batch has no source lists to repack; pack it with layout='duplicated'")
        warnings.warn(f"{type(unwrap_model(model)).__name__} does not compute the shared layout correctly "
                      f"({probe_shared_layout(model).reason}); falling back to the duplicated layout (the prompt "
                      "is computed once per response)", stacklevel=3)
        batch = pack_lists(batch.source, layout="duplicated").to(batch.input_ids.device)
    return batch


def sequence_logps(model, batch: PackedBatch, *, chunk_size: int = 1024,
                   recompute_head: bool | None = None, precision: str | None = None) -> Tensor:
    """Summed log-probability of each response, ``log pi(y_k | x) = sum_t log pi(y_k,t | x, y_k,<t)``.

    Parameters
    ----------
    model : transformers causal LM (PEFT-wrapped is fine)
    batch : PackedBatch
        From :func:`pack_lists`, on the model's device. A ``"shared"`` batch for a model that does not
        support custom 4D masks (:func:`supports_shared_layout`) is repacked as ``"duplicated"`` with a
        warning (the batch must carry its ``source`` lists).
    chunk_size : int
        Positions per output-head application (see :func:`gather_token_logps`).
    recompute_head : bool, optional
        See :func:`gather_token_logps`.
    precision : {None, "auto", "fp32", "bf16", "fp16"}
        The autocast to run in (:func:`autocast_context`). The default follows ``accelerate``: under its
        mixed precision (a model prepared by ``Accelerator(mixed_precision="bf16")``, as
        ``transformers.Trainer`` does) the computation runs in the same autocast as the model's forward.

    Returns
    -------
    Tensor [B, K] float32
        Differentiable; 0 at padding (``ranks == -1``).
    """
    batch = _usable_batch(model, batch)
    with autocast_context(model, precision):
        return _forward_logps(model, batch, chunk_size, recompute_head)


def token_logps(model, batch: PackedBatch, *, chunk_size: int = 1024, recompute_head: bool | None = None,
                precision: str | None = None) -> Tensor:
    """Per-token response log-probs ``log pi(y_k,t | x, y_k,<t)``, flat ``[N]`` in ``batch.target_*`` order.

    The token-level companion of :func:`sequence_logps` (same forward, same layout fallback, same head
    chunking), for objectives that weigh tokens one by one (GRPO's clipped ratio and per-token KL).
    ``batch.target_segment`` says which (list, response) cell each entry belongs to; a response's tokens
    are contiguous and in order. Summing them per segment gives :func:`sequence_logps`.

    Returns
    -------
    Tensor [N] float32, differentiable.
    """
    batch = _usable_batch(model, batch)
    with autocast_context(model, precision):
        return _routed_token_logps(model, batch, chunk_size, recompute_head)
