"""``rankalign eval``: the command over :func:`rankalign.eval.run.evaluate_policy`.

torch and transformers are imported only when the command runs.
"""

from __future__ import annotations

import json

import click

from rankalign._cli import (
    data_options,
    deprecated_option,
    device_option,
    json_option,
    output_option,
    resolve_deprecated,
    truncation_options,
    wrote,
)

from .report import to_jsonable, write_json_atomic
from .run import EvalError, alpha_from_records, evaluate_policy, report_of, resolve_run  # noqa: F401


@click.command("eval")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False),
              help="A `rankalign train` output folder: evaluates its final/ model against the reference the run "
                   "recorded (no need to name the models).")
@click.option("--policy", "policy_path", type=click.Path(exists=True, file_okay=False),
              help="Trained policy: a local transformers model directory (safetensors).")
@deprecated_option("--model", "legacy_model", "--policy", type=click.Path(exists=True, file_okay=False))
@click.option("--reference", "reference_path", type=click.Path(exists=True, file_okay=False),
              help="Reference policy directory; enables implicit-reward margins, calibration, idealised accuracy.")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, file_okay=False),
              help="Tokenizer directory (default: the policy's).")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True),
              help="Preference file (JSONL, JSON, CSV, Parquet; any layout rankalign reads).")
@data_options
@click.option("--beta", default=0.1, show_default=True, type=float, help="KL coefficient the policy was trained with.")
@click.option("--alpha-field", help="Record meta field (or per-candidate score attribute) with the true preference rate.")
@click.option("--alpha", "alpha_constant", type=click.FloatRange(0.0, 1.0),
              help="One true preference rate for every pair (when the data has none).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Lists per forward pass.")
@truncation_options
@device_option
@click.option("--n-bins", default=10, show_default=True, type=click.IntRange(min=1), help="Calibration bins.")
@click.option("--group-by", help="Per-group ranking accuracy and the worst group: 'annotator' or a record meta field.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a reliability diagram PNG here.")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Cache the reference log-probs here (rankalign.engine.ReferenceCache) and reuse them.")
@output_option("the result as one JSON file (atomically)")
@json_option
def eval_command(run_dir, policy_path, legacy_model, reference_path, tokenizer_path, data_path, layout, mapping,
                 outcomes, skip_invalid, file_format, max_records, rank_by, beta, alpha_field, alpha_constant,
                 batch_size, max_prompt_tokens, max_response_tokens, device, n_bins, group_by, plot_path, cache_dir,
                 output, as_json):
    """Evaluate a trained policy on a preference file: ranking accuracy, idealised ranking accuracy where
    preference rates are known, implicit-reward margins and calibration (with a reference).

    Name the models with --policy (and --reference), or give a training run with --run."""
    policy_path = resolve_deprecated(policy_path, legacy_model, new="--policy", old="--model")
    if run_dir is not None:
        if policy_path is not None:
            raise click.UsageError("give --run or --policy, not both")
        try:
            policy_path, recorded_reference = resolve_run(run_dir)
        except EvalError as error:
            raise click.ClickException(str(error)) from None
        reference_path = reference_path or recorded_reference
    if policy_path is None:
        raise click.UsageError("name the policy with --policy DIR or a training run with --run RUN_DIR")
    if not beta > 0:
        raise click.BadParameter("must be > 0", param_hint="--beta")
    if alpha_field and alpha_constant is not None:
        raise click.UsageError("give --alpha-field or --alpha, not both")
    if alpha_constant is not None and reference_path is None:
        raise click.UsageError("--alpha needs --reference (the idealised accuracy is defined by π_ref)")
    read_options = {"layout": layout, "mapping": mapping, "outcomes": outcomes, "skip_invalid": skip_invalid,
                    "format": file_format}
    try:
        result = evaluate_policy(policy_path, data_path, reference=reference_path, tokenizer=tokenizer_path,
                                 beta=beta, alpha_field=alpha_field, alpha=alpha_constant, read_options=read_options,
                                 max_records=max_records, rank_by=rank_by, batch_size=batch_size,
                                 max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens,
                                 device=device, n_bins=n_bins, group_by=group_by, cache_dir=cache_dir)
    except EvalError as error:
        raise click.ClickException(str(error)) from None

    if plot_path:
        if "calibration" not in result:
            raise click.UsageError("--plot draws the calibration of the implicit reward: it needs --reference")
        from .report import plot_reliability_diagram

        plot_reliability_diagram({"σ(β·h)": result["calibration"]}, plot_path, ece={"σ(β·h)": result["ece"]},
                                 title=f"Calibration of the implicit preference probability (β={beta})")
        result["plot"] = plot_path
        wrote(plot_path, "reliability diagram")
    if output:
        write_json_atomic(output, result)
        wrote(output, "evaluation JSON")
    if as_json:
        click.echo(json.dumps(to_jsonable(result), allow_nan=False))
    else:
        from rich.console import Console

        Console().print(report_of(result).to_table())
