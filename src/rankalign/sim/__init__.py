"""rankalign.sim: worlds with a known gold reward, simulated annotators, and the demo.

* :mod:`rankalign.sim.tabular` -- the tabular world: log-linear policies over finite candidate sets, exact
  log-probs, KL, gold reward, win rates, best-of-n, and exact optimisation of any registered objective.
* :mod:`rankalign.sim.annotators` -- simulated annotators (Bradley-Terry / Thurstone / Plackett-Luce
  choice, flip noise, Davidson ties, 1-5 ratings, best-of-K picks, thumbs) and populations of them.
* :mod:`rankalign.sim.text_world` -- a tiny synthetic language, its gold reward and a tiny causal LM
  (needs the ``train`` extra; imported lazily).
* :mod:`rankalign.sim.list_length` -- the list-length study (K = 2, 4, 8 from one annotation budget).
* :mod:`rankalign.sim.demo` -- ``rankalign demo`` (:func:`rankalign.sim.demo.run_demo`): the whole loop in
  the text world, from annotation to aligned policies, with metrics and plots.

Only NumPy is needed at import time; torch is imported when an objective is optimised.
"""

from .annotators import (
    ANNOTATION_KINDS,
    CHOICE_MODELS,
    Annotator,
    annotate,
    annotate_items,
    make_population,
    pair_probabilities,
    sample_best,
    sample_ranks,
    sample_ratings,
    sample_thumbs,
)
from .tabular import (
    OptimisationResult,
    TabularData,
    TabularWorld,
    best_of_n_log_probs,
    expected_gold_reward,
    gold_utilities,
    kl_divergence,
    kl_regularised_optimum,
    kl_to_reference,
    make_tabular_world,
    optimise_policy,
    pairwise_population,
    policy_log_probs,
    ranking_accuracy,
    records_to_tabular,
    tabular_items,
    tabular_loss_function,
    win_rate,
)

__all__ = [
    "ANNOTATION_KINDS", "CHOICE_MODELS", "Annotator", "annotate", "annotate_items", "make_population",
    "pair_probabilities", "sample_best", "sample_ranks", "sample_ratings", "sample_thumbs",
    "OptimisationResult", "TabularData", "TabularWorld", "best_of_n_log_probs", "expected_gold_reward",
    "gold_utilities", "kl_divergence", "kl_regularised_optimum", "kl_to_reference", "make_tabular_world",
    "optimise_policy", "pairwise_population", "policy_log_probs", "ranking_accuracy", "records_to_tabular",
    "tabular_items", "tabular_loss_function", "win_rate",
]
