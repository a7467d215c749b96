"""Strict JSON for the ``--json`` outputs of the commands: NaN and infinity become ``null``.

``json.dumps`` writes ``NaN`` and ``Infinity`` by default, which is not JSON: strict parsers (``jq``,
JavaScript's ``JSON.parse``, most other languages) refuse the whole document. An estimate that the data
cannot determine (a standard error from one observation) is written as ``null`` instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays as Python objects and every non-finite float as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "tolist"):  # a NumPy scalar or array
        return plain(value.tolist())
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def dumps(value: Any, **options) -> str:
    """``json.dumps`` of :func:`plain` ``(value)``; refuses to write anything that is not strict JSON."""
    return json.dumps(plain(value), allow_nan=False, **options)
