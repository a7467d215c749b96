"""Read and write preference records: ``read``, ``iter_records`` (streaming) and ``write``.

``read(path)`` finds the file format (from the extension, or ``format=``) and the layout (from the column
names, or ``layout=``), converts each row to a :class:`RankedList` or :class:`Judgment`, and returns a
:class:`ReadResult` with the records and a :class:`ReadReport` of what was read and what was skipped.

Nothing is dropped silently: by default the first bad row raises a :class:`DataError` naming file, line
and field; with ``skip_invalid=True`` bad rows are skipped and counted by reason in ``report.skipped``
(and the first few messages kept in ``report.problems``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rankalign.errors import UsageError

from . import _sources
from .errors import DataError
from .layouts import (
    LAYOUTS,
    RowContext,
    apply_mapping,
    check_layout,
    check_mapped_columns,
    detect_layout,
    parse_mapping,
    row_to_record,
)
from .records import Judgment, RankedList, check_flag

_DETECT_ROWS = 100  # rows whose columns (together) decide the layout
_MAX_PROBLEMS = 20  # messages kept in a report
_MAX_LINES = 10_000  # line numbers of skipped rows kept in a report


@dataclass
class ReadReport:
    """What a reader did: records read, rows skipped by reason, the first problems, layout notes.

    ``problems`` keeps the first 20 messages in full; ``skipped_lines`` the line (or row) numbers of the
    first 10,000 skipped rows.

    ``notes`` counts things that are not errors but that the user should know, e.g.
    ``implicit_prompt`` (pairs whose prompt was split off the transcripts) and
    ``implicit_prompt_early_divergence`` (of those, pairs that differ before their final Assistant turn).
    """

    path: str | None = None
    layout: str | None = None
    records: int = 0
    skipped: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)
    skipped_lines: list[int] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, error: DataError):
        self.skipped[error.reason] += 1
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(str(error))
        if error.line is not None and len(self.skipped_lines) < _MAX_LINES:
            self.skipped_lines.append(error.line)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "layout": self.layout, "records": self.records,
                "skipped": dict(sorted(self.skipped.items())), "skipped_total": self.n_skipped,
                "problems": list(self.problems), "skipped_lines": list(self.skipped_lines),
                "notes": dict(sorted(self.notes.items()))}


@dataclass
class ReadResult:
    """Records read from one source, with the layout used and the :class:`ReadReport`."""

    records: list
    layout: str
    report: ReadReport

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]


class RecordStream:
    """An iterable over the records of a source, read lazily (see :func:`iter_records`).

    ``layout`` is known once iteration has started; ``report`` fills in as records are read and is complete
    when the iteration ends. A stream can be iterated once.
    """

    def __init__(self, source, *, layout=None, mapping=None, outcomes=None, skip_invalid=False, format=None):
        if layout is not None:
            check_layout(layout)
        skip_invalid = check_flag(skip_invalid, "skip_invalid")
        self.source = source
        self.format = _sources.detect_format(source, format)
        self.path = "<datasets.Dataset>" if self.format == "dataset" else str(source)
        self.layout = layout
        self.mapping = parse_mapping(mapping)
        self.outcomes = outcomes
        self.skip_invalid = skip_invalid
        self.report = ReadReport(path=self.path, layout=layout)
        self._started = False

    def __iter__(self) -> Iterator:
        if self._started:
            raise RuntimeError("a RecordStream can be iterated only once; call iter_records again")
        self._started = True
        if self.format == "preflib":
            return self._preflib()
        return self._rows()

    def _fail(self, error: DataError):
        if not self.skip_invalid:
            raise error
        self.report.skip(error)

    def _rows(self):
        rows = _sources.iter_rows(self.source, self.format, skip_invalid=self.skip_invalid)
        buffered = []
        if self.layout is None:
            columns: set = set()
            raw_columns: set = set()
            good = 0
            for line, row in rows:
                buffered.append((line, row))
                if not isinstance(row, _sources.BadRow):
                    raw_columns.update(row)
                    columns.update(apply_mapping(row, self.mapping))
                    good += 1
                    if good >= _DETECT_ROWS:
                        break
            if good:
                check_mapped_columns(self.mapping, raw_columns, self.path)
                first_line = next(line for line, row in buffered if not isinstance(row, _sources.BadRow))
                try:
                    self.layout = detect_layout(columns, path=self.path)
                except DataError as error:
                    raise error.at(line=first_line) from None
            elif not buffered:
                raise DataError("no records: the file is empty", path=self.path, reason="empty_file")
            else:  # only unreadable rows
                for _, row in buffered:
                    self._fail(row.error)
                raise DataError("no readable rows, so no layout could be detected", path=self.path,
                                reason="empty_file")
            self.report.layout = self.layout
        if self.layout == "preflib":
            raise DataError("layout 'preflib' needs a PrefLib file (.soc/.soi/.toc/.toi or format='preflib')",
                            path=self.path, reason="unknown_layout")
        context = RowContext(self.layout, self.mapping, self.outcomes, text_cells=self.format in ("csv", "parquet"),
                             arrow=self.format in ("parquet", "dataset"))
        report = self.report
        seen_any = False
        for line, row in _chain(buffered, rows):
            seen_any = True
            if isinstance(row, _sources.BadRow):
                self._fail(row.error)
                continue
            try:
                record = row_to_record(apply_mapping(row, self.mapping), context)
            except DataError as error:
                self._fail(error.at(self.path, line))
                continue
            report.records += 1
            yield record
        report.notes.update(context.notes)
        if not seen_any:
            raise DataError("no records: the file has no data rows", path=self.path, reason="empty_file")

    def _preflib(self):
        if self.layout not in (None, "preflib"):
            raise DataError(f"a PrefLib file has layout 'preflib', not {self.layout!r}", path=self.path,
                            reason="unknown_layout")
        self.layout = self.report.layout = "preflib"
        names, orders, header, bad = _sources.read_preflib(self.path, skip_invalid=self.skip_invalid)
        for error in bad:
            self.report.skip(error)
        if not orders and not bad:
            raise DataError("no records: the PrefLib file has no orders", path=self.path, reason="empty_file")
        voters = 0.0
        for line, count, groups in orders:
            candidates, ranks = [], []
            for level, group in enumerate(groups):
                for alternative in group:
                    candidates.append(names.get(alternative, alternative))
                    ranks.append(level)
            try:
                record = RankedList(prompt=None, candidates=candidates, ranks=ranks, weight=count)
            except DataError as error:
                self._fail(error.at(self.path, line, field_prefix="order"))
                continue
            voters += count
            self.report.records += 1
            yield record
        self.report.notes["voters"] = voters
        declared = header.get("NUMBER VOTERS")
        try:
            declared_number = None if declared is None else float(declared)
        except ValueError:
            raise DataError(f"NUMBER VOTERS must be a number, got {declared!r}", path=self.path,
                            field="NUMBER VOTERS", reason="bad_header") from None
        if declared_number is not None and not bad and declared_number != voters:
            self.report.problems.append(f"{self.path}: the header declares {declared} voters but the counts "
                                        f"sum to {voters:g}")


def _chain(buffered, rows):
    yield from buffered
    yield from rows


def iter_records(source, *, layout: str | None = None, mapping=None, outcomes=None, skip_invalid: bool = False,
                 format: str | None = None) -> RecordStream:
    """Stream the records of ``source`` without loading the file whole (see :func:`read` for arguments).

    Returns a :class:`RecordStream`: iterate it once; its ``report`` is complete when the loop ends.
    """
    return RecordStream(source, layout=layout, mapping=mapping, outcomes=outcomes, skip_invalid=skip_invalid,
                        format=format)


def read(source, *, layout: str | None = None, mapping=None, outcomes=None, skip_invalid: bool = False,
         format: str | None = None) -> ReadResult:
    """Read preference records from a file or a ``datasets.Dataset``.

    Parameters
    ----------
    source : path or datasets.Dataset
        JSONL, JSON, CSV, Parquet (needs ``rankalign[parquet]``), PrefLib ``.soc/.soi/.toc/.toi``, or a
        folder written by ``datasets.Dataset.save_to_disk`` (needs ``rankalign[train]``).
    layout : str, optional
        One of :data:`LAYOUTS`; detected from the column names when omitted.
    mapping : dict or "ours=theirs,..." str, optional
        Our column name -> the file's column name, e.g. ``{"item_a": "home", "item_b": "away",
        "outcome": "result"}``.
    outcomes : dict or "label=a,..." str, optional
        Relabel outcome values to ``a`` (first wins), ``b`` (second wins) or ``tie``, e.g.
        ``{"1": "a", "0": "tie", "-1": "b"}``.
    skip_invalid : bool
        Skip bad rows and count them by reason in ``report.skipped`` instead of raising.
    format : str, optional
        Override the format found from the extension (``jsonl``, ``json``, ``csv``, ``parquet``, ``preflib``).

    Returns
    -------
    ReadResult
        ``.records`` (list of RankedList / Judgment), ``.layout``, ``.report``.
    """
    stream = iter_records(source, layout=layout, mapping=mapping, outcomes=outcomes, skip_invalid=skip_invalid,
                          format=format)
    records = list(stream)
    return ReadResult(records=records, layout=stream.layout, report=stream.report)


# ---------------------------------------------------------------------------------------------- writing
RANKEDLIST_COLUMNS = ("prompt", "candidates", "ranks", "scores", "annotator", "weight", "meta")
JUDGMENT_COLUMNS = ("prompt", "response", "label", "annotator", "weight", "meta")


def _cell(key, value) -> str:
    """One CSV/Parquet cell of the native form: nested values as JSON text, None as an empty cell."""
    if value is None:
        return ""
    if key == "meta" and not value:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and key not in ("candidates", "ranks", "scores", "meta"):
        return value
    return json.dumps(value, ensure_ascii=False)


def _native_rows(records, columns):
    for record in records:
        data = record.to_dict()
        data.setdefault("weight", 1.0)
        yield [_cell(key, data.get(key)) for key in columns]


def write(records: Iterable, path, format: str | None = None) -> int:
    """Write records in their native form (``RankedList.to_dict`` / ``Judgment.to_dict``), atomically.

    JSONL and JSON keep nested values as JSON; CSV and Parquet hold nested values (candidates, ranks,
    scores, meta, chat messages) as JSON text in their cells, which :func:`read` decodes. Reading the file
    back gives records equal to the ones written. Returns the number of records written.
    """
    if isinstance(records, (RankedList, Judgment)) or not isinstance(records, Iterable):
        raise TypeError(f"write() takes an iterable of records, got {type(records).__name__}"
                        + (" (wrap one record in a list)" if isinstance(records, (RankedList, Judgment)) else ""))
    fmt = _sources.detect_format(path, format)
    if fmt not in ("jsonl", "json", "csv", "parquet"):
        raise UsageError(f"cannot write format {fmt!r}; use jsonl, json, csv or parquet")
    records = list(records) if fmt in ("json", "csv", "parquet") else records
    count = 0

    def dumps(record):
        if not isinstance(record, (RankedList, Judgment)):
            raise TypeError(f"write() takes RankedList or Judgment records, got {type(record).__name__}")
        return json.dumps(record.to_dict(), ensure_ascii=False)

    if fmt == "jsonl":
        def write_jsonl(handle):
            nonlocal count
            for record in records:
                handle.write(dumps(record) + "\n")
                count += 1
        _sources.atomic_write(path, write_jsonl)
        return count
    if fmt == "json":
        def write_json(handle):
            handle.write("[\n" + ",\n".join(dumps(r) for r in records) + ("\n]\n" if records else "]\n"))
        _sources.atomic_write(path, write_json)
        return len(records)

    kinds = {type(r) for r in records}
    if len(kinds) > 1:
        raise UsageError(f"{fmt} files hold one kind of record; got both RankedList and Judgment "
                         "(write JSONL for mixed records)")
    for record in records:
        if not isinstance(record, (RankedList, Judgment)):
            raise TypeError(f"write() takes RankedList or Judgment records, got {type(record).__name__}")
    columns = JUDGMENT_COLUMNS if kinds == {Judgment} else RANKEDLIST_COLUMNS
    if fmt == "csv":
        import csv

        def write_csv(handle):
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows(_native_rows(records, columns))
        _sources.atomic_write(path, write_csv)
        return len(records)

    pq = _sources.need_pyarrow()
    import pyarrow as pa

    rows = list(_native_rows(records, columns))
    arrays = {}
    for index, key in enumerate(columns):
        values = [row[index] for row in rows]
        arrays[key] = pa.array([float(v) for v in values], pa.float64()) if key == "weight" else \
            pa.array(values, pa.string())
    table = pa.table(arrays)
    _sources.atomic_write(path, lambda handle: pq.write_table(table, handle), binary=True)
    return len(records)


__all__ = ["read", "iter_records", "write", "ReadResult", "ReadReport", "RecordStream", "LAYOUTS"]
