"""Held-out correctness checks of the engine and the trainer against values computed here, independently.

Every expected value comes from a plain transformers forward over ``prompt + response`` for one response
at a time (``model(input_ids).logits.log_softmax(-1)`` gathered at the response tokens), from the
tokenizer called directly, or from an objective's formula written out by hand; none is copied from
rankalign's output.
"""

from __future__ import annotations

import copy
import math
import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankalign.data import RankedList  # noqa: E402
from rankalign.engine import (  # noqa: E402
    ReferenceCache,
    TokenizedList,
    build_tokenizer,
    compute_reference_logps,
    pack_lists,
    reference_cache_key,
    sequence_logps,
    tiny_causal_lm,
    token_logps,
    tokenize_records,
)

VOCAB = 101


# ------------------------------------------------------------------------------------------------ helpers
def plain_logps(model, lists) -> list[list[float]]:
    """``log pi(response | prompt)`` of every response, one plain forward per (prompt + response)."""
    out = []
    with torch.no_grad():
        for item in lists:
            values = []
            for response in item.response_ids:
                logp = model(input_ids=torch.tensor([item.prompt_ids + response])).logits[0].double().log_softmax(-1)
                start = len(item.prompt_ids)
                positions = torch.arange(start - 1, start - 1 + len(response))
                values.append(float(logp[positions, torch.tensor(response)].sum()))
            out.append(values)
    return out


def max_gap(got, expected) -> float:
    return max(abs(float(got[b][k]) - expected[b][k]) for b in range(len(expected)) for k in range(len(expected[b])))


def random_lists(seed, count=6, prompt_range=(1, 14), response_range=(1, 11)):
    """Lists of unequal prompt and response lengths with K = 1..5."""
    generator = torch.Generator().manual_seed(seed)

    def draw(low, high):
        return int(torch.randint(low, high, (1,), generator=generator))

    out = []
    for b in range(count):
        k = 1 + b % 5
        prompt = torch.randint(3, VOCAB, (draw(*prompt_range),), generator=generator).tolist()
        responses = [torch.randint(3, VOCAB, (draw(*response_range),), generator=generator).tolist() for _ in range(k)]
        out.append(TokenizedList(prompt_ids=prompt, response_ids=responses, ranks=list(range(k)), index=b))
    return out


def perturbed(model):
    """Random weights further from initialisation, so that errors show."""
    with torch.no_grad():
        generator = torch.Generator().manual_seed(5)
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def small_model(arch):
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1,
                                           eos_token_id=2))
    model.config._attn_implementation = "sdpa"
    return perturbed(model.float())


LAYOUTS = [("shared", None), ("shared", 24), ("shared", 64), ("duplicated", None)]


# ------------------------------------------------------------------------------------------------ log-probs
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_log_probs_equal_a_plain_forward_with_and_without_a_lora_adapter(arch):
    from peft import LoraConfig, get_peft_model

    model = small_model(arch)
    lists = random_lists(3)
    targets = ["q_proj", "v_proj", "down_proj"] if arch != "gpt2" else ["c_attn", "c_fc"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)  # an adapter that changes the numbers
    wrapped.eval()
    with torch.no_grad():
        with_adapter = plain_logps(wrapped, lists)
        with wrapped.disable_adapter():
            without_adapter = plain_logps(wrapped, lists)
    assert max_gap(with_adapter, without_adapter) > 0.1
    for layout, per_row in LAYOUTS:
        batch = pack_lists(lists, layout=layout, max_tokens_per_row=per_row)
        with torch.no_grad():
            got = sequence_logps(wrapped, batch, precision="fp32")
            with wrapped.disable_adapter():
                got_base = sequence_logps(wrapped, batch, precision="fp32")
        assert max_gap(got, with_adapter) < 1e-4, (layout, per_row)
        assert max_gap(got_base, without_adapter) < 1e-4, (layout, per_row)
        for b, item in enumerate(lists):
            assert torch.all(got[b, item.k:] == 0)  # padding cells


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_token_log_probs_and_gradients_equal_a_plain_forward(arch):
    model = small_model(arch)
    lists = random_lists(4)
    k_max = max(item.k for item in lists)
    # gradient of a weighted sum over responses, by plain forwards
    model.zero_grad()
    total = 0
    expected_tokens = []
    for b, item in enumerate(lists):
        for k, response in enumerate(item.response_ids):
            logp = model(input_ids=torch.tensor([item.prompt_ids + response])).logits[0].float().log_softmax(-1)
            start = len(item.prompt_ids)
            picked = logp[torch.arange(start - 1, start - 1 + len(response)), torch.tensor(response)]
            expected_tokens.append(picked.detach())
            total = total + (b * k_max + k + 1) * picked.sum()
    total.backward()
    expected_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    for layout, per_row in LAYOUTS:
        batch = pack_lists(lists, layout=layout, max_tokens_per_row=per_row)
        with torch.no_grad():
            tokens = token_logps(model, batch, precision="fp32")
        # token_logps is in target order: per (list, response) cell, cells in packing order
        by_cell = {}
        for value, cell in zip(tokens, batch.target_segment.tolist()):
            by_cell.setdefault(cell, []).append(float(value))
        flat = [by_cell[b * batch.max_k + k] for b, item in enumerate(lists) for k in range(item.k)]
        for got, expected in zip(flat, expected_tokens):
            assert got == pytest.approx(expected.tolist(), abs=1e-4)
        model.zero_grad()
        logps = sequence_logps(model, batch, precision="fp32")
        weights = torch.arange(1, logps.numel() + 1, dtype=torch.float32).view_as(logps)
        (logps * weights).sum().backward()
        for name, parameter in model.named_parameters():
            scale = float(expected_grads[name].abs().max()) + 1e-12
            assert float((parameter.grad - expected_grads[name]).abs().max()) / scale < 1e-4, (layout, per_row, name)


def long_lists():
    """Three lists of a 12-token prompt and four 10-token responses: 22 positions per response."""
    generator = torch.Generator().manual_seed(1)
    return [TokenizedList(prompt_ids=torch.randint(3, VOCAB, (12,), generator=generator).tolist(),
                          response_ids=[torch.randint(3, VOCAB, (10,), generator=generator).tolist() for _ in range(4)],
                          ranks=[0, 1, 2, 3], index=b) for b in range(3)]


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_sliding_window_shorter_than_a_sequence_gives_the_plain_forwards_log_probs(arch):
    # the window (20) is longer than the layout probe's sequences (18 positions), so the probe accepts the
    # shared layout, but shorter than these lists' prompt + response (22): in the shared layout the
    # window used to be dropped (the block mask goes in as given), and the log-probs differed by ~1e-2
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if arch == "mistral":
        model = MistralForCausalLM(MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                 sliding_window=20))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                             sliding_window=20, max_window_layers=1))
    model.config._attn_implementation = "sdpa"
    model.eval()
    lists = long_lists()
    expected = plain_logps(model, lists)
    full_context = copy.deepcopy(model)
    full_context.config.sliding_window = 4096
    assert max_gap(plain_logps(full_context, lists), expected) > 1e-3  # the window does change the numbers
    for layout, per_row in LAYOUTS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                got = sequence_logps(model, pack_lists(lists, layout=layout, max_tokens_per_row=per_row),
                                     precision="fp32")
        assert max_gap(got, expected) < 1e-4, (layout, per_row)


# ------------------------------------------------------------------------------------------------ reference cache
@pytest.mark.parametrize("change", [{"rope_theta": 10.0}, {"rms_norm_eps": 0.5}, {"hidden_act": "relu"}])
def test_reference_cache_is_not_reused_after_a_config_change_with_the_same_weights(tmp_path, change):
    lists = random_lists(7, count=3)
    before = tiny_causal_lm(VOCAB, hidden_size=32, layers=2, heads=4, seed=0)
    after = tiny_causal_lm(VOCAB, hidden_size=32, layers=2, heads=4, seed=0, **change)
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    expected_before, expected_after = plain_logps(before, lists), plain_logps(after, lists)
    assert max_gap(expected_before, expected_after) > 1e-3
    first = compute_reference_logps(before, lists, cache_dir=tmp_path, progress=False)
    assert max_gap(first, expected_before) < 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second = compute_reference_logps(after, lists, cache_dir=tmp_path, progress=False)
    assert max_gap(second, expected_after) < 1e-4


def test_reference_cache_is_reused_for_the_same_model_saved_and_loaded(tmp_path):
    from transformers import AutoModelForCausalLM

    lists = random_lists(8, count=2)
    model = tiny_causal_lm(VOCAB, hidden_size=32, layers=1, heads=4, seed=0)
    compute_reference_logps(model, lists, cache_dir=tmp_path / "cache", progress=False)
    model.save_pretrained(tmp_path / "model")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert ReferenceCache(tmp_path / "cache").load(reference_cache_key(reloaded, lists), [i.k for i in lists]) is not None


# ------------------------------------------------------------------------------------------------ tokenisation
TEXTS = ["hello world how are you today", "fine thanks and you", "not bad at all really"]


def test_text_that_already_carries_bos_or_eos_gets_no_second_one():
    tokenizer = build_tokenizer(TEXTS * 4, vocab_size=200)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    records = [RankedList(prompt="<bos>hello world", candidates=[" fine<eos>", " not bad"], ranks=[0, 1]),
               RankedList(prompt="hello world", candidates=[" fine", " not bad<eos>"], ranks=[1, 0])]
    lists, _ = tokenize_records(tokenizer, records)
    assert lists[0].prompt_ids == [bos] + encode("hello world")
    assert lists[0].response_ids == [encode(" fine") + [eos], encode(" not bad") + [eos]]
    assert lists[1].prompt_ids == [bos] + encode("hello world")
    assert lists[1].response_ids == [encode(" fine") + [eos], encode(" not bad") + [eos]]


def test_truncation_counts_and_ids_match_the_documented_rule():
    tokenizer = build_tokenizer(TEXTS * 4, vocab_size=200)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    long_prompt = "hello world how are you today " * 3
    records = [RankedList(prompt=long_prompt, candidates=["fine thanks and you " * 2, "ok"], ranks=[0, 1]),
               RankedList(prompt="hi", candidates=["not bad at all really", "fine"], ranks=[1, 0])]
    prompt_limit, response_limit = 5, 4
    lists, report = tokenize_records(tokenizer, records, max_prompt_tokens=prompt_limit,
                                     max_response_tokens=response_limit)
    counts = {"prompts": 0, "prompt_tokens": 0, "responses": 0, "response_tokens": 0}
    for record, item in zip(records, lists):
        prompt = [bos] + encode(record.prompt)
        if len(prompt) > prompt_limit:  # cut on the left, BOS kept
            counts["prompts"] += 1
            counts["prompt_tokens"] += len(prompt) - prompt_limit
            prompt = [bos] + prompt[len(prompt) - (prompt_limit - 1):]
        assert item.prompt_ids == prompt
        for candidate, got in zip(record.candidates, item.response_ids):
            response = encode(candidate) + [eos]
            if len(response) > response_limit:  # cut on the right
                counts["responses"] += 1
                counts["response_tokens"] += len(response) - response_limit
                response = response[:response_limit]
            assert got == response
    assert (report.prompts_truncated, report.prompt_tokens_cut, report.responses_truncated,
            report.response_tokens_cut) == tuple(counts.values())


def test_a_dropped_list_is_not_counted_among_the_kept_unordered_lists():
    tokenizer = build_tokenizer(TEXTS * 4, vocab_size=200)
    tokenizer.eos_token = None  # an empty response stays empty
    records = [RankedList(prompt="hi", candidates=["fine", ""], ranks=[0, 0]),
               RankedList(prompt="hi", candidates=["fine", "ok"], ranks=[0, 0])]
    lists, report = tokenize_records(tokenizer, records, on_empty="drop")
    assert len(lists) == 1 and report.rows_dropped == {"empty_response": 1}
    assert dict(report.unordered_lists) == {"all_tied": 1}


# ------------------------------------------------------------------------------------------------ trainer
PROMPTS = ["Tell me a joke.", "What is 2+2?", "Name a fruit.", "Say hi.", "Pick a colour please.", "Count to three.",
           "Best pet?", "Capital of France?"]
CANDIDATES = [["Why did the chicken cross?", "No.", "Knock knock.", "Ha"], ["4", "Four, of course.", "22"],
              ["Apple", "A banana is a fruit.", "Rock", "Pear"], ["hi", "hello there", "bye"],
              ["red", "blue!", "the colour green", "no"], ["1 2 3", "one, two, three", "3 2 1"],
              ["a dog", "cats", "a rock"], ["Paris", "Lyon", "London, maybe"]]
RANKS = [[0, 1, 1, None], [0, 1, 2], [1, 0, 2, None], [0, 0, 1], [2, 0, 1, None], [0, 1, 2], [0, 0, 0], [0, 1, 2]]
WEIGHTS = [1.0, 2.0, 0.5, 1.0, 1.5, 1.0, 1.0, 3.0]


def records():
    return [RankedList(prompt=p, candidates=c, ranks=r, weight=w) for p, c, r, w in zip(PROMPTS, CANDIDATES, RANKS, WEIGHTS)]


def trainer_setup():
    tokenizer = build_tokenizer(PROMPTS + [c for group in CANDIDATES for c in group], vocab_size=300)
    return tokenizer, lambda seed=0: tiny_causal_lm(len(tokenizer), hidden_size=32, layers=2, heads=2, seed=seed)


def train_config(tmp_path, name, **overrides):
    from rankalign.train import TrainConfig

    values = dict(objective="dpo", batch_size=4, max_steps=2, lr=5e-3, output_dir=str(tmp_path / name), report_to=[],
                  progress=False, loss_params={"beta": 0.5}, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("objective", ["dpo", "pl_dpo"])
def test_gradient_accumulation_gives_the_weights_of_one_big_batch(tmp_path, objective):
    from rankalign.train.trainer import train_preference

    tokenizer, make = trainer_setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        big = train_preference(make(), tokenizer, records(), train_config(tmp_path, "big", objective=objective))
        split = train_preference(make(), tokenizer, records(), train_config(
            tmp_path, "split", objective=objective, batch_size=2, gradient_accumulation=2))
    start = dict(make().named_parameters())
    for (name, a), (_, b) in zip(big.model.named_parameters(), split.model.named_parameters()):
        moved = float((a - start[name]).detach().abs().max())
        assert float((a - b).detach().abs().max()) <= 1e-3 * max(moved, 1e-3), name


def _own_objective(objective, rho, ranks, beta):
    """DPO over strictly ordered pairs (mean) or Plackett-Luce with ties (each tie member against itself and
    the strictly lower groups), as the objectives' docstrings state."""
    order = range(len(rho))
    if objective == "dpo":
        pairs = [(i, j) for i in order for j in order if ranks[i] < ranks[j]]
        if not pairs:
            return 0.0
        return sum(math.log1p(math.exp(-beta * (rho[i] - rho[j]))) for i, j in pairs) / len(pairs)
    loss = 0.0
    for i in order:
        lower = [j for j in order if ranks[j] > ranks[i]]
        if lower:
            loss += math.log1p(sum(math.exp(beta * (rho[j] - rho[i])) for j in lower))
    return loss


@pytest.mark.parametrize("objective", ["dpo", "pl_dpo"])
def test_first_logged_loss_is_the_weighted_objective_of_plain_log_probs(tmp_path, objective):
    from rankalign.train.data import EpochShuffleSampler
    from rankalign.train.trainer import train_preference

    tokenizer, make = trainer_setup()
    policy, reference = make(0), make(7)  # a reference other than the policy: the log-ratios are not 0
    policy_copy, reference_copy = copy.deepcopy(policy), copy.deepcopy(reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train_preference(policy, tokenizer, records(), train_config(tmp_path, "run", objective=objective,
                                                                              max_steps=1), ref_model=reference)
    logged = next(row for row in result.history if "loss" in row)["loss"]

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    total = weight_sum = 0.0
    first_batch = list(EpochShuffleSampler(len(PROMPTS), seed=0))[:4]
    for record in (records()[i] for i in first_batch):
        kept = [i for i, rank in enumerate(record.ranks) if rank is not None]  # unranked candidates left out
        item = TokenizedList(prompt_ids=[tokenizer.bos_token_id] + encode(record.prompt),
                             response_ids=[encode(record.candidates[i]) + [tokenizer.eos_token_id] for i in kept],
                             ranks=[record.ranks[i] for i in kept])
        rho = [p - r for p, r in zip(plain_logps(policy_copy, [item])[0], plain_logps(reference_copy, [item])[0])]
        total += record.weight * _own_objective(objective, rho, item.ranks, 0.5)
        weight_sum += record.weight
    assert logged == pytest.approx(total / weight_sum, abs=1e-5)


def test_pairs_form_keeps_and_counts_the_tied_pairs_of_longer_lists():
    """``data_form: pairs`` used to drop the tied pairs of lists of three or more (``ties=False``), so an
    all-tied list of three vanished without a count, while a tied list of two was kept and counted. Now both
    are kept and counted (``pair_indices``' documented pairs, ties within the best group for best_vs_rest,
    within every group for "all"): best_vs_rest on ranks [0, 0, 0] gives its 3 tied pairs, on [0, 1, 1] the 2
    strict ones; "all" on [0, 1, 1] gives the 2 strict pairs and the tied one."""
    from types import SimpleNamespace

    from rankalign.data import RankedList
    from rankalign.train.data import tokenize_training_data

    tokenizer = build_tokenizer(TEXTS * 4, vocab_size=200)
    records = [RankedList(prompt="p", candidates=["a", "b", "c"], ranks=[0, 0, 0]),
               RankedList(prompt="q", candidates=["d", "e", "f"], ranks=[0, 1, 1]),
               RankedList(prompt="q", candidates=["d", "e"], ranks=[0, 0])]
    config = SimpleNamespace(data_form="pairs", pair_strategy="best_vs_rest", max_prompt_tokens=None,
                             max_response_tokens=None, on_empty="drop")
    lists, report = tokenize_training_data(tokenizer, records, config)
    assert len(lists) == 3 + 2 + 1
    assert report.unordered_lists["all_tied"] == 3 + 1
    config.pair_strategy = "all"
    lists, report = tokenize_training_data(tokenizer, records, config)
    assert len(lists) == 3 + 3 + 1 and report.unordered_lists["all_tied"] == 3 + 1 + 1
