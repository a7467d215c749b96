"""Evaluation metrics against independent derivations: hand arithmetic, brute force, scipy/sklearn,
closed forms and simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from rankalign.eval import (
    alignment_gap,
    cohens_kappa,
    expected_calibration_error,
    gold_summary,
    gold_win_rate,
    group_metrics,
    idealised_ranking_accuracy,
    kendall_tau,
    kl_estimate,
    likelihood_displacement,
    listwise_ranking_accuracy,
    listwise_reward_accuracy,
    mean_kendall_tau,
    mean_with_se,
    paired_win_rate_difference,
    preference_calibration,
    ranking_accuracy,
    reward_accuracy,
)


# ------------------------------------------------------------------------------------- mean_with_se
def test_mean_with_se_by_hand():
    # mean 2.5; deviations -1.5, -0.5, 0.5, 1.5 -> sum of squares 5, variance 5/3, se = sqrt(5/3)/2
    mean, se = mean_with_se([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert se == pytest.approx(math.sqrt(5 / 3) / 2)


def test_mean_with_se_clusters_samples_by_prompt():
    # rows are prompts: row means 2 and 5 (the NaN is a missing sample) -> mean 3.5,
    # variance of (2, 5) with ddof 1 = 4.5, se = sqrt(4.5 / 2) = 1.5
    mean, se = mean_with_se([[1.0, 3.0], [5.0, np.nan]])
    assert (mean, se) == pytest.approx((3.5, 1.5))
    # flattened: values 1, 3, 5 -> mean 3, variance 4, se = 2 / sqrt(3)
    mean, se = mean_with_se([[1.0, 3.0], [5.0, np.nan]], axis_is_prompt=False)
    assert (mean, se) == pytest.approx((3.0, 2 / math.sqrt(3)))


def test_mean_with_se_edge_cases():
    assert all(math.isnan(v) for v in mean_with_se([]))
    mean, se = mean_with_se([7.0])
    assert mean == 7.0 and math.isnan(se)
    assert mean_with_se([2.0, 2.0, 2.0]) == (2.0, 0.0)
    assert mean_with_se([1.0, np.inf])[0] == np.inf  # an infinite value is not silently dropped


# ------------------------------------------------------------------------------------ gold_win_rate
def test_gold_win_rate_by_hand():
    policy = [3.0, 1.0, 2.0, 5.0]
    reference = [1.0, 2.0, 2.0, 4.0]
    # outcomes 1, 0, 0.5 (tie), 1 -> rate 0.625
    # deviations .375, -.625, -.125, .375 -> squares sum .6875, /3 = .2291667, /4 -> se = sqrt(.0572917)
    rate, se = gold_win_rate(policy, reference)
    assert rate == pytest.approx(0.625)
    assert se == pytest.approx(math.sqrt(0.6875 / 3 / 4))
    assert gold_win_rate(policy, reference, ties="win")[0] == pytest.approx(0.75)
    assert gold_win_rate(policy, reference, ties="loss")[0] == pytest.approx(0.5)
    # exclude: outcomes 1, 0, 1 -> 2/3; variance of (1, 0, 1) = 1/3, se = sqrt(1/3 / 3) = 1/3
    rate, se = gold_win_rate(policy, reference, ties="exclude")
    assert (rate, se) == pytest.approx((2 / 3, 1 / 3))


def test_gold_win_rate_samples_per_prompt_brute_force():
    rng = np.random.default_rng(0)
    policy = rng.integers(0, 4, size=(6, 3)).astype(float)
    reference = rng.integers(0, 4, size=(6, 2)).astype(float)
    outcomes = []
    for p_row, r_row in zip(policy, reference):
        scores = [1.0 if a > b else 0.5 if a == b else 0.0 for a in p_row for b in r_row]
        outcomes.append(sum(scores) / len(scores))
    expected_rate = sum(outcomes) / len(outcomes)
    expected_se = np.std(outcomes, ddof=1) / math.sqrt(len(outcomes))
    assert gold_win_rate(policy, reference) == pytest.approx((expected_rate, expected_se))


def test_gold_win_rate_se_closed_form_and_simulation():
    # no ties, one sample per prompt: outcomes are Bernoulli, so se = sqrt(p(1-p)/(n-1)) exactly
    rng = np.random.default_rng(1)
    n, p = 200, 0.7
    wins = rng.random(n) < p
    policy = np.where(wins, 1.0, -1.0)
    reference = np.zeros(n)
    rate, se = gold_win_rate(policy, reference)
    assert rate == pytest.approx(wins.mean())
    assert se == pytest.approx(math.sqrt(rate * (1 - rate) / (n - 1)))
    # across repeated experiments, the spread of the rate matches the reported SE
    rates, ses = [], []
    for _ in range(1000):
        policy = rng.normal(0.5, 1.0, size=(n, 2))
        reference = rng.normal(0.0, 1.0, size=(n, 2))
        r, s = gold_win_rate(policy, reference)
        rates.append(r)
        ses.append(s)
    assert np.std(rates) == pytest.approx(np.mean(ses), rel=0.1)


def test_paired_win_rate_difference_by_hand():
    reference = [1.0, 2.0, 2.0, 4.0]
    first = [3.0, 1.0, 2.0, 5.0]   # outcomes 1, 0, 0.5, 1
    second = [0.0, 3.0, 1.0, 5.0]  # outcomes 0, 1, 0, 1
    # differences 1, -1, 0.5, 0 -> mean 0.125; deviations .875, -1.125, .375, -.125
    # squares .765625 + 1.265625 + .140625 + .015625 = 2.1875, /3, /4 -> se = sqrt(2.1875 / 12)
    difference, se = paired_win_rate_difference(first, second, reference)
    assert difference == pytest.approx(0.125)
    assert se == pytest.approx(math.sqrt(2.1875 / 12))
    # the difference of the two unpaired rates, with a smaller SE when prompts share their difficulty
    rng = np.random.default_rng(3)
    difficulty = rng.normal(0, 2.0, size=(40, 1))
    reference = rng.normal(0, 1.0, size=(40, 4))
    first = difficulty + rng.normal(0.3, 1.0, size=(40, 4))
    second = difficulty + rng.normal(0.0, 1.0, size=(40, 4))
    (rate_1, se_1), (rate_2, se_2) = gold_win_rate(first, reference), gold_win_rate(second, reference)
    difference, se = paired_win_rate_difference(first, second, reference)
    assert difference == pytest.approx(rate_1 - rate_2)
    assert se < math.hypot(se_1, se_2)


def test_gold_win_rate_rejects_mismatch():
    with pytest.raises(ValueError, match="prompts"):
        gold_win_rate([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="ties"):
        gold_win_rate([1.0], [1.0], ties="draw")


def test_gold_summary_by_hand():
    policy = [[3.0, 1.0], [2.0, 2.0], [5.0, np.nan]]
    reference = [1.0, 2.0, 4.0]
    out = gold_summary(policy, reference, policy_logps=[0.0, 0.0], ref_logps=[math.log(0.5), math.log(2.0)])
    # per-prompt means 2, 2, 5 -> 3, se = sqrt(var(2, 2, 5) / 3) = sqrt(3 / 3) = 1
    assert out["gold_reward"] == pytest.approx((3.0, 1.0))
    # gains 2 - 1, 2 - 2, 5 - 4 = 1, 0, 1 -> 2/3, se = sqrt((1/3) / 3) = 1/3
    assert out["gold_reward_gain"] == pytest.approx((2 / 3, 1 / 3))
    # win outcomes against the reference sample: prompt 1, 3 > 1 wins and 1 = 1 ties -> .75; prompt 2,
    # two ties -> .5; prompt 3, 5 > 4 (the NaN sample is missing) -> 1; mean (.75 + .5 + 1) / 3 = .75
    assert out["gold_win_rate"][0] == pytest.approx(0.75)
    assert out["kl"][0] == pytest.approx(0.0)  # the k1 hand example of test_kl_estimators_by_hand
    with pytest.raises(ValueError, match="both"):
        gold_summary(policy, reference, policy_logps=[0.0])


# --------------------------------------------------------------------------------------- kl_estimate
def test_kl_estimators_by_hand():
    policy = [0.0, 0.0]
    reference = [math.log(0.5), math.log(2.0)]
    # k1: mean of (0 - log .5, 0 - log 2) = mean(+log 2, -log 2) = 0
    assert kl_estimate(policy, reference)[0] == pytest.approx(0.0)
    # k3 with log r = (log .5, log 2): (.5 - 1) - log .5 = .193147, (2 - 1) - log 2 = .306853 -> mean .25
    assert kl_estimate(policy, reference, estimator="k3")[0] == pytest.approx(0.25)


def test_kl_estimators_match_gaussian_closed_form_and_se():
    # pi = N(mu, 1), pi_ref = N(0, 1): KL(pi || pi_ref) = mu^2 / 2
    rng = np.random.default_rng(2)
    mu, n = 0.6, 4000
    estimates = {"k1": [], "k3": []}
    ses = {"k1": [], "k3": []}
    for _ in range(200):
        x = rng.normal(mu, 1.0, size=n)
        log_pi = scipy.stats.norm.logpdf(x, mu, 1.0)
        log_ref = scipy.stats.norm.logpdf(x, 0.0, 1.0)
        for estimator in ("k1", "k3"):
            kl, se = kl_estimate(log_pi, log_ref, estimator=estimator)
            estimates[estimator].append(kl)
            ses[estimator].append(se)
    for estimator in ("k1", "k3"):
        assert np.mean(estimates[estimator]) == pytest.approx(mu**2 / 2, abs=3 * np.std(estimates[estimator]) / 14)
        assert np.std(estimates[estimator]) == pytest.approx(np.mean(ses[estimator]), rel=0.15)
    # k3 is the low-variance estimator when the policies are close
    assert np.mean(ses["k3"]) < np.mean(ses["k1"])


@pytest.mark.parametrize("n", [2, 4, 16])
def test_kl_estimate_of_best_of_n_matches_log_n_minus_n_minus_1_over_n(n):
    # best-of-n from a continuous base has density n F(x)^(n-1) f(x), so log pi - log pi_base =
    # log n + (n - 1) log F(x), and KL = log n - (n - 1)/n (Beirami et al. 2024, "Theoretical guarantees on
    # the best-of-n alignment policy"); samples are maxima of n standard normals
    rng = np.random.default_rng(n)
    x = rng.standard_normal((20000, n)).max(axis=1)
    log_base = scipy.stats.norm.logpdf(x)
    log_best = np.log(n) + (n - 1) * scipy.stats.norm.logcdf(x) + log_base
    exact = math.log(n) - (n - 1) / n
    kl, se = kl_estimate(log_best, log_base)
    assert abs(kl - exact) < 4 * se
    # far from the base, r = pi_base / pi_best is unbounded on the samples and k3 is the noisier estimator
    assert kl_estimate(log_best, log_base, estimator="k3")[1] > se


def test_kl_k3_terms_are_never_negative():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=50), rng.normal(size=50)
    kl, _ = kl_estimate(a, b, estimator="k3")
    assert kl >= 0
    # one sample: k3 term is expm1(b - a) - (b - a) >= 0
    for x, y in zip(a, b):
        assert kl_estimate([x], [y], estimator="k3")[0] == pytest.approx(math.expm1(y - x) - (y - x))


def test_kl_categorical_exact_with_prompt_clusters():
    # two prompts, each with its own categorical pi and pi_ref; exact KL is the mean of the two
    rng = np.random.default_rng(4)
    pis = [np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.6, 0.3])]
    refs = [np.array([0.2, 0.3, 0.5]), np.array([0.3, 0.4, 0.3])]
    exact = np.mean([np.sum(p * np.log(p / q)) for p, q in zip(pis, refs)])
    samples = [rng.choice(3, size=20000, p=p) for p in pis]
    log_pi = np.stack([np.log(p[s]) for p, s in zip(pis, samples)])
    log_ref = np.stack([np.log(q[s]) for q, s in zip(refs, samples)])
    for estimator in ("k1", "k3"):
        kl, _ = kl_estimate(log_pi, log_ref, estimator=estimator)
        assert kl == pytest.approx(exact, abs=0.02)


# --------------------------------------------------------------------------------- ranking accuracy
def test_ranking_accuracy_by_hand():
    # pair 1 right (-1 > -2), pair 2 tie, pair 3 wrong
    w, l_ = [-1.0, -2.0, -3.0], [-2.0, -2.0, -1.0]
    assert ranking_accuracy(w, l_) == pytest.approx(1 / 3)
    assert ranking_accuracy(w, l_, ties="half") == pytest.approx(1.5 / 3)
    assert math.isnan(ranking_accuracy([], []))


def _brute_force_listwise(values, ranks, ties, average):
    per_list = []
    for row_values, row_ranks in zip(values, ranks):
        scores = []
        for i, j in itertools.permutations(range(len(row_ranks)), 2):
            if row_ranks[i] < 0 or row_ranks[j] < 0 or not row_ranks[i] < row_ranks[j]:
                continue
            if row_values[i] > row_values[j]:
                scores.append(1.0)
            elif row_values[i] == row_values[j]:
                scores.append(0.5 if ties == "half" else 0.0)
            else:
                scores.append(0.0)
        per_list.append(scores)
    if average == "pairs":
        flat = [s for scores in per_list for s in scores]
        return sum(flat) / len(flat)
    means = [sum(s) / len(s) for s in per_list if s]
    return sum(means) / len(means)


@pytest.mark.parametrize("ties", ["strict", "half"])
@pytest.mark.parametrize("average", ["pairs", "lists"])
def test_listwise_accuracies_match_brute_force(ties, average):
    rng = np.random.default_rng(5)
    values = rng.integers(-3, 3, size=(30, 5)).astype(float)  # small integers: many value ties
    ranks = rng.integers(0, 4, size=(30, 5))  # rank ties
    ranks[rng.random((30, 5)) < 0.2] = -1  # padding
    ranks[0] = [0, 0, -1, -1, -1]  # a list without an ordered pair
    expected = _brute_force_listwise(values, ranks, ties, average)
    assert listwise_ranking_accuracy(values, ranks, ties=ties, average=average) == pytest.approx(expected)
    assert listwise_reward_accuracy(values, ranks, ties=ties, average=average) == pytest.approx(expected)


def test_listwise_accuracy_with_k2_equals_pairwise():
    rng = np.random.default_rng(6)
    w, l_ = rng.normal(size=40), rng.normal(size=40)
    # column order reversed for half of the lists: the ranks carry the preference
    flip = rng.random(40) < 0.5
    logps = np.where(flip[:, None], np.stack([l_, w], 1), np.stack([w, l_], 1))
    ranks = np.where(flip[:, None], [[1, 0]], [[0, 1]])
    assert listwise_ranking_accuracy(logps, ranks) == pytest.approx(ranking_accuracy(w, l_))
    assert math.isnan(listwise_ranking_accuracy([[1.0, 2.0]], [[0, 0]]))  # all tied: no pair


def test_idealised_ranking_accuracy_by_hand():
    beta, alpha = 0.1, 0.75
    # (1/beta) log(alpha/(1-alpha)) = 10 * log 3 = 10.986
    ratios = np.array([-10.0, -11.0, 0.5, -10.99])
    # -10 + 10.986 > 0 right; -11 + 10.986 < 0 wrong; 0.5 right; -10.99 + 10.986 < 0 wrong
    ref_l = np.zeros(4)
    assert idealised_ranking_accuracy(ratios, ref_l, alpha, beta) == pytest.approx(0.5)
    # alpha = 0.5: the reference's own ranking; the zero ratio is a tie (wrong when strict)
    assert idealised_ranking_accuracy([1.0, -1.0, 0.0], [0.0] * 3, 0.5, beta) == pytest.approx(1 / 3)
    assert idealised_ranking_accuracy([1.0, -1.0, 0.0], [0.0] * 3, 0.5, beta, ties="half") == pytest.approx(0.5)
    # alpha = 1 is always right, alpha = 0 always wrong, even with infinite reference log-ratios
    assert idealised_ranking_accuracy([-np.inf, -50.0], [0.0, 0.0], 1.0, beta) == 1.0
    assert idealised_ranking_accuracy([np.inf, 50.0], [0.0, 0.0], 0.0, beta) == 0.0
    # per-pair alpha
    assert idealised_ranking_accuracy([-1.0, -1.0], [0.0, 0.0], [0.5, 0.9], 1.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="alpha"):
        idealised_ranking_accuracy([0.0], [0.0], 1.5, beta)
    with pytest.raises(ValueError, match="beta"):
        idealised_ranking_accuracy([0.0], [0.0], 0.7, 0.0)


def test_idealised_accuracy_equals_accuracy_of_the_exact_optimum():
    # Build pi* = pi_ref exp(r*/beta) / Z over four responses with a BT reward whose pair difference is
    # logit(alpha); its plain ranking accuracy must equal the formula.
    rng = np.random.default_rng(7)
    beta = 0.5
    n = 500
    ref_logits = rng.normal(0.0, 2.0, size=(n, 4))
    ref_logps = ref_logits - scipy.special.logsumexp(ref_logits, axis=1, keepdims=True)
    alpha = rng.uniform(0.02, 0.98, size=n)
    reward = rng.normal(size=(n, 4))
    reward[:, 0] = reward[:, 1] + np.log(alpha / (1 - alpha))  # r*(y_w) - r*(y_l) = logit(alpha)
    optimum_logits = ref_logps + reward / beta
    optimum_logps = optimum_logits - scipy.special.logsumexp(optimum_logits, axis=1, keepdims=True)
    actual = ranking_accuracy(optimum_logps[:, 0], optimum_logps[:, 1])
    formula = idealised_ranking_accuracy(ref_logps[:, 0], ref_logps[:, 1], alpha, beta)
    assert actual == pytest.approx(formula)
    assert 0.2 < formula < 0.95  # a non-trivial mixture of right and wrong pairs
    gap = alignment_gap(ref_logps[:, 0], ref_logps[:, 1], ref_logps[:, 0], ref_logps[:, 1], alpha, beta)
    assert gap["alignment_gap"] == pytest.approx(formula - ranking_accuracy(ref_logps[:, 0], ref_logps[:, 1]))
    assert gap["n"] == n


# ----------------------------------------------------------------------------- likelihood displacement
def test_likelihood_displacement_by_hand():
    before = [[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]]
    after = [[-1.5, -4.0], [-2.0, -5.0], [-5.0, -8.0]]
    # chosen changes -0.5, +1, 0: mean 1/6, one of three decreased, median 0
    chosen = likelihood_displacement(before, after, which="chosen")
    assert chosen["mean_change"] == pytest.approx(1 / 6)
    assert chosen["share_decreased"] == pytest.approx(1 / 3)
    assert chosen["median_change"] == pytest.approx(0.0)
    assert chosen["se"] == pytest.approx(np.std([-0.5, 1.0, 0.0], ddof=1) / math.sqrt(3))
    # rejected changes -2, -1, -2
    rejected = likelihood_displacement(before, after, which="rejected")
    assert rejected["mean_change"] == pytest.approx(-5 / 3)
    assert rejected["share_decreased"] == 1.0
    both = likelihood_displacement(before, after, which="both")
    # margins 1, 1, 1 -> 2.5, 3, 3: change 1.5, 2, 2 -> mean 11/6; the margin grew while chosen fell once
    assert both["margin"]["mean_change"] == pytest.approx(11 / 6)
    assert both["margin"]["share_decreased"] == 0.0
    assert both["chosen"] == chosen
    one_d = likelihood_displacement([-1.0, -3.0], [-2.0, -3.5])
    assert one_d["mean_change"] == pytest.approx(-0.75) and one_d["share_decreased"] == 1.0
    with pytest.raises(ValueError, match="both"):
        likelihood_displacement([-1.0], [-2.0], which="both")


# ---------------------------------------------------------------------------------- reward accuracy
def test_reward_accuracy_by_hand():
    assert reward_accuracy([2.0, 1.0, 0.0, 3.0], [1.0, 1.0, 1.0, -1.0]) == pytest.approx(2 / 4)
    assert reward_accuracy([2.0, 1.0, 0.0, 3.0], [1.0, 1.0, 1.0, -1.0], ties="half") == pytest.approx(2.5 / 4)


def test_kendall_tau_matches_scipy_with_ties():
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # 2 concordant, 1 discordant
    rng = np.random.default_rng(8)
    for n in (2, 5, 40, 301):
        x = rng.integers(0, 6, size=n).astype(float)
        y = x + rng.integers(-3, 4, size=n)
        if np.unique(x).size < 2 or np.unique(y).size < 2:
            continue
        expected = scipy.stats.kendalltau(x, y, variant="b").statistic
        assert kendall_tau(x, y) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(kendall_tau([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(kendall_tau([1.0], [2.0]))


def test_kendall_tau_matches_brute_force_sign_sum():
    # tau-b written out: sum_{i<j} sign(dx) sign(dy) / sqrt((n0 - n_x)(n0 - n_y)), with every count by loops
    rng = np.random.default_rng(9)
    for n in (3, 17, 64, 129):
        x = rng.integers(0, 5, size=n).astype(float)
        y = rng.integers(0, 4, size=n).astype(float)
        s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i in range(n) for j in range(i + 1, n))
        n0 = n * (n - 1) / 2
        tx = sum(1 for i in range(n) for j in range(i + 1, n) if x[i] == x[j])
        ty = sum(1 for i in range(n) for j in range(i + 1, n) if y[i] == y[j])
        assert kendall_tau(x, y) == pytest.approx(s / math.sqrt((n0 - tx) * (n0 - ty)), abs=1e-12)


def test_kendall_tau_large_n_against_scipy():
    rng = np.random.default_rng(10)
    x = rng.integers(0, 300, size=50_000).astype(float)
    y = x + rng.normal(0, 100, size=50_000).round()
    assert kendall_tau(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)


def test_mean_kendall_tau_over_lists():
    scores = [[3.0, 2.0, 1.0], [1.0, 2.0, 0.0], [5.0, 5.0, 0.0]]
    ranks = [[0, 1, 2], [0, 1, -1], [0, 0, 0]]
    # list 1: perfect (tau 1); list 2: two present, scores put the worse first (tau -1); list 3: all tied
    mean, se = mean_kendall_tau(scores, ranks)
    assert mean == pytest.approx(0.0)
    assert se == pytest.approx(np.std([1.0, -1.0], ddof=1) / math.sqrt(2))


# ---------------------------------------------------------------------------------------- calibration
def test_ece_by_hand():
    probs = [0.05, 0.15, 0.12, 0.95]
    outcomes = [0, 1, 0, 1]
    # bin 0: p .05 y 0 -> gap .05 (1 item); bin 1: p (.15+.12)/2 = .135, y .5 -> gap .365 (2 items);
    # bin 9: p .95 y 1 -> gap .05 (1 item). ECE = (.05 + 2 * .365 + .05) / 4 = .2075
    ece, table = expected_calibration_error(probs, outcomes, n_bins=10)
    assert ece == pytest.approx(0.2075)
    assert [row["count"] for row in table] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert table[1]["mean_probability"] == pytest.approx(0.135)
    assert table[1]["gap"] == pytest.approx(0.365)
    assert math.isnan(table[4]["mean_outcome"])
    # the edges: p = 1 lands in the last bin, p = 0 in the first
    _, table = expected_calibration_error([0.0, 1.0], [0.0, 1.0], n_bins=4)
    assert [row["count"] for row in table] == [1, 0, 0, 1]


def test_ece_small_for_calibrated_and_large_for_overconfident_predictions():
    rng = np.random.default_rng(10)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=20000) < p).astype(float)
    ece, _ = expected_calibration_error(p, y)
    assert ece < 0.02
    # always predicting 0.9 for events of frequency 0.6 -> ECE = 0.3 (up to sampling)
    y = (rng.uniform(size=20000) < 0.6).astype(float)
    ece, _ = expected_calibration_error(np.full(20000, 0.9), y)
    assert ece == pytest.approx(abs(0.9 - y.mean()))


def test_preference_calibration_by_hand():
    # margin log 3 with beta 1: sigma = .75 for (w, l) with outcome 1 and .25 for (l, w) with outcome 0
    # -> two bins with gap .25 each -> ECE .25
    ece, table = preference_calibration([math.log(3.0)], beta=1.0)
    assert ece == pytest.approx(0.25)
    assert table[7]["count"] == 1 and table[2]["count"] == 1
    # a margin of 0 is perfectly calibrated for a hard label counted both ways: p = .5 vs outcomes 1 and 0
    assert preference_calibration([0.0])[0] == pytest.approx(0.0)
    # with a known preference rate alpha = .75 the same margin is perfectly calibrated
    assert preference_calibration([math.log(3.0)], outcomes=0.75)[0] == pytest.approx(0.0)
    # huge margins stay finite (log-space sigmoid)
    ece, _ = preference_calibration([1e6, -1e6], beta=0.1)
    assert ece == pytest.approx(0.5)


# -------------------------------------------------------------------------------------------- kappa
def test_cohens_kappa_by_hand_and_against_sklearn():
    a = ["w", "w", "l", "tie"]
    b = ["w", "l", "l", "tie"]
    # p_o = 3/4; p_e = .5*.25 + .25*.5 + .25*.25 = .3125; kappa = (.75 - .3125) / .6875
    assert cohens_kappa(a, b) == pytest.approx((0.75 - 0.3125) / 0.6875)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(11)
    x = rng.choice(["a", "b", "tie"], size=200).tolist()
    y = [v if rng.random() < 0.6 else rng.choice(["a", "b", "tie"]) for v in x]
    assert cohens_kappa(x, y) == pytest.approx(sklearn_metrics.cohen_kappa_score(x, y))


def test_cohens_kappa_edge_cases():
    # missing labels are left out: the remaining three items agree fully, with two categories
    assert cohens_kappa(["a", None, "b", "a"], ["a", "b", "b", "a"]) == pytest.approx(1.0)
    assert math.isnan(cohens_kappa(["a", "a"], ["a", "a"]))  # p_e = 1
    assert math.isnan(cohens_kappa([], []))
    # perfect disagreement on two balanced categories: p_o 0, p_e .5 -> -1
    assert cohens_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)


def test_two_noisy_annotators_agree_at_the_closed_form_rate():
    # flip rate eps each: agreement 1 - 2 eps (1 - eps) = .625 for eps = .25; kappa on balanced labels
    # is then (p_o - .5) / .5 = .25
    rng = np.random.default_rng(12)
    truth = rng.random(40000) < 0.5
    a = truth ^ (rng.random(40000) < 0.25)
    b = truth ^ (rng.random(40000) < 0.25)
    assert np.mean(a == b) == pytest.approx(0.625, abs=0.01)
    assert cohens_kappa(a.tolist(), b.tolist()) == pytest.approx(0.25, abs=0.02)


# ------------------------------------------------------------------------------------------- groups
def test_group_metrics_by_hand():
    values = [1.0, 0.0, 1.0, 1.0, 0.0, np.nan]
    groups = ["a", "a", "b", "b", "c", "c"]
    out = group_metrics(values, groups, all_groups=["a", "b", "c", "d"])
    assert out["groups"]["a"] == {"mean": 0.5, "se": pytest.approx(math.sqrt(0.5 / 2)), "n": 2}
    assert out["groups"]["b"]["mean"] == 1.0 and out["groups"]["b"]["se"] == 0.0
    assert out["groups"]["c"]["n"] == 1 and math.isnan(out["groups"]["c"]["se"])  # NaN value dropped
    assert out["groups"]["d"]["n"] == 0 and math.isnan(out["groups"]["d"]["mean"])  # empty group
    assert out["worst_group"] == "c" and out["worst_value"] == 0.0
    assert out["best_group"] == "b" and out["gap"] == 1.0
    # c has a single example: with min_count 2 the worst is a
    assert group_metrics(values, groups, min_count=2)["worst_group"] == "a"
    # lower is better (e.g. a loss): the worst group has the highest mean
    assert group_metrics([3.0, 1.0], ["x", "y"], higher_is_better=False)["worst_group"] == "x"
    empty = group_metrics([], [], all_groups=["z"])
    assert empty["worst_group"] is None and empty["groups"]["z"]["n"] == 0


def test_metrics_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, rankalign.eval; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_metrics_accept_torch_tensors_with_grad():
    torch = pytest.importorskip("torch")
    w = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    l_ = torch.tensor([-2.0, -2.0, -1.0])
    assert ranking_accuracy(w, l_) == pytest.approx(1 / 3)
    logps = torch.tensor([[-1.0, -2.0], [-3.0, -1.0]], requires_grad=True)
    assert listwise_ranking_accuracy(logps, torch.tensor([[0, 1], [0, 1]])) == pytest.approx(0.5)
