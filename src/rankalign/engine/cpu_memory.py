"""Keep freed CPU memory in the process for reuse, so that training steps stop page-faulting (glibc only).

PyTorch allocates CPU tensors with plain ``malloc``/``free``. glibc serves a request above its mmap
threshold (128 KiB, rising with use to at most 32 MiB) with pages of its own mapping and unmaps them on
``free``, and it returns the top of its heap to the kernel once more than ``M_TRIM_THRESHOLD`` of it is
free. A training step frees its activations and allocates the same sizes again in the next step, so every
step the kernel maps and zero-fills those pages anew. On SmolLM2-135M (a DPO step over four pairs with
prompts of 256 and responses of 64 tokens, 2 CPU cores) that is about 190,000 minor page faults and 1-2 s
of kernel time in a 13 s step; with the settings below, none after the first two steps, and the step is
about 7% faster (README, "Benchmarks on the real model").

:func:`retain_freed_memory` sets, through ``mallopt(3)``:

* ``M_ARENA_MAX = 1``: every thread allocates from the main arena (the heap). Without it, a thread's own
  arena could not serve a request larger than its 64 MiB heap once the next setting forbids mmap.
* ``M_MMAP_MAX = 0``: no request gets a mapping of its own; large blocks come from the heap too, and a
  freed block is reused by the next request that fits.
* ``M_TRIM_THRESHOLD = -1``: never give the free top of the heap back to the kernel.
* ``M_TOP_PAD = 64 MiB``: grow the heap in steps of at least 64 MiB.

The cost: the process keeps its peak of allocated memory until it exits (as PyTorch's CUDA caching
allocator keeps GPU memory), and peak RSS rises by a few percent (fragmentation). The settings are for the
whole process and are not undone. rankalign applies them when a CPU training or scoring loop starts
(:class:`rankalign.train.PreferenceTrainer`, :func:`rankalign.reward.train_reward_model`, the on-policy
loops, :func:`rankalign.engine.score_lists`); ``RANKALIGN_CPU_MALLOC=default`` in the environment leaves
malloc as it is. Elsewhere than glibc (macOS, musl, Windows) nothing changes.

:func:`preallocate_optimizer_state` is the other half. Adam and AdamW create their state (two tensors the
size of the trainable parameters) lazily, inside the first ``optimizer.step()``, which runs after the
first step's activations are freed: the state takes their place in the heap, so the second step's
activations need new memory and fault again (on SmolLM2, ~280,000 faults and 2.5 s of kernel time in the
second step). Creating the state before the first forward pass puts it below the activations, and from
the second step on no step faults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

#: environment variable; "default" leaves malloc's settings alone
ENV_VARIABLE = "RANKALIGN_CPU_MALLOC"

# mallopt(3) parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_TOP_PAD, 64 << 20))

_applied: bool | None = None  # None: not tried yet in this process


def _glibc():
    """The C library when it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``), else None."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError outside glibc
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def retain_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (module docstring); True when the settings hold.

    Idempotent: the first call decides for the process. Returns False, changing nothing, when
    ``RANKALIGN_CPU_MALLOC=default`` is set, when the C library is not glibc, or when ``mallopt`` refuses a
    setting (the settings it accepted before stay).
    """
    global _applied
    if _applied is not None:
        return _applied
    mode = os.environ.get(ENV_VARIABLE, "retain").strip().lower()
    if mode not in ("retain", "default"):
        raise ValueError(f"{ENV_VARIABLE}={mode!r}: expected 'retain' or 'default'")
    if mode == "default":
        _applied = False
        return False
    libc = _glibc()
    if libc is None:
        _applied = False
        return False
    _applied = all(libc.mallopt(parameter, value) == 1 for parameter, value in _SETTINGS)
    if _applied:
        logger.info("CPU memory: glibc malloc keeps freed memory for reuse (no mmap per block, no trimming); "
                    "%s=default turns this off", ENV_VARIABLE)
    return _applied


def retain_if_cpu(device) -> bool:
    """:func:`retain_freed_memory` when ``device`` (a ``torch.device``, a string or a module) is the CPU."""
    if hasattr(device, "parameters"):  # a module: the device of its first parameter
        parameter = next(iter(device.parameters()), None)
        device = parameter.device if parameter is not None else "cpu"
    if str(device).split(":")[0] != "cpu":
        return False
    from .._mkl_avx2 import announce_once

    announce_once()  # the other CPU setting: which oneMKL kernels the matrix products run (rankalign/_mkl_avx2.py)
    return retain_freed_memory()


def preallocate_optimizer_state(optimizer) -> bool:
    """Create the state of a fresh ``torch.optim.Adam`` / ``AdamW`` now rather than in its first step.

    The state comes from the optimizer's own code: one ``step()`` with every gradient zero, the learning
    rate and weight decay 0, after which the step counters are set back to 0. With zero gradients the moment
    estimates stay exactly 0 and every parameter is unchanged (its update is ``0 * 0 / (0 + eps)``), so
    training continues bit for bit as without this call; gradients are None afterwards. Returns False,
    changing nothing, for any other optimizer, one that already has state (a resumed run), or parameters
    that already hold gradients. Meant for the CPU (module docstring); on a GPU the caching allocator
    already reuses the memory.
    """
    import torch

    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW) or len(optimizer.state):
        return False
    parameters = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    if not parameters or any(p.grad is not None for p in parameters):
        return False
    saved = [(group["lr"], group["weight_decay"]) for group in optimizer.param_groups]
    try:
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = 0.0, 0.0
        for p in parameters:
            p.grad = torch.zeros_like(p)
        optimizer.step()
    except BaseException:
        optimizer.state.clear()  # no half-made state: the first real step creates it as usual
        raise
    finally:
        for group, (lr, weight_decay) in zip(optimizer.param_groups, saved):
            group["lr"], group["weight_decay"] = lr, weight_decay
        for p in parameters:
            p.grad = None
    for state in optimizer.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            step.zero_()
        elif step is not None:
            state["step"] = type(step)(0)
    return True


__all__ = ["ENV_VARIABLE", "retain_freed_memory", "retain_if_cpu", "preallocate_optimizer_state"]
