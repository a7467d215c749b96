"""Exactness of the prefix-shared layout and of the chunked head gather (DESIGN.md, "Engine principles").

The reference everywhere is brute force: the model called like any user would, ``model(prompt +
response).logits``, a full float32 log-softmax over the vocabulary, and the response tokens' entries
summed by hand.
"""

import warnings

import pytest
import torch

from engine_helpers import random_list
from rankalign.engine import (
    TokenizedList,
    gather_token_logps,
    pack_lists,
    sequence_logps,
    supports_shared_layout,
    tiny_causal_lm,
)

VOCAB = 97


def _random_list(generator, prompt_len, response_lens, index=-1):
    return random_list(generator, prompt_len, response_lens, index, vocab=VOCAB)


def _lists():
    g = torch.Generator().manual_seed(1)
    # K = 1..4, different prompt and response lengths (a 1-token prompt, 1-token responses)
    return [
        _random_list(g, 6, [3]),
        _random_list(g, 1, [2, 5]),
        _random_list(g, 9, [4, 1, 7]),
        _random_list(g, 3, [2, 6, 3, 5]),
        _random_list(g, 12, [1, 1]),
    ]


def _brute_force_logps(model, lists):
    """Each (prompt, response) alone through model(...).logits; full log-softmax; sum of target entries."""
    k_max = max(item.k for item in lists)
    out = torch.zeros(len(lists), k_max)
    for b, item in enumerate(lists):
        for k, response in enumerate(item.response_ids):
            ids = torch.tensor([item.prompt_ids + response])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            p = len(item.prompt_ids)
            # token at position p + j is predicted by position p + j - 1
            out[b, k] = sum(logp[p + j - 1, tok] for j, tok in enumerate(response))
    return out


def _grads(model, logps):
    model.zero_grad()
    # a weighted sum so that every response's gradient counts differently
    weights = torch.arange(1, logps.numel() + 1, dtype=torch.float32).view_as(logps)
    (logps * weights).sum().backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_layout_equals_duplicated_and_brute_force(arch, attn):
    model = tiny_causal_lm(VOCAB, arch=arch, attn_implementation=attn)
    lists = _lists()
    with torch.no_grad():
        expected = _brute_force_logps(model, lists)
    shared = sequence_logps(model, pack_lists(lists, layout="shared"))
    duplicated = sequence_logps(model, pack_lists(lists, layout="duplicated"))
    several = sequence_logps(model, pack_lists(lists, layout="shared", max_tokens_per_row=40))
    padded = sequence_logps(model, pack_lists(lists, layout="shared", pad_to_multiple_of=16, pad_token_id=5))
    for got in (shared, duplicated, several, padded):
        torch.testing.assert_close(got.detach(), expected, atol=1e-5, rtol=1e-5)
    # padding cells are exactly 0
    pad = torch.tensor([[item.k <= k for k in range(4)] for item in lists])
    assert (shared.detach()[pad] == 0).all()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shared_layout_gradients_equal_duplicated(arch):
    model = tiny_causal_lm(VOCAB, arch=arch)
    lists = _lists()
    grads_dup = _grads(model, sequence_logps(model, pack_lists(lists, layout="duplicated")))
    grads_shared = _grads(model, sequence_logps(model, pack_lists(lists, layout="shared")))
    grads_rows = _grads(model, sequence_logps(model, pack_lists(lists, layout="shared", max_tokens_per_row=64)))
    assert grads_dup.keys() == grads_shared.keys() == grads_rows.keys()
    assert len(grads_dup) == len(list(model.parameters()))
    for name in grads_dup:
        scale = grads_dup[name].abs().max().clamp_min(1.0)
        torch.testing.assert_close(grads_shared[name] / scale, grads_dup[name] / scale, atol=1e-5, rtol=0,
                                   msg=name)
        torch.testing.assert_close(grads_rows[name] / scale, grads_dup[name] / scale, atol=1e-5, rtol=0,
                                   msg=name)


def test_several_lists_share_a_row_within_the_budget():
    lists = _lists()
    sizes = [item.shared_length for item in lists]   # 9, 8, 21, 19, 14 tokens
    assert sizes == [6 + 3, 1 + 7, 9 + 12, 3 + 16, 12 + 2]
    batch = pack_lists(lists, layout="shared", max_tokens_per_row=24)
    # first fit decreasing: 21 -> row 0 (room 3); 19 -> row 1 (room 5); 14 -> row 2 (room 10);
    # 9 -> row 2 (room 1); 8 -> row 3. Longest row: 14 + 9 = 23 tokens.
    assert batch.input_ids.shape == (4, 23)
    assert batch.num_tokens == sum(sizes)
    # row 2 holds list 4 (prompt 12, responses 1 and 1) then list 0 (prompt 6, response 3) from index 14,
    # each list's positions restarting at 0 and each response's at its prompt's length
    assert batch.position_ids[2].tolist() == list(range(12)) + [12, 12] + list(range(6)) + [6, 7, 8]
    assert batch.input_ids[2, 14:23].tolist() == lists[0].prompt_ids + lists[0].response_ids[0]
    # one list per row without a budget; duplicated rows: one per response
    assert pack_lists(lists).input_ids.shape[0] == 5
    assert pack_lists(lists, layout="duplicated").input_ids.shape[0] == 1 + 2 + 3 + 4 + 2


def test_shared_mask_and_positions_by_hand():
    item = TokenizedList(prompt_ids=[1, 10, 11], response_ids=[[20, 21], [30]], ranks=[0, 1])
    batch = pack_lists([item])
    assert batch.input_ids.tolist() == [[1, 10, 11, 20, 21, 30]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 3]]
    allowed = (batch.attention_mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],   # response 0, token 0: prompt + itself
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 1],   # response 1 does not see response 0
    ]
    # token 20 predicted by position 2 (last prompt token), 21 by 3, 30 also by 2
    assert batch.target_index.tolist() == [2, 3, 2]
    assert batch.target_ids.tolist() == [20, 21, 30]
    assert batch.target_segment.tolist() == [0, 0, 1]
    assert batch.lengths.tolist() == [[2, 1]]


@pytest.mark.parametrize("recompute", [False, True])
def test_chunked_gather_equals_full_log_softmax(recompute):
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True)
    hidden = torch.randn(23, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (23,), generator=g)
    upstream = torch.randn(23, generator=g)

    full = torch.log_softmax(head(hidden), dim=-1)[torch.arange(23), targets]
    expected_grads = torch.autograd.grad((full * upstream).sum(), [hidden, head.weight, head.bias])

    got = gather_token_logps(hidden, head, targets, chunk_size=5, recompute_head=recompute)
    torch.testing.assert_close(got, full.detach(), atol=1e-6, rtol=1e-6)
    grads = torch.autograd.grad((got * upstream).sum(), [hidden, head.weight, head.bias])
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_recomputed_head_in_sequence_logps_matches_autograd():
    model = tiny_causal_lm(VOCAB, arch="llama")
    batch = pack_lists(_lists())
    plain = _grads(model, sequence_logps(model, batch, chunk_size=4, recompute_head=False))
    recomputed = _grads(model, sequence_logps(model, batch, chunk_size=4, recompute_head=True))
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


class _IgnoresCustomMasks(torch.nn.Module):
    """A causal LM wrapper whose forward drops any 4D mask (as models without custom-mask support do)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.base_model_prefix = "decoder"
        self.decoder = _DropMask(inner.model)

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def get_decoder(self):
        return self.decoder


class _DropMask(torch.nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = None  # silently ignored: plain causal attention over the packed row
        return self.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)


def test_model_without_4d_mask_support_falls_back_with_a_warning():
    inner = tiny_causal_lm(VOCAB, arch="llama")
    model = _IgnoresCustomMasks(inner)
    lists = _lists()
    assert supports_shared_layout(inner)
    assert not supports_shared_layout(model)
    with pytest.warns(UserWarning, match="falling back to the duplicated layout"):
        got = sequence_logps(model, pack_lists(lists, layout="shared"))
    with torch.no_grad():
        expected = _brute_force_logps(inner, lists)
    torch.testing.assert_close(got.detach(), expected, atol=1e-5, rtol=1e-5)

    declared = tiny_causal_lm(VOCAB, arch="gpt2")
    declared.rankalign_shared_layout = False
    assert not supports_shared_layout(declared)
    flash = tiny_causal_lm(VOCAB, arch="llama")
    flash.config._attn_implementation = "flash_attention_2"
    assert not supports_shared_layout(flash)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sequence_logps(inner, pack_lists(lists[:1]))  # supported: no warning


def test_logit_soft_capping_path_equals_full_log_softmax():
    # Gemma-2-style cap: logits -> cap * tanh(logits / cap), then the softmax; via the autograd path
    g = torch.Generator().manual_seed(2)
    head = torch.nn.Linear(6, 40, bias=False)
    hidden = torch.randn(11, 6, generator=g) * 4
    targets = torch.randint(0, 40, (11,), generator=g)
    cap = 3.0
    capped = cap * torch.tanh(head(hidden) / cap)
    full = torch.log_softmax(capped, dim=-1)[torch.arange(11), targets]
    got = gather_token_logps(hidden, head, targets, chunk_size=4,
                             transform=lambda z: torch.tanh(z / cap) * cap)
    torch.testing.assert_close(got, full, atol=1e-6, rtol=1e-6)


def test_head_is_applied_only_to_response_positions_in_chunks():
    # record every matmul whose output has the vocabulary as its last dimension
    from torch.utils._python_dispatch import TorchDispatchMode

    class RecordVocabMatmuls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.rows = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm) and out.shape[-1] == VOCAB:
                self.rows.append(out.shape[0])
            return out

    model = tiny_causal_lm(VOCAB, arch="llama")
    lists = _lists()
    batch = pack_lists(lists)
    response_tokens = sum(len(r) for item in lists for r in item.response_ids)   # 3+7+12+16+2 = 40
    assert response_tokens == 40 and batch.input_ids.numel() > 40
    assert supports_shared_layout(model)  # the one-off layout probe runs here, outside the recording
    with torch.no_grad(), RecordVocabMatmuls() as recorder:
        sequence_logps(model, batch, chunk_size=16)
    assert recorder.rows == [16, 16, 8]   # 40 response positions, in chunks of 16; no prompt or padding rows


@pytest.mark.slow  # a gloo process group inside the test process: kept out of the default suite
def test_ddp_wrapped_model_runs_through_the_wrapper(tmp_path):
    import gc

    import torch.distributed as dist

    model = tiny_causal_lm(VOCAB, arch="gpt2")
    batch = pack_lists(_lists())
    expected = _grads(model, sequence_logps(model, batch))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        calls = []
        wrapped.register_forward_pre_hook(lambda *args: calls.append(1))
        got = _grads(model, sequence_logps(wrapped, batch))
        assert calls == [1]                        # DDP saw the forward call
        assert "forward" not in model.__dict__      # and the inner forward was restored
    finally:
        # free the DDP reducer (which holds the process group) *before* the group is destroyed: freed
        # afterwards, the gloo group's destructor can deadlock joining its worker threads
        wrapped = None
        gc.collect()
        dist.destroy_process_group()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-6)


def test_sequence_longer_than_the_position_range_is_an_error():
    model = tiny_causal_lm(VOCAB, arch="gpt2", n_positions=16)
    # prompt 9 + longest response 7 = 16 fits; 17 does not (the shared row itself may be longer)
    fits = TokenizedList(prompt_ids=[1] * 9, response_ids=[[5] * 7, [6] * 7], ranks=[0, 1], index=0)
    assert fits.shared_length == 23
    sequence_logps(model, pack_lists([fits]))
    too_long = TokenizedList(prompt_ids=[1] * 10, response_ids=[[5] * 7], ranks=[0], index=3)
    with pytest.raises(ValueError, match="list 3: prompt \\+ response is 17 tokens"):
        sequence_logps(model, pack_lists([fits, too_long]))


@pytest.mark.parametrize("seed", range(4))
def test_random_batches_shared_equals_duplicated(seed):
    # random K, prompt and response lengths and row budgets; the duplicated layout is the reference
    g = torch.Generator().manual_seed(100 + seed)
    model = tiny_causal_lm(VOCAB, arch="llama" if seed % 2 else "gpt2", hidden_size=32, seed=seed)
    lists = [_random_list(g, int(torch.randint(1, 10, (1,), generator=g)),
                          torch.randint(1, 8, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist(),
                          index=i)
             for i in range(int(torch.randint(1, 7, (1,), generator=g)))]
    budget = int(torch.randint(10, 60, (1,), generator=g))
    with torch.no_grad():
        expected = sequence_logps(model, pack_lists(lists, layout="duplicated"))
        got = sequence_logps(model, pack_lists(lists, layout="shared", max_tokens_per_row=budget))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_block_filled_mask_equals_the_id_comparison_definition():
    # pack_lists fills the mask block by block; block_attention_mask states the rule on token ids.
    from rankalign.engine import block_attention_mask
    from rankalign.engine.packing import _assign_rows

    lists = _lists()
    batch = pack_lists(lists, max_tokens_per_row=30, pad_to_multiple_of=8)
    rows, length = _assign_rows(lists, 30), batch.input_ids.shape[1]
    group = torch.full((len(rows), length), -1)
    segment = torch.full((len(rows), length), -1)
    for r, row in enumerate(rows):
        t = 0
        for slot, b in enumerate(row):
            for s, piece in enumerate([lists[b].prompt_ids, *lists[b].response_ids]):
                group[r, t:t + len(piece)] = slot
                segment[r, t:t + len(piece)] = s
                t += len(piece)
    assert torch.equal(batch.attention_mask, block_attention_mask(group, segment))


def test_accelerate_mixed_precision_autocast_is_honoured(monkeypatch):
    # accelerate marks a model whose forward it wrapped in autocast with `_original_forward`
    from rankalign.engine import logps as logps_module

    model = tiny_causal_lm(VOCAB, arch="llama")
    batch = pack_lists(_lists())
    with torch.no_grad():
        full_precision = sequence_logps(model, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = sequence_logps(model, batch)
    assert (expected - full_precision).abs().max() > 1e-4   # bf16 visibly changes the numbers
    model._original_forward = model.forward
    monkeypatch.setattr(logps_module, "_accelerate_mixed_precision", lambda: "bf16")
    with torch.no_grad():
        got = sequence_logps(model, batch)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    monkeypatch.setattr(logps_module, "_accelerate_mixed_precision", lambda: "no")
    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(model, batch), full_precision, atol=0, rtol=0)


# ------------------------------------------------------------------------------ distributed wrappers
def test_head_weight_is_read_inside_the_heads_own_forward():
    # ZeRO-3 and FSDP2 hold a sharded weight outside a module's forward and gather it in a forward
    # pre-hook; here the head's weight exists only between its pre- and post-forward hooks (an empty
    # placeholder otherwise), and log-probs and gradients must be the plain model's
    model = tiny_causal_lm(VOCAB)
    batch = pack_lists(_lists())
    expected_logps = sequence_logps(model, batch)
    expected = _grads(model, expected_logps)
    head = model.lm_head
    real = head.weight
    placeholder = torch.nn.Parameter(torch.empty(0), requires_grad=False)
    calls = []

    def gather(module, args):
        calls.append(tuple(a.shape for a in args))
        module.weight = real

    def release(module, args, output):
        module.weight = placeholder

    head.weight = placeholder
    head.register_forward_pre_hook(gather)
    head.register_forward_hook(release)
    model.zero_grad()
    real.grad = None
    logps = sequence_logps(model, batch)
    torch.testing.assert_close(logps, expected_logps, atol=0, rtol=0)
    weights = torch.arange(1, logps.numel() + 1, dtype=torch.float32).view_as(logps)
    (logps * weights).sum().backward()
    hidden_size = model.config.hidden_size
    assert calls == [(torch.Size([batch.target_ids.numel(), hidden_size]), batch.target_ids.shape)]  # one call
    torch.testing.assert_close(real.grad, expected["lm_head.weight"], atol=1e-6, rtol=1e-6)
    for name, parameter in model.named_parameters():
        if name != "lm_head.weight":
            torch.testing.assert_close(parameter.grad, expected[name], atol=1e-6, rtol=1e-6)


class _UnknownWrapper(torch.nn.Module):
    """A wrapper the split forward does not know (as DataParallel or FSDP1 would be)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_unknown_wrapper_falls_back_to_the_models_own_forward_with_one_warning():
    from rankalign.engine import distributed_backend

    model = tiny_causal_lm(VOCAB)
    batch = pack_lists(_lists())
    expected = _grads(model, sequence_logps(model, batch))
    wrapped = _UnknownWrapper(model)
    assert distributed_backend(model) == ("none", None)
    assert distributed_backend(wrapped) == ("wrapper:_UnknownWrapper", wrapped)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got_logps = sequence_logps(wrapped, batch)
        sequence_logps(wrapped, batch)  # said once per model
    messages = [str(w.message) for w in caught if "split forward" in str(w.message)]
    assert len(messages) == 1 and "wrapper:_UnknownWrapper" in messages[0] and "own forward" in messages[0]
    torch.testing.assert_close(got_logps, sequence_logps(model, batch), atol=1e-5, rtol=1e-5)
    got = _grads(model, got_logps)
    for name in expected:  # the full-vocabulary log-softmax sums in another order: float32 rounding, up to ~1.3e-5
        torch.testing.assert_close(got[name], expected[name], atol=5e-5, rtol=1e-4)
