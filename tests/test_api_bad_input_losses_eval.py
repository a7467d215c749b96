"""Bad inputs to the public API of ``rankalign.losses`` and the metric functions of ``rankalign.eval``:
each either raises a ValueError/UsageError naming the argument or returns the right (finite) value.
Expected values are worked out by hand in the comments, never copied from the code's output."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rankalign import eval as E  # noqa: E402
from rankalign import losses  # noqa: E402
from rankalign.errors import UsageError  # noqa: E402
from rankalign.eval.policy import evaluate_logps  # noqa: E402
from rankalign.losses import group_advantages, rank_rewards  # noqa: E402

NAN, INF = math.nan, math.inf
LIST_OBJECTIVES = losses.names("pairwise") + losses.names("listwise") + losses.names("reward")


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def list_kwargs(name: str, batch: int, k: int) -> dict:
    kwargs = {}
    if name in ("simpo", "orpo", "ln_dpo", "pro"):
        kwargs["lengths"] = torch.full((batch, k), 4.0)
    if name in ("bce_reward", "rating_regression"):
        kwargs["grades"] = torch.full((batch, k), 0.5)
    return kwargs


def call_list_objective(name: str, policy, **kwargs):
    objective = losses.get(name)
    args = (policy,) if objective.family == "reward" else (policy, None)
    return objective(*args, **kwargs)


# ------------------------------------------------------------------------------------ losses: shapes
@pytest.mark.parametrize("name", LIST_OBJECTIVES)
@pytest.mark.parametrize("shape", [(2,), (2, 2, 3), ()])
def test_log_probs_with_the_wrong_number_of_dimensions_name_the_argument(name, shape):
    # [B, K, T] per-token log-probs given to dpo used to come back as a [B, T] "loss" (and simpo's as
    # [B, K, T]); [B] or a scalar crashed with an IndexError / unpacking error
    policy = -torch.rand(shape) - 1.0
    with pytest.raises(ValueError, match=r"(policy_logps|scores) must be \[B, K\]"):
        call_list_objective(name, policy, **list_kwargs(name, 2, 2))


@pytest.mark.parametrize("name", ["kto", "bco", "apo_zero_unpaired"])
def test_unpaired_log_probs_must_be_one_dimensional(name):
    with pytest.raises(ValueError, match=r"policy_logps must be \[B\]"):
        losses.get(name)(torch.zeros(2, 2), labels=torch.tensor([True, False]))


def test_lists_and_numpy_arrays_of_log_probs_are_accepted():
    # DPO, reference-free, beta = 0.1: rho = (-1, -2) -> -log sigma(0.1 * 1) = softplus(-0.1)
    expected = softplus(-0.1)
    for policy in ([[-1.0, -2.0]], np.array([[-1.0, -2.0]])):
        got = losses.get("dpo")(policy)
        assert got.shape == (1,) and float(got[0]) == pytest.approx(expected, rel=1e-6)
    # KTO on a list, labels desirable, z0 = 0: 1 - sigma(0.1 * -1) = sigma(0.1)
    got = losses.get("kto")([-1.0], labels=[True])
    assert float(got[0]) == pytest.approx(1.0 / (1.0 + math.exp(-0.1)), rel=1e-6)


def test_lists_without_candidates_have_loss_zero():
    # K = 0: no ordered pair and nothing to regress on, as an all-padded list (pl_dpo, pro, lipo_lambda,
    # listnet, best_vs_rest and pl_reward used to raise IndexError from an empty max/min)
    for name in LIST_OBJECTIVES:
        got = call_list_objective(name, torch.zeros(3, 0), **list_kwargs(name, 3, 0))
        assert got.shape == (3,) and torch.equal(got, torch.zeros(3)), name


@pytest.mark.parametrize("name", ["simpo", "orpo", "ln_dpo"])
def test_lengths_of_another_shape_are_an_error_on_pairs(name):
    # K = 2 takes a fast path that used to broadcast [B, 3] lengths into a [B, 2] "per-list" loss
    with pytest.raises(ValueError, match=r"lengths has shape \(2, 3\), expected \(2, 2\)"):
        losses.get(name)(-torch.rand(2, 2) - 1.0, lengths=torch.ones(2, 3))


def test_soft_dpo_grades_of_another_shape_are_an_error():
    with pytest.raises(ValueError, match=r"grades has shape \(2, 3\), expected \(2, 2\)"):
        losses.get("soft_dpo")(-torch.rand(2, 2) - 1.0, grades=torch.zeros(2, 3))


def test_float_ranks_must_be_whole_numbers():
    policy = torch.tensor([[-1.0, -2.0]])
    # scores passed as ranks (0.7, 0.3) used to be truncated to (0, 0): a silent tie and loss 0
    with pytest.raises(ValueError, match="ranks must be whole numbers"):
        losses.get("dpo")(policy, ranks=torch.tensor([[0.7, 0.3]]))
    with pytest.raises(ValueError, match="ranks must be whole numbers"):
        losses.get("pl_dpo")(policy, ranks=torch.tensor([[0.0, NAN]]))
    # whole-number float ranks still work: column 1 preferred, -log sigma(0.1 * (-2 - -1)) = softplus(0.1)
    got = losses.get("dpo")(policy, ranks=torch.tensor([[1.0, 0.0]]))
    assert float(got[0]) == pytest.approx(softplus(0.1), rel=1e-6)


# -------------------------------------------------------------------------------- losses: parameters
@pytest.mark.parametrize("beta", [None, np.float32(-0.1), np.float64(0.0), torch.tensor(-1.0), torch.tensor(NAN)])
def test_hyper_parameters_given_as_none_numpy_or_tensor_are_range_checked(beta):
    # None used to reach `None * tensor` (TypeError); NumPy scalars and CPU tensors skipped the range check,
    # so beta = -0.1 trained against the preferences without a word
    with pytest.raises(UsageError, match="dpo: beta must be > 0"):
        losses.get("dpo")(torch.tensor([[-1.0, -2.0]]), beta=beta)
    # in range they still work: beta = 0.5, -log sigma(0.5) = softplus(-0.5)
    for good in (np.float64(0.5), np.float32(0.5), torch.tensor(0.5)):
        got = losses.get("dpo")(torch.tensor([[-1.0, -2.0]]), beta=good)
        assert float(got[0]) == pytest.approx(softplus(-0.5), rel=1e-6)


def test_names_of_an_unknown_family_is_an_error():
    with pytest.raises(ValueError, match="unknown family 'pairwse'"):
        losses.names("pairwse")


# ------------------------------------------------------------------------------------- losses: labels
@pytest.mark.parametrize("name", ["kto", "bco", "apo_zero_unpaired"])
def test_nan_or_missing_labels_are_an_error(name):
    policy = torch.tensor([-1.0, -2.0])
    # a NaN label used to drop both terms: loss 0 for that example, silently
    with pytest.raises(ValueError, match=r"labels must be bool or floats in \[0, 1\]"):
        losses.get(name)(policy, labels=torch.tensor([NAN, 1.0]))
    with pytest.raises(ValueError, match="need labels"):
        losses.get(name)(policy, labels=None)


def test_nan_preference_probabilities_and_bce_labels_are_an_error():
    with pytest.raises(ValueError, match=r"preference_prob must lie in \[0, 1\]"):
        losses.get("soft_dpo")(torch.tensor([[-1.0, -2.0]] * 2), preference_prob=torch.tensor([NAN, 0.5]))
    with pytest.raises(ValueError, match=r"grades \(labels\) in \[0, 1\]"):
        losses.get("bce_reward")(torch.zeros(1, 2), grades=torch.tensor([[NAN, 1.0]]))


@pytest.mark.parametrize("name", ["bco", "bco_pair"])
def test_bco_delta_must_be_a_scalar(name):
    policy = torch.tensor([-1.0, -2.0, -3.0]) if name == "bco" else torch.tensor([[-1.0, -2.0]] * 3)
    kwargs = {"labels": torch.tensor([True, False, True])} if name == "bco" else {}
    with pytest.raises(ValueError, match="delta must be a float or a 0-dim tensor"):
        losses.get(name)(policy, delta=torch.zeros(3), **kwargs)


# --------------------------------------------------------------------- losses: a probability-0 response
def _value_and_grad(name, policy, **kwargs):
    policy = policy.clone().requires_grad_(True)
    out = call_list_objective(name, policy, **kwargs)
    out.sum().backward()
    return out.detach(), policy.grad


def test_minus_inf_loser_gives_the_limit_of_the_loss():
    # The loser has probability 0 (log-prob -inf): h = +inf. Limits: DPO and rDPO with eps = 0 -> 0;
    # EXO -> q_w = 1, q_l = 0: 1 * (0 - log(1 - eps)) + 0 = -log(1 - eps); Plackett-Luce at K = 2 -> 0.
    # rDPO used to give 0 * inf = NaN, EXO 0 * -inf = NaN, Plackett-Luce -log sigma(-inf) = inf for the
    # last step, which has nothing below it and contributes log 1 = 0.
    policy = torch.tensor([[-1.0, -INF]])
    expected = {"dpo": 0.0, "robust_dpo": 0.0, "exo": -math.log1p(-1e-3), "pl_dpo": 0.0, "pl_reward": 0.0}
    for name, value in expected.items():
        loss, grad = _value_and_grad(name, policy)
        assert float(loss[0]) == pytest.approx(value, abs=1e-7), name
        assert torch.isfinite(grad).all(), name


def test_plackett_luce_with_a_minus_inf_last_candidate():
    # s = 0.1 * (-1, -2, -inf): step 1 -log(e^-0.1 / (e^-0.1 + e^-0.2 + 0)) = softplus(-0.1), step 2
    # -log(e^-0.2 / (e^-0.2 + 0)) = 0, step 3 (nothing below) 0
    loss, grad = _value_and_grad("pl_dpo", torch.tensor([[-1.0, -2.0, -INF]]))
    assert float(loss[0]) == pytest.approx(softplus(-0.1), rel=1e-6)
    assert torch.isfinite(grad).all()
    # the same with a tie in the list (the tied path): ranks (0, 0, 1), s = (-0.1, -0.2, -inf):
    # each tied member against itself and the lower group only: -log(e^s / (e^s + 0)) = 0 twice
    loss, grad = _value_and_grad("pl_dpo", torch.tensor([[-1.0, -2.0, -INF]]), ranks=torch.tensor([[0, 0, 1]]))
    assert float(loss[0]) == 0.0 and torch.isfinite(grad).all()


# ------------------------------------------------------------------------------ losses: policy gradient
@pytest.mark.parametrize("magnitude", [1e4, 1e30])
def test_grpo_extreme_log_ratios_keep_loss_and_gradient_finite(magnitude):
    # exp(log pi_ref - log pi) and exp(log pi - log pi_old) used to overflow to inf, with -inf/NaN gradients
    token = torch.full((1, 2, 3), -magnitude, requires_grad=True)
    loss = losses.get("grpo")(token, torch.full((1, 2, 3), -1.0), advantages=torch.tensor([[1.0, -1.0]]),
                              old_token_logps=torch.full((1, 2, 3), -2.0 * magnitude))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(token.grad).all()
    # ordinary values are untouched: one token, A = 1, pi_old = pi (ratio 1), d = log pi_ref - log pi = 2,
    # loss = -1 * 1 + beta * (e^2 - 2 - 1) with beta = 0.04
    token = torch.tensor([[[-3.0]]])
    got = losses.get("grpo")(token, token + 2.0, advantages=torch.tensor([[1.0]]), beta=0.04)
    assert float(got[0]) == pytest.approx(-1.0 + 0.04 * (math.exp(2.0) - 3.0), rel=1e-6)


def test_grpo_side_inputs_of_another_shape_name_the_argument():
    token = -torch.rand(2, 3, 4) - 1.0
    grpo = losses.get("grpo")
    with pytest.raises(ValueError, match=r"advantages has shape \(2,\), expected \[B, K\] = \(2, 3\)"):
        grpo(token, advantages=torch.zeros(2))
    with pytest.raises(ValueError, match=r"token_mask has shape \(2, 3, 5\)"):
        grpo(token, advantages=torch.zeros(2, 3), token_mask=torch.ones(2, 3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"old_token_logps has shape \(2, 3\)"):
        grpo(token, advantages=torch.zeros(2, 3), old_token_logps=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"token_logps must be \[B, K, T\]"):
        grpo(token[:, :, 0], advantages=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"rloo: rewards has shape \(2,\)"):
        losses.get("rloo")(token[:, :, 0], rewards=torch.zeros(2))


def test_group_advantages_of_huge_rewards_are_not_zeroed():
    # r = (1e30, -1e30, 0): mean 0, unbiased std sqrt((1e60 + 1e60) / 2) = 1e30 -> A = (1, -1, 0); in
    # float32 the squares overflowed, std was inf and every advantage silently 0
    got = group_advantages(torch.tensor([[1e30, -1e30, 0.0]]))
    assert got.dtype == torch.float32
    assert got[0].tolist() == pytest.approx([1.0, -1.0, 0.0], rel=1e-6)
    # RLOO: A_i = n / (n - 1) (r_i - mean) = 1.5 * r
    got = group_advantages(torch.tensor([[1e30, -1e30, 0.0]]), kind="rloo")
    assert got[0].tolist() == pytest.approx([1.5e30, -1.5e30, 0.0], rel=1e-6)


def test_group_helpers_check_their_shapes():
    with pytest.raises(ValueError, match=r"rewards must be \[B, K\]"):
        group_advantages(torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"valid has shape \(1, 4\)"):
        group_advantages(torch.tensor([[1.0, 2.0, 3.0]]), valid=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        group_advantages(torch.tensor([[1.0, 2.0, 3.0]]), epsilon=-1.0)
    with pytest.raises(ValueError, match=r"ranks must be \[B, K\]"):
        rank_rewards(torch.tensor([0, 1]))


# -------------------------------------------------------------------------------------- eval metrics
def test_nan_values_are_an_error_not_a_wrong_pair():
    # NaN > x is False, so a NaN used to count as a mis-ranked pair: ranking accuracy 0.5 here
    with pytest.raises(ValueError, match="logps_w has NaN"):
        E.ranking_accuracy([NAN, 1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="rewards_l has NaN"):
        E.reward_accuracy([1.0, 1.0], [0.0, NAN])
    with pytest.raises(ValueError, match="logps .*has NaN"):
        E.listwise_ranking_accuracy([[1.0, NAN, 0.0]], [[0, 1, 2]])
    with pytest.raises(ValueError, match="rewards .*has NaN"):
        E.listwise_reward_accuracy([[1.0, NAN, 0.0]], [[0, 1, 2]])
    with pytest.raises(ValueError, match="ref_logps_w has NaN"):
        E.idealised_ranking_accuracy([NAN], [-2.0], 0.7, 0.1)
    with pytest.raises(ValueError, match="policy_logps .*has NaN"):
        evaluate_logps([[NAN, -1.0]], [[0, 1]])
    with pytest.raises(ValueError, match="ref_logps .*has NaN"):
        evaluate_logps([[-1.0, -2.0]], [[0, 1]], ref_logps=[[-1.0, NAN]])
    with pytest.raises(ValueError, match="margins has NaN"):
        E.preference_calibration([NAN, 1.0])
    # padding may hold anything: one pair (0 beats 2), 1 > 0 -> accuracy 1
    assert E.listwise_ranking_accuracy([[1.0, NAN, 0.0]], [[0, -1, 1]]) == 1.0
    # -inf is a log-prob (probability 0): -1 > -inf right, -inf vs -inf a tie, wrong under "strict"
    assert E.ranking_accuracy([-1.0, -INF], [-INF, -INF]) == 0.5


def test_weights_must_be_finite():
    logps, ranks = [[1.0, 0.0], [0.0, 1.0]], [[0, 1], [0, 1]]
    for weights in ([NAN, 1.0], [INF, 1.0]):
        for average in ("pairs", "lists"):
            with pytest.raises(ValueError, match="finite non-negative"):
                E.listwise_ranking_accuracy(logps, ranks, weights=weights, average=average)
    # finite weights (3, 1): list 0 right, list 1 wrong -> 3 / 4
    assert E.listwise_ranking_accuracy(logps, ranks, weights=[3.0, 1.0]) == pytest.approx(0.75)


@pytest.mark.parametrize("beta", [0.0, -1.0, NAN, INF])
def test_preference_calibration_needs_a_positive_beta(beta):
    # beta = 0 used to report a perfect ECE of 0 (every probability 1/2), beta < 0 a mirrored table
    with pytest.raises(ValueError, match="beta must be a positive finite number"):
        E.preference_calibration([1.0, -1.0], beta=beta)


def test_preference_calibration_outcomes_of_another_length_name_the_argument():
    with pytest.raises(ValueError, match=r"outcomes must be a number or one rate per margin, shape \(2,\)"):
        E.preference_calibration([1.0, 2.0], outcomes=[1.0, 0.0, 1.0])


@pytest.mark.parametrize("n_bins", [NAN, INF, True])
def test_ece_bins_must_be_a_positive_integer(n_bins):
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        E.expected_calibration_error([0.5], [1.0], n_bins=n_bins)


def test_likelihood_displacement_leaves_missing_values_out_of_every_statistic():
    # changes (NaN, -1, +1): mean 0, median 0, one of two decreased, n = 2 (mean used to ignore the NaN
    # while the median was NaN and n and the share counted it)
    out = E.likelihood_displacement([NAN, -2.0, -1.0], [-1.0, -3.0, 0.0])
    assert out["n"] == 2 and out["mean_change"] == 0.0 and out["median_change"] == 0.0
    assert out["share_decreased"] == 0.5


def test_bfloat16_tensors_are_accepted():
    # (1 > 0) right, (2 > 3) wrong
    w = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    assert E.ranking_accuracy(w, torch.tensor([0.0, 3.0], dtype=torch.bfloat16)) == 0.5


def test_pair_counts_must_agree():
    with pytest.raises(ValueError, match="must score the same pairs"):
        E.alignment_gap([-1.0, 1.0], [-2.0, 2.0], [-1.0], [-2.0], 0.7, 0.1)
    with pytest.raises(ValueError, match=r"alpha must be a number or one rate per pair, shape \(2,\)"):
        E.idealised_ranking_accuracy([-1.0, -1.0], [-2.0, -2.0], [0.7, 0.2, 0.3], 0.1)
