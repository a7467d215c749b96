"""Values derived by hand (not from rankalign's output) for cases an independent review found wrong.

* With ranked lists of K > 2 the pairs of one list are not independent: the likelihood-displacement SEs and
  the per-group SEs of ``evaluate_logps`` / ``reward_metrics`` use the list as the unit, as the accuracies
  and margins already did (Liang & Zeger's cluster-robust SE, small-sample factor G / (G - 1)).
* Fleiss' and Cohen's kappa on pair units must not depend on which item of a pair the file happens to
  show first (the order of the records).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rankalign.data.records import RankedList
from rankalign.eval.policy import evaluate_logps
from rankalign.eval.reward import reward_metrics
from rankalign.stats.annotators import agreement_report, annotated_rankings

# Three lists: two of K = 3 (ranks 0 > 1 > 2), one pair padded to K = 3. The reference is 0 everywhere, so
# a candidate's change log pi - log pi_ref is its policy log-prob.
RANKS = [[0, 1, 2], [0, 1, 2], [0, 1, -1]]
POLICY = [[1.0, 0.0, 0.0], [-1.0, -1.0, 0.0], [2.0, 0.0, 0.0]]
REFERENCE = np.zeros((3, 3))


def test_likelihood_displacement_se_treats_the_list_as_the_unit():
    # pairs (0,1), (0,2), (1,2) per list: chosen changes [1, 1, 0], [-1, -1, -1], [2]; n = 7, mean 1/7.
    # cluster sums minus mean * size: 2 - 3/7 = 11/7, -3 - 3/7 = -24/7, 2 - 1/7 = 13/7;
    # se = sqrt(3/2 * (121 + 576 + 169) / 49) / 7 = sqrt(1299) / 49
    out = evaluate_logps(POLICY, RANKS, ref_logps=REFERENCE, beta=0.1)
    chosen = out["likelihood_displacement"]["chosen"]
    assert chosen["mean_change"] == pytest.approx(1 / 7)
    assert chosen["n"] == 7
    assert chosen["se"] == pytest.approx(math.sqrt(1299) / 49)


def test_group_se_treats_the_list_as_the_unit():
    # ranking correct (strict): list 0 [1, 1, 0] (1 > 0, 1 > 0, 0 = 0), list 1 [0, 0, 0]; group "a" holds both:
    # mean 1/3, cluster sums minus mean * size 2 - 1 = 1 and 0 - 1 = -1, se = sqrt(2 * 2) / 6 = 1/3
    out = evaluate_logps(POLICY, RANKS, ref_logps=REFERENCE, groups=["a", "a", "b"])
    group_a = out["groups"]["ranking_accuracy"]["groups"]["a"]
    assert group_a["mean"] == pytest.approx(1 / 3)
    assert group_a["n"] == 6
    assert group_a["se"] == pytest.approx(1 / 3)


def _sigmoid_matrix(scores):
    s = np.asarray(scores, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :])))


def test_reward_eval_group_se_and_subset_interval():
    # scores [2, 0, 1] on ranks [0, 1, 2]: pairs right, right, wrong; scores [0, 1, 2]: all three wrong
    records = [RankedList(prompt="p", candidates=["a", "b", "c"], ranks=[0, 1, 2], annotator="x",
                          meta={"subset": "s"}),
               RankedList(prompt="q", candidates=["a", "b", "c"], ranks=[0, 1, 2], annotator="x",
                          meta={"subset": "s"}),
               RankedList(prompt="r", candidates=["a", "b"], ranks=[0, 1], annotator="y")]
    probabilities = [_sigmoid_matrix([2, 0, 1]), _sigmoid_matrix([0, 1, 2]), _sigmoid_matrix([1, 0])]
    out = reward_metrics(probabilities, records, group_by="annotator")
    assert out["groups"]["x"]["accuracy"] == pytest.approx(1 / 3)
    assert out["groups"]["x"]["se"] == pytest.approx(1 / 3)  # as in the test above, lists as units
    # the subset "s" is the same 6 pairs: 1/3 - 1.96 / 3 < 0, so its interval starts at 0 like the overall one
    assert out["subsets"]["s"]["ci_low"] == 0.0
    assert out["subsets"]["s"]["ci_high"] == pytest.approx(1 / 3 + 1.959963984540054 / 3)


def _judgments():
    # units {a,b}: u1 a>b, u2 a>b, u3 tie; {a,c}: u1 a>c, u2 c>a, u3 a>c; {b,c}: b>c for all three
    return [RankedList(prompt=None, candidates=["a", "b", "c"], ranks=[0, 1, 2], annotator="u1"),
            RankedList(prompt=None, candidates=["b", "a"], ranks=[1, 0], annotator="u2"),
            RankedList(prompt=None, candidates=["c", "a"], ranks=[0, 1], annotator="u2"),
            RankedList(prompt=None, candidates=["c", "b"], ranks=[1, 0], annotator="u2"),
            RankedList(prompt=None, candidates=["b", "a"], ranks=[0, 0], annotator="u3"),
            RankedList(prompt=None, candidates=["c", "a"], ranks=[1, 0], annotator="u3"),
            RankedList(prompt=None, candidates=["b", "c"], ranks=[0, 1], annotator="u3")]


@pytest.mark.parametrize("order", ["as given", "reversed"])
def test_pair_kappas_do_not_depend_on_the_order_of_the_records(order):
    records = _judgments() if order == "as given" else _judgments()[::-1]
    report = agreement_report(annotated_rankings(records), min_overlap=3)
    # Fleiss: P_u = 1/3, 1/3, 1 -> P_bar = 5/9; a tie is 1 of 9 labels, the two directions 4/9 each:
    # P_e = 1/81 + 16/81 + 16/81 = 11/27; kappa = (5/9 - 11/27) / (16/27) = 1/4
    assert report["fleiss_kappa"] == pytest.approx(0.25)
    # Cohen, p_e = t_a t_b + (1 - t_a)(1 - t_b) / 2 with t the rater's tie share (0, 0, 1/3):
    # u1-u2 p_o 2/3, p_e 1/2 -> 1/3; u1-u3 p_o 2/3, p_e 1/3 -> 1/2; u2-u3 p_o 1/3, p_e 1/3 -> 0; mean 5/18
    assert report["mean_cohen_kappa"] == pytest.approx(5 / 18)
    assert report["cohen_rater_pairs"] == 3
    assert report["units_with_two_or_more"] == 3
