"""Preference objectives as pure functions of log-probabilities (torch only).

``get(name)`` returns a registered objective, ``names()`` lists them. One file per family:
``pairwise``, ``listwise``, ``unpaired``, ``reward``, ``policy_gradient`` (GRPO, RLOO on sampled groups).
"""

from . import listwise, pairwise, policy_gradient, reward, unpaired  # noqa: F401  (importing registers every objective)
from ._common import preference_metrics
from ._registry import FAMILIES, PARAM_RANGES, Objective, Range, get, names, register
from .policy_gradient import group_advantages, k3_kl, rank_rewards
from .unpaired import BCORunningMean, kto_reference_point

__all__ = ["get", "names", "register", "Objective", "Range", "PARAM_RANGES", "FAMILIES", "BCORunningMean",
           "kto_reference_point", "group_advantages", "rank_rewards", "k3_kl", "preference_metrics"]
