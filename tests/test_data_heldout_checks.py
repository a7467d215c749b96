"""Held-out correctness checks of the data layer: files written by hand, records expected from the file."""

from __future__ import annotations

import csv
import json

import pytest

from rankalign.data import DataError, Judgment, RankedList, read, read_comparisons, to_pairs, write
from rankalign.data.trl import to_trl


def _both_readers_refuse(path) -> tuple[DataError, DataError]:
    """The errors of ``read`` and ``read_comparisons`` on ``path`` (each must refuse it)."""
    with pytest.raises(DataError) as record_error:
        read(path)
    with pytest.raises(DataError) as columnar_error:
        read_comparisons(path)
    return record_error.value, columnar_error.value


def test_read_comparisons_refuses_ragged_csv_rows_whose_cells_add_up(tmp_path):
    # row 2 has an extra cell and row 3 a missing one: 3 + 1 cells = 2 rows of 2, which the fast CSV split
    # read as (A, B), (C, D), shifting C into row 3's winner column
    path = tmp_path / "ragged.csv"
    path.write_text("winner,loser\nA,B,C\nD\nE,F\n", encoding="utf-8")
    record_error, columnar_error = _both_readers_refuse(path)
    assert (columnar_error.line, columnar_error.reason) == (2, "extra_field")
    assert (record_error.line, record_error.reason) == (2, "extra_field")

    skipped = read_comparisons(path, skip_invalid=True)
    assert list(skipped.rows()) == [("E", "F", 1.0, 1.0)]  # only line 4 is a whole row
    assert dict(skipped.report.skipped) == {"extra_field": 1, "missing_field": 1}


def test_read_comparisons_ragged_rows_with_counts_keep_their_own_cells(tmp_path):
    path = tmp_path / "ragged_counts.csv"
    path.write_text("winner,loser,count\nA,B,1,2\nC,D\nE,F,3\n", encoding="utf-8")
    comparisons = read_comparisons(path, skip_invalid=True)
    assert list(comparisons.rows()) == [("E", "F", 1.0, 3.0)]
    assert comparisons.report.skipped_lines == [2, 3]


MESSAGES_JSON = '[{"role": "assistant", "content": "x"}]'  # an answer about chat formats, as text


@pytest.mark.parametrize("row, expected", [
    ({"prompt": "Show chat JSON", "chosen": MESSAGES_JSON, "rejected": "no"},
     RankedList(prompt="Show chat JSON", candidates=[MESSAGES_JSON, "no"], ranks=[0, 1])),
    ({"prompt": MESSAGES_JSON.replace("assistant", "user"), "candidates": ["a", "b"], "ranks": [0, 1]},
     RankedList(prompt=MESSAGES_JSON.replace("assistant", "user"), candidates=["a", "b"], ranks=[0, 1])),
    ({"prompt": "P", "completion": MESSAGES_JSON, "label": True},
     Judgment(prompt="P", response=MESSAGES_JSON, label=True)),
])
def test_a_jsonl_string_that_looks_like_chat_messages_stays_text(tmp_path, row, expected):
    path = tmp_path / "text.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    (record,) = read(path).records
    assert record == expected
    assert isinstance(record.candidates[0] if isinstance(record, RankedList) else record.response, str)
    write([record], tmp_path / "again.jsonl")  # and the native round trip keeps it
    assert read(tmp_path / "again.jsonl").records == [expected]


def test_a_csv_cell_of_chat_messages_is_still_messages(tmp_path):
    path = tmp_path / "messages.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "chosen", "rejected"])
        writer.writerow(['[{"role": "user", "content": "hi"}]', '[{"role": "assistant", "content": "yo"}]', "no"])
    (record,) = read(path).records
    assert record.prompt == ({"role": "user", "content": "hi"},)
    assert record.candidates == (({"role": "assistant", "content": "yo"},), "no")


def test_read_comparisons_refuses_an_explicit_empty_prompt_in_jsonl_as_read_does(tmp_path):
    path = tmp_path / "native.jsonl"
    path.write_text('{"prompt": "", "candidates": ["a", "b"], "ranks": [0, 1]}\n', encoding="utf-8")
    record_error, columnar_error = _both_readers_refuse(path)
    assert (record_error.field, record_error.reason) == ("prompt", "empty_text")
    assert (columnar_error.field, columnar_error.reason) == ("prompt", "empty_text")
    assert len(read_comparisons(path, skip_invalid=True)) == 0


def test_converting_to_pairs_counts_the_unranked_candidates_it_leaves_out(tmp_path):
    # P: a best, b unranked, c worst -> one pair (a, c), and b is in none of them
    # Q: a best of four, the rest tied -> 3 wins and 3 ties, nothing left out
    path = tmp_path / "lists.jsonl"
    path.write_text('{"prompt": "P", "candidates": ["a", "b", "c"], "ranks": [0, null, 1]}\n'
                    '{"prompt": "Q", "candidates": ["a", "b", "c", "d"], "ranks": [0, 1, 1, 1]}\n', encoding="utf-8")
    records = read(path).records
    pairs, report = to_pairs(records)
    assert [(p.prompt, p.candidates, p.ranks) for p in pairs if p.prompt == "P"] == [("P", ("a", "c"), (0, 1))]
    assert len(pairs) == 7
    assert report["dropped"] == {"unranked_candidate": 1}

    rows, trl_report = to_trl(records)
    assert sorted((r["prompt"], r["chosen"], r["rejected"]) for r in rows) == [
        ("P", "a", "c"), ("Q", "a", "b"), ("Q", "a", "c"), ("Q", "a", "d")]
    assert trl_report["dropped"] == {"tie": 3, "unranked_candidate": 1}

    _, fully_ranked = to_pairs(records[1:])
    assert fully_ranked["dropped"] == {}


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


@pytest.mark.parametrize("prompt", ["What is 2+2?", [_user("What is 2+2?")],
                                    [{"role": "system", "content": "Be brief."}, _user("What is 2+2?")]])
def test_an_explicit_prompt_repeated_in_conversational_chosen_and_rejected_is_split_off(tmp_path, prompt):
    # HuggingFaceH4/ultrafeedback_binarized: prompt text, and chosen / rejected from the user turn on; the
    # answers are the assistant turns, the prompt must not be read as part of each response
    system = [{"role": "system", "content": "Be brief."}] if isinstance(prompt, list) and len(prompt) == 2 else []
    row = {"prompt": prompt, "prompt_id": "p1",
           "chosen": system + [_user("What is 2+2?"), _assistant("4")],
           "rejected": system + [_user("What is 2+2?"), _assistant("5")], "score_chosen": 8.0, "score_rejected": 2.0}
    path = tmp_path / "binarized.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    result = read(path)
    (record,) = result.records
    assert record == RankedList(prompt=system + [_user("What is 2+2?")],
                                candidates=[[_assistant("4")], [_assistant("5")]], ranks=[0, 1],
                                meta={"prompt_id": "p1", "score_chosen": 8.0, "score_rejected": 2.0})
    assert result.report.notes["prompt_repeated_in_responses"] == 1
    rows, _ = to_trl(result.records)
    assert rows == [{"prompt": system + [_user("What is 2+2?")], "chosen": [_assistant("4")],
                     "rejected": [_assistant("5")]}]


def test_a_prompt_column_that_disagrees_with_the_conversations_is_refused(tmp_path):
    row = {"prompt": "Another question", "chosen": [_user("What is 2+2?"), _assistant("4")],
           "rejected": [_user("What is 2+2?"), _assistant("5")]}
    path = tmp_path / "mismatch.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        read(path)
    assert (error.value.line, error.value.field, error.value.reason) == (1, "prompt", "prompt_mismatch")


def test_trl_conversational_rows_with_answers_only_are_unchanged(tmp_path):
    row = {"prompt": [_user("hi")], "chosen": [_assistant("yo")], "rejected": [_assistant("no")]}
    path = tmp_path / "trl.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    result = read(path)
    assert result.records == [RankedList(prompt=[_user("hi")], candidates=[[_assistant("yo")], [_assistant("no")]],
                                         ranks=[0, 1])]
    assert "prompt_repeated_in_responses" not in result.report.notes


# -- a row with both count and weight ---------------------------------------------------------------------
def test_count_and_weight_in_one_row_is_an_error_in_both_readers(tmp_path):
    """Before: ``read`` took the count and dropped the weight (in neither weight nor meta), while
    ``read_comparisons`` used the count column for every row, so a row with an empty count and a weight of
    0.5 weighed 1.0 there and 0.5 in ``read``. Now the one given counts, per row, and both is an error."""
    both = tmp_path / "both.csv"
    both.write_text("winner,loser,count,weight\nA,B,3,0.5\n", encoding="utf-8")
    for error in _both_readers_refuse(str(both)):
        assert (error.reason, error.line) == ("count_and_weight", 2)

    either = tmp_path / "either.csv"
    either.write_text("winner,loser,count,weight\nA,B,3,\nB,C,,0.5\nC,A,,\n", encoding="utf-8")
    assert [r.weight for r in read(str(either))] == [3.0, 0.5, 1.0]
    assert read_comparisons(str(either)).count.tolist() == [3.0, 0.5, 1.0]


# -- native score dicts through Arrow ---------------------------------------------------------------------
def test_scores_with_an_attribute_missing_read_back_from_a_dataset_and_parquet(tmp_path):
    """Arrow stores a column of score dicts as a struct of every key seen, so ``{"help": 0.5}`` next to
    ``{"help": 1.0, "safe": 2.0}`` comes back as ``{"help": 0.5, "safe": None}``; before, that None was
    refused as a score (a Dataset or Parquet file of rankalign's own records could not be read back)."""
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": "p", "candidates": ["a", "b"], "ranks": [0, 1],
             "scores": [{"help": 1.0, "safe": 2.0}, {"help": 0.5}]}]
    expected = [RankedList(prompt="p", candidates=["a", "b"], ranks=[0, 1],
                           scores=[{"help": 1.0, "safe": 2.0}, {"help": 0.5}])]
    dataset = datasets.Dataset.from_list(rows)
    assert dataset[0]["scores"][1] == {"help": 0.5, "safe": None}  # what Arrow hands the reader
    assert read(dataset).records == expected
    path = tmp_path / "scores.parquet"
    dataset.to_parquet(str(path))
    assert read(str(path)).records == expected
