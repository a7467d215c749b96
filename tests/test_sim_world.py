"""Tabular world and simulated annotators (rankalign.sim): exact quantities against hand arithmetic."""

import math

import numpy as np
import pytest

from rankalign.data import DataError, Judgment, RankedList
from rankalign.sim import (
    Annotator,
    TabularWorld,
    annotate,
    annotate_items,
    expected_gold_reward,
    kl_to_reference,
    make_population,
    make_tabular_world,
    pair_probabilities,
    policy_log_probs,
    records_to_tabular,
    sample_ranks,
    tabular_items,
    win_rate,
)


def _two_candidate_world():
    # one prompt, two candidates with one-dimensional features 0 and 1; theta_ref = 0 (uniform),
    # gold weight 2 (r* = 0 and 2)
    features = np.array([[[0.0], [1.0]]])
    return TabularWorld(features=features, gold_weights=np.array([2.0]), reference_theta=np.array([0.0]),
                        lengths=np.array([[3, 5]]))


def test_exact_log_probs_kl_reward_and_win_rate_by_hand():
    world = _two_candidate_world()
    theta = np.array([math.log(3.0)])  # pi = (1/4, 3/4)
    np.testing.assert_allclose(np.exp(policy_log_probs(world, theta)), [[0.25, 0.75]])
    # KL((1/4, 3/4) || (1/2, 1/2)) = 1/4 log(1/2) + 3/4 log(3/2)
    assert kl_to_reference(world, theta) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert expected_gold_reward(world, theta) == pytest.approx(0.75 * 2.0)
    # win vs uniform reference: P(y=1, y'=0) + 1/2 P(same) = 3/4 * 1/2 + 1/2 (1/4 * 1/2 + 3/4 * 1/2) = 5/8
    assert win_rate(world, policy_log_probs(world, theta)) == pytest.approx(0.625)
    assert win_rate(world, policy_log_probs(world)) == pytest.approx(0.5)


def test_world_is_deterministic_for_a_seed_and_one_hot_is_fully_expressive():
    a, b = make_tabular_world(4, 5, 3, seed=9), make_tabular_world(4, 5, 3, seed=9)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.reference_theta, b.reference_theta)
    one_hot = make_tabular_world(2, 3, one_hot=True, seed=1)
    target = np.log(np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]))
    np.testing.assert_allclose(policy_log_probs(one_hot, target.reshape(-1)), target, atol=1e-12)


def test_pair_probabilities_bradley_terry_thurstone_davidson_and_flips():
    bt = Annotator(id="bt", temperature=2.0, flip_rate=0.1)
    win, tie, loss = pair_probabilities(bt, 1.0, 0.0)
    p = 1 / (1 + math.exp(-0.5))  # sigmoid((1 - 0) / 2)
    assert win == pytest.approx(0.9 * p + 0.1 * (1 - p)) and tie == 0 and loss == pytest.approx(1 - win)
    th = Annotator(id="th", choice="thurstone", temperature=1.0)
    # Phi(1 / sqrt 2) = 0.5 (1 + erf(1/2))
    assert pair_probabilities(th, 1.0, 0.0)[0] == pytest.approx(0.5 * (1 + math.erf(0.5)))
    dv = Annotator(id="dv", tie_strength=1.0)
    # Davidson with pi = (e, 1), nu = 1: P(tie) = sqrt(e) / (e + 1 + sqrt(e))
    win, tie, loss = pair_probabilities(dv, 1.0, 0.0)
    assert tie == pytest.approx(math.sqrt(math.e) / (math.e + 1 + math.sqrt(math.e)))
    assert win == pytest.approx(math.e / (math.e + 1 + math.sqrt(math.e)))


def test_sampled_pair_frequencies_match_the_choice_models():
    rng = np.random.default_rng(0)
    n = 6000
    for annotator in (Annotator(id="bt", temperature=0.7), Annotator(id="th", choice="thurstone"),
                      Annotator(id="dv", tie_strength=0.8), Annotator(id="fl", flip_rate=0.3)):
        counts = {"win": 0, "tie": 0, "loss": 0}
        for _ in range(n):
            ranks = sample_ranks(annotator, np.array([0.6, 0.0]), rng)
            counts["tie" if ranks[0] == ranks[1] else "win" if ranks[0] < ranks[1] else "loss"] += 1
        win, tie, _ = pair_probabilities(annotator, 0.6, 0.0)
        se = math.sqrt(0.25 / n)
        assert abs(counts["win"] / n - win) < 4 * se, annotator.id
        assert abs(counts["tie"] / n - tie) < 4 * se, annotator.id


def test_plackett_luce_first_choice_frequency():
    # PL with strengths exp(u): the first choice is i with probability softmax(u)_i
    rng = np.random.default_rng(1)
    u = np.array([1.0, 0.0, -1.0])
    annotator = Annotator(id="pl", choice="plackett_luce")
    n = 6000
    first = np.bincount([sample_ranks(annotator, u, rng).index(0) for _ in range(n)], minlength=3) / n
    expected = np.exp(u) / np.exp(u).sum()
    assert np.all(np.abs(first - expected) < 4 * np.sqrt(expected * (1 - expected) / n))


def test_annotations_are_reader_records_with_ids_and_are_deterministic():
    world = make_tabular_world(3, 6, 4, seed=2)
    population = make_population([("agree", 2, None), ("contrary", 2, -world.gold_weights)],
                                 temperature=0.5, flip_rate=0.05)
    assert [a.id for a in population] == ["agree-0", "agree-1", "contrary-0", "contrary-1"]
    items = tabular_items(world, [0, 1, 2], [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5]])
    for kind in ("ranking", "ratings", "best_of"):
        first = annotate_items(population, items, np.random.default_rng(5), kind=kind, gold_weights=world.gold_weights)
        again = annotate_items(population, items, np.random.default_rng(5), kind=kind, gold_weights=world.gold_weights)
        assert first == again
        assert all(isinstance(r, RankedList) and r.annotator in {a.id for a in population} for r in first)
        if kind == "ratings":
            assert all(s in {1.0, 2.0, 3.0, 4.0, 5.0} for r in first for s in r.scores)
        if kind == "best_of":
            assert all(sorted(r.ranks) == [0, 1, 1, 1] for r in first)
    thumbs = annotate_items(population, items, np.random.default_rng(5), kind="thumbs",
                            gold_weights=world.gold_weights)
    assert len(thumbs) == 12 and all(isinstance(j, Judgment) and isinstance(j.label, bool) for j in thumbs)


def test_disagreeing_groups_rank_in_opposite_directions():
    world = make_tabular_world(1, 4, 3, seed=4)
    rng = np.random.default_rng(0)
    agree = Annotator(id="a", choice="deterministic")
    contrary = Annotator(id="c", choice="deterministic", weights=-world.gold_weights)
    (item,) = tabular_items(world, [0], [[0, 1, 2, 3]])
    a = annotate(agree, *item, rng, gold_weights=world.gold_weights)
    c = annotate(contrary, *item, rng, gold_weights=world.gold_weights)
    assert list(a.ranks) == [3 - r for r in c.ranks]
    gold = world.features[0] @ world.gold_weights
    assert a.ranks.index(0) == int(np.argmax(gold))


def test_records_to_tabular_and_errors_name_the_field():
    world = make_tabular_world(2, 3, 2, seed=0)
    data = records_to_tabular(world, [RankedList(prompt="x1", candidates=["y2", "y0", "y1"], ranks=[1, 0, None]),
                                      RankedList(prompt="x0", candidates=["y0", "y1"], ranks=[0, 1], weight=2.0)])
    np.testing.assert_array_equal(data.candidates, [[2, 0, -1], [0, 1, -1]])
    np.testing.assert_array_equal(data.ranks, [[1, 0, -1], [0, 1, -1]])
    np.testing.assert_array_equal(data.weights, [1.0, 2.0])
    with pytest.raises(DataError, match=r"records\[0\].candidates\[1\]"):
        records_to_tabular(world, [RankedList(prompt="x0", candidates=["y0", "y9"], ranks=[0, 1])])


def _objective_names():
    import rankalign.losses as losses

    return [n for family in ("pairwise", "listwise") for n in losses.names(family)]


def test_every_pairwise_and_listwise_objective_optimises_in_the_tabular_world():
    from rankalign.sim import optimise_policy, win_rate

    world = make_tabular_world(4, 5, 3, seed=0)
    rng = np.random.default_rng(0)
    population = make_population([("g", 2, None)])
    items = tabular_items(world, rng.integers(4, size=12), [rng.choice(5, 3, replace=False) for _ in range(12)])
    records = annotate_items(population, items, rng, kind="ratings", gold_weights=world.gold_weights)
    names = _objective_names()
    assert {"dpo", "robust_dpo", "pl_dpo", "lipo_lambda", "pro"} <= set(names)
    for name in names:
        fit = optimise_policy(world, records, name, beta=0.5, method="adam", max_iter=8)
        assert math.isfinite(fit.loss) and np.all(np.isfinite(fit.theta)), name
        assert 0.0 <= win_rate(world, policy_log_probs(world, fit.theta)) <= 1.0
