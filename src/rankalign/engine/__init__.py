"""rankalign.engine: text -> token lists -> log-probs, with prefix-shared batching and a reference cache.

See DESIGN.md ("Engine principles"). The pieces, in the order data flows through them:

* :func:`tokenize_records` -> :class:`TokenizedList` (+ :class:`TruncationReport`)
* :func:`pack_lists` / :class:`ListCollator` -> :class:`PackedBatch` (shared or duplicated layout)
* :func:`sequence_logps` -> ``[B, K]`` summed response log-probs (head applied only at response positions)
* :func:`score_lists` -> every list's ``[K]`` log-probs: THE scoring function (batched by length, prefix-shared
  when :func:`probe_shared_layout` accepts the model, progress bar, optional cache); :func:`compute_reference_logps`
  is it with a :class:`ReferenceCache`
* :func:`build_tokenizer`, :func:`tiny_causal_lm`: local tiny tokenizers and models
* :func:`retain_freed_memory`: glibc malloc keeps freed memory for reuse (the CPU loops call it; no page
  faults per step)
* :func:`resolve_model` / :func:`load_causal_lm`: model sources (folder, .gguf, fetched name such as
  ``smollm2-135m``, HF-cache id, ``tiny:``), :func:`fetch_model`, :func:`list_models`

Example::

    from rankalign.data import RankedList
    from rankalign.engine import (build_tokenizer, compute_reference_logps, pack_lists, score_lists,
                                  sequence_logps, tiny_causal_lm, tokenize_records)

    records = [RankedList(prompt="2 + 2 =", candidates=[" 4", " 5", " 22"], ranks=[0, 1, 1])]
    tokenizer = build_tokenizer(["2 + 2 = 4 5 22"], vocab_size=300)
    lists, report = tokenize_records(tokenizer, records, max_prompt_tokens=256, max_response_tokens=64)
    print(report)                                   # what was truncated or dropped
    model = tiny_causal_lm(len(tokenizer))
    batch = pack_lists(lists, layout="shared", pad_token_id=tokenizer.pad_token_id)
    policy_logps = sequence_logps(model, batch)     # [B, K], differentiable
    ref_logps = compute_reference_logps(model, lists, cache_dir="ref-cache", tokenizer=tokenizer)
    scores = score_lists(model, lists, batch_size=16)   # ListScores: .logps, .lengths, .padded()
"""

from .cpu_memory import preallocate_optimizer_state, retain_freed_memory
from .logps import (
    LayoutProbe,
    attention_mask_for,
    autocast_context,
    base_model_of,
    call_as_forward,
    choose_layout,
    decoder_and_head,
    distributed_backend,
    gather_token_logps,
    probe_shared_layout,
    sequence_logps,
    supports_shared_layout,
    token_logps,
    unwrap_model,
)
from .packing import LAYOUTS, ListCollator, PackedBatch, block_attention_mask, pack_lists
from .reference import (
    ReferenceCache,
    adapter_disabled,
    compute_reference_logps,
    peft_reference_logps,
    reference_cache_key,
)
from .scoring import ListScores, length_batches, score_lists
from .sources import (
    ModelNotFound,
    ModelSource,
    UnreadableModel,
    fetch_model,
    list_models,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
)
from .tiny import CHAT_TEMPLATE, build_tokenizer, tiny_causal_lm
from .tokenize import TokenizedList, TruncationReport, tokenize_records

__all__ = [
    "TokenizedList", "TruncationReport", "tokenize_records",
    "PackedBatch", "pack_lists", "ListCollator", "block_attention_mask", "LAYOUTS",
    "sequence_logps", "supports_shared_layout", "gather_token_logps", "decoder_and_head", "unwrap_model",
    "base_model_of", "attention_mask_for", "autocast_context", "probe_shared_layout", "choose_layout", "LayoutProbe",
    "call_as_forward", "distributed_backend",
    "score_lists", "ListScores", "length_batches", "token_logps",
    "ReferenceCache", "compute_reference_logps", "reference_cache_key", "adapter_disabled",
    "peft_reference_logps",
    "build_tokenizer", "tiny_causal_lm", "CHAT_TEMPLATE", "retain_freed_memory", "preallocate_optimizer_state",
    "resolve_model", "load_causal_lm", "load_tokenizer", "fetch_model", "list_models", "ModelSource", "ModelNotFound", "UnreadableModel",
]
