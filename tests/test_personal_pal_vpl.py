"""PAL-A (prototype simplex ideal points), the VPL encoder, the few-shot curve and MaxMin policies."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rankalign.eval import group_metrics  # noqa: E402
from rankalign.personal import (  # noqa: E402
    adapt_annotator,
    few_shot_curve,
    fit_personal_reward,
    fit_vpl_reward,
    gaussian_kl_to_standard,
    pair_outcomes,
)
from test_personal_models import data as worlds  # noqa: E402, F401, F811 (the two-group fixture, reused)


@pytest.fixture(scope="module")
def pal(worlds):
    train, features, _, _ = worlds
    return fit_personal_reward(train, features, model="pal", num_prototypes=2, embedding_dim=2, seed=0)


def test_pal_reward_is_distance_to_a_convex_combination_of_prototypes(worlds, pal):
    _, features, test, test_features = worlds
    module = pal.module
    x = np.stack([features[name] for name in list(features)[:10]])
    logits = module.user_table.detach().numpy()[3]
    w = np.exp(logits - logits.max())
    w /= w.sum()
    point = w @ module.prototypes.detach().numpy()          # a_u = sum_k w_uk p_k, by hand
    embedded = x @ module.projection.weight.detach().numpy().T
    np.testing.assert_allclose(pal.rewards(x, pal.annotators[3]), -((embedded - point) ** 2).sum(1), rtol=1e-10)
    correct, annotators = pair_outcomes(pal, test, test_features)
    report = group_metrics(correct, [a.split("-")[0] for a in annotators])
    assert report["worst_value"] >= 0.9   # both groups served on the disputed pairs


def test_pal_new_user_moves_only_their_simplex_weights(worlds, pal):
    _, _, test, test_features = worlds
    newcomer = [r for r in test if r.annotator == "B-0"][:8]
    adapted = adapt_annotator(pal, "newcomer", newcomer, test_features, epochs=200)
    assert torch.equal(adapted.module.prototypes, pal.module.prototypes)
    assert torch.equal(adapted.module.projection.weight, pal.module.projection.weight)
    assert adapted.module.user_table.shape == (pal.module.user_table.shape[0] + 1, 2)
    queries = [r for r in test if r.annotator == "B-0"][8:]
    correct, _ = pair_outcomes(adapted, [r.__class__(candidates=r.candidates, ranks=r.ranks, annotator="newcomer")
                                         for r in queries], test_features)
    assert correct.mean() >= 0.8


def test_gaussian_kl_matches_torch_distributions():
    mean = torch.tensor([[0.3, -1.2], [0.0, 0.0]], dtype=torch.float64)
    log_var = torch.tensor([[0.5, -2.0], [0.0, 0.0]], dtype=torch.float64)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * log_var))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(gaussian_kl_to_standard(mean, log_var), expected)
    assert float(gaussian_kl_to_standard(mean, log_var)[1]) == 0.0


def test_vpl_serves_unseen_users_from_their_context(worlds):
    train, features, test, test_features = worlds
    model = fit_vpl_reward(train, features, latent_dim=2, hidden_size=16, steps=600, seed=0)
    assert np.isfinite(model.history).all() and model.history[-1] < model.history[0]
    accuracies = {}
    for user in ("A-0", "B-0"):
        records = [r for r in test if r.annotator == user]
        z = model.latent(records[:8], test_features)
        queries = records[8:]
        winners = np.stack([test_features[r.candidates[r.ranks.index(0)]] for r in queries])
        losers = np.stack([test_features[r.candidates[r.ranks.index(1)]] for r in queries])
        accuracies[user] = float(np.mean(model.rewards(winners, z) > model.rewards(losers, z)))
    assert min(accuracies.values()) >= 0.8
    np.testing.assert_array_equal(model.latent([], test_features), np.zeros(2))


def test_few_shot_curve_rises_with_shots(worlds):
    train, features, test, test_features = worlds
    all_features = {**features, **test_features}
    curve = few_shot_curve(train, test, all_features, shots=(0, 8), models=("shared", "pal"), seed=0,
                           fit_settings={"pal": {"num_prototypes": 2, "embedding_dim": 2, "epochs": 200},
                                         "shared": {"epochs": 200}})
    assert curve["shots"] == [0, 8]
    # disputed queries: nobody can be served without knowing the user; 8 of their pairs are enough for PAL
    assert curve["pal"][0] <= 0.65 and curve["pal"][1] >= 0.85
    assert abs(curve["shared"][0] - curve["shared"][1]) < 1e-12


# --------------------------------------------------------------------------------------------- MaxMin
def test_maxmin_equalises_gains_and_beats_utilitarian_worst_case():
    from rankalign.sim import make_tabular_world, policy_log_probs
    from rankalign.sim.maxmin import group_gains, maxmin_policy, utilitarian_policy

    world = make_tabular_world(num_prompts=4, num_candidates=5, one_hot=True, seed=3)
    rng = np.random.default_rng(0)
    rewards = np.stack([world.features @ world.gold_weights, world.features @ rng.standard_normal(world.dim)])
    beta = 0.5
    maxmin = maxmin_policy(world, rewards, beta=beta, iterations=2000)
    # brute force over the dual: the MaxMin value is min over lambda of D(lambda), scanned on a fine grid
    ref = policy_log_probs(world)
    values = []
    for lam in np.linspace(0, 1, 2001):
        policy = utilitarian_policy(world, rewards, [lam, 1 - lam], beta=beta)
        values.append(lam * policy.gains[0] + (1 - lam) * policy.gains[1] - beta * policy.kl)
    objective = maxmin.gains.min() - beta * maxmin.kl
    assert objective == pytest.approx(min(values), abs=2e-4)
    np.testing.assert_allclose(group_gains(maxmin.log_probs, ref, rewards), maxmin.gains)
    for lam in (0.2, 0.5, 0.8):
        other = utilitarian_policy(world, rewards, [lam, 1 - lam], beta=beta)
        assert other.gains.min() - beta * other.kl <= objective + 1e-6


def test_maxmin_on_a_log_linear_policy_beats_fixed_weights():
    from rankalign.sim import make_tabular_world
    from rankalign.sim.maxmin import maxmin_policy, utilitarian_policy

    world = make_tabular_world(num_prompts=4, num_candidates=5, dim=3, seed=1)
    rng = np.random.default_rng(1)
    rewards = np.stack([world.features @ world.gold_weights, world.features @ rng.standard_normal(3)])
    maxmin = maxmin_policy(world, rewards, beta=0.5, iterations=60)
    assert maxmin.theta is not None and maxmin.theta.shape == (3,)
    objective = maxmin.gains.min() - 0.5 * maxmin.kl
    for lam in (0.0, 0.25, 0.75, 1.0):
        other = utilitarian_policy(world, rewards, [lam, 1 - lam], beta=0.5)
        assert other.gains.min() - 0.5 * other.kl <= objective + 1e-3


def _word_rewards():
    def words(prompt, response):
        return float(len(response.split()))

    def fewer_words(prompt, response):
        return -float(len(response.split()))

    return words, fewer_words


# the reference samples of the MaxMinJudge tests: 2 and 3 words, so "words" has mean 2.5 and spread 0.5
REFERENCE = {"p": ["a b", "a b c"]}
CANDIDATES = ["a b c d", "a", "a b"]  # 4, 1, 2 words
# by hand: z (reward minus the reference mean, over the spread): words (3, -3, -1), fewer_words (-3, 3, 1);
# win-rate gains P[beats a reference sample] - 1/2 (ties 1/2): words (0.5, -0.5, -0.25),
# fewer_words (-0.5, 0.5, 0.25)


def test_maxmin_judge_ranks_a_round_by_its_worst_served_group():
    from rankalign.online.loop import Judge
    from rankalign.sim.maxmin import MaxMinJudge

    words, fewer_words = _word_rewards()
    judge = MaxMinJudge([words, fewer_words], REFERENCE)
    assert isinstance(judge, Judge)
    z, wins = judge.measure("p", CANDIDATES)
    np.testing.assert_allclose(z, [[3, -3, -1], [-3, 3, 1]])
    np.testing.assert_allclose(wins, [[0.5, -0.5, -0.25], [-0.5, 0.5, 0.25]])
    # "q" has no samples of its own: all the samples are its reference. ["a", "a b c"]: words wins
    # (-0.5, 0.25), fewer_words (0.5, -0.25). Round gains over 5 candidates: words -0.5 / 5, fewer +0.5 / 5
    first, second = judge.rank_many(["p", "q"], [CANDIDATES, ["a", "a b c"]])
    assert judge.worst == 0 and judge.history[0]["gains"] == pytest.approx([-0.1, 0.1])
    assert first.scores == pytest.approx([3.0, -3.0, -1.0]) and list(first.ranks) == [0, 2, 1]
    assert second.scores == pytest.approx([-3.0, 1.0]) and list(second.ranks) == [1, 0]
    assert first.annotator == "maxmin" and first.meta["maxmin_group"] == 0
    # one group: the pooled reward's ranking
    pooled = MaxMinJudge([fewer_words], REFERENCE)
    assert list(pooled.rank_many(["p"], [CANDIDATES])[0].ranks) == [2, 0, 1]
    with pytest.raises(ValueError, match="at least one reference response"):
        MaxMinJudge([words], {"p": []})


def test_maxmin_judge_asked_one_prompt_at_a_time_uses_the_last_rounds_group():
    from rankalign.sim.maxmin import MaxMinJudge

    words, fewer_words = _word_rewards()
    judge = MaxMinJudge([words, fewer_words], REFERENCE)
    # before any round: each candidate's smallest z over the groups, (-3, -3, -1)
    first = judge.rank("p", CANDIDATES)
    assert first.scores == pytest.approx([-3.0, -3.0, -1.0]) and list(first.ranks) == [1, 1, 0]
    assert judge.end_round() == 0  # win-rate gains (-1/12, 1/12)
    assert judge.history[0]["gains"] == pytest.approx([-1 / 12, 1 / 12])
    assert judge.rank("p", CANDIDATES).scores == pytest.approx([3.0, -3.0, -1.0])


def test_maxmin_judge_with_a_step_size_moves_simplex_weights_to_the_worst_group():
    from rankalign.sim.maxmin import MaxMinJudge

    words, fewer_words = _word_rewards()
    judge = MaxMinJudge([words, fewer_words], REFERENCE, step_size=1.5)
    # the round's gains (-1/12, 1/12) move the weights from (1/2, 1/2) to ~ (exp(0.125), exp(-0.125)) before
    # the round is ranked by lambda . z
    [ranked] = judge.rank_many(["p"], [CANDIDATES])
    expected = np.exp([0.125, -0.125]) / np.exp([0.125, -0.125]).sum()
    np.testing.assert_allclose(judge.weights, expected)
    assert ranked.scores == pytest.approx(list(expected @ np.array([[3.0, -3.0, -1.0], [-3.0, 3.0, 1.0]])))
    with pytest.raises(ValueError, match="step_size"):
        MaxMinJudge([words], REFERENCE, step_size=0.0)


def test_the_online_loop_hands_a_judge_with_rank_many_the_whole_round():
    from rankalign.engine import build_tokenizer
    from rankalign.online.loop import judged_lists

    tokenizer = build_tokenizer(["a b c d"], vocab_size=16, kind="word")
    calls = []

    class RoundJudge:
        id = "round"

        def rank(self, prompt, candidates):  # pragma: no cover - must not be used
            raise AssertionError("rank_many should be used")

        def rank_many(self, prompts, candidate_lists):
            from rankalign.data import RankedList

            calls.append((list(prompts), [list(c) for c in candidate_lists]))
            return [RankedList(prompt=p, candidates=list(c), ranks=list(range(len(c))))
                    for p, c in zip(prompts, candidate_lists)]

    ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in ("a", "b", "c")]
    completions = [[ids[0], ids[1]], [ids[2], ids[2]], [ids[1], ids[2]]]  # the middle group has 1 distinct text
    records, lists = judged_lists(tokenizer, RoundJudge(), ["x", "y", "z"], [[1], [1], [1]], completions,
                                  round_index=0)
    assert calls == [(["x", "z"], [["a", "b"], ["b", "c"]])]  # one call, the groups with 2+ distinct texts
    assert [r.prompt for r in records] == ["x", "z"] and [item.index for item in lists] == [0, 2]


def test_exponentiated_gradient_step_by_hand():
    from rankalign.sim.maxmin import exponentiated_gradient_step

    # lambda (1/2, 1/2), gains (1, 0), step ln 2: weights ∝ (e^{-ln2}, 1) = (1/2, 1) -> (1/3, 2/3)
    np.testing.assert_allclose(exponentiated_gradient_step(np.array([0.5, 0.5]), np.array([1.0, 0.0]), np.log(2)),
                               [1 / 3, 2 / 3], rtol=1e-12)
    # a zero weight stays zero; huge gains do not overflow
    out = exponentiated_gradient_step(np.array([0.0, 0.3, 0.7]), np.array([0.0, 1e6, -1e6]), 1.0)
    assert np.all(np.isfinite(out)) and out[0] == 0.0 and out[2] == pytest.approx(1.0)
