"""Sufficient statistics of paired comparisons, and identifiability checks.

Every pairwise fit works on *deduplicated* data: one row per distinct (first, second[, home]) pair
carrying three counts -- wins of ``first``, ties, wins of ``second``. A million battles between 200
models collapse to at most 200·199 rows, so the cost of a Newton step no longer depends on the number
of battles. Rows that carry per-comparison covariates (style features) cannot be merged and are kept
as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from rankalign.data.errors import DataError
from rankalign.errors import UsageError

# bincount over a dense key space is faster than sorting while the key space stays small
_DENSE_KEY_LIMIT = 50_000_000


@dataclass(frozen=True)
class PairCounts:
    """Deduplicated paired comparisons.

    Attributes
    ----------
    n_items : int
    first, second : int64 arrays [rows]
        Item indices. Without an order effect the pair is canonical (``first < second``).
    wins_first, ties, wins_second : float64 arrays [rows]
        Summed counts of each outcome.
    home : float64 array [rows]
        1.0 where ``first`` had the order (home) advantage, else 0.0.
    features : float64 array [rows, q] or None
        Covariate differences x_first - x_second (contextual Bradley-Terry).
    """

    n_items: int
    first: np.ndarray
    second: np.ndarray
    wins_first: np.ndarray
    ties: np.ndarray
    wins_second: np.ndarray
    home: np.ndarray
    features: np.ndarray | None = None

    @property
    def total(self) -> np.ndarray:
        return self.wins_first + self.ties + self.wins_second

    def comparisons_per_item(self) -> np.ndarray:
        """Number of comparisons each item took part in (ties included)."""
        t = self.total
        return (np.bincount(self.first, weights=t, minlength=self.n_items)
                + np.bincount(self.second, weights=t, minlength=self.n_items))


def as_vector(values, name: str, *, integer: bool = False) -> np.ndarray:
    """``values`` as a one-dimensional int64 (``integer``) or float64 array, or a :class:`DataError` naming
    ``name``: a scalar or a 2-D array (one entry per comparison is expected), text, and for indices any
    value that is not a whole number (2.7 is not silently read as item 2; NaN, 2**70 and True are refused)."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as error:
        raise DataError(f"{name} is not an array of numbers ({error})", field=name, reason="bad_type") from None
    if array.ndim != 1:
        raise DataError(f"{name} must be one-dimensional (one entry per comparison or ranking), got shape {array.shape}",
                        field=name, reason="bad_shape")
    if array.size == 0:
        return array.astype(np.int64 if integer else np.float64)
    kind = array.dtype.kind
    if kind not in "iuf":
        raise DataError(f"{name} must hold numbers, got {array.ravel()[0]!r} ({array.dtype})", line=1, field=name,
                        reason="bad_type")
    if not integer:
        return array.astype(np.float64)
    if kind == "f":
        bad = np.flatnonzero(~np.isfinite(array) | (array != np.round(array)) | (np.abs(array) >= 2 ** 62))
        if bad.size:
            raise DataError(f"{name} holds item indices, which are whole numbers; got {array[bad[0]].item()!r}",
                            line=int(bad[0]) + 1, field=name, reason="bad_type")
    elif kind == "u" and array.max() >= 2 ** 62:
        bad = int(np.argmax(array >= 2 ** 62))
        raise DataError(f"item index {array[bad].item()} is too large", line=bad + 1, field=name, reason="unknown_item")
    return array.astype(np.int64)


def check_penalties(prior=0.0, npseudo=0.0) -> None:
    """A :class:`~rankalign.errors.UsageError` (a ValueError) naming ``prior`` or ``npseudo`` unless it is a
    finite number >= 0."""
    for name, value in (("prior", prior), ("npseudo", npseudo)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{name} must be a finite number >= 0, got {value!r}")


def validate_comparisons(first, second, outcome, count=None, *, n_items=None):
    """Check raw comparison arrays; return them as (int64, int64, float64, float64, n_items).

    Raises :class:`DataError` naming the (1-based) row and field of the first problem:
    self-comparisons, outcomes other than 1 / 0.5 / 0, negative or non-finite counts, unknown indices.
    """
    first = as_vector(first, "first", integer=True)
    second = as_vector(second, "second", integer=True)
    outcome = as_vector(outcome, "outcome")
    count = np.ones_like(outcome) if count is None else as_vector(count, "count")
    if n_items is not None and (isinstance(n_items, bool) or int(n_items) != n_items or n_items < 1):
        raise DataError(f"n_items must be a positive integer, got {n_items!r}", field="n_items", reason="bad_type")
    if not (len(first) == len(second) == len(outcome) == len(count)):
        raise DataError(f"first, second, outcome and count have different lengths "
                        f"({len(first)}, {len(second)}, {len(outcome)}, {len(count)})", reason="length_mismatch")
    if len(first) == 0:
        raise DataError("no comparisons", reason="empty")
    if n_items is None:
        n_items = int(max(first.max(), second.max())) + 1
    for name, arr in (("first", first), ("second", second)):
        bad = np.flatnonzero((arr < 0) | (arr >= n_items))
        if bad.size:
            raise DataError(f"item index {arr[bad[0]]} outside 0..{n_items - 1}", line=int(bad[0]) + 1,
                            field=name, reason="unknown_item")
    bad = np.flatnonzero(first == second)
    if bad.size:
        raise DataError(f"item {first[bad[0]]} is compared with itself", line=int(bad[0]) + 1,
                        field="second", reason="self_comparison")
    bad = np.flatnonzero((outcome != 1.0) & (outcome != 0.5) & (outcome != 0.0))
    if bad.size:
        raise DataError(f"outcome must be 1 (first wins), 0.5 (tie) or 0 (second wins), got {outcome[bad[0]]}",
                        line=int(bad[0]) + 1, field="outcome", reason="unknown_outcome")
    bad = np.flatnonzero(~np.isfinite(count) | (count < 0))
    if bad.size:
        raise DataError(f"count must be finite and >= 0, got {count[bad[0]]}", line=int(bad[0]) + 1,
                        field="count", reason="negative_count")
    return first, second, outcome, count, int(n_items)


def pair_counts(first, second, outcome, count=None, *, n_items=None, home=None, features=None,
                ordered=False) -> PairCounts:
    """Deduplicate comparisons into per-pair outcome counts (the sufficient statistics).

    Parameters
    ----------
    first, second : int arrays [m]
        Item indices of each comparison.
    outcome : float array [m]
        1.0 ``first`` wins, 0.5 tie, 0.0 ``second`` wins.
    count : float array [m], optional
        Multiplicity of each row (default 1).
    home : array [m] of 0/1, optional
        1 where ``first`` played at home (order advantage). Implies ``ordered``.
    features : float array [m, q], optional
        Covariate differences x_first - x_second; rows are then kept as they are (no merging).
    ordered : bool
        Keep (a, b) and (b, a) apart (needed for an order effect). Otherwise pairs are canonicalised to
        ``first < second`` with the outcome mirrored.
    """
    first, second, outcome, count, n_items = validate_comparisons(first, second, outcome, count, n_items=n_items)
    m = len(first)
    home_arr = np.zeros(m) if home is None else np.asarray(home, dtype=np.float64).ravel()
    if len(home_arr) != m:
        raise DataError(f"home has {len(home_arr)} rows for {m} comparisons", field="home",
                        reason="length_mismatch")
    ordered = ordered or home is not None
    if features is not None:
        features = np.asarray(features, dtype=np.float64).reshape(m, -1)
        if not np.all(np.isfinite(features)):
            row = int(np.flatnonzero(~np.all(np.isfinite(features), axis=1))[0])
            raise DataError("covariates must be finite", line=row + 1, field="features", reason="non_finite")
        keep = count > 0
        win_a = count * (outcome == 1.0)
        tie = count * (outcome == 0.5)
        win_b = count * (outcome == 0.0)
        return PairCounts(n_items, first[keep], second[keep], win_a[keep], tie[keep], win_b[keep],
                          home_arr[keep], features[keep])
    # outcome code: 0 first wins, 1 tie, 2 second wins (validated above, so exact)
    code = ((1.0 - outcome) * 2.0).astype(np.int64)
    if not ordered:
        swap = first > second
        first, second = np.minimum(first, second), np.maximum(first, second)
        code = np.where(swap, 2 - code, code)
    home_bit = (home_arr > 0).astype(np.int64)
    key = (first * n_items + second) * 2 + home_bit
    key_space = n_items * n_items * 2
    if key_space * 3 <= _DENSE_KEY_LIMIT:
        table = np.bincount(key * 3 + code, weights=count, minlength=key_space * 3).reshape(key_space, 3)
        unique_key = np.flatnonzero(table.any(axis=1))
        table = table[unique_key]
    else:
        unique_key, inverse = np.unique(key, return_inverse=True)
        table = np.bincount(inverse * 3 + code, weights=count, minlength=len(unique_key) * 3).reshape(-1, 3)
        nonzero = table.any(axis=1)
        unique_key, table = unique_key[nonzero], table[nonzero]
    sums = [np.ascontiguousarray(table[:, k]) for k in range(3)]
    pair = unique_key // 2
    return PairCounts(n_items, pair // n_items, pair % n_items, sums[0], sums[1], sums[2],
                      (unique_key % 2).astype(np.float64), None)


def _components_message(labels, items, limit=8):
    groups = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(items[index])
    parts = sorted(groups.values(), key=len)
    shown = []
    for group in parts[:limit]:
        names = ", ".join(map(str, group[:6])) + (", ..." if len(group) > 6 else "")
        shown.append(f"{{{names}}}")
    more = f" and {len(parts) - limit} more" if len(parts) > limit else ""
    return f"{len(parts)} components: " + "; ".join(shown) + more


def check_identifiable(n_items, winners, losers, items=None, *, weakly_linked=None, what="comparisons"):
    """Raise a :class:`ValueError` when the maximum-likelihood estimate does not exist.

    Zermelo/Ford's condition for Bradley-Terry (and Hunter 2004 for Plackett-Luce): the directed graph
    with an edge winner -> loser for every observed win must be strongly connected. A tie is an edge
    both ways. Two failures are told apart: a comparison graph that is not even weakly connected
    (ratings of separate components are not comparable at all), and items that never win or never lose
    (their MLE is at -inf or +inf).

    Parameters
    ----------
    winners, losers : int arrays
        One directed edge each (winner -> loser).
    weakly_linked : (int array, int array), optional
        Extra undirected edges that connect items without ordering them (used for the weak check).
    """
    items = list(range(n_items)) if items is None else list(items)
    winners = np.asarray(winners, dtype=np.int64)
    losers = np.asarray(losers, dtype=np.int64)
    data = np.ones(len(winners))
    graph = sparse.coo_matrix((data, (winners, losers)), shape=(n_items, n_items)).tocsr()
    n_weak, weak_labels = connected_components(graph, directed=True, connection="weak")
    hint = ("Add a prior (`--prior ALPHA`, i.e. `prior=ALPHA`: MAP estimation) or more "
            f"{what} to get finite ratings.")
    if n_weak > 1:
        raise DataError(f"the comparison graph is disconnected, so ratings in different parts cannot be "
                         f"compared: {_components_message(weak_labels, items)}. {hint}", reason="not_identified")
    n_strong, strong_labels = connected_components(graph, directed=True, connection="strong")
    if n_strong > 1:
        out_degree = np.bincount(winners, minlength=n_items)
        in_degree = np.bincount(losers, minlength=n_items)
        never_win = [items[i] for i in np.flatnonzero(out_degree == 0)]
        never_lose = [items[i] for i in np.flatnonzero(in_degree == 0)]
        detail = []
        if never_win:
            detail.append(f"never win: {', '.join(map(str, never_win[:10]))}"
                          + (" ..." if len(never_win) > 10 else ""))
        if never_lose:
            detail.append(f"never lose: {', '.join(map(str, never_lose[:10]))}"
                          + (" ..." if len(never_lose) > 10 else ""))
        detail_text = ("; ".join(detail) + "; ") if detail else ""
        raise DataError(
            "the maximum-likelihood estimate does not exist: the directed win graph is not strongly "
            f"connected (some group of items beats every item outside it, or loses to every one), "
            f"{detail_text}{_components_message(strong_labels, items)}. {hint}", reason="not_identified")


def check_pair_counts_identifiable(counts: PairCounts, items=None):
    """Apply :func:`check_identifiable` to deduplicated pairs (ties are edges both ways)."""
    a_beats = (counts.wins_first + counts.ties) > 0
    b_beats = (counts.wins_second + counts.ties) > 0
    winners = np.concatenate([counts.first[a_beats], counts.second[b_beats]])
    losers = np.concatenate([counts.second[a_beats], counts.first[b_beats]])
    check_identifiable(counts.n_items, winners, losers, items)
