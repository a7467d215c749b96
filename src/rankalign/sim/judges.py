"""Simulated annotators as judges (:mod:`rankalign.reward.judges` interface).

:class:`AnnotatorJudge` wraps one :class:`~rankalign.sim.annotators.Annotator` and a function giving each
candidate's utility components (the text world's :func:`~rankalign.sim.text_world.reward_components` by
default): ``rank(prompt, candidates)`` draws the annotator's noisy ranking
(:func:`~rankalign.sim.annotators.sample_ranks`, with its temperature, flips and ties), returns its
utilities as ``scores``, and the annotator's own pair probabilities
(:func:`~rankalign.sim.annotators.pair_probabilities`) give the confidence. Its ``id`` is the annotator's,
so simulated labels and model judges sit side by side in one file.

Not imported by ``rankalign.sim`` itself (it reaches the reward layer, which needs torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..data.records import RankedList
from ..errors import UsageError
from .annotators import Annotator, pair_probabilities, sample_ranks

__all__ = ["AnnotatorJudge"]


class AnnotatorJudge:
    """A simulated annotator behind the judge interface.

    Parameters
    ----------
    annotator : Annotator
    components : callable ``(prompt, candidate) -> array [C]``, optional
        Utility components of a candidate; default: the text world's ``reward_components``.
    gold_weights : array [C], optional
        Used when the annotator has no weights of its own (default: the text world's gold weights).
    seed : int
        Seeds the annotator's noise; successive ``rank`` calls continue the same stream.
    """

    def __init__(self, annotator: Annotator, components: Callable | None = None, *,
                 gold_weights: np.ndarray | None = None, seed: int = 0):
        if not isinstance(annotator, Annotator):
            raise UsageError(f"annotator must be a rankalign.sim.Annotator, got {type(annotator).__name__}")
        if components is not None and not callable(components):
            raise UsageError(f"components must be a function (prompt, candidate) -> array, got "
                             f"{type(components).__name__}")
        if components is None or gold_weights is None:
            from .text_world import GOLD_WEIGHTS, reward_components

            components = components or reward_components
            gold_weights = GOLD_WEIGHTS if gold_weights is None else gold_weights
        self.annotator, self.components, self.gold_weights = annotator, components, np.asarray(gold_weights)
        self.id = annotator.id
        self.rng = np.random.default_rng(seed)

    def rank(self, prompt, candidates: Sequence) -> RankedList:
        from ..reward.judges import ranking_from_scores

        if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
            raise UsageError(f"candidates must be a list of responses, got {type(candidates).__name__}"
                             + (" (one string: wrap it in a list)" if isinstance(candidates, str) else ""))
        if not candidates:
            raise ValueError("a judge needs at least one candidate")
        matrix = np.stack([np.asarray(self.components(prompt, c), dtype=np.float64) for c in candidates])
        utilities = self.annotator.utilities(matrix, self.gold_weights)
        ranks = sample_ranks(self.annotator, utilities, self.rng)
        win, _, _ = pair_probabilities(self.annotator, utilities[:, None], utilities[None, :])
        pairs = [win[i, j] for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]]
        base = ranking_from_scores(self.id, prompt, candidates, utilities)
        meta = {**base.meta, "confidence": float(np.mean(pairs)) if pairs else 1.0, "noisy": True}
        if self.annotator.group:
            meta["group"] = self.annotator.group
        return RankedList(prompt=prompt, candidates=list(candidates), ranks=ranks, scores=base.scores,
                          annotator=self.id, meta=meta)
