"""Atomic file writes: the one implementation every layer uses.

A file is written to a temporary name in the target directory, flushed to disk, given the permissions an
ordinary ``open(path, "w")`` would give it, and only then moved over the target with ``os.replace``
(atomic on POSIX and Windows). A crash or an exception at any point leaves the previous file intact and
no temporary file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write_path(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(temporary_path)`` and move the result to ``path``; for libraries that write by path
    (safetensors ``save_file``, ``tokenizer.save_pretrained`` of one file, ...)."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(descriptor)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], *, binary: bool = False) -> Path:
    """Call ``write(handle)`` on an open temporary file (text UTF-8 with ``newline=""``, or binary), then
    move it to ``path``."""

    def write_handle(temporary: str) -> None:
        if binary:
            with open(temporary, "wb") as handle:
                write(handle)
        else:
            with open(temporary, "w", encoding="utf-8", newline="") as handle:
                write(handle)

    return atomic_write_path(path, write_handle)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data), binary=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text))


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps_options) -> Path:
    """``json.dumps(obj, indent=2, **dumps_options)`` plus a final newline, written atomically."""
    dumps_options.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(obj, **dumps_options) + "\n")


__all__ = ["atomic_write", "atomic_write_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json"]
