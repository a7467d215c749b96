"""The record model: one validated, immutable representation for every shape of preference feedback.

* :class:`RankedList` -- K candidates (responses, or item ids when ``prompt`` is None) with a rank each.
  Rank 0 is best, equal ranks are ties, ``None`` is "not ranked". A pair is a ranking of two
  (``ranks=[0, 1]``), a tie is ``ranks=[0, 0]``, a best-of-K pick is ``[0, 1, 1, 1]`` (the rest tied
  below the winner -- read as "the rest are not ordered among themselves"), a best/worst triad is
  ``[0, 1, 2]``.
* :class:`Judgment` -- unpaired feedback on a single response (thumbs up/down, or a probability).

Both are frozen dataclasses validated on construction; invalid input raises
:class:`~rankalign.data.errors.DataError` naming the field.

Chat messages are lists of ``{"role": str, "content": str}`` mappings. They are stored as tuples of
read-only mappings so that a record cannot be changed after validation; :meth:`RankedList.to_dict`
returns plain lists and dicts for serialisation.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from rankalign.errors import UsageError

from .errors import DataError

Message = Mapping[str, Any]
Text = str | tuple[Message, ...]
Score = float | Mapping[str, float]

PAIR_STRATEGIES = ("all", "adjacent", "best_vs_rest")


# ----------------------------------------------------------------------------------------------- helpers
def check_flag(value, name: str) -> bool:
    """``value`` as a bool, or a :class:`~rankalign.errors.UsageError` naming the argument: a switch given as
    ``"no"`` or ``None`` would otherwise be read by its truthiness (``"false"`` is true)."""
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        raise UsageError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_strategy(strategy) -> None:
    if not isinstance(strategy, str) or strategy not in PAIR_STRATEGIES:
        raise UsageError(f"unknown pair strategy {strategy!r}; choose one of {', '.join(PAIR_STRATEGIES)}")


def _freeze_messages(value, field_name: str) -> tuple[Message, ...]:
    if len(value) == 0:
        raise DataError("empty message list", field=field_name, reason="empty_text")
    frozen = []
    for i, message in enumerate(value):
        where = f"{field_name}[{i}]"
        if not isinstance(message, Mapping):
            raise DataError(f"a chat message must be a mapping with 'role' and 'content', got "
                            f"{type(message).__name__}", field=where, reason="bad_type")
        if "role" not in message or "content" not in message:
            raise DataError("a chat message needs 'role' and 'content'", field=where, reason="missing_field")
        if not isinstance(message["role"], str):
            raise DataError("'role' must be a string", field=f"{where}.role", reason="bad_type")
        if not message["role"].strip():  # a chat template cannot render a turn without a speaker
            raise DataError("'role' is empty", field=f"{where}.role", reason="empty_text")
        if not isinstance(message["content"], str):
            raise DataError("'content' must be a string", field=f"{where}.content", reason="bad_type")
        frozen.append(MappingProxyType(dict(message)))
    return tuple(frozen)


def _normalise_text(value, field_name: str, *, allow_none: bool, allow_empty: bool = False,
                    item_id: bool = False) -> Text | None:
    """Return ``value`` as a str or a frozen message tuple; reject empties unless ``allow_empty``.

    Responses may be empty (real data has them: an assistant turn with nothing in it); prompts and item
    ids may not. An integer is accepted only as an item id (``item_id``: 17 is stored as "17"); a number
    where a prompt or a response belongs is a type error, not text.
    """
    if value is None:
        if allow_none:
            return None
        raise DataError("missing", field=field_name, reason="missing_field")
    if isinstance(value, str):
        if not value.strip() and not allow_empty:
            raise DataError("empty text", field=field_name, reason="empty_text")
        return value
    if item_id and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # item ids such as 17 are stored as "17"
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        messages = _freeze_messages(value, field_name)
        if not allow_empty and not any(m["content"].strip() for m in messages):
            raise DataError("all messages are empty", field=field_name, reason="empty_text")
        return messages
    raise DataError(f"expected a string or a list of chat messages, got {type(value).__name__}",
                    field=field_name, reason="bad_type")


def _finite_float(value, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        import numpy as np  # numpy scalars are fine (numpy is a base dependency)

        if not (isinstance(value, np.generic) and np.issubdtype(type(value), np.number)):
            raise DataError(f"expected a number, got {type(value).__name__}", field=field_name,
                            reason="bad_type")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond float's range (hundreds of digits)
        raise DataError(f"number out of range: {str(value)[:20]}...", field=field_name, reason="non_finite") from None
    if not math.isfinite(value):
        raise DataError(f"must be finite, got {value}", field=field_name, reason="non_finite")
    return value


def annotator_id(value) -> str | None:
    """An annotator id as text: a string, or an integer (``7`` -> ``"7"``, also ``7.0`` from a float column);
    a blank string is no annotator (as an empty CSV cell is, in every layout); a mapping, a list or a
    boolean is refused rather than stored as its repr."""
    if value is None or isinstance(value, str):
        return value if value is None or value.strip() else None
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        raise DataError("an annotator id must be a string or an integer, got bool", field="annotator",
                        reason="bad_type")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    raise DataError(f"an annotator id must be a string or an integer, got {type(value).__name__}",
                    field="annotator", reason="bad_type")


def _text_key(value: Text):
    """Hashable identity of a candidate, for duplicate detection."""
    if isinstance(value, str):
        return value
    return tuple((m["role"], m["content"]) for m in value)


def _score_key(score):
    """Hashable form of one score (a float, None, or a read-only attribute mapping)."""
    return tuple(sorted(score.items())) if isinstance(score, Mapping) else score


def _thaw(value):
    if isinstance(value, tuple) and value and isinstance(value[0], Mapping):
        return [dict(m) for m in value]
    if isinstance(value, Mapping):
        return dict(value)
    return value


# ------------------------------------------------------------------------------------------ RankedList
@dataclass(frozen=True, kw_only=True, eq=True)
class RankedList:
    """K candidates and their ranks (0 best, equal = tie, None = unranked).

    Parameters
    ----------
    candidates : sequence of str or chat-message lists
        The responses (or item ids for item-level comparisons). At least one; no duplicates.
    ranks : sequence of int or None
        One per candidate, each in ``[0, K-1]``. Gaps are allowed (``[0, 2]`` is a valid pair);
        :meth:`levels` gives the dense order.
    prompt : str, chat messages, or None
        ``None`` means the candidates are items compared without a prompt (arena models, teams).
    scores : sequence of (float | {attribute: float} | None), optional
        Raw scores or per-attribute ratings the ranks were derived from, one per candidate.
    annotator : str, optional
        Who gave the judgment.
    weight : float
        Non-negative record weight (default 1). Converters that split or merge records adjust it.
    meta : mapping
        Free-form provenance (source file, line, ids). Not used by any algorithm.
    """

    candidates: tuple[Text, ...]
    ranks: tuple[int | None, ...]
    prompt: Text | None = None
    scores: tuple[Score | None, ...] | None = None
    annotator: str | None = None
    weight: float = 1.0
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        candidates = self.candidates
        if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
            raise DataError("expected a list of candidates", field="candidates", reason="bad_type")
        if len(candidates) == 0:
            raise DataError("no candidates", field="candidates", reason="empty_list")
        responses = self.prompt is not None  # candidates are responses (may be empty), not item ids
        normalised = tuple(_normalise_text(c, f"candidates[{i}]", allow_none=False, allow_empty=responses,
                                           item_id=not responses) for i, c in enumerate(candidates))
        seen: dict = {}
        for i, c in enumerate(normalised):
            key = _text_key(c)
            if key in seen:
                raise DataError(f"identical to candidates[{seen[key]}]", field=f"candidates[{i}]",
                                reason="duplicate_candidate")
            seen[key] = i
        k = len(normalised)

        ranks = self.ranks
        if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
            raise DataError("expected a list of ranks", field="ranks", reason="bad_type")
        if len(ranks) != k:
            raise DataError(f"{len(ranks)} ranks for {k} candidates", field="ranks", reason="length_mismatch")
        clean_ranks = []
        for i, r in enumerate(ranks):
            if r is None:
                clean_ranks.append(None)
                continue
            if isinstance(r, bool) or not isinstance(r, int):
                if isinstance(r, float) and r.is_integer():
                    r = int(r)
                else:
                    import numpy as np

                    if not isinstance(r, np.integer):
                        raise DataError(f"a rank must be an integer or null, got {r!r}", field=f"ranks[{i}]",
                                        reason="bad_type")
                    r = int(r)
            if not 0 <= r < k:
                raise DataError(f"rank {r} is out of range for {k} candidates (0..{k - 1})",
                                field=f"ranks[{i}]", reason="rank_out_of_range")
            clean_ranks.append(r)

        prompt = _normalise_text(self.prompt, "prompt", allow_none=True)

        scores = self.scores
        if scores is not None:
            if isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence):
                raise DataError("expected a list of scores", field="scores", reason="bad_type")
            if len(scores) != k:
                raise DataError(f"{len(scores)} scores for {k} candidates", field="scores",
                                reason="length_mismatch")
            clean_scores = []
            for i, s in enumerate(scores):
                if s is None:
                    clean_scores.append(None)
                elif isinstance(s, Mapping):
                    clean_scores.append(MappingProxyType(
                        {str(a): _finite_float(v, f"scores[{i}].{a}") for a, v in s.items()}))
                else:
                    clean_scores.append(_finite_float(s, f"scores[{i}]"))
            scores = tuple(clean_scores)

        annotator = annotator_id(self.annotator)
        weight = _finite_float(self.weight, "weight")
        if weight < 0:
            raise DataError(f"weight must be >= 0, got {weight}", field="weight", reason="negative_weight")
        if not isinstance(self.meta, Mapping):
            raise DataError("meta must be a mapping", field="meta", reason="bad_type")

        set_ = object.__setattr__
        set_(self, "candidates", normalised)
        set_(self, "ranks", tuple(clean_ranks))
        set_(self, "prompt", prompt)
        set_(self, "scores", scores)
        set_(self, "annotator", annotator)
        set_(self, "weight", weight)
        set_(self, "meta", MappingProxyType(dict(self.meta)))

    def __hash__(self) -> int:
        # the generated hash would hash the read-only mappings (meta, score mappings, chat messages), which
        # are unhashable; equal records have equal candidates, ranks, prompt, scores, annotator and weight
        return hash((tuple(_text_key(c) for c in self.candidates), self.ranks,
                     None if self.prompt is None else _text_key(self.prompt),
                     None if self.scores is None else tuple(_score_key(s) for s in self.scores),
                     self.annotator, self.weight))

    # --------------------------------------------------------------------------------- views
    @property
    def k(self) -> int:
        """Number of candidates."""
        return len(self.candidates)

    @property
    def has_ties(self) -> bool:
        ranked = [r for r in self.ranks if r is not None]
        return len(ranked) != len(set(ranked))

    def levels(self) -> list[list[int]]:
        """Candidate indices grouped by rank, best group first; unranked candidates are left out.

        >>> RankedList(candidates=["a", "b", "c"], ranks=[1, 0, 1]).levels()
        [[1], [0, 2]]
        """
        by_rank: dict[int, list[int]] = {}
        for i, r in enumerate(self.ranks):
            if r is not None:
                by_rank.setdefault(r, []).append(i)
        return [by_rank[r] for r in sorted(by_rank)]

    def dense_ranks(self) -> tuple[int | None, ...]:
        """Ranks renumbered 0, 1, 2, ... without gaps (ties kept)."""
        order = {r: d for d, r in enumerate(sorted({r for r in self.ranks if r is not None}))}
        return tuple(None if r is None else order[r] for r in self.ranks)

    # ---------------------------------------------------------------------------- conversion
    def pair_indices(self, strategy: str = "all", *, ties: bool = True) -> list[tuple[int, int, bool]]:
        """The ``(i, j, is_tie)`` index pairs that :meth:`to_pairs` produces, ``i`` ranked above ``j``.

        Strategies (ranked candidates only):

        * ``"all"``: every two candidates in different rank groups, K(K-1)/2 minus the tied ones.
        * ``"adjacent"``: every candidate of one rank group with every candidate of the next group.
        * ``"best_vs_rest"``: every candidate of the best group with every candidate of a lower group.

        With ``ties=True`` each pair of tied candidates is added as a tie (``is_tie=True``), for
        ``"all"`` and ``"adjacent"`` within every group, for ``"best_vs_rest"`` within the best group.
        """
        _check_strategy(strategy)
        ties = check_flag(ties, "ties")
        levels = self.levels()
        out: list[tuple[int, int, bool]] = []
        if strategy == "all":
            for a in range(len(levels)):
                for b in range(a + 1, len(levels)):
                    out.extend((i, j, False) for i in levels[a] for j in levels[b])
        elif strategy == "adjacent":
            for a in range(len(levels) - 1):
                out.extend((i, j, False) for i in levels[a] for j in levels[a + 1])
        else:
            if levels:
                for b in range(1, len(levels)):
                    out.extend((i, j, False) for i in levels[0] for j in levels[b])
        if ties:
            groups = levels[:1] if strategy == "best_vs_rest" else levels
            for group in groups:
                out.extend((group[x], group[y], True) for x in range(len(group)) for y in range(x + 1, len(group)))
        return out

    def to_pairs(self, strategy: str = "all", *, ties: bool = True) -> list[RankedList]:
        """Decompose into pairs (K = 2 records), winner first: ``ranks=[0, 1]``, or ``[0, 0]`` for a tie.

        Each pair keeps the prompt, annotator and meta and inherits this list's ``weight`` unchanged
        (a list of K contributes as many weighted pairs as the strategy yields; rescale the weights
        yourself if each list should count once). Scores, when present, travel with their candidates.
        See :meth:`pair_indices` for the strategies.
        """
        pairs = []
        for i, j, tie in self.pair_indices(strategy, ties=ties):
            scores = None if self.scores is None else (_thaw(self.scores[i]), _thaw(self.scores[j]))
            pairs.append(RankedList(
                prompt=_thaw(self.prompt),
                candidates=(_thaw(self.candidates[i]), _thaw(self.candidates[j])),
                ranks=(0, 0) if tie else (0, 1),
                scores=scores,
                annotator=self.annotator,
                weight=self.weight,
                meta=self.meta,
            ))
        return pairs

    @classmethod
    def from_scores(cls, scores: Sequence[Score], *, candidates: Sequence, tie_tolerance: float = 0.0,
                    attribute: str | None = None, higher_is_better: bool = True, **fields) -> RankedList:
        """Rank candidates by score (higher is better by default), ties within ``tie_tolerance``.

        Sorted best first, a candidate joins the current tie group when its score is within
        ``tie_tolerance`` of the group's *first* (best) score, so ties do not chain: with tolerance
        0.06, scores 3.0, 2.95, 2.9 give groups {3.0, 2.95}, {2.9}. Ranks are dense (0, 1, 2, ...).

        Multi-attribute scores (mappings) are ranked on ``attribute`` when given, otherwise on the mean
        of the attributes present. Candidates whose score is None are left unranked. The original scores
        are stored on the record. Other keyword arguments (``prompt``, ``annotator``, ...) are passed on.
        """
        if isinstance(tie_tolerance, bool) or not isinstance(tie_tolerance, numbers.Real) \
                or not math.isfinite(tie_tolerance) or tie_tolerance < 0:
            raise UsageError(f"tie_tolerance must be a finite number >= 0, got {tie_tolerance!r}")
        higher_is_better = check_flag(higher_is_better, "higher_is_better")
        for name, value in (("scores", scores), ("candidates", candidates)):
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise DataError(f"expected a list of {name}, got {type(value).__name__}", field=name,
                                reason="bad_type")
        if len(scores) != len(candidates):
            raise DataError(f"{len(scores)} scores for {len(candidates)} candidates", field="scores",
                            reason="length_mismatch")
        keys: list[float | None] = []
        for i, s in enumerate(scores):
            if s is None:
                keys.append(None)
            elif isinstance(s, Mapping):
                if attribute is not None:
                    if attribute not in s:
                        raise DataError(f"no attribute {attribute!r} (has {sorted(s)})", field=f"scores[{i}]",
                                        reason="missing_field")
                    keys.append(_finite_float(s[attribute], f"scores[{i}].{attribute}"))
                elif s:
                    values = [_finite_float(v, f"scores[{i}].{a}") for a, v in s.items()]
                    keys.append(sum(values) / len(values))
                else:
                    keys.append(None)
            else:
                keys.append(_finite_float(s, f"scores[{i}]"))
        sign = 1.0 if higher_is_better else -1.0
        order = sorted((i for i, v in enumerate(keys) if v is not None), key=lambda i: -sign * keys[i])
        ranks: list[int | None] = [None] * len(keys)
        level, anchor = -1, None
        for i in order:
            value = sign * keys[i]
            if anchor is None or anchor - value > tie_tolerance:
                level += 1
                anchor = value
            ranks[i] = level
        return cls(candidates=candidates, ranks=ranks, scores=scores, **fields)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists and dicts), the inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {
            "prompt": _thaw(self.prompt),
            "candidates": [_thaw(c) for c in self.candidates],
            "ranks": list(self.ranks),
        }
        if self.scores is not None:
            out["scores"] = [_thaw(s) for s in self.scores]
        if self.annotator is not None:
            out["annotator"] = self.annotator
        if self.weight != 1.0:
            out["weight"] = self.weight
        if self.meta:
            out["meta"] = dict(self.meta)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankedList:
        """Build from the :meth:`to_dict` form; unknown keys are an error naming them."""
        if not isinstance(data, Mapping):  # a string or a list would be read key by key ("unknown key 'a'")
            raise DataError(f"expected a mapping of fields (the to_dict form), got {type(data).__name__}",
                            reason="bad_type")
        allowed = {"prompt", "candidates", "ranks", "scores", "annotator", "weight", "meta"}
        unknown = set(data) - allowed
        if unknown:
            raise DataError(f"unknown key(s) {sorted(unknown)}; expected {sorted(allowed)}",
                            field=sorted(unknown)[0], reason="unknown_field")
        for required in ("candidates", "ranks"):
            if required not in data:
                raise DataError("missing", field=required, reason="missing_field")
        return cls(**{k: v for k, v in data.items()})


# -------------------------------------------------------------------------------------------- Judgment
@dataclass(frozen=True, kw_only=True, eq=True)
class Judgment:
    """Unpaired feedback on one response: ``label`` True (desirable) / False, or a probability in [0, 1].

    Used by KTO/BCO-style objectives and thumbs-up/down data.
    """

    response: Text
    label: bool | float
    prompt: Text | None = None
    annotator: str | None = None
    weight: float = 1.0
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        response = _normalise_text(self.response, "response", allow_none=False, allow_empty=True)
        prompt = _normalise_text(self.prompt, "prompt", allow_none=True)
        label = self.label
        import numpy as np

        if isinstance(label, (bool, np.bool_)):  # numpy's bool (from pandas or an array) is a bool too
            label = bool(label)
        elif isinstance(label, (int, float)) or hasattr(label, "__float__"):
            label = _finite_float(label, "label")
            if not 0.0 <= label <= 1.0:
                raise DataError(f"a label must be a bool or a probability in [0, 1], got {label}",
                                field="label", reason="label_out_of_range")
        else:
            raise DataError(f"a label must be a bool or a probability in [0, 1], got {label!r}",
                            field="label", reason="bad_type")
        weight = _finite_float(self.weight, "weight")
        if weight < 0:
            raise DataError(f"weight must be >= 0, got {weight}", field="weight", reason="negative_weight")
        annotator = annotator_id(self.annotator)
        if not isinstance(self.meta, Mapping):
            raise DataError("meta must be a mapping", field="meta", reason="bad_type")
        set_ = object.__setattr__
        set_(self, "response", response)
        set_(self, "prompt", prompt)
        set_(self, "label", label)
        set_(self, "weight", weight)
        set_(self, "annotator", annotator)
        set_(self, "meta", MappingProxyType(dict(self.meta)))

    def __hash__(self) -> int:  # see RankedList.__hash__ (meta and chat messages are read-only mappings)
        return hash((_text_key(self.response), None if self.prompt is None else _text_key(self.prompt),
                     self.label, self.annotator, self.weight))

    @property
    def desirable(self) -> bool:
        """``label`` as a bool (probabilities threshold at 0.5)."""
        return bool(self.label) if isinstance(self.label, bool) else self.label >= 0.5

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": _thaw(self.prompt), "response": _thaw(self.response), "label": self.label}
        if self.annotator is not None:
            out["annotator"] = self.annotator
        if self.weight != 1.0:
            out["weight"] = self.weight
        if self.meta:
            out["meta"] = dict(self.meta)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Judgment:
        if not isinstance(data, Mapping):  # a string or a list would be read key by key ("unknown key 'a'")
            raise DataError(f"expected a mapping of fields (the to_dict form), got {type(data).__name__}",
                            reason="bad_type")
        allowed = {"prompt", "response", "label", "annotator", "weight", "meta"}
        unknown = set(data) - allowed
        if unknown:
            raise DataError(f"unknown key(s) {sorted(unknown)}; expected {sorted(allowed)}",
                            field=sorted(unknown)[0], reason="unknown_field")
        for required in ("response", "label"):
            if required not in data:
                raise DataError("missing", field=required, reason="missing_field")
        return cls(**dict(data))


Record = RankedList | Judgment


def iter_pairs(records, strategy: str = "all", *, ties: bool = True) -> Iterator[RankedList]:
    """Pairs from a stream of :class:`RankedList` records (see :meth:`RankedList.to_pairs`)."""
    _check_strategy(strategy)
    ties = check_flag(ties, "ties")
    for index, record in enumerate(records):
        if not isinstance(record, RankedList):
            what = "a Judgment (unpaired feedback has no pair form; rankalign.data.to_pairs drops and counts " \
                "them)" if isinstance(record, Judgment) else f"a {type(record).__name__}"
            raise TypeError(f"iter_pairs takes RankedList records; record {index} is {what}")
        yield from record.to_pairs(strategy, ties=ties)


__all__ = ["RankedList", "Judgment", "Record", "Message", "iter_pairs", "PAIR_STRATEGIES"]
