"""Composition of the seed techniques into a Trainer, before its step loop.

`compose(trainer)` reads the technique fields of TrainConfig and wires, once:

* the objective (CE, or CE + LCNN penalties by double backprop) -> trainer._objective
* ENorm: one cycle every `enorm_every` steps, after the optimiser step and
  before the sphere projection                                -> trainer._after_step
* late-phase weights: at epoch T0 the K members are created and the step
  switches to the member/shared schedule                      -> trainer._epoch_start,
  trainer._before_step, trainer._optimizer_step; evaluation uses the members'
  averaged layer outputs                                      -> trainer._eval_context
* SWA: average at the end of every epoch >= swa_start          -> trainer._epoch_end
* per-epoch measures of every active technique                 -> trainer._epoch_measures

With late-phase weights, `eff_grad_norm` is read after each backward, i.e. from
the shared gradient accumulated so far in the current K-cycle.

The step loop itself never tests a config flag. Everything stateful here is
part of the Trainer checkpoint (`state_dict`).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from . import curvature
from .models.lcnn import CenteredSoftplus, LipschitzBatchNorm2d
from .optim.enorm import ENorm
from .optim.late_phase import LatePhase
from .optim.swa import SWA
from .penalties import LCNNPenalty, make_objective

# Every measure a technique can add to an epoch record. The Trainer puts all of
# them in every record (NaN when the technique is off or the measure is not due),
# so every trial of a study writes the same Parquet schema: a reader that takes
# the first file's schema (pandas, pyarrow datasets) then loses no column.
TECHNIQUE_MEASURES = (
    "beta_penalty", "gamma_penalty", "gnorm_penalty", "input_grad_sq",      # LCNN loss terms
    "beta_mean", "beta_max", "gamma_mean",                                   # LCNN parameters
    "weight_l2", "enorm_objective",                                          # ENorm
    "test_acc_ensemble", "test_loss_ensemble",                               # late-phase
    "test_acc_swa", "test_loss_swa",                                         # SWA
    "sharpness", "hess_trace", "input_curvature_mean", "input_curvature_std",  # curvature
)

if TYPE_CHECKING:
    from .train import Trainer

NAN = float("nan")


class Techniques:
    def __init__(self, tr: "Trainer"):
        cfg, model = tr.cfg, tr.model
        self.tr = tr
        self.late_phase: LatePhase | None = None
        self.swa: SWA | None = None
        self.enorm: ENorm | None = None

        tr._objective = make_objective(LCNNPenalty(cfg.beta_coef, cfg.gamma_coef, cfg.gnorm_coef,
                                                   cfg.gnorm_scaling), model)
        if cfg.enorm_c > 0:
            self.enorm = ENorm(model, tr.optimizer, c=cfg.enorm_c)
            tr._after_step.insert(0, self._enorm_hook())  # before the sphere projection
            tr._epoch_measures.append(self._measure_enorm)
        if cfg.late_phase_k > 1:
            self.late_phase = LatePhase(model, tr.optimizer, cfg.late_phase_k, reduce=cfg.late_phase_reduce,
                                        noise=cfg.late_phase_noise, seed=cfg.seed)
            tr._epoch_start.append(self._late_phase_start)
            tr._epoch_measures.append(self._measure_late_phase)
        if cfg.swa_start > 0:
            self.swa = SWA(model)
            tr._epoch_end.append(self._swa_update)
            tr._epoch_measures.append(self._measure_swa)
        if any(isinstance(m, (CenteredSoftplus, LipschitzBatchNorm2d)) for m in model.modules()):
            tr._epoch_measures.append(self._measure_lcnn)
        if cfg.sharpness_every or cfg.hess_trace_every or cfg.input_curvature_every:
            n = min(cfg.curvature_subset, len(tr.data.x_train))
            self.subset = (tr.data.x_train[:n], tr.data.y_train[:n])
            tr._epoch_measures.append(self._measure_curvature)

    # --- ENorm ----------------------------------------------------------------
    def _enorm_hook(self):
        enorm, every = self.enorm, self.tr.cfg.enorm_every
        if every == 1:
            return enorm.step
        counter = [0]

        def hook():
            counter[0] += 1
            if counter[0] % every == 0:
                enorm.step()
        return hook

    def _measure_enorm(self, rec: dict) -> None:
        ws = [m.weight for m in self.tr.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        rec["weight_l2"] = float(torch.sqrt(sum(w.detach().double().pow(2).sum() for w in ws)))
        rec["enorm_objective"] = self.enorm.weighted_norm()

    # --- late-phase -------------------------------------------------------------
    def _late_phase_start(self, epoch: int) -> None:
        if epoch == self.tr.cfg.late_phase_start and not self.late_phase.started:
            self.late_phase.start()
        if self.late_phase.started:
            self._switch_to_late_phase()

    def _switch_to_late_phase(self) -> None:
        lp, tr = self.late_phase, self.tr
        tr._before_step = [lp.before_step]
        tr._optimizer_step = lp.optimizer_step
        tr._eval_context = lp.averaged

    def _measure_late_phase(self, rec: dict) -> None:
        rec["test_acc_ensemble"] = rec["test_loss_ensemble"] = NAN
        if not self.late_phase.started:
            return
        x, y = self.tr.data.x_test, self.tr.data.y_test
        probs = self.late_phase.ensemble_predict(x)
        rec["test_acc_ensemble"] = float((probs.argmax(1) == y).double().mean())
        rec["test_loss_ensemble"] = float(F.nll_loss(torch.log(probs.clamp_min(1e-300)), y))

    # --- SWA ------------------------------------------------------------------------
    def _swa_update(self, epoch: int) -> None:
        if epoch < self.tr.cfg.swa_start:
            return
        # with late-phase weights, SWA averages the members' mean (equal to averaging
        # their outputs once BN statistics are recomputed, for BN affine and the head)
        ctx = self.late_phase.mean_members() if self.late_phase and self.late_phase.started \
            else contextlib.nullcontext()
        with ctx:
            self.swa.update()

    def _measure_swa(self, rec: dict) -> None:
        rec["test_acc_swa"] = rec["test_loss_swa"] = NAN
        if self.swa.n == 0:
            return
        tr = self.tr
        m = self.swa.evaluate_model(tr.data.x_train, tr.cfg.batch_size)
        with torch.no_grad():
            loss = acc = 0.0
            x, y = tr.data.x_test, tr.data.y_test
            for i in range(0, len(x), 1000):
                out = m(x[i:i + 1000])
                loss += float(F.cross_entropy(out, y[i:i + 1000], reduction="sum"))
                acc += float((out.argmax(1) == y[i:i + 1000]).sum())
        rec["test_loss_swa"], rec["test_acc_swa"] = loss / len(x), acc / len(x)

    # --- LCNN -----------------------------------------------------------------------
    def _measure_lcnn(self, rec: dict) -> None:
        model = self.tr.model
        betas = [float(m.beta) for m in model.modules() if isinstance(m, CenteredSoftplus)]
        gammas = [float(m.gamma) for m in model.modules() if isinstance(m, LipschitzBatchNorm2d)]
        rec["beta_mean"] = sum(betas) / len(betas) if betas else NAN
        rec["beta_max"] = max(betas) if betas else NAN
        rec["gamma_mean"] = sum(gammas) / len(gammas) if gammas else NAN

    # --- curvature ------------------------------------------------------------------
    def _measure_curvature(self, rec: dict) -> None:
        cfg, tr = self.tr.cfg, self.tr
        x, y = self.subset
        last = tr.epoch == cfg.epochs

        def due(every):
            return every > 0 and (tr.epoch % every == 0 or last)

        seed = cfg.seed + tr.epoch  # fresh probes per epoch, reproducible
        if cfg.sharpness_every:
            rec["sharpness"] = curvature.sharpness(tr.model, x, y, iters=cfg.sharpness_iters, seed=seed,
                                                   chunk_size=cfg.batch_size) \
                if due(cfg.sharpness_every) else NAN
        if cfg.hess_trace_every:
            rec["hess_trace"] = curvature.hess_trace(tr.model, x, y, samples=cfg.hess_trace_samples, seed=seed,
                                                     chunk_size=cfg.batch_size) \
                if due(cfg.hess_trace_every) else NAN
        if cfg.input_curvature_every:
            mean, std = curvature.input_curvature(tr.model, x, y, iters=cfg.input_curvature_iters, seed=seed,
                                                  chunk_size=cfg.batch_size) \
                if due(cfg.input_curvature_every) else (NAN, NAN)
            rec["input_curvature_mean"], rec["input_curvature_std"] = mean, std

    # --- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict:
        sd = {}
        if self.late_phase is not None:
            sd["late_phase"] = self.late_phase.state_dict()
        if self.swa is not None:
            sd["swa"] = self.swa.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        if self.late_phase is not None and "late_phase" in sd:
            self.late_phase.load_state_dict(sd["late_phase"])
            if self.late_phase.started:
                self._switch_to_late_phase()
        if self.swa is not None and "swa" in sd:
            self.swa.load_state_dict(sd["swa"])


def compose(trainer: "Trainer") -> Techniques:
    return Techniques(trainer)

