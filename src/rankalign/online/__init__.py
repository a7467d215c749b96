"""rankalign.online: on-policy learning (sample K per prompt -> judge -> ranked lists -> train; GRPO, RLOO)."""

from .generate import PREFILLS, SampledGroups, filter_top_p, next_tokens, sample_groups, vllm_available
from .policy_gradient import (
    POLICY_GRADIENT_OBJECTIVES,
    groups_to_lists,
    policy_gradient_loss,
    policy_gradient_step,
    token_grid,
)

__all__ = ["PREFILLS", "SampledGroups", "sample_groups", "next_tokens", "filter_top_p", "vllm_available",
           "POLICY_GRADIENT_OBJECTIVES", "groups_to_lists", "token_grid", "policy_gradient_loss",
           "policy_gradient_step"]
