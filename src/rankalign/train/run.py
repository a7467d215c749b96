"""From a :class:`~rankalign.train.config.TrainConfig` to a trained model: load, tokenize, train, save.

Used by ``rankalign train``; scripts can call :func:`run_config` directly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import TrainConfig, save_config


def read_records(config: TrainConfig) -> list:
    """The training records of ``config.data`` (via :func:`rankalign.data.read`, which knows the layouts).

    JSONL files of ``RankedList.to_dict()`` / ``Judgment.to_dict()`` rows are read directly when
    ``rankalign.data.read`` is not available.
    """
    if not config.data:
        raise ValueError("the config has no `data` file")
    try:
        from rankalign.data import read
    except ImportError:
        read = None
    if read is not None:
        result = read(config.data, **config.data_options)
        records = list(result.records if hasattr(result, "records") else result)
    else:
        records = _read_record_jsonl(config.data)
    if config.max_records > 0:
        records = records[: config.max_records]
    return records


def _read_record_jsonl(path: str) -> list:
    from rankalign.data.errors import DataError
    from rankalign.data.records import Judgment, RankedList

    records = []
    with open(path) as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                records.append(Judgment.from_dict(row) if "response" in row else RankedList.from_dict(row))
            except json.JSONDecodeError as error:
                raise DataError(f"not valid JSON: {error.msg}", path=path, line=number,
                                reason="malformed_json") from None
            except DataError as error:
                raise error.at(path, number) from None
    return records


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


def run_config(config: TrainConfig, *, resume: bool | None = None):
    """Train as ``config`` says; save the final model, tokenizer and resolved config in ``output_dir``."""
    from .trainer import train_preference

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.set_seed(config.seed)
    records = read_records(config)
    tokenizer = load_tokenizer(config, records)
    model = load_model(config.model, tokenizer, config)
    ref_model = load_model(config.reference_model, tokenizer, config) if config.reference_model else None
    output_dir = Path(config.output_dir)
    save_config(config, output_dir)
    resume = config.resume if resume is None else resume
    result = train_preference(model, tokenizer, records, config, ref_model=ref_model,
                              resume_from_checkpoint=True if resume else None)
    final_dir = output_dir / "final"
    result.model.save_pretrained(final_dir)  # safetensors
    tokenizer.save_pretrained(final_dir)
    save_config(config, final_dir)
    return result
