"""rankalign.train: preference training on ranked lists (transformers.Trainer + accelerate).

``TrainConfig`` / ``load_config`` read the YAML config; ``PreferenceTrainer`` is the Trainer subclass;
``train_preference`` is the one-call API used by scripts and ``rankalign demo``.
Importing this package needs only PyYAML; the trainer pieces import torch/transformers on first use.
"""

from .config import (
    ConfigError,
    OnlineConfig,
    PeftConfig,
    TrainConfig,
    apply_override,
    load_config,
    save_config,
)

_LAZY = {
    "PreferenceTrainer": "trainer",
    "TrainResult": "trainer",
    "train_preference": "trainer",
    "compute_reference": "trainer",
    "run_config": "run",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TrainConfig", "PeftConfig", "OnlineConfig", "ConfigError", "load_config", "apply_override", "save_config",
           *_LAZY]
