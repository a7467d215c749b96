"""The shared loss helpers: pair decomposition, ranks with ties/padding, per-list metrics."""

import math

import pytest

torch = pytest.importorskip("torch")

from rankalign.losses._common import (  # noqa: E402
    better_mask,
    ordered_pairs,
    pairwise_loss,
    preference_metrics,
    resolve_ranks,
    tie_mask,
)


def logistic_loss(chosen, rejected, ref_chosen, ref_rejected):
    return -torch.nn.functional.logsigmoid(chosen - rejected)


def nll(x):  # -log sigmoid(x), by hand
    return math.log1p(math.exp(-x))


def test_default_ranks_are_column_order():
    logps = torch.zeros(2, 3)
    assert resolve_ranks(logps, None).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_masks_with_ties_and_padding():
    ranks = torch.tensor([[0, 1, 1, -1]])
    better = better_mask(ranks)[0]
    # 0 beats 1 and 2; 1 and 2 are tied; 3 is padding and takes part in nothing
    assert better.nonzero().tolist() == [[0, 1], [0, 2]]
    assert tie_mask(ranks)[0].nonzero().tolist() == [[1, 2], [2, 1]]


def test_pair_decomposition_by_hand():
    # list 1: strict ranking of 3 -> pairs (0,1), (0,2), (1,2) with margins 1, 2, 1
    # list 2: ranks [1, 0, -1]: only candidate 1 over candidate 0, margin (-2) - (-1) = -1
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, 0.0]])
    ranks = torch.tensor([[0, 1, 2], [1, 0, -1]])
    loss = pairwise_loss(logistic_loss, logps, None, ranks)
    expected_first = (nll(1.0) + nll(2.0) + nll(1.0)) / 3
    expected_second = nll(-1.0)
    assert loss.tolist() == pytest.approx([expected_first, expected_second], rel=1e-6)


def test_padding_never_changes_a_row():
    logps = torch.tensor([[-1.0, -2.5]])
    padded = torch.tensor([[-1.0, -2.5, 123.0, -7.0]])
    short = pairwise_loss(logistic_loss, logps, None, torch.tensor([[0, 1]]))
    long = pairwise_loss(logistic_loss, padded, None, torch.tensor([[0, 1, -1, -1]]))
    assert long.item() == pytest.approx(short.item(), rel=1e-7)


def test_no_pairs_gives_zero_and_finite_gradient():
    logps = torch.tensor([[-1.0, -2.0], [-1.0, float("nan")]], requires_grad=True)
    # row 0 all tied, row 1 has padding holding NaN: neither may produce NaN
    loss = pairwise_loss(logistic_loss, logps, None, torch.tensor([[0, 0], [0, -1]]))
    assert loss.tolist() == [0.0, 0.0]
    loss.sum().backward()
    assert torch.isfinite(logps.grad).all()


def test_single_candidate_list():
    logps = torch.tensor([[-1.0]], requires_grad=True)
    loss = pairwise_loss(logistic_loss, logps, None, None)
    assert loss.tolist() == [0.0]


def test_ordered_pairs_orients_by_rank():
    pairs = ordered_pairs(torch.tensor([[2, 0, 1]]))
    oriented = sorted(zip(pairs.winner[0].tolist(), pairs.loser[0].tolist()))
    assert oriented == [(1, 0), (1, 2), (2, 0)]


def test_preference_metrics_by_hand():
    beta = 0.5
    policy = torch.tensor([[-1.0, -3.0, -2.0]])
    ref = torch.tensor([[-2.0, -2.0, -2.0]])
    ranks = torch.tensor([[0, 1, 1]])
    # rho = [1, -1, 0]; rewards = beta * rho = [0.5, -0.5, 0]
    m = preference_metrics(policy, ref, ranks=ranks, beta=beta)
    assert m["reward_best"].item() == pytest.approx(0.5)
    assert m["reward_worst"].item() == pytest.approx(-0.25)  # mean of the tied worst group
    # ordered pairs (0,1) margin 1.0, (0,2) margin 0.5 -> mean 0.75
    assert m["margin"].item() == pytest.approx(0.75)
    assert m["reward_accuracy"].item() == 1.0
    # policy log-probs: -1 > -3 and -1 > -2
    assert m["ranking_accuracy"].item() == 1.0
    assert m["pairs"].item() == 2


def test_plain_pair_fast_path_equals_the_general_decomposition():
    import rankalign.losses as losses

    generator = torch.Generator().manual_seed(0)
    policy = -torch.rand(6, 2, generator=generator, dtype=torch.float64) * 30
    reference = -torch.rand(6, 2, generator=generator, dtype=torch.float64) * 30
    lengths = torch.randint(1, 40, (6, 2), generator=generator).double()
    explicit = torch.tensor([[0, 1]] * 6)  # same ranking, forces the general path
    for name in losses.names("pairwise"):
        objective = losses.get(name)
        ref = None if objective.reference_free else reference
        fast = objective(policy, ref, lengths=lengths)
        general = objective(policy, ref, ranks=explicit, lengths=lengths)
        torch.testing.assert_close(fast, general, rtol=1e-12, atol=1e-12, msg=name)
