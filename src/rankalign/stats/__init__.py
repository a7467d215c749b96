"""Comparisons and rankings -> ratings with uncertainty (numpy/scipy only, no torch).

Models: Bradley-Terry, Thurstone-Mosteller, Davidson and Rao-Kupper ties (with an optional order/home
effect and covariates), Plackett-Luce for complete, partial and top-k rankings, Luce choice,
Davidson-Luce for ties inside rankings. Exact MLE or MAP by Newton's method on deduplicated sufficient
statistics; Wald and bootstrap intervals; online Elo.
"""

from ._sufficient import PairCounts, check_identifiable, pair_counts
from .davidson_luce import fit_davidson_luce
from .pairwise import MODELS, fit_bradley_terry, fit_davidson, fit_pairwise, fit_rao_kupper, fit_thurstone
from .plackett_luce import fit_luce_choice, fit_plackett_luce
from .result import ELO_OFFSET, ELO_SCALE, RatingResult, pair_probabilities
from .uncertainty import battle_count_matrix, bootstrap, online_elo, win_rate_matrix

__all__ = [
    "fit_bradley_terry", "fit_thurstone", "fit_davidson", "fit_rao_kupper", "fit_pairwise", "MODELS",
    "fit_plackett_luce", "fit_luce_choice", "fit_davidson_luce", "RatingResult", "pair_probabilities",
    "ELO_SCALE", "ELO_OFFSET",
    "PairCounts", "pair_counts", "check_identifiable", "bootstrap", "online_elo", "win_rate_matrix",
    "battle_count_matrix",
]
