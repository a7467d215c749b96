"""``rankalign reward train|score``: train a reward model on a preference file, or score a file with one.

* ``rankalign reward train DATA --backbone tiny|PATH --objective bt_reward -o DIR``: reads DATA with
  :func:`rankalign.data.read` (any layout it recognises), trains with
  :func:`~rankalign.reward.train_reward_model` and saves the model, its tokenizer and
  ``train_history.json`` to DIR. ``--model tiny`` builds a word-level tokenizer on the data's texts and a
  tiny randomly initialised Llama (no download; ``--backbone``, formerly ``--model``); a PATH is a local ``transformers`` directory (a causal LM,
  an encoder, or a saved reward model to continue training), loaded with ``trust_remote_code=False``.
* ``rankalign reward score MODEL DATA -o OUT.jsonl``: one JSON line per record,
  ``{"index": i, "scores": [...], "ranks": [...]}`` (ranked candidates only, in their order), written
  atomically; the pairwise accuracy against the file's own ranks goes to stderr.

torch and transformers are imported only when a command runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from rankalign._atomic import atomic_write_json
from rankalign._cli import (
    data_options,
    deprecated_option,
    device_option,
    json_option,
    output_option,
    resolve_deprecated,
    wrote,
)


def _read(path: str, read_options: dict, max_records: int | None, rank_by: str | None):
    """The records of ``path`` (``read_options`` for :func:`rankalign.data.read`), re-ranked by ``rank_by``,
    the first ``max_records``; a data error becomes a one-line click error."""
    from ..data import read
    from ..data.errors import DataError
    from ..data.summary import rank_by as rank_records

    try:
        result = read(path, **read_options)
        records = list(rank_records(result.records, rank_by))
    except DataError as error:
        raise click.ClickException(str(error)) from None
    if max_records is not None:
        records = records[:max_records]
    if not records:
        raise click.ClickException(f"{path}: no records")
    return records, result.report


def _texts(records):
    for record in records:
        values = [record.prompt, *(record.candidates if hasattr(record, "candidates") else [record.response])]
        for value in values:
            if value is None:
                continue
            if isinstance(value, str):
                yield value
            else:
                yield from (m["content"] for m in value)


def _load_backbone(path: str, records, *, num_attributes: int, seed: int):
    """(RewardModel, tokenizer) from "tiny", a saved reward model, or a local transformers directory."""
    from ..engine import build_tokenizer, tiny_causal_lm
    from .model import REWARD_CONFIG_NAME, RewardModel

    if path == "tiny":
        tokenizer = build_tokenizer(_texts(records), vocab_size=4096, kind="word")
        backbone = tiny_causal_lm(len(tokenizer), hidden_size=64, layers=2, heads=4, seed=seed)
        return RewardModel(backbone, num_attributes=num_attributes, seed=seed), tokenizer
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from ..engine.sources import ModelNotFound, resolve_path

    try:  # a folder, a .gguf file, a fetched name (smollm2-135m) or an HF-cache id; safetensors only
        path = resolve_path(path)
    except (ModelNotFound, PermissionError) as error:
        raise click.ClickException(str(error)) from None
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if (Path(path) / REWARD_CONFIG_NAME).is_file():
        return RewardModel.from_pretrained(path), tokenizer
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    from .model import ENCODER_MODEL_TYPES

    loader = AutoModel if config.model_type in ENCODER_MODEL_TYPES else AutoModelForCausalLM
    backbone = loader.from_pretrained(path, trust_remote_code=False, use_safetensors=True)
    return RewardModel(backbone, num_attributes=num_attributes, seed=seed), tokenizer


@click.group("reward")
def reward():
    """Train reward models and score preference files with them."""


def _device(model, device: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), device


@reward.command("train")
@click.argument("data", type=click.Path(exists=True, dir_okay=True))
@click.option("--backbone", "backbone", default=None,
              help="'tiny' (a tiny Llama built locally; the default), a local transformers/reward-model directory, "
                   "a .gguf file, a fetched name (smollm2-135m) or an HF-cache id.")
@deprecated_option("--model", "legacy_model", "--backbone")
@click.option("--objective", default="bt_reward", show_default=True,
              help="A registered reward objective: bt_reward, pl_reward, davidson_reward, bce_reward, "
                   "rating_regression.")
@output_option("the trained reward model (a folder)", required=True, file=False)
@data_options
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(min=1), help="Passes over the data.")
@click.option("--lr", default=1e-4, show_default=True, type=float, help="AdamW learning rate.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Lists per step.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the initialisation and the data order.")
@click.option("--max-tokens", default=None, type=click.IntRange(min=1),
              help="Cut each prompt + response to this many tokens together (responses lose their tail).")
@deprecated_option("--max-length", "legacy_max_length", "--max-tokens", type=int)
@click.option("--num-attributes", default=1, show_default=True, type=click.IntRange(min=1),
              help="Reward heads (one per rated attribute, e.g. UltraFeedback's four).")
@device_option
@json_option
def train_command(data, backbone, legacy_model, objective, output, layout, mapping, outcomes, skip_invalid,
                  file_format, max_records, rank_by, epochs, lr, batch_size, seed, max_tokens, legacy_max_length,
                  num_attributes, device, as_json):
    """Train a reward model on DATA and save it to -o/--output."""
    from ..data.errors import DataError
    from .train import train_reward_model

    backbone = resolve_deprecated(backbone, legacy_model, new="--backbone", old="--model") or "tiny"
    max_tokens = resolve_deprecated(max_tokens, legacy_max_length, new="--max-tokens", old="--max-length")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    records, report = _read(data, dict(layout=layout, mapping=mapping, outcomes=outcomes, skip_invalid=skip_invalid,
                                       format=file_format), max_records, rank_by)
    click.echo(f"data: {len(records)} records from {data} (layout {report.layout}); skipped: "
               f"{dict(report.skipped) or 'none'}", err=True)
    model, tokenizer = _load_backbone(backbone, records, num_attributes=num_attributes, seed=seed)
    model, device = _device(model, device)
    try:
        history = train_reward_model(model, tokenizer, records, objective=objective, epochs=epochs, lr=lr,
                                     batch_size=batch_size, seed=seed, max_length=max_tokens, progress=True)
    except (ValueError, KeyError, DataError) as error:
        raise click.ClickException(str(error)) from None
    model.save_pretrained(output, tokenizer=tokenizer)
    summary = {"objective": objective, "records": len(records), "epochs": epochs, "lr": lr, "batch_size": batch_size,
               "seed": seed, "backbone": backbone, "device": device, "skipped": dict(report.skipped),
               "steps": history}
    atomic_write_json(Path(output) / "train_history.json", summary, sort_keys=True)
    if as_json:
        click.echo(json.dumps({k: v for k, v in summary.items() if k != "steps"}
                              | {"steps": len(history), "final_loss": history[-1]["loss"], "output": str(output)}))
    else:
        click.echo(f"trained on {len(records)} records, {len(history)} steps, final loss "
                   f"{history[-1]['loss']:.4f}", err=True)
    wrote(output, "reward model (with train_history.json)")


@reward.command("score")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True, dir_okay=True))
@output_option("the scores, one JSON line per record", required=True)
@data_options
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Lists per forward pass.")
@click.option("--max-tokens", default=None, type=click.IntRange(min=1),
              help="Cut each prompt + response to this many tokens together (responses lose their tail).")
@deprecated_option("--max-length", "legacy_max_length", "--max-tokens", type=int)
@device_option
@json_option
def score_command(model_dir, data, output, layout, mapping, outcomes, skip_invalid, file_format, max_records,
                  rank_by, batch_size, max_tokens, legacy_max_length, device, as_json):
    """Score every ranked candidate of DATA with the reward model in MODEL_DIR (JSONL, one line per record)."""
    from transformers import AutoTokenizer

    from ..data.records import RankedList
    from .model import RewardModel, score_lists, write_file_atomic
    from .train import pairwise_accuracy

    max_tokens = resolve_deprecated(max_tokens, legacy_max_length, new="--max-tokens", old="--max-length")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    records, report = _read(data, dict(layout=layout, mapping=mapping, outcomes=outcomes, skip_invalid=skip_invalid,
                                       format=file_format), max_records, rank_by)
    model, device = _device(RewardModel.from_pretrained(model_dir), device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    scores = score_lists(model, tokenizer, records, batch_size=batch_size, max_length=max_tokens)

    def write(temp):
        with open(temp, "w", encoding="utf-8") as handle:
            for index, (record, values) in enumerate(zip(records, scores)):
                ranks = ([r for r in record.dense_ranks() if r is not None] if isinstance(record, RankedList)
                         else [0])
                row = {"index": index, "scores": [float(v) for v in values], "ranks": ranks}
                handle.write(json.dumps(row) + "\n")

    write_file_atomic(output, write)
    ranked = [(s, r) for s, r in zip(scores, records) if isinstance(r, RankedList) and s.numel() > 1]
    accuracy = pairwise_accuracy([s for s, _ in ranked], [r for _, r in ranked]) if ranked else None
    summary = {"records": len(records), "output": str(output), "pairwise_accuracy": accuracy,
               "skipped": dict(report.skipped), "device": device}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        message = f"scored {len(records)} records"
        if accuracy is not None:
            message += f"; pairwise accuracy against the file's ranks: {accuracy:.3f}"
        click.echo(message, err=True)
    wrote(output, "scores")


if __name__ == "__main__":  # pragma: no cover
    reward(sys.argv[1:])
