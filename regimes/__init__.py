"""regimes: map the training regimes of scale-invariant networks.

Core (no Ray needed):
    from regimes import TrainConfig, train
    for rec in train(TrainConfig(dataset="digits", elr=1e-2, epochs=30)):
        ...

Packed (K configs as one network, one record per member and epoch):
    from regimes import train_pack
    for recs in train_pack([cfg.replace(elr=e) for e in (1e-3, 1e-2, 1e-1)]):
        ...                                   # {member index: record}

The names are imported on first use, so `import regimes.core.config` (the CLI's
help, a spec check) does not pay for importing torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["ConfigError", "PackedTrainer", "TrainConfig", "Trainer", "train", "train_pack", "__version__"]

_PUBLIC = {"ConfigError": "regimes.errors", "TrainConfig": "regimes.core.config",
           "Trainer": "regimes.run", "train": "regimes.run",
           "PackedTrainer": "regimes.core.pack", "train_pack": "regimes.core.pack"}


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'regimes' has no attribute {name!r}")
