"""rankalign.online: on-policy learning (sample K per prompt -> judge -> ranked lists -> train; GRPO, RLOO).

* :func:`sample_groups`: K completions per prompt, each prompt prefilled once (key/value cache repeated);
  Llama-family models decode with :class:`~rankalign.online.lean_decode.LeanDecoder` (the step computed
  straight from the weights, checked against the model's forward on every call).
  :class:`~rankalign.online.vllm_backend.VLLMSampler` is the optional vLLM backend (a GPU and the vllm
  package; ``online.backend: vllm``).
* :func:`policy_gradient_step` / :func:`policy_gradient_loss`: GRPO or RLOO on sampled groups, each group
  packed prefix-shared (prompt once, K responses).
* :func:`run_online`: rounds of sample -> judge -> ranked lists (saved as JSONL) -> train with any
  registered pairwise/listwise objective; iterative reference refresh, curriculum, SPPO soft labels;
  resumable. ``rankalign train`` runs it when the config's ``online:`` section is enabled.
"""

from .generate import (
    DECODERS,
    PREFILLS,
    SampledGroups,
    filter_top_p,
    next_tokens,
    sample_groups,
    vllm_available,
)
from .loop import (
    STATE_FILE,
    Judge,
    OnlineResult,
    curriculum_pairs,
    group_rewards,
    judged_lists,
    run_online,
    run_policy_gradient,
    win_probabilities,
)
from .policy_gradient import (
    POLICY_GRADIENT_OBJECTIVES,
    groups_to_lists,
    policy_gradient_loss,
    policy_gradient_step,
    token_grid,
)

__all__ = ["DECODERS", "PREFILLS", "SampledGroups", "sample_groups", "next_tokens", "filter_top_p", "vllm_available",
           "POLICY_GRADIENT_OBJECTIVES", "groups_to_lists", "token_grid", "policy_gradient_loss",
           "policy_gradient_step", "Judge", "OnlineResult", "run_online", "judged_lists", "win_probabilities",
           "curriculum_pairs", "STATE_FILE", "group_rewards", "run_policy_gradient"]
