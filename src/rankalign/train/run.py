"""From a :class:`~rankalign.train.config.TrainConfig` to a trained model: load, tokenize, train, save.

Used by ``rankalign train``; scripts can call :func:`run_config` directly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import ConfigError, TrainConfig, check_config, save_config


def read_records(config: TrainConfig, *, with_report: bool = False, cap: bool = True):
    """The training records of ``config.data``, read by :func:`rankalign.data.read` (which knows the layouts),
    the first ``max_records`` of them when ``cap``."""
    from rankalign.data import read


    if not config.data:
        raise ConfigError("the config has no `data` file", hint="set data: PATH in the YAML or --set data=PATH")
    if not os.path.exists(config.data):
        raise ConfigError(f"data: no such file or folder: {config.data}",
                          hint="relative paths are read from the working directory or the config file's folder")
    result = read(config.data, **config.data_options)
    records = list(result.records)
    if cap and config.max_records > 0:
        records = records[: config.max_records]
    if config.weight_by_reliability:
        from rankalign.stats.annotators import weight_by_reliability

        records = weight_by_reliability(records)
    return (records, result.report) if with_report else records


def _record_texts(records) -> list[str]:
    texts = []

    def add(value):
        if value is None:
            return
        if isinstance(value, str):
            texts.append(value)
        else:
            texts.extend(m["content"] for m in value)

    for record in records:
        add(record.prompt)
        for candidate in getattr(record, "candidates", None) or [getattr(record, "response", None)]:
            add(candidate)
    return texts


def load_tokenizer(config: TrainConfig, records):
    """The configured tokenizer: the model's own, a model spec's or folder's (``tokenizer``), or ``"train"``
    (BPE on the data). Specs resolve through :func:`rankalign.engine.resolve_model`."""
    if config.tokenizer == "train" or (config.tokenizer is None and config.model.startswith("tiny:")):
        from rankalign.engine import build_tokenizer

        return build_tokenizer(_record_texts(records), vocab_size=config.tokenizer_vocab_size)
    from rankalign.engine.sources import load_tokenizer as load_model_tokenizer

    return load_model_tokenizer(config.tokenizer or config.model, trust_remote_code=config.trust_remote_code)


def load_model(spec: str, tokenizer, config: TrainConfig):
    """The causal LM named by ``spec`` (any :func:`rankalign.engine.resolve_model` spec; ``tiny:<arch>``
    is built for ``tokenizer``'s vocabulary with ``config.tiny_model`` and ``config.seed``)."""
    from rankalign.engine.sources import load_causal_lm

    return load_causal_lm(spec, allow_bin=config.allow_bin, trust_remote_code=config.trust_remote_code,
                          vocab_size=len(tokenizer), seed=config.seed, tiny_options=config.tiny_model)


def _prompt_key(prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def split_by_prompt(records, share: float, seed: int) -> tuple[list, list]:
    """(train, held-out): the records of a random ``share`` of the distinct prompts are held out.

    Records with the same prompt stay on the same side, so no held-out prompt is seen in training.
    The draw is a seeded shuffle of the distinct prompts (in order of first appearance); at least one
    prompt is held out when ``share > 0``.
    """
    import random

    order = list(dict.fromkeys(_prompt_key(record.prompt) for record in records))
    if share <= 0 or not order:
        return list(records), []
    n_heldout = min(len(order) - 1, max(1, round(share * len(order))))
    random.Random(seed).shuffle(order)
    heldout = set(order[:n_heldout])
    train = [r for r in records if _prompt_key(r.prompt) not in heldout]
    test = [r for r in records if _prompt_key(r.prompt) in heldout]
    return train, test


def write_run_source(config: TrainConfig, output_dir: Path, *, heldout: bool) -> Path:
    """Record in ``output_dir/run_source.json`` what ``rankalign eval --run`` needs to rebuild the policy
    and its reference without naming models again: the model spec and where it resolved, the reference
    (the adapter-disabled base under LoRA, the initial model otherwise, or ``reference_model``), the
    tokenizer, beta and token limits."""
    from rankalign._atomic import atomic_write_json
    from rankalign.engine.sources import resolve_model

    def where(spec):
        return None if spec is None else resolve_model(spec, allow_bin=config.allow_bin).to_dict()

    if config.reference_model:
        reference = {"kind": "model", "spec": config.reference_model, "source": where(config.reference_model)}
    elif config.peft.enabled:
        reference = {"kind": "adapter_disabled", "spec": config.model}
    else:
        reference = {"kind": "initial_model", "spec": config.model}
    record = {"model": config.model, "source": where(config.model), "reference": reference,
              "policy": {"folder": "final", "adapter": bool(config.peft.enabled)},
              "tokenizer": "final", "beta": float(config.loss_params.get("beta", 0.1)),
              "max_prompt_tokens": config.max_prompt_tokens, "max_response_tokens": config.max_response_tokens,
              "seed": config.seed, "tiny_model": config.tiny_model, "allow_bin": config.allow_bin,
              "heldout": "split/heldout.jsonl" if heldout else None}
    return atomic_write_json(output_dir / RUN_SOURCE_FILE, record)


RUN_SOURCE_FILE = "run_source.json"


def run_config(config: TrainConfig, *, resume: bool | None = None, on_start=None):
    """Train as ``config`` says; save the final model, tokenizer and resolved config in ``output_dir``.

    The data are read and tokenized first; ``on_start(data_report, truncation_report)`` is called with
    both before the model trains (``rankalign train`` prints them there). What ``rankalign eval --run``
    needs is recorded in ``output_dir/run_source.json`` (:func:`write_run_source`).
    """
    import warnings

    from rankalign._atomic import writing
    from rankalign.errors import RankalignWarning

    from .checkpoints import clear_run, finished_note, finished_run, mark_finished, precheck, run_fingerprint
    from .config import config_to_dict
    from .data import tokenize_training_data
    from .trainer import TrainResult, train_preference

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    check_config(config)  # a config built in Python is checked as a loaded one, before anything is read
    # before the slow imports: bad data fails fast. With a held-out split, the split is drawn on the whole
    # file and max_records caps the training side: the held-out set does not depend on the training budget
    records, data_report = read_records(config, with_report=True, cap=config.eval_split <= 0)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # no "Writing model shards" bars beside the training bar
    transformers.set_seed(config.seed)
    output_dir = Path(config.output_dir)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under accelerate/torchrun only rank 0 writes files
    heldout = []
    if config.eval_split > 0:
        from rankalign.data import write

        records, heldout = split_by_prompt(records, config.eval_split, config.eval_split_seed)
        if config.max_records > 0:
            records = records[: config.max_records]
        if main_process:
            write(records, output_dir / "split" / "train.jsonl")
            write(heldout, output_dir / "split" / "heldout.jsonl")
    resume = config.resume if resume is None else resume
    # what proves a checkpoint belongs to this run; the model part is completed by train_preference
    settings = config_to_dict(config)
    if resume:
        # a finished run says so (no model is loaded); a foreign or unprovable checkpoint is refused here,
        # before anything slow, and again by train_preference with the model's part of the fingerprint
        early = run_fingerprint(settings, records, None, config.model)
        note = finished_note(output_dir, early, config.max_steps, config.epochs)
        if note is not None:
            return TrainResult(history=[], model=None, wall_time=0.0, tokens_per_second=0.0,
                               output_dir=str(output_dir), global_step=finished_run(output_dir)["global_step"],
                               data_report=data_report, note=note)
        precheck(output_dir, early)
    elif main_process:
        removed = clear_run(output_dir)
        folders = [path for path in removed if path.name.startswith("checkpoint-")]
        if folders:
            warnings.warn(f"--no-resume: removed {len(folders)} checkpoint(s) of the earlier run in {output_dir} "
                          "so they cannot be mixed with this one", RankalignWarning, stacklevel=2)
    tokenizer = load_tokenizer(config, records)
    lists, truncation = tokenize_training_data(tokenizer, records, config)
    model = load_model(config.model, tokenizer, config)
    ref_model = load_model(config.reference_model, tokenizer, config) if config.reference_model else None
    if on_start is not None:  # data and truncation summary, once the models load, before the first step
        on_start(data_report, truncation)
    if main_process:
        save_config(config, output_dir)
        write_run_source(config, output_dir, heldout=bool(heldout))
    final_dir = output_dir / "final"
    result = train_preference(model, tokenizer, records, config, ref_model=ref_model,
                              resume_from_checkpoint=True if resume else None, tokenized=(lists, truncation),
                              final_dir=final_dir)
    result.data_report = data_report
    result.truncation = truncation
    if main_process:
        with writing(final_dir):  # a full disk names the folder instead of "basic_ios::clear"
            tokenizer.save_pretrained(final_dir)
        save_config(config, final_dir)
        mark_finished(final_dir, global_step=result.global_step, max_steps=config.max_steps, epochs=config.epochs,
                      fingerprint=run_fingerprint(settings, records, None, config.model))
    return result
