"""Label a training trajectory with its regime, from the final window of its epochs.

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
prefix of a trajectory can be classified with the same code (early_stop
builds on that to stop a running trial).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

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
