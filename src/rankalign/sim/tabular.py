"""The tabular world: a log-linear policy over finite candidate sets, where everything is exact.

Each prompt ``x_p`` (``p = 0..P-1``) has ``N`` candidate responses ``y_0..y_{N-1}`` with feature vectors
``phi(x, y)`` in R^d. A policy is log-linear (a softmax over the candidate set),

    pi_theta(y | x) = exp(theta^T phi(x, y)) / sum_{y'} exp(theta^T phi(x, y')),

the reference policy is ``pi_ref = pi_{theta_ref}``, and the gold utility is linear,
``r*(x, y) = w*^T phi(x, y)``. Because the candidate sets are finite, log-probabilities, KL(pi || pi_ref),
the expected gold reward and gold win rates are sums, computed exactly (no sampling). With one-hot
features (``one_hot=True``) the policy is fully expressive (one free logit per candidate), the setting in
which the closed-form optima of DPO-style objectives hold.

Any registered objective (``rankalign.losses.get(name)``) can be optimised exactly on annotated data from
this world by full-batch L-BFGS (or Adam) in float64: :func:`optimise_policy`. Annotated data are the
same :class:`~rankalign.data.RankedList` records the readers return, with prompt ``"x{p}"`` and
candidates ``"y{j}"`` (see :func:`records_to_tabular`).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..data.records import RankedList
from ..errors import UsageError


# ------------------------------------------------------------------------------------------------ world
@dataclass(frozen=True)
class TabularWorld:
    """Prompts with finite candidate sets, features, a reference policy and a gold utility.

    Attributes
    ----------
    features : ndarray, shape (P, N, d), float64
        ``phi(x_p, y_j)``.
    gold_weights : ndarray, shape (d,)
        ``w*``; the gold utility is ``features @ gold_weights``.
    reference_theta : ndarray, shape (d,)
        ``theta_ref`` of the reference policy.
    lengths : ndarray, shape (P, N), int
        A response length (token count) per candidate, for length-normalised objectives.
    """

    features: np.ndarray
    gold_weights: np.ndarray
    reference_theta: np.ndarray
    lengths: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def num_prompts(self) -> int:
        return self.features.shape[0]

    @property
    def num_candidates(self) -> int:
        return self.features.shape[1]

    @property
    def dim(self) -> int:
        return self.features.shape[2]

    def prompt_name(self, p: int) -> str:
        return f"x{p}"

    def candidate_name(self, j: int) -> str:
        return f"y{j}"


def make_tabular_world(num_prompts: int = 16, num_candidates: int = 8, dim: int = 6, *, seed: int = 0,
                       one_hot: bool = False, reference_scale: float = 1.0, gold_scale: float = 1.0,
                       max_length: int = 20) -> TabularWorld:
    """A random tabular world, deterministic for ``seed``.

    Parameters
    ----------
    num_prompts, num_candidates, dim : int
        P, N and the feature dimension d (ignored when ``one_hot``: then d = P * N and each candidate has
        its own indicator feature, so the policy can put any distribution on each candidate set).
    reference_scale : float
        ``theta_ref`` ~ N(0, reference_scale^2 I) (random features) or the reference logits
        ~ N(0, reference_scale^2) (one-hot).
    gold_scale : float
        ``w*`` ~ N(0, gold_scale^2 I) (random features) or the gold utilities ~ N(0, gold_scale^2) (one-hot).
    max_length : int
        Candidate lengths are uniform on 1..max_length.
    """
    for name, value, minimum in (("num_prompts", num_prompts, 1), ("num_candidates", num_candidates, 2),
                                 ("dim", dim, 0 if one_hot else 1), ("max_length", max_length, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            why = " (a preference needs two candidates)" if name == "num_candidates" else ""
            raise UsageError(f"{name} must be a whole number >= {minimum}{why}, got {value!r}")
    for name, value in (("reference_scale", reference_scale), ("gold_scale", gold_scale)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{name} must be a finite number >= 0, got {value!r}")
    rng = np.random.default_rng(seed)
    if one_hot:
        dim = num_prompts * num_candidates
        features = np.eye(dim, dtype=np.float64).reshape(num_prompts, num_candidates, dim)
    else:
        features = rng.standard_normal((num_prompts, num_candidates, dim))
    gold = gold_scale * rng.standard_normal(dim)
    reference = reference_scale * rng.standard_normal(dim)
    lengths = rng.integers(1, max_length + 1, size=(num_prompts, num_candidates))
    return TabularWorld(features=features, gold_weights=gold, reference_theta=reference, lengths=lengths,
                        meta={"seed": seed, "one_hot": one_hot})


# ------------------------------------------------------------------------------------ exact quantities
def _log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=-1, keepdims=True)
    shifted = logits - top
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def policy_log_probs(world: TabularWorld, theta: np.ndarray | None = None) -> np.ndarray:
    """``log pi_theta(y_j | x_p)``, shape (P, N); the reference policy when ``theta`` is None."""
    theta = world.reference_theta if theta is None else np.asarray(theta, dtype=np.float64)
    return _log_softmax(world.features @ theta)


def gold_utilities(world: TabularWorld, weights: np.ndarray | None = None) -> np.ndarray:
    """``r(x_p, y_j) = w^T phi(x_p, y_j)``, shape (P, N), with the gold ``w*`` unless ``weights`` is given."""
    weights = world.gold_weights if weights is None else np.asarray(weights, dtype=np.float64)
    return world.features @ weights


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """Mean over prompts of KL(p || q) = sum_y p(y) (log p(y) - log q(y)); both (P, N) log-prob tables."""
    p = np.exp(log_p)
    terms = np.where(p > 0, p * (log_p - log_q), 0.0)
    return float(terms.sum(axis=-1).mean())


def kl_to_reference(world: TabularWorld, theta: np.ndarray) -> float:
    """Exact KL(pi_theta || pi_ref), averaged over prompts (uniform prompt distribution)."""
    return kl_divergence(policy_log_probs(world, theta), policy_log_probs(world))


def expected_gold_reward(world: TabularWorld, theta: np.ndarray | None = None, *,
                         log_probs: np.ndarray | None = None) -> float:
    """Exact E_{x ~ uniform, y ~ pi}[r*(x, y)] for ``pi_theta`` (or a given (P, N) log-prob table)."""
    log_probs = policy_log_probs(world, theta) if log_probs is None else log_probs
    return float((np.exp(log_probs) * gold_utilities(world)).sum(axis=-1).mean())


def win_rate(world: TabularWorld, log_probs: np.ndarray, against: np.ndarray | None = None, *,
             utilities: np.ndarray | None = None) -> float:
    """Exact gold win rate of policy ``log_probs`` against ``against`` (default: the reference policy).

    ``P(r*(x, y) > r*(x, y')) + 1/2 P(r*(x, y) = r*(x, y'))`` with ``y ~ pi``, ``y' ~ pi_against``
    drawn independently and the prompt uniform: a double sum over each candidate set.
    """
    against = policy_log_probs(world) if against is None else against
    utilities = gold_utilities(world) if utilities is None else utilities
    p, q = np.exp(log_probs), np.exp(against)
    diff = utilities[:, :, None] - utilities[:, None, :]
    score = np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0))
    return float(np.einsum("pi,pj,pij->p", p, q, score).mean())


def kl_regularised_optimum(ref_log_probs: np.ndarray, rewards: np.ndarray, beta: float) -> np.ndarray:
    """The maximiser of E_pi[r] - beta KL(pi || pi_ref) over all distributions on each candidate set.

    ``pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x)`` (Rafailov et al. 2023, "Direct Preference
    Optimization: Your Language Model is Secretly a Reward Model", eq. 4). Returns (P, N) log-probs.
    With Bradley-Terry preferences of temperature T (``P(a > b) = sigmoid((u_a - u_b) / T)``) this is
    also the population optimum of DPO in a fully expressive (one-hot) world with ``r = u / T``.
    """
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (math.isfinite(beta) and beta > 0):
        raise UsageError(f"beta must be a finite number > 0 (the KL weight), got {beta!r}")
    return _log_softmax(ref_log_probs + np.asarray(rewards, dtype=np.float64) / beta)


def best_of_n_log_probs(ref_log_probs: np.ndarray, rewards: np.ndarray, n: int) -> np.ndarray:
    """Exact best-of-n policy: draw n candidates from ``pi_ref`` and keep the one with the highest reward.

    Sort the candidates of a prompt by reward (ascending) and let F be the reference CDF in that order;
    the winner is candidate ``y_(i)`` with probability ``F(i)^n - F(i-1)^n``. Equal rewards form one group
    whose probability is shared in proportion to ``pi_ref`` (a uniformly random tie-break among equal
    draws gives exactly this). Works on (N,) or (P, N) arrays; returns log-probs of the same shape.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise UsageError(f"n must be a whole number >= 1, got {n!r}")
    ref = np.atleast_2d(np.asarray(ref_log_probs, dtype=np.float64))
    rew = np.atleast_2d(np.asarray(rewards, dtype=np.float64))
    out = np.empty_like(ref)
    for row in range(ref.shape[0]):
        p = np.exp(ref[row] - ref[row].max())
        p /= p.sum()
        values, group = np.unique(rew[row], return_inverse=True)
        group_mass = np.bincount(group, weights=p, minlength=len(values))
        cdf = np.minimum(np.cumsum(group_mass), 1.0)
        below = np.concatenate([[0.0], cdf[:-1]])
        winner_group_mass = cdf ** n - below ** n
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(group_mass[group] > 0, p / group_mass[group], 0.0)
            out[row] = np.log(winner_group_mass[group] * share)
    return out.reshape(np.shape(ref_log_probs))


# --------------------------------------------------------------------------------------- annotated data
@dataclass(frozen=True)
class TabularData:
    """Annotated lists of a tabular world as arrays (B lists, up to K candidates each).

    ``prompts`` (B,) prompt indices; ``candidates`` (B, K) candidate indices (-1 pads);
    ``ranks`` (B, K) 0 best, equal = tie, -1 for padding or unranked; ``weights`` (B,);
    ``grades`` (B, K) float label scores (or None).
    """

    prompts: np.ndarray
    candidates: np.ndarray
    ranks: np.ndarray
    weights: np.ndarray
    grades: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.prompts.shape[0])


_PROMPT = re.compile(r"^x(\d+)$")
_CANDIDATE = re.compile(r"^y(\d+)$")


def _index(pattern: re.Pattern, text, what: str, limit: int, where: str) -> int:
    from ..data.errors import DataError

    match = pattern.match(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) >= limit:
        raise DataError(f"not a {what} of this tabular world (expected {pattern.pattern[1]}0.."
                        f"{pattern.pattern[1]}{limit - 1}), got {text!r}", field=where, reason="bad_value")
    return int(match.group(1))


def records_to_tabular(world: TabularWorld, records: Iterable[RankedList]) -> TabularData:
    """Arrays for :func:`optimise_policy` from ``RankedList`` records with prompt ``"x{p}"`` and candidates ``"y{j}"``.

    Unranked candidates (rank None) are dropped. Grades are the numeric ``scores`` when every record
    carries them (e.g. 1-5 ratings), otherwise ``None``.
    """
    records = list(records)
    if not records:
        raise ValueError("no records")
    k = max(r.k for r in records)
    prompts = np.empty(len(records), dtype=np.int64)
    candidates = np.full((len(records), k), -1, dtype=np.int64)
    ranks = np.full((len(records), k), -1, dtype=np.int64)
    weights = np.empty(len(records), dtype=np.float64)
    with_grades = all(r.scores is not None and all(isinstance(s, float) for s in r.scores if s is not None)
                      for r in records)
    grades = np.zeros((len(records), k), dtype=np.float64) if with_grades else None
    for b, record in enumerate(records):
        prompts[b] = _index(_PROMPT, record.prompt, "prompt", world.num_prompts, f"records[{b}].prompt")
        column = 0
        dense = record.dense_ranks()
        for i, (candidate, rank) in enumerate(zip(record.candidates, dense)):
            if rank is None:
                continue
            candidates[b, column] = _index(_CANDIDATE, candidate, "candidate", world.num_candidates,
                                           f"records[{b}].candidates[{i}]")
            ranks[b, column] = rank
            if grades is not None:
                grades[b, column] = record.scores[i]
            column += 1
        weights[b] = record.weight
    return TabularData(prompts=prompts, candidates=candidates, ranks=ranks, weights=weights, grades=grades)


def pairwise_population(preference: np.ndarray, prompts: Sequence[int] | None = None) -> TabularData:
    """The population of pairwise judgments as weighted data: the exact expected loss, no sampling.

    ``preference[p, i, j]`` is the probability that i is preferred to j for prompt p. Every unordered
    pair {i, j} becomes two records, (i over j) with weight ``preference[p, i, j]`` and (j over i) with
    weight ``preference[p, j, i]``; minimising the weighted loss minimises the population risk.
    """
    preference = np.asarray(preference, dtype=np.float64)
    if preference.ndim != 3 or preference.shape[1] != preference.shape[2]:
        raise UsageError(f"preference must be (P, N, N), got shape {preference.shape}")
    if not np.all((preference >= 0) & (preference <= 1)):  # NaN fails too; these become record weights
        raise UsageError("preference holds probabilities: every entry must lie in [0, 1]")
    num_prompts, n, _ = preference.shape
    prompts = range(num_prompts) if prompts is None else prompts
    rows_p, rows_c, rows_w = [], [], []
    for p in prompts:
        for i in range(n):
            for j in range(i + 1, n):
                rows_p += [p, p]
                rows_c += [(i, j), (j, i)]
                rows_w += [preference[p, i, j], preference[p, j, i]]
    count = len(rows_p)
    return TabularData(prompts=np.array(rows_p, dtype=np.int64), candidates=np.array(rows_c, dtype=np.int64),
                       ranks=np.tile(np.array([0, 1], dtype=np.int64), (count, 1)),
                       weights=np.array(rows_w, dtype=np.float64))


# ----------------------------------------------------------------------------------------- optimisation
@dataclass
class OptimisationResult:
    """``theta`` at the end, the final mean weighted loss, the iterations used and whether it converged.

    ``diverged`` is True when the objective has no finite minimiser along the path taken: the loss still
    falls when ``theta`` moves on in the direction it travelled (e.g. DPO on pairs always won by the same
    side, alpha = 1, whose loss only tends to its infimum as theta runs off); ``converged`` is then False
    even though the gradient is tiny.
    """

    theta: np.ndarray
    loss: float
    iterations: int
    converged: bool
    gradient_norm: float
    diverged: bool = False


def _resolve_objective(objective) -> Callable:
    if isinstance(objective, str):
        from .. import losses

        return losses.get(objective)
    return objective


def _accepts_keyword(fn, name: str) -> bool:
    import inspect

    target = getattr(fn, "fn", fn)  # a registry Objective wraps the function
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def tabular_loss_function(world: TabularWorld, data: TabularData, objective, *, beta: float = 0.1,
                          params: dict | None = None, reference_theta: np.ndarray | None = None):
    """``theta (torch float64 [d]) -> mean weighted loss``, the objective applied to exact log-probs.

    The policy and reference log-probs of each list's candidates are ``[B, K]`` float64 tensors
    (log-softmax over the prompt's whole candidate set), passed to ``objective(policy_logps, ref_logps,
    ranks=..., lengths=..., grades=..., beta=beta, **params)`` (``beta`` only when the objective takes one).
    """
    import torch

    fn = _resolve_objective(objective)
    params = dict(params or {})
    features = torch.as_tensor(world.features, dtype=torch.float64)
    reference_theta = world.reference_theta if reference_theta is None else reference_theta
    prompts = torch.as_tensor(data.prompts)
    present = torch.as_tensor(data.candidates >= 0)
    columns = torch.as_tensor(np.where(data.candidates >= 0, data.candidates, 0))
    ranks = torch.as_tensor(np.where(data.candidates >= 0, data.ranks, -1))
    lengths = torch.as_tensor(world.lengths[data.prompts[:, None], columns.numpy()] * present.numpy(),
                              dtype=torch.float64)
    grades = None if data.grades is None else torch.as_tensor(data.grades, dtype=torch.float64)
    weights = torch.as_tensor(data.weights, dtype=torch.float64)
    total_weight = weights.sum().clamp_min(1e-300)
    list_features = features[prompts]  # [B, N, d]

    def list_log_probs(theta):
        log_probs = torch.log_softmax(list_features @ theta, dim=-1)
        return log_probs.gather(1, columns)

    with torch.no_grad():
        ref_logps = list_log_probs(torch.as_tensor(reference_theta, dtype=torch.float64))
    extra = {"ranks": ranks, "lengths": lengths}
    if grades is not None:
        extra["grades"] = grades
    if _accepts_keyword(fn, "beta"):  # PRO, for one, has no beta (its temperatures come from the grades)
        extra["beta"] = beta

    def loss(theta):
        policy_logps = list_log_probs(theta)
        per_list = fn(policy_logps, ref_logps, **extra, **params)
        return (per_list * weights).sum() / total_weight

    return loss


def optimise_policy(world: TabularWorld, data: TabularData | Sequence[RankedList], objective, *,
                    beta: float = 0.1, params: dict | None = None, init: np.ndarray | None = None,
                    method: str = "lbfgs", max_iter: int = 500, learning_rate: float = 0.05,
                    tolerance: float = 1e-10) -> OptimisationResult:
    """Minimise a preference objective over ``theta`` exactly (full batch, float64).

    Parameters
    ----------
    data : TabularData or RankedList records
        Records are converted with :func:`records_to_tabular`.
    objective : str or callable
        A registered name (``"dpo"``, ``"pl_dpo"``, ...) or a function with the objective signature.
    beta, params
        Passed to the objective (``params`` as keyword arguments).
    init : ndarray, optional
        Starting ``theta`` (default: the reference ``theta_ref``, where DPO-style training starts).
    method : {"lbfgs", "adam"}
        L-BFGS with a strong-Wolfe line search (smooth objectives) or Adam with ``learning_rate``
        (objectives with non-smooth weights such as LiPO's rank-dependent ones).
    """
    import torch

    if not isinstance(data, TabularData):
        data = records_to_tabular(world, data)
    loss_fn = tabular_loss_function(world, data, objective, beta=beta, params=params)
    start = world.reference_theta if init is None else init
    theta = torch.tensor(np.asarray(start, dtype=np.float64), dtype=torch.float64, requires_grad=True)
    iterations = 0
    if method == "lbfgs":
        optimiser = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, max_eval=max_iter * 2,
                                      tolerance_grad=tolerance, tolerance_change=1e-15, history_size=50,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimiser.zero_grad()
            value = loss_fn(theta)
            value.backward()
            return value

        optimiser.step(closure)
        iterations = int(optimiser.state[optimiser._params[0]].get("n_iter", 0))
    elif method == "adam":
        optimiser = torch.optim.Adam([theta], lr=learning_rate)
        for iterations in range(1, max_iter + 1):  # noqa: B007
            optimiser.zero_grad()
            value = loss_fn(theta)
            value.backward()
            if theta.grad.norm().item() < tolerance:
                break
            optimiser.step()
    else:
        raise ValueError(f"unknown method {method!r}; choose 'lbfgs' or 'adam'")
    theta_final = theta.detach().clone().requires_grad_(True)
    final = loss_fn(theta_final)
    final.backward()
    gradient_norm = float(theta_final.grad.norm())
    if not math.isfinite(final.item()):
        raise FloatingPointError(f"objective {objective!r} is not finite at the optimum ({float(final)})")
    diverged = _still_descending(loss_fn, np.asarray(start, dtype=np.float64), theta_final.detach(), final.item())
    return OptimisationResult(theta=theta_final.detach().numpy().copy(), loss=final.item(),
                              iterations=iterations,
                              converged=not diverged and gradient_norm < max(1e-6, tolerance * 100),
                              gradient_norm=gradient_norm, diverged=diverged)


def _still_descending(loss_fn, start: np.ndarray, theta, loss: float) -> bool:
    """True when the loss keeps falling past ``theta`` along the travelled direction ``theta - start``:
    at a minimiser, the point ``2 theta - start`` (as far again) cannot have a lower loss, so a strict
    decrease beyond rounding means there is no finite optimum on that ray (the parameters run off)."""
    import torch

    step = theta - torch.as_tensor(start, dtype=theta.dtype)
    if float(step.norm()) == 0.0:
        return False
    with torch.no_grad():
        further = float(loss_fn(theta + step))
    return math.isfinite(further) and further < loss - 1e-9 * max(abs(loss), 1e-300)


def ranking_accuracy(log_probs: np.ndarray, data: TabularData) -> float:
    """Weighted share of ordered pairs (winner ranked strictly above loser) with log pi(y_w) > log pi(y_l).

    The ranking accuracy of Chen et al. 2024 ("Preference Learning Algorithms Do Not Learn Preference
    Rankings"), computed from a (P, N) log-prob table through :func:`rankalign.eval.listwise_ranking_accuracy`
    with the lists' weights.
    """
    from ..eval.metrics import listwise_ranking_accuracy

    present = data.candidates >= 0
    logps = np.where(present, log_probs[data.prompts[:, None], np.where(present, data.candidates, 0)], 0.0)
    ranks = np.where(present, data.ranks, -1)
    return listwise_ranking_accuracy(logps, ranks, weights=data.weights)


__all__ = [
    "TabularWorld", "make_tabular_world", "policy_log_probs", "gold_utilities", "kl_divergence",
    "kl_to_reference", "expected_gold_reward", "win_rate", "kl_regularised_optimum", "best_of_n_log_probs",
    "TabularData", "records_to_tabular", "pairwise_population", "OptimisationResult",
    "tabular_loss_function", "optimise_policy", "ranking_accuracy",
]


def tabular_items(world: TabularWorld, prompt_indices: Sequence[int], candidate_sets: Sequence[Sequence[int]]
                  ) -> list[tuple[str, list[str], np.ndarray]]:
    """``(prompt, candidates, components)`` items for :func:`rankalign.sim.annotators.annotate_items`.

    The utility components of a tabular candidate are its features, so an annotator with the world's
    gold weights has utility ``r*(x, y)``.
    """
    items = []
    for p, chosen in zip(prompt_indices, candidate_sets):
        chosen = [int(j) for j in chosen]
        items.append((world.prompt_name(int(p)), [world.candidate_name(j) for j in chosen],
                      world.features[int(p), chosen]))
    return items


__all__ += ["tabular_items"]
