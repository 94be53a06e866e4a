"""Locate regime boundaries along one axis of a grid (e.g. ELR), pooled over seeds.

Where one replicate's labels change regime (`change_points`), where the change
lies over seeds (`estimate_boundaries`), and the majority label of repeated trials.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from .classify import REGIME_ORDER, UNRESOLVED

@dataclass
class Boundary:
    """Where the regime changes from `lower` to `upper` along an axis.

    `value` is the geometric mean of the per-seed estimates (each, for labels
    in regime order, the geometric midpoint of the last grid point with
    `lower` and the next with `upper`; see `change_points` for labels out of
    order); `lo`/`hi` the range over seeds; `log10_spread` their standard
    deviation in log10 units; `bracket_lo`/`bracket_hi` the widest pair of
    grid points that bracket the change.
    """

    lower: str
    upper: str
    value: float
    lo: float
    hi: float
    log10_spread: float
    bracket_lo: float
    bracket_hi: float
    n_seeds: int          # seeds showing this change
    n_seeds_total: int
    misordered: int = 0   # labels contradicting the change, summed over seeds (see change_points)

    @property
    def name(self) -> str:
        return f"{self.lower}->{self.upper}"

    def to_dict(self) -> dict[str, Any]:
        return {"boundary": self.name, **asdict(self)}


def midpoint(a: float, b: float) -> float:
    """Geometric midpoint (interpolation in log space); arithmetic if either is <= 0."""
    if a > 0 and b > 0:
        return math.sqrt(a * b)
    return 0.5 * (a + b)


def _mean_log(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    if np.all(v > 0):
        lv = np.log10(v)
        return float(10 ** lv.mean()), float(lv.std()) if v.size > 1 else 0.0
    return float(v.mean()), math.nan


def change_points(axis_values, labels, *, skip: Iterable[str] = (UNRESOLVED,)) -> list[tuple[str, str, float, float, float, int]]:
    """Regime changes along one replicate, robust to labels out of regime order.

    Returns (lower, upper, estimate, bracket_lo, bracket_hi, misordered) for each pair
    of consecutive regimes (in REGIME_ORDER) that the replicate shows.

    Near a boundary single-run labels are noisy: at one seed, ELRs a grid step
    apart can read convergence, chaotic, convergence. Each change is therefore
    the one cut along the axis that contradicts the fewest labels: points of
    regime order <= lower above the cut plus points of order >= upper below
    it (`misordered`; 0 when the labels are in order). A change is reported only
    when its best cut contradicts fewer labels than "no change in the range"
    (every point on one side) does. When several cuts tie,
    the change is only known to lie between the first and the last of them:
    the bracket spans them all and the estimate is the geometric midpoint of
    the first and the last cut (each cut itself the geometric midpoint of its
    two neighbouring points). With labels in order this is the usual estimate:
    the midpoint of the last `lower` and the first `upper` point. A dense grid
    and a sparse search thus answer the same question instead of picking
    different crossings of the same noisy band. Points labelled in `skip` are
    stepped over. Several trials at one axis value must be merged by the caller.
    """
    x = np.asarray(axis_values, dtype=np.float64)
    lab = np.asarray(labels, dtype=object)
    skip = set(skip)
    keep = np.array([l not in skip for l in lab], dtype=bool)
    x, lab = x[keep], lab[keep]
    order = np.argsort(x, kind="stable")
    x, lab = x[order], lab[order]
    level = np.array([REGIME_ORDER.get(str(l), 9) for l in lab])
    present = sorted(set(level.tolist()))
    name = {REGIME_ORDER.get(str(l), 9): str(l) for l in lab}
    out = []
    for lo_level, hi_level in zip(present, present[1:]):
        above = level > lo_level                          # belongs on the upper side of this change
        # errors of the cut before point j (j = 1..n-1): upper-side points below + lower-side points above
        below_upper = np.cumsum(above)[:-1]
        above_lower = np.cumsum((~above)[::-1])[::-1][1:]
        errors = below_upper + above_lower
        # no change inside the range (every point on one side) must explain the labels worse:
        # a stray label at one end is noise, not a boundary at the other end
        if errors.min() >= min(int(above.sum()), int((~above).sum())):
            continue
        best = np.flatnonzero(errors == errors.min()) + 1
        j1, j2 = int(best[0]), int(best[-1])
        estimate = midpoint(midpoint(x[j1 - 1], x[j1]), midpoint(x[j2 - 1], x[j2]))
        out.append((name[lo_level], name[hi_level], float(estimate), float(x[j1 - 1]), float(x[j2]),
                    int(errors.min())))
    return out


def estimate_boundaries(axis_values, labels, seeds=None, *,
                        skip: Iterable[str] = (UNRESOLVED,)) -> list[Boundary]:
    """Boundaries along one axis, for one setting of every other axis.

    axis_values, labels, seeds: one entry per trial. Each seed is a replicate
    line; per seed each change is placed by `change_points` (the cut that
    contradicts the fewest labels, at the geometric midpoint of its
    neighbours), then seeds are pooled per kind of change (lower -> upper).
    Sorted by position.
    """
    x = np.asarray(axis_values, dtype=np.float64)
    lab = np.asarray(labels, dtype=object)
    s = np.zeros(x.size, dtype=np.int64) if seeds is None else np.asarray(seeds)
    if not (x.size == lab.size == s.size):
        raise ValueError("axis_values, labels and seeds must have one entry per trial")
    seed_ids = list(dict.fromkeys(s.tolist()))
    found: dict[tuple[str, str], list[tuple[float, float, float, int]]] = {}
    for sd in seed_ids:
        m = s == sd
        for lower, upper, est, a, b, wrong in change_points(x[m], lab[m], skip=skip):
            found.setdefault((lower, upper), []).append((est, a, b, wrong))
    out = []
    for (lower, upper), est in found.items():
        mids = [e[0] for e in est]
        value, spread = _mean_log(mids)
        out.append(Boundary(lower, upper, value, float(min(mids)), float(max(mids)), spread,
                            float(min(e[1] for e in est)), float(max(e[2] for e in est)),
                            len(est), len(seed_ids), sum(e[3] for e in est)))
    out.sort(key=lambda b: b.value)
    return out


def majority(labels: Sequence[str]) -> tuple[str, float]:
    """Most common label and its share; ties go to the lower-ELR regime order."""
    if len(labels) == 0:
        return UNRESOLVED, math.nan
    counts: dict[str, int] = {}
    for l in labels:
        counts[l] = counts.get(l, 0) + 1
    best = max(counts, key=lambda l: (counts[l], -REGIME_ORDER.get(l, 9)))
    return best, counts[best] / len(labels)
