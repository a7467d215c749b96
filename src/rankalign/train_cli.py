"""`rankalign train CONFIG.yaml [--set key=value ...]`: the command (top-level, above `train` and `online`, since an
`online:` section hands the run to `rankalign.online`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from rankalign._cli import json_option, wrote


@click.command("train")
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (dotted for sections: peft.r=16, loss_params.beta=0.2). Repeatable.")
@click.option("--no-resume", is_flag=True, help="Start afresh even if output_dir holds a checkpoint.")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@json_option
def train(config_path, overrides, no_resume, print_config, as_json):
    """Train a policy on ranked lists (or pairs, or unpaired judgments) as CONFIG.yaml says.

    The YAML keys are the fields of rankalign.train.TrainConfig; an unknown key is an error with a
    suggestion. The resolved config is saved as OUTPUT_DIR/train_config.yaml; checkpoints (safetensors,
    optimiser, scheduler and RNG state) every save_steps steps; metrics to OUTPUT_DIR/metrics.jsonl and
    TensorBoard. Run again with the same config to resume from the last checkpoint. The data read and
    the truncation are reported before training starts; the policy's source and its reference are recorded
    in OUTPUT_DIR/run_source.json (for `rankalign eval --run OUTPUT_DIR`).
    """
    import yaml

    from rankalign.train.config import config_to_dict, load_config

    config = load_config(config_path, list(overrides))  # a ConfigError is a usage error at the CLI boundary
    if print_config:
        click.echo(yaml.safe_dump(config_to_dict(config), sort_keys=False), nl=False)
        return
    if config.online.enabled:
        _train_online(config, no_resume)
        return
    from rankalign.train.run import run_config

    rank_zero = int(os.environ.get("RANK", "0")) == 0  # under accelerate launch / torchrun, rank 0 reports

    def on_start(report, truncation):
        if not rank_zero:
            return
        skipped = dict(getattr(report, "skipped", {}) or {})
        click.echo(f"data: {getattr(report, 'records', '?')} records read from {getattr(report, 'path', '?')} "
                   f"(layout {getattr(report, 'layout', '?')}); skipped: {skipped or 'none'}", err=True)
        if truncation is not None:
            click.echo(f"tokenization: {truncation}", err=True)

    result = run_config(config, resume=False if no_resume else None, on_start=on_start)
    if not rank_zero:
        return
    if result.note:  # nothing was trained (the run had already finished)
        if as_json:
            click.echo(json.dumps({"output_dir": str(config.output_dir), "note": result.note}))
        else:
            click.echo(result.note)
        return
    last = next((row for row in reversed(result.history) if "loss" in row), result.final_metrics)
    summary = {k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()}
    output_dir = Path(config.output_dir)
    if as_json:
        click.echo(json.dumps({"output_dir": str(output_dir), "final": str(output_dir / "final"),
                               "metrics": str(output_dir / "metrics.jsonl"),
                               "run_source": str(output_dir / "run_source.json"), "global_step": result.global_step,
                               "wall_time": result.wall_time, "tokens_per_second": result.tokens_per_second,
                               "last_log": last}, default=float))
    else:
        click.echo(f"trained {result.global_step} steps in {result.wall_time:.1f}s "
                   f"({result.tokens_per_second:.0f} tokens/s); last log: {summary}")
    wrote(output_dir / "final", "model, tokenizer and config")
    wrote(output_dir / "metrics.jsonl", "metrics")
    wrote(output_dir / "run_source.json", "what `rankalign eval --run` needs (policy, reference, beta)")


def _train_online(config, no_resume: bool) -> None:
    """The ``online:`` section is on: rounds of sample -> judge -> train (rankalign.online, the layer above;
    imported here, in the command layer, only when asked for)."""
    from rankalign.online.run import run_online_config
    from rankalign.train.config import ConfigError

    try:
        result = run_online_config(config, resume=not no_resume)
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    for summary in result.rounds:
        click.echo("round {round}: {lists} judged lists, mean judge score {score}, loss {first} -> {last}".format(
            round=summary["round"], lists=summary["lists"], score=_fmt(summary["mean_judge_score"]),
            first=_fmt(summary["first_loss"]), last=_fmt(summary["last_loss"])))
    click.echo(f"policy, tokenizer and config: {config.output_dir}/final; judged lists: "
               f"{config.output_dir}/round_*/lists.jsonl")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
