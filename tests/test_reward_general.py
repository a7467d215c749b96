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
    # the authors' sign (their GeneralPreferenceLoss: chosen[0] * rejected[1] - chosen[1] * rejected[0];
    # their high-dimensional loss: (chosen @ R^T) . rejected = (R chosen) . rejected)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert general_preference_logits(a, b).item() == 1.0 * 1.0 - 0.0 * 0.0
    assert general_preference_logits(b, a).item() == -1.0
    # a = (1, 2, 3, 4), b = (5, 6, 7, 8), lambda = (1, 2): block 1: 1*6 - 2*5 = -4; block 2: 2 * (3*8 - 4*7) = -8
    a, b = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([5.0, 6.0, 7.0, 8.0])
    assert general_preference_logits(a, b, torch.tensor([1.0, 2.0])).item() == -12.0
    torch.testing.assert_close((operator @ a) @ b, torch.tensor(-12.0))  # <R v_1, v_2>, the paper's form
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 6, generator=generator), torch.randn(5, 6, generator=generator)
    torch.testing.assert_close(general_preference_logits(x, y), -general_preference_logits(y, x))
    torch.testing.assert_close(general_preference_logits(x, x), torch.zeros(5))
    with pytest.raises(ValueError):
        skew_symmetric_operator(3)


def test_loss_matches_pairwise_formula_and_skips_ties():
    embeddings = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    # ranks [0, 1, 2]: pairs (0>1), (0>2), (1>2) with the authors' logit w0*l1 - w1*l0:
    # (1,0)->(0,1): 1*1 - 0*0 = 1 ; (1,0)->(1,1): 1*1 - 0*1 = 1 ; (0,1)->(1,1): 0*1 - 1*1 = -1
    expected = -(torch.nn.functional.logsigmoid(torch.tensor([1.0, 1.0, -1.0]))).mean()
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
    # authors' logit w0*l1 - w1*l0: pair (0 > 1): (1e4)(1e4) - (-1e4)(-1e4) = 0 -> log 2
    # pair (0 > 2): (1e4)(1e4) - (-1e4)(3e4) = 4e8 -> loss 0; pair (1 > 2): (-1e4)(1e4) - (1e4)(3e4) = -4e8 -> 4e8
    expected = (torch.log(torch.tensor(2.0)) + 0.0 + 4e8) / 3
    torch.testing.assert_close(loss, expected.reshape(1))


def test_prompt_gated_general_preference_matches_the_papers_formula(tmp_path):
    """P(y_i > y_j | x) = sigma((R(x) v_i) . v_j) with R(x) = diag(lambda_b(x) [[0, -1], [1, 0]]) and the
    eigenvalue gate lambda(x) = k softmax(W h_x / sqrt(H)) on the hidden state of the prompt's last token
    (Zhang et al. 2024 and their code), computed here from one forward pass per prompt + response."""
    pytest.importorskip("transformers")
    from rankalign.data.records import RankedList
    from rankalign.engine import build_tokenizer, tiny_causal_lm
    from rankalign.reward import RewardModel, preference_probabilities

    tokenizer = build_tokenizer(["rock paper scissors which wins now"], vocab_size=32, kind="word")
    lm = tiny_causal_lm(len(tokenizer), hidden_size=32, layers=1, heads=2, seed=1)
    model = RewardModel(lm, preference_dim=4, prompt_gate=True, seed=3).eval()
    with torch.no_grad():  # a gate far from uniform, so lambda really depends on the prompt
        model.prompt_gate.weight.normal_(std=3.0, generator=torch.Generator().manual_seed(0))
    candidates = ["rock", "paper scissors", "scissors now"]
    records = [RankedList(prompt=p, candidates=candidates, ranks=[0, 0, 0]) for p in ("which wins", "now rock")]
    matrices = preference_probabilities(model, tokenizer, records)
    base, hidden_size = lm.model, 32
    gates = []
    with torch.no_grad():
        for record, matrix in zip(records, matrices):
            prompt_ids = [tokenizer.bos_token_id] + tokenizer(record.prompt, add_special_tokens=False)["input_ids"]
            vectors = []
            for candidate in candidates:
                ids = prompt_ids + tokenizer(candidate, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                hidden = base(input_ids=torch.tensor([ids])).last_hidden_state[0]
                vectors.append(model.head(hidden[-1]))
                h_x = hidden[len(prompt_ids) - 1]
            lam = 2 * torch.softmax(model.prompt_gate(h_x) / hidden_size ** 0.5, dim=-1)
            gates.append(lam)
            operator = torch.zeros(4, 4)
            for b in range(2):
                operator[2 * b, 2 * b + 1], operator[2 * b + 1, 2 * b] = -lam[b], lam[b]
            for i in range(3):
                for j in range(3):
                    expected = torch.sigmoid((operator @ vectors[i]) @ vectors[j])
                    torch.testing.assert_close(matrix[i, j], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(gates[0], gates[1], atol=1e-3)  # prompt-dependent
    model.save_pretrained(tmp_path / "gated", tokenizer=tokenizer)
    loaded = RewardModel.from_pretrained(tmp_path / "gated")
    for a, b in zip(preference_probabilities(loaded, tokenizer, records), matrices):
        torch.testing.assert_close(a, b)
