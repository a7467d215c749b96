"""`rankalign data inspect` and `rankalign data convert` (through click's test runner)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rankalign.cli import main
from rankalign.data import RankedList, read, write
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
    result = invoke("convert", DATA / "ranked_responses.jsonl", "-o", out, "--to", "pairs", "--strategy", "all",
                    "--json")
    report = json.loads(result.stdout)
    # list 1: strict ranking of 3 -> 3 pairs; list 2: groups {s1}, {s0, s3}, {s2} -> 5 strict + 1 tie
    assert report["output_records"] == 3 + 6 == len(read(out))
    adjacent = tmp_path / "adjacent.jsonl"
    invoke("convert", DATA / "ranked_responses.jsonl", "-o", adjacent, "--to", "pairs", "--strategy", "adjacent")
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
    result = invoke("convert", pairs_path, "--output", out, "--to", "lists", "--json")
    report = json.loads(result.stdout)
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
    # every record is a judgment with no pair form: nothing converts, so nothing is written (exit 1)
    out = tmp_path / "x.jsonl"
    result = CliRunner().invoke(main, ["data", "convert", str(DATA / "native_judgments.jsonl"), "-o", str(out),
                                       "--to", "pairs", "--json"])
    assert result.exit_code == 1 and "judgment_has_no_pair_form 2" in result.output
    assert not out.exists()


def test_convert_positional_out_still_works_and_warns(tmp_path):
    out = tmp_path / "x.jsonl"
    result = invoke("convert", DATA / "ranked_responses.jsonl", out, "--to", "pairs")
    assert "deprecated" in result.stderr and f"wrote 9 pairs records: {out}" in result.stderr
    assert len(read(out)) == 9
    both = CliRunner().invoke(main, ["data", "convert", str(DATA / "ranked_responses.jsonl"), str(out), "-o", str(out),
                                     "--to", "pairs"])
    assert both.exit_code == 2 and "give one of them" in both.output


def test_convert_to_trl_standard_and_conversational(tmp_path):
    """TRL preference rows: strings for plain text, message lists when the input was conversational."""
    plain = RankedList(prompt="p", candidates=["a", "b", "c"], ranks=[1, 0, 1])  # b best, a and c tie
    chat = RankedList(prompt=[{"role": "user", "content": "hi"}],
                      candidates=[[{"role": "assistant", "content": "yo"}], [{"role": "assistant", "content": "."}]],
                      ranks=[0, 1])
    source = tmp_path / "in.jsonl"
    write([plain, chat], source)
    out = tmp_path / "trl.jsonl"
    report = json.loads(invoke("convert", source, "-o", out, "--to", "trl", "--json").stdout)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # plain: b > a, b > c, and the a-c tie has no TRL form; chat: one pair
    assert rows[:2] == [{"prompt": "p", "chosen": "b", "rejected": "a"}, {"prompt": "p", "chosen": "b", "rejected": "c"}]
    assert rows[2] == {"prompt": [{"role": "user", "content": "hi"}],
                       "chosen": [{"role": "assistant", "content": "yo"}],
                       "rejected": [{"role": "assistant", "content": "."}]}
    assert report["output_rows"] == 3 and report["dropped"] == {"tie": 1}


def test_convert_to_trl_kto(tmp_path):
    """TRL unpaired rows: a pair's chosen True / rejected False; a list's best True, worst False."""
    records = [RankedList(prompt="p", candidates=["a", "b"], ranks=[1, 0]),
               RankedList(prompt="q", candidates=["x", "y", "z"], ranks=[0, 1, 2])]
    source = tmp_path / "in.jsonl"
    write(records, source)
    out = tmp_path / "kto.jsonl"
    report = json.loads(invoke("convert", source, "-o", out, "--to", "trl-kto", "--json").stdout)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"prompt": "p", "completion": "a", "label": False}, {"prompt": "p", "completion": "b", "label": True},
                    {"prompt": "q", "completion": "x", "label": True}, {"prompt": "q", "completion": "z", "label": False}]
    assert report["dropped"] == {"middle_rank": 1}


def test_inspect_counts_empty_responses(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": "q", "chosen": "a", "rejected": " "}) + "\n", encoding="utf-8")
    summary = json.loads(invoke("inspect", path, "--json").output)
    assert summary["empty_responses"] == 2 and summary["records"] == 2


def test_convert_refuses_an_output_it_cannot_write_before_reading(tmp_path):
    # TRL rows are JSONL/JSON only; records are JSONL/JSON/CSV/Parquet; the check comes before any reading,
    # so an unreadable input is not even opened
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n", encoding="utf-8")
    for target, name in [("trl", "rows.csv"), ("trl-kto", "rows.parquet"), ("pairs", "rows.txt"), ("lists", "rows")]:
        result = CliRunner().invoke(main, ["data", "convert", str(broken), "-o", str(tmp_path / name), "--to", target])
        assert result.exit_code == 2, result.output
        assert "cannot write" in result.output and "-o/--output" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jsonl"]


def test_convert_that_drops_every_record_writes_nothing_and_fails(tmp_path):
    games = tmp_path / "games.csv"
    games.write_text("winner,loser\na,b\nb,c\n", encoding="utf-8")
    out = tmp_path / "rows.jsonl"
    result = CliRunner().invoke(main, ["data", "convert", str(games), "-o", str(out), "--to", "trl"])
    assert result.exit_code == 1
    assert "nothing to write" in result.output and "no_prompt 2" in result.output
    assert not out.exists()


def test_rank_by_on_a_file_without_rated_lists_is_refused(tmp_path):
    from rankalign.data.summary import rank_by
    from rankalign.errors import UsageError

    pairs = [RankedList(candidates=["a", "b"], ranks=[0, 1], prompt="p")]
    with pytest.raises(UsageError, match="nothing to re-rank"):
        list(rank_by(pairs, "helpfulness"))
    assert list(rank_by(pairs, None)) == pairs  # no key: nothing asked, nothing refused
    games = tmp_path / "games.csv"
    games.write_text("winner,loser\na,b\nb,a\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["rate", str(games), "--rank-by", "score"])
    assert result.exit_code == 2 and "nothing to re-rank" in result.output
