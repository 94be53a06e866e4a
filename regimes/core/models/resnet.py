"""Pre-activation ResNet-18 (widths c, 2c, 4c, 8c; two blocks per stage).

Block: norm -> act -> conv3x3(stride) -> norm -> act -> conv3x3, plus the
identity or a 1x1 conv shortcut taken from the pre-activated input. A final
norm -> act -> global average pool -> linear head. With non-affine BN the convs
are scale-invariant only jointly: a residual sum carries the scale of every
conv before it forward to the next BN (see regimes.core.params).
"""
from __future__ import annotations

import torch
from torch import nn


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm, act, conv, bias):
        super().__init__()
        self.n1, self.a1 = norm(cin), act()
        self.c1 = conv(cin, cout, 3, stride, bias)
        self.n2, self.a2 = norm(cout), act()
        self.c2 = conv(cout, cout, 3, 1, bias)
        self.shortcut = conv(cin, cout, 1, stride, bias) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        out = self.a1(self.n1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.c1(out)
        out = self.c2(self.a2(self.n2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 16, norm=None, act=None, conv=None,
                 bias: bool = False, head=None):
        """`norm(ch)`, `act()`, `conv(cin, cout, k, stride, bias)`, `head(in_features, classes)` build
        the layers; `bias` is
        for the plain variant, whose `norm` returns nn.Identity (a conv bias before BN is redundant)."""
        super().__init__()
        norm = norm or (lambda ch: nn.BatchNorm2d(ch, affine=False))
        act = act or (lambda: nn.ReLU())
        conv = conv or (lambda cin, cout, k, s, bias: nn.Conv2d(cin, cout, k, s, padding=k // 2, bias=bias))
        self.stem = conv(in_channels, width, 3, 1, bias)
        blocks, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2 ** i
            blocks += [PreActBlock(cin, cout, stride, norm, act, conv, bias),
                       PreActBlock(cout, cout, 1, norm, act, conv, bias)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.final_norm, self.final_act = norm(cin), act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = (head or nn.Linear)(cin, num_classes)

    def forward(self, x):
        out = self.blocks(self.stem(x))
        out = self.pool(self.final_act(self.final_norm(out)))
        return self.head(torch.flatten(out, 1))
