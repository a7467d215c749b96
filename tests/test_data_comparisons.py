"""The columnar comparison reader: values, file order, and the same errors as the record reader."""

import json

import numpy as np
import pytest

from rankalign.data import DataError, read, read_comparisons
from shared_data import needs_shared_data, shared_path  # noqa: E402

FOOTBALL = shared_path("football-epl/matches.csv")
FOOTBALL_MAP = {"item_a": "home", "item_b": "away", "outcome": "result"}
FOOTBALL_OUTCOMES = {"1": "a", "0": "tie", "-1": "b"}


def write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@needs_shared_data
def test_football_through_mapping_counts_home_wins_draws_away_wins():
    comparisons = read_comparisons(FOOTBALL, mapping=FOOTBALL_MAP, outcomes=FOOTBALL_OUTCOMES)
    assert comparisons.layout == "item_outcome"
    assert len(comparisons) == 1900
    # the data README: 882 home wins, 505 draws, 513 away wins
    assert int((comparisons.outcome == 1.0).sum()) == 882
    assert int((comparisons.outcome == 0.5).sum()) == 505
    assert int((comparisons.outcome == 0.0).sum()) == 513
    assert comparisons.items == sorted(set(comparisons.items))
    # first row of the file: "2008-9","Hul","Sto",-1 -> Hull at home lost to Stoke
    first_row = next(comparisons.rows())
    assert first_row == ("Hul", "Sto", 0.0, 1.0)
    assert comparisons.count.sum() == 1900.0


@needs_shared_data
def test_football_string_options_equal_dict_options_and_record_reader_agrees():
    a = read_comparisons(FOOTBALL, mapping="item_a=home,item_b=away,outcome=result", outcomes="1=a,0=tie,-1=b",
                         keep=["season"])
    records = read(FOOTBALL, mapping=FOOTBALL_MAP, outcomes=FOOTBALL_OUTCOMES).records
    assert a.to_records() == [r.__class__(candidates=r.candidates, ranks=r.ranks, weight=r.weight) for r in records]
    assert set(a.extra["season"].tolist()) == {r.meta["season"] for r in records}
    assert len(set(a.extra["season"].tolist())) == 5  # five seasons


def test_winner_loser_with_counts_and_order_kept(tmp_path):
    path = write_text(tmp_path / "wl.csv", "winner,loser,count\nb,a,2\na,c,1\nc,b,0.5\n")
    c = read_comparisons(path)
    assert c.layout == "winner_loser"
    assert c.items == ["a", "b", "c"]
    # winner is first: (b, a), (a, c), (c, b) -> indices (1, 0), (0, 2), (2, 1)
    assert c.first.tolist() == [1, 0, 2]
    assert c.second.tolist() == [0, 2, 1]
    assert c.outcome.tolist() == [1.0, 1.0, 1.0]
    assert c.count.tolist() == [2.0, 1.0, 0.5]
    assert c.first.dtype == np.int64 and c.outcome.dtype == np.float64


def test_arena_ties_and_bothbad(tmp_path):
    rows = [
        {"model_a": "x", "model_b": "y", "winner": "model_a"},
        {"model_a": "y", "model_b": "z", "winner": "tie (bothbad)"},
        {"model_a": "z", "model_b": "x", "winner": "model_b"},
        {"model_a": "x", "model_b": "z", "winner": "tie"},
    ]
    path = write_text(tmp_path / "arena.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    c = read_comparisons(path)
    assert c.layout == "arena"
    assert c.outcome.tolist() == [1.0, 0.5, 0.0, 0.5]
    assert [c.items[i] for i in c.first] == ["x", "y", "z", "x"]
    assert c.report.notes["tie_bothbad"] == 1


def test_native_item_pairs(tmp_path):
    rows = [{"prompt": None, "candidates": ["p", "q"], "ranks": [1, 0], "weight": 3.0},
            {"prompt": None, "candidates": ["q", "r"], "ranks": [0, 0]}]
    path = write_text(tmp_path / "native.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    c = read_comparisons(path)
    assert c.layout == "rankedlist"
    assert list(c.rows()) == [("p", "q", 0.0, 3.0), ("q", "r", 0.5, 1.0)]


def test_quoted_and_multiline_csv_falls_back_to_the_csv_module(tmp_path):
    text = 'item_a,item_b,outcome\n"New York, NY",Boston,a\n"multi\nline",Boston,tie\nBoston,"New York, NY",b\n'
    c = read_comparisons(write_text(tmp_path / "q.csv", text))
    assert c.items == ["Boston", "New York, NY", "multi\nline"]
    assert c.outcome.tolist() == [1.0, 0.5, 0.0]


@pytest.mark.parametrize("body, line, field, reason", [
    ("a,b,a\nc,c,a\n", 3, "item_b", "self_comparison"),           # line 3: c against c
    ("a,b,a\nc,d,maybe\n", 3, "outcome", "unknown_outcome"),
    ("a,b,a\nc,,a\n", 3, "item_b", "missing_field"),
])
def test_errors_name_file_line_field(tmp_path, body, line, field, reason):
    path = write_text(tmp_path / "bad.csv", "item_a,item_b,outcome\n" + body)
    with pytest.raises(DataError) as caught:
        read_comparisons(path)
    error = caught.value
    assert (error.path, error.line, error.field, error.reason) == (str(path), line, field, reason)
    # the record reader says exactly the same
    with pytest.raises(DataError) as caught_records:
        read(path)
    assert str(caught_records.value) == str(error)


def test_negative_count_and_empty_file(tmp_path):
    path = write_text(tmp_path / "neg.csv", "winner,loser,count\na,b,1\nb,c,-1\n")
    with pytest.raises(DataError) as caught:
        read_comparisons(path)
    assert (caught.value.line, caught.value.field, caught.value.reason) == (3, "count", "negative_count")
    empty = write_text(tmp_path / "empty.csv", "")
    with pytest.raises(DataError) as caught:
        read_comparisons(empty)
    assert caught.value.reason == "empty_file" and caught.value.path == str(empty)
    header_only = write_text(tmp_path / "header.csv", "winner,loser\n")
    with pytest.raises(DataError, match="no records"):
        read_comparisons(header_only)


def test_skip_invalid_counts_by_reason(tmp_path):
    body = ("item_a,item_b,outcome\n"
            "a,b,a\n"      # ok
            "c,c,a\n"      # self comparison
            "a,c,what\n"   # unknown outcome
            "a,,b\n"       # missing item_b
            "b,c,tie\n"    # ok
            "x,y\n")       # too few cells -> missing outcome
    c = read_comparisons(write_text(tmp_path / "mixed.csv", body), skip_invalid=True)
    assert len(c) == 2
    assert c.items == ["a", "b", "c"]
    assert dict(c.report.skipped) == {"self_comparison": 1, "unknown_outcome": 1, "missing_field": 2}
    assert c.report.records == 2
    assert any(":7:" in p for p in c.report.problems)  # the short row is on line 7
    assert c.report.skipped_lines == [3, 4, 5, 7]
    # and the record reader skips the same rows for the same reasons
    r = read(tmp_path / "mixed.csv", skip_invalid=True)
    assert dict(r.report.skipped) == dict(c.report.skipped)
    assert r.report.skipped_lines == c.report.skipped_lines


@needs_shared_data
def test_rankings_are_not_comparisons():
    with pytest.raises(DataError, match="read it with"):
        read_comparisons(shared_path("preflib-netflix/netflix.soc"))


def test_parquet_and_dataset_sources_give_the_same_arrays(tmp_path):
    pytest.importorskip("pyarrow")
    datasets = pytest.importorskip("datasets")
    from rankalign.data import write

    csv_path = write_text(tmp_path / "g.csv", "item_a,item_b,outcome\nx,y,1\ny,z,0\nz,x,0.5\n")
    expected = read_comparisons(csv_path)
    parquet = tmp_path / "g.parquet"
    write(read(csv_path).records, parquet)  # native RankedList pairs in Parquet
    from_parquet = read_comparisons(parquet)
    assert from_parquet.layout == "rankedlist"
    ds = datasets.Dataset.from_dict({"item_a": ["x", "y", "z"], "item_b": ["y", "z", "x"], "outcome": [1, 0, 0.5]})
    from_dataset = read_comparisons(ds)
    for got in (from_parquet, from_dataset):
        assert got.items == expected.items == ["x", "y", "z"]
        assert got.first.tolist() == expected.first.tolist() == [0, 1, 2]
        assert got.outcome.tolist() == expected.outcome.tolist() == [1.0, 0.0, 0.5]


def test_integer_item_ids_from_json_are_text(tmp_path):
    path = write_text(tmp_path / "ids.jsonl", '{"winner": 17, "loser": 3}\n{"winner": "3", "loser": 17.0}\n')
    c = read_comparisons(path)
    assert c.items == ["17", "3"]  # 17, "17" and 17.0 are one item
    assert list(c.rows()) == [("17", "3", 1.0, 1.0), ("3", "17", 1.0, 1.0)]


def test_crlf_lines_and_unicode_line_separator_inside_a_cell(tmp_path):
    path = tmp_path / "crlf.csv"
    path.write_bytes("winner,loser\r\na,b\r\nb\u2028x,c\r\n".encode())
    c = read_comparisons(path)
    assert c.items == ["a", "b", "b\u2028x", "c"]  # U+2028 is not a CSV line break
    assert [r.candidates for r in read(path)] == [("a", "b"), ("b\u2028x", "c")]


def test_lists_of_three_are_not_comparisons(tmp_path):
    path = write_text(tmp_path / "lists.jsonl", '{"candidates": ["a", "b"], "ranks": [0, 1]}\n'
                                               '{"candidates": ["a", "b", "c"], "ranks": [0, 1, 2]}\n')
    with pytest.raises(DataError) as caught:
        read_comparisons(path)
    assert (caught.value.line, caught.value.field, caught.value.reason) == (2, "candidates", "not_a_pair")
    assert "a list of 3 candidates" in str(caught.value)
