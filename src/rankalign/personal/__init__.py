"""rankalign.personal: annotator-aware reward models on fixed response features (see DESIGN.md).

* :func:`fit_personal_reward` -- ``"shared"`` (one BT reward), ``"mixture"`` (prototype rewards with
  per-annotator weights, PAL-B's structure), ``"pal"`` (PAL-A: ideal points on the simplex of K shared
  prototypes), ``"ideal_point"`` (distance to a per-annotator ideal point), ``"user_latent"``
  (VPL-style per-annotator latent conditioning a reward network); unseen annotators get the population mean.
* :func:`adapt_annotator` -- fit one new annotator's parameters from their few labels, the rest fixed.
* :func:`pair_outcomes` -- per-pair correctness and annotator, for ``rankalign.eval.group_metrics``.
* :func:`fit_vpl_reward` -- VPL: an encoder from a user's context comparisons to a latent ``z`` (ELBO,
  reparameterised, KL to N(0, I)) and a ``z``-conditioned reward; serves unseen users without training.
* :func:`few_shot_curve` -- accuracy on unseen annotators against 0, 1, 2, 4, 8, 16 of their examples.
* :func:`backbone_features` -- frozen reward-model backbone features (MiniLM, a tiny LM, ...) for all of these
  (needs transformers).

Needs torch only (no transformers) except :func:`backbone_features`.
"""

from .models import (
    PERSONAL_MODELS,
    IdealPointReward,
    MixtureReward,
    PALIdealPointReward,
    PersonalRewardModel,
    SharedLinearReward,
    UserLatentReward,
    adapt_annotator,
    fit_personal_reward,
    load_personal_reward,
    pair_outcomes,
    save_personal_reward,
)
from .vpl import VPLRewardModel, few_shot_curve, fit_vpl_reward, gaussian_kl_to_standard


def backbone_features(*args, **kwargs):
    """See :func:`rankalign.personal.backbone.backbone_features` (imported lazily: it needs transformers)."""
    from .backbone import backbone_features as compute

    return compute(*args, **kwargs)


__all__ = [
    "fit_vpl_reward", "VPLRewardModel", "few_shot_curve", "gaussian_kl_to_standard", "backbone_features",
    "PERSONAL_MODELS", "PersonalRewardModel", "fit_personal_reward", "adapt_annotator", "pair_outcomes",
    "save_personal_reward", "load_personal_reward",
    "SharedLinearReward", "MixtureReward", "PALIdealPointReward", "IdealPointReward", "UserLatentReward",
]
