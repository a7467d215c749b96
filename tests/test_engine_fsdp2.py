"""The engine's forward under FSDP2 (``fully_shard``) in 2 gloo processes, against one unsharded process.

Each decoder layer is a shard unit, the embedding/head (tied or not) one more, plus the root -- the
grouping accelerate's FSDP2 plugin builds. Rank r scores lists 2r, 2r + 1 and back-propagates a weighted
sum; its log-probs must be the unsharded model's and its gradients (reduce-scattered, averaged over the
2 ranks, gathered back with ``full_tensor``) half those of one process over all 4 lists. The same run
checks the reference pass split over the 2 ranks (``score_lists(split_across_processes=True)``): the
cache it writes is the one-process cache, byte for byte. The processes are forked from one interpreter
(a few seconds); slow because it is multi-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import copy, json, sys, tempfile
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    from rankalign.engine import TokenizedList, pack_lists, score_lists, sequence_logps, tiny_causal_lm

    arch, out = sys.argv[1], sys.argv[2]
    g = torch.Generator().manual_seed(0)
    def ids(n):
        return torch.randint(3, 48, (n,), generator=g).tolist()
    lists = [TokenizedList(prompt_ids=ids(4 + i % 3), response_ids=[ids(3) + [2], ids(2 + i % 2) + [2], ids(3) + [2]],
                           ranks=[0, 1, 2], index=i) for i in range(4)]
    model = tiny_causal_lm(48, hidden_size=32, layers=2, heads=2, arch=arch)
    weights = torch.arange(1, 13, dtype=torch.float32).view(4, 3)
    single = copy.deepcopy(model)
    logps = sequence_logps(single, pack_lists(lists))
    (logps * weights).sum().backward()
    expected = {n: p.grad.clone() for n, p in single.named_parameters()}
    tmp = tempfile.mkdtemp()
    score_lists(model, lists * 3, batch_size=2, cache_dir=tmp + "/one", progress=False, announce=False)

    def worker(rank):
        dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        score_lists(model, lists * 3, batch_size=2, cache_dir=tmp + "/two", progress=False, announce=False,
                    split_across_processes=True)
        sharded = copy.deepcopy(model)
        mesh = init_device_mesh("cpu", (2,))
        for block in (sharded.model.layers if arch == "llama" else sharded.transformer.h):
            fully_shard(block, mesh=mesh)
        embedding, head = sharded.get_input_embeddings(), sharded.get_output_embeddings()
        fully_shard([embedding, head] if embedding.weight is head.weight else [head], mesh=mesh,
                    reshard_after_forward=False)
        fully_shard(sharded, mesh=mesh)
        got = sequence_logps(sharded, pack_lists(lists[2 * rank:2 * rank + 2]))
        (got * weights[2 * rank:2 * rank + 2]).sum().backward()
        grad_gap = max((p.grad.full_tensor() * 2 - expected[n]).abs().max().item() for n, p in sharded.named_parameters())
        caches = [json.load(open(f"{tmp}/{name}/reference_logps.json")) for name in ("one", "two")]
        result = {"class": type(sharded).__name__, "head_class": type(head).__name__,
                  "logp_gap": (got - logps[2 * rank:2 * rank + 2]).abs().max().item(), "grad_gap": grad_gap,
                  "grad_scale": max(g.abs().max().item() for g in expected.values()),
                  "same_key": caches[0]["key"] == caches[1]["key"], "same_sha256": caches[0]["sha256"] == caches[1]["sha256"]}
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(result, f)
        dist.barrier()
        dist.destroy_process_group()

    mp.set_start_method("fork")
    processes = [mp.Process(target=worker, args=(rank,)) for rank in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
    sys.exit(max(abs(p.exitcode or 0) for p in processes))
''')


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # an untied head; a head tied to the embedding
def test_engine_under_fsdp2_matches_one_process_and_split_reference_cache_is_identical(tmp_path, arch):
    script = tmp_path / "fsdp2_check.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run([sys.executable, str(script), arch, str(tmp_path)], capture_output=True, text=True,
                               env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["class"].startswith("FSDP") and result["head_class"].startswith("FSDP")  # really sharded
        assert result["logp_gap"] <= 1e-5, result
        assert result["grad_gap"] <= 1e-5 * max(1.0, result["grad_scale"]), result
        assert result["same_key"] and result["same_sha256"], result
