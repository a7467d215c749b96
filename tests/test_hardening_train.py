"""Issue 10, training: a checkpoint proves which run it belongs to; resume never mixes runs; a finished
run is not trained past max_steps; damaged checkpoints are skipped with a warning naming the file; the
config is validated (objective, loss_params ranges) before any data or model is read; train errors are
one line."""

from __future__ import annotations

import json
import os
import struct
import zipfile

import pytest
import yaml
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankalign.cli import main  # noqa: E402
from rankalign.data.records import RankedList  # noqa: E402
from rankalign.engine import TokenizedList, tiny_causal_lm  # noqa: E402
from rankalign.errors import RankalignWarning  # noqa: E402
from rankalign.train import TrainConfig, load_config  # noqa: E402
from rankalign.train.checkpoints import (  # noqa: E402
    CHECKPOINT_MARKER,
    ResumeError,
    checkpoint_problem,
    last_complete_checkpoint,
)
from rankalign.train.config import ConfigError  # noqa: E402
from rankalign.train.trainer import PreferenceTrainer, make_training_arguments, train_preference  # noqa: E402

VOCAB = 40
WORDS = "red green blue small large quick slow bright dark warm cold soft round flat".split()


def toy_lists(n=8, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def ids(length):
        return torch.randint(3, VOCAB, (length,), generator=generator).tolist()

    return [TokenizedList(prompt_ids=ids(4), response_ids=[ids(3) + [2], ids(3) + [2]], ranks=[0, 1], index=i)
            for i in range(n)]


def tiny_model():
    return tiny_causal_lm(VOCAB, hidden_size=16, layers=1, heads=2, seed=0)


def api_config(tmp_path, **overrides):
    values = dict(objective="dpo", batch_size=2, max_steps=4, save_steps=2, save_total_limit=None, lr=1e-2,
                  output_dir=str(tmp_path / "run"), report_to=[], progress=False, loss_params={"beta": 0.5})
    values.update(overrides)
    return TrainConfig(**values)


# ------------------------------------------------------------------------------------- Python API
def test_python_api_checkpoints_carry_a_fingerprint_and_resume_refuses_another_config(tmp_path):
    lists = toy_lists()
    cfg = api_config(tmp_path)
    train_preference(tiny_model(), None, lists, cfg)
    marker = json.loads((tmp_path / "run" / "checkpoint-4" / CHECKPOINT_MARKER).read_text())
    assert len(marker["fingerprint"]["hash"]) == 64 and marker["fingerprint"]["data"]["records"] == 8
    # another beta: the checkpoint belongs to a different run
    with pytest.raises(ResumeError, match="config: loss_params changed"):
        train_preference(tiny_model(), None, lists, api_config(tmp_path, loss_params={"beta": 0.1}),
                         resume_from_checkpoint=True)
    # other data: refused too
    with pytest.raises(ResumeError, match="data: 8 records"):
        train_preference(tiny_model(), None, toy_lists(seed=1), cfg, resume_from_checkpoint=True)
    # a longer run of the same config resumes (max_steps may change)
    longer = train_preference(tiny_model(), None, lists, api_config(tmp_path, max_steps=6), resume_from_checkpoint=True)
    assert longer.global_step == 6


def test_checkpoint_without_fingerprint_is_not_resumed(tmp_path):
    lists = toy_lists()
    cfg = api_config(tmp_path)
    train_preference(tiny_model(), None, lists, cfg)
    for step in (2, 4):  # as written by a rankalign before fingerprints, or by hand
        (tmp_path / "run" / f"checkpoint-{step}" / CHECKPOINT_MARKER).write_text(json.dumps({"global_step": step}))
    with pytest.raises(ResumeError, match="carries no run fingerprint"):
        train_preference(tiny_model(), None, lists, cfg, resume_from_checkpoint=True)


def truncate(path):
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_corrupted_checkpoint_falls_back_with_a_warning(tmp_path, damaged):
    lists = toy_lists()
    cfg = api_config(tmp_path)
    train_preference(tiny_model(), None, lists, cfg)
    bad = tmp_path / "run" / "checkpoint-4" / damaged
    truncate(bad)
    with pytest.warns(RankalignWarning, match=f"{damaged}.*skipping checkpoint-4"):
        assert last_complete_checkpoint(cfg.output_dir).endswith("checkpoint-2")
    # the trainer's own resume (PreferenceTrainer.train(True)) uses the same rule
    trainer = PreferenceTrainer(tiny_model(), make_training_arguments(api_config(tmp_path, max_steps=4)), lists,
                                objective="dpo", loss_params={"beta": 0.5})
    trainer.fingerprint = None  # the rule, not the fingerprint, is under test here
    with pytest.warns(RankalignWarning, match=damaged):
        output = trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 4 and output.global_step == 4


@pytest.mark.parametrize("damage", ["optimizer.pt", "scheduler.pt", "model.safetensors", "trainer_state.json",
                                    "state {}", "state []", "state global_step x"])
def test_a_checkpoint_missing_what_a_resume_needs_is_skipped(tmp_path, damage):
    # transformers restores the optimiser only when optimizer.pt and scheduler.pt are both there: without
    # one of them the run used to resume silently with a fresh optimiser and end elsewhere
    lists = toy_lists()
    cfg = api_config(tmp_path)
    train_preference(tiny_model(), None, lists, cfg)
    checkpoint = tmp_path / "run" / "checkpoint-4"
    if damage.startswith("state "):
        body = {"{}": "{}", "[]": "[]", "global_step x": '{"global_step": "x"}'}[damage[6:]]
        (checkpoint / "trainer_state.json").write_text(body)
        name = "trainer_state.json"
    else:
        (checkpoint / damage).unlink()
        name = damage
    with pytest.warns(RankalignWarning, match=f"{name}.*skipping checkpoint-4"):
        assert last_complete_checkpoint(cfg.output_dir).endswith("checkpoint-2")


def test_checkpoint_problem_reads_each_kind_of_file(tmp_path):
    # independent of the trainer: hand-made whole and damaged files
    good = tmp_path / "good"
    good.mkdir()
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (good / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    for name in ("optimizer.pt", "scheduler.pt"):
        with zipfile.ZipFile(good / name, "w") as archive:
            archive.writestr("data.pkl", b"x" * 100)
    (good / "trainer_state.json").write_text('{"global_step": 1}')
    assert checkpoint_problem(good) is None
    (good / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    assert checkpoint_problem(good)[0].name == "model.safetensors"


def test_preference_trainer_refuses_a_foreign_checkpoint(tmp_path):
    lists = toy_lists()
    train_preference(tiny_model(), None, lists, api_config(tmp_path))
    trainer = PreferenceTrainer(tiny_model(), make_training_arguments(api_config(tmp_path)), toy_lists(seed=5),
                                objective="dpo", loss_params={"beta": 0.5})
    with pytest.raises(ResumeError, match="different run"):
        trainer.train(resume_from_checkpoint=True)


# ------------------------------------------------------------------------------------- config
def write_config(tmp_path, **overrides):
    data = tmp_path / "lists.jsonl"
    with open(data, "w") as stream:
        for i in range(8):
            prompt = f"item {i} " + " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(4))
            candidates = [" ".join(WORDS[(i * 7 + j * 3 + c) % len(WORDS)] for j in range(3)) + f" {c}"
                          for c in range(3)]
            stream.write(json.dumps(RankedList(prompt=prompt, candidates=candidates, ranks=[0, 1, 2]).to_dict()) + "\n")
    values = {"model": "tiny:llama", "tiny_model": {"hidden_size": 16, "layers": 1, "heads": 2},
              "tokenizer": "train", "tokenizer_vocab_size": 120, "data": str(data), "objective": "pl_dpo",
              "loss_params": {"beta": 0.5}, "batch_size": 2, "max_steps": 4, "save_steps": 2, "lr": 0.01,
              "output_dir": str(tmp_path / "out"), "report_to": [], "progress": False}
    values.update(overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def train(*args):
    return CliRunner().invoke(main, ["train", *(str(a) for a in args)])


def one_line_error(result, code):
    """Exit code, and the error as the last stderr line (train may first print its data summary), once."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.output, result.stderr
    return errors[0]


def test_nonpositive_beta_is_rejected_when_the_config_is_loaded(tmp_path):
    # the data file does not exist: the range check comes first, before anything is read
    config = write_config(tmp_path, data=str(tmp_path / "missing.jsonl"), loss_params={"beta": -0.1})
    with pytest.raises(ConfigError, match="beta must be > 0"):
        load_config(config)
    assert "beta must be > 0" in one_line_error(train(config), 2)


def test_unknown_objective_and_loss_param_are_rejected_with_suggestions(tmp_path):
    config = write_config(tmp_path)
    line = one_line_error(train(config, "--set", "objective=dpoo", "--print-config"), 2)
    assert "unknown objective 'dpoo'" in line and "Did you mean dpo" in line
    line = one_line_error(train(config, "--set", "loss_params.betta=0.1", "--print-config"), 2)
    assert "no parameter 'betta'; did you mean 'beta'" in line


def test_train_errors_are_one_line(tmp_path):
    config = write_config(tmp_path)
    assert "no such file" in one_line_error(train(config, "--set", f"data={tmp_path / 'nope.jsonl'}"), 2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "candidates": ["a", "b"], "ranks": [0, 1]}\n{"prompt": "p", "candidates": [\n')
    assert "bad.jsonl:2" in one_line_error(train(config, "--set", f"data={bad}"), 1)
    line = one_line_error(train(config, "--set", "loss_params={beta: [1"), 2)
    assert "not a valid YAML value" in line
    unclosed = tmp_path / "unclosed.yaml"
    unclosed.write_text('model: "tiny:llama\nobjective: dpo\n')
    assert "unclosed.yaml" in one_line_error(train(unclosed), 2)
    blocker = tmp_path / "cache_file"
    blocker.write_text("x")
    assert "is a file" in one_line_error(train(config, "--set", f"reference_cache_dir={blocker}"), 2)


def test_missing_model_is_a_one_line_error(tmp_path):
    config = write_config(tmp_path)
    line = one_line_error(train(config, "--set", f"model={tmp_path / 'nomodel'}"), 1)
    assert "nomodel" in line


# ------------------------------------------------------------------------------------- the CLI's resume
def test_finished_run_does_nothing_unless_extended(tmp_path):
    config = write_config(tmp_path)
    first = train(config)
    assert first.exit_code == 0, first.output
    final = (tmp_path / "out" / "final" / "model.safetensors").read_bytes()
    checkpoints = sorted(os.listdir(tmp_path / "out"))
    again = train(config)
    assert again.exit_code == 0 and "finished at step 4; nothing to do" in again.stdout
    # nothing moved: same final weights, same checkpoints, no step past max_steps in the metrics
    assert (tmp_path / "out" / "final" / "model.safetensors").read_bytes() == final
    assert sorted(os.listdir(tmp_path / "out")) == checkpoints
    rows = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert max(row["step"] for row in rows) == 4
    # asked to go further: continues to 6
    longer = train(config, "--set", "max_steps=6")
    assert longer.exit_code == 0 and "trained 6 steps" in longer.stdout


@pytest.mark.parametrize("marker", ['{"global_step": "two"}', '{"global_step": null}', "[]",
                                    '{"global_step": 4, "fingerprint": [1]}'])
def test_a_damaged_finished_marker_is_ignored_with_a_warning(tmp_path, marker):
    from rankalign.train.checkpoints import FINISHED_MARKER, finished_run

    (tmp_path / "final").mkdir()
    (tmp_path / "final" / FINISHED_MARKER).write_text(marker)
    with pytest.warns(RankalignWarning, match="not the marker a finished run writes"):
        assert finished_run(tmp_path) is None


def test_a_checkpoint_fingerprint_that_is_not_an_object_counts_as_none(tmp_path):
    from rankalign.train.checkpoints import checkpoint_fingerprint, verify_checkpoint

    (tmp_path / CHECKPOINT_MARKER).write_text('{"global_step": 2, "fingerprint": [1, 2]}')
    assert checkpoint_fingerprint(tmp_path) is None
    with pytest.raises(ResumeError, match="carries no run fingerprint"):
        verify_checkpoint(tmp_path, {"hash": "x"})


def test_resume_refuses_a_checkpoint_of_a_different_config(tmp_path):
    config = write_config(tmp_path, max_steps=6)
    assert train(config, "--set", "max_steps=2").exit_code == 0  # leaves checkpoint-2 of beta 0.5
    # a --no-resume run of another config clears the old checkpoints instead of leaving them to be mixed in
    with pytest.warns(RankalignWarning, match="removed 1 checkpoint"):
        other = train(config, "--set", "loss_params.beta=0.2", "--set", "max_steps=2", "--no-resume")
    assert other.exit_code == 0, other.output
    # resuming with the first config now finds the other run's checkpoint: refused, not silently mixed
    line = one_line_error(train(config), 2)
    assert "belongs to a different run" in line and "loss_params" in line


def test_an_option_added_later_leaves_the_fingerprint_of_runs_that_do_not_set_it_unchanged():
    from rankalign.train.checkpoints import run_fingerprint
    from rankalign.train.config import OnlineConfig, PeftConfig, config_to_dict

    records = [{"prompt": "p", "candidates": ["a", "b"], "ranks": [0, 1]}]
    now = config_to_dict(TrainConfig(objective="dpo"))
    before = json.loads(json.dumps(now))
    del before["peft"]["top_layers"]  # the config as a version without `peft.top_layers` wrote it
    del before["online"]["replay"]  # ... and without `online.replay`
    assert run_fingerprint(now, records)["hash"] == run_fingerprint(before, records)["hash"]
    used = config_to_dict(TrainConfig(objective="dpo", peft=PeftConfig(top_layers=4)))
    assert run_fingerprint(used, records)["hash"] != run_fingerprint(now, records)["hash"]
    replaying = config_to_dict(TrainConfig(objective="dpo", online=OnlineConfig(replay=True)))
    assert run_fingerprint(replaying, records)["hash"] != run_fingerprint(now, records)["hash"]


def test_checkpoint_problem_of_a_plain_loop_checkpoint(tmp_path):
    # the layout save_checkpoint writes for reward training and policy gradients, made by hand
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    for name in ("trainable.safetensors", "optimizer.safetensors"):
        (folder / name).write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    state = {"step": 1, "optimizer": {"param_groups": [], "scalars": {}}, "scheduler": None, "history": []}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    assert checkpoint_problem(folder) is None
    (folder / "trainer_state.json").write_text("{}")
    assert checkpoint_problem(folder)[0].name == "trainer_state.json"
    (folder / "trainer_state.json").write_text(json.dumps(state))
    (folder / "optimizer.safetensors").unlink()
    assert checkpoint_problem(folder) == (folder / "optimizer.safetensors", "missing")


def test_a_reward_run_meeting_a_policy_checkpoint_says_so():
    from rankalign.train.checkpoints import describe_difference

    policy = {"config": {"model": "tiny:llama", "lr": 1e-3, "objective": "dpo"}}
    reward = {"config": {"backbone": "tiny", "lr": 3e-4, "objective": "bt_reward"}}
    assert describe_difference(policy, reward) == "it holds a policy run, and this is a reward-model run"
    assert describe_difference(reward, policy) == "it holds a reward-model run, and this is a policy run"
    assert describe_difference(policy, {"config": {**policy["config"], "lr": 1e-4}}) == "config: lr changed"
