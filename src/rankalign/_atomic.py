"""Atomic file writes: the one implementation every layer uses.

A file is written to a temporary name in the target directory, flushed to disk, given the permissions of
the file it replaces (or those an ordinary ``open(path, "w")`` would give a new one), and only then moved
over the target with ``os.replace`` (atomic on POSIX and Windows). A crash or an exception at any point
leaves the previous file intact and no temporary file behind. A symbolic link is followed (the file it
names is replaced, the link stays); a device, FIFO or socket (``/dev/stdout``, ``/dev/null``) is written
through directly, since it cannot be replaced.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from rankalign.errors import OutputError

# temporaries being written now; a SIGTERM removes them before the process ends (see _on_sigterm)
_PENDING: set[str] = set()
_previous_handler = None


def _on_sigterm(signum, frame):
    """Remove the temporaries in flight, then let the signal do what it did before (default: end)."""
    for temporary in list(_PENDING):
        try:
            os.unlink(temporary)
        except OSError:
            pass
    _PENDING.clear()
    previous = _previous_handler
    signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    else:
        os.kill(os.getpid(), signal.SIGTERM)


def _watch_sigterm() -> None:
    """Install :func:`_on_sigterm` once (main thread only; a handler set by someone else is chained)."""
    global _previous_handler
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return
    _previous_handler = current if current not in (signal.SIG_DFL, None) else None
    if current is signal.SIG_IGN:
        return
    signal.signal(signal.SIGTERM, _on_sigterm)


# what C++ writers (torch's stream writer, safetensors) say when the disk fills up or a write fails
_CPP_IO_MESSAGES = ("basic_ios", "PytorchStreamWriter", "failed writing", "No space left", "I/O error",
                    "os error 28")


def _disk_full(directory: Path) -> bool:
    try:
        return shutil.disk_usage(directory).free < 1 << 20
    except OSError:
        return False


def _is_io_failure(error: BaseException, directory: Path) -> bool:
    """An OSError, or a library's RuntimeError that is really a failed write (full disk, C++ stream)."""
    if isinstance(error, OutputError):
        return False
    if isinstance(error, OSError):
        return True
    if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: not a write failure
        return False
    # the writers of torch and safetensors raise their own types ("SafetensorError: ... I/O error: No
    # space left on device (os error 28)"); a RuntimeError on a full disk is one too
    return any(m in str(error) for m in _CPP_IO_MESSAGES) or (isinstance(error, RuntimeError)
                                                             and _disk_full(directory))


def _write_failed(error: BaseException, path: Path, directory: Path) -> OutputError:
    """The one-line form of a failed write that names the file (C++ writers only say "basic_ios::clear")."""
    number = getattr(error, "errno", None)
    if number == errno.ENOSPC or "No space left" in str(error) or "os error 28" in str(error) or _disk_full(directory):
        return OutputError(f"no space left on device while writing {path}",
                           hint="free space on that disk or write elsewhere")
    if number in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"permission denied writing {path}", hint="choose a writable location")
    detail = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return OutputError(f"could not write {path}: {detail}")


@contextlib.contextmanager
def writing(path: str | os.PathLike):
    """Turn a failed write inside the block (a full disk, no permission, a C++ writer's "basic_ios::clear")
    into an :class:`~rankalign.errors.OutputError` naming ``path``; for writers that are not atomic by
    themselves (the Trainer's checkpoint folders, ``save_pretrained``)."""
    path = Path(path)
    try:
        yield path
    except BaseException as error:
        if _is_io_failure(error, path if path.is_dir() else path.parent):
            raise _write_failed(error, path, path if path.is_dir() else path.parent) from error
        raise


def atomic_write_path(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(temporary_path)`` and move the result to ``path``; for libraries that write by path
    (safetensors ``save_file``, ``tokenizer.save_pretrained`` of one file, ...).

    Any failure to write (a full disk, no permission, a folder in the way) is an
    :class:`~rankalign.errors.OutputError` that names ``path``; the previous file stays intact and no
    temporary is left behind, also when the process is ended by SIGTERM during the write.
    """
    shown = path = Path(path)
    try:
        existing = os.stat(path)  # follows symbolic links
    except OSError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode) and not stat.S_ISDIR(existing.st_mode):
        # a device, a FIFO or a socket (``-o /dev/stdout``, ``/dev/null``): written through, never replaced
        try:
            write(str(path))
        except BaseException as error:
            if _is_io_failure(error, path.parent):
                raise _write_failed(error, shown, path.parent) from error
            raise
        return shown
    if path.is_symlink():  # replace the file the link names, not the link
        path = Path(os.path.realpath(path))
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(shown))
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise _write_failed(error, shown, directory) from error
    _watch_sigterm()
    _PENDING.add(temporary)
    os.close(descriptor)
    try:
        if existing is not None:  # keep the permissions of the file being replaced
            mode = stat.S_IMODE(existing.st_mode)
        else:  # what open(path, "w") would give; mkstemp creates 0600
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(temporary, mode)
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if _is_io_failure(error, directory):
            raise _write_failed(error, shown, directory) from error
        raise
    finally:
        _PENDING.discard(temporary)
    return shown


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


__all__ = ["writing", "atomic_write", "atomic_write_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json"]
