"""`rankalign reward train|score|eval` on a small gold-rule file (tiny model, no download)."""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from rankalign.reward_cli import reward  # noqa: E402

WORDS = ["good", "bad", "cat", "dog", "sun", "tree"]


def _write_pairs(path, n, seed):
    """Pairs whose chosen response has more "good" words than the rejected one (the gold rule)."""
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for _ in range(n):
            high, low = sorted(rng.sample(range(4), 2), reverse=True)
            responses = []
            for count in (high, low):
                words = ["good"] * count + [rng.choice(WORDS[1:]) for _ in range(4 - count)]
                rng.shuffle(words)
                responses.append(" ".join(words))
            if responses[0] == responses[1]:
                continue
            prompt = " ".join(rng.choice(WORDS[2:]) for _ in range(2))
            handle.write(json.dumps({"prompt": prompt, "chosen": responses[0], "rejected": responses[1]}) + "\n")


def test_train_then_score(tmp_path):
    train_file, test_file = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    _write_pairs(train_file, 120, seed=0)
    _write_pairs(test_file, 40, seed=1)
    runner = CliRunner()
    result = runner.invoke(reward, ["train", str(train_file), "--backbone", "tiny", "--output", str(tmp_path / "rm"),
                                    "--epochs", "3", "--lr", "3e-3", "--batch-size", "16", "--set", "progress=false"])
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "rm" / "train_history.json").read_text())
    assert history["train_records"] == 120 and len(history["steps"]) == 3 * 8
    out = tmp_path / "scores.jsonl"
    result = runner.invoke(reward, ["score", str(tmp_path / "rm" / "final"), str(test_file), "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 40 and all(len(r["scores"]) == 2 and r["ranks"] == [0, 1] for r in rows)
    accuracy = sum(r["scores"][0] > r["scores"][1] for r in rows) / len(rows)
    assert accuracy >= 0.85  # chosen has more "good" words; chance is 0.5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_model_path_is_a_clear_error(tmp_path):
    data = tmp_path / "d.jsonl"
    _write_pairs(data, 3, seed=0)
    result = CliRunner().invoke(reward, ["train", str(data), "--backbone", str(tmp_path / "nope"), "-o",
                                         str(tmp_path / "out")])
    assert result.exit_code != 0 and "backbone" in result.output and "Traceback" not in result.output


def test_train_from_local_causal_lm_directory_then_continue(tmp_path):
    from rankalign.engine import build_tokenizer, tiny_causal_lm

    tokenizer = build_tokenizer(WORDS, vocab_size=32, kind="word")
    lm = tiny_causal_lm(len(tokenizer), arch="gpt2", hidden_size=32, layers=1, heads=2)
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    data = tmp_path / "d.jsonl"
    _write_pairs(data, 8, seed=2)
    runner = CliRunner()
    result = runner.invoke(reward, ["train", str(data), "--backbone", str(tmp_path / "lm"), "-o", str(tmp_path / "rm")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "rm" / "final" / "reward_config.json").read_text())
    assert config["kind"] == "causal" and config["backbone_class"] == "GPT2Model"
    result = runner.invoke(reward, ["train", str(data), "--backbone", str(tmp_path / "rm" / "final"), "-o",
                                    str(tmp_path / "rm2")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rm2" / "final" / "model.safetensors").is_file()
