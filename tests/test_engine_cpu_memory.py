"""engine/cpu_memory.py: glibc keeps freed memory, so a repeated large allocation stops page-faulting.

The expected counts come from the page size, not from the code: a 64 MiB block is 16,384 pages of 4 KiB.
Above glibc's largest mmap threshold (32 MiB) each such block is its own mapping, unmapped on free, so
touching a fresh one faults every page again; with the block kept in the heap, touching it again faults
none. Each measurement runs in a fresh interpreter, since the settings hold for the whole process.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from rankalign.engine import cpu_memory

PAGES = (64 << 20) // 4096  # pages in one 64 MiB block
ROUNDS = 12
STEADY = 6  # the last rounds, once the heap has grown to hold the block

CHILD = f"""
import json, resource, sys
import torch
from rankalign.engine import cpu_memory
applied = cpu_memory.retain_if_cpu(torch.device("cpu")) if sys.argv[1] == "retain" else None
def touch():
    torch.empty({PAGES * 1024}, dtype=torch.float32).fill_(1.0)  # allocate, write every page, free
per_round = []
for _ in range({ROUNDS}):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch()
    per_round.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"applied": applied, "faults": per_round}}))
"""

glibc_linux = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                 reason="the settings are glibc's")


def _child(mode: str, **env) -> dict:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    environment.pop(cpu_memory.ENV_VARIABLE, None)
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=environment,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_linux
def test_retained_memory_stops_the_page_faults_of_a_repeated_large_block():
    plain = _child("plain")
    retained = _child("retain")
    # glibc's default: every round maps the block anew and faults (nearly) all of its pages
    assert min(plain["faults"]) >= PAGES * 0.9, plain
    assert retained["applied"] is True
    # Kept in the heap, the block faults when the heap first grows to hold it. That can happen more than once
    # in the first rounds: a small allocation from another thread may land in the freed block and push the
    # next one past the heap's top (seen in 13 of 30 runs, never more than twice). Once the heap holds it, the
    # block is reused: the steady rounds fault under a tenth of one round, against a whole round each by default.
    assert sum(retained["faults"]) <= 3.05 * PAGES, retained
    assert sum(retained["faults"][-STEADY:]) < PAGES * 0.1, retained


@glibc_linux
def test_environment_variable_default_leaves_malloc_alone():
    result = _child("retain", **{cpu_memory.ENV_VARIABLE: "default"})
    assert result["applied"] is False
    assert min(result["faults"]) >= PAGES * 0.9, result


def test_unknown_environment_value_is_refused(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_applied", None)
    monkeypatch.setenv(cpu_memory.ENV_VARIABLE, "jemalloc")
    with pytest.raises(ValueError, match="RANKALIGN_CPU_MALLOC='jemalloc'.*'retain' or 'default'"):
        cpu_memory.retain_freed_memory()


def test_other_c_libraries_change_nothing(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_applied", None)
    monkeypatch.delenv(cpu_memory.ENV_VARIABLE, raising=False)
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)
    assert cpu_memory.retain_freed_memory() is False


def test_only_the_cpu_asks(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_memory, "retain_freed_memory", lambda: calls.append(1) or True)
    assert cpu_memory.retain_if_cpu("cuda:0") is False
    assert cpu_memory.retain_if_cpu("meta") is False
    assert calls == []
    assert cpu_memory.retain_if_cpu("cpu") is True
    import torch
    assert cpu_memory.retain_if_cpu(torch.nn.Linear(2, 2)) is True  # a module: its parameters' device
    assert calls == [1, 1]


def test_cpu_training_and_scoring_loops_ask_for_it(tmp_path, monkeypatch):
    """The preference trainer and the scoring path call it on the CPU (each module's own import is spied)."""
    import torch

    from rankalign.engine import TokenizedList, score_lists, scoring, tiny_causal_lm
    from rankalign.train import TrainConfig, trainer
    from rankalign.train.trainer import train_preference

    asked = []
    spy = lambda device: asked.append(str(getattr(device, "type", device))) or False  # noqa: E731
    monkeypatch.setattr(trainer, "retain_if_cpu", spy)
    monkeypatch.setattr(scoring, "retain_if_cpu", spy)
    generator = torch.Generator().manual_seed(0)
    lists = [TokenizedList(prompt_ids=torch.randint(3, 40, (5,), generator=generator).tolist(),
                           response_ids=[[7, 8, 2], [9, 2]], ranks=[0, 1], index=i) for i in range(4)]
    model = tiny_causal_lm(48, hidden_size=32, layers=1, heads=2, seed=0)
    score_lists(model, lists, progress=False, announce=False)
    assert asked == ["cpu"]
    train_preference(model, None, lists, TrainConfig(objective="dpo", batch_size=4, max_steps=1, lr=1e-3,
                                                     output_dir=str(tmp_path / "run"), report_to=[],
                                                     progress=False, seed=0))
    assert asked.count("cpu") >= 2 and set(asked) == {"cpu"}  # the reference pass scores, then train() asks
