"""The vLLM backend, against a stand-in ``vllm`` package (no GPU here).

The stand-in implements the part of vLLM's API the backend uses (``LLM(model=folder, ...)``,
``LLM.generate`` with ``SamplingParams(n=K, logprobs=0, ...)`` returning request outputs whose completions
carry ``index``, ``token_ids``, ``logprobs`` and ``finish_reason``, the in-process model's ``load_weights``
and ``reset_prefix_cache``) on top of a transformers model loaded from the folder. What it checks is
rankalign's side: the checkpoint vLLM starts from loads, the weights reach vLLM under the names a plain
model has (PEFT included) before every round, and vLLM's outputs become the same ``SampledGroups``.
"""

import sys
import types

import pytest
import torch

from online_helpers import one_thread  # noqa: F401  (autouse fixture)
from rankalign.engine import tiny_causal_lm
from rankalign.online import sample_groups, vllm_backend
from rankalign.online.vllm_backend import VLLMSampler, policy_weights, save_for_vllm


class _Logprob:
    def __init__(self, logprob):
        self.logprob = logprob


class _Runner:
    """vLLM's in-process model: ``load_weights`` takes (name, tensor) pairs under checkpoint names."""

    def __init__(self, model):
        self.model = model
        self.loads = 0

    def load_weights(self, weights):
        state = dict(weights)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        assert not unexpected, unexpected
        assert not [m for m in missing if m != "lm_head.weight"], missing  # tied head: the embedding's
        self.loads += 1


class FakeLLM:
    instances = []

    def __init__(self, model, **kwargs):
        from transformers import AutoModelForCausalLM

        self.kwargs = kwargs
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        runner = _Runner(self.model)
        worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=runner))
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(
            driver_worker=types.SimpleNamespace(worker=worker)))
        self.runner = runner
        self.resets = 0
        self.params = []
        FakeLLM.instances.append(self)

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, requests, params, use_tqdm=True):
        per_request = params if isinstance(params, list) else [params] * len(requests)
        assert len(per_request) == len(requests)
        self.params.append(per_request)
        outputs = []
        for request, params in zip(requests, per_request):
            assert params.ignore_eos or not params.stop_token_ids  # no stop but the given one
            eos = params.stop_token_ids[0] if params.stop_token_ids else None
            groups = sample_groups(self.model, [request["prompt_token_ids"]], params.n, max_new_tokens=params.max_tokens,
                                   temperature=params.temperature, top_p=params.top_p, eos_token_id=eos,
                                   seed=params.seed)
            samples = []
            for index in reversed(range(params.n)):  # out of order: the backend sorts by index
                tokens, logps = groups.completion_ids[0][index], groups.token_logps[0][index]
                samples.append(types.SimpleNamespace(
                    index=index, token_ids=tuple(tokens), logprobs=[{t: _Logprob(lp)} for t, lp in zip(tokens, logps)],
                    finish_reason="stop" if groups.finished[0][index] else "length"))
            outputs.append(types.SimpleNamespace(prompt_token_ids=request["prompt_token_ids"], outputs=samples))
        return outputs


# vllm.SamplingParams's fields (vLLM 0.6-0.11 documentation); an argument outside them is a misuse
SAMPLING_FIELDS = {"n", "best_of", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature",
                   "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "bad_words", "ignore_eos",
                   "max_tokens", "min_tokens", "logprobs", "prompt_logprobs", "detokenize", "skip_special_tokens",
                   "spaces_between_special_tokens", "include_stop_str_in_output", "logits_processors",
                   "truncate_prompt_tokens", "output_kind", "guided_decoding", "logit_bias", "allowed_token_ids",
                   "extra_args"}


class FakeSamplingParams:
    def __init__(self, **kwargs):
        unknown = set(kwargs) - SAMPLING_FIELDS
        assert not unknown, f"not SamplingParams fields: {unknown}"
        self.__dict__.update(kwargs)


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(vllm_backend, "vllm_available", lambda: True)  # as if a GPU were here
    FakeLLM.instances = []
    return module


PROMPTS = [[1, 5, 6, 7], [1, 9], [1, 10, 11, 12, 13, 14]]


def test_without_vllm_the_sampler_says_so():
    if "vllm" not in sys.modules and not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="vllm package and a CUDA device"):
            VLLMSampler("anything")


def test_vllm_outputs_become_sampled_groups_in_sample_order(tmp_path, fake_vllm):
    model = tiny_causal_lm(60, seed=1)
    sampler = VLLMSampler(save_for_vllm(model, tmp_path / "start"), gpu_memory_utilization=0.5)
    llm = FakeLLM.instances[-1]
    assert llm.kwargs["enable_prefix_caching"] and llm.kwargs["skip_tokenizer_init"]
    assert llm.kwargs["gpu_memory_utilization"] == 0.5
    for name, tensor in model.state_dict().items():  # the saved checkpoint is the model's
        torch.testing.assert_close(llm.model.state_dict()[name], tensor, msg=name)
    groups = sampler.sample(PROMPTS, 3, max_new_tokens=6, eos_token_id=2, seed=4, temperature=1.0)
    requests = llm.params[-1]
    seeds = [params.seed for params in requests]
    assert seeds == vllm_backend.request_seeds(4, 3) and len(set(seeds)) == 3  # one stream per prompt
    for params in requests:
        assert (params.n, params.max_tokens, params.logprobs, params.stop_token_ids) == (3, 6, 0, [2])
        assert params.ignore_eos is True and params.detokenize is False
    assert groups.decoder == "vllm" and groups.k == 3 and groups.prompt_ids == PROMPTS
    for prompt, group, group_logps, group_finished, seed in zip(PROMPTS, groups.completion_ids, groups.token_logps,
                                                                groups.finished, seeds):
        expected = sample_groups(model, [prompt], 3, max_new_tokens=6, eos_token_id=2, seed=seed)
        assert group == expected.completion_ids[0]  # in index order, as sampled
        for got, want in zip(group_logps, expected.token_logps[0]):
            assert got == pytest.approx(want, abs=1e-6)
        assert group_finished == [bool(c) and c[-1] == 2 for c in group]


def test_sync_sends_the_current_weights_and_clears_the_prefix_cache(tmp_path, fake_vllm):
    model = tiny_causal_lm(60, seed=1)
    sampler = VLLMSampler(save_for_vllm(model, tmp_path / "start"))
    llm = FakeLLM.instances[-1]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1)
    sampler.sync(model)
    assert llm.runner.loads == 1 and llm.resets == 1
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(llm.model.state_dict()[name], tensor, msg=name)


def test_peft_weights_reach_vllm_merged_under_plain_names(tmp_path, fake_vllm):
    from peft import LoraConfig, get_peft_model

    plain = tiny_causal_lm(60, seed=1)
    adapted = get_peft_model(tiny_causal_lm(60, seed=1), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # a non-zero adapter, so that merging matters
    assert sorted(name for name, _ in policy_weights(adapted)) == sorted(plain.state_dict())
    sampler = VLLMSampler(save_for_vllm(adapted, tmp_path / "start"))
    sampler.sync(adapted)
    llm = FakeLLM.instances[-1]
    ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
        got = llm.model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not any(getattr(m, "merged", False) for m in adapted.modules())  # unmerged again after the copy


def test_a_module_trained_in_full_reaches_vllm_under_its_plain_name():
    """PEFT's ``modules_to_save`` copy (trained) replaces the frozen original under the plain name."""
    from peft import LoraConfig, get_peft_model

    plain = tiny_causal_lm(60, seed=1)
    adapted = get_peft_model(tiny_causal_lm(60, seed=1),
                             LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["post_attention_layernorm"]))
    trained = [m for name, m in adapted.named_modules() if name.endswith("modules_to_save.default")]
    assert trained
    with torch.no_grad():
        for module in trained:
            module.weight.fill_(3.0)
    weights = dict(policy_weights(adapted))
    assert sorted(weights) == sorted(plain.state_dict())
    assert torch.equal(weights["model.layers.0.post_attention_layernorm.weight"], torch.full_like(
        plain.state_dict()["model.layers.0.post_attention_layernorm.weight"], 3.0))


def test_request_seeds_are_spread():
    seeds = [s for base in range(5) for s in vllm_backend.request_seeds(base, 8)]
    assert len(set(seeds)) == 40 and all(0 <= s < 2**31 for s in seeds)
    assert vllm_backend.request_seeds(None, 2) == [None, None]
    assert vllm_backend.request_seeds(7, 3) == vllm_backend.request_seeds(7, 3)


def test_online_rounds_sample_through_vllm_with_the_policy_of_each_round(tmp_path, fake_vllm):
    from rankalign.online import run_online
    from rankalign.sim.text_world import build_text_tokenizer, gold_judge, make_text_world
    from rankalign.train import OnlineConfig, TrainConfig

    tokenizer = build_text_tokenizer()
    model = tiny_causal_lm(len(tokenizer), hidden_size=32, layers=1, heads=2, seed=5)
    config = TrainConfig(model="tiny:llama", objective="pl_dpo", loss_params={"beta": 0.5}, batch_size=4, epochs=1,
                         lr=0.01, seed=3, output_dir=str(tmp_path / "run"), save_steps=0, report_to=[],
                         progress=False, bf16=False)
    settings = OnlineConfig(enabled=True, rounds=2, k=4, max_new_tokens=8, prompts_per_round=6, backend="vllm",
                            vllm_options={"gpu_memory_utilization": 0.4})
    synced = []
    original_sync = VLLMSampler.sync

    def sync(self, policy):
        synced.append({name: tensor.clone() for name, tensor in policy.state_dict().items()})
        original_sync(self, policy)

    VLLMSampler.sync = sync
    try:
        result = run_online(model, tokenizer, list(make_text_world().prompts), gold_judge(), config, settings)
    finally:
        VLLMSampler.sync = original_sync
    assert [s["round"] for s in result.rounds] == [0, 1]
    assert len(FakeLLM.instances) == 1 and FakeLLM.instances[0].kwargs["gpu_memory_utilization"] == 0.4
    llm = FakeLLM.instances[0]
    assert llm.runner.loads == 2 and len(llm.params) == 2  # the weights copied before each round's sampling
    assert [[p.seed for p in call] for call in llm.params] == [vllm_backend.request_seeds(3 * 100_003 + r, 6)
                                                              for r in range(2)]
    from safetensors.torch import load_file

    after_round_0 = load_file(str(tmp_path / "run" / "round_000" / "policy" / "model.safetensors"))
    for name, tensor in after_round_0.items():  # round 1 sampled from the policy round 0 trained
        torch.testing.assert_close(synced[1][name], tensor, msg=name)
    assert any(not torch.equal(synced[0][n], synced[1][n]) for n in after_round_0)


def test_an_online_run_asking_for_vllm_without_it_is_a_config_error(tmp_path, monkeypatch):
    from rankalign.online import run_online
    from rankalign.sim.text_world import build_text_tokenizer, gold_judge, make_text_world
    from rankalign.train import OnlineConfig, TrainConfig
    from rankalign.train.config import ConfigError

    monkeypatch.setattr(vllm_backend, "vllm_available", lambda: False)
    tokenizer = build_text_tokenizer()
    model = tiny_causal_lm(len(tokenizer), hidden_size=32, layers=1, heads=2, seed=5)
    config = TrainConfig(model="tiny:llama", objective="pl_dpo", output_dir=str(tmp_path / "run"), report_to=[],
                         progress=False, bf16=False)
    with pytest.raises(ConfigError, match="needs the vllm package and a CUDA device"):
        run_online(model, tokenizer, list(make_text_world().prompts), gold_judge(), config,
                   OnlineConfig(enabled=True, rounds=1, backend="vllm"))
    assert not (tmp_path / "run" / "round_000").exists()


def test_the_backend_option_is_validated():
    from rankalign.train import OnlineConfig
    from rankalign.train.config import ConfigError

    with pytest.raises(ConfigError, match="backend"):
        OnlineConfig(enabled=True, backend="sglang").validate()
    with pytest.raises(ConfigError, match="vllm_options must be a mapping"):
        OnlineConfig(enabled=True, backend="vllm", vllm_options=["gpu_memory_utilization", 0.3]).validate()


def test_policy_gradient_steps_sample_through_a_given_sampler(tmp_path, fake_vllm):
    from rankalign.online import run_policy_gradient
    from rankalign.sim.text_world import build_text_tokenizer, gold_judge, make_text_world

    tokenizer = build_text_tokenizer()
    model = tiny_causal_lm(len(tokenizer), hidden_size=32, layers=1, heads=2, seed=5)
    sampler = VLLMSampler(save_for_vllm(model, tmp_path / "start"))
    history = run_policy_gradient(model, tokenizer, list(make_text_world().prompts), gold_judge(), objective="grpo",
                                  steps=2, prompts_per_step=2, k=4, lr=0.05, max_new_tokens=6, seed=2,
                                  sampler=sampler)
    llm = FakeLLM.instances[-1]
    assert [row["step"] for row in history] == [0, 1]
    assert llm.runner.loads == 2
    assert [[p.seed for p in call] for call in llm.params] == [vllm_backend.request_seeds(2 * 100_003 + s, 2)
                                                              for s in range(2)]
