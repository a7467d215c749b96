"""Decoding steps for Llama-family models computed straight from their weights.

A transformers forward for one new token per row spends most of a small model's time outside the
arithmetic: module calls, output classes, mask and cache bookkeeping, the rotary table recomputed each
step. :class:`LeanDecoder` runs the same step as a short loop over the layers, on the weights themselves:

* the query, key and value projections as one matrix product (their weights concatenated once per
  sampling call), and the gate and up projections of the MLP as another;
* the rotary cosines and sines computed once for every position the call can reach (by the model's own
  rotary module, so scaled RoPE variants give their own tables), rotating the query and key heads together;
* the new key and value written in place into the buffers of the transformers cache that the prefill
  filled (:func:`rankalign.online.generate._preallocate`), attention by ``scaled_dot_product_attention``
  over the filled part, with a key mask only when the prompts were left-padded.

The architecture is the Llama decoder block (Touvron et al. 2023): pre-norm RMSNorm, rotary position
embeddings (Su et al. 2021), grouped-query attention, a gated MLP; ``llama``, ``mistral`` and ``qwen2``
(which adds biases to the q/k/v projections) in transformers. :meth:`LeanDecoder.build` returns ``None``
for anything else: another architecture, adapters (PEFT) wrapped around the projections, a sliding window
shorter than the sequence, per-head query/key norms. And :func:`rankalign.online.sample_groups` checks the
first decoding step of every call against the transformers step before it trusts this one (the logits
must agree to float rounding), falling back to transformers with a warning when they do not.
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


def _unsupported_reason(model, total_length: int) -> str | None:
    """Why :class:`LeanDecoder` cannot run ``model`` (``None``: it can)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in MODEL_TYPES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {', '.join(MODEL_TYPES)}"
    base = getattr(model, "model", None)
    if base is None or not all(hasattr(base, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return "not the usual <Model>ForCausalLM(model=<Model>Model) structure"
    if not _plain_linear(getattr(model, "lm_head", None)) or not _is_rms_norm(base.norm):
        return "the head or the final norm is not a plain module"
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


def _cat_bias(*linears) -> Tensor | None:
    biases = [linear.bias for linear in linears]
    if all(b is None for b in biases):
        return None
    return torch.cat([b if b is not None else linear.weight.new_zeros(linear.out_features)
                      for b, linear in zip(biases, linears)])


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
        self.layers = []
        for layer in base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                _cat_bias(attn.q_proj, attn.k_proj, attn.v_proj),
                attn.o_proj.weight, attn.o_proj.bias,
                layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), _cat_bias(mlp.gate_proj, mlp.up_proj),
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
        for (w_in, eps_in, w_qkv, b_qkv, w_o, b_o, w_post, eps_post, w_gu, b_gu, w_down, b_down, inter, scale), \
                (keys, values) in zip(self.layers, self.buffers):
            x = _rms_norm(hidden, w_in, eps_in)
            qkv = F.linear(x, w_qkv, b_qkv).view(rows, heads + 2 * kv_heads, head_dim)
            qk = qkv[:, :heads + kv_heads]
            qk = qk * cos + qk.roll(head_dim // 2, dims=-1) * sin
            keys[:, :, slot] = qk[:, heads:]
            values[:, :, slot] = qkv[:, heads + kv_heads:]
            out = F.scaled_dot_product_attention(qk[:, :heads, None], keys[:, :, :slot + 1], values[:, :, :slot + 1],
                                                 attn_mask=mask, scale=scale, enable_gqa=heads != kv_heads)
            hidden = hidden + F.linear(out.reshape(rows, heads * head_dim), w_o, b_o)
            x = _rms_norm(hidden, w_post, eps_post)
            gate_up = F.linear(x, w_gu, b_gu)
            hidden = hidden + F.linear(self.act(gate_up[:, :inter]) * gate_up[:, inter:], w_down, b_down)
        self.length = slot + 1
        return F.linear(_rms_norm(hidden, *self.norm), *self.head)


def agrees(lean: Tensor, reference: Tensor) -> tuple[bool, float]:
    """Whether the lean step's logits match transformers' to float rounding: the largest difference
    within ``1e-3`` of the largest logit's magnitude (plus ``1e-4``). Returns ``(ok, largest difference)``."""
    difference = float((lean.float() - reference.float()).abs().max())
    scale = float(reference.float().abs().max())
    return difference <= 1e-4 + 1e-3 * scale, difference


__all__ = ["LeanDecoder", "MODEL_TYPES", "agrees"]
