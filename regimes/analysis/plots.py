"""Figures of a study: training curves, 1-D regime strip, 2-D phase diagram.

One colour per regime in every figure (`REGIME_COLORS`); ELR / lr / wd axes are
logarithmic as in the papers. Each function takes a loaded `Study` (and the
labels from `classify`, computed when omitted) and returns a matplotlib Figure;
nothing is shown or saved here (see report.py).
"""
from __future__ import annotations

import math
from typing import Mapping

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Patch

from .. import regime as R
from .load import SEED, Study, boundaries, classify, final_values, majority_table

# Paul Tol's "bright" scheme: distinguishable for colour-blind readers.
REGIME_COLORS = {
    R.CONVERGENCE: "#4477AA",
    R.CHAOTIC: "#228833",
    R.DIVERGENCE: "#EE6677",
    R.UNRESOLVED: "#BBBBBB",
}
REGIME_SHORT = {R.CONVERGENCE: "conv.", R.CHAOTIC: "chaotic", R.DIVERGENCE: "div.", R.UNRESOLVED: "unres."}
BOUNDARY_STYLE = {"convergence->chaotic_equilibrium": "-", "chaotic_equilibrium->divergence": "--"}
AXIS_LABELS = {"elr": "effective learning rate (ELR)", "lr": "learning rate", "wd": "weight decay",
               "momentum": "momentum", "batch_size": "batch size"}
CURVE_MEASURES = (("train_loss", "train loss", True), ("test_acc", "test accuracy", False),
                  ("eff_grad_norm", "effective gradient norm", True),
                  ("angular_update", "angular update (rad)", True))


def _theme():
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.0,
                  rc={"svg.fonttype": "none"})   # SVG text stays text: smaller and faster


def axis_label(name: str) -> str:
    return AXIS_LABELS.get(name, name)


def fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.3g}" if v != 0 else "0"
    return str(v)


def is_log_axis(values) -> bool:
    """Log scale when every value is a positive number spanning > 1 decade, or the axis is a rate."""
    v = pd.to_numeric(pd.Series(values), errors="coerce")
    if v.isna().any() or (v <= 0).any() or len(v) == 0:
        return False
    return bool(v.max() / v.min() > 10)


def regime_legend(ax, labels=R.LABELS, **kw):
    handles = [Patch(facecolor=REGIME_COLORS[l], edgecolor="none", label=l.replace("_", " ")) for l in labels]
    return ax.legend(handles=handles, **kw)


def _select(df: pd.DataFrame, select: Mapping | None) -> pd.DataFrame:
    for k, v in (select or {}).items():
        if k in df:
            df = df[np.isclose(pd.to_numeric(df[k], errors="coerce"), float(v))] \
                if isinstance(v, (int, float)) and not isinstance(v, bool) else df[df[k] == v]
    return df


def default_select(study: Study, *used: str) -> dict:
    """First value of every axis not in `used` (a slice through the study)."""
    out = {}
    for a in study.other_axes(*used):
        vals = sorted(study.trials[a].dropna().unique().tolist())
        if vals:
            out[a] = vals[0]
    return out


def _title_suffix(select: Mapping) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in select.items())


# ---------------------------------------------------------------------------
def plot_training_curves(study: Study, labels: pd.DataFrame | None = None, *, select: Mapping | None = None,
                         seed=None, axis: str | None = None, measures=CURVE_MEASURES):
    """Train loss, test accuracy, eff. grad norm, angular update vs epoch; one line per value of
    `axis` (default the main axis), for one seed and one setting of the other axes
    (the paper's Figure 1). Missing measures are left out."""
    _theme()
    labels = classify(study) if labels is None else labels
    axis = axis or study.main_axis
    select = default_select(study, *( [axis] if axis else [])) if select is None else dict(select)
    seed = (study.seeds[0] if study.seeds else None) if seed is None else seed
    trials = _select(study.trials, select)
    if seed is not None and SEED in trials:
        trials = trials[trials[SEED] == seed]
    present = [m for m in measures if study.has_measure(m[0])]
    if not present:
        present = [m for m in measures if m[0] == "train_loss"]
    n = len(present)
    ncols = 2 if n > 1 else 1
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows), squeeze=False)
    axes = axes.ravel()
    for a in axes[n:]:
        a.set_visible(False)

    regime_of = dict(zip(labels["trial_id"], labels["regime"]))
    if axis and axis in trials:
        trials = trials.sort_values(axis, kind="stable")
        vals = pd.to_numeric(trials[axis], errors="coerce")
        log = is_log_axis(vals.dropna().unique()) if vals.notna().all() else False
        lo, hi = (vals.min(), vals.max()) if vals.notna().all() else (0, 1)
        norm = (matplotlib.colors.LogNorm(lo, hi) if log and hi > lo else
                matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1))
    cmap = matplotlib.colormaps["viridis"]
    by_trial = dict(tuple(study.epochs.groupby("trial_id", sort=False))) if len(study.epochs) else {}
    for i, (_, trial) in enumerate(trials.iterrows()):
        ep = by_trial.get(trial["trial_id"])
        if ep is None:
            continue
        if axis and axis in trial and pd.notna(pd.to_numeric(trial[axis], errors="coerce")):
            color = cmap(0.9 * norm(float(trial[axis])))
            name = f"{fmt(trial[axis])}"
        else:
            color = sns.color_palette("tab10")[i % 10]
            name = str(trial["trial_id"])
        name += f" ({REGIME_SHORT.get(regime_of.get(trial['trial_id']), '?')})"
        for a, (m, title, logy) in zip(axes, present):
            if m not in ep:
                continue
            d = ep[["epoch", m]].replace([np.inf, -np.inf], np.nan).dropna()
            if logy:
                d = d[d[m] > 0]
            a.plot(d["epoch"], d[m], color=color, lw=1.4, marker="." if len(d) < 30 else None,
                   label=name)
    for a, (m, title, logy) in zip(axes, present):
        a.set_title(title)
        a.set_xlabel("epoch")
        if logy and a.has_data():
            a.set_yscale("log")
    where = _title_suffix({**select, **({SEED: seed} if seed is not None else {})})
    fig.suptitle(f"{study.name}: training curves" + (f" ({where})" if where else ""))
    fig.tight_layout()
    if axes[0].has_data():
        fig.subplots_adjust(right=0.82)
        fig.legend(*axes[0].get_legend_handles_labels(), title=axis or "trial", fontsize=7, title_fontsize=8,
                   loc="center left", bbox_to_anchor=(0.83, 0.5), frameon=False,
                   ncol=1 + len(trials) // 16)
    return fig


# ---------------------------------------------------------------------------
def _edges(xs: np.ndarray, log: bool) -> np.ndarray:
    """Cell edges around sorted centres: midpoints (geometric on a log axis)."""
    if len(xs) == 1:
        return np.array([xs[0] / 2, xs[0] * 2]) if log else np.array([xs[0] - 0.5, xs[0] + 0.5])
    mids = [R.midpoint(a, b) if log else 0.5 * (a + b) for a, b in zip(xs[:-1], xs[1:])]
    first = xs[0] ** 2 / mids[0] if log else 2 * xs[0] - mids[0]
    last = xs[-1] ** 2 / mids[-1] if log else 2 * xs[-1] - mids[-1]
    return np.array([first, *mids, last])


def plot_regime_strip(study: Study, labels: pd.DataFrame | None = None, bounds: pd.DataFrame | None = None,
                      *, axis: str | None = None, max_rows: int = 6):
    """Final train loss and test accuracy vs `axis` (default the main axis): one dot per
    trial coloured by its regime, bands shaded by the majority regime over seeds,
    boundaries (with their spread over seeds) as vertical lines. One row per
    setting of the other axes (at most `max_rows`)."""
    _theme()
    labels = classify(study) if labels is None else labels
    axis = axis or study.main_axis
    if axis is None:
        raise ValueError("the study has no varying axis to draw a strip along")
    bounds = boundaries(study, labels, axis) if bounds is None else bounds
    df = final_values(study, labels)
    df[axis] = pd.to_numeric(df[axis], errors="coerce")
    others = study.other_axes(axis)
    settings = (list(df[others].drop_duplicates().sort_values(others).itertuples(index=False, name=None))
                if others else [()])
    if len(settings) > max_rows:          # many settings (or a sampled study): one row of every trial
        others, settings, bounds = [], [()], bounds.iloc[0:0]
    xs_all = np.sort(df[axis].dropna().unique())
    log = is_log_axis(xs_all)
    fig, axes = plt.subplots(len(settings), 2, figsize=(10, 2.9 * len(settings) + 0.6), squeeze=False)
    for row, key in enumerate(settings):
        sel = dict(zip(others, key))
        d = _select(df, sel)
        b = _select(bounds, sel) if len(bounds) else bounds
        maj = majority_table(d, [axis]) if len(d) else pd.DataFrame()
        for col, (m, title, logy) in enumerate((("last_train_loss", "final train loss", True),
                                                ("last_test_acc", "final test accuracy", False))):
            a = axes[row, col]
            if len(maj):
                xs = maj[axis].to_numpy(dtype=float)
                edges = _edges(xs, log)
                for (_, r), lo, hi in zip(maj.iterrows(), edges[:-1], edges[1:]):
                    a.axvspan(lo, hi, color=REGIME_COLORS[r["regime"]], alpha=0.18 if r["agreement"] == 1 else 0.1,
                              lw=0, hatch=None if r["agreement"] == 1 else "//")
            dd = d[[axis, m, "regime"]].dropna()
            if logy:
                dd = dd[dd[m] > 0]
            if len(dd):
                med = dd.groupby(axis)[m].median()
                a.plot(med.index, med.values, color="0.3", lw=1, zorder=2)
                for lab, g in dd.groupby("regime"):
                    a.scatter(g[axis], g[m], color=REGIME_COLORS[lab], edgecolor="k", lw=0.4, s=28, zorder=3)
            for _, br in (b.iterrows() if len(b) else []):
                ls = BOUNDARY_STYLE.get(br["boundary"], ":")
                a.axvline(br["value"], color="k", ls=ls, lw=1.2, zorder=4)
                if br["hi"] > br["lo"]:
                    a.axvspan(br["lo"], br["hi"], color="k", alpha=0.08, lw=0, zorder=1)
            if log:
                a.set_xscale("log")
            if logy and a.has_data() and len(dd):
                a.set_yscale("log")
            a.set_xlabel(axis_label(axis))
            a.set_title(title + (f" ({_title_suffix(sel)})" if sel else ""), fontsize=9)
            if col == 1 and "regime_chance" in d and d["regime_chance"].notna().any():
                a.axhline(float(d["regime_chance"].dropna().iloc[0]), color="0.5", lw=0.8, ls=":")
    handles = [Patch(facecolor=REGIME_COLORS[l], alpha=0.5, label=l.replace("_", " ")) for l in R.LABELS]
    handles += [matplotlib.lines.Line2D([], [], color="k", ls=ls, label=name.replace("_", " ").replace("->", " → "))
                for name, ls in BOUNDARY_STYLE.items()]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle(f"{study.name}: regimes along {axis}")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


# ---------------------------------------------------------------------------
def _grid_pos(values: np.ndarray, v: float, log: bool) -> float:
    """Fractional index of v on the sorted grid `values` (log interpolation on a log axis)."""
    if len(values) == 1:
        return 0.0
    i = int(np.clip(np.searchsorted(values, v) - 1, 0, len(values) - 2))
    a, b = values[i], values[i + 1]
    f = (math.log(v / a) / math.log(b / a)) if log and v > 0 else (v - a) / (b - a)
    return i + f


def plot_phase_diagram(study: Study, labels: pd.DataFrame | None = None, *, x: str | None = None,
                       y: str | None = None, select: Mapping | None = None, annotate: str | None = "test_acc",
                       show_boundaries: bool = True, max_grid: int = 30):
    """Regime of every (x, y) cell: colour = majority over seeds, hatching + "k/n" where seeds
    disagree, optional mean final `annotate` measure (e.g. test accuracy) in each cell,
    boundaries along x for every y row overlaid. Axes not drawn are fixed by `select`
    (default: their first value). Off-grid studies (Optuna) are drawn as a scatter."""
    _theme()
    labels = classify(study) if labels is None else labels
    x = x or study.main_axis
    if y is None:
        rest = study.other_axes(x) if x else []
        if not rest:
            raise ValueError("a phase diagram needs two varying axes; this study varies "
                             f"{study.axes or 'none'}")
        y = rest[0]
    for a in (x, y):
        if a not in labels:
            raise ValueError(f"{a!r} is not an axis of this study; axes: {study.axes}")
    select = default_select(study, x, y) if select is None else dict(select)
    df = _select(final_values(study, labels), select)
    xs = np.sort(df[x].dropna().unique())
    ys = np.sort(df[y].dropna().unique())
    xlog, ylog = is_log_axis(xs), is_log_axis(ys)
    title = f"{study.name}: phase diagram" + (f" ({_title_suffix(select)})" if select else "")
    filled = len(df[[x, y]].drop_duplicates())
    if len(xs) > max_grid or len(ys) > max_grid or filled < 0.75 * len(xs) * len(ys):
        # sampled, not a grid (Optuna; a boundary search: dense near each boundary only)
        bnd = None
        if show_boundaries:
            bnd = boundaries(study, _select(labels, select), axis=x)
            bnd = _select(bnd, select) if len(bnd) else bnd
        return _phase_scatter(df, x, y, xlog, ylog, title, bnd)

    maj = majority_table(df, [x, y])
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(xs) + 2.2, 1.2 + 0.55 * len(ys) + 0.8))
    acc = None
    if annotate and f"last_{annotate}" in df:
        acc = df.groupby([x, y])[f"last_{annotate}"].mean()
    xi = {v: i for i, v in enumerate(xs)}
    yi = {v: i for i, v in enumerate(ys)}
    for _, r in maj.iterrows():
        i, j = xi[r[x]], yi[r[y]]
        disagree = r["agreement"] < 1
        ax.add_patch(plt.Rectangle((i - 0.5, j - 0.5), 1, 1, facecolor=REGIME_COLORS[r["regime"]],
                                   alpha=0.85, edgecolor="white", lw=1.5, hatch="///" if disagree else None))
        text = []
        if acc is not None and pd.notna(acc.get((r[x], r[y]), np.nan)):
            text.append(f"{acc[(r[x], r[y])]:.2f}")
        if disagree:
            text.append(f"{round(r['agreement'] * r['n'])}/{r['n']}")
        if text:
            ax.text(i, j, "\n".join(text), ha="center", va="center", fontsize=7,
                    color="black", bbox=dict(facecolor="white", alpha=0.6, lw=0, pad=0.5) if disagree else None)
    if show_boundaries and len(ys):
        bnd = boundaries(study, _select(labels, select), axis=x)
        bnd = _select(bnd, select) if len(bnd) else bnd
        for name, g in (bnd.groupby("boundary") if len(bnd) else []):
            g = g.sort_values(y)
            px = [_grid_pos(xs, v, xlog) for v in g["value"]]
            py = [yi[v] for v in g[y]]
            lo = [_grid_pos(xs, v, xlog) for v in g["lo"]]
            hi = [_grid_pos(xs, v, xlog) for v in g["hi"]]
            ax.errorbar(px, py, xerr=[np.maximum(np.subtract(px, lo), 0), np.maximum(np.subtract(hi, px), 0)], color="k",
                        ls=BOUNDARY_STYLE.get(name, ":"), lw=1.6, marker="o", ms=3, capsize=2,
                        label=name.replace("_", " ").replace("->", " → "))
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set_ylim(-0.5, len(ys) - 0.5)
    ax.set_xticks(range(len(xs)), [fmt(v) for v in xs], rotation=45 if len(xs) > 6 else 0)
    ax.set_yticks(range(len(ys)), [fmt(v) for v in ys])
    ax.set_xlabel(axis_label(x) + (" (log grid)" if xlog else ""))
    ax.set_ylabel(axis_label(y) + (" (log grid)" if ylog else ""))
    ax.grid(False)
    handles = [Patch(facecolor=REGIME_COLORS[l], label=l.replace("_", " ")) for l in R.LABELS]
    handles.append(Patch(facecolor="white", edgecolor="k", hatch="///", label="seeds disagree"))
    handles += ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.set_title(title + (f"\ncell text: mean final {annotate.replace('_', ' ')}" if acc is not None else ""),
                 fontsize=9)
    fig.tight_layout()
    return fig


def _phase_scatter(df, x, y, xlog, ylog, title, bnd: pd.DataFrame | None = None):
    """One dot per trial. Boundaries along x (between neighbouring trials of each y row, e.g.
    the brackets of a boundary search) as black markers with their seed range, joined per kind."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for lab, g in df.groupby("regime"):
        ax.scatter(g[x], g[y], color=REGIME_COLORS[lab], edgecolor="k", lw=0.3, s=30,
                   label=lab.replace("_", " "))
    drawn = False
    for name, g in (bnd.groupby("boundary") if bnd is not None and len(bnd) and y in bnd else []):
        g = g.sort_values(y)
        v = g["value"].to_numpy(dtype=float)
        err = [np.maximum(v - g["lo"].to_numpy(dtype=float), 0), np.maximum(g["hi"].to_numpy(dtype=float) - v, 0)]
        ax.errorbar(v, g[y], xerr=err, color="k", ls=BOUNDARY_STYLE.get(name, ":"), lw=1.4, marker="|",
                    ms=12, mew=2, capsize=2, label=name.replace("_", " ").replace("->", " → "))
        drawn = True
    if xlog:
        ax.set_xscale("log")
    if ylog:
        ax.set_yscale("log")
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ax.legend(fontsize=8)
    ax.set_title(title + "\n(off-grid study: one dot per trial"
                 + ("; black: boundaries between neighbouring trials along x)" if drawn else ")"), fontsize=9)
    fig.tight_layout()
    return fig
