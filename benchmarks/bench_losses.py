"""Listwise objectives against pairwise DPO on the same number of pairs (issue 4, "Performance").

Each listwise objective runs forward + backward on lists of B = 4,096 prompts x K = 8 candidates
(``policy_logps``/``ref_logps`` ``[B, K]``, a random strict ranking per list, lengths and grades where
the objective uses them). The peer is pairwise DPO (``rankalign.losses.get("dpo")``) on the pairs those
lists expand to, already materialised as ``[P, 2]`` tensors:

* ``all_pairs``: P = B K (K - 1) / 2 = 114,688 pairs (every ordered pair of each list);
* ``best_vs_rest``: P = B (K - 1) = 28,672 pairs (the best candidate against each of the others).

Two peers per expansion: ``dpo_*`` is the registered ``dpo`` (through the shared pair decomposition, as
every pairwise objective runs in rankalign), ``bare_dpo_*`` is the bare formula
``-logsigmoid(beta * h)`` on the two columns (what TRL's sigmoid loss computes), the lower bound for any
pairwise implementation.

The peer's time does not include expanding the lists into pairs; the listwise side's time includes all of
its own index work (rank masks, pair gathers, LiPO's positions). Figure: median milliseconds per
forward + backward over ``--repeats`` runs after ``--warmup`` runs, measured on the CPU as this
process's CPU time with one torch thread (``--clock cpu --threads 1``, robust to other processes' load on
a shared machine; ``--clock wall`` for elapsed time) and as elapsed time on a GPU; within each repeat the objective
and its two DPO peers run in turn, so background load hits them alike. Ratio = peer time / ours (> 1: the
listwise objective is faster than pairwise DPO on the same pairs). "Comparable" in the issue means a
ratio not far below 1.

Run: ``.venv/bin/python benchmarks/bench_losses.py [--batch 4096] [--k 8] [--device cpu|cuda]``.
Ends with one ``RESULT {...}`` line per (objective, pair expansion) case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rankalign.losses import get

LISTWISE = ("pl_dpo", "pro", "lipo_lambda", "all_pairs_dpo", "listnet", "best_vs_rest")


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(cases: list[tuple], device: torch.device, warmup: int, repeats: int,
                     clock=time.perf_counter) -> list[float]:
    """Median wall time (ms) of ``fn(*inputs).sum().backward()`` for each ``(fn, inputs)`` case.

    The cases run in turn within each repeat, so load from other processes hits them alike.
    """
    times: list[list[float]] = [[] for _ in cases]
    for step in range(warmup + repeats):
        for index, (fn, inputs) in enumerate(cases):
            for tensor in inputs:
                tensor.grad = None
            synchronise(device)
            start = clock()
            fn(*inputs).sum().backward()
            synchronise(device)
            if step >= warmup:
                times[index].append((clock() - start) * 1000.0)
    return [statistics.median(t) for t in times]


def bare_dpo(pair_policy: torch.Tensor, pair_ref: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """DPO on ``[P, 2]`` (chosen, rejected) columns written inline, as TRL's ``loss_type="sigmoid"`` does:
    no rank handling at all, the cheapest possible pairwise peer."""
    h = (pair_policy[:, 0] - pair_ref[:, 0]) - (pair_policy[:, 1] - pair_ref[:, 1])
    return -torch.nn.functional.logsigmoid(beta * h)


def make_lists(batch: int, k: int, device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    policy = (torch.randn(batch, k, generator=generator) * 5 - 50).to(device).requires_grad_(True)
    ref = (torch.randn(batch, k, generator=generator) * 5 - 50).to(device)
    ranks = torch.argsort(torch.rand(batch, k, generator=generator), dim=1).to(device)
    lengths = torch.randint(10, 200, (batch, k), generator=generator).float().to(device)
    grades = (k - 1 - ranks).float() / (k - 1)
    return policy, ref, ranks, lengths, grades


def make_pairs(policy: torch.Tensor, ref: torch.Tensor, ranks: torch.Tensor, expansion: str):
    """The ``[P, 2]`` (winner, loser) tensors of the lists' pairs, as a pairwise pipeline would feed DPO."""
    k = policy.shape[1]
    order = torch.argsort(ranks, dim=1)  # column of the candidate at each position, best first
    if expansion == "all_pairs":
        first, second = torch.triu_indices(k, k, offset=1, device=policy.device)
    else:
        second = torch.arange(1, k, device=policy.device)
        first = torch.zeros_like(second)
    winner, loser = order[:, first], order[:, second]
    with torch.no_grad():
        pair_policy = torch.stack([policy.gather(1, winner), policy.gather(1, loser)], -1).reshape(-1, 2)
        pair_ref = torch.stack([ref.gather(1, winner), ref.gather(1, loser)], -1).reshape(-1, 2)
    return pair_policy.clone().requires_grad_(True), pair_ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--objectives", nargs="*", default=list(LISTWISE))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None,
                        help="cpu: this process's CPU time (default on the CPU: robust to other processes' "
                             "load); wall: elapsed time (default on a GPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    clock_name = args.clock or ("cpu" if device.type == "cpu" else "wall")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    batch, k = args.batch, args.k

    policy, ref, ranks, lengths, grades = make_lists(batch, k, device)
    dpo = get("dpo")
    peers = {}
    for expansion in ("all_pairs", "best_vs_rest"):
        pair_policy, pair_ref = make_pairs(policy, ref, ranks, expansion)
        peers[f"dpo_{expansion}"] = (lambda p, r: dpo(p, r, beta=0.1), [pair_policy, pair_ref])
        peers[f"bare_dpo_{expansion}"] = (bare_dpo, [pair_policy, pair_ref])

    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"clock={clock_name} B={batch} K={k}")
    print(f"{'case':<40} {'pairs':>8} {'DPO ms':>9} {'ours ms':>9} {'ratio':>7}")
    results = []
    for name in args.objectives:
        objective = get(name)
        extra = {"lengths": lengths, "grades": grades} if name == "pro" else {}
        ours_case = (lambda p, r, fn=objective, kw=extra: fn(p, r, ranks=ranks, **kw), [policy, ref])
        ours, *peer_times = time_interleaved([ours_case, *peers.values()], device, args.warmup, args.repeats,
                                                clock)
        for (expansion, (_, inputs)), peer in zip(peers.items(), peer_times):
            case = f"{name}_vs_{expansion}"
            ratio = peer / ours
            print(f"{case:<40} {inputs[0].shape[0]:>8} {peer:>9.2f} {ours:>9.2f} {ratio:>7.2f}")
            results.append({"case": case, "peer": round(peer, 3), "ours": round(ours, 3), "unit": "ms",
                            "ratio": round(ratio, 3)})
    for result in results:
        print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
