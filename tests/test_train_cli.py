"""`rankalign train CONFIG.yaml --set ...`: a smoke run with a tiny config, and config errors as usage errors."""

from __future__ import annotations

import json
import os

import yaml
from click.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankalign.cli import main  # noqa: E402
from rankalign.data.records import RankedList  # noqa: E402

WORDS = "red green blue small large quick slow bright dark warm cold soft".split()


def write_lists(path, n=6, k=3):
    with open(path, "w") as stream:
        for i in range(n):
            prompt = f"describe item {i} " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(4))
            candidates = [" ".join(WORDS[(i * 3 + j + c) % len(WORDS)] for j in range(3)) + f" {c}" for c in range(k)]
            stream.write(json.dumps(RankedList(prompt=prompt, candidates=candidates, ranks=list(range(k))).to_dict())
                         + "\n")


def test_cli_smoke_run_writes_model_config_and_metrics(tmp_path):
    data = tmp_path / "lists.jsonl"
    write_lists(data)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model": "tiny:llama", "tiny_model": {"hidden_size": 32, "layers": 1, "heads": 2},
        "tokenizer": "train", "tokenizer_vocab_size": 300, "data": "lists.jsonl", "objective": "pl_dpo",
        "loss_params": {"beta": 0.2}, "batch_size": 2, "max_steps": 5, "output_dir": str(tmp_path / "out"),
        "report_to": [], "progress": False, "save_steps": 2,
    }))
    result = CliRunner().invoke(main, ["train", str(config), "--set", "max_steps=2", "--set", "lr=0.01"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "trained 2 steps" in result.output
    out = tmp_path / "out"
    saved = yaml.safe_load((out / "train_config.yaml").read_text())
    assert saved["max_steps"] == 2 and saved["lr"] == 0.01 and saved["objective"] == "pl_dpo"
    assert (out / "final" / "model.safetensors").exists()
    assert (out / "final" / "tokenizer.json").exists()
    assert (out / "checkpoint-2" / "model.safetensors").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2]

    # the same output_dir with another objective would resume someone else's checkpoint: refused
    again = CliRunner().invoke(main, ["train", str(config), "--set", "lr=0.01", "--set", "objective=dpo"])
    assert again.exit_code == 2 and "belongs to a different run (config: objective changed)" in again.output


def test_cli_reports_unknown_key_with_suggestion(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("objectiv: dpo\n")
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 2
    assert "did you mean 'objective'" in result.output


def test_cli_print_config_applies_overrides(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("objective: dpo\n")
    result = CliRunner().invoke(main, ["train", str(config), "--print-config", "--set", "peft.enabled=true",
                                       "--set", "batch_size=16"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["peft"]["enabled"] is True and printed["batch_size"] == 16
