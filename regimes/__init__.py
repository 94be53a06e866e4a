"""regimes: map the training regimes of scale-invariant networks.

Core (no Ray needed):
    from regimes import TrainConfig, train
    for rec in train(TrainConfig(dataset="digits", elr=1e-2, epochs=30)):
        ...
"""
from .config import ConfigError, TrainConfig
from .train import Trainer, train

__version__ = "0.1.0"
__all__ = ["ConfigError", "TrainConfig", "Trainer", "train", "__version__"]
