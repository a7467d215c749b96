"""The command-line conventions of docs/CLI.md, checked on the whole command tree, and the arena-style
leaderboard additions of `rate` (rank, rank upper bound, anchor, matrices)."""

from __future__ import annotations

import json

import click
import numpy as np
import pytest
from click.testing import CliRunner

from rankalign._cli import check_help_everywhere
from rankalign.cli import main
from rankalign.data.layouts import LAYOUTS
from rankalign.stats import RatingResult

REPORTING = ["data inspect", "data convert", "rate", "eval", "reward train", "reward score", "reward eval", "train",
             "demo", "models list", "annotators"]


def leaves():
    ctx = click.Context(main, info_name="rankalign")
    out = {}

    def visit(command, path, ctx):
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                visit(sub, f"{path} {name}".strip(), click.Context(sub, info_name=name, parent=ctx))
        else:
            out[path] = command

    visit(main, "", ctx)
    return out


def visible_options(command):
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden and p.name != "help"]


def test_every_visible_option_has_help():
    assert check_help_everywhere(main) == []


def test_layout_has_the_same_choices_everywhere():
    found = 0
    for path, command in leaves().items():
        for option in visible_options(command):
            if "--layout" in option.opts:
                found += 1
                assert isinstance(option.type, click.Choice), path
                assert tuple(option.type.choices) == tuple(LAYOUTS), path
    assert found >= 7


def test_every_float_option_refuses_nan_and_inf(tmp_path):
    # click's FloatRange lets nan through any bound; a NaN prior reached the fit as a FloatingPointError
    floats = [(path, option) for path, command in leaves().items() for option in command.params
              if isinstance(option.type, click.types.FloatParamType)]
    assert len(floats) >= 10
    for path, option in floats:
        if isinstance(option.type, click.types._NumberRangeBase):  # --help shows the range, never "x<=None"
            assert "None" not in option.type._describe_range(), (path, option.opts)
        with pytest.raises(click.BadParameter, match="not a finite number"):
            option.type.convert("nan", option, None)
        for bad in ("inf", "-inf"):  # out of a bounded range, or not finite
            with pytest.raises(click.BadParameter):
                option.type.convert(bad, option, None)
    data = tmp_path / "w.csv"
    data.write_text("winner,loser\na,b\nb,c\nc,a\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["rate", str(data), "--prior", "nan"])
    assert result.exit_code == 2 and "'nan' is not a finite number" in result.output


def test_one_output_convention_and_no_ambiguous_model_option():
    for path, command in leaves().items():
        names = {opt for option in visible_options(command) for opt in option.opts}
        assert "--out" not in names, f"{path}: the output option is -o/--output"
        assert "--max-length" not in names, f"{path}: truncation options end in -tokens"
        if "--output" in names:
            assert "-o" in names, path
        if "--model" in names:
            assert path in ("rate", "annotators"), f"{path}: --model is the statistical model of rate only"


@pytest.mark.parametrize("path", REPORTING)
def test_every_reporting_command_takes_json(path):
    names = {opt for option in visible_options(leaves()[path]) for opt in option.opts}
    assert "--json" in names


@pytest.mark.parametrize("path", ["data inspect", "data convert", "eval", "reward score", "reward eval"])
def test_data_reading_commands_share_the_data_options(path):
    names = {opt for option in visible_options(leaves()[path]) for opt in option.opts}
    assert {"--layout", "--map", "--outcomes", "--skip-invalid", "--max-records", "--rank-by"} <= names


def test_reward_train_takes_its_data_from_the_config_with_the_shared_shorthands():
    # config-driven like `train`: data options live in the config (data_options); the CLI keeps shorthands
    names = {opt for option in visible_options(leaves()["reward train"]) for opt in option.opts}
    assert {"--set", "--skip-invalid", "--max-records", "-o", "--output", "--json", "--backbone"} <= names


# ------------------------------------------------------------------------------------- rate leaderboard
def result_with_intervals():
    # hand-made intervals: a [2.0, 3.0], b [1.5, 2.5] (overlaps a), c [0.0, 1.0], d [-1.0, 1.2] (overlaps c)
    ratings = np.array([2.5, 2.0, 0.5, 0.1])
    return RatingResult(items=["a", "b", "c", "d"], ratings=ratings, se=np.full(4, 0.25),
                        ci_low=np.array([2.0, 1.5, 0.0, -1.0]), ci_high=np.array([3.0, 2.5, 1.0, 1.2]),
                        n=np.array([3, 3, 3, 3]), log_likelihood=-1.0, model="bradley-terry")


def test_rank_and_rank_upper_bound_by_hand():
    result = result_with_intervals()
    assert result.ranks().tolist() == [1, 2, 3, 4]
    # a: nobody's lower bound is above 3.0 -> 1; b: none above 2.5 -> 1; c: a and b lie above 1.0 -> 3;
    # d: a and b lie above 1.2 (c's 0.0 does not) -> 3
    assert result.rank_upper_bounds().tolist() == [1, 1, 3, 3]
    items = result.to_dict()["items"]
    assert [(e["item"], e["rank"], e["rank_ub"]) for e in items] == [("a", 1, 1), ("b", 2, 1), ("c", 3, 3),
                                                                       ("d", 4, 3)]


def test_anchor_shifts_ratings_and_keeps_differences():
    result = result_with_intervals().anchored("c", 1000.0)
    assert result.ratings.tolist() == pytest.approx([1002.0, 1001.5, 1000.0, 999.6])
    assert (result.ci_high - result.ci_low).tolist() == pytest.approx([1.0, 1.0, 1.0, 2.2])
    assert result.gauge() == "c = 1000" and result.to_dict()["anchor"] == {"item": "c", "rating": 1000.0}


def test_gauge_names_the_scale_actually_used():
    result = result_with_intervals()
    assert result.gauge() == "mean 0"
    assert result.to_scale("elo").gauge() == "mean 1000"


def test_to_dataframe_when_pandas_is_installed():
    pd = pytest.importorskip("pandas")
    frame = result_with_intervals().to_dataframe()
    assert isinstance(frame, pd.DataFrame)
    assert frame["item"].tolist() == ["a", "b", "c", "d"] and frame["rank_ub"].tolist() == [1, 1, 3, 3]


def test_rate_cli_anchor_matrices_and_labels(tmp_path):
    data = tmp_path / "games.csv"
    # a beats b 3 of 4, b beats c 2 of 3 (one tie counted 1/2 there), a beats c once
    data.write_text("item_a,item_b,outcome\na,b,1\na,b,1\na,b,1\nb,a,1\nb,c,1\nc,b,1\nb,c,0.5\na,c,1\nc,a,1\n")
    matrices = tmp_path / "m.json"
    result = CliRunner().invoke(main, ["rate", str(data), "--scale", "elo", "--anchor", "b=1200", "--json",
                                       "--matrices", str(matrices)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    ratings = {e["item"]: e["rating"] for e in payload["items"]}
    assert ratings["b"] == pytest.approx(1200.0) and payload["gauge"] == "b = 1200"
    assert f"wrote observed/predicted win rates and battle counts: {matrices}" in result.stderr
    m = json.loads(matrices.read_text())
    index = {item: i for i, item in enumerate(m["items"])}
    a, b, c = index["a"], index["b"], index["c"]
    assert m["battles"][a][b] == 4 and m["battles"][b][c] == 3 and m["battles"][a][c] == 2
    assert m["observed_win_rate"][a][b] == pytest.approx(0.75)
    assert m["observed_win_rate"][b][c] == pytest.approx(1.5 / 3)
    assert m["observed_win_rate"][a][a] is None
    # predicted: the fitted BT probability, sigma(theta_a - theta_b) on the logit scale
    theta = {k: (v - 1200.0) * np.log(10) / 400 for k, v in ratings.items()}
    assert m["predicted_win_rate"][a][b] == pytest.approx(1 / (1 + np.exp(theta["b"] - theta["a"])), rel=1e-9)
    table = CliRunner().invoke(main, ["rate", str(data), "--scale", "elo"])
    assert "elo scale, mean 1000" in table.output and "95% Wald CI" in table.output and "rank (UB)" in table.output


def test_rate_reference_item_and_its_old_spelling(tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("winner,loser\na,b\na,b\nb,a\nb,c\nc,b\na,c\nc,a\n")
    new = CliRunner().invoke(main, ["rate", str(data), "--reference-item", "b", "--json"])
    old = CliRunner().invoke(main, ["rate", str(data), "--reference", "b", "--json"])
    assert json.loads(new.stdout)["items"] == json.loads(old.stdout)["items"]
    assert "--reference is deprecated, use --reference-item" in old.stderr
    both = CliRunner().invoke(main, ["rate", str(data), "--reference", "b", "--reference-item", "a"])
    assert both.exit_code == 2


def test_rank_by_an_attribute_or_the_overall_score(tmp_path):
    # UltraFeedback-style: helpfulness ranks x over y, the overall score ranks y over x
    row = {"instruction": "q", "completions": [
        {"response": "x", "annotations": {"helpfulness": {"Rating": "5"}, "honesty": {"Rating": "1"}},
         "overall_score": 2.0},
        {"response": "y", "annotations": {"helpfulness": {"Rating": "3"}, "honesty": {"Rating": "5"}},
         "overall_score": 9.0}]}
    path = tmp_path / "uf.jsonl"
    path.write_text(json.dumps(row) + "\n")
    out = tmp_path / "pairs.jsonl"
    for key, chosen in (("helpfulness", "x"), ("overall_score", "y"), ("mean", "y")):
        result = CliRunner().invoke(main, ["data", "convert", str(path), "-o", str(out), "--to", "trl",
                                           "--rank-by", key])
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["chosen"] == chosen, key


def test_no_command_writes_over_its_input_file(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"}) + "\n"
                            for i in range(3)), encoding="utf-8")
    comparisons = tmp_path / "w.csv"
    comparisons.write_text("winner,loser\na,b\nb,c\nc,a\n", encoding="utf-8")
    before = {path: path.read_bytes() for path in (data, comparisons)}
    calls = [
        ["data", "convert", str(data), "-o", str(data), "--to", "lists"],
        ["rate", str(comparisons), "--csv", str(comparisons)],
        ["annotators", str(comparisons), "--csv", str(comparisons)],
        ["eval", "--policy", "tiny:llama", "--data", str(data), "-o", str(data)],
        ["reward", "score", str(tmp_path), str(data), "-o", str(data)],
    ]
    for args in calls:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert "is the input file" in result.output, (args, result.output)
    assert {path: path.read_bytes() for path in before} == before
    # another path is fine
    assert CliRunner().invoke(main, ["data", "convert", str(data), "-o", str(tmp_path / "lists.jsonl"),
                                     "--to", "lists"]).exit_code == 0


def test_no_command_writes_over_a_file_of_its_model_or_run_folder(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n", encoding="utf-8")
    run, model = tmp_path / "run", tmp_path / "run" / "final"
    model.mkdir(parents=True)
    protected = {run / "run_source.json": b'{"policy": "final"}\n', model / "model.safetensors": b"weights",
                 model / "config.json": b"{}\n"}
    for path, content in protected.items():
        path.write_bytes(content)
    calls = [
        ["eval", "--run", str(run), "--data", str(data), "-o", str(run / "run_source.json")],
        ["eval", "--run", str(run), "--data", str(data), "--plot", str(model / "model.safetensors")],
        ["eval", "--policy", str(model), "--data", str(data), "-o", str(model / "model.safetensors")],
        ["reward", "score", str(model), str(data), "-o", str(model / "config.json")],
        ["reward", "eval", str(model), str(data), "--plot", str(model / "model.safetensors")],
    ]
    for args in calls:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert "is a file of the input" in result.output, (args, result.output)
    assert {path: path.read_bytes() for path in protected} == protected


def test_config_errors_keep_their_hint_in_both_trainers(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: x.jsonl\ndata_options: {skip_invlid: true}\n", encoding="utf-8")
    for command in (["train", str(config), "--print-config"], ["reward", "train", str(config), "--print-config"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, (command, result.output)
        assert "(hint: did you mean 'skip_invalid'?)" in result.output, (command, result.output)


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"model": "tiny:llama", "tokenizer": "final", "reference": {"kind": "initial_model", "spec": "tiny:llama"}, '
     '"seed": 0}', "field 'policy'"),
    ('{"model": "tiny:llama", "tokenizer": "final", "policy": {"folder": "final", "adapter": false}, '
     '"reference": {"kind": "initial_model", "spec": "tiny:llama"}, "seed": 0, "beta": "abc"}', "field 'beta'"),
])
def test_a_damaged_run_source_is_named(tmp_path, content, expected):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n", encoding="utf-8")
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "run_source.json").write_text(content)
    result = CliRunner().invoke(main, ["eval", "--run", str(tmp_path / "run"), "--data", str(data)])
    assert result.exit_code != 0
    assert "run_source.json: " in result.output and expected in result.output, result.output
    assert "unexpected" not in result.output
