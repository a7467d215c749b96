"""Sampling through vLLM: the optional generation backend of :mod:`rankalign.online`.

:func:`~rankalign.online.sample_groups` (transformers, the default and the tested backend) runs anywhere.
Where the ``vllm`` package is installed and a CUDA device is present (:func:`vllm_available`),
:class:`VLLMSampler` samples the K completions of each prompt with vLLM instead: one request per prompt
with ``n = K`` (vLLM prefills the prompt once and forks its key/value blocks for the K sequences; prefix
caching also reuses prompts seen in earlier rounds), returning the same :class:`SampledGroups`.

vLLM holds its own copy of the weights. :meth:`VLLMSampler.sync` copies the policy's current weights
into it (the online loop calls it before every round's sampling): through the model object of an
in-process engine (``load_weights`` with the transformers parameter names; PEFT adapters are merged for
the copy and unmerged after). vLLM's engine runs in a separate process by default in recent versions; set
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` so that the engine, and its model, live in this process.

Sampled-token log-probabilities are vLLM's ``logprobs=0`` output: the chosen token's log-probability. vLLM's
V1 engine (the default since 0.8) reports it under the model's raw distribution (its default
``logprobs_mode``), as :func:`sample_groups` does; the older V0 engine reports it after temperature and
top-p. vLLM's ``dtype="auto"`` runs a float32 checkpoint in 16 bits; pass ``dtype="float32"`` for the
training precision.

Each prompt is its own request with its own seed (drawn from the call's ``seed`` and the prompt's place),
so that prompts, and calls with consecutive seeds, do not share random streams. A completion stops at
``eos_token_id`` only (``ignore_eos=True`` with ``stop_token_ids=[eos_token_id]``), as in
:func:`sample_groups`, not at other end-of-sequence ids a checkpoint's generation config may list.

This module is written against vLLM's documented ``LLM`` / ``SamplingParams`` API and tested here with a
stand-in for the ``vllm`` package (this project's machines have no GPU); the transformers backend is the
one every test runs for real.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .generate import SampledGroups, checked_request, vllm_available


def _in_process_model(llm):
    """vLLM's ``nn.Module`` of an in-process engine (the attribute chains of the V0 and V1 engines)."""
    chains = (("llm_engine", "model_executor", "driver_worker", "model_runner", "model"),
              ("llm_engine", "model_executor", "driver_worker", "worker", "model_runner", "model"))
    for chain in chains:
        target = llm
        for name in chain:
            target = getattr(target, name, None)
            if target is None:
                break
        if target is not None and hasattr(target, "load_weights"):
            return target
    raise RuntimeError("cannot reach vLLM's model to load the policy's weights: the engine runs in another "
                       "process (set VLLM_ENABLE_V1_MULTIPROCESSING=0 before creating the sampler) or this vLLM "
                       "version keeps it elsewhere")


def _adapter_parameter_names(model) -> set[str]:
    """The attribute names PEFT's tuner layers keep their adapter weights under (``lora_A``, ``ia3_l`` ...)."""
    names = set()
    for module in model.modules():
        names.update(getattr(module, "adapter_layer_names", ()) or ())
    names.discard("modules_to_save")  # a trained copy of a whole module, kept (policy_weights)
    return names


def policy_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every weight of ``model`` under the transformers checkpoint names vLLM loads.

    For a PEFT model (adapters merged by the caller): the base model's names without PEFT's
    ``base_model.model.`` prefix and ``base_layer`` infixes; adapter tensors left out; a module trained in
    full (``modules_to_save``) under its plain name with its trained copy's weights, the frozen original
    left out."""
    peft = hasattr(model, "peft_config") and hasattr(model, "get_base_model")
    adapters = _adapter_parameter_names(model) if peft else set()
    for name, tensor in model.state_dict().items():
        if peft:
            parts = name.removeprefix("base_model.model.").split(".")
            if "original_module" in parts or any(part in adapters for part in parts):
                continue
            if "modules_to_save" in parts:  # X.modules_to_save.<adapter>.W -> X.W
                at = parts.index("modules_to_save")
                parts = parts[:at] + parts[at + 2:]
            name = ".".join(part for part in parts if part != "base_layer")
        yield name, tensor


def request_seeds(seed: int | None, count: int) -> list[int | None]:
    """One seed per request: 31-bit numbers drawn from ``numpy.random.SeedSequence((seed, i))``, so that
    requests of one call, and calls with nearby seeds, get unrelated streams (``None``: unseeded)."""
    if seed is None:
        return [None] * count
    import numpy as np

    return [int(np.random.SeedSequence((int(seed) % 2**64, i)).generate_state(1)[0] >> 1) for i in range(count)]


class VLLMSampler:
    """K completions per prompt from vLLM (module docstring).

    Parameters
    ----------
    model_path : str or path
        A transformers model folder (safetensors) vLLM loads at start; :meth:`sync` replaces its weights later.
    dtype : str
        vLLM's ``dtype`` (``"auto"``: the checkpoint's).
    gpu_memory_utilization : float
        Share of the GPU's memory vLLM may take (leave the rest to training on the same device).
    seed : int
        The engine's seed.
    llm : object, optional
        An ``vllm.LLM`` built by the caller (the other arguments are then unused).
    **engine_kwargs
        More ``vllm.LLM`` arguments (``max_model_len``, ``enforce_eager`` ...).
    """

    def __init__(self, model_path=None, *, dtype: str = "auto", gpu_memory_utilization: float = 0.3, seed: int = 0,
                 llm=None, **engine_kwargs):
        if llm is None:
            if not vllm_available():
                raise RuntimeError("the vLLM backend needs the vllm package and a CUDA device; use the default "
                                   "transformers backend here")
            if model_path is None:
                raise ValueError("VLLMSampler needs model_path (or an llm built by the caller)")
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: sync()
            from vllm import LLM

            llm = LLM(model=str(model_path), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                      enable_prefix_caching=True, skip_tokenizer_init=True, **engine_kwargs)
        self.llm = llm

    def sync(self, model) -> None:
        """Copy ``model``'s current weights into vLLM's copy."""
        target = _in_process_model(self.llm)
        merge = getattr(model, "merge_adapter", None) if hasattr(model, "peft_config") else None
        if merge is not None:
            merge()
        try:
            with torch.no_grad():
                target.load_weights(policy_weights(model))
        finally:
            if merge is not None:
                model.unmerge_adapter()
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if reset is not None:  # cached prompt blocks were computed with the old weights
            reset()

    def sample(self, prompts: Sequence[Sequence[int]], k: int, *, max_new_tokens: int = 64, temperature: float = 1.0,
               top_p: float = 1.0, eos_token_id: int | None = None, seed: int | None = None) -> SampledGroups:
        """``k`` completions of each prompt (token ids), as :func:`~rankalign.online.sample_groups` returns them.

        A completion stops after ``eos_token_id`` (kept, as the transformers backend keeps it) or after
        ``max_new_tokens``; ``temperature=0`` is greedy. ``seed`` makes a call's draws repeatable.
        """
        from vllm import SamplingParams

        prompts = checked_request(prompts, k, max_new_tokens)
        params = [SamplingParams(n=k, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, logprobs=0,
                                 seed=request_seed, stop_token_ids=None if eos_token_id is None else [int(eos_token_id)],
                                 ignore_eos=True, detokenize=False)
                  for request_seed in request_seeds(seed, len(prompts))]
        start = time.perf_counter()
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        seconds = time.perf_counter() - start
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        completions, logps, finished = [], [], []
        for prompt_index, output in enumerate(outputs):
            samples = sorted(output.outputs, key=lambda sample: sample.index)
            if len(samples) != k:
                raise RuntimeError(f"vLLM returned {len(samples)} completions for prompt {prompt_index}, asked {k}")
            group, group_logps, group_finished = [], [], []
            for sample in samples:
                tokens = [int(t) for t in sample.token_ids]
                if sample.logprobs is None or len(sample.logprobs) != len(tokens):
                    raise RuntimeError("vLLM returned no log-probability for some sampled tokens")
                group.append(tokens)
                group_logps.append([float(step[token].logprob) for step, token in zip(sample.logprobs, tokens)])
                group_finished.append(eos_token_id is not None and bool(tokens) and tokens[-1] == eos_token_id)
            completions.append(group)
            logps.append(group_logps)
            finished.append(group_finished)
        return SampledGroups(prompt_ids=prompts, completion_ids=completions, token_logps=logps, finished=finished,
                             seconds={"prefill": 0.0, "decode": seconds}, decoder="vllm")


def save_for_vllm(model, folder) -> Path:
    """Write ``model``'s config and weights (:func:`policy_weights`, safetensors, written atomically) to
    ``folder``, the checkpoint a :class:`VLLMSampler` starts from; PEFT adapters are left out (they reach
    vLLM merged, through :meth:`VLLMSampler.sync`)."""
    from safetensors.torch import save_file

    from .._atomic import atomic_write_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model() if hasattr(model, "peft_config") and hasattr(model, "get_base_model") else model
    base.config.save_pretrained(folder)
    tensors = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in policy_weights(model)}
    atomic_write_path(folder / "model.safetensors", lambda path: save_file(tensors, path, metadata={"format": "pt"}))
    return folder


def make_vllm_sampler(model, folder, **options) -> VLLMSampler:
    """A :class:`VLLMSampler` started from ``model`` as it is now (:func:`save_for_vllm` into ``folder``)."""
    return VLLMSampler(save_for_vllm(model, folder), **options)


__all__ = ["VLLMSampler", "make_vllm_sampler", "policy_weights", "request_seeds", "save_for_vllm"]
