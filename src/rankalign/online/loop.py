"""The online loop: rounds of sample -> judge -> ranked lists -> train, resumable at round and step boundaries.

Each round:

1. **Sample** K completions per prompt from the current policy (:func:`~rankalign.online.sample_groups`,
   each prompt prefilled once), seeded by ``(seed, round)``.
2. **Judge**: ``judge.rank(prompt, candidates)`` gives a :class:`~rankalign.data.RankedList` per prompt
   (the judge's ``id`` as annotator, its scores when it has them). The round's lists are written to
   ``output_dir/round_NNN/lists.jsonl`` (atomically), a dataset ``rankalign rate``/``eval`` read.
3. **Train** a copy of the engine's view of those lists (the sampled token ids, so the update scores
   exactly what was sampled) with any registered pairwise or listwise objective through
   :func:`rankalign.train.train_preference`, against the reference: the initial policy, or with
   ``refresh_reference`` the policy at the start of the round (iterative DPO; Xu et al. 2023, "Some
   things are more CRINGE than others"; Xiong et al. 2024, "Iterative Preference Learning from Human
   Feedback"). SPPO (``objective: sppo``) takes soft win probabilities from the judge's scores
   (``P_i = mean_j sigma(s_i - s_j)``, Bradley-Terry) or, for a ranking-only judge, the share of the
   group each response beats (ties 1/2).
   With ``curriculum`` the lists become pairs ordered from easy to hard (largest score gap, or rank
   gap, first) and the round trains on ``curriculum_stages`` slices in that order (Curriculum DPO;
   Pattnaik et al. 2024, "Curry-DPO").
4. **Save** the policy (safetensors) to ``round_NNN/policy`` and mark the round done in
   ``online_state.json`` (atomic).

Resume: a run restarted with the same settings skips finished rounds (loading the last round's
policy), reuses a round's saved lists instead of sampling again, and resumes its training from the
last complete trainer checkpoint (``save_steps``), so a run killed anywhere ends where an
uninterrupted run ends. ``online_state.json`` holds the run's fingerprint (:func:`online_fingerprint`:
the train config and online section, the judge's id, the prompts, the model's source), written before
the first round; a restart whose fingerprint differs is refused, naming the changed keys
(:class:`~rankalign.train.checkpoints.ResumeError`), since it would mix the saved samples and rankings
of one run with the settings of another. Only ``online.rounds`` (a finished run can be extended) and the
keys offline training may change on resume (``epochs``, ``save_steps`` ...) may differ. A damaged state
or ``samples.json`` file is refused with a ResumeError naming it.

Sampling needs ``temperature > 0`` (finite): greedy decoding (0) gives the K completions of a prompt
identical, so no group would have two candidates to rank; such settings are a config error.
A judge that raises, or returns anything but a RankedList of the candidates it was given, in order, is a
:class:`JudgeError` naming the judge and the round.

A judge is anything with an ``id`` and ``rank(prompt, candidates) -> RankedList``
(:class:`rankalign.reward.judges.Judge`): the reward-model, ensemble and preference judges of
:mod:`rankalign.reward.judges`, simulated annotators, or a simulation's gold reward.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_write_text
from ..data.records import RankedList
from ..engine import TokenizedList
from ..engine.cpu_memory import preallocate_optimizer_state, retain_if_cpu
from ..errors import RankalignError
from ..reward.judges import Judge
from ..train.checkpoints import ResumeError, describe_difference, run_fingerprint
from ..train.config import ConfigError, OnlineConfig, check_sampling, config_to_dict
from .generate import sample_groups

STATE_FILE = "online_state.json"


class JudgeError(RankalignError):
    """A judge failed, or gave something other than one RankedList of the candidates it was given, in order."""


@dataclass
class OnlineResult:
    """What :func:`run_online` returns: the final policy, one summary per round and the round records."""

    model: Any
    rounds: list[dict]
    records: list[list[RankedList]]
    output_dir: str


# ------------------------------------------------------------------------------------------- pieces
def _encode_prompt(tokenizer, prompt) -> list[int]:
    """Prompt ids exactly as :func:`rankalign.engine.tokenize_records` builds them (BOS + text, or the
    chat template with the generation prompt)."""
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        bos = tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + list(ids)
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def _decode(tokenizer, ids: Sequence[int]) -> str:
    eos = tokenizer.eos_token_id
    ids = list(ids)
    if ids and ids[-1] == eos:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def win_probabilities(record: RankedList, estimator: str = "all_samples") -> list[float]:
    """Each candidate's estimated ``P(beats the policy)`` within its group of k samples (SPPO's soft labels).

    ``P(i > j)`` is ``sigma(s_i - s_j)`` with scores (Bradley-Terry on the judge's scores), else 1, 1/2 or 0
    from the ranking; averaged by :func:`rankalign.losses.listwise.sppo_win_rates` (``estimator``:
    ``"all_samples"``, SPPO's, or ``"leave_one_out"``).
    """
    import torch

    from rankalign.losses.listwise import sppo_win_rates, win_rates_from_ranks

    scores = record.scores
    if scores is not None and all(isinstance(s, (int, float)) for s in scores):
        values = torch.tensor([float(s) for s in scores], dtype=torch.float64)
        pairwise = torch.sigmoid(values[:, None] - values[None, :])
        rates = sppo_win_rates(pairwise[None], torch.ones(1, record.k, dtype=torch.bool), estimator)
    else:
        rates = win_rates_from_ranks(torch.tensor([record.dense_ranks()]), torch.float64, estimator=estimator)
    return rates[0].tolist()


def _distinct_groups(tokenizer, prompts, prompt_ids, completions) -> list[tuple]:
    """``(index, prompt, prompt ids, texts, kept ids)`` of every group with at least 2 distinct, non-empty
    decoded completions (a duplicate text keeps its first sample)."""
    groups = []
    for index, (prompt, ids, group) in enumerate(zip(prompts, prompt_ids, completions)):
        texts, kept = [], []
        for completion in group:
            text = _decode(tokenizer, completion)
            if text and text not in texts:
                texts.append(text)
                kept.append(list(completion))
        if len(texts) >= 2:
            groups.append((index, prompt, ids, texts, kept))
    return groups


def _engine_lists(groups, records, soft_labels: bool) -> list[TokenizedList]:
    """The engine lists of judged groups (one record per group, in order): the sampled ids of the ranked
    candidates, dense ranks, and grades (SPPO's win probabilities, or the judge's scores)."""
    lists = []
    for (index, _prompt, ids, _texts, kept), record in zip(groups, records):
        present = [i for i, r in enumerate(record.ranks) if r is not None]
        if len(present) < 2:
            continue
        dense = record.dense_ranks()
        grades = None
        if soft_labels:
            rates = win_probabilities(record)
            grades = [rates[i] for i in present]
        elif record.scores is not None and all(isinstance(record.scores[i], (int, float)) for i in present):
            grades = [float(record.scores[i]) for i in present]
        lists.append(TokenizedList(prompt_ids=list(ids), response_ids=[kept[i] for i in present],
                                   ranks=[dense[i] for i in present], grades=grades, index=index))
    return lists


def _judge_name(judge) -> str:
    return repr(getattr(judge, "id", None) or type(judge).__name__)


def _ask(judge, where: str, method: str, *args):
    """``judge.<method>(*args)``; whatever it raises becomes a :class:`JudgeError` naming the judge and ``where``
    (the original message kept)."""
    try:
        return getattr(judge, method)(*args)
    except Exception as error:
        raise JudgeError(f"{where}: judge {_judge_name(judge)} failed in {method}(): {type(error).__name__}: {error}",
                         hint=getattr(error, "hint", None)) from error


def _ranked(judge, where: str, record, candidates) -> RankedList:
    """``record`` if it is a RankedList of ``candidates`` in the order given, else a :class:`JudgeError`."""
    if not isinstance(record, RankedList):
        raise JudgeError(f"{where}: judge {_judge_name(judge)} returned a {type(record).__name__} ({record!r:.80}) "
                         "where a RankedList was expected")
    if list(record.candidates) != list(candidates):
        raise JudgeError(f"{where}: judge {_judge_name(judge)} returned candidates in another order or changed "
                         "them; a judge must rank the candidates it was given, in place")
    return record


def judged_lists(tokenizer, judge, prompts, prompt_ids, completions, *, round_index: int,
                 soft_labels: bool = False) -> tuple[list[RankedList], list[TokenizedList]]:
    """Judge each prompt's K sampled completions; the records (text) and the engine lists (sampled ids).

    Completions that decode to the same text, or to nothing, are kept once (a ranked list holds
    distinct candidates); a group left with fewer than 2 is skipped. Unranked candidates are dropped
    from the engine list. ``soft_labels`` puts :func:`win_probabilities` in the grades (SPPO). A judge
    with a ``rank_many(prompts, candidate_lists)`` method gets the whole round in one call (one ranking
    per group, in order), for judges that decide from all of a round's samples at once
    (:class:`rankalign.sim.maxmin.MaxMinJudge`); other judges are asked one prompt at a time.
    """
    groups = _distinct_groups(tokenizer, prompts, prompt_ids, completions)
    where = f"round {round_index}"
    if hasattr(judge, "rank_many"):  # a judge that decides from the whole round (rankalign.sim.maxmin.MaxMinJudge)
        ranked = _ask(judge, where, "rank_many", [g[1] for g in groups], [g[3] for g in groups])
        if not isinstance(ranked, (list, tuple)) or len(ranked) != len(groups):
            got = f"{len(ranked)} rankings" if isinstance(ranked, (list, tuple)) else f"a {type(ranked).__name__}"
            raise JudgeError(f"{where}: judge {_judge_name(judge)} returned {got} from rank_many() where a list of "
                             f"{len(groups)} RankedLists (one per group) was expected")
    else:
        ranked = [_ask(judge, where, "rank", prompt, texts) for _, prompt, _, texts, _ in groups]
    records = []
    for (_index, _prompt, _ids, texts, _kept), record in zip(groups, ranked):
        record = _ranked(judge, where, record, texts)
        meta = dict(record.meta or {})
        meta.update({"round": round_index, "source": "rankalign.online"})
        records.append(dataclasses.replace(record, annotator=record.annotator or getattr(judge, "id", None),
                                           meta=meta))
    return records, _engine_lists(groups, records, soft_labels)


def saved_round_lists(tokenizer, round_dir, prompts, prompt_ids, *, soft_labels: bool = False
                      ) -> tuple[list[RankedList], list[TokenizedList]]:
    """A finished sampling-and-judging step read back from ``round_dir`` (``samples.json`` and
    ``lists.jsonl``) without asking the judge again: a resumed or replayed round trains on exactly the
    rankings it was given the first time, whatever the judge's randomness."""
    from ..data import read

    round_dir = Path(round_dir)
    completions = _read_samples(round_dir / "samples.json", len(prompt_ids))
    records = list(read(str(round_dir / "lists.jsonl")).records)
    groups = _distinct_groups(tokenizer, prompts, prompt_ids, completions)
    if len(records) != len(groups) or any(list(r.candidates) != g[3] for r, g in zip(records, groups)):
        raise ResumeError(f"{round_dir}: lists.jsonl does not hold one ranking of each sampled group of "
                          "samples.json in order; it was changed, or written by another tokenizer or prompt set")
    return records, _engine_lists(groups, records, soft_labels)


def curriculum_pairs(lists: Sequence[TokenizedList]) -> list[TokenizedList]:
    """Every ordered pair of every list, easiest first: the largest grade gap (or rank gap without
    grades) first, ties in the gap broken by list order. A pair is a list of two (winner, loser)."""
    pairs = []
    for item in lists:
        for i in range(item.k):
            for j in range(item.k):
                if item.ranks[i] < item.ranks[j]:
                    gap = (item.grades[i] - item.grades[j]) if item.grades is not None else item.ranks[j] - item.ranks[i]
                    grades = None if item.grades is None else [item.grades[i], item.grades[j]]
                    pairs.append((-gap, len(pairs), TokenizedList(
                        prompt_ids=item.prompt_ids, response_ids=[item.response_ids[i], item.response_ids[j]],
                        ranks=[0, 1], grades=grades, weight=item.weight, index=item.index)))
    pairs.sort(key=lambda entry: (entry[0], entry[1]))
    return [entry[2] for entry in pairs]


def _read_samples(path: Path, groups: int) -> list:
    """The completions of a round's ``samples.json``, checked: ``groups`` lists of completions (token ids)."""
    hint = f"delete {path.parent} to sample and judge that round again"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ResumeError(f"{path}: not valid JSON ({error})", hint=hint) from None
    completions = data.get("completions") if isinstance(data, dict) else None
    if not (isinstance(completions, list) and len(completions) == groups and all(
            isinstance(group, list) and all(isinstance(c, list) and all(type(t) is int for t in c) for c in group)
            for group in completions)):
        raise ResumeError(f"{path}: not the samples of this round (expected 'completions': {groups} lists of "
                          "completions, each a list of token ids)", hint=hint)
    return completions


SUMMARY_KEYS = ("round", "lists", "records", "mean_judge_score", "first_loss", "last_loss")


def _read_state(output_dir: Path) -> dict | None:
    """``online_state.json`` (None when there is none), checked: a mapping with a whole ``rounds_done`` >= 0
    and ``summaries``, one mapping of :data:`SUMMARY_KEYS` per round."""
    path = output_dir / STATE_FILE
    if not path.exists():
        return None
    hint = "delete the run folder (or use another output_dir) to start afresh"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ResumeError(f"{path}: not valid JSON ({error})", hint=hint) from None
    if not isinstance(state, dict):
        raise ResumeError(f"{path}: expected a mapping (rounds_done, summaries, fingerprint), got a "
                          f"{type(state).__name__}", hint=hint)
    done, summaries = state.get("rounds_done"), state.get("summaries", [])
    if type(done) is not int or done < 0:
        raise ResumeError(f"{path}: field 'rounds_done' must be a whole number >= 0, got {done!r}", hint=hint)
    if not (isinstance(summaries, list) and all(isinstance(s, dict) and all(k in s for k in SUMMARY_KEYS)
                                                for s in summaries)):
        raise ResumeError(f"{path}: field 'summaries' must be a list of round summaries (mappings of "
                          f"{', '.join(SUMMARY_KEYS)})", hint=hint)
    return state


def online_fingerprint(train_config, online: OnlineConfig, prompts: Sequence, judge, model) -> dict:
    """The fingerprint of an online run (:func:`rankalign.train.checkpoints.run_fingerprint`): the train config
    without the keys that may change on resume, the online section without ``rounds`` (a run may be
    extended), the judge's ``id``, the prompts and the model's source. Sections are flattened one level
    (``online.k``, ``loss_params.beta``) so that a refusal names the changed keys."""
    settings = config_to_dict(train_config)
    settings["online"] = {k: v for k, v in dataclasses.asdict(online).items() if k != "rounds"}
    settings["judge_id"] = getattr(judge, "id", None)
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return run_fingerprint(flat, [{"prompt": p} for p in prompts], model=model, model_spec=train_config.model)


def resume_state(output_dir: Path, fingerprint: dict) -> dict | None:
    """The run's saved state (None for a new run), after refusing one that belongs to another run."""
    state = _read_state(output_dir)
    if state is None:
        return None
    path = output_dir / STATE_FILE
    hint = "use another output_dir, or delete this one to start afresh"
    saved = state.get("fingerprint")
    if not isinstance(saved, dict):
        raise ResumeError(f"{path} carries no run fingerprint, so nothing shows it belongs to this run", hint=hint)
    if saved.get("hash") != fingerprint["hash"]:
        raise ResumeError(f"{output_dir} belongs to a different online run "
                          f"({describe_difference(saved, fingerprint)})", hint=hint)
    return state


def _write_state(output_dir: Path, rounds_done: int, summaries: list, fingerprint: dict) -> None:
    atomic_write_text(output_dir / STATE_FILE, json.dumps({"rounds_done": rounds_done, "summaries": summaries,
                                                           "fingerprint": fingerprint}, indent=1))


def check_online(online: OnlineConfig) -> None:
    """:meth:`OnlineConfig.validate` (its sampling settings by :func:`check_sampling`, naming key and value)."""
    online.validate()


def _load_weights(model, directory: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(directory / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [m for m in missing if m not in tied and "lm_head" not in m]
    if missing or unexpected:
        raise ValueError(f"{directory}: checkpoint does not match the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def _round_prompts(prompts: Sequence, per_round: int, round_index: int) -> list:
    """The round's prompts: all of them (``per_round <= 0``), else the next ``per_round`` in a cycle
    through the prompt set (repeating prompts when ``per_round`` exceeds it)."""
    if per_round <= 0:
        return list(prompts)
    start = (round_index * per_round) % len(prompts)
    return [prompts[(start + i) % len(prompts)] for i in range(per_round)]


# ------------------------------------------------------------------------------------------- the loop
def _sample(model, sampler, tokenizer, prompt_ids, k: int, *, max_new_tokens: int, temperature: float,
            top_p: float, generator, seed: int):
    """K completions per prompt from the current policy: :func:`sample_groups` (transformers), or
    ``sampler`` (another backend) after copying the policy's weights into it."""
    if sampler is None:
        return sample_groups(model, prompt_ids, k, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id or 0, generator=generator)
    sampler.sync(model)
    return sampler.sample(prompt_ids, k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                          eos_token_id=tokenizer.eos_token_id, seed=seed)


def run_online(model, tokenizer, prompts: Sequence, judge, train_config, online: OnlineConfig, *,
               ref_model=None, callback=None) -> OnlineResult:
    """Run ``online.rounds`` rounds of sample -> judge -> train (module docstring).

    Parameters
    ----------
    model : causal LM
        The policy at the start (trained in place, round after round).
    tokenizer : the model's tokenizer (prompts are encoded as :func:`rankalign.engine.tokenize_records` does)
    prompts : sequence of str or chat messages
    judge : :class:`Judge`
    train_config : rankalign.train.TrainConfig
        Objective, optimiser and schedule of each round's training; ``output_dir`` holds the rounds,
        ``seed`` seeds sampling (with the round number), ``save_steps`` sets the step-level checkpoints.
    online : OnlineConfig
    ref_model : causal LM, optional
        The fixed reference (default: a frozen copy of ``model`` as given). Ignored after round 0 when
        ``online.refresh_reference``.
    callback : callable, optional
        ``callback(round_index, policy, summary)`` after each round (e.g. an evaluation).

    Returns
    -------
    OnlineResult
    """
    from ..data import write
    from ..train import train_preference

    check_online(online)
    if online.backend == "vllm":
        from . import vllm_backend

        if not vllm_backend.vllm_available():
            raise ConfigError("online: backend 'vllm' needs the vllm package and a CUDA device, and this machine "
                              "lacks one or both; use backend: transformers (the default)")
    if isinstance(judge, type):
        raise TypeError(f"{judge.__name__} is a class, not a judge: pass an instance of it")
    if isinstance(judge, Judge) is False:
        raise TypeError(f"{type(judge).__name__} is not a judge: it needs an `id` and `rank(prompt, candidates)`")
    output_dir = Path(train_config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = online_fingerprint(train_config, online, prompts, judge, model)
    state = resume_state(output_dir, fingerprint)
    if state is None:  # a new run: its fingerprint is recorded before the first round writes anything
        state = {"rounds_done": 0, "summaries": []}
        _write_state(output_dir, 0, [], fingerprint)
    reference = ref_model if ref_model is not None else copy.deepcopy(model).eval()
    initial_reference = reference
    done = state["rounds_done"]
    if done > 0:
        _load_weights(model, output_dir / f"round_{done - 1:03d}" / "policy")
        if online.refresh_reference:
            reference = copy.deepcopy(model).eval()
    soft = train_config.objective == "sppo"
    summaries = list(state.get("summaries", []))
    all_records: list[list[RankedList]] = []

    def round_inputs(round_index):
        round_prompts = _round_prompts(prompts, online.prompts_per_round, round_index)
        return round_prompts, [_encode_prompt(tokenizer, p) for p in round_prompts]

    replayed: list[TokenizedList] = []  # online.replay: the lists of the rounds before this one
    if online.replay:
        for earlier in range(done):
            replayed.extend(saved_round_lists(tokenizer, output_dir / f"round_{earlier:03d}", *round_inputs(earlier),
                                              soft_labels=soft)[1])
    sampler = None  # online.backend == "vllm": made when a round first samples
    for round_index in range(done, online.rounds):
        round_dir = output_dir / f"round_{round_index:03d}"
        round_dir.mkdir(parents=True, exist_ok=True)
        round_prompts, prompt_ids = round_inputs(round_index)
        lists_path = round_dir / "lists.jsonl"
        samples_path = round_dir / "samples.json"
        if samples_path.exists() and lists_path.exists():  # resumed after judging: the same rankings again
            records, lists = saved_round_lists(tokenizer, round_dir, round_prompts, prompt_ids, soft_labels=soft)
        else:
            if samples_path.exists():  # killed between writing the samples and their rankings
                completions = _read_samples(samples_path, len(prompt_ids))
            else:
                generator = torch.Generator(device=next(model.parameters()).device)
                round_seed = int(train_config.seed) * 100_003 + round_index
                generator.manual_seed(round_seed)
                if online.backend == "vllm" and sampler is None:
                    from .vllm_backend import make_vllm_sampler

                    sampler = make_vllm_sampler(model, output_dir / "vllm_policy", **online.vllm_options)
                groups = _sample(model, sampler, tokenizer, prompt_ids, online.k,
                                 max_new_tokens=online.max_new_tokens, temperature=online.temperature,
                                 top_p=online.top_p, generator=generator, seed=round_seed)
                completions = groups.completion_ids
                atomic_write_text(samples_path, json.dumps({"completions": completions}))
            records, lists = judged_lists(tokenizer, judge, round_prompts, prompt_ids, completions,
                                          round_index=round_index, soft_labels=soft)
            if lists:
                write(records, lists_path)
        if not lists and records:
            raise JudgeError(f"round {round_index}: judge {_judge_name(judge)} ranked fewer than two candidates "
                             f"in each of the {len(records)} groups of distinct completions; nothing to train on")
        if not lists:
            raise RankalignError(f"round {round_index}: no prompt had two distinct non-empty completions among its "
                                 f"{online.k} samples; nothing to judge", hint="raise online.temperature, "
                                 "online.max_new_tokens or online.k")
        training = replayed + lists if online.replay else lists
        stages = [training]
        if online.curriculum:
            pairs = curriculum_pairs(training)
            size = math.ceil(len(pairs) / online.curriculum_stages)
            stages = [pairs[i:i + size] for i in range(0, len(pairs), size)]
        history = []
        for stage_index, stage in enumerate(stages):
            stage_dir = round_dir / ("train" if len(stages) == 1 else f"train_stage_{stage_index}")
            # online.rounds may grow between invocations: the round's training (and the fingerprint of its
            # step checkpoints) sees a run of round_index + 1 rounds, whatever the run's length
            config = dataclasses.replace(train_config, output_dir=str(stage_dir), reference_cache_dir=None,
                                         seed=int(train_config.seed) + round_index,
                                         online=dataclasses.replace(train_config.online, rounds=round_index + 1))
            if (stage_dir / "done").exists():
                _load_weights(model, stage_dir / "policy")
                continue
            result = train_preference(model, tokenizer, stage, config, ref_model=reference,
                                      resume_from_checkpoint=True)
            model = result.model
            history.extend(result.history)
            if len(stages) > 1:
                model.save_pretrained(stage_dir / "policy")
                atomic_write_text(stage_dir / "done", "")
        model.save_pretrained(round_dir / "policy")  # safetensors
        losses = [row["loss"] for row in history if "loss" in row]
        rewards = [float(s) for r in records if r.scores is not None for s in r.scores
                   if isinstance(s, (int, float))]
        summary = {"round": round_index, "lists": len(lists), "records": len(records),
                   "mean_judge_score": sum(rewards) / len(rewards) if rewards else None,
                   "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
        summaries.append(summary)
        _write_state(output_dir, round_index + 1, summaries, fingerprint)
        all_records.append(records)
        if callback is not None:
            callback(round_index, model, summary)
        if online.refresh_reference:
            reference = copy.deepcopy(model).eval()
        if online.replay:
            replayed.extend(lists)
    del initial_reference
    return OnlineResult(model=model, rounds=summaries, records=all_records, output_dir=str(output_dir))


# ------------------------------------------------------------------------------ GRPO / RLOO rounds
def group_rewards(tokenizer, judge, prompt, completions, *, where: str = "policy gradient"
                  ) -> tuple[list[float] | None, list[int]]:
    """Judge one group of K sampled completions: ``(rewards or None, dense ranks)`` for all K of them.

    The judge sees each distinct non-empty text once; duplicates share its rank and score; an empty
    completion (EOS at once) ranks below every judged one. Rewards are the judge's numeric scores when
    it gives them (an empty completion gets the lowest score), else None (rank rewards are used). A judge
    that ranks none of them ties them all. ``where`` (``"step 3"``) names the call in a :class:`JudgeError`.
    """
    texts = [_decode(tokenizer, c) for c in completions]
    distinct = list(dict.fromkeys(t for t in texts if t))
    if len(distinct) >= 2:
        record = _ranked(judge, where, _ask(judge, where, "rank", prompt, distinct), distinct)
        dense = record.dense_ranks()
        worst = max((r for r in dense if r is not None), default=-1) + 1
        rank_of = {t: (worst if r is None else r) for t, r in zip(distinct, dense)}
        scores = record.scores
        numeric = scores is not None and all(isinstance(v, (int, float)) for v in scores)
        score_of = {t: float(v) for t, v in zip(distinct, scores)} if numeric else None
    else:  # nothing to compare: every completion ties
        rank_of, score_of, worst = {t: 0 for t in distinct}, None, 1 if distinct else 0
    ranks = [rank_of.get(t, worst) for t in texts]
    if score_of is None:
        return None, ranks
    low = min(score_of.values())
    return [score_of.get(t, low) for t in texts], ranks


def run_policy_gradient(model, tokenizer, prompts: Sequence, judge, *, objective: str = "grpo", steps: int = 10,
                        prompts_per_step: int = 8, k: int = 4, lr: float = 1e-4, beta: float = 0.04,
                        clip_epsilon: float = 0.2, iterations: int = 1, max_new_tokens: int = 64,
                        temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, ref_model=None,
                        max_grad_norm: float = 1.0, callback=None, output_dir: str | Path | None = None,
                        save_steps: int = 10, resume: bool = True, sampler=None) -> list[dict]:
    """GRPO or RLOO: ``steps`` rounds of {sample K per prompt -> judge -> ``iterations`` updates}.

    Each step takes the next ``prompts_per_step`` prompts (cycling), samples K completions each
    (prefilled once), judges them (:func:`group_rewards`: scores, or ranks for a ranking-only judge) and
    makes ``iterations`` AdamW updates on the group (GRPO's mu; with mu > 1 the later updates use the
    clipped ratio against the sampling policy's log-probs). The reference for the KL term is
    ``ref_model`` (default: a frozen copy of ``model`` as given). Returns one metrics dict per step.

    With ``output_dir``, every ``save_steps`` steps (and after the last) the trainable weights, the
    optimiser, the sampling generator, the torch (CPU) RNG and the history go to ``output_dir/checkpoint-N``
    (safetensors and JSON, written atomically, marked complete last, after ``callback``), with a
    fingerprint of the settings, the prompts and the model *as given*, its weights included. Called again
    with the same arguments and the initial model (it is the reference and the starting point; a model
    already trained in place is refused, since its weights differ), the run continues from the newest
    complete checkpoint. On the CPU, with a judge that keeps no random state of its own (a reward model,
    a simulation's gold reward), it then ends where an uninterrupted run ends; a noisy simulated annotator
    draws anew, and on a GPU the CUDA RNG (dropout) is not restored. A checkpoint of other settings,
    prompts or initial weights is refused (:class:`~rankalign.train.checkpoints.ResumeError`);
    ``resume=False`` removes the folder's checkpoints and starts afresh. ``steps`` and ``save_steps`` may
    change between invocations.

    ``sampler``: another generation backend, e.g. :class:`~rankalign.online.vllm_backend.VLLMSampler`
    (its ``sync(model)`` is called before each step's ``sample``; its draws are seeded per step).
    """
    from .._optim import adamw
    from ..train.checkpoints import (
        ResumeError,
        clear_run,
        load_checkpoint,
        precheck,
        run_fingerprint,
        save_checkpoint,
        select_checkpoint,
        weights_digest,
    )
    from .policy_gradient import policy_gradient_step

    if save_steps < 1:
        raise ValueError(f"save_steps must be >= 1, got {save_steps}")
    check_sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, per_round=prompts_per_step,
                   per_round_key="prompts_per_step")
    retained = retain_if_cpu(model)  # no page faults per step on the CPU (engine/cpu_memory.py)
    reference = ref_model if ref_model is not None else copy.deepcopy(model).eval()
    optimizer = adamw(model.parameters(), lr=lr)
    generator = torch.Generator(device=next(model.parameters()).device)
    generator.manual_seed(int(seed))
    history: list[dict] = []
    start = 0
    fingerprint = None
    if output_dir is not None:
        output_dir = Path(output_dir)
        # `steps` and `save_steps` may change between invocations (a run can be extended), nothing else
        settings = {"objective": objective, "prompts_per_step": prompts_per_step, "k": k,
                    "lr": lr, "beta": beta, "clip_epsilon": clip_epsilon, "iterations": iterations,
                    "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
                    "max_grad_norm": max_grad_norm, "judge": getattr(judge, "id", None),
                    "initial_weights": weights_digest(model)}
        fingerprint = run_fingerprint(settings, [{"prompt": p} for p in prompts], model=model)
        if not resume:
            clear_run(output_dir)
        precheck(output_dir, fingerprint)
        checkpoint = select_checkpoint(output_dir, fingerprint)
        if checkpoint is not None:
            state = load_checkpoint(model, checkpoint)
            start = int(state["step"])
            if start > steps:
                raise ResumeError(f"{checkpoint} is at step {start}, beyond steps={steps}",
                                  hint="raise steps, or use another output_dir")
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            try:
                generator.set_state(state["extra"]["generator"])
            except (KeyError, RuntimeError) as error:
                raise ResumeError(f"{checkpoint}: its sampling generator state does not fit a generator on "
                                  f"{generator.device} ({error})",
                                  hint="resume on the device the run started on") from None
            history = list(state["history"])
    if retained:  # Adam's state before the first step, unless resumed (engine/cpu_memory.py)
        preallocate_optimizer_state(optimizer)
    for step in range(start, steps):
        step_prompts = _round_prompts(prompts, prompts_per_step, step)
        prompt_ids = [_encode_prompt(tokenizer, p) for p in step_prompts]
        groups = _sample(model, sampler, tokenizer, prompt_ids, k, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p, generator=generator, seed=seed * 100_003 + step)
        judged = [group_rewards(tokenizer, judge, p, c, where=f"step {step}")
                  for p, c in zip(step_prompts, groups.completion_ids)]
        if all(r is not None for r, _ in judged):
            signal = {"rewards": [r for r, _ in judged]}
        else:
            signal = {"ranks": [ranks for _, ranks in judged]}
        metrics = policy_gradient_step(model, optimizer, groups, objective=objective, ref_model=reference, beta=beta,
                                       clip_epsilon=clip_epsilon, iterations=iterations,
                                       max_grad_norm=max_grad_norm, pad_token_id=tokenizer.pad_token_id or 0,
                                       **signal)
        metrics["step"] = step
        history.append(metrics)
        if callback is not None:
            callback(step, model, metrics)
        if output_dir is not None and ((step + 1) % save_steps == 0 or step + 1 == steps):
            save_checkpoint(model, output_dir, step + 1, {"optimizer": optimizer, "history": history}, fingerprint,
                            extra_tensors={"generator": generator.get_state()})
    model.eval()
    return history


__all__ = ["Judge", "JudgeError", "OnlineConfig", "check_online", "check_sampling", "online_fingerprint",
           "resume_state", "group_rewards", "run_policy_gradient", "OnlineResult", "run_online", "judged_lists", "win_probabilities",
           "curriculum_pairs", "STATE_FILE"]
