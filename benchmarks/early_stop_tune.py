"""Choose early-stop settings by replaying them on recorded studies, and check them on others.

    python benchmarks/early_stop_tune.py --tune results/grid --held-out results/demo-digits

For every setting of a grid over `EarlyStop`'s knobs (labels with or without the
chaotic equilibrium, window, converge_window, chaotic_window, min_epochs,
diverge_stop_loss, diverge_stop_acc), each recorded trial of the `--tune`
studies is replayed epoch by epoch through `regimes.regime.stop_decision`, as
the trainable would call it (the same rule as benchmarks/boundary_search.py's
replay: training is deterministic per seed and the decision reads only the
trajectory so far), and the epochs it would have saved and the labels it would
have changed (stopped label != the full run's label) are counted. Printed: the
defaults on every study, then the settings that change no label of the tune
studies, most epochs saved first, each with its figures on the `--held-out`
studies (not used to choose it). The label of every prefix does not depend on
the stop settings, so it is computed once per trial and epoch (that cache is
why ~1,000 settings take a minute or two).

Measured (990 settings, 47 s): tuned on benchmarks/boundary_search.py's grid (108
trials x 20 epochs), the defaults save 34.5% and change 2 labels; 180 settings change
none, the best saving 46.8% (window 3). With the default window of 4, 45.1%:
`{labels: [convergence, divergence, chaotic_equilibrium], converge_window: 7,
min_epochs: 6, diverge_stop_acc: 0.05}`, the setting README.md quotes (the demo,
held out: 57.7% saved, 0 of 16 changed).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from regimes import regime as R  # noqa: E402
from regimes.analysis.load import load_study  # noqa: E402
from regimes.regime import early_stop  # noqa: E402

_classify = early_stop.classify
_cache: dict = {}
_current = [None]


def _cached_classify(loss, acc, grad, num_classes, **kw):
    """classify() of the current trial's prefix of this length, computed once."""
    key = (_current[0], len(loss), kw.get("diverged"))
    if key not in _cache:
        _cache[key] = _classify(loss, acc, grad, num_classes, **kw)
    return _cache[key]


early_stop.classify = _cached_classify      # stop_decision's prefix labels, from the cache


def trajectories(folder: str) -> list[tuple]:
    """(key, loss, acc, grad norm, diverged per epoch, epochs, classes) of every trial of a study."""
    res = load_study(folder)
    out = []
    for tid, ep in res.epochs.groupby("trial_id"):
        ep = ep.sort_values("epoch")
        col = lambda m: ep[m].to_numpy(dtype=float)   # noqa: E731
        classes = int(ep["num_classes"].iloc[0]) if "num_classes" in ep else 10
        out.append(((folder, str(tid)), col("train_loss"), col("train_acc"), col("eff_grad_norm"),
                    ep["diverged"].fillna(False).to_numpy(bool), col("epoch"), classes))
    return out


def replay(trials: list[tuple], stop: R.EarlyStop) -> tuple[float, int]:
    """(fraction of epochs saved, labels changed) if the trials had stopped by `stop`."""
    total = trained = changed = 0
    for key, loss, acc, grad, div, epochs, classes in trials:
        _current[0] = key
        full = _cached_classify(loss, acc, grad, classes, epochs=epochs, diverged=bool(div.any()),
                                rules=R.RegimeRules()).label
        stopped, label = loss.size, full
        for k in range(1, loss.size):
            c = R.stop_decision(loss[:k], acc[:k], grad[:k], classes, diverged=bool(div[:k].any()),
                                epochs=epochs[:k], stop=stop)
            if c is not None:
                stopped, label = k, c.label
                break
        total += loss.size
        trained += stopped
        changed += label != full
    return 1 - trained / total, changed


def settings():
    C, D, X = R.CONVERGENCE, R.DIVERGENCE, R.CHAOTIC
    for labels, window, min_epochs, cw, xw, dsl, dsa in itertools.product(
            [(C, D), (C, D, X)], [3, 4, 5, 6], [4, 6, 8], [5, 7, 9], [4, 6, 8, 10], [1.25, 1.5],
            [None, 0.05, 0.075]):
        if cw < window or (X not in labels and xw != 4):
            continue
        yield R.EarlyStop(window=window, converge_window=cw, chaotic_window=None if xw == window else xw,
                          min_epochs=min_epochs, labels=labels, diverge_stop_loss=dsl, diverge_stop_acc=dsa)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tune", nargs="+", required=True, metavar="DIR", help="studies the settings are chosen on")
    p.add_argument("--held-out", nargs="*", default=[], metavar="DIR", help="studies they are checked on")
    p.add_argument("--top", type=int, default=10)
    a = p.parse_args(argv)
    tune = [t for d in a.tune for t in trajectories(d)]
    held = {d: trajectories(d) for d in a.held_out}
    print(f"tune: {len(tune)} trials from {', '.join(a.tune)}; held out: "
          + (", ".join(f"{d} ({len(t)})" for d, t in held.items()) or "none"))
    saved, changed = replay(tune, R.EarlyStop())
    print(f"defaults: tune {saved:.1%} saved, {changed} changed; "
          + "  ".join(f"{d} {s:.1%}/{c}" for d, (s, c) in ((d, replay(t, R.EarlyStop())) for d, t in held.items())))
    ranked = sorted(((replay(tune, s), s) for s in settings()), key=lambda r: (r[0][1], -r[0][0]))
    best = [r for r in ranked if r[0][1] == 0][:a.top]
    print(f"{len(ranked)} settings; {sum(r[0][1] == 0 for r in ranked)} change no tune label; the best:")
    for (s, _), stop in best:
        out = "  ".join(f"{d} {hs:.1%}/{hc}" for d, (hs, hc) in ((d, replay(t, stop)) for d, t in held.items()))
        print(f"  {s:6.1%} saved  {stop.to_dict()}" + (f"\n          held out (saved/changed): {out}" if out else ""))
    if not best:
        print("  none: every setting changes a label of the tune studies")


if __name__ == "__main__":
    main()
