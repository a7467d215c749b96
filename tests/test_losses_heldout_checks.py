"""Held-out checks of every registered objective against its paper's formula.

Each expected value is computed here by a brute-force, loop-based implementation written from the paper's
formula (float64, one pair / one list / one token at a time), never from rankalign's code or output. The
library must agree in value and in gradient (both through torch.autograd) on random lists with ties and
padding, and stay finite at log-probabilities of magnitude 1e4.
"""

import itertools
import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from rankalign.losses import get, group_advantages, names  # noqa: E402

D = torch.float64
ls = F.logsigmoid


# ------------------------------------------------------------------------------------ brute-force helpers
def strict_pairs(ranks_row):
    """(winner, loser) index pairs of one list: both present (rank >= 0), winner's rank strictly lower."""
    k = len(ranks_row)
    return [(i, j) for i in range(k) for j in range(k) if 0 <= ranks_row[i] < ranks_row[j]]


def rank_groups(ranks_row):
    """Present candidates grouped by rank, best group first."""
    return [[i for i, r in enumerate(ranks_row) if r == g] for g in sorted({r for r in ranks_row if r >= 0})]


def rows(ranks, batch, k):
    return [list(range(k)) if ranks is None else [int(v) for v in ranks[b]] for b in range(batch)]


def pair_mean(per_pair, x, ranks):
    """Mean of per_pair(b, w, l) over the strictly ordered pairs of each list (0 without any)."""
    out = []
    for b, r in enumerate(rows(ranks, *x.shape)):
        terms = [per_pair(b, i, j) for i, j in strict_pairs(r)]
        out.append(torch.stack(terms).mean() if terms else x[b].sum() * 0.0)
    return torch.stack(out)


def pl_nll(s, ranks):
    """Plackett-Luce NLL; a tie-group member is chosen over itself and the strictly lower groups."""
    out = []
    for b, r in enumerate(rows(ranks, *s.shape)):
        groups = rank_groups(r)
        total = s[b].sum() * 0.0
        for g, group in enumerate(groups):
            lower = [i for later in groups[g + 1:] for i in later]
            for i in group if lower else []:
                total = total - (s[b, i] - torch.logsumexp(s[b, [i] + lower], 0))
        out.append(total)
    return torch.stack(out)


def ref_pairwise(name, pol, ref, ranks, lengths, p):
    """From-paper per-pair formulas (rho = log pi - log pi_ref, h = rho_w - rho_l)."""
    beta = p.get("beta", 0.1)
    rho = pol if ref is None else pol - ref
    eps = p.get("label_smoothing", 0.0)
    if name == "dpo":  # Rafailov et al.; cDPO (Mitchell) for eps > 0
        def f(b, i, j):
            return -(1 - eps) * ls(beta * (rho[b, i] - rho[b, j])) - eps * ls(-beta * (rho[b, i] - rho[b, j]))
    elif name == "robust_dpo":  # Chowdhury et al. 2024, Eq. for the de-biased loss
        def f(b, i, j):
            return ((1 - eps) * -ls(beta * (rho[b, i] - rho[b, j]))
                    - eps * -ls(-beta * (rho[b, i] - rho[b, j]))) / (1 - 2 * eps)
    elif name == "ipo":  # Azar et al., Eq. 17: (h - 1/(2 tau))^2
        def f(b, i, j):
            return (rho[b, i] - rho[b, j] - 1 / (2 * beta)) ** 2
    elif name == "hinge":  # SLiC / RSO normalised hinge
        def f(b, i, j):
            return torch.relu(1 - beta * (rho[b, i] - rho[b, j]))
    elif name == "simpo":  # Meng et al., Eq. 6
        gamma = p["gamma"]
        def f(b, i, j):
            return -ls(beta * pol[b, i] / lengths[b, i] - beta * pol[b, j] / lengths[b, j] - gamma)
    elif name == "cpo":  # Xu et al.: DPO with uniform reference + NLL of the winner
        def f(b, i, j):
            return -ls(beta * (pol[b, i] - pol[b, j])) - p["alpha"] * pol[b, i]
    elif name == "orpo":  # Hong et al., Eqs. 6-7, odds = P / (1 - P), P = exp(mean token log-prob)
        def log_odds(m):
            return m - torch.log(-torch.expm1(m))
        def f(b, i, j):
            return (-pol[b, i] / lengths[b, i]
                    - beta * ls(log_odds(pol[b, i] / lengths[b, i]) - log_odds(pol[b, j] / lengths[b, j])))
    elif name == "ln_dpo":
        def f(b, i, j):
            return -ls(beta * (rho[b, i] / lengths[b, i] - rho[b, j] / lengths[b, j]))
    elif name == "exo":  # Ji et al.: KL(q || p), q = softmax(beta rho), p = (1 - eps, eps)
        eps = p.get("label_smoothing", 1e-3)
        def f(b, i, j):
            q = torch.sigmoid(beta * (rho[b, i] - rho[b, j]))
            return q * (torch.log(q) - math.log(1 - eps)) + (1 - q) * (torch.log(1 - q) - math.log(eps))
    elif name == "nca":  # Chen et al., K = 2, hard label
        def f(b, i, j):
            return -ls(beta * rho[b, i]) - 0.5 * ls(-beta * rho[b, i]) - 0.5 * ls(-beta * rho[b, j])
    elif name == "apo_zero":
        def f(b, i, j):
            return 1 - torch.sigmoid(beta * rho[b, i]) + torch.sigmoid(beta * rho[b, j])
    elif name == "apo_down":
        def f(b, i, j):
            return torch.sigmoid(beta * rho[b, i]) + 1 - torch.sigmoid(beta * (rho[b, i] - rho[b, j]))
    elif name == "sppo_hard":  # P = 1 / 0, eta = 1 / beta
        def f(b, i, j):
            return (rho[b, i] - 0.5 / beta) ** 2 + (rho[b, j] + 0.5 / beta) ** 2
    elif name == "discopop":  # Lu et al., Eq. 5
        tau = p.get("discopop_tau", 0.05)
        def f(b, i, j):
            x = beta * (rho[b, i] - rho[b, j])
            gate = torch.sigmoid(x / tau)
            return (1 - gate) * -ls(x) + gate * torch.exp(-x)
    elif name == "f_dpo":  # Wang et al.: implicit reward beta f'(pi / pi_ref)
        score = {"reverse_kl": lambda u: torch.log(u) + 1, "forward_kl": lambda u: -1 / u,
                 "js": lambda u: torch.log(2 * u / (1 + u)),
                 "alpha": lambda u: (1 - u ** -p["alpha"]) / p["alpha"]}[p["divergence"]]
        def f(b, i, j):
            return -ls(beta * (score(torch.exp(rho[b, i])) - score(torch.exp(rho[b, j]))))
    elif name == "bco_pair":  # Jung et al.: chosen desirable, rejected undesirable, shift delta
        delta = p["delta"]
        def f(b, i, j):
            return -ls(beta * rho[b, i] - delta) - ls(-(beta * rho[b, j] - delta))
    else:
        raise AssertionError(name)
    return pair_mean(f, pol, ranks)


PAIRWISE_CASES = [
    ("dpo", {"beta": 0.1}), ("dpo", {"beta": 0.5, "label_smoothing": 0.2}),
    ("robust_dpo", {"beta": 0.3, "label_smoothing": 0.2}), ("ipo", {"beta": 0.25}), ("hinge", {"beta": 0.2}),
    ("simpo", {"beta": 2.0, "gamma": 0.7}), ("cpo", {"beta": 0.1, "alpha": 0.5}), ("orpo", {"beta": 0.3}),
    ("ln_dpo", {"beta": 5.0}), ("exo", {"beta": 0.2}), ("nca", {"beta": 0.2}), ("apo_zero", {"beta": 0.2}),
    ("apo_down", {"beta": 0.2}), ("sppo_hard", {"beta": 0.4}), ("discopop", {"beta": 0.05}),
    ("f_dpo", {"beta": 0.3, "divergence": "forward_kl"}), ("f_dpo", {"beta": 0.3, "divergence": "js"}),
    ("f_dpo", {"beta": 0.3, "divergence": "alpha", "alpha": 0.3}), ("bco_pair", {"beta": 0.2, "delta": 0.3}),
]
NO_REFERENCE = {"simpo", "cpo", "orpo"}
WITH_LENGTHS = {"simpo", "orpo", "ln_dpo", "r_dpo", "pro"}


def random_lists(seed, batch, k):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 30, (batch, k), generator=g).to(D)
    pol = -torch.rand(batch, k, generator=g, dtype=D) * 2.0 * lengths  # mean token log-prob in (-2, 0)
    ref = pol + torch.randn(batch, k, generator=g, dtype=D) * 3.0
    ranks = torch.randint(0, max(1, k - 1), (batch, k), generator=g)  # ties when k > 2
    if k > 2:
        ranks[torch.rand(batch, k, generator=g) < 0.25] = -1  # padding
    return pol, ref, lengths, ranks


def value_and_grad(fn, pol, ref):
    p = pol.clone().requires_grad_(True)
    r = None if ref is None else ref.clone().requires_grad_(True)
    out = fn(p, r)
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=D)
    grads = torch.autograd.grad((out * weights).sum(), [p] + ([r] if r is not None else []), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g in grads]
    return out.detach(), grads


def assert_agree(lib_fn, ref_fn, pol, ref, tol=1e-9):
    got, got_grads = value_and_grad(lib_fn, pol, ref)
    want, want_grads = value_and_grad(ref_fn, pol, ref)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("name,params", PAIRWISE_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("with_ranks", [False, True])
def test_pairwise_against_paper(name, params, k, with_ranks):
    pol, ref, lengths, ranks = random_lists(10 * k + with_ranks, 4, k)
    ranks = ranks if with_ranks else None
    ref = None if name in NO_REFERENCE else ref
    if name == "f_dpo":
        ref = pol + (ref - pol) / 3  # keep exp(-rho) of the forward-KL score moderate for a tight comparison
    extra = {"lengths": lengths} if name in WITH_LENGTHS else {}
    assert_agree(lambda p, r: get(name)(p, r, ranks=ranks, **extra, **params),
                 lambda p, r: ref_pairwise(name, p, r, ranks, lengths, params), pol, ref)


# ------------------------------------------------------------------------------------------------ listwise
def ref_lipo(pol, ref, ranks, grades, beta):
    """LiPO-lambda (Liu et al. 2024): -sum_{psi_i > psi_j} Delta_ij log sigma(s_i - s_j), s = beta rho,
    Delta_ij = |2^g_i - 2^g_j| |1/log2(1 + tau_i) - 1/log2(1 + tau_j)|, tau = position by s (descending)."""
    s = beta * (pol - ref)
    out = []
    for b, r in enumerate(rows(ranks, *pol.shape)):
        present = [i for i in range(len(r)) if r[i] >= 0]
        order = sorted(present, key=lambda i: (-float(s[b, i].detach()), i))
        position = {i: n + 1 for n, i in enumerate(order)}
        total = s[b].sum() * 0.0
        for i, j in strict_pairs(r):
            gain = abs((2 ** float(grades[b, i]) - 1) - (2 ** float(grades[b, j]) - 1))
            discount = abs(1 / math.log2(1 + position[i]) - 1 / math.log2(1 + position[j]))
            total = total - gain * discount * ls(s[b, i] - s[b, j])
        out.append(total)
    return torch.stack(out)


def ref_pro(pol, ranks, lengths, grades, sft_weight):
    """PRO (Song et al. 2024): peel-off softmax of s = log pi / |y| with T_k^i = 1/(r_k - r_i),
    T_k^k = min_i T_k^i, plus sft_weight * (n - 1)^2 * -log pi(y^1) (the authors' code)."""
    s = pol / lengths
    out = []
    for b, r in enumerate(rows(ranks, *pol.shape)):
        groups = rank_groups(r)
        total = s[b].sum() * 0.0
        for g, group in enumerate(groups):
            lower = [i for later in groups[g + 1:] for i in later]
            for k in group if lower else []:
                inverse_t = [max(float(grades[b, k] - grades[b, i]), 0.0) for i in lower]
                own = max(inverse_t) * s[b, k]
                logits = torch.stack([own] + [t * s[b, i] for t, i in zip(inverse_t, lower)])
                total = total - (own - torch.logsumexp(logits, 0))
        n = sum(1 for v in r if v >= 0)
        best = groups[0]
        total = total + sft_weight * (n - 1) ** 2 * torch.stack([-pol[b, i] for i in best]).mean()
        out.append(total)
    return torch.stack(out)


def ref_listnet(pol, ref, ranks, grades, beta, temperature):
    s = beta * (pol - ref)
    out = []
    for b, r in enumerate(rows(ranks, *pol.shape)):
        present = [i for i in range(len(r)) if r[i] >= 0]
        target = torch.softmax(torch.stack([grades[b, i] for i in present]) / temperature, 0)
        out.append(-(target * torch.log_softmax(s[b, present], 0)).sum())
    return torch.stack(out)


def ref_best_vs_rest(pol, ref, ranks, beta):
    rho = pol - ref
    out = []
    for b, r in enumerate(rows(ranks, *pol.shape)):
        groups = rank_groups(r)
        terms = [-ls(beta * (rho[b, i] - rho[b, j])) for i in groups[0] for later in groups[1:] for j in later]
        out.append(torch.stack(terms).mean() if terms else pol[b].sum() * 0.0)
    return torch.stack(out)


def ref_sppo(pol, ref, ranks, win, beta):
    """SPPO (Wu et al.): mean_i (rho_i - (P_i - 1/2) / beta)^2 over present candidates."""
    rho = pol - ref
    out = []
    for b, r in enumerate(rows(ranks, *pol.shape)):
        present = [i for i in range(len(r)) if r[i] >= 0]
        out.append(torch.stack([(rho[b, i] - (win[b][i] - 0.5) / beta) ** 2 for i in present]).mean())
    return torch.stack(out)


def grades_of(ranks):
    """Grades consistent with ranks (lower rank = higher grade), any present value; 0 at padding."""
    return torch.where(ranks >= 0, (10 - ranks).to(D) / 4, torch.zeros_like(ranks, dtype=D))


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_listwise_against_paper(k):
    pol, ref, lengths, ranks = random_lists(100 + k, 4, k)
    ranks[:, 0] = 0  # at least one present candidate per list (listnet's softmax needs one)
    beta = 0.3
    assert_agree(lambda p, r: get("pl_dpo")(p, r, ranks=ranks, beta=beta),
                 lambda p, r: pl_nll(beta * (p - r), ranks), pol, ref)
    assert_agree(lambda p, r: get("all_pairs_dpo")(p, r, ranks=ranks, beta=beta),
                 lambda p, r: ref_pairwise("dpo", p, r, ranks, lengths, {"beta": beta}), pol, ref)
    assert_agree(lambda p, r: get("best_vs_rest")(p, r, ranks=ranks, beta=beta),
                 lambda p, r: ref_best_vs_rest(p, r, ranks, beta), pol, ref)
    grades = grades_of(ranks)
    assert_agree(lambda p, r: get("lipo_lambda")(p, r, ranks=ranks, grades=grades, beta=beta),
                 lambda p, r: ref_lipo(p, r, ranks, grades, beta), pol, ref)
    # default grades: g = max_rank - rank
    default = torch.where(ranks >= 0, ranks.clamp_min(0).amax(1, keepdim=True) - ranks, 0).to(D)
    assert_agree(lambda p, r: get("lipo_lambda")(p, r, ranks=ranks, beta=beta),
                 lambda p, r: ref_lipo(p, r, ranks, default, beta), pol, ref)
    assert_agree(lambda p, r: get("listnet")(p, r, ranks=ranks, grades=grades, beta=beta, temperature=0.7),
                 lambda p, r: ref_listnet(p, r, ranks, grades, beta, 0.7), pol, ref)
    assert_agree(lambda p, r: get("pro")(p, None, ranks=ranks, lengths=lengths, grades=grades, sft_weight=0.1),
                 lambda p, r: ref_pro(p, ranks, lengths, grades, 0.1), pol, None)
    # SPPO with the paper's win-rate estimate: P_i = (1/n) sum_k P(y_i > y_k), y_i itself included (1/2)
    win = []
    for r in rows(ranks, *pol.shape):
        present = [i for i in range(k) if r[i] >= 0]
        win.append({i: sum(1.0 if r[i] < r[j] else 0.5 if r[i] == r[j] else 0.0 for j in present) / len(present)
                    for i in present})
    win_t = torch.tensor([[w.get(i, 0.5) for i in range(k)] for w in win], dtype=D)
    assert_agree(lambda p, r: get("sppo")(p, r, ranks=ranks, grades=win_t, beta=beta),
                 lambda p, r: ref_sppo(p, r, ranks, win, beta), pol, ref)


# ---------------------------------------------------------------------------------------- unpaired, reward
def test_kto_and_bco_against_paper():
    g = torch.Generator().manual_seed(7)
    pol = -torch.rand(6, generator=g, dtype=D) * 40
    ref = pol + torch.randn(6, generator=g, dtype=D) * 4
    kl_pol = -torch.rand(6, generator=g, dtype=D) * 40
    kl_ref = kl_pol - 1.0 + torch.randn(6, generator=g, dtype=D)
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.3, 0.8], dtype=D)
    beta, lam_d, lam_u = 0.2, 1.3, 0.7
    z0 = max(0.0, float((kl_pol - kl_ref).mean()))  # KTO: z0 = max(0, mean log-ratio of mismatched pairs)

    def kto_ref(p, r):  # loss = lambda_y - v(x, y)
        out = []
        for b in range(6):
            v_d = lam_d * torch.sigmoid(beta * (p[b] - r[b] - z0))
            v_u = lam_u * torch.sigmoid(beta * (z0 - (p[b] - r[b])))
            out.append(labels[b] * (lam_d - v_d) + (1 - labels[b]) * (lam_u - v_u))
        return torch.stack(out)

    assert_agree(lambda p, r: get("kto")(p, r, labels=labels, beta=beta, desirable_weight=lam_d,
                                         undesirable_weight=lam_u, kl_policy_logps=kl_pol, kl_ref_logps=kl_ref),
                 kto_ref, pol, ref)
    delta = 0.37

    def bco_ref(p, r):
        reward = beta * (p - r)
        return torch.stack([labels[b] * -ls(reward[b] - delta) + (1 - labels[b]) * -ls(-(reward[b] - delta))
                            for b in range(6)])

    assert_agree(lambda p, r: get("bco")(p, r, labels=labels, beta=beta, delta=delta), bco_ref, pol, ref)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_reward_objectives_against_formulas(k):
    _, _, _, ranks = random_lists(200 + k, 4, k)
    scores = torch.randn(4, k, generator=torch.Generator().manual_seed(k), dtype=D) * 2
    margin = torch.rand(4, dtype=D)
    assert_agree(lambda s, _: get("bt_reward")(s, ranks=ranks, margin=margin, center_rewards_coefficient=0.01),
                 lambda s, _: pair_mean(lambda b, i, j: -ls(s[b, i] - s[b, j] - margin[b])
                                        + 0.01 * (s[b, i] + s[b, j]) ** 2, s, ranks), scores, None)
    assert_agree(lambda s, _: get("pl_reward")(s, ranks=ranks), lambda s, _: pl_nll(s, ranks), scores, None)
    nu = 0.7

    def davidson(s, _):  # Davidson 1970 with pi = exp(s); ties use P(tie), ordered pairs P(i > j)
        out = []
        for b, r in enumerate(rows(ranks, *s.shape)):
            terms = []
            for i, j in itertools.combinations(range(k), 2):
                if r[i] < 0 or r[j] < 0:
                    continue
                pi, pj = torch.exp(s[b, i]), torch.exp(s[b, j])
                tie = nu * torch.sqrt(pi * pj)
                top = tie if r[i] == r[j] else (pi if r[i] < r[j] else pj)
                terms.append(-torch.log(top / (pi + pj + tie)))
            out.append(torch.stack(terms).mean() if terms else s[b].sum() * 0.0)
        return torch.stack(out)

    assert_agree(lambda s, _: get("davidson_reward")(s, ranks=ranks, nu=nu), davidson, scores, None)


# ------------------------------------------------------------------------------------------ policy gradient
def test_group_advantages_and_grpo_against_paper():
    g = torch.Generator().manual_seed(11)
    rewards = torch.randn(3, 4, generator=g, dtype=D)
    rewards[2] = 1.5  # an all-equal group: no signal
    grpo_adv = torch.zeros(3, 4, dtype=D)
    rloo_adv = torch.zeros(3, 4, dtype=D)
    for b in range(3):
        r = [float(v) for v in rewards[b]]
        mean = sum(r) / 4
        std = math.sqrt(sum((v - mean) ** 2 for v in r) / 3)  # unbiased, as TRL
        for i in range(4):
            grpo_adv[b, i] = 0.0 if std == 0 else (r[i] - mean) / (std + 1e-4)
            rloo_adv[b, i] = r[i] - (sum(r) - r[i]) / 3  # leave-one-out baseline
    torch.testing.assert_close(group_advantages(rewards).double(), grpo_adv, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(group_advantages(rewards, kind="rloo").double(), rloo_adv, rtol=1e-6, atol=1e-6)

    tok = -torch.rand(2, 3, 4, generator=g, dtype=D) * 3
    old = tok + torch.randn(2, 3, 4, generator=g, dtype=D) * 0.3
    ref = tok + torch.randn(2, 3, 4, generator=g, dtype=D) * 0.5
    mask = torch.rand(2, 3, 4, generator=g) < 0.8
    mask[..., 0] = True
    adv = torch.randn(2, 3, generator=g, dtype=D)
    eps, beta = 0.2, 0.04

    def grpo_ref(p, r):  # Shao et al., Eq. 3, with the k3 KL estimator
        out = []
        for b in range(2):
            per_response = []
            for i in range(3):
                terms = []
                for t in range(4):
                    if not mask[b, i, t]:
                        continue
                    q = torch.exp(p[b, i, t] - old[b, i, t])
                    surrogate = torch.minimum(q * adv[b, i], torch.clamp(q, 1 - eps, 1 + eps) * adv[b, i])
                    u = torch.exp(r[b, i, t] - p[b, i, t])
                    terms.append(-(surrogate - beta * (u - torch.log(u) - 1)))
                per_response.append(torch.stack(terms).mean())
            out.append(torch.stack(per_response).mean())
        return torch.stack(out)

    assert_agree(lambda p, r: get("grpo")(p, r, advantages=adv, token_mask=mask, old_token_logps=old,
                                          clip_epsilon=eps, beta=beta), grpo_ref, tok, ref)


# ------------------------------------------------------------------------------------------- special cases
def test_special_cases_that_must_agree():
    pol, ref, _, _ = random_lists(300, 5, 2)
    for beta in (0.1, 0.6):
        dpo = get("dpo")(pol, ref, beta=beta)
        torch.testing.assert_close(get("pl_dpo")(pol, ref, beta=beta), dpo)  # PL at K = 2 is BT
        torch.testing.assert_close(get("dpo")(pol, ref, beta=beta, label_smoothing=0.0), dpo)
        torch.testing.assert_close(get("robust_dpo")(pol, ref, beta=beta, label_smoothing=0.0), dpo)
        # LiPO-lambda at K = 2, labels (1, 0): Delta = (2^1 - 1) * (1/log2(2) - 1/log2(3)) times DPO
        lipo = get("lipo_lambda")(pol, ref, grades=torch.tensor([[1.0, 0.0]] * 5, dtype=D), beta=beta)
        torch.testing.assert_close(lipo, (1 - 1 / math.log2(3)) * dpo)
    # IPO's minimiser is h = 1 / (2 beta): zero loss and zero gradient there
    for beta in (0.1, 0.3):
        p = torch.tensor([[1 / (2 * beta), 0.0]], dtype=D, requires_grad=True)
        loss = get("ipo")(p, torch.zeros(1, 2, dtype=D), beta=beta)
        (grad,) = torch.autograd.grad(loss.sum(), p)
        assert loss.item() == 0.0 and grad.abs().max().item() == 0.0


def test_orpo_log_odds_near_probability_one():
    # mean token log-prob m = -1e-9: log odds = m - log(1 - e^m) ~ -log(1e-9) = 20.72; a naive
    # log(1 - exp(m)) loses most digits there. Rejected m = -2 (log odds = -2 - log(1 - e^-2)).
    m_w, m_l = -1e-9, -2.0
    odds_w = m_w - math.log(-math.expm1(m_w))
    odds_l = m_l - math.log1p(-math.exp(m_l))
    expected = -m_w - 0.5 * -math.log1p(math.exp(-(odds_w - odds_l)))
    got = get("orpo")(torch.tensor([[2 * m_w, 3 * m_l]], dtype=D), lengths=torch.tensor([[2.0, 3.0]], dtype=D),
                      beta=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_extreme_log_probs_stay_finite(dtype):
    g = torch.Generator().manual_seed(5)
    pol = -torch.rand(3, 4, generator=g, dtype=D) * 1e4
    ref = -torch.rand(3, 4, generator=g, dtype=D) * 1e4
    pol[0, 0], ref[0, 0], pol[0, 3], ref[0, 3] = -1e4, 0.0, 0.0, -1e4  # |rho| = 1e4 both ways
    lengths = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 3, dtype=D)
    ranks = torch.tensor([[0, 1, 1, 2], [2, 0, -1, 1], [0, 1, 2, 3]])
    for name in names("pairwise") + names("listwise") + names("reward"):
        objective = get(name)
        p = pol.to(dtype).requires_grad_(True)
        extra = {"lengths": lengths.to(dtype)} if name in WITH_LENGTHS else {}
        if name in ("bce_reward", "rating_regression"):
            extra["grades"] = torch.full((3, 4), 0.5, dtype=dtype)
        out = objective(p, ranks=ranks, **extra) if objective.family == "reward" else \
            objective(p, ref.to(dtype), ranks=ranks, **extra)
        (grad,) = torch.autograd.grad(out.sum(), p)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all(), name
