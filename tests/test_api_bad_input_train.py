"""Bad input to the Python training API (``train_preference``, ``PreferenceTrainer``, a ``TrainConfig`` built in
Python): each is refused before the reference pass with an error that names the argument or the list.

The expected numbers are the test's own: the tiny model's vocabulary is ``VOCAB`` tokens, so ``VOCAB`` is the
first id outside it and ``VOCAB - 1`` the last inside.
"""

from __future__ import annotations

import math
import os
import re

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankalign.data.errors import DataError  # noqa: E402
from rankalign.engine import TokenizedList, tiny_causal_lm  # noqa: E402
from rankalign.errors import UsageError  # noqa: E402
from rankalign.train import ConfigError, PeftConfig, TrainConfig  # noqa: E402
from rankalign.train.trainer import PreferenceTrainer, make_training_arguments, train_preference  # noqa: E402

VOCAB = 40


def model(vocab=VOCAB):
    return tiny_causal_lm(vocab, hidden_size=16, layers=1, heads=2, seed=0)


def pair(prompt=(3, 4), chosen=(5, 2), rejected=(6, 2), ranks=(0, 1), **fields):
    return TokenizedList(prompt_ids=list(prompt), response_ids=[list(chosen), list(rejected)], ranks=list(ranks),
                         **fields)


def config(tmp_path, **overrides):
    values = dict(objective="dpo", batch_size=2, max_steps=1, lr=1e-2, output_dir=str(tmp_path / "run"),
                  report_to=[], progress=False, loss_params={"beta": 0.5}, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def trainer(tmp_path, lists, **kwargs):
    return PreferenceTrainer(kwargs.pop("policy", None) or model(), make_training_arguments(config(tmp_path)), lists,
                             **kwargs)


# ------------------------------------------------------------------------------- TrainConfig built in Python
@pytest.mark.parametrize(("field", "value", "says"), [
    ("epochs", "2", "epochs: expected a number"),
    ("batch_size", "2", "batch_size: expected a whole number"),
    ("max_steps", 2.5, "max_steps: expected a whole number"),
    ("seed", 0.5, "seed: expected a whole number"),
    ("report_to", "none", "report_to: expected a list of strings"),
    ("loss_params", None, "loss_params: expected a mapping"),
    ("loss_params", "beta=0.1", "loss_params: expected a mapping"),
    ("peft", {"enabled": True, "r": 0}, "peft: expected a PeftConfig"),
])
def test_a_python_config_is_checked_for_types_as_a_yaml_config_is(tmp_path, field, value, says):
    with pytest.raises(ConfigError, match=says):
        train_preference(model(), None, [pair()], config(tmp_path, **{field: value}))


def test_nested_sections_are_checked_and_a_non_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"peft\.r: expected a whole number"):
        train_preference(model(), None, [pair()], config(tmp_path, peft=PeftConfig(enabled=True, r="8")))
    with pytest.raises(ConfigError, match="config must be a rankalign.train.TrainConfig, got dict"):
        train_preference(model(), None, [pair()], {"objective": "dpo"})


# ------------------------------------------------------------------------------------------------- lists
def test_no_lists_is_an_error_not_a_run_of_zero_steps(tmp_path):
    with pytest.raises(DataError, match="no training lists"):
        trainer(tmp_path, [])
    with pytest.raises(DataError, match="no training data"):
        train_preference(model(), None, [], config(tmp_path))


@pytest.mark.parametrize("objective", ["dpo", "ipo", "pl_dpo"])
@pytest.mark.parametrize("lists", [
    [TokenizedList(prompt_ids=[3, 4], response_ids=[[5, 2]], ranks=[0])] * 3,   # K = 1
    [pair(ranks=(0, 0))] * 3,                                                    # all tied
], ids=["one_candidate", "all_tied"])
def test_lists_without_an_ordered_pair_give_pair_objectives_nothing_and_are_refused(tmp_path, objective, lists):
    with pytest.raises(DataError, match="none of the 3 lists holds two responses of different rank") as error:
        trainer(tmp_path, lists, objective=objective)
    assert error.value.reason == "no_ordered_pair"


def test_one_ordered_list_among_single_candidate_ones_is_enough_and_tie_aware_objectives_take_ties(tmp_path):
    single = TokenizedList(prompt_ids=[3, 4], response_ids=[[5, 2]], ranks=[0])
    assert len(trainer(tmp_path, [single, single, pair()]).train_dataset) == 3
    assert len(trainer(tmp_path, [pair(ranks=(0, 0))] * 2, objective="listnet").train_dataset) == 2
    with pytest.raises(DataError, match="each of the 2 lists has one response"):
        trainer(tmp_path, [single, single], objective="listnet")


@pytest.mark.parametrize(("ranks", "says"), [((0,), "1 ranks for 2 responses"), ((0, 1, 2), "3 ranks for 2 responses"),
                                             ((0, -3), "ranks must be whole numbers >= 0")])
def test_ranks_that_do_not_fit_the_responses_name_the_list(tmp_path, ranks, says):
    lists = [pair(), pair(ranks=ranks)]
    with pytest.raises(DataError, match=says) as error:
        train_preference(model(), None, lists, config(tmp_path))
    assert error.value.field == "lists[1].ranks"


def test_grades_of_the_wrong_length_name_the_list(tmp_path):
    with pytest.raises(DataError, match="1 grades for 2 responses") as error:
        trainer(tmp_path, [pair(grades=[1.0])])
    assert error.value.field == "lists[0].grades"


@pytest.mark.parametrize(("weights", "says"), [((-1.0, 1.0), "weight must be a finite number >= 0, got -1.0"),
                                               ((math.nan, 1.0), "weight must be a finite number >= 0, got nan"),
                                               ((0.0, 0.0), "all 2 lists have weight 0")])
def test_bad_list_weights_are_refused(tmp_path, weights, says):
    with pytest.raises(DataError, match=says):
        trainer(tmp_path, [pair(weight=w) for w in weights])


# -------------------------------------------------------------------------------------------- vocabulary
@pytest.mark.parametrize(("bad", "where"), [(VOCAB, "lists[1].response_ids[0]"), (VOCAB + 500, "lists[1].response_ids[0]"),
                                            (-1, "lists[1].response_ids[0]")])
def test_token_ids_outside_the_model_vocabulary_are_a_clear_error_not_an_index_error(tmp_path, bad, where):
    lists = [pair(), pair(chosen=(5, bad))]
    with pytest.raises(UsageError, match=re.escape(f"{where}: token id {bad} is outside the vocabulary of model "
                                                   f"({VOCAB} tokens")):
        train_preference(model(), None, lists, config(tmp_path))


def test_the_last_id_of_the_vocabulary_is_accepted_and_a_smaller_reference_is_named(tmp_path):
    lists = [pair(chosen=(5, VOCAB - 1))]
    assert len(trainer(tmp_path, lists).train_dataset) == 1
    with pytest.raises(UsageError, match=r"token id 39 is outside the vocabulary of ref_model \(20 tokens"):
        trainer(tmp_path, lists, ref_model=model(vocab=20))


def test_token_ids_must_be_whole_numbers(tmp_path):
    with pytest.raises(DataError, match="token ids must be whole numbers, got 4.5") as error:
        trainer(tmp_path, [pair(prompt=(3, 4.5))])
    assert error.value.field == "lists[0].prompt_ids"


# ----------------------------------------------------------------------------------- models, objectives
def test_a_model_on_the_meta_device_is_named(tmp_path):
    with pytest.raises(UsageError, match="model has weights on the meta device"):
        trainer(tmp_path, [pair()], policy=model().to("meta"))
    with pytest.raises(UsageError, match="ref_model has weights on the meta device"):
        trainer(tmp_path, [pair()], ref_model=model().to("meta"))


@pytest.mark.parametrize(("objective", "family"), [("bt_reward", "reward"), ("grpo", "policy_gradient")])
def test_objectives_of_other_trainers_are_refused_before_training(tmp_path, objective, family):
    with pytest.raises(UsageError, match=f"objective '{objective}' is a {family} objective"):
        train_preference(model(), None, [pair()], config(tmp_path, objective=objective, loss_params={}))


def test_unpaired_objectives_need_labelled_single_responses(tmp_path):
    with pytest.raises(DataError, match="objective 'kto' trains on unpaired data.*K = 2 and label None"):
        trainer(tmp_path, [pair()], objective="kto", loss_params={})
    single = TokenizedList(prompt_ids=[3, 4], response_ids=[[5, 2]], ranks=[0])
    with pytest.raises(DataError, match="K = 1 and label None"):
        trainer(tmp_path, [single], objective="kto", loss_params={})


def test_misspelt_objective_layout_and_non_mapping_loss_params(tmp_path):
    with pytest.raises(UsageError, match="unknown objective 'dpoo'"):
        trainer(tmp_path, [pair()], objective="dpoo")
    with pytest.raises(UsageError, match="layout must be auto, shared or duplicated, got 'sharde'"):
        trainer(tmp_path, [pair()], layout="sharde")
    with pytest.raises(UsageError, match="loss_params must be a mapping"):
        trainer(tmp_path, [pair()], loss_params="beta=0.5")


def test_layout_auto_trains(tmp_path):
    """``layout="auto"`` was accepted by the layout probe and then refused by the packer at the first batch."""
    lists = [pair(), pair(prompt=(7, 8, 9), chosen=(10, 2), rejected=(11, 12, 2))]
    result = trainer(tmp_path, lists, layout="auto", loss_params={"beta": 0.5}).train()
    # policy == reference at the first step: every log-ratio is 0 and DPO's loss is log 2
    assert result.training_loss == pytest.approx(math.log(2.0), abs=1e-5)


def test_run_config_checks_a_python_config_before_reading_the_data(tmp_path):
    from rankalign.train import run_config

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(ConfigError, match="max_records: expected a whole number, got '5'"):
        run_config(config(tmp_path, data=str(data), max_records="5"))
