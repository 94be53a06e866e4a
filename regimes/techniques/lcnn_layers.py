"""Building blocks of low-curvature networks (LCNN, Srinivas et al., NeurIPS 2022).

* `CenteredSoftplus`: s(x) = (softplus(b x) - ln 2) / b with one learnable
  b = exp(log_beta) + eps per activation module (init b = 5). s(0) = 0,
  s'(x) = sigmoid(b x) in (0, 1) (1-Lipschitz), s'' <= b / 4 (curvature bounded
  by b), and |s(x) - relu(x)| <= ln 2 / b, so b -> inf recovers ReLU.
* `LipschitzBatchNorm2d`: BN whose Lipschitz constant is bounded by a learnable
  scalar gamma = exp(log_gamma) (module init 1; TrainConfig.lipschitz_bn_gamma = 4,
  because a stack of 1-Lipschitz layers with softplus slope 1/2 at 0 shrinks the
  signal ~3x per stage and does not train). The affine BN map is
  y_i = a_i (x_i - mu_i) + bias_i with a_i = w_i / sqrt(var_i + eps), whose
  Lipschitz constant is max_i |a_i|. We rescale all channels jointly,
  a <- a * gamma / max_i |a_i| ("normalise", default: Lipschitz constant exactly
  gamma; w then only sets the channels' relative scales), or
  a <- a * min(1, gamma / max_i |a_i|) ("clip": Lipschitz constant <= gamma,
  untouched when already below). The joint rescale keeps the ratios between
  channels, which a per-channel clamp would not. The penalty |log gamma|
  (regimes.techniques.lcnn) pulls gamma towards 1. var is the batch variance in
  train mode and the running variance in eval mode, so the bound holds for the
  map actually applied.
* `SpectralConv2d`: a Conv2d whose weight is divided by the spectral norm
  sigma of the *true* convolution operator (the linear map on the whole
  C x H x W input, with the layer's stride, padding and dilation -- not the
  reshaped kernel matrix). sigma comes from power iteration with conv2d and its
  adjoint conv_transpose2d; the output-side vector u is a buffer. At the first
  forward pass (when the input size becomes known) u is drawn and
  `warm_iters` iterations run; afterwards each training-mode forward runs one
  more (training changes W slowly, so one step tracks it); eval mode reuses u.
  sigma = <u, conv(v)> keeps its gradient w.r.t. W (Miyato et al. 2018).
* `SpectralLinear`: the head, a Linear whose weight matrix is divided by its
  spectral norm (largest singular value) sigma, from power iteration on W
  (v = W'u / ||W'u||, u = W v / ||W v||) with u a buffer, as the convs do:
  `warm_iters` iterations at construction (the shapes are known then), one
  more per training-mode forward, none in eval mode; sigma = <u, W v> keeps
  its gradient w.r.t. W. Its operator norm is sigma_max(W) / sigma >= 1 and
  tends to 1 as the iteration converges (the estimate approaches sigma_max
  from below), as in the LCNN paper's code, which divides its final linear
  layer too. The bias is not normalised.

The factories below build these layers; regimes.techniques.lcnn hands them to
the ConvNet / ResNet-18 builders for the *_lcnn models.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN2 = math.log(2.0)


class CenteredSoftplus(nn.Module):
    """(softplus(b x) - ln 2) / b, b = exp(log_beta) + eps, learnable b."""
    fx_leaf = True  # traced as one op by regimes.core.params and regimes.techniques.enorm
    no_weight_decay = ("log_beta",)  # shaped by its penalty (beta_coef), never decayed

    def __init__(self, beta: float = 5.0, eps: float = 1e-3, learnable: bool = True):
        super().__init__()
        if beta <= eps:
            raise ValueError(f"beta must exceed eps={eps}, got {beta}")
        self.eps = eps
        log_beta = torch.tensor(math.log(beta - eps))
        if learnable:
            self.log_beta = nn.Parameter(log_beta)
        else:
            self.register_buffer("log_beta", log_beta)

    @property
    def beta(self) -> Tensor:
        return self.log_beta.exp() + self.eps

    def forward(self, x: Tensor) -> Tensor:
        b = self.beta
        # F.softplus switches to the identity above threshold=20 (b x > 20), where
        # softplus and identity differ by < 2e-9: no overflow for large b.
        return (F.softplus(b * x) - LN2) / b

    def extra_repr(self) -> str:
        return f"beta={float(self.beta):.4g}, eps={self.eps}"


class LipschitzBatchNorm2d(nn.Module):
    """BatchNorm2d with Lipschitz constant gamma (normalise) or <= gamma (clip)."""
    fx_leaf = True
    no_weight_decay = ("log_gamma",)  # shaped by its penalty (gamma_coef), never decayed
    normalizes_input = True  # output invariant to the scale of its input (closes SI sets)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 mode: str = "normalise", gamma: float = 1.0):
        super().__init__()
        if mode not in ("normalise", "clip"):
            raise ValueError(f"mode must be 'normalise' or 'clip', got {mode!r}")
        self.num_features, self.eps, self.momentum, self.mode = num_features, eps, momentum, mode
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.log_gamma = nn.Parameter(torch.tensor(math.log(gamma)))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @property
    def gamma(self) -> Tensor:
        return self.log_gamma.exp()

    def scale(self, var: Tensor) -> Tensor:
        """Per-channel slope a_i of the affine map actually applied, given var."""
        a = self.weight / torch.sqrt(var + self.eps)
        lip = a.abs().max().clamp_min(1e-12)
        factor = self.gamma / lip
        if self.mode == "clip":
            factor = torch.clamp(factor, max=1.0)
        return a * factor

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dims)
            var = x.var(dims, unbiased=False)
            with torch.no_grad():  # same running-stat convention as nn.BatchNorm
                n = x.numel() // x.shape[1]
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach() * n / max(n - 1, 1), self.momentum)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        shape = (1, -1) + (1,) * (x.dim() - 2)
        a = self.scale(var)
        return (x - mean.view(shape)) * a.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, mode={self.mode}, eps={self.eps}, momentum={self.momentum}"


class SpectralConv2d(nn.Conv2d):
    """Conv2d divided by the operator norm of its true convolution (power iteration)."""
    fx_leaf = True

    def __init__(self, *args, warm_iters: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.padding_mode != "zeros":
            raise ValueError("SpectralConv2d supports groups=1 and zero padding only")
        self.warm_iters = warm_iters
        # output-side power-iteration vector, shape (1, C_out, H', W'); empty until
        # the first forward fixes the input size
        self.register_buffer("sn_u", torch.empty(0))
        # input height and width the operator acts on (0, 0 = not yet seen)
        self.register_buffer("sn_in_hw", torch.zeros(2, dtype=torch.long))
        self.in_hw: tuple[int, int] = (0, 0)  # host copy of sn_in_hw: no device sync per step

    # the linear operator A (no bias) and its adjoint A^T
    def _op(self, v: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(v, w, None, self.stride, self.padding, self.dilation)

    def _adjoint(self, u: Tensor, w: Tensor) -> Tensor:
        h, wd = self.in_hw
        out_pad = []
        for i, size in enumerate((h, wd)):
            full = (u.shape[2 + i] - 1) * self.stride[i] - 2 * self.padding[i] \
                + self.dilation[i] * (self.kernel_size[i] - 1) + 1
            out_pad.append(size - full)
        return F.conv_transpose2d(u, w, None, self.stride, self.padding, tuple(out_pad), 1, self.dilation)

    @torch.no_grad()
    def power_iteration(self, iters: int = 1) -> None:
        w = self.weight.detach()
        u = self.sn_u
        for _ in range(iters):
            v = F.normalize(self._adjoint(u, w).flatten(), dim=0).view(1, self.in_channels, *self.in_hw)
            u = F.normalize(self._op(v, w).flatten(), dim=0).view_as(u)
        self.sn_u.copy_(u)

    def _init_u(self, x: Tensor) -> None:
        with torch.no_grad():
            self.in_hw = (int(x.shape[2]), int(x.shape[3]))
            self.sn_in_hw.copy_(torch.tensor(self.in_hw))
            probe = torch.zeros(1, self.in_channels, *self.in_hw, dtype=x.dtype, device=x.device)
            out_shape = self._op(probe, self.weight.detach()).shape
            # a private generator: initialising u must not shift the training RNG stream
            g = torch.Generator(device="cpu").manual_seed(0)
            u = torch.randn(out_shape, generator=g, dtype=x.dtype).to(x.device)
            self.sn_u = F.normalize(u.flatten(), dim=0).view(out_shape)
        self.power_iteration(self.warm_iters)

    def sigma(self) -> Tensor:
        """<u, A v>, v = A^T u / ||A^T u||: the current estimate of ||A||_2 (differentiable in W)."""
        u = self.sn_u
        with torch.no_grad():
            v = F.normalize(self._adjoint(u, self.weight).flatten(), dim=0)
            v = v.view(1, self.in_channels, *self.in_hw)
        return (u * self._op(v, self.weight)).sum()

    def forward(self, x: Tensor) -> Tensor:
        if self.sn_u.numel() == 0 or self.in_hw != (x.shape[2], x.shape[3]):
            self._init_u(x)
        elif self.training:
            self.power_iteration(1)
        w = self.weight / self.sigma()
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        u = state_dict.get(prefix + "sn_u")
        if u is not None and u.shape != self.sn_u.shape:  # the lazily-sized buffer
            self.sn_u = torch.empty(u.shape, dtype=u.dtype, device=self.weight.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        hw = state_dict.get(prefix + "sn_in_hw")
        if hw is not None:
            self.in_hw = (int(hw[0]), int(hw[1]))


class SpectralLinear(nn.Linear):
    """Linear layer divided by the spectral norm of its weight matrix (power iteration)."""
    fx_leaf = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, warm_iters: int = 10):
        super().__init__(in_features, out_features, bias=bias)
        self.warm_iters = warm_iters
        # a private generator: drawing u must not shift the RNG stream of the model's init
        g = torch.Generator(device="cpu").manual_seed(0)
        self.register_buffer("sn_u", F.normalize(torch.randn(out_features, generator=g), dim=0))
        self.power_iteration(warm_iters)

    @torch.no_grad()
    def power_iteration(self, iters: int = 1) -> None:
        w, u = self.weight.detach(), self.sn_u
        for _ in range(iters):
            v = F.normalize(w.t() @ u, dim=0)
            u = F.normalize(w @ v, dim=0)
        self.sn_u.copy_(u)

    def sigma(self) -> Tensor:
        """<u, W v>, v = W'u / ||W'u||: the current estimate of ||W||_2 (differentiable in W)."""
        with torch.no_grad():
            v = F.normalize(self.weight.t() @ self.sn_u, dim=0)
        return self.sn_u @ (self.weight @ v)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.power_iteration(1)
        return F.linear(x, self.weight / self.sigma(), self.bias)


# ---------------------------------------------------------------------------
# factories for the model builders
def lcnn_activation(beta: float = 5.0) -> nn.Module:
    return CenteredSoftplus(beta)


def lcnn_norm(num_features: int, lipschitz: bool = True, mode: str = "normalise", gamma: float = 1.0) -> nn.Module:
    return LipschitzBatchNorm2d(num_features, mode=mode, gamma=gamma) if lipschitz else nn.BatchNorm2d(num_features)


def lcnn_conv(in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
              bias: bool = False, spectral: bool = True, warm_iters: int = 10) -> nn.Module:
    if spectral:
        return SpectralConv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, bias=bias, warm_iters=warm_iters)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)


def lcnn_head(in_features: int, num_classes: int, spectral: bool = True, warm_iters: int = 10) -> nn.Module:
    if spectral:
        return SpectralLinear(in_features, num_classes, warm_iters=warm_iters)
    return nn.Linear(in_features, num_classes)


def betas(model: nn.Module) -> list[Tensor]:
    return [m.beta for m in model.modules() if isinstance(m, CenteredSoftplus)]


def log_gammas(model: nn.Module) -> list[Tensor]:
    return [m.log_gamma for m in model.modules() if isinstance(m, LipschitzBatchNorm2d)]
