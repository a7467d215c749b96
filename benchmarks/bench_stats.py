"""Benchmark of rankalign.stats against choix and scikit-learn, side by side in one run.

Cases (each ends with a ``RESULT {...}`` line; ratio > 1 means rankalign is better):

* ``bt_200x1M_vs_choix``: Bradley-Terry MLE, 200 items, 1,000,000 comparisons, against
  ``choix.ilsr_pairwise``; our time includes deduplication and standard errors. Log-likelihoods compared.
* ``bt_200x1M_vs_sklearn``: the same data against an arena-style ``LogisticRegression`` (no intercept,
  no penalty) fitted on the deduplicated counts (the peer's deduplication is *not* timed, ours is).
* ``rate_cli_1M_csv``: the whole ``rankalign rate FILE --json`` process on a 1,000,000-row CSV (Python
  start-up and reading included) against choix's fit alone.
* ``pl_100x100k_vs_choix``: Plackett-Luce MLE, 100,000 rankings of 4 out of 100 items, against
  ``choix.ilsr_rankings``.
* ``bootstrap_1000``: 1,000 bootstrap replicates of the 1,000,000-battle fit (``n_jobs=2``) against the
  30 s target.
* ``bt_10000x1M``: 10,000 items, 1,000,000 comparisons: fit time against a 10 s target, and peak memory
  (tracemalloc, numpy allocations) reported next to the input size.

Run: ``.venv/bin/python benchmarks/bench_stats.py`` (``--cases a,b`` to choose; needs ``rankalign[bench]``).
Timings on a shared machine are noisy: our side and scikit-learn take the best of ``--repeat`` runs;
choix runs once per case (it takes seconds), so its figure is, if anything, flattered by noise less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy.special import expit

from rankalign.stats import bootstrap, fit_bradley_terry, fit_plackett_luce


def best_time(function, repeat):
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return min(times), value


def result_line(case, peer, ours, unit, ratio, **extra):
    row = {"case": case, "peer": peer, "ours": ours, "unit": unit, "ratio": ratio}
    row.update(extra)
    print(f"{case:<24} peer {peer:>10.4g} {unit:<3} ours {ours:>10.4g} {unit:<3} ratio {ratio:>7.2f}  "
          + " ".join(f"{k}={v}" for k, v in extra.items()), flush=True)
    print("RESULT " + json.dumps(row), flush=True)


def simulate_pairs(n, m, seed):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=n)
    a = rng.integers(0, n, m)
    b = (a + rng.integers(1, n, m)) % n
    y = (rng.random(m) < expit(theta[a] - theta[b])).astype(np.float64)
    return a, b, y


def bt_log_likelihood(theta, a, b, y):
    d = theta[a] - theta[b]
    return float(np.sum(-np.logaddexp(0.0, -np.where(y == 1.0, d, -d))))


def case_bt(args, state):
    import choix

    a, b, y = simulate_pairs(200, 1_000_000, 0)
    state["pairs"] = (a, b, y)
    data = np.where(y[:, None] == 1.0, np.stack([a, b], 1), np.stack([b, a], 1))
    data_list = [tuple(row) for row in data.tolist()]
    peer_time, peer_theta = best_time(lambda: choix.ilsr_pairwise(200, data_list, alpha=0.0, tol=1e-8), 1)
    ours_time, ours = best_time(lambda: fit_bradley_terry(a, b, y, n_items=200), args.repeat)
    state["choix_bt_time"] = peer_time
    ll_peer = bt_log_likelihood(peer_theta, a, b, y)
    ll_ours = bt_log_likelihood(ours.ratings, a, b, y)
    result_line("bt_200x1M_vs_choix", peer_time, ours_time, "s", peer_time / ours_time,
                ll_ours=round(ll_ours, 6), ll_peer=round(ll_peer, 6),
                ll_rel_diff=abs(ll_ours - ll_peer) / abs(ll_peer))
    state["bt_fit"] = ours


def case_sklearn(args, state):
    from sklearn.linear_model import LogisticRegression

    a, b, y = state.get("pairs") or simulate_pairs(200, 1_000_000, 0)
    n = 200
    # arena-style: deduplicate (a, b, outcome), one design row per unique cell with a sample weight
    key = (a * n + b) * 2 + y.astype(np.int64)
    unique, counts = np.unique(key, return_counts=True)
    pair, outcome = unique // 2, unique % 2
    rows = len(unique)
    x = np.zeros((rows, n))
    x[np.arange(rows), pair // n] = 1.0
    x[np.arange(rows), pair % n] = -1.0
    model = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8, max_iter=1000)
    peer_time, _ = best_time(lambda: model.fit(x, outcome, sample_weight=counts), args.repeat)
    ll_peer = bt_log_likelihood(model.coef_[0], a, b, y)
    ours_time, ours = best_time(lambda: fit_bradley_terry(a, b, y, n_items=n), args.repeat)
    ll_ours = bt_log_likelihood(ours.ratings, a, b, y)
    result_line("bt_200x1M_vs_sklearn", peer_time, ours_time, "s", peer_time / ours_time,
                ll_rel_diff=abs(ll_ours - ll_peer) / abs(ll_peer))


def case_cli(args, state):
    a, b, y = state.get("pairs") or simulate_pairs(200, 1_000_000, 0)
    names = np.array([f"model-{i:03d}" for i in range(200)])
    winner = np.where(y == 1.0, a, b)
    loser = np.where(y == 1.0, b, a)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "battles.csv"
        with path.open("w") as stream:
            stream.write("winner,loser\n")
            stream.write("\n".join(f"{w},{lo}" for w, lo in zip(names[winner].tolist(), names[loser].tolist())))
            stream.write("\n")
        executable = Path(sys.executable).with_name("rankalign")
        command = [str(executable), "rate", str(path), "--json"]

        def run():
            completed = subprocess.run(command, capture_output=True, text=True, check=True)
            return json.loads(completed.stdout)

        ours_time, payload = best_time(run, args.repeat)
    peer_time = state.get("choix_bt_time")
    if peer_time is None:
        import choix

        data_list = [tuple(r) for r in np.stack([winner, loser], 1).tolist()]
        peer_time, _ = best_time(lambda: choix.ilsr_pairwise(200, data_list, alpha=0.0, tol=1e-8), 1)
    result_line("rate_cli_1M_csv", peer_time, ours_time, "s", peer_time / ours_time,
                items=len(payload["items"]))


def case_pl(args, state):
    import choix

    rng = np.random.default_rng(1)
    n, r = 100, 100_000
    theta = rng.normal(size=n)
    subsets = np.argsort(rng.random((r, n)), axis=1)[:, :4]
    utilities = theta[subsets] + rng.gumbel(size=(r, 4))
    rankings = np.take_along_axis(subsets, np.argsort(-utilities, axis=1), axis=1)
    peer_time, peer_theta = best_time(lambda: choix.ilsr_rankings(n, rankings, alpha=0.0, tol=1e-8), 1)
    ours_time, ours = best_time(lambda: fit_plackett_luce(rankings, n_items=n), args.repeat)

    def log_likelihood(values):
        t = values[rankings]
        return float(sum(np.sum(t[:, s] - np.log(np.exp(t[:, s:]).sum(axis=1))) for s in range(3)))

    ll_ours, ll_peer = log_likelihood(ours.ratings), log_likelihood(peer_theta)
    result_line("pl_100x100k_vs_choix", peer_time, ours_time, "s", peer_time / ours_time,
                ll_rel_diff=abs(ll_ours - ll_peer) / abs(ll_peer))


def case_bootstrap(args, state):
    fit = state.get("bt_fit")
    if fit is None:
        a, b, y = simulate_pairs(200, 1_000_000, 0)
        fit = fit_bradley_terry(a, b, y, n_items=200)
    ours_time, boot = best_time(lambda: bootstrap(fit, 1000, seed=0, n_jobs=args.jobs), 1)
    ratio_se = float(np.median(boot.se / fit.se))
    result_line("bootstrap_1000", 30.0, ours_time, "s", 30.0 / ours_time, peer_is="target",
                median_boot_se_over_wald_se=round(ratio_se, 3))


def case_many_items(args, state):
    a, b, y = simulate_pairs(10_000, 1_000_000, 2)
    tracemalloc.start()
    start = time.perf_counter()
    fit = fit_bradley_terry(a, b, y, n_items=10_000)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    input_mb = (a.nbytes + b.nbytes + y.nbytes) / 2**20
    result_line("bt_10000x1M", 10.0, elapsed, "s", 10.0 / elapsed, peer_is="target",
                peak_mb=round(peak / 2**20, 1), input_mb=round(input_mb, 1), iterations=fit.iterations)


# keyed by the case names the RESULT lines print (and the docstring lists)
CASES = {"bt_200x1M_vs_choix": case_bt, "bt_200x1M_vs_sklearn": case_sklearn, "rate_cli_1M_csv": case_cli,
         "pl_100x100k_vs_choix": case_pl, "bootstrap_1000": case_bootstrap, "bt_10000x1M": case_many_items}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs for our side")
    parser.add_argument("--jobs", type=int, default=2, help="processes for the bootstrap case")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    state: dict = {}
    names = [name.strip() for name in args.cases.split(",")]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    for name in names:
        CASES[name](args, state)


if __name__ == "__main__":
    main()
