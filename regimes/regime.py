"""Classify a training trajectory into a regime; estimate regime boundaries.

Pure numpy (core layer): the study layer uses it for early stopping and
boundary search, the analysis layer for reports. No pandas here.

The three regimes of scale-invariant training on the sphere (Kodryan et al.,
"Training scale-invariant neural networks on the sphere can happen in three
regimes", NeurIPS 2022, Sec. 3 and Fig. 1), as seen in a trial's per-epoch
train loss L_t, train accuracy A_t and effective gradient norm G_t:

  convergence          L_t keeps decreasing toward 0 and G_t falls with it
                       (small ELR: the point settles into a minimum).
  chaotic_equilibrium  L_t and G_t stabilise at a nonzero level and A_t stays
                       clearly above chance (medium ELR: SGD noise balances
                       the centripetal pull of the sphere).
  divergence           A_t stays near chance 1/C and L_t does not decrease,
                       sitting near (or above) ln C, the loss of a random
                       guesser (large ELR); any NaN/inf also counts here.
  unresolved           none of the above yet: the trajectory is still
                       trending at the end (train longer).

Every rule looks only at a *final window* of the measured epochs, so a
prefix of a trajectory can be classified with the same code (see
`label_can_change` / `decided` for the early-stopping use).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

CONVERGENCE = "convergence"
CHAOTIC = "chaotic_equilibrium"
DIVERGENCE = "divergence"
UNRESOLVED = "unresolved"
LABELS = (CONVERGENCE, CHAOTIC, DIVERGENCE, UNRESOLVED)
# Order along increasing ELR (paper Fig. 1); used to name boundaries.
REGIME_ORDER = {CONVERGENCE: 0, CHAOTIC: 1, DIVERGENCE: 2, UNRESOLVED: 3}


@dataclass(frozen=True)
class RegimeRules:
    """Thresholds of the regime rules. Losses are in nats (cross-entropy).

    The final window is the last `window_frac` of the *measured* epochs (at
    least `min_window` points); "relative change" of a series is the change of
    its least-squares line across the window divided by the window mean, so
    0.1 means "moved by 10% of its level over the window".
    """

    window_frac: float = 0.25        # fraction of measured epochs in the final window
    # points; fewer measured epochs -> unresolved. 4 so that every trend gets its t-test (below
    # 4 points there is none, and a 15% wobble of a random guesser's 4-7 nat loss would count
    # as a trend: its label flickered to unresolved epoch to epoch)
    min_window: int = 4
    # convergence: loss "at 0" (absolute, nats). A digits/CIFAR net that
    # converges reaches 1e-3..1e-4; a chaotic equilibrium sits at >= ~0.05.
    converge_loss: float = 0.01
    # ...or loss already small and still heading down with the eff. grad norm.
    converge_trend_loss: float = 0.1
    # A series is trending when |relative change| >= its threshold AND the
    # slope is distinguishable from noise: |slope / its standard error| >=
    # trend_t (only tested when the window has >= 4 points). A chaotic
    # equilibrium fluctuates a lot epoch to epoch; a steady fit is needed.
    stable_loss_change: float = 0.15
    # |relative change of the eff. grad norm| below this = stable; it is
    # noisier than the loss (minibatch mean), hence looser.
    stable_grad_change: float = 0.25
    trend_t: float = 2.0
    # accuracy "near chance": acc <= 1/C + chance_margin (absolute).
    chance_margin: float = 0.05
    # accuracy "clearly above chance": acc >= 1/C + above_chance_margin.
    above_chance_margin: float = 0.1
    # divergence: final loss >= diverge_loss_frac * ln C (a random guesser
    # sits at ln C; large logits of a confused net put it above).
    diverge_loss_frac: float = 0.8
    # ...or: chance accuracy, loss above ln C at every epoch of the window, and a fall (if
    # any) whose t-statistic is below this: noise of a confused net, not a smooth descent.
    diverge_noisy_t: float = 4.0
    # early stopping: a label is "decided" once it held for this many
    # consecutive evaluations (see `decided`).
    decided_patience: int = 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Classification:
    label: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return self.evidence.get("reason", "")


# --------------------------------------------------------------------------
# evidence
def _as_array(x, n: int | None = None) -> np.ndarray | None:
    if x is None:
        return None
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if n is not None and a.size != n:
        raise ValueError(f"series lengths differ: {a.size} != {n}")
    return a


def relative_change(t: np.ndarray, y: np.ndarray) -> float:
    """Change of the least-squares line of y(t) across t's span, over mean(y).

    NaN when fewer than 2 points or a zero mean.
    """
    return _trend(t, y)[0]


def _trend(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(relative change across the span, t-statistic of the slope).

    The t-statistic is slope / standard error of the slope (ordinary least
    squares, n - 2 degrees of freedom); NaN with fewer than 4 points, inf for
    an exact line.
    """
    n = y.size
    if n < 2 or np.ptp(t) == 0:
        return math.nan, math.nan
    tc = t - t.mean()
    sxx = float(np.sum(tc * tc))
    slope = float(np.sum(tc * (y - y.mean())) / sxx)
    level = float(np.mean(y))
    rel = slope * float(np.ptp(t)) / abs(level) if level != 0 else math.nan
    if n < 4:
        return rel, math.nan
    resid = y - (y.mean() + slope * tc)
    se = math.sqrt(float(np.sum(resid * resid)) / (n - 2) / sxx)
    tstat = abs(slope) / se if se > 0 else (math.inf if slope != 0 else 0.0)
    return rel, float(math.copysign(tstat, slope))


def evidence(train_loss, train_acc, eff_grad_norm, num_classes: int, *,
             diverged: bool = False, epochs=None, rules: RegimeRules = RegimeRules()) -> dict[str, Any]:
    """The numbers the rules look at (all plain python scalars).

    train_loss may be NaN on epochs that were not measured (train_eval_every);
    those epochs are ignored. train_acc / eff_grad_norm may be None (missing
    measure): the rules then decide without them.
    """
    loss = _as_array(train_loss)
    n = loss.size
    acc = _as_array(train_acc, n)
    grad = _as_array(eff_grad_norm, n)
    t = np.arange(1, n + 1, dtype=np.float64) if epochs is None else _as_array(epochs, n)
    C = int(num_classes)
    if C < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")

    ev: dict[str, Any] = {
        "num_classes": C,
        "chance": 1.0 / C,
        "ln_c": math.log(C),
        "epochs_seen": int(n),
    }
    # Non-finite values. NaN in the loss is a cadence gap, inf is a blow-up;
    # the eff. grad norm is measured every epoch, so NaN there is a blow-up too.
    nonfinite = bool(diverged) or bool(np.any(np.isinf(loss)))
    if grad is not None and grad.size:
        nonfinite |= bool(np.any(~np.isfinite(grad)))
    ev["nonfinite"] = nonfinite

    measured = np.isfinite(loss)
    if acc is not None:
        measured &= np.isfinite(acc)
    idx = np.flatnonzero(measured)
    ev["n_measured"] = int(idx.size)
    w = max(rules.min_window, int(math.ceil(rules.window_frac * idx.size)))
    win = idx[-w:] if idx.size else idx
    ev["window"] = int(win.size)
    ev["window_start_epoch"] = float(t[win[0]]) if win.size else math.nan

    if win.size:
        lw = loss[win]
        ev["loss_final"] = float(np.mean(lw))
        ev["loss_last"] = float(lw[-1])
        ev["loss_min"] = float(np.min(lw))
        ev["loss_median"] = float(np.median(lw))
        ev["loss_rel_change"], ev["loss_trend_t"] = _trend(t[win], lw)
    else:
        ev["loss_final"] = ev["loss_last"] = ev["loss_min"] = ev["loss_median"] = math.nan
        ev["loss_rel_change"] = ev["loss_trend_t"] = math.nan
    ev["loss_over_ln_c"] = ev["loss_final"] / ev["ln_c"]

    if acc is not None and win.size:
        ev["acc_final"] = float(np.mean(acc[win]))
    else:
        ev["acc_final"] = math.nan
    ev["acc_over_chance"] = ev["acc_final"] - ev["chance"]

    # Grad window: same epochs span as the loss window, every finite epoch in it.
    if grad is not None and win.size:
        gsel = np.flatnonzero(np.isfinite(grad) & (t >= t[win[0]]))
        gw = grad[gsel]
        ev["grad_final"] = float(np.mean(gw)) if gw.size else math.nan
        ev["grad_rel_change"], ev["grad_trend_t"] = _trend(t[gsel], gw) if gw.size else (math.nan, math.nan)
    else:
        ev["grad_final"] = ev["grad_rel_change"] = ev["grad_trend_t"] = math.nan
    return ev


# --------------------------------------------------------------------------
# rules
def label_from_evidence(ev: dict[str, Any], rules: RegimeRules = RegimeRules()) -> tuple[str, str]:
    """(label, reason) from an `evidence` dict. Rules are tried in order."""
    if ev["nonfinite"]:
        return DIVERGENCE, "non-finite loss or gradient (NaN/inf)"
    if ev["n_measured"] < rules.min_window:
        return UNRESOLVED, f"only {ev['n_measured']} measured epochs (< {rules.min_window})"

    loss, dloss = ev["loss_final"], ev["loss_rel_change"]
    dgrad = ev["grad_rel_change"]
    has_acc = math.isfinite(ev["acc_final"])
    has_grad = math.isfinite(dgrad)

    def trending(rel, tstat, threshold):  # sign of a real trend, 0 if none
        if not math.isfinite(rel) or abs(rel) < threshold:
            return 0
        if math.isfinite(tstat) and abs(tstat) < rules.trend_t:
            return 0                      # within the noise of the window
        return 1 if rel > 0 else -1

    loss_trend = trending(dloss, ev["loss_trend_t"], rules.stable_loss_change)
    grad_trend = trending(dgrad, ev["grad_trend_t"], rules.stable_grad_change)
    loss_stable, loss_falling = loss_trend == 0, loss_trend < 0
    grad_stable = (not has_grad) or grad_trend == 0
    grad_falling = (not has_grad) or grad_trend < 0

    # convergence: the loss is at 0 (the window's median: a converged net on the sphere can
    # spike for an epoch and fall back, so the last epoch must be back near 0), or small and
    # still heading there with G_t.
    if ev["loss_median"] <= rules.converge_loss and ev["loss_last"] <= max(rules.converge_loss,
                                                                          rules.converge_trend_loss):
        return CONVERGENCE, (f"final train loss {ev['loss_median']:.3g} (median of the window, mean "
                             f"{loss:.3g}) <= {rules.converge_loss}")
    if loss <= rules.converge_trend_loss and loss_falling and grad_falling:
        return CONVERGENCE, (f"train loss {loss:.3g} <= {rules.converge_trend_loss} and falling "
                             f"({dloss:+.2f}/window), eff. grad norm falling")

    near_chance = has_acc and ev["acc_over_chance"] <= rules.chance_margin
    above_chance = has_acc and ev["acc_over_chance"] >= rules.above_chance_margin
    at_ln_c = loss >= rules.diverge_loss_frac * ev["ln_c"]

    # divergence: random guesser -- chance accuracy, loss ~ln C, not decreasing.
    if at_ln_c and not loss_falling and (near_chance or not has_acc):
        return DIVERGENCE, (f"accuracy {ev['acc_final']:.3f} near chance {ev['chance']:.3f}, "
                            f"loss {loss:.3g} >= {rules.diverge_loss_frac} ln C = "
                            f"{rules.diverge_loss_frac * ev['ln_c']:.3g} and not decreasing")

    # ...or confidently wrong: chance accuracy with the loss above ln C at every epoch of the
    # window, falling at most noisily. A diverged net's loss jumps epoch to epoch (large logits
    # relaxing and flaring up); a net that has not started learning falls smoothly (|t| large).
    noisy_fall = math.isfinite(ev["loss_trend_t"]) and abs(ev["loss_trend_t"]) < rules.diverge_noisy_t
    if near_chance and ev["loss_min"] >= ev["ln_c"] and (not loss_falling or noisy_fall):
        return DIVERGENCE, (f"accuracy {ev['acc_final']:.3f} near chance {ev['chance']:.3f} and loss above "
                            f"ln C = {ev['ln_c']:.3g} at every epoch of the window (min {ev['loss_min']:.3g})")

    # chaotic equilibrium: loss and G_t flat at a nonzero level, acc above chance.
    if loss_stable and grad_stable and (above_chance or (not has_acc and not at_ln_c)):
        noisy = abs(dloss) >= rules.stable_loss_change      # large but not significant
        change = (f"{dloss:+.2f}/window, within noise: |t| = {abs(ev['loss_trend_t']):.1f} < {rules.trend_t}"
                  if noisy else f"{dloss:+.2f}/window")
        return CHAOTIC, (f"train loss stable at {loss:.3g} ({change}), "
                         f"eff. grad norm stable, accuracy {ev['acc_final']:.3f} above chance")

    trend = []
    if not loss_stable:
        trend.append(f"train loss changing {dloss:+.2f}/window")
    if not grad_stable:
        trend.append(f"eff. grad norm changing {dgrad:+.2f}/window")
    if not trend:
        trend.append(f"accuracy {ev['acc_final']:.3f} neither at chance nor clearly above it")
    return UNRESOLVED, "still trending: " + ", ".join(trend)


def classify(train_loss, train_acc, eff_grad_norm, num_classes: int, *,
             diverged: bool = False, epochs=None, rules: RegimeRules = RegimeRules()) -> Classification:
    """Regime of one trajectory (arrays indexed by epoch, oldest first).

    Returns the label and the evidence (final-window mean and relative change
    of the train loss and eff. grad norm, accuracy over chance, ...), with
    the deciding rule in evidence["reason"].
    """
    ev = evidence(train_loss, train_acc, eff_grad_norm, num_classes,
                  diverged=diverged, epochs=epochs, rules=rules)
    label, reason = label_from_evidence(ev, rules)
    ev["reason"] = reason
    return Classification(label, ev)


# --------------------------------------------------------------------------
# early decisions (used by the study layer for early stopping)
def label_can_change(c: Classification) -> bool:
    """Whether more epochs could change this prefix's label.

    Only a blow-up is irreversible (NaN/inf ends the run). Every other label
    could still move, so callers use `decided` (persistence over evaluations).
    """
    return not c.evidence.get("nonfinite", False)


def decided(history: Sequence[Classification], rules: RegimeRules = RegimeRules()) -> str | None:
    """The label that can be taken as final, or None.

    `history` holds the classifications of growing prefixes of one trajectory
    (e.g. one per evaluation). A label is decided when it cannot change
    (non-finite) or when the same resolved label held for the last
    `rules.decided_patience` evaluations.
    """
    if not history:
        return None
    if not label_can_change(history[-1]):
        return history[-1].label
    k = rules.decided_patience
    tail = [c.label for c in history[-k:]]
    if len(tail) == k and tail[0] != UNRESOLVED and all(l == tail[0] for l in tail):
        return tail[0]
    return None


# --------------------------------------------------------------------------
# regime-aware early stopping
# Default convergence window of early stopping (measured epochs at loss ~0; see EarlyStop).
CONVERGE_WINDOW = 9


@dataclass(frozen=True)
class EarlyStop:
    """When a running trial's regime counts as decided, so the trial may stop.

    A trial stops at epoch t only when all of these hold, where the label's window
    is its last `window` measured epochs (`converge_window` for convergence; epochs
    with a train-loss measure, see train_eval_every; only epochs after `after_epoch`
    count, e.g. after a warm-up):
    - t >= `min_epochs` and the window is full;
    - the regime of the prefix (`classify` of epochs 1..t) is one of `labels`,
      and the prefixes ending at each epoch of the window got that same label
      (the label is not flickering);
    - the label's own evidence holds across that window:
        divergence   loss >= diverge_stop_loss * ln C at each epoch, accuracy <= chance +
                     chance_margin on average and below chance + above_chance_margin at
                     each epoch (a confused net's full-train accuracy jitters by several
                     points epoch to epoch), and the loss is not significantly falling:
                     a *confidently wrong* random guesser (on the sphere a diverged net
                     keeps large logits, loss well above ln C), not a net that has not
                     started learning yet (uniform outputs, loss ~ln C);
        convergence  train loss <= converge_loss at each of the last `converge_window`
                     measured epochs. Longer than `window` on purpose: near the
                     convergence boundary a minimum can be metastable. On digits at
                     ELR 3.85e-3 (seed 0, batch 16) the loss sat at 4e-4..1.2e-3 for
                     epochs 8-13 (all <= 0.01 from epoch 6) and SGD noise threw the
                     net out at epoch 14 (loss 0.03-0.06 afterwards); its sharpness x
                     step was 0.01-0.06 then, far from the edge of stability (2), so
                     only a longer wait tells such a net from a settled one;
        chaotic      accuracy >= chance + above_chance_margin and loss > converge_trend_loss
                     at each epoch (clearly off zero, clearly learning), loss and
                     eff. grad norm flat (that is what the label requires).
    A NaN/inf blow-up is always decided (divergence). The chaotic equilibrium is
    not in the default `labels`: near the convergence boundary a flat loss can
    still fall later, so stopping it is opt-in.
    """

    window: int = 4                   # measured epochs the evidence must hold
    # ...for convergence (see above: metastable near the boundary); None = max(window, CONVERGE_WINDOW)
    converge_window: int | None = None
    min_epochs: int = 8               # never stop before this epoch
    labels: tuple = (CONVERGENCE, DIVERGENCE)
    diverge_stop_loss: float = 1.5    # x ln C: divergence stops a trial only this far above ln C

    @property
    def convergence_window(self) -> int:
        return max(self.window, CONVERGE_WINDOW) if self.converge_window is None else self.converge_window

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "converge_window": self.convergence_window,
                "min_epochs": self.min_epochs, "labels": list(self.labels),
                "diverge_stop_loss": self.diverge_stop_loss}


def stop_decision(train_loss, train_acc, eff_grad_norm, num_classes: int, *, diverged: bool = False,
                  epochs=None, rules: RegimeRules = RegimeRules(),
                  stop: EarlyStop = EarlyStop(), after_epoch: float = 0) -> Classification | None:
    """The classification a trial may stop with after its last epoch, or None (keep training).

    Same inputs as `classify` (the trajectory so far, oldest first); see
    `EarlyStop` for the conditions. Only measured epochs > `after_epoch` fill the
    windows (the trainable passes the warm-up's length). Pure numpy, so it can be replayed on
    recorded trajectories: a stopped prefix must get the label the full
    trajectory would have got.
    """
    loss = _as_array(train_loss)
    n = loss.size
    acc = _as_array(train_acc, n)
    grad = _as_array(eff_grad_norm, n)
    t = np.arange(1, n + 1, dtype=np.float64) if epochs is None else _as_array(epochs, n)
    kw = dict(diverged=diverged, rules=rules)
    now = classify(loss, acc, grad, num_classes, epochs=t, **kw)
    if not label_can_change(now):
        return now
    if n == 0 or t[-1] < stop.min_epochs or now.label not in stop.labels:
        return None
    measured = np.isfinite(loss) if acc is None else np.isfinite(loss) & np.isfinite(acc)
    idx = np.flatnonzero(measured & (t > after_epoch))
    size = stop.convergence_window if now.label == CONVERGENCE else stop.window
    if idx.size < max(size, rules.min_window):
        return None
    win = idx[-size:]
    lw = loss[win]
    C = int(num_classes)
    if now.label == CONVERGENCE:
        ok = bool(np.all(lw <= rules.converge_loss))
    elif now.label == DIVERGENCE:
        rel, tstat = _trend(t[win], lw)
        falling = math.isfinite(rel) and rel <= -rules.stable_loss_change and not (
            math.isfinite(tstat) and abs(tstat) < rules.trend_t)
        ok = (acc is not None and float(np.mean(acc[win])) <= 1.0 / C + rules.chance_margin
              and bool(np.all(acc[win] < 1.0 / C + rules.above_chance_margin))
              and bool(np.all(lw >= stop.diverge_stop_loss * math.log(C))) and not falling)
    elif now.label == CHAOTIC:
        ok = (acc is not None and bool(np.all(acc[win] >= 1.0 / C + rules.above_chance_margin))
              and bool(np.all(lw > rules.converge_trend_loss)))
    else:
        ok = False
    if not ok:
        return None
    # The label must have held for the prefixes ending at each epoch of the window.
    for end in win[:-1]:
        m = end + 1
        c = classify(loss[:m], None if acc is None else acc[:m], None if grad is None else grad[:m],
                     num_classes, epochs=t[:m], **kw)
        if c.label != now.label:
            return None
    now.evidence["stop_reason"] = (f"{now.label} held for the last {win.size} measured epochs "
                                   f"(epochs {int(t[win[0]])}..{int(t[win[-1]])})")
    return now


# --------------------------------------------------------------------------
# boundaries
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
