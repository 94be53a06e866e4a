"""Schedule search results: the best ELR schedules, the best constant ELR, the gain.

A schedule study (e.g. studies/elr_schedule_optuna_digits.yaml) samples a
schedule shape and its parameters per trial; a constant-ELR baseline is either
in the same study (`schedule: constant` among the choices) or a companion
study (a grid, `regimes report --baseline <dir>`). The trials of all of them
are pooled and grouped by *what the schedule does*:

- the parameters the trial's shape uses (constant: elr; two_phase: elr,
  elr_final, switch_frac; ...; see SHAPE_KEYS) plus warmup_epochs. Parameters
  the shape ignores (an Optuna space is flat, so a constant trial still carries
  a sampled elr_final) are left out, so such trials group together;
- every other config field that varies across the pooled trials (say width),
  except the seed, which is the replicate;
- floats compared at 4 significant digits, so a replicate study can repeat a
  sampled value written out to 6 digits.

Only trials that ran their whole budget are ranked: `completed`, and
`diverged` (a result: its final test accuracy counts as chance, 1/C, when the
record holds NaN). ASHA-cut (`stopped`), errored and unfinished trials are
counted and left out: their last accuracy is from fewer epochs.

Per group: final test accuracy mean and standard deviation over seeds (ddof 1;
none with one seed). The gain of the best schedule over the best constant ELR
is paired over seeds when both have >= 2 seeds in common (mean and std of the
per-seed differences); otherwise it is the difference of the means, with spread
sqrt(std_a^2 + std_b^2) (the spread of one run of each) when both are replicated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..core.config import TrainConfig
from .load import DATASET_CLASSES, NOT_AXES, SEED, Study
from .markdown import md_table

# Sphere-mode names; in free mode the schedule drives lr -> lr_final (regimes/core/schedules.py).
SHAPE_KEYS = {
    "constant": ("elr",),
    "step": ("elr", "milestones", "step_factor"),
    "linear": ("elr", "elr_final"),
    "cosine": ("elr", "elr_final"),
    "exponential": ("elr", "elr_final"),
    "two_phase": ("elr", "elr_final", "switch_frac"),
    "piecewise": ("knots",),
}
ANY_SHAPE = ("warmup_epochs",)
FREE_NAMES = {"elr": "lr", "elr_final": "lr_final"}
SCHEDULE_FIELDS = ("schedule", "elr", "elr_final", "lr", "lr_final", "milestones", "step_factor",
                   "switch_frac", "knots", "warmup_epochs")
SIG_DIGITS = 4
OBJECTIVE = "test_acc"


@dataclass
class Comparison:
    """Everything the report says about a schedule search."""

    runs: pd.DataFrame                 # one row per ranked trial
    groups: pd.DataFrame               # one row per schedule (group), best first
    best: pd.Series | None             # best non-constant schedule
    baseline: pd.Series | None         # best constant ELR
    gain: float = math.nan
    gain_std: float = math.nan
    paired_seeds: list = field(default_factory=list)   # seeds the gain is paired over ([] = unpaired)
    left_out: dict = field(default_factory=dict)       # status -> trials not ranked


def is_schedule_study(study: Study) -> bool:
    """True when some trial uses a schedule other than constant."""
    t = study.trials
    return "schedule" in t and bool((t["schedule"].dropna() != "constant").any())


def _round(v):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return v
    v = float(v)
    if not math.isfinite(v) or v == 0:
        return v
    return float(f"{v:.{SIG_DIGITS}g}")


def shape_keys(schedule: str, mode: str) -> tuple:
    keys = SHAPE_KEYS.get(schedule, ("elr", "elr_final")) + ANY_SHAPE
    return tuple(FREE_NAMES.get(k, k) for k in keys) if mode == "free" else keys


def _chance(trial: pd.Series) -> float:
    c = trial.get("final_num_classes")
    c = c if c is not None and pd.notna(c) and c >= 2 else DATASET_CLASSES.get(str(trial.get("dataset")), 10)
    return 1.0 / float(c)


def schedule_runs(studies: list[Study]) -> tuple[pd.DataFrame, dict]:
    """The finished trials of all `studies` with their group key; and {status: n} left out."""
    frames = []
    for i, s in enumerate(studies):
        t = s.trials.copy()
        t["_study"] = s.name
        t["_study_index"] = i
        frames.append(t)
    trials = pd.concat(frames, ignore_index=True)
    other = [f for f in TrainConfig.field_names()
             if f in trials and f not in NOT_AXES and f not in SCHEDULE_FIELDS
             and trials[f].map(_round).nunique(dropna=True) > 1]
    rows, left_out = [], {}
    for _, tr in trials.iterrows():
        status = str(tr.get("status", "completed"))
        flag = tr.get("diverged")
        diverged = status == "diverged" or (flag is not None and pd.notna(flag) and bool(flag))
        budget = tr.get("epochs", math.nan)
        done = tr.get("epochs_done", math.nan)
        full = pd.notna(done) and pd.notna(budget) and done >= budget
        if not (diverged or (full and status not in ("errored", "stopped"))):
            left_out[status] = left_out.get(status, 0) + 1
            continue
        acc = float(tr.get(f"final_{OBJECTIVE}", math.nan))
        if not math.isfinite(acc):
            if not diverged:
                left_out["no test_acc"] = left_out.get("no test_acc", 0) + 1
                continue
            acc = _chance(tr)
        sched = str(tr.get("schedule", "constant"))
        mode = str(tr.get("mode", "sphere"))
        params = {k: _round(tr[k]) for k in shape_keys(sched, mode) if k in tr}
        if params.get("warmup_epochs") == 0:
            params.pop("warmup_epochs")
        params.update({k: _round(tr[k]) for k in other})
        rows.append({"study": tr["_study"], "study_index": tr["_study_index"], "trial_id": tr["trial_id"],
                     SEED: tr.get(SEED, 0), "schedule": sched, "mode": mode, "params": params,
                     "key": (sched, *sorted((k, str(v)) for k, v in params.items())),
                     "label": schedule_label(sched, params, mode), OBJECTIVE: acc,
                     "status": status, "constant": sched == "constant" and "warmup_epochs" not in params})
    return pd.DataFrame(rows), left_out


def schedule_label(schedule: str, params: dict, mode: str = "sphere") -> str:
    """A short human name: 'two_phase elr 0.05 -> 0.002 at 60%'."""
    r0, rf = ("lr", "lr_final") if mode == "free" else ("elr", "elr_final")
    f = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    p = dict(params)
    if schedule == "piecewise":
        text = f"piecewise knots {p.pop('knots', '?')}"
    elif schedule == "constant":
        text = f"constant {r0} {f(p.pop(r0, '?'))}"
    elif schedule == "step":
        text = (f"step {r0} {f(p.pop(r0, '?'))} x{f(p.pop('step_factor', '?'))} "
                f"at {p.pop('milestones', '?')}")
    else:
        text = f"{schedule} {r0} {f(p.pop(r0, '?'))} -> {f(p.pop(rf, '?'))}"
        if schedule == "two_phase":
            sw = p.pop("switch_frac", None)
            text += f" at {sw:.0%}" if isinstance(sw, float) else ""
    if "warmup_epochs" in p:
        text += f", warm-up {f(p.pop('warmup_epochs'))} ep"
    if p:
        text += ", " + ", ".join(f"{k} {f(v)}" for k, v in p.items())
    return text


def rank_schedules(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per schedule group, best mean final test accuracy first."""
    rows = []
    for key, g in runs.groupby("key", sort=False):
        acc = g[OBJECTIVE].to_numpy(dtype=float)
        first = g.iloc[0]
        rows.append({"label": first["label"], "schedule": first["schedule"], "constant": first["constant"],
                     **first["params"], "n": len(g), "mean": float(acc.mean()),
                     "std": float(acc.std(ddof=1)) if len(acc) > 1 else math.nan,
                     "min": float(acc.min()), "max": float(acc.max()),
                     "seeds": sorted(g[SEED].tolist()), "studies": sorted(set(g["study"])),
                     "trial_ids": g["trial_id"].tolist(), "key": key})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values(["mean", "n"], ascending=[False, False], kind="stable").reset_index(drop=True)


def compare(studies: list[Study]) -> Comparison:
    runs, left_out = schedule_runs(studies)
    if runs.empty:
        return Comparison(runs, pd.DataFrame(), None, None, left_out=left_out)
    groups = rank_schedules(runs)
    sched, const = groups[~groups["constant"]], groups[groups["constant"]]
    best = sched.iloc[0] if len(sched) else None
    base = const.iloc[0] if len(const) else None
    c = Comparison(runs, groups, best, base, left_out=left_out)
    if best is None or base is None:
        return c
    acc = lambda row: runs[runs["key"] == row["key"]].groupby(SEED)[OBJECTIVE].mean()
    a, b = acc(best), acc(base)
    shared = sorted(set(a.index) & set(b.index))
    if len(shared) >= 2:
        d = a[shared].to_numpy() - b[shared].to_numpy()
        c.gain, c.gain_std, c.paired_seeds = float(d.mean()), float(d.std(ddof=1)), shared
    else:
        c.gain = float(best["mean"] - base["mean"])
        if best["n"] >= 2 and base["n"] >= 2:
            c.gain_std = float(math.hypot(best["std"], base["std"]))
    return c


# ---------------------------------------------------------------------------
def _pm(mean, std, n) -> str:
    return f"{mean:.4f} ± {std:.4f} (n={n})" if n > 1 and math.isfinite(std) else f"{mean:.4f} (n=1)"


def gain_text(c: Comparison) -> str:
    if not math.isfinite(c.gain):
        return "n/a"
    text = f"{c.gain:+.4f}"
    if math.isfinite(c.gain_std):
        text += f" ± {c.gain_std:.4f}"
    how = (f"paired over seeds {c.paired_seeds}" if c.paired_seeds else
           "difference of means; spread of one run of each" if math.isfinite(c.gain_std) else
           "difference of means; no spread: a side has one seed")
    return f"{text} ({how})"


def table(c: Comparison, top: int = 10) -> pd.DataFrame:
    """The top schedules and the best constant (if not among them), for report.md / schedules.csv."""
    g = c.groups
    if g.empty:
        return g
    show = g.head(top)
    if c.baseline is not None and c.baseline["key"] not in set(show["key"]):
        show = pd.concat([show, g[g["key"] == c.baseline["key"]]])
    params = [k for k in g.columns if k not in ("label", "schedule", "constant", "n", "mean", "std", "min",
                                                 "max", "seeds", "studies", "trial_ids", "key")]
    params = [k for k in params if show[k].notna().any()]
    out = show[["schedule"] + params + ["n", "mean", "std", "min", "max"]].copy()
    out.insert(0, "rank", [int(i) + 1 for i in show.index])
    out["seeds"] = show["seeds"].map(lambda s: ",".join(map(str, s)))
    out["study"] = show["studies"].map(", ".join)
    return out.rename(columns={"mean": "test_acc_mean", "std": "test_acc_std",
                               "min": "test_acc_min", "max": "test_acc_max"})


def summary_lines(c: Comparison) -> list[str]:
    if c.groups.empty:
        return ["schedules: no trial ran its full budget"]
    lines = []
    if c.best is not None:
        lines.append(f"best schedule: {c.best['label']}: test_acc {_pm(c.best['mean'], c.best['std'], c.best['n'])}")
    else:
        lines.append("best schedule: none (only constant-ELR trials finished)")
    if c.baseline is not None:
        lines.append(f"best constant: {c.baseline['label']}: test_acc "
                     f"{_pm(c.baseline['mean'], c.baseline['std'], c.baseline['n'])}")
    else:
        lines.append("best constant: none (add `schedule: constant` to the search or give --baseline)")
    lines.append(f"gain: {gain_text(c)}")
    return lines


# ---------------------------------------------------------------------------
PALETTE = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377")
CONSTANT_COLOR = "#333333"


def _shown(c: Comparison, top: int) -> pd.DataFrame:
    g = c.groups[~c.groups["constant"]].head(top)
    if c.baseline is not None:
        g = pd.concat([g, c.groups[c.groups["key"] == c.baseline["key"]]])
    return g


def plot_ranking(c: Comparison, top: int = 8):
    """Final test accuracy of the best schedules and the best constant: mean ± std, one dot per seed."""
    import matplotlib.pyplot as plt

    from .plots import _theme

    _theme()
    g = _shown(c, top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(g) + 1.4))
    for y, (_, row) in enumerate(g.iterrows()):
        color = CONSTANT_COLOR if row["constant"] else PALETTE[0]
        accs = c.runs[c.runs["key"] == row["key"]][OBJECTIVE]
        ax.scatter(accs, np.full(len(accs), y), s=14, color=color, alpha=0.5, zorder=2)
        err = row["std"] if math.isfinite(row["std"]) else 0.0
        ax.errorbar(row["mean"], y, xerr=err, fmt="D", color=color, ms=6, capsize=3, zorder=3)
    if c.baseline is not None:
        ax.axvline(c.baseline["mean"], color=CONSTANT_COLOR, ls="--", lw=1, label="best constant ELR")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(g)), [f"{r['label']}  [n={r['n']}]" for _, r in g.iterrows()], fontsize=7)
    ax.set_xlabel("final test accuracy (diamond: mean ± std over seeds; dots: seeds)")
    ax.set_title(f"best schedules vs best constant ELR; gain {gain_text(c).split(' (')[0]}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_curves(c: Comparison, studies: list[Study], top: int = 3):
    """ELR actually used (the logged `elr`) and test accuracy vs epoch: the best schedules and the
    best constant, every seed (one colour per schedule)."""
    import matplotlib.pyplot as plt

    from .plots import _theme

    _theme()
    fig, (a_elr, a_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    epochs = {i: dict(tuple(s.epochs.groupby("trial_id", sort=False))) if len(s.epochs) else {}
              for i, s in enumerate(studies)}
    for k, (_, row) in enumerate(_shown(c, top).iterrows()):
        color = CONSTANT_COLOR if row["constant"] else PALETTE[k % len(PALETTE)]
        runs = c.runs[c.runs["key"] == row["key"]]
        for j, (_, run) in enumerate(runs.iterrows()):
            ep = epochs[run["study_index"]].get(run["trial_id"])
            if ep is None:
                continue
            label = f"{row['label']} (n={row['n']})" if j == 0 else None
            ls = "--" if row["constant"] else "-"
            if "elr" in ep:
                d = ep[["epoch", "elr"]].replace([np.inf, -np.inf], np.nan).dropna()
                a_elr.plot(d["epoch"], d["elr"], color=color, ls=ls, lw=1.4, alpha=0.8, label=label)
            if OBJECTIVE in ep:
                a_acc.plot(ep["epoch"], ep[OBJECTIVE], color=color, ls=ls, lw=1.2, alpha=0.7, label=label)
    a_elr.set(xlabel="epoch", ylabel="ELR (logged)", title="effective learning rate actually used")
    if a_elr.has_data():
        a_elr.set_yscale("log")
    a_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    fig.tight_layout()
    if a_acc.has_data():
        fig.subplots_adjust(bottom=0.32)
        fig.legend(*a_acc.get_legend_handles_labels(), loc="lower center", fontsize=7, ncol=2, frameon=False)
    return fig


def markdown(c: Comparison, baselines, figures, out) -> list[str]:
    """The report.md section of a schedule search."""
    import os


    md = ["## Schedule search", "",
          "Objective: final test accuracy. Trials are grouped by the parameters their schedule shape uses "
          "(a flat Optuna space also samples the ones it ignores) and by any other varying setting; "
          "mean ± std over seeds. Only trials that ran their whole budget are ranked (a diverged one "
          "counts as chance when its accuracy is NaN)."
          + (f" Companion studies: {', '.join(f'`{b}`' for b in baselines)}." if baselines else ""), ""]
    if c.left_out:
        md += ["Not ranked: " + ", ".join(f"{n} {s}" for s, n in sorted(c.left_out.items()))
               + " (ASHA-cut, errored or unfinished trials stopped before their last epoch).", ""]
    md += [f"- {line}" for line in summary_lines(c)] + [""]
    md.append(md_table(table(c)))
    for p in figures:
        md.append(f"![{p.stem}]({os.path.relpath(p, out)})")
    if figures:
        md += ["", "Top: final test accuracy of the best schedules and the best constant ELR (dashed line). "
               "Bottom: the ELR each run actually used (the logged `elr`) and its test accuracy per epoch; "
               "dashed: the best constant ELR. All seeds drawn. Full table: `schedules.csv`.", ""]
    return md
