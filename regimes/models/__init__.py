"""Model zoo: ConvNet and pre-activation ResNet-18 in four variants.

- `*_si`    fully scale-invariant: BN without affine parameters; the head is frozen
            at Frobenius norm `init_scale`, drawn from a fixed seed (HEAD_SEED) so
            every run of a study shares it (paper: ConvNetSI / ResNet18SI).
- `*_si_af` BN affine on, everything trained (paper: ConvNetSIAf / ResNet18SIAf).
- plain     no BatchNorm (convs with bias), nothing scale-invariant; for `free` mode
            baselines and for ENorm, which is function-preserving only without BN.
- `*_lcnn`  low-curvature variants (centered softplus, spectral-norm convs,
            Lipschitz BN), built by regimes.models.lcnn when available.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError, TrainConfig
from .convnet import ConvNet
from .resnet import PreActResNet18

HEAD_SEED = 20221128  # fixed: every *_si run shares the same frozen head

# Hook for the LCNN variants: base model name -> (cfg, in_ch, num_classes, size) -> nn.Module
LCNN_BUILDERS: dict = {}


def build_model(cfg: TrainConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    in_ch, size, _ = input_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.variant == "lcnn":
            if cfg.base_model not in LCNN_BUILDERS:
                _load_lcnn()
            return LCNN_BUILDERS[cfg.base_model](cfg, in_ch, num_classes, size)
        plain = cfg.variant == ""
        affine = cfg.variant == "si_af"
        norm = (lambda ch: None) if plain else (lambda ch: nn.BatchNorm2d(ch, affine=affine))
        if cfg.base_model == "convnet":
            model = ConvNet(in_ch, num_classes, size, cfg.width, cfg.depth, norm=norm, bias=plain)
        else:
            rnorm = (lambda ch: nn.Identity()) if plain else norm
            model = PreActResNet18(in_ch, num_classes, cfg.width, norm=rnorm, bias=plain)
    if cfg.variant == "si":
        freeze_head(model.head, cfg.init_scale)
    return model


def freeze_head(head: nn.Linear, init_scale: float) -> None:
    """Draw the head from HEAD_SEED, set its Frobenius norm to `init_scale` (-1: keep
    PyTorch's default scale), zero its bias, and freeze it."""
    gen = torch.Generator().manual_seed(HEAD_SEED)
    with torch.no_grad():
        bound = 1.0 / head.in_features ** 0.5
        w = (torch.rand(head.weight.shape, generator=gen) * 2 - 1) * bound
        if init_scale != -1:
            w *= init_scale / w.norm()
        head.weight.copy_(w)
        if head.bias is not None:
            head.bias.zero_()
    for p in head.parameters():
        p.requires_grad_(False)


def _load_lcnn():
    try:
        from . import lcnn  # noqa: F401  (registers LCNN_BUILDERS)
    except ImportError:
        pass
    if not LCNN_BUILDERS:
        raise ConfigError("model", "the *_lcnn models are not available in this build")
