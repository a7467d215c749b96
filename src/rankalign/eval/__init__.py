"""rankalign.eval: metrics and reports for preference learning (see DESIGN.md).

* :mod:`~rankalign.eval.metrics` (NumPy only): ``mean_with_se``, ``clustered_mean_with_se``,
  ``gold_win_rate``, ``paired_win_rate_difference``, ``gold_summary``, ``kl_estimate`` (k1 / k3),
  ``ranking_accuracy`` and
  ``listwise_ranking_accuracy``, ``idealised_ranking_accuracy`` and ``alignment_gap`` (Chen et al. 2024),
  ``likelihood_displacement`` (Razin et al. 2024), ``reward_accuracy`` / ``listwise_reward_accuracy``,
  ``kendall_tau`` (tau-b) / ``mean_kendall_tau``, ``expected_calibration_error`` /
  ``preference_calibration``, ``cohens_kappa``, ``group_metrics``.
* :mod:`~rankalign.eval.policy` (NumPy only): ``evaluate_logps``, every metric of a policy from its
  ``[N, K]`` log-probabilities; ``pair_rates_from_shares``.
* :mod:`~rankalign.eval.report`: ``EvalReport`` (rich table, JSON), ``write_json_atomic``, PNG plots
  (``plot_gold_reward_vs_kl``, ``plot_accuracy_curves``, ``plot_reliability_diagram``; matplotlib Agg).
* :mod:`~rankalign.eval.cli`: ``rankalign eval``; the only module that imports torch/transformers, and
  only when the command runs.
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
    paired_win_rate_difference,
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
    "paired_win_rate_difference",
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
