"""Name -> objective registry.

Every objective is a plain function registered with :func:`register`; :func:`get` returns an
:class:`Objective`, a thin callable wrapper that also carries the family, the paper and the parameter
defaults (read from the function's signature, so they are never written twice).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("pairwise", "listwise", "unpaired", "reward", "policy_gradient")

_REGISTRY: dict[str, Objective] = {}


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

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.fn) or ""


def register(name: str, *, family: str, paper: str, reference_free: bool = False):
    """Decorator: register ``fn`` under ``name``.

    Keyword-only arguments (after ``*``) with a non-None default are hyper-parameters and become
    ``params`` (name -> default); those defaulting to None are optional data inputs (``ranks``,
    ``lengths``, ``grades``, ``labels``, a precomputed ``z0``, ...) and are listed in ``inputs``.
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
        _REGISTRY[name] = Objective(name=name, fn=fn, family=family, paper=paper,
                                    reference_free=reference_free, params=params, inputs=inputs)
        return fn

    return decorate


def get(name: str) -> Objective:
    """The objective registered as ``name``; an unknown name lists the close matches and all names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown objective {name!r}.{hint} Known: {', '.join(sorted(_REGISTRY))}") from None


def names(family: str | None = None) -> list[str]:
    """Registered names, optionally of one family, in registration order."""
    return [n for n, o in _REGISTRY.items() if family is None or o.family == family]
