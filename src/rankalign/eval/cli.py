"""``rankalign eval``: the command over :func:`rankalign.eval.run.evaluate_policy`.

torch and transformers are imported only when the command runs.
"""

from __future__ import annotations

import json

import click

from rankalign._cli import (
    FiniteFloat,
    data_options,
    deprecated_option,
    device_option,
    json_option,
    output_option,
    refuse_overwriting_inputs,
    resolve_deprecated,
    truncation_options,
    wrote,
)

from .report import to_jsonable, write_json_atomic
from .run import evaluate_policy, report_of


@click.command("eval")
@click.option("--policy", "policy_path",
              help="Policy: a local folder, a .gguf file, a fetched name (smollm2-135m) or an HF-cache id.")
@deprecated_option("--model", "legacy_model", "--policy")
@click.option("--reference", "reference_path",
              help="Reference policy (same kinds of spec); enables implicit-reward margins, calibration, "
                   "idealised accuracy.")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False),
              help="A `rankalign train` output folder: its policy, reference, tokenizer, beta and token limits "
                   "(instead of --policy/--reference/--tokenizer).")
@click.option("--tokenizer", "tokenizer_path", help="Tokenizer folder or model spec (default: the policy's).")
@click.option("--allow-bin", is_flag=True, help="Allow pickle (.bin) weights; by default only safetensors load.")
@click.option("--generations", default=0, show_default=True, type=click.IntRange(min=0),
              help="Show greedy generations of the policy (and reference) for the first N prompts.")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True),
              help="Preference file (JSONL, JSON, CSV, Parquet; any layout rankalign reads).")
@data_options
@click.option("--beta", default=None, type=FiniteFloat(min=0.0, min_open=True),
              help="KL coefficient the policy was trained with [default: 0.1, or the run's].")
@click.option("--alpha-field", help="Record meta field (or per-candidate score attribute) with the true preference rate.")
@click.option("--alpha", "alpha_constant", type=FiniteFloat(0.0, 1.0),
              help="One true preference rate for every pair (when the data has none).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Lists per forward pass.")
@truncation_options
@device_option
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16"]),
              help="auto: bfloat16 autocast on a CUDA device that supports it, float32 on the CPU.")
@click.option("--n-bins", default=10, show_default=True, type=click.IntRange(min=1), help="Calibration bins.")
@click.option("--group-by", help="Per-group ranking accuracy and the worst group: 'annotator' or a record meta field.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a reliability diagram PNG here.")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Cache the reference log-probs here (rankalign.engine.ReferenceCache) and reuse them.")
@output_option("the result as one JSON file (atomically)")
@json_option
def eval_command(policy_path, legacy_model, reference_path, run_dir, tokenizer_path, allow_bin, generations, data_path,
                 layout, mapping, outcomes, skip_invalid, file_format, max_records, rank_by, beta, alpha_field,
                 alpha_constant, batch_size, max_prompt_tokens, max_response_tokens, device, precision, n_bins,
                 group_by, plot_path, cache_dir, output, as_json):
    """Evaluate a trained policy on a preference file: ranking accuracy, idealised ranking accuracy where
    preference rates are known, implicit-reward margins and calibration (with --reference or --run)."""
    policy_path = resolve_deprecated(policy_path, legacy_model, new="--policy", old="--model")
    refuse_overwriting_inputs(data_path, output, plot_path,
                              models=(policy_path, reference_path, tokenizer_path, run_dir, cache_dir))
    if run_dir is not None and (policy_path or reference_path or tokenizer_path):
        raise click.UsageError("--run names the policy, reference and tokenizer; drop --policy/--reference/--tokenizer")
    if run_dir is None and not policy_path:
        raise click.UsageError("give --policy (a model spec) or --run (a training output folder)")
    if beta is not None and not beta > 0:
        raise click.BadParameter("must be > 0", param_hint="--beta")
    if alpha_field and alpha_constant is not None:
        raise click.UsageError("give --alpha-field or --alpha, not both")
    if alpha_constant is not None and reference_path is None and run_dir is None:
        raise click.UsageError("--alpha needs --reference (the idealised accuracy is defined by π_ref)")
    read_options = {"layout": layout, "mapping": mapping, "outcomes": outcomes, "skip_invalid": skip_invalid,
                    "format": file_format}
    # an EvalError (a RankalignError) reaches the CLI boundary, which prints it with its hint
    result = evaluate_policy(policy_path, data_path, reference=reference_path, run_dir=run_dir,
                             tokenizer=tokenizer_path, allow_bin=allow_bin, beta=beta, alpha_field=alpha_field,
                             alpha=alpha_constant, read_options=read_options, max_records=max_records,
                             rank_by=rank_by, batch_size=batch_size, max_prompt_tokens=max_prompt_tokens,
                             max_response_tokens=max_response_tokens, device=device, precision=precision, n_bins=n_bins,
                             group_by=group_by, cache_dir=cache_dir, generations=generations)

    if plot_path:
        if "calibration" not in result:
            raise click.UsageError("--plot draws the calibration of the implicit reward: it needs --reference")
        from .report import plot_reliability_diagram

        plot_reliability_diagram({"σ(β·h)": result["calibration"]}, plot_path, ece={"σ(β·h)": result["ece"]},
                                 title=f"Calibration of the implicit preference probability (β={result['beta']})")
        result["plot"] = plot_path
        wrote(plot_path, "reliability diagram")
    if output:
        write_json_atomic(output, result)
        wrote(output, "evaluation JSON")
    if as_json:
        click.echo(json.dumps(to_jsonable(result), allow_nan=False))
        return
    from rich.console import Console

    console = Console()
    console.print(report_of(result).to_table())
    for i, row in enumerate(result.get("generations", [])):
        prompt = row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"]
        console.print(f"[bold]prompt {i + 1}[/bold] (last 200 characters): {prompt[-200:]!r}", highlight=False)
        for side in ("reference", "policy"):
            if side in row:
                console.print(f"  {side}: {row[side]!r}", highlight=False)
