"""LCNN: low-curvature neural networks (Srinivas et al., NeurIPS 2022) in a run.

The layers (centered softplus, Lipschitz BN, spectral-norm convs and head) are in
regimes.techniques.lcnn_layers; this module builds *_lcnn models from them
(`layers`), composes the loss and measures the learned betas and gammas.

Loss terms:

    loss = CE + beta_coef * sum_l beta_l + gamma_coef * sum_l |log gamma_l| + gnorm_coef * G

beta_l: the learnable softplus sharpness of each CenteredSoftplus (curvature
bound of the activation); gamma_l: the Lipschitz bound of each
LipschitzBatchNorm2d. The penalties act through the loss only: beta and gamma
are never weight-decayed (the layers name them in `no_weight_decay`).

G is the input-gradient penalty, by double backprop (create_graph=True), with
CE the batch *mean* cross-entropy and B the batch size:

* gnorm_scaling="per_sample" (default):  G = B * ||d CE / dx||^2.
  For independent samples d CE/dx_i = (1/B) dl_i/dx_i, so G = mean_i ||dl_i/dx_i||^2:
  the mean squared per-sample input-gradient norm, whose size does not depend
  on B. Default because the studies sweep batch size (SGD noise moves the
  regime boundaries) and a coefficient should mean the same thing at every B.
* gnorm_scaling="seed": G = (1e5 / B) * ||d CE / dx||^2 = (1e5 / B^2) * mean_i ||dl_i/dx_i||^2,
  the reference implementation's form; its strength falls as 1/B^2, so
  gnorm_coef=c at batch B equals per_sample coefficient c * 1e5 / B^2.

(With train-mode BN the samples of a batch interact, so "per sample" is exact
only up to that coupling; the penalty is always the one computed on the batch.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regimes.core.hooks import Objective, Technique
from regimes.core.models import Layers
from regimes.core.trainer import plain_objective
from regimes.techniques.lcnn_layers import (CenteredSoftplus, LipschitzBatchNorm2d, betas, lcnn_activation,
                                            lcnn_conv, lcnn_head, lcnn_norm, log_gammas)

GNORM_SCALINGS = ("per_sample", "seed")
SEED_GNORM_CONSTANT = 1e5  # the reference code's numerator in 1e5 / B


def gnorm_scale(scaling: str, batch_size: int) -> float:
    """Factor multiplying ||d CE/dx||^2 (CE = batch mean) in the penalty G."""
    if scaling == "per_sample":
        return float(batch_size)
    if scaling == "seed":
        return SEED_GNORM_CONSTANT / batch_size
    raise ValueError(f"gnorm_scaling must be one of {GNORM_SCALINGS}, got {scaling!r}")


@dataclass(frozen=True)
class LCNNPenalty:
    beta_coef: float = 0.0
    gamma_coef: float = 0.0
    gnorm_coef: float = 0.0
    gnorm_scaling: str = "per_sample"

    def __post_init__(self):
        gnorm_scale(self.gnorm_scaling, 1)  # validates the name

    @property
    def active(self) -> bool:
        return bool(self.beta_coef or self.gamma_coef or self.gnorm_coef)


def beta_sum(model: nn.Module) -> Tensor | None:
    bs = betas(model)
    return torch.stack(bs).sum() if bs else None


def log_gamma_abs_sum(model: nn.Module) -> Tensor | None:
    gs = log_gammas(model)
    return torch.stack(gs).abs().sum() if gs else None


def make_objective(penalty: LCNNPenalty, model: nn.Module, loss_fn: Callable = F.cross_entropy) -> Objective:
    """Compose the loss once, before the step loop: no branches per step.

    The returned objective(model, x, y) -> (loss, logits, stats); `stats` holds
    detached 0-dim tensors (no host sync): for each active term its
    value as added to the loss (beta_penalty, gamma_penalty, gnorm_penalty) and
    input_grad_sq = mean_i ||dl_i/dx_i||^2 (the per_sample G) when gnorm is on.
    `loss_fn(logits, y)` is the batch-mean data loss (cross-entropy unless `loss=squared`);
    the input-gradient penalty differentiates it.
    """
    if not penalty.active:
        return plain_objective
    has_beta, has_gamma = bool(betas(model)), bool(log_gammas(model))
    if penalty.beta_coef and not has_beta:
        raise ValueError("beta_coef > 0 needs a model with CenteredSoftplus activations (*_lcnn)")
    if penalty.gamma_coef and not has_gamma:
        raise ValueError("gamma_coef > 0 needs a model with Lipschitz BN (*_lcnn, lipschitz_bn)")
    terms: list[Callable[[nn.Module], tuple[str, Tensor]]] = []
    if penalty.beta_coef:
        terms.append(lambda m: ("beta_penalty", penalty.beta_coef * beta_sum(m)))
    if penalty.gamma_coef:
        terms.append(lambda m: ("gamma_penalty", penalty.gamma_coef * log_gamma_abs_sum(m)))
    gcoef, scaling = penalty.gnorm_coef, penalty.gnorm_scaling

    def objective(model: nn.Module, x: Tensor, y: Tensor):
        if gcoef:
            x = x.detach().requires_grad_(True)
        logits = model(x)
        ce = loss_fn(logits, y)
        loss = ce
        stats = {}
        if gcoef:
            # double backprop: the penalty's gradient flows through d CE/dx
            (gx,) = torch.autograd.grad(ce, x, create_graph=True)
            sq = gx.pow(2).sum()
            b = x.shape[0]
            g = sq * gnorm_scale(scaling, b)
            loss = loss + gcoef * g
            stats["gnorm_penalty"] = (gcoef * g).detach()
            stats["input_grad_sq"] = (sq * b).detach()
        for term in terms:
            name, value = term(model)
            loss = loss + value
            stats[name] = value.detach()
        return loss, logits, stats

    return objective


def layers(cfg) -> Layers:
    """The building blocks of the *_lcnn models (ConvNet and pre-activation ResNet-18)."""
    spectral, warm = cfg.spectral_norm, cfg.spectral_warm_iters

    def convnet_conv(cin, cout, bias):
        return lcnn_conv(cin, cout, 3, padding=1, bias=bias, spectral=spectral, warm_iters=warm)

    def resnet_conv(cin, cout, k, stride, bias):
        return lcnn_conv(cin, cout, k, stride=stride, padding=k // 2, bias=bias, spectral=spectral, warm_iters=warm)

    def norm(ch):
        return lcnn_norm(ch, lipschitz=cfg.lipschitz_bn, mode=cfg.lipschitz_bn_mode, gamma=cfg.lipschitz_bn_gamma)

    def head(cin, classes):
        return lcnn_head(cin, classes, spectral=cfg.lcnn_head == "spectral", warm_iters=warm)

    return Layers(norm=norm, act=lambda: lcnn_activation(cfg.softplus_beta), convnet_conv=convnet_conv,
                  resnet_conv=resnet_conv, head=head)


class LowCurvature(Technique):
    """*_lcnn models and the LCNN loss: the penalties are composed into the objective once
    (the gradient-norm penalty works on any model); measures the mean/max beta and the
    mean gamma of the LCNN layers, and the epoch means of the loss terms."""

    name = "lcnn"
    measures = ("beta_penalty", "gamma_penalty", "gnorm_penalty", "input_grad_sq",
                "beta_mean", "beta_max", "gamma_mean")

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.variant == "lcnn" or bool(cfg.beta_coef or cfg.gamma_coef or cfg.gnorm_coef)

    @classmethod
    def layers(cls, cfg) -> Layers | None:
        return layers(cfg) if cfg.variant == "lcnn" else None

    def __init__(self, run):
        super().__init__(run)
        cfg = run.cfg
        self.penalty = LCNNPenalty(cfg.beta_coef, cfg.gamma_coef, cfg.gnorm_coef, cfg.gnorm_scaling)
        model = run.model
        self.softplus = [m for m in model.modules() if isinstance(m, CenteredSoftplus)]
        self.lipschitz_bn = [m for m in model.modules() if isinstance(m, LipschitzBatchNorm2d)]

    def objective(self, base: Objective) -> Objective:
        return make_objective(self.penalty, self.run.model, self.run.loss_fn) if self.penalty.active else base

    def measure(self, rec: dict) -> None:
        if not (self.softplus or self.lipschitz_bn):
            return
        nan = float("nan")
        b = [float(m.beta) for m in self.softplus]
        g = [float(m.gamma) for m in self.lipschitz_bn]
        rec["beta_mean"] = sum(b) / len(b) if b else nan
        rec["beta_max"] = max(b) if b else nan
        rec["gamma_mean"] = sum(g) / len(g) if g else nan
