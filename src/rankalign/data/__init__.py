"""Records, readers, writers and converters for every shape of preference feedback (no torch)."""

from .comparisons import Comparisons, read_comparisons
from .errors import DataError
from .layouts import LAYOUTS, split_messages, split_transcripts
from .readers import ReadReport, ReadResult, RecordStream, iter_records, read, write
from .records import PAIR_STRATEGIES, Judgment, RankedList, Record, iter_pairs

__all__ = [
    "DataError", "RankedList", "Judgment", "Record", "iter_pairs", "PAIR_STRATEGIES",
    "LAYOUTS", "read", "iter_records", "write", "ReadResult", "ReadReport", "RecordStream",
    "Comparisons", "read_comparisons", "split_transcripts", "split_messages",
]
