"""Figures of a study: training curves, 1-D regime strip, 2-D phase diagram.

One colour per regime in every figure (`REGIME_COLORS`); ELR / lr / wd axes are
logarithmic as in the papers. Each function takes a loaded `Study` (and the
labels from `classify`, computed when omitted) and returns a matplotlib Figure;
nothing is shown or saved here (see report.py).

Conventions shared by the figures: seeds are replicates (training curves: mean
line and min-max band over seeds; strip and phase diagram: majority regime,
hatched where seeds disagree); a boundary is drawn as its bracket (the span
between the grid points either side of it, over seeds) with the estimate as a
thin marker; accuracy panels carry the chance line 1/C and loss panels ln C
(the random guesser); every shading has a legend entry.
"""
from __future__ import annotations

import math
from typing import Mapping

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .. import regime as R
from .load import (DATASET_CLASSES, ERRORED, REPORT_LABELS, SEED, Study, boundaries, classify,
                   final_values, majority_table)

# Paul Tol's "bright" scheme: distinguishable for colour-blind readers.
REGIME_COLORS = {
    R.CONVERGENCE: "#4477AA",
    R.CHAOTIC: "#228833",
    R.DIVERGENCE: "#EE6677",
    R.UNRESOLVED: "#BBBBBB",
    ERRORED: "#AA3377",
}
REGIME_SHORT = {R.CONVERGENCE: "conv.", R.CHAOTIC: "chaotic", R.DIVERGENCE: "div.", R.UNRESOLVED: "unres.",
                ERRORED: "errored"}
BOUNDARY_STYLE = {"convergence->chaotic_equilibrium": "-", "chaotic_equilibrium->divergence": "--"}
AXIS_LABELS = {"elr": "effective learning rate (ELR)", "lr": "learning rate", "wd": "weight decay",
               "momentum": "momentum", "batch_size": "batch size"}
CURVE_MEASURES = (("train_loss", "train loss", True), ("test_acc", "test accuracy", False),
                  ("eff_grad_norm", "effective gradient norm", True),
                  ("angular_update", "angular update (rad)", True))
# Colours of the values of a swept axis (training curves): a sequential map sampled at evenly
# spaced ranks, so neighbouring values differ by the same step whatever the grid's spacing; the
# pale end of the map is left out (it vanishes on white).
VALUE_CMAP, VALUE_CMAP_RANGE = "plasma", (0.0, 0.85)
MEASURE_NAMES = {m: title for m, title, _ in CURVE_MEASURES}
REF_STYLE = {"chance": dict(color="0.25", ls=":", lw=1.0), "ln_c": dict(color="0.25", ls="-.", lw=0.9)}
BRACKET_FILL = dict(facecolor="0.25", alpha=0.17)        # boundary brackets on the regime strip
RUNNING_NOTE = "hollow: trial still running"
# Phase-diagram cells: the text sits above the middle, the boundary brackets run along the
# bottom of each row (offset from its lower edge, height), in units of one cell.
CELL_TEXT_Y, BRACKET_ROW = 0.1, (0.07, 0.17)


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


def boundary_label(name: str) -> str:
    return name.replace("_", " ").replace("->", " → ")


def _kind_order(name: str) -> tuple:
    """Boundaries in regime order (convergence -> chaotic first), for legends."""
    lower, _, upper = name.partition("->")
    order = {l: k for k, l in enumerate(REPORT_LABELS)}
    return order.get(lower, 99), order.get(upper, 99), name


def shown_labels(labels: pd.DataFrame) -> list[str]:
    """The classifier's labels, plus `errored` when some trial has it (legends)."""
    have = set(labels["regime"]) if "regime" in labels else set()
    return [l for l in REPORT_LABELS if l in R.LABELS or l in have]


def value_colors(values) -> dict:
    """A colour per distinct value of a swept axis, in sorted order: `VALUE_CMAP` at evenly spaced
    ranks (numbers), Tol's qualitative palette (other values)."""
    vals = list(dict.fromkeys(values))
    num = pd.to_numeric(pd.Series(vals, dtype=object), errors="coerce")
    if len(vals) and num.notna().all():
        vals = [v for _, v in sorted(zip(num, vals), key=lambda t: t[0])]
        cmap = matplotlib.colormaps[VALUE_CMAP]
        pos = np.linspace(*VALUE_CMAP_RANGE, len(vals)) if len(vals) > 1 else [0.5 * sum(VALUE_CMAP_RANGE)]
        return {v: cmap(p) for v, p in zip(vals, pos)}
    pal = sns.color_palette("tab10" if len(vals) > 7 else "colorblind", max(len(vals), 1))
    return {v: pal[i % len(pal)] for i, v in enumerate(vals)}


def num_classes(labels: pd.DataFrame, study: Study | None = None) -> int:
    """C of the study (the classifier's evidence, else the dataset's class count)."""
    if "regime_chance" in labels:
        ch = pd.to_numeric(labels["regime_chance"], errors="coerce")
        ch = ch[(ch > 0) & (ch <= 0.5)]
        if len(ch):
            return int(round(1.0 / float(ch.median())))
    if study is not None and "dataset" in study.trials and len(study.trials):
        return int(DATASET_CLASSES.get(str(study.trials["dataset"].iloc[0]), 10))
    return 10


def reference_line(ax, kind: str, C: int, *, tag: bool = True):
    """Chance accuracy 1/C (`chance`) or ln C (`ln_c`, the loss of a random guesser) as a
    horizontal line, tagged at the right edge of the axes. Returns its legend handle."""
    v = 1.0 / C if kind == "chance" else math.log(C)
    ax.axhline(v, zorder=1.5, **REF_STYLE[kind])
    if tag:
        ax.text(1.01, v, "1/C" if kind == "chance" else "ln C", transform=ax.get_yaxis_transform(),
                ha="left", va="center", fontsize=7, color=REF_STYLE[kind]["color"], clip_on=False)
    return reference_handle(kind, C)


def reference_handle(kind: str, C: int) -> Line2D:
    text = (f"chance accuracy 1/C = {1 / C:.3g}" if kind == "chance"
            else f"ln C = {math.log(C):.3g} (random guesser)")
    return Line2D([], [], label=text, **REF_STYLE[kind])


def log_ticks(ax, which: str = "x", max_labels: int = 7):
    """Tick labels on a log axis that cannot overlap: one per decade, every k-th decade when the
    range holds more than `max_labels`; over one to 2.5 decades 1-3 steps, within one decade
    1-2-5 steps, as plain numbers. Minor ticks are never labelled."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    if axis.get_scale() != "log":
        return
    lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    if not (lo > 0 and hi >= lo):
        return
    if hi < lo * 10 ** 0.3:          # (nearly) constant data: half a decade either side
        mid = math.sqrt(lo * hi)
        lo, hi = mid / 10 ** 0.5, mid * 10 ** 0.5
        (ax.set_xlim if which == "x" else ax.set_ylim)(lo, hi)
    decades = math.log10(hi / lo)
    if decades >= 2.5:
        axis.set_major_locator(LogLocator(base=10, numticks=max_labels))
    else:
        subs = (1.0, 3.0) if decades >= 1 else (1.0, 2.0, 5.0)
        axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=max_labels))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10) * 1.0, numticks=100))
    axis.set_minor_formatter(NullFormatter())


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
def _regime_text(labs: list[str]) -> str:
    """The regimes of one group of trials, most common first: `chaotic`, `chaotic 1/2, unres. 1/2`."""
    order = {l: k for k, l in enumerate(REPORT_LABELS)}
    counts = sorted(pd.Series(labs).value_counts().items(), key=lambda t: (-t[1], order.get(t[0], 99)))
    if len(counts) == 1:
        return REGIME_SHORT.get(counts[0][0], counts[0][0])
    n = len(labs)
    return ", ".join(f"{REGIME_SHORT.get(l, l)} {k}/{n}" for l, k in counts)


def _seed_summary(ep: pd.DataFrame, m: str, logy: bool) -> pd.DataFrame:
    """Per epoch over the trials of `ep`: mean (geometric when `logy`), min, max, count."""
    d = ep[["epoch", m]].replace([np.inf, -np.inf], np.nan).dropna()
    if logy:
        d = d[d[m] > 0]
    if d.empty:
        return pd.DataFrame(columns=["epoch", "mean", "lo", "hi", "n"])
    v = np.log(d[m]) if logy else d[m]
    g = d.assign(_v=v).groupby("epoch")
    out = pd.DataFrame({"mean": g["_v"].mean(), "lo": g[m].min(), "hi": g[m].max(), "n": g[m].count()})
    if logy:
        out["mean"] = np.exp(out["mean"])
    return out.reset_index()


def plot_training_curves(study: Study, labels: pd.DataFrame | None = None, *, select: Mapping | None = None,
                         seed=None, axis: str | None = None, measures=CURVE_MEASURES):
    """Train loss, test accuracy, eff. grad norm, angular update vs epoch (the paper's Figure 1)
    for one setting of the other axes: per value of `axis` (default the main axis) the mean over
    seeds (geometric mean on log-scaled panels) as a line and the min-max over seeds as a band.
    `seed` draws that seed only. With `select={}` on a study with other axes, every setting is
    drawn (one band each, coloured by `axis`). Reference lines: chance 1/C on accuracy, ln C on
    loss. Missing measures are left out."""
    _theme()
    labels = classify(study) if labels is None else labels
    axis = axis or study.main_axis
    select = default_select(study, *([axis] if axis else [])) if select is None else dict(select)
    trials = _select(study.trials, select)
    if seed is not None and SEED in trials:
        trials = trials[trials[SEED] == seed]
    present = [m for m in measures if study.has_measure(m[0])]
    if not present:
        present = [m for m in measures if m[0] == "train_loss"]
    n = len(present)
    ncols = 2 if n > 1 else 1
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 2.2, 3.2 * nrows), squeeze=False)
    axes = axes.ravel()
    for a in axes[n:]:
        a.set_visible(False)

    C = num_classes(labels, study)
    regime_of = dict(zip(labels["trial_id"], labels["regime"]))
    # one group per setting of every axis not fixed by `select` (seeds pooled within a group)
    group_axes = [a for a in ([axis] if axis else []) + study.other_axes(axis)
                  if a in trials and a not in select]
    numeric = bool(axis and axis in trials and pd.to_numeric(trials[axis], errors="coerce").notna().all())
    values = (sorted(trials[axis].dropna().unique(), key=lambda v: (float(v) if numeric else str(v)))
              if axis and axis in trials else [])
    colors = value_colors(values)
    shown = {v: fmt(v) for v in values}
    if len(set(shown.values())) < len(shown):          # 3 digits do not tell them apart
        shown = {v: f"{v:.6g}" if numeric else str(v) for v in values}
    groups = list(trials.groupby(group_axes, sort=True, dropna=False)) if group_axes else [((), trials)]
    by_trial = dict(tuple(study.epochs.groupby("trial_id", sort=False))) if len(study.epochs) else {}
    n_seeds = trials[SEED].nunique() if SEED in trials else 1
    value_handles: dict = {}
    for i, (key, g) in enumerate(groups):
        ids = [t for t in g["trial_id"] if t in by_trial]
        if not ids:
            continue
        ep = pd.concat([by_trial[t] for t in ids], ignore_index=True)
        value = g[axis].iloc[0] if axis and axis in g else None
        color = colors.get(value, sns.color_palette("colorblind")[i % 10])
        # the regimes of every run drawn at this value (all settings when several are drawn)
        same = trials[trials[axis] == value] if value is not None else g
        labs = [regime_of.get(t, "?") for t in same["trial_id"]]
        name = (shown.get(value, fmt(value)) if value is not None else str(g["trial_id"].iloc[0])) \
            + f" ({_regime_text(labs)})"
        for a, (m, title, logy) in zip(axes, present):
            if m not in ep:
                continue
            s = _seed_summary(ep, m, logy)
            if s.empty:
                continue
            a.plot(s["epoch"], s["mean"], color=color, lw=1.3, marker="." if len(s) < 30 else None, ms=3,
                   zorder=3)
            if (s["n"] > 1).any():
                a.fill_between(s["epoch"], s["lo"], s["hi"], where=s["n"] > 1, color=color, alpha=0.2, lw=0,
                               zorder=2)
        key = value if value is not None else name
        if key not in value_handles:
            value_handles[key] = Line2D([], [], color=color, lw=1.6, label=name)
    ref = []
    for a, (m, title, logy) in zip(axes, present):
        a.set_title(title)
        a.set_xlabel("epoch")
        if a.has_data() and m.endswith("_acc"):
            ref.append(reference_line(a, "chance", C))
        elif a.has_data() and m.endswith("_loss"):
            ref.append(reference_line(a, "ln_c", C))
        if logy and a.has_data():
            a.set_yscale("log")
            log_ticks(a, "y")
    seeds_txt = (f"seed {seed}" if seed is not None else
                 f"mean over {n_seeds} seeds" if n_seeds > 1 else "one seed")
    where = _title_suffix(select) if select or not group_axes[1:] else "all settings"
    fig.suptitle(f"{study.name}: training curves ({(where + '; ') if where else ''}{seeds_txt})")
    fig.tight_layout(rect=(0, 0, 1 - 2.1 / fig.get_figwidth(), 1))
    if value_handles:
        regime_note = "regime over seeds" if n_seeds > 1 and seed is None else "regime"
        leg = fig.legend(handles=list(value_handles.values()), title=f"{axis or 'trial'} ({regime_note})",
                         fontsize=7, title_fontsize=8, loc="upper left", frameon=False,
                         bbox_to_anchor=(1 - 2.0 / fig.get_figwidth(), 0.93),
                         ncol=1 + len(value_handles) // 18)
        fig.add_artist(leg)
        style = [Line2D([], [], color="0.3", lw=1.3,
                        label="line: mean over seeds\n(geometric on log axes)" if n_seeds > 1 and seed is None
                        else "line: one run")]
        if n_seeds > 1 and seed is None:
            style.append(Patch(facecolor="0.3", alpha=0.2, lw=0, label=f"band: min-max over {n_seeds} seeds"))
        seen = set()
        style += [h for h in ref if not (h.get_label() in seen or seen.add(h.get_label()))]
        fig.legend(handles=style, fontsize=7, loc="lower left", frameon=False,
                   bbox_to_anchor=(1 - 2.0 / fig.get_figwidth(), 0.06))
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
    trial coloured by its regime (hollow while the trial still runs), the median over seeds
    as a grey line, bands shaded by the majority regime over seeds (hatched where seeds
    disagree), each boundary as its bracket (grey span between the grid points either side,
    over seeds) with the estimate as a thin vertical line, ln C and chance 1/C as references.
    One row per setting of the other axes (at most `max_rows`)."""
    _theme()
    labels = classify(study) if labels is None else labels
    axis = axis or study.main_axis
    if axis is None:
        raise ValueError("the study has no varying axis to draw a strip along")
    bounds = boundaries(study, labels, axis) if bounds is None else bounds
    df = final_values(study, labels)
    df[axis] = pd.to_numeric(df[axis], errors="coerce")
    running = df["status"].eq("running") if "status" in df else pd.Series(False, index=df.index)
    others = study.other_axes(axis)
    settings = (list(df[others].drop_duplicates().sort_values(others).itertuples(index=False, name=None))
                if others else [()])
    if len(settings) > max_rows:          # many settings (or a sampled study): one row of every trial
        others, settings, bounds = [], [()], bounds.iloc[0:0]
    xs_all = np.sort(df[axis].dropna().unique())
    log = is_log_axis(xs_all)
    C = num_classes(labels, study)
    fig, axes = plt.subplots(len(settings), 2, figsize=(10, 2.9 * len(settings) + 0.9), squeeze=False)
    disagree = drawn_bracket = False
    kinds: list[str] = []
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
                    agree = r["agreement"] == 1
                    disagree |= not agree
                    a.axvspan(lo, hi, facecolor=REGIME_COLORS[r["regime"]], alpha=0.18 if agree else 0.1,
                              lw=0, hatch=None if agree else "//", edgecolor="0.55", zorder=0.5)
            dd = d[[axis, m, "regime"]].assign(running=running[d.index]).dropna(subset=[axis, m])
            if logy:
                dd = dd[dd[m] > 0]
            if len(dd):
                med = dd.groupby(axis)[m].median()
                a.plot(med.index, med.values, color="0.3", lw=1, zorder=2)
                for (lab, run), g in dd.groupby(["regime", "running"]):
                    c = REGIME_COLORS.get(lab, "k")
                    a.scatter(g[axis], g[m], facecolor="none" if run else c, edgecolor=c if run else "k",
                              lw=1.3 if run else 0.4, s=44 if run else 28, zorder=3.5 if run else 3)
            for _, br in (b.iterrows() if len(b) else []):
                name = br["boundary"]
                if name not in kinds:
                    kinds.append(name)
                if br["bracket_hi"] > br["bracket_lo"]:
                    a.axvspan(br["bracket_lo"], br["bracket_hi"], lw=0, zorder=1, gid="bracket", **BRACKET_FILL)
                    drawn_bracket = True
                a.axvline(br["value"], color="k", ls=BOUNDARY_STYLE.get(name, ":"), lw=0.9, zorder=4,
                          gid="estimate")
            if log:
                a.set_xscale("log")
            if logy and a.has_data() and len(dd):
                a.set_yscale("log")
            if len(dd):
                reference_line(a, "ln_c" if col == 0 else "chance", C)
            log_ticks(a, "x")
            log_ticks(a, "y")
            a.set_xlabel(axis_label(axis))
            a.set_title(title + (f" ({_title_suffix(sel)})" if sel else ""), fontsize=9)
    handles = [Patch(facecolor=REGIME_COLORS[l], alpha=0.5, label=l.replace("_", " "))
               for l in shown_labels(labels)]
    if disagree:
        handles.append(Patch(facecolor="white", edgecolor="0.55", hatch="//", label="seeds disagree"))
    if drawn_bracket:
        handles.append(Patch(lw=0, label="boundary bracket (grid points\neither side, over seeds)",
                             **BRACKET_FILL))
    handles += [Line2D([], [], color="k", lw=0.9, ls=BOUNDARY_STYLE.get(k, ":"),
                       label=boundary_label(k) + " (estimate)") for k in sorted(kinds, key=_kind_order)]
    handles.append(Line2D([], [], color="0.3", lw=1, marker="o", mfc="0.6", mec="k", mew=0.4, ms=5,
                          label="dot: one trial; line: median over seeds"))
    if running.any():
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec="0.3", mew=1.3, ms=6,
                              label=RUNNING_NOTE))
    handles += [reference_handle("ln_c", C), reference_handle("chance", C)]
    leg = fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7.5, frameon=False,
                     title="shading: majority regime over seeds (dots: each trial's regime)", title_fontsize=8)
    fig.suptitle(f"{study.name}: regimes along {axis}")
    _tight_above(fig, leg)
    return fig


def _tight_above(fig, legend, pad: float = 0.08):
    """tight_layout leaving room for a legend at the bottom of the figure."""
    h = legend.get_window_extent(fig.canvas.get_renderer()).height / fig.dpi
    fig.tight_layout(rect=(0, min((h + pad) / fig.get_figheight(), 0.5), 1, 1))


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
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(xs) + 2.6, 1.2 + 0.6 * len(ys) + 0.8))
    acc = None
    if annotate and f"last_{annotate}" in df:
        acc = df.groupby([x, y])[f"last_{annotate}"].mean()
    xi = {v: i for i, v in enumerate(xs)}
    yi = {v: i for i, v in enumerate(ys)}
    any_disagree = False
    for _, r in maj.iterrows():
        i, j = xi[r[x]], yi[r[y]]
        disagree = r["agreement"] < 1
        any_disagree |= disagree
        ax.add_patch(plt.Rectangle((i - 0.5, j - 0.5), 1, 1, facecolor=REGIME_COLORS.get(r["regime"], "k"),
                                   alpha=0.85, edgecolor="white", lw=1.5, hatch="///" if disagree else None))
        text = []
        if acc is not None and pd.notna(acc.get((r[x], r[y]), np.nan)):
            text.append(f"{acc[(r[x], r[y])]:.2f}")
        if disagree:
            text.append(f"{round(r['agreement'] * r['n'])}/{r['n']}")
        if text:     # in the upper part of the cell: the boundary brackets run along its bottom
            ax.text(i, j + CELL_TEXT_Y, "\n".join(text), ha="center", va="center", fontsize=6.5,
                    linespacing=1.1, color="black",
                    bbox=dict(facecolor="white", alpha=0.6, lw=0, pad=0.5) if disagree else None)
    kinds: list[str] = []
    if show_boundaries and len(ys):
        bnd = boundaries(study, _select(labels, select), axis=x)
        bnd = _select(bnd, select) if len(bnd) else bnd
        for _, br in (bnd.iterrows() if len(bnd) else []):
            if br[y] not in yi:
                continue
            name, j = br["boundary"], yi[br[y]]
            if name not in kinds:
                kinds.append(name)
            lo, hi = (_grid_pos(xs, float(br[k]), xlog) for k in ("bracket_lo", "bracket_hi"))
            y0 = j - 0.5 + BRACKET_ROW[0]
            ax.add_patch(plt.Rectangle((lo, y0), hi - lo, BRACKET_ROW[1], facecolor="white", alpha=0.75,
                                       edgecolor="k", lw=0.9, ls=BOUNDARY_STYLE.get(name, ":"), zorder=3,
                                       gid="bracket"))
            px = _grid_pos(xs, float(br["value"]), xlog)
            ax.plot([px, px], [y0 - 0.03, y0 + BRACKET_ROW[1] + 0.03], color="k", lw=1.8,
                    solid_capstyle="butt", zorder=4, gid="estimate")
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set_ylim(-0.5, len(ys) - 0.5)
    ax.set_xticks(range(len(xs)), [fmt(v) for v in xs], rotation=45 if len(xs) > 6 else 0,
                  ha="right" if len(xs) > 6 else "center", rotation_mode="anchor")
    ax.set_yticks(range(len(ys)), [fmt(v) for v in ys])
    ax.set_xlabel(axis_label(x) + (" (log grid)" if xlog else ""))
    ax.set_ylabel(axis_label(y) + (" (log grid)" if ylog else ""))
    ax.grid(False)
    handles = [Patch(facecolor=REGIME_COLORS[l], alpha=0.85, label=l.replace("_", " ")) for l in shown_labels(maj)]
    if any_disagree:
        handles.append(Patch(facecolor="white", edgecolor="k", hatch="///", label="seeds disagree (k/n agree)"))
    handles += [Patch(facecolor="white", edgecolor="k", lw=0.9, ls=BOUNDARY_STYLE.get(k, ":"),
                      label=boundary_label(k) + "\nbracket (grid points either side)")
                for k in sorted(kinds, key=_kind_order)]
    if kinds:
        handles.append(Line2D([], [], color="k", lw=1.8, ls="", marker="|", ms=8, mew=1.8,
                              label="boundary estimate\n(geometric mean over seeds)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7.5, frameon=False,
              title="cell: majority regime over seeds", title_fontsize=8, labelspacing=0.7)
    what = MEASURE_NAMES.get(annotate, str(annotate).replace("_", " "))
    ax.set_title(title + (f"\ncell text: mean final {what} over seeds" if acc is not None else ""), fontsize=9)
    fig.tight_layout()
    return fig


def _phase_scatter(df, x, y, xlog, ylog, title, bnd: pd.DataFrame | None = None):
    """One dot per trial (hollow while running). Boundaries along x (between neighbouring trials of
    each y row, e.g. the brackets of a boundary search): per row the bracket as a grey bar and the
    estimate as a tick, the estimates of one kind joined by a thin line."""
    fig, ax = plt.subplots(figsize=(7.8, 5))
    running = df["status"].eq("running") if "status" in df else pd.Series(False, index=df.index)
    order = {l: k for k, l in enumerate(REPORT_LABELS)}
    for lab, g in sorted(df.groupby("regime"), key=lambda t: order.get(t[0], 99)):
        c = REGIME_COLORS.get(lab, "k")
        run = running[g.index]
        ax.scatter(g[x][~run], g[y][~run], color=c, edgecolor="k", lw=0.3, s=30, zorder=3,
                   label=lab.replace("_", " "))
        if run.any():
            ax.scatter(g[x][run], g[y][run], facecolor="none", edgecolor=c, lw=1.3, s=44, zorder=3.5)
    handles, _ = ax.get_legend_handles_labels()
    drawn = False
    groups = bnd.groupby("boundary") if bnd is not None and len(bnd) and y in bnd else []
    for name, g in sorted(groups, key=lambda t: _kind_order(t[0])):
        g = g.sort_values(y)
        v = g["value"].to_numpy(dtype=float)
        ls = BOUNDARY_STYLE.get(name, ":")
        ax.hlines(g[y], g["bracket_lo"], g["bracket_hi"], lw=10, zorder=1, color=BRACKET_FILL["facecolor"],
                  alpha=0.35)
        ax.plot(v, g[y], color="k", ls=ls, lw=0.9, zorder=2)
        ax.plot(v, g[y], color="k", ls="", marker="|", ms=12, mew=1.6, zorder=4)
        handles.append(Line2D([], [], color="k", ls=ls, lw=0.9, marker="|", ms=9, mew=1.6,
                              label=boundary_label(name) + "\n(estimate; line joins the rows)"))
        drawn = True
    if drawn:
        handles.append(Line2D([], [], color=BRACKET_FILL["facecolor"], alpha=0.35, lw=8,
                              solid_capstyle="butt", label="boundary bracket\n(trials either side)"))
    if running.any():
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec="0.3", mew=1.3, ms=6,
                              label=RUNNING_NOTE))
    if xlog:
        ax.set_xscale("log")
    if ylog:
        ax.set_yscale("log")
    log_ticks(ax, "x")
    log_ticks(ax, "y")
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7.5, frameon=False,
              labelspacing=0.7)
    ax.set_title(title + "\n(off-grid study: one dot per trial"
                 + ("; black: boundaries between neighbouring trials along x)" if drawn else ")"), fontsize=9)
    fig.tight_layout()
    return fig
