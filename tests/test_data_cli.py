"""`rankalign data inspect` and `rankalign data convert` (through click's test runner)."""

import json
from pathlib import Path

from click.testing import CliRunner

from rankalign.data import RankedList, read, write
from rankalign.cli import main
from rankalign.data.summary import to_lists

DATA = Path(__file__).parent / "data"


def invoke(*args):
    result = CliRunner().invoke(main, ["data", *(str(a) for a in args)])
    assert result.exit_code == 0, result.output
    return result


def test_inspect_json_on_item_outcomes_with_a_mapping(tmp_path):
    path = tmp_path / "games.csv"
    path.write_text("home,away,result\nA,B,1\nB,C,0\nC,A,-1\nA,C,0\n", encoding="utf-8")
    out = invoke("inspect", path, "--json", "--map", "item_a=home,item_b=away,outcome=result",
                 "--outcomes", "1=a,0=tie,-1=b").output
    summary = json.loads(out)  # exactly one JSON object
    assert summary["layout"] == "item_outcome"
    assert (summary["records"], summary["skipped"], summary["items"]) == (4, {}, 3)
    assert summary["tie_rate"] == 2 / 4  # two draws in four games
    assert summary["list_sizes"] == {"2": 4}
    # A-B home win, B-C draw, C-A away win, A-C draw
    assert summary["pair_outcomes"] == {"first_wins": 1, "second_wins": 1, "ties": 2}


def test_inspect_table_and_lengths_on_pairs():
    out = invoke("inspect", DATA / "pairs_explicit.jsonl").output
    assert "pairs" in out and "records" in out
    summary = json.loads(invoke("inspect", DATA / "pairs_explicit.jsonl", "--json").output)
    # prompts "Name a colour." (14 chars) and "2+2?" (4); responses 5, 6, 1, 1 characters
    assert summary["prompt_chars"]["max"] == 14.0 and summary["prompt_chars"]["p50"] == 9.0
    assert summary["response_chars"]["max"] == 6.0 and summary["response_chars"]["mean"] == 13 / 4
    assert summary["annotators"] == {"distinct": 1, "records_without": 1, "top": [["w1", 1]]}
    assert summary["duplicates"] == 0


def test_inspect_counts_duplicates(tmp_path):
    path = tmp_path / "dup.jsonl"
    row = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
    path.write_text(row * 3, encoding="utf-8")
    assert json.loads(invoke("inspect", path, "--json").output)["duplicates"] == 2


def test_convert_lists_to_pairs_counts(tmp_path):
    out = tmp_path / "pairs.jsonl"
    result = invoke("convert", DATA / "ranked_responses.jsonl", out, "--to", "pairs", "--strategy", "all")
    report = json.loads(result.output.strip().splitlines()[-1])
    # list 1: strict ranking of 3 -> 3 pairs; list 2: groups {s1}, {s0, s3}, {s2} -> 5 strict + 1 tie
    assert report["output_records"] == 3 + 6 == len(read(out))
    adjacent = tmp_path / "adjacent.jsonl"
    invoke("convert", DATA / "ranked_responses.jsonl", adjacent, "--to", "pairs", "--strategy", "adjacent")
    # list 1: 2 adjacent pairs; list 2: 1x2 + 2x1 between groups + 1 tie inside {s0, s3}
    assert len(read(adjacent)) == 2 + 5


def test_convert_pairs_back_to_lists_only_where_lossless(tmp_path):
    ranked = RankedList(prompt="p", candidates=["a", "b", "c"], ranks=[0, 1, 1])
    conflicting = [RankedList(prompt="q", candidates=["x", "y"], ranks=[0, 1]),
                   RankedList(prompt="q", candidates=["y", "x"], ranks=[0, 1])]
    incomplete = [RankedList(prompt="r", candidates=["u", "v"], ranks=[0, 1]),
                  RankedList(prompt="r", candidates=["v", "w"], ranks=[0, 1])]
    pairs_path = tmp_path / "pairs.jsonl"
    write(ranked.to_pairs("all") + conflicting + incomplete, pairs_path)
    out = tmp_path / "lists.jsonl"
    result = invoke("convert", pairs_path, out, "--to", "lists")
    report = json.loads(result.output.strip().splitlines()[-1])
    lists = read(out).records
    assert lists[0] == ranked  # all three pairs of p (two strict, one tie) rebuild the list exactly
    assert lists[1:] == conflicting + incomplete  # kept as separate records, never merged
    assert report["groups_merged"] == 1 and report["pairs_merged"] == 3
    assert report["pairs_kept_separate"] == {"conflicting": 2, "incomplete": 2}


def test_to_lists_keeps_a_cycle_as_pairs():
    cycle = [RankedList(prompt="p", candidates=[a, b], ranks=[0, 1]) for a, b in (("a", "b"), ("b", "c"), ("c", "a"))]
    records, report = to_lists(cycle)
    assert records == cycle and report["groups_kept_as_pairs"] == {"intransitive": 1}


def test_convert_drops_judgments_with_a_count(tmp_path):
    out = tmp_path / "x.jsonl"
    result = invoke("convert", DATA / "native_judgments.jsonl", out, "--to", "pairs")
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["dropped"] == {"judgment_has_no_pair_form": 2} and report["written"] == 0
