"""Name -> objective registry.

Every objective is a plain function registered with :func:`register`; :func:`get` returns an
:class:`Objective`, a thin callable wrapper that also carries the family, the paper, the parameter
defaults (read from the function's signature, so they are never written twice) and each parameter's
valid range (:data:`PARAM_RANGES`, overridable per objective).

Registering wraps the function once with the checks every objective shares, so they hold whether it is
called through :func:`get` or imported directly: every hyper-parameter passed is checked against its
range (a :class:`~rankalign.errors.UsageError` naming the objective, the parameter and the range; None
for a hyper-parameter and NumPy or 0-dim CPU tensor values are checked too), lists and NumPy arrays of
log-probs become tensors and integer ones the default float dtype, the log-probs must have the family's
number of dimensions (``[B]`` unpaired, ``[B, K]`` lists, ``[B, K, T]`` per-token), reference log-probs
must have the policy's shape (no broadcasting, no dropped column), and lists of K = 0 candidates get
loss 0.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rankalign.errors import UsageError

FAMILIES = ("pairwise", "listwise", "unpaired", "reward", "policy_gradient")

_REGISTRY: dict[str, Objective] = {}

# objective arguments that come from the batch (the trainer fills them), never from a config's loss_params
BATCH_INPUTS = frozenset({"ranks", "lengths", "grades", "labels", "kl_policy_logps", "kl_ref_logps", "margin",
                          "pair_weights", "preference_prob", "eigenvalues"})


@dataclass(frozen=True)
class Range:
    """The valid values of one hyper-parameter: an interval of finite numbers, a bool, or a set of names.

    ``low``/``high`` are bounds (None: unbounded), ``*_open`` whether the bound itself is excluded.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    kind: str = "number"  # "number", "bool" or "choice"
    choices: tuple[str, ...] = ()
    why: str = ""

    def __str__(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.low is not None and self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None and self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        if self.low is None and self.high is None:
            return "a finite number"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def contains(self, value) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        value = float(value)
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True


POSITIVE = Range(0.0, None, low_open=True)
NON_NEGATIVE = Range(0.0, None)
FINITE = Range()
BOOL = Range(kind="bool")

#: Valid range of every hyper-parameter by name; :func:`register` takes per-objective overrides.
PARAM_RANGES: dict[str, Range] = {
    # beta scales the implicit reward beta * rho: beta <= 0 trains against the preferences (< 0) or gives a
    # constant loss (= 0; IPO's and SPPO's targets 1 / (2 beta) divide by it)
    "beta": Range(0.0, None, low_open=True, why="the implicit reward is beta * log-ratio"),
    # cDPO / robust DPO flip rate: at 0.5 the label carries no information, above it the objective
    # prefers the rejected response (and robust DPO divides by 1 - 2 eps)
    "label_smoothing": Range(0.0, 0.5, high_open=True, why="a flip rate of 0.5 or more reverses the labels"),
    "gamma": NON_NEGATIVE,
    "alpha": NON_NEGATIVE,
    "temperature": POSITIVE,
    "sft_weight": NON_NEGATIVE,
    "center_rewards_coefficient": NON_NEGATIVE,
    "nu": POSITIVE,
    "desirable_weight": NON_NEGATIVE,
    "undesirable_weight": NON_NEGATIVE,
    "delta": FINITE,
    "z0": FINITE,
    "discopop_tau": POSITIVE,
    # DPOP's weight on the preferred response's likelihood drop below the reference (0 is DPO)
    "dpop_lambda": NON_NEGATIVE,
    # PPO/GRPO clip range [1 - eps, 1 + eps] of the importance ratio
    "clip_epsilon": Range(0.0, 1.0, low_open=True, high_open=True),
    "length_normalize": BOOL,
    "nll_length_normalize": BOOL,
}


@dataclass(frozen=True)
class Objective:
    """A registered objective: call it like the function it wraps."""

    name: str
    fn: Callable
    family: str
    paper: str
    reference_free: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    ranges: dict[str, Range] = field(default_factory=dict)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.fn) or ""

    def settable(self) -> list[str]:
        """Names a config's ``loss_params`` may set: the hyper-parameters and the inputs with a range
        (KTO's fixed ``z0``); batch inputs (ranks, lengths, labels, ...) come from the data."""
        return [name for name in self.ranges if name not in BATCH_INPUTS]

    def check_params(self, params: dict, where: str | None = None) -> None:
        """Raise :class:`~rankalign.errors.UsageError` for an unknown name (with the close matches) or a
        value outside its range. ``where`` prefixes the message (``"config.yaml: loss_params"``)."""
        prefix = f"{where}: " if where else ""
        settable = self.settable()
        for key, value in params.items():
            if key not in self.ranges or key in BATCH_INPUTS:
                close = difflib.get_close_matches(str(key), settable, n=2, cutoff=0.6)
                suggestion = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise UsageError(f"{prefix}objective {self.name!r} has no parameter {key!r}{suggestion}",
                                 hint=f"{self.name} takes {', '.join(settable) or 'no parameters'}")
            _check_value(self.name, key, value, self.ranges[key], prefix)


def _check_value(objective: str, key: str, value, valid: Range, prefix: str = "") -> None:
    if hasattr(value, "dtype") and hasattr(value, "shape"):  # a tensor (BCO's running mean) or a NumPy scalar
        device = getattr(value, "device", None)
        if getattr(value, "ndim", None) != 0 or (device is not None and getattr(device, "type", "cpu") != "cpu"):
            return  # a vector, or a value on an accelerator (reading it would wait for the device): unchecked
        value = value.item()
    if not valid.contains(value):
        why = f" ({valid.why})" if valid.why else ""
        raise UsageError(f"{prefix}{objective}: {key} must be {valid}{why}, got {value!r}",
                         hint=f"set {key} to a value {valid}")


def _as_float(value):
    """Log-probs as a float tensor: lists and NumPy arrays become tensors, integer (or bool) tensors the
    default float dtype; None and float tensors are unchanged."""
    if value is None:
        return value
    import torch

    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value)
    if value.dtype.is_floating_point or value.dtype.is_complex:
        return value
    return value.to(torch.get_default_dtype())


_SHAPES = {1: "[B]", 2: "[B, K]", 3: "[B, K, T]"}


def _checked(name: str, fn: Callable, family: str, ranges: dict[str, Range]) -> Callable:
    """``fn`` with the shared checks (module docstring) in front."""
    signature = inspect.signature(fn)
    positional = [p.name for p in signature.parameters.values()
                  if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    with_reference = family != "reward" and len(positional) >= 2
    hyper = {p.name for p in signature.parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
             and p.default is not None}
    # dimensions of the first argument: [B] one response per example, [B, K] lists, [B, K, T] per-token
    ndim = 3 if positional[:1] == ["token_logps"] else 1 if family == "unpaired" else 2

    @functools.wraps(fn)
    def objective(*args, **kwargs):
        for key, value in kwargs.items():
            valid = ranges.get(key)
            if valid is not None and (value is not None or key in hyper):
                _check_value(name, key, value, valid)
        args = tuple(_as_float(a) for a in args[:2]) + args[2:]
        for key in positional[:2]:
            if key in kwargs:
                kwargs[key] = _as_float(kwargs[key])
        bound = dict(zip(positional, args))
        policy = bound.get(positional[0], kwargs.get(positional[0]))
        shape = getattr(policy, "shape", None)
        if shape is not None and len(shape) != ndim:
            raise ValueError(f"{name}: {positional[0]} must be {_SHAPES[ndim]}, got shape {tuple(shape)}")
        if with_reference:
            reference = bound.get(positional[1], kwargs.get(positional[1]))
            if reference is not None and shape is not None and tuple(reference.shape) != tuple(shape):
                raise ValueError(f"{name}: {positional[1]} has shape {tuple(reference.shape)} but "
                                 f"{positional[0]} has {tuple(shape)}; they must match (one reference "
                                 "log-prob per candidate)")
        if ndim == 2 and shape is not None and shape[1] == 0:
            return policy.sum(1) * 0.0  # lists without candidates: no pair, loss 0 (as for all-padded lists)
        return fn(*args, **kwargs)

    return objective


def register(name: str, *, family: str, paper: str, reference_free: bool = False,
             ranges: dict[str, Range] | None = None):
    """Decorator: register ``fn`` under ``name`` and return it wrapped with the shared checks.

    Keyword-only arguments (after ``*``) with a non-None default are hyper-parameters and become
    ``params`` (name -> default); those defaulting to None are optional data inputs (``ranks``,
    ``lengths``, ``grades``, ``labels``, a precomputed ``z0``, ...) and are listed in ``inputs``.
    Every hyper-parameter needs a valid range: from :data:`PARAM_RANGES`, or ``ranges`` for this one.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def decorate(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} is already registered")
        signature = inspect.signature(fn)
        keyword_only = [p for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        params = {p.name: p.default for p in keyword_only
                  if p.default is not inspect.Parameter.empty and p.default is not None}
        inputs = tuple(p.name for p in keyword_only if p.default is None)
        own = dict(ranges or {})
        valid = {}
        for key in list(params) + [i for i in inputs if i in PARAM_RANGES or i in own]:
            if key in own:
                valid[key] = own[key]
            elif key in PARAM_RANGES:
                valid[key] = PARAM_RANGES[key]
            else:
                raise ValueError(f"objective {name!r}: parameter {key!r} has no valid range; add it to "
                                 "PARAM_RANGES or pass ranges=")
        checked = _checked(name, fn, family, valid)
        _REGISTRY[name] = Objective(name=name, fn=checked, family=family, paper=paper,
                                    reference_free=reference_free, params=params, inputs=inputs, ranges=valid)
        return checked

    return decorate


def get(name: str) -> Objective:
    """The objective registered as ``name``; an unknown name lists the close matches and all names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownObjectiveError(f"unknown objective {name!r}.{hint} Known: {', '.join(sorted(_REGISTRY))}",
                                    hint=f"did you mean {close[0]!r}?" if close else "see rankalign.losses.names()"
                                    ) from None


class UnknownObjectiveError(UsageError, KeyError):
    """An objective name that is not registered (a KeyError for old callers, a usage error for the CLI)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


def names(family: str | None = None) -> list[str]:
    """Registered names, optionally of one family, in registration order."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    return [n for n, o in _REGISTRY.items() if family is None or o.family == family]
