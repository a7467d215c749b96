"""VPL: a user's few labelled comparisons -> a latent ``z`` (amortised, variational) -> a personal reward.

Variational Preference Learning (Poddar et al. 2024, "Personalizing Reinforcement Learning from Human
Feedback with Variational Preference Learning"): an encoder reads a set of a user's labelled pairs
(the *context*) and returns a Gaussian posterior ``q(z | context) = N(mu, diag(sigma^2))``; a reward
network ``r(x, z)`` conditioned on ``z`` scores responses. Training maximises the evidence lower bound per
user,

    ELBO = E_{z ~ q(z | C)} [ sum_{(w, l) in T} log sigma(r(x_w, z) - r(x_l, z)) ] - beta KL(q(z | C) || N(0, I)),

with ``z = mu + sigma * eps`` (the reparameterisation trick, one sample per step), ``C`` a random subset of
the user's pairs and ``T`` the user's pairs (the context's own pairs included, as in VPL). The KL term
is closed-form for two Gaussians. An unseen user is served without any gradient step: ``z = mu(C)`` of
whatever pairs they have given, and ``z = 0`` (the prior mean) when they have given none.

The pair encoder is permutation-invariant: each context pair ``(x_w, x_l)`` is embedded by an MLP on
``[x_w, x_l]`` and the embeddings are averaged over the set. Features are fixed vectors per response
(embeddings from a frozen reward-model backbone, :func:`rankalign.personal.backbone_features`, or any
other feature source of :func:`rankalign.personal.fit_personal_reward`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.functional import logsigmoid

from ..data.errors import DataError
from ..errors import UsageError
from .models import PERSONAL_MODELS, FeatureSource, _as_records, _feature, check_count, check_real


class PairSetEncoder(nn.Module):
    """``q(z | C)``: mean of ``MLP([x_w, x_l])`` over the context pairs -> ``(mu, log_var)``."""

    def __init__(self, feature_dim: int, latent_dim: int, hidden_size: int):
        super().__init__()
        self.pair = nn.Sequential(nn.Linear(2 * feature_dim, hidden_size), nn.Tanh(),
                                  nn.Linear(hidden_size, hidden_size), nn.Tanh()).to(torch.float64)
        self.mean = nn.Linear(hidden_size, latent_dim).to(torch.float64)
        self.log_var = nn.Linear(hidden_size, latent_dim).to(torch.float64)

    def forward(self, winners: Tensor, losers: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``winners``/``losers`` ``[B, C, D]``, ``mask`` ``[B, C]`` (1 = a real pair) -> ``[B, z]`` twice.

        A user with no context pair gets the prior, ``mu = 0`` and ``log_var = 0``.
        """
        embedded = self.pair(torch.cat([winners, losers], dim=-1))
        count = mask.sum(-1, keepdim=True)
        pooled = (embedded * mask.unsqueeze(-1)).sum(1) / count.clamp_min(1.0)
        has = (count > 0).to(pooled.dtype)
        return self.mean(pooled) * has, self.log_var(pooled).clamp(-12.0, 6.0) * has


class LatentConditionedReward(nn.Module):
    """``r(x, z) = MLP([x, z])``."""

    def __init__(self, feature_dim: int, latent_dim: int, hidden_size: int):
        super().__init__()
        self.network = nn.Sequential(nn.Linear(feature_dim + latent_dim, hidden_size), nn.Tanh(),
                                     nn.Linear(hidden_size, 1)).to(torch.float64)

    def forward(self, features: Tensor, latent: Tensor) -> Tensor:
        latent = latent.unsqueeze(-2).expand(*features.shape[:-1], latent.shape[-1])
        return self.network(torch.cat([features, latent], dim=-1)).squeeze(-1)


def gaussian_kl_to_standard(mean: Tensor, log_var: Tensor) -> Tensor:
    """``KL(N(mu, diag(exp(log_var))) || N(0, I)) = 1/2 sum(exp(log_var) + mu^2 - 1 - log_var)`` per row."""
    return 0.5 * (log_var.exp() + mean ** 2 - 1.0 - log_var).sum(-1)


def _user_pairs(records, features: FeatureSource) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """annotator -> (winner features [n, D], loser features [n, D]) of every strictly ordered pair."""
    out: dict[str, tuple[list, list]] = {}
    dim = None
    for index, record in enumerate(records):
        if record.annotator is None:
            continue
        keep = [i for i, r in enumerate(record.ranks) if r is not None]
        vectors = {i: _feature(features, record.prompt, record.candidates[i], index, i) for i in keep}
        for i, vector in vectors.items():  # one length for all, as fit_personal_reward checks
            dim = len(vector) if dim is None else dim
            if len(vector) != dim:
                raise DataError(f"feature vector of length {len(vector)}, expected {dim}", line=index,
                                field=f"candidates[{i}]", reason="bad_feature")
        for i in keep:
            for j in keep:
                if record.ranks[i] < record.ranks[j]:
                    winners, losers = out.setdefault(record.annotator, ([], []))
                    winners.append(vectors[i]), losers.append(vectors[j])
    return {a: (np.stack(w), np.stack(v)) for a, (w, v) in out.items()}


@dataclass
class VPLRewardModel:
    """A fitted VPL model: ``encoder`` (pairs -> q(z)) and ``reward`` (r(x, z)); both float64."""

    encoder: PairSetEncoder
    reward: LatentConditionedReward
    settings: dict = field(default_factory=dict)
    history: list[float] = field(default_factory=list)

    def _check(self, found: int, expected: int, what: str, field: str) -> None:
        if found != expected:
            raise DataError(f"{what} of length {found}; the model was fitted on length {expected}", field=field,
                            reason="bad_feature")

    @torch.no_grad()
    def latent(self, context: Iterable, features: FeatureSource) -> np.ndarray:
        """Posterior mean ``mu(C)`` of a user's context records (the prior mean 0 for none)."""
        records = _as_records(context)
        pairs = _user_pairs([r for r in records if r.annotator is not None]
                            + [_with_annotator(r) for r in records if r.annotator is None], features)
        latent_dim = self.encoder.mean.out_features
        if not pairs:
            return np.zeros(latent_dim)
        winners = np.concatenate([w for w, _ in pairs.values()])
        losers = np.concatenate([v for _, v in pairs.values()])
        self._check(winners.shape[1], self.encoder.pair[0].in_features // 2, "feature vectors", "features")
        mean, _ = self.encoder(torch.as_tensor(winners)[None], torch.as_tensor(losers)[None],
                               torch.ones(1, len(winners), dtype=torch.float64))
        return mean[0].numpy()

    @torch.no_grad()
    def rewards(self, features, latent) -> np.ndarray:
        """Rewards ``[N]`` of feature vectors ``[N, D]`` for a user with latent ``z``."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float64))
        z = torch.as_tensor(np.asarray(latent, dtype=np.float64))
        if x.ndim == 0 or z.ndim != 1:
            raise DataError(f"expected feature vectors [N, D] and one latent [z], got shapes {tuple(x.shape)} and "
                            f"{tuple(z.shape)}", field="features" if x.ndim == 0 else "latent", reason="bad_feature")
        self._check(x.shape[-1], self.encoder.pair[0].in_features // 2, "feature vectors", "features")
        self._check(z.shape[0], self.encoder.mean.out_features, "the latent", "latent")
        return self.reward(x, z).numpy()


def _with_annotator(record):
    from dataclasses import replace

    return replace(record, annotator="__context__")


def fit_vpl_reward(records: Iterable, features: FeatureSource, *, latent_dim: int = 4, hidden_size: int = 64,
                   context_size: int = 8, kl_weight: float = 1.0, steps: int = 1500, users_per_step: int = 32,
                   lr: float = 3e-3, seed: int = 0) -> VPLRewardModel:
    """Train a VPL encoder and latent-conditioned reward by maximising the ELBO (module docstring).

    Parameters
    ----------
    records : RankedList records with ``annotator`` ids (pairs or lists; every strictly ordered pair counts).
    features : mapping or callable, as for :func:`rankalign.personal.fit_personal_reward`.
    context_size : int
        Each step draws, per user, a context of 1..context_size of their pairs (uniform size), so the encoder
        learns to read contexts of every size up to it.
    kl_weight : float
        beta of the ELBO (1 is the true ELBO).
    steps, users_per_step, lr : Adam on mini-batches of users.
    seed : int
        Seeds the initial weights and the sampling.
    """
    for name, value in (("latent_dim", latent_dim), ("hidden_size", hidden_size), ("context_size", context_size),
                        ("steps", steps), ("users_per_step", users_per_step)):
        check_count(value, name)
    check_count(seed, "seed", 0)
    check_real(kl_weight, "kl_weight")
    check_real(lr, "lr", positive=True)
    records = _as_records(records)
    pairs = _user_pairs(records, features)
    if not pairs:
        raise ValueError("no annotated, strictly ordered pair to fit")
    users = sorted(pairs)
    feature_dim = next(iter(pairs.values()))[0].shape[1]
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = PairSetEncoder(feature_dim, latent_dim, hidden_size)
        reward = LatentConditionedReward(feature_dim, latent_dim, hidden_size)
        optimiser = torch.optim.Adam([*encoder.parameters(), *reward.parameters()], lr=lr)
        max_pairs = max(len(w) for w, _ in pairs.values())
        history = []
        for _ in range(steps):
            batch = rng.choice(len(users), size=min(users_per_step, len(users)), replace=False)
            ctx_w = np.zeros((len(batch), context_size, feature_dim))
            ctx_l = np.zeros_like(ctx_w)
            ctx_mask = np.zeros((len(batch), context_size))
            tgt_w = np.zeros((len(batch), max_pairs, feature_dim))
            tgt_l = np.zeros_like(tgt_w)
            tgt_mask = np.zeros((len(batch), max_pairs))
            for b, u in enumerate(batch):
                winners, losers = pairs[users[u]]
                n = len(winners)
                size = int(rng.integers(1, min(context_size, n) + 1))
                chosen = rng.choice(n, size=size, replace=False)
                ctx_w[b, :size], ctx_l[b, :size], ctx_mask[b, :size] = winners[chosen], losers[chosen], 1.0
                tgt_w[b, :n], tgt_l[b, :n], tgt_mask[b, :n] = winners, losers, 1.0
            mean, log_var = encoder(torch.as_tensor(ctx_w), torch.as_tensor(ctx_l), torch.as_tensor(ctx_mask))
            z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
            margin = reward(torch.as_tensor(tgt_w), z) - reward(torch.as_tensor(tgt_l), z)
            mask = torch.as_tensor(tgt_mask)
            log_likelihood = (logsigmoid(margin) * mask).sum(-1)
            elbo = log_likelihood - kl_weight * gaussian_kl_to_standard(mean, log_var)
            # per-user ELBO divided by the user's pairs, so every user counts alike in the step
            loss = -(elbo / mask.sum(-1).clamp_min(1.0)).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            history.append(float(loss.detach()))
    settings = dict(latent_dim=latent_dim, hidden_size=hidden_size, context_size=context_size, kl_weight=kl_weight,
                    steps=steps, users_per_step=users_per_step, lr=lr, seed=seed)
    return VPLRewardModel(encoder=encoder.eval(), reward=reward.eval(), settings=settings, history=history)


# ------------------------------------------------------------------------------------------- few-shot
def few_shot_curve(train_records: Sequence, test_records: Sequence, features: FeatureSource, *,
                   shots: Sequence[int] = (0, 1, 2, 4, 8, 16), models: Sequence[str] = ("shared", "pal", "vpl"),
                   pool_size: int | None = None, seed: int = 0, fit_settings: dict | None = None,
                   adapt_epochs: int = 150) -> dict:
    """Accuracy on unseen annotators against the number of their own labelled pairs the model may use.

    Each unseen annotator's records (in file order) are split into a *support pool* (the first
    ``pool_size = max(shots)`` records) and *queries* (the strictly ordered pairs of the rest). For ``k``
    shots the model sees the first ``k`` support records (``k`` pairs when the records are pairs; every
    strictly ordered pair of a longer list): ``"shared"`` ignores them (one Bradley-Terry reward), ``"pal"``
    fits only the user's K simplex weights (:func:`rankalign.personal.adapt_annotator`; 0 shots: the
    population's mean weights), ``"vpl"`` encodes them into ``z`` (0 shots: the prior mean). Accuracy = the
    share of query pairs whose preferred response gets the higher reward, averaged over unseen annotators.

    Returns ``{"shots": [...], model: [accuracy per shot], model + "_se": [standard error over annotators]}``.
    """
    from .models import adapt_annotator, fit_personal_reward

    shots = list(shots)
    if not shots:
        raise UsageError("shots is empty; give the numbers of examples to evaluate, e.g. (0, 1, 2, 4)")
    for k in shots:
        check_count(k, "each of shots", 0)
    for name in models:
        if name != "vpl" and name not in PERSONAL_MODELS:
            raise UsageError(f"unknown model {name!r} in models; choose from {', '.join((*PERSONAL_MODELS, 'vpl'))}")
    settings = dict(fit_settings or {})
    pool_size = max(shots) if pool_size is None else pool_size
    check_count(pool_size, "pool_size", max(shots))
    test_records = _as_records(test_records)
    by_user: dict[str, list] = {}
    for index, record in enumerate(test_records):
        if record.annotator is None:
            raise DataError("a test record needs an annotator (the curve is per unseen annotator)", line=index,
                            field="annotator", reason="missing_field")
        by_user.setdefault(record.annotator, []).append(record)
    for user, user_records in sorted(by_user.items()):
        if user not in _user_pairs(user_records[pool_size:], features):
            raise DataError(f"test annotator {user!r} has no strictly ordered pair left to score after the first "
                            f"{pool_size} records (the support pool, pool_size)", field="annotator",
                            reason="no_queries", hint="give each test annotator more records than pool_size")
    fitted = {}
    for name in models:
        if name == "vpl":
            fitted[name] = fit_vpl_reward(train_records, features, seed=seed, **settings.get("vpl", {}))
        else:
            fitted[name] = fit_personal_reward(train_records, features, model=name, seed=seed,
                                               **settings.get(name, {"epochs": 300}))
    out: dict = {"shots": list(shots)}
    for name in models:
        per_shot = []
        for k in shots:
            accuracies = []
            for user, user_records in sorted(by_user.items()):
                support, queries = user_records[:pool_size], user_records[pool_size:]
                context = support[:k]
                winners, losers = _user_pairs(queries, features)[user]
                if name == "vpl":
                    z = fitted[name].latent(context, features)
                    margin = fitted[name].rewards(winners, z) - fitted[name].rewards(losers, z)
                else:
                    model = fitted[name]
                    if name != "shared" and k > 0:
                        model = adapt_annotator(model, user, context, features, epochs=adapt_epochs, seed=seed)
                    who = user if (name != "shared" and k > 0) else None
                    margin = model.rewards(winners, who) - model.rewards(losers, who)
                accuracies.append(float(np.mean(margin > 0)))
            per_shot.append(accuracies)
        out[name] = [float(np.mean(a)) for a in per_shot]
        out[name + "_se"] = [float(np.std(a, ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
                             for a in per_shot]
    return out


__all__ = ["PairSetEncoder", "LatentConditionedReward", "gaussian_kl_to_standard", "VPLRewardModel",
           "fit_vpl_reward", "few_shot_curve"]
