"""GRPO/RLOO updates on sampled groups: the prefix-shared forward against a naive per-sequence forward."""

import copy

import pytest
import torch

from online_helpers import one_thread  # noqa: F401  (autouse fixture)
from rankalign.engine import pack_lists, sequence_logps, tiny_causal_lm, token_logps
from rankalign.losses import group_advantages, k3_kl
from rankalign.online import (
    groups_to_lists,
    policy_gradient_loss,
    policy_gradient_step,
    sample_groups,
    token_grid,
)

PROMPTS = [[1, 5, 6, 7, 8], [1, 9, 10]]



@pytest.fixture(scope="module")
def setup():
    policy = tiny_causal_lm(40, seed=1, hidden_size=32)
    reference = tiny_causal_lm(40, seed=2, hidden_size=32)
    groups = sample_groups(policy, PROMPTS, 4, max_new_tokens=6, eos_token_id=2, seed=0)
    rewards = [[1.0, 0.0, 2.0, 0.5], [0.0, 3.0, 1.0, 1.0]]
    return policy, reference, groups, rewards


def _naive_token_logps(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    logps = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return torch.stack([logps[len(prompt) - 1 + j, t] for j, t in enumerate(completion)])


def _naive_grpo(policy, reference, groups, rewards, beta):
    """GRPO written out per sequence: every completion with its own copy of the prompt."""
    advantages = group_advantages(torch.tensor(rewards), kind="grpo")
    per_group = []
    for b, (prompt, group) in enumerate(zip(groups.prompt_ids, groups.completion_ids)):
        per_response = []
        for k, completion in enumerate(group):
            logp = _naive_token_logps(policy, prompt, completion)
            with torch.no_grad():
                ref = _naive_token_logps(reference, prompt, completion)
            ratio = torch.exp(logp - logp.detach())
            per_token = -(ratio * advantages[b, k]) + beta * k3_kl(logp, ref)
            per_response.append(per_token.mean())
        per_group.append(torch.stack(per_response).mean())
    return torch.stack(per_group).mean()


def test_token_logps_sum_to_sequence_logps(setup):
    policy, _, groups, _ = setup
    batch = pack_lists(groups_to_lists(groups), layout="shared")
    with torch.no_grad():
        grid, mask = token_grid(token_logps(policy, batch), batch)
        sums = sequence_logps(policy, batch)
    assert torch.allclose((grid * mask).sum(2), sums, atol=1e-5)
    lengths = torch.tensor([[len(c) for c in g] for g in groups.completion_ids])
    assert torch.equal(mask.sum(2), lengths)


@pytest.mark.parametrize("layout", ["shared", "duplicated"])
def test_grpo_loss_and_gradient_match_the_naive_per_sequence_computation(setup, layout):
    policy, reference, groups, rewards = setup
    model_a, model_b = copy.deepcopy(policy), copy.deepcopy(policy)
    loss, metrics = policy_gradient_loss(model_a, groups, rewards=rewards, objective="grpo", ref_model=reference,
                                         beta=0.1, layout=layout)
    naive = _naive_grpo(model_b, reference, groups, rewards, beta=0.1)
    assert loss.item() == pytest.approx(naive.item(), abs=1e-5)
    loss.backward()
    naive.backward()
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
    assert metrics["kl"] >= 0


def test_rloo_loss_matches_the_naive_computation(setup):
    policy, reference, groups, rewards = setup
    loss, _ = policy_gradient_loss(policy, groups, rewards=rewards, objective="rloo", ref_model=reference, beta=0.2)
    total = 0.0
    for b, (prompt, group) in enumerate(zip(groups.prompt_ids, groups.completion_ids)):
        with torch.no_grad():
            logps = torch.stack([_naive_token_logps(policy, prompt, c).sum() for c in group])
            refs = torch.stack([_naive_token_logps(reference, prompt, c).sum() for c in group])
        shaped = torch.tensor(rewards[b]) - 0.2 * (logps - refs)
        k = len(group)
        advantages = torch.stack([shaped[i] - (shaped.sum() - shaped[i]) / (k - 1) for i in range(k)])
        total += -(advantages * logps).mean().item()
    assert loss.item() == pytest.approx(total / len(groups.prompt_ids), abs=1e-4)


def test_rank_only_judge_and_errors(setup):
    policy, _, groups, _ = setup
    ranks = [[0, 1, 2, 3], [3, 2, 1, 0]]
    loss, metrics = policy_gradient_loss(policy, groups, ranks=ranks, objective="grpo")
    assert torch.isfinite(loss) and metrics["advantage_abs"] > 0
    with pytest.raises(ValueError, match="rewards or ranks"):
        policy_gradient_loss(policy, groups, objective="grpo")
    with pytest.raises(ValueError, match="objective"):
        policy_gradient_loss(policy, groups, ranks=ranks, objective="ppo")


def test_grpo_steps_raise_the_reward_of_a_rewarded_token():
    """Rewarding completions that contain token 7 makes the policy sample it more often."""
    policy = tiny_causal_lm(12, seed=3, hidden_size=32)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)

    def share_with_token(seed):
        groups = sample_groups(policy, [[1, 4], [1, 5]], 16, max_new_tokens=4, eos_token_id=2, seed=seed)
        flags = [[float(7 in c) for c in g] for g in groups.completion_ids]
        return groups, flags, sum(map(sum, flags)) / 32

    _, _, before = share_with_token(1000)
    for step in range(10):
        groups, flags, _ = share_with_token(step)
        policy_gradient_step(policy, optimizer, groups, rewards=flags, objective="grpo")
    _, _, after = share_with_token(1000)
    assert after > before + 0.2
