"""reward eval metrics on hand-made probabilities, and `rankalign reward eval --json/--plot` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rankalign.data.records import RankedList
from rankalign.eval.reward import Z_95, reward_metrics


def _matrix(scores):
    s = np.asarray(scores, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :])))


def test_metrics_by_hand():
    records = [
        RankedList(candidates=["a", "b"], ranks=[0, 1], annotator="ann1", meta={"subset": "chat"}),
        RankedList(candidates=["a", "b"], ranks=[0, 1], annotator="ann1", meta={"subset": "chat"}),
        RankedList(candidates=["a", "b"], ranks=[1, 0], annotator="ann2", meta={"subset": "safety"}),
        RankedList(candidates=["a", "b", "c"], ranks=[0, 1, 1], annotator="ann2", meta={"subset": "safety"}),
    ]
    scores = [[2.0, 1.0], [0.0, 1.0], [0.0, 3.0], [1.0, 2.0, 2.05]]
    metrics = reward_metrics([_matrix(s) for s in scores], records, group_by="annotator", scores=scores)
    # ordered pairs: list0 right, list1 wrong, list2 right (b > a), list3: (a>b) wrong, (a>c) wrong -> 2 / 5
    assert metrics["n"] == 5 and metrics["accuracy"] == pytest.approx(0.4)
    # cluster-robust SE by hand: cluster sums S = (1, 0, 1, 0), sizes n = (1, 1, 1, 2), m = 0.4, G = 4
    residuals = np.array([1 - 0.4, 0 - 0.4, 1 - 0.4, 0 - 0.8])
    se = math.sqrt(4 / 3 * (residuals ** 2).sum()) / 5
    assert metrics["se"] == pytest.approx(se)
    assert metrics["ci_low"] == pytest.approx(max(0.0, 0.4 - Z_95 * se))
    assert metrics["ci_high"] == pytest.approx(min(1.0, 0.4 + Z_95 * se))
    # the one data tie (b, c of list 3): P(b > c) = sigma(-0.05) = 0.4875, within 0.1 of 1/2 -> right
    assert metrics["tie_pairs"] == 1 and metrics["tie_accuracy"] == 1.0
    # best of K (K >= 3 only): list 3's arg-max is c (rank 1), not a -> 0
    assert metrics["best_of_k_lists"] == 1 and metrics["best_of_k_accuracy"] == 0.0
    assert metrics["groups"]["ann1"]["accuracy"] == pytest.approx(0.5)
    assert metrics["groups"]["ann2"]["accuracy"] == pytest.approx(1 / 3)
    assert metrics["worst_group"] == "ann2"
    assert metrics["subsets"]["chat"]["accuracy"] == pytest.approx(0.5)
    assert metrics["subsets"]["safety"]["accuracy"] == pytest.approx(1 / 3)
    assert metrics["subset_macro_accuracy"] == pytest.approx((0.5 + 1 / 3) / 2)
    # ECE: each pair in both orientations; p of the winner for the 5 pairs
    p = np.array([_matrix(scores[0])[0, 1], _matrix(scores[1])[0, 1], _matrix(scores[2])[1, 0],
                  _matrix(scores[3])[0, 1], _matrix(scores[3])[0, 2]])
    probs, outcomes = np.concatenate([p, 1 - p]), np.concatenate([np.ones(5), np.zeros(5)])
    bins = np.minimum((probs * 10).astype(int), 9)
    ece = sum(abs(outcomes[bins == b].mean() - probs[bins == b].mean()) * (bins == b).sum() for b in set(bins)) / 10
    assert metrics["ece"] == pytest.approx(ece)


def test_no_ordered_pair_is_a_clear_error():
    records = [RankedList(candidates=["a", "b"], ranks=[0, 0])]
    with pytest.raises(ValueError, match="no strictly ordered pair"):
        reward_metrics([_matrix([0.0, 1.0])], records)


def test_reward_eval_cli_json_and_plot(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from click.testing import CliRunner

    from rankalign.engine import build_tokenizer, tiny_causal_lm
    from rankalign.reward import RewardModel
    from rankalign.reward_cli import reward

    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"p{i}", "chosen": "good " * (1 + i % 3), "rejected": "bad", "subset": "s" + str(i % 2),
             "annotator": f"a{i % 2}"} for i in range(12)]
    rows.append({"prompt": "empty", "chosen": "good", "rejected": ""})  # an empty response is real data
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tokenizer = build_tokenizer(["good bad empty"] + [f"p{i}" for i in range(12)], vocab_size=64, kind="word")
    model = RewardModel(tiny_causal_lm(len(tokenizer), hidden_size=16, layers=1, heads=2))
    model.save_pretrained(tmp_path / "rm", tokenizer=tokenizer)
    result = CliRunner().invoke(reward, ["eval", str(tmp_path / "rm"), str(data), "--json", "--plot",
                                         str(tmp_path / "rel.png"), "--group-by", "annotator", "--skip-invalid"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # stdout holds exactly one JSON object
    assert {"accuracy", "n", "ci_low", "ci_high", "ece", "tie_accuracy", "best_of_k_accuracy"} <= set(out)
    assert out["ci_low"] <= out["accuracy"] <= out["ci_high"] and out["n"] >= 12
    assert (tmp_path / "rel.png").stat().st_size > 1000
    result = CliRunner().invoke(reward, ["eval", str(tmp_path / "rm"), str(data), "--skip-invalid"])
    assert result.exit_code == 0 and "pairwise accuracy" in result.output
