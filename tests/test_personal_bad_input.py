"""rankalign.personal with bad arguments: out-of-range settings, misspelt sizes, no annotators, feature vectors
of the wrong length -- each a clear error naming the argument or field, never a silent no-op or a torch error."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rankalign.data.errors import DataError  # noqa: E402
from rankalign.data.records import RankedList  # noqa: E402
from rankalign.errors import UsageError  # noqa: E402
from rankalign.personal import (  # noqa: E402
    adapt_annotator,
    few_shot_curve,
    fit_personal_reward,
    fit_vpl_reward,
)

D = 3


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    features = {f"i{i}": rng.normal(size=D) for i in range(6)}
    records = [RankedList(candidates=[f"i{a}", f"i{b}"], ranks=[0, 1], annotator=f"u{a % 2}")
               for a in range(6) for b in range(6) if a < b]
    return records, features


@pytest.mark.parametrize("kwargs, name", [
    ({"epochs": 0}, "epochs"),              # used to return an untrained model
    ({"epochs": 1.5}, "epochs"),
    ({"lr": 0}, "lr"),                      # used to train nothing
    ({"batch_size": 0}, "batch_size"),      # used to fail in range()
    ({"batch_size": -1}, "batch_size"),     # used to run no step and report a loss of 0
    ({"seed": -1}, "seed"),
    ({"prior_weight": -1.0}, "prior_weight"),
    ({"prior_weight": float("nan")}, "prior_weight"),
    ({"model": "mixture", "num_prototypes": 0}, "num_prototypes"),
    ({"model": "mixture", "num_prototypes": 1.7}, "num_prototypes"),   # used to be cut to 1
    ({"model": "pal", "hidden_size": -3}, "hidden_size"),
    ({"model": "user_latent", "latent_dim": 0}, "latent_dim"),
    ({"model": "mixture", "num_protoypes": 3}, "num_protoypes"),      # misspelt: used to be ignored
    ({"model": "shared", "latent_dim": 3}, "latent_dim"),             # another model's setting
    ({"model": "mixtur"}, "mixtur"),
])
def test_fit_settings_out_of_range_or_unknown_are_named(world, kwargs, name):
    records, features = world
    with pytest.raises(UsageError, match=name):
        fit_personal_reward(records, features, **{"epochs": 2, **kwargs})


def test_a_misspelt_size_gets_the_close_match(world):
    records, features = world
    with pytest.raises(UsageError, match="did you mean 'num_prototypes'"):
        fit_personal_reward(records, features, model="pal", num_protoypes=3, epochs=2)


@pytest.mark.parametrize("model", ["mixture", "pal", "ideal_point", "user_latent"])
def test_a_per_annotator_model_needs_annotators(world, model):
    records, features = world
    anonymous = [RankedList(candidates=r.candidates, ranks=r.ranks) for r in records]
    with pytest.raises(DataError) as caught:  # used to be a RuntimeError from index_select
        fit_personal_reward(anonymous, features, model=model, epochs=2)
    assert caught.value.field == "annotator"
    assert fit_personal_reward(anonymous, features, model="shared", epochs=2).annotators == []


def test_feature_vectors_of_another_length_than_the_fit(world):
    records, features = world
    model = fit_personal_reward(records, features, model="mixture", epochs=2)
    assert model.feature_dim == D
    wider = {key: np.append(value, 0.0) for key, value in features.items()}
    with pytest.raises(DataError, match=f"length {D + 1}; the model was fitted on length {D}"):
        model.rewards(np.zeros((2, D + 1)), "u0")
    with pytest.raises(DataError, match="fitted on length"):
        model.score_records(records[:2], wider)
    with pytest.raises(DataError, match="fitted on length"):
        adapt_annotator(model, "new", records[:2], wider, epochs=2)
    assert model.rewards(np.zeros((2, D)), "u0").shape == (2,)


def test_features_that_are_not_numeric_vectors(world):
    records, features = world
    with pytest.raises(TypeError, match="features must be a mapping"):
        fit_personal_reward(records, [features[k] for k in sorted(features)], epochs=2)
    words = dict(features, i1=["a", "b", "c"])
    with pytest.raises(DataError) as caught:  # used to be numpy's "could not convert string to float"
        fit_personal_reward(records, words, epochs=2)
    assert (caught.value.line, caught.value.field, caught.value.reason) == (0, "candidates[1]", "bad_feature")
    empty = {key: np.zeros(0) for key in features}
    with pytest.raises(DataError, match="non-empty"):  # used to fit a constant reward
        fit_personal_reward(records, empty, epochs=2)


def test_adapt_annotator_needs_an_annotator_id(world):
    records, features = world
    model = fit_personal_reward(records, features, model="mixture", epochs=2)
    with pytest.raises(UsageError, match="annotator must be"):  # used to add an annotator named "None"
        adapt_annotator(model, None, records[:2], features, epochs=2)
    with pytest.raises(UsageError, match="epochs"):
        adapt_annotator(model, "new", records[:2], features, epochs=-1)
    with pytest.raises(TypeError, match="PersonalRewardModel"):
        adapt_annotator("model", "new", records[:2], features)
    assert adapt_annotator(model, 7, records[:2], features, epochs=2).annotators == ["u0", "u1", "7"]


@pytest.mark.parametrize("kwargs, name", [
    ({"context_size": 0}, "context_size"),        # used to be numpy's "low >= high"
    ({"users_per_step": 0}, "users_per_step"),    # used to train on NaN losses
    ({"latent_dim": 0}, "latent_dim"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"kl_weight": -1.0}, "kl_weight"),
    ({"steps": 0}, "steps"),
    ({"lr": 0.0}, "lr"),
    ({"seed": -1}, "seed"),
])
def test_vpl_settings_out_of_range_are_named(world, kwargs, name):
    records, features = world
    with pytest.raises(UsageError, match=name):
        fit_vpl_reward(records, features, **{"steps": 2, **kwargs})


def test_vpl_feature_and_latent_lengths(world):
    records, features = world
    mixed = dict(features, i1=np.zeros(D + 1))
    with pytest.raises(DataError) as caught:  # used to be numpy's "all input arrays must have the same shape"
        fit_vpl_reward(records, mixed, steps=2)
    assert (caught.value.line, caught.value.field) == (0, "candidates[1]")
    model = fit_vpl_reward(records, features, steps=2, latent_dim=4, hidden_size=8)
    with pytest.raises(DataError) as caught:
        model.rewards(np.zeros((2, D)), np.zeros(5))
    assert caught.value.field == "latent"
    with pytest.raises(DataError) as caught:
        model.rewards(np.zeros((2, D + 1)), np.zeros(4))
    assert caught.value.field == "features"
    assert model.rewards(np.zeros((2, D)), np.zeros(4)).shape == (2,)


def test_few_shot_curve_arguments_and_test_annotators(world):
    records, features = world
    settings = {"shared": {"epochs": 2}}
    with pytest.raises(UsageError, match="shots"):
        few_shot_curve(records, records, features, shots=(-1,), models=("shared",), fit_settings=settings)
    with pytest.raises(UsageError, match="shots is empty"):
        few_shot_curve(records, records, features, shots=(), models=("shared",), fit_settings=settings)
    with pytest.raises(UsageError, match="'shard'"):
        few_shot_curve(records, records, features, shots=(0,), models=("shard",), fit_settings=settings)
    one = [RankedList(candidates=["i0", "i1"], ranks=[0, 1], annotator="new")]
    with pytest.raises(DataError, match="'new' has no strictly ordered pair left"):  # used to be KeyError 'new'
        few_shot_curve(records, one, features, shots=(0, 1), models=("shared",), fit_settings=settings)
    anonymous = [RankedList(candidates=["i0", "i1"], ranks=[0, 1])] * 3
    with pytest.raises(DataError) as caught:  # used to be KeyError None
        few_shot_curve(records, anonymous, features, shots=(0, 1), models=("shared",), fit_settings=settings)
    assert caught.value.field == "annotator"
