"""Parameter roles, found from the module graph (never from parameter names).

Roles (a typed enum, as AlgoPerf does): SCALE_INVARIANT weights, BN_AFFINE
parameters, the HEAD (layers whose output reaches the logits without a
normalisation in between) and OTHER.

How scale invariance is found. We trace the model with torch.fx and propagate,
for every node, the set S of weights its value is positively homogeneous in
and the degree d: scaling every weight of S by a > 0 scales the value by a^d.
- a conv/linear with weight W (no bias) maps (S, d) to (S + {W}, d + 1);
  with a bias the output is affine, not homogeneous: its weights are tainted;
- ReLU, max/avg pooling, flatten, reshapes keep (S, d);
- a sum of (S1, d1) and (S2, d2) is (S1 | S2, d) when d1 == d2 (the residual
  stream of a pre-activation ResNet), otherwise both sides are tainted;
- BatchNorm maps any (S, d) to ({}, 0): it divides by the batch std, so the
  weights of S are jointly scale-invariant at this point (they are *closed*);
- anything else (softplus, unknown modules, the output) taints S: those weights
  reach the loss without passing a normalisation.
Closed sets that share a weight merge into one group (union-find); a group is
scale-invariant when none of its weights is tainted. In the ConvNet every conv
is its own group. In the pre-activation ResNet the first conv of a block feeds
a BN directly and is its own group, while the convs that write into the
residual stream (stem, second convs, shortcuts) are invariant only jointly, one
group per stretch of the stream between two 1x1-shortcut blocks (a shortcut
reads the normalised input and so restarts the stream). The union of all
groups — every conv — is what sphere mode keeps at norm rho0.
Tests verify this numerically: scaling a detected group leaves train-mode
outputs unchanged; scaling a non-SI weight changes them.
"""
from __future__ import annotations

import enum
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

_HOMOGENEOUS_MODULES = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d,
                        nn.Flatten, nn.Identity, nn.Dropout)
_NORM_MODULES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_HOMOGENEOUS_FUNCS = {torch.flatten, torch.relu, nn.functional.relu, nn.functional.max_pool2d,
                      nn.functional.avg_pool2d, nn.functional.adaptive_avg_pool2d,
                      nn.functional.adaptive_max_pool2d, torch.reshape}
_HOMOGENEOUS_METHODS = {"view", "reshape", "flatten", "relu", "contiguous", "permute", "transpose", "squeeze",
                        "unsqueeze"}
_SUM_FUNCS = {operator.add, torch.add, torch.cat}


class Role(enum.Enum):
    SCALE_INVARIANT = "scale_invariant"
    BN_AFFINE = "bn_affine"
    HEAD = "head"
    OTHER = "other"


@dataclass
class ParamRoles:
    roles: dict[str, Role]                          # parameter name -> role
    si_groups: list[list[str]] = field(default_factory=list)  # jointly scale-invariant sets

    def names(self, role: Role) -> list[str]:
        return [n for n, r in self.roles.items() if r is role]

    def params(self, model: nn.Module, role: Role, trainable_only: bool = False) -> list[nn.Parameter]:
        named = dict(model.named_parameters())
        ps = [named[n] for n in self.names(role)]
        return [p for p in ps if p.requires_grad] if trainable_only else ps


_EMPTY = (frozenset(), 0)


def find_roles(model: nn.Module) -> ParamRoles:
    gm = trace(model)
    modules = dict(gm.named_modules())
    state: dict[fx.Node, tuple[frozenset, int]] = {}
    closed: list[frozenset] = []
    tainted: set[str] = set()
    head_names: set[str] = set()

    def taint(s):
        tainted.update(s)

    for node in gm.graph.nodes:
        ins = [state[a] for a in node.all_input_nodes if a in state]
        inp = ins[0] if ins else _EMPTY
        if node.op == "placeholder" or node.op == "get_attr":
            out = _EMPTY
        elif node.op == "call_module":
            m = modules[node.target]
            own = [f"{node.target}.{n}" for n, p in m.named_parameters(recurse=False)]
            if _is_norm(m):
                if inp[0]:
                    closed.append(inp[0])
                out = _EMPTY  # affine parameters make it non-homogeneous; they are BN_AFFINE
            elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                if m.bias is None:
                    out = (inp[0] | {f"{node.target}.weight"}, inp[1] + 1)
                else:
                    taint(inp[0] | set(own))
                    out = _EMPTY
                if isinstance(m, nn.Linear):
                    head_names.update(own)  # provisional: a linear is a head unless normalised later
            elif isinstance(m, _HOMOGENEOUS_MODULES):
                out = inp
            else:
                taint(inp[0] | {f"{node.target}.{n}" for n, _ in m.named_parameters()})
                out = _EMPTY
        elif node.op == "call_function" and node.target in _SUM_FUNCS:
            if len({d for _, d in ins}) == 1:
                out = (frozenset().union(*[s for s, _ in ins]), ins[0][1])
            else:
                for s, _ in ins:
                    taint(s)
                out = _EMPTY
        elif (node.op == "call_function" and node.target in _HOMOGENEOUS_FUNCS) or \
             (node.op == "call_method" and node.target in _HOMOGENEOUS_METHODS):
            out = inp
        elif node.op == "call_method" and node.target in ("size", "dim"):
            out = _EMPTY
        else:  # output, or an unknown operation: whatever reaches it is not normalised
            for s, _ in ins:
                taint(s)
            out = _EMPTY
        state[node] = out

    groups = _merge(closed)
    si = set()
    si_groups = []
    for g in groups:
        if not (g & tainted):
            si |= g
            si_groups.append(sorted(g))
    roles = {}
    for name, p in model.named_parameters():
        owner = modules.get(name.rsplit(".", 1)[0]) if "." in name else model
        if name in si:
            roles[name] = Role.SCALE_INVARIANT
        elif _is_norm(owner):
            roles[name] = Role.BN_AFFINE
        elif name in head_names and name in tainted:
            roles[name] = Role.HEAD
        else:
            roles[name] = Role.OTHER
    return ParamRoles(roles, si_groups)


class _LeafTracer(fx.Tracer):
    """Also keeps modules that declare `fx_leaf = True` (the LCNN layers, whose forward
    has Python control flow on shapes) as single call_module nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return getattr(type(m), "fx_leaf", False) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """torch.fx trace of `model` with the LCNN layers as leaves."""
    tracer = _LeafTracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, model.__class__.__name__)


def _is_norm(m) -> bool:
    # `normalizes_input`: the module's output is invariant to the scale of its input
    # (regimes.techniques.lcnn_layers.LipschitzBatchNorm2d)
    return isinstance(m, _NORM_MODULES) or getattr(type(m), "normalizes_input", False)


def _merge(sets: list[frozenset]) -> list[frozenset]:
    groups: list[set] = []
    for s in sets:
        s = set(s)
        overlapping = [g for g in groups if g & s]
        for g in overlapping:
            s |= g
            groups.remove(g)
        groups.append(s)
    return [frozenset(g) for g in groups]


def no_decay_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that modules exempt from weight decay by naming them in a class attribute
    `no_weight_decay` (e.g. LCNN's softplus beta and Lipschitz-BN gamma, shaped by their own
    penalties)."""
    out = []
    for m in model.modules():
        for name in getattr(type(m), "no_weight_decay", ()):
            p = getattr(m, name, None)
            if isinstance(p, nn.Parameter):
                out.append(p)
    return out
