"""Boundary search vs a dense log-grid of ELRs, each with and without early stopping.

    python benchmarks/boundary_search.py                 # ~10 min on 2 CPU cores
    python benchmarks/boundary_search.py --smoke-test    # seconds: tiny net, 4 epochs

Real training on digits (convnet_si width 8, batch 16, no augmentation, sphere
mode, 20 epochs, seeds 0 and 1 as replicates), through `regimes.study.launch.run_study` on a
local Ray: exactly what `regimes sweep` runs.

- grid:         ELRs evenly spaced in log over [lo, hi], neighbours a factor
                `resolution` apart, so every boundary is bracketed within it.
- grid + ES:    the same grid with regime-aware early stopping. Not re-run: CPU
                training is deterministic per seed and `stop_decision` reads only
                the trajectory so far, so the trainable would stop each trial at
                the first epoch where `stop_decision` on the recorded prefix
                says so; that prefix is replayed here from the grid's Parquet.
- search:       `kind: boundary` to the same resolution.
- search + ES:  the same with `early_stop`, run for real.

Prints trials and trained epochs of each, the boundaries each found (pooled
over seeds), the ratios, and whether early stopping changed any label.
`--train search-es --storage DIR` re-trains only the named studies and re-reads the others.
`--replay DIR [DIR ...]` also replays early stopping on studies recorded
elsewhere (e.g. results/demo-digits), a check of the stopping rules on
configurations they were not tuned on. `--early-stop JSON` sets the spec's
`early_stop` section (default: the defaults). Targets: search <= 1/3 of the
grid's epochs and search + early stop <= 0.2 of them, with the same boundaries
within the resolution; early stopping saves >= 45% of the grid's epochs with
unchanged labels. Measured (2 cores, ~25 min): the search 0.287; with
`--early-stop '{"labels": ["convergence", "divergence", "chaotic_equilibrium"],
"converge_window": 7, "min_epochs": 6, "diverge_stop_acc": 0.05}'` the grid
saves 45.1% with 0 of 108 labels changed, the search + early stop spends 0.183,
and the demo (not used to choose the setting) saves 57.7% with 0 of 16 changed;
with the defaults (chaotic runs never stopped) 34.5% and 2 labels changed at
ELR 0.026, the noisy edge of divergence.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from regimes import regime as R
from regimes.analysis.load import boundaries, classify, load_study
from regimes.study import spec
from regimes.study.boundary import log_grid
from regimes.study.launch import run_study

BASE = {"dataset": "digits", "model": "convnet_si", "width": 8, "mode": "sphere", "batch_size": 16,
        "augment": False, "epochs": 20, "device": "cpu"}
SMOKE = {"width": 4, "epochs": 4, "subset": 256, "batch_size": 32}
STUDIES = ("grid", "search", "search-es")


def run(name: str, search: dict, base: dict, storage: str, early_stop: bool | dict, analyse_only: bool = False,
        restart: bool = False):
    source = {"name": name, "base": base, "search": search, "resources": {"cpu": 1},
              "checkpoint_every": 1000}
    if early_stop:
        source["early_stop"] = early_stop
    study = spec.from_dict(source)
    t0 = time.time()
    if not analyse_only:
        run_study(study, storage, verbose=0, restart=restart)
    wall = time.time() - t0 if not analyse_only else math.nan
    res = load_study(Path(storage) / name)
    labels = classify(res)
    return study, res, labels, wall


def grid_with_early_stop(res, labels, stop: R.EarlyStop):
    """Replay the trainable's early-stop decision on each recorded trajectory: (epochs, labels)."""
    epochs, stopped_labels = {}, {}
    for tid, ep in res.epochs.groupby("trial_id"):
        ep = ep.sort_values("epoch")
        col = lambda m: ep[m].to_numpy(dtype=float)
        n = len(ep)
        stop_at, lab = n, None
        for k in range(1, n):          # the trainable never stops at the last epoch
            c = R.stop_decision(col("train_loss")[:k], col("train_acc")[:k], col("eff_grad_norm")[:k],
                                int(ep["num_classes"].iloc[0]), diverged=bool(ep["diverged"].iloc[:k].any()),
                                epochs=col("epoch")[:k], stop=stop)
            if c is not None:
                stop_at, lab = k, c.label
                break
        if lab is None:
            lab = labels.set_index("trial_id").loc[tid, "regime"]
        epochs[tid], stopped_labels[tid] = stop_at, lab
    return epochs, stopped_labels


def _losses(res, elr: float, seed: int) -> np.ndarray:
    t = res.trials
    tid = t.loc[np.isclose(t["elr"].astype(float), elr, rtol=1e-9, atol=0) & (t["seed"] == seed), "trial_id"].iloc[0]
    ep = res.epochs[res.epochs["trial_id"] == tid].sort_values("epoch")
    return ep["train_loss"].to_numpy(dtype=float)


def bounds_of(res, labels) -> dict[str, float]:
    b = boundaries(res, labels, "elr")
    return {r["boundary"]: float(r["value"]) for _, r in b.iterrows()}


def seed_detail(res, labels) -> str:
    """Per boundary: the per-seed range and how many labels contradict it (out of regime order)."""
    b = boundaries(res, labels, "elr")
    return "; ".join(f"{r['boundary'].replace('chaotic_equilibrium', 'chaotic')}: seeds {r['lo']:.3g}..{r['hi']:.3g}"
                     f", {int(r['misordered'])} misordered" for _, r in b.iterrows())


def replay(folder: str, stop) -> None:
    """Early stopping replayed on a study recorded elsewhere: epochs saved, labels changed."""
    res = load_study(folder)
    labels = classify(res)
    epochs, stopped = grid_with_early_stop(res, labels, stop)
    full = dict(zip(labels["trial_id"], labels["regime"]))
    total = int(res.epochs.groupby("trial_id")["epoch"].max().sum())
    changed = [t for t in full if stopped[t] != full[t]]
    print(f"replay on {folder}: {len(full)} trials, {total} epochs -> {sum(epochs.values())} with early stop "
          f"({1 - sum(epochs.values()) / total:.1%} saved), labels changed: {len(changed)}/{len(full)}")


def fmt_bounds(b: dict) -> str:
    return ", ".join(f"{k.replace('chaotic_equilibrium', 'chaotic')} {v:.3g}" for k, v in sorted(b.items(), key=lambda kv: kv[1])) or "none"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lo", type=float, default=1e-4)
    p.add_argument("--hi", type=float, default=1.0)
    p.add_argument("--resolution", type=float, default=1.19)
    p.add_argument("--probes", type=int, default=2, help="probes per round")
    p.add_argument("--initial", type=int, default=5)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="replicate seeds (default: 0 1)")
    p.add_argument("--storage", default=None, help="results folder (default: a temp dir)")
    p.add_argument("--replay", nargs="*", default=[], metavar="DIR",
                   help="recorded studies to replay early stopping on (e.g. results/demo-digits)")
    p.add_argument("--smoke-test", action="store_true")
    p.add_argument("--analyse-only", action="store_true",
                   help="re-read the studies already in --storage (e.g. with changed rules); train nothing")
    p.add_argument("--early-stop", type=json.loads, default=True, metavar="JSON",
                   help="the spec's early_stop section for the replay and search + ES, e.g. "
                        "'{\"labels\": [\"convergence\", \"divergence\", \"chaotic_equilibrium\"]}' "
                        "(default: true, the defaults)")
    p.add_argument("--train", nargs="+", choices=STUDIES, default=list(STUDIES),
                   help="studies to train; the others are re-read from --storage (default: all)")
    a = p.parse_args(argv)

    import ray

    base = {**BASE, "epochs": a.epochs, **(SMOKE if a.smoke_test else {})}
    n_grid = math.ceil(math.log(a.hi / a.lo) / math.log(a.resolution) - 1e-9) + 1
    grid_elrs = log_grid(a.lo, a.hi, n_grid)
    ratio = (a.hi / a.lo) ** (1 / (n_grid - 1))
    storage = a.storage or tempfile.mkdtemp(prefix="boundary-bench-")
    print(f"digits, {base['model']} width {base['width']}, batch {base['batch_size']}, {base['epochs']} epochs, "
          f"seeds {a.seeds}; ELR in [{a.lo:g}, {a.hi:g}], resolution x{a.resolution:g} (grid: {n_grid} points, "
          f"x{ratio:.4f} apart); results in {storage}", flush=True)
    boundary = {"kind": "boundary", "axis": "elr", "range": [a.lo, a.hi], "resolution": a.resolution,
                "budget": n_grid * len(a.seeds), "probes_per_round": a.probes, "initial": a.initial,
                "space": {"seed": a.seeds}}
    rows = {}
    keep = set(STUDIES) if a.analyse_only else set(STUDIES) - set(a.train)
    if keep and not a.storage:
        p.error("--analyse-only or --train with fewer studies needs --storage")
    fresh = set(a.train) if keep else set()   # re-trained beside kept studies: start over
    if keep != set(STUDIES):
        ray.init(address="local", num_cpus=a.cpus, include_dashboard=False, log_to_driver=False)
    try:
        grid_search = {"kind": "grid", "space": {"elr": grid_elrs, "seed": a.seeds}}
        _, g, gl, gw = run("grid", grid_search, base, storage, False, "grid" in keep,
                            "grid" in fresh)
        print(f"grid done in {gw:.0f} s", flush=True)
        _, s, sl, sw = run("search", boundary, base, storage, False, "search" in keep,
                            "search" in fresh)
        print(f"search done in {sw:.0f} s", flush=True)
        study_es, se, sel, sew = run("search-es", boundary, base, storage, a.early_stop, "search-es" in keep,
                            "search-es" in fresh)
        print(f"search + early stop done in {sew:.0f} s", flush=True)
    finally:
        if keep != set(STUDIES):
            ray.shutdown()

    stop = study_es.early_stop
    print(f"early stop: {stop}")
    ge_epochs, ge_labels = grid_with_early_stop(g, gl, stop)
    full = dict(zip(gl["trial_id"], gl["regime"]))
    grid_changed = sum(ge_labels[t] != full[t] for t in full)
    by_id = gl.set_index("trial_id").loc[list(ge_labels)]
    ge_bounds = R.estimate_boundaries(by_id["elr"].to_numpy(float), [ge_labels[t] for t in ge_labels],
                                      by_id["seed"].to_numpy())
    # search + ES probes the same ELRs as the search when no label changes: compare at shared probes
    key = lambda df: list(zip(np.round(df["elr"].astype(float), 12), df["seed"].astype(int)))
    lab_s = dict(zip(key(sl), sl["regime"]))
    lab_se = dict(zip(key(sel), sel["regime"]))
    shared = sorted(set(lab_s) & set(lab_se))
    search_changed = sum(lab_s[x] != lab_se[x] for x in shared)
    # the replay above assumes a stopped trial is a prefix of its full run: check it on the search
    prefix_same, prefix_n = 0, 0
    for x in shared:
        full_run = _losses(s, *x)
        stopped_run = _losses(se, *x)
        prefix_n += 1
        prefix_same += int(len(stopped_run) <= len(full_run)
                           and np.array_equal(full_run[:len(stopped_run)], stopped_run))

    rows["grid"] = (len(gl), int(g.trials["epochs_done"].sum()), bounds_of(g, gl), gw)
    rows["grid + early stop (replayed)"] = (len(gl), int(sum(ge_epochs.values())),
                                            {b.name: b.value for b in ge_bounds}, math.nan)
    rows["search"] = (len(sl), int(s.trials["epochs_done"].sum()), bounds_of(s, sl), sw)
    rows["search + early stop"] = (len(sel), int(se.trials["epochs_done"].sum()), bounds_of(se, sel), sew)

    grid_epochs = rows["grid"][1]
    print()
    print(f"{'run':30s} {'trials':>6s} {'epochs':>7s} {'vs grid':>8s} {'wall s':>7s}  boundaries (ELR)")
    for k, (n, e, b, w) in rows.items():
        print(f"{k:30s} {n:6d} {e:7d} {e / grid_epochs:8.3f} {w:7.0f}  {fmt_bounds(b)}")
    print()
    gb, sb = rows["grid"][2], rows["search"][2]
    for name in sorted(set(gb) | set(sb)):
        if name in gb and name in sb:
            f = max(gb[name], sb[name]) / min(gb[name], sb[name])
            ok = "same" if f <= a.resolution * (1 + 1e-9) else "DIFFERENT"
            print(f"boundary {name}: grid {gb[name]:.4g}, search {sb[name]:.4g}, factor {f:.3f} "
                  f"({ok} within x{a.resolution:g})")
        else:
            print(f"boundary {name}: only in {'grid' if name in gb else 'search'}")
    # near a boundary single-seed labels are noisy; how many grid labels does the search's step
    # function (its boundary midpoints) contradict? (unresolved grid points not counted)
    order = sorted(sb.items(), key=lambda kv: kv[1])
    def predicted(x):
        lab = order[0][0].split("->")[0] if order else None
        for name, v in order:
            if x >= v:
                lab = name.split("->")[1]
        return lab
    resolved = gl[gl["regime"] != R.UNRESOLVED]
    wrong = [(float(x), lab) for x, lab in zip(resolved["elr"], resolved["regime"]) if predicted(float(x)) != lab]
    print(f"grid labels contradicted by the search's boundaries: {len(wrong)}/{len(resolved)} resolved grid points"
          + (f" (at ELR {', '.join(f'{x:.3g} {l}' for x, l in sorted(wrong))})" if wrong else ""))
    print(f"search / grid epochs:                       {rows['search'][1] / grid_epochs:.3f}  (target <= 0.333)")
    print(f"early stop saving, grid:                    {1 - rows['grid + early stop (replayed)'][1] / grid_epochs:.1%}"
          f"  labels changed: {grid_changed}/{len(full)}  (target >= 45%, 0 changed)")
    print(f"early stop saving, search:                  {1 - rows['search + early stop'][1] / rows['search'][1]:.1%}"
          f"  labels changed at shared ELRs: {search_changed}/{len(shared)}")
    print(f"stopped trials are prefixes of full runs (same train loss, epoch by epoch): "
          f"{prefix_same}/{prefix_n} shared ELRs")
    stopped = se.trials["status"].value_counts().to_dict()
    print(f"search + early stop statuses: {stopped}")
    print(f"search + early stop / grid epochs:          {rows['search + early stop'][1] / grid_epochs:.3f}"
          "  (target <= 0.2, the same boundaries)")
    print(f"grid per seed:   {seed_detail(g, gl)}")
    print(f"search per seed: {seed_detail(s, sl)}")
    for folder in a.replay:
        replay(folder, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
