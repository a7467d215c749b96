"""Annotator studies on simulated item comparisons with a known truth (the goals of the annotator models).

Three studies, each writing its data as JSONL records (``candidates``, ``ranks``, ``annotator``; the true
group or flip rate in ``meta``) that the command line reads:

* ``groups``: two equal groups of annotators with opposite tastes (group B's item strengths are group A's
  negated). Fits ``rankalign rate FILE --by-annotator --groups auto`` and reports the Rand index of the
  recovered groups against the true ones, and how flat the pooled fit is.
* ``flips``: annotators who flip their judgment with known rates from 0 to 0.4. Fits the flip model
  (``rankalign annotators FILE``) and reports the largest error of the estimated rates, and the rating
  error (RMSE against the true strengths, both centred) of plain Bradley-Terry, reliability-weighted
  Bradley-Terry (``rankalign rate FILE --weight-by-reliability``) and the joint flip-model ratings, over
  several seeds.

The timing of ``rankalign rate FILE --by-annotator --groups auto`` on 1,000 annotators x 50 judgments is
``benchmarks/bench_annotators.py``.

Run::

    python examples/annotator_study.py groups --out groups.jsonl
    python examples/annotator_study.py flips --out flips.jsonl
    rankalign rate groups.jsonl --by-annotator --groups auto
    rankalign annotators flips.jsonl --plot flips.png

Each study ends with a ``RESULT {...}`` line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.special import expit

from rankalign.data import RankedList, write
from rankalign.stats import annotators as A


def simulate(strengths_of, flip_rates, judgments, rng, *, n_items):
    """Pair judgments: annotator u compares random pairs of items under Bradley-Terry with their own
    strengths ``strengths_of[u]`` and flips each answer with probability ``flip_rates[u]``."""
    records = []
    for u, (strengths, flip) in enumerate(zip(strengths_of, flip_rates)):
        for _ in range(judgments):
            i, j = rng.choice(n_items, size=2, replace=False)
            first_wins = rng.random() < expit(strengths[i] - strengths[j])
            if rng.random() < flip:
                first_wins = not first_wins
            records.append((u, int(i), int(j), bool(first_wins)))
    return records


def to_records(raw, meta_of):
    return [RankedList(candidates=[f"item{i:02d}", f"item{j:02d}"], ranks=[0, 1] if first_wins else [1, 0],
                       annotator=f"annotator{u:04d}", meta=meta_of(u)) for u, i, j, first_wins in raw]


def opposite_groups(n_annotators=60, judgments=40, n_items=12, spread=3.0, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(-spread / 2, spread / 2, n_items)
    truth = np.arange(n_annotators) % 2
    raw = simulate([base if g == 0 else -base for g in truth], np.zeros(n_annotators), judgments, rng, n_items=n_items)
    return to_records(raw, lambda u: {"group": int(truth[u])}), truth


def study_groups(args):
    records, truth = opposite_groups(seed=args.seed)
    write(records, args.out)
    data = A.annotated_rankings(records)
    started = time.perf_counter()
    mixture = A.choose_groups(data, seed=args.seed)
    seconds = time.perf_counter() - started
    pooled = A.fit_annotator_mixture(data, 1).groups[0]
    true_of = {f"annotator{u:04d}": g for u, g in enumerate(truth)}
    rand = A.rand_index(mixture.assignment, [true_of[a] for a in data.annotators])
    base = np.linspace(-1.5, 1.5, 12)
    true_a = dict(zip([f"item{i:02d}" for i in range(12)], base))
    print(f"{len(data.annotators)} annotators, {len(data)} judgments; BIC per G: "
          + ", ".join(f"{k}: {v:.1f}" for k, v in mixture.selection["bic"].items()))
    print(f"groups chosen: {len(mixture.groups)}; Rand index {rand:.4f}; fit took {seconds:.2f} s")
    print(f"pooled fit: max |rating| {np.abs(pooled.ratings).max():.3f} (true group ratings span +-1.5)")
    for g, result in enumerate(mixture.groups):
        corr = np.corrcoef(result.ratings, [true_a[i] for i in result.items])[0, 1]
        print(f"group {g}: {int((mixture.assignment == g).sum())} annotators, correlation with group A's "
              f"strengths {corr:+.3f}")
    print("RESULT " + json.dumps({"case": "opposite_groups", "annotators": len(data.annotators),
                                  "groups": len(mixture.groups), "rand_index": rand,
                                  "pooled_max_abs_rating": float(np.abs(pooled.ratings).max())}))


def flip_population(n_annotators=9, judgments=2000, n_items=12, spread=6.0, seed=0):
    rng = np.random.default_rng(seed)
    strengths = np.linspace(-spread / 2, spread / 2, n_items)
    flips = np.linspace(0.0, 0.4, n_annotators)
    raw = simulate([strengths] * n_annotators, flips, judgments, rng, n_items=n_items)
    return to_records(raw, lambda u: {"flip_rate": float(flips[u])}), flips, strengths


def _rmse(result, truth_of):
    estimate = np.asarray(result.ratings)
    truth = np.array([truth_of[i] for i in result.items])
    return float(np.sqrt(np.mean(((estimate - estimate.mean()) - (truth - truth.mean())) ** 2)))


def study_flips(args):
    from rankalign.stats._sufficient import pair_counts
    from rankalign.stats.pairwise import fit_pairwise

    rows = []
    for seed in range(args.seeds):
        records, flips, strengths = flip_population(seed=args.seed + seed)
        if seed == 0:
            write(records, args.out)
        data = A.annotated_rankings(records)
        reliability = A.fit_annotator_reliability(data)
        estimated = dict(zip(reliability.annotators, reliability.flip_rate))
        true_flip = {f"annotator{u:04d}": f for u, f in enumerate(flips)}
        errors = np.array([estimated[a] - true_flip[a] for a in reliability.annotators])
        truth_of = {f"item{i:02d}": s for i, s in enumerate(strengths)}
        pairs = [(r[0], r[1]) for r in data.rankings]
        first = np.array([p[0] for p in pairs])
        second = np.array([p[1] for p in pairs])
        plain = fit_pairwise("bradley-terry", pair_counts(first, second, np.ones(len(pairs)), data.weight,
                                                          n_items=len(data.items)), items=data.items)
        weights = data.weight * reliability.weights[data.annotator]
        weighted = fit_pairwise("bradley-terry", pair_counts(first, second, np.ones(len(pairs)), weights,
                                                             n_items=len(data.items)), items=data.items)
        rows.append({"seed": args.seed + seed, "max_abs_flip_error": float(np.abs(errors).max()),
                     "rmse_plain_bt": _rmse(plain, truth_of), "rmse_weighted_bt": _rmse(weighted, truth_of),
                     "rmse_flip_model": _rmse(reliability.ratings, truth_of)})
        print(f"seed {args.seed + seed}: max |flip error| {rows[-1]['max_abs_flip_error']:.4f}; rating RMSE plain BT "
              f"{rows[-1]['rmse_plain_bt']:.4f}, reliability-weighted BT {rows[-1]['rmse_weighted_bt']:.4f}, "
              f"flip model {rows[-1]['rmse_flip_model']:.4f}")
        if seed == 0:
            print("true -> estimated flip rates: " + ", ".join(
                f"{true_flip[a]:.3f}->{estimated[a]:.3f}" for a in sorted(true_flip)))
    plain = np.array([r["rmse_plain_bt"] for r in rows])
    weighted = np.array([r["rmse_weighted_bt"] for r in rows])
    diff = plain - weighted
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    print(f"over {len(rows)} seeds: worst |flip error| {max(r['max_abs_flip_error'] for r in rows):.4f}; "
          f"RMSE plain {plain.mean():.4f} vs weighted {weighted.mean():.4f} (reduction {diff.mean():.4f} +- {se:.4f} SE; "
          f"weighted better in {int((diff > 0).sum())}/{len(diff)} seeds)")
    print("RESULT " + json.dumps({"case": "flip_rates", "seeds": len(rows),
                                  "worst_abs_flip_error": max(r["max_abs_flip_error"] for r in rows),
                                  "rmse_plain_bt": float(plain.mean()), "rmse_weighted_bt": float(weighted.mean()),
                                  "rmse_flip_model": float(np.mean([r["rmse_flip_model"] for r in rows]))}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", choices=["groups", "flips"])
    parser.add_argument("--out", type=Path, default=None, help="JSONL file for the simulated records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=10, help="flips: repetitions with different seeds")
    args = parser.parse_args(argv)
    args.out = args.out or Path("runs") / "annotators" / f"{args.study}.jsonl"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    {"groups": study_groups, "flips": study_flips}[args.study](args)


if __name__ == "__main__":
    main()
