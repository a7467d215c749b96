"""The one error type of the data layer.

Every problem with input data is a :class:`DataError` that knows *where* it happened (file, line or row,
field) and *what kind* of problem it is (``reason``, a short stable code used to count skipped rows under
``--skip-invalid``). Record constructors raise it without a location; readers add the location with
:meth:`DataError.at` before re-raising, so the message a user sees always reads like::

    data/pairs.jsonl:7: field 'rejected': missing (layout prompt/chosen/rejected)
"""

from __future__ import annotations

from rankalign.errors import RankalignError


class DataError(RankalignError, ValueError):
    """Invalid preference data, with its location.

    Parameters
    ----------
    message : str
        What is wrong, in words.
    path : str, optional
        File the problem was found in.
    line : int, optional
        1-based line (JSONL, CSV data rows count from the header's next line as line 2) or row index.
    field : str, optional
        Name of the offending field, e.g. ``"ranks[2]"`` or ``"rejected"``.
    reason : str, optional
        Stable short code (``"malformed_json"``, ``"missing_field"``, ``"rank_out_of_range"``, ...).
    hint : str, optional
        How to fix it, shown by the CLI as ``(hint: ...)``.
    """

    def __init__(self, message: str, *, path=None, line=None, field=None, reason: str | None = None,
                 hint: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.reason = reason or "invalid"
        super().__init__(str(self), hint=hint)

    def at(self, path=None, line=None, field_prefix: str | None = None) -> DataError:
        """Return a copy located at ``path``/``line``; ``field_prefix`` nests the field (``"rows[3].ranks"``)."""
        field = self.field
        if field_prefix:
            field = field_prefix if field is None else f"{field_prefix}.{field}"
        return DataError(
            self.message,
            path=path if path is not None else self.path,
            line=line if line is not None else self.line,
            field=field,
            reason=self.reason,
            hint=self.hint,
        )

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        elif self.line is not None:
            where = f"line {self.line}: "
        if self.field is not None:
            where += f"field '{self.field}': "
        return where + self.message

    def __reduce__(self):  # keep the location across process boundaries
        return (_rebuild, (self.message, self.path, self.line, self.field, self.reason, self.hint))


def _rebuild(message, path, line, field, reason, hint=None):
    return DataError(message, path=path, line=line, field=field, reason=reason, hint=hint)
