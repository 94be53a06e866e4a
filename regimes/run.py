"""`regimes.Trainer` and `regimes.train`: the core Trainer with every technique plugged in.

    from regimes import TrainConfig, train
    for rec in train(TrainConfig(dataset="digits", elr=1e-2, epochs=30)):
        print(rec["epoch"], rec["train_loss"], rec["test_acc"])
"""
from __future__ import annotations

from typing import Iterator

import torch

from .core.config import TrainConfig
from .core.trainer import Trainer as CoreTrainer
from .techniques import TECHNIQUES


class Trainer(CoreTrainer):
    """A run of `cfg` with the techniques its config turns on (regimes.techniques.TECHNIQUES)."""

    def __init__(self, cfg: TrainConfig, dtype: torch.dtype = torch.float32):
        super().__init__(cfg, dtype, techniques=TECHNIQUES)


def train(cfg: TrainConfig, state: dict | None = None) -> Iterator[dict]:
    """Train one run; yields one record (dict of Python scalars) per epoch.
    `state` (a `Trainer.state_dict()`) continues a run from a checkpoint."""
    trainer = Trainer(cfg)
    if state is not None:
        trainer.load_state_dict(state)
    return trainer.run()
