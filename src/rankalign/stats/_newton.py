"""Damped Newton maximisation and gauge-aware covariance, shared by every rating model.

The objectives here are concave (or nearly so) log-likelihoods with an analytic gradient and Hessian.
The Hessian is a dense array while it is small and a ``scipy.sparse`` matrix otherwise; sparse systems
are solved by preconditioned conjugate gradients, so no dense n x n matrix is ever built for many items.
"""

from __future__ import annotations

import contextlib

import numpy as np
import scipy.linalg
from scipy import sparse
from scipy.sparse import linalg as sparse_linalg

# items up to this count get a dense Hessian (and exact standard errors); above it, sparse + CG
DENSE_LIMIT = 2500


def single_thread_blas():
    """Context manager limiting BLAS to one thread (threadpoolctl, when installed).

    The linear systems here are small (hundreds of unknowns) and solved many times; multithreaded
    BLAS makes each solve slower, and much slower on a busy machine.
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # optional: scikit-learn and most scientific stacks bring it
            _CONTROLLER = False
        else:
            _CONTROLLER = ThreadpoolController()  # scanning the loaded libraries is slow: once only
    if _CONTROLLER is False:
        return contextlib.nullcontext()
    return _CONTROLLER.limit(limits=1, user_api="blas")


_CONTROLLER = None


def _solve(neg_hessian, gradient):
    """Solve ``(-H) step = g`` for the Newton step; damped when -H is not positive definite."""
    if sparse.issparse(neg_hessian):
        diagonal = neg_hessian.diagonal()
        diagonal = np.where(diagonal > 0, diagonal, 1.0)
        preconditioner = sparse_linalg.LinearOperator(neg_hessian.shape, matvec=lambda v: v / diagonal)
        step, info = sparse_linalg.cg(neg_hessian, gradient, rtol=1e-12, atol=0.0, M=preconditioner,
                                      maxiter=2000)
        return step
    try:
        factor = scipy.linalg.cho_factor(neg_hessian, check_finite=False)
        return scipy.linalg.cho_solve(factor, gradient, check_finite=False)
    except np.linalg.LinAlgError:
        scale = max(float(np.abs(np.diag(neg_hessian)).max()), 1.0)
        damping = 1e-8 * scale
        eye = np.eye(len(gradient))
        while True:
            try:
                factor = scipy.linalg.cho_factor(neg_hessian + damping * eye, check_finite=False)
                return scipy.linalg.cho_solve(factor, gradient, check_finite=False)
            except np.linalg.LinAlgError:
                damping *= 10.0


def _restrict(hessian, free):
    if free is None:
        return hessian
    contiguous = len(free) and free[-1] - free[0] + 1 == len(free) and np.all(np.diff(free) == 1)
    if sparse.issparse(hessian):
        hessian = hessian.tocsr()
        if contiguous:  # slicing a CSR matrix is linear; fancy column indexing sorts
            return hessian[free[0]:free[-1] + 1, free[0]:free[-1] + 1]
        return hessian[free][:, free]
    if contiguous:
        return hessian[free[0]:free[-1] + 1, free[0]:free[-1] + 1]
    return hessian[np.ix_(free, free)]


def maximise(objective, x0, free=None, *, tol=1e-20, max_iter=200):
    """Maximise ``objective`` by Newton's method with a backtracking line search.

    Parameters
    ----------
    objective : callable ``(x, order) -> (value, gradient, hessian)``
        ``order`` 0 needs the value only, 2 all three. The Hessian may be dense or sparse.
    x0 : array
        Start (a warm start makes bootstrap refits take two or three steps).
    free : int array, optional
        Coordinates that move; the others stay at their ``x0`` value (the reference-item gauge).
    tol : float
        Stop when the Newton decrement ``g^T (-H)^-1 g / 2`` (the remaining gain in log-likelihood near
        the optimum) falls below ``tol * max(1, |value|)``, or when it stops shrinking at rounding level.

    Returns
    -------
    x, value, gradient, hessian, iterations
    """
    with single_thread_blas():
        return _maximise(objective, x0, free, tol, max_iter)


def _maximise(objective, x0, free, tol, max_iter):
    x = np.array(x0, dtype=np.float64)
    value, gradient, hessian = objective(x, 2)
    iterations = 0
    previous = np.inf
    for iterations in range(1, max_iter + 1):
        g = gradient if free is None else gradient[free]
        neg_h = -_restrict(hessian, free)
        step = _solve(neg_h, g)
        decrement = float(g @ step) / 2.0
        if not np.isfinite(decrement):
            raise FloatingPointError("non-finite Newton step (the data may not identify the model)")
        scale = max(1.0, abs(value))
        if decrement < tol * scale:
            break
        if decrement < 1e-12 * scale and decrement > previous / 4.0:
            break  # no longer converging quadratically: the step is at rounding level
        previous = decrement
        if decrement < 0.5:
            # inside the region of quadratic convergence of a concave objective the full step is safe;
            # evaluating everything at once saves the separate line-search evaluation
            candidate = x.copy()
            if free is None:
                candidate += step
            else:
                candidate[free] += step
            new = objective(candidate, 2)
            if np.isfinite(new[0]) and new[0] >= value - 1e-12 * abs(value):
                x = candidate
                value, gradient, hessian = new
                continue
        t = 1.0
        while True:
            candidate = x.copy()
            if free is None:
                candidate += t * step
            else:
                candidate[free] += t * step
            new_value = objective(candidate, 0)[0]
            if np.isfinite(new_value) and new_value >= value - 1e-12 * abs(value):
                break
            t *= 0.5
            if t < 1e-12:
                return x, value, gradient, hessian, iterations
        x = candidate
        value, gradient, hessian = objective(x, 2)
    return x, value, gradient, hessian, iterations


def covariance(hessian, free, n_params):
    """Inverse observed information ``(-H)^-1`` on the ``free`` coordinates, zero elsewhere (dense)."""
    free = np.arange(n_params) if free is None else np.asarray(free)
    neg_h = -_restrict(hessian, free)
    if sparse.issparse(neg_h):
        neg_h = neg_h.toarray()
    try:
        factor = scipy.linalg.cho_factor(neg_h, check_finite=False)
        cov_free = scipy.linalg.cho_solve(factor, np.eye(len(free)), check_finite=False)
    except np.linalg.LinAlgError:
        cov_free = scipy.linalg.pinvh(neg_h)
    full = np.zeros((n_params, n_params))
    full[np.ix_(free, free)] = cov_free
    return full


def check_ci_level(ci_level) -> None:
    """A :class:`~rankalign.errors.UsageError` unless ``ci_level`` is a number strictly between 0 and 1."""
    from rankalign.errors import UsageError

    if isinstance(ci_level, bool) or not isinstance(ci_level, (int, float, np.integer, np.floating)) \
            or not 0.0 < ci_level < 1.0:
        raise UsageError(f"ci_level must be a number strictly between 0 and 1 (e.g. 0.95), got {ci_level!r}")


def check_items(items) -> None:
    """A :class:`~rankalign.errors.UsageError` when two items share a name (their ratings could not be told
    apart by name)."""
    from rankalign.errors import UsageError

    seen = set()
    for item in items:
        if item in seen:
            raise UsageError(f"the item name {item!r} appears twice in items")
        seen.add(item)


def reference_index(reference, items) -> int | None:
    """The index of the gauge's reference item: None (mean-zero gauge), an index, or an item name.

    The one resolution every fit uses; an unknown name is a :class:`rankalign.errors.UsageError` listing
    (some of) the items.
    """
    if reference is None:
        return None
    from rankalign.errors import UsageError

    if isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
        if not 0 <= int(reference) < len(items):
            raise UsageError(f"reference index {int(reference)} is out of range for {len(items)} items")
        return int(reference)
    if str(reference) in items:
        return items.index(str(reference))
    raise UsageError(f"reference item {reference!r} is not among the items ({', '.join(map(str, items[:10]))}"
                     + (", ..." if len(items) > 10 else "") + ")")


def gauge_matrix(n_items, n_params, reference=None):
    """Linear map from fitted parameters to reported ones under a gauge.

    ``reference`` None: mean-zero ratings, ``theta - mean(theta)``; an index r: ``theta - theta_r``.
    Parameters after the first ``n_items`` (order effect, covariate weights, tie parameter) are
    unchanged. Covariances transform as ``A C A^T``: for the mean-zero gauge this is the projection of
    the covariance onto the sum-zero subspace.
    """
    a = np.eye(n_params)
    if reference is None:
        a[:n_items, :n_items] -= 1.0 / n_items
    else:
        a[:n_items, reference] -= 1.0
    return a


def apply_gauge(theta, n_items, reference=None):
    """Shift the first ``n_items`` entries of ``theta`` (any leading batch axes) into the gauge."""
    theta = np.array(theta, dtype=np.float64)
    items = theta[..., :n_items]
    shift = items.mean(axis=-1, keepdims=True) if reference is None else items[..., reference:reference + 1]
    theta[..., :n_items] = items - shift
    return theta


# an estimate this far out (logits, or probits) means P = 1 - 1e-15: no finite data set puts a maximum-
# likelihood estimate there, so Newton has walked off towards infinity (separation); and a standard
# error above MAX_SE is information near zero in that direction (near-singular information)
DIVERGED = 35.0
MAX_SE = 1e3
RUNAWAY = 5.0


def unidentified(x, hessian, free, n_params) -> list[tuple[int, float, float]]:
    """Parameters the data do not identify: ``[(index, estimate, standard error), ...]``.

    A parameter is not identified when its estimate has run off (``|x| > DIVERGED``: the likelihood
    keeps rising towards infinity, i.e. separation, Albert & Anderson 1984) or when its standard error
    from the observed information exceeds ``MAX_SE`` (the information is near singular in its
    direction). The covariance is computed only for dense problems (``n_params <= DENSE_LIMIT``).
    """
    free = np.arange(n_params) if free is None else np.asarray(free)
    x = np.asarray(x, dtype=np.float64)
    se = np.full(n_params, np.nan)
    if n_params <= DENSE_LIMIT:
        with np.errstate(invalid="ignore"):
            se = np.sqrt(np.abs(np.diag(covariance(hessian, free, n_params))))
    indices = free.tolist()
    if n_params <= DENSE_LIMIT:
        null = _null_directions(hessian, free)
        if null:
            return [(indices[k], float(x[indices[k]]), float("inf")) for k in null]
    # a diverged parameter makes the information singular for the others too: name the cause only
    diverged = [(i, float(x[i]), float(se[i])) for i in indices if not np.isfinite(x[i]) or abs(x[i]) > DIVERGED]
    if diverged:
        return diverged
    flagged = [(i, float(x[i]), float(se[i])) for i in indices
               if (np.isfinite(se[i]) and se[i] > MAX_SE) or (n_params <= DENSE_LIMIT and not np.isfinite(se[i]))]
    # a parameter on its way to infinity (Newton stops once the gain is at rounding level, often near 30)
    # flattens the likelihood for the rest too: name the ones that ran far out, not the collateral
    farthest = max((abs(value) for _, value, _ in flagged), default=0.0)
    if farthest >= RUNAWAY:
        flagged = [entry for entry in flagged if abs(entry[1]) >= farthest / 2]
    return flagged


def _null_directions(hessian, free) -> list[int]:
    """Positions (within ``free``) of the parameters in the null space of a singular information matrix
    (Cholesky fails, e.g. two identical covariates): those loading >= 0.3 on an eigenvector whose
    eigenvalue is below 1e-10 of the largest."""
    neg_h = -_restrict(hessian, free)
    if sparse.issparse(neg_h):
        neg_h = neg_h.toarray()
    try:
        scipy.linalg.cho_factor(neg_h, check_finite=False)
        return []
    except (np.linalg.LinAlgError, ValueError):
        pass
    if not np.all(np.isfinite(neg_h)):
        return list(range(len(neg_h)))
    values, vectors = np.linalg.eigh(neg_h)
    small = values < 1e-10 * max(1.0, float(values.max()))
    if not small.any():
        return []
    loading = np.abs(vectors[:, small]).max(axis=1)
    return np.flatnonzero(loading >= 0.3).tolist()


def require_identified(x, hessian, free, names, hints=None):
    """Raise :class:`~rankalign.data.errors.DataError` (reason ``not_identified``) naming every parameter
    :func:`unidentified` finds; ``names[i]`` is parameter i's name, ``hints[i]`` an optional reason."""
    from rankalign.data.errors import DataError

    bad = unidentified(x, hessian, free, len(names))
    if not bad:
        return
    hints = hints or {}
    parts = []
    for index, value, se in bad[:5]:
        why = f" ({hints[index]})" if index in hints else ""
        parts.append(f"{names[index]}{why}: estimate {value:.4g}, standard error {se:.3g}")
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise DataError("the data do not identify " + "; ".join(parts) + more
                    + " (separation or near-singular information: no finite maximum-likelihood estimate)",
                    reason="not_identified",
                    hint="add comparisons that break the pattern or drop that parameter (--prior ALPHA "
                         "regularises the item ratings only)")
