"""Unpaired objectives in PreferenceTrainer: KTO's reference point z0 and BCO's running reward mean.

Expected values are derived independently of the trainer:

* KTO (Ethayarajh et al. 2024): z0 = max(0, mean_i [log pi(y_{i+1}|x_i) - log pi_ref(y_{i+1}|x_i)]) over
  the batch's mismatched pairs, computed here with one plain forward per (prompt + response) and a full
  log-softmax; the first step's loss written out by hand from the brute-force log-ratios and that z0.
* BCO (Jung et al. 2024): delta after N steps is the plain mean of the N per-step batch-mean rewards,
  recomputed here from the logged mean rewards of the desirable and undesirable judgments.

Also: a model instance's own ``forward`` attribute (accelerate's mixed-precision wrapper) survives a
training step through a wrapper module.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankalign.engine import TokenizedList, tiny_causal_lm  # noqa: E402
from rankalign.train import TrainConfig  # noqa: E402
from rankalign.train.data import PreferenceCollator, mismatched_pairs  # noqa: E402
from rankalign.train.trainer import (  # noqa: E402
    OBJECTIVE_STATE_FILE,
    PreferenceTrainer,
    make_training_arguments,
    train_preference,
)

VOCAB = 48


def judgments(labels, seed=0):
    """Random prompts (3-6 tokens) and responses (2-4 tokens + EOS) with the given labels."""
    generator = torch.Generator().manual_seed(seed)

    def ids(length):
        return torch.randint(3, VOCAB, (length,), generator=generator).tolist()

    out = []
    for i, label in enumerate(labels):
        prompt = ids(int(torch.randint(3, 7, (1,), generator=generator)))
        response = ids(int(torch.randint(2, 5, (1,), generator=generator))) + [2]
        out.append(TokenizedList(prompt_ids=prompt, response_ids=[response], ranks=[0], label=label, index=i))
    return out


def tiny_model(seed=0):
    return tiny_causal_lm(VOCAB, hidden_size=32, layers=1, heads=2, seed=seed)


def config(tmp_path, name="run", **overrides):
    values = dict(objective="kto", batch_size=2, max_steps=1, lr=1e-2, output_dir=str(tmp_path / name),
                  report_to=[], progress=False, loss_params={"beta": 0.5}, seed=0, logging_steps=1)
    values.update(overrides)
    return TrainConfig(**values)


def step_logs(result):
    return [row for row in result.history if "loss" in row]


@torch.no_grad()
def brute_force_logp(model, prompt, response):
    """log pi(response | prompt): prompt + response in one row, full float64 log-softmax."""
    logits = model(input_ids=torch.tensor([prompt + response])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(sum(logprobs[len(prompt) - 1 + t, token] for t, token in enumerate(response)))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------------ KTO
def test_mismatched_pairs_shift_the_responses_by_one():
    items = judgments([True, False, True, False])
    pairs = mismatched_pairs(items)
    for i, pair in enumerate(pairs):
        assert pair.prompt_ids == items[i].prompt_ids
        assert pair.response_ids == items[(i + 1) % 4].response_ids
    # the collator packs them beside the batch: the response tokens of the KL batch are y_1, y_2, y_3, y_0
    batch = PreferenceCollator(layout="duplicated", mismatched_pairs=True)([(item, None) for item in items])
    expected = [t for j in (1, 2, 3, 0) for t in items[j].response_ids[0]]
    assert batch["kl_batch"]["target_ids"].tolist() == expected
    assert batch["target_ids"].tolist() == [t for item in items for t in item.response_ids[0]]


def test_kto_z0_equals_the_brute_force_mismatched_pair_estimate(tmp_path):
    # one batch of two judgments: the mismatched pairs are (x0, y1) and (x1, y0) whatever the shuffle
    items = judgments([True, True], seed=0)  # both desirable: z0 shifts both terms the same way
    policy, reference = tiny_model(seed=0), tiny_model(seed=1)
    beta = 0.5

    def log_ratio(prompt, response):
        return brute_force_logp(policy, prompt, response) - brute_force_logp(reference, prompt, response)

    kl = (log_ratio(items[0].prompt_ids, items[1].response_ids[0])
          + log_ratio(items[1].prompt_ids, items[0].response_ids[0])) / 2
    z0 = max(0.0, kl)
    assert z0 > 0.05  # these seeds give a positive estimate, so the clamp does not hide it
    rho = [log_ratio(item.prompt_ids, item.response_ids[0]) for item in items]
    # KTO, desirable: 1 - sigma(beta (rho - z0)); mean of the two
    first_loss = ((1 - sigmoid(beta * (rho[0] - z0))) + (1 - sigmoid(beta * (rho[1] - z0)))) / 2

    result = train_preference(policy, None, items, config(tmp_path, max_steps=1), ref_model=reference)
    logged = step_logs(result)[0]
    assert logged["kl"] == pytest.approx(kl, abs=1e-5)
    assert logged["z0"] == pytest.approx(z0, abs=1e-5)
    assert logged["loss"] == pytest.approx(first_loss, abs=1e-5)
    # with z0 = 0 the first loss would differ: the estimate is what the loss used
    zero_loss = ((1 - sigmoid(beta * rho[0])) + (1 - sigmoid(beta * rho[1]))) / 2
    assert abs(zero_loss - first_loss) > 0.02


def test_kto_with_estimated_z0_trains_and_reduces_the_loss(tmp_path):
    items = judgments([True, False, True, True, False, True, False, True])
    result = train_preference(tiny_model(), None, items,
                              config(tmp_path, batch_size=4, max_steps=8, lr=3e-2))
    logs = step_logs(result)
    # the reference is the policy before training: every log-ratio is 0 at the first step, so z0 = 0
    # and each judgment's loss is 1 - sigma(0) = 0.5
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert logs[0]["loss"] == pytest.approx(0.5, abs=1e-6)
    assert all(math.isfinite(row["kl"]) and row["z0"] >= 0.0 for row in logs)
    assert all(row["z0"] == pytest.approx(max(0.0, row["kl"]), abs=1e-9) for row in logs)  # one batch a step
    assert any(abs(row["kl"]) > 1e-3 for row in logs[1:])  # the policy moved
    assert logs[-1]["loss"] < 0.8 * logs[0]["loss"]


def test_kto_fixed_z0_from_loss_params_is_used_and_not_estimated(tmp_path):
    items = judgments([True, True, True, False])
    result = train_preference(tiny_model(), None, items,
                              config(tmp_path, batch_size=4, loss_params={"beta": 0.5, "z0": 0.3}))
    logged = step_logs(result)[0]
    assert "kl" not in logged and "z0" not in logged
    # rho = 0 at the start: desirable 1 - sigma(0.5 (0 - 0.3)), undesirable 1 - sigma(0.5 (0.3 - 0))
    expected = (3 * (1 - sigmoid(-0.15)) + (1 - sigmoid(0.15))) / 4
    assert logged["loss"] == pytest.approx(expected, abs=1e-6)


def test_kto_z0_with_lora_uses_the_adapter_disabled_base(tmp_path):
    items = judgments([True, False, True, False])
    cfg = config(tmp_path, batch_size=4, max_steps=3, lr=5e-2)
    cfg.peft.enabled = True
    cfg.peft.target_modules = ["q_proj", "v_proj"]
    logs = step_logs(train_preference(tiny_model(), None, items, cfg))
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the identity (B = 0)
    assert abs(logs[-1]["kl"]) > 1e-6


# ------------------------------------------------------------------------------------------------ BCO
BCO_LABELS = [True, True, True, False]  # one batch of 4 a step: 3 desirable, 1 undesirable


def test_bco_delta_is_the_running_mean_of_the_logged_rewards(tmp_path):
    items = judgments(BCO_LABELS, seed=1)
    result = train_preference(tiny_model(), None, items,
                              config(tmp_path, objective="bco", batch_size=4, max_steps=4, lr=5e-2))
    logs = step_logs(result)
    assert len(logs) == 4
    # the batch mean reward of step t, from the logged means of the desirable and undesirable judgments
    batch_means = [(3 * row["rewards/desirable"] + 1 * row["rewards/undesirable"]) / 4 for row in logs]
    assert abs(batch_means[-1]) > 1e-3
    for t, row in enumerate(logs, start=1):
        by_hand = sum(batch_means[:t]) / t  # delta after t steps: the plain mean of the t batch means
        assert row["bco_delta"] == pytest.approx(by_hand, abs=1e-6)
    # step 1: rho = 0 and delta = 0, so each judgment's loss is -log sigma(0) = log 2
    assert logs[0]["loss"] == pytest.approx(math.log(2.0), abs=1e-6)


def test_bco_fixed_delta_from_loss_params(tmp_path):
    items = judgments(BCO_LABELS, seed=1)
    result = train_preference(tiny_model(), None, items,
                              config(tmp_path, objective="bco", batch_size=4, loss_params={"beta": 0.5, "delta": 0.2}))
    logged = step_logs(result)[0]
    assert "bco_delta" not in logged
    # rho = 0: desirable -log sigma(0 - 0.2), undesirable -log sigma(0.2)
    expected = (3 * -math.log(sigmoid(-0.2)) - math.log(sigmoid(0.2))) / 4
    assert logged["loss"] == pytest.approx(expected, abs=1e-6)


def test_bco_resume_restores_delta(tmp_path):
    items = judgments(BCO_LABELS + [False, True, False, True], seed=2)
    common = dict(objective="bco", batch_size=4, max_steps=4, save_steps=2, save_total_limit=None, lr=5e-2)
    full = train_preference(tiny_model(), None, items, config(tmp_path, "full", **common))
    full_logs = step_logs(full)
    saved = json.loads(open(os.path.join(full.output_dir, "checkpoint-2", OBJECTIVE_STATE_FILE)).read())
    assert saved["bco_running_mean"]["count"] == 2
    assert saved["bco_running_mean"]["mean"] == pytest.approx(full_logs[1]["bco_delta"], abs=1e-12)

    cfg = config(tmp_path, "killed", **common)
    train_preference(tiny_model(), None, items, cfg)
    shutil.rmtree(os.path.join(cfg.output_dir, "checkpoint-4"))  # as if killed after checkpoint-2
    resumed_logs = step_logs(train_preference(tiny_model(), None, items, cfg, resume_from_checkpoint=True))
    assert [row["bco_delta"] for row in resumed_logs] == pytest.approx([row["bco_delta"] for row in full_logs],
                                                                       abs=1e-9)
    assert [row["loss"] for row in resumed_logs] == pytest.approx([row["loss"] for row in full_logs], abs=1e-6)

    # a checkpoint without the state file cannot be resumed exactly: an error naming the file
    os.remove(os.path.join(cfg.output_dir, "checkpoint-2", OBJECTIVE_STATE_FILE))
    shutil.rmtree(os.path.join(cfg.output_dir, "checkpoint-4"))
    with pytest.raises(FileNotFoundError, match=OBJECTIVE_STATE_FILE):
        train_preference(tiny_model(), None, items, cfg, resume_from_checkpoint=True)


# ------------------------------------------------------------------------------ instance forward kept
class _Wrapper(torch.nn.Module):
    """A DDP-like wrapper: its forward calls the inner module (accelerate's unwrap_model does not know
    it, so it stands in only for the direct test of the helper)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self):
        return self.module()


def test_call_as_forward_restores_an_instance_forward():
    from rankalign.engine import call_as_forward

    inner = torch.nn.Linear(2, 2)
    installed = lambda *args, **kwargs: "accelerate's forward"  # noqa: E731
    inner.forward = installed
    assert call_as_forward(inner, lambda: 7, wrapper=_Wrapper(inner)) == 7
    assert inner.__dict__["forward"] is installed
    plain = torch.nn.Linear(2, 2)
    assert call_as_forward(plain, lambda: 8, wrapper=_Wrapper(plain)) == 8
    assert "forward" not in plain.__dict__


def test_instance_forward_survives_a_training_step(tmp_path):
    # torch.nn.DataParallel without GPUs calls its module directly, and accelerate unwraps it: the trainer
    # takes the wrapper path (as under DistributedDataParallel) on this CPU
    items = judgments([True, False, True, False])
    model = tiny_model()
    original = type(model).forward.__get__(model)
    calls = []

    def mixed_precision_forward(*args, **kwargs):  # stands in for accelerate's autocast wrapper
        calls.append(1)
        return original(*args, **kwargs)

    model.forward = mixed_precision_forward
    cfg = config(tmp_path, batch_size=4, loss_params={"beta": 0.5, "z0": 0.0})
    trainer = PreferenceTrainer(model, make_training_arguments(cfg), items, objective="kto",
                                loss_params={"beta": 0.5, "z0": 0.0})
    wrapped = torch.nn.DataParallel(trainer.model)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.train()
    loss = trainer.training_step(wrapped, inputs)
    assert model.__dict__.get("forward") is mixed_precision_forward
    assert math.isfinite(float(loss))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # and it is still the forward the model runs
    calls.clear()
    model(input_ids=torch.tensor([[3, 4, 5]]))
    assert calls == [1]


def test_bco_pair_delta_is_the_running_mean_of_chosen_and_rejected_rewards(tmp_path):
    # pairs: delta folds in the rewards of both responses (the paper's chosen and rejected); one batch of
    # all 4 pairs a step, so the batch mean is (mean reward of the best + mean reward of the worst) / 2
    generator = torch.Generator().manual_seed(5)
    items = [TokenizedList(prompt_ids=torch.randint(3, VOCAB, (4,), generator=generator).tolist(),
                           response_ids=[torch.randint(3, VOCAB, (3,), generator=generator).tolist() + [2]
                                         for _ in range(2)], ranks=[0, 1], index=i) for i in range(4)]
    result = train_preference(tiny_model(), None, items,
                              config(tmp_path, objective="bco_pair", batch_size=4, max_steps=3, lr=5e-2))
    logs = step_logs(result)
    batch_means = [(row["rewards/best"] + row["rewards/worst"]) / 2 for row in logs]
    assert abs(batch_means[-1]) > 1e-3
    for t, row in enumerate(logs, start=1):
        assert row["bco_delta"] == pytest.approx(sum(batch_means[:t]) / t, abs=1e-6)


def test_mismatched_pairs_span_the_global_batch_across_processes(tmp_path, monkeypatch):
    # two processes of 2 judgments: rank 1 holds x2, x3 and must pair them with y3 and y0 (y0 lives on
    # rank 0), the pairs one process of all 4 builds; the other ranks' lists arrive through gather_object
    import types

    import accelerate.utils

    from rankalign.engine import PackedBatch, pack_lists

    items = judgments([True, False, True, False])
    trainer = PreferenceTrainer(tiny_model(), make_training_arguments(config(tmp_path)), items, objective="kto",
                                loss_params={"beta": 0.5})
    per_rank = [items[:2], items[2:]]
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda local: per_rank)
    for rank, local in enumerate(per_rank):
        monkeypatch.setattr(trainer, "accelerator", types.SimpleNamespace(num_processes=2, process_index=rank))
        fields = trainer.data_collator([(item, None) for item in local])
        batch = PackedBatch(**{k: v for k, v in fields.items() if k not in ("kl_batch", "ref_logps")})
        kl_batch = trainer._global_mismatched_pairs(batch, fields["kl_batch"])
        expected = [(items[2 * rank + j].prompt_ids, items[(2 * rank + j + 1) % 4].response_ids[0]) for j in range(2)]
        assert [(pair.prompt_ids, pair.response_ids[0]) for pair in kl_batch.source] == expected
        reference = pack_lists(kl_batch.source, layout=trainer.data_collator.layout)
        assert kl_batch.input_ids.tolist() == reference.input_ids.tolist()
