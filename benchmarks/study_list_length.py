"""The list-length study (issue 6): gold win rate of listwise objectives vs list length K, same budget.

Tabular world, exact gold win rates and KLs (rankalign.sim.list_length). For K = 2, 4, 8 the same
annotation budget buys ranked lists of K reference samples, ranked by a simulated annotator population
(Plackett-Luce choice, two slightly disagreeing groups); PL-DPO, LiPO-lambda and DPO (all pairs of each
list) are optimised exactly (L-BFGS; LiPO-lambda, whose weights depend on the current ranking, by Adam).

Two budgets are reported: the same number of candidates read (lists x K constant) and the same number of
lists. The table shows the raw gold win rate against the reference and the KL at a fixed beta, and the
win rate at a matched KL (the KL of the oracle policy), which separates what was learned from how far
the policy moved.

    .venv/bin/python benchmarks/study_list_length.py [--seeds 8] [--budget 192] [--out study_list_length.csv]
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time

import torch

from rankalign._atomic import atomic_write_text
from rankalign.sim.list_length import DEFAULT_OBJECTIVES, run_list_length_study

COLUMNS = ["budget_unit", "budget", "k", "objective", "lists", "seeds", "win_rate", "win_rate_se", "kl", "kl_se",
           "win_rate_at_kl", "win_rate_at_kl_se", "seconds"]


def write_csv_atomically(path: str, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in ("objective", "K", "lists", "gold win rate ± SE", "KL", "win rate @ oracle KL ± SE"):
        table.add_column(name, justify="left" if name == "objective" else "right")
    for r in rows:
        table.add_row(r["objective"], str(r["k"]), str(r["lists"]),
                      f"{r['win_rate']:.3f} ± {r['win_rate_se']:.3f}", f"{r['kl']:.3f} ± {r['kl_se']:.3f}",
                      f"{r['win_rate_at_kl']:.3f} ± {r['win_rate_at_kl_se']:.3f}")
    Console(width=120).print(table)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--budget", type=int, default=192, help="candidates read (the 'lists' budget is budget/8)")
    parser.add_argument("--ks", default="2,4,8")
    parser.add_argument("--objectives", default=",".join(DEFAULT_OBJECTIVES))
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--out", default="study_list_length.csv")
    parser.add_argument("--quick", action="store_true", help="2 seeds, a small budget (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: threads only add contention
    seeds = range(2 if args.quick else args.seeds)
    budget = 64 if args.quick else args.budget
    ks = [int(k) for k in args.ks.split(",")]
    objectives = [o for o in args.objectives.split(",") if o]
    all_rows = []
    for unit, amount in (("candidates", budget), ("lists", max(1, budget // max(ks)))):
        start = time.perf_counter()
        rows = run_list_length_study(ks=ks, objectives=objectives, budget=amount, budget_unit=unit, seeds=seeds,
                                     beta=args.beta)
        title = (f"Same budget of {amount} {unit} read, {len(seeds)} seeds, beta={args.beta} "
                 f"({time.perf_counter() - start:.1f} s)")
        print_table(rows, title)
        all_rows.extend(rows)
    write_csv_atomically(args.out, all_rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
