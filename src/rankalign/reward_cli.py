"""``rankalign reward train|score|eval``: train a reward model, score a file with one, evaluate one.

* ``rankalign reward train CONFIG.yaml [--set key=value ...]``: the keys of
  :class:`rankalign.train.reward.RewardTrainConfig`, the same config machinery as ``rankalign train``
  (``--set``, validation at load, checkpoints and resume in ``output_dir``). A data file instead of a YAML
  starts from the defaults with ``data`` set; ``--backbone``, ``-o/--output``, ``--objective``,
  ``--epochs``, ``--lr``, ``--batch-size``, ``--max-tokens``, ``--skip-invalid`` and ``--max-records``
  are shorthands for the matching ``--set``. The model is saved to ``OUTPUT_DIR/final`` as a transformers
  sequence classifier (see :meth:`rankalign.reward.RewardModel.save_pretrained`).
* ``rankalign reward score MODEL DATA -o OUT.jsonl``: one JSON line per record,
  ``{"index": i, "scores": [...], "ranks": [...]}`` plus ``"attributes": [{name: value}, ...]`` for a
  multi-attribute model and ``"std"`` / ``"conservative"`` for an ensemble; written atomically.
* ``rankalign reward eval MODEL FILE [--json] [--group-by annotator|FIELD] [--plot PNG]``: pairwise accuracy
  with a 95% interval, tie and best-of-K accuracy, per-group accuracy, calibration (ECE, reliability PNG),
  and a per-subset table when the records carry a ``subset`` (:mod:`rankalign.eval.reward`).

This module sits at the top, beside :mod:`rankalign.cli` (not inside the reward layer): its commands reach the
training and evaluation layers, lazily, inside each command.
"""

from __future__ import annotations

import json
import os
import sys

import click

from rankalign import _json as strict_json
from rankalign._cli import (
    FiniteFloat,
    data_options,
    deprecated_option,
    device_option,
    json_option,
    output_option,
    refuse_overwriting_inputs,
    resolve_deprecated,
    wrote,
)
from rankalign.data.layouts import LAYOUTS


def _with_read_options(function):
    """The shared data options (docs/CLI.md) and ``--device``."""
    return data_options(device_option(function))


def _max_tokens_options(function):
    function = deprecated_option("--max-length", "legacy_max_length", "--max-tokens", type=int)(function)
    return click.option("--max-tokens", default=None, type=click.IntRange(min=1),
                        help="Cut each prompt + response to this many tokens together (responses lose their "
                             "tail). Default: the max_length the model was trained with (MODEL_DIR/"
                             "train_config.yaml), else no cut.")(function)


def _trained_max_length(model_dir: str, max_length: int | None) -> int | None:
    """``max_length`` if given, else the one ``reward train`` saved beside the model (so ``reward eval`` and
    ``reward score`` see the inputs the model was trained and evaluated on), else None."""
    from pathlib import Path

    import yaml

    if max_length is not None:
        return max_length
    path = Path(model_dir) / "train_config.yaml"
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return None
    value = saved.get("max_length") if isinstance(saved, dict) else None
    return int(value) if isinstance(value, int) and value > 0 else None


def _device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _read(path: str, layout, mapping, outcomes, skip_invalid: bool, file_format, max_records, rank_by):
    """The records of ``path`` read with the shared data options; a data error is a one-line click error."""
    from .data import read
    from .data.errors import DataError
    from .data.summary import rank_by as rank_records

    try:
        result = read(path, layout=layout, mapping=mapping, outcomes=outcomes, skip_invalid=skip_invalid,
                      format=file_format)
        records = list(rank_records(result.records, rank_by))
    except DataError as error:
        raise click.ClickException(str(error)) from None
    if max_records is not None:
        records = records[:max_records]
    if not records:
        raise click.ClickException(f"{path}: no records")
    skipped = dict(getattr(result.report, "skipped", {}) or {})
    if skipped:
        click.echo(f"{path}: skipped {skipped}", err=True)
    return records


def _load_model(model_dir: str, device: str):
    from pathlib import Path

    from .reward.model import REWARD_CONFIG_NAME, load

    if not (Path(model_dir) / REWARD_CONFIG_NAME).is_file():
        raise click.ClickException(f"{model_dir}: not a saved reward model (no {REWARD_CONFIG_NAME}); "
                                   "for a `reward train` run use OUTPUT_DIR/final")
    model, tokenizer = load(model_dir)
    return model.to(device), tokenizer


@click.group("reward")
def reward():
    """Train reward models, score preference files with them, evaluate them."""


@reward.command("train")
@click.argument("config_or_data", metavar="CONFIG.yaml|DATA", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (dotted for sections: peft.r=16, loss_params.nu=0.5). Repeatable.")
@click.option("--backbone", default=None, help="Shorthand for --set backbone=...: tiny, minilm, a local "
                                                "directory, a .gguf file or a model-source name.")
@deprecated_option("--model", "legacy_model", "--backbone")
@output_option("the run folder (shorthand for --set output_dir=...; the model goes to OUTPUT/final)", file=False)
@click.option("--objective", default=None, help="Shorthand for --set objective=...")
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="Shorthand for --set epochs=...")
@click.option("--lr", default=None, type=FiniteFloat(min=0.0, min_open=True), help="Shorthand for --set lr=...")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Shorthand for --set batch_size=...")
@_max_tokens_options
@click.option("--skip-invalid", is_flag=True, help="Shorthand for --set data_options.skip_invalid=true.")
@click.option("--max-records", default=None, type=click.IntRange(min=1), help="Shorthand for --set max_records=...")
@click.option("--layout", type=click.Choice(LAYOUTS), default=None,
              help="Shorthand for --set data_options.layout=... (detected from the columns when omitted).")
@click.option("--map", "mapping", default=None, metavar="OURS=THEIRS,...",
              help="Shorthand for --set data_options.mapping=...: rename the file's columns.")
@click.option("--outcomes", default=None, metavar="LABEL=a|b|tie,...",
              help="Shorthand for --set data_options.outcomes=...: relabel outcome values.")
@click.option("--rank-by", default=None, metavar="ATTRIBUTE",
              help="Shorthand for --set rank_by=...: rank rated lists on this attribute or per-completion field.")
@click.option("--no-resume", is_flag=True, help="Start afresh even if output_dir holds a checkpoint.")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@json_option
def train_command(config_or_data, overrides, backbone, legacy_model, output, objective, epochs, lr, batch_size,
                  max_tokens, legacy_max_length, skip_invalid, max_records, layout, mapping, outcomes, rank_by,
                  no_resume, print_config, as_json):
    """Train a reward model as CONFIG.yaml says (or on DATA with the defaults and shorthands)."""
    backbone = resolve_deprecated(backbone, legacy_model, new="--backbone", old="--model")
    max_length = resolve_deprecated(max_tokens, legacy_max_length, new="--max-tokens", old="--max-length")
    import yaml

    from .train.config import ConfigError, config_to_dict, load_config
    from .train.reward import RewardTrainConfig

    is_config = config_or_data.endswith((".yaml", ".yml"))
    shorthands = [f"data={config_or_data}"] if not is_config else []
    for key, value in (("backbone", backbone), ("output_dir", output), ("objective", objective),
                       ("epochs", epochs), ("lr", lr), ("batch_size", batch_size), ("max_length", max_length),
                       ("max_records", max_records), ("data_options.layout", layout),
                       ("data_options.mapping", mapping), ("data_options.outcomes", outcomes), ("rank_by", rank_by)):
        if value is not None:
            shorthands.append(f"{key}={value}")
    if skip_invalid:
        shorthands.append("data_options.skip_invalid=true")
    try:
        config = load_config(config_or_data if is_config else None, shorthands + list(overrides),
                             cls=RewardTrainConfig)
    except ConfigError:
        raise  # the CLI's error boundary prints it with its hint (close matches), exit code 2
    if print_config:
        click.echo(yaml.safe_dump(config_to_dict(config), sort_keys=False), nl=False)
        return
    from .data.errors import DataError
    from .eval.reward import evaluate_reward_model
    from .train.reward import run_reward_config

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        result = run_reward_config(config, resume=False if no_resume else None, evaluate=evaluate_reward_model)
    except (ConfigError, DataError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    summary = {"output_dir": config.output_dir, "model": f"{config.output_dir}/final",
               "train_records": result.train_records, "eval_records": result.eval_records,
               "steps": len(result.history), "wall_time_s": round(result.wall_time, 2),
               "pairs_per_second": result.pairs_per_second, "resumed_from": result.resumed_from,
               "final_loss": result.history[-1]["loss"] if result.history else None}
    if result.eval_metrics is not None:
        summary.update({k: result.eval_metrics[k] for k in ("accuracy", "ci_low", "ci_high", "n")})
    if as_json:
        from .eval.report import to_jsonable

        click.echo(json.dumps(to_jsonable(summary)))
    else:
        message = (f"trained on {result.train_records} records, {summary['steps']} steps in {result.wall_time:.1f}s; "
                   f"final loss {summary['final_loss']:.4f}")
        if result.eval_metrics is not None:
            m = result.eval_metrics
            message += (f"\nheld-out ({result.eval_records} records, {m['n']} pairs): accuracy {m['accuracy']:.3f} "
                        f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
        click.echo(message)
    wrote(summary["model"], "reward model")


@reward.command("score")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True, dir_okay=True))
@output_option("the scores, one JSON line per record", required=True)
@_with_read_options
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="Lists per forward pass.")
@_max_tokens_options
@click.option("--conservative-k", default=1.0, show_default=True, type=FiniteFloat(),
              help="Ensembles: the conservative score is mean - k * std.")
@json_option
def score_command(model_dir, data, output, layout, mapping, outcomes, skip_invalid, file_format, max_records, rank_by,
                  device, batch_size, max_tokens, legacy_max_length, conservative_k, as_json):
    """Score every ranked candidate of DATA with the reward model in MODEL_DIR (JSONL, one line per record)."""
    refuse_overwriting_inputs(data, output, models=(model_dir,))
    max_length = _trained_max_length(model_dir, resolve_deprecated(max_tokens, legacy_max_length,
                                                                   new="--max-tokens", old="--max-length"))
    from .data.records import RankedList
    from .reward.model import ensemble_scores, score_lists, write_file_atomic
    from .reward.train import pairwise_accuracy

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    records = _read(data, layout, mapping, outcomes, skip_invalid, file_format, max_records, rank_by)
    model, tokenizer = _load_model(model_dir, _device(device))
    if model.preference_dim is not None:
        raise click.ClickException("a general preference model has no scalar score; use `reward eval` (its "
                                   "pairwise probabilities) or rankalign.reward.preference_probabilities")
    scores = score_lists(model, tokenizer, records, batch_size=batch_size, max_length=max_length)
    attributes = (score_lists(model, tokenizer, records, batch_size=batch_size, max_length=max_length,
                              return_attributes=True) if model.num_attributes > 1 and model.ensemble_size == 1 else None)
    ensemble = (ensemble_scores(model, tokenizer, records, k=conservative_k, batch_size=batch_size,
                                max_length=max_length) if model.ensemble_size > 1 else None)

    def write(temp):
        with open(temp, "w", encoding="utf-8") as handle:
            for index, (record, values) in enumerate(zip(records, scores)):
                ranks = ([r for r in record.dense_ranks() if r is not None] if isinstance(record, RankedList)
                         else [0])
                row = {"index": index, "scores": [float(v) for v in values], "ranks": ranks}
                if attributes is not None:
                    row["attributes"] = [dict(zip(model.attribute_names, map(float, a))) for a in attributes[index]]
                if ensemble is not None:
                    row["std"] = [float(v) for v in ensemble[index]["std"]]
                    row["conservative"] = [float(v) for v in ensemble[index]["conservative"]]
                handle.write(strict_json.dumps(row) + "\n")

    write_file_atomic(output, write)
    ranked = [(s, r) for s, r in zip(scores, records) if isinstance(r, RankedList) and s.numel() > 1]
    accuracy = pairwise_accuracy([s for s, _ in ranked], [r for _, r in ranked]) if ranked else None
    if as_json:
        click.echo(strict_json.dumps({"records": len(records), "output": str(output), "pairwise_accuracy": accuracy}))
    else:
        message = f"scored {len(records)} records"
        if accuracy is not None:
            message += f"; pairwise accuracy against the file's ranks: {accuracy:.3f}"
        click.echo(message, err=True)
    wrote(output, "scores")


@reward.command("eval")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True, dir_okay=True))
@_with_read_options
@click.option("--group-by", default=None, metavar="annotator|FIELD",
              help="Per-group accuracy by annotator or by a meta field.")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="Write the reliability diagram (PNG).")
@click.option("--tie-margin", default=0.1, show_default=True, type=FiniteFloat(min=0.0, max=0.5),
              help="A data tie counts as right when |P(i > j) - 1/2| < this.")
@click.option("--bins", default=10, show_default=True, type=click.IntRange(min=1), help="Calibration bins.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="Lists per forward pass.")
@_max_tokens_options
@json_option
def eval_command(model_dir, data, layout, mapping, outcomes, skip_invalid, file_format, max_records, rank_by, device,
                 group_by, plot_path, tie_margin, bins, batch_size, max_tokens, legacy_max_length, as_json):
    """Evaluate the reward model in MODEL_DIR on the ranked lists of DATA."""
    refuse_overwriting_inputs(data, plot_path, models=(model_dir,))
    max_length = _trained_max_length(model_dir, resolve_deprecated(max_tokens, legacy_max_length,
                                                                   new="--max-tokens", old="--max-length"))
    from .eval.report import plot_reliability_diagram, to_jsonable
    from .eval.reward import evaluate_reward_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    records = _read(data, layout, mapping, outcomes, skip_invalid, file_format, max_records, rank_by)
    model, tokenizer = _load_model(model_dir, _device(device))
    try:
        metrics = evaluate_reward_model(model, tokenizer, records, group_by=group_by, tie_margin=tie_margin,
                                        n_bins=bins, batch_size=batch_size, max_length=max_length)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    metrics["model"] = str(model_dir)
    metrics["data"] = str(data)
    metrics["max_tokens"] = max_length
    if plot_path:
        plot_reliability_diagram(metrics["reliability"], plot_path, ece=metrics["ece"],
                                 title=f"Reward model calibration: P(w > l), {metrics['n']} pairs")
        metrics["plot"] = str(plot_path)
        wrote(plot_path, "reliability diagram")
    if as_json:
        click.echo(json.dumps(to_jsonable(metrics)))
        return
    _print_table(metrics)


def _print_table(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(value):
        return "-" if value is None else f"{value:.3f}"

    table = Table(title=f"reward eval: {metrics['model']} on {metrics['data']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("n", justify="right")
    table.add_row("pairwise accuracy [95% CI]",
                  f"{metrics['accuracy']:.3f} [{metrics['ci_low']:.3f}, {metrics['ci_high']:.3f}]", str(metrics["n"]))
    table.add_row("tie accuracy", fmt(metrics["tie_accuracy"]), str(metrics["tie_pairs"]))
    table.add_row("best-of-K accuracy (K >= 3)", fmt(metrics["best_of_k_accuracy"]), str(metrics["best_of_k_lists"]))
    table.add_row("ECE of P(w > l)", fmt(metrics["ece"]), str(2 * metrics["n"]))
    for group, row in (metrics.get("groups") or {}).items():
        table.add_row(f"{metrics['group_by']} = {group}", fmt(row["accuracy"]), str(row["n"]))
    console = Console()
    console.print(table)
    if metrics.get("subsets"):
        subsets = Table(title="by subset (RewardBench-style)")
        for column in ("subset", "accuracy", "95% CI", "pairs"):
            subsets.add_column(column, justify="left" if column == "subset" else "right")
        for name, row in metrics["subsets"].items():
            subsets.add_row(name, fmt(row["accuracy"]), f"[{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]", str(row["n"]))
        subsets.add_row("macro average", fmt(metrics["subset_macro_accuracy"]), "", "")
        console.print(subsets)


if __name__ == "__main__":  # pragma: no cover
    reward(sys.argv[1:])
