"""Votes as rankalign records, and annotator agreement.

A vote becomes one :class:`rankalign.data.RankedList` with the annotator's name in ``annotator``, so the
export is read by ``rankalign data inspect``, ``rankalign rate`` and ``rankalign train`` as it is:

* ``form="items"`` (default): the candidates are the item ids and the prompt is the prompt text (None for
  item-level votes) -- what ``rankalign rate`` needs;
* ``form="responses"``: the candidates are the items' responses to the prompt (``meta["items"]`` keeps
  the ids) -- what ``rankalign train`` needs. Votes that cannot be written in this form (no prompt, or two
  items that gave the same response) are counted in the report, never dropped silently.

``meta`` carries the vote id, request id, time (``created_at``: ISO 8601 in UTC, ``+00:00``) and the
annotator's rationale (``comment``).
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations

from rankalign.data.errors import DataError
from rankalign.data.records import RankedList

from . import db

FORMS = ("items", "responses")


def vote_records(engine, form: str = "items") -> tuple[list[RankedList], Counter]:
    """All votes as records (in vote order) and a Counter of the votes left out, by reason."""
    if form not in FORMS:
        raise ValueError(f"unknown export form {form!r}; choose one of {', '.join(FORMS)}")
    content = db.catalogue(engine)
    records, dropped = [], Counter()
    for row in db.vote_rows(engine):
        prompt = None if row.prompt_id is None else content["prompts"][row.prompt_id]
        meta = {"vote_id": row.id, "request_id": row.request_id,
                "created_at": db.utc_iso(row.created_at)}
        if row.comment:
            meta["comment"] = row.comment
        candidates = list(row.candidates)
        if form == "responses":
            if row.prompt_id is None:
                dropped["no prompt (item-level vote)"] += 1
                continue
            meta["items"] = candidates
            answers = content["responses"][row.prompt_id]
            candidates = [answers[item] for item in row.candidates]
        try:
            records.append(RankedList(prompt=prompt, candidates=candidates, ranks=list(row.ranks),
                                      annotator=row.annotator, meta=meta))
        except DataError as error:
            if error.reason != "duplicate_candidate":
                raise
            dropped["two items gave the same response"] += 1
    return records, dropped


def agreement(rows) -> dict:
    """Pairwise agreement between annotators on the same question.

    Every vote implies, for each two of its candidates a, b (a < b by id), a judgment in {a better, tie,
    b better} about the question (prompt, a, b). Over all pairs of judgments of the same question by two
    *different* annotators, ``agreement`` is the share that are equal. Returns ``{"agreement": float or
    None, "judgment_pairs": int, "questions": int}`` (``questions``: questions judged by two annotators
    or more).
    """
    judgments: dict[tuple, list[tuple[str, int]]] = {}
    for row in rows:
        ranks = dict(zip(row.candidates, row.ranks))
        for a, b in combinations(sorted(ranks), 2):
            sign = (ranks[a] < ranks[b]) - (ranks[a] > ranks[b])  # +1: a better, 0: tie, -1: b better
            judgments.setdefault((row.prompt_id, a, b), []).append((row.annotator, sign))
    same = total = questions = 0
    for entries in judgments.values():
        pairs = [(x, y) for x, y in combinations(entries, 2) if x[0] != y[0]]
        if pairs:
            questions += 1
        total += len(pairs)
        same += sum(x[1] == y[1] for x, y in pairs)
    return {"agreement": same / total if total else None, "judgment_pairs": total, "questions": questions}
