"""Online against offline Plackett-Luce DPO in the demo's text world, from one budget of judged samples.

Issue 13's goal for the demo: the best on-policy row's gold win rate should beat offline Plackett-Luce DPO
by more than 2 SE at a KL no larger than DPO's (pairs) row. This study runs the demo's state once (seed 0,
the reference policy trained by SFT, 192 lists of K = 4 ranked by the simulated annotator population),
then the offline Plackett-Luce DPO and DPO (pairs) rows and a set of online Plackett-Luce DPO variants,
each from the same 192 judged groups and judged by the same population:

* ``online``: the demo's first online row (3 rounds of 64 lists, the offline row's beta, learning rate and
  epochs);
* ``refresh``: the reference becomes the policy each round (iterative DPO);
* ``6 rounds``: 6 rounds of 32 lists; ``6 epochs``: 6 epochs per round; ``lr 4e-4``;
* ``replay``: each round trains on every round's lists so far (``OnlineConfig.replay``); with 6 rounds,
  and with 1, 2 or 3 epochs a round (1: about the offline rows' optimiser steps);
* ``6 rounds, 6 epochs``;
* ``K = 8, replay, 6 rounds``: lists of 8 samples, half as many (the same 768 judged samples);
* online DPO (all ordered pairs of each judged list): as the demo's row; with ``replay`` over 6 rounds,
  over 8 rounds, over 6 rounds with a learning rate of 4e-4 or 6 epochs per round, and with K = 8.
* ``beta 0.2`` / ``beta 0.3`` / ``beta 0.5``: the online rows' DPO beta (``DemoSettings.online_beta``; the
  offline rows keep 0.1), with ``replay``; online DPO with ``replay`` over 6 rounds at beta 0.3 is the demo's
  second online row.
* GRPO and RLOO (the demo's rows, 24 steps of 8 groups of K = 4) at learning rates 3e-4 and 1e-3 (the
  demo's: 1e-4).
* ``RM judge``: online PL-DPO (3 rounds; ``replay`` over 6 rounds; K = 8 with ``replay``), online DPO
  (``replay``, 6 rounds), GRPO and RLOO judged by a reward model fitted on the 192 annotated lists
  (:func:`rankalign.sim.demo.fit_reward_judge`) instead of the annotators: no human labels beyond the
  offline rows'.

Prints one row per policy (gold win rate against the reference's samples ± SE over prompts, KL(pi || pi_ref)
± SE, mean length, training seconds, and its win rate minus offline PL-DPO's paired by prompt ± the SE of
that difference, :func:`rankalign.eval.paired_win_rate_difference`) and ``RESULT`` lines:
``online_minus_offline`` is the best online variant's win rate minus offline PL-DPO's, among the variants
whose KL is at most the DPO (pairs) row's, in units of their combined SE (``hypot`` of the two rows' SEs,
as if the rows were independent) and of the paired SE (both rows are judged on the same prompts against
the same reference samples, so the prompts' difficulty is shared). Deterministic for a seed (one thread);
about 12 minutes here.

``--eval-samples N`` sets the samples per prompt and policy behind each win rate and KL (the demo's 64 by
default; the tables in the README before 2026-12-01 21:00 used 16). ``--offline-k 8`` gives the offline rows lists of 8 (half as many, the same judged samples), so that they
and the online rows judge lists of one size; ``--variants`` runs a subset of the online rows.

Run: ``.venv/bin/python benchmarks/study_online.py [--seed 0] [--quick] [--offline-k 8] [--eval-samples 64] [--variants 'pl_dpo (K = 8;beta 0.3)']``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

VARIANTS = (  # (objective, label, DemoSettings overrides)
    ("pl_dpo", "online", {}),
    ("pl_dpo", "refresh", {"online_refresh_reference": True}),
    ("pl_dpo", "6 rounds", {"online_rounds": 6}),
    ("pl_dpo", "6 epochs", {"online_epochs": 6.0}),
    ("pl_dpo", "lr 4e-4", {"online_learning_rate": 4e-4}),
    ("pl_dpo", "replay", {"online_replay": True}),
    ("pl_dpo", "replay, 6 rounds", {"online_replay": True, "online_rounds": 6}),
    ("pl_dpo", "6 rounds, 6 epochs", {"online_rounds": 6, "online_epochs": 6.0}),
    ("pl_dpo", "K = 8, replay, 6 rounds", {"online_k": 8, "online_replay": True, "online_rounds": 6}),
    # replay with 1 epoch per round: about as many optimiser steps as the offline rows' 3 epochs (84 against 72)
    ("pl_dpo", "replay, 6 rounds, 1 epoch", {"online_replay": True, "online_rounds": 6, "online_epochs": 1.0}),
    ("pl_dpo", "replay, 6 rounds, 2 epochs", {"online_replay": True, "online_rounds": 6, "online_epochs": 2.0}),
    ("pl_dpo", "K = 8, replay, 6 rounds, 1 epoch",
     {"online_k": 8, "online_replay": True, "online_rounds": 6, "online_epochs": 1.0}),
    ("dpo", "online", {}),
    ("dpo", "replay, 6 rounds", {"online_replay": True, "online_rounds": 6}),
    ("dpo", "replay, 8 rounds", {"online_replay": True, "online_rounds": 8}),
    ("dpo", "replay, 6 rounds, lr 4e-4", {"online_replay": True, "online_rounds": 6, "online_learning_rate": 4e-4}),
    ("dpo", "replay, 6 rounds, 6 epochs", {"online_replay": True, "online_rounds": 6, "online_epochs": 6.0}),
    ("dpo", "K = 8, replay, 6 rounds", {"online_k": 8, "online_replay": True, "online_rounds": 6}),
    ("dpo", "replay, 6 rounds, 1 epoch", {"online_replay": True, "online_rounds": 6, "online_epochs": 1.0}),
    ("dpo", "replay, 6 rounds, 2 epochs", {"online_replay": True, "online_rounds": 6, "online_epochs": 2.0}),
    ("dpo", "K = 8, replay, 6 rounds, 2 epochs",
     {"online_k": 8, "online_replay": True, "online_rounds": 6, "online_epochs": 2.0}),
    # a larger beta for the online rows: a tighter hold on the reference (the offline rows keep 0.1)
    ("pl_dpo", "replay, 6 rounds, 2 epochs, beta 0.2",
     {"online_replay": True, "online_rounds": 6, "online_epochs": 2.0, "online_beta": 0.2}),
    ("pl_dpo", "replay, 6 rounds, beta 0.3", {"online_replay": True, "online_rounds": 6, "online_beta": 0.3}),
    ("dpo", "replay, 6 rounds, 2 epochs, beta 0.2",
     {"online_replay": True, "online_rounds": 6, "online_epochs": 2.0, "online_beta": 0.2}),
    ("dpo", "replay, 6 rounds, beta 0.3", {"online_replay": True, "online_rounds": 6, "online_beta": 0.3}),
    ("dpo", "replay, 8 rounds, beta 0.3", {"online_replay": True, "online_rounds": 8, "online_beta": 0.3}),
    ("dpo", "replay, 7 rounds, beta 0.3", {"online_replay": True, "online_rounds": 7, "online_beta": 0.3}),
    ("dpo", "replay, 8 rounds, beta 0.4", {"online_replay": True, "online_rounds": 8, "online_beta": 0.4}),
    ("dpo", "replay, 6 rounds, beta 0.5", {"online_replay": True, "online_rounds": 6, "online_beta": 0.5}),
    ("dpo", "replay, 8 rounds, beta 0.5", {"online_replay": True, "online_rounds": 8, "online_beta": 0.5}),
    ("grpo", "lr 3e-4", {"pg_learning_rate": 3e-4}),
    ("grpo", "lr 1e-3", {"pg_learning_rate": 1e-3}),
    ("rloo", "lr 3e-4", {"pg_learning_rate": 3e-4}),
    ("rloo", "lr 1e-3", {"pg_learning_rate": 1e-3}),
    # judged by a reward model fitted on the 192 annotated lists (no human labels beyond the offline rows')
    ("pl_dpo", "RM judge", {"online_judge": "reward_model"}),
    ("pl_dpo", "RM judge, replay, 6 rounds", {"online_judge": "reward_model", "online_replay": True, "online_rounds": 6}),
    ("pl_dpo", "RM judge, K = 8, replay, 6 rounds",
     {"online_judge": "reward_model", "online_k": 8, "online_replay": True, "online_rounds": 6}),
    ("dpo", "RM judge, replay, 6 rounds", {"online_judge": "reward_model", "online_replay": True, "online_rounds": 6}),
    ("grpo", "RM judge", {"online_judge": "reward_model"}),
    ("rloo", "RM judge", {"online_judge": "reward_model"}),
)


def main(argv=None) -> None:
    import torch
    from rich.console import Console

    from rankalign import eval as evaluation
    from rankalign.sim import demo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke sizes (seconds; the numbers mean little)")
    parser.add_argument("--offline-k", type=int, default=None,
                        help="the offline rows judge lists of this size (default: the demo's 4); the lists per "
                             "prompt shrink so that the judged samples stay the same, and the online rows without "
                             "a K of their own judge lists of this size too")
    parser.add_argument("--variants", default=None,
                        help="run only the online variants whose name, as 'pl_dpo (replay, 6 rounds)', contains one "
                             "of these ';'-separated strings (labels have commas in them; default: all)")
    parser.add_argument("--eval-samples", type=int, default=None,
                        help="samples per prompt per policy for win rate and KL (default: the demo's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    console = Console(stderr=True)
    settings = demo.DemoSettings.quick(args.seed) if args.quick else demo.DemoSettings(seed=args.seed)
    if args.eval_samples is not None:
        settings = dataclasses.replace(settings, eval_samples=args.eval_samples)
    if args.offline_k is not None:
        samples = settings.rounds * settings.k
        if args.offline_k < 2 or samples % args.offline_k:
            parser.error(f"--offline-k must be at least 2 and divide the {samples} judged samples per prompt")
        settings = dataclasses.replace(settings, k=args.offline_k, rounds=samples // args.offline_k)
    variants = VARIANTS
    if args.variants:
        wanted = [w.strip() for w in args.variants.split(";") if w.strip()]
        variants = [v for v in VARIANTS if any(w in f"{v[0]} ({v[1]})" for w in wanted)]
        if not variants:
            parser.error(f"no variant matches {args.variants!r}")
    with tempfile.TemporaryDirectory(prefix="study-online-") as out_dir:
        state = demo.DemoState(out_dir=out_dir, settings=settings, console=console, progress=False)
        state.started = time.perf_counter()
        demo.train_reference_stage(state)
        demo.annotate_stage(state)
        evaluate = lambda model, name, wall: demo.evaluate_demo_policy(state, model, name, wall)  # noqa: E731
        rows = []
        with tempfile.TemporaryDirectory(dir=out_dir) as runs:
            rewards = {}
            for name, objective, form in demo.METHODS[:2]:  # dpo (pairs), pl_dpo (lists)
                rows.append((name, demo.offline_row(state, runs, name, objective, form)))
                rewards[name] = state.all_rewards[name]
            for objective, label, overrides in variants:
                variant = dataclasses.replace(settings, **overrides)
                console.print(f"» online {objective}: {label}")
                entry = demo.online_stage(state.reference, state.tokenizer, state.world, state.population,
                                          state.prompts, len(state.train_lists), variant, evaluate,
                                          os.path.join(runs, f"v{len(rows)}"), console, False,
                                          methods=((f"online {objective} ({label})", objective),),
                                          judge_lists=state.train_lists)[0]
                rows.append((entry["name"], entry["row"]))
                rewards[entry["name"]] = entry["rewards"]
                state.rows.append(entry["row"])
                state.online_names.append(entry["name"])
                state.all_rewards[entry["name"]] = entry["rewards"]
    # each online variant against offline PL-DPO as the demo reports it (combined and paired SE, KL bound)
    comparison = {c["method"]: c for c in demo.online_versus_offline(state)}
    paired = {name: c["paired"] for name, c in comparison.items()}
    paired["dpo (pairs)"] = evaluation.paired_win_rate_difference(rewards["dpo (pairs)"], rewards["pl_dpo (lists)"],
                                                                  state.reference_rewards)
    print(f"{'policy':<40} {'gold win rate':>16} {'KL':>14} {'words':>6} {'train s':>8} {'vs PL-DPO, paired':>18}")
    for name, row in rows:
        win, kl = row["gold win rate"], row["KL"]
        versus = f"{paired[name][0]:+.3f} ± {paired[name][1]:.3f}" if name in paired else ""
        print(f"{name:<40} {win[0]:>8.3f} ± {win[1]:.3f} {kl[0]:>7.2f} ± {kl[1]:.2f} {row['words']:>6.1f} "
              f"{row['train s']:>8.1f} {versus:>18}")
    by_name = dict(rows)
    dpo, offline = by_name["dpo (pairs)"], by_name["pl_dpo (lists)"]
    allowed = [(name, row) for name, row in rows if name in comparison and comparison[name]["KL <= dpo (pairs)"]]
    if not allowed:
        print(f"no online variant has a KL at most the DPO (pairs) row's {dpo['KL'][0]:.2f}")
        print("RESULT " + json.dumps({"case": "online_minus_offline", "best": None,
                                      "offline": round(offline["gold win rate"][0], 4),
                                      "kl_dpo_pairs": round(dpo["KL"][0], 2)}))
        return
    best_name, best = max(allowed, key=lambda item: item[1]["gold win rate"][0])
    versus = comparison[best_name]
    gap, paired_gap, paired_se = versus["vs pl_dpo (lists)"][0], *versus["paired"]

    def rounded(value):  # NaN (a zero SE, only at smoke sizes) -> null
        return round(value, 2) if math.isfinite(value) else None

    print(f"best online variant at KL <= {dpo['KL'][0]:.2f} (DPO pairs): {best_name}, "
          f"{gap:+.3f} against offline PL-DPO = {versus['in combined SE']:+.2f} combined SE (goal > 2); paired over "
          f"the prompts: {paired_gap:+.3f} ± {paired_se:.3f} = {versus['in paired SE']:+.2f} SE of the difference "
          f"(the best of {len(allowed)} online variants on one seed: a winner's pick, to confirm on another seed)")
    print("RESULT " + json.dumps({"case": "online_minus_offline", "best": best_name,
                                  "online": round(best["gold win rate"][0], 4),
                                  "offline": round(offline["gold win rate"][0], 4),
                                  "difference_in_se": rounded(versus["in combined SE"]),
                                  "paired_difference_in_se": rounded(versus["in paired SE"]),
                                  "kl_online": round(best["KL"][0], 2), "kl_dpo_pairs": round(dpo["KL"][0], 2)}))


if __name__ == "__main__":
    main()
