"""Who said it: mixtures of rating models over annotators, annotator reliability, and agreement.

Every judgment carries an annotator id (DESIGN.md). The models here use it (numpy/scipy only):

* :func:`fit_annotator_mixture` -- an EM mixture of Bradley-Terry (pairs, or the pairs implied by a
  ranking) or Plackett-Luce (rankings) models over *annotators*: annotator ``u`` belongs to one latent
  group ``g`` with prior probability ``pi_g``, and all of their judgments follow the group's ratings
  ``theta_g``. The number of groups is chosen by BIC when asked (:func:`choose_groups`).
* :func:`fit_annotator_reliability` -- a Dawid-Skene-style model (Dawid & Skene 1979, "Maximum likelihood
  estimation of observer error-rates using the EM algorithm") for pairs and rankings: annotator ``u``
  reports a ranking from the rating model and *reverses* it (flips a pair) with probability ``eps_u``.
  The flip rates and the item ratings are estimated jointly by EM.
* agreement: :func:`cohen_kappa`, :func:`fleiss_kappa`, :func:`krippendorff_alpha`, and
  :func:`agreement_units` to turn judgments into (unit, rater, value) triples; :func:`rand_index`
  to compare two partitions (recovered groups against known ones).

Judgments come in as :class:`AnnotatedRankings` (:func:`annotated_rankings` builds them from records):
each judgment is a ranking of item indices, best first, whose levels may hold several tied items; a pair
is a ranking of two and a tie is one level of two.

Likelihoods per judgment (``r`` a judgment, ``d`` a rating difference, ``sigma`` the logistic function):

* ``"bradley-terry"``: the composite likelihood of every pair the ranking implies,
  ``sum_{i above j} log sigma(theta_i - theta_j)``, a tied pair counting half a win each way (the
  convention of :func:`rankalign.stats.fit_bradley_terry`);
* ``"plackett-luce"``: the Plackett-Luce likelihood of :func:`rankalign.stats.fit_plackett_luce`.

Both are weighted by the record's weight. The M-steps are the weighted fits of those functions (Newton's
method on deduplicated counts, float64), MAP with the penalty ``prior * sum theta^2`` so every group's fit
exists however few annotators it holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit, log_expit, logsumexp

from rankalign.data.errors import DataError

from . import _newton
from ._sufficient import PairCounts, pair_counts
from .pairwise import _pairwise_objective, fit_pairwise
from .plackett_luce import _pl_objective, _suffix_logsumexp, fit_plackett_luce, rankings_to_arrays
from .result import RatingResult

MIXTURE_MODELS = ("bradley-terry", "plackett-luce")
# MAP penalty of the group fits unless the caller gives one: N(0, 50) per log-strength, negligible
# against a group's data, and enough to keep a group with few annotators finite
DEFAULT_PRIOR = 0.01


# ------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class AnnotatedRankings:
    """Judgments with their annotators, as rankings of item indices.

    Attributes
    ----------
    items : list of str
        Item names; rankings index into it.
    annotators : list of str
        Annotator ids; ``annotator`` indexes into it.
    rankings : list of list
        One per judgment, best first; an element is an item index or a list of tied item indices.
    annotator : int64 array [R]
        The annotator of each judgment.
    weight : float64 array [R]
        Record weights.
    lines : list of int
        1-based position (file line) of each judgment, for error messages.
    """

    items: list[str]
    annotators: list[str]
    rankings: list
    annotator: np.ndarray
    weight: np.ndarray
    lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rankings)

    def judgments_per_annotator(self) -> np.ndarray:
        return np.bincount(self.annotator, minlength=len(self.annotators))


def annotated_rankings(records: Iterable, *, path=None, lines: Sequence[int] | None = None) -> AnnotatedRankings:
    """Collect item-level rankings and their annotators from :class:`~rankalign.data.RankedList` records.

    Without a prompt, candidates are item ids (strings); with one, each (prompt, response) is an item of its
    own (named ``repr((prompt, response))``). Unranked candidates (rank None) are left out, and every record
    needs an ``annotator``. A record with fewer than two ranked candidates
    carries no comparison and is skipped. Raises :class:`DataError` naming the line and field otherwise.
    """
    from rankalign.data.records import RankedList

    item_index: dict[str, int] = {}
    annotator_index: dict[str, int] = {}
    rankings, owners, weights, positions = [], [], [], []
    for number, record in enumerate(records, start=1):
        line = lines[number - 1] if lines is not None else number
        if not isinstance(record, RankedList):
            raise DataError("annotator models need comparisons or rankings, not unpaired judgments", path=path,
                            line=line, reason="bad_layout")
        if record.annotator is None:
            raise DataError("the record has no annotator id (annotator models need one on every record)",
                            path=path, line=line, field="annotator", reason="missing_annotator")
        levels: dict[int, list[int]] = {}
        for position, (rank, candidate) in enumerate(zip(record.ranks, record.candidates)):
            if rank is None:
                continue
            if record.prompt is not None:  # a response is an item of its own prompt
                name = repr((_plain(record.prompt), _plain(candidate)))
            elif isinstance(candidate, str):
                name = candidate
            else:
                raise DataError("candidates must be item ids (strings) to be rated", path=path, line=line,
                                field=f"candidates[{position}]", reason="bad_type")
            levels.setdefault(rank, []).append(item_index.setdefault(name, len(item_index)))
        if sum(len(level) for level in levels.values()) < 2:
            continue
        rankings.append([levels[r] if len(levels[r]) > 1 else levels[r][0] for r in sorted(levels)])
        owners.append(annotator_index.setdefault(record.annotator, len(annotator_index)))
        weights.append(record.weight)
        positions.append(line)
    if not rankings:
        raise DataError("no record ranks two or more items", path=path, reason="empty")
    return AnnotatedRankings(items=list(item_index), annotators=list(annotator_index), rankings=rankings,
                             annotator=np.asarray(owners, dtype=np.int64),
                             weight=np.asarray(weights, dtype=np.float64), lines=positions)


def _plain(text):
    """A prompt or candidate as a hashable plain value (chat messages as (role, content) tuples)."""
    return text if isinstance(text, str) else tuple((m["role"], m["content"]) for m in text)


def _levels(ranking) -> list[list[int]]:
    return [list(level) if isinstance(level, (list, tuple)) else [level] for level in ranking]


def _reverse(ranking, line, path=None):
    """The ranking read backwards (worst first): what a flipping annotator reports."""
    levels = _levels(ranking)
    if any(len(level) > 1 for level in levels[:-1]) or (len(levels[-1]) > 1 and len(levels) > 1):
        raise DataError("a ranking with tied or unordered levels cannot be reversed under the Plackett-Luce flip "
                        "model; use the bradley-terry model", path=path, line=line, field="ranks",
                        reason="tie_in_ranking")
    return [level[0] for level in levels[::-1]]


# -------------------------------------------------------------------------------- per-judgment backends
class _PairBackend:
    """Bradley-Terry on every pair each ranking implies.

    Two views of the same pairs: one row per (judgment, pair) for models whose latent variable belongs
    to a judgment (the flip model), and the sufficient statistics of the annotator mixture -- a sparse
    ``[U, 3P]`` matrix ``N`` of each annotator's weighted outcome counts per distinct pair ``(i < j)`` and
    outcome (i wins, tie, j wins). Bradley-Terry's composite likelihood is a sum over pairs, so an
    annotator's log-likelihood under every group is ``N @ loglik_per_outcome`` and a group's weighted
    counts are ``N^T @ responsibilities``: the cost of an EM step depends on the number of distinct
    (annotator, pair, outcome) cells, not on Python loops over annotators.
    """

    model = "bradley-terry"

    def __init__(self, data: AnnotatedRankings):
        from scipy import sparse

        first, second, tie, row = [], [], [], []
        for r, ranking in enumerate(data.rankings):
            levels = _levels(ranking)
            for a, level in enumerate(levels):
                for x in range(len(level)):
                    for y in range(x + 1, len(level)):
                        first.append(level[x]), second.append(level[y]), tie.append(True), row.append(r)
                for lower in levels[a + 1:]:
                    for i in level:
                        for j in lower:
                            first.append(i), second.append(j), tie.append(False), row.append(r)
        self.n = n = len(data.items)
        self.first = np.asarray(first, dtype=np.int64)
        self.second = np.asarray(second, dtype=np.int64)
        self.tie = np.asarray(tie, dtype=bool)
        self.row = np.asarray(row, dtype=np.int64)
        self.rows = len(data.rankings)
        self.weight = data.weight
        self.items = data.items
        # sufficient statistics: outcome code 0 (low index wins), 1 (tie), 2 (high index wins)
        low, high = np.minimum(self.first, self.second), np.maximum(self.first, self.second)
        code = np.where(self.tie, 1, np.where(self.first < self.second, 0, 2))
        pair_keys, pair_of = np.unique(low * n + high, return_inverse=True)
        self.pair_low, self.pair_high = pair_keys // n, pair_keys % n
        cell = pair_of.ravel() * 3 + code
        n_annotators = len(data.annotators)
        self.cells = sparse.csr_matrix((data.weight[self.row], (data.annotator[self.row], cell)),
                                       shape=(n_annotators, 3 * len(pair_keys)))
        self.cells.sum_duplicates()

    def log_likelihoods(self, theta: np.ndarray, reverse: bool = False) -> np.ndarray:
        """``[G, R]`` log-likelihood of each judgment (unweighted) under each row of ``theta [G, n]``."""
        d = theta[:, self.first] - theta[:, self.second]
        if reverse:
            d = -d
        per_pair = np.where(self.tie, 0.5 * (log_expit(d) + log_expit(-d)), log_expit(d))
        out = np.empty((theta.shape[0], self.rows))
        for g in range(theta.shape[0]):
            out[g] = np.bincount(self.row, per_pair[g], self.rows)
        return out

    def annotator_log_likelihoods(self, theta: np.ndarray, data) -> np.ndarray:
        """``[U, G]``: each annotator's weighted log-likelihood under each group's ratings."""
        d = (theta[:, self.pair_low] - theta[:, self.pair_high]).T              # [P, G]
        win, loss = log_expit(d), log_expit(-d)
        per_cell = np.stack([win, 0.5 * (win + loss), loss], axis=1).reshape(-1, theta.shape[0])
        return np.asarray(self.cells @ per_cell)

    def _counts(self, forward: np.ndarray, backward: np.ndarray | None):
        outcome = np.where(self.tie, 0.5, 1.0)
        if backward is None:
            return pair_counts(self.first, self.second, outcome, forward[self.row], n_items=self.n)
        return pair_counts(np.concatenate([self.first, self.first]), np.concatenate([self.second, self.second]),
                           np.concatenate([outcome, 1.0 - outcome]),
                           np.concatenate([forward[self.row], backward[self.row]]), n_items=self.n)

    def _group_counts(self, responsibility: np.ndarray) -> PairCounts:
        table = np.asarray(self.cells.T @ responsibility).reshape(-1, 3)
        return PairCounts(self.n, self.pair_low, self.pair_high, table[:, 0], table[:, 1], table[:, 2],
                          np.zeros(len(table)))

    def fit(self, forward, backward=None, *, prior, start=None) -> np.ndarray:
        """Weighted MAP ratings: judgment r counts ``forward[r]`` as given and ``backward[r]`` reversed."""
        result = fit_pairwise(self.model, self._counts(forward, backward), prior=prior, check=False,
                              start=start, compute_se=False)
        return result.state["x"][:self.n]

    def fit_group(self, responsibility, data, *, prior, start=None) -> np.ndarray:
        """Ratings of a group whose annotators carry weights ``responsibility [U]``.

        Inside EM the M-step need not be solved to rounding: Newton (the same objective and solver as
        :func:`rankalign.stats.fit_pairwise`) stops once the remaining gain is below 1e-10 of the
        log-likelihood, one or two steps from the previous iterate. The reported fits are exact.
        """
        counts = self._group_counts(responsibility)
        if prior <= 0:
            return fit_pairwise(self.model, counts, prior=prior, check=False, start=start,
                                compute_se=False).state["x"][:self.n]
        objective = _pairwise_objective(self.model, counts, np.zeros((len(counts.first), 0)), False, prior)
        start = np.zeros(self.n) if start is None else start
        x, *_ = _newton.maximise(objective, np.asarray(start, dtype=np.float64), None, tol=1e-10)
        return x

    def group_result(self, responsibility, data, *, prior, reference=None, ci_level=0.95) -> RatingResult:
        return fit_pairwise(self.model, self._group_counts(responsibility), items=self.items, prior=prior,
                            check=prior == 0, reference=reference, ci_level=ci_level)

    def result(self, forward, backward=None, *, prior, reference=None, ci_level=0.95) -> RatingResult:
        return fit_pairwise(self.model, self._counts(forward, backward), items=self.items, prior=prior,
                            check=prior == 0, reference=reference, ci_level=ci_level)


class _RankingBackend:
    """Plackett-Luce on the rankings; per-judgment log-likelihoods vectorised per ranking length."""

    model = "plackett-luce"

    def __init__(self, data: AnnotatedRankings, *, reversible: bool, path=None):
        self.n = len(data.items)
        self.items = data.items
        self.rows = len(data.rankings)
        self.weight = data.weight
        self.rankings = data.rankings
        # the weights carry each ranking's row (1-based, exact in float64) through the grouping
        _, groups = rankings_to_arrays(data.rankings, np.arange(1, self.rows + 1, dtype=np.float64),
                                       n_items=self.n)
        self.groups = [(orders, stages, (ids - 1).astype(np.int64)) for orders, stages, ids in groups]
        self.reversed = None
        if reversible:
            for ranking, line in zip(data.rankings, data.lines or range(1, self.rows + 1)):
                _reverse(ranking, line, path)  # raises on a ranking that cannot be reversed
            self.reversed = [(orders[:, ::-1].copy(), stages, rows) for orders, stages, rows in self.groups]

    def log_likelihoods(self, theta: np.ndarray, reverse: bool = False) -> np.ndarray:
        out = np.zeros((theta.shape[0], self.rows))
        for orders, stages, rows in (self.reversed if reverse else self.groups):
            t = theta[:, orders]                                     # [G, R_l, L]
            flat = t.reshape(-1, t.shape[-1])
            log_norm = _suffix_logsumexp(flat)[:, :stages]
            ll = flat[:, :stages].sum(axis=1) - log_norm.sum(axis=1)
            out[:, rows] = ll.reshape(theta.shape[0], -1)
        return out

    def annotator_log_likelihoods(self, theta: np.ndarray, data) -> np.ndarray:
        return _per_annotator(self.log_likelihoods(theta) * data.weight, data.annotator, len(data.annotators))

    def fit_group(self, responsibility, data, *, prior, start=None) -> np.ndarray:
        return self.fit(responsibility[data.annotator] * data.weight, prior=prior, start=start)

    def group_result(self, responsibility, data, *, prior, reference=None, ci_level=0.95) -> RatingResult:
        return self.result(responsibility[data.annotator] * data.weight, prior=prior, reference=reference,
                           ci_level=ci_level)

    def _groups(self, forward, backward):
        groups = [(orders, stages, forward[rows]) for orders, stages, rows in self.groups]
        if backward is not None:
            groups += [(orders, stages, backward[rows]) for orders, stages, rows in self.reversed]
        return groups

    def fit(self, forward, backward=None, *, prior, start=None) -> np.ndarray:
        objective = _pl_objective(self.n, self._groups(forward, backward), prior, 0.0)
        x0 = np.zeros(self.n) if start is None else np.array(start, dtype=np.float64)
        x, *_ = _newton.maximise(objective, x0, None if prior > 0 else np.arange(1, self.n))
        return x

    def result(self, forward, backward=None, *, prior, reference=None, ci_level=0.95) -> RatingResult:
        rankings = list(self.rankings)
        weights = forward
        if backward is not None:
            rankings += [_reverse(r, 0) for r in self.rankings]
            weights = np.concatenate([forward, backward])
        return fit_plackett_luce(rankings, weights, items=self.items, prior=prior, reference=reference,
                                 ci_level=ci_level, check=prior == 0)


def _backend(data: AnnotatedRankings, model: str, *, reversible=False, path=None):
    if model in ("bradley-terry", "bt"):
        return _PairBackend(data)
    if model in ("plackett-luce", "pl"):
        return _RankingBackend(data, reversible=reversible, path=path)
    raise ValueError(f"unknown model {model!r}; expected one of {MIXTURE_MODELS}")


def _per_annotator(values: np.ndarray, annotator: np.ndarray, n_annotators: int) -> np.ndarray:
    """Sum ``values [G, R]`` over each annotator's judgments: ``[U, G]``."""
    return np.stack([np.bincount(annotator, row, n_annotators) for row in values], axis=1)


# ------------------------------------------------------------------------------------- mixture over annotators
@dataclass
class AnnotatorMixture:
    """A fitted mixture of rating models over annotators.

    Attributes
    ----------
    groups : list of RatingResult
        One leaderboard per group: the group's weighted fit (each judgment weighted by its annotator's
        responsibility for the group), with Wald intervals that treat those weights as known.
    proportions : float array [G]
        Mixing proportions ``pi_g``.
    responsibilities : float array [U, G]
        Posterior group probabilities of each annotator.
    annotators : list of str
    log_likelihood : float
        Marginal log-likelihood ``sum_u log sum_g pi_g prod_{r in u} P(r | theta_g)`` at the estimate
        (prior excluded).
    bic : float
        ``-2 log_likelihood + p log U``, ``p = G (n_items - 1) + G - 1`` free parameters, ``U`` annotators
        (the units that are clustered).
    iterations, restarts : int
    """

    groups: list[RatingResult]
    proportions: np.ndarray
    responsibilities: np.ndarray
    annotators: list[str]
    log_likelihood: float
    bic: float
    model: str
    iterations: int = 0
    restarts: int = 0
    prior: float = DEFAULT_PRIOR
    selection: dict = field(default_factory=dict)

    @property
    def assignment(self) -> np.ndarray:
        """Each annotator's most probable group."""
        return np.argmax(self.responsibilities, axis=1)

    def annotator_rows(self) -> list[dict]:
        """``[{"annotator", "group", "responsibility"}]`` (the ``--json`` rows)."""
        best = self.assignment
        return [{"annotator": a, "group": int(g), "responsibility": float(self.responsibilities[u, g])}
                for u, (a, g) in enumerate(zip(self.annotators, best))]


def _bic(log_likelihood: float, n_groups: int, n_items: int, n_annotators: int) -> float:
    parameters = n_groups * (n_items - 1) + n_groups - 1
    return -2.0 * log_likelihood + parameters * math.log(max(n_annotators, 2))


def _e_step(backend, theta, log_pi, data):
    joint = backend.annotator_log_likelihoods(theta, data) + log_pi                      # [U, G]
    norm = logsumexp(joint, axis=1, keepdims=True)
    return np.exp(joint - norm), float(norm.sum())


def _seed_thetas(backend, data, n_groups, rng, prior):
    """Farthest-first seeds: a random annotator's own fit, then repeatedly the annotator whose data the
    seeds so far explain worst (per judgment), each fitted on that annotator's judgments alone."""
    n_annotators = len(data.annotators)
    counts = np.maximum(np.bincount(data.annotator, data.weight, n_annotators), 1e-12)
    seeds = [int(rng.integers(n_annotators))]
    thetas = []
    seed_prior = max(prior, 0.5)  # one annotator's data: keep the seed fit finite and mild
    for g in range(n_groups):
        own = np.zeros(n_annotators)
        own[seeds[g]] = 1.0
        thetas.append(backend.fit_group(own, data, prior=seed_prior))
        if g + 1 == n_groups:
            break
        explained = backend.annotator_log_likelihoods(np.stack(thetas), data).max(axis=1) / counts
        explained[seeds] = np.inf
        seeds.append(int(np.argmin(explained)))
    return np.stack(thetas)


def _em(backend, data, n_groups, rng, prior, max_iter, tol):
    theta = _seed_thetas(backend, data, n_groups, rng, prior)
    log_pi = np.full(n_groups, -math.log(n_groups))
    previous = -np.inf
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        resp, ll = _e_step(backend, theta, log_pi, data)
        if ll - previous < tol * max(1.0, abs(ll)):
            break
        previous = ll
        mass = resp.sum(axis=0)
        log_pi = np.log(np.maximum(mass / mass.sum(), 1e-300))
        for g in range(n_groups):
            theta[g] = backend.fit_group(resp[:, g], data, prior=prior, start=theta[g])
    return theta, log_pi, resp, ll, iterations


def fit_annotator_mixture(data: AnnotatedRankings, n_groups: int, *, model: str = "bradley-terry",
                          restarts: int = 4, prior: float = DEFAULT_PRIOR, seed: int = 0, max_iter: int = 200,
                          tol: float = 1e-7, reference=None, ci_level: float = 0.95) -> AnnotatorMixture:
    """EM for a mixture of rating models over annotators.

    Model: annotator ``u`` belongs to group ``g`` with probability ``pi_g``; given the group, each of their
    judgments ``r`` has likelihood ``P(r | theta_g)`` (module docstring), so

        log L = sum_u log sum_g pi_g prod_{r in u} P(r | theta_g)^{w_r}.

    E-step: responsibilities ``R_ug`` proportional to ``pi_g prod_r P(r | theta_g)^{w_r}``, in log space, all
    annotators at once (per-judgment log-likelihoods summed per annotator by ``bincount``). M-step:
    ``pi_g = mean_u R_ug`` and ``theta_g`` the weighted MAP fit with judgment weights ``w_r R_{u(r) g}``
    (Newton on deduplicated counts). Each restart seeds the groups farthest-first from single annotators'
    fits (different first annotator per restart); the restart with the highest likelihood is kept.

    Parameters
    ----------
    data : AnnotatedRankings
    n_groups : int
        G >= 1 (G = 1 is the pooled fit).
    model : {"bradley-terry", "plackett-luce"}
    restarts : int
        Random restarts (ignored for G = 1).
    prior : float
        MAP penalty ``prior * sum_g sum_i theta_gi^2`` (> 0 keeps groups with few annotators finite).
    seed : int
        Seeds the restarts.

    Returns
    -------
    AnnotatorMixture
        Groups are ordered by decreasing proportion.
    """
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    if prior < 0:
        raise ValueError(f"prior must be >= 0, got {prior}")
    backend = data if isinstance(data, (_PairBackend, _RankingBackend)) else _backend(data, model)
    return _fit_mixture(backend, data, n_groups, restarts=restarts, prior=prior, seed=seed, max_iter=max_iter,
                        tol=tol, reference=reference, ci_level=ci_level)


def _fit_mixture(backend, data, n_groups, *, restarts, prior, seed, max_iter, tol, reference, ci_level):
    n_annotators = len(data.annotators)
    if n_groups > n_annotators:
        raise ValueError(f"{n_groups} groups for {n_annotators} annotators")
    rng = np.random.default_rng(seed)
    best = None
    total_iterations = 0
    for _ in range(1 if n_groups == 1 else max(restarts, 1)):
        fit = _em(backend, data, n_groups, rng, prior, max_iter, tol)
        total_iterations += fit[4]
        if best is None or fit[3] > best[3]:
            best = fit
    theta, log_pi, resp, ll, _ = best
    order = np.argsort(-resp.sum(axis=0), kind="stable")
    resp = resp[:, order]
    groups = [backend.group_result(resp[:, g], data, prior=prior, reference=reference, ci_level=ci_level)
              for g in range(n_groups)]
    # the likelihood at the reported estimate (the final fits refine theta a little)
    final = np.stack([_newton.apply_gauge(np.asarray(r.state["x"][:backend.n]), backend.n) for r in groups])
    resp, ll = _e_step(backend, final, np.log(np.maximum(resp.mean(axis=0), 1e-300)), data)
    return AnnotatorMixture(groups=groups, proportions=resp.mean(axis=0), responsibilities=resp,
                            annotators=list(data.annotators), log_likelihood=ll,
                            bic=_bic(ll, n_groups, backend.n, n_annotators), model=backend.model,
                            iterations=total_iterations, restarts=restarts, prior=prior)


def choose_groups(data: AnnotatedRankings, *, max_groups: int = 4, model: str = "bradley-terry",
                  restarts: int = 4, prior: float = DEFAULT_PRIOR, seed: int = 0, **kwargs) -> AnnotatorMixture:
    """Fit G = 1..max_groups mixtures and keep the one with the lowest BIC (Schwarz 1978).

    BIC = ``-2 log L + p log U`` with ``p = G (n_items - 1) + (G - 1)`` and ``U`` the number of annotators:
    the annotators are the independent units the mixture clusters (their judgments are not independent
    given the mixture), so ``U`` is the sample size. The search stops early once BIC has risen twice in a
    row. ``selection`` of the result maps each G tried to its BIC.
    """
    backend = _backend(data, model)
    max_groups = max(1, min(max_groups, len(data.annotators)))
    fits, rises = [], 0
    for n_groups in range(1, max_groups + 1):
        fit = _fit_mixture(backend, data, n_groups, restarts=restarts, prior=prior, seed=seed,
                           max_iter=kwargs.get("max_iter", 200), tol=kwargs.get("tol", 1e-7),
                           reference=kwargs.get("reference"), ci_level=kwargs.get("ci_level", 0.95))
        rises = rises + 1 if fits and fit.bic > min(f.bic for f in fits) else 0
        fits.append(fit)
        if rises >= 2:
            break
    best = min(fits, key=lambda f: f.bic)
    best.selection = {"criterion": "bic", "bic": {len(f.groups): f.bic for f in fits}}
    return best


def rand_index(labels_a, labels_b) -> float:
    """Rand (1971) index: the share of pairs of units that two partitions treat alike (same or different).

    ``(C(n,2) + 2 sum_ij C(n_ij,2) - sum_i C(a_i,2) - sum_j C(b_j,2)) / C(n,2)`` from the contingency table
    ``n_ij``; 1 means the same partition whatever the labels' names.
    """
    a = np.unique(np.asarray(labels_a), return_inverse=True)[1].ravel()
    b = np.unique(np.asarray(labels_b), return_inverse=True)[1].ravel()
    if len(a) != len(b):
        raise ValueError(f"{len(a)} and {len(b)} labels")
    n = len(a)
    if n < 2:
        return 1.0
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1.0)

    def pairs(x):
        return float((x * (x - 1) / 2.0).sum())

    total = n * (n - 1) / 2.0
    return (total + 2.0 * pairs(table) - pairs(table.sum(axis=1)) - pairs(table.sum(axis=0))) / total


# -------------------------------------------------------------------------------- annotator reliability
@dataclass
class AnnotatorReliability:
    """A fitted flip-noise (Dawid-Skene-style) model.

    Attributes
    ----------
    ratings : RatingResult
        Item ratings fitted jointly with the flip rates (each judgment counted as given with weight
        ``1 - q_r`` and reversed with weight ``q_r``, ``q_r`` its posterior flip probability).
    annotators : list of str
    flip_rate : float array [U]
        ``eps_u`` in [0, 1/2].
    flip_rate_se : float array [U]
        Standard error of ``eps_u`` from the observed information of the annotator's own judgments with the
        ratings held fixed (so it ignores the ratings' uncertainty; nan where no judgment informs it and
        where the estimate sits on the boundary, 0 or 1/2, where a Wald standard error means nothing; a
        ``flip_prior`` keeps estimates inside).
    n : float array [U]
        Weighted judgments per annotator.
    agreement : float array [U]
        Weighted share of the annotator's judgments the fitted ratings find more likely as given than reversed.
    log_likelihood : float
    iterations : int
    converged : bool
        False when EM stopped at ``max_iter``.
    """

    ratings: RatingResult
    annotators: list[str]
    flip_rate: np.ndarray
    flip_rate_se: np.ndarray
    n: np.ndarray
    agreement: np.ndarray
    log_likelihood: float
    iterations: int
    model: str
    converged: bool = True

    @property
    def weights(self) -> np.ndarray:
        """Reliability weights ``(1 - 2 eps_u)^2`` (see :func:`reliability_weights`)."""
        return reliability_weights(self.flip_rate)

    def annotator_weight(self) -> dict[str, float]:
        return dict(zip(self.annotators, self.weights.tolist()))


def reliability_weights(flip_rate) -> np.ndarray:
    """Judgment weights from flip rates: ``(1 - 2 eps)^2``.

    Under the flip model ``P(a > b) = (1 - eps) sigma(d) + eps sigma(-d)`` the slope of the observed
    preference in ``d`` is ``(1 - 2 eps)`` times that of a noiseless annotator, so a judgment's Fisher
    information about a rating difference near ``d = 0`` is ``(1 - 2 eps)^2`` times as large: a perfectly
    reliable annotator counts 1, a coin-flipper (``eps = 1/2``) 0.
    """
    eps = np.clip(np.asarray(flip_rate, dtype=np.float64), 0.0, 0.5)
    return (1.0 - 2.0 * eps) ** 2


def fit_annotator_reliability(data: AnnotatedRankings, *, model: str = "bradley-terry", prior: float = DEFAULT_PRIOR,
                              flip_prior: tuple[float, float] = (0.0, 0.0), initial_flip_rate: float = 0.1,
                              max_iter: int = 500, tol: float = 1e-10,
                              reference=None, ci_level: float = 0.95, path=None) -> AnnotatorReliability:
    """Flip rates and item ratings by EM (Dawid & Skene 1979, for pairs and rankings).

    Model: annotator ``u`` reports a ranking ``r`` drawn from the rating model (Bradley-Terry pairs or
    Plackett-Luce, see the module docstring) and, with probability ``eps_u``, reports it reversed (a pair
    flipped), so

        P(r) = (1 - eps_u) P(r | theta) + eps_u P(reverse(r) | theta).

    E-step: the posterior flip probability ``q_r = eps_u P(rev r) / P(r)`` (log space). M-step:
    ``eps_u = sum_{r in u} w_r q_r / sum_{r in u} w_r`` (capped at 1/2: beyond it the annotator would be
    reading the scale backwards, which the model does not identify apart from the ratings' sign), and
    ``theta`` the weighted MAP fit with each judgment counted ``w_r (1 - q_r)`` times as given and
    ``w_r q_r`` times reversed. Tied pairs are the same reversed and inform only the ratings. EM never
    decreases the log-likelihood; it stops when the gain falls below ``tol`` (relative).

    ``flip_prior = (a, b)`` adds ``a`` pseudo-flipped and ``b`` pseudo-kept judgments to every annotator:
    ``eps_u = (sum w q + a) / (sum w + a + b)``, the MAP estimate under a Beta(a + 1, b + 1) prior. With a
    handful of judgments per annotator the maximum-likelihood rates sit at 0 or 1/2; a prior shrinks them
    towards ``a / (a + b)``. Default (0, 0): maximum likelihood.
    """
    pseudo_flips, pseudo_keeps = (float(v) for v in flip_prior)
    if pseudo_flips < 0 or pseudo_keeps < 0:
        raise ValueError(f"flip_prior pseudo-counts must be >= 0, got {flip_prior}")
    backend = _backend(data, model, reversible=True, path=path)
    n_annotators = len(data.annotators)
    owner = data.annotator
    w = data.weight
    per_annotator = np.bincount(owner, w, n_annotators)
    eps = np.full(n_annotators, float(initial_flip_rate))
    theta = backend.fit(w, prior=prior)
    previous = -np.inf
    iterations = 0
    converged = False
    for iterations in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        forward = backend.log_likelihoods(theta[None])[0]
        backward = backend.log_likelihoods(theta[None], reverse=True)[0]
        e = np.clip(eps[owner], 1e-12, 0.5)
        log_f = np.log1p(-e) + forward
        log_b = np.log(e) + backward
        log_p = np.logaddexp(log_f, log_b)
        ll = float(w @ log_p)
        q = np.exp(log_b - log_p)
        if ll - previous < tol * max(1.0, abs(ll)):
            converged = True
            break
        previous = ll
        eps = np.minimum((np.bincount(owner, w * q, n_annotators) + pseudo_flips)
                         / np.maximum(per_annotator + pseudo_flips + pseudo_keeps, 1e-300), 0.5)
        theta = backend.fit(w * (1.0 - q), w * q, prior=prior, start=theta)
    ratings = backend.result(w * (1.0 - q), w * q, prior=prior, reference=reference, ci_level=ci_level)
    theta = np.asarray(ratings.state["x"][:backend.n])
    forward = backend.log_likelihoods(theta[None])[0]
    backward = backend.log_likelihoods(theta[None], reverse=True)[0]
    # p_r = P(r | theta) / (P(r | theta) + P(rev r | theta)); d/d eps log P(r) = (1 - 2 p_r) / mix_r
    p = expit(forward - backward)
    e = eps[owner]
    score = (1.0 - 2.0 * p) / np.maximum((1.0 - e) * p + e * (1.0 - p), 1e-300)
    information = np.bincount(owner, w * score ** 2, n_annotators)
    with np.errstate(divide="ignore"):
        se = np.where(information > 0, 1.0 / np.sqrt(information), np.nan)
    # an estimate on the boundary (0 or 1/2, e.g. an annotator all of whose judgments the ratings agree with)
    # has no Wald standard error: the information there describes a maximum the estimate cannot move past
    # (EM approaches 0 geometrically and stops near it: 1e-6 counts as there)
    se = np.where((eps > 1e-6) & (eps < 0.5 - 1e-6), se, np.nan)
    agree = np.bincount(owner, w * (forward > backward) + 0.5 * w * (forward == backward), n_annotators)
    return AnnotatorReliability(ratings=ratings, annotators=list(data.annotators), flip_rate=eps, flip_rate_se=se,
                                n=per_annotator, agreement=agree / np.maximum(per_annotator, 1e-300),
                                log_likelihood=ll, iterations=iterations, model=backend.model, converged=converged)


def weight_by_reliability(records: Iterable, reliability: AnnotatorReliability | None = None, *,
                          model: str = "bradley-terry", prior: float = DEFAULT_PRIOR) -> list:
    """Records with ``weight`` multiplied by their annotator's reliability weight ``(1 - 2 eps_u)^2``.

    ``reliability`` defaults to :func:`fit_annotator_reliability` on the records themselves. Records of
    annotators the fit has not seen, or without an annotator, keep their weight. The flip rates are only
    identified where the same items (or the same prompt's responses) are judged by several annotators; with
    one judgment per pair (most text preference data) a flip cannot be told from a close call. This is how ``data.weight_by_reliability: true`` in a train config and
    ``rankalign rate --weight-by-reliability`` weight their data.
    """
    from dataclasses import replace

    records = list(records)
    if reliability is None:
        annotated = [r for r in records if getattr(r, "annotator", None) is not None and hasattr(r, "ranks")]
        reliability = fit_annotator_reliability(annotated_rankings(annotated), model=model, prior=prior)
    weights = reliability.annotator_weight()
    return [replace(r, weight=r.weight * weights[r.annotator]) if getattr(r, "annotator", None) in weights
            else r for r in records]


# ------------------------------------------------------------------------------------------------ agreement
def agreement_units(data: AnnotatedRankings):
    """(unit, rater, value) triples for agreement statistics.

    Two views of the same judgments:

    * ``"pairs"``: a unit is an unordered pair of items {i, j} (i < j by index); the value is 0 when the
      annotator put i above j, 1 for a tie and 2 for j above i (every pair a ranking implies);
    * ``"ranks"``: a unit is an item within a set of items ranked together (the same candidate set
      judged by several annotators); the value is the item's rank in the annotator's ranking (0 best,
      tied items share a rank) -- ordinal data for Krippendorff's alpha.

    Returns ``{"pairs": (unit, rater, value), "ranks": (unit, rater, value)}`` of int64 arrays.
    """
    pair_unit, pair_rater, pair_value = [], [], []
    rank_unit, rank_rater, rank_value = [], [], []
    set_index: dict[tuple, int] = {}
    n = len(data.items)
    for ranking, rater in zip(data.rankings, data.annotator.tolist()):
        levels = _levels(ranking)
        members = sorted(i for level in levels for i in level)
        base = set_index.setdefault(tuple(members), len(set_index)) * n
        position = 0
        for level in levels:
            for i in level:
                rank_unit.append(base + i), rank_rater.append(rater), rank_value.append(position)
            position += 1
        rank_of = {i: r for r, level in enumerate(levels) for i in level}
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                i, j = members[x], members[y]
                pair_unit.append(i * n + j), pair_rater.append(rater)
                pair_value.append(0 if rank_of[i] < rank_of[j] else (1 if rank_of[i] == rank_of[j] else 2))

    def arrays(*columns):
        return tuple(np.asarray(c, dtype=np.int64) for c in columns)

    return {"pairs": arrays(pair_unit, pair_rater, pair_value), "ranks": arrays(rank_unit, rank_rater, rank_value)}


def _deduplicate(unit, rater, value):
    """One value per (unit, rater): a rater who judged a unit twice keeps the first judgment."""
    key = np.stack([unit, rater], axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    first.sort()
    return unit[first], rater[first], value[first]


def cohen_kappa(labels_a, labels_b) -> float:
    """Cohen's (1960) kappa of two raters on the same units: ``(p_o - p_e) / (1 - p_e)``.

    ``p_o`` is the share of units they label alike, ``p_e = sum_k p_a(k) p_b(k)`` the agreement expected
    from their own label frequencies. nan when ``p_e = 1`` (both always use one and the same label).
    """
    a, b = np.asarray(labels_a), np.asarray(labels_b)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"need two equally long, non-empty label arrays, got {len(a)} and {len(b)}")
    values, codes = np.unique(np.concatenate([a, b]), return_inverse=True)
    ca, cb = codes[:len(a)], codes[len(a):]
    k = len(values)
    p_o = float(np.mean(ca == cb))
    p_e = float(np.bincount(ca, minlength=k) @ np.bincount(cb, minlength=k)) / len(a) ** 2
    return float("nan") if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)


def mean_cohen_kappa(unit, rater, value, *, min_overlap: int = 5) -> tuple[float, int]:
    """Mean of Cohen's kappa over the pairs of raters who share at least ``min_overlap`` units.

    Returns ``(mean kappa, number of rater pairs)``; ``(nan, 0)`` when no two raters overlap enough.
    Pairs whose kappa is undefined (no variation) are left out of the mean.
    """
    unit, rater, value = _deduplicate(np.asarray(unit), np.asarray(rater), np.asarray(value))
    by_unit: dict[int, list[tuple[int, int]]] = {}
    for u, r, v in zip(unit.tolist(), rater.tolist(), value.tolist()):
        by_unit.setdefault(u, []).append((r, v))
    shared: dict[tuple[int, int], tuple[list, list]] = {}
    for judged in by_unit.values():
        if len(judged) < 2:
            continue
        judged.sort()
        for x in range(len(judged)):
            for y in range(x + 1, len(judged)):
                lists = shared.setdefault((judged[x][0], judged[y][0]), ([], []))
                lists[0].append(judged[x][1]), lists[1].append(judged[y][1])
    kappas = [cohen_kappa(a, b) for a, b in shared.values() if len(a) >= min_overlap]
    kappas = [k for k in kappas if math.isfinite(k)]
    return (float(np.mean(kappas)), len(kappas)) if kappas else (float("nan"), 0)


def fleiss_kappa(unit, rater, value) -> float:
    """Fleiss' (1971) kappa for many raters, each unit judged by any number (>= 2) of them.

    With ``n_uk`` the raters putting unit ``u`` in category ``k`` and ``n_u`` its raters:
    ``P_u = sum_k n_uk (n_uk - 1) / (n_u (n_u - 1))`` (observed agreement on the unit),
    ``P_bar = mean_u P_u``, ``p_k = sum_u n_uk / sum_u n_u`` and ``P_e = sum_k p_k^2``;
    ``kappa = (P_bar - P_e) / (1 - P_e)``. With the same number of raters on every unit this is Fleiss'
    formula; units with one rater are left out. A rater's repeated judgments of a unit count once.
    """
    unit, rater, value = _deduplicate(np.asarray(unit), np.asarray(rater), np.asarray(value))
    _, u = np.unique(unit, return_inverse=True)
    _, k = np.unique(value, return_inverse=True)
    table = np.zeros((u.max() + 1, k.max() + 1))
    np.add.at(table, (u.ravel(), k.ravel()), 1.0)
    raters = table.sum(axis=1)
    table = table[raters >= 2]
    raters = raters[raters >= 2]
    if len(table) == 0:
        return float("nan")
    p_unit = (table * (table - 1)).sum(axis=1) / (raters * (raters - 1))
    p_k = table.sum(axis=0) / table.sum()
    p_e = float(p_k @ p_k)
    return float("nan") if p_e >= 1.0 else (float(p_unit.mean()) - p_e) / (1.0 - p_e)


def krippendorff_alpha(unit, rater, value, *, metric: str = "ordinal") -> float:
    """Krippendorff's alpha (Krippendorff 2011, "Computing Krippendorff's alpha-reliability").

    ``alpha = 1 - D_o / D_e`` from the coincidence matrix ``o_ck`` (each ordered pair of values from
    different raters of a unit with ``m_u >= 2`` values adds ``1 / (m_u - 1)``), ``n_c = sum_k o_ck``,
    ``n = sum_c n_c``: ``D_o = sum_ck o_ck delta_ck^2 / n`` and ``D_e = sum_ck n_c n_k delta_ck^2 / (n (n - 1))``.
    Metrics: ``"nominal"`` (delta = [c != k]), ``"ordinal"`` (``delta_ck^2 = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2``),
    ``"interval"`` (``(c - k)^2``). For rankings use ``"ordinal"`` on the ranks.
    """
    if metric not in ("nominal", "ordinal", "interval"):
        raise ValueError(f"unknown metric {metric!r}; expected nominal, ordinal or interval")
    unit, rater, value = _deduplicate(np.asarray(unit), np.asarray(rater), np.asarray(value))
    values, v = np.unique(value, return_inverse=True)
    v = v.ravel()
    _, u = np.unique(unit, return_inverse=True)
    u = u.ravel()
    counts = np.zeros((u.max() + 1, len(values)))
    np.add.at(counts, (u, v), 1.0)
    m = counts.sum(axis=1)
    counts, m = counts[m >= 2], m[m >= 2]
    if len(counts) == 0:
        return float("nan")
    # o_ck = sum_u (n_uc n_uk - [c == k] n_uc) / (m_u - 1)
    scaled = counts / (m - 1.0)[:, None]
    coincidence = scaled.T @ counts - np.diag(scaled.sum(axis=0))
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()
    if metric == "nominal":
        delta = 1.0 - np.eye(len(values))
    elif metric == "interval":
        x = values.astype(np.float64)
        delta = (x[:, None] - x[None, :]) ** 2
    else:
        cumulative = np.cumsum(n_c)
        low = np.minimum.outer(np.arange(len(values)), np.arange(len(values)))
        high = np.maximum.outer(np.arange(len(values)), np.arange(len(values)))
        between = cumulative[high] - np.where(low > 0, cumulative[np.maximum(low - 1, 0)], 0.0)
        delta = (between - (n_c[:, None] + n_c[None, :]) / 2.0) ** 2
    observed = float((coincidence * delta).sum()) / n
    expected = float((np.outer(n_c, n_c) * delta).sum()) / (n * (n - 1.0))
    return float("nan") if expected == 0 else 1.0 - observed / expected


def _both_orientations(unit, rater, value, n_items: int):
    """Pair units read both ways: each (i, j) unit also as (j, i) with ``value`` mirrored (0 <-> 2).

    Which item of a pair is "first" is an accident of the data (the order in which items first appear), yet
    the category frequencies behind a kappa's chance agreement depend on it: reading the same file in
    another row order changes Fleiss' and Cohen's kappa. Counting every unit in both orientations makes the
    frequencies of "first wins" and "second wins" equal, so chance agreement depends only on how often
    raters tie, and the observed agreement (and with it the kappa's numerator) is unchanged.
    """
    return (np.concatenate([unit, unit + n_items * n_items]), np.concatenate([rater, rater]),
            np.concatenate([value, 2 - value]))


def agreement_report(data: AnnotatedRankings, *, min_overlap: int = 5) -> dict:
    """Fleiss' kappa and mean Cohen's kappa on pair units, Krippendorff's alpha (ordinal) on rank units.

    The kappas count every pair unit in both orientations (:func:`_both_orientations`), so they do not
    depend on the order of the records: chance agreement is ``p_tie^2 + (1 - p_tie)^2 / 2`` (Fleiss, pooled
    tie share) and ``t_a t_b + (1 - t_a)(1 - t_b) / 2`` (Cohen, each rater's own tie share ``t``).
    ``min_overlap`` counts pairs of items, each once.
    """
    units = agreement_units(data)
    pairs, ranks = units["pairs"], units["ranks"]
    both_ways = _both_orientations(*pairs, len(data.items))
    kappa, rater_pairs = mean_cohen_kappa(*both_ways, min_overlap=2 * min_overlap)
    shared_pairs = int((np.bincount(np.unique(pairs[0], return_inverse=True)[1].ravel()) >= 2).sum())
    return {"fleiss_kappa": fleiss_kappa(*both_ways), "mean_cohen_kappa": kappa, "cohen_rater_pairs": rater_pairs,
            "krippendorff_alpha_ordinal": krippendorff_alpha(*ranks, metric="ordinal"),
            "units_with_two_or_more": shared_pairs}


__all__ = [
    "AnnotatedRankings", "annotated_rankings", "AnnotatorMixture", "fit_annotator_mixture", "choose_groups",
    "rand_index", "AnnotatorReliability", "fit_annotator_reliability", "reliability_weights",
    "weight_by_reliability", "agreement_units", "cohen_kappa", "mean_cohen_kappa", "fleiss_kappa",
    "krippendorff_alpha", "agreement_report", "MIXTURE_MODELS", "DEFAULT_PRIOR",
]
