"""`regimes report <results dir>`: labels, boundaries, figures and report.md of a study.

Writes into <dir>/report/:
    regimes.parquet, regimes.csv   one row per trial: axes, seed, status, regime, evidence
    boundaries.csv                 where the regime changes along the main axis (+ seed spread)
    training_curves[_<axis>=<value>...].png/.svg
                                   paper Fig. 1 style, one line (mean) and band (min-max over
                                   seeds) per ELR; one figure per setting of the other axes,
                                   named after it (e.g. training_curves_wd=0.0005)
    regime_strip.png/.svg          final loss / accuracy vs ELR, regime bands, boundary brackets
    phase_diagram_<x>_x_<y>[_<axis>=<value>...].png/.svg
                                   one per pair (main axis, other axis), if two axes vary; the
                                   axes not drawn are fixed at the value in the name
    schedules.csv, schedule_ranking.png/.svg, schedule_curves.png/.svg
                                   a schedule search (some trial's schedule is not constant, or
                                   --baseline given): best schedules vs best constant ELR, gain
    report.md                      the figures, the regime table and the boundary table
Every figure is written in each of `--formats` (default: a 300 dpi PNG and an SVG beside it).
The report also adds `regime` + `regime_*` evidence columns to <dir>/trials.parquet (atomic rewrite).
"""
from __future__ import annotations

import argparse
import dataclasses
import numbers
import os
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import regime as R
from ..errors import ConfigError
from ..results import atomic_write
from . import schedules as S
from .markdown import md_table
from .load import ERRORED, REPORT_LABELS, Study, boundaries, classify, load_study, majority_table

FORMATS = ("png", "svg")
PNG_DPI = 300
RUNNING = "running"
MAX_CURVE_FIGURES = 6
MAX_PHASE_FIGURES = 4


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="a study's results folder (holding epochs/ and trials.parquet)")
    p.add_argument("--out", help="where to write the report (default: <results>/report)")
    p.add_argument("--x", help="phase-diagram x axis (default: the main axis, elr or lr)")
    p.add_argument("--y", help="phase-diagram y axis (default: every other varying axis)")
    p.add_argument("--rule", action="append", default=[], metavar="key=value",
                   help="override a regime threshold (RegimeRules field), e.g. converge_loss=0.005")
    p.add_argument("--no-annotate", action="store_true", help="no test accuracy in phase-diagram cells")
    p.add_argument("--no-update-trials", action="store_true",
                   help="do not add the regime columns to trials.parquet")
    p.add_argument("--formats", default=",".join(FORMATS), help="figure formats, comma separated (png,svg)")
    p.add_argument("--baseline", action="append", default=[], metavar="DIR",
                   help="results folder of a companion study (a constant-ELR grid, or seed replicates of "
                        "the best schedules) pooled with this one in the schedule comparison; repeatable")


def main(args) -> int:
    import matplotlib.pyplot as plt

    plt.switch_backend("Agg")
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    for f in formats:
        if f not in ("png", "svg", "pdf"):
            raise ConfigError("--formats", f"{f!r} is not allowed; use png, svg or pdf")
    res = make_report(args.results, out=args.out, x=args.x, y=args.y, rules=parse_rules(args.rule),
                      annotate=not args.no_annotate, update_trials=not args.no_update_trials,
                      formats=formats, baselines=args.baseline)
    print(res["summary"])
    if res["phase_diagrams"]:
        print(f"phase diagram: {res['phase_diagrams'][0]}")
    elif res["strips"]:
        print(f"phase diagram (1-D, one axis varies): {res['strips'][0]}")
    print(f"report: {res['report']}")
    return 0


def parse_rules(tokens) -> R.RegimeRules:
    known = {f.name: f for f in dataclasses.fields(R.RegimeRules)}
    changes = {}
    for tok in tokens or ():
        if "=" not in tok:
            raise ConfigError("--rule", f"expected key=value, got {tok!r}")
        k, v = (s.strip() for s in tok.split("=", 1))
        if k not in known:
            raise ConfigError(f"--rule {k}", f"unknown rule; allowed: {', '.join(known)}")
        typ = int if known[k].type in (int, "int") else float
        try:
            changes[k] = typ(v)
        except ValueError:
            raise ConfigError(f"--rule {k}", f"expected a number, got {v!r}") from None
    return R.RegimeRules(**changes)


# ---------------------------------------------------------------------------
def make_report(results, *, out=None, x=None, y=None, rules: R.RegimeRules = R.RegimeRules(),
                annotate: bool = True, update_trials: bool = True, formats=FORMATS, baselines=()) -> dict:
    """Everything `regimes report` writes; returns the paths and a text summary."""
    import matplotlib.pyplot as plt

    from .plots import default_select, plot_phase_diagram, plot_regime_strip, plot_training_curves

    study = load_study(results)
    companions = [load_study(b) for b in baselines]
    for flag, a in (("--x", x), ("--y", y)):
        if a is not None and a not in study.axes:
            raise ConfigError(flag, f"{a!r} is not a varying axis of this study; axes: "
                                    f"{', '.join(study.axes) or 'none'}")
    out = Path(out) if out else study.root / "report"
    if out.exists() and not out.is_dir():
        raise ConfigError(str(out), "exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    labels = classify(study, rules)
    x = x or study.main_axis
    bounds = boundaries(study, labels, x)
    atomic_write(pa.Table.from_pandas(labels, preserve_index=False), out / "regimes.parquet")
    labels.to_csv(out / "regimes.csv", index=False)
    bounds.to_csv(out / "boundaries.csv", index=False)

    figures: dict[str, list[Path]] = {"curves": [], "strip": [], "phase": [], "schedules": []}
    notes: list[str] = []

    def save(fig, stem, kind):
        for f in formats:     # tight: the legends outside the axes are kept whole
            fig.savefig(out / f"{stem}.{f}", dpi=PNG_DPI, bbox_inches="tight", pad_inches=0.05)
        plt.close(fig)
        figures[kind].append(out / f"{stem}.{formats[0]}")

    # training curves: one figure per setting of the non-main axes (capped)
    curve_axis = x
    others = study.other_axes(curve_axis) if curve_axis else []
    settings = _settings(study.trials, others)
    if len(settings) > MAX_CURVE_FIGURES:
        notes.append(f"{len(settings)} settings of {', '.join(others)}: training curves of every setting "
                     "drawn in one figure")
        save(plot_training_curves(study, labels, select={}, axis=curve_axis), "training_curves_all-settings",
             "curves")
        settings = []
    for sel in settings:
        save(plot_training_curves(study, labels, select=sel, axis=curve_axis),
             figure_stem("training_curves", sel), "curves")
    missing = [m for m in ("train_acc", "test_acc", "eff_grad_norm", "angular_update") if not study.has_measure(m)]
    if missing:
        notes.append(f"measures not recorded in this study: {', '.join(missing)}")

    if x is not None:
        save(plot_regime_strip(study, labels, bounds, axis=x), "regime_strip", "strip")
    else:
        notes.append("no varying axis: no regime strip or phase diagram")

    if x is not None and bounds.empty and labels[x].nunique() > 1:
        others = study.other_axes(x)
        sizes = labels.groupby(others)[x].nunique() if others else pd.Series([labels[x].nunique()])
        if sizes.max() < 2:
            notes.append(f"no setting of {', '.join(others)} has two or more values of {x} (a sampled, "
                         f"not gridded, study): boundaries need a grid along {x}")
    ys = [y] if y else (study.other_axes(x) if x else [])
    if x is not None and not ys:
        notes.append(f"only one axis varies ({x}): no 2-D phase diagram")
    for yy in ys[:MAX_PHASE_FIGURES]:
        if yy == x:
            continue
        fixed = default_select(study, x, yy)
        fig = plot_phase_diagram(study, labels, x=x, y=yy, select=fixed,
                                 annotate="test_acc" if annotate else None)
        save(fig, figure_stem(f"phase_diagram_{x}_x_{yy}", fixed), "phase")

    trials_updated = False
    if update_trials:
        trials_updated = add_regimes_to_trials(study.root / "trials.parquet", labels)
        if not trials_updated:
            notes.append("no trials.parquet yet: regime columns not added to it")

    comparison, schedule_md = None, []
    if companions or S.is_schedule_study(study):
        comparison = S.compare([study, *companions])
        S.table(comparison, top=len(comparison.groups)).to_csv(out / "schedules.csv", index=False)
        if not comparison.groups.empty:
            save(S.plot_ranking(comparison), "schedule_ranking", "schedules")
            save(S.plot_curves(comparison, [study, *companions]), "schedule_curves", "schedules")
        schedule_md = S.markdown(comparison, [Path(b) for b in baselines], figures["schedules"], out)

    summary = text_summary(study, labels, bounds, x)
    if comparison is not None:
        summary += "\n" + "\n".join(S.summary_lines(comparison))
    report = out / "report.md"
    report.write_text(_markdown(study, labels, bounds, x, figures, notes, rules, out, schedule_md, formats))
    return {"schedules": comparison, "out": out, "report": report, "labels": labels, "boundaries": bounds,
            "figures": [p for v in figures.values() for p in v], "phase_diagrams": figures["phase"], "strips": figures["strip"],
            "trials_updated": trials_updated, "summary": summary, "notes": notes}


def _name_value(v) -> str:
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return str(bool(v))
    if isinstance(v, numbers.Real):
        f = float(v)
        if f == 0 or (f.is_integer() and abs(f) < 1e15):
            return str(int(f))
        return f"{f:.6g}"
    return str(v)


def figure_stem(prefix: str, setting: dict) -> str:
    """A file-system safe figure name saying which setting it is for:
    `training_curves_momentum=0.9_wd=0.0005` (letters, digits and `. _ - =` only)."""
    parts = [prefix] + [f"{k}={_name_value(v)}" for k, v in setting.items()]
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", "_".join(parts)).strip("-")[:200]


def _settings(trials: pd.DataFrame, axes: list[str]) -> list[dict]:
    if not axes:
        return [{}]
    keys = trials[axes].drop_duplicates().sort_values(axes, kind="stable")
    return [dict(zip(axes, row)) for row in keys.itertuples(index=False, name=None)]


def add_regimes_to_trials(path: Path, labels: pd.DataFrame) -> bool:
    """Add/replace `regime` and `regime_*` columns of trials.parquet (temp file + os.replace).

    The existing columns are kept as they are (no pandas round trip of the sink's table);
    the new ones are aligned on trial_id.
    """
    if not path.is_file():
        return False
    table = pq.read_table(path)
    keep = [c for c in table.column_names if not (c == "regime" or c.startswith("regime_"))]
    table = table.select(keep)
    ids = [str(v) for v in table.column("trial_id").to_pylist()]
    cols = [c for c in labels.columns if c == "regime" or c.startswith("regime_")]
    aligned = labels.assign(trial_id=labels["trial_id"].astype(str)).drop_duplicates("trial_id") \
        .set_index("trial_id").reindex(ids)
    for c in cols:
        table = table.append_column(c, pa.Array.from_pandas(aligned[c].reset_index(drop=True)))
    atomic_write(table, path)
    return True


# ---------------------------------------------------------------------------
def regime_table(study: Study, labels: pd.DataFrame, x: str | None) -> pd.DataFrame:
    axes = [a for a in study.axes if a in labels]
    if not axes:
        lab, share = R.majority(labels["regime"].tolist())
        return pd.DataFrame([{"regime": lab, "agreement": share, "n": len(labels)}])
    t = majority_table(labels, axes)[axes + ["regime", "agreement", "n", "counts"]]
    running = _running(labels)
    if running.any():      # a marker on the settings whose labels may still change
        per = labels.assign(_run=running).groupby(axes, dropna=False, sort=True)["_run"].agg(["sum", "size"])
        marks = {(k if isinstance(k, tuple) else (k,)): (f"partial: {int(r['sum'])}/{int(r['size'])} running"
                                                        if r["sum"] else "") for k, r in per.iterrows()}
        t["partial"] = [marks.get(tuple(row), "") for row in t[axes].itertuples(index=False, name=None)]
    return t


def _running(labels: pd.DataFrame) -> pd.Series:
    """Trials still running (their labels are provisional)."""
    if "status" not in labels:
        return pd.Series(False, index=labels.index)
    return labels["status"].astype(str).eq(RUNNING)


def partial_line(labels: pd.DataFrame) -> str | None:
    n = int(_running(labels).sum())
    return (f"partial: {n} trial{'s' if n != 1 else ''} still running (labels of running trials are "
            "provisional)") if n else None


def _shown_labels(counts) -> list[str]:
    return [k for k in REPORT_LABELS if k in R.LABELS or counts.get(k, 0)]


def boundary_table(bounds: pd.DataFrame) -> pd.DataFrame:
    if bounds.empty:
        return bounds
    keep = [c for c in bounds.columns if c not in ("lower", "upper", "bracket_lo", "bracket_hi", "axis")]
    t = bounds[keep].copy()
    t.insert(keep.index("n_seeds"), "seeds", t["n_seeds"].astype(str) + "/" + t["n_seeds_total"].astype(str))
    return t.drop(columns=["n_seeds", "n_seeds_total"])


def text_summary(study: Study, labels: pd.DataFrame, bounds: pd.DataFrame, x: str | None) -> str:
    counts = labels["regime"].value_counts()
    lines = [f"{study.name}: {len(labels)} trials, axes {', '.join(study.axes) or 'none'}, "
             f"{len(study.seeds)} seed(s)",
             "regimes: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in _shown_labels(counts))]
    if partial_line(labels):
        lines.append(partial_line(labels))
    rt = regime_table(study, labels, x)
    lines.append(rt.drop(columns=["counts"], errors="ignore").to_string(index=False))
    if bounds.empty:
        lines.append("boundaries: none found")
    else:
        lines.append(f"boundaries along {x}:")
        lines.append(boundary_table(bounds).to_string(index=False))
    return "\n".join(lines)


def _markdown(study, labels, bounds, x, figures, notes, rules, out: Path, schedule_md=(),
              formats=FORMATS) -> str:
    rel = lambda p: os.path.relpath(p, out)
    counts = labels["regime"].value_counts()
    md = [f"# Regime report: {study.name}", "",
          f"Results folder: `{study.root}`; {len(labels)} trials; axes: "
          f"{', '.join(f'`{a}`' for a in study.axes) or 'none'}; seeds: {len(study.seeds)}.", ""]
    if partial_line(labels):
        md += [f"**{partial_line(labels)}**; the per-setting table marks where.", ""]
    md += ["Regimes (Kodryan et al. 2022): **convergence** (train loss -> 0), **chaotic equilibrium** "
           "(loss and effective gradient norm stable at a nonzero level, accuracy above chance), "
           "**divergence** (chance accuracy, loss ~ ln C, or NaN/inf), **unresolved** (still trending "
           "at the end: train longer)"
           + ("; **errored**: the trial failed before its record showed a regime (left out of the "
              "boundaries)" if counts.get(ERRORED, 0) else "") + ".", "",
           "| regime | trials |", "|---|---|"]
    md += [f"| {k} | {counts.get(k, 0)} |" for k in _shown_labels(counts)]
    md += ["", *schedule_md]
    md += ["## Boundaries", ""]
    if x:
        md += [f"Where the regime changes along `{x}`: per seed the geometric midpoint of the two "
               "neighbouring grid points with different labels (unresolved and errored points stepped "
               "over); when "
               "labels near a boundary are out of regime order, the cut that contradicts the fewest of "
               "them (ties: the middle of the tied cuts), and `misordered` counts the contradicting "
               "labels over seeds. `value` is the geometric mean over seeds, `lo`/`hi` the range, "
               "`log10_spread` the standard deviation of log10 over seeds. The figures draw each "
               "boundary as its bracket (the grid points either side, over seeds) with the estimate "
               "`value` as a thin marker.", ""]
    md.append(md_table(boundary_table(bounds)))
    for kind, title, text in (
            ("phase", "Phase diagrams", "Cell colour: majority regime over seeds; hatched cells with "
             "`k/n`: seeds disagree; number: mean final test accuracy over seeds; boundaries along the "
             "x axis for each row: a bar along the bottom of the row spanning the bracket (grid points "
             "either side, over seeds; solid edge: convergence -> chaotic, dashed: chaotic -> "
             "divergence) with a tick at the estimate. Axes not drawn are fixed at the value in the "
             "file name. An off-grid study is drawn as one dot per trial."),
            ("strip", "Regimes along the main axis", "Dots: one trial each, coloured by its regime "
             "(hollow: still running); grey line: median over seeds; shaded bands: majority regime "
             "(hatched: seeds disagree); grey spans: boundary brackets (grid points either side, over "
             "seeds), thin vertical lines: boundary estimates; dotted: chance accuracy 1/C, dash-dot: "
             "ln C."),
            ("curves", "Training curves", "As the paper's Figure 1: per value of the main axis the mean "
             "over seeds (geometric mean on log axes) as a line and the min-max over seeds as a band; "
             "the legend gives the regime of each value's runs (k/n: seeds that disagree); dotted: "
             "chance accuracy 1/C, dash-dot: ln C. One figure per setting of the other axes, named "
             "after it.")):
        if figures[kind]:
            md += [f"## {title}", "", text, ""]
            for p in figures[kind]:
                md.append(f"![{p.stem}]({rel(p)})")
                also = [f"[{f}]({rel(p.with_suffix('.' + f))})" for f in formats if f != p.suffix[1:]]
                if also:
                    md.append(f"({p.stem}: also " + ", ".join(also) + ")")
                md.append("")
    md += ["## Regime per setting", "", md_table(regime_table(study, labels, x))]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    md += ["## Rules used", "", "```", *(f"{k} = {v}" for k, v in rules.to_dict().items()), "```", "",
           "Per-trial labels with evidence: `regimes.csv` / `regimes.parquet`; boundaries: `boundaries.csv`.",
           ""]
    return "\n".join(md)
