"""`rankalign demo`: the whole loop on a simulated world with a known gold reward (see rankalign.sim.demo)."""

from __future__ import annotations

import click


@click.command("demo")
@click.option("--out", "out_dir", default="demo_output", show_default=True, type=click.Path(file_okay=False),
              help="Directory for results.json, results_table.txt and the PNG plots.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random choice.")
@click.option("--quick", is_flag=True, help="A smoke run in seconds (tiny sizes; the numbers mean little).")
def demo(out_dir, seed, quick):
    """Train a tiny reference LM on a synthetic language, annotate K = 4 samples per prompt with a
    simulated annotator population, align it with DPO (pairs), Plackett-Luce DPO and LiPO-λ (full lists)
    and on-policy (online Plackett-Luce DPO, GRPO, RLOO) from the same budget of judged samples, and
    report gold win rate, KL, ranking accuracy and plots."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .demo import DemoSettings, run_demo

    settings = DemoSettings.quick(seed) if quick else DemoSettings(seed=seed)
    run_demo(out_dir, settings=settings)
