"""From a :class:`~rankalign.train.config.TrainConfig` to a trained model: load, tokenize, train, save.

Used by ``rankalign train``; scripts can call :func:`run_config` directly.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import TrainConfig, save_config


def read_records(config: TrainConfig, *, with_report: bool = False):
    """The training records of ``config.data``, read by :func:`rankalign.data.read` (which knows the layouts)."""
    from rankalign.data import read

    if not config.data:
        raise ValueError("the config has no `data` file")
    result = read(config.data, **config.data_options)
    records = list(result.records)
    if config.max_records > 0:
        records = records[: config.max_records]
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
    """The configured tokenizer: a local directory, the model's own, or ``"train"`` (BPE on the data)."""
    from transformers import AutoTokenizer

    if config.tokenizer == "train" or (config.tokenizer is None and config.model.startswith("tiny:")):
        from rankalign.engine import build_tokenizer

        return build_tokenizer(_record_texts(records), vocab_size=config.tokenizer_vocab_size)
    source = config.tokenizer or config.model
    return AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=True)


def load_model(spec: str, tokenizer, config: TrainConfig):
    """``tiny:<arch>`` builds a small model from a config; anything else is a local directory."""
    if spec.startswith("tiny:"):
        from rankalign.engine import tiny_causal_lm

        arch = spec.split(":", 1)[1] or "llama"
        return tiny_causal_lm(len(tokenizer), arch=arch, seed=config.seed, **config.tiny_model)
    from transformers import AutoModelForCausalLM

    if not os.path.isdir(spec):
        raise FileNotFoundError(f"model {spec!r}: not a local directory and not a tiny:<arch> spec "
                                "(nothing is downloaded)")
    return AutoModelForCausalLM.from_pretrained(spec, trust_remote_code=False, local_files_only=True)


# keys that may change between a run and its resumption (how long, how often, how it is shown)
RESUME_MAY_CHANGE = {"progress", "resume", "report_to", "logging_steps", "save_steps", "save_total_limit",
                     "max_steps", "epochs"}


def check_resumable(config: TrainConfig) -> None:
    """Refuse to resume a checkpoint written under a different config (it would mix two runs silently)."""
    import yaml

    from .callbacks import last_complete_checkpoint
    from .config import ConfigError, config_to_dict

    saved_path = Path(config.output_dir) / "train_config.yaml"
    if last_complete_checkpoint(config.output_dir) is None or not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = config_to_dict(config)
    changed = sorted(k for k in current if k not in RESUME_MAY_CHANGE and saved.get(k) != current[k])
    if changed:
        raise ConfigError(f"{config.output_dir} holds a checkpoint of a run with a different config "
                          f"({', '.join(changed)} changed); use another output_dir or --no-resume")


REFERENCE_RECORD = "reference.json"  # read by rankalign.eval.run.resolve_run


def record_reference(config: TrainConfig, model, tokenizer) -> Path:
    """Write ``output_dir/reference.json`` naming the reference the policy is trained against, so that
    ``rankalign eval --run OUTPUT_DIR`` finds it: ``reference_model`` when the config names one, else the
    starting model (DPO's pi_ref = the policy before training; with LoRA, the base model). A local model
    folder is recorded by its path; a ``tiny:`` model, built in memory, is saved once to
    ``output_dir/reference/`` (safetensors) before training changes it."""
    from rankalign._atomic import atomic_write_json

    output_dir = Path(config.output_dir)
    source = config.reference_model or config.model
    kind = "reference_model" if config.reference_model else (
        "base model (adapter disabled)" if config.peft.enabled else "policy before training")
    if not source.startswith("tiny:"):
        path = str(Path(source).resolve())
    else:
        path = "reference"
        folder = output_dir / path
        if not (folder / "config.json").is_file():
            import shutil
            import tempfile

            output_dir.mkdir(parents=True, exist_ok=True)
            temporary = Path(tempfile.mkdtemp(prefix=".reference.", dir=output_dir))
            try:
                model.save_pretrained(temporary)  # safetensors
                tokenizer.save_pretrained(temporary)
                if folder.exists():
                    shutil.rmtree(folder)
                os.replace(temporary, folder)
            finally:
                if temporary.exists():
                    shutil.rmtree(temporary)
    return atomic_write_json(output_dir / REFERENCE_RECORD, {"path": path, "kind": kind, "source": source})


def run_config(config: TrainConfig, *, resume: bool | None = None, on_start=None):
    """Train as ``config`` says; save the final model, tokenizer and resolved config in ``output_dir``.

    The data are read and tokenized first; ``on_start(data_report, truncation_report)`` is called with
    both before the model trains (``rankalign train`` prints them there). The reference is recorded in
    ``output_dir/reference.json`` (:func:`record_reference`).
    """
    from .data import tokenize_training_data
    from .trainer import train_preference

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()  # no "Writing model shards" bars beside the training bar
    transformers.set_seed(config.seed)
    records, data_report = read_records(config, with_report=True)
    tokenizer = load_tokenizer(config, records)
    lists, truncation = tokenize_training_data(tokenizer, records, config)
    if on_start is not None:
        on_start(data_report, truncation)
    model = load_model(config.model, tokenizer, config)
    ref_model = load_model(config.reference_model, tokenizer, config) if config.reference_model else None
    output_dir = Path(config.output_dir)
    resume = config.resume if resume is None else resume
    main_process = int(os.environ.get("RANK", "0")) == 0  # under accelerate/torchrun only rank 0 writes files
    if resume:
        check_resumable(config)
    if main_process:
        save_config(config, output_dir)
        record_reference(config, model, tokenizer)
    result = train_preference(model, tokenizer, lists, config, ref_model=ref_model,
                              resume_from_checkpoint=True if resume else None)
    result.data_report = data_report
    result.truncation = truncation
    if main_process:
        final_dir = output_dir / "final"
        result.model.save_pretrained(final_dir)  # safetensors
        tokenizer.save_pretrained(final_dir)
        save_config(config, final_dir)
    return result
