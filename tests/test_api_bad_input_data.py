"""The Python API of rankalign.data with bad arguments: a clear error naming the argument or field, never a
silent wrong result or an AttributeError from deep inside."""

import json

import numpy as np
import pytest

from rankalign.data import (
    DataError,
    Judgment,
    RankedList,
    iter_pairs,
    read,
    read_comparisons,
    summarize,
    to_lists,
    to_pairs,
    write,
)
from rankalign.errors import UsageError


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- records
def test_equal_records_are_hashable_and_hash_alike():
    chat = [{"role": "user", "content": "hi"}]
    first = RankedList(prompt=chat, candidates=["a", "b"], ranks=[0, 1], scores=[{"x": 1}, None],
                       meta={"source": "f"})
    second = RankedList(prompt=tuple(chat), candidates=("a", "b"), ranks=(0, 1), scores=({"x": 1.0}, None),
                        meta={"source": "f"})
    assert first == second
    assert len({first, second}) == 1  # a frozen record can be a set member or a dict key
    other = RankedList(prompt=chat, candidates=["a", "b"], ranks=[1, 0])
    assert len({first, other}) == 2
    judgments = {Judgment(response="r", label=True, meta={"k": [1]}), Judgment(response="r", label=True)}
    assert len(judgments) == 2  # meta differs, so they differ
    assert len({Judgment(response="r", label=True), Judgment(response="r", label=True)}) == 1


def test_a_chat_message_with_an_empty_role_is_refused():
    with pytest.raises(DataError) as caught:
        RankedList(prompt="p", candidates=[[{"role": " ", "content": "x"}], "b"], ranks=[0, 1])
    assert caught.value.field == "candidates[0][0].role"


def test_a_numpy_bool_label_is_a_bool():
    judgment = Judgment(response="r", label=np.bool_(False))
    assert judgment.label is False and judgment.desirable is False


def test_a_numpy_bool_is_not_a_count():
    from rankalign.data.layouts import _number

    with pytest.raises(TypeError):
        _number(np.bool_(True))


@pytest.mark.parametrize("call", [
    lambda r: r.to_pairs(ties="no"),
    lambda r: r.pair_indices("all", ties=None),
    lambda r: to_pairs([r], ties="false"),
    lambda r: list(iter_pairs([r], ties="no")),
])
def test_the_ties_switch_must_be_a_boolean(call):
    record = RankedList(candidates=["a", "b", "c"], ranks=[0, 0, 1])
    with pytest.raises(UsageError, match="ties must be True or False"):
        call(record)


def test_an_unknown_pair_strategy_is_a_usage_error():
    record = RankedList(candidates=["a", "b"], ranks=[0, 1])
    for call in (lambda: record.to_pairs("best"), lambda: to_pairs([record], "al"), lambda: list(iter_pairs([record], None))):
        with pytest.raises(UsageError, match="unknown pair strategy"):
            call()


def test_from_scores_names_its_bad_arguments():
    with pytest.raises(UsageError, match="tie_tolerance"):
        RankedList.from_scores([1.0, 2.0], candidates=["a", "b"], tie_tolerance="0.1")
    with pytest.raises(UsageError, match="higher_is_better"):
        RankedList.from_scores([1.0, 2.0], candidates=["a", "b"], higher_is_better="no")
    with pytest.raises(DataError) as caught:
        RankedList.from_scores([1.0, 2.0], candidates=iter(["a", "b"]))
    assert caught.value.field == "candidates"
    with pytest.raises(DataError) as caught:
        RankedList.from_scores(5, candidates=["a", "b"])
    assert caught.value.field == "scores"


@pytest.mark.parametrize("call, name", [
    (lambda items: list(iter_pairs(items)), "iter_pairs"),
    (lambda items: to_pairs(items), "to_pairs"),
    (lambda items: to_lists(items), "to_lists"),
    (lambda items: summarize(items), "summarize"),
])
def test_converters_name_an_item_that_is_not_a_record(call, name):
    good = RankedList(candidates=["a", "b"], ranks=[0, 1])
    with pytest.raises(TypeError, match=f"{name} takes .*record 1 is a dict"):
        call([good, good.to_dict()])


def test_iter_pairs_says_a_judgment_has_no_pair_form():
    with pytest.raises(TypeError, match="record 0 is a Judgment"):
        list(iter_pairs([Judgment(response="r", label=True)]))


# ------------------------------------------------------------------------------------------- readers
def test_skip_invalid_must_be_a_boolean(tmp_path):
    pairs = jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"},
                                         {"prompt": "q", "chosen": "a"}])
    games = jsonl(tmp_path / "g.jsonl", [{"winner": "x", "loser": "y"}])
    # "false" is a true string: it used to skip the bad row without a word
    with pytest.raises(UsageError, match="skip_invalid"):
        read(pairs, skip_invalid="false")
    with pytest.raises(UsageError, match="skip_invalid"):
        read_comparisons(games, skip_invalid=None)
    assert read(pairs, skip_invalid=np.bool_(True)).report.skipped == {"missing_field": 1}


@pytest.mark.parametrize("kwargs, match", [
    ({"mapping": "chosen="}, "expected key=value"),
    ({"mapping": {"chosen": None}}, "the value None"),
    ({"mapping": {"chosen": ["a"]}}, "the value"),
    ({"mapping": ["chosen=a"]}, "expected a dict or a 'key=value,...' string, got list"),
    ({"outcomes": ["1=a"]}, "expected a dict or a 'key=value,...' string, got list"),
    ({"outcomes": 5}, "got int"),
])
def test_malformed_mapping_and_outcomes_arguments(tmp_path, kwargs, match):
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(UsageError, match=match):
        read(path, **kwargs)


def test_outcomes_for_labels_must_give_a_label(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"completion": "a", "label": "yes"}, {"completion": "b", "label": "meh"}])
    for outcomes in ("yes=maybe", "meh=1.5"):
        # used to be a row error on every row it relabels, blaming the file (and skipped under skip_invalid)
        with pytest.raises(UsageError, match="a label must become true, false or a probability"):
            read(path, outcomes=outcomes, skip_invalid=True)
    labels = [r.label for r in read(path, outcomes="meh=0.25")]
    assert labels == [True, 0.25]


def test_format_must_fit_the_source(tmp_path):
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(UsageError, match="format='dataset'"):
        read(path, format="dataset")
    for source in (None, 5, [{"prompt": "q"}]):
        with pytest.raises(TypeError, match="source must be a file path or a datasets.Dataset"):
            read(source)
    with pytest.raises(UsageError, match="empty"):
        read("")
    with pytest.raises(UsageError, match="empty"):
        write([RankedList(candidates=["a"], ranks=[0])], "")


def test_a_dataset_with_a_file_format_or_a_dataset_dict():
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict({"winner": ["a"], "loser": ["b"]})
    with pytest.raises(UsageError, match="does not fit a datasets.Dataset"):
        read(dataset, format="jsonl")
    with pytest.raises(UsageError, match="does not fit a datasets.Dataset"):
        read_comparisons(dataset, format="csv")
    with pytest.raises(UsageError, match="pass one split"):
        read(datasets.DatasetDict({"train": dataset}))


def test_keep_must_be_a_list_of_column_names(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("home,away,result,venue\nx,y,1,v1\ny,z,0,v2\n", encoding="utf-8")
    kwargs = {"mapping": "item_a=home,item_b=away,outcome=result"}
    with pytest.raises(UsageError, match="keep must be a list of column names"):
        read_comparisons(path, keep="venue", **kwargs)  # used to look for columns 'v', 'e', ...
    assert list(read_comparisons(path, keep=["venue"], **kwargs).extra["venue"]) == ["v1", "v2"]


def test_a_fractional_number_is_not_an_item_id(tmp_path):
    path = jsonl(tmp_path / "g.jsonl", [{"item_a": 1.5, "item_b": 2, "outcome": 1}])
    with pytest.raises(DataError) as caught:
        read(path)  # used to read the item as "1.5"
    assert (caught.value.line, caught.value.field, caught.value.reason) == (1, "item_a", "bad_type")
    with pytest.raises(DataError) as caught:
        read_comparisons(path)  # used to say "a pair with an unranked candidate"
    assert (caught.value.field, caught.value.reason) == ("item_a", "bad_type")
    whole = jsonl(tmp_path / "w.jsonl", [{"item_a": 1.0, "item_b": 2, "outcome": 1}])
    assert read(whole).records[0].candidates == ("1", "2")


def test_write_takes_an_iterable_of_records(tmp_path):
    record = RankedList(candidates=["a", "b"], ranks=[0, 1])
    with pytest.raises(TypeError, match="wrap one record in a list"):
        write(record, tmp_path / "x.jsonl")
    with pytest.raises(TypeError, match="iterable of records, got NoneType"):
        write(None, tmp_path / "x.jsonl")
    with pytest.raises(UsageError, match="one kind of record"):
        write([record, Judgment(response="r", label=True)], tmp_path / "x.csv")
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("cls", [RankedList, Judgment])
@pytest.mark.parametrize("data", ["abc", ["candidates", "ranks"], 5])
def test_from_dict_takes_a_mapping(cls, data):
    with pytest.raises(DataError, match=f"expected a mapping of fields .*got {type(data).__name__}") as caught:
        cls.from_dict(data)  # a string used to be read key by key: "unknown key(s) ['a', 'b', 'c']"
    assert caught.value.reason == "bad_type"
