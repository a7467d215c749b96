"""Scale-out: the same run in 1 process and in 2 (gloo, CPU) under DDP, FSDP2 and DeepSpeed ZeRO-3.

Same global batch (4 lists per step: 1 process x 4 lists, or 2 processes x 2 lists), same seed, same
data order, shared layout; the per-step losses must agree to float32 rounding, and so must the final
weights. The launches use the accelerate configs of ``examples/accelerate/`` through the worker in
``benchmarks/scaleout_equality.py`` (which also prints the tables). Slow (process launches): ``pytest -m slow``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("scaleout_equality", ROOT / "benchmarks" / "scaleout_equality.py")
scaleout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scaleout)

needs_deepspeed = pytest.mark.skipif(scaleout.deepspeed_status() is not None,
                                     reason=f"deepspeed does not import: {scaleout.deepspeed_status()}")


def assert_same_run(single, double, *, weight_tolerance=1e-4):
    assert single["world"] == 1 and double["world"] == 2
    assert len(single["losses"]) == 3
    assert double["losses"] == pytest.approx(single["losses"], rel=1e-5, abs=1e-6)
    # Adam normalises each coordinate's step, so gradients that differ only by the all-reduce's summation
    # order can move a near-zero-gradient weight by a few lr-sized steps' rounding; 1e-4 is 1% of lr.
    for name, value in single["weights"].items():
        difference = max(abs(a - b) for a, b in zip(double["weights"][name], value))
        assert difference < weight_tolerance, (name, difference)


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
    """The one-process runs every backend is compared with, once per model."""
    work = tmp_path_factory.mktemp("single")
    cache = {}

    def get(model, objective="pl_dpo"):
        if (model, objective) not in cache:
            cache[model, objective] = scaleout.run_training(work / f"{model}-{objective}", None, 1, model=model,
                                                            objective=objective)
        return cache[model, objective]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny", "smollm2"])
@pytest.mark.parametrize("backend", ["ddp", "fsdp2", pytest.param("zero2", marks=needs_deepspeed),
                                     pytest.param("zero3", marks=needs_deepspeed)])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, single_runs, backend, model):
    double = scaleout.run_training(tmp_path / backend, backend, 2, model=model)
    expected_state = {"ddp": "MULTI_CPU", "fsdp2": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}[backend]
    assert double["backend"] == expected_state, double["backend"]
    if backend == "fsdp2":
        assert double["model_class"].startswith("FSDP"), double["model_class"]  # fully_shard ran on the root
    if backend in ("fsdp2", "zero3"):  # sharded: each process owns about half of every parameter
        assert 0.45 < double["owned_fraction"] < 0.6, double["owned_fraction"]
    else:  # DDP and ZeRO-2 replicate the parameters
        assert double["owned_fraction"] == 1.0, double["owned_fraction"]
    assert "layout: shared" in double["log"]
    assert "not one the split forward supports" not in double["log"]  # no fallback to the plain forward
    assert_same_run(single_runs(model), double)


@pytest.mark.slow
def test_bco_running_mean_is_shared_by_two_processes(tmp_path, single_runs):
    # delta is updated with the rewards of the whole global batch (summed over processes), so two
    # processes of 2 judgments keep the delta, and give the losses, of one process of 4
    single = single_runs("tiny", "bco")
    double = scaleout.run_training(tmp_path / "double", "ddp", 2, objective="bco")
    assert double["losses"] == pytest.approx(single["losses"], rel=1e-5, abs=1e-6)
    assert double["bco_delta"] == pytest.approx(single["bco_delta"], rel=1e-5, abs=1e-6)
    assert abs(single["bco_delta"][-1]) > 1e-4
    other = json.loads((tmp_path / "double" / "metrics-rank1.json").read_text())
    assert other["bco_delta"] == pytest.approx(double["bco_delta"], rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_kto_mismatched_pairs_span_the_global_batch_so_two_processes_match_one(tmp_path, single_runs):
    # the mismatched pairs are built over the global micro-batch (prompt i with response i + 1 across the
    # process boundary), so z0 -- and with it the loss -- is the one-process value
    single = single_runs("tiny", "kto")
    double = scaleout.run_training(tmp_path / "double", "ddp", 2, objective="kto")
    other = json.loads((tmp_path / "double" / "metrics-rank1.json").read_text())
    assert double["world"] == 2 and len(double["kl"]) == 3
    assert other["kl"] == pytest.approx(double["kl"], rel=1e-9, abs=1e-12)
    assert double["kl"][0] == pytest.approx(0.0, abs=1e-6)  # the reference is the policy before training
    assert any(abs(kl) > 1e-4 for kl in single["kl"][1:])  # then the policy moves and the estimate with it
    assert double["kl"] == pytest.approx(single["kl"], rel=1e-5, abs=1e-6)
    assert double["z0"] == pytest.approx([max(0.0, kl) for kl in double["kl"]], abs=1e-9)
    assert double["losses"] == pytest.approx(single["losses"], rel=1e-5, abs=1e-6)
    assert all(math.isfinite(loss) for loss in double["losses"])


@pytest.mark.slow
def test_reference_pass_split_over_two_processes_writes_the_cache_of_one(tmp_path):
    from safetensors.torch import load_file

    caches = {}
    for processes in (1, 2):
        out = tmp_path / f"reference-{processes}"
        out.mkdir()
        command = scaleout.launch_command("ddp" if processes > 1 else None, processes, "reference", str(out),
                                          "--model", "tiny", "--lists", "24")
        completed = subprocess.run(command, capture_output=True, text=True, env=scaleout.environment(), timeout=600)
        assert completed.returncode == 0, completed.stderr[-4000:]
        caches[processes] = (json.loads((out / "reference_logps.json").read_text()),
                             load_file(str(out / "reference_logps.safetensors")))
    (manifest_1, tensors_1), (manifest_2, tensors_2) = caches[1], caches[2]
    assert manifest_2["key"] == manifest_1["key"] and manifest_2["ks"] == manifest_1["ks"] == [3] * 24
    assert tensors_2["offsets"].tolist() == tensors_1["offsets"].tolist()
    # each batch is packed as in one process, so the values agree to float32 rounding (in practice exactly)
    assert (tensors_2["logps"] - tensors_1["logps"]).abs().max().item() <= 1e-6
    assert bool((tensors_1["logps"] < 0).all())


def _resume_config(tmp_path, name):
    from test_train_resume_kill import write_config

    return write_config(tmp_path, name, lists=24, layers=2, epochs=None, max_steps=8, save_steps=4,
                        reference_cache_dir=str(tmp_path / f"{name}-ref"))


def _final_state(output_dir):
    from safetensors.torch import load_file

    rows = [json.loads(line) for line in open(os.path.join(output_dir, "metrics.jsonl"))]
    losses = {row["step"]: row["loss"] for row in rows if "loss" in row}
    return losses, load_file(os.path.join(output_dir, "final", "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["fsdp2", pytest.param("zero3", marks=needs_deepspeed)])
def test_resume_after_sigkill_ends_where_an_uninterrupted_run_ends(tmp_path, backend):
    def command(config):
        return scaleout.launch_command(backend, 2, "cli", "train", str(config))

    env = scaleout.environment()
    uninterrupted = _resume_config(tmp_path, "uninterrupted")
    completed = subprocess.run(command(uninterrupted), env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-6000:]
    assert f"processes: 2, backend: {'FSDP' if backend == 'fsdp2' else 'DEEPSPEED'}" in completed.stderr
    assert (tmp_path / "uninterrupted" / "checkpoint-4" / "model.safetensors").exists()  # full state dict

    config = _resume_config(tmp_path, "killed")
    marker = tmp_path / "killed" / "checkpoint-4" / "rankalign_checkpoint_complete"
    process = subprocess.Popen(command(config), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 900
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both training processes
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "final").exists()
    assert (tmp_path / "killed-ref" / "reference_logps.json").exists()  # the split reference pass's cache

    completed = subprocess.run(command(config), env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-6000:]
    expected_losses, expected_weights = _final_state(tmp_path / "uninterrupted")
    losses, weights = _final_state(tmp_path / "killed")
    assert sorted(expected_losses) == list(range(1, 9))
    assert sorted(losses) == sorted(expected_losses)
    for step, value in expected_losses.items():
        assert losses[step] == pytest.approx(value, rel=1e-4, abs=1e-6), step
    assert sorted(weights) == sorted(expected_weights)
    for name, tensor in expected_weights.items():
        assert (weights[name] - tensor).abs().max().item() <= 1e-4, name


def test_a_build_lock_left_by_a_killed_process_is_an_error_not_a_silent_wait(tmp_path, monkeypatch):
    # torch's JIT builder waits forever on <TORCH_EXTENSIONS_DIR>/<name>/lock; DeepSpeed on CPU builds its
    # shm op there at every start, so a lock a killed build left would hang every later run without a word
    from rankalign.errors import RankalignError
    from rankalign.train.trainer import check_extension_lock

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    check_extension_lock("deepspeed_shm_comm")  # no folder, no lock
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(exist_ok=True)
    lock.touch()
    check_extension_lock("deepspeed_shm_comm")  # a build in progress (a fresh lock) is waited for
    an_hour_ago = time.time() - 3600
    os.utime(lock, (an_hour_ago, an_hour_ago))
    with pytest.raises(RankalignError, match="60 min") as raised:
        check_extension_lock("deepspeed_shm_comm")
    assert str(lock) in str(raised.value) and str(lock) in raised.value.hint


def test_what_deepspeed_prints_while_it_starts_on_cpu_goes_to_stderr(tmp_path, monkeypatch, capsys):
    # DeepSpeed announces its CPU op with a bare print() while TrainingArguments builds the distributed
    # state; `rankalign train --json` must keep stdout for its JSON
    from rankalign.train import TrainConfig
    from rankalign.train import trainer as trainer_module

    class PrintingArguments:
        def __init__(self, **kwargs):
            print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
            self.kwargs = kwargs

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(trainer_module.torch.cuda, "is_available", lambda: False)
    # patched on the module object the trainer holds (sys.modules["transformers"] may be another by now)
    monkeypatch.setattr(trainer_module.transformers, "TrainingArguments", PrintingArguments)
    config = TrainConfig(output_dir=str(tmp_path / "run"), report_to=[])
    arguments = trainer_module.make_training_arguments(config)
    captured = capsys.readouterr()
    assert captured.out == "" and "built successfully" in captured.err
    assert arguments.kwargs["ddp_backend"] == "gloo" and arguments.kwargs["use_cpu"] is False
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    arguments = trainer_module.make_training_arguments(config)  # no DeepSpeed: nothing is redirected
    assert "built successfully" in capsys.readouterr().out
    assert arguments.kwargs["ddp_backend"] is None and arguments.kwargs["use_cpu"] is True


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-m", "slow", "-v"]))
