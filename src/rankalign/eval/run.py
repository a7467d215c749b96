"""Evaluate a trained policy on any preference file: :func:`evaluate_policy`, the API ``rankalign eval`` calls.

The policy (and the optional reference) is any model spec of :func:`rankalign.engine.resolve_model`,
safetensors only unless allowed, loaded with ``trust_remote_code=False``; :func:`load_run` rebuilds both
from a training run folder (its ``run_source.json``). Records are read with
:func:`rankalign.data.read`, tokenized with :func:`rankalign.engine.tokenize_records`, packed with
:func:`rankalign.engine.pack_lists` and scored with :func:`rankalign.engine.score_lists` (the engine's one list-scoring path); the metrics
are :func:`rankalign.eval.policy.evaluate_logps`. torch and transformers are imported only when called.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import RankalignError
from .policy import evaluate_logps, pair_rates_from_shares
from .report import EvalReport


class EvalError(RankalignError, ValueError):
    """An evaluation that cannot run as asked (bad data, a model that does not load); one-line message.

    A :class:`~rankalign.errors.RankalignError`, so the CLI prints it as ``error: ... (hint: ...)``.
    """


# ------------------------------------------------------------------------------------ preference rates
def _share_of(score, field: str):
    if score is None:
        return math.nan
    if isinstance(score, Mapping):
        return float(score[field]) if field in score else math.nan
    return float(score) if field == "scores" else math.nan


def alpha_from_records(records: Sequence, lists: Sequence, field: str) -> np.ndarray:
    """``[N, K, K]`` preference rates for the tokenized ``lists`` from a field of their records.

    Looked up, per record, in this order:

    * ``meta[field]``: one number in [0, 1], the rate at which a better-ranked candidate is preferred to a
      worse-ranked one (for a pair: the rate of chosen over rejected), applied to every ordered pair;
    * ``scores``: per-candidate preference shares, ``scores[i][field]`` for attribute mappings, or the
      plain float scores when ``field == "scores"``; pairs get ``s_i / (s_i + s_j)``
      (:func:`~rankalign.eval.policy.pair_rates_from_shares`).

    Records with neither get NaN (unknown). A value outside [0, 1] in ``meta`` raises a ValueError naming
    the record.
    """
    k = max((len(item.ranks) for item in lists), default=0)
    rates = np.full((len(lists), k, k), np.nan)
    for row, item in enumerate(lists):
        record = records[item.index]
        kept = [i for i, r in enumerate(record.ranks) if r is not None]  # tokenize_records keeps this order
        value = record.meta.get(field) if record.meta else None
        if value is not None:
            rate = float(value)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"record {item.index}: meta field {field!r} = {value!r} is not a preference "
                                 "rate in [0, 1]")
            ranks = np.asarray(item.ranks)
            better = ranks[:, None] < ranks[None, :]
            block = np.where(better, rate, np.where(better.T, 1.0 - rate, np.nan))
            rates[row, :len(kept), :len(kept)] = block
        elif record.scores is not None:
            shares = np.array([[_share_of(record.scores[i], field) for i in kept]])
            if np.isfinite(shares).any():
                rates[row, :len(kept), :len(kept)] = pair_rates_from_shares(shares)[0]
    return rates


def group_of(record, group_by: str) -> str:
    """The group of a record for ``--group-by``: its annotator, or ``meta[group_by]`` ("(none)" if absent)."""
    value = record.annotator if group_by == "annotator" else (record.meta or {}).get(group_by)
    return "(none)" if value is None else str(value)


# -------------------------------------------------------------------------------------------- models
def load_causal_lm(spec: str, device: str, *, allow_bin: bool = False):
    """The causal LM named by ``spec`` (any :func:`rankalign.engine.resolve_model` spec: folder, .gguf,
    fetched name, HF-cache id), safetensors only unless ``allow_bin``, no remote code, float32, in eval mode
    on ``device``."""
    from ..engine.sources import load_causal_lm as load_source

    return load_source(spec, allow_bin=allow_bin).to(device).eval()


def _run_source_problem(record) -> str | None:
    """What is wrong with a parsed ``run_source.json`` (None: it has what :func:`load_run` reads)."""
    import math

    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for key, kinds in (("model", str), ("tokenizer", str), ("policy", dict), ("reference", dict), ("seed", int)):
        if not isinstance(record.get(key), kinds) or isinstance(record.get(key), bool):
            return f"field {key!r}: expected {kinds.__name__}, got {record.get(key)!r}"[:200]
    policy, reference = record["policy"], record["reference"]
    if not isinstance(policy.get("folder"), str) or not isinstance(policy.get("adapter"), bool):
        return "field 'policy': expected {\"folder\": str, \"adapter\": bool}"
    if reference.get("kind") not in ("adapter_disabled", "initial_model", "model") \
            or not isinstance(reference.get("spec"), str):
        return ("field 'reference': expected a kind (adapter_disabled, initial_model or model) and a spec, got "
                f"{reference!r}")[:200]
    beta = record.get("beta", 0.1)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (math.isfinite(beta) and beta > 0):
        return f"field 'beta': expected a number > 0, got {beta!r}"
    for key in ("max_prompt_tokens", "max_response_tokens"):
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            return f"field {key!r}: expected a whole number >= 1 or null, got {value!r}"
    if not isinstance(record.get("tiny_model") or {}, dict):
        return f"field 'tiny_model': expected an object, got {record['tiny_model']!r}"
    return None


def read_run_source(path) -> dict:
    """``run_source.json`` of a run folder, checked; an :class:`EvalError` naming the file otherwise."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise EvalError(f"{path}: not valid JSON ({error})") from None
    problem = _run_source_problem(record)
    if problem:
        raise EvalError(f"{path}: {problem}; it is not what `rankalign train` writes")
    return record


def load_run(run_dir: str, device: str):
    """(policy, reference context, run record) of a ``rankalign train`` output folder.

    The folder's ``run_source.json`` names the model spec and the reference. Under LoRA the policy is the
    base model with the saved adapter and the reference is the same model with the adapter disabled, so one
    copy of the weights serves both; ``reference()`` returns a context manager that yields the reference.
    """
    import contextlib
    from pathlib import Path

    from ..engine import adapter_disabled
    from ..engine.sources import load_causal_lm as load_source
    from ..train.run import RUN_SOURCE_FILE

    run = Path(run_dir)
    record_path = run / RUN_SOURCE_FILE
    if not record_path.is_file():
        raise EvalError(f"{run}: no {RUN_SOURCE_FILE}; is it a `rankalign train` output folder "
                                   "(written by this version)?")
    record = read_run_source(record_path)
    final = run / record["policy"]["folder"]
    if not final.is_dir():
        raise EvalError(f"{run}: no {final.name}/ folder: the run has not finished")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(run / record["tokenizer"]), trust_remote_code=False,
                                              local_files_only=True)
    allow_bin = bool(record.get("allow_bin"))

    def base():
        from ..engine.sources import ModelNotFound, UnreadableModel

        try:
            return load_source(record["model"], allow_bin=allow_bin, vocab_size=len(tokenizer), seed=record["seed"],
                               tiny_options=record.get("tiny_model"))
        except (ModelNotFound, UnreadableModel, PermissionError) as error:
            raise EvalError(f"{record_path}: the run's model {record['model']!r} cannot be loaded: {error}") from None

    if record["policy"]["adapter"]:
        from peft import PeftModel

        from rankalign.train.config import peft_quietly

        with peft_quietly():
            policy = PeftModel.from_pretrained(base(), str(final)).to(device).eval()
    else:
        policy = load_source(str(final), allow_bin=allow_bin).to(device).eval()
    kind = record["reference"]["kind"]
    if kind == "adapter_disabled":
        def reference():
            return adapter_disabled(policy)
    else:
        spec = record["reference"]["spec"]

        @contextlib.contextmanager
        def reference():
            model = (base() if kind == "initial_model" else load_source(spec, allow_bin=allow_bin)).to(device).eval()
            yield model
            del model
    return policy, reference, record, tokenizer


def greedy_generations(model, tokenizer, prompts, *, max_new_tokens: int = 48) -> list[str]:
    """Greedy continuations of ``prompts`` (text, or chat messages through the tokenizer's template)."""
    import torch

    device = next(model.parameters()).device
    texts = []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        else:
            ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"]
        ids = ids.to(device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        texts.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return texts


def _ranks_and_lengths(lists) -> tuple[np.ndarray, np.ndarray]:
    """``[N, K]`` ranks (-1 padding) and response token counts (0 padding) of the tokenized lists."""
    k = max(item.k for item in lists)
    ranks = np.full((len(lists), k), -1, dtype=np.int64)
    lengths = np.zeros((len(lists), k))
    for row, item in enumerate(lists):
        ranks[row, :item.k] = item.ranks
        lengths[row, :item.k] = [len(response) for response in item.response_ids]
    return ranks, lengths


# ----------------------------------------------------------------------------------------------- report
def report_of(result: dict) -> EvalReport:
    report = EvalReport(title=f"rankalign eval: {result['model']} on {result['data']}")
    rows = [
        ("ranking accuracy", result.get("ranking_accuracy"), "π(y_w) > π(y_l)"),
        ("ranking accuracy, per token", result.get("length_normalised_ranking_accuracy"),
         "log π(y_w)/|y_w| > log π(y_l)/|y_l|"),
        ("ranking accuracy, reference", result.get("reference_ranking_accuracy"), "π_ref(y_w) > π_ref(y_l)"),
        ("idealised ranking accuracy", result.get("idealised_ranking_accuracy"),
         f"DPO optimum, β={result['beta']:g}, pairs with known α"),
        ("ranking accuracy, same pairs", result.get("ranking_accuracy_on_alpha_pairs"), "policy, pairs with known α"),
        ("alignment gap", result.get("alignment_gap"), "idealised − actual"),
        ("implicit reward accuracy", result.get("reward_accuracy"), "β·ρ_w > β·ρ_l"),
        ("implicit reward margin", result.get("margin"), "mean β·(ρ_w − ρ_l)"),
        ("ECE of σ(β·h)", result.get("ece"), "vs labels (α where known)"),
    ]
    displacement = result.get("likelihood_displacement") or {}
    for side in ("chosen", "rejected"):
        if side in displacement:
            d = displacement[side]
            rows.append((f"Δ log π({side}) vs π_ref", (d["mean_change"], d["se"]),
                         f"{d['share_decreased']:.0%} of pairs decreased"))
    if not result.get("pairs_with_alpha"):
        rows = [row for row in rows if row[0] not in ("idealised ranking accuracy", "ranking accuracy, same pairs",
                                                      "alignment gap")]
    for name, value, note in rows:
        if value is not None:
            report.add_row(metric=name, value=value, note=note)
    grouped = (result.get("groups") or {}).get("ranking_accuracy")
    if grouped:
        for group, summary in grouped["groups"].items():
            report.add_row(metric=f"ranking accuracy, {result['group_by']}={group}",
                           value=(summary["mean"], summary["se"]), note=f"{summary['n']} pairs")
        if grouped["worst_group"] is not None:
            report.add_row(metric="worst group", value=str(grouped["worst_group"]),
                           note=f"ranking accuracy {grouped['worst_value']:.3f}")
    report.notes.append(f"{result['pairs']} ordered pairs from {result['lists_with_pairs']} lists "
                        f"({result['records_read']} records read); ± is one standard error (lists as units)")
    if result.get("reference") is not None and not result.get("pairs_with_alpha"):
        report.notes.append("idealised ranking accuracy needs true preference rates: --alpha-field FIELD or --alpha")
    truncation = result.get("truncation") or {}
    if truncation.get("prompts_truncated") or truncation.get("responses_truncated"):
        report.notes.append(f"truncated: {truncation['prompts_truncated']} prompts (left), "
                            f"{truncation['responses_truncated']} responses (right)")
    if result.get("records_with_weight"):
        report.notes.append(f"{result['records_with_weight']} records carry a weight other than 1 (e.g. a count); "
                            "weights are not applied: every record counts once")
    if result.get("skipped"):
        report.notes.append("skipped: " + ", ".join(f"{k} {v}" for k, v in result["skipped"].items()))
    return report



# --------------------------------------------------------------------------------------------------- api
def evaluate_policy(policy: str | None, data, *, reference: str | None = None, run_dir: str | None = None,
                    tokenizer: str | None = None, allow_bin: bool = False, beta: float | None = None,
                    alpha_field: str | None = None, alpha: float | None = None, read_options: Mapping | None = None,
                    max_records: int | None = None, rank_by: str | None = None, batch_size: int = 8,
                    max_prompt_tokens: int | None = None, max_response_tokens: int | None = None,
                    device: str = "auto", precision: str = "auto", n_bins: int = 10, group_by: str | None = None,
                    cache_dir: str | None = None, generations: int = 0, progress: bool | None = None) -> dict:
    """Every metric of a policy on the preference file ``data``; returns the result dict ``--json`` prints.

    Parameters
    ----------
    policy, reference : str
        Model specs (:func:`rankalign.engine.resolve_model`: a folder, a .gguf file, a fetched name, an
        HF-cache id). The reference enables implicit-reward margins, calibration and the idealised
        ranking accuracy.
    run_dir : str
        Instead of ``policy``/``reference``/``tokenizer``: a ``rankalign train`` output folder; its
        ``run_source.json`` names the policy, the reference, beta and the token limits (:func:`load_run`).
    data : path
        Any file :func:`rankalign.data.read` reads; ``read_options`` are its keyword arguments (layout,
        mapping, outcomes, skip_invalid, format); ``max_records`` keeps the first N records;
        ``rank_by`` re-ranks rated lists (:func:`rankalign.data.summary.rank_by`).
    beta : float
        The KL coefficient the policy was trained with (scales the implicit reward); default 0.1, or the run's.
    alpha_field, alpha : optional
        True preference rates, per record (:func:`alpha_from_records`) or one constant.
    generations : int
        Greedy generations of the policy (and reference) for the first N prompts.
    precision : {"auto", "fp32", "bf16"}
        auto: bfloat16 autocast on a CUDA device that supports it, float32 on the CPU.

    Raises
    ------
    EvalError
        With a one-line message naming the file or model.
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if run_dir is not None and (policy or reference or tokenizer):
        raise EvalError("a run names the policy, reference and tokenizer; drop policy/reference/tokenizer")
    if run_dir is None and not policy:
        raise EvalError("give a policy (a model spec) or a run (a training output folder)")
    run_record = None
    if run_dir is not None:
        from ..train.run import RUN_SOURCE_FILE

        if not (Path(run_dir) / RUN_SOURCE_FILE).is_file():
            raise EvalError(f"{run_dir}: no {RUN_SOURCE_FILE}; is it a `rankalign train` output folder?")
        run_record = read_run_source(Path(run_dir) / RUN_SOURCE_FILE)
        beta = run_record.get("beta", 0.1) if beta is None else beta
        max_prompt_tokens = max_prompt_tokens or run_record.get("max_prompt_tokens")
        max_response_tokens = max_response_tokens or run_record.get("max_response_tokens")
        policy = f"{run_dir} (policy)"
        reference = f"{run_dir} ({run_record['reference']['kind']}: {run_record['reference']['spec']})"
    beta = 0.1 if beta is None else beta
    if not beta > 0:
        raise EvalError(f"beta must be > 0, got {beta}")
    if alpha_field and alpha is not None:
        raise EvalError("give alpha_field or alpha, not both")
    if alpha is not None and reference is None:
        raise EvalError("alpha needs a reference (the idealised accuracy is defined by pi_ref)")
    started = time.perf_counter()

    from ..data.errors import DataError
    from ..data.readers import read
    from ..data.records import RankedList
    from ..data.summary import rank_by as rank_records

    try:
        read_result = read(data, **dict(read_options or {}))
        records = list(rank_records(read_result.records, rank_by))
    except DataError as error:
        raise EvalError(str(error), hint=error.hint) from None
    skipped = Counter(dict(read_result.report.skipped))
    if max_records is not None:
        records = records[:max_records]
    ranked = [r for r in records if isinstance(r, RankedList)]
    if len(ranked) < len(records):
        skipped["judgment_unpaired"] += len(records) - len(ranked)

    import torch
    import transformers
    from transformers import AutoTokenizer

    from ..engine import tokenize_records
    from ..engine.sources import ModelNotFound, resolve_path

    transformers.utils.logging.disable_progress_bar()  # one progress style: ours (rich), not "Loading weights"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    policy_model = reference_context = None
    try:
        if run_record is not None:
            policy_model, reference_context, _, tokenizer_object = load_run(run_dir, device)
        else:
            tokenizer_folder = tokenizer if tokenizer and os.path.isdir(tokenizer) else \
                resolve_path(tokenizer or policy, allow_bin=True)
            tokenizer_object = AutoTokenizer.from_pretrained(tokenizer_folder, trust_remote_code=False,
                                                             local_files_only=True)
    except (OSError, ValueError) as error:
        if isinstance(error, ModelNotFound | PermissionError):
            raise EvalError(str(error), hint=getattr(error, "hint", None)) from None
        raise EvalError(f"cannot load a tokenizer from {tokenizer or policy}: {error}") from None
    try:
        lists, truncation = tokenize_records(tokenizer_object, ranked, max_prompt_tokens=max_prompt_tokens,
                                             max_response_tokens=max_response_tokens, on_empty="drop")
    except (DataError, ValueError) as error:
        raise EvalError(f"{data}: {error}") from None
    skipped.update(truncation.rows_dropped)
    if not lists:
        raise EvalError(f"{data}: no ranked list left to evaluate")

    pad_token_id = tokenizer_object.pad_token_id if tokenizer_object.pad_token_id is not None else 0
    quiet = not sys.stderr.isatty() if progress is None else not progress
    from ..engine import score_lists

    def scores(model, label, **cache):
        """``[N, K]`` summed response log-probs (0 at padding) through the engine's one scoring path."""
        padded, _ = score_lists(model, lists, batch_size=batch_size, pad_token_id=pad_token_id, precision=precision,
                                progress=not quiet, description=label, **cache).padded()
        return padded.numpy()

    generated = {}
    prompts = [ranked[item.index].prompt for item in lists[:generations]]
    try:
        model = policy_model if policy_model is not None else load_causal_lm(policy, device, allow_bin=allow_bin)
        policy_logps = scores(model, "policy")
        if prompts:
            generated["policy"] = greedy_generations(model, tokenizer_object, prompts)
        if reference_context is None:
            del model
        ref_logps = None
        if reference_context is not None:
            with reference_context() as reference_model:
                ref_logps = scores(reference_model, "reference")
                if prompts:
                    generated["reference"] = greedy_generations(reference_model, tokenizer_object, prompts)
        elif reference is not None:
            reference_model = load_causal_lm(reference, device, allow_bin=allow_bin)
            if prompts:
                generated["reference"] = greedy_generations(reference_model, tokenizer_object, prompts)
            cache = {}
            if cache_dir:
                cache = {"cache_dir": cache_dir, "tokenizer": tokenizer_object,
                         "settings": {"max_prompt_tokens": max_prompt_tokens,
                                      "max_response_tokens": max_response_tokens}}
            ref_logps = scores(reference_model, "reference", **cache)
            del reference_model
    except (ModelNotFound, PermissionError) as error:
        raise EvalError(str(error), hint=getattr(error, "hint", None)) from None
    except (OSError, ValueError) as error:
        raise EvalError(f"cannot evaluate with the model at {policy}"
                        f"{'' if reference is None else ' / ' + str(reference)}: {error}") from None

    alpha_values = alpha
    if alpha_field:
        try:
            alpha_values = alpha_from_records(ranked, lists, alpha_field)
        except ValueError as error:
            raise EvalError(f"{data}: {error}") from None
    groups = None
    if group_by:
        groups = [group_of(ranked[item.index], group_by) for item in lists]
    result = {"model": str(policy), "reference": None if reference is None else str(reference), "data": str(data),
              "records_read": len(records), "layout": read_result.layout, "group_by": group_by}
    ranks, lengths = _ranks_and_lengths(lists)
    result.update(evaluate_logps(policy_logps, ranks, ref_logps=ref_logps, alpha=alpha_values, beta=beta,
                                 n_bins=n_bins, groups=groups, lengths=lengths))
    result["alpha_source"] = (f"field {alpha_field}" if alpha_field else
                              f"constant {alpha}" if alpha is not None else None)
    result["records_with_weight"] = sum(1 for item in lists if item.weight != 1.0)
    result["skipped"] = dict(sorted(skipped.items()))
    result["truncation"] = truncation.to_dict()
    result["device"] = device
    if generated:
        result["generations"] = [{"prompt": prompt, **{side: texts[i] for side, texts in generated.items()}}
                                 for i, prompt in enumerate(prompts)]
    result["seconds"] = time.perf_counter() - started
    return result
