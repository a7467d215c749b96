"""RewardModel: shared-layout exactness, training to a known gold rule, save/load, encoder path."""

from __future__ import annotations

import json
import os
import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rankalign.data.records import Judgment, RankedList  # noqa: E402
from rankalign.engine import build_tokenizer, tiny_causal_lm  # noqa: E402
from rankalign.reward import (  # noqa: E402
    RewardModel,
    pairwise_accuracy,
    score_lists,
    train_reward_model,
)

WORDS = ["good", "bad", "cat", "dog", "sun", "tree", "blue", "red"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(WORDS, vocab_size=64, kind="word")


def gold_lists(n: int, k: int, seed: int) -> list[RankedList]:
    """Prompts of 3 random words; K responses of 5 words whose gold reward is the count of "good".

    The K responses of a list get distinct counts (0..3), so the gold ranking is strict.
    """
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        prompt = " ".join(rng.choice(WORDS[2:]) for _ in range(3))
        counts = rng.sample(range(4), k)
        candidates = []
        for count in counts:
            words = ["good"] * count + [rng.choice(WORDS[1:]) for _ in range(5 - count)]
            rng.shuffle(words)
            candidates.append(" ".join(words))
        order = sorted(range(k), key=lambda i: -counts[i])
        ranks = [0] * k
        for rank, i in enumerate(order):
            ranks[i] = rank
        out.append(RankedList(prompt=prompt, candidates=candidates, ranks=ranks))
    return out


def tiny_reward_model(tokenizer, **kwargs) -> RewardModel:
    lm = tiny_causal_lm(len(tokenizer), hidden_size=32, layers=1, heads=2, seed=0)
    return RewardModel(lm, **kwargs)


# ------------------------------------------------------------------------------------------ exactness
@pytest.mark.filterwarnings("ignore:reward model inputs")  # the all-unranked record is dropped, by design
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_shared_layout_equals_duplicated_and_single_sequences(tokenizer, arch):
    lm = tiny_causal_lm(len(tokenizer), arch=arch, hidden_size=32, layers=2, heads=4, seed=3)
    model = RewardModel(lm, seed=1)
    assert model.kind == "causal"
    records = [
        RankedList(prompt="cat dog sun", candidates=["good tree", "bad", "red blue good sun"], ranks=[0, 2, 1]),
        RankedList(prompt="tree", candidates=["blue", "good good"], ranks=[1, 0]),
        Judgment(prompt="sun sun", response="red", label=True),
        RankedList(prompt="cat", candidates=["dog", "sun"], ranks=[None, None]),
    ]
    shared = score_lists(model, tokenizer, records, layout="shared")
    packed = score_lists(model, tokenizer, records, layout="shared", max_tokens_per_row=64)  # 3 lists, 1 row
    duplicated = score_lists(model, tokenizer, records, layout="duplicated")
    assert [s.shape[0] for s in shared] == [3, 2, 1, 0]
    for a, b, c in zip(shared, duplicated, packed):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c, b, atol=1e-5, rtol=1e-5)
    # independent brute force: each prompt + response alone, no padding, head on the last hidden state
    base = lm.model if arch == "llama" else lm.transformer
    with torch.no_grad():
        for record, scores in zip(records[:2], shared):
            for k, candidate in enumerate(record.candidates):
                ids = ([tokenizer.bos_token_id] + tokenizer(record.prompt, add_special_tokens=False)["input_ids"]
                       + tokenizer(candidate, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
                hidden = base(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
                expected = hidden @ model.head.weight[0]  # causal heads are bias-free, as LlamaForSequenceClassification
                torch.testing.assert_close(scores[k], expected, atol=1e-5, rtol=1e-5)


def test_multi_attribute_weighting(tokenizer):
    model = tiny_reward_model(tokenizer, num_attributes=3, attribute_names=["help", "safe", "short"],
                              attribute_weights=[0.5, 0.25, 0.25])
    records = [RankedList(prompt="cat", candidates=["good", "bad sun"], ranks=[0, 1])]
    attributes = score_lists(model, tokenizer, records, return_attributes=True)[0]
    rewards = score_lists(model, tokenizer, records)[0]
    assert attributes.shape == (2, 3)
    torch.testing.assert_close(rewards, 0.5 * attributes[:, 0] + 0.25 * attributes[:, 1] + 0.25 * attributes[:, 2])
    learned = tiny_reward_model(tokenizer, num_attributes=2, attribute_weights="learned")
    assert isinstance(learned.attribute_weights, torch.nn.Parameter)
    torch.testing.assert_close(learned.attribute_weights.detach(), torch.tensor([0.5, 0.5]))
    train_reward_model(learned, tokenizer, gold_lists(16, 2, seed=6), epochs=2, lr=1e-2, batch_size=8)
    assert not torch.allclose(learned.attribute_weights.detach(), torch.tensor([0.5, 0.5]))  # trained with BT
    with pytest.raises(ValueError):
        tiny_reward_model(tokenizer, num_attributes=2, attribute_weights=[1.0])


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("objective,k,n", [("bt_reward", 2, 200), ("pl_reward", 4, 100)])
def test_training_learns_the_gold_rule(tokenizer, objective, k, n):
    torch.set_num_threads(1)
    test = gold_lists(100, 2, seed=99)
    model = tiny_reward_model(tokenizer)
    before = pairwise_accuracy(score_lists(model, tokenizer, test), test)
    history = train_reward_model(model, tokenizer, gold_lists(n, k, seed=1), objective=objective, epochs=3,
                                 lr=3e-3, batch_size=16, seed=0, eval_records=test)
    after = pairwise_accuracy(score_lists(model, tokenizer, test), test)
    assert len(history) == 3 * -(-n // 16)
    epoch_ends = [h for h in history if "eval_accuracy" in h]
    assert [h["epoch"] for h in epoch_ends] == [0, 1, 2]
    assert epoch_ends[-1]["eval_accuracy"] == after
    assert history[-1]["loss"] < history[0]["loss"]
    assert 0.3 < before < 0.7  # an untrained head is at chance
    assert after >= 0.9  # observed 1.0 (seed 0); chance is 0.5


def test_training_is_deterministic_per_seed(tokenizer):
    data = gold_lists(24, 2, seed=5)
    runs = []
    for _ in range(2):
        model = tiny_reward_model(tokenizer)
        history = train_reward_model(model, tokenizer, data, epochs=1, lr=1e-3, batch_size=8, seed=7)
        runs.append(([h["loss"] for h in history], model.head.weight.detach().clone()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_davidson_and_regression_objectives(tokenizer):
    tied = [RankedList(prompt="cat", candidates=["good", "bad", "sun"], ranks=[0, 1, 1])]
    model = tiny_reward_model(tokenizer)
    history = train_reward_model(model, tokenizer, tied, objective="davidson_reward", epochs=2,
                                 objective_params={"nu": 0.5})
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    rated = [RankedList(prompt="cat", candidates=["good good", "bad"], ranks=[0, 1],
                        scores=[{"help": 4.0, "safe": 1.0}, {"help": 1.0, "safe": 3.0}])]
    multi = tiny_reward_model(tokenizer, num_attributes=2, attribute_names=["help", "safe"])
    history = train_reward_model(multi, tokenizer, rated, objective="rating_regression", epochs=60, lr=1e-2)
    attributes = score_lists(multi, tokenizer, rated, return_attributes=True)[0]
    # the two attribute columns regress on their own targets, not on the mean
    torch.testing.assert_close(attributes, torch.tensor([[4.0, 1.0], [1.0, 3.0]]), atol=0.3, rtol=0)
    with pytest.raises(ValueError, match="policy|reward"):
        train_reward_model(model, tokenizer, tied, objective="dpo")


# ------------------------------------------------------------------------------------------ persistence
def test_save_and_load_round_trip(tokenizer, tmp_path):
    model = tiny_reward_model(tokenizer, num_attributes=2, attribute_weights="learned",
                              attribute_names=["helpfulness", "honesty"])
    with torch.no_grad():
        model.attribute_weights.copy_(torch.tensor([0.9, 0.1]))
    records = gold_lists(3, 3, seed=2)
    model.save_pretrained(tmp_path / "rm", tokenizer=tokenizer)
    files = sorted(os.listdir(tmp_path / "rm"))
    assert {"config.json", "model.safetensors", "reward_config.json"} <= set(files)
    assert not [f for f in files if f.endswith(".tmp") or f.startswith(".")]
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    settings = json.loads((tmp_path / "rm" / "reward_config.json").read_text())
    assert settings["num_attributes"] == 2 and settings["learned_weights"] is True
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    torch.testing.assert_close(loaded.attribute_weights.detach(), torch.tensor([0.9, 0.1]))
    assert loaded.attribute_names == ["helpfulness", "honesty"]
    for a, b in zip(score_lists(model, tokenizer, records), score_lists(loaded, tokenizer, records)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="rankalign_reward"):
        RewardModel.from_pretrained(_plain_llama_dir(tokenizer, tmp_path))


def _plain_llama_dir(tokenizer, tmp_path):
    lm = tiny_causal_lm(len(tokenizer), hidden_size=32, layers=1, heads=2, seed=0)
    lm.save_pretrained(tmp_path / "plain")
    return tmp_path / "plain"


@pytest.mark.parametrize("num_attributes", [1, 3])
def test_saved_model_is_a_transformers_sequence_classifier(tokenizer, tmp_path, num_attributes):
    """AutoModelForSequenceClassification loads every weight and scores each (prompt, response) exactly as
    score_lists, on the token ids tokenize_records builds (BOS + prompt + response + EOS), one per row."""
    from transformers import AutoModelForSequenceClassification

    from rankalign.engine import tokenize_records

    names = ["reward"] if num_attributes == 1 else ["helpfulness", "correctness", "verbosity"]
    model = tiny_reward_model(tokenizer, num_attributes=num_attributes, attribute_names=names)
    with torch.no_grad():  # a head that is not the fresh-init default, so a re-initialised head would show
        model.head.weight.normal_(generator=torch.Generator().manual_seed(5))
    records = gold_lists(4, 3, seed=4)
    model.save_pretrained(tmp_path / "rm", tokenizer=tokenizer)
    classifier, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm", output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"], info
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert type(classifier).__name__ == "LlamaForSequenceClassification"
    assert classifier.config.id2label == dict(enumerate(names))
    assert classifier.config.label2id == {n: i for i, n in enumerate(names)}
    torch.testing.assert_close(classifier.score.weight, model.head.weight)
    ours = score_lists(model, tokenizer, records, return_attributes=True)
    lists, _ = tokenize_records(tokenizer, records)
    classifier.eval()
    with torch.no_grad():
        for item in lists:
            for k, response in enumerate(item.response_ids):
                ids = torch.tensor([item.prompt_ids + response])
                logits = classifier(input_ids=ids).logits[0]
                torch.testing.assert_close(logits, ours[item.index][k], atol=1e-5, rtol=1e-5)
        # batched with right padding: the config's pad id is not EOS, so the class still reads the EOS token
        pad = classifier.config.pad_token_id
        assert pad is not None and pad != tokenizer.eos_token_id
        rows = [item.prompt_ids + r for item in lists for r in item.response_ids]
        width = max(map(len, rows))
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]).long()
        batched = classifier(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(batched, torch.cat([ours[item.index] for item in lists]), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ encoder
def test_encoder_backbone_mean_pools_prompt_response_pairs(tokenizer):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=0)
    torch.manual_seed(0)
    encoder = BertModel(config).eval()
    model = RewardModel(encoder)
    assert model.kind == "encoder"
    record = RankedList(prompt="cat dog", candidates=["good", "bad sun"], ranks=[0, 1])
    scores = score_lists(model, tokenizer, [record])[0]
    with torch.no_grad():
        for k, candidate in enumerate(record.candidates):
            ids = (tokenizer("cat dog", add_special_tokens=False)["input_ids"]
                   + tokenizer(candidate, add_special_tokens=False)["input_ids"])
            hidden = encoder(input_ids=torch.tensor([ids])).last_hidden_state[0]
            expected = hidden.mean(0) @ model.head.weight[0] + model.head.bias[0]
            torch.testing.assert_close(scores[k], expected, atol=1e-5, rtol=1e-5)
    data = gold_lists(60, 2, seed=3)
    history = train_reward_model(model, tokenizer, data, epochs=2, lr=3e-3, batch_size=16, seed=0)
    assert history[-1]["loss"] < history[0]["loss"]


def test_training_disables_dropout_by_default(tokenizer):
    """As TRL's RewardTrainer: no dropout while training (chosen and rejected see the same network)."""
    from transformers import BertConfig, BertModel

    from rankalign.reward.model import prepare_lists, reward_scores

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.3,
                        attention_probs_dropout_prob=0.3, pad_token_id=0)
    data = gold_lists(8, 2, seed=3)
    kept = RewardModel(BertModel(config))
    train_reward_model(kept, tokenizer, data, epochs=1, lr=1e-3, batch_size=8, seed=0, disable_dropout=False)
    assert {m.p for m in kept.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
    model = RewardModel(BertModel(config))
    train_reward_model(model, tokenizer, data, epochs=1, lr=1e-3, batch_size=8, seed=0)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    model.train()  # training mode, yet two passes agree: no dropout mask anywhere
    lists = prepare_lists(model, tokenizer, data)
    with torch.no_grad():
        torch.testing.assert_close(reward_scores(model, tokenizer, lists)[0], reward_scores(model, tokenizer, lists)[0])
        kept.train()
        assert not torch.equal(reward_scores(kept, tokenizer, lists)[0], reward_scores(kept, tokenizer, lists)[0])


def test_truncation_is_reported(tokenizer):
    model = tiny_reward_model(tokenizer)
    record = RankedList(prompt="cat dog sun tree", candidates=["good good good good", "bad"], ranks=[0, 1])
    with pytest.warns(UserWarning, match="truncated"):
        scores = score_lists(model, tokenizer, [record], max_length=7)
    assert scores[0].shape == (2,)


def test_pairwise_accuracy_by_hand():
    records = [RankedList(candidates=["a", "b", "c"], ranks=[0, 1, 2]), RankedList(candidates=["x", "y"], ranks=[1, 0])]
    # list 1: (a>b) 3>2 right, (a>c) 3>2.5 right, (b>c) 2>2.5 wrong; list 2: (y>x) 1>0 right -> 3 of 4
    scores = [torch.tensor([3.0, 2.0, 2.5]), torch.tensor([0.0, 1.0])]
    assert pairwise_accuracy(scores, records) == 0.75


def test_bce_on_judgments(tokenizer):
    rng = random.Random(4)
    judgments = []
    for i in range(40):
        positive = i % 2 == 0
        words = (["good"] if positive else []) + [rng.choice(WORDS[1:]) for _ in range(3)]
        rng.shuffle(words)
        judgments.append(Judgment(prompt="cat", response=" ".join(words), label=positive))
    model = tiny_reward_model(tokenizer)
    train_reward_model(model, tokenizer, judgments, objective="bce_reward", epochs=4, lr=3e-3, batch_size=8)
    scores = torch.cat(score_lists(model, tokenizer, judgments))
    labels = torch.tensor([j.label for j in judgments])
    probabilities = torch.sigmoid(scores)
    assert probabilities[labels].min() > probabilities[~labels].max()  # separates thumbs up from down


def test_encoder_with_cls_pooling_is_an_exact_bert_sequence_classifier(tokenizer, tmp_path):
    """pooling="cls" is what BertForSequenceClassification computes: the saved folder scores identically
    through transformers on encoder_inputs; mean pooling loads every weight too and is exact through load()."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

    from rankalign.reward import encoder_inputs, load

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    records = gold_lists(3, 3, seed=5)
    for pooling in ("cls", "mean"):
        torch.manual_seed(0)
        model = RewardModel(BertModel(config), pooling=pooling).eval()
        ours = score_lists(model, tokenizer, records)
        model.save_pretrained(tmp_path / pooling, tokenizer=tokenizer)
        classifier, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / pooling,
                                                                             output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        assert type(classifier).__name__ == "BertForSequenceClassification"
        loaded, _ = load(tmp_path / pooling)
        for a, b in zip(score_lists(loaded, tokenizer, records), ours):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        if pooling == "cls":
            classifier.eval()
            with torch.no_grad():
                for record, scores in zip(records, ours):
                    inputs, _ = encoder_inputs(tokenizer, [record.prompt] * 3, list(record.candidates), 64)
                    torch.testing.assert_close(classifier(**inputs).logits[:, 0], scores, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ micro-batches
def test_micro_batches_split_in_order_within_the_token_budget():
    from rankalign.reward.train import _micro_batches

    shapes = [(2, 10), (2, 30), (2, 5), (4, 40), (2, 10)]  # (rows, tokens per row)
    # padded sizes by hand: [0, 1] -> 4 x 30 = 120; + 2 -> 6 x 30 = 180 > 150; [2] alone: 10;
    # [2, 3] -> 6 x 40 = 240 > 150, so 3 starts anew (4 x 40 = 160 > 150 but a list is never split); then 4
    assert _micro_batches([0, 1, 2, 3, 4], shapes, 150) == [[0, 1], [2], [3], [4]]
    assert _micro_batches([4, 2, 0], shapes, 60) == [[4, 2, 0]]  # 6 rows x 10 tokens = 60
    assert _micro_batches([4, 2, 0], shapes, None) == [[4, 2, 0]]


@pytest.mark.parametrize("layout,ensemble", [("shared", 1), ("duplicated", 1), ("shared", 3)])
def test_micro_batches_give_the_whole_batch_training_run(tokenizer, layout, ensemble):
    # the micro-batches' losses are shares of the batch's weighted mean (bootstrap counts included), so
    # one list per micro-batch trains exactly as the whole batch at once: same losses, same weights
    lists = gold_lists(12, 3, seed=5)
    lists = [RankedList(prompt=r.prompt, candidates=r.candidates, ranks=r.ranks, weight=1.0 + i % 3)
             for i, r in enumerate(lists)]
    runs = []
    for budget in (None, 1):
        model = tiny_reward_model(tokenizer, ensemble_size=ensemble, seed=1)
        # the block-mask attention, which sums each row the same way here whatever the batch: the structured
        # attention pads each response's keys to the batch's longest prompt, so another batch composition
        # sums in another order (~1e-7), which Adam at lr 1e-2 grows past this test's rounding tolerances
        # (tests/test_engine_attention.py checks that path against the mask)
        model.backbone.rankalign_structured_attention = False
        history = train_reward_model(model, tokenizer, lists, objective="pl_reward", epochs=2, lr=1e-2,
                                     batch_size=5, seed=0, layout=layout, micro_batch_tokens=budget)
        runs.append((history, {k: v.clone() for k, v in model.state_dict().items()}))
    (whole, whole_state), (micro, micro_state) = runs
    assert [row["lists"] for row in micro] == [5, 5, 2, 5, 5, 2]
    assert [row["loss"] for row in micro] == pytest.approx([row["loss"] for row in whole], rel=1e-5, abs=1e-7)
    assert len({round(row["loss"], 6) for row in whole}) > 1  # the loss moves: the runs are not trivially equal
    # Adam divides each coordinate's step by its gradient's running scale, so near-zero gradients that differ
    # by summation order move a weight by up to a few lr-sized rounding steps: 1e-4 is 1% of lr
    for name, value in whole_state.items():
        assert (micro_state[name] - value).abs().max().item() < 1e-4, (name, (micro_state[name] - value).abs().max())


def test_a_prompt_longer_than_max_length_keeps_its_end_and_leaves_the_responses_half(tokenizer):
    # the HH failure: a 389-token dialogue with max_length 384 left its responses "budget -5"; now the
    # prompt keeps its last ceil(max_length / 2) tokens (the latest turns) and every response its share
    from rankalign.reward.model import prepare_lists

    model = tiny_reward_model(tokenizer)
    prompt = " ".join(["cat"] * 30 + ["dog", "sun", "tree"])  # 33 words, one token each
    record = RankedList(prompt=prompt, candidates=["good good good good", "bad bad"], ranks=[0, 1])
    [item] = prepare_lists(model, tokenizer, [record], max_length=16)
    assert len(item.prompt_ids) == 8  # ceil(16 / 2), a leading BOS included when the tokenizer has one
    tail = tokenizer.convert_ids_to_tokens(item.prompt_ids[-3:])
    assert tail == ["dog", "sun", "tree"]  # the end of the prompt survives
    assert all(0 < len(r) <= 16 - 8 for r in item.response_ids)
    history = train_reward_model(model, tokenizer, [record] * 4, epochs=1, batch_size=2, max_length=16)
    assert len(history) == 2 and all(row["loss"] > 0 for row in history)


def test_a_damaged_reward_model_folder_is_named(tokenizer, tmp_path):
    from rankalign.engine.sources import UnreadableModel

    model = tiny_reward_model(tokenizer)
    model.save_pretrained(tmp_path / "rm", tokenizer=tokenizer)
    config_path = tmp_path / "rm" / "config.json"
    original = config_path.read_text()
    config = json.loads(original)
    config["rankalign_reward"]["kind"] = "weird"
    config_path.write_text(json.dumps(config))
    with pytest.raises(UnreadableModel, match=r"config\.json: rankalign_reward settings do not describe"):
        RewardModel.from_pretrained(tmp_path / "rm")
    del config["rankalign_reward"]["attribute_weights"]
    config["rankalign_reward"]["kind"] = json.loads(original)["rankalign_reward"]["kind"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(UnreadableModel, match="lacks 'attribute_weights'"):
        RewardModel.from_pretrained(tmp_path / "rm")
    config_path.write_text(original)
    weights = tmp_path / "rm" / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    with pytest.raises(UnreadableModel, match=r"model\.safetensors: not a whole safetensors file"):
        RewardModel.from_pretrained(tmp_path / "rm")
