"""Annotator-aware reward models: two groups with opposite preferences on one feature."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rankalign.data.errors import DataError  # noqa: E402
from rankalign.data.records import RankedList  # noqa: E402
from rankalign.eval import group_metrics  # noqa: E402
from rankalign.personal import (  # noqa: E402
    PERSONAL_MODELS,
    adapt_annotator,
    fit_personal_reward,
    pair_outcomes,
)

GROUP_WEIGHTS = {"A": np.array([1.0, 2.0]), "B": np.array([1.0, -2.0])}  # feature 1 is disputed


def two_group_world(seed: int, *, per_annotator: int, disputed: bool, annotators_per_group: int = 10,
                    n_items: int = 200, groups=("A", "B"), prefix: str = ""):
    """Items with features x ~ U[-1, 1]^2; group A's utility is x0 + 2 x1, group B's x0 - 2 x1.

    Training pairs (``disputed=False``): two random items, the winner drawn from Bradley-Terry with
    scale 3 on the annotator's utility. Disputed test pairs: an item and its mirror (x0, -x1), which
    differ only in the disputed feature, labelled by the annotator's noise-free preference (the groups
    disagree on every such pair).
    """
    rng = np.random.default_rng(seed)
    features = {f"{prefix}s{seed}-{i}": rng.uniform(-1, 1, 2) for i in range(n_items)}
    names = list(features)
    records = []
    for group in groups:
        weights = GROUP_WEIGHTS[group]
        for member in range(annotators_per_group):
            for _ in range(per_annotator):
                a, b = rng.choice(n_items, 2, replace=False)
                first, second = names[a], names[b]
                if disputed:
                    second = first + "-mirror"
                    features[second] = np.array([features[first][0], -features[first][1]])
                gap = weights @ features[first] - weights @ features[second]
                first_wins = gap > 0 if disputed else rng.random() < 1.0 / (1.0 + np.exp(-3.0 * gap))
                records.append(RankedList(candidates=[first, second], ranks=[0, 1] if first_wins else [1, 0],
                                          annotator=f"{prefix}{group}-{member}"))
    return records, features


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    train, train_features = two_group_world(0, per_annotator=40, disputed=False)
    test, test_features = two_group_world(1, per_annotator=20, disputed=True)
    return train, train_features, test, test_features


def _groups(annotators):
    return [a.split("-")[0] for a in annotators]


@pytest.fixture(scope="module")
def fitted(data):
    train, features, _, _ = data
    return {kind: fit_personal_reward(train, features, model=kind, seed=0) for kind in PERSONAL_MODELS}


@pytest.mark.parametrize("kind", ["mixture", "ideal_point", "user_latent"])
def test_personalised_models_serve_both_groups(data, fitted, kind):
    _, _, test, test_features = data
    correct, annotators = pair_outcomes(fitted[kind], test, test_features)
    assert correct.size == 400
    report = group_metrics(correct, _groups(annotators))
    assert set(report["groups"]) == {"A", "B"}
    assert report["groups"]["A"]["mean"] >= 0.9   # observed 1.0 (seed 0)
    assert report["groups"]["B"]["mean"] >= 0.9   # observed 0.98-1.0
    assert report["worst_value"] >= 0.9


def test_shared_model_is_at_chance_on_disputed_pairs(data, fitted):
    _, _, test, test_features = data
    correct, annotators = pair_outcomes(fitted["shared"], test, test_features)
    # a disputed pair differs only in x1 and A prefers larger x1, B smaller: a reward that does not know the
    # annotator orders every such pair by the sign of its x1 weight, so it gets one group's pairs right and
    # the other's wrong; with 200 test pairs per group the pooled accuracy is 0.5
    assert 0.4 <= correct.mean() <= 0.6
    report = group_metrics(correct, _groups(annotators))
    assert report["worst_value"] <= 0.5  # the group the shared reward sides against
    # the shared model's weight on the disputed feature is small next to the agreed one
    weight = fitted["shared"].module.weight.detach().numpy()
    assert abs(weight[1]) < 0.5 * abs(weight[0])


def test_unseen_annotator_gets_population_mean(data, fitted):
    _, features, _, _ = data
    x = np.stack([features[name] for name in list(features)[:20]])
    mixture = fitted["mixture"]
    module = mixture.module
    # by hand: mean over annotators of softmax(a_u), then the prototypes' rewards mixed with it
    logits = module.user_table.detach().numpy()
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    expected = (x @ module.prototypes.detach().numpy().T) @ weights.mean(0)
    np.testing.assert_allclose(mixture.rewards(x, "never-seen"), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mixture.rewards(x, None), expected, rtol=1e-10, atol=1e-12)
    ideal = fitted["ideal_point"]
    point = ideal.module.user_table.detach().numpy().mean(0)
    embedded = x @ ideal.module.projection.detach().numpy().T
    np.testing.assert_allclose(ideal.rewards(x, None), -((embedded - point) ** 2).sum(1), rtol=1e-10)
    # the population agrees on feature 0 only: the population reward ranks by it
    agreed = np.array([[0.8, 0.0], [-0.8, 0.0]])
    for kind in ("mixture", "ideal_point", "user_latent"):
        rewards = fitted[kind].rewards(agreed, "never-seen")
        assert rewards[0] > rewards[1]


def test_adapting_a_new_annotator_from_few_labels(data, fitted):
    _, _, test, test_features = data
    few, few_features = two_group_world(7, per_annotator=15, disputed=False, annotators_per_group=1,
                                        groups=("B",), prefix="new-")
    disputed_b = [r for r in test if r.annotator.startswith("B-")]
    relabelled = [RankedList(candidates=r.candidates, ranks=r.ranks, annotator="new-B-0") for r in disputed_b]
    for kind in ("mixture", "user_latent"):
        base = fitted[kind]
        before, _ = pair_outcomes(base, relabelled, test_features)
        adapted = adapt_annotator(base, "new-B-0", few, few_features, seed=0)
        after, _ = pair_outcomes(adapted, relabelled, test_features)
        assert adapted.annotators[-1] == "new-B-0" and len(adapted.annotators) == len(base.annotators) + 1
        assert after.mean() >= 0.85 > before.mean()
        # the other annotators are untouched
        x = np.array([[0.3, 0.7]])
        np.testing.assert_array_equal(adapted.rewards(x, "A-0"), base.rewards(x, "A-0"))


def test_fitting_is_deterministic_per_seed(data):
    train, features, _, _ = data
    subset = train[:200]
    x = np.array([[0.2, -0.4], [0.5, 0.5]])
    first = fit_personal_reward(subset, features, model="user_latent", seed=3, epochs=20, batch_size=32)
    second = fit_personal_reward(subset, features, model="user_latent", seed=3, epochs=20, batch_size=32)
    other = fit_personal_reward(subset, features, model="user_latent", seed=4, epochs=20, batch_size=32)
    assert first.history == second.history
    np.testing.assert_array_equal(first.rewards(x, "A-1"), second.rewards(x, "A-1"))
    assert not np.array_equal(first.rewards(x, "A-1"), other.rewards(x, "A-1"))


def test_listwise_objective_and_errors():
    features = {"a": [1.0, 0.0], "b": [0.0, 0.0], "c": [-1.0, 0.0]}
    lists = [RankedList(candidates=["a", "b", "c"], ranks=[0, 1, 2], annotator="u")] * 5
    model = fit_personal_reward(lists, features, model="mixture", objective="pl_reward", epochs=100, seed=0)
    rewards = model.rewards(np.array([features["a"], features["b"], features["c"]]), "u")
    assert rewards[0] > rewards[1] > rewards[2]
    bad = [RankedList(candidates=["a", "b"], ranks=[0, 1]), RankedList(candidates=["a", "zzz"], ranks=[0, 1])]
    with pytest.raises(DataError) as info:
        fit_personal_reward(bad, features)
    assert info.value.line == 1 and info.value.field == "candidates[1]"
    with pytest.raises(ValueError, match="unknown personal model"):
        fit_personal_reward(lists, features, model="nope")
    with pytest.raises(ValueError, match="reward objective"):
        fit_personal_reward(lists, features, objective="dpo")


@pytest.mark.parametrize("kind", PERSONAL_MODELS)
def test_save_and_load(data, fitted, kind, tmp_path):
    from rankalign.personal import load_personal_reward, save_personal_reward

    _, features, _, _ = data
    model = fitted[kind]
    if kind != "shared":
        few, few_features = two_group_world(8, per_annotator=5, disputed=False, annotators_per_group=1,
                                            groups=("A",), prefix="late-")
        model = adapt_annotator(model, "late-A-0", few, few_features, epochs=10)
    save_personal_reward(model, tmp_path / kind)
    assert sorted(p.name for p in (tmp_path / kind).iterdir()) == ["personal_config.json",
                                                                   "personal_model.safetensors"]
    loaded = load_personal_reward(tmp_path / kind)
    assert loaded.kind == kind and loaded.annotators == model.annotators
    x = np.stack([features[name] for name in list(features)[:10]])
    for annotator in (model.annotators[0], model.annotators[-1], None):
        np.testing.assert_array_equal(loaded.rewards(x, annotator), model.rewards(x, annotator))
