"""Study integrity: one driver per study folder, relocatable studies, damaged files rebuilt,
temp files no reader sees, failure counts and shutdown-time completions recorded as the
resumed study will see them."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from types import SimpleNamespace

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from regimes import results
from regimes.cli import main
from regimes.study import spec
from regimes.study.launch import run_study
from regimes.study.lock import StudyLock
from regimes.study.sink import ParquetSink
from regimes.study.storage import StudyStore
from sweep_driver import kill_session, sweep

TINY = {"dataset": "digits", "model": "convnet_si", "width": 4, "subset": 256, "batch_size": 32,
        "augment": False, "epochs": 3, "device": "cpu"}
SPEC = {"name": "integ", "base": TINY, "search": {"kind": "grid", "space": {"elr": [0.01, 0.03]}},
        "checkpoint_every": 2}


def _rows(root):
    t = ds.dataset(root / "epochs", format="parquet", partitioning="hive").to_table()
    rows = t.drop_columns(["time_s", "samples_per_s"]).to_pylist()
    nan_free = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]
    return sorted(((r["trial_id"], r["epoch"]), r) for r in nan_free)   # NaN as None: rows compare with ==


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the lock ----------------------------------------------------------------------
def test_a_second_driver_and_restart_are_refused_while_the_lock_is_held(tmp_path, capsys):
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    store = StudyStore(str(tmp_path / "res"), "integ")
    store.local_dir.mkdir(parents=True)
    (store.local_dir / "keep.txt").write_text("the running study's files")
    with StudyLock(store):                 # another driver (flock: per open file, so in-process too)
        for extra in ([], ["--restart"]):
            assert main(["sweep", str(spec_path), "--storage", str(tmp_path / "res"), *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and "is being run by another driver" in err and f"pid {os.getpid()}" in err
        assert (store.local_dir / "keep.txt").exists()          # --restart deleted nothing
    with StudyLock(store):                 # released: can be taken again
        pass


@pytest.mark.ray
def test_two_drivers_of_one_study_one_is_refused_and_the_study_completes(tmp_path):
    """The reproduction: `regimes sweep s.yaml --storage S & regimes sweep s.yaml --storage S`."""
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(yaml.safe_dump({**SPEC, "base": {**TINY, "epochs": 4}}))
    storage = tmp_path / "res"
    lock = storage / ".integ.lock"
    first = subprocess.Popen(sweep(spec_path, storage), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (lock.exists() and lock.read_text()):
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.05)
        second = subprocess.run(sweep(spec_path, storage), capture_output=True, text=True, timeout=120,
                                start_new_session=True)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "is being run by another driver" in second.stderr and f"pid {first.pid}" in second.stderr
        out, _ = first.communicate(timeout=300)
        assert first.returncode == 0, out[-3000:]
    finally:
        kill_session(first.pid)
    trials = pq.read_table(storage / "integ" / "trials.parquet").to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * 2
    assert len(_rows(storage / "integ")) == 2 * 4


# --- relocation and damaged files ---------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def finished_study(ray_local, tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    study = spec.from_dict(SPEC)
    run_study(study, str(base / "a"), verbose=0)
    return study, base / "a" / "integ"


@pytest.mark.ray
def test_a_copied_study_resumes_into_the_copy_and_rebuilds_what_is_missing(finished_study, tmp_path):
    study, original = finished_study
    before = _snapshot(original)
    rows = _rows(original)
    copy = tmp_path / "b" / "integ"
    shutil.copytree(original, copy)
    (copy / "trials.parquet").unlink()
    victim = sorted((copy / "epochs").iterdir())[0]
    shutil.rmtree(victim)                                   # a trial's rows lost entirely
    run_study(study, str(tmp_path / "b"), verbose=0)
    assert _snapshot(original) == before                    # the original folder untouched
    assert _rows(copy) == rows                              # every row back, identical
    assert {t["status"] for t in pq.read_table(copy / "trials.parquet").to_pylist()} == {"completed"}


@pytest.mark.ray
def test_a_moved_study_with_truncated_files_is_repaired(ray_local, tmp_path):
    study = spec.from_dict(SPEC)
    run_study(study, str(tmp_path / "m1"), verbose=0)
    rows = _rows(tmp_path / "m1" / "integ")
    (tmp_path / "m1").rename(tmp_path / "m2")                 # the old path is gone
    moved = tmp_path / "m2" / "integ"
    victim = sorted((moved / "epochs").iterdir())[0] / "data.parquet"
    victim.write_bytes(victim.read_bytes()[:100])           # truncated
    trials = moved / "trials.parquet"
    trials.write_bytes(trials.read_bytes()[:50])
    run_study(study, str(tmp_path / "m2"), verbose=0)
    assert not (tmp_path / "m1").exists()
    assert _rows(moved) == rows
    assert (victim.parent / ".data.parquet.damaged").exists()      # set aside, not deleted
    assert len(pq.read_table(trials).to_pylist()) == 2


# --- the sink's bookkeeping (no Ray) -------------------------------------------------------
def _trial(tid, status, failures=0, config=None):
    return SimpleNamespace(trial_id=tid, status=status, num_failures=failures, config=config or {"elr": 0.01},
                           checkpoint=None)


def _sink_with_rows(tmp_path, tid="t1", epochs=3):
    study = spec.from_dict(SPEC)
    store = StudyStore(str(tmp_path), study.name)
    sink = ParquetSink(study, store, table_s=0, table_duty=0)     # trials.parquet at every event
    cfg = study.config({"elr": 0.01})
    recs = [{"epoch": e, "step": e, "train_loss": 0.1, "diverged": False, "num_classes": 10} for e in
            range(1, epochs + 1)]
    results.write_trial_epochs(store.local_dir, tid, results.epoch_rows(cfg, recs, study.name))
    return sink, store


def test_failures_recorded_by_an_earlier_driver_survive_a_resume(tmp_path):
    sink, store = _sink_with_rows(tmp_path)
    sink.on_trial_error(0, [_trial("t1", "ERROR", failures=1)], _trial("t1", "ERROR", failures=1))
    resumed = ParquetSink(sink.study, store, table_s=0, table_duty=0)    # Tune resets the count on resume
    resumed.on_trial_complete(0, [_trial("t1", "TERMINATED", failures=0)], _trial("t1", "TERMINATED"))
    row = pq.read_table(store.local_dir / "trials.parquet").to_pylist()[0]
    assert row["num_failures"] == 1


def test_a_trial_that_ends_after_tunes_final_snapshot_is_recorded_as_running(tmp_path):
    sink, store = _sink_with_rows(tmp_path)
    t = _trial("t1", "TERMINATED")
    sink.on_step_begin(0, [t])
    sink.on_step_end(0, [t])
    sink.on_trial_complete(0, [t], t)        # Ctrl-C: handled while Tune stops its actors
    assert pq.read_table(store.local_dir / "trials.parquet").to_pylist()[0]["status"] == "running"
    sink2, store2 = _sink_with_rows(tmp_path / "x")
    sink2.on_step_begin(0, [t])
    sink2.on_trial_complete(0, [t], t)       # in the loop: Tune's snapshot will have it
    sink2.on_step_end(0, [t])
    assert pq.read_table(store2.local_dir / "trials.parquet").to_pylist()[0]["status"] == "completed"


def test_a_trial_that_tunes_cleanup_stops_after_its_last_report_is_recorded_as_running(tmp_path):
    """Ctrl-C after a trial reported its last epoch but before Tune handled its end: Tune's
    cleanup marks it TERMINATED without on_trial_complete, after the final snapshot (which has
    it RUNNING, so a resumed Tune resumes it from its checkpoint). The same for a pack's live
    members and for a resumed trial whose actor was still starting. A trial that had ended
    under an earlier driver stays completed."""
    study = spec.from_dict({**SPEC, "pack": 2})
    cfg = study.config({"elr": 0.01})
    recs = [{"epoch": e, "step": e, "train_loss": 0.1, "diverged": False, "num_classes": 10}
            for e in range(1, cfg.epochs + 1)]

    def sink_with_earlier_trials(tmp):
        """t0 ended under an earlier driver, t3 resumed with its actor starting (PENDING): both
        with all their rows on disk."""
        store = StudyStore(str(tmp), study.name)
        for tid in ("t0", "t3"):
            results.write_trial_epochs(store.local_dir, tid, results.epoch_rows(cfg, recs, study.name))
        return ParquetSink(study, store, table_s=0, table_duty=0), store

    def run(tmp, complete_in_loop):
        sink, store = sink_with_earlier_trials(tmp)
        old, starting = _trial("t0", "TERMINATED"), _trial("t3", "PENDING")
        t = _trial("t1", "RUNNING")
        pack = _trial("t2", "RUNNING", config={"members": [{"elr": 0.01}, {"elr": 0.02}]})
        trials = [old, t, pack, starting]
        sink.on_step_begin(0, trials)
        for x in (t, pack):
            sink.on_trial_start(0, trials, x)
        sink.on_trial_result(0, trials, t, {"records": recs})
        sink.on_trial_result(0, trials, pack, {"members": [{"member": k, "records": recs} for k in (0, 1)]})
        if complete_in_loop:
            for x in (t, pack):
                sink.on_trial_complete(0, trials, x)
                x.status = "TERMINATED"
        sink.on_step_end(0, trials)
        for x in (t, pack, starting):
            x.status = "TERMINATED"        # the loop ended; cleanup stops every trial with an actor
        sink.on_experiment_end(trials)
        rows = {r["trial_id"]: r for r in pq.read_table(store.local_dir / "trials.parquet").to_pylist()}
        assert all(r["epochs_done"] == cfg.epochs for r in rows.values())
        return {tid: r["status"] for tid, r in rows.items()}

    # a resumed driver stopped before any trial started: nothing has written the table yet
    sink, store = sink_with_earlier_trials(tmp_path / "c")
    trials = [_trial("t0", "TERMINATED"), _trial("t3", "PENDING")]
    sink.on_step_begin(0, trials)
    sink.on_step_end(0, trials)
    trials[1].status = "TERMINATED"
    sink.on_experiment_end(trials)
    assert {r["trial_id"]: r["status"] for r in pq.read_table(store.local_dir / "trials.parquet").to_pylist()} \
        == {"t0": "completed", "t3": "running"}
    assert run(tmp_path / "a", complete_in_loop=False) == \
        {"t0": "completed", "t1": "running", "t2_m0": "running", "t2_m1": "running", "t3": "running"}
    assert run(tmp_path / "b", complete_in_loop=True) == \
        {"t0": "completed", "t1": "completed", "t2_m0": "completed", "t2_m1": "completed", "t3": "running"}


def test_temp_files_match_no_reader_glob_and_follow_the_umask(tmp_path, monkeypatch):
    import pyarrow as pa

    seen = []
    real = pq.write_table

    def spy(table, where, **kw):
        seen.append((str(where), sorted(str(p) for p in tmp_path.glob("epochs/*/*.parquet"))))
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", spy)
    path = tmp_path / "epochs" / "trial_id=a" / "data.parquet"
    old = os.umask(0o022)
    try:
        results.atomic_write(pa.table({"x": [1]}), path)
        results.atomic_write(pa.table({"x": [2]}), path)
    finally:
        os.umask(old)
    for tmp, visible in seen:
        assert not tmp.endswith(".parquet") and os.path.basename(tmp).startswith(".")
        assert all(v == str(path) for v in visible)          # only the finished file is visible
    assert (path.stat().st_mode & 0o777) == 0o644
    assert pq.read_table(path).column("x").to_pylist() == [2]
