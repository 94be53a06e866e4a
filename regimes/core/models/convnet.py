"""The ConvNet of the three-regimes paper, at any depth and input size.

Stage i (i = 0 .. depth-1) is conv3x3 -> BatchNorm -> activation with width
c * 2^i (capped at 8c: c, 2c, 4c, 8c, 8c, ...); stages after the first end with
a 2x2 max-pool while the feature map is still larger than 1x1 (computed before
the activation, which is the same function for non-decreasing activations). A global max-pool
and one linear layer (the head) follow. With depth 4 on 32x32 inputs this is the
paper's c-2c-4c-8c network.

Variants (see `build_model`): *_si BN without affine parameters, head frozen at
Frobenius norm `init_scale`; *_si_af BN affine on; plain: no BatchNorm at all
(conv with bias), nothing scale-invariant.
"""
from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 16, depth: int = 4,
                 norm=None, act=None, conv=None, bias: bool = False, head=None):
        """`norm(ch)`, `act()`, `conv(cin, cout, bias)`, `head(in_features, classes)` build the layers; for the plain variant
        `norm` returns None (no BN) and `bias` is True."""
        super().__init__()
        norm = norm or (lambda ch: nn.BatchNorm2d(ch, affine=False))
        act = act or (lambda: nn.ReLU())
        conv = conv or (lambda cin, cout, bias: nn.Conv2d(cin, cout, 3, padding=1, bias=bias))
        layers = []
        cin, size = in_channels, image_size
        for i in range(depth):
            cout = width * 2 ** min(i, 3)
            n = norm(cout)
            layers += [conv(cin, cout, bias)] + ([n] if n is not None else [])
            if i > 0 and size > 1:
                # pool, then activate: the same function as activate-then-pool, because every
                # activation here is non-decreasing (max commutes with it), and the same
                # gradients, but the activation runs on a quarter of the elements
                layers.append(nn.MaxPool2d(2))
                size //= 2
            layers.append(act())
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = (head or nn.Linear)(cin, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.features(x)), 1))
