"""Records, readers, writers and converters for every shape of preference feedback (no torch)."""

from .errors import DataError
from .records import PAIR_STRATEGIES, Judgment, RankedList, Record, iter_pairs

__all__ = ["DataError", "RankedList", "Judgment", "Record", "iter_pairs", "PAIR_STRATEGIES"]
