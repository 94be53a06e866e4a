"""Regime of a training trajectory: classification, early stopping, boundaries.

Pure numpy (core layer): the study layer uses it for early stopping and
boundary search, the analysis layer for reports. No pandas here.

  classify    the label of one trajectory (convergence, chaotic equilibrium,
              divergence, unresolved) and the evidence behind it
  early_stop  when a running trial's label is settled, so it may stop
  boundaries  where the label changes along an axis, pooled over seeds
"""
from .classify import (CHAOTIC, CONVERGENCE, DIVERGENCE, LABELS, REGIME_ORDER, UNRESOLVED, Classification,
                       RegimeRules, classify, evidence, label_from_evidence)
from .early_stop import CONVERGE_WINDOW, EarlyStop, stop_decision
from .boundaries import Boundary, change_points, estimate_boundaries, majority, midpoint

__all__ = ["CHAOTIC", "CONVERGENCE", "CONVERGE_WINDOW", "DIVERGENCE", "LABELS", "REGIME_ORDER", "UNRESOLVED",
           "Boundary", "Classification", "EarlyStop", "RegimeRules", "change_points", "classify",
           "estimate_boundaries", "evidence", "label_from_evidence", "majority", "midpoint", "stop_decision"]
