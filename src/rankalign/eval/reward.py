"""Evaluating a reward model on a preference file: ``rankalign reward eval MODEL FILE``.

Everything here is computed from the model's scores (or, for a general preference model, its pairwise
probabilities) with the metrics of :mod:`rankalign.eval.metrics`:

* pairwise accuracy over every strictly ordered pair of every list, with a 95% interval from the
  cluster-robust standard error (:func:`~rankalign.eval.metrics.clustered_mean_with_se`, pairs of one
  list form a cluster): ``accuracy +- 1.96 se``;
* tie accuracy: the share of pairs the data calls tied (equal ranks) that the model also calls close,
  ``|P(i > j) - 1/2| < tie_margin``;
* best-of-K accuracy: lists with K >= 3, the share whose top-scored candidate is among the best-ranked;
* per-group accuracy (``group_by``: ``annotator`` or any ``meta`` field) with the worst group and
  cluster-robust SEs (:func:`~rankalign.eval.metrics.group_metrics`);
* calibration of ``P(w > l)`` (:func:`~rankalign.eval.metrics.preference_calibration`, ECE and its
  reliability table);
* a RewardBench-style table by ``subset`` when the records carry one (``meta["subset"]``), with the
  macro average over subsets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .metrics import clustered_mean_with_se, group_metrics, ordered_pair_indices, preference_calibration

__all__ = ["evaluate_reward_model", "pair_probabilities_of", "reward_metrics", "Z_95"]

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def _group_value(record, group_by: str | None):
    if group_by is None:
        return None
    if group_by == "annotator":
        return record.annotator if record.annotator is not None else "(none)"
    meta = record.meta or {}
    value = meta.get(group_by, getattr(record, group_by, None))
    return "(none)" if value is None else value


def pair_probabilities_of(model, tokenizer, records, *, batch_size: int = 16, max_length: int | None = None):
    """``[K, K]`` matrices ``P(i > j)`` per record (a general preference model's, or ``sigma(r_i - r_j)``)."""
    from rankalign.reward import preference_probabilities

    return preference_probabilities(model, tokenizer, records, batch_size=batch_size, max_length=max_length)


def reward_metrics(probabilities: list, records: list, *, group_by: str | None = None, tie_margin: float = 0.1,
                   n_bins: int = 10, scores: list | None = None) -> dict:
    """All metrics of the module docstring from per-record ``[K, K]`` preference probabilities.

    ``probabilities[n][i, j] = P(i > j)`` over record n's *ranked* candidates in their order; ``scores``
    (optional, scalar models) are used for best-of-K (the arg-max), otherwise the Copeland winner of P
    (most pairwise wins) is the pick. Returns a JSON-ready dict.
    """
    from rankalign.data.records import RankedList

    correct, clusters, margins, groups = [], [], [], []
    tie_hits = []
    best_hits = []
    subsets: dict = {}
    for n, (matrix, record) in enumerate(zip(probabilities, records)):
        if not isinstance(record, RankedList):
            continue
        ranks = [r for r in record.dense_ranks() if r is not None]
        k = len(ranks)
        if k < 2 or np.shape(matrix) != (k, k):
            continue
        p = np.asarray(matrix, dtype=np.float64)
        _, winner, loser = ordered_pair_indices(np.asarray([ranks]))
        p_right = p[winner, loser]
        hits = (p_right > 0.5).astype(np.float64)
        correct.extend(hits)
        clusters.extend([n] * len(hits))
        with np.errstate(divide="ignore"):
            margins.extend(np.log(p_right) - np.log1p(-p_right))  # logit of P(w > l): sigma(margin) = p
        group = _group_value(record, group_by)
        groups.extend([group] * len(hits))
        subset = (record.meta or {}).get("subset")
        if subset is not None:
            subsets.setdefault(subset, ([], []))
            subsets[subset][0].extend(hits)
            subsets[subset][1].extend([n] * len(hits))
        for i in range(k):
            for j in range(i + 1, k):
                if ranks[i] == ranks[j]:
                    tie_hits.append(float(abs(p[i, j] - 0.5) < tie_margin))
        if k >= 3 and min(ranks) != max(ranks):
            if scores is not None:
                pick = int(np.argmax(np.asarray(scores[n], dtype=np.float64)))
            else:
                pick = int(np.argmax((p > 0.5).sum(1)))
            best_hits.append(float(ranks[pick] == min(ranks)))
    if not correct:
        raise ValueError("no strictly ordered pair to evaluate (every list is a single candidate or all tied)")
    correct = np.asarray(correct)
    accuracy, se = clustered_mean_with_se(correct, np.asarray(clusters))
    out = {"accuracy": accuracy, "se": se, "n": int(correct.size), "lists": int(len(set(clusters))),
           "ci_low": max(0.0, accuracy - Z_95 * se) if math.isfinite(se) else math.nan,
           "ci_high": min(1.0, accuracy + Z_95 * se) if math.isfinite(se) else math.nan,
           "tie_accuracy": float(np.mean(tie_hits)) if tie_hits else None, "tie_pairs": len(tie_hits),
           "tie_margin": tie_margin,
           "best_of_k_accuracy": float(np.mean(best_hits)) if best_hits else None, "best_of_k_lists": len(best_hits)}
    finite = np.clip(np.asarray(margins, dtype=np.float64), -700, 700)
    ece, table = preference_calibration(finite, n_bins=n_bins)
    out["ece"] = ece
    out["reliability"] = table
    if group_by is not None:
        result = group_metrics(correct, [str(g) for g in groups], clusters=clusters)
        out["group_by"] = group_by
        out["groups"] = {g: {"accuracy": v["mean"], "se": v["se"], "n": v["n"]} for g, v in result["groups"].items()}
        out["worst_group"] = result["worst_group"]
        out["worst_group_accuracy"] = result["worst_value"]
    if subsets:
        rows = {}
        for name, (hits, cl) in sorted(subsets.items(), key=lambda item: str(item[0])):
            mean, subset_se = clustered_mean_with_se(np.asarray(hits), np.asarray(cl))
            rows[str(name)] = {"accuracy": mean, "n": len(hits),
                               "ci_low": max(0.0, mean - Z_95 * subset_se) if math.isfinite(subset_se) else math.nan,
                               "ci_high": min(1.0, mean + Z_95 * subset_se) if math.isfinite(subset_se) else math.nan}
        out["subsets"] = rows
        out["subset_macro_accuracy"] = float(np.mean([r["accuracy"] for r in rows.values()]))
    return out


def evaluate_reward_model(model, tokenizer, records: Iterable, *, group_by: str | None = None,
                          tie_margin: float = 0.1, n_bins: int = 10, batch_size: int = 16,
                          max_length: int | None = None) -> dict:
    """Score ``records`` with a :class:`~rankalign.reward.RewardModel` and compute :func:`reward_metrics`.

    Scalar and ensemble models are scored with :func:`~rankalign.reward.score_lists` (an ensemble by its
    mean) and compared through ``P(i > j) = sigma(r_i - r_j)``; a general preference model through its own
    pairwise probabilities.
    """
    import torch

    from rankalign.data.records import RankedList
    from rankalign.reward import score_lists

    records = [r for r in records if isinstance(r, RankedList)]
    scores = None
    if model.preference_dim is None:
        scores = score_lists(model, tokenizer, records, batch_size=batch_size, max_length=max_length)
        probabilities = [torch.sigmoid(s.double()[:, None] - s.double()[None, :]).numpy() for s in scores]
        scores = [s.numpy() for s in scores]
    else:
        probabilities = [p.double().numpy() for p in
                         pair_probabilities_of(model, tokenizer, records, batch_size=batch_size, max_length=max_length)]
    return reward_metrics(probabilities, records, group_by=group_by, tie_margin=tie_margin, n_bins=n_bins,
                          scores=scores)
