"""Policies for several groups at once: MaxMin (egalitarian) and weighted utilitarian aggregation.

Given one reward per annotator group (from :func:`rankalign.stats.annotators.fit_annotator_mixture`, or a
personal reward model), a single policy must serve them all. With ``R_g(pi)`` group g's expected reward
*gain over the reference policy*, ``R_g(pi) = E_{x, y ~ pi}[r_g(x, y)] - E_{x, y ~ pi_ref}[r_g(x, y)]``
(rewards fitted from comparisons are identified only up to a shift per prompt, and the gain removes it):

* MaxMin-RLHF (Chakraborty et al. 2024, "MaxMin-RLHF: Alignment with Diverse Human Preferences"):
  ``max_pi min_g R_g(pi) - beta KL(pi || pi_ref)``, the egalitarian rule: the worst-served group's gain.
* Weighted utilitarian: ``max_pi sum_g lambda_g R_g(pi) - beta KL(pi || pi_ref)`` for fixed weights
  (e.g. the group proportions; a pooled reward is close to this with lambda = proportions).

MaxMin is solved through its dual. For weights ``lambda`` on the simplex the utilitarian problem's value
``D(lambda) = max_pi sum_g lambda_g R_g(pi) - beta KL`` is convex in lambda (a maximum of linear functions),
and ``min_g R_g - beta KL`` = ``min_{lambda in simplex} sum_g lambda_g R_g - beta KL``, so
``max_pi min_g = min_lambda D(lambda)`` whenever the achievable (gains, KL) set is convex -- always for a
fully expressive policy, where ``pi_lambda = pi_ref exp(sum_g lambda_g r_g / beta) / Z`` (Rafailov et al.
2023, eq. 4). ``grad D(lambda) = R(pi_lambda)`` (Danskin), so lambda is found by exponentiated-gradient
(mirror) descent on the simplex; the MaxMin policy is ``pi_{lambda*}``. The text world has no closed form:
:func:`train_group_policy` runs the stochastic version, MaxMin-RLHF's loop, with policy-gradient steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .tabular import TabularWorld, kl_regularised_optimum, policy_log_probs


# ------------------------------------------------------------------------------------------- tabular world
def group_gains(log_probs: np.ndarray, ref_log_probs: np.ndarray, group_rewards: np.ndarray) -> np.ndarray:
    """``R_g = mean_x [E_pi r_g - E_ref r_g]`` for ``group_rewards`` ``[G, P, N]``; returns ``[G]``."""
    difference = np.exp(log_probs) - np.exp(ref_log_probs)
    return np.einsum("pn,gpn->g", difference, np.asarray(group_rewards, dtype=np.float64)) / log_probs.shape[0]


def kl_table(log_probs: np.ndarray, ref_log_probs: np.ndarray) -> float:
    from .tabular import kl_divergence

    return kl_divergence(log_probs, ref_log_probs)


def _utilitarian_tabular(world, group_rewards, weights, beta, fully_expressive, start=None):
    combined = np.tensordot(weights, group_rewards, axes=1)                 # [P, N]
    ref = policy_log_probs(world)
    if fully_expressive:
        return kl_regularised_optimum(ref, combined, beta), None
    theta = _expected_reward_policy(world, combined, beta, start)
    return policy_log_probs(world, theta), theta


def _expected_reward_policy(world, rewards, beta, start=None):
    """``argmax_theta E_pi[r] - beta KL(pi_theta || pi_ref)`` over the log-linear policy (L-BFGS, exact)."""
    import torch

    features = torch.as_tensor(world.features)
    reward = torch.as_tensor(rewards)
    ref = torch.log_softmax(features @ torch.as_tensor(world.reference_theta), dim=-1)
    theta = torch.tensor(world.reference_theta if start is None else start, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([theta], lr=1.0, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14,
                                  history_size=50, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        log_pi = torch.log_softmax(features @ theta, dim=-1)
        pi = log_pi.exp()
        loss = -((pi * reward).sum(-1) - beta * (pi * (log_pi - ref)).sum(-1)).mean()
        loss.backward()
        return loss

    optimiser.step(closure)
    return theta.detach().numpy().copy()


def _is_one_hot(world: TabularWorld) -> bool:
    return bool(world.meta.get("one_hot")) or (
        world.dim == world.num_prompts * world.num_candidates
        and np.array_equal(world.features.reshape(-1, world.dim), np.eye(world.dim)))


@dataclass
class GroupPolicy:
    """A policy for several groups: its ``(P, N)`` log-probs, the group weights it optimises, each group's
    gain over the reference, and the KL to the reference."""

    log_probs: np.ndarray
    weights: np.ndarray
    gains: np.ndarray
    kl: float
    theta: np.ndarray | None = None
    rule: str = "maxmin"
    iterations: int = 0


def utilitarian_policy(world: TabularWorld, group_rewards, weights, *, beta: float = 0.5) -> GroupPolicy:
    """Weighted utilitarian policy: ``argmax_pi sum_g lambda_g R_g(pi) - beta KL`` (weights normalised)."""
    group_rewards = np.asarray(group_rewards, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (group_rewards.shape[0],) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"need {group_rewards.shape[0]} non-negative weights, got {weights}")
    weights = weights / weights.sum()
    log_probs, theta = _utilitarian_tabular(world, group_rewards, weights, beta, _is_one_hot(world))
    ref = policy_log_probs(world)
    return GroupPolicy(log_probs=log_probs, weights=weights, gains=group_gains(log_probs, ref, group_rewards),
                       kl=kl_table(log_probs, ref), theta=theta, rule="utilitarian")


def exponentiated_gradient_step(weights: np.ndarray, gains: np.ndarray, step: float) -> np.ndarray:
    """One mirror-descent step on the simplex towards the worst-served groups:
    ``lambda_g <- lambda_g exp(-step * gain_g) / Z`` (in log space; the gains are centred first, which leaves
    the result unchanged and keeps the exponent small)."""
    gains = np.asarray(gains, dtype=np.float64)
    logits = np.log(np.maximum(weights, 1e-300)) - step * (gains - gains.mean())
    out = np.exp(logits - logits.max())
    return out / out.sum()


def maxmin_policy(world: TabularWorld, group_rewards, *, beta: float = 0.5, iterations: int = 300,
                  step: float = 2.0, tol: float = 1e-7) -> GroupPolicy:
    """MaxMin policy ``argmax_pi min_g R_g(pi) - beta KL(pi || pi_ref)`` in the tabular world (module docstring).

    Exponentiated-gradient descent on the dual weights: ``lambda_g <- lambda_g exp(-eta_t R_g(pi_lambda))``,
    normalised, ``eta_t = step / sqrt(t)``; the iterate with the smallest dual value is kept (the dual value
    is ``sum_g lambda_g R_g - beta KL`` at ``pi_lambda``). Fully expressive (one-hot) worlds use the closed-form
    ``pi_lambda``; feature worlds fit the log-linear policy for each lambda (warm-started L-BFGS).
    """
    group_rewards = np.asarray(group_rewards, dtype=np.float64)
    n_groups = group_rewards.shape[0]
    ref = policy_log_probs(world)
    expressive = _is_one_hot(world)
    weights = np.full(n_groups, 1.0 / n_groups)
    best = None
    theta = None
    t = 0
    for t in range(1, iterations + 1):
        log_probs, theta = _utilitarian_tabular(world, group_rewards, weights, beta, expressive, theta)
        gains = group_gains(log_probs, ref, group_rewards)
        kl = kl_table(log_probs, ref)
        dual = float(weights @ gains) - beta * kl
        if best is None or dual < best[0] - 1e-15:
            best = (dual, weights.copy(), log_probs, gains, kl, theta)
        if gains.max() - gains.min() < tol:
            break
        weights = exponentiated_gradient_step(weights, gains, step / np.sqrt(t))
    _, weights, log_probs, gains, kl, theta = best
    return GroupPolicy(log_probs=log_probs, weights=weights, gains=gains, kl=kl, theta=theta, rule="maxmin",
                       iterations=t)


def item_level_records(records) -> list:
    """Tabular records (prompt ``"x{p}"``, candidates ``"y{j}"``) with item ids ``"x{p}/y{j}"`` and no prompt,
    so the item-level rating models (:mod:`rankalign.stats.annotators`) can fit them."""
    from dataclasses import replace

    return [replace(r, prompt=None, candidates=[f"{r.prompt}/{c}" for c in r.candidates]) for r in records]


def reward_tables(world: TabularWorld, results) -> np.ndarray:
    """``[G, P, N]`` reward tables from item ratings (:class:`~rankalign.stats.RatingResult` per group) whose
    items are ``"x{p}/y{j}"``; candidates never compared get 0 (the MAP prior's mean)."""
    tables = np.zeros((len(results), world.num_prompts, world.num_candidates))
    for g, result in enumerate(results):
        for item, rating in zip(result.items, result.ratings):
            prompt, candidate = item.split("/")
            tables[g, int(prompt[1:]), int(candidate[1:])] = rating
    return tables


# ------------------------------------------------------------------------------------------------ text world
def train_group_policy(model, tokenizer, prompts: Sequence[str], group_rewards: Sequence[Callable], *,
                       rule: str = "maxmin", weights: Sequence[float] | None = None, beta: float = 0.1,
                       steps: int = 100, prompts_per_step: int = 8, k: int = 4, lr: float = 1e-3,
                       max_new_tokens: int = 24, seed: int = 0, progress: Callable | None = None):
    """Fine-tune a causal LM policy for several groups by policy gradient (the MaxMin-RLHF loop).

    Each step samples ``k`` responses for ``prompts_per_step`` prompts from the current policy, scores them
    with every group's reward ``r_g(prompt, response)``, and takes one REINFORCE step with the leave-one-out
    baseline (RLOO, Ahmadian et al. 2024) on the KL-regularised reward ``r_lambda - beta (log pi - log pi_ref)``,
    where ``r_lambda = sum_g lambda_g r_g``:

    * ``rule="maxmin"``: lambda is one-hot on the group whose mean reward *gain over the reference samples*
      in this batch is lowest (MaxMin-RLHF, Chakraborty et al. 2024, Algorithm 1: optimise for the worst
      group at each iteration);
    * ``rule="utilitarian"``: fixed ``weights`` (normalised).

    The reference policy is a frozen copy of ``model`` at the start. Returns the trained policy (a new model)
    and the per-step history ``[{"step", "gains", "worst"}]``.
    """
    import copy

    import torch

    from .text_world import _encode, sample_responses

    if rule not in ("maxmin", "utilitarian"):
        raise ValueError(f"rule must be 'maxmin' or 'utilitarian', got {rule!r}")
    n_groups = len(group_rewards)
    fixed = None
    if rule == "utilitarian":
        fixed = np.full(n_groups, 1.0 / n_groups) if weights is None else np.asarray(weights, dtype=np.float64)
        fixed = fixed / fixed.sum()
    reference = copy.deepcopy(model).eval()
    policy = copy.deepcopy(model).train()
    optimiser = torch.optim.Adam(policy.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    history = []
    for step in range(steps):
        batch = [prompts[int(i)] for i in rng.choice(len(prompts), size=prompts_per_step, replace=True)]
        policy.eval()
        samples = sample_responses(policy, tokenizer, batch, k, seed=seed * 100_003 + step, distinct=False,
                                   max_new_tokens=max_new_tokens)
        baseline = sample_responses(reference, tokenizer, batch, k, seed=seed * 100_003 + step + 50_000,
                                    distinct=False, max_new_tokens=max_new_tokens)
        policy.train()
        rewards = np.array([[[r(p, y) for y in ys] for p, ys in zip(batch, samples)] for r in group_rewards])
        ref_rewards = np.array([[[r(p, y) for y in ys] for p, ys in zip(batch, baseline)] for r in group_rewards])
        gains = (rewards - ref_rewards).mean(axis=(1, 2))
        lam = fixed if fixed is not None else np.eye(n_groups)[int(np.argmin(gains))]
        combined = np.tensordot(lam, rewards, axes=1)                          # [B, k]
        rows, labels, owners = [], [], []
        for b, (prompt, ys) in enumerate(zip(batch, samples)):
            for j, y in enumerate(ys):
                prompt_ids, response_ids = _encode(tokenizer, prompt, y)
                rows.append(prompt_ids + response_ids)
                labels.append([-100] * len(prompt_ids) + response_ids)
                owners.append((b, j))
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        target = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
        attention = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]).long()

        logps = _sequence_logps(policy, input_ids, attention, target)
        with torch.no_grad():
            ref_logps = _sequence_logps(reference, input_ids, attention, target)
        log_ratio = (logps.detach() - ref_logps).numpy().reshape(len(batch), k)
        shaped = combined - beta * log_ratio
        advantage = shaped - (shaped.sum(axis=1, keepdims=True) - shaped) / (k - 1)   # leave-one-out
        loss = -(torch.as_tensor(advantage.reshape(-1), dtype=logps.dtype) * logps).mean()
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimiser.step()
        history.append({"step": step + 1, "gains": gains.tolist(), "worst": int(np.argmin(gains))})
        if progress is not None:
            progress(step + 1, steps, gains)
    return policy.eval(), history


# ------------------------------------------------------------------------------------------- online loop
@dataclass
class MaxMinJudge:
    """MaxMin-RLHF through the online loop: a judge that ranks candidates by the worst-served group's reward.

    :func:`rankalign.online.run_online` samples K responses per prompt from the current policy, has a judge
    rank them and trains on the ranked lists, round after round. The loop hands this judge a whole round at
    once (:meth:`rank_many`). It measures how well the current policy serves each group g on the round's
    samples: the *win-rate gain* over the reference policy, the mean over candidates y of
    ``P_s[r_g(x, y) > r_g(x, s)] - 1/2`` for reference samples s of the same prompt (ties count 1/2), which
    is free of each group reward's scale (rewards fitted per group are not on one scale, so their raw gains
    cannot be compared) and is the quantity a gold win rate measures. Then it ranks every list of the round
    by the reward of the group whose gain is lowest: MaxMin-RLHF's iteration (Chakraborty et al. 2024,
    Algorithm 1: optimise for the worst group at each step), with a round of the loop as the step. With one
    group it is the pooled reward's judge.

    A round is a large step (epochs over the round's lists), so giving a whole round to one group can
    overshoot. With ``step_size`` the judge instead keeps weights ``lambda`` on the simplex over the groups,
    moves them each round by exponentiated gradient on the win-rate gains,
    ``lambda_g <- lambda_g exp(-step_size * gain_g)`` renormalised (mirror descent on the dual of
    ``max_pi min_g R_g(pi)``, as :func:`maxmin_policy` solves it in the tabular world: the worst-served group
    gains weight), and ranks by ``sum_g lambda_g z_g``, ``z_g`` the group's reward standardised on the
    reference samples.

    Asked one prompt at a time (:meth:`rank`), the judge cannot see the round: it ranks by the group chosen
    at the last :meth:`end_round` (call it from ``run_online``'s ``callback``; before the first, by each
    candidate's smallest standardised reward over the groups).

    Parameters
    ----------
    group_rewards : sequence of callables ``(prompt, response) -> float``
    reference_samples : mapping prompt -> responses of the reference policy to that prompt (prompts not in
        it are compared with all the samples given)
    id : str
        The annotator of the records the judge returns.
    step_size : float, optional
        Exponentiated-gradient weights instead of one group per round (None: MaxMin-RLHF's one-hot choice).
    """

    group_rewards: Sequence[Callable[[str, str], float]]
    reference_samples: Mapping[str, Sequence[str]]
    id: str = "maxmin"
    step_size: float | None = None
    worst: int | None = None
    history: list = field(default_factory=list)

    def __post_init__(self):
        if not self.group_rewards:
            raise ValueError("MaxMinJudge needs at least one group reward")
        if not self.reference_samples or not all(len(v) for v in self.reference_samples.values()):
            raise ValueError("reference_samples must give at least one reference response per prompt")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size must be > 0 or None, got {self.step_size}")
        self._reference = {p: np.array([[float(r(p, y)) for y in ys] for r in self.group_rewards])
                           for p, ys in self.reference_samples.items()}          # prompt -> [G, S]
        every = np.concatenate(list(self._reference.values()), axis=1)
        self._scale = np.where(every.std(axis=1) > 0, every.std(axis=1), 1.0)
        self._fallback = every
        self._sums = np.zeros(len(self.group_rewards))
        self._count = 0
        self.weights = np.full(len(self.group_rewards), 1.0 / len(self.group_rewards))

    def measure(self, prompt: str, candidates: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(z, wins)``, both ``[G, K]``: each candidate's reward standardised on the reference samples
        (minus their mean for the prompt, over their spread for the group) and its win-rate gain."""
        rewards = np.array([[float(r(prompt, c)) for c in candidates] for r in self.group_rewards])
        reference = self._reference.get(prompt, self._fallback)                 # [G, S]
        z = (rewards - reference.mean(axis=1, keepdims=True)) / self._scale[:, None]
        diff = rewards[:, :, None] - reference[:, None, :]
        wins = (diff > 0).mean(axis=2) + 0.5 * (diff == 0).mean(axis=2) - 0.5
        return z, wins

    def _scores(self, z: np.ndarray, *, started: bool) -> np.ndarray:
        if self.step_size is not None:
            return self.weights @ z
        return z[self.worst] if started else z.min(axis=0)

    def _ranked(self, prompt: str, candidates: Sequence[str], scores: np.ndarray):
        from ..data.records import RankedList

        return RankedList.from_scores([float(v) for v in scores], candidates=list(candidates), prompt=prompt,
                                      annotator=self.id, meta={"maxmin_group": self.worst,
                                                               "maxmin_weights": self.weights.tolist()})

    def _choose(self, gains: np.ndarray, count: int) -> None:
        self.worst = int(np.argmin(gains))
        if self.step_size is not None:
            self.weights = exponentiated_gradient_step(self.weights, gains, self.step_size)
        self.history.append({"gains": gains.tolist(), "worst": self.worst, "weights": self.weights.tolist(),
                             "candidates": count})

    def rank_many(self, prompts: Sequence[str], candidate_lists: Sequence[Sequence[str]]) -> list:
        """Rank a whole round: the group (or the weights) from this round's win-rate gains, then every list."""
        measured = [self.measure(p, c) for p, c in zip(prompts, candidate_lists)]
        if not measured:
            return []
        count = sum(w.shape[1] for _, w in measured)
        self._choose(sum(w.sum(axis=1) for _, w in measured) / count, count)
        return [self._ranked(p, c, self._scores(z, started=True))
                for p, c, (z, _) in zip(prompts, candidate_lists, measured)]

    def rank(self, prompt: str, candidates: Sequence[str]):
        """Rank one list by the group (or weights) of the last :meth:`end_round`; its gains count towards
        the next."""
        z, wins = self.measure(prompt, candidates)
        self._sums += wins.sum(axis=1)
        self._count += wins.shape[1]
        return self._ranked(prompt, candidates, self._scores(z, started=bool(self.history)))

    def end_round(self) -> int:
        """After judging a round one prompt at a time: choose the next round's group (the lowest win-rate
        gain over the candidates judged since the last call; the weights move too); returns it."""
        if self._count == 0:
            raise ValueError("end_round before any candidate was judged")
        self._choose(self._sums / self._count, self._count)
        self._sums[:] = 0.0
        self._count = 0
        return self.worst


def _sequence_logps(net, input_ids, attention, target):
    """Summed log-probabilities of the labelled (response) tokens of each row."""
    import torch

    logits = net(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    tokens = target[:, 1:]
    mask = tokens != -100
    picked = torch.log_softmax(logits, dim=-1).gather(-1, tokens.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


__all__ = ["group_gains", "GroupPolicy", "utilitarian_policy", "maxmin_policy", "exponentiated_gradient_step",
           "MaxMinJudge", "item_level_records",
           "reward_tables", "train_group_policy"]
