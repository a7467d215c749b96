"""Ranked lists sampled from the text world's grammar (the data of examples/train_sim_lists.yaml)."""

import pytest

from rankalign.sim.text_world import gold_reward, grammar_ranked_lists


def test_lists_are_ranked_by_the_gold_reward_and_deterministic():
    lists = grammar_ranked_lists(12, k=4, seed=3)
    assert lists == grammar_ranked_lists(12, k=4, seed=3)
    assert lists != grammar_ranked_lists(12, k=4, seed=4)
    for record in lists:
        assert record.k == 4 and len(set(record.candidates)) == 4
        rewards = [gold_reward(record.prompt, response) for response in record.candidates]
        assert list(record.scores) == pytest.approx(rewards, abs=1e-12)
        # rank 0 has the highest gold reward, equal rewards (to rounding) share a rank
        for i in range(4):
            for j in range(4):
                if rewards[i] > rewards[j] + 1e-9:
                    assert record.ranks[i] < record.ranks[j]
                elif abs(rewards[i] - rewards[j]) <= 1e-9:
                    assert record.ranks[i] == record.ranks[j]
