"""Read a study's Parquet results into pandas; discover its axes; label every trial.

A results folder (see regimes/results.py) holds

    epochs/trial_id=<id>/data.parquet   one row per (trial, epoch), hive-partitioned
    trials.parquet                      one row per trial (config, final_<measure>, status, ...)

`load_study` reads both (either may be missing while a study is running: the
trials table is then rebuilt from each trial's last epoch), and finds the axes:
the TrainConfig fields that vary across trials. `seed` is the replicate axis,
never a plot axis. The main axis is the ELR on the sphere, the raw lr in free
mode (the two knobs the papers sweep).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .. import regime as R
from ..errors import ConfigError
from ..core import record
from ..core.config import NUM_CLASSES, TrainConfig

SEED = "seed"
# Config fields that never make a scientific axis even if they differ.
NOT_AXES = (SEED, "device", "data_root", "download")
# Classes per dataset, used only when the records lack `num_classes`.
DATASET_CLASSES = NUM_CLASSES
# Per-epoch measures the analysis looks at (all optional except train_loss).
MEASURES = tuple(m for m in record.CORE_MEASURES if m not in ("samples_per_s", "time_s"))
# The label of a trial that failed (status `errored`) without its record showing divergence:
# not a regime, and left out of boundary estimates.
ERRORED = "errored"
# Every label the report can give: the regimes of the classifier, then ERRORED.
REPORT_LABELS = (*R.LABELS, ERRORED)


@dataclass
class Study:
    """One results folder in memory."""

    root: Path
    trials: pd.DataFrame           # one row per trial; config fields under their plain names
    epochs: pd.DataFrame           # one row per (trial, epoch), sorted; includes trial_id
    axes: list[str] = field(default_factory=list)   # varying config fields, main axis first
    main_axis: str | None = None   # elr (sphere) / lr (free) when it varies, else the first axis

    @property
    def name(self) -> str:
        if "study" in self.trials and len(self.trials):
            return str(self.trials["study"].iloc[0])
        return self.root.name

    @property
    def seeds(self) -> list:
        return sorted(self.trials[SEED].dropna().unique().tolist()) if SEED in self.trials else [0]

    def epochs_column(self, config_field: str) -> str:
        """Column of a config field in the epochs table (elr/lr are stored as cfg_elr/cfg_lr)."""
        c = f"cfg_{config_field}"
        return c if c in self.epochs.columns else config_field

    def other_axes(self, *used: str) -> list[str]:
        return [a for a in self.axes if a not in used]

    def has_measure(self, name: str) -> bool:
        return name in self.epochs.columns and bool(self.epochs[name].notna().any())


def _bad(path, message):
    return ConfigError(str(path), message)


def load_study(path) -> Study:
    """Read a results folder (`results/<study>`). A bad path raises ConfigError naming it."""
    root = Path(path).expanduser()
    if not root.exists():
        raise _bad(path, "no such results folder")
    if not root.is_dir():
        raise _bad(path, "not a folder; expected a results folder holding epochs/ and trials.parquet")
    epochs_dir, trials_file = root / "epochs", root / "trials.parquet"
    if not epochs_dir.is_dir() and not trials_file.is_file():
        raise _bad(path, "not a results folder: found neither epochs/ nor trials.parquet inside")

    epochs = _read_epochs(epochs_dir) if epochs_dir.is_dir() else pd.DataFrame({"trial_id": [], "epoch": []})
    trials = _read_trials(trials_file) if trials_file.is_file() else None
    trials = _hashable(_complete_trials(trials, epochs))
    if trials.empty:
        raise _bad(path, "results folder holds no trials yet")
    axes, main = discover_axes(trials)
    return Study(root=root, trials=trials, epochs=epochs, axes=axes, main_axis=main)


def _read_epochs(folder: Path, attempts: int = 5) -> pd.DataFrame:
    """The epochs dataset of a finished or running study. A running trial merges its part
    files into data.parquet now and then (renames, then deletes the parts): a read in that
    instant can list a part that is gone when it opens it (read again), or hold a row both
    in the new data.parquet and in a part not yet deleted (kept once)."""
    part = ds.partitioning(pa.schema([("trial_id", pa.string())]), flavor="hive")
    for attempt in range(attempts):
        try:
            dataset = ds.dataset(folder, format="parquet", partitioning=part)
            # Trials may differ in columns (optional measures): read with the union schema.
            schemas = [frag.physical_schema for frag in dataset.get_fragments()]
            if not schemas:
                return pd.DataFrame({"trial_id": pd.Series([], dtype=str), "epoch": []})
            schema = pa.unify_schemas(schemas + [pa.schema([("trial_id", pa.string())])],
                                      promote_options="permissive")
            table = ds.dataset(folder, format="parquet", partitioning=part, schema=schema).to_table()
            break
        except FileNotFoundError as e:        # a part merged away under the read
            if attempt == attempts - 1:
                raise _bad(folder, f"cannot read the epochs dataset ({e})") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise _bad(folder, f"cannot read the epochs dataset ({e})") from None
    df = table.to_pandas()
    df["trial_id"] = df["trial_id"].astype(str)
    df = df.sort_values(["trial_id", "epoch"], kind="stable")
    return df.drop_duplicates(["trial_id", "epoch"], keep="last").reset_index(drop=True)


def _read_trials(path: Path) -> pd.DataFrame:
    try:
        df = pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as e:
        raise _bad(path, f"cannot read trials table ({e})") from None
    if "trial_id" not in df:
        raise _bad(path, "trials table has no trial_id column")
    df["trial_id"] = df["trial_id"].astype(str)
    return df


def _complete_trials(trials: pd.DataFrame | None, epochs: pd.DataFrame) -> pd.DataFrame:
    """Add a row (from its last epoch) for every trial that has epochs but no trials row yet."""
    have = set() if trials is None else set(trials["trial_id"])
    missing = [t for t in epochs["trial_id"].unique() if t not in have] if len(epochs) else []
    rows = []
    fields = TrainConfig.field_names()
    for tid in missing:
        last = epochs[epochs["trial_id"] == tid].iloc[-1]
        row = {"trial_id": tid, "status": "running", "epochs_done": int(last["epoch"])}
        if "study" in last:
            row["study"] = last["study"]
        for f in fields:
            col = f"cfg_{f}" if f"cfg_{f}" in last.index else f
            if col in last.index:
                row[f] = last[col]
        for m in MEASURES:
            if m in last.index:
                row[f"final_{m}"] = last[m]
        row["diverged"] = bool(last.get("diverged", False))
        rows.append(row)
    extra = pd.DataFrame(rows)
    if trials is None:
        return extra.reset_index(drop=True)
    if extra.empty:
        return trials.reset_index(drop=True)
    return pd.concat([trials, extra], ignore_index=True)


def _hashable(df: pd.DataFrame) -> pd.DataFrame:
    """List-valued config fields (e.g. schedule knots) as their text, so they compare and group."""
    for c in df.columns:
        if df[c].dtype == object and df[c].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
            df[c] = df[c].map(lambda v: str(_as_list(v)) if isinstance(v, (list, tuple, np.ndarray)) else v)
    return df


def _as_list(v):
    """A Parquet list cell (numpy arrays, nested for knots) as plain nested lists."""
    return [_as_list(x) for x in v] if isinstance(v, (list, tuple, np.ndarray)) else v


def discover_axes(trials: pd.DataFrame) -> tuple[list[str], str | None]:
    """Varying TrainConfig fields (seed excluded), main axis first."""
    varying = [f for f in TrainConfig.field_names()
               if f in trials.columns and f not in NOT_AXES and trials[f].nunique(dropna=True) > 1]
    modes = set(trials["mode"].dropna()) if "mode" in trials else {"sphere"}
    preferred = "lr" if modes == {"free"} else "elr"
    if preferred in varying:
        main = preferred
    else:
        numeric = [a for a in varying if pd.api.types.is_numeric_dtype(trials[a])]
        main = numeric[0] if numeric else (varying[0] if varying else None)
    axes = ([main] if main else []) + [a for a in varying if a != main]
    return axes, main


# ---------------------------------------------------------------------------
def num_classes_of(study: Study, trial: pd.Series, ep: pd.DataFrame) -> int:
    for src in (ep.get("num_classes"), pd.Series([trial.get("final_num_classes")])):
        if src is not None:
            v = pd.to_numeric(src, errors="coerce").dropna()
            if len(v) and v.iloc[-1] >= 2:
                return int(v.iloc[-1])
    return DATASET_CLASSES.get(str(trial.get("dataset", "")), 10)


def classify(study: Study, rules: R.RegimeRules = R.RegimeRules()) -> pd.DataFrame:
    """Label every trial. One row per trial: trial_id, axes, seed, status, `regime`,
    `regime_reason` and the evidence as `regime_<name>` columns."""
    by_trial = {tid: g for tid, g in study.epochs.groupby("trial_id", sort=False)} if len(study.epochs) else {}
    keep = ["trial_id"] + [c for c in study.axes + [SEED, "status"] if c in study.trials.columns]
    rows = []
    for _, trial in study.trials.iterrows():
        ep = by_trial.get(trial["trial_id"])
        row = {c: trial[c] for c in keep}
        if ep is None or ep.empty or "train_loss" not in ep:
            row.update(regime=R.UNRESOLVED, regime_reason="no epochs recorded")
            rows.append(row)
            continue
        diverged = bool(trial.get("diverged", False) is True or trial.get("status") == "diverged")
        if "diverged" in ep:
            diverged |= bool(ep["diverged"].fillna(False).astype(bool).any())
        col = lambda name: ep[name].to_numpy(dtype=float) if name in ep and ep[name].notna().any() else None
        c = R.classify(col("train_loss"), col("train_acc"), col("eff_grad_norm"),
                       num_classes_of(study, trial, ep), diverged=diverged,
                       epochs=ep["epoch"].to_numpy(dtype=float), rules=rules)
        row["regime"] = c.label
        row["regime_reason"] = c.reason
        if trial.get("status") == "errored" and c.label != R.DIVERGENCE:   # a blow-up may be what raised
            row["regime"], row["regime_reason"] = ERRORED, "trial errored: " + c.reason
        for k, v in c.evidence.items():
            if k != "reason":
                row[f"regime_{k}"] = v
        rows.append(row)
    return pd.DataFrame(rows)


def boundaries(study: Study, labels: pd.DataFrame | None = None, axis: str | None = None) -> pd.DataFrame:
    """Regime boundaries along `axis` (default: the main axis) for every setting of the
    other axes. One row per (setting, kind of change) with the seed spread."""
    labels = classify(study) if labels is None else labels
    axis = axis or study.main_axis
    others = study.other_axes(axis) if axis else []
    cols = others + ["axis", "boundary", "lower", "upper", "value", "lo", "hi", "log10_spread",
                     "bracket_lo", "bracket_hi", "n_seeds", "n_seeds_total", "misordered"]
    if axis is None or axis not in labels or labels[axis].nunique() < 2:
        return pd.DataFrame(columns=cols)
    rows = []
    groups = labels.groupby(others, dropna=False, sort=True) if others else [((), labels)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        seeds = g[SEED].to_numpy() if SEED in g else None
        x = pd.to_numeric(g[axis], errors="coerce").to_numpy(dtype=float)
        # several trials at one (x, seed) cannot happen within a setting; guard anyway
        for b in R.estimate_boundaries(x, g["regime"].tolist(), seeds, skip=(R.UNRESOLVED, ERRORED)):
            rows.append({**dict(zip(others, key)), "axis": axis, **b.to_dict()})
    return pd.DataFrame(rows, columns=cols)


def majority_table(labels: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Majority regime over seeds per setting of `axes`, with agreement share and counts."""
    rows = []
    for key, g in labels.groupby(axes, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        lab, share = R.majority(g["regime"].tolist())
        counts = g["regime"].value_counts().to_dict()
        rows.append({**dict(zip(axes, key)), "regime": lab, "agreement": share, "n": len(g),
                     "counts": ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))})
    return pd.DataFrame(rows)


def finite_or_nan(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def final_values(study: Study, labels: pd.DataFrame) -> pd.DataFrame:
    """labels + last finite train loss / test acc / eff. grad norm of each trial (for plots)."""
    out = labels.copy()
    if not len(study.epochs):
        for m in ("train_loss", "test_acc", "eff_grad_norm"):
            out[f"last_{m}"] = np.nan
        return out
    for m in ("train_loss", "test_acc", "eff_grad_norm"):
        if m in study.epochs:
            finite = study.epochs[["trial_id", m]].replace([np.inf, -np.inf], np.nan).dropna()
            last = finite.groupby("trial_id", sort=False)[m].last()
            out[f"last_{m}"] = out["trial_id"].map(last)
        else:
            out[f"last_{m}"] = np.nan
    return out
