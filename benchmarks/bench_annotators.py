"""Benchmark of ``rankalign rate FILE --by-annotator --groups auto`` against the 60 s target.

Case ``by_annotator_auto_1000x50``: 1,000 simulated annotators x 50 pair judgments over 20 items (JSONL
records with an ``annotator`` field), a 20 % minority with different item strengths. The whole command runs
in a subprocess (Python start-up, reading 50,000 records, EM mixtures for G = 1, 2, ... with 4 restarts
each until BIC rises twice, per-group leaderboards with Wald CIs, JSON output). There is no peer library
with an annotator-mixture rating model, so the figure is compared with the target: ratio = 60 s / ours
(> 1: faster than the target). The Rand index of the recovered groups against the simulated ones is
printed beside it.

Run: ``.venv/bin/python benchmarks/bench_annotators.py [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.special import expit

from rankalign.data import RankedList, write
from rankalign.stats.annotators import rand_index

TARGET_SECONDS = 60.0


def make_records(n_annotators=1000, judgments=50, n_items=20, seed=0):
    rng = np.random.default_rng(seed)
    majority, minority = rng.standard_normal(n_items), rng.standard_normal(n_items)
    truth = (np.arange(n_annotators) % 5 == 0).astype(int)   # every fifth annotator: the 20 % minority
    records = []
    for u in range(n_annotators):
        strengths = minority if truth[u] else majority
        pairs = np.array([rng.choice(n_items, size=2, replace=False) for _ in range(judgments)])
        first_wins = rng.random(judgments) < expit(strengths[pairs[:, 0]] - strengths[pairs[:, 1]])
        for (i, j), win in zip(pairs.tolist(), first_wins):
            records.append(RankedList(candidates=[f"item{i:02d}", f"item{j:02d}"], ranks=[0, 1] if win else [1, 0],
                                      annotator=f"annotator{u:04d}"))
    return records, {f"annotator{u:04d}": int(g) for u, g in enumerate(truth)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSONL (default: a temp dir)")
    args = parser.parse_args(argv)
    records, truth = make_records()
    with tempfile.TemporaryDirectory() as folder:
        path = args.out or Path(folder) / "annotators_1000x50.jsonl"
        write(records, path)
        command = [sys.executable, "-c", "from rankalign.cli import main; main()", "rate", str(path),
                   "--by-annotator", "--groups", "auto", "--json"]
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - started
    out = json.loads(completed.stdout)
    rand = rand_index([r["group"] for r in out["annotators"]], [truth[r["annotator"]] for r in out["annotators"]])
    print(f"rankalign rate FILE --by-annotator --groups auto --json: {seconds:.1f} s for {len(truth)} annotators x 50 "
          f"judgments; {out['n_groups']} groups (BIC {out['selection']['bic']}), Rand index {rand:.4f}")
    print("RESULT " + json.dumps({"case": "by_annotator_auto_1000x50", "peer": TARGET_SECONDS, "ours": round(seconds, 2),
                                  "unit": "s (peer = target)", "ratio": round(TARGET_SECONDS / seconds, 2),
                                  "groups": out["n_groups"], "rand_index": rand}))


if __name__ == "__main__":
    main()
