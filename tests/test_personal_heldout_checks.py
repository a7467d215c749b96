"""Held-out correctness checks of rankalign.personal: rewards recomputed by hand from the fitted parameters.

* an annotator id is one id however it is written (``7``, ``7.0``, ``"7"``), as the records read it;
* adding an annotator with ``adapt_annotator`` leaves the population mean that unseen annotators get (the
  mean over the *training* annotators, module docstring) unchanged, also after a save and load.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rankalign.data.records import RankedList  # noqa: E402
from rankalign.personal import (  # noqa: E402
    adapt_annotator,
    fit_personal_reward,
    load_personal_reward,
    save_personal_reward,
)

KINDS = ("mixture", "pal", "ideal_point", "user_latent")


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _world(seed: int = 0):
    rng = np.random.default_rng(seed)
    features = {f"r{i}": rng.normal(size=4) for i in range(10)}
    records = []
    for n in range(45):
        a, b = rng.choice(10, 2, replace=False)
        # integer ids as a CSV column gives them: stored as "7", "8", "9"
        records.append(RankedList(prompt="p", candidates=[f"r{a}", f"r{b}"], ranks=[0, 1], annotator=7 + n % 3))
    return records, features, np.stack([features[f"r{i}"] for i in range(10)])


def _hand_rewards(model, x: np.ndarray, row: int | None, population: int) -> np.ndarray:
    """The documented reward of features ``x`` for table row ``row`` (None: the mean of the first
    ``population`` rows, transformed as each model documents: mean weights, mean point, mean latent)."""
    p = {k: v.detach().numpy() for k, v in model.module.named_parameters()}
    table = p["user_table"]

    def pick(rows):
        return rows[:population].mean(0) if row is None else rows[row]

    if model.kind == "mixture":
        return (x @ p["prototypes"].T) @ pick(_softmax(table))
    if model.kind == "pal":
        ideal = pick(_softmax(table)) @ p["prototypes"]
        return -(((x @ p["projection.weight"].T) - ideal) ** 2).sum(-1)
    if model.kind == "ideal_point":
        return -(((x @ p["projection"].T) - pick(table)) ** 2).sum(-1)
    z = pick(table)
    inputs = np.concatenate([x, np.tile(z, (len(x), 1))], axis=1)
    hidden = np.tanh(inputs @ p["network.0.weight"].T + p["network.0.bias"])
    return (hidden @ p["network.2.weight"].T + p["network.2.bias"])[:, 0]


@pytest.mark.parametrize("kind", KINDS)
def test_an_annotator_id_is_one_id_however_it_is_written(kind):
    records, features, x = _world()
    model = fit_personal_reward(records, features, model=kind, epochs=20)
    assert model.annotators == ["7", "8", "9"]
    expected = _hand_rewards(model, x, 0, 3)
    for written in ("7", 7, np.int64(7), 7.0):
        np.testing.assert_allclose(model.rewards(x, written), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.rewards(x, "zzz"), _hand_rewards(model, x, None, 3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_adding_an_annotator_leaves_the_population_mean_as_it_was(kind, tmp_path):
    records, features, x = _world()
    model = fit_personal_reward(records, features, model=kind, epochs=20)
    population = _hand_rewards(model, x, None, 3)
    newcomer = [RankedList(prompt="p", candidates=["r0", "r1"], ranks=[0, 1], annotator="new"),
                RankedList(prompt="p", candidates=["r2", "r3"], ranks=[1, 0], annotator="new")]
    adapted = adapt_annotator(model, "new", newcomer, features, epochs=60)
    adapted = adapt_annotator(adapted, "newer", newcomer[:1], features, epochs=60)
    assert adapted.annotators == ["7", "8", "9", "new", "newer"]
    # the newcomer's own rewards use their own (fitted) row ...
    np.testing.assert_allclose(adapted.rewards(x, "new"), _hand_rewards(adapted, x, 3, 3), rtol=1e-12, atol=1e-12)
    assert not np.allclose(adapted.rewards(x, "new"), population)
    # ... while unseen annotators and None still get the training annotators' mean
    for unseen in (None, "someone else"):
        np.testing.assert_allclose(adapted.rewards(x, unseen), population, rtol=1e-12, atol=1e-12)
    save_personal_reward(adapted, tmp_path)
    loaded = load_personal_reward(tmp_path)
    np.testing.assert_allclose(loaded.rewards(x, None), population, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(loaded.rewards(x, "new"), adapted.rewards(x, "new"), rtol=1e-12, atol=1e-12)


def test_backbone_features_from_a_causal_backbone_are_its_last_token_states():
    """``backbone_features`` zeroed the identity head's bias, which a causal reward model's head does not have
    (AttributeError on ``None.zero_()``); the feature of a candidate is the backbone's final hidden state at
    the last token of BOS + prompt + response + EOS, computed here with a plain forward."""
    import torch

    from rankalign.data import RankedList
    from rankalign.engine import build_tokenizer, tiny_causal_lm
    from rankalign.personal import backbone_features

    texts = ["the cat sat", "a dog ran", "on the mat", "in the sun"]
    tokenizer = build_tokenizer(texts * 4, vocab_size=80)
    model = tiny_causal_lm(len(tokenizer), hidden_size=16, layers=1, heads=2)
    records = [RankedList(prompt="the cat", candidates=["sat on the mat", "ran in the sun"], ranks=[0, 1])]
    features = backbone_features(model, tokenizer, records)
    base = model.model
    for candidate in records[0].candidates:
        ids = ([tokenizer.bos_token_id] + tokenizer("the cat", add_special_tokens=False)["input_ids"]
               + tokenizer(candidate, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        with torch.no_grad():
            expected = base(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].double().numpy()
        np.testing.assert_allclose(features("the cat", candidate), expected, rtol=1e-4, atol=1e-5)
