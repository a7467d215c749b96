"""`rankalign demo`: the whole loop in the text world, with a known gold reward.

1. Build the text world (:mod:`rankalign.sim.text_world`), its word-level tokenizer, and train the
   reference policy (a tiny Llama-style LM) from scratch by next-token SFT.
2. Sample K = 4 responses per prompt from the reference policy and have a population of simulated
   annotators (three groups that weigh the gold reward components differently) rank each list.
3. Align a copy of the reference policy three ways from that one annotation budget, with
   :func:`rankalign.train.train_preference`: DPO on pairs (each list binarised to its best and worst
   response, the common practice that throws the middle of the ranking away), Plackett-Luce DPO and
   LiPO-λ on the full lists.
3b. On-policy rows (:func:`online_stage`, :mod:`rankalign.online`), from the same budget of judged samples
   (192 groups of K = 4) and the same annotator population as judge (:class:`PopulationJudge`):
   online Plackett-Luce DPO over 3 rounds of 64 lists sampled from the current policy (same objective,
   beta, learning rate and epochs as the offline row, reference fixed); online DPO on every ordered pair of
   each judged list over 6 rounds of 32 lists, each round training on every round's lists so far
   (``replay``), beta 0.3; and GRPO and RLOO (24 steps of 8 groups; rank rewards, since the annotators only
   rank).
4. Evaluate every policy (:mod:`rankalign.eval`): gold win rate against the reference policy (± SE over
   prompts), mean gold reward and response length, KL(π‖π_ref) (Monte Carlo, k1), ranking accuracy and
   idealised ranking accuracy on held-out annotated lists (the true preference rates are known here),
   and wall time; then rate all policies with Bradley-Terry (:func:`rankalign.stats.fit_bradley_terry`) on
   gold-judged head-to-head battles; compare each on-policy row with offline Plackett-Luce DPO
   (:func:`online_versus_offline`).
5. Write ``results.json``, ``results_table.txt``, ``gold_reward_vs_kl.png`` and ``accuracy_curves.png`` to
   the output directory (atomically), and print the table.

Deterministic for a seed (single CPU thread).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._atomic import atomic_write_text
from ..data.records import RankedList
from ..errors import UsageError
from .annotators import annotate, make_population, pair_probabilities
from .text_world import (
    TextWorld,
    Timer,
    build_text_tokenizer,
    make_text_world,
    response_logps,
    sample_responses,
    train_reference_policy,
)

METHODS = (
    ("dpo (pairs)", "dpo", "pairs"),
    ("pl_dpo (lists)", "pl_dpo", "lists"),
    ("lipo_lambda (lists)", "lipo_lambda", "lists"),
)
# on-policy rows (rankalign.online), from the same budget of judged samples as the rows above:
# (name, objective[, DemoSettings overrides for this row])
ONLINE_METHODS = (
    ("online pl_dpo (3 rounds)", "pl_dpo"),
    # online DPO on every ordered pair of each judged list, 6 rounds of 32 lists, each round training on every
    # round's lists so far (replay), beta 0.3 (a tighter hold on the reference than the offline rows' 0.1):
    # the setting that won within the DPO (pairs) row's KL on seeds 0-4 of benchmarks/study_online.py
    # (README, "On-policy learning")
    ("online dpo (6 rounds, replay)", "dpo", {"online_rounds": 6, "online_replay": True, "online_beta": 0.3}),
    ("grpo", "grpo"),
    ("rloo", "rloo"),
)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (``quick`` shrinks everything to a smoke run of seconds)."""

    seed: int = 0
    k: int = 4
    sft_steps: int = 400
    rounds: int = 8              # annotated lists per prompt (24 prompts)
    eval_rounds: int = 2         # held-out annotated lists per prompt (ranking accuracy)
    eval_samples: int = 64       # samples per prompt per policy (win rate, KL); at 16 their noise made most
    #                              of each win rate's SE over the 24 prompts (about twice the SE at 64)
    beta: float = 0.1
    learning_rate: float = 2e-4
    epochs: float = 3.0
    batch_size: int = 8
    temperature: float = 1.0     # annotators' Bradley-Terry / Plackett-Luce temperature
    num_prompts: int = 24        # the first N of the world's 24 prompts (fewer only for smoke tests)
    online_rounds: int = 3       # online Plackett-Luce DPO: rounds (the judged budget split evenly)
    online_epochs: float | None = None         # epochs per round (None: ``epochs``)
    online_learning_rate: float | None = None  # (None: ``learning_rate``)
    online_beta: float | None = None  # online DPO rows' beta (None: ``beta``)
    online_replay: bool = False  # each round trains on every round's lists so far (OnlineConfig.replay)
    online_refresh_reference: bool = False  # iterative DPO (OnlineConfig.refresh_reference)
    online_k: int | None = None  # online DPO rows: completions per prompt (None: ``k``); the judged-sample
    #                              budget stays the offline rows' (lists x k), so K = 8 judges half the lists
    pg_prompts_per_step: int = 8  # GRPO / RLOO: groups per step (steps = judged groups / this)
    pg_iterations: int = 4       # GRPO / RLOO: updates per sampled batch (GRPO's mu)
    pg_learning_rate: float = 1e-4
    pg_beta: float = 0.04        # GRPO: k3 KL weight; RLOO: KL-shaped reward weight
    online_judge: str = "population"  # the on-policy rows' judge: "population" (the annotators themselves) or
    #                                   "reward_model" (fitted on the annotated lists: no more human labels)
    rm_epochs: int = 8           # reward-model judge: Plackett-Luce epochs over the annotated lists
    rm_learning_rate: float = 3e-4

    def __post_init__(self):
        """Every setting in its range (a UsageError naming it), so a nonsense value fails here, not minutes into
        the run: whole numbers >= 1 for the counts (``k`` and ``online_k`` >= 2: a list to rank), the
        seed in [0, 2**32) as ``rankalign demo --seed``, ``num_prompts`` at most the world's 24, finite positive
        rates, ``pg_beta`` >= 0 and ``online_judge`` one of its two names."""
        def fail(name, what):
            raise UsageError(f"DemoSettings.{name} must be {what}, got {getattr(self, name)!r}")

        def whole(value):
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)

        def positive(value):
            return (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                    and value > 0)

        if not (whole(self.seed) and 0 <= self.seed < 2**32):
            fail("seed", "a whole number in [0, 2**32)")
        for name in ("k", "online_k"):
            value = getattr(self, name)
            if not (value is None and name == "online_k") and not (whole(value) and value >= 2):
                fail(name, "a whole number >= 2 (candidates per list)" + (" or None" if name == "online_k" else ""))
        for name in ("sft_steps", "rounds", "eval_rounds", "eval_samples", "batch_size", "online_rounds",
                     "pg_prompts_per_step", "pg_iterations", "rm_epochs"):
            if not (whole(getattr(self, name)) and getattr(self, name) >= 1):
                fail(name, "a whole number >= 1")
        if not (whole(self.num_prompts) and 1 <= self.num_prompts <= 24):
            fail("num_prompts", "a whole number in [1, 24] (the text world has 24 prompts)")
        for name in ("beta", "learning_rate", "epochs", "temperature", "pg_learning_rate", "rm_learning_rate",
                     "online_epochs", "online_learning_rate", "online_beta"):
            value = getattr(self, name)
            if not (value is None and name.startswith("online_")) and not positive(value):
                fail(name, "a finite number > 0" + (" or None" if name.startswith("online_") else ""))
        if not (isinstance(self.pg_beta, numbers.Real) and not isinstance(self.pg_beta, bool)
                and math.isfinite(self.pg_beta) and self.pg_beta >= 0):
            fail("pg_beta", "a finite number >= 0")
        for name in ("online_replay", "online_refresh_reference"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "true or false")
        if self.online_judge not in ("population", "reward_model"):
            fail("online_judge", "'population' or 'reward_model'")

    @classmethod
    def quick(cls, seed: int = 0) -> DemoSettings:
        return cls(seed=seed, sft_steps=40, rounds=1, eval_samples=2, epochs=1.0)


def annotator_population(world: TextWorld, temperature: float):
    """Three groups over the components (on_topic, off_topic, repeats, words): ``gold`` (3 annotators,
    the gold weights), ``verbose`` (1, rewards length 6x more and minds repetition less) and ``lenient``
    (1, minds off-topic nouns and repetition less)."""
    gold = world.gold_weights
    return make_population([("gold", 3, gold), ("verbose", 1, (1.0, -1.0, -0.25, 0.3)),
                            ("lenient", 1, (1.0, -0.3, -0.2, 0.05))],
                           choice="plackett_luce", temperature=temperature)


def annotate_lists(world, population, prompts, responses, rng) -> list[RankedList]:
    """One ranking per (prompt, K responses) by an annotator drawn uniformly from the population."""
    records = []
    for prompt, group in zip(prompts, responses):
        if len(group) < 2:
            continue
        annotator = population[int(rng.integers(len(population)))]
        records.append(annotate(annotator, prompt, group, world.components(prompt, group), rng,
                                gold_weights=world.gold_weights))
    return records


def best_worst_pairs(records: list[RankedList]) -> list[RankedList]:
    """Each ranked list binarised to (best, worst), the usual pairwise data built from rankings."""
    pairs = []
    for record in records:
        levels = record.levels()
        if len(levels) < 2:
            continue
        best, worst = levels[0][0], levels[-1][0]
        pairs.append(RankedList(prompt=record.prompt, candidates=[record.candidates[best], record.candidates[worst]],
                                ranks=[0, 1], annotator=record.annotator, meta=record.meta))
    return pairs


def true_preference_rates(world, population, record: RankedList) -> tuple[list[tuple[int, int]], list[float]]:
    """Ordered pairs (winner, loser) of a ranked list and alpha = P(winner > loser) for an annotator drawn
    uniformly from the population (the population's mean preference probability; ties count half)."""
    utilities = [a.utilities(world.components(record.prompt, record.candidates), world.gold_weights)
                 for a in population]
    pairs, alphas = [], []
    for w, l_, tie in record.pair_indices("all", ties=False):
        del tie
        rates = []
        for annotator, u in zip(population, utilities):
            win, tied, _ = pair_probabilities(annotator, u[w], u[l_])
            rates.append(float(win) + 0.5 * float(tied))
        pairs.append((w, l_))
        alphas.append(float(np.mean(rates)))
    return pairs, alphas


@dataclass
class PopulationJudge:
    """The demo's simulated annotators as an online judge: each ``rank`` call asks an annotator drawn
    uniformly from ``population`` (as the offline lists were annotated), so the online rows see the same
    kind of feedback: noisy rankings, no scores (GRPO and RLOO use rank rewards)."""

    world: TextWorld
    population: list
    rng: np.random.Generator
    id: str = "annotator_population"

    def rank(self, prompt, candidates) -> RankedList:
        annotator = self.population[int(self.rng.integers(len(self.population)))]
        return annotate(annotator, prompt, list(candidates), self.world.components(prompt, list(candidates)), self.rng,
                        gold_weights=self.world.gold_weights)


def fit_reward_judge(reference, tokenizer, lists: list[RankedList], settings):
    """A reward-model judge for the on-policy rows: a scalar reward head on a copy of the reference policy's
    backbone, fitted by Plackett-Luce (``pl_reward``) on the annotated lists, the offline rows' data. It
    ranks on-policy samples by its score, so the rows it judges use no human labels beyond the offline
    rows' (the usual RLHF recipe: preferences -> reward model -> on-policy optimisation against it)."""
    from ..reward import RewardModel, RewardModelJudge, train_reward_model

    model = RewardModel(copy.deepcopy(reference), seed=settings.seed)
    train_reward_model(model, tokenizer, lists, objective="pl_reward", epochs=settings.rm_epochs,
                       lr=settings.rm_learning_rate, batch_size=settings.batch_size, seed=settings.seed)
    return RewardModelJudge(model.eval(), tokenizer, id="rm:annotated_lists")


def online_stage(reference, tokenizer, world, population, prompts, budget_lists: int, settings, evaluate, runs: str,
                 console, progress: bool, methods=ONLINE_METHODS, judge_lists: list[RankedList] | None = None
                 ) -> list[dict]:
    """The on-policy rows: online Plackett-Luce DPO (``online_rounds`` rounds) and GRPO and RLOO, each from
    ``budget_lists`` judged groups of K samples (the offline rows' annotation budget; with ``online_k``
    the same number of judged samples in groups of ``online_k``), judged by the same simulated population
    or, with ``settings.online_judge == "reward_model"``, by a reward model fitted on ``judge_lists`` (the
    annotated lists, :func:`fit_reward_judge`).
    Returns ``{"name", "row", "rewards", "trajectory", "history"}`` per row
    (``methods``: ``(name, objective)`` pairs, or ``(name, objective, overrides)`` with
    :class:`DemoSettings` fields for that row only; by default :data:`ONLINE_METHODS`).
    """
    import torch

    from ..online import run_online, run_policy_gradient
    from ..train import OnlineConfig, TrainConfig

    if settings.online_judge not in ("population", "reward_model"):
        raise ValueError(f"online_judge must be 'population' or 'reward_model', got {settings.online_judge!r}")
    reward_judge = None
    if settings.online_judge == "reward_model":
        if not judge_lists:
            raise ValueError("online_judge='reward_model' needs the annotated lists (judge_lists)")
        reward_judge = fit_reward_judge(reference, tokenizer, judge_lists, settings)
    judged_by = "the annotator population" if reward_judge is None else "a reward model fitted on the annotated lists"
    out = []
    base_settings = settings
    for name, objective, *overrides in methods:
        settings = dataclasses.replace(base_settings, **overrides[0]) if overrides else base_settings
        judge = reward_judge if reward_judge is not None else PopulationJudge(
            world, population, np.random.default_rng([settings.seed, 11]))
        policy = copy.deepcopy(reference)
        points = []
        started = time.perf_counter()
        evaluation_seconds = 0.0

        def after(index, model, summary, name=name, points=points):
            nonlocal evaluation_seconds
            tick = time.perf_counter()
            was_training = model.training
            model.eval()
            with torch.no_grad():
                row, rewards = evaluate(model, name, math.nan)
            model.train(was_training)
            points.append({"epoch": float(index + 1), "row": row, "rewards": rewards})
            evaluation_seconds += time.perf_counter() - tick

        if objective == "grpo" or objective == "rloo":
            steps = max(1, budget_lists // settings.pg_prompts_per_step)
            _stage(console, f"training {name}: {steps} steps of {settings.pg_prompts_per_step} prompts x K={settings.k} "
                            f"on-policy samples, ranked by {judged_by}")
            every = max(1, steps // 2)  # two evaluation points (each costs a full evaluation)

            def step_callback(step, model, metrics, after=after, steps=steps, every=every):
                if (step + 1) % every == 0 or step + 1 == steps:
                    after(step, model, metrics)

            history = run_policy_gradient(
                policy, tokenizer, prompts, judge, objective=objective, steps=steps,
                prompts_per_step=settings.pg_prompts_per_step, k=settings.k, lr=settings.pg_learning_rate,
                beta=settings.pg_beta, iterations=settings.pg_iterations, max_new_tokens=40, seed=settings.seed,
                ref_model=reference, callback=step_callback)
            unit = "step"
        else:
            k = settings.online_k or settings.k
            per_round = max(1, budget_lists * settings.k // k // settings.online_rounds)
            _stage(console, f"training {name}: {settings.online_rounds} rounds of {per_round} on-policy lists "
                            f"(K={k}), ranked by {judged_by}")
            lr = settings.learning_rate if settings.online_learning_rate is None else settings.online_learning_rate
            epochs = settings.epochs if settings.online_epochs is None else settings.online_epochs
            beta = settings.beta if settings.online_beta is None else settings.online_beta
            config = TrainConfig(model="tiny:llama", objective=objective, loss_params={"beta": beta},
                                 lr=lr, epochs=epochs, batch_size=settings.batch_size,
                                 seed=settings.seed, output_dir=os.path.join(runs, f"online_{len(out)}_{objective}"), report_to=[],
                                 save_steps=0, progress=progress, logging_steps=1, resume=False, bf16=False)
            online = OnlineConfig(enabled=True, rounds=settings.online_rounds, k=k,
                                  prompts_per_round=per_round, max_new_tokens=40, replay=settings.online_replay,
                                  refresh_reference=settings.online_refresh_reference)
            result = run_online(policy, tokenizer, prompts, judge, config, online, ref_model=reference, callback=after)
            history = result.rounds
            unit = "round"
        wall = time.perf_counter() - started - evaluation_seconds
        row, rewards = points[-1]["row"], points[-1]["rewards"]
        row["train s"] = wall
        out.append({"name": name, "row": row, "rewards": rewards, "history": history,
                    "trajectory": [{"epoch": p["epoch"], "row": p["row"], "unit": unit} for p in points]})
        if progress:
            console.print(f"   {name}: gold win rate {row['gold win rate'][0]:.3f}, KL {row['KL'][0]:.2f}")
    return out


def _stage(console, text: str) -> None:
    console.print(f"[bold cyan]»[/] {text}")


@dataclass
class DemoState:
    """What the stages of :func:`run_demo` hand on to each other (filled in stage by stage)."""

    out_dir: str
    settings: DemoSettings
    console: Any
    progress: bool = True
    started: float = 0.0
    world: Any = None
    prompts: list = field(default_factory=list)
    tokenizer: Any = None
    reference: Any = None
    sft_seconds: float = math.nan
    population: list = field(default_factory=list)
    train_lists: list = field(default_factory=list)
    eval_lists: list = field(default_factory=list)
    train_pairs: list = field(default_factory=list)
    rates: list = field(default_factory=list)           # (pairs, true preference rates) per held-out list
    eval_ranks: Any = None
    train_ranks: Any = None
    idealised: float = math.nan
    reference_rewards: Any = None
    rows: list = field(default_factory=list)            # one table row per policy
    all_rewards: dict = field(default_factory=dict)     # policy -> gold rewards of its samples
    trajectories: dict = field(default_factory=dict)    # method -> rows by epoch
    histories: dict = field(default_factory=dict)       # method -> training log
    rating_rows: list = field(default_factory=list)
    online_names: list = field(default_factory=list)    # the on-policy rows, in table order


def _ranks_array(records, k: int) -> np.ndarray:
    out = np.full((len(records), k), -1)
    for i, r in enumerate(records):
        out[i, :r.k] = r.dense_ranks()
    return out


def _list_ranking_accuracy(state: DemoState, policy, records, ranks) -> float:
    from .. import eval as evaluation

    logps = response_logps(policy, state.tokenizer, [r.prompt for r in records], [r.candidates for r in records])
    padded = np.zeros((len(records), state.settings.k))
    for i, lp in enumerate(logps):
        padded[i, :len(lp)] = lp
    return evaluation.listwise_ranking_accuracy(padded, ranks)


def _pair_arrays(logps, rates) -> tuple[np.ndarray, np.ndarray]:
    w, l_ = [], []
    for lp, (pairs, _) in zip(logps, rates):
        for a, b in pairs:
            w.append(lp[a])
            l_.append(lp[b])
    return np.array(w), np.array(l_)


def train_reference_stage(state: DemoState) -> None:
    """1. The text world, its tokenizer and the reference policy trained by SFT."""
    settings = state.settings
    state.world = make_text_world()
    state.prompts = list(state.world.prompts)[:settings.num_prompts]
    _stage(state.console, f"text world: {len(state.prompts)} prompts; training the reference policy "
                          f"({settings.sft_steps} SFT steps)")
    state.tokenizer = build_text_tokenizer()
    with Timer() as sft_timer:
        last = {"loss": math.nan}

        def sft_progress(step, steps, loss):
            last["loss"] = loss
            if state.progress and (step % max(1, steps // 5) == 0 or step == steps):
                state.console.print(f"   SFT step {step}/{steps}  loss {loss:.3f}")

        state.reference = train_reference_policy(state.world, state.tokenizer, steps=settings.sft_steps,
                                                 seed=settings.seed, progress=sft_progress)
    if not math.isfinite(last["loss"]):
        raise RuntimeError(f"reference SFT diverged (loss {last['loss']})")
    state.sft_seconds = sft_timer.seconds


def annotate_stage(state: DemoState) -> None:
    """2. Sample K responses per prompt, have the simulated population rank them; prepare the held-out
    pairs' true preference rates, the idealised accuracy and the reference samples for win rate and KL."""
    from .. import eval as evaluation

    settings, world, seed = state.settings, state.world, state.settings.seed
    state.population = annotator_population(world, settings.temperature)
    train_prompts = [p for _ in range(settings.rounds) for p in state.prompts]
    eval_prompts = [p for _ in range(settings.eval_rounds) for p in state.prompts]
    _stage(state.console, f"sampling K={settings.k} responses for {len(train_prompts)} training and "
                          f"{len(eval_prompts)} held-out lists; {len(state.population)} simulated annotators rank them")
    train_responses = sample_responses(state.reference, state.tokenizer, train_prompts, settings.k, seed=seed * 1000 + 1)
    eval_responses = sample_responses(state.reference, state.tokenizer, eval_prompts, settings.k, seed=seed * 1000 + 2)
    rng = np.random.default_rng([seed, 3])
    state.train_lists = annotate_lists(world, state.population, train_prompts, train_responses, rng)
    state.eval_lists = annotate_lists(world, state.population, eval_prompts, eval_responses, rng)
    state.train_pairs = best_worst_pairs(state.train_lists)
    if not state.train_lists or not state.eval_lists:
        raise RuntimeError("no annotated lists (the reference policy produced no distinct responses)")

    # held-out pairs, their reference log-probs and true preference rates (for idealised accuracy)
    eval_ref_logps = response_logps(state.reference, state.tokenizer, [r.prompt for r in state.eval_lists],
                                    [r.candidates for r in state.eval_lists])
    state.rates = [true_preference_rates(world, state.population, r) for r in state.eval_lists]
    state.eval_ranks = _ranks_array(state.eval_lists, settings.k)
    state.train_ranks = _ranks_array(state.train_lists, settings.k)
    alphas = np.array([a for _, al in state.rates for a in al])
    ref_w, ref_l = _pair_arrays(eval_ref_logps, state.rates)
    state.idealised = evaluation.idealised_ranking_accuracy(ref_w, ref_l, alphas, settings.beta)

    # reference samples for win rate and KL
    reference_samples = sample_responses(state.reference, state.tokenizer, state.prompts, settings.eval_samples,
                                         seed=seed * 1000 + 4, distinct=False)
    state.reference_rewards = np.stack([world.gold_rewards(p, s) for p, s in zip(state.prompts, reference_samples)])


def evaluate_demo_policy(state: DemoState, policy, name: str, wall: float):
    """One table row for ``policy`` (gold win rate, reward, KL, length, ranking accuracies) and the gold
    rewards of its samples."""
    from .. import eval as evaluation

    settings, world, prompts, tokenizer = state.settings, state.world, state.prompts, state.tokenizer
    samples = sample_responses(policy, tokenizer, prompts, settings.eval_samples, seed=settings.seed * 1000 + 5,
                               distinct=False)
    rewards = np.stack([world.gold_rewards(p, s) for p, s in zip(prompts, samples)])
    policy_logps = np.stack(response_logps(policy, tokenizer, prompts, samples))
    ref_logps = np.stack(response_logps(state.reference, tokenizer, prompts, samples))
    win, win_se = evaluation.gold_win_rate(rewards, state.reference_rewards)
    kl, kl_se = evaluation.kl_estimate(policy_logps, ref_logps)
    reward, reward_se = evaluation.mean_with_se(rewards)
    words = float(np.mean([len(s.split()) for group in samples for s in group]))
    accuracy = _list_ranking_accuracy(state, policy, state.eval_lists, state.eval_ranks)
    train_accuracy = _list_ranking_accuracy(state, policy, state.train_lists, state.train_ranks)
    row = {"method": name, "gold win rate": (win, win_se), "gold reward": (reward, reward_se),
           "KL": (kl, kl_se), "words": words, "rank acc": accuracy, "ideal rank acc": state.idealised,
           "train rank acc": train_accuracy, "train s": wall}
    for key, value in row.items():
        head = value[0] if isinstance(value, tuple) else value
        if key != "train s" and isinstance(head, float) and not math.isfinite(head):
            raise RuntimeError(f"{name}: {key} is {head}; refusing to report it")
    return row, rewards


def offline_row(state: DemoState, runs: str, name: str, objective: str, form: str) -> dict:
    """Align a copy of the reference with ``objective`` on the annotated lists (``form="lists"``) or their
    (best, worst) pairs, evaluating after every epoch; the row (also appended to ``state.rows``)."""
    from ..train import TrainConfig, train_preference

    settings = state.settings
    data = state.train_pairs if form == "pairs" else state.train_lists
    _stage(state.console, f"training {name}: {len(data)} {'pairs' if form == 'pairs' else 'lists'}")
    config = TrainConfig(model="tiny:llama", objective=objective, loss_params={"beta": settings.beta},
                         lr=settings.learning_rate, epochs=settings.epochs, batch_size=settings.batch_size,
                         seed=settings.seed, output_dir=os.path.join(runs, objective), report_to=[],
                         save_steps=0, progress=state.progress, logging_steps=1, resume=False, bf16=False)
    policy = copy.deepcopy(state.reference)
    epochs = _EpochEvaluation(lambda model, name=name: evaluate_demo_policy(state, model, name, math.nan))
    result = train_preference(policy, state.tokenizer, data, config, ref_model=state.reference, callbacks=[epochs])
    state.histories[name] = result.history
    if not epochs.points:
        raise RuntimeError(f"{name}: training ended without completing an epoch")
    row, state.all_rewards[name] = epochs.points[-1]["row"], epochs.points[-1]["rewards"]
    row["train s"] = result.wall_time - epochs.seconds
    state.rows.append(row)
    state.trajectories[name] = [{"epoch": 0.0, "row": state.rows[0]}] + [
        {"epoch": p["epoch"], "row": p["row"]} for p in epochs.points]
    if state.progress:
        state.console.print(f"   {name}: gold win rate {row['gold win rate'][0]:.3f}, KL {row['KL'][0]:.2f}")
    return row


def align_stage(state: DemoState) -> None:
    """3. Evaluate the reference, then align a copy of it three ways from the same annotation budget,
    evaluating at the end of every epoch; 3b. the on-policy rows (:func:`online_stage`) from the same budget
    of judged samples."""
    settings = state.settings
    _stage(state.console, "evaluating the reference policy")
    row, state.all_rewards["reference"] = evaluate_demo_policy(state, state.reference, "reference", state.sft_seconds)
    state.rows.append(row)
    with tempfile.TemporaryDirectory(prefix=".runs-", dir=state.out_dir) as runs:
        for name, objective, form in METHODS:
            offline_row(state, runs, name, objective, form)
        # 3b. on-policy rows from the same budget of judged samples (rankalign.online)
        evaluate = lambda model, name, wall: evaluate_demo_policy(state, model, name, wall)  # noqa: E731
        for entry in online_stage(state.reference, state.tokenizer, state.world, state.population, state.prompts,
                                  len(state.train_lists), settings, evaluate, runs, state.console, state.progress,
                                  judge_lists=state.train_lists):
            state.rows.append(entry["row"])
            state.online_names.append(entry["name"])
            state.all_rewards[entry["name"]] = entry["rewards"]
            state.histories[entry["name"]] = entry["history"]
            state.trajectories[entry["name"]] = [{"epoch": 0.0, "row": state.rows[0]}] + entry["trajectory"]


def rate_stage(state: DemoState) -> None:
    """4. Bradley-Terry ratings of the policies from gold-judged head-to-head battles."""
    from ..stats import fit_bradley_terry

    names = list(state.all_rewards)
    first, second, outcome = [], [], []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            ra, rb = state.all_rewards[names[a]], state.all_rewards[names[b]]
            first.extend([a] * ra.size)
            second.extend([b] * ra.size)
            outcome.extend(np.where(ra > rb, 1.0, np.where(ra == rb, 0.5, 0.0)).ravel().tolist())
    ratings = fit_bradley_terry(np.array(first), np.array(second), np.array(outcome), items=names,
                                reference="reference", prior=0.0)
    state.rating_rows = [{"policy": item, "BT rating (logit)": (float(r), float(s)), "battles": int(n)}
                         for item, r, s, n in zip(ratings.items, ratings.ratings, ratings.se, ratings.n)]
    for table_row, item in zip(state.rows, names):
        table_row["BT rating"] = float(ratings.ratings[names.index(item)])
    if not np.all(np.isfinite(ratings.ratings)):
        raise RuntimeError(f"Bradley-Terry ratings are not finite: {ratings.ratings}")


def online_versus_offline(state: DemoState, offline: str = "pl_dpo (lists)", bound: str = "dpo (pairs)") -> list[dict]:
    """Each on-policy row against the offline row ``offline``: the gold win rate difference, in units of the
    two rows' SEs combined as if independent (``hypot``) and paired by prompt
    (:func:`rankalign.eval.paired_win_rate_difference`: both rows answer the same prompts and are judged
    against the same reference samples), and whether the row's KL is at most the ``bound`` row's."""
    from .. import eval as evaluation

    rows = {row["method"]: row for row in state.rows}
    if offline not in rows or bound not in rows:
        return []
    base, limit = rows[offline], rows[bound]["KL"][0]
    out = []
    for name in state.online_names:
        row = rows[name]
        difference = row["gold win rate"][0] - base["gold win rate"][0]
        combined = math.hypot(row["gold win rate"][1], base["gold win rate"][1])
        paired, paired_se = evaluation.paired_win_rate_difference(state.all_rewards[name], state.all_rewards[offline],
                                                                  state.reference_rewards)
        out.append({"method": name, f"vs {offline}": (difference, combined),
                    "in combined SE": difference / combined if combined > 0 else math.nan,
                    "paired": (paired, paired_se),
                    "in paired SE": paired / paired_se if paired_se > 0 else math.nan,
                    "KL": row["KL"][0], f"KL <= {bound}": bool(row["KL"][0] <= limit)})
    return out


def report_stage(state: DemoState) -> dict:
    """5. Print the tables; write results.json, results_table.txt and the two plots; return the results."""
    from ..eval.report import EvalReport, plot_accuracy_curves, plot_gold_reward_vs_kl, write_json_atomic

    settings, out_dir = state.settings, state.out_dir
    report = EvalReport(
        title=f"rankalign demo: text world, K={settings.k}, {len(state.train_lists)} annotated lists, "
              f"seed {settings.seed}",
        rows=state.rows,
        notes=[
            "gold win rate: vs reference samples on the same prompts (ties 1/2), ± SE over prompts (rankalign.eval).",
            "KL: KL(π‖π_ref) in nats per response, k1 Monte Carlo on the policy's samples. words: mean response length.",
            "rank acc: held-out annotated lists, share of ordered pairs with log π(y_w) > log π(y_l) (Chen et al. 2024);",
            "train rank acc: the same on the annotated training lists (all pairs of each list).",
            "dpo (pairs): DPO on each training list binarised to (best, worst); the (lists) methods use whole lists.",
            f"ideal rank acc: the same at the DPO optimum, from π_ref and the true preference rates, β = {settings.beta}.",
            "train s: wall time of SFT (reference) or preference training. BT rating: Bradley-Terry on gold-judged",
            "battles between all policies' samples, reference = 0 (rankalign.stats).",
        ],
        meta={"settings": settings.__dict__, "annotators": [a.id for a in state.population],
              "train_lists": len(state.train_lists), "train_pairs": len(state.train_pairs),
              "eval_lists": len(state.eval_lists)},
    )
    report.print(state.console)
    ratings_report = EvalReport(title="Bradley-Terry ratings of the policies (gold-judged battles)",
                                rows=state.rating_rows)
    ratings_report.print(state.console)
    versus_rows = online_versus_offline(state)
    versus_report = EvalReport(
        title="On-policy rows against offline Plackett-Luce DPO (same prompts, same reference samples)",
        rows=versus_rows,
        notes=["vs pl_dpo (lists): gold win rate difference ± the two rows' SEs combined as if independent;",
               "paired: the same difference ± its SE over prompts (rankalign.eval.paired_win_rate_difference);",
               "KL <= dpo (pairs): the row's KL is at most the DPO (pairs) row's."])
    if versus_rows:
        versus_report.print(state.console)

    points = []
    for name, trajectory in state.trajectories.items():
        for entry in trajectory:
            r = entry["row"]
            points.append({"method": name, "kl": r["KL"][0], "kl_se": r["KL"][1], "gold_reward": r["gold reward"][0],
                           "gold_reward_se": r["gold reward"][1], "label": f"ep {entry['epoch']:g}"})
    plot_gold_reward_vs_kl(points, os.path.join(out_dir, "gold_reward_vs_kl.png"),
                           title="Gold reward against KL (one point per epoch)")
    # one colour per method; solid = held-out lists, dashed = the training lists
    colours = {name: f"C{i}" for i, name in enumerate(state.trajectories)}
    curves = {f"{name} (held-out)": {"steps": [e["epoch"] for e in trajectory], "color": colours[name],
                                     "values": [e["row"]["rank acc"] for e in trajectory]}
              for name, trajectory in state.trajectories.items()}
    for name, trajectory in state.trajectories.items():
        curves[f"{name} (training lists)"] = {"steps": [e["epoch"] for e in trajectory], "color": colours[name],
                                              "linestyle": "--",
                                              "values": [e["row"]["train rank acc"] for e in trajectory]}
    plot_accuracy_curves(curves, os.path.join(out_dir, "accuracy_curves.png"),
                         title="Ranking accuracy during training", x_label="epoch",
                         reference_lines={"idealised (held-out)": state.idealised, "chance": 0.5})
    trajectory_table = [{"method": name, "epoch": e["epoch"], **{k: v for k, v in e["row"].items()
                                                               if k not in ("method", "train s")}}
                        for name, trajectory in state.trajectories.items() for e in trajectory]
    results = {"table": report.to_dict(), "ratings": ratings_report.to_dict(),
               "online_vs_offline": versus_report.to_dict(),
               "by_epoch": EvalReport(title="by epoch", rows=trajectory_table).to_dict(),
               "histories": state.histories, "seconds": time.perf_counter() - state.started}
    write_json_atomic(os.path.join(out_dir, "results.json"), results)
    atomic_write_text(os.path.join(out_dir, "results_table.txt"), "\n".join(
        [report.to_text(), ratings_report.to_text()] + ([versus_report.to_text()] if versus_rows else [])))
    _stage(state.console, f"done in {results['seconds']:.0f} s; wrote results.json, results_table.txt, "
                          f"gold_reward_vs_kl.png, accuracy_curves.png to {out_dir}")
    return results


STAGES = (train_reference_stage, annotate_stage, align_stage, rate_stage)


def run_demo(out_dir: str = "demo_output", *, settings: DemoSettings | None = None, console=None,
             progress: bool = True) -> dict:
    """Run the demo's stages (:data:`STAGES`, then :func:`report_stage`) on one :class:`DemoState` and write
    its outputs to ``out_dir``; returns the results dictionary (see module doc)."""
    import torch
    from rich.console import Console

    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)  # determinism, and no thread contention on small tensors
    state = DemoState(out_dir=out_dir, settings=settings or DemoSettings(),
                      console=console or Console(width=max(120, Console().width)), progress=progress,
                      started=time.perf_counter())
    for stage in STAGES:
        stage(state)
    return report_stage(state)


def _epoch_callback_class():
    import transformers

    class EpochEvaluation(transformers.TrainerCallback):
        """Evaluates the policy at the end of every epoch (eval mode, no gradients); ``seconds`` is the
        time spent evaluating, subtracted from the reported training time."""

        def __init__(self, evaluate):
            self.evaluate = evaluate
            self.points: list[dict] = []
            self.seconds = 0.0

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            import torch

            start = time.perf_counter()
            was_training = model.training
            model.eval()
            with torch.no_grad():
                row, rewards = self.evaluate(model)
            if was_training:
                model.train()
            self.points.append({"epoch": float(state.epoch), "row": row, "rewards": rewards})
            self.seconds += time.perf_counter() - start

    return EpochEvaluation


def _EpochEvaluation(evaluate):
    return _epoch_callback_class()(evaluate)


__all__ = ["METHODS", "DemoSettings", "DemoState", "STAGES", "annotator_population", "annotate_lists",
           "best_worst_pairs", "true_preference_rates", "train_reference_stage", "annotate_stage", "align_stage",
           "rate_stage", "report_stage", "evaluate_demo_policy", "online_versus_offline", "run_demo"]
