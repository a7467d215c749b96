"""The optimiser of rankalign's plain training loops (reward models, policy gradients)."""

from __future__ import annotations

import torch


def adamw(parameters, *, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """``torch.optim.AdamW``, fused where every parameter allows it.

    The fused kernel makes one pass over each parameter (CPU and CUDA, floating point) instead of
    foreach's lists of temporaries: about 6x faster for MiniLM's 22.7 M parameters on a CPU. It is what
    ``transformers.Trainer`` (and so TRL) uses by default (``optim="adamw_torch_fused"``). Its state dict
    is the same as the unfused optimiser's, so checkpoints load either way.
    """
    parameters = list(parameters)
    fused = bool(parameters) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=fused or None)


__all__ = ["adamw"]
