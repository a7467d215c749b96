"""R-DPO (Park et al., arXiv:2403.19159) and DPO-Positive (Pal et al., arXiv:2402.13228).

Every expected value is computed here, from the papers' formulas, by loop implementations (one list and
one strictly ordered pair at a time, float64) that never call rankalign's code:

* R-DPO: loss = -log sigma(beta (rho_w - rho_l) + alpha (|y_w| - |y_l|)), the Bradley-Terry likelihood under
  the length-penalised reward r = beta rho + alpha |y| (optimum of max E[r - alpha |y|] - beta KL);
* DPOP: loss = -log sigma(beta (rho_w - rho_l - lambda max(0, log pi_ref(y_w) - log pi(y_w)))).

Lists of K > 2 candidates with ties and padding: the mean over strictly ordered pairs (0 without any).
"""

from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from rankalign.errors import UsageError  # noqa: E402
from rankalign.losses import get  # noqa: E402

D = torch.float64


# ------------------------------------------------------------------------------ loop implementations
def strict_pairs(ranks_row):
    return [(i, j) for i in range(len(ranks_row)) for j in range(len(ranks_row))
            if 0 <= ranks_row[i] < ranks_row[j]]


def rows(ranks, batch, k):
    return [list(range(k)) if ranks is None else [int(v) for v in ranks[b]] for b in range(batch)]


def loop_mean(pair_loss, pol, ranks):
    out = []
    for b, r in enumerate(rows(ranks, *pol.shape)):
        terms = [pair_loss(b, win, lose) for win, lose in strict_pairs(r)]
        out.append(sum(terms) / len(terms) if terms else pol[b].sum() * 0.0)
    return torch.stack(out)


def loop_r_dpo(pol, ref, lengths, ranks, beta, alpha, eps=0.0):
    def pair_loss(b, win, lose):
        rho_w = pol[b, win] - ref[b, win]
        rho_l = pol[b, lose] - ref[b, lose]
        logit = beta * rho_w - beta * rho_l + (alpha * lengths[b, win] - alpha * lengths[b, lose])
        return -(1 - eps) * F.logsigmoid(logit) - eps * F.logsigmoid(-logit)
    return loop_mean(pair_loss, pol, ranks)


def loop_dpop(pol, ref, ranks, beta, lam):
    def pair_loss(b, win, lose):
        ratio_w = pol[b, win] - ref[b, win]
        ratio_l = pol[b, lose] - ref[b, lose]
        penalty = torch.clamp(ref[b, win] - pol[b, win], min=0.0)  # max(0, log pi_ref(y_w)/pi(y_w))
        return -F.logsigmoid(beta * (ratio_w - ratio_l - lam * penalty))
    return loop_mean(pair_loss, pol, ranks)


def random_lists(seed, batch, k, ties=True):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 40, (batch, k), generator=g).to(D)
    pol = -torch.rand(batch, k, generator=g, dtype=D) * 2.0 * lengths
    ref = pol + torch.randn(batch, k, generator=g, dtype=D) * 4.0  # rho of both signs
    ranks = None
    if ties and k > 2:
        ranks = torch.randint(0, k - 1, (batch, k), generator=g)
        ranks[torch.rand(batch, k, generator=g) < 0.2] = -1
    return pol, ref, lengths, ranks


def value_and_grads(fn, pol, ref):
    p = pol.clone().requires_grad_(True)
    r = ref.clone().requires_grad_(True)
    out = fn(p, r)
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=D)
    gp, gr = torch.autograd.grad((out * weights).sum(), [p, r])
    return out.detach(), gp, gr


def assert_same(fn_a, fn_b, pol, ref, tol=1e-10):
    a, ga_p, ga_r = value_and_grads(fn_a, pol, ref)
    b, gb_p, gb_r = value_and_grads(fn_b, pol, ref)
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    torch.testing.assert_close(ga_p, gb_p, rtol=tol, atol=tol)
    torch.testing.assert_close(ga_r, gb_r, rtol=tol, atol=tol)


# --------------------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("params", [dict(beta=0.1, alpha=0.05), dict(beta=0.5, alpha=0.3),
                                    dict(beta=0.2, alpha=0.02, label_smoothing=0.1)])
def test_r_dpo_matches_the_paper_formula(k, params):
    pol, ref, lengths, ranks = random_lists(k, 6, k)
    eps = params.get("label_smoothing", 0.0)
    assert_same(lambda p, r: get("r_dpo")(p, r, ranks=ranks, lengths=lengths, **params),
                lambda p, r: loop_r_dpo(p, r, lengths, ranks, params["beta"], params["alpha"], eps), pol, ref)


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("params", [dict(beta=0.1, dpop_lambda=50.0), dict(beta=0.5, dpop_lambda=5.0)])
def test_dpop_matches_the_paper_formula(k, params):
    pol, ref, _, ranks = random_lists(100 + k, 6, k)
    assert_same(lambda p, r: get("dpop")(p, r, ranks=ranks, **params),
                lambda p, r: loop_dpop(p, r, ranks, params["beta"], params["dpop_lambda"]), pol, ref)


def test_hand_values():
    # ell = (-1, -3), ell_ref = (-2, -2.5): rho = (1, -0.5), h = 1.5; lengths (4, 2)
    pol, ref, lengths = torch.tensor([[-1.0, -3.0]], dtype=D), torch.tensor([[-2.0, -2.5]], dtype=D), \
        torch.tensor([[4.0, 2.0]], dtype=D)
    # R-DPO: 0.1 * 1.5 + 0.05 * (4 - 2) = 0.25
    assert get("r_dpo")(pol, ref, lengths=lengths, beta=0.1, alpha=0.05).item() == \
        pytest.approx(math.log1p(math.exp(-0.25)), rel=1e-13)
    # the winner is shorter now: 0.15 + 0.05 * (2 - 4) = 0.05
    assert get("r_dpo")(pol, ref, lengths=lengths.flip(1), beta=0.1, alpha=0.05).item() == \
        pytest.approx(math.log1p(math.exp(-0.05)), rel=1e-13)
    # DPOP, rho_w = 1 > 0: no penalty, DPO's -log sigma(0.15)
    assert get("dpop")(pol, ref, beta=0.1, dpop_lambda=50.0).item() == \
        pytest.approx(math.log1p(math.exp(-0.15)), rel=1e-13)
    # DPOP with the reference above the policy on y_w: ref_w = 0 -> rho_w = -1, h = -1 + 0.5 = -0.5,
    # penalty 1: logit 0.1 * (-0.5 - 5 * 1) = -0.55
    ref_up = torch.tensor([[0.0, -2.5]], dtype=D)
    assert get("dpop")(pol, ref_up, beta=0.1, dpop_lambda=5.0).item() == \
        pytest.approx(math.log1p(math.exp(0.55)), rel=1e-13)


# ------------------------------------------------------------------------------------------ special cases
@pytest.mark.parametrize("k", [2, 4])
def test_r_dpo_with_alpha_zero_is_dpo(k):
    pol, ref, lengths, ranks = random_lists(7 + k, 5, k)
    assert_same(lambda p, r: get("r_dpo")(p, r, ranks=ranks, lengths=lengths, beta=0.3, alpha=0.0),
                lambda p, r: get("dpo")(p, r, ranks=ranks, beta=0.3), pol, ref, tol=1e-13)
    assert_same(lambda p, r: get("r_dpo")(p, r, ranks=ranks, lengths=lengths, beta=0.3, alpha=0.0,
                                          label_smoothing=0.2),
                lambda p, r: get("dpo")(p, r, ranks=ranks, beta=0.3, label_smoothing=0.2), pol, ref, tol=1e-13)


def test_r_dpo_with_equal_lengths_is_dpo():
    pol, ref, _, ranks = random_lists(3, 5, 4)
    same = torch.full((5, 4), 17.0, dtype=D)
    assert_same(lambda p, r: get("r_dpo")(p, r, ranks=ranks, lengths=same, beta=0.2, alpha=0.7),
                lambda p, r: get("dpo")(p, r, ranks=ranks, beta=0.2), pol, ref, tol=1e-13)


@pytest.mark.parametrize("k", [2, 4])
def test_dpop_with_lambda_zero_is_dpo(k):
    pol, ref, _, ranks = random_lists(11 + k, 5, k)
    assert_same(lambda p, r: get("dpop")(p, r, ranks=ranks, beta=0.3, dpop_lambda=0.0),
                lambda p, r: get("dpo")(p, r, ranks=ranks, beta=0.3), pol, ref, tol=1e-13)


def test_dpop_penalty_is_zero_while_the_policy_keeps_the_preferred_response_above_the_reference():
    # rho_w > 0 in every row: value and both gradients are DPO's, whatever lambda
    g = torch.Generator().manual_seed(0)
    ref = -torch.rand(6, 2, generator=g, dtype=D) * 30
    pol = ref + torch.stack([torch.rand(6, generator=g, dtype=D) * 5 + 0.1,
                             torch.randn(6, generator=g, dtype=D) * 5], 1)
    assert bool((pol[:, 0] > ref[:, 0]).all())
    assert_same(lambda p, r: get("dpop")(p, r, beta=0.2, dpop_lambda=50.0),
                lambda p, r: get("dpo")(p, r, beta=0.2), pol, ref, tol=1e-13)


def test_dpop_penalty_is_active_once_the_preferred_response_drops_below_the_reference():
    beta, lam = 0.2, 50.0
    g = torch.Generator().manual_seed(1)
    ref = -torch.rand(6, 2, generator=g, dtype=D) * 30
    drop = torch.rand(6, generator=g, dtype=D) * 3 + 0.1  # rho_w = -drop < 0
    pol = ref + torch.stack([-drop, torch.randn(6, generator=g, dtype=D) * 5], 1)
    dpop_value, dpop_gp, _ = value_and_grads(lambda p, r: get("dpop")(p, r, beta=beta, dpop_lambda=lam), pol, ref)
    dpo_value, dpo_gp, _ = value_and_grads(lambda p, r: get("dpo")(p, r, beta=beta), pol, ref)
    assert bool((dpop_value > dpo_value).all())
    # d loss / d log pi(y_w) = -beta (1 + lambda) sigma(-m), m = beta (h - lambda drop), by hand
    h = (pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1])
    m = beta * (h - lam * drop)
    weights = torch.linspace(0.5, 1.5, 6, dtype=D)
    expected = -beta * (1 + lam) * torch.sigmoid(-m) * weights
    torch.testing.assert_close(dpop_gp[:, 0], expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(dpop_gp[:, 1], beta * torch.sigmoid(-m) * weights, rtol=1e-12, atol=1e-14)
    assert bool((dpop_gp[:, 0] < dpo_gp[:, 0]).all())  # a stronger push up on the preferred response


def test_r_dpo_does_not_learn_a_preference_explained_by_length_alone():
    # Population check of the sign. Two responses with |y_a| - |y_b| = 10 tokens, labelled a > b with
    # probability p = sigma(alpha * 10) (a preference that is pure length bias under the paper's reward
    # model). R-DPO's expected loss p L(a > b) + (1 - p) L(b > a) is minimised at h = rho_a - rho_b = 0:
    # the policy does not move towards the longer answer. DPO's minimiser is beta h* = alpha * 10.
    alpha, beta, gap = 0.05, 0.1, 10.0
    p = 1.0 / (1.0 + math.exp(-alpha * gap))
    lengths = torch.tensor([[20.0 + gap, 20.0]], dtype=D)

    def expected_loss(name, h):
        pol = torch.stack([h, torch.zeros_like(h)]).reshape(1, 2)
        zeros = torch.zeros(1, 2, dtype=D)
        kwargs = dict(beta=beta, alpha=alpha, lengths=lengths) if name == "r_dpo" else dict(beta=beta)
        a_wins = get(name)(pol, zeros, **kwargs)
        b_wins = get(name)(pol, zeros, ranks=torch.tensor([[1, 0]]), **kwargs)
        return (p * a_wins + (1 - p) * b_wins).squeeze()

    def slope(name, value):
        h = torch.tensor(value, dtype=D, requires_grad=True)
        (grad,) = torch.autograd.grad(expected_loss(name, h), h)
        return grad.item()

    assert slope("r_dpo", 0.0) == pytest.approx(0.0, abs=1e-15)
    assert slope("r_dpo", -1.0) < 0 < slope("r_dpo", 1.0)
    h_dpo = alpha * gap / beta
    assert slope("dpo", h_dpo) == pytest.approx(0.0, abs=1e-15)
    assert slope("dpo", 0.0) < 0  # DPO keeps pushing towards the longer response


# ------------------------------------------------------------------------------- extremes, lists, errors
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["r_dpo", "dpop"])
def test_finite_at_log_probs_of_1e4(name, dtype):
    pol = torch.tensor([[-1.0, -1e4, -5.0], [-1e4, -1.0, 0.0], [0.0, -1e4, -1e4]], dtype=dtype, requires_grad=True)
    ref = torch.tensor([[-1e4, -1.0, 0.0], [0.0, -1e4, -1e4], [-1e4, 0.0, -3.0]], dtype=dtype, requires_grad=True)
    lengths = torch.tensor([[1.0, 4000.0, 2.0], [3000.0, 1.0, 1.0], [5.0, 5.0, 0.0]], dtype=dtype)
    for ranks in (None, torch.tensor([[0, 1, 1], [1, 0, -1], [2, 1, 0]])):
        kwargs = dict(lengths=lengths, alpha=1.0) if name == "r_dpo" else dict(dpop_lambda=50.0)
        loss = get(name)(pol, ref, ranks=ranks, **kwargs)
        gp, gr = torch.autograd.grad(loss.sum(), [pol, ref])
        assert torch.isfinite(loss).all() and torch.isfinite(gp).all() and torch.isfinite(gr).all()
        assert bool((loss >= 0).all())


@pytest.mark.parametrize("name", ["r_dpo", "dpop"])
def test_k3_list_with_a_tie_is_the_mean_over_strictly_ordered_pairs(name):
    # ranks (0, 1, 1): candidates 1 and 2 tie; the strictly ordered pairs are 0 > 1 and 0 > 2
    pol = torch.tensor([[-4.0, -6.0, -3.0], [-2.0, -9.0, -7.0]], dtype=D)
    ref = torch.tensor([[-5.0, -5.5, -2.0], [-1.0, -8.0, -9.5]], dtype=D)
    lengths = torch.tensor([[6.0, 9.0, 3.0], [2.0, 12.0, 7.0]], dtype=D)
    ranks = torch.tensor([[0, 1, 1], [0, 1, 1]])
    kwargs = dict(lengths=lengths, beta=0.2, alpha=0.1) if name == "r_dpo" else dict(beta=0.2, dpop_lambda=5.0)
    whole = get(name)(pol, ref, ranks=ranks, **kwargs)
    pairs = []
    for cols in ([0, 1], [0, 2]):
        pair_kwargs = dict(kwargs, lengths=lengths[:, cols]) if name == "r_dpo" else kwargs
        pairs.append(get(name)(pol[:, cols], ref[:, cols], **pair_kwargs))
    torch.testing.assert_close(whole, (pairs[0] + pairs[1]) / 2, rtol=1e-14, atol=1e-14)
    # all tied: no pair, loss 0 and zero gradient
    p = pol.clone().requires_grad_(True)
    tied = get(name)(p, ref, ranks=torch.zeros(2, 3, dtype=torch.long), **kwargs)
    assert tied.tolist() == [0.0, 0.0]
    (grad,) = torch.autograd.grad(tied.sum(), p)
    assert (grad == 0).all()


def test_r_dpo_needs_lengths_and_ranges_are_checked():
    pol, ref = torch.tensor([[-1.0, -2.0]], dtype=D), torch.tensor([[-1.5, -1.5]], dtype=D)
    with pytest.raises(ValueError, match="r_dpo needs `lengths`"):
        get("r_dpo")(pol, ref)
    with pytest.raises(ValueError, match="lengths has shape"):
        get("r_dpo")(pol, ref, lengths=torch.ones(1, 3))
    with pytest.raises(UsageError, match="r_dpo: alpha must be >= 0"):
        get("r_dpo")(pol, ref, lengths=torch.ones(1, 2), alpha=-0.1)
    with pytest.raises(UsageError, match="dpop: dpop_lambda must be >= 0"):
        get("dpop")(pol, ref, dpop_lambda=-1.0)
    with pytest.raises(UsageError, match="did you mean 'dpop_lambda'"):
        get("dpop").check_params({"dpop_lamda": 5.0})


def test_registry_entries():
    r_dpo, dpop = get("r_dpo"), get("dpop")
    assert r_dpo.family == dpop.family == "pairwise"
    assert not r_dpo.reference_free and not dpop.reference_free
    assert r_dpo.params == {"beta": 0.1, "alpha": 0.05, "label_smoothing": 0.0}
    assert dpop.params == {"beta": 0.1, "dpop_lambda": 50.0}
    assert "lengths" in r_dpo.inputs and "arXiv:2403.19159" in r_dpo.paper and "arXiv:2402.13228" in dpop.paper
    assert set(r_dpo.settable()) == {"beta", "alpha", "label_smoothing"}
    assert set(dpop.settable()) == {"beta", "dpop_lambda"}


# ---------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("objective,loss_params", [("r_dpo", {"beta": 0.5, "alpha": 0.2}),
                                                   ("dpop", {"beta": 0.5, "dpop_lambda": 5.0})])
def test_train_two_steps_logs_a_finite_loss(tmp_path, objective, loss_params):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rankalign.engine import TokenizedList, tiny_causal_lm
    from rankalign.train import TrainConfig
    from rankalign.train.trainer import train_preference

    vocab = 48
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    lists = [TokenizedList(prompt_ids=ids(4), response_ids=[ids(2 + i % 3) + [2], ids(5 - i % 3) + [2]],
                           ranks=[0, 1], index=i) for i in range(4)]
    config = TrainConfig(objective=objective, batch_size=4, max_steps=2, lr=1e-2, output_dir=str(tmp_path / "run"),
                         report_to=[], progress=False, loss_params=loss_params, seed=0)
    result = train_preference(tiny_causal_lm(vocab, hidden_size=32, layers=1, heads=2, seed=0), None, lists, config)
    losses = [row["loss"] for row in result.history if "loss" in row]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    # step 1 runs with policy = reference (every rho = 0): R-DPO is then the mean of -log sigma(alpha
    # (|y_w| - |y_l|)) over the lists, with the trainer's token counts; DPOP (no penalty at rho = 0) is log 2
    if objective == "r_dpo":
        gaps = [len(t.response_ids[0]) - len(t.response_ids[1]) for t in lists]
        expected = sum(math.log1p(math.exp(-loss_params["alpha"] * gap)) for gap in gaps) / len(gaps)
    else:
        expected = math.log(2.0)
    assert losses[0] == pytest.approx(expected, abs=1e-5)
