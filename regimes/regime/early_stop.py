"""Decide when a running trial's regime is settled, so the trial may stop early.

A NaN/inf blow-up is decided at once; any other label must hold, with its own
evidence, across a window of measured epochs (see `EarlyStop`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .classify import CHAOTIC, CONVERGENCE, DIVERGENCE, Classification, RegimeRules, _as_array, classify, trend_test

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
                     chance_margin on average and below chance + diverge_stop_acc at
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
                     eff. grad norm flat (that is what the label requires), across
                     `chaotic_window` measured epochs (default `window`).
    A NaN/inf blow-up is always decided (divergence).

    The chaotic equilibrium is not in the default `labels`: near the convergence
    boundary a flat loss can still fall later (tests/test_early_stop.py's late
    converger), so stopping it is opt-in. Measured by replaying early stopping on
    recorded trajectories: on benchmarks/boundary_search.py's grid (digits, convnet_si
    width 8, batch 16, 20 epochs, 54 ELRs x 2 seeds) the defaults save 34.5% of the
    epochs and change 2 labels (both at ELR 0.026, the noisy edge of divergence);
    `labels: [convergence, divergence, chaotic_equilibrium], converge_window: 7,
    min_epochs: 6, diverge_stop_acc: 0.05` saves 45.1% and changes none. That setting
    was chosen on that grid; on studies not used to choose it (the demo; digits width
    16, depth 3 and 4, batch 16 and 64, 60 epochs, 11 ELRs each) it saves 57-82% and
    changes 1 label of 60 (depth 3, batch 16, ELR 0.01: stopped as chaotic, the full
    run ends `unresolved` with a significant rise of its grad norm).
    """

    window: int = 4                   # measured epochs the evidence must hold
    # ...for convergence (see above: metastable near the boundary); None = max(window, CONVERGE_WINDOW)
    converge_window: int | None = None
    chaotic_window: int | None = None   # ...for the chaotic equilibrium; None = window
    min_epochs: int = 8               # never stop before this epoch
    labels: tuple = (CONVERGENCE, DIVERGENCE)
    diverge_stop_loss: float = 1.5    # x ln C: divergence stops a trial only this far above ln C
    # divergence stops a trial only with every epoch's accuracy below chance + this (None: the
    # rules' above_chance_margin); 0.05 is stricter than the label, so that a net at the edge of
    # divergence whose accuracy creeps up later is not cut off
    diverge_stop_acc: float | None = None

    @property
    def convergence_window(self) -> int:
        return max(self.window, CONVERGE_WINDOW) if self.converge_window is None else self.converge_window

    def window_of(self, label: str) -> int:
        if label == CONVERGENCE:
            return self.convergence_window
        if label == CHAOTIC and self.chaotic_window is not None:
            return self.chaotic_window
        return self.window

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "converge_window": self.convergence_window,
                "chaotic_window": self.window_of(CHAOTIC),
                "min_epochs": self.min_epochs, "labels": list(self.labels),
                "diverge_stop_loss": self.diverge_stop_loss, "diverge_stop_acc": self.diverge_stop_acc}


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
    if now.evidence.get("nonfinite"):     # a blow-up ends the run: its label cannot change
        return now
    if n == 0 or t[-1] < stop.min_epochs or now.label not in stop.labels:
        return None
    measured = np.isfinite(loss) if acc is None else np.isfinite(loss) & np.isfinite(acc)
    idx = np.flatnonzero(measured & (t > after_epoch))
    size = stop.window_of(now.label)
    if idx.size < max(size, rules.min_window):
        return None
    win = idx[-size:]
    lw = loss[win]
    C = int(num_classes)
    if now.label == CONVERGENCE:
        ok = bool(np.all(lw <= rules.converge_loss))
    elif now.label == DIVERGENCE:
        tr = trend_test(t[win], lw)       # the classifier's trend rule, on the stop window
        falling = math.isfinite(tr["rel"]) and tr["rel"] <= -rules.stable_loss_change and not (
            math.isfinite(tr["p"]) and tr["p"] >= rules.trend_alpha / 2)
        ok = (acc is not None and float(np.mean(acc[win])) <= 1.0 / C + rules.chance_margin
              and bool(np.all(acc[win] < 1.0 / C + (rules.above_chance_margin if stop.diverge_stop_acc is None
                                                    else stop.diverge_stop_acc)))
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
