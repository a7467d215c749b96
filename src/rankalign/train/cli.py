"""`rankalign train CONFIG.yaml [--set key=value ...]`."""

from __future__ import annotations

import click


@click.command("train")
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (dotted for sections: peft.r=16, loss_params.beta=0.2). Repeatable.")
@click.option("--no-resume", is_flag=True, help="Start afresh even if output_dir holds a checkpoint.")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
def train(config_path, overrides, no_resume, print_config):
    """Train a policy on ranked lists (or pairs, or unpaired judgments) as CONFIG.yaml says.

    The YAML keys are the fields of rankalign.train.TrainConfig; an unknown key is an error with a
    suggestion. The resolved config is saved as OUTPUT_DIR/train_config.yaml; checkpoints (safetensors,
    optimiser, scheduler and RNG state) every save_steps steps; metrics to OUTPUT_DIR/metrics.jsonl and
    TensorBoard. Run again with the same config to resume from the last checkpoint.
    """
    import yaml

    from .config import config_to_dict, load_config

    config = load_config(config_path, list(overrides))  # a ConfigError is a usage error at the CLI boundary
    if print_config:
        click.echo(yaml.safe_dump(config_to_dict(config), sort_keys=False), nl=False)
        return
    from .run import run_config

    result = run_config(config, resume=False if no_resume else None)
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return  # under accelerate launch / torchrun, rank 0 reports
    if result.note:  # nothing was trained (the run had already finished)
        click.echo(result.note)
        return
    report = result.data_report
    if report is not None:
        skipped = dict(getattr(report, "skipped", {}) or {})
        click.echo(f"data: {getattr(report, 'records', '?')} records read from {getattr(report, 'path', '?')} "
                   f"(layout {getattr(report, 'layout', '?')}); skipped: {skipped or 'none'}")
    if result.truncation is not None:
        click.echo(f"tokenization: {result.truncation}")
    last = next((row for row in reversed(result.history) if "loss" in row), result.final_metrics)
    summary = {k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()}
    click.echo(f"trained {result.global_step} steps in {result.wall_time:.1f}s "
               f"({result.tokens_per_second:.0f} tokens/s); last log: {summary}")
    click.echo(f"model, tokenizer and config: {config.output_dir}/final; metrics: {config.output_dir}/metrics.jsonl")
