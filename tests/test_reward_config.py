"""`rankalign reward train CONFIG.yaml`: the train config machinery, resume, split by prompt, multi-attribute."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from rankalign.data.records import RankedList  # noqa: E402
from rankalign.reward_cli import reward  # noqa: E402
from rankalign.train.config import ConfigError, load_config  # noqa: E402
from rankalign.train.reward import RewardTrainConfig, run_reward_config, split_by_prompt  # noqa: E402
from shared_data import needs_shared_data, shared_path  # noqa: E402

HH = shared_path("hh-rlhf-harmless/pairs.jsonl")

WORDS = ["good", "bad", "cat", "dog", "sun", "tree"]


def _write_pairs(path, n):
    rows = []
    for i in range(n):
        good = 1 + i % 3
        rows.append({"prompt": f"{WORDS[2 + i % 4]} {WORDS[2 + (i // 4) % 4]} {i}",
                     "chosen": " ".join(["good"] * good + ["cat"] * (4 - good)), "rejected": "bad " * 3 + "dog"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _config(tmp_path, **overrides):
    (tmp_path / "rm.yaml").write_text(
        "backbone: tiny\ntiny_model: {hidden_size: 32, layers: 1, heads: 2}\ndata: pairs.jsonl\n"
        "eval_fraction: 0.25\nepochs: 2\nbatch_size: 8\nlr: 3.0e-3\nprogress: false\noutput_dir: out\n")
    return load_config(tmp_path / "rm.yaml", [f"{k}={v}" for k, v in overrides.items()], cls=RewardTrainConfig)


def test_config_uses_the_train_machinery(tmp_path):
    _write_pairs(tmp_path / "pairs.jsonl", 8)
    config = _config(tmp_path, output_dir=str(tmp_path / "elsewhere"), lr="1e-3")
    assert config.output_dir == str(tmp_path / "elsewhere") and config.lr == 1e-3
    assert config.data == str(tmp_path / "pairs.jsonl")  # relative to the config file
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        _config(tmp_path, learning_rate="1e-3")
    with pytest.raises(ConfigError, match="reward models take"):
        _config(tmp_path, objective="dpo")
    with pytest.raises(ConfigError, match="eval_fraction"):
        _config(tmp_path, eval_fraction="1.5")
    with pytest.raises(ConfigError, match="general_preference"):
        _config(tmp_path, preference_dim="4")


def test_split_by_prompt_keeps_a_prompt_on_one_side():
    records = [RankedList(prompt=f"p{i % 10}", candidates=["a", f"b{i}"], ranks=[0, 1]) for i in range(100)]
    train, held_out = split_by_prompt(records, 0.3, seed=1)
    assert len(train) + len(held_out) == 100 and held_out
    assert not {r.prompt for r in train} & {r.prompt for r in held_out}


def test_resume_continues_the_same_run(tmp_path):
    """Stopping after epoch 1 and resuming for epoch 2 gives the weights of one uninterrupted 2-epoch run."""
    _write_pairs(tmp_path / "pairs.jsonl", 40)
    from rankalign.eval.reward import evaluate_reward_model

    straight = run_reward_config(_config(tmp_path, output_dir=str(tmp_path / "a")), evaluate=evaluate_reward_model)
    first = run_reward_config(_config(tmp_path, output_dir=str(tmp_path / "b"), epochs=1))
    assert first.resumed_from is None
    resumed = run_reward_config(_config(tmp_path, output_dir=str(tmp_path / "b")), evaluate=evaluate_reward_model)
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("checkpoint-4")
    assert [h["step"] for h in resumed.history] == list(range(1, 9))
    torch.testing.assert_close(resumed.model.head.weight, straight.model.head.weight, atol=1e-6, rtol=1e-5)
    assert resumed.eval_metrics["n"] == straight.eval_metrics["n"] > 0
    from rankalign.train.checkpoints import ResumeError

    with pytest.raises(ResumeError, match="different run"):
        run_reward_config(_config(tmp_path, output_dir=str(tmp_path / "b"), lr="1e-2"))


def test_cli_config_form_with_set_and_json(tmp_path):
    _write_pairs(tmp_path / "pairs.jsonl", 24)
    _config(tmp_path)
    result = CliRunner().invoke(reward, ["train", str(tmp_path / "rm.yaml"), "--set", f"output_dir={tmp_path / 'o'}",
                                         "--set", "epochs=1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == f"{tmp_path / 'o'}/final" and summary["train_records"] + summary["eval_records"] == 24
    assert summary["ci_low"] <= summary["accuracy"] <= summary["ci_high"]
    saved = (tmp_path / "o" / "train_config.yaml").read_text()
    assert "epochs: 1" in saved
    from rankalign.data import read

    train = read(str(tmp_path / "o" / "split" / "train.jsonl")).records
    held_out = read(str(tmp_path / "o" / "split" / "heldout.jsonl")).records
    assert (len(train), len(held_out)) == (summary["train_records"], summary["eval_records"])
    assert not {r.prompt for r in train} & {r.prompt for r in held_out}
    # `reward eval` on the written split, with the trained max_length by default, repeats the run's figure
    result = CliRunner().invoke(reward, ["eval", summary["model"], str(tmp_path / "o" / "split" / "heldout.jsonl"),
                                         "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["max_tokens"] == 256 and (again["accuracy"], again["n"]) == (summary["accuracy"], summary["n"])


def test_multi_attribute_rating_regression_names_heads_after_the_data(tmp_path):
    from transformers import AutoModelForSequenceClassification

    names = ["helpfulness", "honesty", "harmlessness", "verbosity"]
    rows = []
    for i in range(24):
        a, b = f"good cat {i % 5}", f"bad dog {i % 7}"
        rows.append({"prompt": f"tree {i}", "candidates": [a, b], "ranks": [0, 1],
                     "scores": [{n: 3.0 + (j % 2) for j, n in enumerate(names)}, {n: 1.0 for n in names}]})
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = run_reward_config(_config(tmp_path, num_attributes=4, objective="rating_regression",
                                       output_dir=str(tmp_path / "ma"), eval_fraction=0, epochs=25, lr="1e-2"))
    assert result.model.attribute_names == names
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ma" / "final")
    assert list(classifier.config.id2label.values()) == names
    out = tmp_path / "scores.jsonl"
    score = CliRunner().invoke(reward, ["score", str(tmp_path / "ma" / "final"), str(tmp_path / "pairs.jsonl"),
                                        "-o", str(out)])
    assert score.exit_code == 0, score.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert set(rows[0]["attributes"][0]) == set(names)
    for name, chosen_target in zip(names, (3.0, 4.0, 3.0, 4.0)):  # rejected: 1.0 everywhere
        chosen = sum(r["attributes"][0][name] for r in rows) / len(rows)
        rejected = sum(r["attributes"][1][name] for r in rows) / len(rows)
        assert abs(chosen - chosen_target) < 0.5 and abs(rejected - 1.0) < 0.5, (name, chosen, rejected)


@needs_shared_data
def test_hh_example_config_reads_the_shared_file_and_counts_the_empty_responses():
    from pathlib import Path

    from rankalign.train.reward import _read

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "examples" / "reward_hh_minilm.yaml", [f"data={HH}"], cls=RewardTrainConfig)
    assert config.backbone == "minilm" and config.eval_fraction > 0
    records, report = _read(config.data, config.data_options)
    assert len(records) + sum(report.skipped.values()) == 1500
    assert report.skipped.get("empty_response", 0) <= 2  # 2 rows with an empty chosen response, if not read as data
    train, held_out = split_by_prompt(records, config.eval_fraction, config.split_seed)
    assert 0.2 < len(held_out) / len(records) < 0.3
    smol = load_config(root / "examples" / "reward_hh_smollm2.yaml", [f"data={HH}"], cls=RewardTrainConfig)
    assert smol.peft.enabled and smol.layout == "shared"


def test_eval_and_history_files_are_strict_json(tmp_path):
    """``reward train`` wrote ``eval.json`` with ``NaN`` for every empty reliability bin, which is not JSON
    (``json.loads`` with a strict parser refuses it); it is ``null`` now, as ``reward eval --json`` writes."""
    _write_pairs(tmp_path / "pairs.jsonl", 40)
    from rankalign.eval.reward import evaluate_reward_model

    run_reward_config(_config(tmp_path, output_dir=str(tmp_path / "a"), epochs=1), evaluate=evaluate_reward_model)

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    for name in ("eval.json", "train_history.json"):
        json.loads((tmp_path / "a" / name).read_text(), parse_constant=refuse)
