"""``rankalign reward train|score``: train a reward model on a preference file, or score a file with one.

* ``rankalign reward train DATA --model tiny|PATH --objective bt_reward --output DIR``: reads DATA with
  :func:`rankalign.data.read` (any layout it recognises), trains with
  :func:`~rankalign.reward.train_reward_model` and saves the model, its tokenizer and
  ``train_history.json`` to DIR. ``--model tiny`` builds a word-level tokenizer on the data's texts and a
  tiny randomly initialised Llama (no download); a PATH is a local ``transformers`` directory (a causal LM,
  an encoder, or a saved reward model to continue training), loaded with ``trust_remote_code=False``.
* ``rankalign reward score MODEL DATA --output OUT.jsonl``: one JSON line per record,
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


def _read(path: str, layout: str | None):
    from ..data import read

    result = read(path, layout=layout)
    if not result.records:
        raise click.ClickException(f"{path}: no records")
    return result.records


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


@reward.command("train")
@click.argument("data", type=click.Path(exists=True, dir_okay=True))
@click.option("--model", "model_path", default="tiny", show_default=True,
              help="'tiny' (a tiny Llama built locally), a local transformers/reward-model directory, a .gguf "
                   "file, a fetched name (smollm2-135m) or an HF-cache id.")
@click.option("--objective", default="bt_reward", show_default=True,
              help="A registered reward objective: bt_reward, pl_reward, davidson_reward, bce_reward, "
                   "rating_regression.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--layout", "data_layout", default=None, help="Data layout (detected when omitted).")
@click.option("--epochs", default=1, show_default=True, type=int)
@click.option("--lr", default=1e-4, show_default=True, type=float)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-length", default=None, type=int, help="Token cap per prompt + response.")
@click.option("--num-attributes", default=1, show_default=True, type=int)
def train_command(data, model_path, objective, output, data_layout, epochs, lr, batch_size, seed, max_length,
                  num_attributes):
    """Train a reward model on DATA and save it to --output."""
    from ..data.errors import DataError
    from .model import _write_json_atomic
    from .train import train_reward_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        records = _read(data, data_layout)
    except DataError as error:
        raise click.ClickException(str(error)) from None
    model, tokenizer = _load_backbone(model_path, records, num_attributes=num_attributes, seed=seed)
    try:
        history = train_reward_model(model, tokenizer, records, objective=objective, epochs=epochs, lr=lr,
                                     batch_size=batch_size, seed=seed, max_length=max_length, progress=True)
    except (ValueError, KeyError, DataError) as error:
        raise click.ClickException(str(error)) from None
    model.save_pretrained(output, tokenizer=tokenizer)
    _write_json_atomic(Path(output) / "train_history.json",
                       {"objective": objective, "records": len(records), "epochs": epochs, "lr": lr,
                        "batch_size": batch_size, "seed": seed, "steps": history})
    click.echo(f"trained on {len(records)} records, {len(history)} steps, final loss "
               f"{history[-1]['loss']:.4f}; saved to {output}", err=True)


@reward.command("score")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True, dir_okay=True))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="JSONL output file.")
@click.option("--layout", "data_layout", default=None, help="Data layout (detected when omitted).")
@click.option("--batch-size", default=16, show_default=True, type=int)
@click.option("--max-length", default=None, type=int)
def score_command(model_dir, data, output, data_layout, batch_size, max_length):
    """Score every ranked candidate of DATA with the reward model in MODEL_DIR (JSONL, one line per record)."""
    from transformers import AutoTokenizer

    from ..data.errors import DataError
    from ..data.records import RankedList
    from .model import RewardModel, score_lists, write_file_atomic
    from .train import pairwise_accuracy

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        records = _read(data, data_layout)
    except DataError as error:
        raise click.ClickException(str(error)) from None
    model = RewardModel.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    scores = score_lists(model, tokenizer, records, batch_size=batch_size, max_length=max_length)

    def write(temp):
        with open(temp, "w", encoding="utf-8") as handle:
            for index, (record, values) in enumerate(zip(records, scores)):
                ranks = ([r for r in record.dense_ranks() if r is not None] if isinstance(record, RankedList)
                         else [0])
                row = {"index": index, "scores": [float(v) for v in values], "ranks": ranks}
                handle.write(json.dumps(row) + "\n")

    write_file_atomic(output, write)
    ranked = [(s, r) for s, r in zip(scores, records) if isinstance(r, RankedList) and s.numel() > 1]
    message = f"scored {len(records)} records -> {output}"
    if ranked:
        accuracy = pairwise_accuracy([s for s, _ in ranked], [r for _, r in ranked])
        message += f"; pairwise accuracy against the file's ranks: {accuracy:.3f}"
    click.echo(message, err=True)


if __name__ == "__main__":  # pragma: no cover
    reward(sys.argv[1:])
