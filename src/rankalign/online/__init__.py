"""rankalign.online: on-policy learning (sample K per prompt -> judge -> ranked lists -> train; GRPO, RLOO)."""

from .generate import PREFILLS, SampledGroups, filter_top_p, next_tokens, sample_groups, vllm_available

__all__ = ["PREFILLS", "SampledGroups", "sample_groups", "next_tokens", "filter_top_p", "vllm_available"]
