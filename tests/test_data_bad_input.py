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


# ------------------------------------------------------------------ a second battery (2026-12-01 audit)
def _pair_with(**extra):
    return json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", **extra}) + "\n"


@pytest.mark.parametrize("field,value", [("weight", "NaN"), ("count", "NaN"), ("weight", "Infinity")])
def test_an_explicit_nan_weight_is_refused_not_read_as_absent(tmp_path, field, value):
    # json.dumps cannot write NaN as a value we choose the spelling of, so the line is written by hand
    path = jsonl(tmp_path / "w.jsonl", [_pair_with(), f'{{"prompt": "p", "chosen": "a", "rejected": "b", "{field}": {value}}}\n'])
    error = error_of(path)
    assert (error.line, error.field, error.reason) == (2, field, "non_finite")


@pytest.mark.parametrize("row,field", [
    ({"prompt": "p", "chosen": "a", "rejected": "b", "weight": True}, "weight"),
    ({"winner": "a", "loser": "b", "count": False}, "count"),
    ({"prompt": "p", "completions": [{"response": "a", "score": True}, {"response": "b", "score": 1}]},
     "completions[0].score"),
])
def test_a_boolean_is_not_a_number(tmp_path, row, field):
    error = error_of(jsonl(tmp_path / "b.jsonl", [row]))
    assert (error.line, error.field, error.reason[:4]) == (1, field, "bad_")


def test_a_boolean_count_is_refused_by_the_comparison_reader_too(tmp_path):
    from rankalign.data import read_comparisons

    path = jsonl(tmp_path / "c.jsonl", [{"winner": "a", "loser": "b", "count": 2},
                                        {"winner": "a", "loser": "c", "count": False}])
    with pytest.raises(DataError) as caught:
        read_comparisons(path)
    assert (caught.value.line, caught.value.reason) == (2, "bad_count")


@pytest.mark.parametrize("row,field", [
    ({"prompt": 5, "chosen": "a", "rejected": "b"}, "prompt"),
    ({"prompt": "p", "chosen": 5, "rejected": "b"}, "chosen"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "annotator": {"id": 3}}, "annotator"),
    ({"winner": True, "loser": "b"}, "winner"),
    ({"prompt": "p", "candidates": ["a", 7], "ranks": [0, 1]}, "candidates[1]"),
])
def test_a_number_or_an_object_where_text_belongs_is_a_type_error(tmp_path, row, field):
    error = error_of(jsonl(tmp_path / "t.jsonl", [row]))
    assert (error.line, error.field, error.reason) == (1, field, "bad_type")


def test_integer_item_ids_and_annotators_are_still_text(tmp_path):
    (first,) = read(jsonl(tmp_path / "ids.jsonl", [{"candidates": [17, 4], "ranks": [0, 1], "annotator": 7}])).records
    (second,) = read(jsonl(tmp_path / "pair.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b",
                                                      "annotator": 12}])).records
    assert (first.candidates, first.annotator, second.annotator) == (("17", "4"), "7", "12")


@pytest.mark.parametrize("row", [{"prompt": "", "candidates": ["a", "b"], "ranks": [0, 1]},
                                 {"prompt": "  ", "chosen": "a", "rejected": "b"}])
def test_an_explicit_empty_prompt_is_an_error_not_an_item_comparison(tmp_path, row):
    error = error_of(jsonl(tmp_path / "e.jsonl", [row]))
    assert (error.line, error.field, error.reason) == (1, "prompt", "empty_text")


def test_an_empty_csv_prompt_cell_still_means_no_prompt(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text('prompt,candidates,ranks\n,"[""x"", ""y""]","[0, 1]"\n', encoding="utf-8")
    (record,) = read(path).records
    assert record.prompt is None and record.candidates == ("x", "y")


@pytest.mark.parametrize("row,field", [
    ({"prompt": "p", "chosen": "a", "rejected": "b", "weight": 10**400}, "weight"),
    ({"winner": "a", "loser": "b", "count": 10**400}, "count"),
    ({"candidates": ["a", "b"], "ranks": [0, 1], "scores": [1, 10**400]}, "scores[1]"),
])
def test_an_integer_beyond_float_range_is_a_counted_row_error(tmp_path, row, field):
    path = jsonl(tmp_path / "o.jsonl", [row, _pair_with() if "chosen" in row else row | {"count": 1}
                                        if "winner" in row else row | {"scores": [1, 2]}])
    error = error_of(path)
    assert (error.line, error.field, error.reason) == (1, field, "non_finite")
    assert read(path, skip_invalid=True).report.skipped == {"non_finite": 1}


def test_a_completion_that_is_not_an_object_is_a_row_error(tmp_path):
    rows = [{"prompt": "p", "completions": [42, {"response": "b", "score": 1}]},
            {"prompt": "q", "completions": [{"response": "a", "score": 2}, {"response": "b", "score": 1}]}]
    path = jsonl(tmp_path / "r.jsonl", rows)
    error = error_of(path)
    assert (error.line, error.field, error.reason) == (1, "completions[0]", "bad_type")
    assert len(read(path, skip_invalid=True).records) == 1


@pytest.mark.parametrize("content", [b"not parquet at all", b"PAR1" + b"\0" * 40])
def test_a_file_that_is_not_parquet(tmp_path, content):
    pytest.importorskip("pyarrow")
    path = tmp_path / "x.parquet"
    path.write_bytes(content)
    error = error_of(path)
    assert (error.path, error.reason) == (str(path), "bad_format")


def test_a_truncated_parquet_file(tmp_path):
    pytest.importorskip("pyarrow")
    from rankalign.data import write

    path = tmp_path / "full.parquet"
    write([RankedList(prompt=f"p{i}", candidates=[f"a{i}", f"b{i}"], ranks=[0, 1]) for i in range(50)], path)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert error_of(cut).reason == "bad_format"


def test_a_csv_cell_longer_than_the_csv_modules_default_limit(tmp_path):
    long_prompt = "x" * 200_000  # the csv module refuses cells over 131,072 characters by default
    path = tmp_path / "long.csv"
    path.write_text(f"prompt,chosen,rejected\n{long_prompt},a,b\n", encoding="utf-8")
    (record,) = read(path).records
    assert len(record.prompt) == 200_000


def test_old_mac_line_endings_name_the_file_and_line(tmp_path):
    from rankalign.data import read_comparisons

    path = tmp_path / "cr.csv"
    path.write_bytes(b"winner,loser\ra,b\rb,c\r")
    for reader in (read, read_comparisons):
        with pytest.raises(DataError) as caught:
            reader(path)
        assert (caught.value.path, caught.value.reason) == (str(path), "bad_format")
        assert "line" in str(caught.value) or ":1:" in str(caught.value)


def test_a_preflib_header_with_a_non_numeric_voter_count(tmp_path):
    path = tmp_path / "v.soc"
    path.write_text("# NUMBER ALTERNATIVES: 2\n# NUMBER VOTERS: many\n1: 1,2\n", encoding="utf-8")
    error = error_of(path)
    assert (error.field, error.reason) == ("NUMBER VOTERS", "bad_header")


def test_bytes_are_not_a_list_of_chat_messages():
    with pytest.raises(DataError) as caught:
        RankedList(prompt="p", candidates=[b"ab", "c"], ranks=[0, 1])
    assert (caught.value.field, caught.value.reason) == ("candidates[0]", "bad_type")


def test_a_layout_one_column_short_is_named(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("prompt,chosen\np,a\n", encoding="utf-8")
    error = error_of(path)
    assert error.reason == "unknown_layout"
    assert "layout 'pairs' lacks column 'rejected'" in str(error)


def test_a_semicolon_separated_file_gets_a_hint(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("prompt;chosen;rejected\np;a;b\n", encoding="utf-8")
    assert "separated by ';'" in str(error_of(path))


def test_a_string_where_a_list_belongs_says_so(tmp_path):
    error = error_of(jsonl(tmp_path / "s.jsonl", [{"prompt": "p", "candidates": ["a", "b", "c"], "ranks": "0,1,2"}]))
    assert (error.field, error.reason) == ("ranks", "malformed_json")
    assert "expected a list" in str(error) and "'0,1,2'" in str(error)


def test_an_integer_annotator_reads_the_same_from_every_layout(tmp_path):
    # a float column (Parquet, pandas) holds 7 as 7.0: the id is "7" in the native layout and in pairs alike
    (native,) = read(jsonl(tmp_path / "n.jsonl", [{"candidates": ["a", "b"], "ranks": [0, 1], "annotator": 7.0}])).records
    (pair,) = read(jsonl(tmp_path / "p.jsonl", [_pair_with(annotator=7.0).strip()])).records
    assert native.annotator == pair.annotator == "7"


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_annotator_is_no_annotator_in_every_layout(tmp_path, blank):
    # not a distinct annotator named "" that every unlabelled row would share
    (native,) = read(jsonl(tmp_path / "n.jsonl", [{"candidates": ["a", "b"], "ranks": [0, 1], "annotator": blank}])).records
    (pair,) = read(jsonl(tmp_path / "p.jsonl", [_pair_with(annotator=blank).strip()])).records
    assert native.annotator is None and pair.annotator is None
    assert RankedList(candidates=["a", "b"], ranks=[0, 1], annotator=blank).annotator is None


def test_a_key_named_twice_in_a_jsonl_object_is_an_error_naming_it(tmp_path):
    # json would keep the last value silently: this row would be read as chosen "b" with no sign of "a"
    path = jsonl(tmp_path / "d.jsonl", [good_pair(0), '{"prompt": "q", "chosen": "a", "rejected": "r", "chosen": "b"}\n'])
    error = error_of(path)
    assert (error.path, error.line, error.field, error.reason) == (str(path), 2, "chosen", "duplicate_key")
    assert "'chosen' appears twice" in str(error)
    # nested objects are checked too, and the row is counted, not read, under skip_invalid
    nested = jsonl(tmp_path / "n.jsonl", [good_pair(0), '{"prompt": "q", "chosen": "a", "rejected": "r", '
                                          '"meta": {"src": 1, "src": 2}}\n', good_pair(2)])
    result = read(nested, skip_invalid=True)
    assert len(result) == 2 and dict(result.report.skipped) == {"duplicate_key": 1}
    assert result.report.problems[0].startswith(f"{nested}:2:")


def test_a_key_named_twice_in_a_json_document_row_names_the_row(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"prompt": "q", "chosen": "a", "rejected": "r"},\n'
                    ' {"prompt": "q", "chosen": "a", "rejected": "r", "rejected": "s"}]', encoding="utf-8")
    error = error_of(path)
    assert (error.line, error.field, error.reason) == (2, "rejected", "duplicate_key")
    assert len(read(path, skip_invalid=True)) == 1
    wrapper = tmp_path / "w.json"
    wrapper.write_text('{"data": [], "data": [{"prompt": "q", "chosen": "a", "rejected": "r"}]}', encoding="utf-8")
    assert error_of(wrapper, skip_invalid=True).reason == "duplicate_key"  # the document itself is ambiguous


def test_a_key_named_twice_in_a_csv_cells_json_names_the_column(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('prompt,completions\n'
                    'p,"[{""response"": ""a"", ""score"": 1, ""score"": 5}, {""response"": ""b"", ""score"": 2}]"\n',
                    encoding="utf-8")
    error = error_of(path)
    assert (error.line, error.field, error.reason) == (2, "completions", "duplicate_key")
    assert "'score' appears twice" in str(error)


def test_a_row_of_another_layout_says_the_file_mixes_layouts(tmp_path):
    rows = [{"prompt": "p", "candidates": ["a", "b"], "ranks": [0, 1]}, good_pair(1)]
    error = error_of(jsonl(tmp_path / "m.jsonl", rows))
    assert (error.line, error.field, error.reason) == (2, "chosen", "unknown_field")
    assert "this row has the columns of the 'pairs' layout, while the file is read as 'rankedlist'" in str(error)
    # a row that fits no layout keeps the plain message
    error = error_of(jsonl(tmp_path / "p.jsonl", [good_pair(0), {"prompt": "q", "chosen": "only one"}]))
    assert "layout" not in error.message and error.reason == "missing_field"


def test_parquet_binary_columns_are_read_as_utf8_text(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from rankalign.data import read_comparisons

    good, bad = tmp_path / "binary.parquet", tmp_path / "not_text.parquet"
    pq.write_table(pa.table({"winner": pa.array([b"A", "é".encode()], pa.binary()),
                             "loser": pa.array([b"B", b"A"], pa.binary())}), good)
    games = read_comparisons(good)
    assert sorted(games.items) == ["A", "B", "é"]  # not "b'A'"
    lists = pa.table({"prompt": ["p"], "candidates": pa.array([[b"x", b"y"]], pa.list_(pa.binary())),
                      "ranks": [[0, 1]]})
    pq.write_table(lists, tmp_path / "lists.parquet")
    assert list(read(tmp_path / "lists.parquet")[0].candidates) == ["x", "y"]
    pq.write_table(pa.table({"winner": pa.array([b"A", b"\xff"], pa.binary()),
                             "loser": pa.array([b"B", b"A"], pa.binary())}), bad)
    with pytest.raises(DataError, match="not UTF-8 text") as caught:
        read_comparisons(bad)
    assert (caught.value.line, caught.value.field) == (2, "winner")


@pytest.mark.parametrize("name, content, hint", [
    ("g.jsonl", __import__("gzip").compress(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n'), "gzip"),
    ("u.csv", "winner,loser\na,b\n".encode("utf-16"), "UTF-16"),
    ("u.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b"}\n'.encode("utf-16"), "UTF-16"),
    ("cr.csv", b"winner,loser\ra,b\rb,a\r", "CR-only"),
])
def test_files_in_another_encoding_or_compressed_say_what_they_are(tmp_path, name, content, hint):
    from rankalign.data import read_comparisons

    path = tmp_path / name
    path.write_bytes(content)
    readers = [read] + ([read_comparisons] if name.endswith(".csv") else [])
    for reader in readers:
        with pytest.raises(DataError) as caught:
            reader(path)
        assert hint in f"{caught.value} {caught.value.hint}" and caught.value.line == 1
