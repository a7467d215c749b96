"""Preference objectives as pure functions of log-probabilities (torch only).

``get(name)`` returns a registered objective, ``names()`` lists them. One file per family:
``pairwise``, ``listwise``, ``unpaired``, ``reward``.
"""

from ._registry import FAMILIES, Objective, get, names, register

__all__ = ["get", "names", "register", "Objective", "FAMILIES"]
