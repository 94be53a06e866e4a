"""Where the learning rate is applied: the SGD step of both modes and the sphere projection.

- sphere: rho0 = joint L2 norm of all scale-invariant (SI) weights at init. SGD
  on the SI weights with lr = elr * rho0^2, then all SI weights are rescaled
  jointly back to norm rho0 (`project`). Because the gradient of an SI function
  at radius rho is g_eff / rho, this is w <- normalize(w - elr * g_eff) on the
  unit sphere: tan(angle per step) = elr * ||g_eff||. Momentum, if set, is
  torch's heavy ball on the SI weights with the same lr, followed by the same
  projection (the paper's code does the same); the ELR then is the per-step
  rate before momentum amplification (~ elr / (1 - m) in steady state).
  Non-SI parameters use `noninv_lr` (0: frozen, -1: elr * rho0^2) with `wd`.
- sphere, `sphere_per_layer`: every scale-invariant group g (core.params: each
  conv of a ConvNet; the residual-stream stretches of a ResNet) is its own
  sphere of radius rho0_g, its norm at init, with its own lr = elr * rho0_g^2
  and its own projection; so each group turns by tan(angle_g) = elr *
  ||g_eff,g|| per step, g_eff,g = grad_g * ||w_g|| (the same ELR for every
  group). The joint norm stays at rho0 too (sqrt of the sum of rho0_g^2), and the
  non-SI rate `noninv_lr = -1` means elr * rho0^2 with that joint rho0.
- free: plain SGD (lr, wd, momentum) on every trainable parameter; the ELR is
  emergent, elr_t = lr / ||w_SI,t||^2 (what `elr_of` reports).

Parameters that modules exempt from weight decay (core.params.no_decay_params)
get their own group with wd = 0 and the same rate.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig
from .params import no_decay_params


class SphereSGD:
    """torch SGD whose group rates follow the run's per-step base rate (ELR or lr)."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, si_params: list[nn.Parameter],
                 si_groups: list[list[nn.Parameter]] | None = None):
        """`si_groups` (the scale-invariant groups, together exactly `si_params`) is needed
        with `sphere_per_layer`; otherwise all SI weights form one sphere."""
        self.mode = cfg.mode
        self.si_params = si_params
        self.rho0 = joint_norm(si_params).item() if si_params else 0.0
        per_layer = cfg.mode == "sphere" and cfg.sphere_per_layer and bool(si_params)
        if per_layer:
            if si_groups is None or sorted(id(p) for g in si_groups for p in g) != sorted(map(id, si_params)):
                raise ValueError("sphere_per_layer needs si_groups that partition si_params")
        # the spheres: (parameters, radius); one joint sphere unless sphere_per_layer
        self.spheres: list[list[nn.Parameter]] = [list(g) for g in si_groups] if per_layer else [si_params]
        self.rho0_groups: list[float] = [joint_norm(g).item() for g in self.spheres] if per_layer else [self.rho0]
        si_ids = {id(p) for p in si_params}
        no_decay = {id(p) for p in no_decay_params(model)}
        trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in si_ids]
        others = [p for p in trainable if id(p) not in no_decay]
        others_nd = [p for p in trainable if id(p) in no_decay]
        groups, self._lr_of_group = [], []
        if cfg.mode == "sphere":
            sphere_lr = self.sphere_lr   # lr = elr * rho0^2 turns the ELR into a step at radius rho0
            for i, ps in enumerate(self.spheres):   # one group per sphere, each at its own radius
                groups.append({"params": ps, "weight_decay": 0.0})
                self._lr_of_group.append((lambda r, i=i: r * self.rho0_groups[i] ** 2) if per_layer else sphere_lr)
            if others and cfg.noninv_lr != 0:
                fixed = cfg.noninv_lr
                groups.append({"params": others, "weight_decay": cfg.wd})
                self._lr_of_group.append(sphere_lr if fixed == -1 else (lambda r: fixed))
                if others_nd:
                    groups.append({"params": others_nd, "weight_decay": 0.0})
                    self._lr_of_group.append(self._lr_of_group[-1])
            elif others or others_nd:
                for p in others + others_nd:  # noninv_lr = 0: frozen
                    p.requires_grad_(False)
        else:
            groups.append({"params": si_params + others, "weight_decay": cfg.wd})
            self._lr_of_group.append(lambda r: r)
            if others_nd:
                groups.append({"params": others_nd, "weight_decay": 0.0})
                self._lr_of_group.append(lambda r: r)
        for g in groups:
            g["lr"] = 0.0
        self.optimizer = torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum)

    def sphere_lr(self, elr: float) -> float:
        return elr * self.rho0 ** 2

    def set_rate(self, r: float) -> None:
        """Set every group's lr from this step's base rate r (ELR in sphere mode, lr in free mode)."""
        for g, lr_of in zip(self.optimizer.param_groups, self._lr_of_group):
            g["lr"] = lr_of(r)

    def si_lr(self, r: float) -> float:
        """The SI weights' lr at base rate r (with sphere_per_layer: elr * rho0^2 of the joint
        norm; group g's own lr is elr * rho0_g^2)."""
        return self.sphere_lr(r) if len(self.spheres) > 1 else self._lr_of_group[0](r)

    def elr_of(self, r: float, si_norm: float) -> float:
        """The effective learning rate at base rate r: r itself on the sphere, lr / ||w_SI||^2 when free."""
        if self.mode == "sphere":
            return r
        return self.si_lr(r) / si_norm ** 2 if self.si_params else float("nan")

    @torch.no_grad()
    def project(self) -> None:
        """Rescale all SI weights jointly back to norm rho0 (the sphere); with
        `sphere_per_layer` each group back to its own rho0_g."""
        if len(self.spheres) == 1:
            torch._foreach_mul_(self.si_params, self.rho0 / joint_norm(self.si_params))
            return
        for ps, r in zip(self.spheres, self.rho0_groups):
            torch._foreach_mul_(ps, r / joint_norm(ps))


def joint_norm(tensors) -> torch.Tensor:
    """Joint L2 norm of a list of tensors (one device op, no host sync)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))))


def angle(prev, cur) -> torch.Tensor:
    """Angle (radians) between two concatenated vectors, accurate for tiny angles:
    2 * asin(||u - v|| / 2) for unit vectors u, v."""
    if not cur:
        return torch.zeros(())
    pn, cn = joint_norm(prev), joint_norm(cur)
    diff = torch._foreach_sub([c / cn for c in cur], [p / pn for p in prev])
    chord = joint_norm(diff)
    return 2 * torch.asin(torch.clamp(chord / 2, max=1.0))
