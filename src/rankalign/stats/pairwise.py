"""Paired-comparison models: Bradley-Terry, Thurstone-Mosteller, Davidson and Rao-Kupper ties.

All four share one linear predictor per comparison of ``first`` against ``second``::

    d = theta[first] - theta[second] + h * home + w^T (x_first - x_second)

(``h`` the order/home effect, ``w`` covariate weights, both optional) and differ in how ``d`` becomes
outcome probabilities. Each is fitted by exact maximum likelihood (or MAP) with Newton's method on the
deduplicated per-pair counts (:mod:`rankalign.stats._sufficient`), with analytic gradients and Hessians.

Conventions (shared by every ``fit_*`` function here)
-----------------------------------------------------
* Outcomes: 1.0 ``first`` wins, 0.5 tie, 0.0 ``second`` wins.
* Ties under ``bradley_terry`` and ``thurstone``: half a win for each side (the arena convention); the
  log-likelihood is then the "fractional" one, ``(w + t/2) log P(first) + (l + t/2) log P(second)``.
  Its observed information counts a tie as much as a decided game, so with many ties the Wald intervals
  are conservative (football, 27% draws: 1000 bootstrap replicates over games give intervals a median 0.85 as wide);
  ``davidson`` and ``rao_kupper`` model ties explicitly (a likelihood for them), and ``--bootstrap`` resamples.
* Gauge: ratings are identified up to a common shift. The MLE is computed with item 0 fixed at 0 and
  then reported with mean zero (``reference=None``, default) or with ``reference`` item at 0. BradleyTerry2's
  ``BTm`` reports abilities with the first factor level (alphabetically first item) at 0: pass that
  item as ``reference`` to compare.
* Prior (MAP): ``prior=alpha > 0`` maximises ``loglik(theta) - alpha * sum_i theta_i^2``, i.e. an
  independent Gaussian prior N(0, 1/(2 alpha)) on every item's log-strength (not on h, w or the tie
  parameter). The MAP estimate then has mean zero by itself and always exists.
* Standard errors: inverse observed information (the Hessian of the log-posterior at the estimate) in
  the fitting gauge, mapped to the reported gauge as ``A C A^T`` (:func:`rankalign.stats._newton.gauge_matrix`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import sparse
from scipy.special import expit, log_ndtr, ndtri

from rankalign.data.errors import DataError

from . import _newton
from ._sufficient import PairCounts, check_pair_counts_identifiable, check_penalties, pair_counts
from .result import RatingResult

MODELS = ("bradley-terry", "thurstone", "davidson", "rao-kupper")


# ------------------------------------------------------------------------------- per-row derivatives
def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _bt_terms(d, c: PairCounts, tau):
    """Bradley-Terry: P(first) = sigma(d). Returns ll, l_d, l_dd, l_dtau, l_tau, l_tautau."""
    y1 = c.wins_first + 0.5 * c.ties
    y2 = c.wins_second + 0.5 * c.ties
    # one exp and one log1p serve both log-probabilities and sigma(d):
    # log sigma(d) = min(d, 0) - log1p(exp(-|d|)), log sigma(-d) = min(-d, 0) - log1p(exp(-|d|))
    e = np.exp(-np.abs(d))
    log1p_e = np.log1p(e)
    ll = float(y1 @ (np.minimum(d, 0.0) - log1p_e) + y2 @ (np.minimum(-d, 0.0) - log1p_e))
    p = np.where(d >= 0, 1.0, e) / (1.0 + e)
    q = 1.0 - p
    return ll, y1 * q - y2 * p, -(y1 + y2) * p * q, None, 0.0, 0.0


def _inverse_mills(x):
    """phi(x) / Phi(x), computed in log space (finite for very negative x)."""
    return np.exp(-0.5 * x * x - 0.5 * math.log(2.0 * math.pi) - log_ndtr(x))


def _thurstone_terms(d, c: PairCounts, tau):
    """Thurstone-Mosteller Case V: P(first) = Phi(d) (the difference has unit variance)."""
    y1 = c.wins_first + 0.5 * c.ties
    y2 = c.wins_second + 0.5 * c.ties
    r1 = _inverse_mills(d)
    r2 = _inverse_mills(-d)
    ll = float(np.sum(y1 * log_ndtr(d) + y2 * log_ndtr(-d)))
    l_d = y1 * r1 - y2 * r2
    l_dd = -y1 * r1 * (d + r1) - y2 * r2 * (-d + r2)
    return ll, l_d, l_dd, None, 0.0, 0.0


def _davidson_terms(d, c: PairCounts, log_nu):
    """Davidson (1970): softmax of (d/2, -d/2, log nu) gives (P(first), P(second), P(tie))."""
    z = np.stack([d / 2.0, -d / 2.0, np.full_like(d, log_nu)])
    top = z.max(axis=0)
    e = np.exp(z - top)
    total_e = e.sum(axis=0)
    log_norm = top + np.log(total_e)
    pa, pb, pt = e / total_e
    n = c.total
    ll = float(np.sum(c.wins_first * d / 2.0 - c.wins_second * d / 2.0 + c.ties * log_nu - n * log_norm))
    l_d = (c.wins_first - c.wins_second) / 2.0 - n * (pa - pb) / 2.0
    l_dd = -n * ((pa + pb) / 4.0 - (pa - pb) ** 2 / 4.0)
    l_dtau = n * pt * (pa - pb) / 2.0
    l_tau = float(np.sum(c.ties - n * pt))
    l_tautau = float(np.sum(-n * pt * (1.0 - pt)))
    return ll, l_d, l_dd, l_dtau, l_tau, l_tautau


def _rao_kupper_terms(d, c: PairCounts, tau):
    """Rao-Kupper (1967) with theta = 1 + exp(tau) >= 1 and t = log theta.

    P(first) = sigma(d - t), P(second) = sigma(-d - t),
    P(tie) = (theta^2 - 1) pi_f pi_s / ((pi_f + theta pi_s)(pi_s + theta pi_f)).
    """
    t = np.logaddexp(0.0, tau)  # log(1 + e^tau)
    dt, dtt = expit(tau), expit(tau) * expit(-tau)
    s1 = expit(d - t) * expit(t - d)
    s2 = expit(d + t) * expit(-d - t)
    log_theta2_minus_1 = tau + np.logaddexp(math.log(2.0), tau)  # log((1 + e^tau)^2 - 1)
    log_tie = log_theta2_minus_1 + d - np.logaddexp(d, t) - np.logaddexp(0.0, t + d)
    w1, wt, w2 = c.wins_first, c.ties, c.wins_second
    ll = float(np.sum(w1 * _log_sigmoid(d - t) + w2 * _log_sigmoid(-d - t) + wt * log_tie))
    inv = 2.0 / -np.expm1(-2.0 * t)  # d/dt log(e^{2t} - 1)
    tie_d = 1.0 - expit(d - t) - expit(t + d)
    tie_t = inv - expit(t - d) - expit(t + d)
    l_d = w1 * expit(t - d) - w2 * expit(d + t) + wt * tie_d
    l_t = -w1 * expit(t - d) - w2 * expit(d + t) + wt * tie_t
    l_dd = -w1 * s1 - w2 * s2 + wt * (-s1 - s2)
    l_dt = w1 * s1 - w2 * s2 + wt * (s1 - s2)
    second = -4.0 * math.exp(-2.0 * t) / (-math.expm1(-2.0 * t)) ** 2
    l_tt = -w1 * s1 - w2 * s2 + wt * (second - s1 - s2)
    l_tau = float(np.sum(l_t)) * dt
    l_tautau = float(np.sum(l_tt)) * dt ** 2 + float(np.sum(l_t)) * dtt
    return ll, l_d, l_dd, l_dt * dt, l_tau, l_tautau


_TERMS = {"bradley-terry": _bt_terms, "thurstone": _thurstone_terms, "davidson": _davidson_terms,
          "rao-kupper": _rao_kupper_terms}


# ------------------------------------------------------------------------------------ the objective
def _extra_columns(c: PairCounts, use_home: bool):
    columns = []
    if use_home:
        columns.append(c.home[:, None])
    if c.features is not None:
        columns.append(c.features)
    return np.hstack(columns) if columns else np.zeros((len(c.first), 0))


def _pairwise_objective(model, c: PairCounts, extras, has_tau, prior):
    """Build ``objective(x, order)`` for :func:`rankalign.stats._newton.maximise` (order 0: value,
    1: value and gradient, 2: value, gradient and Hessian).

    x = [theta (n items), extra coefficients (home, covariate weights), tau (tie parameter, if any)].
    """
    n, k = c.n_items, extras.shape[1]
    terms = _TERMS[model]
    first, second = c.first, c.second
    dense = n <= _newton.DENSE_LIMIT
    if not dense:
        # the sparsity pattern of the Laplacian never changes: build the CSR structure once, then each
        # Hessian is one bincount into its data array
        diagonal = np.arange(n)
        keys = np.concatenate([diagonal * (n + 1), first * n + second, second * n + first])
        pattern, slot = np.unique(keys, return_inverse=True)
        slot_diag, slot_fs, slot_sf = slot[:n], slot[n:n + len(first)], slot[n + len(first):]
        indptr = np.searchsorted(pattern // n, np.arange(n + 1)).astype(np.int64)
        indices = (pattern % n).astype(np.int64)
        del keys, slot

    def objective(x, order):
        theta = x[:n]
        beta = x[n:n + k]
        tau = x[n + k] if has_tau else 0.0
        d = theta[first] - theta[second] + extras @ beta
        ll, l_d, l_dd, l_dtau, l_tau, l_tautau = terms(d, c, tau)
        value = ll - prior * float(theta @ theta)
        if order == 0:
            return value, None, None
        grad_theta = np.bincount(first, l_d, n) - np.bincount(second, l_d, n) - 2.0 * prior * theta
        gradient = [grad_theta, extras.T @ l_d]
        if has_tau:
            gradient.append([l_tau])
        gradient = np.concatenate(gradient)
        if order == 1:
            return value, gradient, None
        # Hessian blocks: theta-theta (graph Laplacian weighted by l_dd), then the few "side" columns
        if dense:
            h_tt = (np.bincount(first * n + first, l_dd, n * n) + np.bincount(second * n + second, l_dd, n * n)
                    - np.bincount(first * n + second, l_dd, n * n) - np.bincount(second * n + first, l_dd, n * n))
            h_tt = h_tt.reshape(n, n)
            h_tt[np.diag_indices(n)] -= 2.0 * prior
        else:
            diag = np.bincount(first, l_dd, n) + np.bincount(second, l_dd, n) - 2.0 * prior
            data = (np.bincount(slot_diag, diag, len(indices)) - np.bincount(slot_fs, l_dd, len(indices))
                    - np.bincount(slot_sf, l_dd, len(indices)))
            h_tt = sparse.csr_matrix((data, indices, indptr), shape=(n, n))
        side_cols = [np.bincount(first, l_dd * extras[:, j], n) - np.bincount(second, l_dd * extras[:, j], n)
                     for j in range(k)]
        block = extras.T @ (l_dd[:, None] * extras)
        if has_tau:
            side_cols.append(np.bincount(first, l_dtau, n) - np.bincount(second, l_dtau, n))
            cross = extras.T @ l_dtau
            block = np.block([[block, cross[:, None]], [cross[None, :], np.array([[l_tautau]])]])
        if not side_cols:
            return value, gradient, h_tt
        side = np.stack(side_cols, axis=1)
        if dense:
            hessian = np.block([[h_tt, side], [side.T, block]])
        else:
            hessian = sparse.bmat([[h_tt, sparse.csr_matrix(side)],
                                   [sparse.csr_matrix(side.T), sparse.csr_matrix(block)]], format="csr")
        return value, gradient, hessian

    return objective


def _initial_tau(model, c: PairCounts):
    share = float(c.ties.sum() / c.total.sum())
    if share <= 0.0:
        raise DataError(f"the {model} model needs ties to estimate its tie parameter, and the data has none; "
                         "use --model bt")
    share = min(share, 0.99)
    if model == "davidson":  # at d = 0, P(tie) = nu / (2 + nu)
        return math.log(2.0 * share / (1.0 - share))
    return math.log(2.0 * share / (1.0 - share))  # Rao-Kupper at d = 0: P(tie) = (theta-1)/(theta+1)


def fit_pairwise(model, counts: PairCounts, *, items=None, home=False, prior=0.0, reference=None,
                 ci_level=0.95, check=True, start=None, compute_se=True) -> RatingResult:
    """Fit one of :data:`MODELS` to deduplicated counts. The ``fit_*`` functions call this."""
    if model not in _TERMS:
        raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
    check_penalties(prior)
    n = counts.n_items
    items = [str(i) for i in range(n)] if items is None else [str(i) for i in items]
    if len(items) != n:
        raise ValueError(f"{len(items)} item names for {n} items")
    if n < 2:
        raise DataError(f"need at least two items to rate, got {n}")
    _newton.check_items(items)
    _newton.check_ci_level(ci_level)
    ref_index = _newton.reference_index(reference, items)
    if check and prior == 0:
        check_pair_counts_identifiable(counts, items)
    extras = _extra_columns(counts, home)
    has_tau = model in ("davidson", "rao-kupper")
    n_params = n + extras.shape[1] + int(has_tau)
    x0 = np.zeros(n_params) if start is None else np.array(start, dtype=np.float64)
    if start is None and has_tau:
        x0[-1] = _initial_tau(model, counts)
    free = None if prior > 0 else np.arange(1, n_params)
    objective = _pairwise_objective(model, counts, extras, has_tau, prior)
    x, _, _, hessian, iterations = _newton.maximise(objective, x0, free)
    if check:
        _newton.require_identified(x, hessian, free, *_parameter_names(model, items, home, counts))
    ll = objective(np.concatenate([x[:n], x[n:]]), 0)[0] + prior * float(x[:n] @ x[:n])
    return _package(model, x, hessian, free, counts, items, ref_index, ll, prior, ci_level, home,
                    iterations, compute_se)


def _parameter_names(model, items, home, counts):
    """Names of the fitted parameters in order (items, home effect, covariate weights, tie parameter),
    and why each extra one is typically not identified."""
    names = [f"the rating of {item!r}" for item in items]
    hints = {}
    if home:
        hints[len(names)] = "the first-listed item always wins, or always loses"
        names.append("the home advantage (order effect)")
    if counts.features is not None:
        names.extend(f"covariate weight {k + 1}" for k in range(counts.features.shape[1]))
    if model == "davidson":
        hints[len(names)] = "every comparison is a tie" if counts.ties.sum() >= counts.total.sum() else \
            "too few ties or too few decisive results"
        names.append("nu, the Davidson tie parameter")
    elif model == "rao-kupper":
        hints[len(names)] = "every comparison is a tie" if counts.ties.sum() >= counts.total.sum() else \
            "too few ties or too few decisive results"
        names.append("theta, the Rao-Kupper tie parameter")
    return names, hints


def _package(model, x, hessian, free, counts, items, ref_index, ll, prior, ci_level, home, iterations,
             compute_se):
    n = counts.n_items
    n_params = len(x)
    estimate = _newton.apply_gauge(x, n, ref_index)
    z = ndtri(0.5 + ci_level / 2.0)
    cov_items = None
    if compute_se and n <= _newton.DENSE_LIMIT:
        cov = _newton.covariance(hessian, free, n_params)
        a = _newton.gauge_matrix(n, n_params, ref_index)
        cov = a @ cov @ a.T
        variances = np.maximum(np.diag(cov), 0.0)
        cov_items = cov[:n, :n]
    else:
        variances = np.full(n_params, np.nan)
    se = np.sqrt(variances)
    params = {}
    k = 0
    if home:
        params["home"], params["home_se"] = float(estimate[n]), float(se[n])
        k = 1
    if counts.features is not None:
        q = counts.features.shape[1]
        params["weights"], params["weights_se"] = estimate[n + k:n + k + q], se[n + k:n + k + q]
    if model == "davidson":
        log_nu, log_nu_se = float(estimate[-1]), float(se[-1])
        # BradleyTerry2's GenDavidson parameterises the same model by tie.max = log(nu / 2): the tie
        # probability of two equal items is plogis(tie.max) = nu / (2 + nu)
        params.update(nu=math.exp(log_nu), log_nu=log_nu, log_nu_se=log_nu_se,
                      tie_max=log_nu - math.log(2.0), tie_max_se=log_nu_se)
    elif model == "rao-kupper":
        tau, tau_se = float(estimate[-1]), float(se[-1])
        params.update(theta=1.0 + math.exp(tau), theta_se=math.exp(tau) * tau_se)
    ratings = estimate[:n]
    return RatingResult(
        items=list(items), ratings=ratings, se=se[:n], ci_low=ratings - z * se[:n], ci_high=ratings + z * se[:n],
        n=np.rint(counts.comparisons_per_item()).astype(np.int64), log_likelihood=float(ll), model=model,
        scale="probit" if model == "thurstone" else "logit",
        reference=None if ref_index is None else items[ref_index], prior=float(prior), ci_level=ci_level,
        ci_method="wald", params=params, covariance=cov_items, iterations=iterations,
        state={"x": x, "free": free, "counts": counts, "home": home, "ref_index": ref_index})


def _fit(model, first, second, outcome, count, n_items, items, home, features, prior, reference, ci_level):
    if items is not None and n_items is None:
        n_items = len(items)
    counts = pair_counts(first, second, outcome, count, n_items=n_items,
                         home=None if home is None else home, features=features)
    return fit_pairwise(model, counts, items=items, home=home is not None, prior=prior, reference=reference,
                        ci_level=ci_level)


def fit_bradley_terry(first, second, outcome, count=None, *, n_items=None, items=None, home=None,
                      features=None, prior=0.0, reference=None, ci_level=0.95) -> RatingResult:
    """Bradley-Terry (1952) ratings by maximum likelihood (or MAP).

    Model: P(first beats second) = sigma(d) = 1 / (1 + exp(-d)) with
    d = theta_first - theta_second + h * home + w^T x, where ``home`` (optional, 0/1 per comparison)
    marks that ``first`` had the order/home advantage (BradleyTerry2's ``BTm(..., ~ team + at.home)``
    form) and ``features`` (optional, [m, q]) are covariate differences x_first - x_second for the
    contextual "style control" model used by Chatbot Arena. A tie counts as half a win for each side.

    Parameters
    ----------
    first, second : int arrays [m]
        Item indices of each comparison.
    outcome : float array [m]
        1.0 ``first`` wins, 0.5 tie, 0.0 ``second`` wins.
    count : float array [m], optional
        Multiplicity of each row.
    n_items, items : optional
        Number of items / their names (index order).
    home, features : optional
        Order effect indicator and covariate differences (see above).
    prior : float
        alpha >= 0 of the penalty ``alpha * sum theta^2`` (0: exact MLE). See the module docstring.
    reference : str or int, optional
        Item fixed at 0 (default: mean-zero ratings).
    ci_level : float
        Level of the Wald intervals.

    Returns
    -------
    RatingResult
        ``params`` holds ``home`` and ``weights`` (with ``*_se``) when they were fitted.
    """
    return _fit("bradley-terry", first, second, outcome, count, n_items, items, home, features, prior,
                reference, ci_level)


def fit_thurstone(first, second, outcome, count=None, *, n_items=None, items=None, home=None,
                  features=None, prior=0.0, reference=None, ci_level=0.95) -> RatingResult:
    """Thurstone-Mosteller (Case V) ratings: P(first beats second) = Phi(d), Phi the standard normal CDF.

    Case V with the *difference* of the two latent utilities having unit variance, so
    d = theta_first - theta_second (+ h home + w^T x) is on the probit scale (each utility has variance
    1/2). Ties count as half a win for each side. Everything else is as in :func:`fit_bradley_terry`.
    """
    return _fit("thurstone", first, second, outcome, count, n_items, items, home, features, prior,
                reference, ci_level)


def fit_davidson(first, second, outcome, count=None, *, n_items=None, items=None, home=None,
                 features=None, prior=0.0, reference=None, ci_level=0.95) -> RatingResult:
    """Davidson (1970) model for paired comparisons with ties.

    With pi = exp(theta) (and pi_first multiplied by exp(h) at home),
    P(first wins) = pi_f / (pi_f + pi_s + nu sqrt(pi_f pi_s)),
    P(tie) = nu sqrt(pi_f pi_s) / (pi_f + pi_s + nu sqrt(pi_f pi_s)).
    nu > 0 is estimated on the log scale (``params["log_nu"]`` with its standard error); nu is the
    tie-to-win ratio between equal items (P(tie)/P(win) = nu when d = 0). This is BradleyTerry2's
    ``GenDavidson`` with ``tie.mode``/``tie.scale`` left out, ``home.adv`` = h, and its ``tie.max``
    = log(nu / 2) (reported as ``params["tie_max"]``: plogis(tie.max) is the tie probability of two
    equal items). Other arguments as in :func:`fit_bradley_terry`.
    """
    return _fit("davidson", first, second, outcome, count, n_items, items, home, features, prior,
                reference, ci_level)


def fit_rao_kupper(first, second, outcome, count=None, *, n_items=None, items=None, home=None,
                   features=None, prior=0.0, reference=None, ci_level=0.95) -> RatingResult:
    """Rao & Kupper (1967) model for paired comparisons with ties.

    P(first wins) = pi_f / (pi_f + theta pi_s), P(second wins) = pi_s / (pi_s + theta pi_f),
    P(tie) = (theta^2 - 1) pi_f pi_s / ((pi_f + theta pi_s)(pi_s + theta pi_f)), with theta >= 1
    estimated (parameterised as theta = 1 + exp(tau); ``params["theta"]``, delta-method ``theta_se``).
    Other arguments as in :func:`fit_bradley_terry`.
    """
    return _fit("rao-kupper", first, second, outcome, count, n_items, items, home, features, prior,
                reference, ci_level)
