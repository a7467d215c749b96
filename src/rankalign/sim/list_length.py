"""The list-length study: does a longer ranked list, from the same annotation budget, train a better policy?

PRO (Song et al., "Preference Ranking Optimization for Human Alignment", AAAI 2024) reports that longer
rankings help. Here the question is asked in the tabular world, where the gold win rate and the KL are
exact: for each list length K (2, 4, 8 by default) the same annotation budget buys lists of K candidates
sampled from the reference policy, a population of simulated annotators ranks them, and each objective
is optimised exactly on the lists (:func:`rankalign.sim.tabular.optimise_policy`).

Budgets (``budget=``):

* ``"candidates"`` (default): ``budget`` candidate readings in total, so ``budget // K`` lists -- an
  annotator who ranks K responses has read K responses; longer lists mean fewer prompts.
* ``"lists"``: ``budget`` lists whatever K (one ranking is one judgment, as PRO counts them).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from .annotators import annotate_items, make_population
from .tabular import (
    TabularWorld,
    kl_to_reference,
    make_tabular_world,
    optimise_policy,
    policy_log_probs,
    records_to_tabular,
    tabular_items,
    win_rate,
)

DEFAULT_OBJECTIVES = ("pl_dpo", "lipo_lambda", "dpo")

# objectives whose weights depend on the current scores (non-smooth): Adam, not L-BFGS
_NON_SMOOTH = {"lipo_lambda"}


def sample_lists(world: TabularWorld, num_lists: int, k: int, rng: np.random.Generator
                 ) -> tuple[list[int], list[list[int]]]:
    """``num_lists`` (prompt, K distinct candidates) draws: prompt uniform, candidates from ``pi_ref``
    without replacement (successive sampling)."""
    ref = np.exp(policy_log_probs(world))
    prompts = rng.integers(world.num_prompts, size=num_lists)
    candidates = [rng.choice(world.num_candidates, size=k, replace=False, p=ref[p]).tolist() for p in prompts]
    return prompts.tolist(), candidates


def win_rate_at_kl(world: TabularWorld, theta: np.ndarray, target_kl: float, *, iterations: int = 100) -> float:
    """Exact gold win rate of the policy along ``theta``'s direction whose KL from ``pi_ref`` is ``target_kl``.

    The path ``theta_t = theta_ref + t (theta - theta_ref)``, t >= 0, is an exponential family through
    ``pi_ref``, on which KL(pi_t || pi_ref) increases with t (its derivative is t times a variance);
    bisection finds the t with the target KL. Comparing win rates at one KL separates *which direction*
    an objective learned from *how far* it moved, which at a fixed beta differs with the amount of data.
    """
    direction = np.asarray(theta, dtype=np.float64) - world.reference_theta
    if not np.any(direction):
        return 0.5
    low, high = 0.0, 1.0
    while kl_to_reference(world, world.reference_theta + high * direction) < target_kl and high < 1e6:
        high *= 2.0
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        if kl_to_reference(world, world.reference_theta + middle * direction) < target_kl:
            low = middle
        else:
            high = middle
    return win_rate(world, policy_log_probs(world, world.reference_theta + 0.5 * (low + high) * direction))


def run_list_length_study(*, ks: Sequence[int] = (2, 4, 8), objectives: Sequence[str] = DEFAULT_OBJECTIVES,
                          budget: int = 960, budget_unit: str = "candidates", seeds: Sequence[int] = range(5),
                          num_prompts: int = 64, num_candidates: int = 16, dim: int = 8, beta: float = 0.5,
                          temperature: float = 1.0, flip_rate: float = 0.0, adam_steps: int = 300,
                          progress=None) -> list[dict]:
    """Gold win rate (exact) and KL of each objective's optimum, by list length K, over ``seeds``.

    Worlds have ``num_prompts`` prompts with ``num_candidates`` candidates, features N(0, I_dim) and
    ``theta_ref``, ``w*`` ~ N(0, I / dim) (utilities and reference logits of unit scale). Each seed draws its own world, annotator population (two groups with slightly different utilities:
    the gold weights, and the gold weights plus noise of a quarter of their norm) and lists. Returns one
    row per (K, objective): ``k, objective, lists, budget, budget_unit, win_rate, win_rate_se, kl, kl_se,
    seconds`` and ``win_rate_at_kl`` (:func:`win_rate_at_kl` at the KL of the oracle
    ``theta_ref + w* / (beta T)``, the DPO population optimum for gold Bradley-Terry annotators), means over seeds, SE = sample standard deviation / sqrt(seeds)).
    """
    if budget_unit not in ("candidates", "lists"):
        raise ValueError(f"budget_unit must be 'candidates' or 'lists', got {budget_unit!r}")
    results: dict[tuple[int, str], dict[str, list[float]]] = {}
    for seed in seeds:
        world = make_tabular_world(num_prompts, num_candidates, dim, seed=seed, reference_scale=dim ** -0.5,
                                   gold_scale=dim ** -0.5)
        oracle_kl = kl_to_reference(world, world.reference_theta + world.gold_weights / (beta * temperature))
        rng = np.random.default_rng([seed, 1])
        offset = rng.standard_normal(dim) * 0.25 * np.linalg.norm(world.gold_weights) / np.sqrt(dim)
        population = make_population([("gold", 3, None), ("shifted", 2, world.gold_weights + offset)],
                                     choice="plackett_luce", temperature=temperature, flip_rate=flip_rate)
        for k in ks:
            num_lists = budget // k if budget_unit == "candidates" else budget
            list_rng = np.random.default_rng([seed, 2, k])
            prompts, candidates = sample_lists(world, num_lists, k, list_rng)
            records = annotate_items(population, tabular_items(world, prompts, candidates), list_rng,
                                     kind="ranking", gold_weights=world.gold_weights)
            data = records_to_tabular(world, records)
            for name in objectives:
                start = time.perf_counter()
                method = "adam" if name in _NON_SMOOTH else "lbfgs"
                fit = optimise_policy(world, data, name, beta=beta, method=method, max_iter=adam_steps if
                                      method == "adam" else 500)
                row = results.setdefault((k, name), {"win_rate": [], "kl": [], "seconds": [], "lists": [],
                                                     "win_rate_at_kl": []})
                row["win_rate_at_kl"].append(win_rate_at_kl(world, fit.theta, oracle_kl))
                row["win_rate"].append(win_rate(world, policy_log_probs(world, fit.theta)))
                row["kl"].append(kl_to_reference(world, fit.theta))
                row["seconds"].append(time.perf_counter() - start)
                row["lists"].append(num_lists)
                if progress is not None:
                    progress(seed=seed, k=k, objective=name)
    rows = []
    for (k, name), values in results.items():
        n = len(values["win_rate"])
        wr, kl, matched = (np.array(values[key]) for key in ("win_rate", "kl", "win_rate_at_kl"))
        rows.append({
            "k": k, "objective": name, "lists": int(values["lists"][0]), "budget": budget,
            "budget_unit": budget_unit, "seeds": n,
            "win_rate": float(wr.mean()), "win_rate_se": float(wr.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
            "kl": float(kl.mean()), "kl_se": float(kl.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
            "win_rate_at_kl": float(matched.mean()),
            "win_rate_at_kl_se": float(matched.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
            "seconds": float(np.mean(values["seconds"])),
        })
    rows.sort(key=lambda r: (list(objectives).index(r["objective"]), r["k"]))
    return rows


__all__ = ["DEFAULT_OBJECTIVES", "sample_lists", "win_rate_at_kl", "run_list_length_study"]
