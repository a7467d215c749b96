"""Issue 10, objectives: valid hyper-parameter ranges from the registry, reference log-probs of another
shape, integer log-probs. Every registered objective is called, so a new one is covered automatically."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from rankalign import losses  # noqa: E402
from rankalign.errors import UsageError  # noqa: E402
from rankalign.losses import PARAM_RANGES  # noqa: E402


def inputs_for(objective, dtype=torch.float64):
    """Arguments that make ``objective`` run on a batch of 4 (K = 3 where it takes lists)."""
    generator = torch.Generator().manual_seed(0)
    family = objective.family
    if family == "reward":
        scores = torch.randn(4, 3, generator=generator, dtype=dtype)
        kwargs = {}
        if objective.name in ("bce_reward",):
            kwargs["grades"] = torch.tensor([[1.0, 0.0, 1.0]] * 4, dtype=dtype)
        if objective.name == "rating_regression":
            kwargs["grades"] = torch.tensor([[3.0, 2.0, 1.0]] * 4, dtype=dtype)
        return (scores,), kwargs
    if family == "unpaired":
        policy = -torch.rand(4, generator=generator, dtype=dtype) * 10
        ref = -torch.rand(4, generator=generator, dtype=dtype) * 10
        return (policy, ref), {"labels": torch.tensor([True, False, True, False])}
    if family == "policy_gradient" and objective.name == "grpo":
        token = -torch.rand(4, 3, 5, generator=generator, dtype=dtype) * 5  # [B, K, T] per-token log-probs
        return (token, token - 0.7), {"advantages": torch.randn(4, 3, generator=generator, dtype=dtype)}
    if family == "policy_gradient":
        policy = -torch.rand(4, 3, generator=generator, dtype=dtype) * 10
        return (policy, policy - 0.2), {"rewards": torch.randn(4, 3, generator=generator, dtype=dtype)}
    policy = -torch.rand(4, 3, generator=generator, dtype=dtype) * 10
    ref = -torch.rand(4, 3, generator=generator, dtype=dtype) * 10
    kwargs = {}
    if "lengths" in objective.inputs:
        kwargs["lengths"] = torch.full((4, 3), 5.0, dtype=dtype)
    return (policy, ref), kwargs


def call(objective, args, kwargs, **params):
    return objective(*args, **kwargs, **params)


WITH_BETA = [name for name in losses.names() if "beta" in losses.get(name).params]


def test_every_parameter_has_a_documented_range():
    for name in losses.names():
        objective = losses.get(name)
        assert set(objective.params) <= set(objective.ranges), name
        for key, valid in objective.ranges.items():
            assert str(valid), (name, key)


@pytest.mark.parametrize("name", WITH_BETA)
@pytest.mark.parametrize("beta", [0.0, -0.1, math.nan, math.inf])
def test_nonpositive_beta_is_rejected_by_every_objective(name, beta):
    objective = losses.get(name)
    valid = objective.ranges["beta"]
    if valid.contains(beta):  # GRPO and RLOO: beta is a KL coefficient, 0 switches the penalty off
        assert beta == 0.0 and name in ("grpo", "rloo")
        return
    args, kwargs = inputs_for(objective)
    with pytest.raises(UsageError, match=f"{name}: beta must be"):
        call(objective, args, kwargs, beta=beta)
    # the same function imported from its module (not through get) checks too
    module = __import__(objective.fn.__module__, fromlist=[objective.fn.__name__])
    with pytest.raises(UsageError):
        call(getattr(module, objective.fn.__name__), args, kwargs, beta=beta)


@pytest.mark.parametrize("name", ["dpo", "robust_dpo", "simpo", "cpo", "exo"])
@pytest.mark.parametrize("eps", [-0.01, 0.5, 0.9])
def test_label_smoothing_outside_its_range_is_rejected(name, eps):
    objective = losses.get(name)
    args, kwargs = inputs_for(objective)
    with pytest.raises(UsageError, match="label_smoothing must be in"):
        call(objective, args, kwargs, label_smoothing=eps)


def test_in_range_parameters_still_work_and_ranges_are_the_documented_ones():
    # beta > 0, label_smoothing in [0, 0.5): the examples the issue gives
    assert str(PARAM_RANGES["beta"]) == "> 0" and str(PARAM_RANGES["label_smoothing"]) == "in [0, 0.5)"
    objective = losses.get("dpo")
    args, kwargs = inputs_for(objective)
    value = call(objective, args, kwargs, beta=0.5, label_smoothing=0.2)
    assert torch.isfinite(value).all()


def test_unknown_parameter_names_a_close_match():
    with pytest.raises(UsageError, match="did you mean 'beta'"):
        losses.get("dpo").check_params({"betta": 0.1})
    with pytest.raises(KeyError, match="Did you mean dpo"):
        losses.get("dpoo")


SHAPE_CHECKED = [name for name in losses.names() if losses.get(name).family != "reward"]


@pytest.mark.parametrize("name", SHAPE_CHECKED)
def test_reference_logps_with_another_shape_is_an_error(name):
    objective = losses.get(name)
    (policy, ref), kwargs = inputs_for(objective)
    wrong = [ref[..., :-1]] if ref.dim() == 2 else []  # [4, 2] against [4, 3]: a dropped column
    wrong.append(ref[:1])  # [1, ...]: would broadcast over the batch
    for bad in wrong:
        with pytest.raises(ValueError, match="must match"):
            objective(policy, bad, **kwargs)


@pytest.mark.parametrize("name", losses.names())
def test_int64_logps_are_accepted_by_every_objective(name):
    objective = losses.get(name)
    args, kwargs = inputs_for(objective)
    # integer log-probs (e.g. rounded values from a file) equal the same values as floats
    as_int = tuple(torch.round(a).to(torch.int64) for a in args)
    as_float = tuple(a.to(torch.get_default_dtype()) for a in as_int)
    kwargs = {k: (v.to(torch.get_default_dtype()) if torch.is_tensor(v) and v.is_floating_point() else v)
              for k, v in kwargs.items()}
    expected = objective(*as_float, **kwargs)
    got = objective(*as_int, **kwargs)
    assert got.dtype == torch.get_default_dtype()
    assert torch.allclose(got, expected, equal_nan=True)
