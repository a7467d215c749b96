"""Rating models of rankalign.stats against closed forms, choix, a published analysis, and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit, logit
from scipy.stats import norm

from rankalign.data.errors import DataError
from rankalign.stats import _newton
from rankalign.stats._sufficient import pair_counts
from rankalign.stats.pairwise import (
    _extra_columns,
    _pairwise_objective,
    fit_bradley_terry,
    fit_davidson,
    fit_rao_kupper,
    fit_thurstone,
)
from rankalign.stats.plackett_luce import (
    _pl_objective,
    fit_luce_choice,
    fit_plackett_luce,
    rankings_to_arrays,
)
from shared_data import needs_shared_data, shared_path  # noqa: E402

NETFLIX = shared_path("preflib-netflix/netflix.soc")


def two_items(wins, ties, losses):
    first = [0] * (wins + ties + losses)
    second = [1] * len(first)
    outcome = [1.0] * wins + [0.5] * ties + [0.0] * losses
    return first, second, outcome


# ------------------------------------------------------------------------------------ closed forms
def test_bradley_terry_two_items_closed_form():
    # theta_0 - theta_1 = log(w / l); var of the difference = 1/w + 1/l (binomial logit)
    result = fit_bradley_terry(*two_items(7, 0, 3))
    assert result.ratings[0] - result.ratings[1] == pytest.approx(math.log(7 / 3), abs=1e-9)
    assert result.ratings.sum() == pytest.approx(0.0, abs=1e-12)  # mean-zero gauge
    assert result.se[0] == pytest.approx(math.sqrt(1 / 7 + 1 / 3) / 2, rel=1e-7)
    # log-likelihood: 7 log(0.7) + 3 log(0.3)
    assert result.log_likelihood == pytest.approx(7 * math.log(0.7) + 3 * math.log(0.3), rel=1e-10)


def test_bradley_terry_reference_gauge_and_ties_as_half_wins():
    # 5 wins, 2 ties, 3 losses: effective 6 vs 4 under the arena convention
    result = fit_bradley_terry(*two_items(5, 2, 3), items=["a", "b"], reference="b")
    assert result.ratings[1] == 0.0 and result.se[1] == 0.0
    assert result.ratings[0] == pytest.approx(math.log(6 / 4), abs=1e-9)
    assert result.se[0] == pytest.approx(math.sqrt(10 / (6 * 4)), rel=1e-7)  # 1/(n p q)
    proba = result.predict_proba("a", "b")
    assert proba["win"] == pytest.approx(0.6, abs=1e-9) and proba["tie"] == 0.0


def test_thurstone_two_items_closed_form():
    result = fit_thurstone(*two_items(6, 2, 2))
    assert result.ratings[0] - result.ratings[1] == pytest.approx(norm.ppf(7 / 10), abs=1e-8)


def test_davidson_two_items_saturated():
    # two items: the model is saturated, so fitted probabilities equal the observed shares:
    # d = log(w / l), nu = t / sqrt(w l)
    w, t, lost = 9, 4, 3
    result = fit_davidson(*two_items(w, t, lost))
    assert result.ratings[0] - result.ratings[1] == pytest.approx(math.log(w / lost), abs=1e-8)
    assert result.params["nu"] == pytest.approx(t / math.sqrt(w * lost), rel=1e-7)
    # GenDavidson's tie.max: plogis(tie.max) = P(tie) between equal items = nu / (2 + nu)
    nu = t / math.sqrt(w * lost)
    assert expit(result.params["tie_max"]) == pytest.approx(nu / (2 + nu), rel=1e-7)
    proba = result.predict_proba("0", "1")
    assert proba["win"] == pytest.approx(w / 16, abs=1e-8)
    assert proba["tie"] == pytest.approx(t / 16, abs=1e-8)


def test_rao_kupper_two_items_saturated():
    # P(a) = 1/(1 + theta e^-d) = w/N and P(b) = 1/(1 + theta e^d) = l/N give
    # theta^2 = (N-w)(N-l)/(w l) and e^{2d} = w (N-l) / (l (N-w))
    w, t, lost = 9, 4, 3
    n = w + t + lost
    result = fit_rao_kupper(*two_items(w, t, lost))
    assert result.params["theta"] == pytest.approx(math.sqrt((n - w) * (n - lost) / (w * lost)), rel=1e-7)
    d = 0.5 * math.log(w * (n - lost) / (lost * (n - w)))
    assert result.ratings[0] - result.ratings[1] == pytest.approx(d, abs=1e-8)
    assert result.predict_proba("0", "1")["tie"] == pytest.approx(t / n, abs=1e-8)


def test_home_advantage_two_teams_closed_form():
    # A at home beats B in 8 of 10; B at home beats A in 6 of 10. logit p1 = d + h, logit p2 = -d + h.
    first = [0] * 10 + [1] * 10
    second = [1] * 10 + [0] * 10
    outcome = [1.0] * 8 + [0.0] * 2 + [1.0] * 6 + [0.0] * 4
    result = fit_bradley_terry(first, second, outcome, home=np.ones(20), reference=1)
    h = (logit(0.8) + logit(0.6)) / 2
    d = (logit(0.8) - logit(0.6)) / 2
    assert result.params["home"] == pytest.approx(h, abs=1e-8)
    assert result.ratings[0] == pytest.approx(d, abs=1e-8)
    assert result.predict_proba("0", "1", home=True)["win"] == pytest.approx(0.8, abs=1e-8)


def test_covariate_weight_recovered():
    # contextual BT: the logit is theta_a - theta_b + w x; simulate with a known w
    rng = np.random.default_rng(3)
    n, m = 6, 40_000
    theta = np.linspace(-1, 1, n)
    a = rng.integers(0, n, m)
    b = (a + rng.integers(1, n, m)) % n
    x = rng.normal(size=m)
    y = (rng.random(m) < expit(theta[a] - theta[b] + 0.7 * x)).astype(float)
    result = fit_bradley_terry(a, b, y, features=x[:, None])
    weight, se = result.params["weights"][0], result.params["weights_se"][0]
    assert abs(weight - 0.7) < 4 * se and se < 0.03
    assert np.abs(result.ratings - (theta - theta.mean())).max() < 0.1


# ------------------------------------------------------------------------------------ choix
def _simulated_pairs(seed, n=12, m=3000):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=n)
    a = rng.integers(0, n, m)
    b = (a + rng.integers(1, n, m)) % n
    y = rng.random(m) < expit(theta[a] - theta[b])
    return a, b, y.astype(float)


def test_bradley_terry_matches_choix_mle_and_map():
    choix = pytest.importorskip("choix")
    a, b, y = _simulated_pairs(0)
    data = [(int(i), int(j)) if win else (int(j), int(i)) for i, j, win in zip(a, b, y)]
    ours = fit_bradley_terry(a, b, y, n_items=12)
    theirs = choix.ilsr_pairwise(12, data, alpha=0.0, tol=1e-12, max_iter=10_000)
    np.testing.assert_allclose(ours.ratings, theirs - theirs.mean(), atol=1e-6)
    # choix.opt_pairwise's penalty is alpha * sum(theta^2), the same as our `prior`
    ours_map = fit_bradley_terry(a, b, y, n_items=12, prior=0.3)
    theirs_map = choix.opt_pairwise(12, data, alpha=0.3, method="Newton-CG", tol=1e-12)
    np.testing.assert_allclose(ours_map.ratings, theirs_map - theirs_map.mean(), atol=1e-6)


def test_plackett_luce_matches_choix():
    choix = pytest.importorskip("choix")
    rng = np.random.default_rng(1)
    n, r = 10, 2000
    theta = rng.normal(size=n)
    rankings = []
    for _ in range(r):
        subset = rng.choice(n, 4, replace=False)
        rankings.append([int(i) for i in subset[np.argsort(-(theta[subset] + rng.gumbel(size=4)))]])
    ours = fit_plackett_luce(rankings, n_items=n)
    theirs = choix.ilsr_rankings(n, rankings, alpha=0.0, tol=1e-12, max_iter=10_000)
    np.testing.assert_allclose(ours.ratings, theirs - theirs.mean(), atol=1e-6)


def test_luce_choice_matches_choix_top1():
    choix = pytest.importorskip("choix")
    rng = np.random.default_rng(2)
    n = 8
    theta = rng.normal(size=n)
    winners, sets = [], []
    for _ in range(3000):
        subset = rng.choice(n, 3, replace=False)
        probabilities = np.exp(theta[subset]) / np.exp(theta[subset]).sum()
        winners.append(int(rng.choice(subset, p=probabilities)))
        sets.append([int(i) for i in subset])
    ours = fit_luce_choice(winners, sets, n_items=n)
    theirs = choix.ilsr_top1(n, [(w, [j for j in s if j != w]) for w, s in zip(winners, sets)],
                             alpha=0.0, tol=1e-12, max_iter=10_000)
    np.testing.assert_allclose(ours.ratings, theirs - theirs.mean(), atol=1e-6)


# ------------------------------------------------------------------------------------ published analysis
def _read_soc(path):
    names, weights, orders = {}, [], []
    for line in path.read_text().splitlines():
        if line.startswith("# ALTERNATIVE NAME"):
            key, name = line[len("# ALTERNATIVE NAME "):].split(":", 1)
            names[int(key)] = name.strip()
        elif line and not line.startswith("#"):
            count, order = line.split(":")
            weights.append(float(count))
            orders.append([int(x) - 1 for x in order.split(",")])
    return [names[i + 1] for i in range(len(names))], orders, weights


@needs_shared_data
def test_netflix_reproduces_plackettluce_readme():
    # PlackettLuce README (github.com/hturner/PlackettLuce, "Usage"): PlackettLuce(R, weights = Freq)
    # with its default npseudo = 0.5 gives log-worths (Mean Girls reference) 0, 0.67080, -0.31404,
    # -0.43128, std. errors 0.07472, 0.07593, 0.07489, worths 0.2306285 0.4510655 0.1684719
    # 0.1498342, and residual deviance 3493.5.
    names, orders, weights = _read_soc(NETFLIX)
    result = fit_plackett_luce(orders, weights, items=names, npseudo=0.5, reference="Mean Girls")
    np.testing.assert_allclose(result.ratings, [0.0, 0.67080, -0.31404, -0.43128], atol=5e-6)
    np.testing.assert_allclose(result.se[1:], [0.07472, 0.07593, 0.07489], atol=5e-6)
    worth = np.exp(result.ratings) / np.exp(result.ratings).sum()
    np.testing.assert_allclose(worth, [0.2306285, 0.4510655, 0.1684719, 0.1498342], atol=5e-7)
    assert -2 * result.log_likelihood == pytest.approx(3493.5, abs=0.05)


# ------------------------------------------------------------------------------------ gradients
def _check_derivatives(objective, x, free=None):
    value, gradient, hessian = objective(x, 2)
    hessian = hessian.toarray() if hasattr(hessian, "toarray") else hessian
    eps = 1e-6
    for k in range(len(x)):
        step = np.zeros_like(x)
        step[k] = eps
        numeric = (objective(x + step, 0)[0] - objective(x - step, 0)[0]) / (2 * eps)
        assert numeric == pytest.approx(gradient[k], rel=1e-5, abs=1e-5)
        numeric_row = (objective(x + step, 2)[1] - objective(x - step, 2)[1]) / (2 * eps)
        np.testing.assert_allclose(numeric_row, hessian[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", ["bradley-terry", "thurstone", "davidson", "rao-kupper"])
def test_pairwise_gradient_and_hessian_match_finite_differences(model):
    rng = np.random.default_rng(4)
    m, n = 60, 5
    a = rng.integers(0, n, m)
    b = (a + rng.integers(1, n, m)) % n
    y = rng.choice([0.0, 0.5, 1.0], size=m)
    counts = pair_counts(a, b, y, rng.integers(1, 4, m), n_items=n, home=rng.integers(0, 2, m),
                         features=rng.normal(size=(m, 2)))
    extras = _extra_columns(counts, True)
    has_tau = model in ("davidson", "rao-kupper")
    objective = _pairwise_objective(model, counts, extras, has_tau, prior=0.2)
    x = rng.normal(size=n + 3 + int(has_tau))
    _check_derivatives(objective, x)
    # extreme strengths keep the derivatives finite
    value, gradient, hessian = objective(x * 60, 2)
    assert np.isfinite(value) and np.all(np.isfinite(gradient)) and np.all(np.isfinite(hessian))


def test_plackett_luce_gradient_and_hessian_match_finite_differences():
    rankings = [[0, 1, 2, 3], [2, 0, 1], [3, 1, [0, 2]], [1, [0, 2, 3]], [4, 0]]
    n, groups = rankings_to_arrays(rankings, [1.0, 2.0, 0.5, 1.5, 1.0])
    objective = _pl_objective(n, groups, prior=0.1, npseudo=0.5)
    x = np.random.default_rng(5).normal(size=n)
    _check_derivatives(objective, x)
    value, gradient, _ = objective(np.array([800.0, -800, 0, 5, 1]), 2)
    assert np.isfinite(value) and np.all(np.isfinite(gradient))


def test_top_k_likelihood_by_hand():
    # [2, [0, 1]]: item 2 chosen from {0, 1, 2}; nothing else. P = e^t2 / (e^t0 + e^t1 + e^t2)
    theta = np.array([0.3, -0.2, 0.5])
    n, groups = rankings_to_arrays([[2, [0, 1]]], n_items=3)
    value = _pl_objective(n, groups, 0.0, 0.0)(theta, 0)[0]
    assert value == pytest.approx(0.5 - math.log(math.exp(0.3) + math.exp(-0.2) + math.exp(0.5)), abs=1e-12)


def test_gauge_projection_of_covariance():
    # mean-zero gauge: the covariance of centred ratings is A C A^T with rows summing to zero
    a, b, y = _simulated_pairs(7, n=5, m=500)
    result = fit_bradley_terry(a, b, y, n_items=5)
    np.testing.assert_allclose(result.covariance.sum(axis=1), 0.0, atol=1e-10)
    ref = fit_bradley_terry(a, b, y, n_items=5, reference=2)
    # var(theta_i - theta_2) is gauge-free: compare it computed from both fits
    cov = result.covariance
    np.testing.assert_allclose(ref.se ** 2, np.diag(cov) - 2 * cov[:, 2] + cov[2, 2], rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------------------------ identifiability and bad input
def test_disconnected_graph_names_components():
    with pytest.raises(ValueError, match="disconnected.*2 components.*--prior"):
        fit_bradley_terry([0, 1, 2, 3], [1, 0, 3, 2], [1, 1, 1, 1], items=["a", "b", "c", "d"])


def test_item_that_never_loses_is_named():
    with pytest.raises(ValueError, match="never lose: a"):
        fit_bradley_terry([0, 0, 1, 2], [1, 2, 2, 1], [1, 1, 1, 1], items=["a", "b", "c"])
    # the prior makes it estimable
    result = fit_bradley_terry([0, 0, 1, 2], [1, 2, 2, 1], [1, 1, 1, 1], items=["a", "b", "c"], prior=0.5)
    assert result.ratings[0] == result.ratings.max()


def test_plackett_luce_never_wins_is_named():
    with pytest.raises(ValueError, match="never win: 2"):
        fit_plackett_luce([[0, 1, 2], [1, 0, 2]])


@pytest.mark.parametrize("first, second, outcome, count, field, reason", [
    ([0, 1], [1, 1], [1, 1], None, "second", "self_comparison"),
    ([0, 1], [1, 0], [1, 2], None, "outcome", "unknown_outcome"),
    ([0, 1], [1, 0], [1, 0], [1, -1], "count", "negative_count"),
])
def test_bad_comparisons_name_row_and_field(first, second, outcome, count, field, reason):
    with pytest.raises(DataError) as error:
        fit_bradley_terry(first, second, outcome, count)
    assert error.value.line == 2 and error.value.field == field and error.value.reason == reason


def test_bad_rankings_name_row_and_field():
    with pytest.raises(DataError) as error:
        fit_plackett_luce([[0, 1, 2], [1, 2, 1]])
    assert error.value.line == 2 and error.value.field == "ranking[2]"
    with pytest.raises(DataError, match="tied inside the ranking"):
        fit_plackett_luce([[0, [1, 2], 3]])
    with pytest.raises(DataError, match="no comparisons"):
        fit_bradley_terry([], [], [])
    with pytest.raises(DataError, match="two or more items"):
        fit_plackett_luce([[0]], n_items=1)


def test_newton_uses_sparse_path_for_many_items(monkeypatch):
    # the sparse (CG) path gives the same estimate as the dense one
    a, b, y = _simulated_pairs(8, n=30, m=4000)
    dense = fit_bradley_terry(a, b, y, n_items=30)
    monkeypatch.setattr(_newton, "DENSE_LIMIT", 10)
    sparse_fit = fit_bradley_terry(a, b, y, n_items=30)
    np.testing.assert_allclose(sparse_fit.ratings, dense.ratings, atol=1e-7)
    assert np.all(np.isnan(sparse_fit.se))


def test_citations_reproduces_bradleyterry2_vignette():
    # Stigler (1994) journal citations as in Agresti (2002, p. 448) and BradleyTerry2's `citations`
    # (rows: cited journal = winner, columns: citing journal = loser). Turner & Firth (2012), "Bradley-Terry
    # models in R: the BradleyTerry2 package", JSS 48(9), section 2.1: BTm(cbind(win1, win2), journal1,
    # journal2) gives, with Biometrika (the first level) at 0: Comm Statist -2.9491, JASA -0.4796,
    # JRSS-B 0.2690.
    names = ["Biometrika", "Comm Statist", "JASA", "JRSS-B"]
    cited_by = np.array([[714, 730, 498, 221], [33, 425, 68, 17], [320, 813, 1072, 142], [284, 276, 325, 188]])
    first, second, count = [], [], []
    for i in range(4):
        for j in range(4):
            if i != j:
                first.append(i)
                second.append(j)
                count.append(cited_by[i, j])
    result = fit_bradley_terry(first, second, np.ones(len(first)), count, items=names, reference="Biometrika")
    np.testing.assert_allclose(result.ratings, [0.0, -2.9491, -0.4796, 0.2690], atol=5e-5)


def test_davidson_luce_on_pairs_is_davidson_and_without_ties_is_plackett_luce():
    from rankalign.stats import fit_davidson_luce

    rng = np.random.default_rng(9)
    n, m = 5, 400
    a = rng.integers(0, n, m)
    b = (a + rng.integers(1, n, m)) % n
    y = rng.choice([0.0, 0.5, 1.0], size=m)
    davidson = fit_davidson(a, b, y, n_items=n)
    rankings = [[int(i), int(j)] if o == 1 else ([int(j), int(i)] if o == 0 else [[int(i), int(j)]])
                for i, j, o in zip(a, b, y)]
    tied = fit_davidson_luce(rankings, n_items=n)
    # a pair with a possible tie of order 2: P(tie) = delta_2 sqrt(a_i a_j) / (a_i + a_j + delta_2 sqrt(a_i a_j))
    np.testing.assert_allclose(tied.ratings, davidson.ratings, atol=1e-8)
    np.testing.assert_allclose(tied.se, davidson.se, rtol=1e-6)
    assert math.exp(tied.params["tie2"]) == pytest.approx(davidson.params["nu"], rel=1e-7)
    assert tied.log_likelihood == pytest.approx(davidson.log_likelihood, rel=1e-10)
    plain = [list(map(int, rng.permutation(n)[:3])) for _ in range(200)]
    np.testing.assert_allclose(fit_davidson_luce(plain, n_items=n).ratings,
                               fit_plackett_luce(plain, n_items=n).ratings, atol=1e-8)
    # without ties, the ghost-item pseudo-rankings agree with fit_plackett_luce's npseudo
    np.testing.assert_allclose(fit_davidson_luce(plain, n_items=n, npseudo=0.5, reference=0).ratings,
                               fit_plackett_luce(plain, n_items=n, npseudo=0.5, reference=0).ratings, atol=1e-8)
    np.testing.assert_allclose(fit_davidson_luce(plain, n_items=n, npseudo=0.5, reference=0).se,
                               fit_plackett_luce(plain, n_items=n, npseudo=0.5, reference=0).se, rtol=1e-6)


def test_davidson_luce_derivatives_and_likelihood_by_hand():
    from rankalign.stats.davidson_luce import _design, _objective

    rankings = [[0, [1, 2], 3], [[0, 3], 1], [2, [0, 1, 3]], [1, 0]]
    design, starts, chosen, weights, max_tie, _ = _design(rankings, np.array([1.0, 2.0, 1.0, 0.5]), 4)
    objective = _objective(4, design, starts, chosen, weights, 0.1)
    x = np.random.default_rng(6).normal(size=4 + max_tie - 1)
    _check_derivatives(objective, x)
    # one ranking [{0, 1}] of two items: P = d2 sqrt(a0 a1) / (a0 + a1 + d2 sqrt(a0 a1))
    design, starts, chosen, weights, _, _ = _design([[[0, 1]]], np.ones(1), 2)
    theta0, theta1, log_delta = 0.4, -0.3, 0.2
    value = _objective(2, design, starts, chosen, weights, 0.0)(np.array([theta0, theta1, log_delta]), 0)[0]
    tie = math.exp(log_delta + (theta0 + theta1) / 2)
    assert value == pytest.approx(math.log(tie / (math.exp(theta0) + math.exp(theta1) + tie)), abs=1e-12)


def test_scale_conversions_are_exact_or_refused():
    thurstone = fit_thurstone(*two_items(6, 2, 2))
    assert thurstone.scale == "probit" and thurstone.to_scale("natural") is thurstone
    for scale in ("logit", "elo"):
        with pytest.raises(ValueError, match="probit"):
            thurstone.to_scale(scale)
    bt = fit_bradley_terry(*two_items(6, 2, 2))
    with pytest.raises(ValueError, match="probit"):
        bt.to_scale("probit")
    # Elo = 400 / ln 10 * theta + 1000; an anchor moves with the ratings
    elo = bt.anchored(bt.items[1], 0.5).to_scale("elo")
    assert elo.ratings[1] == pytest.approx(400 / math.log(10) * 0.5 + 1000, abs=1e-9)
    assert elo.anchor == (bt.items[1], pytest.approx(400 / math.log(10) * 0.5 + 1000))
    assert elo.to_scale("logit").ratings == pytest.approx(bt.anchored(bt.items[1], 0.5).ratings, abs=1e-9)


@pytest.mark.parametrize("call, field", [
    (lambda: fit_bradley_terry([0, 1, 2.7], [1, 2, 0], [1, 1, 1]), "first"),        # 2.7 is not item 2
    (lambda: fit_bradley_terry(np.zeros((2, 3), int), np.ones(6, int), np.ones(6)), "first"),  # not one row each
    (lambda: fit_bradley_terry(["a", "b"], [1, 0], [1, 1]), "first"),
    (lambda: fit_bradley_terry([math.nan, 1], [1, 0], [1, 1]), "first"),
    (lambda: fit_bradley_terry([2 ** 70, 1], [0, 0], [1, 1]), "first"),
    (lambda: fit_bradley_terry([0, 1], [1, 0], [1, 0], count=2.0), "count"),
    (lambda: fit_bradley_terry([0, 1], [1, 0], [1, 0], n_items=0), "n_items"),
    (lambda: fit_plackett_luce([[0, 1, 2.5], [2, 1, 0]]), "ranking[2]"),
    (lambda: fit_plackett_luce([[0, 1], [1, 0]], weights=2.0), "weights"),
])
def test_api_inputs_that_are_not_what_they_claim_are_data_errors(call, field):
    with pytest.raises(DataError) as caught:
        call()
    assert caught.value.field == field


@pytest.mark.parametrize("call, message", [
    (lambda: fit_bradley_terry([0, 1, 2], [1, 2, 0], [1, 1, 1], ci_level=2), "ci_level"),
    (lambda: fit_bradley_terry([0, 1, 2], [1, 2, 0], [1, 1, 1], ci_level=0), "ci_level"),
    (lambda: fit_bradley_terry([0, 1, 2], [1, 2, 0], [1, 1, 1], prior=math.nan), "prior"),
    (lambda: fit_bradley_terry([0, 1, 2], [1, 2, 0], [1, 1, 1], items=["a", "a", "b"]), "appears twice"),
    (lambda: fit_plackett_luce([[0, 1], [1, 0]], npseudo=math.nan), "npseudo"),
    (lambda: fit_plackett_luce([[0, 1], [1, 0]], npseudo=-1), "npseudo"),
])
def test_api_options_out_of_range_are_usage_errors(call, message):
    from rankalign.errors import UsageError

    with pytest.raises(UsageError, match=message):
        call()


def test_pair_probabilities_refuse_unknown_models_and_impossible_tie_parameters():
    from rankalign.stats.result import pair_probabilities

    with pytest.raises(ValueError, match="unknown model"):
        pair_probabilities("nonsense", 0.0, {})
    with pytest.raises(ValueError, match="theta"):
        pair_probabilities("rao-kupper", 0.0, {"theta": 0.5})  # would give a negative tie probability
    win, tie, loss = pair_probabilities("rao-kupper", 0.0, {"theta": 2.0})
    assert (win, tie, loss) == pytest.approx((1 / 3, 1 / 3, 1 / 3))  # pi / (pi + 2 pi) each way


def test_rank_upper_bound_without_intervals_is_the_rank():
    # no interval (NaN, as above DENSE_LIMIT items): the bound cannot claim a better rank than the point rank
    result = fit_bradley_terry([0, 0, 1, 1, 1, 2, 2, 0, 0], [1, 1, 0, 2, 2, 1, 0, 2, 2], [1] * 9)
    assert list(result.rank_upper_bounds()) == [1, 1, 1]  # wide overlapping intervals: none ranked apart
    from dataclasses import replace

    unknown = replace(result, ci_low=np.full(3, np.nan), ci_high=np.full(3, np.nan), se=np.full(3, np.nan))
    assert list(unknown.rank_upper_bounds()) == list(unknown.ranks())
    assert sorted(unknown.ranks()) == [1, 2, 3]
