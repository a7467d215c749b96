"""Annotator-aware reward models on fixed response features: whose preference is it?

A single Bradley–Terry reward averages annotators who disagree; where two groups want opposite things it
learns neither. The models here give each annotator ``u`` their own reward ``r_u(x)`` of a response's
feature vector ``x`` (``[D]``), sharing structure across annotators so each needs few labels:

* ``"shared"`` -- one linear reward ``r(x) = w^T x`` for everyone (the baseline).
* ``"mixture"`` -- M prototype linear rewards and per-annotator mixture weights,
  ``r_u(x) = sum_m softmax(a_u)_m w_m^T x``: annotators are soft members of a few preference types (a
  mixture of prototype *reward functions*, the structure of PAL-B in Chen et al. 2024, "PAL: Pluralistic
  Alignment Framework for Learning from Heterogeneous Preferences", where the user's point is a convex
  combination of K prompt-conditioned prototype maps; here, linear prototypes on fixed features).
* ``"pal"`` -- PAL-A, the ideal-point model as published (Chen et al. 2024, model A): K shared prototypes
  ``p_k`` in a learned preference space, each user's ideal point a convex combination of them,
  ``a_u = sum_k w_uk p_k`` with ``w_u = softmax(logits_u)`` on the simplex, the response mapped by a
  learned projection ``f`` (linear, or a one-hidden-layer MLP), and ``r_u(x) = -||f(x) - a_u||^2``. A new
  user is fitted from a few comparisons by optimising only their K weight logits
  (:func:`adapt_annotator`), the prototypes and ``f`` fixed.
* ``"ideal_point"`` -- a free ideal point per annotator in a learned embedding, ``r_u(x) = -||A x - p_u||^2``
  (the classical ideal-point model of spatial voting, Coombs 1950; PAL-A without the prototype
  constraint, so a new user has ``d`` free coordinates instead of K - 1 weights).
* ``"user_latent"`` -- a latent vector per annotator that conditions a small reward network,
  ``r_u(x) = MLP([x, z_u])`` with a standard normal prior on ``z_u`` (MAP: an L2 penalty). VPL (Poddar et
  al. 2024, "Personalizing Reinforcement Learning from Human Feedback with Variational Preference
  Learning") infers ``z_u`` with an amortised variational encoder over the user's labelled pairs; here the
  latent is a free per-user parameter fitted with the network (the same model, MAP instead of variational
  inference), and :func:`adapt_annotator` fits a new user's latent from their few labels with the network
  fixed, which is what VPL's encoder amortises.

Every model's per-annotator parameters form one table (a row per annotator). An annotator not seen in
training (or None) gets the *population mean*: the mean of the training annotators' rows of that table
(mean mixture weights, mean ideal point, mean latent; rows added later by :func:`adapt_annotator` leave it
unchanged). The loss is a registered reward objective (``bt_reward`` by default, or
``pl_reward`` for lists) on the rewards ``[B, K]``, weighted by the records' weights.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .. import losses
from ..data import RankedList, annotator_id
from ..data.errors import DataError
from ..errors import UsageError

__all__ = ["PERSONAL_MODELS", "PersonalRewardModel", "fit_personal_reward", "adapt_annotator", "pair_outcomes",
           "save_personal_reward", "load_personal_reward",
           "SharedLinearReward", "MixtureReward", "PALIdealPointReward", "IdealPointReward", "UserLatentReward"]

PERSONAL_MODELS = ("shared", "mixture", "pal", "ideal_point", "user_latent")


# ---------------------------------------------------------------------------------------------- modules
class SharedLinearReward(nn.Module):
    """``r(x) = w^T x`` for every annotator (no per-annotator table)."""

    def __init__(self, feature_dim: int, num_annotators: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(feature_dim, dtype=torch.float64) * 0.01)
        self.user_table = nn.Parameter(torch.zeros(max(num_annotators, 1), 0, dtype=torch.float64),
                                       requires_grad=False)

    def forward(self, features: Tensor, users: Tensor, user_table: Tensor | None = None) -> Tensor:
        return features @ self.weight

    def penalty(self) -> Tensor:
        return self.weight.new_zeros(())


def _user_rows(table: Tensor, users: Tensor, population: int) -> Tensor:
    """Row ``users[i]`` of the per-annotator table; where ``users[i] == -1`` (unseen), the mean of its first
    ``population`` rows (the annotators seen in training: rows added by :func:`adapt_annotator` do not move it)."""
    mean = table[:population].mean(0, keepdim=True)
    rows = table.index_select(0, users.clamp_min(0))
    return torch.where((users < 0).unsqueeze(-1), mean.expand_as(rows), rows)


class MixtureReward(nn.Module):
    """Mixture of prototype rewards: ``r_u(x) = sum_m softmax(a_u)_m w_m^T x`` (M linear prototypes; PAL-B's structure).

    The per-annotator table holds the logits ``a_u``; an unseen annotator gets the mean *weights*
    ``mean_u softmax(a_u)`` (the population's mixture), not the softmax of the mean logits.
    """

    def __init__(self, feature_dim: int, num_annotators: int, num_prototypes: int = 2):
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, feature_dim, dtype=torch.float64))
        self.user_table = nn.Parameter(torch.randn(num_annotators, num_prototypes, dtype=torch.float64) * 0.1)
        self.population = num_annotators  # the training annotators' rows (the unseen get their mean)

    def mixture_weights(self, users: Tensor, user_table: Tensor | None = None) -> Tensor:
        table = self.user_table if user_table is None else user_table
        return _user_rows(torch.softmax(table, dim=-1), users, self.population)

    def forward(self, features: Tensor, users: Tensor, user_table: Tensor | None = None) -> Tensor:
        per_prototype = features @ self.prototypes.T                    # [..., M]
        weights = self.mixture_weights(users.reshape(-1), user_table).reshape(*users.shape, -1)
        return (per_prototype * weights).sum(-1)

    def penalty(self) -> Tensor:
        return self.prototypes.new_zeros(())


class PALIdealPointReward(nn.Module):
    """PAL-A (Chen et al. 2024): ``r_u(x) = -||f(x) - sum_k softmax(l_u)_k p_k||^2``.

    ``prototypes`` ``[K, d]`` are shared, the per-annotator table holds the weight logits ``l_u`` ``[K]``,
    and ``f`` maps a response's features ``[D]`` into the preference space ``[d]`` (linear, or
    ``W2 tanh(W1 x)`` when ``hidden_size > 0``). An unseen annotator gets the population's mean weights.
    """

    def __init__(self, feature_dim: int, num_annotators: int, num_prototypes: int = 2, embedding_dim: int = 8,
                 hidden_size: int = 0):
        super().__init__()
        if hidden_size > 0:
            self.projection = nn.Sequential(nn.Linear(feature_dim, hidden_size), nn.Tanh(),
                                            nn.Linear(hidden_size, embedding_dim)).to(torch.float64)
        else:
            self.projection = nn.Linear(feature_dim, embedding_dim, bias=False).to(torch.float64)
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, embedding_dim, dtype=torch.float64))
        self.user_table = nn.Parameter(torch.randn(num_annotators, num_prototypes, dtype=torch.float64) * 0.1)
        self.population = num_annotators  # the training annotators' rows (the unseen get their mean)

    def ideal_points(self, users: Tensor, user_table: Tensor | None = None) -> Tensor:
        """``a_u = w_u @ P`` for each user (the mean weights for -1)."""
        table = self.user_table if user_table is None else user_table
        return _user_rows(torch.softmax(table, dim=-1), users, self.population) @ self.prototypes

    def forward(self, features: Tensor, users: Tensor, user_table: Tensor | None = None) -> Tensor:
        embedded = self.projection(features)                            # [..., d]
        ideal = self.ideal_points(users.reshape(-1), user_table).reshape(*users.shape, -1)
        return -((embedded - ideal) ** 2).sum(-1)

    def penalty(self) -> Tensor:
        return self.prototypes.new_zeros(())


class IdealPointReward(nn.Module):
    """``r_u(x) = -||A x - p_u||^2``: distance to the annotator's ideal point in a learned embedding."""

    def __init__(self, feature_dim: int, num_annotators: int, embedding_dim: int = 2):
        super().__init__()
        self.projection = nn.Parameter(torch.randn(embedding_dim, feature_dim, dtype=torch.float64)
                                       / math.sqrt(feature_dim))
        self.user_table = nn.Parameter(torch.randn(num_annotators, embedding_dim, dtype=torch.float64) * 0.1)
        self.population = num_annotators  # the training annotators' rows (the unseen get their mean)

    def forward(self, features: Tensor, users: Tensor, user_table: Tensor | None = None) -> Tensor:
        table = self.user_table if user_table is None else user_table
        embedded = features @ self.projection.T                         # [..., d]
        ideal = _user_rows(table, users.reshape(-1), self.population).reshape(*users.shape, -1)
        return -((embedded - ideal) ** 2).sum(-1)

    def penalty(self) -> Tensor:
        return self.projection.new_zeros(())


class UserLatentReward(nn.Module):
    """VPL-style: ``r_u(x) = MLP([x, z_u])`` with a per-annotator latent ``z_u`` (prior N(0, I))."""

    def __init__(self, feature_dim: int, num_annotators: int, latent_dim: int = 2, hidden_size: int = 16):
        super().__init__()
        self.user_table = nn.Parameter(torch.randn(num_annotators, latent_dim, dtype=torch.float64) * 0.1)
        self.population = num_annotators  # the training annotators' rows (the unseen get their mean)
        self.network = nn.Sequential(nn.Linear(feature_dim + latent_dim, hidden_size), nn.Tanh(),
                                     nn.Linear(hidden_size, 1)).to(torch.float64)

    def forward(self, features: Tensor, users: Tensor, user_table: Tensor | None = None) -> Tensor:
        table = self.user_table if user_table is None else user_table
        latent = _user_rows(table, users.reshape(-1), self.population).reshape(*users.shape, -1)
        return self.network(torch.cat([features, latent], dim=-1)).squeeze(-1)

    def penalty(self) -> Tensor:
        # negative log of the standard normal prior, summed over annotators (up to a constant)
        return 0.5 * (self.user_table ** 2).sum()


#: The size settings (``**sizes``) each model takes, with the least value each may have.
MODEL_SIZES = {
    "shared": {},
    "mixture": {"num_prototypes": 1},
    "pal": {"num_prototypes": 1, "embedding_dim": 1, "hidden_size": 0},
    "ideal_point": {"embedding_dim": 1},
    "user_latent": {"latent_dim": 1, "hidden_size": 1},
}


def check_count(value, name: str, least: int = 1) -> int:
    """A whole number >= ``least`` (not a bool, not 2.0), or a :class:`~rankalign.errors.UsageError` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise UsageError(f"{name} must be a whole number >= {least}, got {value!r}")
    return int(value)


def check_real(value, name: str, *, positive: bool = False) -> float:
    """A finite number > 0 (``positive``) or >= 0, or a :class:`~rankalign.errors.UsageError` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise UsageError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}")
    return float(value)


def _check_sizes(model, sizes: Mapping) -> None:
    """``model`` is known and ``sizes`` holds only its own settings, each in range (a misspelt or another
    model's setting would otherwise be ignored without a word)."""
    import difflib

    if not isinstance(model, str) or model not in PERSONAL_MODELS:
        raise UsageError(f"unknown personal model {model!r}; choose one of {', '.join(PERSONAL_MODELS)}")
    allowed = MODEL_SIZES[model]
    for name, value in sizes.items():
        if name not in allowed:
            close = difflib.get_close_matches(name, [n for sizes_ in MODEL_SIZES.values() for n in sizes_], n=1)
            guess = f"; did you mean {close[0]!r}?" if close and close[0] in allowed else ""
            raise UsageError(f"model {model!r} takes no setting {name!r}{guess}",
                             hint=f"its settings: {', '.join(allowed) or 'none'}")
        check_count(value, name, allowed[name])


def _build_module(kind: str, feature_dim: int, num_annotators: int, settings: Mapping) -> nn.Module:
    if kind == "shared":
        return SharedLinearReward(feature_dim, num_annotators)
    if kind == "mixture":
        return MixtureReward(feature_dim, num_annotators, int(settings.get("num_prototypes", 2)))
    if kind == "pal":
        return PALIdealPointReward(feature_dim, num_annotators, int(settings.get("num_prototypes", 2)),
                                   int(settings.get("embedding_dim", 8)), int(settings.get("hidden_size", 0)))
    if kind == "ideal_point":
        return IdealPointReward(feature_dim, num_annotators, int(settings.get("embedding_dim", 2)))
    if kind == "user_latent":
        return UserLatentReward(feature_dim, num_annotators, int(settings.get("latent_dim", 2)),
                                int(settings.get("hidden_size", 16)))
    raise ValueError(f"unknown personal model {kind!r}; choose one of {', '.join(PERSONAL_MODELS)}")


# ---------------------------------------------------------------------------------------------- data
FeatureSource = Mapping[str, Sequence[float]] | Callable


def _feature(features: FeatureSource, prompt, candidate, index: int, i: int) -> np.ndarray:
    if not isinstance(features, Mapping) and not callable(features):
        raise TypeError("features must be a mapping candidate -> vector or a callable (prompt, candidate) -> "
                        f"vector, got {type(features).__name__}")
    if callable(features) and not isinstance(features, Mapping):
        value = features(prompt, candidate)
    else:
        key = candidate if isinstance(candidate, str) else tuple((m["role"], m["content"]) for m in candidate)
        if key not in features:
            raise DataError(f"no feature vector for candidate {str(key)[:60]!r}", line=index,
                            field=f"candidates[{i}]", reason="missing_feature")
        value = features[key]
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"a feature vector must hold numbers, got {str(value)[:60]}", line=index,
                        field=f"candidates[{i}]", reason="bad_feature") from None
    if array.ndim != 1 or array.size == 0 or not np.all(np.isfinite(array)):
        raise DataError(f"a feature vector must be a finite, non-empty 1-D array, got shape {array.shape}", line=index,
                        field=f"candidates[{i}]", reason="bad_feature")
    return array


@dataclass
class _Tensors:
    features: Tensor   # [B, K, D] float64 (0 at padding)
    ranks: Tensor      # [B, K] long (-1 padding)
    users: Tensor      # [B] long (-1 unseen / None)
    weights: Tensor    # [B] float64


def _as_records(records: Iterable) -> list[RankedList]:
    out = []
    for index, record in enumerate(records):
        if isinstance(record, Mapping):
            try:
                record = RankedList.from_dict(record)
            except DataError as error:
                raise error.at(line=index) from None
        if not isinstance(record, RankedList):
            raise TypeError(f"record {index}: expected a RankedList, got {type(record).__name__}")
        out.append(record)
    return out


def _tensors(records: Sequence[RankedList], features: FeatureSource, annotator_index: Mapping[str, int]) -> _Tensors:
    rows, dim = [], None
    for index, record in enumerate(records):
        keep = [i for i, r in enumerate(record.ranks) if r is not None]
        dense = record.dense_ranks()
        vectors = [_feature(features, record.prompt, record.candidates[i], index, i) for i in keep]
        for i, vector in zip(keep, vectors):
            if dim is None:
                dim = vector.shape[0]
            elif vector.shape[0] != dim:
                raise DataError(f"feature vector of length {vector.shape[0]}, expected {dim}", line=index,
                                field=f"candidates[{i}]", reason="bad_feature")
        rows.append((vectors, [dense[i] for i in keep]))
    if dim is None:
        raise ValueError("no ranked candidate to build features from")
    max_k = max(len(r) for r, _ in rows)
    x = torch.zeros(len(rows), max_k, dim, dtype=torch.float64)
    ranks = torch.full((len(rows), max_k), -1, dtype=torch.long)
    for b, (vectors, dense) in enumerate(rows):
        if vectors:
            x[b, :len(vectors)] = torch.from_numpy(np.stack(vectors))
            ranks[b, :len(dense)] = torch.tensor(dense)
    users = torch.tensor([annotator_index.get(r.annotator, -1) if r.annotator is not None else -1
                          for r in records], dtype=torch.long)
    weights = torch.tensor([r.weight for r in records], dtype=torch.float64)
    return _Tensors(x, ranks, users, weights)


# ---------------------------------------------------------------------------------------------- model
@dataclass
class PersonalRewardModel:
    """A fitted annotator-aware reward model.

    Attributes
    ----------
    kind : str
        One of :data:`PERSONAL_MODELS`.
    module : torch.nn.Module
        ``module(features [..., D], users [...]) -> rewards [...]`` (float64).
    annotators : list of str
        Annotator ids seen in training; row i of the per-annotator table belongs to ``annotators[i]``.
    settings : dict
        The fitting settings (model sizes, objective, seed, ...).
    history : list of float
        Training loss per epoch.
    """

    kind: str
    module: nn.Module
    annotators: list[str]
    settings: dict = field(default_factory=dict)
    history: list[float] = field(default_factory=list)

    def annotator_index(self, annotator: str | None) -> int:
        """Row of ``annotator`` in the per-annotator table; -1 (population mean) if unseen or None.

        Ids are read as the records read them (``7``, ``7.0`` and ``"7"`` are one annotator, ``"7"``).
        """
        annotator = annotator_id(annotator)
        if annotator is None:
            return -1
        try:
            return self.annotators.index(annotator)
        except ValueError:
            return -1

    @property
    def feature_dim(self) -> int:
        """The length D of the feature vectors the model was fitted on."""
        return _feature_dim(self.module)

    def _check_dim(self, found: int, where: str) -> None:
        if found != self.feature_dim:
            raise DataError(f"feature vectors of length {found}; the model was fitted on length {self.feature_dim}",
                            field=where, reason="bad_feature")

    @torch.no_grad()
    def rewards(self, features, annotator: str | None = None) -> np.ndarray:
        """Rewards ``[N]`` of feature vectors ``[N, D]`` for one annotator (None/unseen: population mean)."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float64))
        if x.ndim == 0:
            raise DataError("expected feature vectors [N, D] (or one vector [D]), got a scalar", field="features",
                            reason="bad_feature")
        self._check_dim(x.shape[-1], "features")
        users = torch.full(x.shape[:-1], self.annotator_index(annotator), dtype=torch.long)
        return self.module(x, users).numpy()

    @torch.no_grad()
    def score_records(self, records: Iterable, features: FeatureSource) -> list[np.ndarray]:
        """Rewards of each record's ranked candidates for the record's annotator: one ``[K]`` array each."""
        records = _as_records(records)
        data = _tensors(records, features, {a: i for i, a in enumerate(self.annotators)})
        self._check_dim(data.features.shape[-1], "features")
        rewards = self.module(data.features, data.users.unsqueeze(1).expand_as(data.ranks))
        return [rewards[b, data.ranks[b] >= 0].numpy() for b in range(len(records))]


def _fit(module: nn.Module, data: _Tensors, parameters, *, objective, params, epochs, lr, batch_size, seed,
         penalty_weight) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    count = data.ranks.shape[0]
    size = count if batch_size is None else batch_size
    total_weight = data.weights.sum().clamp_min(1e-12)
    history = []
    for _ in range(epochs):
        order = torch.randperm(count, generator=generator)
        epoch_loss = 0.0
        for start in range(0, count, size):
            rows = order[start:start + size]
            users = data.users[rows].unsqueeze(1).expand(-1, data.ranks.shape[1])
            rewards = module(data.features[rows], users)
            per_list = objective(rewards, ranks=data.ranks[rows], **params)
            weights = data.weights[rows]
            # the prior is spread over the batches so that one epoch adds it once
            loss = (per_list * weights).sum() / total_weight + penalty_weight * module.penalty() * (
                weights.sum() / total_weight) / count
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += float(loss.detach())
        history.append(epoch_loss)
    return history


def fit_personal_reward(records: Iterable, features: FeatureSource, *, model: str = "mixture",
                        objective: str = "bt_reward", epochs: int = 300, lr: float = 0.05,
                        batch_size: int | None = None, seed: int = 0, prior_weight: float = 1.0,
                        objective_params: Mapping | None = None, **sizes) -> PersonalRewardModel:
    """Fit an annotator-aware reward model on ranked lists with ``annotator`` ids.

    Parameters
    ----------
    records : iterable of RankedList (or mappings)
        Pairs or lists; ``annotator`` None counts as the population (it uses the mean row).
    features : mapping candidate -> vector, or callable ``(prompt, candidate) -> vector``
        Fixed response features ``[D]`` (embeddings, attribute scores, ...). Chat-message candidates are
        looked up by ``tuple((role, content), ...)``. A missing one raises a DataError naming the record
        (line) and field.
    model : {"shared", "mixture", "ideal_point", "user_latent"}
        See the module docstring.
    objective : str
        A registered reward objective on ``[B, K]`` rewards (``"bt_reward"``, ``"pl_reward"``, ...).
    epochs, lr, batch_size : Adam over shuffled mini-batches (None: full batch).
    seed : int
        Seeds the initial parameters and the shuffling: the same seed gives the same model.
    prior_weight : float
        Weight of the user-latent model's N(0, I) prior (the MAP penalty), added once per epoch.
    **sizes
        ``num_prototypes`` (mixture and pal, default 2), ``embedding_dim`` (ideal point 2, pal 8),
        ``hidden_size`` (pal's projection, 0 = linear), ``latent_dim`` and ``hidden_size`` (user latent, 2 and 16).

    Returns
    -------
    PersonalRewardModel
    """
    _check_sizes(model, sizes)
    _check_training(epochs=epochs, lr=lr, seed=seed)
    if batch_size is not None:
        check_count(batch_size, "batch_size")
    check_real(prior_weight, "prior_weight")
    fn = losses.get(objective)
    if fn.family != "reward":
        raise ValueError(f"{objective!r} is a {fn.family} objective, not a reward objective")
    records = _as_records(records)
    if not records:
        raise ValueError("no records to fit")
    annotators = sorted({r.annotator for r in records if r.annotator is not None})
    data = _tensors(records, features, {a: i for i, a in enumerate(annotators)})
    if not annotators and model != "shared":  # no row for the per-annotator table: nothing to personalise
        raise DataError(f"model {model!r} learns per-annotator parameters, but no record has an annotator",
                        field="annotator", reason="missing_field",
                        hint="give the records annotator ids, or fit model='shared'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = _build_module(model, data.features.shape[-1], len(annotators), sizes)
        history = _fit(module, data, [p for p in module.parameters() if p.requires_grad], objective=fn,
                       params=dict(objective_params or {}), epochs=epochs, lr=lr, batch_size=batch_size,
                       seed=seed, penalty_weight=prior_weight)
    settings = dict(sizes, model=model, objective=objective, epochs=epochs, lr=lr, batch_size=batch_size,
                    seed=seed, prior_weight=prior_weight)
    return PersonalRewardModel(kind=model, module=module.eval(), annotators=list(annotators), settings=settings,
                               history=history)


def _check_training(*, epochs, lr, seed) -> None:
    check_count(epochs, "epochs")
    check_real(lr, "lr", positive=True)
    check_count(seed, "seed", 0)


def adapt_annotator(model: PersonalRewardModel, annotator: str, records: Iterable, features: FeatureSource, *,
                    epochs: int = 200, lr: float = 0.05, seed: int = 0) -> PersonalRewardModel:
    """Add (or refit) one annotator's row from their own records, everything else fixed.

    The new row starts at the population mean (the mean row) and is fitted by maximum a posteriori with
    the model's prior (user latent) or by maximum likelihood (mixture and PAL weight logits, ideal point):
    for ``"pal"`` this is PAL's few-shot step, only the user's K simplex weights move. This is the
    few-shot step that VPL's encoder amortises. Returns a new model; ``model`` is not changed. A new
    annotator's row leaves the population mean that unseen annotators get as it was (the mean of the
    training annotators' rows).
    """
    import copy

    if not isinstance(model, PersonalRewardModel):
        raise TypeError(f"model must be a PersonalRewardModel (from fit_personal_reward), got {type(model).__name__}")
    if model.kind == "shared":
        raise ValueError("the shared model has no per-annotator parameters to adapt")
    # None (or a blank id) would be stored as the annotator "None"
    if annotator_id(annotator) is None:
        raise UsageError(f"annotator must be an annotator id (a non-empty string or an integer), got {annotator!r}")
    annotator = annotator_id(annotator)
    _check_training(epochs=epochs, lr=lr, seed=seed)
    records = [RankedList(prompt=r.prompt, candidates=r.candidates, ranks=r.ranks, scores=r.scores,
                          annotator=str(annotator), weight=r.weight, meta=r.meta) for r in _as_records(records)]
    module = copy.deepcopy(model.module)
    annotators = list(model.annotators)
    table = module.user_table.detach().clone()
    if str(annotator) in annotators:
        row = annotators.index(str(annotator))
    else:
        annotators.append(str(annotator))
        row = len(annotators) - 1
        table = torch.cat([table, table[:module.population].mean(0, keepdim=True)])
    new_row = nn.Parameter(table[row].clone())
    prior = model.kind == "user_latent"

    class OneRow(nn.Module):
        """The fitted module with every row fixed but the adapted one."""

        def forward(self, features, users):
            full = torch.cat([table[:row], new_row.unsqueeze(0), table[row + 1:]])
            return module(features, users, full)

        def penalty(self):
            return 0.5 * (new_row ** 2).sum() if prior else new_row.new_zeros(())

    data = _tensors(records, features, {a: i for i, a in enumerate(annotators)})
    model._check_dim(data.features.shape[-1], "features")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        history = _fit(OneRow(), data, [new_row], objective=losses.get(model.settings.get("objective", "bt_reward")),
                       params={}, epochs=epochs, lr=lr, batch_size=None, seed=seed,
                       penalty_weight=float(model.settings.get("prior_weight", 1.0)))
    table[row] = new_row.detach()
    module.user_table = nn.Parameter(table)
    return PersonalRewardModel(kind=model.kind, module=module.eval(), annotators=annotators,
                               settings=dict(model.settings), history=history)


def pair_outcomes(model: PersonalRewardModel, records: Iterable, features: FeatureSource, *,
                  ties: str = "strict") -> tuple[np.ndarray, list]:
    """Per ordered pair: 1.0 if the annotator's better-ranked candidate has the higher reward, else 0.0.

    Returns ``(correct [P], annotators [P])`` -- ready for ``rankalign.eval.group_metrics(correct, groups)``.
    ``ties="strict"`` counts equal rewards as wrong, ``"half"`` as 0.5. Tied and unranked pairs are skipped.
    """
    if ties not in ("strict", "half"):
        raise ValueError(f"ties must be 'strict' or 'half', got {ties!r}")
    records = _as_records(records)
    scores = model.score_records(records, features)
    correct, groups = [], []
    for record, values in zip(records, scores):
        dense = [r for r in record.dense_ranks() if r is not None]
        for i in range(len(dense)):
            for j in range(len(dense)):
                if dense[i] < dense[j]:
                    if values[i] > values[j]:
                        correct.append(1.0)
                    elif values[i] == values[j] and ties == "half":
                        correct.append(0.5)
                    else:
                        correct.append(0.0)
                    groups.append(record.annotator)
    return np.asarray(correct, dtype=np.float64), groups


# ---------------------------------------------------------------------------------------------- persistence
PERSONAL_CONFIG_NAME = "personal_config.json"
PERSONAL_WEIGHTS_NAME = "personal_model.safetensors"


def save_personal_reward(model: PersonalRewardModel, directory) -> None:
    """Save to ``directory``: ``personal_model.safetensors`` (parameters) and ``personal_config.json``
    (kind, feature size, annotator ids, the number of training annotators whose mean the unseen get,
    settings, history), each written atomically, the config last."""
    from pathlib import Path

    from safetensors.torch import save_file

    from .._atomic import atomic_write_json, atomic_write_path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.module.state_dict().items()}
    atomic_write_path(directory / PERSONAL_WEIGHTS_NAME, lambda temp: save_file(state, temp, metadata={"format": "pt"}))
    feature_dim = _feature_dim(model.module)
    config = {"format_version": 1, "kind": model.kind, "feature_dim": feature_dim,
              "annotators": list(model.annotators), "population": getattr(model.module, "population", None),
              "settings": model.settings, "history": model.history}
    atomic_write_json(directory / PERSONAL_CONFIG_NAME, config, sort_keys=True)


def load_personal_reward(directory) -> PersonalRewardModel:
    """Load a model written by :func:`save_personal_reward` (safetensors; nothing is unpickled)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / PERSONAL_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no personal model config")
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    if config.get("format_version") != 1:
        raise ValueError(f"{path}: unsupported format_version {config.get('format_version')!r}")
    annotators = [str(a) for a in config["annotators"]]
    settings = dict(config.get("settings") or {})
    module = _build_module(config["kind"], int(config["feature_dim"]), len(annotators), settings)
    state = load_file(directory / PERSONAL_WEIGHTS_NAME)
    if "user_table" in state:  # adapt_annotator may have grown the table
        module.user_table = nn.Parameter(torch.zeros_like(state["user_table"]),
                                         requires_grad=module.user_table.requires_grad)
    module.load_state_dict(state)
    if config.get("population") is not None:  # older saves: every row is the population
        module.population = int(config["population"])
    return PersonalRewardModel(kind=config["kind"], module=module.eval(), annotators=annotators,
                               settings=settings, history=list(config.get("history") or []))


def _feature_dim(module: nn.Module) -> int:
    if isinstance(module, SharedLinearReward):
        return module.weight.shape[0]
    if isinstance(module, MixtureReward):
        return module.prototypes.shape[1]
    if isinstance(module, IdealPointReward):
        return module.projection.shape[1]
    if isinstance(module, PALIdealPointReward):
        first = module.projection[0] if isinstance(module.projection, nn.Sequential) else module.projection
        return first.in_features
    return module.network[0].in_features - module.user_table.shape[1]
