"""Analysis layer: Parquet results -> regime labels, boundaries, figures, reports.

    from regimes.analysis import load_study, classify, boundaries, plot_phase_diagram
    study = load_study("results/three-regimes-digits")
    labels = classify(study)            # one row per trial: regime + evidence
    bounds = boundaries(study, labels)  # ELR (or lr) where the regime changes
    plot_phase_diagram(study, labels, x="elr", y="wd")

Reads Parquet only (pyarrow/pandas); never imports the study (Ray) layer.
"""
from ..regime import LABELS, RegimeRules
from .load import Study, boundaries, classify, discover_axes, load_study, majority_table
from .plots import (REGIME_COLORS, plot_phase_diagram, plot_regime_strip, plot_training_curves,
                    regime_legend)
from .report import make_report

__all__ = ["LABELS", "REGIME_COLORS", "RegimeRules", "Study", "boundaries", "classify", "discover_axes",
           "load_study", "majority_table", "make_report", "plot_phase_diagram", "plot_regime_strip",
           "plot_training_curves", "regime_legend"]
