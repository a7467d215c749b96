"""Active sampling: the pairs a vote implies, the information gain formula, the three rules, the posterior
against a hand-written Laplace approximation, and the simulation study's bookkeeping."""

import math
from collections import Counter

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from rankalign.arena.sampling import bt_posterior, choose, pair_information, vote_comparisons
from rankalign.arena.study import run_study, votes_to_reach


def test_vote_comparisons_of_a_ranking_with_a_tie():
    # items 2, 0, 1 ranked [1, 0, 1]: item 0 beats both, items 2 and 1 tie
    first, second, outcome = vote_comparisons([([2, 0, 1], [1, 0, 1])])
    wins = {(a, b) for a, b, o in zip(first.tolist(), second.tolist(), outcome.tolist()) if o == 1.0}
    ties = {frozenset((a, b)) for a, b, o in zip(first.tolist(), second.tolist(), outcome.tolist()) if o == 0.5}
    assert wins == {(0, 2), (0, 1)} and ties == {frozenset((1, 2))} and len(outcome) == 3
    pair = vote_comparisons([([3, 1], [1, 0])])
    assert (pair[0].tolist(), pair[1].tolist(), pair[2].tolist()) == ([1], [3], [1.0])


def test_pair_information_by_hand():
    gain = pair_information([0.0, 0.0], np.eye(2))
    assert gain[0, 1] == pytest.approx(0.5 * math.log(1 + 0.25 * 2.0))  # p = 1/2, Var(d) = 2
    correlated = pair_information([0.0, 0.0], [[1.0, 0.5], [0.5, 1.0]])
    assert correlated[0, 1] == pytest.approx(0.5 * math.log(1 + 0.25 * 1.0))  # Var(d) = 1 + 1 - 2 * 0.5
    far = pair_information([2.0, 0.0], np.eye(2))
    p = 1 / (1 + math.exp(-2.0))
    assert far[1, 0] == pytest.approx(far[0, 1])
    assert far[0, 1] == pytest.approx(0.5 * math.log(1 + p * (1 - p) * 2.0))
    assert gain[0, 0] == 0.0


def test_info_rule_prefers_uncertain_and_close_pairs():
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert 2 in choose("info", [0.0, 0.0, 0.0], np.diag([1.0, 1.0, 4.0]), 2, rng)
        assert sorted(choose("info", [0.0, 0.1, 6.0], np.eye(3), 2, rng)) == [0, 1]
    four = choose("info", np.zeros(6), np.diag([1, 1, 1, 5, 5, 5.0]), 3, rng)
    assert sorted(four) == [3, 4, 5]


def test_ucb_rule_anchor_and_opponent():
    rng = np.random.default_rng(1)
    # anchor = argmax mu + sigma = item 4; its opponent is one of the two closest, items 3 and 2
    seen = Counter(tuple(sorted(choose("ucb", [0.0, 1.0, 2.0, 3.0, 4.0], np.eye(5) * 0.01, 2, rng)))
                   for _ in range(200))
    assert set(seen) == {(3, 4), (2, 4)}
    assert sorted(choose("ucb", [0.0, 1.0, 2.0, 3.0, 4.0], np.eye(5) * 0.01, 3, rng))[-1] == 4
    # an uncertain item becomes the anchor: 0 + 1 * 3 > 2 + 1 * 0.1
    assert 0 in choose("ucb", [0.0, 1.0, 2.0], np.diag([9.0, 0.01, 0.01]), 2, rng)


def test_uniform_rule_is_uniform_over_pairs_and_respects_allowed():
    rng = np.random.default_rng(2)
    counts = Counter(tuple(sorted(choose("uniform", np.zeros(4), np.eye(4), 2, rng))) for _ in range(6000))
    assert len(counts) == 6
    assert all(abs(n - 1000) < 150 for n in counts.values())  # binomial sd ~ 29
    for rule in ("info", "ucb", "uniform"):
        for _ in range(10):
            assert set(choose(rule, np.arange(5.0), np.eye(5), 2, rng, allowed=[1, 3, 4])) <= {1, 3, 4}
    with pytest.raises(ValueError, match="cannot choose 3"):
        choose("info", np.zeros(4), np.eye(4), 3, rng, allowed=[0, 1])
    with pytest.raises(ValueError, match="unknown sampler"):
        choose("best", np.zeros(4), np.eye(4), 2, rng)


def test_posterior_is_the_laplace_approximation():
    assert np.allclose(bt_posterior(3, [], [], [], prior_variance=2.0)[1], 2.0 * np.eye(3))
    first = np.array([0, 0, 1, 2, 1, 0])
    second = np.array([1, 2, 2, 3, 3, 3])
    outcome = np.array([1.0, 0.5, 0.0, 1.0, 1.0, 0.0])
    variance = 0.7
    mean, cov = bt_posterior(4, first, second, outcome, prior_variance=variance)
    alpha = 1 / (2 * variance)

    def negative_log_posterior(theta):
        d = theta[first] - theta[second]
        return -(outcome * log_expit(d) + (1 - outcome) * log_expit(-d)).sum() + alpha * theta @ theta

    theta = minimize(negative_log_posterior, np.zeros(4), method="BFGS", options={"gtol": 1e-11}).x
    assert mean == pytest.approx(theta - theta.mean(), abs=1e-6)
    hessian = 2 * alpha * np.eye(4)
    for a, b in zip(first, second):
        p = expit(theta[a] - theta[b])
        e = np.zeros(4)
        e[a], e[b] = 1.0, -1.0
        hessian += p * (1 - p) * np.outer(e, e)
    hand = np.linalg.inv(hessian)
    for i in range(4):  # variances of differences do not depend on the gauge
        for j in range(i + 1, 4):
            expected = hand[i, i] + hand[j, j] - 2 * hand[i, j]
            assert cov[i, i] + cov[j, j] - 2 * cov[i, j] == pytest.approx(expected, rel=1e-5)


def test_votes_to_reach():
    assert votes_to_reach([10, 20, 30, 40], [0.5, 0.79, 0.8, 0.95], 0.8) == 30
    assert votes_to_reach([10, 20], [0.1, 0.2], 0.8) is None


def test_study_bookkeeping():
    study = run_study(n_items=5, n_annotators=3, budget=30, repeats=2, every=10, samplers=("info", "uniform"),
                      targets=(0.5,), seed=3)
    assert study["checkpoints"] == [10, 20, 30]
    for sampler in ("info", "uniform"):
        assert len(study["curves"][sampler]) == 3
        assert all(-1.0 <= v <= 1.0 for v in study["curves"][sampler])
        assert all(v in (0.0, 0.5, 1.0) for v in study["top1"][sampler])  # two worlds: 0, 1 or 2 right
    rows = {row["sampler"]: row for row in study["table"]}
    assert rows["uniform"]["saving_tau_0.5"] in (None, 0.0)
    again = run_study(n_items=5, n_annotators=3, budget=30, repeats=2, every=10, samplers=("info", "uniform"),
                      targets=(0.5,), seed=3)
    assert again["curves"] == study["curves"]  # seeded


@pytest.mark.slow
def test_information_gain_beats_uniform_in_simulation():
    """The claim of the study at a small scale: after 200 votes on 12 items, the info sampler's ranking is
    closer to the gold ranking than uniform sampling's, averaged over 12 worlds."""
    study = run_study(n_items=12, n_annotators=10, budget=200, repeats=12, every=50, samplers=("info", "uniform"),
                      targets=(0.8,), seed=11)
    assert study["curves"]["info"][-1] > study["curves"]["uniform"][-1]
