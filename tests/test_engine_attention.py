"""Structured attention for the shared layout (rankalign.engine.attention).

References are computed independently: transformers' own ``sdpa`` attention with the shared layout's block
mask (a dense mask over the whole row), and the duplicated layout (each prompt + response as its own row,
no custom mask at all).
"""

import types

import pytest
import torch

from engine_helpers import random_list
from rankalign.engine import TokenizedList, pack_lists, sequence_logps, supports_shared_layout, tiny_causal_lm
from rankalign.engine.attention import (
    _PLAN,
    IMPLEMENTATION,
    attention_plan,
    structured_attention,
    structured_attention_forward,
    uses_structured_attention,
)

VOCAB = 97


def _lists(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, [3, 9, 1]), (11, [5, 2]), (1, [4]), (4, [2, 6, 3, 5])]  # uneven prompts and responses, K 1-4
    return [random_list(g, p, r, i, vocab=VOCAB, bos=None) for i, (p, r) in enumerate(shapes)]


def _spy(monkeypatch):
    """Count the attention calls that take the structured path (not the masked fallback)."""
    import rankalign.engine.attention as attention

    calls = {"structured": 0, "all": 0}
    original = attention._plain_attention

    def counting(module, plan, query, key, kwargs):
        used = original(module, plan, query, key, kwargs)
        calls["all"] += 1
        calls["structured"] += int(used)
        return used

    monkeypatch.setattr(attention, "_plain_attention", counting)
    return calls


def _assert_same_logps_and_gradients(model, logps, duplicated, seed):
    """The shared layout's log-probs and every parameter gradient (of a random weighting) equal the duplicated's."""
    torch.testing.assert_close(logps, duplicated, atol=1e-4, rtol=1e-5)
    weights = torch.randn(logps.shape, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad((logps * weights).sum(), list(model.parameters()))
    expected = torch.autograd.grad((duplicated * weights).sum(), list(model.parameters()))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def _structured_and_masked(batch, kv_heads, g):
    """Random ``[R, 6, T, 8]`` queries (``kv_heads`` key/value heads) through the structured path and through
    transformers' ``sdpa`` with the batch's block mask: ``(out, reference, (q, k, v))``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows, length = batch.input_ids.shape
    q = torch.randn(rows, 6, length, 8, generator=g, requires_grad=True)
    k = torch.randn(rows, kv_heads, length, 8, generator=g, requires_grad=True)
    v = torch.randn(rows, kv_heads, length, 8, generator=g, requires_grad=True)
    module = types.SimpleNamespace(num_key_value_groups=6 // kv_heads, is_causal=True)
    reference = sdpa_attention_forward(module, q, k, v, batch.attention_mask, scaling=0.3)[0]
    token = _PLAN.set(attention_plan(batch))
    try:
        out = structured_attention_forward(module, q, k, v, batch.attention_mask, scaling=0.3)[0]
    finally:
        _PLAN.reset(token)
    assert out.shape == reference.shape == (rows, length, 6, 8)
    return out, reference, (q, k, v)


def test_plan_indices_by_hand():
    # one list: prompt [a b c], responses [d e] and [f]; second list in its own row: prompt [g], response [h i]
    lists = [TokenizedList(prompt_ids=[10, 11, 12], response_ids=[[13, 14], [15]], ranks=[0, 1]),
             TokenizedList(prompt_ids=[16], response_ids=[[17, 18]], ranks=[0])]
    batch = pack_lists(lists, layout="shared")
    assert batch.input_ids.shape == (2, 6)
    plan = attention_plan(batch)
    # row 1 starts at flat position 6; a short prompt repeats its last token as padding
    assert plan.prompt_index.tolist() == [[0, 1, 2], [6, 6, 6]]
    assert plan.response_index.tolist() == [[3, 4], [5, 5], [7, 8]]
    assert plan.response_list.tolist() == [0, 0, 1]
    # response 0 of list 0: prompt keys 0..2 visible; own keys causal
    assert plan.allowed[0, 0].tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    # the response of list 1: only its prompt's 1 real key
    assert plan.allowed[2, 0].tolist() == [[True, False, False, True, False], [True, False, False, True, True]]
    # every real token once; row 0 has no padding, row 1's positions 9..11 are padding and placed nowhere
    assert sorted(plan.destination.tolist()) == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert attention_plan(pack_lists(lists, layout="duplicated")) is None


@pytest.mark.parametrize("kv_heads", [6, 2])  # plain and grouped-query attention
def test_structured_attention_equals_masked_sdpa_at_every_real_position(kv_heads):
    batch = pack_lists(_lists(), layout="shared", max_tokens_per_row=40)  # several lists per row
    rows, length = batch.input_ids.shape
    assert rows < 4
    g = torch.Generator().manual_seed(3)
    out, reference, (q, k, v) = _structured_and_masked(batch, kv_heads, g)
    real = torch.zeros(rows * length, dtype=torch.bool)
    real[attention_plan(batch).destination] = True
    flat_out, flat_ref = out.reshape(rows * length, -1), reference.reshape(rows * length, -1)
    torch.testing.assert_close(flat_out[real], flat_ref[real], atol=2e-6, rtol=1e-5)
    assert torch.all(flat_out[~real] == 0)
    # gradients through the real positions equal the masked path's
    weight = torch.randn(flat_out[real].shape, generator=g)
    grads = torch.autograd.grad((flat_out[real] * weight).sum(), (q, k, v))
    expected = torch.autograd.grad((flat_ref[real] * weight).sum(), (q, k, v))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_engine_takes_the_structured_path_and_equals_the_duplicated_layout(arch, monkeypatch):
    if arch == "llama":
        model = tiny_causal_lm(VOCAB, heads=4, num_key_value_heads=2, seed=1)
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(1)
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             attn_implementation="sdpa")).eval()
    calls = _spy(monkeypatch)
    assert supports_shared_layout(model)  # the probe's shared half runs through the structured path too
    assert calls["structured"] == calls["all"] == 2
    lists = _lists(5)
    shared = pack_lists(lists, layout="shared", max_tokens_per_row=30)
    logps = sequence_logps(model, shared)
    assert calls["structured"] == calls["all"] == 4  # both layers, structured
    assert model.config._attn_implementation == "sdpa"  # restored after the forward
    duplicated = sequence_logps(model, pack_lists(lists, layout="duplicated"))
    _assert_same_logps_and_gradients(model, logps, duplicated, seed=0)


def test_fallbacks_take_the_masked_path_and_stay_exact(monkeypatch):
    lists = _lists(2)
    batch = pack_lists(lists, layout="shared")
    model = tiny_causal_lm(VOCAB, seed=2)
    expected = sequence_logps(model, pack_lists(lists, layout="duplicated"))
    calls = _spy(monkeypatch)

    model.rankalign_structured_attention = False  # opted out
    torch.testing.assert_close(sequence_logps(model, batch), expected, atol=1e-4, rtol=1e-5)
    assert calls["all"] == 0 and not uses_structured_attention(model.model, batch, enabled=False)
    del model.rankalign_structured_attention

    eager = tiny_causal_lm(VOCAB, seed=2, attn_implementation="eager")  # not sdpa
    assert not uses_structured_attention(eager.model, batch)
    torch.testing.assert_close(sequence_logps(eager, batch), expected, atol=1e-4, rtol=1e-5)

    # recomputation in backward would run outside the plan (the method's name since transformers 5.x)
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    model.train()
    assert not uses_structured_attention(model.model, batch)
    logps = sequence_logps(model, batch)
    logps.sum().backward()
    assert calls["all"] == 0
    torch.testing.assert_close(logps.detach(), expected, atol=1e-4, rtol=1e-5)


def test_a_sliding_window_shorter_than_the_row_takes_the_masked_path():
    import rankalign.engine.attention as attention

    batch = pack_lists(_lists(), layout="shared")
    plan = attention_plan(batch)
    module = types.SimpleNamespace(is_causal=True)
    q = torch.zeros(plan.rows, 4, plan.length, 8)
    assert attention._plain_attention(module, plan, q, q, {})
    assert attention._plain_attention(module, plan, q, q, {"sliding_window": plan.length})
    assert not attention._plain_attention(module, plan, q, q, {"sliding_window": plan.length - 1})
    assert not attention._plain_attention(module, plan, q, q, {"softcap": 30.0})
    assert not attention._plain_attention(module, None, q, q, {})
    assert not attention._plain_attention(module, plan, q[:, :, :-1], q[:, :, :-1], {})  # another length


def test_the_implementation_is_switched_only_inside_the_forward():
    model = tiny_causal_lm(VOCAB, seed=0)
    batch = pack_lists(_lists(), layout="shared")
    with structured_attention(model.model, batch):
        assert model.config._attn_implementation == IMPLEMENTATION
        assert _PLAN.get() is not None
    assert model.config._attn_implementation == "sdpa" and _PLAN.get() is None
    with pytest.raises(RuntimeError), structured_attention(model.model, batch):
        raise RuntimeError("a failing forward restores the implementation too")
    assert model.config._attn_implementation == "sdpa" and _PLAN.get() is None


def _equal_lists(n, prompt=5, k=3, width=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [random_list(g, prompt, [width] * k, i, vocab=VOCAB, bos=None) for i in range(n)]


def test_regular_blocks_are_recognised_only_when_the_lists_lie_end_to_end():
    one_per_row = attention_plan(pack_lists(_equal_lists(3), layout="shared", max_tokens_per_row=17))
    assert (one_per_row.rows, one_per_row.length, one_per_row.regular) == (3, 17, (5, 3, 4))  # 5 + 3 x 4 = 17
    two_per_row = attention_plan(pack_lists(_equal_lists(4), layout="shared", max_tokens_per_row=34))
    assert (two_per_row.rows, two_per_row.length, two_per_row.regular) == (2, 34, (5, 3, 4))
    # padding at the end of the rows, an uneven response, a list with fewer responses: the gather path
    assert attention_plan(pack_lists(_equal_lists(2), layout="shared", pad_to_multiple_of=8)).regular is None
    uneven = _equal_lists(2)
    uneven[1].response_ids[2] = uneven[1].response_ids[2][:3]
    assert attention_plan(pack_lists(uneven, layout="shared")).regular is None
    short = _equal_lists(2)
    short[0] = TokenizedList(prompt_ids=short[0].prompt_ids, response_ids=short[0].response_ids[:2], ranks=[0, 1])
    assert attention_plan(pack_lists(short, layout="shared")).regular is None
    assert attention_plan(pack_lists(_lists(), layout="shared")).regular is None


@pytest.mark.parametrize("kv_heads,per_row", [(6, 1), (2, 1), (2, 2)])
def test_regular_blocks_take_views_and_equal_masked_sdpa(kv_heads, per_row):
    batch = pack_lists(_equal_lists(4, seed=kv_heads), layout="shared", max_tokens_per_row=17 * per_row)
    plan = attention_plan(batch)
    assert plan.regular == (5, 3, 4)
    g = torch.Generator().manual_seed(4)
    out, reference, (q, k, v) = _structured_and_masked(batch, kv_heads, g)
    torch.testing.assert_close(out, reference, atol=2e-6, rtol=1e-5)  # no padding: every position is real
    weight = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v))
    expected = torch.autograd.grad((reference * weight).sum(), (q, k, v))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


def test_engine_on_equal_lists_equals_the_duplicated_layout(monkeypatch):
    import rankalign.engine.attention as attention

    model = tiny_causal_lm(VOCAB, heads=4, num_key_value_heads=2, seed=3)
    regular_calls = []
    original = attention._regular_attention
    monkeypatch.setattr(attention, "_regular_attention",
                        lambda *a, **kw: regular_calls.append(1) or original(*a, **kw))
    lists = _equal_lists(4, seed=9)
    logps = sequence_logps(model, pack_lists(lists, layout="shared", max_tokens_per_row=34))
    assert len(regular_calls) == 2  # both layers took the views
    duplicated = sequence_logps(model, pack_lists(lists, layout="duplicated"))
    _assert_same_logps_and_gradients(model, logps, duplicated, seed=1)
