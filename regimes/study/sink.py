"""ParquetSink: a driver-side Ray Tune callback writing the study's Parquet.

Each trial's rows live in memory on the driver (a dict epoch -> record) and
the trial's whole file `epochs/trial_id=<id>/data.parquet` is rewritten
atomically (regimes.results) after every report. That makes the sink
idempotent across every kind of restart:
- a trial retried from a checkpoint at epoch k reports k+1, k+2, ... again:
  a report starting at epoch e first drops the trial's rows >= e;
- a resumed driver (Tuner.restore) starts with empty memory: the first time it
  sees a trial it reloads that trial's rows from its file, or, when the file is
  missing or damaged (set aside), from the records saved with the trial's last
  checkpoint (the trial then re-reports the epochs after it);
- the sink writes where the study is now (a copied or moved study folder
  resumes into itself: see storage.StudyStore).
Rows are persisted before Tune's next experiment snapshot, so a trial never
resumes from a checkpoint later than its last written row: nothing is lost.

`trials.parquet` (one row per trial, status + provenance) is rewritten when a
trial starts, ends or fails, and at the end of the experiment.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
from ray import tune

from regimes import results
from regimes.core.config import TrainConfig

from .spec import Study
from .storage import StudyStore
from .trainable import DECIDED_KEY, RECORDS_FILE, RECORDS_KEY

log = logging.getLogger(__name__)
_ROW_ONLY = ("study", "schema_version", "trial_id")


def trial_status(tune_status: str, records: list[dict], cfg: TrainConfig, scheduled: bool = True) -> str:
    """completed | diverged | stopped_decided | stopped (early, by a scheduler) | errored | running.

    A trial that ended itself because its regime was decided (early_stop) is
    `stopped_decided`. Any other trial Tune ended before its last epoch was
    stopped by the scheduler or, without one, interrupted (Ctrl-C): it is still
    `running` and resumes.
    """
    if tune_status == "ERROR":
        return "errored"
    if tune_status != "TERMINATED":
        return "running"
    if records and records[-1].get("diverged"):
        return "diverged"
    if records and records[-1].get(DECIDED_KEY):
        return "stopped_decided"
    if not records or records[-1]["epoch"] < cfg.epochs:
        return "stopped" if scheduled else "running"
    return "completed"


def rows_to_records(rows: list[dict], cfg: TrainConfig) -> list[dict]:
    """Invert results.epoch_rows: drop study/config columns, keep the measures."""
    config_cols = set()
    for k in cfg.to_dict():
        config_cols.add(f"cfg_{k}" if rows and f"cfg_{k}" in rows[0] else k)
    return [{k: v for k, v in r.items() if k not in config_cols and k not in _ROW_ONLY} for r in rows]


class ParquetSink(tune.Callback):
    def __init__(self, study: Study, store: StudyStore):
        self.study = study
        self.store = store
        self._records: dict[str, dict[int, dict]] = {}    # trial_id -> epoch -> record
        self._where: dict[str, dict] = {}                 # trial_id -> host/device it last ran on
        self._versions: dict | None = None
        self._resumed = False
        self._failures: dict[str, int] = {}    # trial_id -> failures recorded by earlier drivers
        self._stepping = False                 # inside a step of Tune's event loop (see on_step_begin)
        self._looped = False                   # Tune's loop has run a step with this sink
        self._after_loop: set[str] = set()     # trials that ended after Tune's final snapshot

    def __getstate__(self):        # Tune pickles callbacks with the run config: no rows in there
        return {**self.__dict__, "_records": {}, "_where": {}, "_resumed": False, "_failures": {},
                "_stepping": False, "_looped": False, "_after_loop": set()}

    def _load_previous_where(self) -> None:
        """Host/device and failure counts of trials that ran under a previous driver."""
        self._resumed = True
        path = self.store.local_dir / "trials.parquet"
        table = _read_or_set_aside(path)       # rebuilt from the trials' rows when damaged
        if table is not None:
            cols = [c for c in ("trial_id", "host", "device", "num_failures") if c in table.column_names]
            for r in table.select(cols).to_pylist():
                self._where.setdefault(r["trial_id"], {"host": r.get("host"), "device": r.get("device")})
                self._failures[r["trial_id"]] = int(r.get("num_failures") or 0)

    # --- Tune hooks ----------------------------------------------------------
    # Tune's loop ends with a final experiment snapshot, then stops the trials still running
    # (on Ctrl-C); results and completions handled then are newer than the snapshot, and a
    # resumed Tune will run those trials again from their last checkpoint. Such a trial is
    # recorded as `running`, as the resumed study will see it, not as finished.
    def on_step_begin(self, iteration, trials, **info):
        self._stepping = self._looped = True

    def on_step_end(self, iteration, trials, **info):
        self._stepping = False

    def on_trial_start(self, iteration, trials, trial, **info):
        self._write_trials(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        new = result.get(RECORDS_KEY)
        if not new:
            return
        store = self._trial_records(trial)
        first = new[0]["epoch"]
        for e in [e for e in store if e >= first]:      # a retry re-reports from its checkpoint on
            del store[e]
        for rec in new:
            store[rec["epoch"]] = rec
        if "trial_host" in result:
            self._where[trial.trial_id] = {"host": result["trial_host"], "device": result["trial_device"]}
        self._write_epochs(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self._looped and not self._stepping:
            self._after_loop.add(trial.trial_id)
        self._write_trials(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._write_trials(trials)

    def on_experiment_end(self, trials, **info):
        """Also at Ctrl-C. Clean up after drivers that died before Tune's snapshot."""
        known = {t.trial_id for t in trials}
        self._drop_orphans(known)
        if self.study.kind == "optuna":
            from .search import fail_stale_trials

            fail_stale_trials(self.study, self.store.journal_path, known)
        self._write_trials(trials)

    # --- rows ----------------------------------------------------------------
    def epoch_file(self, trial_id: str) -> Path:
        return self.store.local_dir / "epochs" / f"trial_id={trial_id}" / "data.parquet"

    def _config(self, trial) -> TrainConfig:
        return self.study.config(trial.config)

    def _trial_records(self, trial) -> dict[int, dict]:
        """The trial's records. The first time a driver sees a trial they come from its
        Parquet file (written by an earlier driver); a missing or damaged file (set aside)
        is rebuilt from the records saved with the trial's last checkpoint."""
        tid = trial.trial_id
        if tid not in self._records:
            self._records[tid] = {}
            table = _read_or_set_aside(self.epoch_file(tid))
            if table is not None:
                for rec in rows_to_records(table.to_pylist(), self._config(trial)):
                    self._records[tid][rec["epoch"]] = rec
            else:
                saved = _checkpoint_records(trial)
                if saved:
                    log.warning("rebuilding the rows of trial %s (epochs 1-%d) from its checkpoint",
                                tid, saved[-1]["epoch"])
                    self._records[tid] = {rec["epoch"]: rec for rec in saved}
                    self._write_epochs(trial)
        return self._records[tid]

    def _write_epochs(self, trial) -> None:
        records = [r for _, r in sorted(self._trial_records(trial).items())]
        rows = results.epoch_rows(self._config(trial), records, self.study.name)
        results.write_trial_epochs(self.store.local_dir, trial.trial_id, rows)
        self.store.push(f"epochs/trial_id={trial.trial_id}/data.parquet")

    def _write_trials(self, trials) -> None:
        if not self._resumed:
            self._load_previous_where()
        rows = []
        for trial in trials:
            records = [r for _, r in sorted(self._trial_records(trial).items())]
            if not records and trial.status not in ("ERROR", "RUNNING"):
                continue           # pending: nothing to say yet
            cfg = self._config(trial)
            # Tune's count can restart at 0 when an errored trial is resumed: keep the larger
            failures = max(int(getattr(trial, "num_failures", 0)), self._failures.get(trial.trial_id, 0))
            extra = {**self._provenance(), **self._where.get(trial.trial_id, {}), "num_failures": failures}
            if records and records[-1].get(DECIDED_KEY):
                extra["regime"] = records[-1][DECIDED_KEY]    # the report relabels every trial later
            status = trial_status(trial.status, records, cfg, scheduled=self.study.scheduler is not None)
            if trial.trial_id in self._after_loop and status != "errored":
                status = "running"
            rows.append(results.trial_summary(cfg, records, self.study.name, trial.trial_id, status,
                                              extra=extra))
        if not rows:
            return
        _harmonise(rows)
        results.write_trials(self.store.local_dir, rows)
        self.store.push("trials.parquet")
        if self.study.kind == "optuna":
            self.store.push("optuna.journal")

    def _drop_orphans(self, known: set[str]) -> None:
        """Remove epoch files of trials Tune does not know: written by a driver that died
        before Tune's snapshot recorded the trial (Tune ran a replacement instead)."""
        folder = self.store.local_dir / "epochs"
        if not folder.is_dir():
            return
        for d in folder.glob("trial_id=*"):
            tid = d.name.split("=", 1)[1]
            if tid not in known:
                log.warning("dropping rows of trial %s: unknown to the resumed Tune experiment", tid)
                shutil.rmtree(d)
                self.store.delete(f"epochs/{d.name}")

    def _provenance(self) -> dict:
        if self._versions is None:
            import optuna
            import ray

            self._versions = {"ray_version": ray.__version__, "optuna_version": optuna.__version__}
        return self._versions


def _harmonise(rows: list[dict]) -> None:
    """Give every trials row the same columns (a trial without records has no final_*)."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    for r in rows:
        for k in keys:
            if k not in r:
                r[k] = None


def _read_or_set_aside(path: Path):
    """The Parquet table at `path`; None if there is none. A file that cannot be read (cut
    short by a crash, truncated by hand) is moved out of every reader's way to
    `.<name>.damaged` (hidden, no `.parquet` suffix) and None is returned, so it gets rebuilt."""
    import pyarrow as pa

    if not path.exists():
        return None
    try:
        return pq.read_table(path, partitioning=None)
    except (pa.ArrowInvalid, OSError) as e:
        aside = path.with_name(f".{path.name}.damaged")
        os.replace(path, aside)
        log.warning("%s is damaged (%s); set aside as %s and rebuilt", path, e, aside.name)
        return None


def _checkpoint_records(trial) -> list[dict]:
    """The epoch records saved with the trial's latest checkpoint ([] if none)."""
    ckpt = getattr(trial, "checkpoint", None)
    if ckpt is None:
        return []
    try:
        with ckpt.filesystem.open_input_stream(f"{ckpt.path}/{RECORDS_FILE}") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return []
