"""`rankalign rate`: JSON/CSV/PNG outputs on small files and the shared real data, and bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from rankalign.cli import main
from shared_data import needs_shared_data, shared_path  # noqa: E402

FOOTBALL = shared_path("football-epl/matches.csv")
NETFLIX = shared_path("preflib-netflix/netflix.soc")


def run(*args):
    result = CliRunner().invoke(main, ["rate", *(str(a) for a in args)], catch_exceptions=False)
    return result


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_winner_loser_json_closed_form(tmp_path):
    # a beats b 3 times, b beats a once: theta_a - theta_b = log 3; mean-zero gauge
    data = write(tmp_path / "pairs.csv", "winner,loser\na,b\na,b\na,b\nb,a\n")
    result = run(data, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["model"] == "bradley-terry" and payload["scale"] == "logit"
    ratings = {entry["item"]: entry["rating"] for entry in payload["items"]}
    assert ratings["a"] == pytest.approx(math.log(3) / 2, abs=1e-8)
    assert ratings["b"] == pytest.approx(-math.log(3) / 2, abs=1e-8)
    assert payload["log_likelihood"] == pytest.approx(3 * math.log(0.75) + math.log(0.25), rel=1e-9)
    assert [entry["n"] for entry in payload["items"]] == [4, 4]


def test_reference_elo_scale_csv_and_plot(tmp_path):
    data = write(tmp_path / "pairs.csv", "winner,loser\na,b\na,b\na,b\nb,a\nb,c\nc,b\na,c\n")
    out_csv, out_png = tmp_path / "board.csv", tmp_path / "board.png"
    result = run(data, "--reference", "b", "--scale", "elo", "--csv", out_csv, "--plot", out_png, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    ratings = {entry["item"]: entry["rating"] for entry in payload["items"]}
    assert ratings["b"] == pytest.approx(1000.0)
    rows = list(csv.DictReader(out_csv.open()))
    assert [row["item"] for row in rows] == [entry["item"] for entry in payload["items"]]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_table_output_and_bootstrap(tmp_path):
    data = write(tmp_path / "pairs.csv", "winner,loser\na,b\na,b\nb,a\nb,c\nc,b\na,c\nc,a\n")
    result = run(data, "--bootstrap", "30", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "bradley-terry ratings" in result.output and "95% bootstrap CI" in result.output


@needs_shared_data
def test_football_davidson_home_advantage(tmp_path):
    result = run(FOOTBALL, "--model", "davidson", "--home-advantage", "--map",
                 "item_a=home,item_b=away,outcome=result", "--outcomes", "1=a,0=tie,-1=b", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    # 882 home wins vs 513 away wins: a clear home advantage; 505 draws of 1900 need nu near 0.9
    assert 0.4 < payload["home"] < 0.9 and 0.7 < payload["nu"] < 1.1
    assert len(payload["items"]) == 29
    assert sum(entry["rating"] for entry in payload["items"]) == pytest.approx(0.0, abs=1e-9)


@needs_shared_data
def test_netflix_pl_cli_matches_plackettluce(tmp_path):
    # PlackettLuce README: coef 0.67080 (Beverly Hills Cop) with Mean Girls at 0, npseudo = 0.5
    result = run(NETFLIX, "--model", "pl", "--npseudo", "0.5", "--reference", "Mean Girls", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    ratings = {entry["item"]: entry["rating"] for entry in payload["items"]}
    assert ratings["Beverly Hills Cop"] == pytest.approx(0.67080, abs=5e-6)
    assert ratings["Mission: Impossible II"] == pytest.approx(-0.43128, abs=5e-6)


@pytest.mark.parametrize("text, expected", [
    ("winner,loser\n", "no data rows"),
    ("winner,loser\na,b\nc,c\n", ":3:"),
    ("winner,loser\na,b\na,b\n", "never"),
])
def test_bad_input_is_a_clear_error(tmp_path, text, expected):
    data = write(tmp_path / "bad.csv", text)
    result = CliRunner().invoke(main, ["rate", str(data)])
    assert result.exit_code != 0
    assert expected in result.output


def test_single_item_and_unknown_outcome(tmp_path):
    data = write(tmp_path / "outcome.csv", "item_a,item_b,outcome\na,b,a\na,b,maybe\n")
    result = CliRunner().invoke(main, ["rate", str(data)])
    assert result.exit_code != 0 and ":3:" in result.output and "outcome" in result.output
    tie = write(tmp_path / "tie.jsonl", '{"candidates": ["a", "b"], "ranks": [0, 0]}\n')
    result = CliRunner().invoke(main, ["rate", str(tie), "--model", "pl"])
    assert result.exit_code != 0 and "tie.jsonl:1:" in result.output and "davidson" in result.output
    single = write(tmp_path / "single.jsonl", '{"candidates": ["a"], "ranks": [0]}\n')
    result = CliRunner().invoke(main, ["rate", str(single), "--model", "pl"])
    assert result.exit_code != 0 and "at least two items" in result.output


def test_rankings_with_repeated_item_name_the_line(tmp_path):
    data = write(tmp_path / "lists.jsonl", '{"candidates": ["a", "b", "c"], "ranks": [0, 1, 2]}\n'
                                           '{"candidates": ["a", "b", "a"], "ranks": [0, 1, 2]}\n')
    result = CliRunner().invoke(main, ["rate", str(data), "--model", "pl"])
    assert result.exit_code != 0 and ":2:" in result.output


def test_pl_ties_davidson_luce_option(tmp_path):
    data = write(tmp_path / "lists.jsonl", '{"candidates": ["a", "b", "c"], "ranks": [0, 0, 1]}\n'
                                           '{"candidates": ["a", "b", "c"], "ranks": [1, 0, 2]}\n'
                                           '{"candidates": ["c", "a", "b"], "ranks": [0, 1, 2]}\n'
                                           '{"candidates": ["b", "c", "a"], "ranks": [0, 1, 1]}\n')
    refused = CliRunner().invoke(main, ["rate", str(data), "--model", "pl"])
    assert refused.exit_code != 0 and "lists.jsonl:1:" in refused.output and "davidson-luce" in refused.output
    result = run(data, "--model", "pl", "--ties", "davidson-luce", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["model"] == "davidson-luce" and payload["max_tie"] == 2 and "tie2" in payload


def test_covariate_column_contextual_bt(tmp_path):
    # with a covariate column, the fit equals the API's contextual Bradley-Terry on the same rows
    import numpy as np

    from rankalign.stats import fit_bradley_terry

    rng = np.random.default_rng(0)
    rows = ["model_a,model_b,winner,length_diff"]
    first, second, outcome, x = [], [], [], []
    for _ in range(300):
        a, b = rng.choice(3, 2, replace=False)
        diff = float(np.round(rng.normal(), 3))
        win = rng.random() < 1 / (1 + np.exp(-(0.5 * (a - b) + 0.8 * diff)))
        rows.append(f"m{a},m{b},{'model_a' if win else 'model_b'},{diff}")
        first.append(a)
        second.append(b)
        outcome.append(1.0 if win else 0.0)
        x.append(diff)
    data = write(tmp_path / "battles.csv", "\n".join(rows) + "\n")
    result = run(data, "--covariate", "length_diff", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    expected = fit_bradley_terry(first, second, outcome, features=np.array(x)[:, None], items=["m0", "m1", "m2"])
    assert payload["weights"][0] == pytest.approx(expected.params["weights"][0], abs=1e-8)
    ratings = {entry["item"]: entry["rating"] for entry in payload["items"]}
    assert ratings["m2"] == pytest.approx(expected.ratings[2], abs=1e-8)


def test_thurstone_ratings_stay_on_the_probit_scale(tmp_path):
    # a beats b 3 times in 4: Phi(theta_a - theta_b) = 3/4, so the difference is the normal quantile of 0.75
    # (0.6745); mean-zero gauge, so a = +0.3372 and b = -0.3372
    data = write(tmp_path / "pairs.csv", "winner,loser\na,b\na,b\na,b\nb,a\n")
    result = run(data, "--model", "thurstone", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["scale"] == "probit"
    ratings = {entry["item"]: entry["rating"] for entry in payload["items"]}
    assert ratings["a"] == pytest.approx(0.6744898 / 2, abs=1e-6)
    assert ratings["b"] == pytest.approx(-0.6744898 / 2, abs=1e-6)
    refused = run(data, "--model", "thurstone", "--scale", "elo")
    assert refused.exit_code == 2 and "probit" in refused.output


def test_covariate_is_refused_under_plackett_luce(tmp_path):
    data = write(tmp_path / "battles.csv", "model_a,model_b,winner,len\nx,y,model_a,1\ny,x,model_a,2\n")
    result = run(data, "--model", "pl", "--covariate", "len")
    assert result.exit_code == 2 and "--covariate applies to the pairwise models" in result.output


@pytest.mark.parametrize("text, layout, missing, fits", [
    ("winner,loser\na,b\nb,c\n", "arena", "model_a", "winner_loser"),
    ("item_a,item_b,outcome\na,b,win\n", "winner_loser", "loser", "item_outcome"),
])
def test_a_layout_the_file_does_not_have_names_the_missing_column(tmp_path, text, layout, missing, fits):
    from rankalign.data import DataError, read_comparisons

    data = write(tmp_path / "c.csv", text)
    result = run(data, "--layout", layout)
    assert result.exit_code != 0
    assert f"c.csv:2: field '{missing}': no column '{missing}'" in result.output and fits in result.output
    assert "unexpected" not in result.output
    with pytest.raises(DataError, match=f"no column '{missing}'"):
        read_comparisons(data, layout=layout)


ANNOTATED = ('{"candidates": ["a", "b"], "ranks": [0, 1], "annotator": "x"}\n'
             '{"candidates": ["b", "c"], "ranks": [0, 1], "annotator": "x"}\n'
             '{"candidates": ["a", "c"], "ranks": [1, 0], "annotator": "x"}\n')


@pytest.mark.parametrize("command, options, expected", [
    ("rate", ["--seed", "-1", "--bootstrap", "5"], "--seed"),
    ("rate", ["--jobs", "0"], "--jobs"),
    ("rate", ["--jobs", "-5"], "--jobs"),
    ("rate", ["--by-annotator", "--groups", "5"], "5 groups for the 1 annotator"),
    ("rate", ["--csv", "{tmp}/same.csv", "--plot", "{tmp}/same.csv"], "two outputs name the same file"),
    ("rate", ["--csv", ""], "an output path is empty"),
    ("annotators", ["--flip-prior", "-1,4"], "--flip-prior"),
    ("annotators", ["--flip-prior", "nan,1"], "--flip-prior"),
    ("annotators", ["--flip-prior", "1e308,1e308"], "--flip-prior"),
    ("annotators", ["--prior", "1e9"], "--prior"),
])
def test_bad_options_are_usage_errors(tmp_path, command, options, expected):
    data = write(tmp_path / "annotated.jsonl", ANNOTATED)
    options = [o.replace("{tmp}", str(tmp_path)) for o in options]
    result = CliRunner().invoke(main, [command, str(data), *options], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert expected in result.output and "unexpected" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.jsonl"]


def test_annotators_json_is_strict_json(tmp_path):
    # one annotator who judged every pair: the flip rate's standard error is not determined (NaN), and
    # strict JSON has no NaN, so it is written as null
    data = write(tmp_path / "annotated.jsonl", ANNOTATED)
    result = CliRunner().invoke(main, ["annotators", str(data), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    payload = json.loads(result.stdout, parse_constant=refuse)
    assert payload["n_annotators"] == 1


def test_a_covariate_that_is_not_a_number_names_its_line(tmp_path):
    data = write(tmp_path / "cov.csv", "winner,loser,len\na,b,1\nb,a,x\na,b,3\n")
    result = run(data, "--covariate", "len")
    assert result.exit_code != 0
    assert "cov.csv:3: field 'len': covariate column 'len' must be numeric, got 'x'" in result.output


def test_annotators_skip_invalid_skips_a_record_without_an_annotator(tmp_path):
    data = write(tmp_path / "anon.jsonl", ANNOTATED.replace(', "annotator": "x"}\n', '}\n', 1)
                 + '{"candidates": ["a", "b"], "ranks": [1, 0], "annotator": "y"}\n')
    strict = CliRunner().invoke(main, ["annotators", str(data)])
    assert strict.exit_code == 1 and "anon.jsonl:1: field 'annotator'" in strict.output
    result = CliRunner().invoke(main, ["annotators", str(data), "--skip-invalid", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["n_judgments"] == 3 and payload["n_annotators"] == 2
    table = CliRunner().invoke(main, ["annotators", str(data), "--skip-invalid"])
    assert table.exit_code == 0 and "missing_annotator" in table.stderr


def test_an_anchor_too_large_for_float_precision_is_refused(tmp_path):
    data = write(tmp_path / "pairs.csv", "winner,loser\na,b\na,b\nb,a\n")
    result = run(data, "--anchor", "a=1e308")
    assert result.exit_code == 2 and "--anchor" in result.output
    fine = run(data, "--anchor", "a=1500", "--scale", "elo", "--json")
    ratings = {e["item"]: e["rating"] for e in json.loads(fine.stdout)["items"]}
    assert ratings["a"] == pytest.approx(1500.0)
    assert ratings["a"] - ratings["b"] == pytest.approx(400 / math.log(10) * math.log(2), rel=1e-6)


def test_out_of_memory_hints_only_at_options_the_command_has(tmp_path, monkeypatch):
    import rankalign.stats.cli as stats_cli

    def exhausted(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(stats_cli, "fit_file", exhausted)
    data = write(tmp_path / "pairs.csv", "winner,loser\na,b\nb,a\n")
    result = run(data)
    assert result.exit_code == 1 and "out of memory" in result.output
    assert "--bootstrap" in result.output and "--max-records" not in result.output
