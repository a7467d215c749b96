"""`rankalign demo`: the whole loop on a simulated world with a known gold reward (see rankalign.sim.demo)."""

from __future__ import annotations

import json

import click

from rankalign._cli import deprecated_option, json_option, output_option, resolve_deprecated, wrote


@click.command("demo")
@output_option("results.json, results_table.txt and the PNG plots (a folder)", file=False)
@deprecated_option("--out", "legacy_out", "-o/--output", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of every random choice (0 to 2**32 - 1, what numpy's seeding accepts).")
@click.option("--quick", is_flag=True, help="A smoke run in seconds (tiny sizes; the numbers mean little).")
@json_option
def demo(output, legacy_out, seed, quick, as_json):
    """Train a tiny reference LM on a synthetic language, annotate K = 4 samples per prompt with a
    simulated annotator population, align it with DPO (pairs), Plackett-Luce DPO and LiPO-λ (full lists)
    and on-policy (online Plackett-Luce DPO, online DPO with replay, GRPO, RLOO) from the same budget of
    judged samples, and report gold win rate, KL, ranking accuracy, each on-policy row against offline
    Plackett-Luce DPO, and plots (default folder: demo_output)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .demo import DemoSettings, run_demo

    out_dir = resolve_deprecated(output, legacy_out, new="-o/--output", old="--out") or "demo_output"
    settings = DemoSettings.quick(seed) if quick else DemoSettings(seed=seed)
    if as_json:
        from rich.console import Console

        results = run_demo(out_dir, settings=settings, console=Console(stderr=True))
        click.echo(json.dumps({"output": out_dir, "table": results["table"], "ratings": results["ratings"],
                               "online_vs_offline": results["online_vs_offline"], "seconds": results["seconds"]},
                              default=float, allow_nan=False))
    else:
        run_demo(out_dir, settings=settings)
    for name in ("results.json", "results_table.txt", "gold_reward_vs_kl.png", "accuracy_curves.png"):
        wrote(os.path.join(out_dir, name), name.split(".")[0].replace("_", " "))
