"""Held-out correctness checks of rankalign.sim and rankalign.online: every expected value is computed here,
independently of the code under test (formulas by hand, brute-force loops, plain forward passes)."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from online_helpers import one_thread  # noqa: F401  (autouse fixture)
from rankalign.data import read
from rankalign.engine import tiny_causal_lm
from rankalign.online import judged_lists, run_online, sample_groups
from rankalign.online.policy_gradient import policy_gradient_loss, policy_gradient_step
from rankalign.sim.annotators import Annotator, pair_probabilities, sample_best, sample_ranks
from rankalign.sim.text_world import (
    TOPICS,
    build_text_tokenizer,
    gold_judge,
    gold_reward,
    make_text_world,
    train_reference_policy,
)
from rankalign.train import OnlineConfig, TrainConfig

_TOPIC_OF = {noun: topic for topic, nouns in TOPICS.items() for noun in nouns}


def _gold_of_tokens(prompt, tokens):
    """The documented gold reward, 1 on_topic - 1 off_topic - 0.5 repeats + 0.05 words, of a token list."""
    topic = prompt.split()[1]
    nouns = [t for t in tokens if t in _TOPIC_OF]
    on_topic = len({n for n in nouns if _TOPIC_OF[n] == topic})
    off_topic = sum(_TOPIC_OF[n] != topic for n in nouns)
    repeats = len(nouns) - len(set(nouns))
    return on_topic - off_topic - 0.5 * repeats + 0.05 * len(tokens)


def _dense_ranks(values):
    levels = sorted({round(v, 9) for v in values}, reverse=True)
    return [levels.index(round(v, 9)) for v in values]


# ----------------------------------------------------------------------------- the gold reward of decoded text
def test_gold_reward_of_text_as_the_tokenizer_decodes_it():
    """``tokenizer.decode`` glues the full stop to the word before it ("a red wave."); the reward of the
    decoded text is the reward of the response's tokens (the online loop's judges see decoded text)."""
    tokenizer = build_text_tokenizer()
    prompt = "about sea fish\n"
    cases = {
        # tokens: a red wave . fish and tide . -> wave, fish, tide on topic; 8 tokens: 3 + 0.4
        "a red wave . fish and tide .": 3 + 0.05 * 8,
        # the fish is big . a big apple . -> fish on, apple off; 9 tokens: 1 - 1 + 0.45
        "the fish is big . a big apple .": 1 - 1 + 0.05 * 9,
        # moon and moon . -> moon off twice, one repeat; 4 tokens: -2 - 0.5 + 0.2
        "moon and moon .": -2 - 0.5 + 0.05 * 4,
    }
    for spaced, expected in cases.items():
        decoded = tokenizer.decode(tokenizer(spaced, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
        assert gold_reward(prompt, spaced) == pytest.approx(expected)
        assert gold_reward(prompt, decoded) == pytest.approx(expected), decoded


def test_judged_lists_rank_hand_made_completions_by_their_gold_reward():
    tokenizer = build_text_tokenizer()
    prompt = "about sea fish\n"
    responses = ["a big moon .", "the sand is old . a red wave .", "fish and bread .", "a new boat ."]
    completions = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for r in responses]
    prompt_ids = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    records, lists = judged_lists(tokenizer, gold_judge(), [prompt], [prompt_ids], [completions], round_index=0)
    # a big moon . -1 + 0.2; the sand is old . a red wave . 2 + 0.45; fish and bread . 0 + 0.2; a new boat . 1 + 0.2
    expected = [-0.8, 2.45, 0.2, 1.2]
    assert list(records[0].scores) == pytest.approx(expected)
    assert list(records[0].ranks) == [3, 0, 2, 1]
    assert lists[0].ranks == [3, 0, 2, 1] and lists[0].response_ids == completions


def test_online_round_lists_read_back_as_the_gold_ranking_of_the_sampled_ids(tmp_path):
    """``round_000/lists.jsonl`` holds, per prompt, the distinct decoded samples of ``samples.json`` in
    sampling order, ranked by the gold reward computed here from the sampled token ids, the judge as annotator."""
    world = make_text_world()
    tokenizer = build_text_tokenizer()
    model = train_reference_policy(world, tokenizer, steps=40, batch_size=16, hidden_size=32, layers=1, seed=0)
    config = TrainConfig(model="tiny:llama", objective="pl_dpo", loss_params={"beta": 0.5}, batch_size=4, epochs=1,
                         lr=0.01, seed=3, output_dir=str(tmp_path), save_steps=0, report_to=[], progress=False,
                         bf16=False)
    online = OnlineConfig(enabled=True, rounds=1, k=4, max_new_tokens=24, prompts_per_round=6)
    judge = gold_judge()
    run_online(model, tokenizer, list(world.prompts), judge, config, online)
    samples = json.loads((tmp_path / "round_000" / "samples.json").read_text())["completions"]
    records = list(read(str(tmp_path / "round_000" / "lists.jsonl")).records)
    expected = []
    for prompt, group in zip(world.prompts[:6], samples):
        texts, golds = [], []
        for ids in group:
            tokens = [tokenizer.convert_ids_to_tokens(i) for i in ids if i not in tokenizer.all_special_ids]
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            if text and text not in texts:
                texts.append(text)
                golds.append(_gold_of_tokens(prompt, tokens))
        if len(texts) >= 2:
            expected.append((prompt, texts, golds))
    assert len(records) == len(expected) >= 4
    for record, (prompt, texts, golds) in zip(records, expected):
        assert record.prompt == prompt and list(record.candidates) == texts
        assert record.annotator == judge.id
        assert list(record.scores) == pytest.approx(golds)
        assert list(record.ranks) == _dense_ranks(golds)


# ------------------------------------------------------------------------------------ simulated annotators
def test_deterministic_annotator_pair_probabilities_match_its_samples():
    """Equal utilities share a rank in ``sample_ranks`` (a sure tie), so P(tie) = 1, also under flips."""
    rng = np.random.default_rng(0)
    for annotator in (Annotator(id="d", choice="deterministic"),
                      Annotator(id="f", choice="deterministic", flip_rate=0.3)):
        for u_a, u_b in ((1.0, 1.0), (2.0, 1.0), (0.0, 1.0)):
            draws = [sample_ranks(annotator, np.array([u_a, u_b]), rng) for _ in range(4000)]
            observed = [np.mean([r[0] < r[1] for r in draws]), np.mean([r[0] == r[1] for r in draws]),
                        np.mean([r[0] > r[1] for r in draws])]
            probabilities = [float(v) for v in pair_probabilities(annotator, u_a, u_b)]
            assert probabilities == pytest.approx(observed, abs=0.035), (annotator.id, u_a, u_b)


def _plackett_luce(u, order):
    strengths, probability, remaining = np.exp(u), 1.0, list(range(len(u)))
    for i in order:
        probability *= strengths[i] / strengths[remaining].sum()
        remaining.remove(i)
    return probability


def test_plackett_luce_rankings_with_flips_follow_the_formula():
    """All 3! rankings: (1 - eps) PL(order; u / T) + eps PL(reversed order; u / T), chi-square."""
    temperature, eps, n = 0.7, 0.25, 12000
    annotator = Annotator(id="pl", choice="plackett_luce", temperature=temperature, flip_rate=eps)
    u = np.array([1.0, 0.2, -0.5])
    rng = np.random.default_rng(3)
    counts = {}
    for _ in range(n):
        ranks = tuple(sample_ranks(annotator, u, rng))
        counts[ranks] = counts.get(ranks, 0) + 1
    observed, expected = [], []
    for order in itertools.permutations(range(3)):
        ranks = tuple(order.index(i) for i in range(3))
        observed.append(counts.get(ranks, 0))
        expected.append(n * ((1 - eps) * _plackett_luce(u / temperature, order)
                             + eps * _plackett_luce(u / temperature, order[::-1])))
    assert chisquare(observed, expected).pvalue > 1e-3


def test_davidson_ties_with_flips_and_best_of_with_flips_follow_the_formulas():
    rng = np.random.default_rng(4)
    n = 12000
    temperature, nu, eps = 0.5, 0.8, 0.2
    annotator = Annotator(id="dv", temperature=temperature, tie_strength=nu, flip_rate=eps)
    pi_a, pi_b = math.exp(0.3 / temperature), 1.0
    denominator = pi_a + pi_b + nu * math.sqrt(pi_a * pi_b)
    win, tie, loss = pi_a / denominator, nu * math.sqrt(pi_a * pi_b) / denominator, pi_b / denominator
    expected = [(1 - eps) * win + eps * loss, tie, (1 - eps) * loss + eps * win]
    draws = [tuple(sample_ranks(annotator, np.array([0.3, 0.0]), rng)) for _ in range(n)]
    observed = [draws.count((0, 1)), draws.count((0, 0)), draws.count((1, 0))]
    assert chisquare(observed, np.array(expected) * n).pvalue > 1e-3
    # best of 4: softmax(u / T), then with probability eps a uniformly random other candidate
    picker = Annotator(id="bo", choice="plackett_luce", temperature=0.5, flip_rate=0.3)
    u = np.array([0.5, 0.0, -0.3, 0.2])
    p = np.exp(u / 0.5) / np.exp(u / 0.5).sum()
    p = 0.7 * p + 0.3 * (1 - p) / 3
    picks = np.bincount([sample_best(picker, u, rng) for _ in range(n)], minlength=4)
    assert chisquare(picks, p * n).pvalue > 1e-3


# ------------------------------------------------------------------------------------------ on-policy steps
def _my_logps(model, prompt, completion):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].double()
    log_probs = torch.log_softmax(logits, -1)
    return torch.stack([log_probs[len(prompt) - 1 + j, t] for j, t in enumerate(completion)])


def test_low_temperature_samples_are_greedy_decoding_by_hand():
    model = tiny_causal_lm(20, seed=4, hidden_size=32, layers=2, heads=2)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(3.0)  # sharper logits
    prompts = [[1, 9, 4], [1, 9]]  # left-padded batch
    groups = sample_groups(model, prompts, 3, max_new_tokens=8, temperature=1e-4, eos_token_id=2, seed=1)
    for prompt, group in zip(prompts, groups.completion_ids):
        ids, greedy = list(prompt), []
        for _ in range(8):
            with torch.no_grad():
                token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            greedy.append(token)
            ids.append(token)
            if token == 2:
                break
        assert group == [greedy] * 3


@pytest.mark.parametrize("objective", ["grpo", "rloo"])
def test_policy_gradient_uses_each_reward_for_its_own_completion(objective):
    """The gradient equals that of a surrogate written here (advantages by hand, log-probs by a plain forward
    pass), and a large step raises the best completion's log-prob most and lowers the worst one's most."""
    model = tiny_causal_lm(30, seed=3, hidden_size=32, layers=1, heads=2)
    prompts = [[1, 5, 6], [1, 9]]
    k = 5
    groups = sample_groups(model, prompts, k, max_new_tokens=6, eos_token_id=2, seed=2)
    rewards = [[0.3, -1.0, 2.0, 0.5, 0.1], [1.0, 0.0, -2.0, 0.4, 3.0]]

    def gradient(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()

    loss, _ = policy_gradient_loss(model, groups, rewards=rewards, objective=objective, beta=0.0)
    theirs = gradient(loss)
    surrogate = 0.0
    for prompt, completions, r in zip(prompts, groups.completion_ids, rewards):
        r = torch.tensor(r, dtype=torch.float64)
        for i, completion in enumerate(completions):
            ids = torch.tensor([prompt + completion])
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            token_logps = torch.stack([log_probs[len(prompt) - 1 + j, t] for j, t in enumerate(completion)])
            if objective == "grpo":  # (r_i - mean) / (sample std + 1e-4), per-token mean
                advantage = (r[i] - r.mean()) / (r.std() + 1e-4)
                surrogate = surrogate - advantage * token_logps.mean() / k
            else:  # leave-one-out baseline, summed log-prob
                advantage = r[i] - (r.sum() - r[i]) / (k - 1)
                surrogate = surrogate - advantage * token_logps.sum() / k
    mine = gradient(surrogate / len(prompts))
    assert torch.allclose(theirs, mine, rtol=1e-3, atol=1e-6)

    before = [[float(_my_logps(model, p, c).sum()) for c in cs] for p, cs in zip(prompts, groups.completion_ids)]
    policy_gradient_step(model, torch.optim.SGD(model.parameters(), lr=0.5), groups, rewards=rewards,
                         objective=objective, beta=0.0, max_grad_norm=None)
    for b, (prompt, completions) in enumerate(zip(prompts, groups.completion_ids)):
        change = np.array([float(_my_logps(model, prompt, c).sum()) for c in completions]) - np.array(before[b])
        assert int(np.argmax(change)) == int(np.argmax(rewards[b]))
        assert int(np.argmin(change)) == int(np.argmin(rewards[b]))
