"""File formats: turn a path (or a ``datasets.Dataset``) into a stream of ``(line, row)`` pairs.

A *row* is a plain dict of column -> value as found in the file; no layout is applied here. Each
source yields rows lazily so that a 1 GB JSONL file is validated line by line, never loaded whole.

Problems are raised as :class:`DataError` with the file and line. Under ``skip_invalid`` the caller
catches them row by row; a source that cannot go on after a problem (broken JSON document, broken
Parquet file) raises regardless.

Line numbers: JSONL and PrefLib count physical lines from 1. CSV counts physical lines from 1 with the
header on line 1, so the first data row is line 2 (a quoted field spanning lines moves later rows
down). JSON documents, Parquet files and ``datasets.Dataset`` objects have no meaningful lines; there
the ``line`` is the 1-based row number.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from rankalign.errors import UsageError

from .._atomic import atomic_write  # noqa: F401  (the readers write through it)
from .errors import DataError

FORMATS = ("jsonl", "json", "csv", "parquet", "preflib", "dataset", "dataset_dir")

_EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
    ".pq": "parquet", ".soc": "preflib", ".soi": "preflib", ".toc": "preflib", ".toi": "preflib",
}

# A row that could not be read at all (bad JSON, bad UTF-8); sources yield it so the caller can count it
# under skip_invalid without the source having to know about skipping.
class BadRow:
    __slots__ = ("error",)

    def __init__(self, error: DataError):
        self.error = error


def is_dataset(source) -> bool:
    """True for a Hugging Face ``datasets.Dataset`` (checked by duck typing: no import needed)."""
    return hasattr(source, "column_names") and hasattr(source, "features") and not isinstance(source, (str, Path))


def detect_format(source, format: str | None = None) -> str:
    """The file format of ``source``: ``format`` if given, else from the extension (``.gz`` not supported)."""
    dataset = is_dataset(source)
    if not dataset:
        if type(source).__name__ in ("DatasetDict", "IterableDatasetDict"):
            raise UsageError("source is a DatasetDict (a mapping of splits); pass one split, e.g. dataset['train']")
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"source must be a file path or a datasets.Dataset, got {type(source).__name__}")
        if not str(source).strip():
            raise UsageError("the path is empty (an empty string names no file)")
    if format is not None:
        if not isinstance(format, str) or format not in FORMATS:
            raise UsageError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
        if dataset != (format == "dataset"):  # a Dataset read as a file would be opened by its repr
            hint = "omit format" if dataset else "format='dataset' is for a datasets.Dataset object"
            raise UsageError(f"format={format!r} does not fit a {'datasets.Dataset' if dataset else 'file path'} "
                             f"source; {hint}")
        return format
    if dataset:
        return "dataset"
    if Path(source).is_dir():
        return "dataset_dir"  # a folder written by datasets.Dataset.save_to_disk
    suffix = Path(source).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise DataError(f"cannot tell the format from the extension {suffix!r}; pass format= one of "
                        f"{', '.join(f for f in FORMATS if f != 'dataset')} (known extensions: "
                        f"{', '.join(sorted(_EXTENSIONS))})", path=str(source), reason="unknown_format")
    return _EXTENSIONS[suffix]


def need_pyarrow():
    from rankalign.errors import require

    require("pyarrow", "parquet", "reading or writing Parquet")
    return require("pyarrow.parquet", "parquet", "reading or writing Parquet")


# -------------------------------------------------------------------------------------------- readers
_SIGNATURES = (
    (b"\xff\xfe", "the file is UTF-16 (it starts with a UTF-16 byte order mark): save it as UTF-8"),
    (b"\xfe\xff", "the file is UTF-16 (it starts with a UTF-16 byte order mark): save it as UTF-8"),
    (b"\x1f\x8b", "the file is gzip-compressed: decompress it first (gunzip)"),
    (b"PK\x03\x04", "the file is a zip archive (or an Excel workbook): extract it, or export CSV"),
    (b"(\xb5/\xfd", "the file is zstd-compressed: decompress it first (unzstd)"),
    (b"BZh", "the file is bzip2-compressed: decompress it first (bunzip2)"),
)


def encoding_hint(start: bytes) -> str | None:
    """What a file that is not UTF-8 text most likely is, from its first bytes (None: no idea)."""
    return next((hint for magic, hint in _SIGNATURES if start.startswith(magic)), None)


def _decode_line(raw: bytes, path: str, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"invalid UTF-8 at byte {error.start} of the line ({raw[error.start:error.start + 4]!r})",
                        path=path, line=line, reason="bad_encoding",
                        hint=encoding_hint(raw) if line == 1 else None) from None


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _first_repeated(pairs) -> str:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    raise AssertionError("no repeated key")  # pragma: no cover - only called when there is one


def _unique_object(pairs) -> dict:
    """``object_pairs_hook`` that refuses an object naming a key twice (``json`` would keep the last
    value silently, so a row could say two things and be read as one)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey(_first_repeated(pairs))
    return obj


class _MarkedObject(dict):
    """An object that named a key twice, kept (last value wins) so that the row it is in can be reported."""

    __slots__ = ("repeated",)


def _marking_object(pairs) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        obj = _MarkedObject(obj)
        obj.repeated = _first_repeated(pairs)
    return obj


def _repeated_key(value) -> str | None:
    """The first key repeated in ``value`` (a document parsed with :func:`_marking_object`), or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _MarkedObject):
            return item.repeated
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def duplicate_key_error(key: str, path=None, line=None, field=None) -> DataError:
    """The error for an object naming ``key`` twice; ``field`` (default: the key) is where it was found."""
    return DataError(f"key {key!r} appears twice in one JSON object (which value is meant is ambiguous)",
                     path=path, line=line, field=key if field is None else field, reason="duplicate_key")


def loads_json(text: str, path=None, line=None, field=None, *, _hook=_unique_object):
    """``json.loads`` whose failures are :class:`DataError`: malformed JSON, an object that names a key
    twice (``reason="duplicate_key"``), or nesting too deep to parse (``reason="too_deep"``, instead of a
    RecursionError that ``--skip-invalid`` could not count)."""
    try:
        return json.loads(text, object_pairs_hook=_hook)
    except _DuplicateKey as error:
        raise duplicate_key_error(error.key, path, line, field) from None
    except json.JSONDecodeError as error:
        raise DataError(f"malformed JSON: {error.msg} (column {error.colno})", path=path,
                        line=line if line is not None or path is None else error.lineno, field=field,
                        reason="malformed_json") from None
    except RecursionError:
        raise DataError("JSON nested too deeply to read", path=path, line=line, field=field,
                        reason="too_deep") from None


def iter_jsonl(path: str) -> Iterator[tuple[int, dict | BadRow]]:
    """JSON Lines: ``(line number, object)`` per line, or ``(line number, BadRow)`` for a line that is not a
    JSON object (its ``error`` is the :class:`DataError` naming file and line, to raise or count); blank lines
    are ignored; a UTF-8 byte-order mark is accepted."""
    with open(path, "rb") as handle:
        for line, raw in enumerate(handle, 1):
            if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                text = _decode_line(raw, path, line)
                row = loads_json(text, path, line)
                if not isinstance(row, dict):
                    raise DataError(f"expected a JSON object per line, got {type(row).__name__}", path=path,
                                    line=line, reason="bad_type")
            except DataError as error:
                yield line, BadRow(error)
                continue
            yield line, row


def _read_text(path: str) -> str:
    """The whole file as text; a UTF-8 error names the line it is on."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"invalid UTF-8 ({data[error.start:error.start + 4]!r})", path=path, line=line,
                        reason="bad_encoding", hint=encoding_hint(data[:4])) from None


def iter_json(path: str) -> Iterator[tuple[int, dict | BadRow]]:
    """A JSON document: a list of objects, or an object holding one under ``"data"`` or ``"records"``."""
    text = _read_text(path)
    document = loads_json(text, path, _hook=_marking_object)
    if isinstance(document, _MarkedObject):
        raise duplicate_key_error(document.repeated, path)
    if isinstance(document, dict):
        for key in ("data", "records", "rows"):
            if isinstance(document.get(key), list):
                document = document[key]
                break
        else:
            raise DataError("expected a list of objects (or an object with a 'data' or 'records' list), "
                            f"got an object with keys {sorted(document)[:10]}", path=path, reason="bad_type")
    if not isinstance(document, list):
        raise DataError(f"expected a list of objects, got {type(document).__name__}", path=path, reason="bad_type")
    for row_number, row in enumerate(document, 1):
        if not isinstance(row, dict):
            yield row_number, BadRow(DataError(f"expected an object, got {type(row).__name__}", path=path,
                                               line=row_number, reason="bad_type"))
        elif (repeated := _repeated_key(row)) is not None:
            yield row_number, BadRow(duplicate_key_error(repeated, path, row_number))
        else:
            yield row_number, row


def iter_csv(path: str, *, skip_invalid: bool = False) -> Iterator[tuple[int, dict | BadRow]]:
    """CSV with a header row. Values stay strings; an empty cell is ``""``.

    A line with invalid UTF-8 is reported with its line number (and skipped under ``skip_invalid``).
    """
    _allow_long_csv_cells()
    with open(path, "rb") as handle:
        counter = _LineCounter(path, handle, skip_invalid)
        reader = _CsvRows(csv.reader(counter), counter, path)
        try:
            header = next(reader)
        except StopIteration:
            return
        header = [h.lstrip("\ufeff").strip() for h in header]
        _check_header(header, path)
        width = len(header)
        start = counter.line + 1
        for cells in reader:
            for error in counter.take_errors():
                yield error.line, BadRow(error)
            line = start
            start = counter.line + 1
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            if len(cells) != width:
                what = "missing" if len(cells) < width else "extra"
                field = header[len(cells)] if len(cells) < width else None
                yield line, BadRow(DataError(f"{len(cells)} cells for {width} columns ({what} values)",
                                             path=path, line=line, field=field, reason="missing_field"
                                             if len(cells) < width else "extra_field"))
                continue
            yield line, dict(zip(header, cells))
        for error in counter.take_errors():
            yield error.line, BadRow(error)


def _allow_long_csv_cells() -> None:
    """Lift the csv module's 128 KiB cell limit (a long chat transcript exceeds it); process-wide, raised only."""
    limit = sys.maxsize
    while limit > csv.field_size_limit():
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # a C long narrower than Py_ssize_t (Windows)
            limit //= 2


class _CsvRows:
    """``csv.reader`` whose own errors (a newline inside an unquoted cell, e.g. from old Mac ``\r`` line
    endings; an unterminated quote at the end of the file) become :class:`DataError` with the line."""

    def __init__(self, reader, counter, path):
        self.reader, self.counter, self.path = reader, counter, path

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self.reader)
        except csv.Error as error:
            raise csv_error(error, self.path, self.counter.line) from None


def csv_error(error: csv.Error, path, line) -> DataError:
    """A DataError for what Python's csv module could not parse (its own words, with the usual cause)."""
    text = str(error)
    if "new-line character seen in unquoted field" in text:  # a CR alone ends the line: old Mac files
        return DataError("unreadable CSV: a carriage return (CR) ends a line inside a cell; the file seems to "
                         "use CR-only (old Mac) line endings", path=path, line=line, reason="bad_format",
                         hint="convert the line endings to LF or CRLF")
    return DataError(f"unreadable CSV: {text}", path=path, line=line, reason="bad_format")


def _check_header(header: list[str], path: str):
    seen = set()
    for name in header:
        if name in seen:
            raise DataError(f"column {name!r} appears twice in the header", path=path, line=1, field=name,
                            reason="duplicate_column")
        seen.add(name)


class _LineCounter:
    """Feeds csv.reader decoded lines while counting them; bad UTF-8 lines are held back as errors."""

    def __init__(self, path, handle, skip_invalid):
        self.path, self.handle, self.skip_invalid = path, handle, skip_invalid
        self.line = 0
        self.errors: list[DataError] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        while True:
            raw = next(self.handle)
            self.line += 1
            try:
                return _decode_line(raw, self.path, self.line)
            except DataError as error:
                if not self.skip_invalid:
                    raise
                self.errors.append(error)

    def take_errors(self) -> list[DataError]:
        errors, self.errors = self.errors, []
        return errors


def _holds_binary(arrow_type) -> bool:
    """Whether a Parquet column's type is binary, or a list or struct with binary inside."""
    import pyarrow as pa

    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) \
            or pa.types.is_fixed_size_binary(arrow_type):
        return True
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return _holds_binary(arrow_type.value_type)
    if pa.types.is_struct(arrow_type):
        return any(_holds_binary(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    return False


def _decoded(value, path, line, field):
    """``value`` with every ``bytes`` inside decoded as UTF-8 (a DataError naming the field if it is not)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"binary value {value[:20]!r} is not UTF-8 text", path=path, line=line, field=field,
                            reason="bad_encoding") from None
    if isinstance(value, list):
        return [_decoded(item, path, line, field) for item in value]
    if isinstance(value, dict):
        return {key: _decoded(item, path, line, field) for key, item in value.items()}
    return value


def iter_parquet(path: str) -> Iterator[tuple[int, dict]]:
    """Parquet, read in record batches (needs ``pyarrow``: ``pip install 'rankalign[parquet]'``)."""
    pq = need_pyarrow()
    import pyarrow as pa

    row_number = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=16384)
        for batch in batches:
            binary = [field.name for field in batch.schema if _holds_binary(field.type)]
            for row in batch.to_pylist():
                row_number += 1
                for name in binary:  # a binary column holds text as bytes: read it as UTF-8, as a CSV is
                    row[name] = _decoded(row[name], path, row_number, name)
                yield row_number, row
    except (pa.ArrowException, OSError) as error:  # not Parquet, truncated, or a corrupt page
        if isinstance(error, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        where = f" after row {row_number}" if row_number else ""
        raise DataError(f"not a readable Parquet file{where}: {error}", path=path,
                        line=row_number + 1 if row_number else None, reason="bad_format") from None


def load_dataset_dir(path: str):
    """A ``datasets.Dataset`` saved with ``save_to_disk`` (needs ``datasets``: ``rankalign[train]``).

    A saved ``DatasetDict`` with one split is read as that split; with several, name one in the path
    (``folder/train``).
    """
    try:
        import datasets
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"{path} is a folder; reading a saved datasets.Dataset needs the datasets library, which is not "
            "installed: pip install 'rankalign[train]'") from None
    try:
        loaded = datasets.load_from_disk(path)
    except FileNotFoundError as error:
        raise DataError(f"not a saved datasets.Dataset folder ({error})", path=path, reason="unknown_format") from None
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise DataError(f"a DatasetDict with splits {sorted(loaded)}; read one split's folder, e.g. "
                            f"{Path(path) / sorted(loaded)[0]}", path=path, reason="unknown_format")
        loaded = next(iter(loaded.values()))
    return loaded


def iter_dataset(dataset) -> Iterator[tuple[int, dict]]:
    """Rows of a ``datasets.Dataset`` (1-based row numbers)."""
    for row_number, row in enumerate(dataset, 1):
        yield row_number, dict(row)


def iter_rows(source, format: str, *, skip_invalid: bool = False) -> Iterator[tuple[int, dict | BadRow]]:
    """Rows of ``source`` in the given format (not PrefLib, which has its own reader)."""
    if format == "jsonl":
        return iter_jsonl(str(source))
    if format == "json":
        return iter_json(str(source))
    if format == "csv":
        return iter_csv(str(source), skip_invalid=skip_invalid)
    if format == "parquet":
        return iter_parquet(str(source))
    if format == "dataset":
        return iter_dataset(source)
    if format == "dataset_dir":
        return iter_dataset(load_dataset_dir(str(source)))
    raise ValueError(f"no row reader for format {format!r}")


# --------------------------------------------------------------------------------------------- PrefLib
def read_preflib(path: str, *, skip_invalid: bool = False):
    """Parse a PrefLib ``.soc``/``.soi``/``.toc``/``.toi`` file.

    Format (PrefLib 2022): ``# KEY: value`` header lines, among them ``# ALTERNATIVE NAME i: name``; then
    one line per unique order, ``count: a,b,{c,d},e`` -- alternatives best first, braces for a tie.

    Returns ``(names, orders, header, bad)``: ``names`` maps alternative id -> name, ``orders`` is a list of
    ``(line, count, [[ids of one rank group], ...])``, ``header`` the other header fields, and ``bad`` the
    line errors skipped under ``skip_invalid``.
    """
    names: dict[str, str] = {}
    header: dict[str, str] = {}
    orders = []
    bad: list[DataError] = []
    text = _read_text(path)
    for line, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            key, _, value = stripped[1:].partition(":")
            key, value = key.strip(), value.strip()
            if key.upper().startswith("ALTERNATIVE NAME"):
                names[key.split()[-1]] = value
            else:
                header[key.upper()] = value
            continue
        try:
            count, groups = _parse_preflib_order(stripped, path, line)
            _check_alternatives(groups, names, header, path, line)
            orders.append((line, count, groups))
        except DataError as error:
            if not skip_invalid:
                raise
            bad.append(error)
    return names, orders, header, bad


def _check_alternatives(groups, names, header, path, line) -> None:
    """Every alternative of an order must be declared: ``1..NUMBER ALTERNATIVES`` (or a named one); an
    undeclared id would otherwise become a new item nobody voted on."""
    declared = header.get("NUMBER ALTERNATIVES")
    if declared is None:
        return
    try:
        number = int(declared)
    except ValueError:
        raise DataError(f"NUMBER ALTERNATIVES must be an integer, got {declared!r}", path=path,
                        field="NUMBER ALTERNATIVES", reason="bad_header") from None
    for group in groups:
        for alternative in group:
            if alternative in names:
                continue
            if not (alternative.isdigit() and 1 <= int(alternative) <= number):
                raise DataError(f"alternative {alternative!r} is outside 1..{number} (NUMBER ALTERNATIVES)",
                                path=path, line=line, field="order", reason="unknown_alternative")


def _parse_preflib_order(text: str, path: str, line: int):
    count_text, colon, order_text = text.partition(":")
    if not colon:
        raise DataError("expected 'count: a,b,c'", path=path, line=line, field="count", reason="malformed_line")
    try:
        count = float(count_text.strip())
    except ValueError:
        raise DataError(f"count {count_text.strip()!r} is not a number", path=path, line=line, field="count",
                        reason="bad_count") from None
    if count < 0:
        raise DataError(f"count must be >= 0, got {count:g}", path=path, line=line, field="count",
                        reason="negative_count")
    groups: list[list[str]] = []
    current: list[str] | None = None
    for token in order_text.replace("{", ",{,").replace("}", ",},").split(","):
        token = token.strip()
        if not token:
            continue
        if token == "{":
            if current is not None:
                raise DataError("nested '{'", path=path, line=line, field="order", reason="malformed_line")
            current = []
        elif token == "}":
            if current is None:
                raise DataError("'}' without '{'", path=path, line=line, field="order", reason="malformed_line")
            if current:
                groups.append(current)
            current = None
        elif current is not None:
            current.append(token)
        else:
            groups.append([token])
    if current is not None:
        raise DataError("unclosed '{'", path=path, line=line, field="order", reason="malformed_line")
    if not groups:
        raise DataError("empty order", path=path, line=line, field="order", reason="empty_list")
    return count, groups


# ---------------------------------------------------------------------------------------------- writing
