"""The list-length study (rankalign.sim.list_length) and its script."""

import csv
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from rankalign.sim import TabularWorld
from rankalign.sim.list_length import run_list_length_study, win_rate_at_kl


def test_win_rate_at_matched_kl_by_hand():
    # one prompt, candidates with features 0 and 1, uniform reference, gold r* = (0, 2); along any
    # positive direction the policy is (1 - q, q); the KL of q = 3/4 from uniform is
    # 1/4 log(1/2) + 3/4 log(3/2), where the win rate against uniform is 1/2 + (q - 1/2)/2 = 5/8
    world = TabularWorld(features=np.array([[[0.0], [1.0]]]), gold_weights=np.array([2.0]),
                         reference_theta=np.array([0.0]), lengths=np.array([[1, 1]]))
    target = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert win_rate_at_kl(world, np.array([17.0]), target) == pytest.approx(0.625, abs=1e-9)
    assert win_rate_at_kl(world, np.array([0.01]), target) == pytest.approx(0.625, abs=1e-9)


def test_quick_study_rows_and_pl_dpo_equals_dpo_on_pairs():
    rows = run_list_length_study(ks=(2, 4), objectives=("pl_dpo", "dpo"), budget=32, seeds=range(2),
                                 num_prompts=8, num_candidates=6, dim=3)
    assert [(r["objective"], r["k"], r["lists"]) for r in rows] == [
        ("pl_dpo", 2, 16), ("pl_dpo", 4, 8), ("dpo", 2, 16), ("dpo", 4, 8)]
    by = {(r["objective"], r["k"]): r for r in rows}
    # Plackett-Luce on a pair is Bradley-Terry (DPO paper, appendix A.3): the same optimum at K = 2
    assert by[("pl_dpo", 2)]["win_rate"] == pytest.approx(by[("dpo", 2)]["win_rate"], abs=1e-6)
    assert by[("pl_dpo", 2)]["kl"] == pytest.approx(by[("dpo", 2)]["kl"], abs=1e-5)
    for r in rows:
        assert 0.0 <= r["win_rate"] <= 1.0 and r["kl"] >= 0.0 and r["seeds"] == 2
    again = run_list_length_study(ks=(2, 4), objectives=("pl_dpo", "dpo"), budget=32, seeds=range(2),
                                  num_prompts=8, num_candidates=6, dim=3)
    assert [r["win_rate"] for r in again] == [r["win_rate"] for r in rows]  # deterministic for the seeds


@pytest.mark.slow
def test_study_script_quick_run_writes_csv(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "study_list_length.py"
    spec = importlib.util.spec_from_file_location("study_list_length", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "study.csv"
    assert module.main(["--quick", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 * 3 * 3  # two budgets x three K x three objectives
    assert {r["k"] for r in rows} == {"2", "4", "8"}
