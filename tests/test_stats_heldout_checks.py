"""Independent checks of `rankalign rate` and `rankalign.stats`: every expected value here is derived by hand
(closed forms of saturated two-item models) or by a brute-force fit written in the test (the likelihood from
the model's formula, scipy.optimize, a finite-difference Hessian), never copied from rankalign's output."""

from __future__ import annotations

import csv
import json
import math
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.optimize import minimize
from scipy.stats import norm

from rankalign.cli import main
from rankalign.stats import fit_davidson, fit_davidson_luce, fit_plackett_luce, fit_rao_kupper
from shared_data import needs_shared_data, shared_path  # noqa: E402

FOOTBALL = shared_path("football-epl/matches.csv")
FOOTBALL_OPTIONS = ("--map", "item_a=home,item_b=away,outcome=result", "--outcomes", "1=a,0=tie,-1=b")
ELO = 400.0 / math.log(10.0)


def rate(*args):
    result = CliRunner().invoke(main, ["rate", *(str(a) for a in args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def rate_json(*args):
    payload = json.loads(rate(*args, "--json").stdout)
    return payload, {entry["item"]: entry for entry in payload["items"]}


def write_lines(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def games(wins, ties, losses, first="a", second="b"):
    """CSV rows of ``first`` against ``second`` with those outcomes."""
    return ([f"{first},{second},a"] * wins + [f"{first},{second},tie"] * ties
            + [f"{first},{second},b"] * losses)


# ------------------------------------------------------------------ saturated two-item models, by hand
# a beats b W = 6 times, 3 ties, b beats a L = 2 times (N = 11): every two-item model with as many free
# parameters as outcome probabilities reproduces the observed shares exactly
W, TIES, L = 6, 3, 2
N = W + TIES + L


@pytest.fixture
def two_items(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("\n".join(["item_a,item_b,outcome", *games(W, TIES, L)]) + "\n")
    return path


def test_davidson_two_items_closed_form(two_items):
    # softmax(d/2, -d/2, log nu) = (W, L, T) / N  =>  d = log(W / L), nu = T / sqrt(W L)
    payload, items = rate_json(two_items, "--model", "davidson")
    assert items["a"]["rating"] - items["b"]["rating"] == pytest.approx(math.log(W / L), abs=1e-9)
    assert payload["nu"] == pytest.approx(TIES / math.sqrt(W * L), rel=1e-9)
    expected = W * math.log(W / N) + TIES * math.log(TIES / N) + L * math.log(L / N)
    assert payload["log_likelihood"] == pytest.approx(expected, rel=1e-10)


def test_rao_kupper_two_items_closed_form(two_items):
    # 1/P(a) - 1 = theta e^-d, 1/P(b) - 1 = theta e^d  =>  theta^2 = (N/W - 1)(N/L - 1), e^2d = (N/L - 1)/(N/W - 1)
    payload, items = rate_json(two_items, "--model", "rao-kupper")
    theta = math.sqrt((N / W - 1) * (N / L - 1))
    d = 0.5 * math.log((N / L - 1) / (N / W - 1))
    assert payload["theta"] == pytest.approx(theta, rel=1e-9)
    assert items["a"]["rating"] - items["b"]["rating"] == pytest.approx(d, abs=1e-9)


def test_bradley_terry_and_thurstone_two_items_closed_form(two_items):
    # ties are half a win each: p = (W + T/2) / N; BT d = logit p with se(d) = 1 / sqrt(N p q) (the mean-zero
    # gauge halves it per item); Thurstone d = Phi^-1(p) with se(d) = sqrt(p q / N) / phi(d)
    p = (W + TIES / 2) / N
    payload, items = rate_json(two_items)
    assert items["a"]["rating"] == pytest.approx(math.log(p / (1 - p)) / 2, abs=1e-9)
    assert items["a"]["se"] == pytest.approx(0.5 / math.sqrt(N * p * (1 - p)), rel=1e-8)
    assert items["a"]["ci_high"] - items["a"]["rating"] == pytest.approx(norm.ppf(0.975) * items["a"]["se"], rel=1e-9)
    payload, items = rate_json(two_items, "--model", "thurstone")
    d = norm.ppf(p)
    assert items["a"]["rating"] - items["b"]["rating"] == pytest.approx(d, abs=1e-9)
    # the observed information of the fractional likelihood at the saturated fit
    info = N * norm.pdf(d) ** 2 / (p * (1 - p))
    assert items["a"]["se"] == pytest.approx(0.5 / math.sqrt(info), rel=1e-7)
    elo, elo_items = rate_json(two_items, "--scale", "elo", "--anchor", "b=1500")
    assert elo_items["b"]["rating"] == pytest.approx(1500.0)
    assert elo_items["a"]["rating"] == pytest.approx(1500.0 + ELO * math.log(p / (1 - p)), abs=1e-7)


def test_home_advantage_two_items_closed_form(tmp_path):
    # a at home beats b 7 of 10, b at home beats a 4 of 10 (no ties): logit(0.7) = d + h, logit(0.4) = -d + h
    rows = games(7, 0, 3, "a", "b") + games(4, 0, 6, "b", "a")
    path = tmp_path / "home.csv"
    path.write_text("\n".join(["item_a,item_b,outcome", *rows]) + "\n")
    payload, items = rate_json(path, "--home-advantage")
    logit = lambda q: math.log(q / (1 - q))  # noqa: E731
    assert payload["home"] == pytest.approx((logit(0.7) + logit(0.4)) / 2, abs=1e-9)
    assert items["a"]["rating"] - items["b"]["rating"] == pytest.approx((logit(0.7) - logit(0.4)) / 2, abs=1e-9)


# ------------------------------------------------------------------ predictions of the tie models
def test_davidson_luce_predicts_ties_like_davidson():
    # pairs with ties read as rankings of two: Davidson-Luce is Davidson with nu = delta_2, so the saturated
    # fit predicts the observed shares (6, 3, 2) / 11 for a against b, not sigma(d) without ties
    rankings = [[0, 1]] * W + [[[0, 1]]] * TIES + [[1, 0]] * L
    fit = fit_davidson_luce(rankings, items=["a", "b"])
    assert fit.params["tie2"] == pytest.approx(math.log(TIES / math.sqrt(W * L)), abs=1e-9)
    predicted = fit.predict_proba("a", "b")
    assert predicted["win"] == pytest.approx(W / N, abs=1e-9)
    assert predicted["tie"] == pytest.approx(TIES / N, abs=1e-9)
    assert predicted["loss"] == pytest.approx(L / N, abs=1e-9)
    assert fit.win_matrix()[0, 1] == pytest.approx(W / N, abs=1e-9)
    # and the same as the Davidson fit of the same games
    davidson = fit_davidson([0] * N, [1] * N, [1.0] * W + [0.5] * TIES + [0.0] * L, items=["a", "b"])
    assert davidson.predict_proba("a", "b")["tie"] == pytest.approx(TIES / N, abs=1e-9)


@pytest.mark.parametrize("model", ["davidson", "rao-kupper"])
def test_matrices_predicted_rate_counts_ties_half_like_observed(two_items, tmp_path, model):
    # the observed win rate counts a tie 1/2: (W + T/2) / N. The saturated tie models reproduce every share,
    # so the predicted rate, counted the same way, must equal it (P(win) alone would be W / N)
    matrices = tmp_path / f"{model}.json"
    rate(two_items, "--model", model, "--matrices", matrices)
    m = json.loads(matrices.read_text())
    a, b = m["items"].index("a"), m["items"].index("b")
    assert m["observed_win_rate"][a][b] == pytest.approx((W + TIES / 2) / N)
    assert m["predicted_win_rate"][a][b] == pytest.approx((W + TIES / 2) / N, abs=1e-9)
    assert m["predicted_win_rate"][a][b] + m["predicted_win_rate"][b][a] == pytest.approx(1.0, abs=1e-12)


def test_win_matrix_tie_credit_under_rao_kupper():
    fit = fit_rao_kupper([0] * N, [1] * N, [1.0] * W + [0.5] * TIES + [0.0] * L, items=["a", "b"])
    assert fit.win_matrix()[0, 1] == pytest.approx(W / N, abs=1e-9)
    assert fit.win_matrix(tie_credit=0.5)[0, 1] == pytest.approx((W + TIES / 2) / N, abs=1e-9)


# ------------------------------------------------------------------ --skip-invalid keeps valid rankings
def _bt_brute_force(first, second, n_items):
    """Bradley-Terry MLE of decisive pairs (first beat second), mean-zero, by BFGS on the plain likelihood."""
    first, second = np.asarray(first), np.asarray(second)

    def nll(z):
        theta = np.append(z, -z.sum())
        return float(np.sum(np.logaddexp(0.0, -(theta[first] - theta[second]))))

    z = minimize(nll, np.zeros(n_items - 1), method="BFGS", options={"gtol": 1e-10}).x
    return np.append(z, -z.sum())


def test_skip_invalid_does_not_drop_lists_of_three(tmp_path):
    # one bad row; the lists of three are valid data and must be fitted (as every pair they imply), with
    # or without --skip-invalid; they used to be skipped as "not_a_pair" rows under --skip-invalid
    records = [
        {"prompt": None, "candidates": ["a", "b", "c"], "ranks": [0, 1, 2]},
        {"prompt": None, "candidates": ["b", "a"], "ranks": [0, 1]},
        {"prompt": None, "candidates": ["c", "b", "a"], "ranks": [0, 1, 2]},
        {"prompt": None, "candidates": ["a", "c"], "ranks": [0, 1]},
        {"prompt": None, "candidates": ["b", "c", "a"], "ranks": [0, 1, 2]},
    ]
    good = write_lines(tmp_path / "good.jsonl", records)
    bad = write_lines(tmp_path / "bad.jsonl", records[:2] + [{"prompt": None, "candidates": ["a", "b"],
                                                              "ranks": [0, "x"]}] + records[2:])
    order = {"a": 0, "b": 1, "c": 2}
    first, second = [], []
    for record in records:
        ranked = [name for _, name in sorted(zip(record["ranks"], record["candidates"]))]
        for i in range(len(ranked)):
            for j in range(i + 1, len(ranked)):
                first.append(order[ranked[i]])
                second.append(order[ranked[j]])
    expected = _bt_brute_force(first, second, 3)
    for path, extra in ((good, ()), (bad, ("--skip-invalid",))):
        payload, items = rate_json(path, *extra)
        for name, index in order.items():
            assert items[name]["rating"] == pytest.approx(expected[index], abs=1e-5)
        # 3 lists of three (2 pairs each per item) and 2 pairs: a and c are in 8 comparisons, b in 7
        assert {name: entry["n"] for name, entry in items.items()} == {"a": 8, "b": 7, "c": 7}
    # Plackett-Luce too: the lists are rankings, not dropped rows
    pl_payload, _ = rate_json(bad, "--skip-invalid", "--model", "pl")
    assert pl_payload["log_likelihood"] == pytest.approx(rate_json(good, "--model", "pl")[0]["log_likelihood"])


def test_skip_invalid_keeps_item_pairs_asked_on_a_prompt(tmp_path):
    # the arena's export: item pairs that carry the prompt they were judged on. a > b, b > c, c > a once each
    # and a tie of a and c (half a win each): the score equations hold at theta = 0 (each item wins as much
    # as it loses), so every rating is 0 and the log-likelihood is 4 log(1/2)
    records = [{"prompt": f"p{k}", "candidates": pair, "ranks": ranks} for k, (pair, ranks) in enumerate(
        [(["a", "b"], [0, 1]), (["b", "c"], [0, 1]), (["c", "a"], [0, 1]), (["a", "c"], [0, 0])])]
    path = write_lines(tmp_path / "votes.jsonl", records)
    for extra in ((), ("--skip-invalid",)):
        payload, items = rate_json(path, *extra)
        assert sorted(items) == ["a", "b", "c"]
        assert all(abs(entry["rating"]) < 1e-9 for entry in items.values())
        assert payload["log_likelihood"] == pytest.approx(4 * math.log(0.5))


# ------------------------------------------------------------------ brute force on small and real data
def test_plackett_luce_matches_brute_force_enumeration():
    # complete rankings of 3 items with counts; the MLE maximises sum_count log P(ranking), P written out
    counts = {(0, 1, 2): 5, (1, 0, 2): 3, (2, 0, 1): 2, (0, 2, 1): 4, (1, 2, 0): 1, (2, 1, 0): 2}
    rankings = [list(r) for r in counts]
    weights = list(counts.values())

    def log_p(theta, ranking):
        a, b, c = (theta[i] for i in ranking)
        return a - np.logaddexp.reduce([a, b, c]) + b - np.logaddexp(b, c)

    def nll(z):
        theta = np.append(z, -z.sum())
        return -sum(w * log_p(theta, r) for r, w in zip(rankings, weights))

    z = minimize(nll, np.zeros(2), method="BFGS", options={"gtol": 1e-11}).x
    expected = np.append(z, -z.sum())
    fit = fit_plackett_luce(rankings, weights)
    np.testing.assert_allclose(fit.ratings, expected, atol=1e-6)
    assert fit.log_likelihood == pytest.approx(-nll(z), rel=1e-9)
    # probabilities of all 6 orders under the fit sum to 1 (a sanity check of log_p itself)
    assert sum(math.exp(log_p(fit.ratings, r)) for r in permutations(range(3))) == pytest.approx(1.0)


@needs_shared_data
def test_football_davidson_home_matches_brute_force_and_readme():
    with open(FOOTBALL, newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = sorted({r["home"] for r in rows} | {r["away"] for r in rows})
    index = {name: i for i, name in enumerate(names)}
    f = np.array([index[r["home"]] for r in rows])
    s = np.array([index[r["away"]] for r in rows])
    result = np.array([int(r["result"]) for r in rows])
    n = len(names)

    def nll(x):
        # x = (theta_1..theta_{n-1} with theta_0 = 0, home h, log nu); Davidson with pi_home * e^h:
        # P(home) = pi_h' / (pi_h' + pi_a + nu sqrt(pi_h' pi_a)), P(draw) = nu sqrt(pi_h' pi_a) / (same)
        theta = np.append(0.0, x[:n - 1])
        a, b = theta[f] + x[n - 1], theta[s]
        log_tie = x[n] + (a + b) / 2
        log_den = np.logaddexp.reduce(np.stack([a, b, log_tie]), axis=0)
        chosen = np.where(result == 1, a, np.where(result == -1, b, log_tie))
        return -float(np.sum(chosen - log_den))

    x = minimize(nll, np.zeros(n + 1), method="BFGS", options={"gtol": 1e-9}).x
    # finite-difference Hessian (central differences) for the standard errors of h and log nu
    eps, m = 1e-4, len(x)
    hessian = np.empty((m, m))
    for i in range(m):
        for j in range(i, m):
            e_i, e_j = np.eye(m)[i] * eps, np.eye(m)[j] * eps
            hessian[i, j] = hessian[j, i] = (nll(x + e_i + e_j) - nll(x + e_i - e_j) - nll(x - e_i + e_j)
                                             + nll(x - e_i - e_j)) / (4 * eps * eps)
    cov = np.linalg.inv(hessian)
    theta = np.append(0.0, x[:n - 1])
    theta -= theta.mean()
    payload, items = rate_json(FOOTBALL, *FOOTBALL_OPTIONS, "--model", "davidson", "--home-advantage")
    assert payload["home"] == pytest.approx(x[n - 1], abs=1e-5)
    assert payload["log_nu"] == pytest.approx(x[n], abs=1e-5)
    assert payload["home_se"] == pytest.approx(math.sqrt(cov[n - 1, n - 1]), rel=1e-3)
    assert payload["log_nu_se"] == pytest.approx(math.sqrt(cov[n, n]), rel=1e-3)
    assert payload["log_likelihood"] == pytest.approx(-nll(x), abs=1e-6)
    for name, i in index.items():
        assert items[name]["rating"] == pytest.approx(theta[i], abs=1e-4)
    # README's tour: fit.params["nu"], fit.params["home"] = 0.881, 0.668
    assert round(payload["nu"], 3) == 0.881 and round(payload["home"], 3) == 0.668
