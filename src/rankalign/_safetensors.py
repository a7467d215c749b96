"""A cheap wholeness check of ``.safetensors`` files (the header and the size it implies).

A file cut short by a full disk or a killed copy fails in ``safetensors`` with "header too small" or
"incomplete metadata" and no file name; this check names what is wrong so that callers can name the file.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a ``.safetensors`` file (None: whole), from its header alone: shorter than the
    8-byte header length, a header that does not fit or is not JSON, or a size other than the header
    describes (truncated or padded). Reads only the header, so it is cheap on large files."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "shorter than its 8-byte header length"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return f"header of {length} bytes does not fit in {size} bytes (truncated)"
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "unreadable header"
    if not isinstance(header, dict):
        return "unreadable header"
    end = max((entry["data_offsets"][1] for key, entry in header.items()
               if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry), default=0)
    if 8 + length + end != size:
        return f"{size} bytes, the header describes {8 + length + end} (truncated or padded)"
    return None
