"""Bad input: one clear error naming file, line and field -- or, with skip_invalid, a count by reason."""

import json

import pytest
from click.testing import CliRunner

from rankalign.cli import main
from rankalign.data import DataError, RankedList, iter_records, read


def jsonl(path, rows):
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def good_pair(i):
    return {"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}


def error_of(path, **kwargs) -> DataError:
    with pytest.raises(DataError) as caught:
        read(path, **kwargs)
    return caught.value


def test_malformed_json_on_line_7(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", [good_pair(i) for i in range(6)] + ['{"prompt": "q", "chosen": "x",\n'])
    error = error_of(path)
    assert (error.path, error.line, error.reason) == (str(path), 7, "malformed_json")
    assert str(error).startswith(f"{path}:7: malformed JSON")
    assert error.field is None  # the line is not an object, so there is no field to name


def test_missing_rejected_field(tmp_path):
    rows = [good_pair(0), good_pair(1), {"prompt": "q", "chosen": "only one"}]
    error = error_of(jsonl(tmp_path / "p.jsonl", rows))
    assert (error.line, error.field, error.reason) == (3, "rejected", "missing_field")
    assert ":3: field 'rejected': missing" in str(error)


def test_ranking_names_candidate_5_of_3(tmp_path):
    rows = [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1, 2]},
            {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 5, 1]}]
    error = error_of(jsonl(tmp_path / "r.jsonl", rows))
    assert (error.line, error.field, error.reason) == (2, "ranking", "rank_out_of_range")
    assert "names candidate 5 of 3" in str(error)


def test_nan_score(tmp_path):
    path = jsonl(tmp_path / "n.jsonl", ['{"candidates": ["a", "b"], "ranks": [0, 1], "scores": [1.0, 2.0]}\n',
                                       '{"candidates": ["a", "b"], "ranks": [0, 1], "scores": [1.0, NaN]}\n'])
    error = error_of(path)
    assert (error.line, error.field, error.reason) == (2, "scores[1]", "non_finite")


def test_nan_rating_in_a_ratings_list(tmp_path):
    row = {"prompt": "p", "completions": [{"response": "x", "ratings": {"help": 3}},
                                          {"response": "y", "ratings": {"help": float("nan")}}]}
    error = error_of(jsonl(tmp_path / "u.jsonl", [row]))
    assert (error.line, error.field, error.reason) == (1, "scores[1].help", "non_finite")


def test_empty_response_is_data(tmp_path):
    """An empty response is read (real data has them), not refused; an empty item id or prompt is not."""
    rows = [good_pair(0), {"prompt": "q", "chosen": "", "rejected": "fine"}]
    result = read(jsonl(tmp_path / "e.jsonl", rows))
    assert result.records[1].candidates == ("", "fine") and result.records[1].ranks == (0, 1)
    with pytest.raises(DataError) as error:
        RankedList(candidates=["a", ""], ranks=[0, 1])  # item comparison: "" is no item
    assert (error.value.field, error.value.reason) == ("candidates[1]", "empty_text")


def test_identical_chosen_and_rejected(tmp_path):
    rows = [good_pair(0), good_pair(1), good_pair(2), {"prompt": "q", "chosen": "same", "rejected": "same"}]
    error = error_of(jsonl(tmp_path / "i.jsonl", rows))
    assert (error.line, error.field, error.reason) == (4, "rejected", "identical_chosen_rejected")


def test_utf8_error_reports_the_line(tmp_path):
    path = tmp_path / "u.jsonl"
    good = (json.dumps(good_pair(0)) + "\n").encode()
    path.write_bytes(good * 3 + b'{"prompt": "q", "chosen": "caf\xe9", "rejected": "x"}\n' + good)
    error = error_of(path)
    assert (error.path, error.line, error.reason) == (str(path), 4, "bad_encoding")
    csv_path = tmp_path / "u.csv"
    csv_path.write_bytes(b"winner,loser\na,b\nc,d\n\xff\xfe,e\n")
    error = error_of(csv_path)
    assert (error.line, error.reason) == (4, "bad_encoding")


def test_unknown_layout_lists_columns_and_layouts(tmp_path):
    error = error_of(jsonl(tmp_path / "x.jsonl", [{"foo": 1, "bar": 2}]))
    assert (error.path, error.line, error.reason) == (str(tmp_path / "x.jsonl"), 1, "unknown_layout")
    message = str(error)
    assert "['bar', 'foo']" in message
    for layout in ("pairs", "arena", "winner_loser", "item_outcome", "ranked_responses", "ratings", "unpaired"):
        assert layout in message


def test_skip_invalid_counts_by_reason_and_never_hides_it(tmp_path):
    rows = [good_pair(0),
            '{"broken\n',                                              # malformed JSON
            {"prompt": "q", "chosen": "x"},                             # missing rejected
            {"prompt": "q", "chosen": "same", "rejected": "same"},      # identical
            {"prompt": "q", "chosen": " ", "rejected": "fine"},         # empty response: data, kept
            good_pair(5)]
    path = jsonl(tmp_path / "mix.jsonl", rows)
    result = read(path, skip_invalid=True)
    assert len(result) == 3
    assert dict(result.report.skipped) == {"malformed_json": 1, "missing_field": 1,
                                           "identical_chosen_rejected": 1}
    assert result.report.problems[0].startswith(f"{path}:2:")
    # the streaming reader gives the same report once consumed
    stream = iter_records(path, skip_invalid=True)
    assert len(list(stream)) == 3 and stream.report.n_skipped == 3
    # and the CLI says so in its JSON
    output = CliRunner().invoke(main, ["data", "inspect", str(path), "--json", "--skip-invalid"]).output
    summary = json.loads(output)
    assert (summary["records"], summary["skipped_total"], summary["empty_responses"]) == (3, 3, 1)
    failed = CliRunner().invoke(main, ["data", "inspect", str(path)])
    assert failed.exit_code != 0 and f"{path}:2: malformed JSON" in failed.output


def test_streaming_reads_lazily(tmp_path):
    # a bad last line is not reached when the consumer stops early: nothing reads the file ahead
    rows = [good_pair(i) for i in range(300)] + ["{not json\n"]
    stream = iter_records(jsonl(tmp_path / "big.jsonl", rows))
    first = [record for _, record in zip(range(3), stream)]
    assert [r.prompt for r in first] == ["question 0", "question 1", "question 2"]
    with pytest.raises(DataError, match=":301: malformed JSON"):
        list(iter_records(tmp_path / "big.jsonl"))


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ModuleNotFoundError, match="Parquet needs pyarrow") as info:
        read(tmp_path / "x.parquet")
    assert info.value.hint == "pip install 'rankalign[parquet]'"


def test_unknown_extension_asks_for_a_format(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("winner,loser\na,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="format="):
        read(path)
    assert read(path, format="csv").records[0].candidates == ("a", "b")
