"""A trial's epoch rows in its partition: written by the trial itself (TrialRows), or by the
driver's sink (study/sink.py) for what a trial could not write.

`TrialWriter` appends one trial's epoch records to its partition
`epochs/trial_id=<id>/` (regimes.results): rows are kept in memory until the
trial's first unwritten row is `flush_s` old, then written as one new file
`part-<first>-<last>.parquet`; once the parts hold as many rows as the trial's
`data.parquet`, they are merged into it (rows written a constant number of
times on average; the parts' tables are still in memory, so a merge reads
back at most data.parquet), and a trial that ends is merged into
`data.parquet` alone. Every write is a new file renamed into place, so the
cost per row does not grow with the epochs or trials already written; what it
costs is the number of files (a Parquet file of ~115 columns costs
milliseconds whatever its rows), so a writer writes as few as it can. A writer
that opens a partition sets unreadable files aside as `.<name>.damaged`
(removed from a URI storage too), merges files that overlap (left by a process
killed mid-merge) and drops rows after a gap, so a partition holds epochs 1..m.

`TrialRows` is the trial's side (made by the trainable, in the worker, for
each attempt): it drops the rows after the checkpoint the attempt starts from,
writes back rows before it that the partition lacks (from the records saved
with that checkpoint), writes each report's rows before the report (the first
at once, later ones by age) and merges them into data.parquet before the last
report. Each report says up to which epoch the rows are in files
(`trainable.ROWS_KEY`).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pyarrow.parquet as pq

from regimes import results
from regimes.core.config import TrainConfig

from .storage import StudyStore

log = logging.getLogger(__name__)
DECIDED_KEY = "decided_regime"   # in records: the label an early-stopped trial stopped with
_ROW_ONLY = ("study", "schema_version", "trial_id", "pack_id")
FLUSH_S = 30.0     # a running trial's rows wait in memory at most this long (then one file)
SMALL_BASE = 64    # a data.parquet of up to this many rows written by this writer stays in memory


def run_ended(record: dict | None, cfg: TrainConfig) -> bool:
    """`record` is its run's last: diverged, decided (early stop) or the last epoch."""
    return record is not None and bool(record.get("diverged") or record.get(DECIDED_KEY)
                                       or record["epoch"] >= cfg.epochs)


def partition(trial_id: str) -> str:
    """A trial's partition folder, relative to the study folder (a StudyStore path)."""
    return f"epochs/trial_id={trial_id}"


def rows_to_records(rows: list[dict], cfg: TrainConfig) -> list[dict]:
    """Invert results.epoch_rows: drop study/config columns, keep the measures."""
    config_cols = set()
    for k in cfg.to_dict():
        config_cols.add(f"cfg_{k}" if rows and f"cfg_{k}" in rows[0] else k)
    return [{k: v for k, v in r.items() if k not in config_cols and k not in _ROW_ONLY} for r in rows]


class TrialWriter:
    """One trial's epoch rows, appended to its partition `epochs/trial_id=<trial_id>/`.

    Keyed by a plain trial id and the trial's TrainConfig, not by a Tune trial: the
    caller decides which id a report's records belong to. State in memory: the
    unwritten rows, the last record and, per file on disk, its epoch range and row
    count. `root` is the local study folder; `store` (optional) mirrors each change.
    """

    def __init__(self, root: Path, trial_id: str, cfg: TrainConfig, study: str, store: StudyStore | None = None,
                 columns: dict | None = None, peek: bool = False):
        self.root, self.trial_id, self.cfg, self.study, self.store = Path(root), trial_id, cfg, study, store
        self.peek = peek       # only look (a partition its running trial writes): change nothing, write nothing
        self.columns = dict(columns or {})        # constant columns of every row (a member's pack_id)
        self.folder = results.trial_folder(root, trial_id)
        self.files: dict[str, tuple[int, int, int]] = {}     # name -> (first, last, rows)
        self.buffer: list[dict] = []                          # records not written yet, by epoch
        self.since: float | None = None                       # clock when buffer[0] arrived
        self.last: dict | None = None                         # the trial's newest record
        self.writes = 0                                       # files written by this writer
        # tables of files this writer wrote, so that a merge reads nothing back: the parts
        # (together never more rows than data.parquet) and data.parquet while it is small
        self._cache: dict = {}
        self._tables: results.EpochTables | None = None
        self._load()

    # --- what is there -------------------------------------------------------------------
    @property
    def epochs_done(self) -> int:
        """Newest epoch held (written or buffered); 0 for none."""
        if self.buffer:
            return self.buffer[-1]["epoch"]
        return max((f[1] for f in self.files.values()), default=0)

    @property
    def written(self) -> int:
        """Newest epoch up to which every row is in a file (0 for none)."""
        if self.buffer:
            return self.buffer[0]["epoch"] - 1
        return max((f[1] for f in self.files.values()), default=0)

    def _load(self) -> None:
        """Read the partition's file list (and the newest row). Unreadable files are set
        aside; files that overlap, or rows after a gap, are merged or dropped so that the
        partition holds epochs from its first on with each epoch once."""
        try:
            names = sorted(n for n in os.listdir(self.folder) if n.endswith(".parquet"))
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in names:
            path = self.folder / name
            if name != results.DATA_FILE and results.part_range(name) is None:
                continue                          # not ours (readers would still see it)
            if self.peek:
                try:
                    table = pq.read_table(path, partitioning=None, columns=["epoch"])
                except (OSError, ValueError):      # damaged or gone: its trial's writer sees to it
                    continue
            else:
                table = _read_or_set_aside(path, columns=["epoch"])
            if table is None and self.store is not None:
                self.store.delete(self._rel(name))      # set aside: the bucket's copy is as damaged
            if table is None or table.num_rows == 0:
                continue
            epochs = table.column("epoch").to_pylist()
            self.files[name] = (min(epochs), max(epochs), len(epochs))
        ordered = sorted(self.files.items(), key=lambda kv: kv[1][0])
        expected = 1                          # epochs count from 1: rows after a gap are of no use
        for i, (name, (first, last, n)) in enumerate(ordered):
            if n != last - first + 1 or first != expected:
                if self.peek:
                    break
                log.warning("rows of trial %s overlap or have a gap at epoch %d: merging its files",
                            self.trial_id, min(first, expected))
                self._merge(repair=True)
                break
            expected = last + 1
        self.last = self._newest_record()

    def _newest_record(self) -> dict | None:
        if not self.files:
            return None
        newest = max(self.files, key=lambda k: self.files[k][1])
        try:
            table = self._read(newest)
        except (OSError, ValueError):
            if not self.peek:
                raise
            return None                     # replaced under a peek by the trial writing it
        return rows_to_records(table.slice(table.num_rows - 1).to_pylist(), self.cfg)[-1]

    # --- reports -------------------------------------------------------------------------
    def add(self, records: list[dict], now: float, saved=None) -> None:
        """Take one report's records (epochs in order). Rows at or after its first epoch are
        dropped first (a retry re-reports from its checkpoint on); rows missing before it
        come from `saved()`, the records of the checkpoint the trial resumed from."""
        if not records:
            return
        first = records[0]["epoch"]
        if first <= self.epochs_done:
            self.drop_from(first)
        done = self.epochs_done
        if first > done + 1 and saved is not None:
            missing = [r for r in saved() if done < r["epoch"] < first]
            if missing:
                log.warning("rebuilding rows of trial %s (epochs %d-%d) from its checkpoint",
                            self.trial_id, missing[0]["epoch"], missing[-1]["epoch"])
            records = missing + list(records)
        if not self.buffer:
            self.since = now
        self.buffer.extend(records)
        self.last = records[-1]

    def due(self, now: float, flush_s: float, first: bool = False) -> bool:
        """Unwritten rows that should be written now: `flush_s` old, or (`first`) the trial's
        first in this driver."""
        return bool(self.buffer) and ((first and self.writes == 0) or now - self.since >= flush_s)

    def flush(self) -> None:
        """Write the buffered rows: as a new part file, or merged into data.parquet once the
        parts would hold as many rows as it does."""
        if not self.buffer:
            return
        base = self.files.get(results.DATA_FILE, (0, 0, 0))[2]
        tail = sum(f[2] for n, f in self.files.items() if n != results.DATA_FILE)
        if base == 0 or tail + len(self.buffer) >= base:
            self._merge()
            return
        first, last = self.buffer[0]["epoch"], self.buffer[-1]["epoch"]
        name = results.part_name(first, last)
        self._write(name, self._table(self.buffer))
        self.files[name] = (first, last, len(self.buffer))
        self.buffer, self.since = [], None

    def finish(self) -> None:
        """The trial ended: everything into data.parquet alone."""
        if self.buffer or any(n != results.DATA_FILE for n in self.files):
            self._merge()

    # --- files ---------------------------------------------------------------------------
    def _table(self, records: list[dict]):
        if self._tables is None:
            self._tables = results.EpochTables(self.cfg, self.study, self.columns)
        return self._tables(records)

    def ended(self) -> bool:
        """The newest record is the run's last (run_ended)."""
        return run_ended(self.last, self.cfg)

    def _rel(self, name: str) -> str:
        return f"{partition(self.trial_id)}/{name}"

    def _write(self, name: str, table) -> None:
        results.atomic_write(table, self.folder / name, **results.write_options(table.num_rows))
        self.writes += 1
        if name != results.DATA_FILE or table.num_rows <= SMALL_BASE:
            self._cache[name] = table
        else:
            self._cache.pop(name, None)
        if self.store is not None:
            self.store.push(self._rel(name))

    def _remove(self, name: str) -> None:
        self.files.pop(name, None)
        self._cache.pop(name, None)
        try:
            os.unlink(self.folder / name)
        except FileNotFoundError:
            pass
        if self.store is not None:
            self.store.delete(self._rel(name))

    def _read(self, name: str):
        if name in self._cache:
            return self._cache[name]
        return pq.ParquetFile(self.folder / name).read()

    def _merge(self, repair: bool = False) -> None:
        """data.parquet := every file's rows + the buffer, each epoch once (the newest file's
        copy wins); then the parts go. data.parquet is renamed in before the parts are
        removed: a driver killed between the two leaves overlapping files, which the next
        driver merges again (repair)."""
        import pyarrow as pa

        if repair:
            self._cache.clear()
        ordered = sorted(self.files, key=lambda n: (n != results.DATA_FILE, self.files[n][0]))
        tables = [self._read(n) for n in ordered]
        if self.buffer:
            tables.append(self._table(self.buffer))
        if not tables:
            return
        merged = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        epochs = merged.column("epoch").to_pylist()
        if repair and (epochs[0] != 1 or any(b != a + 1 for a, b in zip(epochs, epochs[1:]))):
            newest = {e: i for i, e in enumerate(epochs)}            # each epoch's last copy
            kept = sorted(newest)
            j = 0
            while j < len(kept) and kept[j] == j + 1:               # the run of epochs from 1 on
                j += 1
            if j < len(kept):
                log.warning("trial %s has no rows for epochs %d-%d: its rows after them are dropped "
                            "(the trial reports them again, or its checkpoint holds them)",
                            self.trial_id, j + 1, kept[j] - 1)
            merged = merged.take(pa.array([newest[e] for e in kept[:j]], pa.int64()))
        if merged.num_rows == 0:
            for name in list(self.files):
                self._remove(name)
            self.buffer, self.since = [], None
            return
        old = [n for n in self.files if n != results.DATA_FILE]
        epochs = merged.column("epoch")
        self._write(results.DATA_FILE, merged)
        self.files = {results.DATA_FILE: (epochs[0].as_py(), epochs[-1].as_py(), merged.num_rows)}
        for name in old:
            self._remove(name)
        self.buffer, self.since = [], None

    def drop_from(self, epoch: int) -> None:
        """Forget every row at or after `epoch`: buffered, and in files (a part from `epoch`
        on is deleted, a file spanning it is rewritten without those rows)."""
        import pyarrow.compute as pc

        self.buffer = [r for r in self.buffer if r["epoch"] < epoch]
        if not self.buffer:
            self.since = None
        for name, (first, last, _) in sorted(self.files.items(), key=lambda kv: -kv[1][0]):
            if first >= epoch:
                self._remove(name)
            elif last >= epoch:
                table = self._read(name)
                cut = table.filter(pc.less(table.column("epoch"), epoch))
                keep = name if name == results.DATA_FILE else results.part_name(first, epoch - 1)
                self._write(keep, cut)
                self.files[keep] = (first, epoch - 1, cut.num_rows)
                if keep != name:
                    self._remove(name)
        self.last = self.buffer[-1] if self.buffer else self._newest_record()


class TrialRows:
    """The trial's side of the results path: a trial (its worker process) writes its own rows.

    One per attempt of a trial (or of a pack's member), made when the attempt starts from
    the checkpoint it was restored from (`restored` = that checkpoint's epoch, 0 for none;
    `history` = the records saved with it): rows after `restored` are dropped from the
    partition (this attempt trains those epochs again), unless they hold the run's end (a
    pack's member that ended after the pack's last checkpoint: the retry's reports of
    those epochs replace them as they come, and a retry that fails first leaves the
    member whole); rows up to it that the partition lacks (lost with a killed attempt's
    buffer, a damaged file set aside) are written back from `history`. Then `add` takes
    each report's records: the attempt's first report's rows are written at once (if it
    wrote back none), later rows once `flush_s` old, and the run's end (its last epoch,
    divergence, a decided regime) merges everything into data.parquet before the trial's
    last report. Each report tells the driver `written`, the epoch up to which the rows
    are in files; the driver's ParquetSink keeps the rows after it and writes them only
    if the trial stops without writing them (a scheduler's stop, a final error, Ctrl-C).
    With a URI storage the partition is first brought down from the bucket (the trial may
    run on another node than its previous attempt) and each new file goes up.
    """

    def __init__(self, store: StudyStore, study: str, trial_id: str, cfg: TrainConfig, restored: int = 0,
                 history: list[dict] | None = None, columns: dict | None = None, flush_s: float = FLUSH_S,
                 clock=time.monotonic):
        self.flush_s, self.clock = flush_s, clock
        self.reports = 0                 # reports of this attempt so far
        if store.remote:
            store.sync_down(partition(trial_id))
        self.writer = w = TrialWriter(store.local_dir, trial_id, cfg, study, store, columns)
        if w.epochs_done > restored and not w.ended():
            w.drop_from(restored + 1)
        done = w.epochs_done
        missing = [r for r in history or () if done < r["epoch"] <= restored]
        if missing:
            w.add(missing, clock())
            w.flush()

    @property
    def written(self) -> int:
        return self.writer.written

    def add(self, records: list[dict], end: bool = False) -> int:
        """One epoch's (or report's) records; `end`: the run ended with them, so everything is
        merged into data.parquet now (before the trial's last report). Returns `written`."""
        w, now = self.writer, self.clock()
        w.add(records, now)
        self.reports += 1
        if end:
            w.finish()
        elif (self.reports == 1 and w.writes == 0) or w.due(now, self.flush_s):
            w.flush()
        return w.written


def _read_or_set_aside(path: Path, columns=None):
    """The Parquet table at `path`; None if there is none. A file that cannot be read (cut
    short by a crash, truncated by hand) is moved out of every reader's way to
    `.<name>.damaged` (hidden, no `.parquet` suffix) and None is returned, so it gets rebuilt."""
    import pyarrow as pa

    if not path.exists():
        return None
    try:
        return pq.read_table(path, partitioning=None, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        aside = path.with_name(f".{path.name}.damaged")
        os.replace(path, aside)
        log.warning("%s is damaged (%s); set aside as %s and rebuilt", path, e, aside.name)
        return None
