"""The objective registry: every stable name of issue 4, with its paper, parameters and formula."""

import inspect

import pytest

pytest.importorskip("torch")

from rankalign import losses  # noqa: E402
from rankalign.losses import FAMILIES, get, names  # noqa: E402

STABLE_NAMES = [
    "dpo", "robust_dpo", "ipo", "hinge", "r_dpo", "dpop", "simpo", "cpo", "orpo", "ln_dpo", "soft_dpo", "exo", "nca",
    "apo_zero", "apo_down", "sppo_hard", "discopop", "f_dpo", "pl_dpo", "pro", "lipo_lambda",
    "all_pairs_dpo", "listnet", "best_vs_rest", "kto", "bco", "bco_pair", "apo_zero_unpaired",
    "bt_reward", "pl_reward", "davidson_reward", "bce_reward", "rating_regression",
]
FAMILY_OF = {
    **{n: "listwise" for n in ["pl_dpo", "pro", "lipo_lambda", "all_pairs_dpo", "listnet", "best_vs_rest"]},
    **{n: "unpaired" for n in ["kto", "bco", "apo_zero_unpaired"]},
    **{n: "reward" for n in ["bt_reward", "pl_reward", "davidson_reward", "bce_reward", "rating_regression"]},
}
# parameter names that must follow TRL where TRL has the objective (issue 4)
TRL_PARAMS = {
    "dpo": {"beta", "label_smoothing"}, "robust_dpo": {"beta", "label_smoothing"}, "simpo": {"gamma"},
    "ipo": {"beta", "length_normalize"}, "pro": {"sft_weight"}, "kto": {"beta", "desirable_weight",
                                                                        "undesirable_weight", "z0"},
    "bt_reward": {"margin", "center_rewards_coefficient"},
}


def test_every_stable_name_is_registered():
    missing = [n for n in STABLE_NAMES if n not in names()]
    assert missing == []


@pytest.mark.parametrize("name", STABLE_NAMES)
def test_entry_carries_paper_params_and_formula(name):
    objective = get(name)
    assert objective.name == name and objective.family in FAMILIES
    if name in FAMILY_OF:
        assert objective.family == FAMILY_OF[name]
    assert len(objective.paper) > 20 and any(ch.isdigit() for ch in objective.paper)  # authors, title, year
    signature = inspect.signature(objective.fn)
    keyword_only = [p for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    # hyper-parameters: keyword-only with a real default; data inputs: keyword-only defaulting to None
    expected = {p.name: p.default for p in keyword_only
                if p.default is not inspect.Parameter.empty and p.default is not None}
    assert objective.params == expected
    assert set(objective.inputs) == {p.name for p in keyword_only if p.default is None}
    assert not {"ranks", "lengths", "grades", "labels"} & set(objective.params)
    for param in TRL_PARAMS.get(name, ()):
        assert param in signature.parameters, (name, param)
    doc = objective.doc
    assert len(doc) > 200
    assert "=" in doc and ("log" in doc or "sigma" in doc or "^2" in doc), "docstring states the formula"


def test_policy_objectives_follow_the_common_signature():
    for name in names():
        objective = get(name)
        params = list(inspect.signature(objective.fn).parameters)
        if objective.family in ("pairwise", "listwise"):
            assert params[:2] == ["policy_logps", "ref_logps"], name
            assert {"ranks", "lengths", "grades"} <= set(params), name
        elif objective.family == "policy_gradient":
            assert params[1] in ("ref_logps", "ref_token_logps") and params[0].endswith("logps"), name
        elif objective.family == "unpaired":
            assert params[:2] == ["policy_logps", "ref_logps"] and "labels" in params, name
        else:
            assert params[0] == "scores" and {"ranks", "grades"} <= set(params), name


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError) as info:
        get("pl_dop")
    assert "pl_dpo" in str(info.value) and "Did you mean" in str(info.value)
    with pytest.raises(KeyError, match="lipo_lambda"):
        get("lipo")


def test_package_exports():
    assert callable(losses.get("kto")) and losses.BCORunningMean().mean == 0.0
