"""Records, readers, writers and converters for every shape of preference feedback (no torch).

>>> from rankalign.data import read, read_comparisons, write
>>> result = read("pairs.jsonl")                     # layout detected from the columns   # doctest: +SKIP
>>> result.layout, len(result), result.report.skipped                                    # doctest: +SKIP
>>> games = read_comparisons("matches.csv", mapping="item_a=home,item_b=away,outcome=result",
...                          outcomes="1=a,0=tie,-1=b")                                   # doctest: +SKIP
>>> write(result.records, "pairs.parquet")          # atomic; read() gives the records back  # doctest: +SKIP

Layouts: :data:`LAYOUTS` (columns in :data:`LAYOUT_COLUMNS`). Bad rows raise :class:`DataError` naming file,
line and field, or are skipped and counted with ``skip_invalid=True``.
"""

from ._sources import FORMATS, BadRow, detect_format, iter_jsonl, loads_json
from .comparisons import Comparisons, read_comparisons
from .errors import DataError
from .layouts import LAYOUT_COLUMNS, LAYOUTS, split_messages, split_transcripts
from .readers import ReadReport, ReadResult, RecordStream, iter_records, read, write
from .records import PAIR_STRATEGIES, Judgment, RankedList, Record, annotator_id, iter_pairs
from .summary import summarize, to_lists, to_pairs

__all__ = [
    "DataError", "RankedList", "Judgment", "Record", "iter_pairs", "PAIR_STRATEGIES", "annotator_id",
    "LAYOUTS", "LAYOUT_COLUMNS", "FORMATS", "detect_format", "loads_json", "iter_jsonl", "BadRow",
    "read", "iter_records", "write", "ReadResult", "ReadReport", "RecordStream",
    "Comparisons", "read_comparisons", "split_transcripts", "split_messages", "summarize", "to_pairs", "to_lists",
]
