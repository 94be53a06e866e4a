"""Rate schedules, precomputed per optimiser step.

The schedule drives the ELR in sphere mode and the lr in free mode; the base
rate is `elr` (sphere) or `lr` (free), the final rate `elr_final` / `lr_final`.
With t the step index, T the number of steps and f = t / T the fraction of
training done before step t:

- constant     r0
- step         r0 * step_factor^(number of milestones <= f)      (milestones: fractions of training)
- linear       r0 + (rF - r0) * f
- cosine       rF + (r0 - rF) * (1 + cos(pi f)) / 2
- exponential  r0 * (rF / r0)^f                                  (rF > 0)
- two_phase    r0 for t < round(switch_frac * T), then rF        (train in the chaotic regime,
                                                                  then fine-tune at a small ELR)
- piecewise    knots [[f_i, r_i], ...]: log r interpolated linearly in f; held flat outside the knots
- warm-up      (any schedule) multiplied by (t + 1) / W for the first W = warmup_epochs * steps_per_epoch steps

The keys are validated by TrainConfig (its schedule group). The array is computed once before the loop (float64 on the CPU); the loop only
indexes it, so the loop never branches on the schedule.
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def schedule_values(cfg, total_steps: int, steps_per_epoch: int) -> torch.Tensor:
    sphere = cfg.mode == "sphere"
    r0 = cfg.elr if sphere else cfg.lr
    rf = cfg.elr_final if sphere else cfg.lr_final
    T = total_steps
    t = torch.arange(T, dtype=torch.float64)
    f = t / T
    kind = cfg.schedule
    if kind == "constant":
        r = torch.full((T,), r0, dtype=torch.float64)
    elif kind == "step":
        n = torch.zeros(T, dtype=torch.float64)
        for m in cfg.milestones:
            n += (f >= m).double()
        r = r0 * cfg.step_factor ** n
    elif kind == "linear":
        r = r0 + (rf - r0) * f
    elif kind == "cosine":
        r = rf + (r0 - rf) * (1 + torch.cos(math.pi * f)) / 2
    elif kind == "exponential":
        r = r0 * (rf / r0) ** f
    elif kind == "two_phase":
        switch = round(cfg.switch_frac * T)
        r = torch.where(t < switch, torch.tensor(r0, dtype=torch.float64), torch.tensor(rf, dtype=torch.float64))
    elif kind == "piecewise":
        fs = torch.tensor([k[0] for k in cfg.knots], dtype=torch.float64)
        logs = torch.tensor([math.log(k[1]) for k in cfg.knots], dtype=torch.float64)
        r = torch.exp(_interp(f, fs, logs))
    else:  # validated in check(); kept for a clear message if a new name is added without a formula
        raise ConfigError("schedule", f"no formula for {kind!r}")
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    if warm > 0:
        r = r * torch.clamp((t + 1) / warm, max=1.0)
    return r


def _interp(x, xs, ys):
    """Linear interpolation of ys(xs) at x, constant outside [xs[0], xs[-1]]."""
    if len(xs) == 1:
        return torch.full_like(x, float(ys[0]))
    idx = torch.clamp(torch.searchsorted(xs, x, right=True) - 1, 0, len(xs) - 2)
    x0, x1, y0, y1 = xs[idx], xs[idx + 1], ys[idx], ys[idx + 1]
    w = torch.clamp((x - x0) / (x1 - x0), 0.0, 1.0)
    return y0 + w * (y1 - y0)
