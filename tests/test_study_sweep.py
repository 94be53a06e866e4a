"""Real Ray Tune sweeps on a local Ray (2 CPUs): grid end to end, diverged trials,
Optuna with concurrent trials on a journal, ASHA, and the results readable without us.

Tiny on purpose (width 4, 3-4 epochs, a digits subset); a trial's start-up (~2 s) dominates.
"""
from __future__ import annotations

import math
from itertools import combinations

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from regimes import results
from regimes.study import spec
from regimes.study.launch import run_study
from regimes.study.storage import StudyStore
from regimes.study.trainable import ROWS_KEY

pytestmark = pytest.mark.ray

TINY = {"dataset": "digits", "model": "convnet_si_af", "width": 4, "subset": 256, "batch_size": 32,
        "augment": False, "epochs": 3, "device": "cpu"}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def epochs_table(root):
    return ds.dataset(root / "epochs", format="parquet", partitioning="hive").to_table().to_pylist()


def test_grid_sweep_end_to_end_with_a_diverging_trial(ray_local, tmp_path):
    # free mode: lr 0.05 trains; lr 1e20 blows the non-scale-invariant BN/head weights up to NaN in the first epoch
    study = spec.from_dict({"name": "grid", "base": {**TINY, "mode": "free"},
                            "search": {"kind": "grid", "space": {"lr": [0.05, 1e20], "seed": [0, 1]},
                                       "metric": "test_acc", "mode": "max"},
                            "checkpoint_every": 2})
    grid = run_study(study, str(tmp_path), verbose=0)
    root = tmp_path / "grid"

    # Tune's view: every trial ended; the diverged ones reported a finite objective and diverged=True
    assert len(grid) == 4 and all(r.error is None for r in grid)
    by_lr = {}
    for r in grid:
        by_lr.setdefault(r.config["lr"], []).append(r.metrics)
    assert all(m["diverged"] and m["test_acc"] == pytest.approx(0.1) for m in by_lr[1e20])   # chance, finite
    assert all(not m["diverged"] and math.isfinite(m["test_acc"]) and m["epoch"] == 3 for m in by_lr[0.05])
    # each trial wrote its own rows: its last report says they are all in its files
    assert all(r.metrics[ROWS_KEY] == r.metrics["epoch"] for r in grid)

    # Parquet: exactly one row per (trial, epoch), config columns = the trial's config
    trials = {r["trial_id"]: r for r in pq.read_table(root / "trials.parquet").to_pylist()}
    rows = epochs_table(root)
    keys = [(r["trial_id"], r["epoch"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert set(trials) == {r["trial_id"] for r in rows}
    assert sorted((t["lr"], t["seed"]) for t in trials.values()) == [(0.05, 0), (0.05, 1), (1e20, 0), (1e20, 1)]
    for tid, t in trials.items():
        mine = sorted((r for r in rows if r["trial_id"] == tid), key=lambda r: r["epoch"])
        assert [r["epoch"] for r in mine] == list(range(1, t["epochs_done"] + 1))
        assert all(r["cfg_lr"] == t["lr"] and r["seed"] == t["seed"] and r["width"] == 4 and r["mode"] == "free"
                   and r["study"] == "grid" and r["schema_version"] == results.SCHEMA_VERSION for r in mine)
        if t["lr"] == 0.05:
            assert (t["status"], t["epochs_done"], t["diverged"]) == ("completed", 3, False)
            assert t["final_test_acc"] == mine[-1]["test_acc"]
        else:
            assert (t["status"], t["diverged"]) == ("diverged", True)
            assert mine[-1]["diverged"] and not math.isfinite(mine[-1]["train_loss"])   # the real value is kept
        for col in ("git_commit", "regimes_version", "torch_version", "ray_version", "optuna_version", "host",
                    "device"):
            assert t[col], col
        import torch       # the trial's torch and GPU (none here), from its reports
        assert (t["torch_version"], t["cuda_device"], t["device"]) == (torch.__version__, "", "cpu")

    # Readable without this package
    import duckdb
    import pandas as pd
    import polars as pl

    n = len(rows)
    assert len(pd.read_parquet(root / "epochs")) == n
    assert pl.scan_parquet(str(root / "epochs" / "**" / "*.parquet"), hive_partitioning=True).collect().height == n
    con = duckdb.connect()
    got = con.execute(f"select count(*), count(distinct trial_id) from read_parquet('{root}/epochs/*/*.parquet', "
                      "hive_partitioning=true)").fetchone()
    assert got == (n, 4)
    assert con.execute(f"select count(*) from '{root}/trials.parquet'").fetchone()[0] == 4

    # Running the finished study again changes nothing: no trial re-run, no row rewritten
    files = {p: p.stat().st_mtime_ns for p in (root / "epochs").rglob("*.parquet")}
    again = run_study(study, str(tmp_path), verbose=0)
    assert len(again) == 4
    assert {p: p.stat().st_mtime_ns for p in (root / "epochs").rglob("*.parquet")} == files
    assert len(epochs_table(root)) == n


def test_optuna_runs_max_concurrent_trials_on_a_journal_in_uri_storage(ray_local, tmp_path):
    import optuna

    from regimes.study.search import optuna_storage

    study = spec.from_dict({"name": "opt", "base": {**TINY, "mode": "sphere"},
                            "search": {"kind": "optuna", "sampler": "tpe", "sampler_seed": 0,
                                       "metric": ["test_loss", "test_acc"], "mode": ["min", "max"],
                                       "num_samples": 4, "max_concurrent": 2,
                                       "space": {"elr": {"loguniform": [1e-3, 1.0]}, "seed": {"choice": [0, 1]}}}})
    # URI storage (as s3:// on a cluster): Ray writes there itself, our files are mirrored
    store = StudyStore(f"file://{tmp_path}/bucket", "opt")
    grid = run_study(study, store, verbose=0)
    assert len(grid) == 4 and all(r.error is None for r in grid)
    remote = tmp_path / "bucket" / "opt"
    assert (remote / "tuner.pkl").exists() and remote != store.local_dir

    ot = optuna.load_study(study_name="opt", storage=optuna_storage(remote / "optuna.journal"))
    done = [t for t in ot.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == len(ot.trials) == 4
    # what Optuna was told is what the Parquet holds
    trials = pq.read_table(remote / "trials.parquet").to_pylist()
    assert len(epochs_table(remote)) == 4 * TINY["epochs"]
    told = sorted((t.params["elr"], tuple(t.values)) for t in done)
    held = sorted((t["elr"], (t["final_test_loss"], t["final_test_acc"])) for t in trials)
    assert [e for e, _ in told] == pytest.approx([e for e, _ in held])
    assert [x for _, v in told for x in v] == pytest.approx([x for _, v in held for x in v])
    # two trials ran at the same time, never more than max_concurrent
    store.delete_all()                                        # also the local staging copy
    spans = [(t.datetime_start, t.datetime_complete) for t in done]
    overlapping = [(a, b) for a, b in combinations(spans, 2) if a[0] < b[1] and b[0] < a[1]]
    assert overlapping
    for s, _ in spans:
        assert sum(1 for a, b in spans if a <= s < b) <= 2


def test_asha_stops_trials_by_epoch(ray_local, tmp_path):
    # One trial at a time (2 CPUs each), in grid order, so ASHA's decisions do not depend on which
    # of two concurrent trials reports first: the slowest learner (ELR 1e-4, loss 2.7 after one
    # epoch against 1.7-2.2) comes last and falls under the rung's cutoff.
    study = spec.from_dict({"name": "asha", "base": {**TINY, "mode": "sphere", "epochs": 4},
                            "search": {"kind": "grid", "space": {"elr": [1e-3, 1e-2, 1e-1, 1e-4]},
                                       "metric": "train_loss", "mode": "min"},
                            "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 4},
                            "resources": {"cpu": 2}})
    grid = run_study(study, str(tmp_path), verbose=0)
    assert all(r.error is None for r in grid)
    trials = pq.read_table(tmp_path / "asha" / "trials.parquet").to_pylist()
    rows = epochs_table(tmp_path / "asha")
    for t in trials:
        assert sum(r["trial_id"] == t["trial_id"] for r in rows) == t["epochs_done"]
        assert t["status"] == ("completed" if t["epochs_done"] == 4 else "stopped")
    stopped = [t for t in trials if t["status"] == "stopped"]
    assert (1e-4, 1) in [(t["elr"], t["epochs_done"]) for t in stopped]
    assert {t["elr"]: t["status"] for t in trials}[1e-2] == "completed"      # the best one runs on
