"""Structured attention for the shared layout: each prompt once, causally; each response over its prompt and itself.

The shared layout's additive mask (:func:`rankalign.engine.block_attention_mask`, ``[R, 1, T, T]``) is
exact, but a kernel that takes an arbitrary mask scores every query of a row against every key of it, and
a list's block pattern leaves most of those scores blocked: a prompt of 256 tokens with K = 8 responses of
64 uses 33% of its 768 x 768 scores, with K = 4 responses 44%. This module computes the same attention
from the list structure instead, with ``torch.nn.functional.scaled_dot_product_attention`` twice per layer:

* **prompts**: the B prompts gathered into ``[B, H, P, d]`` (P the longest prompt, shorter ones padded at
  the end), plain causal attention (``is_causal=True``);
* **responses**: the C responses gathered into ``[C, H, L, d]``, each attending to the keys
  ``[its prompt's P keys ; its own L keys]`` through one ``[C, 1, L, P + L]`` mask: a prompt key j is
  visible while j < the prompt's length, an own key j while j <= the query's index.

When the batch is its lists laid end to end, each a prompt of P tokens then K responses of L tokens (equal
lengths, no padding: :attr:`AttentionPlan.regular`), the prompts and responses are slices and views of the
projections instead of gathers, and the output is one concatenation instead of a scatter (forward + backward
of one SmolLM2 layer at two lists of K = 4, 2 threads: 34 -> 28 ms).

A query sees the same keys with the same scores as under the block mask, so the outputs are equal up to
float rounding (the layout probe, :func:`rankalign.engine.probe_shared_layout`, compares the shared layout
against the duplicated one on each model, through this path when it is active). Padding positions of the
packed rows get zeros (nothing reads them: they are never targets and no real query sees them).

When it is used: a shared-layout batch from :func:`rankalign.engine.pack_lists` (it carries
``prompt_spans`` and ``response_spans``) run through the engine's forward on a model whose attention
implementation is ``"sdpa"`` and whose attention modules call transformers' attention interface (Llama,
Qwen2, Mistral, Gemma, ... in transformers 5). Anything else (another implementation, gradient
checkpointing, an encoder, soft-capping, a sliding window shorter than the row, attention sinks, a query
length that is not the batch's) takes the ordinary masked path. A model opts out with
``model.rankalign_structured_attention = False``.

Measured on a 2-core CPU (float32, SmolLM2's 9 query and 3 key-value heads of 64, forward + backward of
one layer, prompt 256, responses 64, one thread): K = 8, 108 -> 49 ms; two lists of K = 4, 80 -> 61 ms;
four pairs, 85 -> 73 ms (README, "Tests and benchmarks").
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLEMENTATION = "rankalign_shared"
_PLAN: contextvars.ContextVar[AttentionPlan | None] = contextvars.ContextVar("rankalign_attention_plan", default=None)


@dataclass
class AttentionPlan:
    """Gather and scatter indices of one shared-layout batch (built by :func:`attention_plan`).

    Attributes
    ----------
    rows, length : int
        The packed batch's ``[R, T]``.
    prompt_index : Tensor [B, P] long
        Flat position (``row * T + t``) of each prompt token; past a prompt's end, its last token again.
    response_index : Tensor [C, L] long
        The same for each response.
    response_list : Tensor [C] long
        Which prompt (row of ``prompt_index``) each response follows.
    allowed : Tensor [C, 1, L, P + L] bool
        Which of ``[prompt keys ; own keys]`` each response query sees.
    destination, source : Tensor [N] long
        Real tokens only: ``out[destination] = cat(prompt outputs, response outputs)[source]``.
    regular : (P, K, L) or None
        Set when the batch is B equal blocks laid end to end, each a prompt of P tokens then K responses of L
        (no padding, lists in order, ``R * T == B * (P + K L)``: a benchmark's or a bucketed batch). The
        prompts and responses are then views of the ``[R, H, T, d]`` projections, with no gather or scatter.
    """

    rows: int
    length: int
    prompt_index: Tensor
    response_index: Tensor
    response_list: Tensor
    allowed: Tensor
    destination: Tensor
    source: Tensor
    regular: tuple[int, int, int] | None = None
    _masks: dict = field(default_factory=dict, repr=False)

    def additive_mask(self, dtype: torch.dtype) -> Tensor:
        """``allowed`` as an additive mask in ``dtype`` (0 or ``finfo.min``), built once per dtype."""
        if dtype not in self._masks:
            blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=self.allowed.device)
            self._masks[dtype] = torch.where(self.allowed, torch.zeros((), dtype=dtype, device=blocked.device),
                                             blocked)
        return self._masks[dtype]


def _spans_index(starts: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """``[n, m]`` flat positions ``start + min(j, length - 1)`` and the ``[n, m]`` mask ``j < length``."""
    width = int(lengths.max())
    offsets = torch.arange(width, device=starts.device)
    valid = offsets[None, :] < lengths[:, None]
    index = starts[:, None] + torch.minimum(offsets[None, :], (lengths - 1)[:, None])
    return index, valid


def attention_plan(batch) -> AttentionPlan | None:
    """The :class:`AttentionPlan` of a shared-layout :class:`~rankalign.engine.PackedBatch`, or None when the
    batch carries no spans (the duplicated layout, or a batch built by hand)."""
    prompt_spans = getattr(batch, "prompt_spans", None)
    response_spans = getattr(batch, "response_spans", None)
    if batch.layout != "shared" or prompt_spans is None or response_spans is None or not len(response_spans):
        return None
    rows, length = batch.input_ids.shape
    prompt_index, prompt_valid = _spans_index(prompt_spans[:, 0], prompt_spans[:, 1])
    response_index, response_valid = _spans_index(response_spans[:, 0], response_spans[:, 1])
    response_list = response_spans[:, 2]
    width_p, width_r = prompt_index.shape[1], response_index.shape[1]
    device = prompt_index.device
    key_p = torch.arange(width_p, device=device)
    key_r = torch.arange(width_r, device=device)
    sees_prompt = (key_p[None, :] < prompt_spans[response_list, 1][:, None])[:, None, :].expand(-1, width_r, -1)
    sees_own = (key_r[None, :] <= key_r[:, None])[None].expand(len(response_list), -1, -1)
    allowed = torch.cat([sees_prompt, sees_own], dim=2).unsqueeze(1)
    prompt_slots = torch.arange(prompt_index.numel(), device=device).view_as(prompt_index)
    response_slots = prompt_index.numel() + torch.arange(response_index.numel(), device=device).view_as(response_index)
    destination = torch.cat([prompt_index[prompt_valid], response_index[response_valid]])
    source = torch.cat([prompt_slots[prompt_valid], response_slots[response_valid]])
    return AttentionPlan(rows=rows, length=length, prompt_index=prompt_index, response_index=response_index,
                         response_list=response_list, allowed=allowed, destination=destination, source=source,
                         regular=_regular_blocks(rows * length, prompt_spans, response_spans))


def _regular_blocks(flat_length: int, prompt_spans: Tensor, response_spans: Tensor) -> tuple[int, int, int] | None:
    """``(P, K, L)`` when the flat batch is its B lists laid end to end in order, each a prompt of P tokens then
    K responses of L tokens with nothing between or after them; else None."""
    lists, responses = len(prompt_spans), len(response_spans)
    if responses % lists:
        return None
    prompt, k, width = int(prompt_spans[0, 1]), responses // lists, int(response_spans[0, 1])
    block = prompt + k * width
    if prompt < 1 or width < 1 or lists * block != flat_length or not (prompt_spans[:, 1] == prompt).all() or not (response_spans[:, 1] == width).all():
        return None
    starts = torch.arange(lists, device=prompt_spans.device) * block
    response_starts = (starts[:, None] + prompt + width * torch.arange(k, device=starts.device)[None, :]).reshape(-1)
    in_order = ((prompt_spans[:, 0] == starts).all() and (response_spans[:, 0] == response_starts).all()
                and (response_spans[:, 2] == torch.arange(lists, device=starts.device).repeat_interleave(k)).all())
    return (prompt, k, width) if in_order else None


def _gather(flat: Tensor, index: Tensor) -> Tensor:
    """``[R * T, h, d]`` -> ``[n, h, m, d]`` at the ``[n, m]`` flat positions ``index``."""
    n, m = index.shape
    return flat.index_select(0, index.reshape(-1)).view(n, m, flat.shape[1], flat.shape[2]).transpose(1, 2)


def _repeat_heads(states: Tensor, groups: int) -> Tensor:
    """Grouped-query attention: each key/value head repeated for its ``groups`` query heads."""
    if groups == 1:
        return states
    n, heads, m, d = states.shape
    return states[:, :, None].expand(n, heads, groups, m, d).reshape(n, heads * groups, m, d)


def _sdpa(query: Tensor, key: Tensor, value: Tensor, groups: int, mask: Tensor | None, dropout: float,
          scaling: float | None) -> Tensor:
    """Causal (``mask=None``) or masked attention; grouped-query heads through SDPA's ``enable_gqa`` where its
    kernels take it with this mask (on the CPU always, which also saves the backward pass the sum over the
    repeated heads; on CUDA only without a mask, else the heads are repeated)."""
    native = groups > 1 and (mask is None or query.device.type == "cpu")
    if groups > 1 and not native:
        key, value = _repeat_heads(key, groups), _repeat_heads(value, groups)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                          is_causal=mask is None, **({"enable_gqa": True} if native else {}))


def _plain_attention(module, plan: AttentionPlan | None, query: Tensor, key: Tensor, kwargs: dict) -> bool:
    """Whether this call is ordinary causal softmax attention over the planned batch (else: the masked path)."""
    if plan is None or kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        return False
    if kwargs.get("position_bias") is not None or kwargs.get("output_attentions"):
        return False
    if kwargs.get("is_causal") is False or not getattr(module, "is_causal", True):
        return False
    window = kwargs.get("sliding_window")
    if window is not None and window < plan.length:
        return False
    return (query.shape[0] == key.shape[0] == plan.rows and query.shape[2] == key.shape[2] == plan.length
            and query.shape[1] % key.shape[1] == 0)


def structured_attention_forward(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                                 dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers attention function (registered as ``"rankalign_shared"``): ``[R, H, T, d]`` query, key
    and value in, ``([R, T, H, d] output, None)`` out. Without an active plan (or for a call it does not
    cover, see the module docstring) it is transformers' ``sdpa`` attention with the given mask."""
    plan = _PLAN.get()
    if not _plain_attention(module, plan, query, key, kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, heads, length, _ = query.shape
    groups = heads // key.shape[1]
    if plan.regular is not None:
        return _regular_attention(plan, query, key, value, groups, dropout, scaling), None
    flat_q = query.transpose(1, 2).reshape(rows * length, heads, query.shape[-1])
    flat_k = key.transpose(1, 2).reshape(rows * length, key.shape[1], key.shape[-1])
    flat_v = value.transpose(1, 2).reshape(rows * length, value.shape[1], value.shape[-1])
    prompt_k, prompt_v = _gather(flat_k, plan.prompt_index), _gather(flat_v, plan.prompt_index)
    prompt_out = _sdpa(_gather(flat_q, plan.prompt_index), prompt_k, prompt_v, groups, None, dropout, scaling)
    response_q = _gather(flat_q, plan.response_index)
    response_k = torch.cat([prompt_k.index_select(0, plan.response_list), _gather(flat_k, plan.response_index)], 2)
    response_v = torch.cat([prompt_v.index_select(0, plan.response_list), _gather(flat_v, plan.response_index)], 2)
    response_out = _sdpa(response_q, response_k, response_v, groups, plan.additive_mask(response_q.dtype), dropout,
                         scaling)
    width = value.shape[-1]
    outputs = torch.cat([prompt_out.transpose(1, 2).reshape(-1, heads, width),
                         response_out.transpose(1, 2).reshape(-1, heads, width)])
    placed = outputs.new_zeros(rows * length, heads, width).index_copy(0, plan.destination,
                                                                       outputs.index_select(0, plan.source))
    return placed.view(rows, length, heads, width), None


def _regular_attention(plan: AttentionPlan, query: Tensor, key: Tensor, value: Tensor, groups: int, dropout: float,
                       scaling: float | None) -> Tensor:
    """The same attention for a batch of equal blocks (``plan.regular``): slices and views instead of gathers."""
    prompt, k, width = plan.regular
    rows, heads, length, _ = query.shape
    block = prompt + k * width
    lists = rows * length // block

    def blocks(x: Tensor) -> Tensor:  # [R, h, T, d] -> [B, h, S, d] (a view when each row holds one list)
        return x.unflatten(2, (length // block, block)).transpose(1, 2).flatten(0, 1)

    def responses(x: Tensor) -> Tensor:  # [B, h, S, d] -> [B, K, h, L, d]
        return x[:, :, prompt:].unflatten(2, (k, width)).transpose(1, 2)

    q, key_blocks, value_blocks = blocks(query), blocks(key), blocks(value)
    prompt_k, prompt_v = key_blocks[:, :, :prompt], value_blocks[:, :, :prompt]
    prompt_out = _sdpa(q[:, :, :prompt], prompt_k, prompt_v, groups, None, dropout, scaling)

    def with_prompt(prompt_part: Tensor, x: Tensor) -> Tensor:  # [B * K, h, P + L, d]
        expanded = prompt_part[:, None].expand(-1, k, -1, -1, -1)
        return torch.cat([expanded, responses(x)], 3).flatten(0, 1)

    mask = plan.additive_mask(query.dtype)[:1]  # every response sees its whole prompt: one mask for all
    response_out = _sdpa(responses(q).flatten(0, 1), with_prompt(prompt_k, key_blocks),
                         with_prompt(prompt_v, value_blocks), groups, mask, dropout, scaling)
    width_v = value.shape[-1]
    response_out = response_out.unflatten(0, (lists, k)).permute(0, 1, 3, 2, 4).reshape(lists, k * width, heads, width_v)
    out = torch.cat([prompt_out.transpose(1, 2), response_out], 1)  # [B, S, H, d]
    return out.reshape(rows, length, heads, width_v)


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(IMPLEMENTATION, structured_attention_forward)
        _registered = True


def _has_causal_attention(base) -> bool:
    """Whether ``base`` has causal self-attention modules (``is_causal = True``, as transformers' decoders set
    it); cached on the model."""
    cached = getattr(base, "_rankalign_causal_attention", None)
    if cached is None:
        cached = any(getattr(module, "is_causal", False) is True for module in base.modules())
        try:
            base._rankalign_causal_attention = cached
        except AttributeError:
            pass
    return cached


def structured_attention_reason(base, enabled: bool = True) -> str | None:
    """Why the base transformer ``base`` cannot take this module's path, or None when it can (``enabled``:
    False when the model opted out)."""
    config = getattr(base, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation != "sdpa":
        return f"attention implementation {implementation!r}, not 'sdpa'"
    if not enabled:
        return "rankalign_structured_attention = False"
    if not _has_causal_attention(base):
        return "no causal attention modules (an encoder)"
    # activation checkpointing recomputes the forward during the backward pass, outside the plan
    checkpointing = getattr(base, "is_activation_checkpointing", None)  # transformers >= 5.x; before, the old name
    if checkpointing if checkpointing is not None else getattr(base, "is_gradient_checkpointing", False):
        return "gradient checkpointing"
    return None


def uses_structured_attention(base, batch, enabled: bool = True) -> bool:
    """Whether the engine's forward of ``batch`` through the base transformer ``base`` takes this module's path."""
    return (getattr(batch, "layout", None) == "shared" and getattr(batch, "prompt_spans", None) is not None
            and structured_attention_reason(base, enabled) is None)


def describe_attention(base, enabled: bool = True) -> str:
    """One phrase for the layout announcement: how the shared layout's attention will be computed."""
    reason = structured_attention_reason(base, enabled)
    if reason is None:
        return "attention: each prompt once, causally, then each response over its prompt and itself"
    return f"attention: the block mask ({reason})"


@contextlib.contextmanager
def structured_attention(base, batch, enabled: bool = True):
    """Run the forward of ``batch`` through ``base`` (a transformers base model) with structured attention
    where :func:`uses_structured_attention` allows it; otherwise a no-op. ``enabled=False``: the model
    opted out (``model.rankalign_structured_attention = False``)."""
    plan = attention_plan(batch) if uses_structured_attention(base, batch, enabled) else None
    if plan is None:
        yield
        return
    _register()
    config = base.config
    token = _PLAN.set(plan)
    previous = config._attn_implementation_internal
    config._attn_implementation_internal = IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation_internal = previous
        _PLAN.reset(token)


__all__ = ["AttentionPlan", "attention_plan", "structured_attention", "structured_attention_forward",
           "uses_structured_attention", "structured_attention_reason", "describe_attention", "IMPLEMENTATION"]
