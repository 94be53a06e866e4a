"""ParquetSink: the driver's side of the results path, a Ray Tune callback.

Each trial writes its own epoch rows (study/rows.py: TrialRows, TrialWriter).
`ParquetSink` is the driver's side, a Ray Tune callback. Per running trial
it keeps its newest record and the rows it reported after `ROWS_KEY`; a
trial that stops without writing them (a scheduler's stop, a final error,
Ctrl-C) has them written here, with rows missing before them from its
checkpoint. Reports without `ROWS_KEY` (a trainable given no store) are
written wholly here, through a TrialWriter per trial, with the same rules:
- a report starting at epoch e (a retry from its checkpoint) first drops the
  trial's rows >= e (buffered, or in files: parts from e on deleted, a file
  spanning e cut at e);
- a resumed driver (Tuner.restore) starts with empty memory: the first time it
  sees a trial it reads what the trial's partition holds; rows missing before
  a report's first epoch (lost with a killed driver's buffer, or set aside)
  come from the records saved with the trial's last checkpoint, which the
  trial resumed from: rows after that checkpoint are reported again by the
  trial itself;
- a trial that ends or fails is written out before Tune's next experiment
  snapshot, so a finished trial is never left with rows in memory only.
The sink writes where the study is now (a copied or moved study folder
resumes into itself: see storage.StudyStore); with a URI storage each write
uploads the one new file, and removed files are removed there too. A finished
trial's rows and records leave driver memory; only its trials.parquet row
stays.

`trials.parquet` (one row per trial, status + provenance) holds the trials the
sink knows: finished trials' rows are kept (as an Arrow table), running trials'
rows are made from their newest record. It is rewritten whole (a reader sees a
complete table) at most every `table_s` seconds, when due at a trial event or a
step of Tune's loop, and at the end of the experiment.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

from ray import tune

from regimes import results
from regimes.core.config import TrainConfig

from .rows import TrialRows  # noqa: F401  (re-exported: the trial's side of the results path)
from .rows import FLUSH_S, TrialWriter, _read_or_set_aside, partition, run_ended
from .spec import Study
from .storage import StudyStore
from .trainable import (DECIDED_KEY, ENDED_KEY, MEMBERS_KEY, PACK_COLUMN, RECORDS_FILE, RECORDS_KEY, ROWS_KEY,
                        member_id)

log = logging.getLogger(__name__)
_WHERE = ("host", "device", "torch_version", "cuda_device")   # trials row columns a report's trial_<key> sets
FIRST_S = 1.0      # a trial's first report in a driver is written at once if no other was in this long
TABLE_S = 1.0      # trials.parquet is rewritten at most this often (and at the end), and
TABLE_DUTY = 100.0  # ... at most once per this many times the last rewrite's duration


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


class ParquetSink(tune.Callback):
    """Keeps trials.parquet, and writes the rows trials did not write themselves (see the module
    doc): per running trial its newest record and unwritten rows, or a TrialWriter for a trial
    whose reports carry no ROWS_KEY.

    `flush_s`: how long a trial's rows may wait in memory; `table_s`: the least time
    between two rewrites of trials.parquet, and `table_duty`: the least multiple of the
    last rewrite's duration between two (0 and 0: one rewrite per trial event); `clock`:
    the time source in seconds (a benchmark's simulated time)."""

    def __init__(self, study: Study, store: StudyStore, flush_s: float = FLUSH_S, table_s: float = TABLE_S,
                 table_duty: float = TABLE_DUTY, clock=time.monotonic, first_s: float = FIRST_S):
        self.study = study
        self.store = store
        self.flush_s, self.table_s, self.table_duty, self.clock = flush_s, table_s, table_duty, clock
        self.first_s = first_s
        self._reset()

    def _reset(self) -> None:
        self._writers: dict[str, TrialWriter] = {}        # trial_id -> writer (running trials)
        self._reported: dict[str, _Reported] = {}         # trial_id -> running trial that writes its rows
        self._finished: dict[str, dict] = {}              # trial_id -> trials row, not yet in _table
        self._table = None                                # trials rows of finished trials (pyarrow)
        self._in_table: set[str] = set()                  # trial ids in _table
        self._ended: set[str] = set()                     # trials finish() took (a row or none)
        self._checked: set[str] = set()                   # trials whose partition was looked at
        self._where: dict[str, dict] = {}                 # trial_id -> host/device it last ran on
        self._versions: dict | None = None
        self._resumed = False
        self._failures: dict[str, int] = {}    # trial_id -> failures recorded by earlier drivers
        self._stepping = False                 # inside a step of Tune's event loop (see on_step_begin)
        self._looped = False                   # Tune's loop has run a step with this sink
        self._after_loop: set[str] = set()     # trials that ended after Tune's final snapshot
        self._ended_before: set[str] = set()   # Tune trials already ended when its loop began
        self._table_written: float | None = None    # clock of the last trials.parquet write
        self._first_event: float | None = None      # clock of the first trial event this driver saw
        self._table_cost = 0.0                      # seconds that write took
        self._row_schemas: dict = {}                # column names -> schema of trials rows built
        self._table_dirty = False                   # a trial started or ended since
        self._swept = -math.inf                # clock of the last look for rows due (on_step_end)
        self._first_written = -math.inf        # clock of the last first report written at once
        self._members: dict[str, list[tuple[str, TrainConfig]]] = {}   # packed trial -> (member id, config)
        self._configs: dict[str, TrainConfig] = {}                       # running trial -> its config

    _KEEP = ("study", "store", "flush_s", "table_s", "table_duty", "clock", "first_s")

    def __getstate__(self):        # Tune pickles callbacks with the run config: no rows in there
        return {k: self.__dict__[k] for k in self._KEEP if k in self.__dict__}

    def __setstate__(self, state):
        self.__dict__.update({"flush_s": FLUSH_S, "table_s": TABLE_S, "table_duty": TABLE_DUTY,
                              "clock": time.monotonic, "first_s": FIRST_S})
        self.__dict__.update({k: state[k] for k in self._KEEP if k in state})
        self._reset()

    def _load_previous_where(self) -> None:
        """Host/device and failure counts of trials that ran under a previous driver."""
        self._resumed = True
        path = self.store.local_dir / "trials.parquet"
        table = _read_or_set_aside(path)       # rebuilt from the trials' rows when damaged
        if table is not None:
            cols = [c for c in ("trial_id", *_WHERE, "num_failures") if c in table.column_names]
            for r in table.select(cols).to_pylist():
                self._where.setdefault(r["trial_id"], {k: r[k] for k in _WHERE if k in r})
                self._failures[r["trial_id"]] = int(r.get("num_failures") or 0)

    # --- Tune hooks ----------------------------------------------------------
    # Tune's loop ends with a final experiment snapshot, then stops the trials still running
    # (on Ctrl-C); results and completions handled then are newer than the snapshot, and a
    # resumed Tune will run those trials again from their last checkpoint. Such a trial is
    # recorded as `running`, as the resumed study will see it, not as finished.
    def on_step_begin(self, iteration, trials, **info):
        if not self._looped:       # ended under an earlier driver (restored finished)
            self._ended_before = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        self._stepping = self._looped = True

    def on_step_end(self, iteration, trials, **info):
        self._stepping = False
        now = self.clock()
        if now - self._swept >= 1.0:               # rows of trials that stopped reporting
            self._swept = now
            for w in self._writers.values():
                self._flush_if_due(w, now)
        self._maybe_write_trials(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._table_dirty = True
        self._maybe_write_trials(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if MEMBERS_KEY in result:
            self._pack_result(trial, result)
            self._maybe_write_trials(trials)
            return
        new = result.get(RECORDS_KEY)
        if new:
            self.report(trial.trial_id, self._unit_config(trial), new, saved=lambda: _checkpoint_records(trial),
                        where=result, written=result.get(ROWS_KEY))
        self._maybe_write_trials(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Tune calls this just before it marks the trial TERMINATED
        after_loop = self._looped and not self._stepping
        for uid, cfg in self._units(trial):
            if after_loop:
                self._after_loop.add(uid)
            if uid not in self._ended or uid == trial.trial_id:
                self.finish(uid, cfg, trial, "TERMINATED")
        self._maybe_write_trials(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        for uid, cfg in self._units(trial):
            if uid not in self._ended or uid == trial.trial_id:   # a pack's ended members stay as they ended
                self.finish(uid, cfg, trial, "ERROR")
        self._maybe_write_trials(trials)

    # --- packed trials: every member is a trial of its own ---------------------------------
    def _units(self, trial) -> list[tuple[str, TrainConfig]]:
        """(trial id, config) of what a Tune trial trains: itself, or each member of a pack."""
        if MEMBERS_KEY not in (trial.config or {}):
            return [(trial.trial_id, self._unit_config(trial))]
        if trial.trial_id not in self._members:
            self._members[trial.trial_id] = [(member_id(trial.trial_id, k), self.study.config(p))
                                             for k, p in enumerate(trial.config[MEMBERS_KEY])]
        return self._members[trial.trial_id]

    def _pack_result(self, trial, result) -> None:
        """A packed trial's report: each member's records under its own id; members that ended
        are finished (their rows merged, their trials row final) while the pack goes on."""
        units = self._units(trial)
        columns = {PACK_COLUMN: trial.trial_id}
        for entry in result[MEMBERS_KEY]:
            k = int(entry["member"])
            if entry.get(RECORDS_KEY):
                uid, cfg = units[k]
                self.report(uid, cfg, entry[RECORDS_KEY], saved=lambda k=k: _checkpoint_records(trial, k),
                            where=result, columns=columns, written=entry.get(ROWS_KEY))
        for k in sorted(int(k) for k in (result.get(ENDED_KEY) or {})):
            uid, cfg = units[k]
            if uid not in self._ended:
                self.finish(uid, cfg, trial, "TERMINATED", columns=columns)

    def on_experiment_end(self, trials, **info):
        """Also at Ctrl-C. Clean up after drivers that died before Tune's snapshot."""
        for w in self._writers.values():
            w.flush()
        for tid in list(self._reported):      # reported rows a stopped trial had not written yet
            if self._reported[tid].tail:
                self._complete(tid, self._reported[tid], merge=False)
        after_loop = len(self._after_loop)
        if self._looped:
            # At Ctrl-C Tune's cleanup marks every trial that holds an actor (running, or pending
            # with one starting) TERMINATED without calling on_trial_complete, after its final
            # snapshot (which has them RUNNING or PENDING): even one whose last epoch was reported
            # resumes from its checkpoint, so it is recorded as running.
            for t in trials:
                if t.status == "TERMINATED" and t.trial_id not in self._ended_before:
                    self._after_loop.update(uid for uid in _unit_ids(t) if uid not in self._ended)
        known = {t.trial_id for t in trials} | {uid for t in trials for uid in _unit_ids(t)}
        self._drop_orphans(known)
        if self.study.kind == "optuna":
            from .search import fail_stale_trials

            fail_stale_trials(self.study, self.store.journal_path, known)
        # the table as the last rewrite left it is final if no trial changed since and none runs
        if self._table_dirty or self._table_written is None or self._reported or self._writers \
                or len(self._after_loop) != after_loop or self.study.kind == "optuna":
            self._write_trials(trials)

    # --- per trial id (a Tune trial's id, or any id its reports are written under) -------------
    def report(self, trial_id: str, cfg: TrainConfig, records: list[dict], saved=None, where=None,
               columns: dict | None = None, written: int | None = None) -> None:
        """Records of one report for `trial_id`; `saved()` gives the records of its checkpoint;
        `columns`: constant columns of its rows and trials row (a member's pack_id);
        `written`: the epoch up to which the trial has written its rows itself (TrialRows), or
        None if it writes none (then this sink writes them all)."""
        if trial_id in self._ended:
            self._unfinish(trial_id)          # e.g. an errored trial run again
        if where and "trial_host" in where:
            self._where[trial_id] = {k: where[f"trial_{k}"] for k in _WHERE if f"trial_{k}" in where}
        if written is not None:
            self._writers.pop(trial_id, None)        # the files are the trial's: what a writer knew is stale
            r = self._reported.get(trial_id)
            if r is None:
                r = self._reported[trial_id] = _Reported(cfg, columns)
            r.take(records, written, saved)
            return
        w = self._writer(trial_id, cfg, saved, columns)
        now = self.clock()
        w.add(records, now, saved=saved)
        self._flush_if_due(w, now)

    def _flush_if_due(self, w: TrialWriter, now: float) -> None:
        """Write a trial's buffered rows once they are `flush_s` old; a trial's first report is
        written at once if no other first report was in the last `first_s` (a new trial shows
        up at once in a small study, and costs at most one extra file per `first_s` in a big one)."""
        first = now - self._first_written >= self.first_s
        if w.due(now, self.flush_s, first=first):
            if w.writes == 0:
                self._first_written = now
            w.flush()

    def finish(self, trial_id: str, cfg: TrainConfig, trial, tune_status: str, columns: dict | None = None) -> None:
        """The trial ended (`tune_status` TERMINATED or ERROR): rows out to data.parquet, its
        trials row kept, the writer and its rows dropped from memory."""
        if trial_id in self._ended:
            self._unfinish(trial_id)
        member = self._member_index(trial, trial_id)
        if member is not None:
            columns = {PACK_COLUMN: trial.trial_id}
        r = self._reported.pop(trial_id, None)
        if r is not None:      # the trial wrote its rows: what it did not write is written here
            if not r.complete:
                self._complete(trial_id, r)
            row = self._summary(trial_id, cfg, trial, r.last, tune_status, r.columns)
        else:
            w = self._writer(trial_id, cfg, lambda: _checkpoint_records(trial, member), columns)
            w.finish()
            row = self._summary(trial_id, cfg, trial, w.last, tune_status, w.columns)
            del self._writers[trial_id]
        self._configs.pop(trial_id, None)
        if row is not None:
            self._finished[trial_id] = row
        self._ended.add(trial_id)
        self._table_dirty = True

    def _complete(self, trial_id: str, r: "_Reported", merge: bool = True) -> None:
        """Write what a trial that writes its own rows reported but did not write (its rows
        after `written`): it was stopped by a scheduler, failed for good, or is being stopped
        at Ctrl-C; rows missing before them come from its checkpoint. `merge`: into
        data.parquet alone (the trial ended), else as the partition's next file."""
        if self.store.remote:
            self.store.sync_down(partition(trial_id))     # the trial wrote from its node
        w = TrialWriter(self.store.local_dir, trial_id, r.cfg, self.study.name, self.store, r.columns)
        if r.tail:
            w.add(r.tail, self.clock(), saved=r.saved)
        elif w.epochs_done == 0 and r.saved is not None:
            back = r.saved()
            if back:
                w.add(back, self.clock())
        r.tail, r.written = [], max(r.written, w.epochs_done)
        w.finish() if merge else w.flush()

    def _unit_config(self, trial) -> TrainConfig:
        r = self._reported.get(trial.trial_id)
        if r is not None:
            return r.cfg
        w = self._writers.get(trial.trial_id)
        return w.cfg if w is not None else self._config(trial)      # building one costs ~1 ms

    def epoch_file(self, trial_id: str) -> Path:
        return results.trial_folder(self.store.local_dir, trial_id) / results.DATA_FILE

    def _config(self, trial) -> TrainConfig:
        """The trial's TrainConfig (building one costs ~1 ms: kept until the trial ends)."""
        cfg = self._configs.get(trial.trial_id)
        if cfg is None:
            cfg = self._configs[trial.trial_id] = self.study.config(trial.config)
        return cfg

    def _member_index(self, trial, trial_id: str) -> int | None:
        """k if `trial_id` is member k of the packed `trial`, else None."""
        if trial is None or trial_id == trial.trial_id or MEMBERS_KEY not in (trial.config or {}):
            return None
        return int(trial_id.rsplit("_m", 1)[1])

    def _writer(self, trial_id: str, cfg: TrainConfig, saved=None, columns: dict | None = None) -> TrialWriter:
        """The trial's writer, created (from what its partition holds) the first time. A trial
        with no rows on disk gets them back from its checkpoint's records, if any."""
        w = self._writers.get(trial_id)
        if w is None or w.peek:
            if self.store.remote:      # a trial may have written it from another node
                self.store.sync_down(partition(trial_id))
            w = self._writers[trial_id] = TrialWriter(self.store.local_dir, trial_id, cfg, self.study.name,
                                                      self.store, columns)
            self._checked.add(trial_id)
            if w.epochs_done == 0 and saved is not None:
                back = saved()
                if back:
                    log.warning("rebuilding the rows of trial %s (epochs 1-%d) from its checkpoint",
                                trial_id, back[-1]["epoch"])
                    w.add(back, self.clock())      # written with the report (or finish) that follows
        return w

    def _unfinish(self, trial_id: str) -> None:
        import pyarrow.compute as pc

        self._ended.discard(trial_id)
        self._finished.pop(trial_id, None)
        if trial_id in self._in_table:
            self._in_table.discard(trial_id)
            self._table = self._table.filter(pc.not_equal(self._table.column("trial_id"), trial_id))

    # --- trials.parquet ------------------------------------------------------------------
    def _summary(self, trial_id: str, cfg: TrainConfig, trial, last: dict | None, tune_status: str,
                 columns: dict | None = None) -> dict | None:
        if last is None and tune_status not in ("ERROR", "RUNNING"):
            return None            # pending (or ended without a record): nothing to say yet
        if not self._resumed:
            self._load_previous_where()
        records = [last] if last is not None else []
        # Tune's count can restart at 0 when an errored trial is resumed: keep the larger
        failures = max(int(getattr(trial, "num_failures", 0)), self._failures.get(trial_id, 0))
        extra = {**(columns or {}), **self._provenance(), **self._where.get(trial_id, {}), "num_failures": failures}
        if last is not None and last.get(DECIDED_KEY):
            extra["regime"] = last[DECIDED_KEY]    # the report relabels every trial later
        status = trial_status(tune_status, records, cfg, scheduled=self.study.scheduler is not None)
        if trial_id in self._after_loop and status != "errored":
            status = "running"
        # torch and the GPU are the trial's (its reports), not this driver's: no torch here
        return results.trial_summary(cfg, records, self.study.name, trial_id, status, extra=extra, torch=False)

    def _maybe_write_trials(self, trials) -> None:
        """Rewrite trials.parquet if a trial started or ended since the last rewrite and that
        was at least `table_s` ago and `table_duty` times as long ago as the rewrite took."""
        if not self._table_dirty:
            return
        now = self.clock()
        if self._first_event is None:
            self._first_event = now
        last = self._first_event if self._table_written is None else self._table_written
        if now - last >= max(self.table_s, self.table_duty * self._table_cost):   # a driver's first
            self._write_trials(trials)                                           # events wait too

    def _write_trials(self, trials) -> None:
        import pyarrow as pa

        started, finishing = time.perf_counter(), 0.0

        def finish(*args) -> None:      # trials' files finished on the way: not the table's cost
            nonlocal finishing
            t0 = time.perf_counter()
            self.finish(*args)
            finishing += time.perf_counter() - t0

        if not self._resumed:
            self._load_previous_where()
        running = []
        for trial in trials:
            packed = MEMBERS_KEY in (trial.config or {})
            if not packed and trial.trial_id in self._ended:
                continue
            for tid, cfg in self._units(trial):
                if tid in self._ended:
                    continue
                columns = {PACK_COLUMN: trial.trial_id} if packed else None
                r = self._reported.get(tid)
                if r is not None:
                    if packed and r.ended():       # a member that ended while its pack goes on
                        finish(tid, cfg, trial, "TERMINATED")
                        continue
                    row = self._summary(tid, r.cfg, trial, r.last, trial.status, r.columns)
                    if row is not None:
                        running.append(row)
                    continue
                if tid not in self._writers:
                    if tid in self._checked and trial.status not in ("ERROR", "RUNNING", "TERMINATED"):
                        continue
                    self._checked.add(tid)
                    if trial.status in ("TERMINATED", "ERROR"):
                        # ended under an earlier driver: its rows are on disk (or in its checkpoint)
                        finish(tid, cfg, trial, trial.status)
                        continue
                    # its newest row, for its trials row: only a look, as its trial may be writing
                    w = TrialWriter(self.store.local_dir, tid, cfg, self.study.name, self.store, columns, peek=True)
                    if w.last is None and trial.status != "RUNNING":
                        continue       # pending, nothing on disk
                    self._writers[tid] = w
                w = self._writers[tid]
                # a member that ended while its pack goes on: its final row, from a look only (the
                # pack's worker may be merging its files); the pack's next report finishes it
                status = "TERMINATED" if packed and w.ended() else trial.status
                row = self._summary(tid, w.cfg, trial, w.last, status, w.columns)
                if row is not None:
                    running.append(row)
        if self._finished:
            rows = list(self._finished.values())
            _harmonise(rows)
            new = self._rows_table(rows)
            self._table = new if self._table is None else pa.concat_tables([self._table, new],
                                                                           promote_options="permissive")
            self._in_table.update(self._finished)
            self._finished = {}
        parts = [t for t in (self._table,) if t is not None]
        if running:
            _harmonise(running)
            parts.append(self._rows_table(running))
        self._table_written, self._table_dirty = self.clock(), False
        if not parts:
            return
        table = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
        ids = table.column("trial_id").to_pylist()
        if any(a > b for a, b in zip(ids, ids[1:])):       # sorting ~125 columns costs a millisecond
            table = table.sort_by("trial_id")
        results.atomic_write(table, self.store.local_dir / "trials.parquet", **results.FAST_WRITE)
        self.store.push("trials.parquet")
        if self.study.kind == "optuna":
            self.store.push("optuna.journal")
        self._table_cost = time.perf_counter() - started - finishing    # what the duty rule paces

    def _rows_table(self, rows: list[dict]):
        """trials rows as a table, typed like the last rows with the same columns: a table of
        ~125 columns built by inference costs ~3 ms, with a known schema half that."""
        import pyarrow as pa

        names = tuple(rows[0])
        schema = self._row_schemas.get(names)
        if schema is not None:
            try:
                return pa.Table.from_pydict({n: [r[n] for r in rows] for n in schema.names}, schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
                pass                  # a value of another type than before: inferred again
        table = results.table(rows)
        if len(self._row_schemas) < 8:
            self._row_schemas[names] = table.schema
        return table

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
                self._writers.pop(tid, None)

    def _provenance(self) -> dict:
        if self._versions is None:
            import optuna
            import ray

            self._versions = {"ray_version": ray.__version__, "optuna_version": optuna.__version__}
        return self._versions


class _Reported:
    """What the driver keeps of a running trial that writes its own rows: its newest record,
    and the rows it reported after `written` (the epoch its files reach), which only a trial
    that stops without writing them leaves to the driver (see TrialRows)."""

    __slots__ = ("cfg", "columns", "last", "tail", "written", "saved")

    def __init__(self, cfg: TrainConfig, columns: dict | None):
        self.cfg, self.columns = cfg, dict(columns or {})
        self.last: dict | None = None
        self.tail: list[dict] = []
        self.written = 0
        self.saved = None

    def take(self, records: list[dict], written: int, saved) -> None:
        first = records[0]["epoch"]      # a retry reports again from its checkpoint on
        self.tail = [x for x in self.tail if x["epoch"] < first] + list(records)
        self.tail = [x for x in self.tail if x["epoch"] > written]
        self.written, self.last, self.saved = written, records[-1], saved

    def ended(self) -> bool:
        return run_ended(self.last, self.cfg)

    @property
    def complete(self) -> bool:
        """The trial ended and merged its rows itself (TrialRows.end before its last report)."""
        return self.ended() and not self.tail and self.written >= self.last["epoch"]


def _unit_ids(trial) -> list[str]:
    """The trial ids a Tune trial's rows are written under: its own, or its pack's members'."""
    members = (trial.config or {}).get(MEMBERS_KEY)
    return [trial.trial_id] if members is None else [member_id(trial.trial_id, k) for k in range(len(members))]


def _harmonise(rows: list[dict]) -> None:
    """Give every trials row the same columns (a trial without records has no final_*)."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    for r in rows:
        for k in keys:
            if k not in r:
                r[k] = None


def _checkpoint_records(trial, member: int | None = None) -> list[dict]:
    """The epoch records saved with the trial's latest checkpoint ([] if none); of member
    `member` for a packed trial (its checkpoint holds one list per member)."""
    ckpt = getattr(trial, "checkpoint", None)
    if ckpt is None:
        return []
    try:
        with ckpt.filesystem.open_input_stream(f"{ckpt.path}/{RECORDS_FILE}") as f:
            data = json.loads(f.read())
        return data[member] if member is not None else data
    except (OSError, ValueError, IndexError, TypeError):
        return []
