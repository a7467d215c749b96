"""Simulation study: how many votes does active sampling save over uniform sampling?

World: ``n_items`` items with gold utilities u ~ N(0, spread^2); a crowd of ``rankalign.sim`` annotators
(Plackett-Luce / Bradley-Terry choice with temperature T on the gold utility, one drawn at random per
vote) answers each task the sampler picks, exactly as :func:`rankalign.sim.annotate` does for any
records. After every vote the arena's belief is refitted (:func:`rankalign.arena.sampling.bt_posterior`,
the one used by the server), and its ranking is compared with the gold ranking by Kendall's tau (rank
accuracy: 1 = the gold order, 0 = unrelated).

Reported per sampler: the mean Kendall tau against the number of votes over ``repeats`` independent
worlds (the same worlds for every sampler), and the number of votes at which the mean curve first reaches
each target level; the saving is ``1 - votes(sampler) / votes(uniform)``. Also the share of worlds in
which the belief's best item is the gold best (what a UCB match-maker, which plays the leaders most,
is built for).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from rankalign._atomic import atomic_write, atomic_write_text

from .sampling import bt_posterior, choose, vote_comparisons


def simulate_run(utilities, sampler: str, *, k: int, budget: int, population, rng, checkpoints,
                 prior_variance: float = 1.0, exploration: float = 1.0):
    """Kendall tau of the belief's ranking against ``utilities``, and whether its best item is the gold best
    (1.0 or 0.0), after each number of votes in ``checkpoints``: two arrays."""
    from rankalign.sim.annotators import annotate

    n = len(utilities)
    ids = [f"item-{i}" for i in range(n)]
    gold_weights = np.ones(1)
    pairs = ([], [], [])  # first, second, outcome of every pair the votes so far imply
    mean, cov = np.zeros(n), np.eye(n) * prior_variance
    taus, tops, wanted, stale = [], [], set(checkpoints), False
    for t in range(1, budget + 1):
        if sampler != "uniform" and stale:
            mean, cov = bt_posterior(n, *map(np.concatenate, pairs), prior_variance=prior_variance)
        chosen = choose(sampler, mean, cov, k, rng, exploration=exploration)
        annotator = population[int(rng.integers(len(population)))]
        record = annotate(annotator, None, [ids[i] for i in chosen], utilities[chosen][:, None], rng,
                          kind="ranking", gold_weights=gold_weights)
        for column, new in zip(pairs, vote_comparisons([(chosen, list(record.ranks))])):
            column.append(new)
        stale = True
        if t in wanted:
            if sampler == "uniform":
                mean, cov = bt_posterior(n, *map(np.concatenate, pairs), prior_variance=prior_variance)
            taus.append(float(kendalltau(mean, utilities).statistic))
            tops.append(float(np.argmax(mean) == np.argmax(utilities)))
    return np.asarray(taus), np.asarray(tops)


def votes_to_reach(checkpoints, curve, target):
    """First checkpoint where ``curve`` >= ``target`` (None if never)."""
    hits = np.flatnonzero(np.asarray(curve) >= target)
    return int(checkpoints[hits[0]]) if hits.size else None


def run_study(*, n_items=16, n_annotators=20, k=2, budget=400, repeats=30, spread=1.0, temperature=1.0,
              samplers=("info", "ucb", "uniform"), targets=(0.8, 0.9), seed=0, every=10, exploration=1.0,
              progress=None) -> dict:
    """Run every sampler on the same ``repeats`` worlds; return curves and the votes-to-target table."""
    from rankalign.sim.annotators import make_population

    population = make_population([("crowd", n_annotators, None)], choice="plackett_luce", temperature=temperature)
    checkpoints = list(range(every, budget + 1, every))
    curves, top_curves = {}, {}
    for sampler in samplers:
        runs, tops = [], []
        for repeat in range(repeats):
            world = np.random.default_rng([seed, repeat])
            utilities = world.normal(0.0, spread, n_items)
            rng = np.random.default_rng([seed, repeat, 1 + list(samplers).index(sampler)])
            tau, top = simulate_run(utilities, sampler, k=k, budget=budget, population=population, rng=rng,
                                    checkpoints=checkpoints, exploration=exploration)
            runs.append(tau)
            tops.append(top)
            if progress:
                progress(sampler, repeat)
        curves[sampler] = np.stack(runs)
        top_curves[sampler] = np.stack(tops).mean(axis=0)
    table = []
    for sampler in samplers:
        mean_curve = curves[sampler].mean(axis=0)
        row = {"sampler": sampler, "final_tau": float(mean_curve[-1]), "final_top1": float(top_curves[sampler][-1]),
               "final_tau_se": float(curves[sampler][:, -1].std(ddof=1) / math.sqrt(repeats)) if repeats > 1 else None}
        for target in targets:
            row[f"votes_tau_{target:g}"] = votes_to_reach(checkpoints, mean_curve, target)
        table.append(row)
    base = next((row for row in table if row["sampler"] == "uniform"), None)
    for row in table:
        for target in targets:
            mine, theirs = row[f"votes_tau_{target:g}"], None if base is None else base[f"votes_tau_{target:g}"]
            row[f"saving_tau_{target:g}"] = (1.0 - mine / theirs) if mine and theirs else None
    return {
        "settings": {"n_items": n_items, "n_annotators": n_annotators, "k": k, "budget": budget, "repeats": repeats,
                     "spread": spread, "temperature": temperature, "seed": seed, "targets": list(targets),
                     "exploration": exploration,
                     "annotator_choice": "plackett_luce"},
        "checkpoints": checkpoints,
        "curves": {s: c.mean(axis=0).tolist() for s, c in curves.items()},
        "curves_se": {s: (c.std(axis=0, ddof=1) / math.sqrt(repeats)).tolist() if repeats > 1 else None
                      for s, c in curves.items()},
        "top1": {s: c.tolist() for s, c in top_curves.items()},
        "table": table,
    }


def _fmt(value, pct=False):
    if value is None:
        return "-"
    return f"{100 * value:+.0f}%" if pct else str(value)


def table_lines(study) -> list[str]:
    """The votes-to-target table as Markdown lines."""
    targets = study["settings"]["targets"]
    head = ["sampler"] + [f"votes to tau>={t:g}" for t in targets] + [f"saving at {t:g}" for t in targets] + \
        [f"tau after {study['settings']['budget']}", "best item found"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in study["table"]:
        cells = [row["sampler"]] + [_fmt(row[f"votes_tau_{t:g}"]) for t in targets] + \
            [_fmt(row[f"saving_tau_{t:g}"], pct=True) for t in targets] + \
            [f"{row['final_tau']:.3f}" + (f" ± {row['final_tau_se']:.3f}" if row["final_tau_se"] else ""),
             f"{100 * row['final_top1']:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def print_table(study):
    s = study["settings"]
    print(f"{s['n_items']} items, {s['n_annotators']} simulated annotators (T={s['temperature']:g}), K={s['k']}, "
          f"{s['repeats']} worlds, mean Kendall tau with the gold ranking")
    print("\n".join(table_lines(study)))


def save_study(study, out_dir) -> list[Path]:
    """Write study.json, study.md (the table) and study.png (tau against votes), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "study.json", out / "study.md", out / "study.png"]
    atomic_write_text(paths[0], json.dumps(study, indent=1))
    atomic_write_text(paths[1], "\n".join(table_lines(study)) + "\n")
    figure, (axes, top_axes) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    x = np.asarray(study["checkpoints"])
    for sampler, curve in study["curves"].items():
        curve = np.asarray(curve)
        line, = axes.plot(x, curve, label=sampler)
        if study["curves_se"][sampler] is not None:
            se = np.asarray(study["curves_se"][sampler])
            axes.fill_between(x, curve - 1.96 * se, curve + 1.96 * se, alpha=0.2, color=line.get_color())
        top_axes.plot(x, study["top1"][sampler], label=sampler, color=line.get_color())
    for target in study["settings"]["targets"]:
        axes.axhline(target, color="0.6", linestyle=":", linewidth=1)
    s = study["settings"]
    axes.set_xlabel("votes")
    axes.set_ylabel("Kendall tau with the gold ranking")
    axes.set_title(f"{s['n_items']} items, K={s['k']}, {s['repeats']} simulated worlds")
    top_axes.set_xlabel("votes")
    top_axes.set_ylabel("share of worlds where the top item is right")
    top_axes.set_ylim(0, 1.02)
    for ax in (axes, top_axes):
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    atomic_write(paths[2], lambda stream: figure.savefig(stream, format="png", dpi=110), binary=True)
    plt.close(figure)
    return paths
