"""The per-epoch record: every key a run yields, with its meaning and unit.

This is the one list of measure names. The Trainer fills the core measures,
each technique declares the ones it adds (`Technique.measures`), the study
spec accepts any `measure` as an objective, and the analysis layer reads them
by these names; `tests/test_record.py` checks that nothing uses a name that is
not here. Every record carries every technique measure (NaN when the
technique is off or the measure is not due that epoch), so every trial of a
study writes the same Parquet schema.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str
    meaning: str
    unit: str
    source: str = "core"        # "core", a technique's name, or "study" (added by the Ray trainable)
    measure: bool = True        # a per-epoch measure (an objective may use it); False: bookkeeping
    kind: type = float          # the Python type of its values (a Parquet column of that type)


FIELDS: tuple[Field, ...] = (
    # --- bookkeeping -------------------------------------------------------------
    Field("epoch", "epochs done (1-based)", "epochs", measure=False, kind=int),
    Field("step", "optimiser steps done", "steps", measure=False, kind=int),
    Field("num_classes", "classes C of the dataset (chance accuracy is 1/C)", "", measure=False, kind=int),
    Field("diverged", "the loss or the SI norm became non-finite; the run ends at this record", "",
          measure=False, kind=bool),
    # --- core measures -------------------------------------------------------------
    Field("train_loss", "the training loss (cross-entropy; loss=squared: the squared loss) on the full train "
          "set, BN in train mode, no augmentation, against the training labels (noisy ones with corrupt_train) "
          "(NaN on epochs skipped by train_eval_every)", "nats"),
    Field("train_acc", "accuracy on the full train set, as train_loss", "fraction"),
    Field("test_loss", "the training loss (as train_loss) on the test set, eval mode", "nats"),
    Field("test_acc", "accuracy on the test set, eval mode", "fraction"),
    Field("si_norm", "joint L2 norm of all scale-invariant weights", ""),
    Field("elr", "effective learning rate of the epoch's last step (sphere: the schedule's ELR; "
          "free: lr / si_norm^2)", "per step"),
    Field("lr", "learning rate of the SI weights' optimiser group at the epoch's last step", "per step"),
    Field("eff_grad_norm", "mean over the epoch's minibatches of ||grad_SI L_batch|| * ||w_SI|| "
          "(the gradient at unit norm), each at the weights before that step and on that step's "
          "(augmented) batch; not the one end-of-epoch measure of the three-regimes reference code",
          ""),
    Field("angular_update", "mean per-step angle between consecutive SI weight vectors", "radians"),
    Field("samples_per_s", "training throughput of the epoch (steps x batch / train time)", "examples/s"),
    Field("time_s", "wall time of the run so far (training and measures)", "s"),
    # --- LCNN (loss terms: epoch means of the value added to the loss) ------------------
    Field("beta_penalty", "beta_coef * sum of softplus betas", "nats", "lcnn"),
    Field("gamma_penalty", "gamma_coef * sum |log gamma| of Lipschitz BNs", "nats", "lcnn"),
    Field("gnorm_penalty", "gnorm_coef * G, the input-gradient penalty (see gnorm_scaling)", "nats", "lcnn"),
    Field("input_grad_sq", "mean_i ||dl_i/dx_i||^2, the per-sample input-gradient norm squared", "", "lcnn"),
    Field("beta_mean", "mean softplus beta over activation modules", "", "lcnn"),
    Field("beta_max", "largest softplus beta", "", "lcnn"),
    Field("gamma_mean", "mean Lipschitz bound gamma over Lipschitz BNs", "", "lcnn"),
    # --- ENorm -----------------------------------------------------------------------
    Field("weight_l2", "L2 norm of all conv and linear weights", "", "enorm"),
    Field("enorm_objective", "ENorm's objective sum_k c^(-2k) ||W_k||^2 over the balanced layers", "", "enorm"),
    # --- late-phase weights and SWA ----------------------------------------------------------
    Field("test_acc_ensemble", "test accuracy of the late-phase members' ensemble (mean probabilities)",
          "fraction", "late_phase"),
    Field("test_loss_ensemble", "test cross-entropy of the late-phase ensemble", "nats", "late_phase"),
    Field("test_acc_swa", "test accuracy of the SWA average (BN statistics recomputed)", "fraction", "swa"),
    Field("test_loss_swa", "test cross-entropy of the SWA average", "nats", "swa"),
    # --- curvature (NaN when not due) ------------------------------------------------------------
    Field("sharpness", "top Hessian eigenvalue of the train loss w.r.t. the parameters (Lanczos)", "",
          "curvature"),
    *(Field(f"hess_eig_{j}", f"{j}{'nd' if j == 2 else 'rd' if j == 3 else 'th'} largest Hessian eigenvalue "
            "(Ritz value of the sharpness Lanczos run; NaN unless sharpness_topk >= "
            f"{j})", "", "curvature") for j in range(2, 6)),
    Field("hess_trace", "Hutchinson estimate of tr(H), H the Hessian of the mean train loss (on "
          "curvature_subset) w.r.t. the trained parameters; the total trace, not divided by the number N "
          "of parameters (the three-regimes reference code reports tr(H)/N)", "", "curvature"),
    Field("fisher_top", "largest eigenvalue of the true Fisher of softmax(logits) (labels drawn from the "
          "model) on curvature_subset (Lanczos, sharpness_iters steps)", "", "curvature"),
    Field("fisher_trace", "Hutchinson estimate of tr(F), the same Fisher (hess_trace_samples probes; the total "
          "trace, not divided by the number of parameters)", "", "curvature"),
    Field("input_curvature_mean", "mean over examples of |u'H_x u| / ||g_x|| (input Hessian, power "
          "iteration)", "", "curvature"),
    Field("input_curvature_std", "standard deviation of the same over examples", "", "curvature"),
    # --- full-batch gradient, cosine to init, label noise (regimes/techniques/measures.py) -------------
    Field("eff_grad_norm_end", "||g_SI|| * ||w_SI|| with g the full-batch gradient at the end-of-epoch weights "
          "(train set, BN train mode per batch_size chunk, no augmentation; the three-regimes reference code's "
          "eff_grad_norm), at the train_eval_every cadence", "", "full_grad"),
    Field("grad_norm_full", "norm of the full-batch gradient (as eff_grad_norm_end) over all trained parameters",
          "", "full_grad"),
    Field("grad_norm_si", "norm of the full-batch gradient over the scale-invariant weights", "", "full_grad"),
    Field("grad_norm_noninv", "norm of the full-batch gradient over the trained non-scale-invariant parameters "
          "(NaN when there are none)", "", "full_grad"),
    Field("cos_init", "cosine similarity of the joint SI weight vector to its value at init", "", "cos_init"),
    Field("train_loss_clean", "train_loss on the examples whose label was kept (corrupt_train)", "nats",
          "label_noise"),
    Field("train_acc_clean", "train_acc on the examples whose label was kept", "fraction", "label_noise"),
    Field("train_loss_corrupt", "train_loss on the corrupted examples, against their corrupted labels; "
          "(1 - f) * clean + f * corrupt = train_loss", "nats", "label_noise"),
    Field("train_acc_corrupt", "train_acc on the corrupted examples against their corrupted labels "
          "(memorisation)", "fraction", "label_noise"),
    Field("train_acc_corrupt_true", "accuracy on the corrupted examples against their original labels",
          "fraction", "label_noise"),
    # --- added by the Ray trainable ------------------------------------------------------------------
    Field("decided_regime", "early stopping: the regime a trial stopped with (None before the last epoch)",
          "", "study", measure=False, kind=str),
)

BY_NAME = {f.name: f for f in FIELDS}
NAMES = tuple(BY_NAME)
# what a study may optimise or rank by
METRICS = tuple(f.name for f in FIELDS if f.measure)
# the measures techniques add: present in every record, NaN when off or not due
TECHNIQUE_MEASURES = tuple(f.name for f in FIELDS if f.source not in ("core", "study"))
# the core's per-epoch measures (what every trial has)
CORE_MEASURES = tuple(f.name for f in FIELDS if f.source == "core" and f.measure)
