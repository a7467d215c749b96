"""Trainer callbacks: the console progress bar (rich), ``metrics.jsonl`` and the checkpoint-complete marker.

:func:`last_complete_checkpoint` (from :mod:`rankalign.train.checkpoints`) finds the newest checkpoint
that carries the marker and is whole, the one a resume may trust.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import transformers

from rankalign._atomic import atomic_write_text

from .checkpoints import CHECKPOINT_MARKER, last_complete_checkpoint, write_marker

__all__ = ["CHECKPOINT_MARKER", "METRICS_FILE", "CheckpointMarkerCallback", "RichProgressCallback",
           "MetricsFileCallback", "last_complete_checkpoint"]

METRICS_FILE = "metrics.jsonl"


def _append_line(path: Path, line: str) -> None:
    """Append one line with a single O_APPEND write, then fsync: a reader never sees half a line."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class RichProgressCallback(transformers.TrainerCallback):
    """The training progress bar in rich's style (the one every rankalign command uses), on stderr, with
    the latest key metrics beside it; replaces the Trainer's tqdm bar and its one-line-per-log output
    (the full metrics go to ``metrics.jsonl`` and TensorBoard)."""

    KEYS = {"loss": "loss", "rewards/accuracy": "reward acc", "rewards/margin": "margin",
            "tokens_per_second": "tok/s"}

    def __init__(self):
        self.progress = None
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
                                 console=Console(stderr=True))
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, metrics="")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        shown = [f"{label} {logs[key]:.4g}" for key, label in self.KEYS.items() if isinstance(logs.get(key), (int, float))]
        if shown:
            self.progress.update(self.task, metrics=", ".join(shown))

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None


class MetricsFileCallback(transformers.TrainerCallback):
    """Write every training log to ``output_dir/metrics.jsonl``, one JSON object per line.

    At the start of training the file is cut back to the lines with ``step <= global_step`` (atomically),
    so after a resume the steps that were lost with the killed process are not listed twice.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a killed writer
                if row.get("step", 0) <= state.global_step:
                    kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, **logs}
        _append_line(self.path, json.dumps(row, default=float))


class CheckpointMarkerCallback(transformers.TrainerCallback):
    """Mark a checkpoint complete once the Trainer has written all of it (weights, optimiser, RNG, state).

    The Trainer writes ``checkpoint-N`` in place, so a process killed while saving leaves a partial
    directory; :func:`last_complete_checkpoint` only trusts directories that carry this marker. The marker
    holds the run's fingerprint (``fingerprint()``, see :mod:`rankalign.train.checkpoints`), so a resume can
    prove the checkpoint belongs to it.
    """

    def __init__(self, fingerprint=lambda: None):
        self.fingerprint = fingerprint

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if directory.is_dir():
            write_marker(directory, state.global_step, self.fingerprint())
