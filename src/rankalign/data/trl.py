"""Export to the dataset formats of Hugging Face TRL (``rankalign data convert --to trl|trl-kto``).

TRL's trainers read rows, not ranked lists:

* preference (``DPOTrainer``, ``RewardTrainer``, ...): ``{"prompt", "chosen", "rejected"}``. In the
  *standard* form the three are strings; in the *conversational* form the prompt is a list of chat
  messages and chosen / rejected are lists holding the assistant message(s). A record whose prompt or
  candidates are chat messages is written in the conversational form, a plain-text one in the standard
  form (TRL's "explicit prompt" variant in both cases).
* unpaired (``KTOTrainer``, ``BCOTrainer``): ``{"prompt", "completion", "label"}`` with a boolean label.

A list of K > 2 is decomposed into pairs with a :data:`~rankalign.data.PAIR_STRATEGIES` strategy for
``--to trl``; for ``--to trl-kto`` a pair gives chosen -> True and rejected -> False (what TRL's
``unpair_preference_dataset`` does), and a longer list gives its best rank group True and its worst group
False. What has no TRL form is dropped and counted by reason, never silently: ties (TRL's preference rows
have a winner), lists with one ranked candidate, unranked candidates (``ranks`` None), middle ranks of a
list (trl-kto), item comparisons without a prompt (no text to train on), and judgments with a fractional
label (trl-kto: TRL's labels are booleans).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

from .records import PAIR_STRATEGIES, Judgment, RankedList

TRL_TARGETS = ("trl", "trl-kto")


def _thawed(value):
    """Plain Python (lists/dicts) for a text or a frozen message tuple."""
    if value is None or isinstance(value, str):
        return value
    return [dict(message) for message in value]


def _conversational(record) -> bool:
    values = [record.prompt, *(record.candidates if isinstance(record, RankedList) else [record.response])]
    return any(v is not None and not isinstance(v, str) for v in values)


def _as_prompt(value, conversational: bool):
    value = _thawed(value)
    if conversational and isinstance(value, str):
        return [{"role": "user", "content": value}]
    return value


def _as_completion(value, conversational: bool):
    value = _thawed(value)
    if conversational and isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return value


def to_trl(records: Iterable, strategy: str = "all") -> tuple[list[dict], dict]:
    """Preference rows ``{"prompt", "chosen", "rejected"}`` for TRL; returns ``(rows, report)``.

    Each pair of a list (``strategy``: all, adjacent or best_vs_rest) gives one row, winner as chosen.
    """
    if strategy not in PAIR_STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(PAIR_STRATEGIES)}")
    rows: list[dict] = []
    dropped: Counter = Counter()
    seen = 0
    for record in records:
        seen += 1
        if isinstance(record, Judgment):
            dropped["judgment_has_no_pair_form"] += 1
            continue
        if record.prompt is None:
            dropped["no_prompt"] += 1
            continue
        conversational = _conversational(record)
        pairs = record.to_pairs(strategy, ties=True)
        ties = [p for p in pairs if p.ranks[0] == p.ranks[1]]
        dropped["tie"] += len(ties)
        kept = [p for p in pairs if p.ranks[0] != p.ranks[1]]
        if not pairs:
            dropped["list_gives_no_pair"] += 1
        else:
            dropped["unranked_candidate"] += record.ranks.count(None)
        for pair in kept:
            rows.append({"prompt": _as_prompt(pair.prompt, conversational),
                         "chosen": _as_completion(pair.candidates[0], conversational),
                         "rejected": _as_completion(pair.candidates[1], conversational)})
    report = {"input_records": seen, "output_rows": len(rows), "format": "trl preference (prompt/chosen/rejected)",
              "dropped": {k: v for k, v in sorted(dropped.items()) if v}}
    return rows, report


def to_trl_kto(records: Iterable) -> tuple[list[dict], dict]:
    """Unpaired rows ``{"prompt", "completion", "label"}`` for TRL's KTO/BCO trainers; returns ``(rows, report)``."""
    rows: list[dict] = []
    dropped: Counter = Counter()
    seen = 0
    for record in records:
        seen += 1
        if record.prompt is None:
            dropped["no_prompt"] += 1
            continue
        conversational = _conversational(record)
        prompt = _as_prompt(record.prompt, conversational)
        if isinstance(record, Judgment):
            label = record.label
            if isinstance(label, float) and label not in (0.0, 1.0):
                dropped["fractional_label"] += 1
                continue
            rows.append({"prompt": prompt, "completion": _as_completion(record.response, conversational),
                         "label": bool(label)})
            continue
        ranked = sorted({r for r in record.ranks if r is not None})
        if len(ranked) < 2:
            dropped["tie" if sum(r is not None for r in record.ranks) > 1 else "list_gives_no_pair"] += 1
            continue
        best, worst = ranked[0], ranked[-1]
        for candidate, rank in zip(record.candidates, record.ranks):
            if rank is None:
                dropped["unranked_candidate"] += 1
            elif rank in (best, worst):
                rows.append({"prompt": prompt, "completion": _as_completion(candidate, conversational),
                             "label": rank == best})
            else:
                dropped["middle_rank"] += 1
    report = {"input_records": seen, "output_rows": len(rows), "format": "trl unpaired (prompt/completion/label)",
              "dropped": {k: v for k, v in sorted(dropped.items()) if v}}
    return rows, report


def write_rows(rows: list[dict], path, format: str | None = None) -> int:
    """Write plain rows as JSONL or JSON (what ``datasets.load_dataset("json", ...)`` reads), atomically."""
    from ._sources import atomic_write, detect_format

    fmt = detect_format(path, format)
    if fmt not in ("jsonl", "json"):
        raise ValueError(f"TRL rows are written as jsonl or json, not {fmt!r}")
    if fmt == "jsonl":
        atomic_write(path, lambda handle: handle.writelines(json.dumps(row, ensure_ascii=False) + "\n"
                                                                     for row in rows))
    else:
        atomic_write(path, lambda handle: handle.write(json.dumps(rows, ensure_ascii=False, indent=1) + "\n"))
    return len(rows)


__all__ = ["TRL_TARGETS", "to_trl", "to_trl_kto", "write_rows"]
