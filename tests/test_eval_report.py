"""Reports: table text, JSON (atomic, NaN-safe), and PNG plots that open and have the expected size."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from rankalign.eval import (
    EvalReport,
    expected_calibration_error,
    format_value,
    plot_accuracy_curves,
    plot_gold_reward_vs_kl,
    plot_reliability_diagram,
    to_jsonable,
    write_json_atomic,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_format_value():
    assert format_value((0.625, 0.0312)) == "0.625 ± 0.031"
    assert format_value({"value": 0.5, "se": math.nan}) == "0.500"
    assert format_value((0.5, None)) == "0.500"
    assert to_jsonable((0.5, None)) == {"value": 0.5, "se": None}
    assert format_value(math.nan) == "—"
    assert format_value(None) == "—"
    assert format_value(200) == "200"
    assert format_value(np.int64(7)) == "7"
    assert format_value(1.5e-6) == "1.50e-06"
    assert format_value("dpo") == "dpo"


def test_to_jsonable_estimates_numpy_and_nan():
    obj = {"rate": (0.5, 0.1), "kl": np.float64(math.inf), "n": np.int64(3), "array": np.array([1.0, np.nan]),
           "nested": [{"value": 1.0, "se": math.nan}]}
    assert to_jsonable(obj) == {"rate": {"value": 0.5, "se": 0.1}, "kl": None, "n": 3, "array": [1.0, None],
                                "nested": [{"value": 1.0, "se": None}]}
    with pytest.raises(TypeError):
        to_jsonable(object())


def test_report_table_and_json(tmp_path):
    report = EvalReport("Methods", notes=["win rate against the reference policy"], meta={"seed": 0})
    report.add_row(method="dpo", win_rate=(0.625, 0.031), kl=1.23, n=200)
    report.add_row(method="pl_dpo", win_rate=(0.7, 0.03), kl=math.nan, n=200)
    text = report.to_text()
    assert "Methods" in text and "0.625 ± 0.031" in text and "pl_dpo" in text and "—" in text
    assert "win rate against the reference policy" in text
    path = report.write_json(tmp_path / "out" / "report.json")
    data = json.loads(path.read_text())
    assert data["columns"] == ["method", "win_rate", "kl", "n"]
    assert data["rows"][0]["win_rate"] == {"value": 0.625, "se": 0.031}
    assert data["rows"][1]["kl"] is None
    assert data["meta"] == {"seed": 0}
    # atomic write leaves no temporary file behind and gives ordinary permissions
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_json_atomic_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    return width, height


def test_plots_write_pngs(tmp_path):
    points = [{"method": m, "kl": kl, "gold_reward": g, "kl_se": 0.1, "gold_reward_se": 0.05, "label": f"β={b}"}
              for m in ("dpo", "pl_dpo") for b, kl, g in ((0.5, 0.4, 0.2), (0.1, 2.0, 0.7))]
    points.append({"method": "reference", "kl": 0.0, "gold_reward": 0.0})
    width, height = _png_size(plot_gold_reward_vs_kl(points, tmp_path / "kl.png"))
    assert width > 500 and height > 400

    steps = list(range(0, 50, 10))
    curves = {"dpo": {"steps": steps, "values": [0.5, 0.55, 0.6, 0.62, 0.63], "se": [0.02] * 5},
              "lipo": {"steps": steps, "values": [0.5, 0.52, 0.58, 0.65, 0.7]}}
    _png_size(plot_accuracy_curves(curves, tmp_path / "acc.png", reference_lines={"chance": 0.5}))
    with pytest.raises(ValueError, match="steps"):
        plot_accuracy_curves({"bad": {"steps": [0, 1], "values": [0.5]}}, tmp_path / "bad.png")

    rng = np.random.default_rng(0)
    p = rng.uniform(size=500)
    ece, table = expected_calibration_error(p, rng.uniform(size=500) < p)
    _png_size(plot_reliability_diagram(table, tmp_path / "rel.png", ece=ece))
    _png_size(plot_reliability_diagram({"a": table, "b": table}, tmp_path / "rel2.png", ece={"a": ece}))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["acc.png", "kl.png", "rel.png", "rel2.png"]


def test_plot_labels_repeated_at_a_shared_point_are_written_once():
    from rankalign.eval.report import _annotate_once, _new_figure

    figure, axes = _new_figure()
    labels = [("ep 0", 0.0, 0.3), ("ep 0", 0.0, 0.3), ("ep 0", 0.0, 0.3), ("ep 1", 1.0, 1.3), ("ep 1", 5.0, 2.0)]
    _annotate_once(axes, labels)
    assert sorted(text.get_text() for text in axes.texts) == ["ep 0", "ep 1", "ep 1"]


def test_accuracy_curves_take_styles_and_many_curves(tmp_path):
    curves = {f"m{i} ({part})": {"steps": [0, 1, 2], "values": [0.5, 0.55 + i / 100, 0.6],
                                 "color": f"C{i}", "linestyle": "--" if part == "train" else "-"}
              for i in range(3) for part in ("held-out", "train")}
    width, height = _png_size(plot_accuracy_curves(curves, tmp_path / "many.png"))
    assert height > 600  # the taller figure that leaves room for the legend below the axes


def test_table_notes_are_separate_lines_and_escaped():
    """Each note is its own caption line (not a visible ``\\x0a``); control characters inside a note are escaped."""
    from rich.console import Console

    report = EvalReport("t", rows=[{"metric": "a", "value": 1.0}], notes=["first note", "second \x1b[31m note"])
    console = Console(width=120, record=True, color_system=None)
    console.print(report.to_table())
    lines = console.export_text().splitlines()
    assert any(line.strip() == "first note" for line in lines)
    assert any(line.startswith("second \\x1b[31m") for line in lines)  # the caption wraps at the table's width
    assert not any("\\x0a" in line for line in lines)
