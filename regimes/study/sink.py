"""ParquetSink: a driver-side Ray Tune callback writing the study's Parquet.

Each trial's rows live in memory on the driver (a dict epoch -> record) and
the trial's whole file `epochs/trial_id=<id>/data.parquet` is rewritten
atomically (regimes.results) after every report. That makes the sink
idempotent across every kind of restart:
- a trial retried from a checkpoint at epoch k reports k+1, k+2, ... again:
  a report starting at epoch e first drops the trial's rows >= e;
- a resumed driver (Tuner.restore) starts with empty memory: the first time it
  sees a trial it reloads that trial's rows from its file.
Rows are persisted before Tune's next experiment snapshot, so a trial never
resumes from a checkpoint later than its last written row: nothing is lost.

`trials.parquet` (one row per trial, status + provenance) is rewritten when a
trial starts, ends or fails, and at the end of the experiment.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pyarrow.parquet as pq
from ray import tune

from regimes import results
from regimes.core.config import TrainConfig

from .spec import Study
from .storage import StudyStore
from .trainable import DECIDED_KEY, RECORDS_KEY

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

    def __getstate__(self):        # Tune pickles callbacks with the run config: no rows in there
        return {**self.__dict__, "_records": {}, "_where": {}, "_resumed": False}

    def _load_previous_where(self) -> None:
        """Host/device of trials that ran under a previous driver, from its trials.parquet."""
        self._resumed = True
        path = self.store.local_dir / "trials.parquet"
        if path.exists():
            for r in pq.read_table(path, columns=["trial_id", "host", "device"]).to_pylist():
                self._where.setdefault(r["trial_id"], {"host": r["host"], "device": r["device"]})

    # --- Tune hooks ----------------------------------------------------------
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
        tid = trial.trial_id
        if tid not in self._records:
            self._records[tid] = {}
            path = self.epoch_file(tid)
            if path.exists():      # written before this driver started: resume
                rows = pq.read_table(path, partitioning=None).to_pylist()
                for rec in rows_to_records(rows, self._config(trial)):
                    self._records[tid][rec["epoch"]] = rec
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
            extra = {**self._provenance(), **self._where.get(trial.trial_id, {}),
                     "num_failures": int(getattr(trial, "num_failures", 0))}
            if records and records[-1].get(DECIDED_KEY):
                extra["regime"] = records[-1][DECIDED_KEY]    # the report relabels every trial later
            rows.append(results.trial_summary(cfg, records, self.study.name, trial.trial_id,
                                              trial_status(trial.status, records, cfg,
                                                           scheduled=self.study.scheduler is not None),
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
