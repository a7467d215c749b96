"""Listwise objectives: hand-derived values, two-item reductions, invariances, gradients, tabular optima."""

import itertools
import math

import pytest

torch = pytest.importorskip("torch")

from rankalign.data.records import RankedList  # noqa: E402
from rankalign.losses import get  # noqa: E402
from rankalign.losses._common import ranks_from_grades  # noqa: E402
from rankalign.losses.listwise import (  # noqa: E402
    all_pairs_dpo,
    best_vs_rest,
    grades_from_ranks,
    lipo_lambda,
    listnet,
    pl_dpo,
    pro,
)

LISTWISE = ["pl_dpo", "pro", "lipo_lambda", "all_pairs_dpo", "listnet", "best_vs_rest"]


def nll_sigmoid(x):  # -log sigma(x), by hand
    return math.log1p(math.exp(-x)) if x > 0 else -x + math.log1p(math.exp(x))


def log_sum_exp(*xs):
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def call(name, policy, ref, ranks=None, lengths=None, **params):
    """Call a listwise objective; PRO needs lengths, so give it ones unless lengths are passed."""
    if name == "pro" and lengths is None:
        lengths = torch.ones_like(policy)
    return get(name)(policy, ref, ranks=ranks, lengths=lengths, **params)


# --------------------------------------------------------------------------------------------- values
def test_pl_dpo_three_items_by_hand():
    # rho = policy - ref = (-1 - -1.5, -2 - -2, -3 - -2.5) = (0.5, 0, -0.5); beta = 1
    policy, ref = t([[-1.0, -2.0, -3.0]]), t([[-1.5, -2.0, -2.5]])
    step1 = log_sum_exp(0.5, 0.0, -0.5) - 0.5  # best over all three
    step2 = log_sum_exp(0.0, -0.5) - 0.0  # second over the last
    assert pl_dpo(policy, ref, beta=1.0).item() == pytest.approx(step1 + step2, rel=1e-12)
    # same list given in scrambled columns with explicit ranks
    scrambled = pl_dpo(t([[-3.0, -1.0, -2.0]]), t([[-2.5, -1.5, -2.0]]), ranks=torch.tensor([[2, 0, 1]]), beta=1.0)
    assert scrambled.item() == pytest.approx(step1 + step2, rel=1e-12)


def test_pl_dpo_ties_each_member_over_lower_groups_only():
    # ranks (0, 0, 1): both tied leaders are chosen against the last candidate only, never each other
    policy, ref = t([[-1.0, -2.0, -3.0]]), t([[-1.5, -2.0, -2.5]])
    expected = (log_sum_exp(0.5, -0.5) - 0.5) + (log_sum_exp(0.0, -0.5) - 0.0)
    got = pl_dpo(policy, ref, ranks=torch.tensor([[0, 0, 1]]), beta=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # ranks (0, 1, 1): the last group contributes nothing, the best is chosen over both
    got = pl_dpo(policy, ref, ranks=torch.tensor([[0, 1, 1]]), beta=1.0)
    assert got.item() == pytest.approx(log_sum_exp(0.5, 0.0, -0.5) - 0.5, rel=1e-12)


def test_pl_dpo_is_dpo_at_two_items():
    # h = (-1 - -2) - (-3 - -2.5) = 1.5; beta = 0.1 -> -log sigma(0.15) = 0.62096...
    policy, ref = t([[-1.0, -3.0]]), t([[-2.0, -2.5]])
    expected = math.log1p(math.exp(-0.15))
    assert expected == pytest.approx(0.620957, abs=1e-6)
    assert pl_dpo(policy, ref, beta=0.1).item() == pytest.approx(expected, rel=1e-12)
    dpo = pytest.importorskip("rankalign.losses.pairwise").dpo
    generator = torch.Generator().manual_seed(0)
    policy, ref = torch.randn(16, 2, generator=generator, dtype=torch.float64), torch.randn(16, 2, generator=generator, dtype=torch.float64)
    ranks = torch.randint(0, 2, (16, 1), generator=generator).expand(16, 2).clone()
    ranks[:, 1] = 1 - ranks[:, 0]
    torch.testing.assert_close(pl_dpo(policy, ref, ranks=ranks, beta=0.3), dpo(policy, ref, ranks=ranks, beta=0.3))
    torch.testing.assert_close(all_pairs_dpo(policy, ref, ranks=ranks, beta=0.3), dpo(policy, ref, ranks=ranks, beta=0.3))
    torch.testing.assert_close(best_vs_rest(policy, ref, ranks=ranks, beta=0.3), dpo(policy, ref, ranks=ranks, beta=0.3))


def test_pro_with_reward_gap_temperatures_by_hand():
    # s = policy / length = (-2/2, -6/3, -12/4) = (-1, -2, -3); rewards r = (3, 1, 0)
    # step 1: 1/T_1^2 = 3 - 1 = 2, 1/T_1^3 = 3 - 0 = 3, 1/T_1^1 = max(2, 3) = 3
    #         -> logits (3 * -1, 2 * -2, 3 * -3) = (-3, -4, -9), term = lse(-3, -4, -9) - (-3)
    # step 2: 1/T_2^3 = 1 - 0 = 1 = 1/T_2^2 -> logits (-2, -3), term = lse(-2, -3) - (-2)
    # SFT, mean-token form: -s_best = 1, weighted 0.05
    policy, lengths, grades = t([[-2.0, -6.0, -12.0]]), t([[2.0, 3.0, 4.0]]), t([[3.0, 1.0, 0.0]])
    ranking = (log_sum_exp(-3.0, -4.0, -9.0) + 3.0) + (log_sum_exp(-2.0, -3.0) + 2.0)
    got = pro(policy, lengths=lengths, grades=grades, sft_weight=0.05, sft_form="mean_token")
    assert got.item() == pytest.approx(ranking + 0.05 * 1.0, rel=1e-12)
    # SFT, the authors' form (the default): sft_weight * (n - 1)^2 * (-summed log-prob of the best)
    # = 0.05 * (3 - 1)^2 * 2 = 0.4
    got = pro(policy, lengths=lengths, grades=grades, sft_weight=0.05)
    assert got.item() == pytest.approx(ranking + 0.4, rel=1e-12)
    # without grades every T = 1: plain peel-off softmax on s
    plain = (log_sum_exp(-1.0, -2.0, -3.0) + 1.0) + (log_sum_exp(-2.0, -3.0) + 2.0)
    assert pro(policy, lengths=lengths, sft_weight=0.0).item() == pytest.approx(plain, rel=1e-12)


def test_pro_two_items_is_bradley_terry_on_length_averaged_scores():
    # s = (-3/3, -2/1) = (-1, -2): -log sigma(-1 - -2) = -log sigma(1) = 0.31326...
    policy, lengths = t([[-3.0, -2.0]]), t([[3.0, 1.0]])
    assert pro(policy, lengths=lengths, sft_weight=0.0).item() == pytest.approx(nll_sigmoid(1.0), rel=1e-12)
    # with the mean-token SFT term: + w * (-(-1)) = + w; the authors' form: + w * (2 - 1)^2 * 3
    assert pro(policy, lengths=lengths, sft_weight=0.5, sft_form="mean_token").item() == pytest.approx(
        nll_sigmoid(1.0) + 0.5, rel=1e-12)
    assert pro(policy, lengths=lengths, sft_weight=0.5).item() == pytest.approx(nll_sigmoid(1.0) + 1.5, rel=1e-12)
    # reference given: s = (policy - ref) / length = ((-3 - -1.5) / 3, (-2 - -3) / 1) = (-0.5, 1)
    got = pro(policy, t([[-1.5, -3.0]]), lengths=lengths, sft_weight=0.0)
    assert got.item() == pytest.approx(nll_sigmoid(-1.5), rel=1e-12)


def test_pro_single_candidate_keeps_only_its_sft_term():
    # K = 1: no ranking step; mean-token SFT = -(-3 / 2) * 0.1 = 0.15; the authors' (n - 1)^2 = 0 removes it
    assert pro(t([[-3.0]]), lengths=t([[2.0]]), sft_weight=0.1, sft_form="mean_token").item() == pytest.approx(
        0.15, rel=1e-12)
    assert pro(t([[-3.0]]), lengths=t([[2.0]]), sft_weight=0.1).item() == 0.0


def test_pro_authors_sft_counts_only_present_candidates():
    # padding is not a candidate: n = 3 here, so the factor is (3 - 1)^2 = 4; best is column 1 (rank 0)
    policy, lengths = t([[-4.0, -3.0, -8.0, 0.0]]), t([[2.0, 3.0, 4.0, 1.0]])
    ranks = torch.tensor([[1, 0, 2, -1]])
    s = [-2.0, -1.0, -2.0]  # length-averaged scores of the three present candidates
    ranking = (log_sum_exp(s[1], s[0], s[2]) - s[1]) + (log_sum_exp(s[0], s[2]) - s[0])
    got = pro(policy, lengths=lengths, ranks=ranks, sft_weight=0.1)
    assert got.item() == pytest.approx(ranking + 0.1 * 4 * 3.0, rel=1e-12)


def test_pro_needs_lengths():
    with pytest.raises(ValueError, match="lengths"):
        pro(t([[-1.0, -2.0]]))


def test_lipo_lambda_by_hand_with_model_positions():
    # beta = 1, rho = (0, 0.5, -0.5) with true ranks (0, 1, 2): default grades (2, 1, 0), G = 2^g - 1 = (3, 1, 0)
    # model order by s: candidate 1 (0.5), 0 (0), 2 (-0.5) -> positions tau = (2, 1, 3)
    # 1/D(tau) = 1/log2(1 + tau) = (1/log2 3, 1, 1/2)
    inv_d = [1 / math.log2(3), 1.0, 0.5]
    gains = [3.0, 1.0, 0.0]
    s = [0.0, 0.5, -0.5]
    expected = 0.0
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        delta = abs(gains[i] - gains[j]) * abs(inv_d[i] - inv_d[j])
        expected += delta * nll_sigmoid(s[i] - s[j])
    got = lipo_lambda(t([[0.0, 0.5, -0.5]]), beta=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_lipo_lambda_two_items_is_a_constant_times_dpo():
    # K = 2, default grades (1, 0): G = (1, 0); positions {1, 2} in either order:
    # Delta = |1 - 0| * |1/log2(2) - 1/log2(3)| = 1 - ln 2 / ln 3 = 0.36907...
    constant = 1.0 - math.log(2) / math.log(3)
    assert constant == pytest.approx(0.369070, abs=1e-6)
    generator = torch.Generator().manual_seed(1)
    policy = torch.randn(32, 2, generator=generator, dtype=torch.float64) * 3
    ref = torch.randn(32, 2, generator=generator, dtype=torch.float64)
    h = (policy[:, 0] - ref[:, 0]) - (policy[:, 1] - ref[:, 1])
    dpo_by_hand = -torch.nn.functional.logsigmoid(0.1 * h)
    torch.testing.assert_close(lipo_lambda(policy, ref, beta=0.1), constant * dpo_by_hand)


def test_lipo_lambda_weights_are_not_differentiated():
    # gradient = that of sum Delta_ij * -log sigma(s_i - s_j) with Delta held as constants
    rho = t([[0.0, 0.5, -0.5]]).requires_grad_(True)
    lipo_lambda(rho, beta=1.0).sum().backward()
    inv_d = [1 / math.log2(3), 1.0, 0.5]
    gains = [3.0, 1.0, 0.0]
    by_hand = [0.0, 0.0, 0.0]
    s = [0.0, 0.5, -0.5]
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        delta = abs(gains[i] - gains[j]) * abs(inv_d[i] - inv_d[j])
        slope = delta * (1 - 1 / (1 + math.exp(-(s[i] - s[j]))))  # d/dx of -log sigma(x) is -(1 - sigma(x))
        by_hand[i] -= slope
        by_hand[j] += slope
    assert rho.grad[0].tolist() == pytest.approx(by_hand, rel=1e-12)


def test_lipo_lambda_uses_given_grades():
    # grades (0.9, 0.2): G = (2^0.9 - 1, 2^0.2 - 1); two items -> |1 - 1/log2 3| for the discount
    grades = t([[0.9, 0.2]])
    delta = (2 ** 0.9 - 2 ** 0.2) * (1 - 1 / math.log2(3))
    got = lipo_lambda(t([[-1.0, -2.0]]), t([[-1.0, -1.0]]), grades=grades, beta=0.5)
    # ranks come from grades: candidate 0 wins; h = 0 - (-1) = 1 -> -log sigma(0.5)
    assert got.item() == pytest.approx(delta * nll_sigmoid(0.5), rel=1e-12)


def test_all_pairs_dpo_by_hand_and_with_pair_weights():
    # rho = (0.5, 0, -0.5), beta = 1: pairs (0,1): h = 0.5, (0,2): h = 1, (1,2): h = 0.5
    policy, ref = t([[-1.0, -2.0, -3.0]]), t([[-1.5, -2.0, -2.5]])
    losses = [nll_sigmoid(0.5), nll_sigmoid(1.0), nll_sigmoid(0.5)]
    assert all_pairs_dpo(policy, ref, beta=1.0).item() == pytest.approx(sum(losses) / 3, rel=1e-12)
    weights = torch.zeros(1, 3, 3, dtype=torch.float64)
    weights[0, 0, 1], weights[0, 0, 2], weights[0, 1, 2] = 1.0, 2.0, 3.0
    weights[0, 2, 0] = 100.0  # not an ordered pair of this list: ignored
    expected = (1 * losses[0] + 2 * losses[1] + 3 * losses[2]) / 6
    assert all_pairs_dpo(policy, ref, beta=1.0, pair_weights=weights).item() == pytest.approx(expected, rel=1e-12)
    # ties (0, 0, 1): only pairs (0,2) and (1,2)
    got = all_pairs_dpo(policy, ref, ranks=torch.tensor([[0, 0, 1]]), beta=1.0)
    assert got.item() == pytest.approx((nll_sigmoid(1.0) + nll_sigmoid(0.5)) / 2, rel=1e-12)


def test_best_vs_rest_matches_the_ranked_list_pair_strategy():
    ranks = [0, 1, 0, 2, 1]
    rho = [0.3, -0.2, 0.1, 0.4, -1.0]
    record = RankedList(prompt="p", candidates=["a", "b", "c", "d", "e"], ranks=ranks)
    pairs = record.pair_indices("best_vs_rest", ties=False)
    assert len(pairs) == 6  # best group {0, 2} x lower {1, 3, 4}
    expected = sum(nll_sigmoid(0.5 * (rho[i] - rho[j])) for i, j, _ in pairs) / len(pairs)
    got = best_vs_rest(t([rho]), ranks=torch.tensor([ranks]), beta=0.5)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_listnet_by_hand():
    # grades default from ranks (0, 1, 2): g = (2, 1, 0); p = softmax(g); q = softmax(beta rho), beta = 1
    rho = [0.5, 0.0, -0.5]
    z_p, z_q = log_sum_exp(2.0, 1.0, 0.0), log_sum_exp(*rho)
    p = [math.exp(g - z_p) for g in (2.0, 1.0, 0.0)]
    expected = -sum(pi * (r - z_q) for pi, r in zip(p, rho))
    assert listnet(t([rho]), beta=1.0).item() == pytest.approx(expected, rel=1e-12)
    # temperature 2 on explicit grades (1, 1, 0): ties get equal target probability
    z_p = log_sum_exp(0.5, 0.5, 0.0)
    p = [math.exp(g - z_p) for g in (0.5, 0.5, 0.0)]
    expected = -sum(pi * (r - z_q) for pi, r in zip(p, rho))
    got = listnet(t([rho]), grades=t([[1.0, 1.0, 0.0]]), beta=1.0, temperature=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_grade_and_rank_conversions():
    assert ranks_from_grades(t([[0.2, 0.9, 0.2, float("nan")]])).tolist() == [[1, 0, 1, -1]]
    assert grades_from_ranks(torch.tensor([[0, 1, 1, -1], [2, 0, 1, 3]]), torch.float64).tolist() == \
        [[1.0, 0.0, 0.0, 0.0], [1.0, 3.0, 2.0, 0.0]]


# ------------------------------------------------------------------------------------------ invariances
def random_lists(seed, batch=6, k=5, dtype=torch.float64):
    """Random lists with ties and padding (rows 0/1 strict, others with ties, some padded)."""
    generator = torch.Generator().manual_seed(seed)
    policy = torch.randn(batch, k, generator=generator, dtype=dtype) * 2 - 5
    ref = torch.randn(batch, k, generator=generator, dtype=dtype) * 2 - 5
    ranks = torch.stack([torch.randperm(k, generator=generator) for _ in range(batch)])
    ranks[2:] = torch.randint(0, 3, (batch - 2, k), generator=generator)
    ranks[3, -1] = -1
    ranks[4, -2:] = -1
    lengths = torch.randint(1, 20, (batch, k), generator=generator).to(dtype)
    grades = torch.where(ranks >= 0, (4 - ranks).to(dtype) * 0.7, torch.zeros_like(policy))
    return policy, ref, ranks, lengths, grades


@pytest.mark.parametrize("name", LISTWISE)
@pytest.mark.parametrize("with_grades", [False, True])
def test_permuting_candidates_with_their_ranks_changes_nothing(name, with_grades):
    policy, ref, ranks, lengths, grades = random_lists(2)
    extra = {"grades": grades} if with_grades else {}
    base = call(name, policy, ref, ranks, lengths, **extra)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        perm = torch.randperm(policy.shape[1], generator=generator)
        extra_p = {"grades": grades[:, perm]} if with_grades else {}
        permuted = call(name, policy[:, perm], ref[:, perm], ranks[:, perm], lengths[:, perm], **extra_p)
        torch.testing.assert_close(permuted, base, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", LISTWISE)
def test_padding_never_changes_a_row_and_gets_no_gradient(name):
    policy, ref, ranks, lengths, grades = random_lists(4)
    base = call(name, policy, ref, ranks, lengths, grades=grades)
    batch = policy.shape[0]
    garbage = t([[float("nan"), 1e30, -1e30]]).expand(batch, 3)
    padded_policy = torch.cat([policy, garbage], 1).requires_grad_(True)
    padded_ref = torch.cat([ref, garbage.flip(1)], 1).requires_grad_(True)
    padded_ranks = torch.cat([ranks, torch.full((batch, 3), -1)], 1)
    padded_lengths = torch.cat([lengths, torch.zeros(batch, 3, dtype=lengths.dtype)], 1)
    padded_grades = torch.cat([grades, garbage], 1)
    loss = call(name, padded_policy, padded_ref, padded_ranks, padded_lengths, grades=padded_grades)
    torch.testing.assert_close(loss, base, rtol=1e-12, atol=1e-12)
    loss.sum().backward()
    assert torch.isfinite(padded_policy.grad).all() and torch.isfinite(padded_ref.grad).all()
    assert (padded_policy.grad[:, -3:] == 0).all() and (padded_ref.grad[:, -3:] == 0).all()


@pytest.mark.parametrize("name", LISTWISE)
def test_single_candidate_and_all_tied_lists(name):
    # K = 1, an all-tie list and a fully padded list: nothing to order
    policy = t([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]]).requires_grad_(True)
    ranks = torch.tensor([[0, -1, -1], [1, 1, 1], [-1, -1, -1]])
    loss = call(name, policy, None, ranks, sft_weight=0.0) if name == "pro" else call(name, policy, None, ranks)
    if name == "listnet":
        # cross-entropy with equal targets: -sum_i (1/n) log q_i; K = 1 gives 0
        z = log_sum_exp(-0.1, -0.2, -0.3)
        expected = [0.0, -sum((r - z) / 3 for r in (-0.1, -0.2, -0.3)), 0.0]
        assert loss.tolist() == pytest.approx(expected, rel=1e-12)
    else:
        assert loss.tolist() == [0.0, 0.0, 0.0]
    loss.sum().backward()
    assert torch.isfinite(policy.grad).all()


# ------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", LISTWISE)
def test_gradcheck_ordinary_inputs(name):
    policy, ref, ranks, lengths, grades = random_lists(5, batch=5, k=4)
    policy.requires_grad_(True)
    ref.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, r: call(name, p, r, ranks, lengths, grades=grades), (policy, ref))


@pytest.mark.parametrize("name", LISTWISE)
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_gradients_finite_and_correct_at_extreme_log_ratio_differences(name, scale):
    # log-ratio differences of +-1e4 between neighbours, plus K = 1, all-tie and padded rows
    policy = t([[0.0, -scale, -2 * scale], [0.0, 0.5, -0.5], [3.0, 1.0, 2.0], [0.0, scale, -7.0]])
    ref = torch.zeros_like(policy)
    ranks = torch.tensor([[0, 1, 2], [0, -1, -1], [0, 0, 0], [1, 0, -1]])
    lengths = t([[1.0, 2.0, 3.0]] * 4)
    policy.requires_grad_(True)
    loss = call(name, policy, ref, ranks, lengths)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(policy.grad).all()
    assert torch.autograd.gradcheck(lambda p: call(name, p, ref, ranks, lengths), (policy,))


# --------------------------------------------------------------------------------- tabular statistics
def plackett_luce_probability(theta, order):
    prob, remaining = 1.0, list(order)
    for item in order:
        prob *= math.exp(theta[item]) / sum(math.exp(theta[m]) for m in remaining)
        remaining.remove(item)
    return prob


def minimise(objective, start):
    x = start.clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([x], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        value = objective(x)
        value.backward()
        return value

    optimiser.step(closure)
    return x.detach()


def test_pl_dpo_population_optimum_recovers_plackett_luce_utilities():
    # rankings drawn from PL(theta): the expected PL-DPO loss is minimised at beta * rho = theta + const
    theta = [1.0, 0.2, -0.7]
    orders = list(itertools.permutations(range(3)))
    probs = t([plackett_luce_probability(theta, order) for order in orders])
    assert probs.sum().item() == pytest.approx(1.0, rel=1e-12)
    ranks = torch.tensor([[order.index(c) for c in range(3)] for order in orders])
    beta = 0.5

    def expected_loss(rho):
        return (probs * pl_dpo(rho.expand(len(orders), 3), ranks=ranks, beta=beta)).sum()

    rho = minimise(expected_loss, torch.zeros(1, 3, dtype=torch.float64))
    centred = beta * rho[0] - (beta * rho[0]).mean()
    target = t(theta) - t(theta).mean()
    torch.testing.assert_close(centred, target, rtol=0, atol=1e-6)


def test_listnet_population_optimum_matches_the_grade_distribution():
    # cross-entropy is minimised when softmax(beta rho) = softmax(g / T): beta rho = g / T + const
    grades = t([[2.0, 0.5, 0.0, 1.0]])
    beta, temperature = 0.2, 1.5
    rho = minimise(lambda r: listnet(r, grades=grades, beta=beta, temperature=temperature).sum(),
                   torch.zeros(1, 4, dtype=torch.float64))
    centred = beta * rho[0] - (beta * rho[0]).mean()
    target = grades[0] / temperature - (grades[0] / temperature).mean()
    torch.testing.assert_close(centred, target, rtol=0, atol=1e-6)


def brute_force_plackett_luce(scores, ranks):
    """Each present candidate against itself and every strictly lower present candidate, in plain Python."""
    total = 0.0
    for i, rank_i in enumerate(ranks):
        if rank_i < 0:
            continue
        pool = [scores[i]] + [scores[j] for j, rank_j in enumerate(ranks) if rank_j > rank_i]
        total += log_sum_exp(*pool) - scores[i]
    return total


@pytest.mark.parametrize("layout", ["ties_and_padding", "strict_shuffled", "strict_in_order"])
def test_sorted_plackett_luce_matches_brute_force(layout):
    # the three code paths: ties (group ends by search), strict rankings (shifted suffix), no sort needed
    from rankalign.losses.listwise import plackett_luce_nll

    scores, _, ranks, _, _ = random_lists(7, batch=8, k=6)
    if layout != "ties_and_padding":
        ranks = torch.stack([torch.randperm(6, generator=torch.Generator().manual_seed(i)) for i in range(8)])
    if layout == "strict_in_order":
        ranks = torch.arange(6).expand(8, 6)
    expected = [brute_force_plackett_luce(s, r) for s, r in zip(scores.tolist(), ranks.tolist())]
    fast = plackett_luce_nll(torch.where(ranks >= 0, scores, 0.0), ranks)
    assert fast.tolist() == pytest.approx(expected, rel=1e-12)


def brute_force_pro(policy, lengths, ranks, rewards, sft_weight, sft_form="authors"):
    """PRO in plain Python: step k over itself and the strictly lower candidates, gaps r_k - r_i."""
    s = [p / n for p, n in zip(policy, lengths)]
    total = 0.0
    for k, rank_k in enumerate(ranks):
        if rank_k < 0:
            continue
        below = [i for i, rank_i in enumerate(ranks) if rank_i > rank_k]
        if not below:
            continue
        gaps = {i: max(rewards[k] - rewards[i], 0.0) for i in below}
        own = max(gaps.values()) * s[k]
        total += log_sum_exp(own, *[gaps[i] * s[i] for i in below]) - own
    best = min(r for r in ranks if r >= 0)
    members = [i for i, r in enumerate(ranks) if r == best]
    if sft_form == "mean_token":
        return total + sft_weight * -sum(s[i] for i in members) / len(members)
    n = sum(1 for r in ranks if r >= 0)
    return total + sft_weight * (n - 1) ** 2 * -sum(policy[i] for i in members) / len(members)


def test_pro_with_grades_matches_brute_force_with_ties_and_padding():
    policy, _, ranks, lengths, grades = random_lists(8, batch=8, k=6)
    grades = grades + torch.rand(grades.shape, generator=torch.Generator().manual_seed(9), dtype=grades.dtype)
    for form in ("authors", "mean_token"):
        got = pro(policy, lengths=lengths, ranks=ranks, grades=grades, sft_weight=0.3, sft_form=form)
        expected = [brute_force_pro(*rows, 0.3, form) for rows in zip(policy.tolist(), lengths.tolist(),
                                                                     ranks.tolist(), grades.tolist())]
        assert got.tolist() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", LISTWISE)
def test_float32_extreme_inputs_stay_finite(name):
    policy = torch.tensor([[0.0, -1e4, 1e4, 5.0], [1e4, -1e4, 0.0, 0.0]], requires_grad=True)
    ranks = torch.tensor([[0, 1, 2, -1], [0, 1, 1, -1]])
    loss = call(name, policy, None, ranks, torch.ones(2, 4))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(policy.grad).all()


def test_best_vs_rest_single_best_shortcut_agrees_with_pair_enumeration():
    # rho = (0.5, 0, -0.5), beta = 1, ranks (0, 2, 1): pairs (0 > 1), (0 > 2) -> mean of -log sigma(0.5), -log sigma(1)
    rho = t([[0.5, 0.0, -0.5]])
    single = best_vs_rest(rho, ranks=torch.tensor([[0, 2, 1]]), beta=1.0)
    assert single.item() == pytest.approx((nll_sigmoid(0.5) + nll_sigmoid(1.0)) / 2, rel=1e-12)
    # a batch with a tied best row takes the general path; the single-best rows must not change
    policy, ref, _, _, _ = random_lists(11, batch=6, k=5)
    policy, ref = policy[:4], ref[:4]
    ranks = torch.stack([torch.randperm(5, generator=torch.Generator().manual_seed(i)) for i in range(4)])
    ranks[3, -1] = -1
    shortcut = best_vs_rest(policy, ref, ranks=ranks)
    with_tied_row = best_vs_rest(torch.cat([policy, policy[:1]]), torch.cat([ref, ref[:1]]),
                                 ranks=torch.cat([ranks, torch.tensor([[0, 0, 1, 2, 3]])]))
    torch.testing.assert_close(with_tied_row[:4], shortcut, rtol=1e-12, atol=1e-12)


def test_a_list_without_grades_in_a_graded_batch_gets_the_rank_grades():
    """A training batch that mixes scored and unscored lists carries NaN grades for the unscored ones
    (engine.packing); those lists get g = max_rank - rank, not a NaN loss. Values by hand at K = 2:
    rho = (1, 0), s = beta rho = (0.1, 0), positions (1, 2), so |1/D(1) - 1/D(2)| = 1 - ln 2 / ln 3."""
    from rankalign.engine.packing import pack_lists
    from rankalign.engine.tokenize import TokenizedList

    lists = [TokenizedList(prompt_ids=[1], response_ids=[[5, 2], [6, 2]], ranks=[0, 1], grades=[3.0, 1.0]),
             TokenizedList(prompt_ids=[1], response_ids=[[7, 2], [8, 2]], ranks=[0, 1])]
    batch = pack_lists(lists, layout="duplicated")
    assert torch.isnan(batch.grades[1]).all()
    policy, ref = torch.tensor([[-1.0, -2.0]] * 2), torch.tensor([[-2.0, -2.0]] * 2)
    dpo = math.log1p(math.exp(-0.1))
    discount = 1 - math.log(2) / math.log(3)
    lipo = lipo_lambda(policy, ref, ranks=batch.ranks, grades=batch.grades, beta=0.1)
    assert lipo.tolist() == pytest.approx([(2**3 - 2**1) * discount * dpo, (2**1 - 2**0) * discount * dpo])
    # ListNet: p = softmax(g), q = softmax(s); the unscored list's grades are (1, 0)
    net = get("listnet")(policy, ref, ranks=batch.ranks, grades=batch.grades, beta=0.1)

    def cross(g):
        p = [math.exp(x) / (math.exp(g[0]) + math.exp(g[1])) for x in g]
        log_q = [s - math.log(math.exp(0.1) + 1.0) for s in (0.1, 0.0)]
        return -sum(a * b for a, b in zip(p, log_q))

    assert net.tolist() == pytest.approx([cross((3.0, 1.0)), cross((1.0, 0.0))])


def test_grades_whose_gain_overflows_are_an_error_not_an_infinite_loss():
    """2^200 overflows float32 (max about 2^128): LiPO-lambda names the grade instead of returning inf; in
    float64 it fits. An infinite grade is refused by every objective that reads grades."""
    policy, ref = torch.tensor([[-1.0, -2.0, -3.0]]), torch.full((1, 3), -2.0)
    grades = torch.tensor([[200.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match="grade 200 overflows torch.float32"):
        lipo_lambda(policy, ref, grades=grades)
    assert math.isfinite(lipo_lambda(policy.double(), ref.double(), grades=grades).item())
    for name in ("lipo_lambda", "listnet"):
        with pytest.raises(ValueError, match="grades must be finite"):
            get(name)(policy, ref, ranks=torch.tensor([[0, 1, 2]]), grades=torch.tensor([[math.inf, 1.0, 0.0]]))


def test_pro_list_without_grades_in_a_graded_batch_has_unit_temperatures():
    """PRO (reference-free, lengths 1, no SFT term) at K = 2 on scores s = (-1, -2): the scored list with
    rewards (3, 1) has gap 2, so -log sigma(2 * -1 - 2 * -2) = log(1 + e^-2); the unscored one (NaN grades,
    as engine.packing writes them) has T = 1: -log sigma(-1 - -2) = log(1 + e^-1)."""
    policy = torch.tensor([[-1.0, -2.0], [-1.0, -2.0]])
    grades = torch.tensor([[3.0, 1.0], [math.nan, math.nan]])
    loss = get("pro")(policy, ranks=torch.tensor([[0, 1], [0, 1]]), lengths=torch.ones(2, 2), grades=grades,
                      sft_weight=0.0)
    assert loss.tolist() == pytest.approx([math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0))])
    policy.requires_grad_(True)
    get("pro")(policy, ranks=torch.tensor([[0, 1], [0, 1]]), lengths=torch.ones(2, 2), grades=grades).sum().backward()
    assert torch.isfinite(policy.grad).all()
