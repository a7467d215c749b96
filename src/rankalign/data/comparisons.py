"""A columnar reader of two-item comparisons for the statistics layer: ``read_comparisons``.

Rating models (Bradley-Terry, Davidson, Rao-Kupper, Thurstone) need, per comparison, two item indices,
an outcome and a count -- not a Python object per row. :func:`read_comparisons` reads a CSV of a million
rows in about a second: the ``csv`` module splits the rows, and everything after that is done per
*distinct value* (items, outcome labels, counts) with dictionaries and NumPy indexing.

It accepts the layouts ``winner_loser``, ``item_outcome``, ``arena`` and ``rankedlist`` (pairs of items with
``prompt`` None) and validates exactly like :func:`rankalign.data.read`: the first bad row raises the same
:class:`DataError` (file, line, field) that the record reader raises for it -- the message is produced by
running that row through the record converter -- and ``skip_invalid=True`` skips and counts by reason.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from rankalign.errors import UsageError

from . import _sources
from .errors import DataError
from .layouts import (
    COMPARISON_LAYOUTS,
    OUTCOME_VALUE,
    RowContext,
    _number,
    check_columns,
    check_layout,
    check_mapped_columns,
    detect_layout,
    label_key,
    parse_mapping,
    row_to_record,
)
from .readers import _MAX_LINES, _MAX_PROBLEMS, ReadReport
from .records import RankedList, check_flag

# our column names per layout: (first, second, outcome or None)
_COLUMNS = {
    "winner_loser": ("winner", "loser", None),
    "item_outcome": ("item_a", "item_b", "outcome"),
    "arena": ("model_a", "model_b", "winner"),
}


@dataclass(frozen=True)
class Comparisons:
    """Two-item comparisons as arrays (one entry per row of the file).

    Attributes
    ----------
    items : list of str
        Sorted unique item names; ``first`` and ``second`` index into it.
    first, second : ndarray of int64
        The two items of each comparison. ``first`` is item_a / home / model_a / winner: the order of the
        file is kept, so an order effect (home advantage, position bias) can be modelled.
    outcome : ndarray of float64
        1.0 when ``first`` won, 0.0 when ``second`` won, 0.5 for a tie.
    count : ndarray of float64
        Row count or weight (1.0 when the file has none).
    layout : str
        The layout read.
    report : ReadReport
        Rows read and skipped by reason, as for :func:`rankalign.data.read`.
    extra : dict of str -> ndarray
        Other columns kept on request (``keep=``), e.g. covariates; float64 where every value is a number,
        else str.
    """

    items: list[str]
    first: np.ndarray
    second: np.ndarray
    outcome: np.ndarray
    count: np.ndarray
    layout: str
    report: ReadReport = field(default_factory=ReadReport)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.first)
        for name in ("second", "outcome", "count"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Comparisons.{name} has {len(getattr(self, name))} entries, first has {n}")

    def __len__(self) -> int:
        return len(self.first)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def rows(self) -> Iterator[tuple[str, str, float, float]]:
        """``(first item, second item, outcome, count)`` per comparison, in file order."""
        items = self.items
        for a, b, o, c in zip(self.first.tolist(), self.second.tolist(), self.outcome.tolist(), self.count.tolist()):
            yield items[a], items[b], o, c

    def to_records(self) -> list[RankedList]:
        """The same comparisons as :class:`RankedList` pairs (prompt None, ranks [0,1] / [1,0] / [0,0])."""
        ranks = {1.0: (0, 1), 0.0: (1, 0), 0.5: (0, 0)}
        return [RankedList(prompt=None, candidates=(a, b), ranks=ranks[o], weight=c) for a, b, o, c in self.rows()]


# ---------------------------------------------------------------------------------------------- helpers
def _factorize(values: Sequence) -> tuple[list, np.ndarray]:
    """Distinct values in first-seen order and each value's index into them (C-speed dict operations)."""
    table = dict.fromkeys(values)
    uniques = list(table)
    for index, value in enumerate(uniques):
        table[value] = index
    codes = np.fromiter(map(table.__getitem__, values), dtype=np.int64, count=len(values))
    return uniques, codes


def _merge_uniques(uniques: list, codes: np.ndarray, convert) -> tuple[list, np.ndarray]:
    """Apply ``convert`` to each distinct value and merge values that become equal ("1" and 1)."""
    converted = [convert(u) for u in uniques]
    merged, remap = _factorize(converted)
    return merged, remap[codes] if len(uniques) else codes


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


class _Unhashable:
    """Stand-in for a list/dict cell so that a column can be factorized; keeps the original value."""

    __slots__ = ("value", "key")

    def __init__(self, value):
        self.value, self.key = value, repr(value)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Unhashable) and other.key == self.key


def _hashable(value):
    return _Unhashable(value) if isinstance(value, (list, dict)) else value


def _item_name(value):
    """An item id as text (integers from JSON as their digits); ``None`` if missing, ``_Unhashable`` if bad."""
    if _is_missing(value):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, _Unhashable) else _Unhashable(value)


def _parse_count(value) -> tuple[float, str | None]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return 1.0, None  # absent; an explicit NaN is refused as non-finite below
    try:
        number = _number(value)  # True / False are not counts
    except (TypeError, ValueError):
        return math.nan, "bad_count"
    except OverflowError:
        return math.nan, "non_finite"
    if not math.isfinite(number):
        return math.nan, "non_finite"
    if number < 0:
        return math.nan, "negative_count"
    return number, None


class _Table:
    """Columns of a source, each as (distinct values, codes), plus how to find a row's line."""

    def __init__(self, header, n, factorized, line_of, bad_rows):
        self.header, self.n, self.factorized = list(header), n, factorized
        self.line_of, self.bad_rows = line_of, bad_rows

    def rename(self, renamed: dict):
        self.factorized = {renamed.get(name, name): value for name, value in self.factorized.items()}

    def value(self, name, index):
        uniques, codes = self.factorized[name]
        value = uniques[codes[index]]
        return value.value if isinstance(value, _Unhashable) else value

    def row(self, index) -> dict:
        return {name: self.value(name, index) for name in self.factorized}


# ------------------------------------------------------------------------------------------ the reader
def read_comparisons(source, *, layout: str | None = None, mapping=None, outcomes=None, skip_invalid: bool = False,
                     keep: Sequence[str] = (), format: str | None = None) -> Comparisons:
    """Read two-item comparisons into arrays (see :class:`Comparisons`).

    Parameters
    ----------
    source : path or datasets.Dataset
        CSV (fast path), JSONL, JSON, Parquet or a ``datasets.Dataset``.
    layout : str, optional
        ``winner_loser``, ``item_outcome``, ``arena`` or ``rankedlist``; detected from the columns if omitted.
    mapping, outcomes : dict or str, optional
        As for :func:`rankalign.data.read`, e.g. ``mapping="item_a=home,item_b=away,outcome=result"``,
        ``outcomes="1=a,0=tie,-1=b"``.
    skip_invalid : bool
        Skip bad rows, counting them by reason in ``report.skipped``, instead of raising.
    keep : sequence of str
        Other columns (the file's names) to return in ``extra``.
    format : str, optional
        Override the format found from the extension.
    """
    if layout is not None:
        check_layout(layout)
    skip_invalid = check_flag(skip_invalid, "skip_invalid")
    if keep is None:
        keep = ()
    if isinstance(keep, str) or not isinstance(keep, Sequence) or not all(isinstance(name, str) for name in keep):
        raise UsageError(f"keep must be a list of column names, got {keep!r}",
                         hint=f"keep=[{keep!r}]" if isinstance(keep, str) else None)
    fmt = _sources.detect_format(source, format)
    path = "<datasets.Dataset>" if fmt == "dataset" else str(source)
    if fmt == "preflib":
        raise DataError("a PrefLib file holds rankings, not two-item comparisons; read it with "
                        "rankalign.data.read()", path=path, reason="unknown_layout")
    mapping = parse_mapping(mapping, extra=keep)
    report = ReadReport(path=path)
    table = None
    if fmt == "csv":
        try:
            table = _csv_table(path)
        except DataError as error:
            if error.reason != "bad_encoding" or not skip_invalid:
                raise
    if table is None:
        table = _row_table(source, fmt, skip_invalid)
    n = table.n
    if n == 0 and not table.bad_rows:
        raise DataError("no records: the file has no data rows", path=path, reason="empty_file")
    check_mapped_columns(mapping, table.factorized.keys(), path)
    renamed = {theirs: ours for ours, theirs in mapping.items()}
    table.rename(renamed)
    if layout is None:
        try:
            layout = detect_layout(table.factorized.keys(), path=path)
        except DataError as error:
            raise error.at(line=table.line_of(0) if n else None) from None
    if layout not in COMPARISON_LAYOUTS:
        raise DataError(f"layout {layout!r} is not a two-item comparison layout ({', '.join(COMPARISON_LAYOUTS)}); "
                        "read it with rankalign.data.read()", path=path, reason="unknown_layout")
    if n and layout in _COLUMNS:  # e.g. --layout arena on a winner/loser file
        check_columns(layout, table.factorized.keys(), path=path, line=table.line_of(0))
    report.layout = layout
    context = RowContext(layout, mapping, outcomes, text_cells=fmt in ("csv", "parquet"),
                         arrow=fmt in ("parquet", "dataset"))  # as read() does
    if layout == "rankedlist":
        names, first_all, second_all, outcome, count, reasons = _native_columns(table, context)
    else:
        names, first_all, second_all, outcome, count, reasons = _comparison_columns(table, layout, context)

    def error_for(index: int) -> DataError:
        try:
            record = row_to_record(table.row(index), context)
        except DataError as error:
            return error.at(path, table.line_of(index))
        return DataError(f"not a two-item comparison ({_describe(record)}); read rankings and lists with "
                         "rankalign.data.read()", path=path, line=table.line_of(index), field="candidates",
                         reason=_REASONS[reasons[index]])

    invalid = reasons >= 0
    bad_indices = np.flatnonzero(invalid)
    if not skip_invalid:
        found = [error for _, error in table.bad_rows]
        if bad_indices.size:
            found.append(error_for(int(bad_indices[0])))
        if found:
            raise min(found, key=lambda e: e.line if e.line is not None else -1)
    for _, error in table.bad_rows:
        report.skip(error)
    if bad_indices.size:
        codes, counts = np.unique(reasons[bad_indices], return_counts=True)
        for code, how_many in zip(codes.tolist(), counts.tolist()):
            report.skipped[_REASONS[code]] += how_many
        for index in bad_indices[:max(0, _MAX_PROBLEMS - len(report.problems))].tolist():
            report.problems.append(str(error_for(index)))
        room = max(0, _MAX_LINES - len(report.skipped_lines))
        report.skipped_lines.extend(table.line_of(index) for index in bad_indices[:room].tolist())
        report.skipped_lines.sort()

    valid = ~invalid
    first_valid, second_valid = first_all[valid], second_all[valid]
    used = np.zeros(len(names), dtype=bool)
    used[first_valid] = True
    used[second_valid] = True
    compact = np.cumsum(used) - 1
    items = [names[i] for i in np.flatnonzero(used).tolist()]
    extra = {}
    for name in keep:
        ours = renamed.get(name, name)
        if ours not in table.factorized:
            raise DataError(f"no column {name!r} to keep (columns: {sorted(table.header)})", path=path, field=name,
                            reason="missing_field")
        extra[name] = _extra_array(*table.factorized[ours], valid)
    report.records = int(valid.sum())
    report.notes.update(context.notes)
    if layout == "arena":
        uniques, codes = table.factorized["winner"]
        bothbad = np.array([label_key(u) == "tie (bothbad)" for u in uniques], dtype=bool)
        how_many = int(bothbad[codes[valid]].sum()) if len(uniques) else 0
        if how_many:
            report.notes["tie_bothbad"] = how_many
    return Comparisons(items=items, first=np.asarray(compact[first_valid], dtype=np.int64),
                       second=np.asarray(compact[second_valid], dtype=np.int64),
                       outcome=np.asarray(outcome[valid], dtype=np.float64),
                       count=np.asarray(count[valid], dtype=np.float64), layout=layout, report=report, extra=extra)


_REASONS = ["missing_field", "bad_type", "unknown_outcome", "bad_count", "non_finite", "negative_count",
            "count_and_weight", "self_comparison", "not_a_pair", "invalid"]
_CODE = {reason: code for code, reason in enumerate(_REASONS)}


def _mark(reasons: np.ndarray, mask: np.ndarray, reason: str):
    """Record ``reason`` for rows in ``mask`` that have no earlier reason (a row counts once)."""
    reasons[mask & (reasons < 0)] = _CODE[reason]


def _comparison_columns(table: _Table, layout: str, context):
    """Item indices, outcome and count per row; ``reasons`` >= 0 marks a bad row (checks in the order of the
    record converters, so a row is counted under the reason the record reader would give)."""
    first_column, second_column, outcome_column = _COLUMNS[layout]
    n = table.n
    reasons = np.full(n, -1, dtype=np.int64)
    item_columns = []
    for column in (first_column, second_column):
        uniques, codes = _merge_uniques(*table.factorized[column], _item_name)
        missing = np.array([u is None for u in uniques], dtype=bool)
        bad_type = np.array([isinstance(u, _Unhashable) for u in uniques], dtype=bool)
        _mark(reasons, missing[codes], "missing_field")
        _mark(reasons, bad_type[codes], "bad_type")
        item_columns.append((uniques, codes, missing | bad_type))
    if outcome_column is None:
        outcome = np.ones(n, dtype=np.float64)
    else:
        uniques, codes = table.factorized[outcome_column]
        missing = np.array([_is_missing(u) for u in uniques], dtype=bool)
        values = np.array([math.nan if m else OUTCOME_VALUE.get(context.table.get(label_key(u)), math.nan)
                           for u, m in zip(uniques, missing)], dtype=np.float64)
        _mark(reasons, missing[codes], "missing_field")
        _mark(reasons, np.isnan(values)[codes], "unknown_outcome")
        outcome = values[codes]
    count = np.ones(n, dtype=np.float64)
    given_before = np.zeros(n, dtype=bool)
    for column in ("count", "weight"):  # per row, as the record reader: the one given, never both
        if column not in table.factorized:
            continue
        uniques, codes = table.factorized[column]
        given = np.array([not (u is None or (isinstance(u, str) and not u.strip())) for u in uniques],
                         dtype=bool)[codes] if len(uniques) else np.zeros(n, dtype=bool)
        _mark(reasons, given & given_before, "count_and_weight")
        parsed = [_parse_count(u) for u in uniques]
        values = np.array([p[0] for p in parsed], dtype=np.float64)
        for reason in ("bad_count", "non_finite", "negative_count"):
            _mark(reasons, given & np.array([p[1] == reason for p in parsed], dtype=bool)[codes], reason)
        count = np.where(given, values[codes] if len(uniques) else count, count)
        given_before |= given
    # one sorted index over the names of both columns
    names = sorted({u for uniques, _, bad in item_columns for u, b in zip(uniques, bad.tolist()) if not b})
    index_of = {name: i for i, name in enumerate(names)}
    indices = []
    for uniques, codes, bad in item_columns:
        mapped = np.array([-1 if b else index_of[u] for u, b in zip(uniques, bad.tolist())], dtype=np.int64)
        indices.append(mapped[codes] if len(uniques) else codes)
    first_all, second_all = indices
    _mark(reasons, (first_all == second_all) & (first_all >= 0), "self_comparison")
    first_all = np.where(first_all < 0, 0, first_all)
    second_all = np.where(second_all < 0, 0, second_all)
    return names, first_all, second_all, outcome, count, reasons


def _native_columns(table: _Table, context):
    """RankedList rows (``rankedlist`` layout): each must be a pair of items with prompt None."""
    n = table.n
    first_names, second_names = [""] * n, [""] * n
    outcome = np.full(n, math.nan)
    count = np.ones(n)
    reasons = np.full(n, -1, dtype=np.int64)
    for index in range(n):
        try:
            record = row_to_record(table.row(index), context)
        except DataError as error:
            reasons[index] = _CODE.get(error.reason, _CODE["invalid"])
            continue
        if not isinstance(record, RankedList) or record.prompt is not None or record.k != 2 or None in record.ranks:
            reasons[index] = _CODE["not_a_pair"]
            continue
        first_names[index], second_names[index] = record.candidates
        a, b = record.ranks
        outcome[index] = 1.0 if a < b else 0.0 if a > b else 0.5
        count[index] = record.weight
    ok = (reasons < 0).tolist()
    names = sorted({name for name, good in zip(first_names + second_names, ok + ok) if good})
    index_of = {name: i for i, name in enumerate(names)}
    first = np.array([index_of.get(name, 0) for name in first_names], dtype=np.int64)
    second = np.array([index_of.get(name, 0) for name in second_names], dtype=np.int64)
    return names, first, second, outcome, count, reasons


def _describe(record) -> str:
    if not isinstance(record, RankedList):
        return "an unpaired judgment"
    if record.k != 2:
        return f"a list of {record.k} candidates"
    if record.prompt is not None:
        return "a pair of responses to a prompt, not of items"
    return "a pair with an unranked candidate"


def _extra_array(uniques, codes, valid) -> np.ndarray:
    try:
        if any(isinstance(u, bool) for u in uniques):  # true/false is not a number here (as for counts)
            raise TypeError("boolean")
        values = np.array([math.nan if _is_missing(u) else float(u) for u in uniques], dtype=np.float64)
    except (TypeError, ValueError):
        values = np.array(["" if u is None else str(getattr(u, "value", u)) for u in uniques], dtype=str)
    return values[codes[valid]] if len(uniques) else values


# ------------------------------------------------------------------------------------------- tables
def _csv_table(path) -> _Table:
    text = _sources._read_text(path)
    table = _csv_table_split(text, path)
    return table if table is not None else _csv_table_module(text, path)


def _unquote(value: str):
    """``"abc"`` -> ``abc``; None when the cell holds quotes the simple splitter cannot handle."""
    if '"' not in value:
        return value
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"' and '"' not in value[1:-1]:
        return value[1:-1]
    return None


def _csv_table_split(text: str, path: str) -> _Table | None:
    """Fast path for the common CSV: one row per line, no commas, quotes or newlines inside a cell (a cell
    may be wholly quoted). The whole body is split on commas at once and each column is a slice of that.
    Returns None if the file is not of that kind (then the ``csv`` module reads it)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            return None  # a lone carriage return: leave it to the csv module
    lines = text.split("\n")  # not splitlines(): that also splits on characters csv keeps inside a cell
    if lines[-1] == "":
        lines.pop()
    if not lines:
        raise DataError("no records: the file is empty", path=path, reason="empty_file")
    header = [h.strip() for h in next(csv.reader(lines[:1]))]
    body = lines[1:]
    width = len(header)
    if "" in body:
        return None  # blank lines: let the csv module sort out the line numbers
    n = len(body)
    if any(line.count(",") != width - 1 for line in body):
        # a ragged row (or a quoted comma): the total could still come to width * n ("A,B,C" then "D"),
        # and slicing would then shift every later cell into the wrong column
        return None
    joined = ",".join(body)
    del lines, body  # memory: only the cells are needed from here on
    cells = joined.split(",") if n else []
    del joined
    if len(cells) != width * n:
        return None
    quoted = '"' in text
    factorized = {}
    for i, name in enumerate(header):
        uniques, codes = _factorize(cells[i::width])
        if quoted:
            unquoted = [_unquote(u) for u in uniques]
            if any(u is None for u in unquoted):
                return None
            uniques, remap = _factorize(unquoted)
            codes = remap[codes] if len(unquoted) else codes
        factorized[name] = (uniques, codes)
    _sources._check_header(header, path)
    return _Table(header, n, factorized, lambda index: index + 2, [])


def _csv_table_module(text: str, path: str) -> _Table:
    """Any CSV the ``csv`` module reads (quoted commas, multi-line cells, blank lines, ragged rows)."""
    _sources._allow_long_csv_cells()
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
        _sources._check_header(header, path)
        rows = list(reader)
        starts = _csv_line_numbers(text)
    except StopIteration:
        raise DataError("no records: the file is empty", path=path, reason="empty_file") from None
    except csv.Error as error:  # a newline in an unquoted cell (old Mac line endings), a bad quote
        raise _sources.csv_error(error, path, reader.line_num or None) from None
    width = len(header)
    good, lines, bad_rows = [], [], []
    for row, line in zip(rows, starts.tolist()):
        if len(row) == width:
            good.append(row)
            lines.append(line)
        elif row:  # an empty list is a blank line
            short = len(row) < width
            bad_rows.append((line, DataError(
                f"{len(row)} cells for {width} columns ({'missing' if short else 'extra'} values)", path=path,
                line=line, field=header[len(row)] if short else None,
                reason="missing_field" if short else "extra_field")))
    factorized = {name: _factorize([row[i] for row in good]) for i, name in enumerate(header)}
    return _Table(header, len(good), factorized, lambda index: lines[index], bad_rows)


def _csv_line_numbers(text: str) -> np.ndarray:
    """The physical line on which each data row starts (header = line 1)."""
    reader = csv.reader(io.StringIO(text))
    next(reader, None)
    starts = []
    previous_end = reader.line_num
    for _row in reader:
        starts.append(previous_end + 1)
        previous_end = reader.line_num
    return np.asarray(starts, dtype=np.int64)


def _row_table(source, fmt, skip_invalid) -> _Table:
    """Columns of any other source (JSONL, JSON, Parquet, Dataset), built row by row."""
    header: dict = {}
    rows, lines, bad_rows = [], [], []
    for line, row in _sources.iter_rows(source, fmt, skip_invalid=skip_invalid):
        if isinstance(row, _sources.BadRow):
            bad_rows.append((line, row.error))
            continue
        header.update(dict.fromkeys(row))
        rows.append(row)
        lines.append(line)
    factorized = {name: _factorize([_hashable(row.get(name)) for row in rows]) for name in header}
    return _Table(list(header), len(rows), factorized, lambda index: lines[index], bad_rows)


__all__ = ["Comparisons", "read_comparisons"]
