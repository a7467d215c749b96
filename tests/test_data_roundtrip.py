"""Every layout: the records read from a tiny hand-made file (values worked out by hand), and
write-then-read giving equal records in every output format."""

from pathlib import Path

import pytest

from rankalign.data import LAYOUTS, Judgment, RankedList, read, write

DATA = Path(__file__).parent / "data"

# fixture file -> (layout it is detected as, number of records)
FIXTURES = {
    "pairs_explicit.jsonl": ("pairs", 2),
    "pairs_implicit.jsonl": ("pairs", 3),
    "pairs_messages.jsonl": ("pairs", 2),
    "arena.jsonl": ("arena", 4),
    "winner_loser.csv": ("winner_loser", 3),
    "item_outcome.csv": ("item_outcome", 5),
    "ranked_responses.jsonl": ("ranked_responses", 2),
    "item_ranking.jsonl": ("item_ranking", 2),
    "ratings.jsonl": ("ratings", 1),
    "unpaired.csv": ("unpaired", 3),
    "ranks.toc": ("preflib", 2),
    "native_lists.jsonl": ("rankedlist", 2),
    "native_judgments.jsonl": ("judgment", 2),
}


def test_every_layout_has_a_fixture():
    assert {layout for layout, _ in FIXTURES.values()} == set(LAYOUTS)


@pytest.mark.parametrize("name", sorted(FIXTURES))
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_write_then_read_gives_equal_records(tmp_path, name, fmt):
    layout, n = FIXTURES[name]
    result = read(DATA / name)
    assert result.layout == layout
    assert len(result) == n
    out = tmp_path / f"out.{fmt}"
    assert write(result.records, out) == n
    again = read(out)
    assert again.layout in ("rankedlist", "judgment")
    assert again.records == result.records
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # atomic write left no temp file


def test_explicit_pairs_values():
    a, b = read(DATA / "pairs_explicit.jsonl").records
    assert (a.prompt, a.candidates, a.ranks, a.annotator, a.weight) == ("Name a colour.", ("Blue.", "Seven."),
                                                                        (0, 1), "w1", 1.0)
    assert (b.weight, dict(b.meta)) == (2.0, {"source": "quiz"})  # count -> weight, other columns -> meta


def test_implicit_prompt_split_at_last_shared_assistant_turn():
    result = read(DATA / "pairs_implicit.jsonl")
    one, two, three = result.records
    assert one.prompt == "\n\nHuman: Hi\n\nAssistant:"
    assert one.candidates == (" Hello! How can I help?", " Go away.")
    assert two.prompt == "\n\nHuman: A?\n\nAssistant: B.\n\nHuman: C?\n\nAssistant:"
    assert two.candidates == (" D.", " E.")
    # differ before the last turn: the split is at the first Assistant turn, both responses run on
    assert three.prompt == "\n\nHuman: A?\n\nAssistant:"
    assert three.candidates == (" Yes.\n\nHuman: Sure?\n\nAssistant: Yes.", " No.")
    assert result.report.notes == {"implicit_prompt": 3, "implicit_prompt_early_divergence": 1}


def test_conversational_pairs():
    implicit, explicit = read(DATA / "pairs_messages.jsonl").records
    assert [dict(m) for m in implicit.prompt] == [{"role": "user", "content": "Hi"}]
    assert [dict(m) for m in implicit.candidates[0]] == [{"role": "assistant", "content": "Hello!"}]
    assert [dict(m) for m in implicit.candidates[1]] == [{"role": "assistant", "content": "What."}]
    assert len(explicit.prompt) == 2 and explicit.candidates[0][0]["content"] == "Blue."


def test_item_layouts_keep_file_order_and_ties():
    arena = read(DATA / "arena.jsonl")
    assert [(r.candidates, r.ranks, r.annotator) for r in arena] == [
        (("gpt-x", "llama-y"), (0, 1), "j1"),
        (("llama-y", "mistral-z"), (0, 0), "j2"),
        (("mistral-z", "gpt-x"), (1, 0), "j1"),
        (("gpt-x", "mistral-z"), (0, 0), "j3"),
    ]
    assert arena[1].meta["winner"] == "tie (bothbad)" and arena[0].meta["question_id"] == 1
    assert all(r.prompt is None for r in arena)
    wl = read(DATA / "winner_loser.csv")
    assert [(r.candidates, r.ranks, r.weight) for r in wl] == [
        (("ant", "bee"), (0, 1), 3.0), (("bee", "cat"), (0, 1), 1.0), (("cat", "ant"), (0, 1), 2.0)]
    io = read(DATA / "item_outcome.csv")
    # outcomes 1, 0, 0.5, a, tie -> a wins, b wins, tie, a wins, tie
    assert [r.ranks for r in io] == [(0, 1), (1, 0), (0, 0), (0, 1), (0, 0)]


def test_rankings_ratings_and_preflib_values():
    first, second = read(DATA / "ranked_responses.jsonl").records
    assert first.ranks == (1, 2, 0)  # ranking [2, 0, 1]: r2 best, then r0, then r1
    assert second.ranks == (1, 0, 2, 1)  # [1, [0, 3], 2]
    apple, tied = read(DATA / "item_ranking.jsonl").records
    assert (apple.candidates, apple.ranks) == (("apple", "pear", "plum"), (0, 1, 2))
    assert (tied.candidates, tied.ranks, tied.weight) == (("pear", "plum", "apple"), (0, 0, 1), 4.0)
    (rated,) = read(DATA / "ratings.jsonl").records
    # means of helpfulness/honesty: 4.5, 3.5, 4.5 -> the first and third tie at the top
    assert rated.ranks == (0, 1, 0)
    assert dict(rated.scores[1]) == {"helpfulness": 2.0, "honesty": 5.0}
    assert rated.prompt == "Write a haiku." and rated.meta["completions"][0] == {"model": "m1"}
    toc = read(DATA / "ranks.toc").records
    assert [(r.candidates, r.ranks, r.weight) for r in toc] == [
        (("Red", "Green", "Blue"), (0, 1, 1), 3.0), (("Blue", "Green", "Red"), (0, 1, 2), 2.0)]


def test_unpaired_and_native_judgments():
    labels = [j.label for j in read(DATA / "unpaired.csv")]
    assert labels == [True, False, 0.75]
    a, b = read(DATA / "native_judgments.jsonl").records
    assert a == Judgment(prompt="Q", response="A", label=True, annotator="u1")
    assert b == Judgment(response="B", label=0.25, weight=2.0)
    lists = read(DATA / "native_lists.jsonl").records
    assert lists[0] == RankedList(prompt="Pick one.", candidates=["a", "b", "c"], ranks=[0, None, 1],
                                  scores=[2.5, None, 1.0], annotator="z", weight=0.5, meta={"id": 9})


def test_mapping_and_outcomes_as_python_arguments(tmp_path):
    path = tmp_path / "games.csv"
    path.write_text("home,away,result\nA,B,1\nB,C,0\nC,A,-1\n", encoding="utf-8")
    records = read(path, mapping={"item_a": "home", "item_b": "away", "outcome": "result"},
                   outcomes={"1": "a", "0": "tie", "-1": "b"}).records
    assert [(r.candidates, r.ranks) for r in records] == [(("A", "B"), (0, 1)), (("B", "C"), (0, 0)),
                                                          (("C", "A"), (1, 0))]


def test_datasets_dataset_source():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"prompt": ["p1", "p2"], "chosen": ["good", "fine"], "rejected": ["bad", "meh"]})
    result = read(ds)
    assert result.layout == "pairs"
    assert [r.candidates for r in result] == [("good", "bad"), ("fine", "meh")]


def test_saved_dataset_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"winner": ["a", "b"], "loser": ["b", "c"]})
    ds.save_to_disk(str(tmp_path / "saved"))
    assert [r.candidates for r in read(tmp_path / "saved")] == [("a", "b"), ("b", "c")]
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(Exception, match=r"splits \['test', 'train'\]"):
        read(tmp_path / "dict")
    assert len(read(tmp_path / "dict" / "test")) == 2


def test_saved_dataset_folder_without_datasets_names_the_extra(tmp_path, monkeypatch):
    import sys

    (tmp_path / "saved").mkdir()
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ModuleNotFoundError, match=r"rankalign\[train\]"):
        read(tmp_path / "saved")


def test_annotator_id_is_public_and_one_rule_for_every_spelling():
    """rankalign.data.annotator_id: the record model's rule, which the readers and the personal models share:
    7, 7.0 and "7" are one annotator; a blank string is none; a bool or a fraction is refused."""
    from rankalign.data import DataError, annotator_id

    assert annotator_id(7) == annotator_id(7.0) == annotator_id("7") == "7"
    assert annotator_id("  ") is None and annotator_id(None) is None
    for bad in (True, 7.5, [7]):
        with pytest.raises(DataError, match="annotator id"):
            annotator_id(bad)
