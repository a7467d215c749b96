"""The error types every layer raises, and the one-line form the CLI prints.

Every problem a user can fix is a :class:`RankalignError` with an ``exit_code`` (1: the data or the
environment, 2: how the command was called or configured) and an optional ``hint``. The CLI boundary
(:mod:`rankalign.cli`) prints it as one line, ``error: <message> (hint: <hint>)``; library callers catch
it like any other exception. Lower layers import from here (this module imports nothing of rankalign).
"""

from __future__ import annotations

import importlib


class RankalignError(Exception):
    """A problem the user can fix. ``hint`` says how; ``exit_code`` is 1 (data, files) or 2 (usage)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class UsageError(RankalignError, ValueError):
    """The command, option, configuration or parameter is wrong (exit code 2)."""

    exit_code = 2


class OutputError(RankalignError, OSError):
    """An output file could not be written (full disk, permissions, a folder in the way)."""


class MissingExtraError(RankalignError, ModuleNotFoundError):
    """An optional dependency is not installed; the hint names the extra that installs it."""


class RankalignWarning(UserWarning):
    """A result that is still usable but needs the user's attention; the CLI prints ``warning: ...``."""


def require(module: str, extra: str, feature: str):
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install 'rankalign[extra]'``.

    ``feature`` says what needed it (``"rankalign train"``, ``"--plot"``, ``"reading Parquet"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = getattr(error, "name", None) or module
        raise MissingExtraError(f"{feature} needs {missing}, which is not installed",
                                hint=f"pip install 'rankalign[{extra}]'") from None


__all__ = ["RankalignError", "UsageError", "OutputError", "MissingExtraError", "RankalignWarning", "require"]
