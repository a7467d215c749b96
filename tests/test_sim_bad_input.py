"""Bad input to the simulation API (annotators, populations, the tabular and text worlds, judges, DemoSettings):
a UsageError naming the parameter, never a numpy/torch error from deep inside or a silently different result."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rankalign.errors import UsageError
from rankalign.sim import (
    Annotator,
    annotate,
    annotate_items,
    best_of_n_log_probs,
    kl_regularised_optimum,
    make_population,
    make_tabular_world,
    pairwise_population,
)
from rankalign.sim import text_world as tw
from rankalign.sim.demo import DemoSettings

PROMPT = "about sea fish\n"


def rng():
    return np.random.default_rng(0)


# --------------------------------------------------------------------------------------------- annotators
@pytest.mark.parametrize(("options", "says"), [
    ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
    ({"temperature": -1.0}, "temperature must be > 0, got -1.0"),
    ({"temperature": math.inf}, "temperature must be a finite number, got inf"),
    ({"temperature": "1"}, "temperature must be a finite number, got '1'"),
    ({"flip_rate": -0.1}, r"flip_rate must be in \[0, 0.5\], got -0.1"),
    ({"flip_rate": 1.5}, r"flip_rate must be in \[0, 0.5\], got 1.5"),
    ({"tie_strength": math.nan}, "tie_strength must be a finite number, got nan"),
    ({"tie_strength": math.inf}, "tie_strength must be a finite number, got inf"),
    ({"rating_noise": -1.0}, "rating_noise must be >= 0"),
    ({"rating_center": math.nan}, "rating_center must be a finite number"),
    ({"weights": (math.nan, 1.0)}, r"weights\[0\] must be a finite number, got nan"),
    ({"weights": 1.0}, "weights must be a non-empty sequence of numbers"),
    ({"weights": "12"}, "weights must be a non-empty sequence of numbers"),  # was read as (1.0, 2.0)
    ({"id": None}, "id must be a non-empty string"),
    ({"id": ""}, "id must be a non-empty string"),
])
def test_annotator_parameters_out_of_range(options, says):
    options = {"id": "a", **options}
    with pytest.raises(UsageError, match=says):
        Annotator(**options)


def test_annotator_weights_may_be_an_array_and_must_fit_the_components():
    annotator = Annotator("a", weights=np.array([1.0, -2.0]))
    assert annotator.weights == (1.0, -2.0)
    np.testing.assert_allclose(annotator.utilities(np.array([[1.0, 1.0], [3.0, 0.5]])), [-1.0, 2.0])
    with pytest.raises(UsageError, match=r"annotator 'a': 2 weights \(its own\) for components of shape \(2, 4\)"):
        annotator.utilities(np.ones((2, 4)))


def test_annotate_needs_one_component_row_per_candidate():
    # thumbs used to zip 2 candidates with 3 rows without a word
    with pytest.raises(UsageError, match=r"2 candidates, components of shape \(3, 4\)"):
        annotate(Annotator("a"), "p", ["x", "y"], np.ones((3, 4)), rng(), kind="thumbs", gold_weights=np.ones(4))


@pytest.mark.parametrize(("groups", "says"), [
    ([("g", 0, None)], r"groups\[0\] \('g'\): size must be a whole number >= 1, got 0"),
    ([("g", -2, None), ("h", 1, None)], r"groups\[0\] \('g'\): size must be a whole number >= 1, got -2"),
    ([("h", 1, None), ("g", 0, None)], r"groups\[1\] \('g'\): size must be a whole number >= 1, got 0"),
    ([("g", 1.5, None)], "size must be a whole number >= 1, got 1.5"),
    ([("g", 1, None), ("g", 2, None)], "group name 'g' is used twice"),  # two annotators with the id g-0
    ([], "empty population"),
    ([("g", 1)], r"groups\[0\] must be \(name, size, weights\)"),
])
def test_populations_with_no_members_or_bad_groups_are_refused(groups, says):
    with pytest.raises(UsageError, match=says):
        make_population(groups)


def test_annotate_items_needs_annotators_and_a_positive_count():
    items = [("p", ["a", "b"], np.ones((2, 4)))]
    with pytest.raises(UsageError, match="population is empty"):
        annotate_items([], items, rng(), gold_weights=np.ones(4))
    for count in (0, -1):  # used to return [] without a word
        with pytest.raises(UsageError, match=f"annotations_per_item must be a whole number >= 1, got {count}"):
            annotate_items([Annotator("a")], items, rng(), gold_weights=np.ones(4), annotations_per_item=count)


# ---------------------------------------------------------------------------------------- tabular world
@pytest.mark.parametrize(("args", "options", "says"), [
    ((0,), {}, "num_prompts must be a whole number >= 1, got 0"),
    ((-1,), {}, "num_prompts must be a whole number >= 1, got -1"),
    ((4, 1), {}, "num_candidates must be a whole number >= 2"),
    ((4.5,), {}, "num_prompts must be a whole number >= 1, got 4.5"),
    ((4, 4), {"max_length": 0}, "max_length must be a whole number >= 1, got 0"),
    ((4, 4), {"reference_scale": math.nan}, "reference_scale must be a finite number >= 0, got nan"),
    ((4, 4), {"gold_scale": -1.0}, "gold_scale must be a finite number >= 0, got -1.0"),
])
def test_tabular_world_sizes_out_of_range(args, options, says):
    with pytest.raises(UsageError, match=says):
        make_tabular_world(*args, **options)


def test_dim_zero_is_refused_only_where_dim_is_used():
    with pytest.raises(UsageError, match="dim must be a whole number >= 1, got 0"):
        make_tabular_world(2, 3, 0)  # used to build a world whose every utility is 0
    assert make_tabular_world(2, 3, 0, one_hot=True).dim == 6  # one-hot: d = P * N, dim ignored


def test_exact_policies_check_beta_n_and_probabilities():
    ref = np.log(np.full((1, 3), 1 / 3))
    rewards = np.array([[0.0, 1.0, 2.0]])
    for beta in (0.0, -1.0, math.nan):  # 0 gave NaN log-probs, -1 the policy that avoids the reward
        with pytest.raises(UsageError, match="beta must be a finite number > 0"):
            kl_regularised_optimum(ref, rewards, beta)
    with pytest.raises(UsageError, match="n must be a whole number >= 1, got 1.5"):
        best_of_n_log_probs(ref, rewards, 1.5)
    with pytest.raises(UsageError, match=r"every entry must lie in \[0, 1\]"):
        pairwise_population(np.full((1, 3, 3), 1.5))


# ------------------------------------------------------------------------------------------- text world
@pytest.mark.parametrize(("call", "says"), [
    (lambda: tw.reward_components(None, "fish ."), "a text-world prompt is a string"),
    (lambda: tw.prompt_topic(5), "a text-world prompt is a string"),
    (lambda: tw.prompt_topic(""), "not a prompt of the text world: ''"),
    (lambda: tw.reward_components(PROMPT, None), "a response is a string"),
    (lambda: tw.make_text_world().components(PROMPT, "fish ."), "responses must be a list of strings, got str"),
    (lambda: tw.TextWorld(prompts=(), gold_weights=tw.GOLD_WEIGHTS), "prompts must be a non-empty sequence"),
    (lambda: tw.TextWorld(prompts=("",), gold_weights=tw.GOLD_WEIGHTS), "not a prompt of the text world: ''"),
    (lambda: tw.TextWorld(prompts=(PROMPT,), gold_weights=np.ones(3)), "gold_weights must be 4 finite numbers"),
    (lambda: tw.grammar_ranked_lists(-1), "num_lists must be a whole number >= 0, got -1"),
    (lambda: tw.grammar_ranked_lists(2, k=0), "k must be a whole number >= 1, got 0"),
    (lambda: tw.gold_judge().rank(PROMPT, []), "a judge needs at least one candidate"),
    (lambda: tw.gold_judge().rank(PROMPT, "fish ."), "candidates must be a list of strings, got str"),
    (lambda: tw.gold_judge(tie_tolerance=-1.0), "tie_tolerance must be a finite number >= 0"),
])
def test_text_world_helpers_refuse_bad_prompts_and_responses(call, says):
    with pytest.raises(UsageError, match=says):
        call()


def test_components_of_no_responses_are_an_empty_table():
    assert tw.make_text_world().components(PROMPT, []).shape == (0, len(tw.COMPONENTS))
    assert tw.make_text_world().gold_rewards(PROMPT, []).shape == (0,)


@pytest.fixture(scope="module")
def tiny_policy():
    from rankalign.engine import tiny_causal_lm

    tokenizer = tw.build_text_tokenizer()
    return tiny_causal_lm(len(tokenizer), hidden_size=16, layers=1, heads=2, max_position_embeddings=128), tokenizer


def test_sampling_and_scoring_refuse_a_bare_string_and_mismatched_lists(tiny_policy):
    model, tokenizer = tiny_policy
    with pytest.raises(UsageError, match="prompts must be a list of strings, got str"):
        tw.sample_responses(model, tokenizer, PROMPT, 2, max_new_tokens=2)  # was one prompt per character
    for k in (0, -1):  # returned empty groups
        with pytest.raises(UsageError, match=f"k must be a whole number >= 1, got {k}"):
            tw.sample_responses(model, tokenizer, [PROMPT], k, max_new_tokens=2)
    with pytest.raises(UsageError, match="max_tries must be a whole number >= 1, got 0"):
        tw.sample_responses(model, tokenizer, [PROMPT], 2, max_new_tokens=2, max_tries=0)
    with pytest.raises(UsageError, match="2 prompts, got 1"):  # zip dropped the second prompt
        tw.response_logps(model, tokenizer, [PROMPT, PROMPT], [["fish ."]])
    with pytest.raises(UsageError, match=r"responses\[0\] must be a list of strings, got str"):
        tw.response_logps(model, tokenizer, [PROMPT], ["fish ."])
    with pytest.raises(UsageError, match="batch_size must be a whole number >= 1, got 0"):
        tw.train_reference_policy(tw.make_text_world(), tokenizer, steps=1, batch_size=0, hidden_size=16, layers=1)


def test_annotator_judge_checks_its_annotator_and_candidates():
    from rankalign.sim.judges import AnnotatorJudge

    with pytest.raises(UsageError, match="annotator must be a rankalign.sim.Annotator, got str"):
        AnnotatorJudge("a")
    judge = AnnotatorJudge(Annotator("a"))
    with pytest.raises(UsageError, match="candidates must be a list of responses, got str"):
        judge.rank(PROMPT, "fish .")
    with pytest.raises(UsageError, match=r"1 weights \(the gold weights\)"):
        AnnotatorJudge(Annotator("a"), gold_weights=[1.0]).rank(PROMPT, ["fish .", "the sun is big ."])


# -------------------------------------------------------------------------------------------- the demo
@pytest.mark.parametrize(("options", "name"), [
    ({"k": 1}, "k"), ({"k": 0}, "k"), ({"online_k": 1}, "online_k"), ({"seed": -1}, "seed"),
    ({"seed": 2**32}, "seed"), ({"beta": -1.0}, "beta"), ({"beta": 0.0}, "beta"), ({"temperature": 0.0}, "temperature"),
    ({"learning_rate": math.nan}, "learning_rate"), ({"epochs": 0.0}, "epochs"), ({"rounds": 0}, "rounds"),
    ({"num_prompts": 0}, "num_prompts"), ({"num_prompts": 25}, "num_prompts"), ({"batch_size": 0}, "batch_size"),
    ({"sft_steps": 2.5}, "sft_steps"), ({"online_judge": "people"}, "online_judge"), ({"pg_beta": -0.1}, "pg_beta"),
    ({"online_epochs": 0.0}, "online_epochs"), ({"online_replay": "yes"}, "online_replay"),
])
def test_demo_settings_refuse_nonsense_values(options, name):
    with pytest.raises(UsageError, match=rf"DemoSettings\.{name} must be"):
        DemoSettings(**options)


def test_demo_settings_defaults_and_quick_are_valid_and_quick_checks_the_seed():
    assert DemoSettings().k == 4 and DemoSettings.quick(3).seed == 3
    assert DemoSettings(online_k=None, online_epochs=None, num_prompts=24).num_prompts == 24
    with pytest.raises(UsageError, match=r"DemoSettings\.seed must be a whole number in \[0, 2\*\*32\)"):
        DemoSettings.quick(-3)
