"""Equi-normalisation (ENorm, Stock et al., ICLR 2019): one balancing cycle.

For each pair of adjacent layers (W_k, W_k+1) and hidden unit j between them:

    a_j = ||incoming weights of unit j||   (row j of W_k: W_k[j] flattened)
    b_j = ||outgoing weights of unit j||   (column j of W_k+1; for a conv the
          slice W_k+1[:, j]; for a linear layer after a flatten, the block of
          columns that came from channel j)
    d_j = sqrt(b_j / (c a_j));  W_k[j] *= d_j,  bias_k[j] *= d_j,  column j of W_k+1 /= d_j

Why it keeps the function: a positive per-unit scale commutes with ReLU, max/avg
pooling and flatten (all positively homogeneous per channel), so unit j's
activation is d_j times larger and the next layer divides it back. The bias of
unit j is part of its pre-activation, so it must be scaled by d_j too; "skip
biases" (the seed: training is more stable when biases are not balanced) means
they do not enter a_j or the objective below, not that they stay fixed.

What it minimises: d_j is the exact minimiser over d of
c^{-2k} a^2 d^2 + c^{-2(k+1)} b^2 / d^2, so one pair step never increases

    L_c = sum_k c^{-2k} ||W_k||_F^2        (k = depth along the chain, biases excluded)

and a cycle (pairs in order, first to last) is a block-coordinate descent on a
strictly convex function of log d; repeated cycles converge to the balanced
point b_j = c a_j. c = 1: plain total L2 norm; c > 1 moves norm into deeper layers.

Momentum: after w -> d w the gradient of the same function is grad / d, so the
SGD momentum buffer (a running sum of gradients) is divided by d (multiplied by
d for the columns divided by d) -- "rescaled inversely". param * buffer is
therefore invariant elementwise.

Pairs are found from the traced module graph (torch.fx), not from names: a
Conv2d/Linear whose output reaches the next Conv2d/Linear through a single-user
chain of ReLU, max/avg/adaptive pooling, flatten, spatial mean/amax, dropout,
identity -- and BatchNorm. The pair feeding the head (the last layer) is
skipped by default (the head of *_si models is frozen at a fixed norm).

Across BatchNorm (not function-preserving): BN(d z_j) = BN(z_j) in train mode,
so scaling row j of W_k does nothing to the function, while dividing column j
of W_k+1 by d_j does change it (the BN output for channel j is not scaled up
to compensate). Like the seed ("we simply ignore the BatchNorm weights and
perform the ENorm cycle on the network as usual"), we treat BN as transparent
and balance anyway, leaving BN parameters and running statistics untouched;
on BN nets ENorm is a reparameterisation that changes the function at every
cycle, not an equivalent one. `through_bn=False` stops chains at BN instead
(then BN nets have no pairs apart from BN-free stretches).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from regimes.core.hooks import Technique

_LAYERS = (nn.Conv2d, nn.Linear)
_HOMOGENEOUS_MODULES = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                        nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)
_HOMOGENEOUS_FUNCTIONS = {F.relu, torch.relu, torch.flatten, F.max_pool2d, F.avg_pool2d,
                          F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.dropout}
_HOMOGENEOUS_METHODS = {"relu", "flatten", "contiguous"}
_REDUCE = {"mean", "amax"}


@dataclass
class Pair:
    left: nn.Module    # Conv2d or Linear: rows (output units) scaled by d
    right: nn.Module   # Conv2d or Linear: input columns scaled by 1/d
    group: int         # right-input columns per left unit (flatten of C x H x W -> H*W)
    depth: int = 0     # depth k of `left` along its chain (for the c^{-2k} weights)
    through_bn: bool = False


def _passes(node: torch.fx.Node, modules: dict, through_bn: bool) -> str:
    """'layer' (conv/linear), 'pass' (per-channel positively homogeneous), 'bn' or 'stop'."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, _LAYERS):
            return "layer"
        if isinstance(m, _HOMOGENEOUS_MODULES):
            return "pass"
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return "bn" if through_bn else "stop"
        return "stop"
    if node.op == "call_function":
        if node.target in _HOMOGENEOUS_FUNCTIONS:
            return "pass"
        if node.target in (torch.mean, torch.amax):
            return "pass" if _spatial_dims(node) else "stop"
        return "stop"
    if node.op == "call_method":
        if node.target in _HOMOGENEOUS_METHODS:
            return "pass"
        if node.target in _REDUCE:
            return "pass" if _spatial_dims(node) else "stop"
        if node.target in ("view", "reshape"):  # x.view(x.size(0), -1) style flatten
            return "pass" if _is_flatten_shape(node) else "stop"
        return "stop"
    return "stop"


def _spatial_dims(node) -> bool:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None:
        return False
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return all(isinstance(d, int) and (d >= 2 or d <= -1) for d in dims) and 1 not in dims


def _is_flatten_shape(node) -> bool:
    shape = node.args[1:]
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return len(shape) == 2 and shape[1] == -1


def find_pairs(model: nn.Module, *, skip_head: bool = True, through_bn: bool = True) -> list[Pair]:
    """Adjacent (conv|linear, conv|linear) pairs of a feed-forward graph, in order."""
    try:
        from regimes.core.params import trace  # fx trace that keeps LCNN layers as leaves

        gm = trace(model)
    except Exception as e:  # data-dependent control flow, ...
        raise ValueError(f"ENorm needs an fx-traceable model: {e}") from None
    modules = dict(gm.named_modules())
    layer_nodes = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], _LAYERS)]
    pairs: list[Pair] = []
    for node in layer_nodes:
        cur, crossed_bn = node, False
        while True:
            users = list(cur.users)
            if len(users) != 1:
                break
            nxt = users[0]
            kind = _passes(nxt, modules, through_bn)
            if kind == "layer":
                pair = _make_pair(modules[node.target], modules[nxt.target], crossed_bn)
                if pair is not None:
                    pairs.append(pair)
                break
            if kind == "stop":
                break
            crossed_bn |= kind == "bn"
            cur = nxt
    if skip_head and layer_nodes:
        head = modules[layer_nodes[-1].target]
        pairs = [p for p in pairs if p.right is not head]
    depth: dict[int, int] = {}
    for p in pairs:  # graph order: a left's depth is known before it is someone's right
        p.depth = depth.get(id(p.left), 0)
        depth[id(p.right)] = p.depth + 1
    return pairs


def _make_pair(left: nn.Module, right: nn.Module, through_bn: bool) -> Pair | None:
    units = left.out_channels if isinstance(left, nn.Conv2d) else left.out_features
    if isinstance(right, nn.Conv2d):
        if right.groups != 1 or right.in_channels != units:
            return None
        return Pair(left, right, 1, through_bn=through_bn)
    if right.in_features % units:
        return None
    return Pair(left, right, right.in_features // units, through_bn=through_bn)


def _right_view(w: Tensor, pair: Pair) -> Tensor:
    """Right weight as (out, units, rest): column j of the pair is [:, j, :]."""
    units = pair.left.weight.shape[0]
    return w.reshape(w.shape[0], units, -1)


def _scale_right(w: Tensor, pair: Pair, col: Tensor) -> None:
    """Scale column j of the right weight by col[j], in place, in any memory layout (a
    channels_last weight's (out, units, rest) reshape need not be a view)."""
    w.copy_((_right_view(w, pair) * col).reshape(w.shape))


class ENorm:
    """One balancing cycle per `step()`; rescales SGD momentum buffers in `optimizer`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 c: float = 1.0, *, skip_head: bool = True, through_bn: bool = True):
        if c <= 0:
            raise ValueError(f"c must be > 0, got {c}")
        self.c, self.optimizer = float(c), optimizer
        self.pairs = find_pairs(model, skip_head=skip_head, through_bn=through_bn)
        self.layers = list({id(m): m for p in self.pairs for m in (p.left, p.right)}.values())
        self._depth = {id(p.left): p.depth for p in self.pairs}
        self._depth.update({id(p.right): p.depth + 1 for p in self.pairs})

    def _buffer(self, p: Tensor) -> Tensor | None:
        if self.optimizer is None:
            return None
        return self.optimizer.state.get(p, {}).get("momentum_buffer")

    @torch.no_grad()
    def step(self) -> None:
        for pair in self.pairs:
            self._balance(pair)

    def _balance(self, pair: Pair) -> None:
        wl, wr = pair.left.weight, pair.right.weight
        a = wl.reshape(wl.shape[0], -1).norm(dim=1)
        b = _right_view(wr, pair).norm(dim=(0, 2))
        ok = (a > 0) & (b > 0)  # dead units keep d = 1
        d = torch.where(ok, torch.sqrt(b / (self.c * a.clamp_min(1e-30))), torch.ones_like(a))
        row = d.view(-1, *([1] * (wl.dim() - 1)))
        wl.mul_(row)
        _scale(self._buffer(wl), 1 / row)
        if pair.left.bias is not None:
            pair.left.bias.mul_(d)
            _scale(self._buffer(pair.left.bias), 1 / d)
        col = (1 / d).view(1, -1, 1)
        _scale_right(wr, pair, col)
        buf = self._buffer(wr)
        if buf is not None:
            _scale_right(buf, pair, 1 / col)

    def weighted_norm(self) -> float:
        """L_c = sum_k c^{-2k} ||W_k||^2 over the balanced layers (the objective)."""
        total = 0.0
        for m in self.layers:
            total += self.c ** (-2 * self._depth[id(m)]) * float(m.weight.detach().pow(2).sum())
        return total


def _scale(t: Tensor | None, factor: Tensor) -> None:
    if t is not None:
        t.mul_(factor)




class EquiNormalization(Technique):
    """ENorm in a run: one balancing cycle every `enorm_every` optimiser steps, after the
    step and before the sphere projection; measures `weight_l2` and `enorm_objective`.

    The cadence is read from the Trainer's global step count (in the checkpoint), so a run
    resumed at any step balances at the same steps as the uninterrupted one."""

    name = "enorm"
    measures = ("weight_l2", "enorm_objective")

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.enorm_c > 0

    def __init__(self, run):
        super().__init__(run)
        self.enorm = ENorm(run.model, run.optimizer, c=run.cfg.enorm_c)
        self.every = run.cfg.enorm_every

    def after_step(self, step: int) -> None:
        if step % self.every == 0:
            self.enorm.step()

    def measure(self, rec: dict) -> None:
        ws = [m.weight for m in self.run.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        rec["weight_l2"] = float(torch.sqrt(sum(w.detach().double().pow(2).sum() for w in ws)))
        rec["enorm_objective"] = self.enorm.weighted_norm()
