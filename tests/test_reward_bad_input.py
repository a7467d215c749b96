"""Bad input to the reward API (``RewardModel``, ``train_reward_model``, the judges): a UsageError (or DataError)
naming the argument, never a TypeError from deep inside or a silently different model."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rankalign.data.errors import DataError  # noqa: E402
from rankalign.data.records import RankedList  # noqa: E402
from rankalign.engine import build_tokenizer, tiny_causal_lm  # noqa: E402
from rankalign.errors import UsageError  # noqa: E402
from rankalign.reward import (  # noqa: E402
    EnsembleJudge,
    PreferenceJudge,
    RewardModel,
    RewardModelJudge,
    aggregate_pairwise,
    ensemble_scores,
    ranking_from_scores,
    score_lists,
    skew_symmetric_operator,
    train_reward_model,
)

WORDS = ["good", "bad", "cat", "dog", "sun", "tree"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(WORDS, vocab_size=32, kind="word")


def backbone(tokenizer):
    return tiny_causal_lm(len(tokenizer), hidden_size=16, layers=1, heads=2, seed=0)


def pairs(n=3):
    return [RankedList(prompt="cat", candidates=["good cat", "bad dog"], ranks=[0, 1]) for _ in range(n)]


# ------------------------------------------------------------------------------------------ RewardModel
@pytest.mark.parametrize(("options", "says"), [
    ({"num_attributes": 0}, "num_attributes must be a whole number >= 1, got 0"),
    ({"num_attributes": 2.5}, "num_attributes must be a whole number >= 1, got 2.5"),
    ({"num_attributes": "2"}, "num_attributes must be a whole number >= 1, got '2'"),
    ({"num_attributes": True}, "num_attributes must be a whole number >= 1, got True"),
    ({"ensemble_size": 0}, "ensemble_size must be a whole number >= 1, got 0"),
    ({"ensemble_size": 2.5}, "ensemble_size must be a whole number >= 1, got 2.5"),   # was 2 heads, silently
    ({"preference_dim": 2.5}, "preference_dim must be a whole number >= 2, got 2.5"),  # was 2, silently
    ({"num_attributes": 2, "attribute_names": "ab"}, "attribute_names must be a list of non-empty strings"),
    ({"num_attributes": 2, "attribute_names": ["a", ""]}, "attribute_names must be a list of non-empty strings"),
    ({"num_attributes": 2, "attribute_weights": [math.nan, 1.0]}, "attribute_weights must be a list of finite"),
    ({"num_attributes": 2, "attribute_weights": 1.0}, "attribute_weights must be a list of finite"),
])
def test_reward_model_arguments_out_of_range_name_the_argument(tokenizer, options, says):
    with pytest.raises(UsageError, match=says):
        RewardModel(backbone(tokenizer), **options)


@pytest.mark.parametrize("value", [None, "tiny:llama"])
def test_a_backbone_that_is_not_a_model_is_named(value):
    with pytest.raises(UsageError, match="backbone must be a transformers model"):
        RewardModel(value)


# ----------------------------------------------------------------------------------- train_reward_model
@pytest.mark.parametrize("records", [
    [RankedList(prompt="cat", candidates=["good"], ranks=[0])] * 3,
    [RankedList(prompt="cat", candidates=["good", "bad"], ranks=[0, 0])] * 3,
], ids=["one_candidate", "all_tied"])
@pytest.mark.parametrize("objective", ["bt_reward", "pl_reward"])
def test_data_without_an_ordered_pair_is_refused_for_pair_objectives(tokenizer, records, objective):
    with pytest.raises(DataError, match="none of the 3 lists holds two candidates of different rank") as error:
        train_reward_model(RewardModel(backbone(tokenizer)), tokenizer, records, objective=objective)
    assert error.value.reason == "no_ordered_pair"


def test_tied_pairs_still_train_the_tie_model(tokenizer):
    tied = [RankedList(prompt="cat", candidates=["good", "bad"], ranks=[0, 0])] * 3
    history = train_reward_model(RewardModel(backbone(tokenizer)), tokenizer, tied, objective="davidson_reward")
    assert len(history) == 1 and math.isfinite(history[0]["loss"])


@pytest.mark.parametrize(("options", "says"), [
    ({"objective_params": {"nu": 0.5}}, "objective 'bt_reward' has no parameter 'nu'"),
    ({"objective_params": {"bta": 1}}, "objective 'bt_reward' has no parameter 'bta'"),
    ({"objective_params": "nu=1"}, "objective_params must be a mapping"),
    ({"max_grad_norm": -1.0}, "max_grad_norm must be a finite number >= 0"),
    ({"warmup_ratio": 2.0}, r"warmup_ratio must be in \[0, 1\), got 2.0"),
    ({"warmup_ratio": -0.5}, r"warmup_ratio must be in \[0, 1\), got -0.5"),
    ({"epochs": 1.5}, "epochs must be a whole number >= 1, got 1.5"),
    ({"lr": math.nan}, "lr must be a finite number > 0, got nan"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
])
def test_train_reward_model_settings_out_of_range(tokenizer, options, says):
    with pytest.raises(UsageError, match=says):
        train_reward_model(RewardModel(backbone(tokenizer)), tokenizer, pairs(), **options)


def test_max_grad_norm_zero_turns_clipping_off_instead_of_zeroing_every_gradient(tokenizer):
    """The reward config documents 0 as "no clipping"; clipping to norm 0 made every gradient 0, so nothing
    trained. With 0 the run must be the unclipped run, whose loss moves between the two identical steps."""
    runs = {}
    for clip in (0, None):
        model = RewardModel(backbone(tokenizer), seed=1)
        runs[clip] = train_reward_model(model, tokenizer, pairs(), epochs=2, lr=1e-2, max_grad_norm=clip)
    losses = [row["loss"] for row in runs[0]]
    assert losses == [row["loss"] for row in runs[None]]
    assert losses[1] < losses[0]  # the same batch twice: an update happened


# ---------------------------------------------------------------------------------------------- judges
def test_judges_refuse_a_string_of_candidates_and_a_model_that_is_not_a_reward_model(tokenizer):
    judge = RewardModelJudge(RewardModel(backbone(tokenizer)), tokenizer)
    with pytest.raises(UsageError, match="candidates must be a list of responses, got str"):
        judge.rank("cat", "good")  # was read as the candidates 'g', 'o', 'o', 'd'
    for cls in (RewardModelJudge, EnsembleJudge, PreferenceJudge):
        with pytest.raises(UsageError, match=f"{cls.__name__} needs a rankalign.reward.RewardModel"):
            cls(backbone(tokenizer), tokenizer)


@pytest.mark.parametrize("tolerance", [-1.0, math.nan, math.inf])
def test_tie_tolerance_is_checked_where_it_is_given(tokenizer, tolerance):
    with pytest.raises(UsageError, match="tie_tolerance must be a finite number >= 0"):
        RewardModelJudge(RewardModel(backbone(tokenizer)), tokenizer, tie_tolerance=tolerance)
    with pytest.raises(UsageError, match="tie_tolerance must be a finite number >= 0"):
        ranking_from_scores("j", "p", ["a", "b", "c"], [1.0, 1.0, 0.5], tie_tolerance=tolerance)
    # the exact tie a valid tolerance keeps (a negative one split it: ranks 0, 1, 2)
    assert ranking_from_scores("j", "p", ["a", "b", "c"], [1.0, 1.0, 0.5]).ranks == (0, 0, 1)


def test_ensemble_k_and_batch_sizes(tokenizer):
    ensemble = RewardModel(backbone(tokenizer), ensemble_size=2)
    with pytest.raises(UsageError, match="k must be a finite number"):
        EnsembleJudge(ensemble, tokenizer, k=math.nan)
    with pytest.raises(UsageError, match="k must be a finite number"):
        ensemble_scores(ensemble, tokenizer, pairs(1), k=math.nan)
    with pytest.raises(UsageError, match="batch_size must be a whole number >= 1, got 0"):
        score_lists(ensemble, tokenizer, pairs(1), batch_size=0)


@pytest.mark.parametrize("matrix", [[[0.5, math.nan], [0.5, 0.5]], [[0.5, 1.5], [-0.5, 0.5]]])
def test_pairwise_probabilities_must_be_probabilities(matrix):
    with pytest.raises(UsageError, match=r"probabilities must lie in \[0, 1\]"):
        aggregate_pairwise(matrix)


def test_one_eigenvalue_per_block():
    with pytest.raises(UsageError, match=r"one scale per 2x2 block \(2 for dim 4\), got shape \(1,\)"):
        skew_symmetric_operator(4, [2.0])  # was broadcast to both blocks
    operator = skew_symmetric_operator(4, [2.0, 3.0])
    assert operator[1, 0] == 2.0 and operator[3, 2] == 3.0 and operator[0, 1] == -2.0
