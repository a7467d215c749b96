"""PreferenceTrainer / train_preference on a tiny Llama-style model (fast tests).

Expected values are derived independently: the DPO loss at the start of training (policy = reference,
so every log-ratio is 0) is log 2 by hand; gradients are checked against a brute-force loss written
here with a plain forward pass per (prompt + response) and a full log-softmax.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankalign.engine import TokenizedList, tiny_causal_lm  # noqa: E402
from rankalign.train import TrainConfig  # noqa: E402
from rankalign.train.callbacks import last_complete_checkpoint  # noqa: E402
from rankalign.train.trainer import train_preference  # noqa: E402

VOCAB = 48


def toy_lists(n=8, k=2, seed=0, weights=None):
    generator = torch.Generator().manual_seed(seed)

    def ids(length):
        return torch.randint(3, VOCAB, (length,), generator=generator).tolist()

    out = []
    for i in range(n):
        prompt = ids(int(torch.randint(3, 7, (1,), generator=generator)))
        responses = [ids(int(torch.randint(2, 5, (1,), generator=generator))) + [2] for _ in range(k)]
        out.append(TokenizedList(prompt_ids=prompt, response_ids=responses, ranks=list(range(k)),
                                 weight=1.0 if weights is None else weights[i], index=i))
    return out


def tiny_model(seed=0):
    return tiny_causal_lm(VOCAB, hidden_size=32, layers=1, heads=2, seed=seed)


def config(tmp_path, name="run", **overrides):
    values = dict(objective="dpo", batch_size=4, max_steps=2, lr=1e-2, output_dir=str(tmp_path / name),
                  report_to=[], progress=False, loss_params={"beta": 0.5}, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def losses_of(result):
    return [row["loss"] for row in result.history if "loss" in row]


def brute_force_logp(model, prompt, response):
    """log pi(response | prompt) with the whole prompt + response in one row and a full log-softmax."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(prompt)
    return sum(logprobs[start - 1 + t, token] for t, token in enumerate(response))


def test_first_loss_is_log2_and_training_reduces_it(tmp_path):
    lists = toy_lists(n=4)
    result = train_preference(tiny_model(), None, lists, config(tmp_path, max_steps=8, lr=3e-2))
    losses = losses_of(result)
    # policy == reference before the first update: every rho is 0, DPO = -log sigmoid(0) = log 2
    assert losses[0] == pytest.approx(math.log(2.0), abs=1e-6)
    assert losses[-1] < 0.5 * math.log(2.0)
    first = result.history[0]
    assert first["kl_per_token"] == pytest.approx(0.0, abs=1e-6)
    assert first["rewards/margin"] == pytest.approx(0.0, abs=1e-6)


def test_metrics_file_has_one_line_per_step(tmp_path):
    cfg = config(tmp_path, max_steps=3, batch_size=2)
    train_preference(tiny_model(), None, toy_lists(n=6, k=3), cfg)
    rows = [json.loads(line) for line in open(os.path.join(cfg.output_dir, "metrics.jsonl"))]
    steps = [row["step"] for row in rows if "loss" in row]
    assert steps == [1, 2, 3]
    for row in rows:
        if "loss" not in row:
            continue
        for key in ("rewards/margin", "rewards/accuracy", "ranking_accuracy", "kl_per_token", "tokens",
                    "tokens_per_second"):
            assert key in row and math.isfinite(row[key])
        assert 0.0 <= row["rewards/accuracy"] <= 1.0
    # tokens of a step: each list's prompt once plus its responses (shared layout), counted by hand
    lists = toy_lists(n=6, k=3)
    total = sum(len(t.prompt_ids) + sum(len(r) for r in t.response_ids) for t in lists)
    assert sum(row["tokens"] for row in rows if "loss" in row) == total


def _sgd_step_delta(tmp_path, name, lists, batch_size, accumulation):
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = config(tmp_path, name, max_steps=1, batch_size=batch_size, gradient_accumulation=accumulation,
                 optimizer="sgd", lr=1.0, max_grad_norm=0.0)
    result = train_preference(model, None, lists, cfg)
    return {n: p.detach() - before[n] for n, p in result.model.named_parameters()}, losses_of(result)[0]


def test_gradient_accumulation_in_lists_equals_the_big_batch_and_brute_force(tmp_path):
    weights = [1.0, 2.0, 0.5, 3.0]
    lists = toy_lists(n=4, weights=weights)
    big, big_loss = _sgd_step_delta(tmp_path, "big", lists, batch_size=4, accumulation=1)
    small, small_loss = _sgd_step_delta(tmp_path, "accumulated", lists, batch_size=1, accumulation=4)
    assert small_loss == pytest.approx(big_loss, abs=1e-6)
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-4, atol=1e-6)

    # brute force: L = sum_i w_i * -log sigmoid(beta * (rho_w - rho_l)) / sum_i w_i, one SGD step at lr 1
    model, reference = tiny_model(), tiny_model()
    beta = 0.5
    total = 0.0
    for item in lists:
        rho = [brute_force_logp(model, item.prompt_ids, r) - brute_force_logp(reference, item.prompt_ids, r).detach()
               for r in item.response_ids]
        total = total + item.weight * -torch.nn.functional.logsigmoid(beta * (rho[0] - rho[1]))
    loss = total / sum(weights)
    loss.backward()
    assert big_loss == pytest.approx(math.log(2.0), abs=1e-6)  # rho = 0 at the start
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(big[name], -parameter.grad.float(), rtol=1e-3, atol=1e-6)


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path):
    lists = toy_lists(n=8)
    common = dict(max_steps=4, batch_size=2, save_steps=2, save_total_limit=None, lr=3e-2)
    full = train_preference(tiny_model(), None, lists, config(tmp_path, "full", **common))

    cfg = config(tmp_path, "killed", **common)
    train_preference(tiny_model(), None, lists, cfg)
    # as if killed right after checkpoint-2: later checkpoints and the final state never happened
    shutil.rmtree(os.path.join(cfg.output_dir, "checkpoint-4"))
    assert last_complete_checkpoint(cfg.output_dir).endswith("checkpoint-2")
    resumed = train_preference(tiny_model(), None, lists, cfg, resume_from_checkpoint=True)

    # the resumed history carries the checkpoint's logs (steps 1-2) and continues with steps 3-4
    assert losses_of(resumed) == pytest.approx(losses_of(full), abs=1e-6)
    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    rows = [json.loads(line) for line in open(os.path.join(cfg.output_dir, "metrics.jsonl"))]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4]


@pytest.mark.parametrize("objective", ["pl_dpo", "lipo_lambda"])
def test_listwise_objectives_train(tmp_path, objective):
    lists = [TokenizedList(prompt_ids=t.prompt_ids, response_ids=t.response_ids, ranks=t.ranks,
                           grades=[3.0, 2.0, 1.0, 0.0], index=t.index) for t in toy_lists(n=4, k=4)]
    result = train_preference(tiny_model(), None, lists, config(tmp_path, objective=objective, max_steps=6))
    losses = losses_of(result)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    if objective == "pl_dpo":
        assert losses[0] == pytest.approx(math.log(24.0), abs=1e-5)  # uniform PL over 4! orders at rho = 0


def test_unknown_loss_parameter_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="has no parameter"):
        train_preference(tiny_model(), None, toy_lists(n=2), config(tmp_path, loss_params={"betta": 0.1}))


def test_lora_trains_only_the_adapter_against_the_adapter_free_base(tmp_path):
    from rankalign.train.config import PeftConfig

    model = tiny_model()
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = config(tmp_path, max_steps=3, lr=5e-2,
                 peft=PeftConfig(enabled=True, r=4, alpha=8.0, target_modules=["q_proj", "v_proj"]))
    result = train_preference(model, None, toy_lists(n=4), cfg)
    losses = losses_of(result)
    # lora_B starts at 0, so the policy equals the adapter-free base (the reference): DPO = log 2
    assert losses[0] == pytest.approx(math.log(2.0), abs=1e-6)
    assert losses[-1] < losses[0]
    trained = dict(result.model.named_parameters())
    lora = [n for n, p in trained.items() if "lora_" in n]
    assert lora and all(trained[n].requires_grad for n in lora)
    for name, before in base_before.items():
        # base weights live under base_model.model.<name> (LoRA-wrapped ones under .base_layer)
        matches = [p for n, p in trained.items() if "lora_" not in n and
                   n.replace(".base_layer", "").endswith(name)]
        assert matches, name
        torch.testing.assert_close(matches[0].detach(), before, rtol=0, atol=0)


def test_unpaired_kto_on_judgments(tmp_path):
    lists = [TokenizedList(prompt_ids=t.prompt_ids, response_ids=[t.response_ids[0]], ranks=[0],
                           label=bool(i % 2), index=i) for i, t in enumerate(toy_lists(n=8))]
    result = train_preference(tiny_model(), None, lists,
                              config(tmp_path, objective="kto", max_steps=4, loss_params={"beta": 0.5, "z0": 0.0}))
    losses = losses_of(result)
    # rho = 0 at the start and z0 = 0: each judgment's loss is 1 - sigmoid(0) = 0.5 (KTO with unit weights)
    assert losses[0] == pytest.approx(0.5, abs=1e-6)
    assert losses[-1] < losses[0]
    assert "rewards/desirable" in result.history[0]


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_lora_top_layers_adapts_only_the_last_layers_and_backward_stops_below_them(tmp_path):
    from rankalign.train.config import ConfigError, PeftConfig
    from rankalign.train.trainer import maybe_apply_peft

    peft = PeftConfig(enabled=True, r=4, alpha=8.0, target_modules=["q_proj", "v_proj"], top_layers=1)
    model = maybe_apply_peft(tiny_causal_lm(VOCAB, hidden_size=32, layers=3, heads=2, seed=0),
                             TrainConfig(peft=peft))
    lora = [n for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(".layers.2." in n for n in lora)  # 3 layers, the top one is index 2
    reached = []
    for index, layer in enumerate(model.base_model.model.model.layers):
        layer.register_full_backward_hook(lambda module, gin, gout, index=index: reached.append(index))
    ids = torch.tensor([[5, 6, 7, 8]])
    model(input_ids=ids).logits.sum().backward()
    assert sorted(set(reached)) == [2]  # nothing below the adapted layer needs a gradient
    from peft import get_peft_model

    bare = tiny_causal_lm(VOCAB, hidden_size=32, layers=3, heads=2, seed=0).model  # a reward model's decoder
    adapted = get_peft_model(bare, peft.lora_config(bare))
    lora = [n for n, p in adapted.named_parameters() if "lora_" in n]
    assert lora and all(".layers.2." in n for n in lora)
    with pytest.raises(ConfigError, match="top_layers is 4 but the model has 3 layers"):
        maybe_apply_peft(tiny_causal_lm(VOCAB, hidden_size=32, layers=3, heads=2, seed=0),
                         TrainConfig(peft=PeftConfig(enabled=True, top_layers=4)))


@pytest.mark.parametrize("objective", ["lipo_lambda", "listnet", "pro"])
def test_a_batch_of_scored_and_unscored_lists_trains_with_a_finite_loss(tmp_path, objective):
    """Lists with grades (the records' scores) and lists without them in one batch: the unscored ones
    arrive as NaN grade rows and must not turn the loss or the weights into NaN. Before the first update
    the policy is the reference, so every loss is positive (LiPO-lambda's: sum over pairs of Delta_ij log 2)."""
    lists = toy_lists(n=4, k=3)
    lists[:2] = [dataclasses.replace(item, grades=[0.9, 0.5, 0.1]) for item in lists[:2]]
    params = {} if objective == "pro" else {"beta": 0.5}
    result = train_preference(tiny_model(), None, lists, config(tmp_path, objective=objective, max_steps=2,
                                                                 loss_params=params))
    losses = losses_of(result)
    assert len(losses) == 2 and all(math.isfinite(value) and value > 0 for value in losses)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
