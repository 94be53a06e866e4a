"""Model zoo: ConvNet and pre-activation ResNet-18 in four variants.

- `*_si`    fully scale-invariant: BN without affine parameters; the head is frozen
            at Frobenius norm `init_scale`, drawn from a fixed seed (HEAD_SEED) so
            every run of a study shares it (paper: ConvNetSI / ResNet18SI).
- `*_si_af` BN affine on, everything trained (paper: ConvNetSIAf / ResNet18SIAf).
- plain     no BatchNorm (convs with bias), nothing scale-invariant; for `free` mode
            baselines and for ENorm, which is function-preserving only without BN.
- `*_lcnn`  the same networks built from the `Layers` a technique supplies
            (regimes.techniques.lcnn: centered softplus, spectral-norm convs and head,
            Lipschitz BN); `build_model` takes them as an argument.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ...errors import ConfigError
from ..config import TrainConfig
from .convnet import ConvNet
from .resnet import PreActResNet18

HEAD_SEED = 20221128  # fixed: every *_si run shares the same frozen head


@dataclass(frozen=True)
class Layers:
    """Building blocks that replace the defaults (BN, ReLU, plain convs, the linear head) in both networks."""
    norm: Callable[[int], nn.Module]                              # norm(channels)
    act: Callable[[], nn.Module]
    convnet_conv: Callable[[int, int, bool], nn.Module]           # (cin, cout, bias), 3x3 same
    resnet_conv: Callable[[int, int, int, int, bool], nn.Module]  # (cin, cout, k, stride, bias)
    head: Callable[[int, int], nn.Module] = nn.Linear             # (in_features, classes), with a bias


def build_model(cfg: TrainConfig, input_shape: tuple[int, int, int], num_classes: int,
                layers: Layers | None = None) -> nn.Module:
    """The network of `cfg.model`, initialised from `cfg.seed`. `*_lcnn` models need `layers`."""
    in_ch, size, _ = input_shape
    if cfg.variant == "lcnn" and layers is None:
        raise ConfigError("model", f"{cfg.model} is built from the LCNN layers; build it through "
                          "regimes.Trainer (or pass regimes.techniques.lcnn.layers(cfg))")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if layers is not None:
            if cfg.base_model == "convnet":
                return ConvNet(in_ch, num_classes, size, cfg.width, cfg.depth, norm=layers.norm, act=layers.act,
                               conv=layers.convnet_conv, bias=False, head=layers.head)
            return PreActResNet18(in_ch, num_classes, cfg.width, norm=layers.norm, act=layers.act,
                                  conv=layers.resnet_conv, bias=False, head=layers.head)
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
