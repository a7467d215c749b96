"""evaluate_logps and the preference-rate helpers, by hand arithmetic (no torch)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from rankalign.data.records import RankedList
from rankalign.eval.metrics import clustered_mean_with_se, mean_with_se
from rankalign.eval.policy import evaluate_logps, pair_rates_from_shares
from rankalign.eval.run import alpha_from_records

POLICY = [[-1.0, -2.0, -3.0], [-2.0, -1.0, 0.0]]
RANKS = [[0, 1, 2], [0, 1, -1]]


def test_clustered_se_by_hand_and_singletons():
    # clusters {0: 1, 1, 1} and {1: 0}: sums 3, 0; sizes 3, 1; mean 3/4
    # G/(G-1) * ((3 - .75*3)^2 + (0 - .75)^2) = 2 * 1.125 = 2.25 -> sqrt 1.5 -> / 4 = .375
    mean, se = clustered_mean_with_se([1.0, 1.0, 1.0, 0.0], [0, 0, 0, 1])
    assert (mean, se) == pytest.approx((0.75, 0.375))
    values = np.array([0.3, 1.2, -0.5, 2.0, 0.7])
    assert clustered_mean_with_se(values, np.arange(5)) == pytest.approx(mean_with_se(values))
    assert math.isnan(clustered_mean_with_se([1.0, 0.0], [4, 4])[1])


def test_evaluate_logps_policy_only_by_hand():
    out = evaluate_logps(POLICY, RANKS)
    # list 0: pairs (0,1), (0,2), (1,2) all ordered right; list 1: (0,1) has -2 < -1, wrong; the padded
    # third column of list 1 (logp 0) is not a candidate
    assert out["pairs"] == 4 and out["lists_with_pairs"] == 2
    assert out["ranking_accuracy"] == pytest.approx((0.75, 0.375))
    assert "reward_accuracy" not in out
    # per token with lengths [1, 4, 1] and [2, 1, -]: list 0 scores -1, -.5, -3 -> (0,1) wrong, (0,2) right,
    # (1,2) right; list 1 scores -1, -1 -> a tie, wrong -> 2 of 4
    lengths = [[1, 4, 1], [2, 1, 0]]
    assert evaluate_logps(POLICY, RANKS, lengths=lengths)["length_normalised_ranking_accuracy"][0] == 0.5
    with pytest.raises(ValueError, match="positive"):
        evaluate_logps(POLICY, RANKS, lengths=[[1, 0, 1], [1, 1, 0]])


def test_evaluate_logps_with_reference_and_alpha_by_hand():
    reference = np.zeros((2, 3))
    beta = 1.0
    out = evaluate_logps(POLICY, RANKS, ref_logps=reference, alpha=0.75, beta=beta)
    # with a zero reference rho = log pi; h per pair: 1, 2, 1, -1 -> margin mean 3/4
    assert out["margin"][0] == pytest.approx(0.75)
    assert out["reward_accuracy"][0] == pytest.approx(0.75)
    assert out["reference_ranking_accuracy"][0] == 0.0  # all reference log-ratios are 0: ties, strict
    # idealised: 0 + log(3) / 1 > 0 for every pair -> 1; gap = 1 - .75
    assert out["pairs_with_alpha"] == 4
    assert out["idealised_ranking_accuracy"][0] == 1.0
    assert out["alignment_gap"][0] == pytest.approx(0.25)
    # chosen log pi moved from 0 to -1, -1, -2, -2: mean -1.5, all decreased
    chosen = out["likelihood_displacement"]["chosen"]
    assert chosen["mean_change"] == pytest.approx(-1.5) and chosen["share_decreased"] == 1.0
    # calibration: oriented probabilities sigma(h) with label alpha = .75 and 1 - sigma(h) with .25
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    probs = [sig(1), sig(2), sig(1), sig(-1)] + [1 - sig(1), 1 - sig(2), 1 - sig(1), 1 - sig(-1)]
    outcomes = [0.75] * 4 + [0.25] * 4
    # bins of width .1: sig(1)=.731 (bin 7, twice), sig(2)=.881 (bin 8), sig(-1)=.269 (bin 2); mirror images
    # .269 (bin 2, twice), .119 (bin 1), .731 (bin 7)
    bins = {}
    for p, y in zip(probs, outcomes):
        bins.setdefault(min(int(p * 10), 9), []).append((p, y))
    expected = sum(abs(np.mean([y for _, y in v]) - np.mean([p for p, _ in v])) * len(v) for v in bins.values()) / 8
    assert out["ece"] == pytest.approx(expected)
    assert sum(row["count"] for row in out["calibration"]) == 8


def test_evaluate_logps_partial_alpha():
    alpha = np.full((2, 3, 3), np.nan)
    alpha[1, 0, 1] = 0.9  # only list 1's pair has a known rate
    out = evaluate_logps(POLICY, RANKS, ref_logps=np.zeros((2, 3)), alpha=alpha, beta=0.5)
    assert out["pairs_with_alpha"] == 1
    assert out["idealised_ranking_accuracy"][0] == 1.0  # 0 + 2 * log 9 > 0
    assert out["ranking_accuracy_on_alpha_pairs"][0] == 0.0  # the policy gets that pair wrong
    assert out["alignment_gap"][0] == 1.0
    none_known = evaluate_logps(POLICY, RANKS, ref_logps=np.zeros((2, 3)), alpha=np.full((2, 3, 3), np.nan))
    assert none_known["pairs_with_alpha"] == 0 and math.isnan(none_known["idealised_ranking_accuracy"][0])
    with pytest.raises(ValueError, match="alpha"):
        evaluate_logps(POLICY, RANKS, ref_logps=np.zeros((2, 3)), alpha=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="ref_logps"):
        evaluate_logps(POLICY, RANKS, alpha=0.7)


def test_pair_rates_from_shares_by_hand():
    rates = pair_rates_from_shares([[0.8, 0.2, 0.0], [np.nan, 1.0, 3.0]])
    assert rates[0, 0, 1] == pytest.approx(0.8) and rates[0, 1, 0] == pytest.approx(0.2)
    assert rates[0, 0, 2] == 1.0
    assert math.isnan(rates[0, 2, 2])  # 0 / (0 + 0)
    assert math.isnan(rates[1, 0, 1])
    assert rates[1, 1, 2] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        pair_rates_from_shares([[-1.0, 1.0]])


def test_alpha_from_records_meta_and_scores():
    records = [
        RankedList(prompt="p", candidates=["a", "b"], ranks=[1, 0], meta={"rate": 0.7}),
        RankedList(prompt="p", candidates=["a", "b", "c"], ranks=[0, None, 1],
                   scores=[{"share": 0.6}, {"share": 0.1}, {"share": 0.2}]),
        RankedList(prompt="p", candidates=["a", "b"], ranks=[0, 1]),
    ]
    # the tokenized lists: unranked candidates dropped, index into records
    lists = [SimpleNamespace(index=0, ranks=[1, 0]), SimpleNamespace(index=1, ranks=[0, 1]),
             SimpleNamespace(index=2, ranks=[0, 1])]
    rates = alpha_from_records(records, lists, "rate")
    assert rates.shape == (3, 2, 2)
    # list 0: candidate 1 is ranked better, so rate(1 over 0) = .7 and rate(0 over 1) = .3
    assert rates[0, 1, 0] == pytest.approx(0.7) and rates[0, 0, 1] == pytest.approx(0.3)
    assert np.isnan(rates[1]).all() and np.isnan(rates[2]).all()
    rates = alpha_from_records(records, lists, "share")
    # list 1 keeps candidates a and c: .6 / (.6 + .2) = .75
    assert rates[1, 0, 1] == pytest.approx(0.75)
    bad = [RankedList(prompt="p", candidates=["a", "b"], ranks=[0, 1], meta={"rate": 1.5})]
    with pytest.raises(ValueError, match="record 0"):
        alpha_from_records(bad, [SimpleNamespace(index=0, ranks=[0, 1])], "rate")


def test_clustered_se_matches_simulation_with_correlated_pairs():
    # every list has its own difficulty, so the pairs of one list are correlated: the cluster-robust SE
    # must match the spread of the estimate across repeated data sets, while the naive per-pair SE is too small
    rng = np.random.default_rng(13)
    estimates, clustered, naive = [], [], []
    for _ in range(600):
        difficulty = rng.uniform(0.1, 0.9, size=60)
        pairs_per_list = rng.integers(1, 7, size=60)
        cluster = np.repeat(np.arange(60), pairs_per_list)
        correct = (rng.random(cluster.size) < difficulty[cluster]).astype(float)
        mean, se = clustered_mean_with_se(correct, cluster)
        estimates.append(mean)
        clustered.append(se)
        naive.append(mean_with_se(correct)[1])
    assert np.std(estimates) == pytest.approx(np.mean(clustered), rel=0.1)
    assert np.mean(naive) < 0.85 * np.std(estimates)


def test_evaluate_logps_groups_by_hand():
    # list 0 (group "x"): 3 pairs, all right; list 1 (group "y"): 1 pair, wrong; group "z" has no list
    out = evaluate_logps(POLICY, RANKS, groups=["x", "y"])
    grouped = out["groups"]["ranking_accuracy"]
    assert grouped["groups"]["x"]["mean"] == 1.0 and grouped["groups"]["x"]["n"] == 3
    assert grouped["groups"]["y"]["mean"] == 0.0 and grouped["groups"]["y"]["n"] == 1
    assert grouped["worst_group"] == "y" and grouped["gap"] == 1.0
    with_ref = evaluate_logps(POLICY, RANKS, ref_logps=np.full((2, 3), -1.0), groups=["x", "x"])
    # one group: reward accuracy equals the overall one (rho = log pi + 1 keeps the order)
    assert with_ref["groups"]["reward_accuracy"]["groups"]["x"]["mean"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="group labels"):
        evaluate_logps(POLICY, RANKS, groups=["x"])
