"""Scale-out equality: the same training run in 1 process and in 2 processes under DDP, FSDP2 and ZeRO-2/3.

Each case trains the same model (the tiny config, or SmolLM2-135M's architecture with random weights and
fewer layers) on the same 16 ranked lists for a few steps with the same global batch (1 x 4 lists, or
2 x 2) and the shared layout, launched with the accelerate configs of ``examples/accelerate/``; the
table gives every step's loss and the largest difference from the one-process run. Then the reference
pass is timed with 1 and 2 processes (split across processes, ``rankalign.engine.score_lists``), and
the two caches are compared.

    python benchmarks/scaleout_equality.py                      # all backends, both models
    python benchmarks/scaleout_equality.py --backends fsdp2 --models tiny

Ends with one ``RESULT {...}`` line per case. On a machine without a GPU, accelerate runs an FSDP
config as DDP (it builds FSDP only on accelerators); the worker below lets it build FSDP2 on CPU
processes over gloo (``fsdp_on_cpu``), so that the sharded code path is what runs here. DeepSpeed runs
on its CPU accelerator over gloo when it is installed; without it the ZeRO-3 rows say so.

The module is also the worker those launches run (``worker`` and ``cli`` sub-commands) and is used by
``tests/test_train_scaleout.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "examples" / "accelerate"
BACKENDS = {"ddp": "ddp.yaml", "fsdp2": "fsdp2.yaml", "zero2": "zero2.yaml", "zero3": "zero3.yaml"}
# SmolLM2-135M-Instruct's architecture (its GGUF's config), as overrides of rankalign's tiny Llama
SMOLLM2_ARCHITECTURE = dict(hidden_size=576, heads=9, num_key_value_heads=3, head_dim=64, intermediate_size=1536,
                            tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
                            max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=2)
SMOLLM2_VOCAB = 49152


# ------------------------------------------------------------------------------------------ in the worker
def fsdp_on_cpu() -> None:
    """Let accelerate build FSDP on CPU processes (gloo) when the launch asked for FSDP and there is no GPU.

    accelerate 1.15 turns ``ACCELERATE_USE_FSDP`` into FSDP only for accelerator process groups; on CPU it
    keeps MULTI_CPU (plain DDP). This marks the state FSDP with the plugin accelerate built, so
    ``Accelerator.prepare`` calls ``fully_shard`` exactly as it does on GPUs.
    """
    import torch

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or torch.cuda.is_available():
        return
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


def build_model(name: str, layers: int):
    from rankalign.engine import tiny_causal_lm

    if name == "tiny":
        return tiny_causal_lm(48, hidden_size=32, layers=layers, heads=2, seed=0)
    if name == "smollm2":
        return tiny_causal_lm(SMOLLM2_VOCAB, layers=layers, seed=0, **SMOLLM2_ARCHITECTURE)
    raise ValueError(f"unknown model {name!r}; choose tiny or smollm2")


def training_lists(count: int, objective: str):
    import torch

    from rankalign.engine import TokenizedList

    generator = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, 48, (n,), generator=generator).tolist()

    lists = [TokenizedList(prompt_ids=ids(4 + i % 3), response_ids=[ids(3) + [2], ids(2 + i % 2) + [2], ids(3) + [2]],
                           ranks=[0, 1, 2], weight=1.0 + (i % 4), index=i) for i in range(count)]
    if objective in ("kto", "bco"):  # unpaired: one response per prompt with a label
        lists = [TokenizedList(prompt_ids=t.prompt_ids, response_ids=t.response_ids[:1], ranks=[0],
                               label=bool(i % 3), weight=t.weight, index=i) for i, t in enumerate(lists)]
    return lists


def full_weights(model, limit: int = 4096) -> dict:
    """The first ``limit`` values of every parameter, whole (FSDP2 shards and ZeRO-3 partitions gathered:
    a collective, so every process calls it)."""
    named = list(model.named_parameters())

    def values(tensor):
        return tensor.detach().float().flatten()[:limit].tolist()

    if any(hasattr(parameter, "ds_id") for _, parameter in named):  # ZeRO-3 partitions
        import deepspeed

        with deepspeed.zero.GatheredParameters([parameter for _, parameter in named]):
            return {name: values(parameter) for name, parameter in named}
    return {name: values(parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter)
            for name, parameter in named}


def worker(argv) -> None:
    """One training run (in each process of a launch): losses, metrics and weights to OUT/result.json."""
    parser = argparse.ArgumentParser(prog="scaleout_equality.py worker")
    parser.add_argument("out")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--objective", default="pl_dpo")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--reference-cache", default=None)
    args = parser.parse_args(argv)
    fsdp_on_cpu()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from rankalign.train import TrainConfig
    from rankalign.train.trainer import train_preference

    config = TrainConfig(objective=args.objective, batch_size=args.batch_size, max_steps=args.steps, lr=1e-2, seed=0,
                         output_dir=os.path.join(args.out, "run"), report_to=[], progress=False,
                         loss_params={"beta": 0.5}, reference_cache_dir=args.reference_cache, save_steps=0)
    result = train_preference(build_model(args.model, args.layers), None,
                              training_lists(16, args.objective), config)
    from accelerate.state import AcceleratorState

    rank = int(os.environ.get("RANK", "0"))
    steps = [row for row in result.history if "loss" in row]
    metrics = {name: [row.get(name) for row in steps] for name in ("kl", "z0", "bco_delta")}
    Path(args.out, f"metrics-rank{rank}.json").write_text(json.dumps(metrics))
    model = result.model
    # the share of the parameters' elements this process owns: its FSDP2 shards (DTensor's local part) or
    # its ZeRO-3 partition (``ds_tensor``; DeepSpeed may keep a small model's gathered copies alive between
    # steps, up to stage3_max_live_parameters); 1.0 under DDP and ZeRO-2, which replicate the parameters
    parameters = list(model.parameters())

    def owned(p):
        return p.ds_tensor.numel() if hasattr(p, "ds_tensor") else (p.to_local() if hasattr(p, "to_local") else p).numel()

    resident = sum(owned(p) for p in parameters) / sum(getattr(p, "ds_numel", p.numel()) for p in parameters)
    weights = full_weights(model)
    if rank == 0:
        backend = AcceleratorState().distributed_type.value if AcceleratorState._shared_state else "NO"
        Path(args.out, "result.json").write_text(json.dumps({
            "losses": [row["loss"] for row in steps], "weights": weights, **metrics, "backend": backend,
            "model_class": type(model).__name__, "owned_fraction": resident,
            "world": int(os.environ.get("WORLD_SIZE", "1"))}))
    torch.distributed.barrier() if torch.distributed.is_initialized() else None


def reference_worker(argv) -> None:
    """Time the reference pass (split across the launch's processes) and write its cache to OUT."""
    parser = argparse.ArgumentParser(prog="scaleout_equality.py reference")
    parser.add_argument("out")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lists", type=int, default=64)
    args = parser.parse_args(argv)
    import torch
    import torch.distributed as dist

    from rankalign.engine import compute_reference_logps

    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("gloo")
    model = build_model(args.model, args.layers).eval()
    lists = training_lists(args.lists, "pl_dpo")
    if dist.is_initialized():
        dist.barrier()
    started = time.perf_counter()
    compute_reference_logps(model, lists, batch_size=4, cache_dir=args.out, progress=False,
                            settings={"reference": "policy before training"}, split_across_processes=True)
    wall = time.perf_counter() - started
    if dist.is_initialized():
        wall = torch.tensor([wall])
        dist.all_reduce(wall, op=dist.ReduceOp.MAX)
        wall = float(wall)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.out, "wall.json").write_text(json.dumps({"wall_s": wall}))
    if dist.is_initialized():
        dist.destroy_process_group()


def cli(argv) -> None:
    """``rankalign`` itself, with :func:`fsdp_on_cpu` (for the FSDP2 resume test on a machine without GPU)."""
    fsdp_on_cpu()
    from rankalign.cli import main

    sys.argv = ["rankalign", *argv]
    main()


# ------------------------------------------------------------------------------------------ the driver
def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}


def launch_command(backend: str | None, processes: int, *arguments) -> list[str]:
    """The command that runs this module with ``arguments`` in one plain process (``backend`` None) or
    under ``accelerate launch --config_file examples/accelerate/<backend>.yaml``."""
    if backend is None:
        return [sys.executable, __file__, *arguments]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / BACKENDS[backend]),
            "--num_processes", str(processes), "--main_process_port", str(29500 + os.getpid() % 1000),
            __file__, *arguments]


def run_training(out: Path, backend: str | None, processes: int, *, model: str = "tiny", objective: str = "pl_dpo",
                 steps: int = 3, layers: int = 2, timeout: int = 900) -> dict:
    """One run (4 lists per step in all); the parsed result.json of rank 0."""
    out.mkdir(parents=True, exist_ok=True)
    command = launch_command(backend, processes, "worker", str(out), "--model", model, "--objective", objective,
                             "--batch-size", str(4 // processes), "--steps", str(steps), "--layers", str(layers))
    completed = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=timeout)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}")
    result = json.loads((out / "result.json").read_text())
    result["log"] = completed.stderr
    return result


def deepspeed_status() -> str | None:
    """None when DeepSpeed imports, else why not."""
    try:
        import deepspeed  # noqa: F401
    except Exception as error:  # ImportError, or a build/accelerator error at import
        return f"{type(error).__name__}: {error}"
    return None


def max_difference(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="ddp,fsdp2,zero2,zero3")
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--reference-lists", type=int, default=64)
    parser.add_argument("--work", default="runs/scaleout_equality")
    args = parser.parse_args(argv)
    work = Path(args.work)
    results = []
    for model in args.models.split(","):
        layers = 2
        single = run_training(work / f"{model}-single", None, 1, model=model, steps=args.steps, layers=layers)
        for backend in args.backends.split(","):
            if backend.startswith("zero") and deepspeed_status() is not None:
                print(f"| {model} | {backend} | not run: deepspeed does not import ({deepspeed_status()}) |")
                continue
            double = run_training(work / f"{model}-{backend}", backend, 2, model=model, steps=args.steps,
                                  layers=layers)
            gap = max_difference(single["losses"], double["losses"])
            weight_gap = max(max_difference(single["weights"][n], double["weights"][n]) for n in single["weights"])
            results.append((model, backend, double["backend"], single["losses"], double["losses"], gap, weight_gap,
                            double["owned_fraction"]))
    print("\n| model | backend (accelerate) | step losses, 1 process | step losses, 2 processes | max |diff| "
          "| max |weight diff| | parameters owned per process |")
    print("|---|---|---|---|---|---|---|")
    for model, backend, state, one, two, gap, weight_gap, owned in results:
        print(f"| {model} | {backend} ({state}) | {', '.join(f'{v:.7f}' for v in one)} | "
              f"{', '.join(f'{v:.7f}' for v in two)} | {gap:.2e} | {weight_gap:.2e} | {owned:.3f} |")
    walls = {}
    for processes in (1, 2):
        out = work / f"reference-{processes}"
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob("reference_logps.*"):
            stale.unlink()
        command = launch_command("ddp" if processes > 1 else None, processes, "reference", str(out),
                                 "--lists", str(args.reference_lists))
        completed = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=900)
        if completed.returncode != 0:
            raise RuntimeError(completed.stderr[-4000:])
        walls[processes] = json.loads((out / "wall.json").read_text())["wall_s"]
    from safetensors.torch import load_file

    one = load_file(str(work / "reference-1" / "reference_logps.safetensors"))
    two = load_file(str(work / "reference-2" / "reference_logps.safetensors"))
    same = (one["logps"] - two["logps"]).abs().max().item() if one["logps"].shape == two["logps"].shape else None
    print(f"\nreference pass, SmolLM2 architecture (2 layers, random weights), {args.reference_lists} lists of 3, "
          f"1 thread per process: 1 process {walls[1]:.2f} s, 2 processes {walls[2]:.2f} s "
          f"({walls[1] / walls[2]:.2f}x); caches: max |difference| {same}")
    for model, backend, _state, one_losses, two_losses, gap, _weight_gap, _owned in results:
        print("RESULT " + json.dumps({"case": f"{model} {backend} 2 processes vs 1", "peer": one_losses,
                                      "ours": two_losses, "unit": "loss per step", "max_abs_diff": gap}))
    print("RESULT " + json.dumps({"case": "reference pass 2 processes vs 1", "peer": walls[1], "ours": walls[2],
                                  "unit": "s", "ratio": walls[1] / walls[2]}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("worker", "reference", "cli"):
        {"worker": worker, "reference": reference_worker, "cli": cli}[sys.argv[1]](sys.argv[2:])
    else:
        main()
