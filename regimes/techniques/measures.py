"""Measures of the three-regimes reference code that the core record lacks.

* `FullBatchGradient` (`grad_norms`): the gradient of the mean train loss over the
  whole train set at the end-of-epoch weights -- BN in train mode with batch
  statistics per chunk of batch_size (the chunks of `train_loss`), no
  augmentation, BN running statistics, modes, `.grad` and the RNG left as found --
  at the train_eval_every cadence (with train_loss). g = sum_c (n_c / N) grad L_c
  over the chunks c. Records ||g|| over all trained parameters (`grad_norm_full`),
  over the scale-invariant ones (`grad_norm_si`) and over the other trained ones
  (`grad_norm_noninv`), and `eff_grad_norm_end` = ||g_SI|| * ||w_SI||: the
  checkpoint-style effective gradient norm of the reference code, next to the core
  `eff_grad_norm` (the mean over the epoch's minibatch gradients along the way).
* `CosineToInit` (`cos_init`): the cosine between the joint SI weight vector and
  its value at init, every epoch. The init vector is a copy taken when the run is
  built, i.e. before any step; a resumed run rebuilds the same init from the seed,
  so the copy needs no place in the checkpoint.
* `LabelNoise` (`corrupt_train` > 0, the labels themselves are corrupted in
  regimes.core.data): train loss and accuracy on the clean and on the corrupted
  examples, at the train_eval_every cadence, from the same forward passes as
  train_loss (Trainer.train_per_example), against the labels training sees; so
  with f = the corrupted fraction, (1 - f) * clean + f * corrupt = the whole train
  set's value (up to float summation order). `train_acc_corrupt_true`: accuracy on
  the corrupted examples against their original labels (how much of the true
  signal survives memorisation).
"""
from __future__ import annotations

import math

import torch

from regimes.core.hooks import Technique
from regimes.core.sphere import joint_norm
from regimes.techniques.curvature import preserved


def _due(run) -> bool:
    """The train_eval_every cadence (the last epoch always), the one of train_loss."""
    return run.epoch % run.cfg.train_eval_every == 0 or run.epoch == run.cfg.epochs


def full_batch_gradient(model, inputs, targets, params, loss_fn, chunk_size: int) -> list[torch.Tensor]:
    """grad of the mean loss over `inputs` w.r.t. `params`, in chunks of chunk_size (BN train
    mode: batch statistics per chunk; chunks of chunk_size + 1 when the last would hold one
    example, as train_loss), the model's buffers, modes and the RNG restored and `.grad`
    untouched."""
    n = len(inputs)
    chunk = chunk_size + (1 if n % chunk_size == 1 else 0)
    out = [torch.zeros_like(p) for p in params]
    with preserved(model, "train"), torch.enable_grad():
        for i in range(0, n, chunk):
            x, y = inputs[i:i + chunk], targets[i:i + chunk]
            loss = loss_fn(model(x), y) * (len(x) / n)
            for o, g in zip(out, torch.autograd.grad(loss, params, allow_unused=True)):
                if g is not None:
                    o.add_(g)
    return out


class FullBatchGradient(Technique):
    """Full-batch gradient norms at the end-of-epoch weights (see the module docstring)."""

    name = "full_grad"
    measures = ("eff_grad_norm_end", "grad_norm_full", "grad_norm_si", "grad_norm_noninv")

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.grad_norms

    def __init__(self, run):
        super().__init__(run)
        si = {id(p) for p in run.si_params}
        self.params = [p for p in run.model.parameters() if p.requires_grad]
        self.is_si = [id(p) in si for p in self.params]

    def measure(self, rec: dict) -> None:
        run = self.run
        if not _due(run) or not self.params:
            return
        g = full_batch_gradient(run.model, run.data.x_train, run.data.y_train, self.params, run.loss_fn,
                                run.cfg.batch_size)
        g_si = [t for t, s in zip(g, self.is_si) if s]
        g_other = [t for t, s in zip(g, self.is_si) if not s]
        nan = float("nan")
        rec["grad_norm_full"] = joint_norm(g).item()
        rec["grad_norm_si"] = joint_norm(g_si).item() if g_si else nan
        rec["grad_norm_noninv"] = joint_norm(g_other).item() if g_other else nan
        rec["eff_grad_norm_end"] = (joint_norm(g_si) * joint_norm(run.si_params)).item() if g_si else nan


class CosineToInit(Technique):
    """cos(w_SI, w_SI at init), every epoch."""

    name = "cos_init"
    measures = ("cos_init",)

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.cos_init

    def __init__(self, run):
        super().__init__(run)
        self.init = [p.detach().clone() for p in run.si_params]

    @torch.no_grad()
    def measure(self, rec: dict) -> None:
        ps = self.run.si_params
        if not ps:
            return
        dot = sum((p.double() * q.double()).sum() for p, q in zip(ps, self.init))
        rec["cos_init"] = (dot / (joint_norm(ps).double() * joint_norm(self.init).double())).item()


class LabelNoise(Technique):
    """Train loss and accuracy on the clean and the corrupted examples (see the module docstring)."""

    name = "label_noise"
    measures = ("train_loss_clean", "train_acc_clean", "train_loss_corrupt", "train_acc_corrupt",
                "train_acc_corrupt_true")

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.corrupt_train > 0

    def measure(self, rec: dict) -> None:
        run = self.run
        if not _due(run) or not math.isfinite(rec["train_loss"]):
            return
        data = run.data
        mask = data.train_corrupted
        loss, pred = run.train_per_example()
        correct = pred == data.y_train
        nan = float("nan")

        def mean(v, m):
            return v[m].double().mean().item() if bool(m.any()) else nan

        rec["train_loss_clean"], rec["train_acc_clean"] = mean(loss, ~mask), mean(correct, ~mask)
        rec["train_loss_corrupt"], rec["train_acc_corrupt"] = mean(loss, mask), mean(correct, mask)
        # accuracy against the original labels: the same predictions, other targets
        rec["train_acc_corrupt_true"] = mean(pred == data.y_train_clean, mask)
