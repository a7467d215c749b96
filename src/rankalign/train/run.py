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

    from .config import ConfigError, config_to_dict
    from .trainer import last_complete_checkpoint

    saved_path = Path(config.output_dir) / "train_config.yaml"
    if last_complete_checkpoint(config.output_dir) is None or not saved_path.exists():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = config_to_dict(config)
    changed = sorted(k for k in current if k not in RESUME_MAY_CHANGE and saved.get(k) != current[k])
    if changed:
        raise ConfigError(f"{config.output_dir} holds a checkpoint of a run with a different config "
                          f"({', '.join(changed)} changed); use another output_dir or --no-resume")


def run_config(config: TrainConfig, *, resume: bool | None = None):
    """Train as ``config`` says; save the final model, tokenizer and resolved config in ``output_dir``."""
    from .trainer import train_preference

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.set_seed(config.seed)
    records, data_report = read_records(config, with_report=True)
    tokenizer = load_tokenizer(config, records)
    model = load_model(config.model, tokenizer, config)
    ref_model = load_model(config.reference_model, tokenizer, config) if config.reference_model else None
    output_dir = Path(config.output_dir)
    resume = config.resume if resume is None else resume
    main_process = int(os.environ.get("RANK", "0")) == 0  # under accelerate/torchrun only rank 0 writes files
    if resume:
        check_resumable(config)
    if main_process:
        save_config(config, output_dir)
    result = train_preference(model, tokenizer, records, config, ref_model=ref_model,
                              resume_from_checkpoint=True if resume else None)
    result.data_report = data_report
    if main_process:
        final_dir = output_dir / "final"
        result.model.save_pretrained(final_dir)  # safetensors
        tokenizer.save_pretrained(final_dir)
        save_config(config, final_dir)
    return result
