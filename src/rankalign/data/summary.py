"""What is in a preference file (``summarize``), and converting between pairs and ranked lists.

:func:`summarize` streams the records once and reports: records and kinds, list sizes, tie rate,
annotators, prompt/response lengths in characters (percentiles), duplicates, and the reader's report.

:func:`rank_by` re-ranks rated lists on one attribute or overall score.

:func:`to_pairs` and :func:`to_lists` convert records and return a report of everything expanded, merged
or dropped. :func:`to_lists` merges the pairs of one prompt into a ranked list only where that loses
nothing: the pairs must be exactly the all-pairs decomposition of one ranking (every two candidates
compared once, transitively, ties included). Anything else -- a pair judged twice, conflicting judgments,
missing comparisons, a cycle -- stays as separate weighted pair records, and the report counts it.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from .errors import DataError
from .records import Judgment, RankedList, _check_strategy, _text_key, _thaw, check_flag

PERCENTILES = (5, 25, 50, 75, 95)


def text_length(value) -> int:
    """Characters of a text, or of all message contents of a chat-message list."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value)
    return sum(len(m["content"]) for m in value)


def _is_empty(value) -> bool:
    """A response with no text: an empty or whitespace string, or messages whose contents all are."""
    if isinstance(value, str):
        return not value.strip()
    return not any(message["content"].strip() for message in value)


def _percentiles(values: list[int]) -> dict | None:
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    out = {f"p{p}": float(np.percentile(array, p)) for p in PERCENTILES}
    out["max"] = float(array.max())
    out["mean"] = float(array.mean())
    return out


def _checked(records: Iterable, what: str) -> Iterator:
    """``records`` with each one checked to be a record (a mapping or a string would otherwise fail deep
    inside with an AttributeError)."""
    for index, record in enumerate(records):
        if not isinstance(record, (RankedList, Judgment)):
            raise TypeError(f"{what} takes RankedList or Judgment records; record {index} is a "
                            f"{type(record).__name__} (build records with RankedList.from_dict / Judgment.from_dict)")
        yield record


def _record_key(record) -> int:
    return hash(json.dumps(record.to_dict(), sort_keys=True, ensure_ascii=False))


def summarize(records: Iterable, report=None) -> dict:
    """Statistics of a stream of records (consumed once); ``report`` is the reader's :class:`ReadReport`.

    Tie rate is the share of ranked lists with at least one tie. ``pair_outcomes`` counts, over fully
    ranked pairs, how often the first candidate won, the second won, or they tied (for item comparisons
    the first is item_a / home / model_a, so this shows an order effect). Duplicates are records
    identical to an earlier one in every field (weight and meta included). ``empty_responses`` counts
    responses with no text (real data has them: HH-RLHF has two; training gives them an EOS-only response).
    """
    kinds: Counter = Counter()
    sizes: Counter = Counter()
    annotators: Counter = Counter()
    labels: Counter = Counter()
    pair_outcomes: Counter = Counter()  # order matters for item pairs: first = item_a / home / model_a
    without_annotator = with_ties = with_unranked = with_scores = 0
    prompt_lengths: list[int] = []
    response_lengths: list[int] = []
    prompts: set = set()
    items: set = set()
    seen: set = set()
    duplicates = 0
    empty_responses = 0
    total_weight = 0.0
    for record in _checked(records, "summarize"):
        key = _record_key(record)
        if key in seen:
            duplicates += 1
        else:
            seen.add(key)
        total_weight += record.weight
        if record.annotator is None:
            without_annotator += 1
        else:
            annotators[record.annotator] += 1
        if record.prompt is not None:
            prompt_lengths.append(text_length(record.prompt))
            prompts.add(hash(_text_key(record.prompt)))
        if isinstance(record, Judgment):
            kinds["Judgment"] += 1
            response_lengths.append(text_length(record.response))
            empty_responses += _is_empty(record.response)
            labels["true" if record.label is True else "false" if record.label is False else "probability"] += 1
            continue
        kinds["RankedList"] += 1
        sizes[record.k] += 1
        with_ties += record.has_ties
        with_unranked += None in record.ranks
        with_scores += record.scores is not None
        if record.k == 2 and None not in record.ranks:
            a, b = record.ranks
            pair_outcomes["first_wins" if a < b else "second_wins" if a > b else "ties"] += 1
        if record.prompt is None:
            items.update(record.candidates)
        else:
            response_lengths.extend(text_length(c) for c in record.candidates)
            empty_responses += sum(_is_empty(c) for c in record.candidates)
    lists = kinds["RankedList"]
    summary = {
        "layout": None if report is None else report.layout,
        "records": sum(kinds.values()),
        "skipped": {} if report is None else dict(sorted(report.skipped.items())),
        "skipped_total": 0 if report is None else report.n_skipped,
        "kinds": dict(kinds),
        "total_weight": total_weight,
        "list_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "tie_rate": (with_ties / lists) if lists else None,
        "lists_with_ties": with_ties,
        "pair_outcomes": {k: pair_outcomes[k] for k in ("first_wins", "second_wins", "ties")} if pair_outcomes
        else None,
        "lists_with_unranked": with_unranked,
        "lists_with_scores": with_scores,
        "items": len(items) if items else None,
        "prompts": len(prompts),
        "annotators": {"distinct": len(annotators), "records_without": without_annotator,
                       "top": [[name, n] for name, n in annotators.most_common(5)]},
        "prompt_chars": _percentiles(prompt_lengths),
        "response_chars": _percentiles(response_lengths),
        "empty_responses": empty_responses,
        "duplicates": duplicates,
        "labels": dict(labels) if labels else None,
        "notes": {} if report is None else dict(sorted(report.notes.items())),
        "problems": [] if report is None else list(report.problems),
    }
    return summary


# ---------------------------------------------------------------------------------------------- convert
def to_pairs(records: Iterable, strategy: str = "all", *, ties: bool = True) -> tuple[list, dict]:
    """Every ranked list as pairs (:meth:`RankedList.to_pairs`); returns ``(pairs, report)``.

    Judgments (unpaired feedback) have no pair form: they are dropped and counted, as are lists that give
    no pair (a single ranked candidate) and the unranked candidates of the lists that do (``ranks`` None).
    """
    _check_strategy(strategy)
    ties = check_flag(ties, "ties")
    out: list = []
    report = {"input_records": 0, "output_records": 0, "lists_expanded": 0, "pairs_passed_through": 0,
              "dropped": Counter()}
    for record in _checked(records, "to_pairs"):
        report["input_records"] += 1
        if isinstance(record, Judgment):
            report["dropped"]["judgment_has_no_pair_form"] += 1
            continue
        pairs = record.to_pairs(strategy, ties=ties)
        if not pairs:
            report["dropped"]["list_gives_no_pair"] += 1
            continue
        if record.k == 2 and len(pairs) == 1 and None not in record.ranks:
            report["pairs_passed_through"] += 1
        else:
            report["lists_expanded"] += 1
        if None in record.ranks:  # an unranked candidate is in no pair
            report["dropped"]["unranked_candidate"] += record.ranks.count(None)
        out.extend(pairs)
    report["output_records"] = len(out)
    report["dropped"] = dict(report["dropped"])
    return out, report


def _group_key(record: RankedList):
    prompt = None if record.prompt is None else _text_key(record.prompt)
    return (prompt, record.annotator, record.weight, json.dumps(dict(record.meta), sort_keys=True, default=str))


def _merge_group(pairs: list[RankedList]) -> tuple[RankedList | None, str | None]:
    """One ranked list equal to ``pairs`` in information, or ``(None, reason)`` when there is none."""
    relation: dict = {}
    names: dict = {}
    score_of: dict = {}
    for pair in pairs:
        a, b = (_text_key(c) for c in pair.candidates)
        names.setdefault(a, pair.candidates[0])
        names.setdefault(b, pair.candidates[1])
        if pair.scores is not None:
            for key, score in zip((a, b), pair.scores):
                if score_of.setdefault(key, score) != score:
                    return None, "scores_differ"
        ra, rb = pair.ranks
        verdict = "tie" if ra == rb else (a if ra < rb else b)
        unordered = frozenset((a, b))
        if unordered in relation:
            return None, "conflicting" if relation[unordered] != verdict else "repeated_pair"
        relation[unordered] = verdict
    keys = list(names)
    if len(relation) != len(keys) * (len(keys) - 1) // 2:
        return None, "incomplete"
    wins = Counter({k: 0 for k in keys})
    for verdict in relation.values():
        if verdict != "tie":
            wins[verdict] += 1
    distinct = sorted(set(wins.values()), reverse=True)
    level = {w: i for i, w in enumerate(distinct)}
    order = sorted(keys, key=lambda k: -wins[k])
    ranks = [level[wins[k]] for k in order]
    rank_of = dict(zip(order, ranks))
    for unordered, verdict in relation.items():
        a, b = tuple(unordered)
        expected = "tie" if rank_of[a] == rank_of[b] else (a if rank_of[a] < rank_of[b] else b)
        if expected != verdict:
            return None, "intransitive"
    first = pairs[0]
    scores = None
    if score_of:
        if len(score_of) != len(keys):
            return None, "scores_differ"
        scores = [_thaw(score_of[k]) for k in order]
    merged = RankedList(prompt=_thaw(first.prompt), candidates=[_thaw(names[k]) for k in order], ranks=ranks,
                        scores=scores, annotator=first.annotator, weight=first.weight, meta=first.meta)
    return merged, None


def to_lists(records: Iterable) -> tuple[list, dict]:
    """Merge pairs that share prompt, annotator, weight and meta into ranked lists where lossless.

    Returns ``(records, report)``; the report counts merged groups and pairs, groups kept as pairs by
    reason (``conflicting``, ``repeated_pair``, ``incomplete``, ``intransitive``, ``scores_differ``), lists
    passed through, and judgments dropped.
    """
    groups: dict = defaultdict(list)
    order: list = []
    out: list = []
    report = {"input_records": 0, "output_records": 0, "lists_passed_through": 0, "single_pairs": 0,
              "groups_merged": 0, "pairs_merged": 0, "groups_kept_as_pairs": Counter(),
              "pairs_kept_separate": Counter(), "dropped": Counter()}
    for record in _checked(records, "to_lists"):
        report["input_records"] += 1
        if isinstance(record, Judgment):
            report["dropped"]["judgment_has_no_list_form"] += 1
            continue
        if record.k != 2 or None in record.ranks:
            out.append(record)
            report["lists_passed_through"] += 1
            continue
        key = _group_key(record)
        if key not in groups:
            order.append(key)
        groups[key].append(record)
    for key in order:
        pairs = groups[key]
        if len(pairs) == 1:
            out.append(pairs[0])
            report["single_pairs"] += 1
            continue
        merged, reason = _merge_group(pairs)
        if merged is None:
            out.extend(pairs)
            report["groups_kept_as_pairs"][reason] += 1
            report["pairs_kept_separate"][reason] += len(pairs)
        else:
            out.append(merged)
            report["groups_merged"] += 1
            report["pairs_merged"] += len(pairs)
    report["output_records"] = len(out)
    for name in ("groups_kept_as_pairs", "pairs_kept_separate", "dropped"):
        report[name] = dict(report[name])
    return out, report


__all__ = ["summarize", "to_pairs", "to_lists", "text_length"]


# ---------------------------------------------------------------------------------------------- rank by
def rank_by(records: Iterable, key: str | None) -> Iterator:
    """Re-rank rated lists (UltraFeedback-style) on one criterion; other records pass unchanged.

    ``key`` None or ``"mean"``: the mean of the attributes present (what the reader does); an attribute
    of the per-candidate score mappings (e.g. ``helpfulness``); or a per-completion field the reader kept
    in ``meta["completions"]`` (e.g. UltraFeedback's ``overall_score``, the critique's overall grade).
    A rated list that lacks the key for a candidate leaves that candidate unranked; a list where no
    candidate has it raises a DataError naming the record; records without any rated list among them are a
    :class:`~rankalign.errors.UsageError` once they are exhausted (the key would re-rank nothing).
    """
    if key in (None, "mean"):
        yield from records
        return
    rated = seen = 0
    for number, record in enumerate(records, start=1):
        seen = number
        if not isinstance(record, RankedList) or record.scores is None:
            yield record
            continue
        rated += 1
        extras = (record.meta or {}).get("completions") or [{}] * record.k
        values = []
        for score, extra in zip(record.scores, extras):
            if isinstance(score, Mapping) and key in score:
                values.append(float(score[key]))
            elif isinstance(extra, Mapping) and extra.get(key) is not None:
                values.append(_number(extra[key], number, key))
            else:
                values.append(None)
        if all(v is None for v in values):
            raise DataError(f"no candidate has {key!r} to rank by", line=number, field="scores",
                            reason="missing_field")
        ranked = RankedList.from_scores(values, candidates=record.candidates, prompt=record.prompt,
                                        annotator=record.annotator, weight=record.weight, meta=record.meta)
        yield dataclasses.replace(ranked, scores=record.scores)
    if seen and not rated:
        from rankalign.errors import UsageError

        raise UsageError(f"rank by {key!r}: none of the {seen} records is a rated list (per-candidate scores), "
                         "so there is nothing to re-rank", hint="drop --rank-by for files without ratings")


def _number(value, line, key) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{key} {value!r} is not a number", line=line, field=key, reason="bad_type") from None
