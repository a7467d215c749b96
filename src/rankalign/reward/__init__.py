"""rankalign.reward: reward models on top of the engine (see DESIGN.md).

* :class:`RewardModel` -- a ``transformers`` backbone (causal or encoder) and a linear head with one or
  more attributes; ``save_pretrained``/``from_pretrained`` in transformers' layout (safetensors + JSON).
* :func:`score_lists` -- rewards of ranked lists, the prompt computed once per list (causal backbones).
* :func:`train_reward_model` -- a plain, seeded training loop over the registered reward objectives.
* :mod:`rankalign.reward.general` -- general (intransitive) preference heads (Zhang et al. 2024);
  ``RewardModel(..., preference_dim=2k)`` puts one on a backbone, :func:`preference_probabilities` reads it.
* :func:`load` -- a saved model and its tokenizer (saves are transformers ``*ForSequenceClassification``
  models: ``AutoModelForSequenceClassification.from_pretrained`` loads every weight).
* :func:`ensemble_scores` -- mean, spread and ``mean - k std`` of an ensemble of heads (``ensemble_size``).
* :mod:`rankalign.reward.judges` -- the judge interface (K candidates -> a ranked list with confidence):
  reward-model, ensemble and general-preference judges.
* ``rankalign reward train|score|eval`` (:mod:`rankalign.reward_cli`, a top-level command module: it reaches the train and eval layers).
"""

from .general import (
    GeneralPreferenceHead,
    general_preference_logits,
    general_preference_loss,
    skew_symmetric_operator,
)
from .judges import (
    EnsembleJudge,
    Judge,
    PreferenceJudge,
    RewardModelJudge,
    aggregate_pairwise,
    ranking_from_scores,
)
from .model import (
    ENCODER_MODEL_TYPES,
    RewardModel,
    center_ensemble_heads,
    encoder_inputs,
    ensemble_scores,
    load,
    preference_probabilities,
    prepare_lists,
    reward_scores,
    score_lists,
)
from .train import attribute_names_from, pairwise_accuracy, train_reward_model

__all__ = [
    "RewardModel", "score_lists", "reward_scores", "preference_probabilities", "prepare_lists", "ENCODER_MODEL_TYPES",
    "load", "encoder_inputs", "ensemble_scores", "center_ensemble_heads", "attribute_names_from",
    "Judge", "RewardModelJudge", "EnsembleJudge", "PreferenceJudge", "aggregate_pairwise", "ranking_from_scores",
    "train_reward_model", "pairwise_accuracy",
    "GeneralPreferenceHead", "general_preference_logits", "general_preference_loss", "skew_symmetric_operator",
]
