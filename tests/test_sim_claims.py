"""Published claims reproduced in the tabular world (rankalign.sim), each against an independent derivation.

Every expected value is derived in the test itself (closed forms written out below), never read back
from the code under test.
"""

import math

import numpy as np
import pytest

import rankalign.losses as losses
from rankalign.sim.annotators import Annotator, make_population, sample_ranks
from rankalign.sim.tabular import (
    TabularData,
    best_of_n_log_probs,
    kl_divergence,
    make_tabular_world,
    optimise_policy,
    pairwise_population,
    policy_log_probs,
    ranking_accuracy,
    records_to_tabular,
    tabular_items,
)


def _registered(name):
    return losses.get(name)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _clean_dpo_optimum(ref_log_probs, utilities, beta, temperature):
    """Closed form (Rafailov et al. 2023, eq. 4 and 5): with Bradley-Terry preferences
    P(i > j) = sigmoid((u_i - u_j) / T) and a fully expressive policy, DPO's population loss is minimised
    when beta * (rho_i - rho_j) = (u_i - u_j) / T for every pair, i.e.
    log pi*(y) = log pi_ref(y) + u(y) / (beta T) - log Z."""
    logits = ref_log_probs + utilities / (beta * temperature)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


# ------------------------------------------------------------------------------- BT on a balanced 3-cycle
def test_bradley_terry_on_balanced_three_cycle_gives_equal_strengths_and_chance_accuracy():
    # Three annotator groups with cyclically shifted utilities (A>B>C, B>C>A, C>A>B), deterministic,
    # each judging all three pairs once: A beats B 2:1, B beats C 2:1, C beats A 2:1 -- a balanced cycle
    # (the Condorcet paradox). Bradley-Terry MLE: the log-likelihood is invariant under the rotation
    # A->B->C->A and strictly concave up to a constant, so the maximiser has equal strengths; check:
    # every item wins 3 of its 6 comparisons, and 3 = 6 * sigmoid(0) is the stationarity condition.
    world = make_tabular_world(1, 3, one_hot=True, seed=0)
    world = type(world)(features=world.features, gold_weights=world.gold_weights,
                        reference_theta=np.zeros(3), lengths=world.lengths)  # uniform pi_ref: DPO = BT MLE
    orders = {"abc": (2.0, 1.0, 0.0), "bca": (0.0, 2.0, 1.0), "cab": (1.0, 0.0, 2.0)}
    population = make_population([(name, 1, u) for name, u in orders.items()], choice="deterministic")
    rng = np.random.default_rng(0)
    pairs = [(0, 1), (1, 2), (0, 2)]
    records = []
    for annotator in population:
        for pair in pairs:
            (item,) = tabular_items(world, [0], [pair])
            ranks = sample_ranks(annotator, annotator.utilities(item[2]), rng)
            from rankalign.data import RankedList

            records.append(RankedList(prompt=item[0], candidates=item[1], ranks=ranks, annotator=annotator.id))
    wins = {0: 0, 1: 0, 2: 0}
    for r in records:
        wins[int(r.candidates[r.ranks.index(0)][1:])] += 1
    assert wins == {0: 3, 1: 3, 2: 3}  # each item: 3 wins in 6 comparisons

    # With pi_ref uniform and beta = 1, DPO's loss is exactly the BT negative log-likelihood in theta.
    result = optimise_policy(world, records, _registered("dpo"), beta=1.0, init=np.array([1.0, -0.5, 0.3]))
    strengths = result.theta - result.theta.mean()
    np.testing.assert_allclose(strengths, 0.0, atol=1e-6)
    # chance accuracy: equal strengths predict P(i > j) = 1/2 for every pair, so every comparison is
    # predicted at 1/2 and the BT log-likelihood is 9 log(1/2)
    assert result.loss == pytest.approx(math.log(2.0), abs=1e-9)
    fit = policy_log_probs(world, result.theta)
    predicted = _sigmoid(fit[0][:, None] - fit[0][None, :])
    np.testing.assert_allclose(predicted[np.triu_indices(3, 1)], 0.5, atol=1e-6)

    # the same annotations through the ratings API: equal Bradley-Terry strengths
    from rankalign.stats import fit_bradley_terry

    first = [int(r.candidates[0][1:]) for r in records]
    second = [int(r.candidates[1][1:]) for r in records]
    outcome = [1.0 if r.ranks[0] < r.ranks[1] else 0.0 for r in records]
    ratings = fit_bradley_terry(np.array(first), np.array(second), np.array(outcome), n_items=3)
    np.testing.assert_allclose(ratings.ratings, 0.0, atol=1e-8)


# --------------------------------------------------- robust DPO recovers the clean optimum under flips
def test_robust_dpo_recovers_clean_optimum_under_flips_while_dpo_is_biased_population():
    world = make_tabular_world(3, 4, one_hot=True, seed=3, reference_scale=1.0, gold_scale=1.5)
    beta, temperature, eps = 0.5, 1.0, 0.2
    utilities = world.features @ world.gold_weights
    clean = _sigmoid((utilities[:, :, None] - utilities[:, None, :]) / temperature)
    # each label flipped with probability eps: P_obs(i > j) = (1 - eps) P(i > j) + eps P(j > i)
    flipped = (1 - eps) * clean + eps * clean.transpose(0, 2, 1)
    target = _clean_dpo_optimum(policy_log_probs(world), utilities, beta, temperature)

    robust = optimise_policy(world, pairwise_population(flipped), _registered("robust_dpo"), beta=beta,
                             params={"label_smoothing": eps})
    plain = optimise_policy(world, pairwise_population(flipped), _registered("dpo"), beta=beta)
    robust_lp = policy_log_probs(world, robust.theta)
    plain_lp = policy_log_probs(world, plain.theta)
    np.testing.assert_allclose(robust_lp, target, atol=1e-5)
    # plain DPO fits the flipped rates, which are shrunk toward 1/2: its implicit-reward gaps are
    # smaller than the clean ones, so it stays closer to pi_ref (biased toward the reference).
    assert np.abs(plain_lp - target).max() > 0.3
    ref = policy_log_probs(world)
    assert kl_divergence(plain_lp, ref) < 0.8 * kl_divergence(target, ref)


def test_robust_dpo_recovers_clean_optimum_from_simulated_flipped_annotators():
    world = make_tabular_world(2, 3, one_hot=True, seed=5, gold_scale=1.5)
    beta, eps = 1.0, 0.2
    annotator = Annotator(id="noisy", choice="bradley_terry", temperature=1.0, flip_rate=eps)
    rng = np.random.default_rng(11)
    pairs = [(p, (i, j)) for p in range(2) for i in range(3) for j in range(i + 1, 3)]
    items = tabular_items(world, [p for p, _ in pairs for _ in range(1500)],
                          [pair for _, pair in pairs for _ in range(1500)])
    from rankalign.data import RankedList

    records = [RankedList(prompt=x, candidates=c,
                          ranks=sample_ranks(annotator, annotator.utilities(f, world.gold_weights), rng),
                          annotator=annotator.id) for x, c, f in items]
    data = records_to_tabular(world, records)
    utilities = world.features @ world.gold_weights
    target = _clean_dpo_optimum(policy_log_probs(world), utilities, beta, 1.0)
    robust = policy_log_probs(world, optimise_policy(world, data, _registered("robust_dpo"), beta=beta,
                                                     params={"label_smoothing": eps}).theta)
    plain = policy_log_probs(world, optimise_policy(world, data, _registered("dpo"), beta=beta).theta)
    robust_error = np.abs(robust - target).max()
    plain_error = np.abs(plain - target).max()
    # 1500 labels per pair: the empirical log-odds have SE about 0.06-0.1 (after the 1/(1-2 eps) correction)
    assert robust_error < 0.35
    assert plain_error > 2 * robust_error


# ------------------------------------------------ DPO optimum ranking accuracy = idealised ranking accuracy
def test_dpo_optimum_ranking_accuracy_equals_idealised_formula_chen_et_al():
    # Chen et al. 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings", Thm 3.1:
    # at the DPO optimum, log pi*(y_w)/pi*(y_l) = log pi_ref(y_w)/pi_ref(y_l) + (1/beta) log(alpha/(1-alpha)),
    # so the pair is ranked correctly iff that quantity is > 0.
    world = make_tabular_world(6, 5, one_hot=True, seed=7, reference_scale=2.5, gold_scale=1.0)
    beta, temperature = 1.0, 1.0
    utilities = world.features @ world.gold_weights
    alpha = _sigmoid((utilities[:, :, None] - utilities[:, None, :]) / temperature)
    result = optimise_policy(world, pairwise_population(alpha), _registered("dpo"), beta=beta)
    assert result.converged
    optimum = policy_log_probs(world, result.theta)
    ref = policy_log_probs(world)

    winners, losers, prompts = [], [], []
    for p in range(6):
        for i in range(5):
            for j in range(5):
                if alpha[p, i, j] > 0.5:  # y_w is the majority-preferred response
                    prompts.append(p), winners.append(i), losers.append(j)
    prompts, winners, losers = map(np.array, (prompts, winners, losers))
    a = alpha[prompts, winners, losers]
    ref_ratio = ref[prompts, winners] - ref[prompts, losers]
    threshold = -(1.0 / beta) * np.log(a / (1 - a))
    assert np.abs(ref_ratio - threshold).min() > 1e-3  # no pair sits on the boundary
    idealised = float(np.mean(ref_ratio + (1.0 / beta) * np.log(a / (1 - a)) > 0))
    data = TabularData(prompts=prompts, candidates=np.stack([winners, losers], 1),
                       ranks=np.tile([0, 1], (len(prompts), 1)), weights=np.ones(len(prompts)))
    achieved = ranking_accuracy(optimum, data)
    assert achieved == idealised
    assert 0.5 < idealised < 1.0  # some pairs really are stuck
    stuck = ref_ratio < threshold
    assert stuck.sum() >= 2
    assert np.all(optimum[prompts[stuck], winners[stuck]] < optimum[prompts[stuck], losers[stuck]])

    from rankalign.eval import idealised_ranking_accuracy

    assert idealised_ranking_accuracy(ref[prompts, winners], ref[prompts, losers], a, beta) == pytest.approx(idealised)


# ------------------------------------------------------------------- agreement of two noisy annotators
def test_two_annotators_with_flip_rate_quarter_agree_on_62_5_percent():
    # Each annotator reports the true order with prob 1 - eps, independently: they agree when both are
    # right or both are wrong, (1 - eps)^2 + eps^2 = 1 - 2 eps (1 - eps) = 1 - 2(0.25)(0.75) = 0.625.
    eps, n = 0.25, 20000
    first = Annotator(id="a", choice="deterministic", flip_rate=eps)
    second = Annotator(id="b", choice="deterministic", flip_rate=eps)
    rng = np.random.default_rng(2024)
    utilities = rng.standard_normal((n, 2))
    utilities[:, 1] += np.where(utilities[:, 1] == utilities[:, 0], 1.0, 0.0)
    agree = sum(sample_ranks(first, u, rng) == sample_ranks(second, u, rng) for u in utilities)
    expected = 1 - 2 * eps * (1 - eps)
    assert expected == 0.625
    standard_error = math.sqrt(expected * (1 - expected) / n)  # binomial, about 0.0034
    assert abs(agree / n - expected) < 4 * standard_error


# --------------------------------------------------------------------------- best-of-n KL from the base
def _bon_kl_uniform(n_candidates, n):
    """Exact KL of best-of-n from a uniform base over N distinct rewards, written out independently:
    the i-th smallest reward wins with p_i = (i/N)^n - ((i-1)/N)^n; KL = sum_i p_i log(N p_i)."""
    i = np.arange(1, n_candidates + 1, dtype=np.float64)
    p = (i / n_candidates) ** n - ((i - 1) / n_candidates) ** n
    return float(np.sum(p * np.log(n_candidates * p)))


@pytest.mark.parametrize("n", [2, 4, 16])
def test_best_of_n_kl_is_log_n_minus_n_minus_1_over_n(n):
    # Beirami et al. 2024 ("Theoretical guarantees on the best-of-n alignment policy"): the formula
    # log n - (n-1)/n is the limit for continuous rewards and an upper bound for finite candidate sets.
    rng = np.random.default_rng(n)
    big = 100_000
    rewards = rng.standard_normal(big)
    base = np.full(big, -math.log(big))
    kl = kl_divergence(best_of_n_log_probs(base, rewards, n)[None], base[None])
    formula = math.log(n) - (n - 1) / n
    assert kl == pytest.approx(_bon_kl_uniform(big, n), abs=1e-9)
    assert kl <= formula + 1e-12
    assert formula - kl < 1e-3
    # a small, non-uniform base with ties: the bound still holds (strictly)
    small = best_of_n_log_probs(np.log([0.1, 0.2, 0.3, 0.4]), np.array([1.0, 1.0, 2.0, 0.0]), n)
    assert kl_divergence(small[None], np.log([[0.1, 0.2, 0.3, 0.4]])) < formula


def test_best_of_n_matches_brute_force_enumeration_with_ties():
    import itertools

    base = np.array([0.1, 0.2, 0.3, 0.4])
    rewards = np.array([1.0, 1.0, 2.0, 0.0])
    n = 3
    expected = np.zeros(4)
    for draw in itertools.product(range(4), repeat=n):
        prob = np.prod(base[list(draw)])
        best = max(rewards[i] for i in draw)
        winners = [i for i in draw if rewards[i] == best]
        for i in winners:  # uniform tie-break among the draws that share the best reward
            expected[i] += prob / len(winners)
    np.testing.assert_allclose(np.exp(best_of_n_log_probs(np.log(base), rewards, n)), expected, atol=1e-12)


def test_optimise_policy_reports_divergence_when_dpo_has_no_finite_optimum():
    # alpha = 1: candidate 0 always beats candidate 1. DPO's loss -log sigma(beta h) only tends to 0 as
    # h -> infinity, so there is no minimiser; a small final gradient is not convergence.
    world = make_tabular_world(1, 2, one_hot=True, seed=3)
    always = np.array([[[0.5, 1.0], [0.0, 0.5]]])
    result = optimise_policy(world, pairwise_population(always), _registered("dpo"), beta=1.0)
    assert result.diverged and not result.converged
    # alpha = 0.8 has the finite optimum h* = log(0.8 / 0.2) / beta (Rafailov et al. 2023): converged
    sometimes = np.array([[[0.5, 0.8], [0.2, 0.5]]])
    result = optimise_policy(world, pairwise_population(sometimes), _registered("dpo"), beta=1.0)
    assert result.converged and not result.diverged
    log_probs = policy_log_probs(world, result.theta)[0]
    reference = policy_log_probs(world)[0]
    h = (log_probs[0] - reference[0]) - (log_probs[1] - reference[1])
    assert h == pytest.approx(np.log(4.0), abs=1e-5)
