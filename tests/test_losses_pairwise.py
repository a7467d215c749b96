"""Pairwise preference objectives: hand-derived values, reductions, the pair decomposition (K > 2, ties,
padding), gradients at ordinary and extreme inputs, and exact population properties in a tabular setting.

Every expected value below is computed with ``math`` from the formula written beside it, never by calling
the library.
"""

import math

import pytest

torch = pytest.importorskip("torch")

import rankalign.losses.pairwise  # noqa: E402,F401  (registers the pairwise objectives)
from rankalign.losses import get, names  # noqa: E402

PAIRWISE = ["dpo", "robust_dpo", "ipo", "hinge", "r_dpo", "dpop", "simpo", "cpo", "orpo", "ln_dpo", "soft_dpo",
            "exo", "nca", "apo_zero", "apo_down", "sppo_hard", "discopop", "f_dpo"]
NEEDS_LENGTHS = {"r_dpo", "simpo", "orpo", "ln_dpo"}


def softplus(x):  # -log sigma(-x) = log(1 + e^x), by hand
    return math.log1p(math.exp(x))


def nls(x):  # -log sigma(x)
    return math.log1p(math.exp(-x))


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# One pair used by the hand-derived values:
#   policy log-probs ell = (-1, -3), reference (-2, -2.5), lengths (4, 2)
#   rho_w = -1 - -2 = 1, rho_l = -3 - -2.5 = -0.5, h = rho_w - rho_l = 1.5
POLICY = [[-1.0, -3.0]]
REF = [[-2.0, -2.5]]
LENGTHS = [[4.0, 2.0]]


def call(name, policy=POLICY, ref=REF, lengths=LENGTHS, **params):
    ref_t = None if ref is None else t(ref)
    return get(name)(t(policy), ref_t, lengths=t(lengths), **params)


# ------------------------------------------------------------------------------- hand-derived values
HAND = [
    # DPO, beta = 0.1: -log sigma(0.1 * 1.5)
    ("dpo", {"beta": 0.1}, nls(0.15)),
    # cDPO eps = 0.25: 0.75 * -log sigma(0.15) + 0.25 * -log sigma(-0.15)
    ("dpo", {"beta": 0.1, "label_smoothing": 0.25}, 0.75 * nls(0.15) + 0.25 * nls(-0.15)),
    # robust DPO eps = 0.25: (0.75 * nls(0.15) - 0.25 * nls(-0.15)) / (1 - 0.5)
    ("robust_dpo", {"beta": 0.1, "label_smoothing": 0.25}, (0.75 * nls(0.15) - 0.25 * nls(-0.15)) / 0.5),
    # IPO tau = 0.1, summed: (1.5 - 1/0.2)^2 = (1.5 - 5)^2 = 12.25
    ("ipo", {"beta": 0.1}, 12.25),
    # IPO length-normalised: 1/4 - (-0.5)/2 = 0.5; (0.5 - 5)^2 = 20.25
    ("ipo", {"beta": 0.1, "length_normalize": True}, 20.25),
    # hinge beta = 0.1: max(0, 1 - 0.15) = 0.85; beta = 1: max(0, 1 - 1.5) = 0
    ("hinge", {"beta": 0.1}, 0.85),
    ("hinge", {"beta": 1.0}, 0.0),
    # R-DPO beta = 0.1, alpha = 0.05: 0.1 * 1.5 + 0.05 * (4 - 2) = 0.25 (length term outside beta)
    ("r_dpo", {"beta": 0.1, "alpha": 0.05}, nls(0.25)),
    # DPOP: rho_w = 1 >= 0, so no penalty: DPO's -log sigma(0.15) whatever lambda
    ("dpop", {"beta": 0.1, "dpop_lambda": 50.0}, nls(0.15)),
    # SimPO beta = 2, gamma = 0.5: 2 * (-1/4 - -3/2) - 0.5 = 2 * 1.25 - 0.5 = 2.0
    ("simpo", {"beta": 2.0, "gamma": 0.5}, nls(2.0)),
    # CPO beta = 0.1, alpha = 1: -log sigma(0.1 * (-1 - -3)) + 1 * 1 (summed NLL of the winner)
    ("cpo", {"beta": 0.1, "alpha": 1.0}, nls(0.2) + 1.0),
    # CPO with per-token NLL: nls(0.2) + 0.5 * (1 / 4)
    ("cpo", {"beta": 0.1, "alpha": 0.5, "nll_length_normalize": True}, nls(0.2) + 0.125),
    # SimPO smoothed, eps = 0.1: 0.9 * -log sigma(2.0) + 0.1 * -log sigma(-2.0)
    ("simpo", {"beta": 2.0, "gamma": 0.5, "label_smoothing": 0.1}, 0.9 * nls(2.0) + 0.1 * nls(-2.0)),
    # CPO smoothed, eps = 0.2: 0.8 * nls(0.2) + 0.2 * nls(-0.2) + 1
    ("cpo", {"beta": 0.1, "label_smoothing": 0.2}, 0.8 * nls(0.2) + 0.2 * nls(-0.2) + 1.0),
    # LN-DPO beta = 5: 5 * (1/4 - (-0.5)/2) = 5 * 0.5 = 2.5
    ("ln_dpo", {"beta": 5.0}, nls(2.5)),
    # NCA beta = 0.1: r_w = 0.1, r_l = -0.05
    ("nca", {"beta": 0.1}, nls(0.1) + 0.5 * nls(-0.1) + 0.5 * nls(0.05)),
    # APO-zero: (1 - sigma(0.1)) + sigma(-0.05)
    ("apo_zero", {"beta": 0.1}, 1.0 - sig(0.1) + sig(-0.05)),
    # APO-down: sigma(0.1) + 1 - sigma(0.15)
    ("apo_down", {"beta": 0.1}, sig(0.1) + 1.0 - sig(0.15)),
    # SPPO-hard beta = 0.1 (targets +-5): (1 - 5)^2 + (-0.5 + 5)^2 = 16 + 20.25
    ("sppo_hard", {"beta": 0.1}, 36.25),
    # f-DPO reverse KL is DPO
    ("f_dpo", {"beta": 0.1, "divergence": "reverse_kl"}, nls(0.15)),
    # forward KL, f'(u) = -1/u: f'(e^1) - f'(e^-0.5) = -e^-1 + e^0.5
    ("f_dpo", {"beta": 0.1, "divergence": "forward_kl"}, nls(0.1 * (math.exp(0.5) - math.exp(-1.0)))),
    # JS, f'(u) = log(2u / (1 + u)) at u_w = e, u_l = e^-0.5
    ("f_dpo", {"beta": 0.1, "divergence": "js"},
     nls(0.1 * (math.log(2 * math.e / (1 + math.e)) - math.log(2 * math.exp(-0.5) / (1 + math.exp(-0.5)))))),
    # alpha = 0.5, f'(u) = (1 - u^-0.5) / 0.5: (1 - e^-0.5)/0.5 - (1 - e^0.25)/0.5
    ("f_dpo", {"beta": 0.1, "divergence": "alpha", "alpha": 0.5},
     nls(0.1 * ((1 - math.exp(-0.5)) / 0.5 - (1 - math.exp(0.25)) / 0.5))),
]


@pytest.mark.parametrize("name,params,expected", HAND, ids=[f"{h[0]}-{i}" for i, h in enumerate(HAND)])
def test_hand_derived_value(name, params, expected):
    assert call(name, **params).item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_orpo_hand_value():
    # length-averaged log-probs m_w = -1/4, m_l = -3/2; log odds = m - log(1 - e^m)
    lo_w = -0.25 - math.log(1 - math.exp(-0.25))
    lo_l = -1.5 - math.log(1 - math.exp(-1.5))
    expected = 0.25 + 0.1 * nls(lo_w - lo_l)  # NLL of the winner (per token) + lambda * -log sigma(ratio)
    assert call("orpo", beta=0.1).item() == pytest.approx(expected, rel=1e-12)
    # reference is ignored
    assert call("orpo", ref=None, beta=0.1).item() == pytest.approx(expected, rel=1e-12)


def test_exo_hand_value():
    # q_w = sigma(0.15), q_l = 1 - q_w; labels (1 - 0.1, 0.1): KL(q || p)
    q_w = sig(0.15)
    q_l = 1 - q_w
    expected = q_w * math.log(q_w / 0.9) + q_l * math.log(q_l / 0.1)
    assert call("exo", beta=0.1, label_smoothing=0.1).item() == pytest.approx(expected, rel=1e-12)


def test_discopop_hand_value():
    # x = 0.05 * 1.5 = 0.075, gate g = sigma(0.075 / 0.05) = sigma(1.5)
    g = sig(1.5)
    expected = (1 - g) * nls(0.075) + g * math.exp(-0.075)
    assert call("discopop", beta=0.05, discopop_tau=0.05).item() == pytest.approx(expected, rel=1e-12)
    # beta = 0.1, tau = 0.05: x = 0.15, g = sigma(3)
    g = sig(3.0)
    expected = (1 - g) * nls(0.15) + g * math.exp(-0.15)
    assert call("discopop", beta=0.1).item() == pytest.approx(expected, rel=1e-12)


def test_soft_dpo_hand_values():
    # p = 0.7 for column 0: 0.7 * -log sigma(0.15) + 0.3 * -log sigma(-0.15)
    expected = 0.7 * nls(0.15) + 0.3 * nls(-0.15)
    loss = call("soft_dpo", beta=0.1, preference_prob=torch.tensor([0.7], dtype=torch.float64))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # the same row with ranks saying column 1 is best: the pair (1 over 0) has h = -1.5 and p = 0.3
    flipped = get("soft_dpo")(t(POLICY), t(REF), ranks=torch.tensor([[1, 0]]), beta=0.1,
                              preference_prob=torch.tensor([0.7], dtype=torch.float64))
    assert flipped.item() == pytest.approx(0.3 * nls(-0.15) + 0.7 * nls(0.15), rel=1e-12)
    # grades (2, 1): p = sigma(2 - 1) = sigma(1)
    p = sig(1.0)
    loss = call("soft_dpo", beta=0.1, grades=t([[2.0, 1.0]]))
    assert loss.item() == pytest.approx(p * nls(0.15) + (1 - p) * nls(-0.15), rel=1e-12)


def test_reference_free_uses_policy_log_probs():
    # DPO without a reference: h = -1 - -3 = 2, beta = 0.1
    assert call("dpo", ref=None, beta=0.1).item() == pytest.approx(nls(0.2), rel=1e-12)
    # SimPO ignores a reference if one is passed
    assert call("simpo", beta=2.0, gamma=0.5).item() == call("simpo", ref=None, beta=2.0, gamma=0.5).item()


# ------------------------------------------------------------------------------------------ reductions
def test_two_item_reductions():
    torch.manual_seed(1)
    policy = -torch.rand(6, 2, dtype=torch.float64) * 20
    ref = -torch.rand(6, 2, dtype=torch.float64) * 20
    ones = torch.ones_like(policy)
    dpo = get("dpo")(policy, ref, beta=0.3)
    close = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(get("dpo")(policy, ref, beta=0.3, label_smoothing=0.0), dpo, **close)
    torch.testing.assert_close(get("robust_dpo")(policy, ref, beta=0.3, label_smoothing=0.0), dpo, **close)
    torch.testing.assert_close(get("soft_dpo")(policy, ref, beta=0.3), dpo, **close)
    torch.testing.assert_close(get("soft_dpo")(policy, ref, beta=0.3, preference_prob=torch.ones(6, dtype=torch.float64)),
                               dpo, **close)
    torch.testing.assert_close(get("f_dpo")(policy, ref, beta=0.3), dpo, **close)
    torch.testing.assert_close(get("ln_dpo")(policy, ref, lengths=ones, beta=0.3), dpo, **close)
    # cDPO with eps = soft DPO with p = 1 - eps
    eps = 0.2
    torch.testing.assert_close(
        get("dpo")(policy, ref, beta=0.3, label_smoothing=eps),
        get("soft_dpo")(policy, ref, beta=0.3, preference_prob=torch.full((6,), 1 - eps, dtype=torch.float64)), **close)
    # IPO normalised by unit lengths = summed IPO
    torch.testing.assert_close(get("ipo")(policy, ref, lengths=ones, length_normalize=True), get("ipo")(policy, ref),
                               **close)
    # SimPO with unit lengths, gamma = 0 = reference-free DPO; CPO with alpha = 0 too
    free = get("dpo")(policy, None, beta=0.3)
    torch.testing.assert_close(get("simpo")(policy, ref, lengths=ones, beta=0.3, gamma=0.0), free, **close)
    torch.testing.assert_close(get("cpo")(policy, ref, beta=0.3, alpha=0.0), free, **close)
    # alpha-divergence: alpha = 1 is forward KL, alpha -> 0 tends to reverse KL
    torch.testing.assert_close(get("f_dpo")(policy, ref, divergence="alpha", alpha=1.0),
                               get("f_dpo")(policy, ref, divergence="forward_kl"), **close)
    torch.testing.assert_close(get("f_dpo")(policy, ref, divergence="alpha", alpha=1e-7),
                               get("f_dpo")(policy, ref), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ pair decomposition
def _kwargs(name, k):
    kwargs = {}
    if name in NEEDS_LENGTHS:
        kwargs["lengths"] = None  # filled by caller
    if name == "ipo":
        kwargs["length_normalize"] = True
    if name == "f_dpo":
        kwargs["divergence"] = "js"
    if name == "dpo":
        kwargs["label_smoothing"] = 0.1
    if name == "robust_dpo":
        kwargs["label_smoothing"] = 0.2
    if name == "r_dpo":
        kwargs["alpha"] = 0.3
    if name == "dpop":
        kwargs["dpop_lambda"] = 5.0
    return kwargs


@pytest.mark.parametrize("name", PAIRWISE)
def test_k3_list_is_mean_over_ordered_pairs(name):
    # ranks (1, 0, 1, 2): candidates 0 and 2 tie; ordered pairs: 1>0, 1>2, 1>3, 0>3, 2>3
    torch.manual_seed(2)
    policy = -torch.rand(1, 4, dtype=torch.float64) * 10
    ref = -torch.rand(1, 4, dtype=torch.float64) * 10
    lengths = torch.tensor([[3.0, 5.0, 2.0, 7.0]], dtype=torch.float64)
    grades = torch.tensor([[1.0, 2.5, 1.0, 0.0]], dtype=torch.float64)
    ranks = torch.tensor([[1, 0, 1, 2]])
    kwargs = _kwargs(name, 4)
    kwargs["lengths"] = lengths
    if name == "soft_dpo":
        kwargs["grades"] = grades
    objective = get(name)
    whole = objective(policy, ref, ranks=ranks, **kwargs)
    pair_losses = []
    for winner, loser in [(1, 0), (1, 2), (1, 3), (0, 3), (2, 3)]:
        cols = [winner, loser]
        pair_kwargs = dict(kwargs, lengths=lengths[:, cols])
        if name == "soft_dpo":
            pair_kwargs["grades"] = grades[:, cols]
        pair_losses.append(objective(policy[:, cols], ref[:, cols], **pair_kwargs))
    torch.testing.assert_close(whole, sum(pair_losses) / 5, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", PAIRWISE)
def test_padding_never_changes_a_row(name):
    torch.manual_seed(3)
    policy = (-torch.rand(2, 3, dtype=torch.float64) * 10).requires_grad_(True)
    ref = -torch.rand(2, 3, dtype=torch.float64) * 10
    lengths = torch.tensor([[3.0, 5.0, 2.0], [1.0, 4.0, 6.0]], dtype=torch.float64)
    ranks = torch.tensor([[0, 1, 2], [2, 0, 1]])
    kwargs = _kwargs(name, 3)
    kwargs["lengths"] = lengths
    if name == "soft_dpo":
        kwargs["grades"] = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    base = get(name)(policy, ref, ranks=ranks, **kwargs)
    base_grad, = torch.autograd.grad(base.sum(), policy)

    # two padded columns with hostile contents: log-prob 0 (probability 1), huge values, length 0
    pad_policy = torch.cat([policy, torch.tensor([[0.0, 1e4], [-1e4, 0.0]], dtype=torch.float64)], 1)
    pad_ref = torch.cat([ref, torch.tensor([[-1e4, 0.0], [0.0, 1e4]], dtype=torch.float64)], 1)
    pad_kwargs = dict(kwargs, lengths=torch.cat([lengths, torch.zeros(2, 2, dtype=torch.float64)], 1))
    if name == "soft_dpo":
        pad_kwargs["grades"] = torch.cat([kwargs["grades"], torch.full((2, 2), 1e4, dtype=torch.float64)], 1)
    pad_ranks = torch.cat([ranks, torch.full((2, 2), -1)], 1)
    padded = get(name)(pad_policy, pad_ref, ranks=pad_ranks, **pad_kwargs)
    torch.testing.assert_close(padded, base, rtol=1e-12, atol=1e-12)
    grad, = torch.autograd.grad(padded.sum(), policy)
    torch.testing.assert_close(grad, base_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", PAIRWISE)
def test_permuting_candidates_with_their_ranks_leaves_the_loss_unchanged(name):
    # the pair decomposition depends on ranks only, so any column order gives the same per-list loss;
    # each row's loss is also independent of the other rows in the batch
    torch.manual_seed(5)
    policy = -torch.rand(2, 5, dtype=torch.float64) * 10
    ref = -torch.rand(2, 5, dtype=torch.float64) * 10
    lengths = torch.randint(1, 9, (2, 5)).to(torch.float64)
    grades = torch.rand(2, 5, dtype=torch.float64) * 3
    ranks = torch.tensor([[2, 0, 1, 1, -1], [0, 3, 2, 1, 4]])
    kwargs = dict(_kwargs(name, 5), lengths=lengths)
    if name == "soft_dpo":
        kwargs["grades"] = grades
    base = get(name)(policy, ref, ranks=ranks, **kwargs)
    perm = torch.tensor([3, 0, 4, 2, 1])
    permuted_kwargs = dict(kwargs, lengths=lengths[:, perm])
    if name == "soft_dpo":
        permuted_kwargs["grades"] = grades[:, perm]
    permuted = get(name)(policy[:, perm], ref[:, perm], ranks=ranks[:, perm], **permuted_kwargs)
    torch.testing.assert_close(permuted, base, rtol=1e-12, atol=1e-12)
    row_kwargs = {key: (value[1:] if torch.is_tensor(value) else value) for key, value in kwargs.items()}
    alone = get(name)(policy[1:], ref[1:], ranks=ranks[1:], **row_kwargs)
    torch.testing.assert_close(alone, base[1:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", PAIRWISE)
def test_k1_and_all_tie_lists_give_zero_loss_and_finite_gradients(name):
    kwargs = _kwargs(name, 1)
    single = torch.tensor([[-2.0], [-5.0]], dtype=torch.float64, requires_grad=True)
    kwargs["lengths"] = torch.ones(2, 1, dtype=torch.float64)
    loss = get(name)(single, single.detach() - 1.0, **kwargs)
    assert loss.tolist() == [0.0, 0.0]
    grad, = torch.autograd.grad(loss.sum(), single)
    assert torch.isfinite(grad).all() and (grad == 0).all()

    tied = torch.tensor([[-2.0, -7.0, -1.0]], dtype=torch.float64, requires_grad=True)
    kwargs["lengths"] = torch.ones(1, 3, dtype=torch.float64)
    loss = get(name)(tied, tied.detach() - 1.0, ranks=torch.tensor([[0, 0, 0]]), **kwargs)
    assert loss.tolist() == [0.0]
    grad, = torch.autograd.grad(loss.sum(), tied)
    assert torch.isfinite(grad).all() and (grad == 0).all()


# -------------------------------------------------------------------------------------------- gradients
def _gradcheck(name, policy, ref, ranks, lengths, grades=None):
    kwargs = _kwargs(name, policy.shape[1])
    kwargs["lengths"] = lengths
    if name == "soft_dpo" and grades is not None:
        kwargs["grades"] = grades
    objective = get(name)

    def fn(p, r):
        return objective(p, r, ranks=ranks, **kwargs)

    assert torch.autograd.gradcheck(fn, (policy.requires_grad_(True), ref.requires_grad_(True)))


@pytest.mark.parametrize("name", PAIRWISE)
def test_gradcheck_ordinary_inputs_with_ties_and_padding(name):
    torch.manual_seed(4)
    policy = -torch.rand(3, 4, dtype=torch.float64) * 8 - 0.5
    ref = -torch.rand(3, 4, dtype=torch.float64) * 8 - 0.5
    ranks = torch.tensor([[0, 1, 2, 3], [1, 0, 1, -1], [0, 0, -1, -1]])  # plain, tie + pad, all-tie + pad
    lengths = torch.tensor([[3.0, 5.0, 2.0, 4.0], [1.0, 2.0, 6.0, 0.0], [2.0, 2.0, 0.0, 0.0]], dtype=torch.float64)
    grades = torch.tensor([[3.0, 2.0, 1.0, 0.0], [1.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    _gradcheck(name, policy, ref, ranks, lengths, grades)


@pytest.mark.parametrize("name", PAIRWISE)
def test_gradcheck_extreme_margins(name):
    # rho = (5000, -5000) -> h = +1e4 (row 0) and h = -1e4 (row 1); policy log-probs stay <= 0, so the
    # reference-free objectives see ell differences of -+1e4 as well.
    policy = torch.tensor([[-1.0, -10001.0], [-10001.0, -1.0]], dtype=torch.float64)
    ref = torch.full((2, 2), -5001.0, dtype=torch.float64)
    lengths = torch.ones(2, 2, dtype=torch.float64)
    grades = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    _gradcheck(name, policy, ref, None, lengths, grades)
    loss = get(name)(policy.detach(), ref.detach(), **dict(_kwargs(name, 2), lengths=lengths))
    assert torch.isfinite(loss).all()


@pytest.mark.parametrize("name", PAIRWISE)
def test_float32_extreme_margins_give_finite_loss_and_gradients(name):
    # training runs in float32: h = +-1e4 (rows 0, 1), a probability-1 response (row 2), all finite
    policy = torch.tensor([[-1.0, -10001.0], [-10001.0, -1.0], [0.0, -30.0]], requires_grad=True)
    ref = torch.tensor([[-5001.0, -5001.0], [-5001.0, -5001.0], [-30.0, 0.0]])
    kwargs = dict(_kwargs(name, 2), lengths=torch.ones(3, 2))
    loss = get(name)(policy, ref, **kwargs)
    grad, = torch.autograd.grad(loss.sum(), policy)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("divergence", ["forward_kl", "js", "alpha"])
def test_f_dpo_float32_extremes_stay_finite(divergence):
    policy = torch.tensor([[-1.0, -10001.0], [-10001.0, -1.0], [0.0, -20000.0]], requires_grad=True)
    ref = torch.tensor([[-5001.0, -5001.0], [-5001.0, -5001.0], [-20000.0, 0.0]])
    loss = get("f_dpo")(policy, ref, divergence=divergence)
    grad, = torch.autograd.grad(loss.sum(), policy)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


def test_orpo_probability_one_response_is_finite():
    policy = torch.tensor([[0.0, -3.0], [-3.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss = get("orpo")(policy, lengths=torch.ones(2, 2, dtype=torch.float64))
    grad, = torch.autograd.grad(loss.sum(), policy)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


def test_log1mexp_matches_direct_formula_and_is_accurate_near_zero():
    from rankalign.losses.pairwise import log1mexp

    x = torch.tensor([-1e-10, -0.1, -0.69, -0.7, -5.0, -50.0], dtype=torch.float64)
    # log(-expm1(v)) is exact near 0; log1p(-exp(v)) is exact far from it (where 1 - e^v rounds to 1)
    expected = [math.log(-math.expm1(v)) if v > -1 else math.log1p(-math.exp(v)) for v in x.tolist()]
    torch.testing.assert_close(log1mexp(x), torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0)


# ----------------------------------------------------------------- exact population (tabular) properties
def _pair_losses(name, h, beta, **params):
    """(loss with the label w > l, loss with the flipped label) at rho_w - rho_l = h (reference = 0)."""
    policy = torch.stack([h, torch.zeros_like(h)]).reshape(1, 2)
    objective = get(name)
    clean = objective(policy, torch.zeros_like(policy), beta=beta, **params)
    flipped = objective(policy, torch.zeros_like(policy), ranks=torch.tensor([[1, 0]]), beta=beta, **params)
    return clean.squeeze(), flipped.squeeze()


def _population_minimiser(name, alpha, beta, low=-200.0, high=200.0, **params):
    """argmin_h alpha * loss(h) + (1 - alpha) * loss(-h) by bisection on the autograd derivative (convex)."""
    def slope(value):
        h = torch.tensor(value, dtype=torch.float64, requires_grad=True)
        clean, flipped = _pair_losses(name, h, beta, **params)
        grad, = torch.autograd.grad(alpha * clean + (1 - alpha) * flipped, h)
        return grad.item()

    assert slope(low) < 0 < slope(high)
    for _ in range(200):
        mid = 0.5 * (low + high)
        if slope(mid) > 0:
            high = mid
        else:
            low = mid
    return 0.5 * (low + high)


@pytest.mark.parametrize("alpha", [0.55, 0.8, 0.97])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_population_optimum(alpha, beta):
    # d/dh [alpha softplus(-beta h) + (1 - alpha) softplus(beta h)] = beta (sigma(beta h) - alpha) = 0
    h_star = _population_minimiser("dpo", alpha, beta)
    assert beta * h_star == pytest.approx(math.log(alpha / (1 - alpha)), abs=1e-9)


@pytest.mark.parametrize("alpha", [0.6, 0.9])
def test_cdpo_population_optimum(alpha):
    # labels flipped with rate eps on top of rate alpha: sigma(beta h*) = alpha (1 - eps) + (1 - alpha) eps
    eps, beta = 0.1, 0.2
    h_star = _population_minimiser("dpo", alpha, beta, label_smoothing=eps)
    target = alpha * (1 - eps) + (1 - alpha) * eps
    assert beta * h_star == pytest.approx(math.log(target / (1 - target)), abs=1e-9)


@pytest.mark.parametrize("alpha", [0.3, 0.55, 0.8, 1.0])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_population_optimum(alpha, beta):
    # alpha (h - 1/(2 beta))^2 + (1 - alpha)(-h - 1/(2 beta))^2; derivative
    # 2 alpha (h - c) + 2 (1 - alpha)(h + c) = 2h - 2c(2 alpha - 1) = 0  ->  h* = (2 alpha - 1) / (2 beta)
    h_star = _population_minimiser("ipo", alpha, beta)
    assert h_star == pytest.approx((2 * alpha - 1) / (2 * beta), abs=1e-9)


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_soft_dpo_population_optimum(p):
    # -p log sigma(beta h) - (1 - p) log sigma(-beta h) is minimised at sigma(beta h*) = p
    beta = 0.25
    h = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([h], lr=1, max_iter=200, tolerance_grad=1e-14, tolerance_change=0,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = get("soft_dpo")(h, None, beta=beta, preference_prob=torch.tensor([p], dtype=torch.float64)).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    assert beta * (h[0, 0] - h[0, 1]).item() == pytest.approx(math.log(p / (1 - p)), abs=1e-7)


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.45])
def test_robust_dpo_is_unbiased_under_random_flips(eps):
    # E over a flip with rate eps of the robust loss = the clean DPO loss, exactly, for every h:
    # (1 - eps) * rdpo(h) + eps * rdpo(-h) = -log sigma(beta h)
    beta = 0.3
    for value in [-50.0, -3.0, -0.2, 0.0, 0.7, 4.0, 60.0]:
        h = torch.tensor(value, dtype=torch.float64)
        clean, flipped = _pair_losses("robust_dpo", h, beta, label_smoothing=eps)
        expected = nls(beta * value) if beta * value > -30 else -beta * value + math.log1p(math.exp(beta * value))
        assert ((1 - eps) * clean + eps * flipped).item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_cdpo_is_the_expected_dpo_loss_under_flips():
    eps, beta = 0.15, 0.4
    for value in [-5.0, 0.3, 8.0]:
        h = torch.tensor(value, dtype=torch.float64)
        smoothed, _ = _pair_losses("dpo", h, beta, label_smoothing=eps)
        assert smoothed.item() == pytest.approx((1 - eps) * nls(beta * value) + eps * nls(-beta * value), rel=1e-12)


def test_exo_minimum_at_label_log_odds():
    # KL(q || p) = 0 iff q_w = 1 - eps, i.e. beta h = log((1 - eps) / eps)
    eps, beta = 0.1, 0.5
    h = math.log(0.9 / 0.1) / beta
    loss = get("exo")(t([[h, 0.0]]), t([[0.0, 0.0]]), beta=beta, label_smoothing=eps)
    assert loss.item() == pytest.approx(0.0, abs=1e-14)
    for other in (h - 1.0, h + 1.0):
        assert get("exo")(t([[other, 0.0]]), t([[0.0, 0.0]]), beta=beta, label_smoothing=eps).item() > 0


def test_sppo_hard_minimum():
    # rho_w = 1/(2 beta) = 2.5, rho_l = -2.5 at beta = 0.2: both squares vanish
    assert get("sppo_hard")(t([[2.5, -2.5]]), t([[0.0, 0.0]]), beta=0.2).item() == 0.0


def test_dpo_tabular_policy_recovers_bradley_terry_rewards():
    # A tabular policy over 4 responses (softmax of free logits) and a uniform reference. Population
    # preferences come from a Bradley-Terry model with rewards r: P(i > j) = sigma(r_i - r_j). The DPO
    # population optimum satisfies beta (rho_i - rho_j) = r_i - r_j for every pair.
    rewards = [0.0, 0.7, -1.1, 2.0]
    beta = 0.5
    pairs = [(i, j) for i in range(4) for j in range(4) if i != j]
    alpha = torch.tensor([sig(rewards[i] - rewards[j]) for i, j in pairs], dtype=torch.float64)
    logits = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    ref_logps = torch.full((len(pairs), 2), math.log(0.25), dtype=torch.float64)
    index = torch.tensor(pairs)
    optimiser = torch.optim.LBFGS([logits], lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=0,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        logps = torch.log_softmax(logits, 0)[index]  # [P, 2]: (i, j), i labelled the winner
        loss = (alpha * get("dpo")(logps, ref_logps, beta=beta)).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    rho = torch.log_softmax(logits, 0).detach() - math.log(0.25)
    for i in range(4):
        for j in range(4):
            assert beta * (rho[i] - rho[j]).item() == pytest.approx(rewards[i] - rewards[j], abs=1e-6)


# ------------------------------------------------------------------------------ registry and errors
def test_every_pairwise_objective_is_registered_with_paper_and_doc():
    assert set(PAIRWISE) <= set(names("pairwise"))
    for name in PAIRWISE:
        objective = get(name)
        assert objective.family == "pairwise"
        assert "arXiv:" in objective.paper
        assert "per pair" in objective.doc.lower() and "K > 2" in objective.doc
        assert "beta" in objective.params
        assert objective.reference_free == (name in {"simpo", "cpo", "orpo"})
    assert get("dpo").params["label_smoothing"] == 0.0
    assert get("simpo").params["gamma"] == 0.5
    assert get("discopop").params["discopop_tau"] == 0.05


def test_invalid_settings_raise():
    policy, ref = t(POLICY), t(REF)
    with pytest.raises(ValueError, match="label_smoothing"):
        get("robust_dpo")(policy, ref, label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        get("dpo")(policy, ref, label_smoothing=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        get("exo")(policy, ref, label_smoothing=0.0)
    for name in ("r_dpo", "simpo", "orpo", "ln_dpo"):
        with pytest.raises(ValueError, match="lengths"):
            get(name)(policy, ref)
    with pytest.raises(ValueError, match="lengths"):
        get("ipo")(policy, ref, length_normalize=True)
    with pytest.raises(ValueError, match="divergence"):
        get("f_dpo")(policy, ref, divergence="hellinger")
    with pytest.raises(ValueError, match="either"):
        get("soft_dpo")(policy, ref, preference_prob=torch.tensor([0.5]), grades=t([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="K = 2"):
        get("soft_dpo")(t([[-1.0, -2.0, -3.0]]), None, preference_prob=torch.tensor([0.5]))
