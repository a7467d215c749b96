"""rankalign.reward: reward models on top of the engine (see DESIGN.md).

* :class:`RewardModel` -- a ``transformers`` backbone (causal or encoder) and a linear head with one or
  more attributes; ``save_pretrained``/``from_pretrained`` in transformers' layout (safetensors + JSON).
* :func:`score_lists` -- rewards of ranked lists, the prompt computed once per list (causal backbones).
* :func:`train_reward_model` -- a plain, seeded training loop over the registered reward objectives.
* :mod:`rankalign.reward.general` -- general (intransitive) preference heads (Zhang et al. 2024);
  ``RewardModel(..., preference_dim=2k)`` puts one on a backbone, :func:`preference_probabilities` reads it.
* ``rankalign reward train|score`` (:mod:`rankalign.reward.cli`).
"""

from .general import (
    GeneralPreferenceHead,
    general_preference_logits,
    general_preference_loss,
    skew_symmetric_operator,
)
from .model import (
    ENCODER_MODEL_TYPES,
    RewardModel,
    preference_probabilities,
    prepare_lists,
    reward_scores,
    score_lists,
)
from .train import pairwise_accuracy, train_reward_model

__all__ = [
    "RewardModel", "score_lists", "reward_scores", "preference_probabilities", "prepare_lists", "ENCODER_MODEL_TYPES",
    "train_reward_model", "pairwise_accuracy",
    "GeneralPreferenceHead", "general_preference_logits", "general_preference_loss", "skew_symmetric_operator",
]
