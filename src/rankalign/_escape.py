"""Escaping of text that came from data before it is shown or written: the one implementation.

Item names, prompts and responses are untrusted. On a terminal, rich markup (``[/]``, ``[red]``) would
be interpreted or break the table, and ANSI escape sequences or other control characters would move the
cursor, recolour or clear the screen. In a CSV file opened by a spreadsheet, a cell that starts with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a formula (CSV/formula injection,
OWASP). Every table and report writer passes data text through :func:`for_terminal` or :func:`for_csv`.
"""

from __future__ import annotations

import re

# C0 and C1 control characters, DEL, and the Unicode bidirectional overrides/isolates (which reorder text)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_MARKUP = re.compile(r"(\\*)(\[[a-zA-Z#/@\]])")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _visible(match: re.Match) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def for_terminal(text) -> str:
    """``text`` made safe for a rich console: control characters shown as ``\\xNN``, markup escaped.

    ``"\\x1b[31mred"`` becomes ``"\\\\x1b\\[31mred"`` (printed as the visible text ``\\x1b[31mred``);
    ``"[/]"`` is printed literally instead of closing a style.
    """
    text = _CONTROL.sub(_visible, str(text))
    # rich reads "[" followed by a letter, "#", "/", "@" or "]" as a tag; a backslash makes it literal,
    # and backslashes already in front of it are doubled so they stay text (rich.markup.escape's rule)
    text = _MARKUP.sub(lambda m: m.group(1) * 2 + "\\" + m.group(2), text)
    if text.endswith("\\") and not text.endswith("\\\\"):  # a trailing backslash would escape what follows
        text += "\\"
    return text


def for_csv(value):
    """A CSV cell: text starting with ``= + - @``, tab or CR gets a leading ``'``; numbers unchanged.

    Only strings are changed, so numeric columns (a rating of -1.5) stay numbers.
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


__all__ = ["for_terminal", "for_csv", "FORMULA_PREFIXES"]
