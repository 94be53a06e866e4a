"""The techniques of the papers this package reproduces, one module each.

Each module holds the mechanism (plain torch, usable on its own) and one
`Technique` subclass (regimes.core.hooks) that plugs it into a run: when the
config turns it on, what it adds to the loss, the step and the epoch, the
measures it records and the state it checkpoints. Their config fields are
groups of `TrainConfig` (regimes/core/config.py), which stays torch-free.

`TECHNIQUES` is the explicit list `regimes.Trainer` composes, in this order
(the order of their hooks and measures).
"""
from __future__ import annotations

from .curvature import CurvatureMeasures
from .enorm import EquiNormalization
from .late_phase import LatePhaseWeights
from .lcnn import LowCurvature
from .measures import CosineToInit, FullBatchGradient, LabelNoise
from .swa import StochasticWeightAveraging

TECHNIQUES = (EquiNormalization, LatePhaseWeights, StochasticWeightAveraging, LowCurvature, CurvatureMeasures,
              FullBatchGradient, CosineToInit, LabelNoise)

__all__ = ["TECHNIQUES", "CosineToInit", "CurvatureMeasures", "EquiNormalization", "FullBatchGradient",
           "LabelNoise", "LatePhaseWeights", "LowCurvature", "StochasticWeightAveraging"]
