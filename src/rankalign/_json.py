"""Strict JSON for the ``--json`` outputs of the commands: NaN and infinity become ``null``.

``json.dumps`` writes ``NaN`` and ``Infinity`` by default, which is not JSON: strict parsers (``jq``,
JavaScript's ``JSON.parse``, most other languages) refuse the whole document. An estimate that the data
cannot determine (a standard error from one observation) is written as ``null`` instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any


def plain(value: Any, special=None) -> Any:
    """``value`` as plain JSON types: NumPy scalars and arrays as Python objects, paths as text, every
    non-finite float as None; a TypeError for anything else. ``special(item)`` may replace an item first
    (return ``NotImplemented`` to leave it): ``rankalign.eval.report.to_jsonable`` writes its estimates so."""
    if special is not None:
        replaced = special(value)
        if replaced is not NotImplemented:  # its parts, not itself, are looked at again
            value = replaced
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "tolist"):  # a NumPy scalar or array
        return plain(value.tolist(), special)
    if isinstance(value, Mapping):
        return {str(key): plain(item, special) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item, special) for item in value]
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"cannot write a {type(value).__name__} to JSON")


def dumps(value: Any, **options) -> str:
    """``json.dumps`` of :func:`plain` ``(value)``; refuses to write anything that is not strict JSON."""
    return json.dumps(plain(value), allow_nan=False, **options)
