"""GRPO, RLOO, their advantages, rank rewards and SPPO, against values derived by hand."""

import math

import pytest
import torch

from rankalign.losses import get, group_advantages, k3_kl, rank_rewards
from rankalign.losses.listwise import win_rates_from_ranks

NAN = float("nan")


def test_grpo_advantages_by_hand():
    # rewards 1, 2, 3, 6: mean 3, deviations -2, -1, 0, 3, unbiased variance 14/3
    a = group_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), kind="grpo", epsilon=0.0)
    std = math.sqrt(14 / 3)
    assert a[0].tolist() == pytest.approx([-2 / std, -1 / std, 0.0, 3 / std], rel=1e-6)


def test_rloo_advantages_by_hand():
    a = group_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), kind="rloo")
    # A_i = r_i - mean of the other three
    assert a[0].tolist() == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 3 - 3, 6 - 2], rel=1e-6)


def test_advantages_with_padding_and_degenerate_groups():
    rewards = torch.tensor([[1.0, 3.0, NAN], [5.0, 5.0, 5.0], [4.0, NAN, NAN]])
    rloo = group_advantages(rewards, kind="rloo")
    assert rloo.tolist() == [[-2.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    grpo = group_advantages(rewards, kind="grpo", epsilon=0.0)
    assert grpo[0, :2].tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)])
    assert grpo[1:].abs().sum().item() == 0.0  # all-equal group and group of one: no signal, no NaN
    with pytest.raises(ValueError, match="advantage kind"):
        group_advantages(rewards, kind="ppo")


def test_rank_rewards_by_hand():
    r = rank_rewards(torch.tensor([[0, 1, 1, 2], [0, 0, -1, -1], [1, 0, -1, -1]]))
    assert r[0].tolist() == pytest.approx([1.0, 0.0, 0.0, -1.0])
    assert r[1, :2].tolist() == [0.0, 0.0] and torch.isnan(r[1, 2:]).all()
    assert r[2, :2].tolist() == [-1.0, 1.0]


def test_k3_by_hand():
    # log pi = log 0.5, log pi_ref = log 0.25: d = log 0.5, k3 = 0.5 - log 0.5 - 1
    value = k3_kl(torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25)))
    assert value.item() == pytest.approx(0.5 - math.log(0.5) - 1)
    assert k3_kl(torch.tensor(-1.0), torch.tensor(-1.0)).item() == 0.0


def test_grpo_on_policy_value_and_gradient():
    """pi_old = pi: ratio 1, loss = mean_i (1/|o_i|) sum_t (-A_i + beta k3), d loss / d logp_it = -A_i / (n |o_i|)."""
    logps = torch.log(torch.tensor([[[0.5, 0.5, 1.0], [0.25, 1.0, 1.0]]])).requires_grad_()
    ref = torch.log(torch.tensor([[[0.25, 0.5, 1.0], [0.25, 1.0, 1.0]]]))
    mask = torch.tensor([[[True, True, False], [True, False, False]]])
    advantages = torch.tensor([[1.0, -1.0]])
    loss = get("grpo")(logps, ref, advantages=advantages, token_mask=mask, beta=0.1)
    k3_first = 0.5 - math.log(0.5) - 1
    expected = 0.5 * ((-1.0 + 0.1 * k3_first + -1.0) / 2 + (1.0 + 0.0) / 1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.sum().backward()
    # gradient of the surrogate -A q at q = 1 is -A; of beta*k3 = beta*(1 - exp(ref - logp))
    grad = logps.grad[0]
    assert grad[0, 0].item() == pytest.approx((-1.0 + 0.1 * (1 - 0.5)) / (2 * 2))
    assert grad[0, 1].item() == pytest.approx(-1.0 / (2 * 2))
    assert grad[1, 0].item() == pytest.approx(1.0 / (2 * 1))
    assert grad[0, 2].item() == 0.0 and grad[1, 1].item() == 0.0


def test_grpo_clipping():
    """ratio 1.5 > 1 + eps: a positive advantage is clipped (no gradient), a negative one is not."""
    logps = torch.tensor([[[math.log(0.75)], [math.log(0.75)]]], requires_grad=True)
    old = torch.tensor([[[math.log(0.5)], [math.log(0.5)]]])
    advantages = torch.tensor([[2.0, -2.0]])
    loss = get("grpo")(logps, None, advantages=advantages, old_token_logps=old, clip_epsilon=0.2)
    # response 0: -min(1.5*2, 1.2*2) = -2.4; response 1: -min(1.5*-2, 0.8*-2) = 3.0
    assert loss.item() == pytest.approx((-2.4 + 3.0) / 2, rel=1e-6)
    loss.backward()
    assert logps.grad[0, 0, 0].item() == 0.0
    # d/dlogp of -(q * A) with A = -2 at q = 1.5: -A * q / n = 2 * 1.5 / 2
    assert logps.grad[0, 1, 0].item() == pytest.approx(2.0 * 1.5 / 2, rel=1e-6)


def test_rloo_value_and_gradient():
    policy = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    rewards = torch.tensor([[3.0, 0.0, 0.0]])
    loss = get("rloo")(policy, None, rewards=rewards)
    advantages = [3.0, -1.5, -1.5]  # r_i - mean of the others
    assert loss.item() == pytest.approx(-sum(a * p for a, p in zip(advantages, [-1.0, -2.0, -3.0])) / 3)
    loss.backward()
    assert policy.grad[0].tolist() == pytest.approx([-a / 3 for a in advantages])


def test_rloo_kl_shaping_and_rank_rewards():
    policy = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-2.0, -2.0]])
    # shaped rewards 1 - 0.5*1 = 0.5 and 0: advantages +0.5, -0.5
    loss = get("rloo")(policy, ref, rewards=torch.tensor([[1.0, 0.0]]), beta=0.5)
    assert loss.item() == pytest.approx(-(0.5 * -1.0 + -0.5 * -2.0) / 2)
    # without rewards the ranking is used: column order, rank rewards +1, -1, advantages +2, -2
    by_rank = get("rloo")(policy, None)
    assert by_rank.item() == pytest.approx(-(2 * -1.0 + -2 * -2.0) / 2)


def test_win_rates_from_ranks_by_hand():
    rates = win_rates_from_ranks(torch.tensor([[0, 1, 1, 2], [0, -1, -1, -1]]))
    assert rates[0].tolist() == pytest.approx([1.0, 0.5, 0.5, 0.0])
    assert rates[1, 0].item() == 0.5
    # SPPO's estimator: the mean over all 4 samples, itself counting 1/2: (3 + 1/2)/4, (1 + 1/2 + 1/2)/4, ...
    paper = win_rates_from_ranks(torch.tensor([[0, 1, 1, 2]]), estimator="all_samples")
    assert paper[0].tolist() == pytest.approx([3.5 / 4, 2 / 4, 2 / 4, 0.5 / 4])


def test_sppo_by_hand_and_against_sppo_hard():
    policy, ref = torch.tensor([[0.1, -0.2]]), torch.zeros(1, 2)
    loss = get("sppo")(policy, ref, grades=torch.tensor([[0.75, 0.25]]), beta=0.5)
    assert loss.item() == pytest.approx(((0.1 - 0.5) ** 2 + (-0.2 + 0.5) ** 2) / 2)
    # hard win probabilities on a pair: half of sppo_hard's per-pair loss (a mean over 2 responses)
    hard = get("sppo_hard")(policy, ref, beta=0.5)
    assert get("sppo")(policy, ref, beta=0.5, estimator="leave_one_out").item() == pytest.approx(hard.item() / 2)
    # the paper's estimator (the default): the mean over both samples, itself included at 1/2 -> 3/4, 1/4
    assert get("sppo")(policy, ref, beta=0.5).item() == pytest.approx(loss.item())


def test_finite_gradients_at_extremes():
    logps = torch.tensor([[[-80.0, -1e-6], [-50.0, -30.0]]], requires_grad=True)
    ref = torch.tensor([[[-1e-6, -80.0], [-30.0, -50.0]]])
    loss = get("grpo")(logps, ref, advantages=torch.tensor([[1.0, -1.0]]), beta=0.04)
    loss.backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logps.grad).all()
