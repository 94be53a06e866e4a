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
  unresolved           none of the above yet: the loss or G_t still has a
                       statistically significant trend at the end (train
                       longer), or the evidence conflicts (accuracy neither
                       near chance nor clearly above it).

Stationarity is a test, not a size. A chaotic equilibrium is noisy by nature:
its loss can move by half its level over the window without drifting. A series
counts as trending only when the slope of its least-squares line over the
window is significant for that series' own noise, allowing for correlation
between neighbouring epochs (`trend_test`: AR(1)-corrected standard error, Student-t
p-value, level `RegimeRules.trend_alpha` shared by the two series), *and* the
change is large enough to matter (`stable_loss_change`, `stable_grad_change`).
Every label's reason states the statistics it rests on and their thresholds.

Loss above ln C with accuracy clearly above chance (>= 1/C + above_chance_margin)
and no significant trend is labelled `chaotic_equilibrium`: the net is better than
a random guesser on a stable fraction of the data, and confidently wrong (large
logits) on the rest. Such a run sits at the chaotic side of the divergence
boundary; its reason says "loss above ln C" so a reader can find it.

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

    A series is *trending* when both hold: its relative change is at least its
    `stable_*_change` (a change too small to matter is no trend, however clean),
    and the slope is significant: the two-sided p-value of the slope's
    t-statistic, with its standard error and degrees of freedom corrected for
    the lag-1 autocorrelation of the window (`trend_test`), is below trend_alpha / 2. The loss and the
    eff. grad norm are both tested, so trend_alpha / 2 each (Bonferroni) bounds
    the chance that a stationary run reads `unresolved` by trend_alpha.
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
    # Size floor of a trend: |relative change| below this is stable (see the class docstring).
    stable_loss_change: float = 0.15
    # |relative change of the eff. grad norm| below this = stable; it is
    # noisier than the loss (minibatch mean), hence looser.
    stable_grad_change: float = 0.25
    # Significance: P(a stationary window reads as trending in the loss or the grad norm) <= this;
    # each series is tested at trend_alpha / 2 (two-sided AR(1)-corrected slope test, see trend_test).
    trend_alpha: float = 0.05
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
    # ...or: chance accuracy and loss >= diverge_high_loss * ln C at every epoch of the window,
    # whatever its slope: logits large and wrong. A net that has not started learning sits
    # near ln C (uniform outputs); learning shows in the accuracy, not in a confused net's
    # logit scale relaxing (digits, ELR 1: chance accuracy, loss 6.3 -> 4.3 smoothly, t = -11).
    diverge_high_loss: float = 1.5

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


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with `df` (integer >= 1) degrees of freedom.

    Closed forms of the t distribution for integer df (Abramowitz & Stegun
    26.7.3 / 26.7.4), with theta = atan(|t| / sqrt(df)):
      df odd:  P(|T| < t) = (2/pi) [theta + sin(theta) (c + 2/3 c^3 + (2*4)/(3*5) c^5 + ...
               + (2*4..(df-3))/(3*5..(df-2)) c^(df-2))],  c = cos(theta)  (df = 1: 2 theta / pi);
      df even: P(|T| < t) = sin(theta) [1 + 1/2 c^2 + (1*3)/(2*4) c^4 + ...
               + (1*3..(df-3))/(2*4..(df-2)) c^(df-2)].
    """
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    df = int(df)
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    c, sn = math.cos(theta), math.sin(theta)
    c2 = c * c
    if df % 2:
        inner, term = 0.0, c
        if df > 1:
            inner = term
            for j in range(1, (df - 3) // 2 + 1):
                term *= (2 * j) / (2 * j + 1) * c2
                inner += term
        inside = 2.0 / math.pi * (theta + sn * inner)
    else:
        inner, term = 1.0, 1.0
        for j in range(1, (df - 2) // 2 + 1):
            term *= (2 * j - 1) / (2 * j) * c2
            inner += term
        inside = sn * inner
    return float(min(1.0, max(0.0, 1.0 - inside)))


def trend_test(t: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Is the least-squares slope of y(t) distinguishable from the series' own noise?

    Fits y = a + b (t - mean t) by ordinary least squares and tests b = 0 allowing for
    correlation between neighbouring points. Consecutive epochs of a noisy plateau are
    correlated (a loss that is high one epoch tends to be high the next), which makes the
    plain OLS error too small and the test too eager. With residuals e_i, their lag-1
    autocorrelation r1 = sum e_i e_(i-1) / sum e_i^2 is biased low in a short window, so
    it is corrected to rho = r1 + (1 + 4 r1) / n (the first-order bias of the lag-1
    autocorrelation of a mean-removed AR(1) series) and clipped to [0, 0.9]. Under AR(1)
    noise with coefficient rho the variance of the slope is larger than the OLS one by
    about (1 + rho) / (1 - rho), so
        se(b) = se_OLS(b) * sqrt((1 + rho) / (1 - rho)),   t = b / se(b),
        p = P(|T_(n-2)| >= |t|)   (Student's t, two-sided).
    The degrees of freedom stay n - 2: a smooth but curved descent (a converging loss)
    leaves strongly correlated residuals around its line, and shrinking the degrees of
    freedom with them would hide the clearest trends. With independent noise (rho = 0)
    this is the textbook OLS slope test. Simulated stationary AR(1) windows of 4..25
    points are called trending at p < 0.025 in about 2% (coefficient 0), 3-5% (0.3) and
    5-13% (0.6) of draws: strong correlation over a short window cannot be told from a
    trend, which the size floor of RegimeRules then guards. NaN below 4 points.

    Returns rel (change of the fitted line across the span / |mean|), t_ols, t (the
    corrected statistic), p, rho.
    """
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    rel, t_ols = _trend(t, y)
    n = y.size
    out = {"rel": rel, "t_ols": t_ols, "t": math.nan, "p": math.nan, "rho": math.nan}
    if n < 4 or np.ptp(t) == 0:
        return out
    x = t - t.mean()
    sxx = float(np.sum(x * x))
    slope = float(np.sum(x * (y - y.mean())) / sxx)
    e = y - y.mean() - slope * x
    ss = float(np.sum(e * e))
    r1 = float(np.sum(e[1:] * e[:-1])) / ss if ss > 0 else 0.0
    rho = min(max(r1 + (1.0 + 4.0 * r1) / n, 0.0), 0.9)
    se = math.sqrt(ss / (n - 2) / sxx * (1.0 + rho) / (1.0 - rho))
    if se > 0:
        tstat = slope / se
    else:
        tstat = math.copysign(math.inf, slope) if slope != 0 else 0.0
    out.update(t=float(tstat), p=t_two_sided_p(tstat, n - 2), rho=rho)
    return out


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
        _put_trend(ev, "loss", trend_test(t[win], lw))
    else:
        ev["loss_final"] = ev["loss_last"] = ev["loss_min"] = ev["loss_median"] = math.nan
        _put_trend(ev, "loss", None)
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
        _put_trend(ev, "grad", trend_test(t[gsel], gw) if gw.size else None)
    else:
        ev["grad_final"] = math.nan
        _put_trend(ev, "grad", None)
    ev["trend_alpha_each"] = rules.trend_alpha / 2
    return ev


def _put_trend(ev: dict, name: str, tr: dict | None) -> None:
    """<name>_rel_change, _trend_t (plain OLS), _trend_t_ar (autocorrelation-corrected),
    _trend_p (its two-sided p-value), _trend_rho into the evidence."""
    tr = tr or {"rel": math.nan, "t_ols": math.nan, "t": math.nan, "p": math.nan, "rho": math.nan}
    ev[f"{name}_rel_change"] = tr["rel"]
    ev[f"{name}_trend_t"] = tr["t_ols"]
    ev[f"{name}_trend_t_ar"] = tr["t"]
    ev[f"{name}_trend_p"] = tr["p"]
    ev[f"{name}_trend_rho"] = tr["rho"]


# --------------------------------------------------------------------------
# rules
def _trend_text(ev: dict, name: str, what: str, floor: float, alpha: float) -> str:
    """One series' trend in words, with the statistic and the thresholds it was held to."""
    rel, tt, p = ev[f"{name}_rel_change"], ev[f"{name}_trend_t_ar"], ev[f"{name}_trend_p"]
    if not math.isfinite(rel):
        return f"{what}: no trend measurable"
    if not math.isfinite(p):
        return f"{what} {rel:+.2f}/window (|change| floor {floor:g}; no slope test below 4 points)"
    sig = "<" if p < alpha else ">="
    return f"{what} {rel:+.2f}/window (floor {floor:g}), slope t = {tt:+.2f}, p = {p:.3g} {sig} {alpha:g}"


def label_from_evidence(ev: dict[str, Any], rules: RegimeRules = RegimeRules()) -> tuple[str, str]:
    """(label, reason) from an `evidence` dict. Rules are tried in order.

    A series trends when |relative change| >= its floor and the slope test's p-value is
    below trend_alpha / 2 (see RegimeRules); the reason names both numbers."""
    if ev["nonfinite"]:
        return DIVERGENCE, "non-finite loss or gradient (NaN/inf)"
    if ev["n_measured"] < rules.min_window:
        return UNRESOLVED, f"only {ev['n_measured']} measured epochs (< min_window {rules.min_window})"

    loss, dloss = ev["loss_final"], ev["loss_rel_change"]
    dgrad = ev["grad_rel_change"]
    has_acc = math.isfinite(ev["acc_final"])
    has_grad = math.isfinite(dgrad)
    alpha = rules.trend_alpha / 2

    def trending(name, threshold):  # sign of a significant trend, 0 if none
        rel, p = ev[f"{name}_rel_change"], ev[f"{name}_trend_p"]
        if not math.isfinite(rel) or abs(rel) < threshold:
            return 0
        if math.isfinite(p) and p >= alpha:
            return 0                      # within the noise of the window
        return 1 if rel > 0 else -1

    loss_trend = trending("loss", rules.stable_loss_change)
    grad_trend = trending("grad", rules.stable_grad_change) if has_grad else 0
    loss_stable, loss_falling = loss_trend == 0, loss_trend < 0
    grad_stable = (not has_grad) or grad_trend == 0
    loss_txt = _trend_text(ev, "loss", "train loss", rules.stable_loss_change, alpha)
    grad_txt = (_trend_text(ev, "grad", "eff. grad norm", rules.stable_grad_change, alpha)
                if has_grad else "no eff. grad norm")

    # convergence: the loss is at 0 (the window's median: a converged net on the sphere can
    # spike for an epoch and fall back, so the last epoch must be back near 0), or small and
    # still heading there with G_t.
    last_cap = max(rules.converge_loss, rules.converge_trend_loss)
    if ev["loss_median"] <= rules.converge_loss and ev["loss_last"] <= last_cap:
        return CONVERGENCE, (f"final train loss {ev['loss_median']:.3g} (median of the window, mean "
                             f"{loss:.3g}) <= converge_loss {rules.converge_loss}, last epoch "
                             f"{ev['loss_last']:.3g} <= {last_cap:g}")
    # small and heading to 0: neither series significantly rising, at least one significantly
    # falling (over a short window a converging loss's fall can be noisy while G_t's is clear)
    heading_down = loss_trend <= 0 and grad_trend <= 0 and (loss_falling or (has_grad and grad_trend < 0))
    if loss <= rules.converge_trend_loss and heading_down:
        return CONVERGENCE, (f"train loss {loss:.3g} <= converge_trend_loss {rules.converge_trend_loss} "
                             f"and heading to 0 (neither series significantly rising, one significantly "
                             f"falling): {loss_txt}; {grad_txt}")

    near_chance = has_acc and ev["acc_over_chance"] <= rules.chance_margin
    above_chance = has_acc and ev["acc_over_chance"] >= rules.above_chance_margin
    at_ln_c = loss >= rules.diverge_loss_frac * ev["ln_c"]
    acc_near = (f"accuracy {ev['acc_final']:.3f} <= chance + chance_margin = "
                f"{ev['chance'] + rules.chance_margin:.3f}")

    # divergence: random guesser -- chance accuracy, loss ~ln C, not decreasing.
    if at_ln_c and not loss_falling and (near_chance or not has_acc):
        return DIVERGENCE, ((acc_near if has_acc else "no accuracy") +
                            f", loss {loss:.3g} >= {rules.diverge_loss_frac} ln C = "
                            f"{rules.diverge_loss_frac * ev['ln_c']:.3g} and not significantly falling: {loss_txt}")

    # ...or confidently wrong: chance accuracy with the loss above ln C at every epoch of the
    # window, falling at most noisily. A diverged net's loss jumps epoch to epoch (large logits
    # relaxing and flaring up); a net that has not started learning falls smoothly (|t| large).
    noisy_fall = math.isfinite(ev["loss_trend_t"]) and abs(ev["loss_trend_t"]) < rules.diverge_noisy_t
    far_above = ev["loss_min"] >= rules.diverge_high_loss * ev["ln_c"]
    if near_chance and ev["loss_min"] >= ev["ln_c"] and (not loss_falling or noisy_fall or far_above):
        if not loss_falling:
            how = "not significantly falling"
        elif noisy_fall:
            how = f"OLS slope |t| = {abs(ev['loss_trend_t']):.2f} < diverge_noisy_t {rules.diverge_noisy_t}"
        else:
            how = (f"min loss >= diverge_high_loss {rules.diverge_high_loss:g} ln C = "
                   f"{rules.diverge_high_loss * ev['ln_c']:.3g}, whatever its slope")
        return DIVERGENCE, (f"{acc_near} and loss above ln C = {ev['ln_c']:.3g} at every epoch of the window "
                            f"(min {ev['loss_min']:.3g}), {how}: {loss_txt}")

    # chaotic equilibrium: loss and G_t without a significant trend at a nonzero level, acc above chance.
    if loss_stable and grad_stable and (above_chance or (not has_acc and not at_ln_c)):
        acc_txt = (f"accuracy {ev['acc_final']:.3f} >= chance + above_chance_margin = "
                   f"{ev['chance'] + rules.above_chance_margin:.3f}" if has_acc else "no accuracy")
        high = f"; loss above ln C = {ev['ln_c']:.3g} (confidently wrong on part of the data)" \
            if loss > ev["ln_c"] else ""
        return CHAOTIC, (f"no significant trend at train loss {loss:.3g}: {loss_txt}; {grad_txt}; "
                         f"{acc_txt}{high}")

    trend = []
    if not loss_stable:
        trend.append(loss_txt)
    if not grad_stable:
        trend.append(grad_txt)
    if trend:
        return UNRESOLVED, "still trending: " + "; ".join(trend)
    return UNRESOLVED, (f"evidence conflicts: no significant trend ({loss_txt}; {grad_txt}) but accuracy "
                        f"{ev['acc_final']:.3f} neither <= chance + chance_margin = "
                        f"{ev['chance'] + rules.chance_margin:.3f} nor >= chance + above_chance_margin = "
                        f"{ev['chance'] + rules.above_chance_margin:.3f}"
                        + (f", loss {loss:.3g} >= {rules.diverge_loss_frac} ln C" if at_ln_c else ""))


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
