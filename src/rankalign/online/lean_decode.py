"""Decoding steps for Llama-family models computed straight from their weights.

A transformers forward for one new token per row spends most of a small model's time outside the
arithmetic: module calls, output classes, mask and cache bookkeeping, the rotary table recomputed each
step. :class:`LeanDecoder` runs the same step as a short loop over the layers, on the weights themselves:

* the query, key and value projections as one matrix product, and the gate and up projections of the MLP
  as another (their weights concatenated once per sampling call, for models of at most
  :data:`FUSE_BELOW_BYTES` of parameters, where the saved per-step overhead matters; larger models keep
  one product per projection and no copy);
* the rotary cosines and sines computed once for every position the call can reach (by the model's own
  rotary module, so scaled RoPE variants give their own tables), rotating the query and key heads together;
* the new key and value written in place into the buffers of the transformers cache that the prefill
  filled (:func:`rankalign.online.generate._preallocate`), attention by ``scaled_dot_product_attention``
  over the filled part, with a key mask only when the prompts were left-padded.

The architecture is the Llama decoder block (Touvron et al. 2023): pre-norm RMSNorm, rotary position
embeddings (Su et al. 2021), grouped-query attention, a gated MLP; ``llama``, ``mistral`` and ``qwen2``
(which adds biases to the q/k/v projections) in transformers. :meth:`LeanDecoder.build` returns ``None``
for anything else: another architecture, adapters (PEFT) wrapped around the projections, a sliding window
shorter than the sequence, per-head query/key norms, RoPE whose table changes with the length (dynamic
NTK, LongRoPE), parameters sharded, offloaded or spread over devices, torch older than 2.5. And
:func:`rankalign.online.sample_groups` checks the first decoding step of every call against the
transformers step before it trusts this one (the logits must agree to float rounding), falling back to
transformers with a warning when they do not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODEL_TYPES = ("llama", "mistral", "qwen2")


def _is_rms_norm(module) -> bool:
    return type(module).__name__.endswith("RMSNorm") and hasattr(module, "weight") and hasattr(module, "variance_epsilon")


def _plain_linear(module) -> bool:
    return type(module) is nn.Linear


# RoPE variants whose tables depend on the sequence length seen so far (transformers updates them as the
# sequence grows): one table computed up front would not be the one the model uses at every step
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")
# fuse the q/k/v (and gate/up) weights into one matrix per layer only below this many bytes of parameters:
# fusing saves per-step overhead, which matters for small models, and costs a copy of most weights
FUSE_BELOW_BYTES = 512 * 2**20


def _torch_supports_it() -> bool:
    """``F.rms_norm`` (torch 2.4) and ``scaled_dot_product_attention(enable_gqa=...)`` (torch 2.5)."""
    try:
        major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 5) and hasattr(F, "rms_norm")


def _unsupported_reason(model, total_length: int) -> str | None:
    """Why :class:`LeanDecoder` cannot run ``model`` (``None``: it can)."""
    if not _torch_supports_it():
        return f"torch {torch.__version__} < 2.5"
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in MODEL_TYPES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {', '.join(MODEL_TYPES)}"
    base = getattr(model, "model", None)
    if base is None or not all(hasattr(base, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return "not the usual <Model>ForCausalLM(model=<Model>Model) structure"
    if not _plain_linear(getattr(model, "lm_head", None)) or not _is_rms_norm(base.norm):
        return "the head or the final norm is not a plain module"
    rope_type = getattr(base.rotary_emb, "rope_type", "default")
    if any(kind in str(rope_type) for kind in _LENGTH_DEPENDENT_ROPE):
        return f"RoPE type {rope_type!r} changes its table with the sequence length"
    devices = {(p.device, p.dtype) for p in model.parameters()}
    if len(devices) != 1 or next(iter(devices))[0].type == "meta":
        return "parameters on several devices or dtypes, or not materialised (sharded, offloaded)"
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and window < total_length:
        return f"sliding window {window} < sequence length {total_length}"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    if len(base.layers) != config.num_hidden_layers:
        return "layers were removed or added"
    for layer in base.layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None:
            return "a layer without self_attn or mlp"
        if not all(_plain_linear(getattr(attn, n, None)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return "an attention projection is not a plain nn.Linear (adapters?)"
        if not all(_plain_linear(getattr(mlp, n, None)) for n in ("gate_proj", "up_proj", "down_proj")):
            return "an MLP projection is not a plain nn.Linear (adapters?)"
        if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
            return "per-head query/key norms"
        if not (_is_rms_norm(layer.input_layernorm) and _is_rms_norm(layer.post_attention_layernorm)):
            return "a layer norm is not an RMSNorm"
        if not hasattr(attn, "scaling") or not hasattr(mlp, "act_fn"):
            return "attention without scaling or MLP without act_fn"
    return None


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Llama's RMSNorm: ``weight * (x / sqrt(mean(x^2) + eps))``, normalised in float32 and cast back
    before the weight (as transformers computes it) for half-precision inputs."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class _Projection:
    """Several linear maps of the same input, outputs concatenated: one matrix product over their stacked
    weights (``fuse``), or one per map (no copy of the weights)."""

    def __init__(self, linears, fuse: bool):
        self.linears = [(linear.weight, linear.bias) for linear in linears]
        self.fused = None
        if fuse:
            biases = [bias for _, bias in self.linears]
            bias = None if all(b is None for b in biases) else torch.cat(
                [b if b is not None else w.new_zeros(w.shape[0]) for w, b in self.linears])
            self.fused = (torch.cat([w for w, _ in self.linears]), bias)

    def __call__(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return F.linear(x, *self.fused)
        return torch.cat([F.linear(x, w, b) for w, b in self.linears], dim=-1)


class LeanDecoder:
    """One-token decoding steps for the rows of a prefilled transformers cache (see the module docstring).

    Build it with :meth:`build` after the prefill (and after the cache was repeated K times and given room
    for the new tokens); :meth:`step` then takes the sampled token and position of every row and returns
    the next logits ``[rows, vocab]``, writing the rows' keys and values into the cache's buffers.
    """

    def __init__(self, model, buffers, allowed: Tensor | None, length: int, positions_needed: int):
        base = model.model
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        first = base.layers[0].self_attn
        self.head_dim = first.q_proj.out_features // self.heads
        self.buffers = buffers
        self.allowed = allowed
        self.length = length
        self.act = base.layers[0].mlp.act_fn
        self.embed = base.embed_tokens.weight
        self.norm = (base.norm.weight, base.norm.variance_epsilon)
        self.head = (model.lm_head.weight, model.lm_head.bias)
        fuse = sum(p.numel() * p.element_size() for p in model.parameters()) <= FUSE_BELOW_BYTES
        self.layers = []
        for layer in base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                _Projection((attn.q_proj, attn.k_proj, attn.v_proj), fuse),
                attn.o_proj.weight, attn.o_proj.bias,
                layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                _Projection((mlp.gate_proj, mlp.up_proj), fuse),
                mlp.down_proj.weight, mlp.down_proj.bias, mlp.gate_proj.out_features, attn.scaling))
        positions = torch.arange(positions_needed, device=self.embed.device)[None]
        cos, sin = base.rotary_emb(self.embed[:1], positions)
        half = self.head_dim // 2
        # rotate_half(x) * sin == roll(x, half) * [-sin_first_half, sin_second_half]
        self.cos, self.sin = cos[0], torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)

    @classmethod
    def build(cls, model, cache, attention_mask: Tensor | None, max_new_tokens: int) -> LeanDecoder | None:
        """A decoder over ``cache`` (a prefilled transformers ``DynamicCache`` whose layers have room for
        ``max_new_tokens`` more positions), or ``None`` when the model or the cache is not one it handles.
        ``attention_mask`` ``[rows, prompt width]`` (1 = real token) is needed when prompts were left-padded."""
        from rankalign.online.generate import _PreallocatedLayer

        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not _PreallocatedLayer for layer in layers):
            return None
        length = layers[0].keys.shape[-2]
        if _unsupported_reason(model, length + max_new_tokens) is not None:
            return None
        buffers = [layer._room for layer in layers]
        if any(keys.shape[-2] < length + max_new_tokens - 1 for keys, _ in buffers):
            return None
        allowed = None
        if attention_mask is not None:
            rows = attention_mask.shape[0]
            allowed = torch.ones((rows, buffers[0][0].shape[-2]), dtype=torch.bool, device=attention_mask.device)
            allowed[:, :length] = attention_mask.bool()
        return cls(model, buffers, allowed, length, length + max_new_tokens)

    @torch.no_grad()
    def step(self, token: Tensor, position: Tensor) -> Tensor:
        """Logits ``[rows, vocab]`` after feeding ``token [rows]`` at ``position [rows]`` (each row's next
        position id); appends the rows' keys and values at the cache's next slot."""
        rows, heads, kv_heads, head_dim, slot = token.shape[0], self.heads, self.kv_heads, self.head_dim, self.length
        hidden = F.embedding(token, self.embed)
        cos, sin = self.cos[position][:, None, :], self.sin[position][:, None, :]
        mask = None if self.allowed is None else self.allowed[:, None, None, :slot + 1]
        for (w_in, eps_in, qkv_proj, w_o, b_o, w_post, eps_post, gate_up_proj, w_down, b_down, inter, scale), \
                (keys, values) in zip(self.layers, self.buffers):
            x = _rms_norm(hidden, w_in, eps_in)
            qkv = qkv_proj(x).view(rows, heads + 2 * kv_heads, head_dim)
            qk = qkv[:, :heads + kv_heads]
            qk = qk * cos + qk.roll(head_dim // 2, dims=-1) * sin
            keys[:, :, slot] = qk[:, heads:]
            values[:, :, slot] = qkv[:, heads + kv_heads:]
            out = F.scaled_dot_product_attention(qk[:, :heads, None], keys[:, :, :slot + 1], values[:, :, :slot + 1],
                                                 attn_mask=mask, scale=scale, enable_gqa=heads != kv_heads)
            hidden = hidden + F.linear(out.reshape(rows, heads * head_dim), w_o, b_o)
            x = _rms_norm(hidden, w_post, eps_post)
            gate_up = gate_up_proj(x)
            hidden = hidden + F.linear(self.act(gate_up[:, :inter]) * gate_up[:, inter:], w_down, b_down)
        self.length = slot + 1
        return F.linear(_rms_norm(hidden, *self.norm), *self.head)


def agrees(lean: Tensor, reference: Tensor) -> tuple[bool, float]:
    """Whether the lean step's logits match transformers' to the rounding of their dtype: the largest
    difference within ``1e-5`` of the largest logit's magnitude (plus ``1e-5``) in float32, ``2e-2`` (plus
    ``1e-2``) in half precision. On the CPU in float32 the two are equal to the last bit; a wrong rotary table
    or a missing bias moves them by far more. Returns ``(ok, largest difference)``."""
    difference = float((lean.float() - reference.float()).abs().max())
    scale = float(reference.float().abs().max())
    if reference.dtype == torch.float32 or reference.dtype == torch.float64:
        return difference <= 1e-5 + 1e-5 * scale, difference
    return difference <= 1e-2 + 2e-2 * scale, difference


__all__ = ["LeanDecoder", "MODEL_TYPES", "agrees"]
