"""Record weights in listwise ranking accuracy (used by the tabular world)."""

import math

import numpy as np
import pytest

from rankalign.eval import listwise_ranking_accuracy


def test_weights_by_hand():
    # list 0 (weight 3): ranks [0, 1, 2], logps [-1, -3, -2] -> pairs (0,1) ok, (0,2) ok, (1,2) wrong: 2/3
    # list 1 (weight 1): ranks [1, 0, -1], logps [-1, -2, 9] -> pair (1,0): -2 > -1 is wrong: 0/1
    logps = np.array([[-1.0, -3.0, -2.0], [-1.0, -2.0, 9.0]])
    ranks = np.array([[0, 1, 2], [1, 0, -1]])
    weights = np.array([3.0, 1.0])
    # pairs: (3*2 + 1*0) / (3*3 + 1*1) = 6 / 10
    assert listwise_ranking_accuracy(logps, ranks, weights=weights) == pytest.approx(0.6)
    # lists: (3 * 2/3 + 1 * 0) / 4 = 0.5
    assert listwise_ranking_accuracy(logps, ranks, weights=weights, average="lists") == pytest.approx(0.5)
    # unit weights are the unweighted metric: 2 of 4 pairs
    assert listwise_ranking_accuracy(logps, ranks, weights=np.ones(2)) == pytest.approx(0.5)
    assert math.isnan(listwise_ranking_accuracy(logps, ranks, weights=np.zeros(2)))


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="one per list"):
        listwise_ranking_accuracy(np.zeros((2, 2)), np.array([[0, 1], [0, 1]]), weights=np.array([1.0, -1.0]))
