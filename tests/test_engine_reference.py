"""Reference log-probs: values, cache hit/miss/stale/corrupt detection, atomic files, PEFT base model."""

import json
import os

import pytest
import torch

from rankalign.engine import (
    ReferenceCache,
    TokenizedList,
    compute_reference_logps,
    pack_lists,
    peft_reference_logps,
    reference_cache_key,
    sequence_logps,
    tiny_causal_lm,
)

VOCAB = 61


def _lists(n=7, seed=3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        k = 1 + i % 4
        prompt = [1] + torch.randint(4, VOCAB, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        responses = [torch.randint(4, VOCAB, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
                     for _ in range(k)]
        out.append(TokenizedList(prompt_ids=prompt, response_ids=responses, ranks=list(range(k)), index=i))
    return out


def _brute_force(model, item):
    """log pi(response | prompt) for each response by a plain forward and a full log-softmax."""
    values = []
    with torch.no_grad():
        for response in item.response_ids:
            logp = torch.log_softmax(model(input_ids=torch.tensor([item.prompt_ids + response])).logits[0], -1)
            p = len(item.prompt_ids)
            values.append(sum(float(logp[p + j - 1, t]) for j, t in enumerate(response)))
    return torch.tensor(values)


class _CountForwards:
    def __init__(self, model):
        self.calls = 0
        model.model.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1


def test_values_match_brute_force_in_input_order():
    model = tiny_causal_lm(VOCAB)
    lists = _lists()
    got = compute_reference_logps(model, lists, batch_size=3, progress=False)
    assert [t.shape[0] for t in got] == [item.k for item in lists]
    for item, value in zip(lists, got):
        torch.testing.assert_close(value, _brute_force(model, item), atol=1e-5, rtol=1e-5)
    assert model.training is False


def test_cache_hit_miss_and_stale(tmp_path, recwarn):
    model = tiny_causal_lm(VOCAB)
    lists = _lists()
    counter = _CountForwards(model)
    first = compute_reference_logps(model, lists, batch_size=4, cache_dir=tmp_path, progress=False)
    computed_calls = counter.calls
    assert computed_calls >= 2  # 7 lists in batches of 4 (+ the layout probe)
    assert (tmp_path / "reference_logps.safetensors").exists() and (tmp_path / "reference_logps.json").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert not recwarn.list  # a first miss is silent

    again = compute_reference_logps(model, lists, batch_size=4, cache_dir=tmp_path, progress=False)
    assert counter.calls == computed_calls  # hit: the model was not run
    for a, b in zip(first, again):
        assert torch.equal(a, b)

    # other weights: the key changes, the cache is reported stale and recomputed
    with torch.no_grad():
        model.lm_head.weight[5, 0] += 1.0
    with pytest.warns(UserWarning, match="stale key"):
        changed = compute_reference_logps(model, lists, batch_size=4, cache_dir=tmp_path, progress=False)
    assert counter.calls > computed_calls
    torch.testing.assert_close(changed[0], _brute_force(model, lists[0]), atol=1e-5, rtol=1e-5)

    # other settings, other data: stale too
    with pytest.warns(UserWarning, match="stale key"):
        compute_reference_logps(model, lists, cache_dir=tmp_path, progress=False, settings={"dtype": "bf16"})
    with pytest.warns(UserWarning, match="stale key"):
        compute_reference_logps(model, lists[:5], cache_dir=tmp_path, progress=False, settings={"dtype": "bf16"})


def test_key_covers_weights_tokenizer_data_and_settings():
    from rankalign.engine import build_tokenizer

    model = tiny_causal_lm(VOCAB)
    lists = _lists()
    base = reference_cache_key(model, lists)
    assert base == reference_cache_key(tiny_causal_lm(VOCAB), _lists())  # same seed, same data
    assert base != reference_cache_key(tiny_causal_lm(VOCAB, seed=1), lists)
    edited = list(lists)
    edited[2] = TokenizedList(prompt_ids=lists[2].prompt_ids, response_ids=[lists[2].response_ids[0] + [7]]
                              + lists[2].response_ids[1:], ranks=lists[2].ranks, index=2)
    assert base != reference_cache_key(model, edited)
    assert base != reference_cache_key(model, lists, settings={"a": 1})
    tok_a = build_tokenizer(["a b c"], kind="word")
    tok_b = build_tokenizer(["a b d"], kind="word")
    assert reference_cache_key(model, lists, tokenizer=tok_a) != reference_cache_key(model, lists, tokenizer=tok_b)


def test_corrupt_or_mismatched_cache_is_detected(tmp_path):
    model = tiny_causal_lm(VOCAB)
    lists = _lists()
    expected = compute_reference_logps(model, lists, cache_dir=tmp_path, progress=False)
    cache = ReferenceCache(tmp_path)
    key = reference_cache_key(model, lists)
    ks = [item.k for item in lists]
    assert cache.load(key, ks) is not None

    assert cache.load(key, ks[:-1]) is None and cache.last_miss_reason.startswith("list count")
    assert cache.load(key, [k + 1 for k in ks]) is None and cache.last_miss_reason == "responses per list differ"
    assert cache.load("0" * 64, ks) is None and cache.last_miss_reason.startswith("stale key")

    path = tmp_path / "reference_logps.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # flip bits inside the stored numbers
    path.write_bytes(bytes(raw))
    assert cache.load(key, ks) is None and cache.last_miss_reason.startswith("corrupt tensor file")
    with pytest.warns(UserWarning, match="corrupt tensor file"):
        recomputed = compute_reference_logps(model, lists, cache_dir=tmp_path, progress=False)
    for a, b in zip(recomputed, expected):
        torch.testing.assert_close(a, b)
    assert cache.load(key, ks) is not None  # rewritten

    (tmp_path / "reference_logps.json").write_text("{not json")
    assert cache.load(key, ks) is None and cache.last_miss_reason.startswith("corrupt manifest")
    manifest = {"format": 1, "key": key, "num_lists": len(ks), "ks": ks, "sha256": "x"}
    (tmp_path / "reference_logps.json").write_text(json.dumps(manifest))
    assert cache.load(key, ks) is None and "sha256" in cache.last_miss_reason


def test_peft_reference_is_the_base_model():
    peft = pytest.importorskip("peft")
    model = tiny_causal_lm(VOCAB)
    lists = _lists(4)
    batch = pack_lists(lists)
    with torch.no_grad():
        base_logps = sequence_logps(model, batch)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = peft.get_peft_model(model, config)
    with torch.no_grad():
        adapted = sequence_logps(wrapped, batch)
    assert (adapted - base_logps).abs().max() > 1e-3  # the adapter changes the policy
    reference = peft_reference_logps(wrapped, batch)
    torch.testing.assert_close(reference, base_logps, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(wrapped, batch), adapted)  # adapter back on
    with pytest.raises(TypeError):
        peft_reference_logps(tiny_causal_lm(VOCAB), batch)
