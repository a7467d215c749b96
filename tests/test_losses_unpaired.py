"""Unpaired objectives (KTO, BCO, BCO on pairs, APO-zero unpaired): hand values, z0, running mean, optima."""

import math

import pytest

torch = pytest.importorskip("torch")

from rankalign.losses import BCORunningMean, get, kto_reference_point  # noqa: E402
from rankalign.losses.unpaired import apo_zero_unpaired, bco, bco_pair, kto  # noqa: E402


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def nll_sigmoid(x):  # -log sigma(x)
    return math.log1p(math.exp(-x)) if x > 0 else -x + math.log1p(math.exp(x))


def t(values):
    return torch.tensor(values, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------- KTO
def test_kto_by_hand_with_reference_point_from_mismatched_pairs():
    # rho = policy - ref = (-1 - -1.5, -2 - -1.8) = (0.5, -0.2); labels (desirable, undesirable); beta = 0.1
    # mismatched pairs: rho_kl = (-1 - -1.5, -2 - -2.5) = (0.5, 0.5) -> z0 = mean = 0.5
    policy, ref = t([-1.0, -2.0]), t([-1.5, -1.8])
    labels = torch.tensor([True, False])
    kl_policy, kl_ref = t([-1.0, -2.0]), t([-1.5, -2.5])
    desirable = 1 - sigmoid(0.1 * (0.5 - 0.5))  # = 0.5
    undesirable = 1 - sigmoid(0.1 * (0.5 - -0.2))  # 1 - sigma(0.07)
    got = kto(policy, ref, labels=labels, kl_policy_logps=kl_policy, kl_ref_logps=kl_ref)
    assert got.tolist() == pytest.approx([desirable, undesirable], rel=1e-12)
    # the same z0 given directly, and the weights lambda_D = 2, lambda_U = 1.5
    got = kto(policy, ref, labels=labels, z0=0.5, desirable_weight=2.0, undesirable_weight=1.5)
    assert got.tolist() == pytest.approx([2 * desirable, 1.5 * undesirable], rel=1e-12)


def test_kto_reference_point_is_clamped_at_zero_and_detached():
    # rho_kl = (-1 - -1.5, -2 - -1.2) = (0.5, -0.8): mean -0.15 -> clamped to 0
    kl_policy = t([-1.0, -2.0]).requires_grad_(True)
    assert kto_reference_point(kl_policy, t([-1.5, -1.2])).item() == 0.0
    policy = t([-1.0, -2.0]).requires_grad_(True)
    kl_policy2 = t([-1.0, -2.0]).requires_grad_(True)
    loss = kto(policy, t([-1.5, -1.8]), labels=[True, False], kl_policy_logps=kl_policy2,
               kl_ref_logps=t([-1.5, -2.5]), beta=0.1)
    loss.sum().backward()
    assert kl_policy2.grad is None  # z0 takes no gradient
    # d/drho of 1 - sigma(beta (rho - z0)) = -beta sigma(x)(1 - sigma(x)) at x = 0 -> -0.1 * 0.25
    assert policy.grad[0].item() == pytest.approx(-0.025, rel=1e-12)
    # without a KL estimate z0 = 0: desirable 1 - sigma(0.1 * 0.5)
    assert kto(t([-1.0]), t([-1.5]), labels=[True]).item() == pytest.approx(1 - sigmoid(0.05), rel=1e-12)
    # a negative precomputed z0 is clamped as well
    assert kto(t([-1.0]), t([-1.5]), labels=[True], z0=-3.0).item() == pytest.approx(1 - sigmoid(0.05), rel=1e-12)


def test_float_labels_mix_the_two_terms():
    # label 0.25: 0.25 * desirable + 0.75 * undesirable, rho = 1, beta = 1, z0 = 0
    got = kto(t([1.0]), labels=t([0.25]), beta=1.0)
    assert got.item() == pytest.approx(0.25 * (1 - sigmoid(1.0)) + 0.75 * (1 - sigmoid(-1.0)), rel=1e-12)
    with pytest.raises(ValueError, match="labels"):
        kto(t([1.0]), labels=t([1.5]))
    with pytest.raises(ValueError, match="shape"):
        kto(t([1.0, 2.0]), labels=t([1.0]))


# ------------------------------------------------------------------------------------------------- BCO
def test_bco_by_hand():
    # rewards beta * rho = 0.5 * (0.4, -0.6) = (0.2, -0.3), delta = 0.1
    # desirable: -log sigma(0.2 - 0.1); undesirable: -log sigma(-(-0.3 - 0.1)) = -log sigma(0.4)
    policy, ref = t([-1.0, -2.0]), t([-1.4, -1.4])
    got = bco(policy, ref, labels=[True, False], beta=0.5, delta=0.1)
    assert got.tolist() == pytest.approx([nll_sigmoid(0.1), nll_sigmoid(0.4)], rel=1e-12)


def test_bco_running_mean_cumulative_and_exponential():
    running = BCORunningMean()
    # step 1: batch mean of (0.2, -0.3, 0.4) = 0.1; step 2: mean of (1.0, 0.0) = 0.5 -> average of (0.1, 0.5)
    assert running.update(t([0.2, -0.3, 0.4])) == pytest.approx(0.1, rel=1e-12)
    assert running.update(t([1.0, 0.0])) == pytest.approx(0.3, rel=1e-12)
    restored = BCORunningMean()
    restored.load_state_dict(running.state_dict())
    assert (restored.mean, restored.count) == (running.mean, 2)
    ema = BCORunningMean(momentum=0.9)
    assert ema.update(t([0.1])) == pytest.approx(0.1, rel=1e-12)  # first step: the batch mean
    assert ema.update(t([0.5])) == pytest.approx(0.9 * 0.1 + 0.1 * 0.5, rel=1e-12)


def test_bco_population_optimum_is_the_log_odds_above_delta():
    # one response labelled desirable 3 times out of 4: the logistic loss is minimised at
    # beta * rho - delta = log(0.75 / 0.25) = log 3
    labels = torch.tensor([True, True, True, False])
    beta, delta = 0.2, 0.3
    optimum = (math.log(3) + delta) / beta
    rho = t([optimum]).requires_grad_(True)
    loss = bco(rho.expand(4), labels=labels, beta=beta, delta=delta).mean()
    loss.backward()
    # d/dr mean loss = -(3/4)(1 - sigma(r - delta)) + (1/4) sigma(r - delta) = 0 at sigma = 3/4
    assert rho.grad.item() == pytest.approx(0.0, abs=1e-15)
    for step in (-1e-3, 1e-3):  # convex: both neighbours are worse
        assert bco(t([optimum + step]).expand(4), labels=labels, beta=beta, delta=delta).mean() > loss


def test_bco_pair_by_hand_and_pair_decomposition():
    # beta = 1, delta = 0.2; rho = (0.5, 0, -0.5)
    # pair (w, l): -log sigma(rho_w - 0.2) - log sigma(-(rho_l - 0.2))
    rho = [0.5, 0.0, -0.5]

    def pair(winner, loser):
        return nll_sigmoid(rho[winner] - 0.2) + nll_sigmoid(-(rho[loser] - 0.2))

    got = bco_pair(t([rho[:2]]), beta=1.0, delta=0.2)
    assert got.item() == pytest.approx(pair(0, 1), rel=1e-12)
    got = bco_pair(t([rho]), beta=1.0, delta=0.2)
    assert got.item() == pytest.approx((pair(0, 1) + pair(0, 2) + pair(1, 2)) / 3, rel=1e-12)
    # ties and padding skipped: ranks (0, 0, 1) -> pairs (0, 2), (1, 2); ranks (1, 0, -1) -> pair (1, 0)
    got = bco_pair(t([rho, [rho[0], rho[1], float("nan")]]), ranks=torch.tensor([[0, 0, 1], [1, 0, -1]]),
                   beta=1.0, delta=0.2)
    assert got.tolist() == pytest.approx([(pair(0, 2) + pair(1, 2)) / 2, pair(1, 0)], rel=1e-12)


# ------------------------------------------------------------------------------------ APO-zero unpaired
def test_apo_zero_unpaired_by_hand():
    # rewards 0.1 * (2, -3) = (0.2, -0.3): desirable 1 - sigma(0.2), undesirable sigma(-0.3)
    got = apo_zero_unpaired(t([2.0, -3.0]), labels=[True, False])
    assert got.tolist() == pytest.approx([1 - sigmoid(0.2), sigmoid(-0.3)], rel=1e-12)


# ------------------------------------------------------------------------------------------- gradients
UNPAIRED = ["kto", "bco", "apo_zero_unpaired"]


@pytest.mark.parametrize("name", UNPAIRED)
@pytest.mark.parametrize("scale", [1.0, 1e4, -1e4])
def test_unpaired_gradients_finite_and_correct(name, scale):
    policy = t([0.3, -0.7, 1.1, -0.2]) * scale
    ref = t([0.1, 0.2, -0.3, 0.4]).requires_grad_(True)
    policy.requires_grad_(True)
    labels = t([1.0, 0.0, 0.3, 1.0])
    fn = get(name)
    loss = fn(policy, ref, labels=labels)
    assert torch.isfinite(loss).all()
    assert torch.autograd.gradcheck(lambda p, r: fn(p, r, labels=labels), (policy, ref))


@pytest.mark.parametrize("scale", [1.0, 1e4, -1e4])
def test_bco_pair_gradients(scale):
    policy = (t([[0.3, -0.7, 1.1], [0.5, -0.2, 9.0], [0.1, 0.1, 0.1]]) * scale).requires_grad_(True)
    ranks = torch.tensor([[0, 1, 2], [1, 0, -1], [0, 0, 0]])
    assert torch.autograd.gradcheck(lambda p: bco_pair(p, ranks=ranks, delta=0.1), (policy,))
