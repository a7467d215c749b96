"""MaxMin alignment for a 20 % minority: pooled reward vs MaxMin vs weighted utilitarian policies.

``tabular`` (exact, fast): a fully expressive tabular world (:mod:`rankalign.sim.tabular`, one-hot
features). Two groups of annotators judge pairs of candidates by Bradley-Terry on their own utilities:
the majority (80 %) on the world's gold utility ``u_A``, the minority (20 %) on ``u_B = -0.6 u_A + 0.8 e``
(``e`` independent N(0, 1)), so the groups mostly disagree. From the annotations alone:

1. ``rankalign.stats.annotators.choose_groups`` finds the groups (EM mixture of Bradley-Terry over
   annotators, BIC) and gives one reward table per group; the pooled fit (one group) gives the pooled reward;
2. policies (beta = 0.5, exact): *pooled* (maximise the pooled reward), *maxmin* (MaxMin-RLHF: maximise the
   worst group's reward gain), *utilitarian* (group rewards weighted by the group proportions);
3. each policy's exact gold win rate against the reference, per group, under the groups' TRUE utilities.

Repeated over seeds; the claim is on the paired difference of worst-group gold win rates (maxmin - pooled),
its mean and standard error over seeds.

``text`` (slower, stochastic): the text world's tiny LM. Annotators in two groups (80 % want the gold
reward; 20 % want the other topics' nouns and not this one's with ``--minority opposed``, the default, or
long responses with repetition allowed with ``--minority aligned``) compare sampled responses; a personal mixture
reward (:func:`rankalign.personal.fit_personal_reward`, two prototypes on the text's reward components) gives
each group's reward; the policy is trained by MaxMin-RLHF's loop (:func:`rankalign.sim.maxmin.train_group_policy`)
and by the pooled reward, and evaluated by gold win rate against reference samples per group.

``text-online``: the same annotations and fitted rewards, but the policies are trained by rankalign's
online loop (:func:`rankalign.online.run_online`: K = 4 samples per prompt, ranked by a judge, Plackett-Luce
DPO on the ranked lists, round after round); the MaxMin policy's judge is
:class:`rankalign.sim.maxmin.MaxMinJudge` (ranks by the worst-served group's reward gain, the group
re-chosen each round from that round's samples), the pooled policy's the same judge over the pooled reward.

Run::

    python examples/maxmin_study.py tabular --seeds 10
    python examples/maxmin_study.py text
    python examples/maxmin_study.py text-online
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def tabular_run(seed, *, beta=0.5, majority=40, minority=10, pairs_per_annotator=60, temperature=0.5):
    from rankalign.sim import (
        Annotator,
        annotate_items,
        make_tabular_world,
        policy_log_probs,
        tabular_items,
        win_rate,
    )
    from rankalign.sim.maxmin import item_level_records, maxmin_policy, reward_tables, utilitarian_policy
    from rankalign.stats import annotators as A

    world = make_tabular_world(num_prompts=12, num_candidates=6, one_hot=True, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    u_a = world.gold_weights
    u_b = -0.6 * u_a + 0.8 * rng.standard_normal(len(u_a))
    population = ([Annotator(id=f"A-{i}", weights=u_a, temperature=temperature, group="A") for i in range(majority)]
                  + [Annotator(id=f"B-{i}", weights=u_b, temperature=temperature, group="B") for i in range(minority)])
    records = []
    for annotator in population:
        prompts = rng.integers(world.num_prompts, size=pairs_per_annotator)
        sets = [rng.choice(world.num_candidates, size=2, replace=False) for _ in prompts]
        records += annotate_items([annotator], tabular_items(world, prompts, sets), rng)
    data = A.annotated_rankings(item_level_records(records))
    mixture = A.choose_groups(data, max_groups=3, restarts=3, seed=seed)
    pooled_fit = A.fit_annotator_mixture(data, 1)
    truth = [0 if a.startswith("A") else 1 for a in data.annotators]
    tables = reward_tables(world, mixture.groups)
    policies = {
        "pooled": utilitarian_policy(world, reward_tables(world, pooled_fit.groups), [1.0], beta=beta),
        "maxmin": maxmin_policy(world, tables, beta=beta),
        "utilitarian": utilitarian_policy(world, tables, mixture.proportions, beta=beta),
    }
    gold = {"A": world.features @ u_a, "B": world.features @ u_b}
    ref = policy_log_probs(world)
    out = {"seed": seed, "groups_found": len(mixture.groups),
           "rand_index": A.rand_index(mixture.assignment, truth)}
    for name, policy in policies.items():
        rates = {g: win_rate(world, policy.log_probs, ref, utilities=u) for g, u in gold.items()}
        out[name] = {"win_rate_A": rates["A"], "win_rate_B": rates["B"], "worst": min(rates.values()),
                     "kl": policy.kl}
    return out


def study_tabular(args):
    rows = []
    for seed in range(args.seed, args.seed + args.seeds):
        row = tabular_run(seed, beta=args.beta)
        rows.append(row)
        print(f"seed {seed}: groups {row['groups_found']} (Rand {row['rand_index']:.3f}); " + "; ".join(
            f"{name} A {row[name]['win_rate_A']:.3f} B {row[name]['win_rate_B']:.3f} KL {row[name]['kl']:.3f}"
            for name in ("pooled", "maxmin", "utilitarian")))
    summary = {}
    for name in ("pooled", "maxmin", "utilitarian"):
        worst = np.array([r[name]["worst"] for r in rows])
        summary[name] = {"worst_mean": float(worst.mean()), "worst_se": float(worst.std(ddof=1) / np.sqrt(len(worst))),
                         "A_mean": float(np.mean([r[name]["win_rate_A"] for r in rows])),
                         "B_mean": float(np.mean([r[name]["win_rate_B"] for r in rows]))}
    diff = np.array([r["maxmin"]["worst"] - r["pooled"]["worst"] for r in rows])
    se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    for name, s in summary.items():
        print(f"{name:>11}: worst-group gold win rate {s['worst_mean']:.3f} +- {s['worst_se']:.3f} "
              f"(majority A {s['A_mean']:.3f}, minority B {s['B_mean']:.3f})")
    print(f"maxmin - pooled, worst group: {diff.mean():+.4f} +- {se:.4f} SE over {len(diff)} seeds "
          f"({diff.mean() / se:.1f} SE)")
    print("RESULT " + json.dumps({"case": "maxmin_tabular_minority20", "seeds": len(rows), "difference": float(diff.mean()),
                                  "se": se, "z": float(diff.mean() / se), **{k: v["worst_mean"] for k, v in summary.items()}}))


# the minority's weights on the text world's components (on_topic, off_topic, repeats, words); the majority's
# are the gold weights (1, -1, -0.5, 0.05). "aligned": long responses, repeats are fine, which on-topic long
# responses also give (the pooled policy serves both groups); "opposed": other topics wanted, this one not
# (the majority's taste reversed on the topic components, as the tabular world's minority is mostly opposed)
MINORITY_WEIGHTS = {"aligned": np.array([0.2, -0.2, 0.0, 0.6]), "opposed": np.array([-0.5, 0.8, 0.0, 0.0])}


def _text_setup(args):
    """The text world, its reference policy, annotations by two groups, and the rewards fitted from them."""
    import torch
    from scipy.special import expit

    from rankalign.data import RankedList
    from rankalign.personal import fit_personal_reward
    from rankalign.sim.text_world import (
        GOLD_WEIGHTS,
        build_text_tokenizer,
        make_text_world,
        reward_components,
        sample_responses,
        train_reference_policy,
    )

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    world = make_text_world()
    tokenizer = build_text_tokenizer()
    reference = train_reference_policy(world, tokenizer, steps=args.sft_steps, seed=args.seed)
    weights = {"A": GOLD_WEIGHTS, "B": MINORITY_WEIGHTS[args.minority]}
    rng = np.random.default_rng(args.seed)
    prompts = list(world.prompts)
    candidates = sample_responses(reference, tokenizer, prompts * 6, 4, seed=args.seed)
    records = []
    annotators = [("A", i) for i in range(16)] + [("B", i) for i in range(4)]
    for group, i in annotators:
        for _ in range(60):
            index = int(rng.integers(len(candidates)))
            prompt, pool = (prompts * 6)[index], candidates[index]
            if len(pool) < 2:
                continue
            a, b = rng.choice(len(pool), size=2, replace=False)
            u = [reward_components(prompt, pool[j]) @ weights[group] for j in (a, b)]
            first = rng.random() < expit(2.0 * (u[0] - u[1]))
            records.append(RankedList(prompt=prompt, candidates=[pool[a], pool[b]], ranks=[0, 1] if first else [1, 0],
                                      annotator=f"{group}-{i}"))

    def features(prompt, response):
        return reward_components(prompt, response)

    mixture = fit_personal_reward(records, features, model="mixture", num_prototypes=2, epochs=400, seed=args.seed)
    shared = fit_personal_reward(records, features, model="shared", epochs=400, seed=args.seed)
    mix = torch.softmax(mixture.module.user_table.detach(), dim=-1).numpy()
    assignment = mix.argmax(axis=1)
    prototypes = mixture.module.prototypes.detach().numpy()
    group_weights = [mix[assignment == m].mean(axis=0) @ prototypes for m in range(2) if np.any(assignment == m)]
    group_rewards = [lambda p, y, w=w: float(reward_components(p, y) @ w) for w in group_weights]
    pooled_weight = shared.module.weight.detach().numpy()
    pooled_reward = [lambda p, y: float(reward_components(p, y) @ pooled_weight)]
    print(f"groups from the mixture: {len(group_weights)} (sizes {np.bincount(assignment).tolist()}); fitted weights "
          f"on (on_topic, off_topic, repeats, words): " + "; ".join(np.array2string(w, precision=2) for w in group_weights)
          + f"; pooled {np.array2string(pooled_weight.ravel(), precision=2)}; true: A {weights['A']}, B {weights['B']}")
    return {"world": world, "tokenizer": tokenizer, "reference": reference, "prompts": prompts, "weights": weights,
            "group_rewards": group_rewards, "pooled_reward": pooled_reward}


def _text_evaluate(setup, policies, args, case):
    """Each policy's gold win rate against reference samples under each group's TRUE utility; the claim is
    on the worst group (maxmin - pooled, with its standard error)."""
    from rankalign.sim.text_world import reward_components, sample_responses

    tokenizer, prompts = setup["tokenizer"], setup["prompts"]
    eval_prompts = prompts * 4
    ref_samples = sample_responses(setup["reference"], tokenizer, eval_prompts, 4, seed=10_000 + args.seed,
                                   distinct=False)
    out = {}
    for name, policy in policies.items():
        samples = sample_responses(policy, tokenizer, eval_prompts, 4, seed=20_000 + args.seed, distinct=False)
        rates = {}
        for group, w in setup["weights"].items():
            wins = []
            for prompt, ys, rs in zip(eval_prompts, samples, ref_samples):
                for y, r in zip(ys, rs):
                    d = reward_components(prompt, y) @ w - reward_components(prompt, r) @ w
                    wins.append(1.0 if d > 0 else 0.5 if d == 0 else 0.0)
            wins = np.array(wins)
            rates[group] = (float(wins.mean()), float(wins.std(ddof=1) / np.sqrt(len(wins))))
        out[name] = rates
        flat = [y for ys in samples for y in ys]
        empty = sum(1 for y in flat if not y.strip()) / len(flat)
        words = float(np.mean([len(y.split()) for y in flat]))
        print(f"{name:>7}: " + ", ".join(f"group {g} gold win rate {m:.3f} +- {s:.3f}" for g, (m, s) in rates.items())
              + f" (empty responses {empty:.1%}, mean words {words:.1f})")
    worst = {name: min(r.values()) for name, r in out.items()}
    diff = worst["maxmin"][0] - worst["pooled"][0]
    se = float(np.hypot(worst["maxmin"][1], worst["pooled"][1]))
    print(f"maxmin - pooled, worst group: {diff:+.4f} +- {se:.4f} SE")
    print("RESULT " + json.dumps({"case": case, "difference": diff, "se": se,
                                  "pooled": out["pooled"], "maxmin": out["maxmin"]}))
    return diff


def _over_seeds(args, run_one, case):
    """``run_one`` for seeds seed .. seed + repeat - 1; with several, the mean worst-group difference and its
    standard error over seeds (one line, ``RESULT`` with ``"seeds"``)."""
    import copy

    diffs = []
    for offset in range(args.repeat):
        seeded = copy.copy(args)
        seeded.seed = args.seed + offset
        print(f"-- seed {seeded.seed}")
        diffs.append(run_one(seeded))
    if len(diffs) > 1:
        mean, se = float(np.mean(diffs)), float(np.std(diffs, ddof=1) / np.sqrt(len(diffs)))
        print(f"over {len(diffs)} seeds: maxmin - pooled, worst group {mean:+.4f} +- {se:.4f} SE "
              f"(per seed {', '.join(f'{d:+.3f}' for d in diffs)})")
        print("RESULT " + json.dumps({"case": case + "_seeds", "difference": mean, "se": se, "per_seed": diffs}))


def study_text(args):
    _over_seeds(args, _study_text_one, f"maxmin_text_minority20_{args.minority}")


def _study_text_one(args):
    from rankalign.sim.maxmin import train_group_policy

    setup = _text_setup(args)
    reference, tokenizer, prompts = setup["reference"], setup["tokenizer"], setup["prompts"]
    policies = {"pooled": train_group_policy(reference, tokenizer, prompts, setup["pooled_reward"], rule="utilitarian",
                                             steps=args.rl_steps, seed=args.seed)[0],
                "maxmin": train_group_policy(reference, tokenizer, prompts, setup["group_rewards"], rule="maxmin",
                                             steps=args.rl_steps, seed=args.seed)[0]}
    return _text_evaluate(setup, policies, args, f"maxmin_text_minority20_{args.minority}")


def study_text_online(args):
    _over_seeds(args, _study_text_online_one, f"maxmin_text_online_minority20_{args.minority}")


def _study_text_online_one(args):
    """MaxMin-RLHF through rankalign's online loop (``run_online``: sample K per prompt, judge, train on the
    ranked lists with Plackett-Luce DPO, round after round): the judge is :class:`MaxMinJudge` over the two
    fitted group rewards, against the same loop judged by the pooled reward."""
    import copy
    import os
    import tempfile

    from rankalign.online import run_online
    from rankalign.sim.maxmin import MaxMinJudge
    from rankalign.sim.text_world import sample_responses
    from rankalign.train import OnlineConfig, TrainConfig

    setup = _text_setup(args)
    reference, tokenizer, prompts = setup["reference"], setup["tokenizer"], setup["prompts"]
    # the reference's samples the judge measures gains against, drawn as the loop draws its lists: K = 4
    # distinct non-empty responses (a judged list keeps each text once), 4 draws per prompt
    baseline = [sum(draws, []) for draws in zip(*[
        sample_responses(reference, tokenizer, prompts, 4, seed=30_000 + 97 * d + args.seed, distinct=True)
        for d in range(4)])]
    samples = dict(zip(prompts, baseline))
    judges = {"pooled": MaxMinJudge(setup["pooled_reward"], samples, id="pooled"),
              "maxmin": MaxMinJudge(setup["group_rewards"], samples, id="maxmin",
                                    step_size=None if args.one_hot else args.step_size)}
    policies = {}
    with tempfile.TemporaryDirectory() as runs:
        for name, judge in judges.items():
            config = TrainConfig(model="tiny:llama", objective="pl_dpo", loss_params={"beta": 0.1}, lr=2e-4,
                                 epochs=args.epochs, batch_size=8, seed=args.seed, output_dir=os.path.join(runs, name),
                                 report_to=[], save_steps=0, progress=False, logging_steps=1, resume=False, bf16=False)
            online = OnlineConfig(enabled=True, rounds=args.online_rounds, k=4,
                                  prompts_per_round=args.prompts_per_round, max_new_tokens=40)
            policy = copy.deepcopy(reference)
            run_online(policy, tokenizer, prompts, judge, config, online, ref_model=reference)
            if name == "maxmin":
                chosen = [h["worst"] for h in judge.history]
                gains = [" / ".join(f"{g:+.3f}" for g in h["gains"]) for h in judge.history]
                weights = [" / ".join(f"{w:.2f}" for w in h["weights"]) for h in judge.history]
                print(f"maxmin: worst group each round: {chosen}; win-rate gains per round (groups in mixture order): "
                      f"{gains}; weights: {weights}")
            policies[name] = policy.eval()
    return _text_evaluate(setup, policies, args, f"maxmin_text_online_minority20_{args.minority}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("world", choices=["tabular", "text", "text-online"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=10, help="tabular: repetitions")
    parser.add_argument("--repeat", type=int, default=1, help="text worlds: seeds seed .. seed + repeat - 1")
    parser.add_argument("--beta", type=float, default=0.5, help="tabular: KL weight")
    parser.add_argument("--sft-steps", type=int, default=300, help="text: reference SFT steps")
    parser.add_argument("--rl-steps", type=int, default=60, help="text: policy-gradient steps per policy")
    parser.add_argument("--minority", choices=sorted(MINORITY_WEIGHTS), default="opposed",
                        help="text worlds: the minority's taste")
    parser.add_argument("--online-rounds", type=int, default=16, help="text-online: rounds of the online loop")
    parser.add_argument("--epochs", type=float, default=1.0, help="text-online: epochs over each round's lists")
    parser.add_argument("--step-size", type=float, default=10.0,
                        help="text-online: step of the exponentiated-gradient group weights")
    parser.add_argument("--one-hot", action="store_true",
                        help="text-online: one group per round (MaxMin-RLHF's choice) instead of weights")
    parser.add_argument("--prompts-per-round", type=int, default=24, help="text-online: judged lists per round")
    args = parser.parse_args(argv)
    {"tabular": study_tabular, "text": study_text, "text-online": study_text_online}[args.world](args)


if __name__ == "__main__":
    main()
