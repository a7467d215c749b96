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


# ------------------------------------------------------------------ Adam's state before the first step
def _steps(optimizer, parameters, seed: int, steps: int = 3):
    import torch

    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in parameters:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name, options", [
    ("AdamW", {"fused": True, "weight_decay": 0.1}),
    ("AdamW", {"foreach": True, "weight_decay": 0.1, "amsgrad": True}),
    ("AdamW", {"foreach": False}),
    ("Adam", {"weight_decay": 0.05}),  # Adam's decay enters the gradient: a zero-gradient step must not see it
    ("Adam", {"fused": True, "maximize": True}),
])
def test_preallocated_state_trains_bit_for_bit_like_the_lazy_one(name, options):
    import torch

    def make():
        torch.manual_seed(0)
        parameters = [torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(5))]
        groups = [{"params": parameters[:1]}, {"params": parameters[1:], "lr": 3e-2}]
        return parameters, getattr(torch.optim, name)(groups, lr=1e-2, **options)

    lazy_parameters, lazy = make()
    eager_parameters, eager = make()
    before = [p.detach().clone() for p in eager_parameters]
    assert cpu_memory.preallocate_optimizer_state(eager) is True
    # the state exists now: zero moments, step 0, the parameters untouched and without gradients
    for p, original in zip(eager_parameters, before):
        assert torch.equal(p, original) and p.grad is None
        state = eager.state[p]
        assert float(state["step"]) == 0.0
        assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()
    assert [g["lr"] for g in eager.param_groups] == [1e-2, 3e-2]
    assert all(g["weight_decay"] == options.get("weight_decay", 0.01 if name == "AdamW" else 0) for g in eager.param_groups)
    _steps(lazy, lazy_parameters, seed=1)
    _steps(eager, eager_parameters, seed=1)
    for a, b in zip(lazy_parameters, eager_parameters):
        assert torch.equal(a, b)
        for key, value in lazy.state[a].items():
            other = eager.state[b][key]
            assert torch.equal(value, other) and value.dtype == other.dtype and value.device == other.device, key


def test_preallocation_leaves_other_optimizers_and_resumed_state_alone():
    import torch

    parameter = torch.nn.Parameter(torch.ones(3))
    sgd = torch.optim.SGD([parameter], lr=0.1, momentum=0.9)  # its momentum starts from the first gradient
    assert cpu_memory.preallocate_optimizer_state(sgd) is False and not sgd.state
    adam = torch.optim.AdamW([parameter], lr=0.1)
    _steps(adam, [parameter], seed=0, steps=1)
    state = {key: value.clone() for key, value in adam.state[parameter].items()}
    assert cpu_memory.preallocate_optimizer_state(adam) is False  # a resumed run's state is kept as loaded
    assert all(torch.equal(state[key], adam.state[parameter][key]) for key in state)
    fresh = torch.optim.AdamW([parameter], lr=0.1)
    parameter.grad = torch.ones(3)
    assert cpu_memory.preallocate_optimizer_state(fresh) is False and not fresh.state  # a gradient is pending
    assert torch.equal(parameter.grad, torch.ones(3))


def test_trainer_creates_the_state_up_front_and_trains_the_same(tmp_path, monkeypatch):
    """The preference trainer preallocates on the CPU (state present when training begins, a resumed run
    excepted) and its weights after training equal those of a run without it."""
    import torch
    import transformers

    from rankalign.engine import TokenizedList, tiny_causal_lm
    from rankalign.train import TrainConfig, trainer
    from rankalign.train.trainer import train_preference

    seen = []

    class Probe(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            seen.append(len(optimizer.state))

    generator = torch.Generator().manual_seed(0)
    lists = [TokenizedList(prompt_ids=torch.randint(3, 40, (5,), generator=generator).tolist(),
                           response_ids=[[7, 8, 2], [9, 2], [11, 12, 13, 2]], ranks=[0, 1, 2], index=i)
             for i in range(6)]

    def run(name, **extra):
        model = tiny_causal_lm(48, hidden_size=32, layers=2, heads=2, seed=0)
        config = TrainConfig(objective="pl_dpo", batch_size=2, max_steps=3, lr=1e-2, output_dir=str(tmp_path / name),
                             report_to=[], progress=False, seed=0, **extra)
        train_preference(model, None, lists, config, callbacks=[Probe()])
        return {key: value.clone() for key, value in model.state_dict().items()}

    eager = run("eager")
    assert seen[-1] > 0
    monkeypatch.setattr(trainer, "preallocate_optimizer_state", lambda optimizer: False)
    lazy = run("lazy")
    assert seen[-1] == 0
    assert eager.keys() == lazy.keys() and all(torch.equal(eager[key], lazy[key]) for key in eager)
