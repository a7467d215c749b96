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

import torch
import torch.nn.functional as F
from torch import Tensor

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


def decoder_and_head(model):
    """``(base transformer, output projection)`` of a causal LM (``model.model``/``model.transformer``)."""
    model = unwrap_model(model)
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (lm_head); is it a causal LM?")
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if base is None or base is model:
        base = model.get_decoder()
    return base, head


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
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if (need_bias and bias is not None) else None
        for number, start in enumerate(range(0, hidden.shape[0], ctx.chunk_size)):
            stop = start + ctx.chunk_size
            h = hidden[start:stop]
            g = grad_out[start:stop].float()
            if ctx.kept:
                grad_logits = ctx.kept[number] * (-g[:, None])
            else:
                grad_logits = torch.softmax(F.linear(h, weight, bias).float(), dim=-1).mul_(-g[:, None])
            grad_logits.scatter_add_(1, targets[start:stop, None], g[:, None])
            if need_hidden:
                grad_hidden[start:stop] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_weight:
                grad_weight.addmm_(grad_logits.t(), h.float())
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        ctx.kept = None
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
    is_linear = type(head) is torch.nn.Linear
    weight, bias = head.weight, head.bias if is_linear else None
    if recompute_head is None:
        recompute_head = torch.is_grad_enabled() and hidden.shape[0] * weight.shape[0] > RECOMPUTE_ABOVE_LOGITS
    if is_linear and transform is None:
        if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
            recompute_head = True  # nothing will be saved anyway
        return _ChunkedTokenLogps.apply(hidden, weight, bias, targets, chunk_size, bool(recompute_head))
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        if is_linear:
            pieces.append(_chunk_logps(h, weight, bias, t, transform))
        else:  # any other module (e.g. a LoRA-wrapped lm_head): call it rather than reading its weight
            logits = head(h).float()
            if transform is not None:
                logits = transform(logits)
            pieces.append(logits.gather(1, t[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


# ---------------------------------------------------------------------------------------- layout support
_FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3", "paged_attention")


def _probe_shared_layout(model) -> bool:
    """Run a 2-response list both ways and compare: does the model honour a custom 4D mask?"""
    head = unwrap_model(model).get_output_embeddings()
    vocab = head.weight.shape[0]
    # the second response is short and comes after a longer first one: a model that lets it see the
    # first response (an ignored mask) changes its log-probs by far more than rounding
    ids = [i % vocab for i in range(1, 19)]
    probe = TokenizedList(prompt_ids=ids[:3], response_ids=[ids[3:15], ids[15:]], ranks=[0, 1])
    # float32 rounding moves these sums by ~1e-6; half precision by up to ~1e-2
    tolerance = 2e-4 if head.weight.dtype == torch.float32 else 3e-2
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            shared = _forward_logps(model, pack_lists([probe], layout="shared").to(_device(model)), 1024, False)
            duplicated = _forward_logps(model, pack_lists([probe], layout="duplicated").to(_device(model)),
                                        1024, False)
        return bool((shared - duplicated).abs().max() <= tolerance)
    except Exception:  # a model that rejects 4D masks outright
        return False
    finally:
        model.train(was_training)


def _device(model) -> torch.device:
    return next(unwrap_model(model).parameters()).device


def supports_shared_layout(model) -> bool:
    """Whether ``model`` computes the shared layout correctly (accepts a custom 4D additive mask).

    Flash-attention implementations take no custom masks (False). Otherwise a tiny list is run in both
    layouts once and the results compared; the answer is cached on the model object. A model can also
    declare it by setting ``model.rankalign_shared_layout = True/False``.
    """
    inner = unwrap_model(model)
    declared = getattr(inner, "rankalign_shared_layout", None)
    if declared is not None:
        return bool(declared)
    implementation = getattr(inner.config, "_attn_implementation", None)
    if implementation in _FLASH_IMPLEMENTATIONS:
        return False
    cached = getattr(inner, "_rankalign_shared_layout_probe", None)
    if cached is None:
        cached = _probe_shared_layout(model)
        try:
            inner._rankalign_shared_layout_probe = cached
        except AttributeError:
            pass
    return cached


# ---------------------------------------------------------------------------------------- public
def _run_base(model, base, **inputs):
    """Run the base transformer; through a DistributedDataParallel wrapper when there is one.

    DDP must see the forward call (it prepares its gradient reducer there), so its inner module's
    ``forward`` is pointed at the base transformer for the duration of the call.
    """
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return base(**inputs)
    inner = model.module
    saved = inner.__dict__.get("forward")
    inner.forward = lambda **kwargs: base(**kwargs)
    try:
        return model(**inputs)
    finally:
        if saved is None:
            del inner.forward
        else:
            inner.forward = saved


def _forward_logps(model, batch: PackedBatch, chunk_size: int, recompute_head: bool | None) -> Tensor:
    base, head = decoder_and_head(model)
    mask = batch.attention_mask
    dtype = head.weight.dtype if hasattr(head, "weight") else torch.float32
    if batch.layout == "shared" and mask.dtype != dtype and dtype.is_floating_point:
        mask = torch.zeros_like(mask, dtype=dtype).masked_fill_(mask < 0, torch.finfo(dtype).min)
    outputs = _run_base(model, base, input_ids=batch.input_ids, attention_mask=mask,
                        position_ids=batch.position_ids, use_cache=False)
    hidden = outputs[0] if not hasattr(outputs, "last_hidden_state") else outputs.last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.target_index)
    token_logps = gather_token_logps(hidden, head, batch.target_ids, chunk_size=chunk_size,
                                     recompute_head=recompute_head, transform=_logit_transform(model))
    sums = token_logps.new_zeros(batch.num_lists * batch.max_k)
    sums = sums.index_add(0, batch.target_segment, token_logps)
    return sums.view(batch.num_lists, batch.max_k)


def _accelerate_mixed_precision() -> str | None:
    """accelerate's configured mixed precision ("bf16", "fp16", ...) when its state exists, else None."""
    try:
        from accelerate.state import AcceleratorState
    except ImportError:
        return None
    if not AcceleratorState._shared_state:
        return None
    return getattr(AcceleratorState(), "mixed_precision", None)


def _mixed_precision_context(model):
    """The autocast that accelerate put around ``model.forward``, for the engine's direct base-model call.

    ``Accelerator.prepare`` implements mixed precision by wrapping the model's ``forward`` in autocast
    (and marks the model with ``_original_forward``); the engine calls the base transformer and the
    head itself, so it re-enters the same autocast here.
    """
    if getattr(unwrap_model(model), "_original_forward", None) is None:
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(_accelerate_mixed_precision())
    if dtype is None or torch.is_autocast_enabled(_device(model).type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=_device(model).type, dtype=dtype)


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


def sequence_logps(model, batch: PackedBatch, *, chunk_size: int = 1024,
                   recompute_head: bool | None = None) -> Tensor:
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

    Under ``accelerate`` mixed precision (a model prepared by ``Accelerator(mixed_precision="bf16")``,
    as ``transformers.Trainer`` does) the computation runs in the same autocast as the model's forward.

    Returns
    -------
    Tensor [B, K] float32
        Differentiable; 0 at padding (``ranks == -1``).
    """
    _check_positions(model, batch)
    if batch.layout == "shared" and not supports_shared_layout(model):
        if batch.source is None:
            raise ValueError(f"{type(unwrap_model(model)).__name__} does not support the shared layout and this "
                             "batch has no source lists to repack; pack it with layout='duplicated'")
        warnings.warn(f"{type(unwrap_model(model)).__name__} does not honour custom 4D attention masks; "
                      "falling back to the duplicated layout (the prompt is computed once per response)",
                      stacklevel=2)
        batch = pack_lists(batch.source, layout="duplicated").to(batch.input_ids.device)
    with _mixed_precision_context(model):
        return _forward_logps(model, batch, chunk_size, recompute_head)


def token_logps(model, batch: PackedBatch, *, chunk_size: int = 1024, recompute_head: bool | None = None) -> Tensor:
    """Per-token response log-probs ``log pi(y_k,t | x, y_k,<t)``, flat ``[N]`` in ``batch.target_*`` order.

    The token-level companion of :func:`sequence_logps` (same forward, same layout fallback, same head
    chunking), for objectives that weigh tokens one by one (GRPO's clipped ratio and per-token KL).
    ``batch.target_segment`` says which (list, response) cell each entry belongs to; a response's tokens
    are contiguous and in order. Summing them per segment gives :func:`sequence_logps`.

    Returns
    -------
    Tensor [N] float32, differentiable.
    """
    _check_positions(model, batch)
    if batch.layout == "shared" and not supports_shared_layout(model):
        if batch.source is None:
            raise ValueError(f"{type(unwrap_model(model)).__name__} does not support the shared layout and this "
                             "batch has no source lists to repack; pack it with layout='duplicated'")
        batch = pack_lists(batch.source, layout="duplicated").to(batch.input_ids.device)
    with _mixed_precision_context(model):
        base, head = decoder_and_head(model)
        mask = batch.attention_mask
        dtype = head.weight.dtype if hasattr(head, "weight") else torch.float32
        if batch.layout == "shared" and mask.dtype != dtype and dtype.is_floating_point:
            mask = torch.zeros_like(mask, dtype=dtype).masked_fill_(mask < 0, torch.finfo(dtype).min)
        outputs = _run_base(model, base, input_ids=batch.input_ids, attention_mask=mask,
                            position_ids=batch.position_ids, use_cache=False)
        hidden = outputs[0] if not hasattr(outputs, "last_hidden_state") else outputs.last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.target_index)
        return gather_token_logps(hidden, head, batch.target_ids, chunk_size=chunk_size,
                                  recompute_head=recompute_head, transform=_logit_transform(model))
