"""rankalign.eval: metrics and reports for preference learning (see DESIGN.md).

The metrics (:mod:`rankalign.eval.metrics`) need only NumPy; the reports need ``rich`` and, for PNG
plots, ``matplotlib``. Neither imports torch or transformers: the model path lives in
:mod:`rankalign.eval.cli` (``rankalign eval``) and is imported only by that command.
"""

from .metrics import (
    alignment_gap,
    clustered_mean_with_se,
    cohens_kappa,
    expected_calibration_error,
    gold_summary,
    gold_win_rate,
    group_metrics,
    idealised_ranking_accuracy,
    kendall_tau,
    kl_estimate,
    likelihood_displacement,
    listwise_ranking_accuracy,
    listwise_reward_accuracy,
    mean_kendall_tau,
    mean_with_se,
    ordered_pair_indices,
    preference_calibration,
    ranking_accuracy,
    reward_accuracy,
)
from .policy import evaluate_logps, pair_rates_from_shares
from .report import (
    EvalReport,
    format_value,
    plot_accuracy_curves,
    plot_gold_reward_vs_kl,
    plot_reliability_diagram,
    to_jsonable,
    write_json_atomic,
)

__all__ = [
    "EvalReport",
    "format_value",
    "plot_accuracy_curves",
    "plot_gold_reward_vs_kl",
    "plot_reliability_diagram",
    "to_jsonable",
    "write_json_atomic",
    "alignment_gap",
    "clustered_mean_with_se",
    "cohens_kappa",
    "evaluate_logps",
    "ordered_pair_indices",
    "pair_rates_from_shares",
    "expected_calibration_error",
    "gold_summary",
    "gold_win_rate",
    "group_metrics",
    "idealised_ranking_accuracy",
    "kendall_tau",
    "kl_estimate",
    "likelihood_displacement",
    "listwise_ranking_accuracy",
    "listwise_reward_accuracy",
    "mean_kendall_tau",
    "mean_with_se",
    "preference_calibration",
    "ranking_accuracy",
    "reward_accuracy",
]
