"""Reward-model objectives on scores [B, K]: hand values, tie model, invariances, gradients."""

import math

import pytest

torch = pytest.importorskip("torch")

from rankalign.losses import get  # noqa: E402
from rankalign.losses.reward import bce_reward, bt_reward, davidson_reward, pl_reward, rating_regression  # noqa: E402

REWARD = ["bt_reward", "pl_reward", "davidson_reward", "bce_reward", "rating_regression"]


def nll_sigmoid(x):  # -log sigma(x)
    return math.log1p(math.exp(-x)) if x > 0 else -x + math.log1p(math.exp(x))


def log_sum_exp(*xs):
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_bt_reward_with_margin_and_centring_by_hand():
    # one pair: s_w = 1.0, s_l = 0.2, margin 0.5 -> -log sigma(0.8 - 0.5) = -log sigma(0.3)
    # centring 0.01 * (1.0 + 0.2)^2 = 0.0144
    got = bt_reward(t([[1.0, 0.2]]), margin=t([0.5]), center_rewards_coefficient=0.01)
    assert got.item() == pytest.approx(nll_sigmoid(0.3) + 0.01 * 1.2 ** 2, rel=1e-12)
    # K = 3, ranks (1, 0, 2): pairs (1 > 0), (1 > 2), (0 > 2) with s = (0.5, 1.0, -1.0)
    scores = t([[0.5, 1.0, -1.0]])
    expected = (nll_sigmoid(0.5) + nll_sigmoid(2.0) + nll_sigmoid(1.5)) / 3
    assert bt_reward(scores, ranks=torch.tensor([[1, 0, 2]])).item() == pytest.approx(expected, rel=1e-12)
    # a per-pair margin [B, K, K]: [b, winner, loser]
    margin = torch.zeros(1, 3, 3, dtype=torch.float64)
    margin[0, 1, 2] = 1.0
    expected = (nll_sigmoid(0.5) + nll_sigmoid(1.0) + nll_sigmoid(1.5)) / 3
    got = bt_reward(scores, ranks=torch.tensor([[1, 0, 2]]), margin=margin)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_pl_reward_by_hand_with_ties():
    scores = t([[0.5, 1.0, -1.0]])
    # ranks (1, 0, 2): choose 1 from {0, 1, 2}, then 0 from {0, 2}
    expected = (log_sum_exp(0.5, 1.0, -1.0) - 1.0) + (log_sum_exp(0.5, -1.0) - 0.5)
    assert pl_reward(scores, ranks=torch.tensor([[1, 0, 2]])).item() == pytest.approx(expected, rel=1e-12)
    # ranks (0, 0, 1): each leader chosen over the last only
    expected = (log_sum_exp(0.5, -1.0) - 0.5) + (log_sum_exp(1.0, -1.0) - 1.0)
    assert pl_reward(scores, ranks=torch.tensor([[0, 0, 1]])).item() == pytest.approx(expected, rel=1e-12)
    # K = 2 is Bradley-Terry
    assert pl_reward(t([[0.3, 1.0]])).item() == pytest.approx(nll_sigmoid(-0.7), rel=1e-12)


def test_davidson_by_hand_and_probabilities_sum_to_one():
    nu = 0.5
    s = [0.4, -0.1, -0.1]
    # pairs (0 > 1), (0 > 2) strict, (1, 2) tied; normaliser pi_i + pi_j + nu sqrt(pi_i pi_j) in logs
    strict = -(0.4 - log_sum_exp(0.4, -0.1, math.log(nu) + 0.15))
    tie = -(math.log(nu) - 0.1 - log_sum_exp(-0.1, -0.1, math.log(nu) - 0.1))
    got = davidson_reward(t([s]), ranks=torch.tensor([[0, 1, 1]]), nu=nu)
    assert got.item() == pytest.approx((2 * strict + tie) / 3, rel=1e-12)
    # P(i > j) + P(j > i) + P(tie) = 1 for one pair
    scores = t([[0.7, -0.4]] * 3)
    nll = davidson_reward(scores, ranks=torch.tensor([[0, 1], [1, 0], [0, 0]]), nu=1.3)
    assert torch.exp(-nll).sum().item() == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="nu"):
        davidson_reward(scores, nu=0.0)


def test_davidson_nu_learnable():
    log_nu = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    loss = davidson_reward(t([[0.0, 0.0]]), ranks=torch.tensor([[0, 0]]), nu=log_nu.exp())
    loss.backward()
    # P(tie) = nu / (2 + nu); d/dlog nu of -log P(tie) = -(1 - nu / (2 + nu)) = -2/3 at nu = 1
    assert log_nu.grad.item() == pytest.approx(-2 / 3, rel=1e-12)


def test_bce_reward_by_hand_and_optimum():
    # s = (2, -1), labels (1, 0.25): -log sigma(2); -(0.25 log sigma(-1) + 0.75 log sigma(1))
    got = bce_reward(t([[2.0, -1.0]]), grades=t([[1.0, 0.25]]))
    expected = (nll_sigmoid(2.0) + 0.25 * nll_sigmoid(-1.0) + 0.75 * nll_sigmoid(1.0)) / 2
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # gradient vanishes at sigma(s) = label: s = log(0.25 / 0.75)
    s = t([[math.log(1 / 3)]]).requires_grad_(True)
    bce_reward(s, grades=t([[0.25]])).sum().backward()
    assert s.grad.item() == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="grades"):
        bce_reward(t([[2.0]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bce_reward(t([[2.0]]), grades=t([[2.0]]))


def test_rating_regression_by_hand():
    # ((1.5 - 2)^2 + (0 - -1)^2) / 2 = (0.25 + 1) / 2; padded third candidate ignored
    got = rating_regression(t([[1.5, 0.0, 9.0]]), grades=t([[2.0, -1.0, 100.0]]), ranks=torch.tensor([[0, 1, -1]]))
    assert got.item() == pytest.approx(0.625, rel=1e-12)


def random_scores(seed, batch=5, k=4):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, k, generator=generator, dtype=torch.float64)
    ranks = torch.randint(0, 3, (batch, k), generator=generator)
    ranks[0] = torch.arange(k)
    ranks[1, -1] = -1
    grades = torch.rand(batch, k, generator=generator, dtype=torch.float64)
    return scores, ranks, grades


@pytest.mark.parametrize("name", REWARD)
def test_reward_padding_and_permutation_invariance(name):
    scores, ranks, grades = random_scores(0)
    base = get(name)(scores, ranks=ranks, grades=grades)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = get(name)(scores[:, perm], ranks=ranks[:, perm], grades=grades[:, perm])
    torch.testing.assert_close(permuted, base, rtol=1e-12, atol=1e-12)
    batch = scores.shape[0]
    padded_scores = torch.cat([scores, t([[float("nan"), 1e30]] * batch)], 1).requires_grad_(True)
    padded = get(name)(padded_scores, ranks=torch.cat([ranks, torch.full((batch, 2), -1)], 1),
                       grades=torch.cat([grades, t([[float("nan"), 7.0]] * batch)], 1))
    torch.testing.assert_close(padded, base, rtol=1e-12, atol=1e-12)
    padded.sum().backward()
    assert torch.isfinite(padded_scores.grad).all() and (padded_scores.grad[:, -2:] == 0).all()


@pytest.mark.parametrize("name", REWARD)
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_reward_gradcheck_ordinary_and_extreme(name, scale):
    scores, ranks, grades = random_scores(1)
    scores = (scores * scale).requires_grad_(True)
    ranks[2] = 0  # an all-tie row
    ranks[3, 1:] = -1  # a K = 1 row
    assert torch.isfinite(get(name)(scores, ranks=ranks, grades=grades)).all()
    assert torch.autograd.gradcheck(lambda s: get(name)(s, ranks=ranks, grades=grades), (scores,))


def test_tabular_maximum_likelihood_of_bradley_terry_and_davidson():
    # Two items, counts: w = 6 wins of item 0, l = 2 wins of item 1, t = 3 ties. Total NLL = sum of counts x per-pair NLL.
    # BT (ties dropped): optimum s_0 - s_1 = log(w / l).
    # Davidson: d/dx and d/dnu of the log-likelihood vanish at e^x = w / l and nu = t / sqrt(w l)
    # (with x = s_0 - s_1: e^{x/2} = nu w / t and e^{-x/2} = nu l / t solve both score equations).
    wins, losses, ties = 6.0, 2.0, 3.0
    ranks = torch.tensor([[0, 1], [1, 0], [0, 0]])
    counts = t([wins, losses, ties])
    x = math.log(wins / losses)
    theta = t([x / 2, -x / 2]).requires_grad_(True)  # one parameter per item, shared by every comparison
    (counts[:2] * bt_reward(theta.expand(2, 2), ranks=ranks[:2])).sum().backward()
    assert theta.grad.abs().max().item() == pytest.approx(0.0, abs=1e-14)
    theta.grad = None
    log_nu = torch.tensor(math.log(ties / math.sqrt(wins * losses)), dtype=torch.float64, requires_grad=True)
    (counts * davidson_reward(theta.expand(3, 2), ranks=ranks, nu=log_nu.exp())).sum().backward()
    assert theta.grad.abs().max().item() == pytest.approx(0.0, abs=1e-14)
    assert log_nu.grad.item() == pytest.approx(0.0, abs=1e-14)
