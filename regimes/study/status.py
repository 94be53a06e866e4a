"""`regimes status <study folder>`: where a study stands, while its sweep runs or after.

Everything comes from the study folder: the spec copy `study.yaml`, the Parquet rows
(`epochs/trial_id=*/data.parquet`, `trials.parquet`), `boundary_search.json` and the
files' modification times. Ray is never imported, started or contacted, so this is safe
next to a running sweep and works on a copied study folder. The sink writes every file
whole and renames it into place, so a reader sees an old or a new file, never a torn one;
a file that appears or goes between listing and reading, and a `trials.parquet` not
written yet, are expected while a sweep starts.

The facts and how each is estimated:

- trials: counts by status (completed, diverged, stopped_decided, stopped, errored,
  running); pending = the spec's trials (`Study.num_trials()`) minus those seen. A
  boundary search's budget is an upper bound ("up to"), and 0 are pending once its
  `boundary_search.json` says it finished.
- progress: epochs done / epochs planned. A finished trial (completed, diverged,
  stopped_decided, stopped) plans the epochs it ran; a running or errored one (errored
  trials continue when the sweep is run again) its config's `epochs`; a pending one the
  spec's most epochs per trial.
- time: elapsed = first trial start to last write, where a trial starts at its epoch
  file's mtime minus its last `time_s` (the run's wall time so far) and the last write is
  the newest mtime of the epoch files and trials.parquet; pauses between a stop and a
  resume are counted. Trial time = the sum over trials of their last `time_s`.
- ETA: remaining epochs / the recent rate, the number of rows written in the last
  5 minutes (a row's wall time: its file's mtime minus the `time_s` still to come in that
  file) per second; with fewer than 3 such rows, the mean epoch time (trial time / epochs
  done) x remaining epochs / trials running (at least 1). "unknown" without rows, and when
  nothing was written for 10 minutes and 10 mean epochs (the sweep is probably stopped).
  Just after a resume, a resumed trial's rows from before the pause can count as recent
  (`time_s` does not see the pause): the rate is then too high for up to 5 minutes.
- regimes: every finished trial labelled by `regimes.analysis.classify`, counted per
  regime; boundaries between finished trials by `regimes.analysis.boundaries`.
- best: per metric/mode of the spec, the finished trial with the best finite final value.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import pandas as pd

from regimes.analysis import boundaries, classify, load_study
from regimes.errors import ConfigError
from regimes.regime import REGIME_ORDER

from .spec import from_dict
from .spec.files import read_yaml
from .storage import BOUNDARIES, SPEC_COPY

FINISHED = ("completed", "diverged", "stopped_decided", "stopped")
STATUSES = FINISHED + ("errored", "running")
RECENT_S = 300.0            # the window of the recent rate
MIN_RECENT_ROWS = 3         # rows in it needed for the recent rate
STALLED_S = 600.0           # no write for this long (and 10 mean epochs): no ETA
MAX_BOUNDARY_LINES = 6      # text output: one screen
READ_TRIES = 3              # load_study again when a file changed under it


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="study folder, <storage>/<study name>, e.g. results/demo-digits")
    p.add_argument("--json", action="store_true", help="print the same facts as one JSON object")


def main(args) -> int:
    facts = study_status(args.folder)
    print(json.dumps(facts, indent=1) if args.json else format_status(facts))
    return 0


# --- the facts -----------------------------------------------------------------------------------
def study_status(path, now: float | None = None) -> dict:
    """What `regimes status` prints, as plain JSON data. ConfigError if `path` is no study folder."""
    root = Path(path).expanduser()
    _check_folder(path, root)
    now = time.time() if now is None else now
    notes: list[str] = []
    spec = _spec(root, notes)
    study = _load(root)
    trials = study.trials if study is not None else pd.DataFrame({"trial_id": [], "status": []})
    epochs = study.epochs if study is not None else pd.DataFrame({"trial_id": [], "epoch": []})
    status = (trials["status"].where(trials["status"].notna(), "running").astype(str)
              if len(trials) and "status" in trials else pd.Series(["running"] * len(trials), dtype=str))

    counts = {s: int((status == s).sum()) for s in STATUSES}
    for s in sorted(set(status) - set(STATUSES)):
        counts[s] = int((status == s).sum())
    seen = len(trials)
    total, upper, pending = None, False, None
    if spec is not None:
        total = spec.num_trials()
        upper = spec.kind == "boundary"
        if upper and _boundary_finished(root):
            total, upper = seen, False
        pending = max(total - seen, 0)

    times = _file_times(root)
    per_trial = _per_trial(trials, status, epochs, times, spec)
    progress = _progress(per_trial, pending, spec, upper)
    clock = _clock(per_trial, root, times, now)
    eta = _eta(progress, clock, per_trial, counts["running"], epochs, times, now, upper)

    return {
        "study": spec.name if spec is not None else (study.name if study is not None else root.name),
        "path": str(path),
        "kind": spec.kind if spec is not None else None,
        "axis": (spec.axis or None) if spec is not None else None,
        "max_epochs": spec.max_epochs() if spec is not None else None,
        "counts": counts,
        "seen": seen,
        "total": total,
        "total_is_upper_bound": upper,
        "pending": pending,
        "progress": progress,
        "time": clock,
        "eta": eta,
        **_regimes(study, status),
        "best": _best(study, trials, status, spec),
        "notes": notes,
    }


def _check_folder(path, root: Path) -> None:
    if not root.exists():
        raise ConfigError(str(path), "no such study folder")
    if not root.is_dir():
        raise ConfigError(str(path), "not a folder; expected a study folder such as results/demo-digits")
    if not any((root / n).exists() for n in (SPEC_COPY, "epochs", "trials.parquet")):
        raise ConfigError(str(path), f"not a study folder: found none of {SPEC_COPY}, epochs/, "
                          "trials.parquet inside")


def _spec(root: Path, notes: list[str]):
    """The validated spec copy, or None (noted) when there is none or it no longer validates."""
    if not (root / SPEC_COPY).is_file():
        notes.append(f"no {SPEC_COPY}: the study's total is unknown")
        return None
    try:
        return from_dict(read_yaml(root / SPEC_COPY, "a study spec"))
    except ConfigError as e:
        notes.append(f"{SPEC_COPY} does not validate ({e}): the study's total is unknown")
        return None


def _epoch_files(root: Path) -> list[tuple[str, Path]]:
    """(trial_id, its partition folder) of every trial with rows."""
    folder = root / "epochs"
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [(n.split("=", 1)[1], folder / n) for n in sorted(names) if n.startswith("trial_id=")]


def _file_times(root: Path) -> dict[str, float]:
    """trial_id -> newest mtime of its epoch files (data.parquet, and the part files a running
    trial's newest rows are in); a file gone since the listing is skipped."""
    out = {}
    for tid, folder in _epoch_files(root):
        try:
            names = [n for n in os.listdir(folder) if n.endswith(".parquet")]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for n in names:
            try:
                out[tid] = max(out.get(tid, 0.0), (folder / n).stat().st_mtime)
            except (FileNotFoundError, NotADirectoryError):
                pass
    return out


def _load(root: Path):
    """regimes.analysis.load_study, or None while the sweep has written no rows yet. A file that
    goes between the dataset's listing and its reading fails one read: read again."""
    for attempt in range(READ_TRIES):
        if not (root / "trials.parquet").is_file() and not _file_times(root):
            return None
        try:
            return load_study(root)
        except ConfigError:
            if attempt == READ_TRIES - 1:
                raise
            time.sleep(0.2)
    return None


def _boundary_finished(root: Path) -> bool:
    try:
        return bool(json.loads((root / BOUNDARIES).read_text()).get("finished"))
    except (OSError, ValueError, AttributeError):
        return False


def _num(v, default=math.nan) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f if math.isfinite(f) else default


def _per_trial(trials, status, epochs, times, spec) -> list[dict]:
    """Per known trial: status, epochs done and planned, last time_s, file mtime."""
    rows = {tid: g for tid, g in epochs.groupby("trial_id", sort=False)} if len(epochs) else {}
    default_epochs = spec.max_epochs() if spec is not None else 0
    out = []
    for (_, t), st in zip(trials.iterrows(), status):
        tid = str(t["trial_id"])
        g = rows.get(tid)
        done = int(max(_num(t.get("epochs_done"), 0), _num(g["epoch"].max(), 0) if g is not None else 0))
        planned = done if st in FINISHED else max(int(_num(t.get("epochs"), default_epochs)), done)
        t_s = math.nan
        if g is not None and "time_s" in g:
            finite = pd.to_numeric(g["time_s"], errors="coerce").dropna()
            t_s = float(finite.iloc[-1]) if len(finite) else math.nan
        out.append({"trial_id": tid, "status": st, "done": done, "planned": planned,
                    "time_s": t_s, "mtime": times.get(tid)})
    return out


def _progress(per_trial, pending, spec, upper) -> dict:
    done = sum(t["done"] for t in per_trial)
    planned = sum(t["planned"] for t in per_trial) + (pending or 0) * (spec.max_epochs() if spec else 0)
    return {"epochs_done": done, "epochs_planned": planned,
            "fraction": done / planned if planned else None, "planned_is_upper_bound": upper}


def _clock(per_trial, root: Path, times, now: float) -> dict:
    starts = [t["mtime"] - t["time_s"] for t in per_trial
              if t["mtime"] is not None and math.isfinite(t["time_s"])]
    writes = list(times.values())
    try:
        writes.append((root / "trials.parquet").stat().st_mtime)
    except FileNotFoundError:
        pass
    last = max(writes) if writes else None
    first = min(starts) if starts else None
    trial_time = sum(t["time_s"] for t in per_trial if math.isfinite(t["time_s"]))
    return {"elapsed_s": last - first if last is not None and first is not None else None,
            "first_start": first, "last_write": last,
            "since_last_write_s": now - last if last is not None else None,
            "trial_time_s": trial_time,
            "elapsed_from": "first trial start (its epoch file's mtime minus its time_s) to the last write "
                            "(newest mtime of the epoch files and trials.parquet)"}


def _eta(progress, clock, per_trial, running, epochs, times, now, upper) -> dict:
    remaining = progress["epochs_planned"] - progress["epochs_done"]
    done = progress["epochs_done"]
    mean_epoch = clock["trial_time_s"] / done if done and clock["trial_time_s"] > 0 else None
    out = {"seconds": None, "remaining_epochs": remaining, "is_upper_bound": upper, "method": "unknown",
           "mean_epoch_s": mean_epoch, "recent_epochs_per_s": None}
    if remaining <= 0:
        return {**out, "seconds": 0.0, "method": "done"}
    if not done or clock["last_write"] is None:
        out["method"] = "unknown: no epochs recorded yet"
        return out
    quiet = clock["since_last_write_s"]
    if quiet > max(STALLED_S, 10 * (mean_epoch or 0)):
        out["method"] = f"unknown: nothing written for {fmt_duration(quiet)} (is the sweep running?)"
        return out
    start = max(now - RECENT_S, clock["first_start"] if clock["first_start"] is not None else now - RECENT_S)
    span = now - start
    recent = _recent_rows(per_trial, epochs, start)
    if recent >= MIN_RECENT_ROWS and span > 0:
        rate = recent / span
        return {**out, "seconds": remaining / rate, "recent_epochs_per_s": rate,
                "method": f"{recent} epochs in the last {fmt_duration(span)}: {rate:.3g} epochs/s"}
    if mean_epoch:
        parallel = max(running, 1)
        return {**out, "seconds": mean_epoch * remaining / parallel,
                "method": f"mean epoch {mean_epoch:.3g} s x {remaining} epochs / {parallel} running"}
    return out


def _recent_rows(per_trial, epochs, start: float) -> int:
    """Rows written after `start`: a row's wall time is its file's mtime minus the time_s
    the file's later rows added."""
    if not len(epochs) or "time_s" not in epochs:
        return 0
    n = 0
    by_id = {t["trial_id"]: t for t in per_trial}
    for tid, g in epochs.groupby("trial_id", sort=False):
        t = by_id.get(str(tid))
        if t is None or t["mtime"] is None or not math.isfinite(t["time_s"]):
            continue
        wall = t["mtime"] - (t["time_s"] - pd.to_numeric(g["time_s"], errors="coerce"))
        n += int((wall > start).sum())
    return n


def _describe(trial: pd.Series, study) -> dict:
    keys = list(study.axes) + (["seed"] if "seed" in trial.index and "seed" not in study.axes else [])
    return {k: _plain(trial[k]) for k in keys if k in trial.index}


def _regimes(study, status) -> dict:
    if study is None or not len(study.trials):
        return {"main_axis": None, "regime_counts": {}, "regimes": [], "boundaries": []}
    finished = study.trials.loc[status.isin(FINISHED).to_numpy()]
    if not len(finished):
        return {"main_axis": study.main_axis, "regime_counts": {}, "regimes": [], "boundaries": []}
    labels = classify(study)
    labels = labels[labels["trial_id"].isin(set(finished["trial_id"]))].reset_index(drop=True)
    by_id = {str(t["trial_id"]): t for _, t in finished.iterrows()}
    per = [{"trial_id": r["trial_id"], "status": r.get("status"), "regime": r["regime"],
            "reason": r.get("regime_reason"), **_describe(by_id[str(r["trial_id"])], study)}
           for _, r in labels.iterrows()]
    counts = labels["regime"].value_counts().to_dict()
    bounds = boundaries(study, labels)
    keep = study.other_axes(study.main_axis) if study.main_axis else []
    cols = keep + ["axis", "boundary", "lower", "upper", "value", "lo", "hi", "bracket_lo", "bracket_hi",
                   "n_seeds", "n_seeds_total", "misordered"]
    return {"main_axis": study.main_axis,
            "regime_counts": {k: int(v) for k, v in counts.items()},
            "regimes": [_plain_dict(p) for p in per],
            "boundaries": [_plain_dict({c: b[c] for c in cols if c in b}) for _, b in bounds.iterrows()]}


def _best(study, trials, status, spec) -> list[dict]:
    if spec is None or study is None or not spec.metric or not len(trials):
        return []
    out = []
    finished = trials.loc[status.isin(FINISHED).to_numpy()]
    for metric, mode in zip(spec.metric, spec.mode):
        col = f"final_{metric}"
        vals = pd.to_numeric(finished[col], errors="coerce") if col in finished else pd.Series([], dtype=float)
        vals = vals[vals.map(math.isfinite)] if len(vals) else vals
        if not len(vals):
            out.append({"metric": metric, "mode": mode, "value": None, "trial_id": None})
            continue
        i = vals.idxmax() if mode == "max" else vals.idxmin()
        t = finished.loc[i]
        out.append(_plain_dict({"metric": metric, "mode": mode, "value": vals[i], "trial_id": t["trial_id"],
                                "status": t.get("status"), "config": _describe(t, study)}))
    return out


def _plain(v):
    """JSON-safe: numpy scalars as Python ones, NaN and infinities as None."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            v = v.item()
        except (ValueError, TypeError):
            pass
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is pd.NA or v is pd.NaT:
        return None
    return v


def _plain_dict(d: dict) -> dict:
    return {k: _plain_dict(v) if isinstance(v, dict) else _plain(v) for k, v in d.items()}


# --- the text --------------------------------------------------------------------------------------
def fmt_duration(s) -> str:
    if s is None or not math.isfinite(s):
        return "unknown"
    s = max(s, 0.0)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"


def _g(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _values(values: list, width: int = 44) -> str:
    vals = sorted({v for v in values if v is not None}, key=lambda v: (isinstance(v, str), v))
    text = ", ".join(_g(v) for v in vals)
    if len(text) <= width or len(vals) < 3:
        return text
    return f"{_g(vals[0])}..{_g(vals[-1])} ({len(vals)} values)"


def format_status(f: dict) -> str:
    up = "up to " if f["total_is_upper_bound"] else ""
    if f["kind"] == "boundary":
        what = f"boundary search along {f['axis']}, {up}{f['total']} trials"
    elif f["kind"] is not None:
        what = f"{f['kind']}, {f['total']} trials"
    else:
        what = "no spec"
    epochs = f", up to {f['max_epochs']} epochs each" if f["max_epochs"] else ""
    lines = [f"study {f['study']} ({what}{epochs}): {f['path']}"]

    counts = ", ".join(f"{k} {v}" for k, v in f["counts"].items() if v) or "none yet"
    of = f" of {up}{f['total']}" if f["total"] is not None else ""
    pend = f"; pending {up}{f['pending']}" if f["pending"] is not None else ""
    lines.append(f"trials: {f['seen']} seen{of}: {counts}{pend}")

    p = f["progress"]
    pct = f" ({100 * p['fraction']:.0f}%)" if p["fraction"] is not None else ""
    lines.append(f"progress: {p['epochs_done']} / {'up to ' if p['planned_is_upper_bound'] else ''}"
                 f"{p['epochs_planned']} epochs{pct}")

    c = f["time"]
    if c["elapsed_s"] is not None:
        lines.append(f"time: {fmt_duration(c['elapsed_s'])} elapsed (first trial start to last write), "
                     f"{fmt_duration(c['trial_time_s'])} of trial time; last write "
                     f"{fmt_duration(c['since_last_write_s'])} ago")
    e = f["eta"]
    if e["method"] == "done":
        lines.append("ETA: done")
    elif e["seconds"] is None:
        lines.append(f"ETA: {e['method']}")
    else:
        lines.append(f"ETA: {'up to ' if e['is_upper_bound'] else ''}{fmt_duration(e['seconds'])} "
                     f"({e['method']})")

    n_fin = sum(f["regime_counts"].values())
    if n_fin:
        axis = f["main_axis"]
        lines.append(f"regimes of {n_fin} finished trial{'s' if n_fin > 1 else ''}"
                     + (f" (values of {axis}):" if axis else ":"))
        width = max(len(k) for k in f["regime_counts"])
        for lab, n in sorted(f["regime_counts"].items(), key=lambda kv: REGIME_ORDER.get(kv[0], 9)):
            vals = _values([r.get(axis) for r in f["regimes"] if r["regime"] == lab]) if axis else ""
            lines.append(f"  {lab:<{width}}  {n:>3}  {vals}".rstrip())
    else:
        lines.append("regimes: no finished trial yet")
    if f["boundaries"]:
        lines.append(f"boundaries along {f['boundaries'][0]['axis']}:")
        for b in f["boundaries"][:MAX_BOUNDARY_LINES]:
            where = " ".join(f"{k}={_g(b[k])}" for k in b if k not in _BOUNDARY_KEYS)
            value = "?" if b["value"] is None else f"{b['value']:.3g}"
            lines.append(f"  {where + ': ' if where else ''}{b['boundary']} at {value}, bracket "
                         f"[{_g(b['bracket_lo'])}, {_g(b['bracket_hi'])}], "
                         f"{b['n_seeds']}/{b['n_seeds_total']} seeds")
        if len(f["boundaries"]) > MAX_BOUNDARY_LINES:
            lines.append(f"  ... {len(f['boundaries']) - MAX_BOUNDARY_LINES} more (--json)")
    for b in f["best"]:
        if b["trial_id"] is None:
            lines.append(f"best {b['metric']} ({b['mode']}): no finished trial with a value yet")
            continue
        cfg = " ".join(f"{k}={_g(v)}" for k, v in b["config"].items())
        lines.append(f"best {b['metric']} ({b['mode']}): {b['value']:.4g}, trial {b['trial_id']} "
                     f"({cfg}; {b['status']})")
    lines += [f"note: {n}" for n in f["notes"]]
    return "\n".join(lines)


_BOUNDARY_KEYS = {"axis", "boundary", "lower", "upper", "value", "lo", "hi", "bracket_lo", "bracket_hi",
                  "n_seeds", "n_seeds_total", "misordered"}
