"""General preference head (Zhang et al. 2024): skew symmetry, hand values, and fitting a 3-cycle."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")

from rankalign.losses import get  # noqa: E402
from rankalign.reward import (  # noqa: E402
    GeneralPreferenceHead,
    general_preference_logits,
    general_preference_loss,
    skew_symmetric_operator,
)


def test_operator_and_logits_by_hand():
    operator = skew_symmetric_operator(4, torch.tensor([1.0, 2.0]))
    expected = torch.tensor([[0.0, -1.0, 0.0, 0.0],
                             [1.0, 0.0, 0.0, 0.0],
                             [0.0, 0.0, 0.0, -2.0],
                             [0.0, 0.0, 2.0, 0.0]])
    torch.testing.assert_close(operator, expected)
    # a = (1, 0), b = (0, 1): a^T R b = a_0 (R b)_0 = 1 * (-1 * 1) = -1
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert general_preference_logits(a, b).item() == -1.0
    assert general_preference_logits(b, a).item() == 1.0
    # a = (1, 2, 3, 4), b = (5, 6, 7, 8), lambda = (1, 2): block 1: 2*5 - 1*6 = 4; block 2: 2 * (4*7 - 3*8) = 8
    a, b = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([5.0, 6.0, 7.0, 8.0])
    assert general_preference_logits(a, b, torch.tensor([1.0, 2.0])).item() == 12.0
    torch.testing.assert_close(a @ operator @ b, torch.tensor(12.0))
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 6, generator=generator), torch.randn(5, 6, generator=generator)
    torch.testing.assert_close(general_preference_logits(x, y), -general_preference_logits(y, x))
    torch.testing.assert_close(general_preference_logits(x, x), torch.zeros(5))
    with pytest.raises(ValueError):
        skew_symmetric_operator(3)


def test_loss_matches_pairwise_formula_and_skips_ties():
    embeddings = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    # ranks [0, 1, 2]: pairs (0>1), (0>2), (1>2) with logits v_w^T R v_l:
    # (1,0)->(0,1): 0*0 - 1*1 = -1 ; (1,0)->(1,1): 0*1 - 1*1 = -1 ; (0,1)->(1,1): 1*1 - 0*1 = 1
    expected = -(torch.nn.functional.logsigmoid(torch.tensor([-1.0, -1.0, 1.0]))).mean()
    torch.testing.assert_close(general_preference_loss(embeddings), expected.reshape(1))
    tied = general_preference_loss(embeddings, ranks=torch.tensor([[0, 0, -1]]))
    torch.testing.assert_close(tied, torch.zeros(1))


def _cycle_data():
    """Items A, B, C (one-hot features) with A > B, B > C, C > A, each as a pair [winner, loser]."""
    features = torch.eye(3)
    pairs = [(0, 1), (1, 2), (2, 0)]
    lists = torch.stack([torch.stack([features[w], features[loser]]) for w, loser in pairs])  # [3, 2, 3]
    return lists, pairs


def test_general_head_fits_a_cycle_that_bradley_terry_cannot():
    lists, pairs = _cycle_data()
    torch.manual_seed(0)
    head = GeneralPreferenceHead(3, preference_dim=2, bias=False)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        loss = head.loss(lists).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    embeddings = head(torch.eye(3))
    probabilities = [torch.sigmoid(head.preference_logits(embeddings[w], embeddings[loser])).item() for w, loser in pairs]
    accuracy = sum(p > 0.5 for p in probabilities) / 3
    assert accuracy > 0.9
    assert min(probabilities) > 0.8  # each observed preference fitted with confidence

    # a scalar Bradley-Terry head (bt_reward on the same lists) orders the three items: at most 2 of 3 right
    scalar = torch.nn.Linear(3, 1, bias=False)
    optimizer = torch.optim.Adam(scalar.parameters(), lr=0.05)
    for _ in range(300):
        loss = get("bt_reward")(scalar(lists).squeeze(-1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rewards = scalar(torch.eye(3)).squeeze(-1)
    bt_accuracy = sum(bool(rewards[w] > rewards[loser]) for w, loser in pairs) / 3
    assert bt_accuracy <= 2 / 3
    # brute force: no strict order of three items satisfies more than two of the cycle's pairs
    best = max(sum(order.index(w) < order.index(loser) for w, loser in pairs) for order in itertools.permutations(range(3)))
    assert best == 2


def test_general_preference_reward_model_on_a_tiny_llama(tmp_path):
    pytest.importorskip("transformers")
    from rankalign.data.records import RankedList
    from rankalign.engine import build_tokenizer, tiny_causal_lm
    from rankalign.reward import RewardModel, preference_probabilities, score_lists, train_reward_model

    tokenizer = build_tokenizer(["rock paper scissors which wins"], vocab_size=32, kind="word")
    # rock > scissors, scissors > paper, paper > rock: a cycle, asked in both column orders
    cycle = [("rock", "scissors"), ("scissors", "paper"), ("paper", "rock")]
    records = [RankedList(prompt="which wins", candidates=[w, loser], ranks=[0, 1]) for w, loser in cycle]
    records += [RankedList(prompt="which wins", candidates=[loser, w], ranks=[1, 0]) for w, loser in cycle]
    model = RewardModel(tiny_causal_lm(len(tokenizer), hidden_size=32, layers=1, heads=2), preference_dim=4)
    with pytest.raises(ValueError, match="general_preference"):
        train_reward_model(model, tokenizer, records)  # the scalar objectives do not apply
    history = train_reward_model(model, tokenizer, records, objective="general_preference", epochs=60, lr=3e-3,
                                 batch_size=6, seed=0)
    assert history[-1]["loss"] < 0.2 < history[0]["loss"]
    triple = [RankedList(prompt="which wins", candidates=["rock", "paper", "scissors"], ranks=[0, 0, 0])]
    matrix = preference_probabilities(model, tokenizer, triple)[0]
    torch.testing.assert_close(matrix + matrix.T, torch.ones(3, 3))
    rock, paper, scissors = 0, 1, 2
    assert matrix[rock, scissors] > 0.9 and matrix[scissors, paper] > 0.9 and matrix[paper, rock] > 0.9
    with pytest.raises(ValueError, match="no scalar reward"):
        score_lists(model, tokenizer, triple)
    model.save_pretrained(tmp_path / "gpm")
    loaded = RewardModel.from_pretrained(tmp_path / "gpm")
    assert loaded.preference_dim == 4
    torch.testing.assert_close(preference_probabilities(loaded, tokenizer, triple)[0], matrix)


def test_extreme_embeddings_give_finite_loss_and_gradients():
    embeddings = torch.tensor([[[1e4, -1e4], [-1e4, 1e4], [3e4, 1e4]]], requires_grad=True)
    loss = general_preference_loss(embeddings)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(embeddings.grad).all()
    # pair (0 > 1): v_0^T R v_1 = a1 b0 - a0 b1 = (-1e4)(-1e4) - (1e4)(1e4) = 0 -> log 2
    # pair (0 > 2): (-1e4)(3e4) - (1e4)(1e4) = -4e8 -> loss 4e8; pair (1 > 2): (1e4)(3e4) - (-1e4)(1e4) = 4e8 -> 0
    expected = (torch.log(torch.tensor(2.0)) + 4e8 + 0.0) / 3
    torch.testing.assert_close(loss, expected.reshape(1))
