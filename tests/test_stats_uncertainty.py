"""Uncertainty in rankalign.stats: Wald and bootstrap intervals, coverage, Elo, win rates, JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import expit

from rankalign.stats import (
    bootstrap,
    fit_bradley_terry,
    fit_davidson,
    fit_plackett_luce,
    online_elo,
    win_rate_matrix,
)


def _simulate(rng, theta, m):
    n = len(theta)
    a = rng.integers(0, n, m)
    b = (a + rng.integers(1, n, m)) % n
    y = (rng.random(m) < expit(theta[a] - theta[b])).astype(float)
    return a, b, y


def test_bootstrap_two_items_matches_binomial_theory():
    # two items, 60 wins of 100: the bootstrap sd of theta_0 - theta_1 approaches the delta-method
    # sd sqrt(1/(n p q)) = sqrt(1/24), and the percentile interval contains log(60/40)
    first = [0] * 100
    second = [1] * 100
    outcome = [1.0] * 60 + [0.0] * 40
    result = fit_bradley_terry(first, second, outcome, reference=1)
    boot = bootstrap(result, 2000, seed=3)
    assert boot.ci_method == "bootstrap"
    assert boot.se[0] == pytest.approx(math.sqrt(1 / 24), rel=0.08)
    assert boot.ci_low[0] < math.log(1.5) < boot.ci_high[0]
    assert boot.se[1] == 0.0


def test_bootstrap_is_reproducible_and_parallel_runs():
    rng = np.random.default_rng(0)
    a, b, y = _simulate(rng, np.linspace(-1, 1, 5), 800)
    result = fit_bradley_terry(a, b, y, n_items=5)
    one = bootstrap(result, 40, seed=7)
    again = bootstrap(result, 40, seed=7)
    np.testing.assert_array_equal(one.ci_low, again.ci_low)
    two = bootstrap(result, 40, seed=7, n_jobs=2)
    assert two.state["bootstrap_samples"].shape == (40, 5)
    # resampled ratings keep the gauge
    np.testing.assert_allclose(two.state["bootstrap_samples"].sum(axis=1), 0.0, atol=1e-9)


def test_bootstrap_plackett_luce_and_davidson():
    rng = np.random.default_rng(1)
    theta = np.array([0.5, 0.0, -0.5])
    rankings = [list(np.argsort(-(theta + rng.gumbel(size=3)))) for _ in range(300)]
    result = fit_plackett_luce(rankings)
    boot = bootstrap(result, 100, seed=0)
    assert np.all(boot.ci_low <= result.ratings) and np.all(result.ratings <= boot.ci_high)
    assert np.allclose(boot.se, result.se, rtol=0.35)
    a, b, y = _simulate(rng, theta, 600)
    y[:100] = 0.5
    dav = fit_davidson(a, b, y, n_items=3)
    boot = bootstrap(dav, 50, seed=0)
    assert np.all(np.isfinite(boot.ci_low))


def _coverage(n_sims, seed):
    rng = np.random.default_rng(seed)
    theta = np.linspace(-1.0, 1.0, 6)
    truth = theta - theta.mean()
    hits = total = 0
    for _ in range(n_sims):
        a, b, y = _simulate(rng, theta, 400)
        result = fit_bradley_terry(a, b, y, n_items=6)
        hits += int(np.sum((result.ci_low <= truth) & (truth <= result.ci_high)))
        total += len(truth)
    return hits / total


def test_wald_coverage_quick():
    # 40 simulations x 6 items: the 95% Wald interval covers the true (centred) strengths
    assert 0.90 <= _coverage(40, seed=11) <= 0.99


@pytest.mark.slow
def test_wald_coverage_many_simulations():
    assert 0.93 <= _coverage(500, seed=12) <= 0.97


def test_win_rate_matrix_by_hand():
    # item 0 beat 1 twice, lost once, tied once: (2 + 0.5) / 4
    first = [0, 0, 1, 0, 2]
    second = [1, 1, 0, 1, 0]
    outcome = [1.0, 1.0, 1.0, 0.5, 0.0]
    matrix = win_rate_matrix(first, second, outcome, n_items=3)
    assert matrix[0, 1] == pytest.approx(2.5 / 4) and matrix[1, 0] == pytest.approx(1.5 / 4)
    assert matrix[0, 2] == 1.0 and np.isnan(matrix[1, 2])


def test_online_elo_by_hand_and_order_dependence():
    # first game between equals: expected 0.5, winner gains k/2
    ratings = online_elo([0], [1], [1.0], n_items=2, k=32)
    assert ratings.tolist() == [1016.0, 984.0]
    # second game: 1 beats 0; E_1 = 1 / (1 + 10^((1016 - 984) / 400))
    expected = 1 / (1 + 10 ** (32 / 400))
    ratings = online_elo([0, 1], [1, 0], [1.0, 1.0], n_items=2, k=32)
    assert ratings[1] == pytest.approx(984 + 32 * (1 - expected))
    reversed_order = online_elo([1, 0], [0, 1], [1.0, 1.0], n_items=2, k=32)
    assert ratings[0] != reversed_order[0]


def test_json_elo_scale_and_predictions():
    result = fit_bradley_terry([0] * 10, [1] * 10, [1.0] * 7 + [0.0] * 3, items=["x", "y"])
    elo = result.to_scale("elo")
    diff = math.log(7 / 3) * 400 / math.log(10)
    assert elo.ratings[0] - elo.ratings[1] == pytest.approx(diff)
    assert elo.ratings.mean() == pytest.approx(1000.0)
    assert elo.predict_proba("x", "y")["win"] == pytest.approx(0.7)
    payload = json.loads(elo.to_json())
    assert payload["model"] == "bradley-terry" and payload["scale"] == "elo"
    assert [entry["item"] for entry in payload["items"]] == ["x", "y"]
    assert set(payload["items"][0]) >= {"item", "rating", "ci_low", "ci_high", "n"}
    assert payload["items"][0]["n"] == 10
    matrix = result.win_matrix()
    assert matrix[0, 1] == pytest.approx(0.7) and np.isnan(matrix[0, 0])


def test_multinomial_draw_has_multinomial_moments():
    # E[X] = N p, Var[X_i] = N p_i (1 - p_i), Cov[X_i, X_j] = -N p_i p_j, and every draw sums to N
    from rankalign.stats.uncertainty import multinomial

    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.3, 0.15, 0.05])
    total = 400
    draws = np.array([multinomial(rng, total, p) for _ in range(3000)])
    assert np.all(draws.sum(axis=1) == total) and draws.min() >= 0
    np.testing.assert_allclose(draws.mean(axis=0), total * p, rtol=0.02)
    cov = np.cov(draws.T)
    expected = total * (np.diag(p) - np.outer(p, p))
    np.testing.assert_allclose(cov, expected, rtol=0.12, atol=1.5)


def test_bootstrap_of_an_anchored_result_keeps_the_anchor():
    from rankalign.stats import bootstrap, fit_bradley_terry

    first, second, outcome = [0, 0, 1, 1, 2, 2, 0, 1], [1, 2, 2, 0, 0, 1, 2, 2], [1, 1, 1, 1, 1, 1, 0, 0]
    plain = fit_bradley_terry(first, second, outcome)
    anchored = plain.anchored(plain.items[0], 5.0)
    boot_plain, boot_anchored = bootstrap(plain, 50, seed=3), bootstrap(anchored, 50, seed=3)
    shift = 5.0 - plain.ratings[0]
    # the same replicates, shifted by the anchor's constant: intervals move with the ratings, widths stay
    assert boot_anchored.ci_low == pytest.approx(boot_plain.ci_low + shift, abs=1e-9)
    assert boot_anchored.ci_high == pytest.approx(boot_plain.ci_high + shift, abs=1e-9)
    assert boot_anchored.se == pytest.approx(boot_plain.se, abs=1e-12)
    assert boot_anchored.ci_low[0] < 5.0 < boot_anchored.ci_high[0]
