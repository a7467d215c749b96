"""Evaluation reports: a rich table for the terminal, JSON for scripts, PNG plots for people.

An :class:`EvalReport` is a title plus rows of named metric values. A value is a number, a string, or an
estimate with a standard error, given as a ``(value, se)`` tuple or ``{"value": v, "se": s}``; the table
shows estimates as ``0.625 ± 0.031`` and the JSON keeps them as ``{"value": v, "se": s}``. NaN and
infinities become ``null`` in JSON (standard JSON has no NaN).

Plots use matplotlib's object API with the Agg canvas (no pyplot state, no display needed), and every file
is written atomically: to a temporary file in the target directory, then ``os.replace``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._atomic import atomic_write, atomic_write_json
from .._escape import for_terminal
from .._json import plain

__all__ = [
    "EvalReport",
    "format_value",
    "to_jsonable",
    "write_json_atomic",
    "plot_gold_reward_vs_kl",
    "plot_accuracy_curves",
    "plot_reliability_diagram",
]


# ------------------------------------------------------------------------------------------- values
def _estimate(value) -> tuple[float, float] | None:
    """``(value, se)`` when ``value`` is an estimate with an SE, else None."""
    if isinstance(value, Mapping) and set(value) == {"value", "se"}:
        return value["value"], value["se"]
    if isinstance(value, tuple) and len(value) == 2 and _is_number(value[0]) and (
            value[1] is None or _is_number(value[1])):
        return value
    return None


def _is_number(value) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, str)


def _number_text(value: float, digits: int) -> str:
    value = float(value)
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value != 0 and (abs(value) >= 10 ** 5 or abs(value) < 10 ** -(digits - 1)):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}"


def format_value(value, digits: int = 3) -> str:
    """Text for a table cell: ``0.625 ± 0.031`` for an estimate, ``—`` for NaN/None, ints as ints."""
    if value is None:
        return "—"
    estimate = _estimate(value)
    if estimate is not None:
        mean, se = estimate
        if se is None or (isinstance(se, float) and math.isnan(se)):
            return _number_text(mean, digits)
        return f"{_number_text(mean, digits)} ± {_number_text(se, digits)}"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        return str(int(value))
    if _is_number(value):
        return _number_text(value, digits)
    return str(value)


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: estimates -> ``{"value", "se"}``, NumPy scalars/arrays -> Python, NaN/inf -> None
    (:func:`rankalign._json.plain` with the estimates as a special case)."""

    def estimates(item):
        estimate = _estimate(item)
        return NotImplemented if estimate is None else {"value": estimate[0], "se": estimate[1]}

    return plain(value, estimates)


def _atomic_write(path, write) -> Path:
    """Call ``write(binary_handle)`` on a temporary file next to ``path``, then move it into place."""
    return atomic_write(path, write, binary=True)


def write_json_atomic(path, obj) -> Path:
    """Write ``obj`` (NumPy values, NaN -> null, through :func:`to_jsonable`) with the one atomic JSON
    writer, :func:`rankalign._atomic.atomic_write_json`."""
    return atomic_write_json(path, to_jsonable(obj), allow_nan=False)


# ------------------------------------------------------------------------------------------- report
@dataclass
class EvalReport:
    """A titled table of metrics: one row per method, checkpoint, group or data set.

    Parameters
    ----------
    title : str
    rows : list of dict
        Column name -> value (see the module docstring for values). Columns are the union of the rows'
        keys in first-seen order unless ``columns`` is given.
    columns : list of str, optional
    notes : list of str
        Lines printed under the table (what a column means, which estimator was used).
    meta : dict
        Provenance written to JSON only (model path, data file, settings).
    """

    title: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def add_row(self, **values) -> None:
        self.rows.append(dict(values))

    def column_names(self) -> list[str]:
        if self.columns is not None:
            return list(self.columns)
        return list(dict.fromkeys(key for row in self.rows for key in row))

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"title": self.title, "columns": self.column_names(), "rows": self.rows,
                            "notes": self.notes, "meta": self.meta})

    def to_table(self, digits: int = 3):
        """A :class:`rich.table.Table` (text left-aligned, numbers right-aligned)."""
        from rich.table import Table

        table = Table(title=for_terminal(self.title), caption="\n".join(for_terminal(note) for note in self.notes) or None,
                      caption_justify="left")
        columns = self.column_names()
        for name in columns:
            numeric = any(_is_number(row.get(name)) or _estimate(row.get(name)) is not None
                          for row in self.rows)
            table.add_column(for_terminal(name), justify="right" if numeric else "left")
        for row in self.rows:
            table.add_row(*(for_terminal(format_value(row.get(name), digits)) for name in columns))
        return table

    def print(self, console=None, digits: int = 3) -> None:
        from rich.console import Console

        (console or Console()).print(self.to_table(digits))

    def to_text(self, width: int = 120, digits: int = 3) -> str:
        """The rendered table as plain text (for logs and tests)."""
        from rich.console import Console

        console = Console(width=width, record=True, file=open(os.devnull, "w"), color_system=None)
        console.print(self.to_table(digits))
        text = console.export_text()
        console.file.close()
        return text

    def write_json(self, path) -> Path:
        return write_json_atomic(path, self.to_dict())


# -------------------------------------------------------------------------------------------- plots
def _new_figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _save_png(figure, path) -> Path:
    return _atomic_write(path, lambda handle: figure.savefig(handle, format="png"))


def _finite_or_none(values) -> list[float] | None:
    if values is None:
        return None
    return [float("nan") if v is None else float(v) for v in values]


def plot_gold_reward_vs_kl(points: Sequence[Mapping[str, Any]], path, *,
                           title: str = "Gold reward against KL from the reference policy",
                           x_label: str = "KL(π ‖ π_ref) (nats)", y_label: str = "gold reward") -> Path:
    """Gold reward against KL, one curve per method (the reward--KL frontier of Gao et al. 2023,
    "Scaling Laws for Reward Model Overoptimization").

    Parameters
    ----------
    points : sequence of dict
        ``{"method": str, "kl": float, "gold_reward": float}`` with optional ``"kl_se"`` and
        ``"gold_reward_se"`` (error bars) and ``"label"`` (annotates the point, e.g. a step or beta).
        Points of one method are joined in order of KL.
    path : str or Path
        Where the PNG goes.
    """
    figure, axes = _new_figure()
    labels: list[tuple[str, float, float]] = []
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for point in points:
        by_method.setdefault(str(point["method"]), []).append(point)
    for method, members in by_method.items():
        members = sorted(members, key=lambda p: float(p["kl"]))
        x = [float(p["kl"]) for p in members]
        y = [float(p["gold_reward"]) for p in members]
        x_err = _finite_or_none([p.get("kl_se") for p in members]) if any(p.get("kl_se") is not None
                                                                         for p in members) else None
        y_err = _finite_or_none([p.get("gold_reward_se") for p in members]) if any(
            p.get("gold_reward_se") is not None for p in members) else None
        axes.errorbar(x, y, xerr=x_err, yerr=y_err, marker="o", capsize=3, linestyle="-" if len(x) > 1 else "none",
                      label=method)
        for p, xi, yi in zip(members, x, y):
            if p.get("label") is not None:
                labels.append((str(p["label"]), xi, yi))
    _annotate_once(axes, labels)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if by_method:
        axes.legend(title="method")
    return _save_png(figure, path)


def _annotate_once(axes, labels: list[tuple[str, float, float]], *, min_gap: float = 0.03) -> None:
    """Write point labels, skipping one whose text repeats a label already written within ``min_gap``
    (a fraction of the axis spans) -- e.g. the shared starting point of several methods."""
    if not labels:
        return
    xs = [x for _, x, _ in labels]
    ys = [y for _, _, y in labels]
    span_x = (max(xs) - min(xs)) or 1.0
    span_y = (max(ys) - min(ys)) or 1.0
    written: list[tuple[str, float, float]] = []
    for text, x, y in labels:
        if any(text == t and abs(x - wx) / span_x < min_gap and abs(y - wy) / span_y < min_gap
               for t, wx, wy in written):
            continue
        axes.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        written.append((text, x, y))


def plot_accuracy_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path, *,
                         title: str = "Ranking accuracy during training", y_label: str = "ranking accuracy",
                         x_label: str = "training step",
                         reference_lines: Mapping[str, float] | None = None) -> Path:
    """Metric curves over training steps, one line per method (with an SE band where given).

    Parameters
    ----------
    curves : mapping
        ``name -> {"steps": [...], "values": [...], "se": [...] (optional)}``; a curve may also set
        ``"color"``, ``"linestyle"`` and ``"marker"`` (e.g. one colour per method, dashed for training data).
        With more than four curves the legend goes below the axes so that it hides no line.
    reference_lines : mapping, optional
        ``label -> y`` horizontal dashed lines (e.g. the idealised ranking accuracy, chance at 0.5).
    """
    figure, axes = _new_figure(6.4, 5.2 if len(curves) > 4 else 4.4)
    for name, curve in curves.items():
        steps = [float(s) for s in curve["steps"]]
        values = [float(v) for v in curve["values"]]
        if len(steps) != len(values):
            raise ValueError(f"curve {name!r}: {len(steps)} steps but {len(values)} values")
        line, = axes.plot(steps, values, marker=curve.get("marker", "o"), markersize=3, label=name,
                          color=curve.get("color"), linestyle=curve.get("linestyle", "-"))
        if curve.get("se") is not None:
            se = [float(s) for s in curve["se"]]
            lower = [v - s for v, s in zip(values, se)]
            upper = [v + s for v, s in zip(values, se)]
            axes.fill_between(steps, lower, upper, color=line.get_color(), alpha=0.2, linewidth=0)
    for label, y in (reference_lines or {}).items():
        axes.axhline(float(y), linestyle="--", color="gray", linewidth=1)
        axes.annotate(label, (0.01, float(y)), xycoords=("axes fraction", "data"), textcoords="offset points",
                      xytext=(0, 3), fontsize=8, color="dimgray")
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if len(curves) > 4:
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize="small", frameon=False)
    elif curves:
        axes.legend()
    return _save_png(figure, path)


def plot_reliability_diagram(tables: Mapping[str, Sequence[Mapping[str, Any]]] | Sequence[Mapping[str, Any]],
                             path, *, title: str = "Reliability diagram",
                             x_label: str = "predicted probability", y_label: str = "observed frequency",
                             ece: Mapping[str, float] | float | None = None) -> Path:
    """Observed frequency against mean predicted probability per bin (Guo et al. 2017), with the diagonal
    of perfect calibration; marker area grows with the bin's count.

    Parameters
    ----------
    tables : reliability table, or mapping name -> table
        Tables from :func:`rankalign.eval.metrics.expected_calibration_error` (or
        :func:`~rankalign.eval.metrics.preference_calibration`); empty bins are skipped.
    ece : float or mapping name -> float, optional
        Shown in the legend.
    """
    if not isinstance(tables, Mapping):
        tables = {"model": tables}
        if ece is not None and not isinstance(ece, Mapping):
            ece = {"model": ece}
    figure, axes = _new_figure(5.6, 5.2)
    axes.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
    for name, table in tables.items():
        rows = [row for row in table if row["count"]]
        total = sum(row["count"] for row in rows) or 1
        x = [row["mean_probability"] for row in rows]
        y = [row["mean_outcome"] for row in rows]
        sizes = [20 + 300 * row["count"] / total for row in rows]
        label = name
        if isinstance(ece, Mapping) and name in ece and ece[name] is not None:
            label = f"{name} (ECE {ece[name]:.3f})"
        line, = axes.plot(x, y, linewidth=1)
        axes.scatter(x, y, s=sizes, color=line.get_color(), alpha=0.8, label=label)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_aspect("equal")
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title, fontsize="medium")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left")
    return _save_png(figure, path)
