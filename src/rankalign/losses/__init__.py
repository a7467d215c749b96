"""Preference objectives as pure functions of log-probabilities (torch only).

``get(name)`` returns a registered objective, ``names()`` lists them. One file per family:
``pairwise``, ``listwise``, ``unpaired``, ``reward``.
"""

from . import listwise, pairwise, reward, unpaired  # noqa: F401  (importing registers every objective)
from ._common import preference_metrics
from ._registry import FAMILIES, Objective, get, names, register
from .unpaired import BCORunningMean, kto_reference_point

__all__ = ["get", "names", "register", "Objective", "FAMILIES", "BCORunningMean", "kto_reference_point",
           "preference_metrics"]
