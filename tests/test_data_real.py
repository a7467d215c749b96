"""The readers on the real files in shared/data (skipped where that folder is absent)."""

import csv
import importlib.util
import json
from pathlib import Path

from click.testing import CliRunner

from rankalign.cli import main
from rankalign.data import RankedList, read, split_transcripts, write
from shared_data import needs_shared_data, shared_path  # noqa: E402

SHARED = shared_path("")
HH = SHARED / "hh-rlhf-harmless" / "pairs.jsonl"
FOOTBALL = SHARED / "football-epl" / "matches.csv"
NETFLIX = SHARED / "preflib-netflix" / "netflix.soc"
BEANS = SHARED / "beans-triads" / "beans.csv"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "beans_triads.py"

pytestmark = needs_shared_data
MARK = "\n\nAssistant:"


def hh_row(line):
    with open(HH, encoding="utf-8") as handle:
        for number, text in enumerate(handle, 1):
            if number == line:
                return json.loads(text)


def test_hh_rlhf_implicit_prompt_on_real_rows():
    # line 2: two turns each; they share everything up to the second "\n\nAssistant:" marker
    row = hh_row(2)
    prompt, chosen, rejected, early = split_transcripts(row["chosen"], row["rejected"])
    assert prompt.startswith("\n\nHuman: what are some pranks i can play on a nerd at school?\n\nAssistant:")
    assert prompt.endswith("\n\nHuman: i guess a specific one\n\nAssistant:")
    assert prompt.count(MARK) == 2
    assert chosen.startswith(" I’d recommend you pick a person who seems gullible")
    assert chosen.endswith("like their wallet or their phone.")
    assert rejected.startswith(" OK, let’s see. I don’t think I can do this for you exactly")
    assert prompt + chosen == row["chosen"] and prompt + rejected == row["rejected"]
    assert early is False
    # line 1269: chosen has one Assistant turn, rejected goes on for another exchange -> they differ before
    # rejected's last turn; the split is at the only shared Assistant turn
    row = hh_row(1269)
    prompt, chosen, rejected, early = split_transcripts(row["chosen"], row["rejected"])
    assert prompt == ("\n\nHuman: I want to snatch purses, but I don't want to get caught. I wish I knew how to make "
                      "it work.\n\nAssistant:")
    assert chosen.startswith(" Hey human, if you want to be a criminal")
    assert rejected.startswith(" Snatching purses is a very serious crime") and rejected.count(MARK) == 1
    assert early is True


def test_hh_rlhf_whole_file():
    result = read(HH)  # line 69's chosen transcript ends with an empty Assistant turn: read, not refused
    rows = [json.loads(line) for line in open(HH, encoding="utf-8")]
    # independent count: an empty final chosen/rejected turn, and pairs whose text before the last
    # Assistant turn differs (an early divergence)
    empty = sum(1 for r in rows if not r["chosen"][r["chosen"].rfind(MARK) + len(MARK):].strip()
                or not r["rejected"][r["rejected"].rfind(MARK) + len(MARK):].strip())
    early = sum(1 for r in rows
                if r["chosen"][:r["chosen"].rfind(MARK)] != r["rejected"][:r["rejected"].rfind(MARK)])
    assert len(rows) == 1500 and empty == 2
    assert len(result) == 1500 and not result.report.skipped
    assert sum(not c.strip() for r in result for c in r.candidates) == empty
    assert not result.records[68].candidates[0].strip()
    assert result.report.notes["implicit_prompt_early_divergence"] == early
    assert all(r.prompt.endswith(MARK) for r in result)
    assert all(r.prompt + r.candidates[0] == row["chosen"] for r, row in zip(result, rows))


def test_football_records_through_the_mapping():
    result = read(FOOTBALL, mapping={"item_a": "home", "item_b": "away", "outcome": "result"},
                  outcomes={"1": "a", "0": "tie", "-1": "b"})
    ranks = [r.ranks for r in result]
    assert len(ranks) == 1900
    assert (ranks.count((0, 1)), ranks.count((0, 0)), ranks.count((1, 0))) == (882, 505, 513)
    assert result[0].candidates == ("Hul", "Sto")  # home team first


def test_preflib_netflix():
    result = read(NETFLIX)
    assert result.layout == "preflib" and len(result) == 24
    assert sum(r.weight for r in result) == 588
    # first order line "68: 2,1,4,3" with 1 Mean Girls, 2 Beverly Hills Cop, 3 The Mummy Returns,
    # 4 Mission: Impossible II
    assert result[0] == RankedList(candidates=["Beverly Hills Cop", "Mean Girls", "Mission: Impossible II",
                                               "The Mummy Returns"], ranks=[0, 1, 2, 3], weight=68)
    assert len({r.candidates for r in result}) == 24  # 24 unique orders


def load_example():
    spec = importlib.util.spec_from_file_location("beans_triads", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_beans_triads_example(tmp_path):
    module = load_example()
    out = tmp_path / "beans.jsonl"
    module.main(["--input", str(BEANS), "--out", str(out)])
    with open(BEANS, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    varieties = {r[c] for r in rows for c in ("variety_a", "variety_b", "variety_c")}
    better = sum(r[c] == "Better" for r in rows for c in ("var_a", "var_b", "var_c"))
    records = read(out).records
    triads = [r for r in records if r.k == 3]
    local = [r for r in records if r.k == 2]
    assert (len(triads), len(local)) == (842, 3 * 842)
    # first row: A=BRT 103-182, B=SJC 730-79, C=PM2 Don Rey; best C, worst A; Worse, Worse, Better
    assert triads[0].candidates == ("PM2 Don Rey", "SJC 730-79", "BRT 103-182")
    assert triads[0].ranks == (0, 1, 2)
    assert [(r.candidates, r.ranks) for r in local[:3]] == [
        (("BRT 103-182", "Local"), (1, 0)), (("SJC 730-79", "Local"), (1, 0)), (("PM2 Don Rey", "Local"), (0, 1))]
    assert sum(r.ranks == (0, 1) for r in local) == better
    assert records == module.beans_records(BEANS)
    summary = json.loads(CliRunner().invoke(main, ["data", "inspect", str(out), "--json"]).output)
    assert summary["records"] == 4 * 842 and summary["items"] == len(varieties) + 1
    assert summary["list_sizes"] == {"2": 2526, "3": 842}
    again = tmp_path / "again.csv"
    write(records, again)
    assert read(again).records == records
