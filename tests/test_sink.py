"""The results path against an independent oracle, without Ray.

A scripted trial (its own record history, checkpoints at report boundaries, retries from
its latest checkpoint, driver kills, scheduler stops, damaged files) is fed through the
sink's Tune hooks as Tune calls them. Two ways rows reach the files, both checked: the
trial writes its own rows (`TrialRows`, one per attempt, as the real trainable does; a
report says how far they are written) and the driver writes what is left; or the driver
writes every row (reports without that count). The oracle is the trial's own lineage of
records: after every hook the epochs dataset, read as any reader reads it, holds epochs
1..m each once with the values the oracle holds for them; once the trial has ended it
holds exactly the oracle's records. With a URI storage (a file:// bucket) every hook
pushes only the files it wrote, deletes remotely what it removed, and the bucket mirrors
the staging folder.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from regimes import results
from regimes.study import spec
from regimes.study import sink as sink_module
from regimes.study.sink import ParquetSink, TrialRows
from regimes.study.storage import StudyStore
from regimes.study.trainable import RECORDS_FILE, ROWS_KEY

EPOCHS = 12
BASE = {"dataset": "digits", "model": "convnet_si", "width": 4, "batch_size": 32, "augment": False,
        "epochs": EPOCHS, "device": "cpu"}


def _study(name="s"):
    return spec.from_dict({"name": name, "base": BASE, "search": {"kind": "grid", "space": {"seed": [0, 1]}}})


class Trial:
    """A Tune trial as the sink sees it, with the records its attempts produce."""

    def __init__(self, tid: str, ckpt_root: Path, seed: int = 0):
        self.trial_id, self.config, self.status, self.num_failures = tid, {"seed": seed}, "PENDING", 0
        self.checkpoint = None
        self.history: list[dict] = []       # the lineage of records: what the rows must be in the end
        self.attempt = 0
        self.rows: TrialRows | None = None      # this attempt's own writer (trial-written mode)
        self.restored: list[dict] = []          # the records of the checkpoint this attempt started from
        self.stopped = False                    # stopped by a scheduler before its last epoch
        self._root = ckpt_root / tid

    def records(self, n: int) -> list[dict]:
        """The next n epochs of the current attempt (values tell attempts apart)."""
        out = []
        for _ in range(n):
            e = len(self.history) + 1
            if e > EPOCHS:
                break
            out.append({"epoch": e, "step": 10 * e, "train_loss": 1.0 / e + self.attempt,
                        "test_acc": 0.01 * e + 0.1 * self.attempt, "time_s": 0.5 * e, "diverged": False,
                        "num_classes": 10})
            self.history.append(out[-1])
        return out

    def save_checkpoint(self) -> None:
        d = self._root / f"checkpoint_{len(self.history):06d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / RECORDS_FILE).write_text(json.dumps(self.history))
        self.checkpoint = SimpleNamespace(filesystem=pafs.LocalFileSystem(), path=str(d))

    def restore(self) -> None:
        """A retry (or a resumed driver): back to the latest checkpoint, a new attempt."""
        self.attempt += 1
        self.rows = None                    # the attempt's process died, and its buffer with it
        if self.checkpoint is None:
            self.history = []
        else:
            self.history = json.loads((Path(self.checkpoint.path) / RECORDS_FILE).read_text())
        self.restored = list(self.history)

    @property
    def done(self) -> bool:
        return len(self.history) >= EPOCHS

    def payload(self, recs: list[dict], store: StudyStore | None, now) -> dict:
        """A report's result; with `store`, the attempt writes its rows first (as run_trial)."""
        if store is None:
            return {"records": recs}
        if self.rows is None:        # the attempt's process starts, from its checkpoint
            self.rows = TrialRows(store, "s", self.trial_id, _study().config(self.config), len(self.restored),
                                  self.restored, flush_s=self.flush_s, clock=lambda: now[0])
        return {"records": recs, ROWS_KEY: self.rows.add(recs, end=self.done)}


class Driver:
    """A sink plus a simulated clock; `kill()` drops it without any end hook (SIGKILL)."""

    def __init__(self, study, store, flush_s, now):
        self.now = now
        self.sink = ParquetSink(study, store, flush_s=flush_s, table_s=1.0, table_duty=0,
                                clock=lambda: self.now[0])

    def step(self, hook, trials, *args):
        self.sink.on_step_begin(0, trials)
        hook(0, trials, *args)
        self.sink.on_step_end(0, trials)


def dataset_rows(root: Path, tid: str) -> list[tuple]:
    folder = root / "epochs" / f"trial_id={tid}"
    if not folder.exists() or not any(folder.glob("*.parquet")):
        return []
    t = ds.dataset(folder, format="parquet").to_table(columns=["epoch", "train_loss", "test_acc"])
    return sorted((r["epoch"], r["train_loss"], r["test_acc"]) for r in t.to_pylist())


def oracle(trial: Trial) -> list[tuple]:
    return [(r["epoch"], r["train_loss"], r["test_acc"]) for r in trial.history]


def assert_consistent(root: Path, trial: Trial, final: bool = False):
    got = dataset_rows(root, trial.trial_id)
    want = oracle(trial)
    assert [g[0] for g in got] == list(range(1, len(got) + 1)), got          # each epoch once, no gap
    if final:
        assert got == want
    else:    # rows may still wait in memory; rows after a retry's checkpoint wait to be replaced
        assert [g for g in got if g[0] <= len(want)] == want[:len(got)]


def run_script(tmp_path, store, rng: random.Random, flush_s: float, trials_n: int = 2, check=None,
               trial_writes: bool = False):
    """Random runs of `trials_n` trials with retries, driver kills, scheduler stops and damaged
    files; `trial_writes`: the trials write their own rows (TrialRows), else the driver does."""
    study = _study()
    root = store.local_dir
    now = [0.0]
    trials = [Trial(f"s_{i:05d}", tmp_path / "ckpt", seed=i) for i in range(trials_n)]
    for t in trials:
        t.flush_s = flush_s
    own = store if trial_writes else None
    drv = Driver(study, store, flush_s, now)
    live = list(trials)
    damaged: set[str] = set()       # trials with a damaged file no writer has looked at yet
    while live:
        t = rng.choice(live)
        if t.status == "PENDING":
            t.status = "RUNNING"
            drv.step(drv.sink.on_trial_start, trials, t)
            check and check()
            continue
        now[0] += rng.choice([0.3, 1.0, 4.0])
        event = rng.random()
        if event < 0.03 and t.history:                       # a scheduler stops it after a report
            t.status, t.stopped = "TERMINATED", True
            drv.step(drv.sink.on_trial_complete, trials, t)
            check and check()
            live.remove(t)
            continue
        if event < 0.08:                                     # the trial's node died: Tune retries it
            t.status, t.num_failures = "ERROR", t.num_failures + 1
            drv.step(drv.sink.on_trial_error, trials, t)
            check and check()
            t.restore()
            t.status = "RUNNING"
        elif event < 0.14:                                   # the driver is killed (no end hook)
            drv = Driver(study, store, flush_s, now)
            for x in trials:
                if x.status == "RUNNING":
                    x.restore()                              # Tune restores every live trial
            if rng.random() < 0.5:                           # ... and a file of the study is damaged
                files = sorted(p for x in live for p in root.glob(f"epochs/trial_id={x.trial_id}/*.parquet"))
                if files:
                    victim = rng.choice(files)
                    damaged.add(victim.parent.name.split("=", 1)[1])
                    victim.write_bytes(victim.read_bytes()[: rng.randrange(0, 60)])
                    if store.remote:       # the bucket's copy too (the staging copy came from it)
                        _remote_file(store, victim).write_bytes(victim.read_bytes())
                    check and check(resync=True)
            continue
        recs = t.records(rng.choice([1, 1, 2, 3]))
        if rng.random() < 0.4 or t.done:
            t.save_checkpoint()                              # checkpoints at report boundaries
        drv.step(drv.sink.on_trial_result, trials, t, t.payload(recs, own, now))
        damaged.discard(t.trial_id)
        check and check()
        for x in trials:
            if x.trial_id not in damaged:
                assert_consistent(root, x)
        if t.done:
            t.status = "TERMINATED"
            drv.step(drv.sink.on_trial_complete, trials, t)
            check and check()
            live.remove(t)
    drv.sink.on_experiment_end(trials)
    check and check()
    for t in trials:
        assert_consistent(root, t, final=True)
        assert [p.name for p in (root / "epochs" / f"trial_id={t.trial_id}").glob("*.parquet")] == \
            ["data.parquet"]                                 # a finished trial: one file
    table = {r["trial_id"]: r for r in pq.read_table(root / "trials.parquet").to_pylist()}
    assert set(table) == {t.trial_id for t in trials}
    for t in trials:     # without a scheduler in the spec, a stopped trial is one to resume
        r = table[t.trial_id]
        assert (r["status"], r["epochs_done"]) == (("running", len(t.history)) if t.stopped else ("completed", EPOCHS))
    for t in trials:
        assert table[t.trial_id]["final_test_acc"] == t.history[-1]["test_acc"]
    return trials


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("flush_s", [0.0, 3.0, 1e9], ids=["every-report", "buffered", "until-end"])
@pytest.mark.parametrize("trial_writes", [True, False], ids=["trial-writes", "driver-writes"])
def test_random_retries_kills_and_damage_leave_exactly_the_latest_attempts_rows(tmp_path, seed, flush_s,
                                                                               trial_writes):
    store = StudyStore(str(tmp_path / "res"), "s")
    run_script(tmp_path, store, random.Random(seed), flush_s, trial_writes=trial_writes)


def test_a_retry_from_a_checkpoint_replaces_rows_in_parts_and_data_file(tmp_path):
    """Scripted: rows in data.parquet and part files, a retry from epoch 3 (inside data.parquet)."""
    store = StudyStore(str(tmp_path / "res"), "s")
    now = [0.0]
    drv = Driver(_study(), store, flush_s=0.0, now=now)
    t = Trial("s_00000", tmp_path / "ckpt")
    t.status = "RUNNING"
    drv.step(drv.sink.on_trial_start, [t], t)
    for n in (1, 1, 1, 2, 1, 1):       # data.parquet, then parts (and merges)
        recs = t.records(n)
        if recs[-1]["epoch"] == 3:
            t.save_checkpoint()
        drv.step(drv.sink.on_trial_result, [t], t, {"records": recs})
    assert len(t.history) == 7
    t.restore()                         # back to epoch 3
    drv.step(drv.sink.on_trial_result, [t], t, {"records": t.records(1)})
    assert dataset_rows(store.local_dir, t.trial_id) == oracle(t)
    assert [r[1] for r in dataset_rows(store.local_dir, t.trial_id)][3] == pytest.approx(1 / 4 + 1)


def test_a_driver_killed_between_a_merge_and_its_deletes_leaves_files_the_next_driver_repairs(tmp_path,
                                                                                             monkeypatch):
    store = StudyStore(str(tmp_path / "res"), "s")
    study = _study()
    now = [0.0]
    drv = Driver(study, store, flush_s=0.0, now=now)
    t = Trial("s_00000", tmp_path / "ckpt")
    t.status = "RUNNING"
    drv.step(drv.sink.on_trial_start, [t], t)
    for _ in range(3):
        drv.step(drv.sink.on_trial_result, [t], t, {"records": t.records(1)})
    folder = store.local_dir / "epochs" / f"trial_id={t.trial_id}"
    assert any(results.part_range(p.name) for p in folder.iterdir())        # a part next to data.parquet

    class Killed(Exception):
        pass

    def killed(self, name):
        raise Killed

    monkeypatch.setattr(sink_module.TrialWriter, "_remove", killed)
    t.save_checkpoint()
    with pytest.raises(Killed):
        while True:                      # reports until a merge renames data.parquet in
            drv.sink.on_trial_result(0, [t], t, {"records": t.records(1)})
            t.save_checkpoint()
    monkeypatch.undo()
    n = len(t.history)
    assert sum(pq.read_metadata(p).num_rows for p in folder.glob("*.parquet")) > n   # overlapping files
    drv = Driver(study, store, flush_s=0.0, now=now)                     # the next driver
    t.restore()
    while not t.done:
        drv.step(drv.sink.on_trial_result, [t], t, {"records": t.records(2)})
        t.save_checkpoint()
    t.status = "TERMINATED"
    drv.step(drv.sink.on_trial_complete, [t], t)
    assert dataset_rows(store.local_dir, t.trial_id) == oracle(t)
    assert [p.name for p in folder.glob("*.parquet")] == ["data.parquet"]


def test_rows_lost_with_a_killed_drivers_buffer_come_back_from_the_checkpoint(tmp_path):
    store = StudyStore(str(tmp_path / "res"), "s")
    study = _study()
    now = [0.0]
    drv = Driver(study, store, flush_s=1e9, now=now)     # rows wait in memory after the first report
    t = Trial("s_00000", tmp_path / "ckpt")
    t.status = "RUNNING"
    drv.step(drv.sink.on_trial_start, [t], t)
    for _ in range(6):
        drv.step(drv.sink.on_trial_result, [t], t, {"records": t.records(1)})
        if len(t.history) == 4:
            t.save_checkpoint()
    assert len(dataset_rows(store.local_dir, t.trial_id)) < 4          # the buffer died with the driver
    drv = Driver(study, store, flush_s=1e9, now=now)
    t.restore()                                                      # resumes at 5
    drv.step(drv.sink.on_trial_result, [t], t, {"records": t.records(1)})
    while not t.done:
        drv.step(drv.sink.on_trial_result, [t], t, {"records": t.records(3)})
    t.status = "TERMINATED"
    drv.step(drv.sink.on_trial_complete, [t], t)
    assert dataset_rows(store.local_dir, t.trial_id) == oracle(t)
    assert [r[2] for r in oracle(t)][:4] == [0.01 * e for e in range(1, 5)]      # epochs 1-4 of attempt 0


# --- URI storage: only what is new goes up, what is removed goes away ---------------------------
def _remote_file(store: StudyStore, local: Path) -> Path:
    base = Path(store.storage.removeprefix("file://")) / store.name
    return base / local.relative_to(store.local_dir)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted((root / "epochs").glob("*/*.parquet"))} if (root / "epochs").exists() else {}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("trial_writes", [True, False], ids=["trial-writes", "driver-writes"])
def test_uri_storage_pushes_only_new_files_and_deletes_removed_ones(tmp_path, monkeypatch, seed, trial_writes):
    bucket = tmp_path / "bucket"
    store = StudyStore(f"file://{bucket}", "s")
    store.delete_all()
    pushed, deleted = [], []
    real_push, real_delete = StudyStore.push, StudyStore.delete
    monkeypatch.setattr(StudyStore, "push", lambda self, rel: (pushed.append(rel), real_push(self, rel))[1])
    monkeypatch.setattr(StudyStore, "delete", lambda self, rel: (deleted.append(rel), real_delete(self, rel))[1])
    before = {}

    def check(resync=False):
        nonlocal before
        now = _tree(store.local_dir)
        if resync:               # files changed outside the sink (damaged in both places)
            before = now
            return
        new = {k for k, h in now.items() if before.get(k) != h}
        gone = set(before) - set(now)
        epoch_pushes = [p for p in pushed if p.startswith("epochs/")]
        assert sorted(epoch_pushes) == sorted(new), (epoch_pushes, new)          # each new file once, nothing else
        assert {d for d in deleted if d.startswith("epochs/")} >= gone
        assert _tree(bucket / "s") == now                                         # the bucket mirrors it
        pushed.clear(), deleted.clear()
        before = now

    try:
        run_script(tmp_path, store, random.Random(100 + seed), flush_s=2.0, check=check, trial_writes=trial_writes)
        assert pq.read_table(bucket / "s" / "trials.parquet").num_rows == 2
    finally:
        store.delete_all()


def test_a_resumed_driver_only_looks_at_the_partition_of_a_trial_that_writes_it(tmp_path):
    """A resumed driver reads a running trial's newest row for its trials row before the trial
    reports; the trial (its worker) may be repairing the partition at that moment, so the driver
    sets nothing aside and merges nothing, even where a writer would."""
    store = StudyStore(str(tmp_path / "res"), "s")
    t = Trial("s_00000", tmp_path / "ckpt")
    w = sink_module.TrialWriter(store.local_dir, t.trial_id, _study().config(t.config), "s", store)
    for n in (3, 2):                        # data.parquet (1-3), part 4-5
        w.add(t.records(n), 0.0)
        w.flush()
    folder = store.local_dir / "epochs" / f"trial_id={t.trial_id}"
    part = folder / results.part_name(4, 5)
    (folder / results.part_name(4, 4)).write_bytes(part.read_bytes())      # overlapping files...
    (folder / results.part_name(6, 6)).write_bytes(part.read_bytes()[:50])  # ...and a damaged one
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    sink = ParquetSink(_study(), store, table_s=0, table_duty=0)
    t.status = "RUNNING"
    sink.on_step_begin(0, [t])
    sink.on_trial_start(0, [t], t)          # the resumed Tune starts the trial again
    sink.on_step_end(0, [t])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    row = pq.read_table(store.local_dir / "trials.parquet").to_pylist()[0]
    assert (row["trial_id"], row["status"], row["epochs_done"]) == (t.trial_id, "running", 5)
    # the trial's own writer, opening it, repairs it: epochs 1-5 once, the damaged file set aside
    rows = TrialRows(store, "s", t.trial_id, _study().config(t.config), restored=5, history=t.history)
    assert rows.written == 5 and dataset_rows(store.local_dir, t.trial_id) == oracle(t)
    assert (folder / f".{results.part_name(6, 6)}.damaged").exists()


def test_a_retry_from_before_a_members_end_keeps_its_rows_until_it_reports_them_again(tmp_path):
    """A pack's member that diverged at epoch 6 after the pack's checkpoint at 4: the pack's
    retry starts from 4, but until it reports the member's epochs again (or if it fails first)
    the member's partition keeps its whole run; its reports then replace the rows as they come."""
    store = StudyStore(str(tmp_path / "res"), "s")
    t = Trial("s_00000_m1", tmp_path / "ckpt")
    cfg = _study().config(t.config)
    first = TrialRows(store, "s", t.trial_id, cfg, flush_s=1e9)
    assert first.add(t.records(4)) == 4
    t.save_checkpoint()                        # the pack's checkpoint, member still training
    recs = t.records(2)
    recs[-1]["diverged"] = True
    assert first.add(recs, end=True) == 6
    assert dataset_rows(store.local_dir, t.trial_id) == oracle(t)
    t.restore()                                # the pack's node dies: retried from epoch 4
    retry = TrialRows(store, "s", t.trial_id, cfg, len(t.restored), t.restored, flush_s=0)
    assert retry.written == 6 and len(dataset_rows(store.local_dir, t.trial_id)) == 6
    assert retry.add(t.records(1)) == 5        # epoch 5 again: the old epochs 5-6 go
    assert dataset_rows(store.local_dir, t.trial_id) == oracle(t)
