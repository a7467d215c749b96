"""Scale-out: the same run under `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo) and in one process.

Same global batch (4 lists per step: 1 process x 4 lists, or 2 processes x 2 lists), same seed, same
data order; the per-step losses must agree to float32 rounding, and so must the final weights. Slow
(two process launches), run with `pytest -m slow`.
"""

from __future__ import annotations

import json
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

    out, batch_size = sys.argv[1], int(sys.argv[2])
    generator = torch.Generator().manual_seed(0)
    def ids(n):
        return torch.randint(3, 48, (n,), generator=generator).tolist()
    lists = [TokenizedList(prompt_ids=ids(4 + i % 3), response_ids=[ids(3) + [2], ids(2 + i % 2) + [2], ids(3) + [2]],
                           ranks=[0, 1, 2], weight=1.0 + (i % 4), index=i) for i in range(16)]
    config = TrainConfig(objective="pl_dpo", batch_size=batch_size, max_steps=3, lr=1e-2, seed=0,
                         output_dir=os.path.join(out, "run"), report_to=[], progress=False,
                         loss_params={"beta": 0.5})
    result = train_preference(tiny_causal_lm(48, hidden_size=32, layers=1, heads=2), None, lists, config)
    if int(os.environ.get("RANK", "0")) == 0:
        losses = [row["loss"] for row in result.history if "loss" in row]
        weights = {n: p.detach().flatten().tolist() for n, p in result.model.named_parameters()}
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump({"losses": losses, "weights": weights,
                       "world": int(os.environ.get("WORLD_SIZE", "1"))}, f)
''')


def run(tmp_path, name, processes):
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "scaleout_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if processes == 1:
        command = [sys.executable, str(script), str(out), "4"]
    else:
        # `--multi_gpu` starts the processes with torch.distributed.run; on a machine without CUDA the
        # Trainer's use_cpu=True makes accelerate pick MULTI_CPU with gloo. (`accelerate launch --cpu` with
        # --num_processes > 1 and no mpirun hostfile starts a single process in accelerate 1.15.)
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   str(script), str(out), str(4 // processes)]
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
