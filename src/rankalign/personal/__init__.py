"""rankalign.personal: annotator-aware reward models on fixed response features (see DESIGN.md).

* :func:`fit_personal_reward` -- ``"shared"`` (one BT reward), ``"mixture"`` (PAL-style prototypes with
  per-annotator weights), ``"ideal_point"`` (distance to a per-annotator ideal point), ``"user_latent"``
  (VPL-style per-annotator latent conditioning a reward network); unseen annotators get the population mean.
* :func:`adapt_annotator` -- fit one new annotator's parameters from their few labels, the rest fixed.
* :func:`pair_outcomes` -- per-pair correctness and annotator, for ``rankalign.eval.group_metrics``.

Needs torch only (no transformers).
"""

from .models import (
    PERSONAL_MODELS,
    IdealPointReward,
    MixtureReward,
    PersonalRewardModel,
    SharedLinearReward,
    UserLatentReward,
    adapt_annotator,
    fit_personal_reward,
    load_personal_reward,
    pair_outcomes,
    save_personal_reward,
)

__all__ = [
    "PERSONAL_MODELS", "PersonalRewardModel", "fit_personal_reward", "adapt_annotator", "pair_outcomes",
    "save_personal_reward", "load_personal_reward",
    "SharedLinearReward", "MixtureReward", "IdealPointReward", "UserLatentReward",
]
