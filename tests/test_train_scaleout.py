"""Scale-out: the same run under `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo) and in one process.

Same global batch (4 lists per step: 1 process x 4 lists, or 2 processes x 2 lists), same seed, same
data order; the per-step losses must agree to float32 rounding, and so must the final weights. Slow
(two process launches), run with `pytest -m slow`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from rankalign.engine import TokenizedList, tiny_causal_lm
    from rankalign.train import TrainConfig
    from rankalign.train.trainer import train_preference

    out, batch_size, objective = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    generator = torch.Generator().manual_seed(0)
    def ids(n):
        return torch.randint(3, 48, (n,), generator=generator).tolist()
    lists = [TokenizedList(prompt_ids=ids(4 + i % 3), response_ids=[ids(3) + [2], ids(2 + i % 2) + [2], ids(3) + [2]],
                           ranks=[0, 1, 2], weight=1.0 + (i % 4), index=i) for i in range(16)]
    if objective in ("kto", "bco"):  # unpaired: one response per prompt with a label
        lists = [TokenizedList(prompt_ids=t.prompt_ids, response_ids=t.response_ids[:1], ranks=[0],
                               label=bool(i % 3), weight=t.weight, index=i) for i, t in enumerate(lists)]
    config = TrainConfig(objective=objective, batch_size=batch_size, max_steps=3, lr=1e-2, seed=0,
                         output_dir=os.path.join(out, "run"), report_to=[], progress=False,
                         loss_params={"beta": 0.5})
    result = train_preference(tiny_causal_lm(48, hidden_size=32, layers=1, heads=2), None, lists, config)
    rank = int(os.environ.get("RANK", "0"))
    steps = [row for row in result.history if "loss" in row]
    metrics = {name: [row.get(name) for row in steps] for name in ("kl", "z0", "bco_delta")}
    with open(os.path.join(out, f"metrics-rank{rank}.json"), "w") as f:
        json.dump(metrics, f)  # every rank: the reduced metrics must agree across ranks
    if rank == 0:
        losses = [row["loss"] for row in steps]
        weights = {n: p.detach().flatten().tolist() for n, p in result.model.named_parameters()}
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump({"losses": losses, "weights": weights, **metrics,
                       "world": int(os.environ.get("WORLD_SIZE", "1"))}, f)
''')


def run(tmp_path, name, processes, objective="pl_dpo"):
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "scaleout_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if processes == 1:
        command = [sys.executable, str(script), str(out), "4", objective]
    else:
        # `--multi_gpu` starts the processes with torch.distributed.run; on a machine without CUDA the
        # Trainer's use_cpu=True makes accelerate pick MULTI_CPU with gloo. (`accelerate launch --cpu` with
        # --num_processes > 1 and no mpirun hostfile starts a single process in accelerate 1.15.)
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   str(script), str(out), str(4 // processes), objective]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-6000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single = run(tmp_path, "single", 1)
    double = run(tmp_path, "double", 2)
    assert single["world"] == 1 and double["world"] == 2
    assert len(single["losses"]) == 3
    assert double["losses"] == pytest.approx(single["losses"], rel=1e-5, abs=1e-6)
    # Adam normalises each coordinate's step, so gradients that differ only by the all-reduce's summation
    # order can move a near-zero-gradient weight by a few lr-sized steps' rounding; 1e-4 is 1% of lr.
    for name, value in single["weights"].items():
        difference = max(abs(a - b) for a, b in zip(double["weights"][name], value))
        assert difference < 1e-4, (name, difference)


@pytest.mark.slow
def test_bco_running_mean_is_shared_by_two_processes(tmp_path):
    # delta is updated with the rewards of the whole global batch (summed over processes), so two
    # processes of 2 judgments keep the delta, and give the losses, of one process of 4
    single = run(tmp_path, "single", 1, "bco")
    double = run(tmp_path, "double", 2, "bco")
    assert double["world"] == 2
    assert double["losses"] == pytest.approx(single["losses"], rel=1e-5, abs=1e-6)
    assert double["bco_delta"] == pytest.approx(single["bco_delta"], rel=1e-5, abs=1e-6)
    assert abs(single["bco_delta"][-1]) > 1e-4
    other = json.loads((tmp_path / "double" / "metrics-rank1.json").read_text())
    assert other["bco_delta"] == pytest.approx(double["bco_delta"], rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_kto_z0_is_averaged_over_processes(tmp_path):
    # each process builds mismatched pairs inside its own 2 judgments; the KL estimate is averaged over
    # processes (TRL gathers it), so both ranks log, and train with, the same z0
    double = run(tmp_path, "double", 2, "kto")
    other = json.loads((tmp_path / "double" / "metrics-rank1.json").read_text())
    assert double["world"] == 2 and len(double["kl"]) == 3
    assert other["kl"] == pytest.approx(double["kl"], rel=1e-9, abs=1e-12)
    assert double["kl"][0] == pytest.approx(0.0, abs=1e-6)  # the reference is the policy before training
    assert any(abs(kl) > 1e-4 for kl in double["kl"][1:])  # then the policy moves and the estimate with it
    assert double["z0"] == pytest.approx([max(0.0, kl) for kl in double["kl"]], abs=1e-9)
    assert all(math.isfinite(loss) for loss in double["losses"])
