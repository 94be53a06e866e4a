"""Study layer without a running Ray: spec validation, sink, storage mirror (cluster.yaml: test_cluster.py)."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from regimes.errors import ConfigError
from regimes.study import spec
from regimes.study.storage import StudyStore

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))
TINY = {"dataset": "digits", "model": "convnet_si", "width": 4, "subset": 128, "batch_size": 32,
        "augment": False, "epochs": 3, "device": "cpu"}


def grid(space, **top):
    return {"name": "t", "base": dict(TINY), "search": {"kind": "grid", "space": space}, **top}


def optuna(space, **search):
    return {"name": "t", "base": dict(TINY),
            "search": {"kind": "optuna", "metric": "test_loss", "mode": "min", "space": space, **search}}


# --- shipped files -------------------------------------------------------------
@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_shipped_study_validates(path):
    study = spec.load(path)
    assert study.num_trials() >= 1
    assert path.stem.replace("_", "-") == study.name     # file name and study name agree


def test_required_studies_are_shipped():
    names = {p.name for p in STUDIES}
    assert {"demo_digits.yaml", "three_regimes_cifar10.yaml", "lr_wd_phase_cifar10.yaml",
            "elr_momentum_phase_cifar10.yaml", "optuna_elr_wd_cifar10.yaml"} <= names


def test_demo_study_is_a_small_cpu_elr_grid():
    study = spec.load(ROOT / "studies" / "demo_digits.yaml")
    cfg = study.config(next(study.grid_points()))
    assert (cfg.dataset, cfg.mode, study.gpu) == ("digits", "sphere", 0.0)
    elrs = study.space["elr"]
    assert min(elrs) <= 1e-4 and max(elrs) >= 1.0 and len(study.space["seed"]) >= 2
    assert study.num_trials() * cfg.epochs <= 500        # a few minutes on 2 cores


def test_figure1_study_matches_the_paper_setup():
    study = spec.load(ROOT / "studies" / "three_regimes_cifar10.yaml")
    cfg = study.config(next(study.grid_points()))
    assert (cfg.model, cfg.width, cfg.dataset, cfg.mode, cfg.augment, cfg.epochs) == \
        ("convnet_si", 32, "cifar10", "sphere", False, 1000)
    assert min(study.space["elr"]) <= 1e-5 and max(study.space["elr"]) > 1e-1
    assert study.gpu == 0.25 and len(study.space["seed"]) >= 2


# --- bad specs ------------------------------------------------------------------
BAD = [
    ("unknown top key", grid({"elr": [0.1]}, epoch=3), "epoch", "unknown key"),
    ("no name", {"search": {"kind": "grid", "space": {"elr": [0.1]}}}, "name", "required"),
    ("bad name", {**grid({"elr": [0.1]}), "name": "a/b"}, "name", "folder-safe"),
    ("unknown kind", {"name": "t", "search": {"kind": "random", "space": {"elr": [0.1]}}}, "search.kind", "grid, optuna"),
    ("unknown base key", {**grid({"elr": [0.1]}), "base": {"widht": 4}}, "base.widht", "did you mean width"),
    ("unknown space key", grid({"elrr": [0.1]}), "search.space.elrr", "not a TrainConfig field"),
    ("empty space", grid({}), "search.space", "non-empty"),
    ("empty axis", grid({"elr": []}), "search.space.elr", "empty list"),
    ("scalar axis", grid({"elr": 0.1}), "search.space.elr", "list of values"),
    ("distribution in a grid", grid({"elr": {"loguniform": [1e-3, 1]}}), "search.space.elr", "kind: optuna"),
    ("grid inside optuna", optuna({"elr": [1e-3, 1e-2]}), "search.space.elr", "grid axis"),
    ("optuna keys in a grid", {**grid({"elr": [0.1]}), "search": {"kind": "grid", "space": {"elr": [0.1]},
                                                                   "num_samples": 3}},
     "search.num_samples", "only for kind: optuna"),
    ("value out of range", grid({"elr": [0.1, -1.0]}), "search.space.elr", "out of range"),
    ("wrong type", grid({"depth": [4, "deep"]}), "search.space.depth", "expected an integer"),
    ("bad choice", grid({"mode": ["sphere", "flat"]}), "search.space.mode", "one of"),
    ("bad base value", {**grid({"elr": [0.1]}), "base": {**TINY, "momentum": 1.5}}, "base.momentum", "out of range"),
    ("key in base and space", {**grid({"elr": [0.1]}), "base": {**TINY, "elr": 0.1}}, "search.space.elr",
     "also set in base"),
    ("loguniform at zero", optuna({"elr": {"loguniform": [0.0, 1.0]}}), "search.space.elr.loguniform", "0 < low"),
    ("bounds reversed", optuna({"wd": {"uniform": [1e-2, 1e-4]}}), "search.space.wd.uniform", "low < high"),
    ("upper bound invalid", optuna({"momentum": {"uniform": [0.5, 1.0]}}), "search.space.momentum.uniform",
     "out of range"),
    ("float dist on int field", optuna({"depth": {"uniform": [2, 4]}}), "search.space.depth.uniform",
     "integer field"),
    ("unknown distribution", optuna({"elr": {"normal": [0, 1]}}), "search.space.elr.normal", "uniform, loguniform"),
    ("empty choice", optuna({"seed": {"choice": []}}), "search.space.seed.choice", "non-empty"),
    ("bad choice value", optuna({"schedule": {"choice": ["constant", "warp"]}}), "search.space.schedule.choice",
     "one of"),
    ("optuna without metric", {**optuna({"elr": {"loguniform": [1e-3, 1]}}),
                               "search": {"kind": "optuna", "space": {"elr": {"loguniform": [1e-3, 1]}}}},
     "search.metric", "required"),
    ("unknown metric", optuna({"elr": {"loguniform": [1e-3, 1]}}, metric="accuracy"), "search.metric",
     "test_acc"),
    ("modes do not match metrics", optuna({"elr": {"loguniform": [1e-3, 1]}}, metric=["test_loss", "test_acc"],
                                          mode="min"), "search.mode", "one mode per metric"),
    ("bad sampler", optuna({"elr": {"loguniform": [1e-3, 1]}}, sampler="grid"), "search.sampler", "tpe, gp"),
    ("zero concurrency", optuna({"elr": {"loguniform": [1e-3, 1]}}, max_concurrent=0), "search.max_concurrent",
     ">= 1"),
    ("asha on several metrics", {**optuna({"elr": {"loguniform": [1e-3, 1]}}, metric=["test_loss", "test_acc"],
                                          mode=["min", "max"]), "scheduler": "asha"}, "scheduler", "exactly one"),
    ("asha grace too long", {**optuna({"elr": {"loguniform": [1e-3, 1]}}),
                             "scheduler": {"kind": "asha", "grace_period": 50}}, "scheduler.grace_period",
     "longer than"),
    ("unknown scheduler", {**grid({"elr": [0.1]}), "scheduler": "pbt"}, "scheduler", "asha"),
    ("bad resources key", grid({"elr": [0.1]}, resources={"gpus": 1}), "resources.gpus", "unknown key"),
    ("negative gpu", grid({"elr": [0.1]}, resources={"gpu": -1}), "resources.gpu", "fraction"),
    ("cuda without a gpu", {**grid({"elr": [0.1]}), "base": {**TINY, "device": "cuda"}}, "resources.gpu",
     "device is cuda"),
    ("checkpoint_every zero", grid({"elr": [0.1]}, checkpoint_every=0), "checkpoint_every", ">= 1"),
    ("max_failures not int", grid({"elr": [0.1]}, max_failures="3x"), "max_failures", "integer"),
]


@pytest.mark.parametrize("data,key,fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_spec_names_the_key_and_what_is_allowed(data, key, fragment):
    with pytest.raises(ConfigError) as e:
        spec.from_dict(data)
    assert e.value.key == key
    assert fragment in str(e.value)


def test_every_grid_combination_is_checked():
    # each value is fine alone; only resnet18 with depth 3 is invalid
    data = {**grid({"model": ["convnet_si", "resnet18_si"], "depth": [3, 4]}),
            "base": {k: v for k, v in TINY.items() if k != "model"}}
    with pytest.raises(ConfigError) as e:
        spec.from_dict(data)
    assert e.value.key == "search.space.depth"
    assert "model='resnet18_si'" in str(e.value) and "depth=3" in str(e.value)
    spec.from_dict({**data, "search": {"kind": "grid", "space": {"model": ["convnet_si", "resnet18_si"],
                                                                 "depth": [4]}}})   # the fix passes


def test_yaml_1_1_exponents_without_a_dot_are_numbers(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: t\nbase: {dataset: digits}\nsearch:\n  kind: optuna\n  metric: test_loss\n"
                 "  mode: min\n  space: {elr: {loguniform: [1e-4, 1e-1]}}\n")
    study = spec.load(p)
    assert study.space["elr"].values == (1e-4, 1e-1)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        spec.load(tmp_path / "nope.yaml")
    (tmp_path / "b.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        spec.load(tmp_path / "b.yaml")


def test_grid_points_and_optuna_distributions():
    s = spec.from_dict(grid({"elr": [0.1, 0.2, 0.3], "seed": [0, 1]}))
    pts = list(s.grid_points())
    assert s.num_trials() == len(pts) == 6 and len({tuple(p.items()) for p in pts}) == 6
    assert s.config(pts[-1]).elr == 0.3 and s.config(pts[-1]).seed == 1 and s.config(pts[-1]).width == 4

    import optuna.distributions as od

    o = spec.from_dict(optuna({"elr": {"loguniform": [1e-3, 1.0]}, "depth": {"int": [2, 4]},
                               "momentum": {"uniform": [0.0, 0.9]}, "seed": {"choice": [0, 1]}},
                              metric=["test_loss", "test_acc"], mode=["min", "max"], sampler="qmc"))
    d = {k: v.to_optuna() for k, v in o.space.items()}
    assert d["elr"] == od.FloatDistribution(1e-3, 1.0, log=True)
    assert d["depth"] == od.IntDistribution(2, 4)
    assert d["momentum"] == od.FloatDistribution(0.0, 0.9)
    assert d["seed"] == od.CategoricalDistribution([0, 1])
    assert o.multi_objective and o.metric == ("test_loss", "test_acc")


def test_samplers_and_searcher_build(tmp_path):
    from optuna.samplers import GPSampler, QMCSampler, RandomSampler, TPESampler
    from ray.tune.search import ConcurrencyLimiter

    from regimes.study.search import make_sampler, make_scheduler, make_searcher

    space = {"elr": {"loguniform": [1e-3, 1.0]}}
    for name, cls in [("tpe", TPESampler), ("gp", GPSampler), ("random", RandomSampler), ("qmc", QMCSampler)]:
        assert isinstance(make_sampler(spec.from_dict(optuna(space, sampler=name))), cls)
    s = spec.from_dict({**optuna(space, max_concurrent=3), "scheduler": {"kind": "asha", "grace_period": 2}})
    lim = make_searcher(s, tmp_path / "optuna.journal")
    assert isinstance(lim, ConcurrencyLimiter) and lim.max_concurrent == 3
    asha = make_scheduler(s)
    assert asha._time_attr == "epoch" and asha._max_t == 3 and asha._metric == "test_loss"


def test_validate_cli_exit_codes(tmp_path, capsys):
    from regimes.cli import main

    assert main(["validate", str(ROOT / "studies" / "demo_digits.yaml")]) == 0
    assert "demo-digits" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(grid({"elr": [0.1, 0.0]})))
    assert main(["validate", str(bad)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: search.space.elr: 0.0 is out of range")
    assert main(["sweep", str(bad), "--storage", str(tmp_path / "r")]) == 2   # before Ray starts
    assert not (tmp_path / "r").exists()


def test_validate_command_exits_2_from_the_shell(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(optuna({"elr": [1e-3, 1e-2]})))
    p = subprocess.run([sys.executable, "-m", "regimes.cli", "validate", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2
    assert "error: search.space.elr: a list is a grid axis" in p.stderr


# --- trainable's stand-in objective --------------------------------------------
def test_finite_objective_of_a_diverged_trial():
    from regimes.study.trainable import finite_objective

    assert finite_objective("test_loss", float("nan"), 10, "min") == pytest.approx(math.log(10))
    assert finite_objective("train_acc", float("inf"), 100, "max") == pytest.approx(0.01)
    assert finite_objective("eff_grad_norm", float("nan"), 10, "min") > 1e8
    assert finite_objective("eff_grad_norm", None, 10, "max") < -1e8
    assert finite_objective("test_loss", 0.25, 10, "min") == 0.25


# --- sink, driven by hand ---------------------------------------------------------
@pytest.fixture(scope="module")
def records():
    from regimes import TrainConfig, train

    return list(train(TrainConfig.from_dict({**TINY, "epochs": 4, "elr": 0.01})))


def _trial(tid, status="RUNNING"):
    return SimpleNamespace(trial_id=tid, config={"elr": 0.01}, status=status, num_failures=0)


def test_sink_is_idempotent_across_retries_and_driver_restarts(tmp_path, records):
    from regimes.study.sink import ParquetSink

    def partition():          # the trial's rows as any reader sees them: every file of its partition
        t = ds.dataset(tmp_path / "t" / "epochs", format="parquet", partitioning="hive").to_table()
        return sorted(t.to_pylist(), key=lambda r: r["epoch"])

    s = spec.from_dict({**grid({"elr": [0.01]}), "base": {**TINY, "epochs": 4}})
    store = StudyStore(str(tmp_path), s.name)
    t = _trial("a_00000")
    sink = ParquetSink(s, store, flush_s=0, table_s=0, table_duty=0)   # every report, every event
    sink.on_trial_start(0, [t], t)
    sink.on_trial_result(0, [t], t, {"records": records[:3], "trial_host": "gpu-7", "trial_device": "cuda"})
    sink.on_trial_error(0, [t], t)                                           # its node died...
    sink.on_trial_result(0, [t], t, {"records": records[2:3]})               # ...retried from a ckpt at 2
    f = sink.epoch_file("a_00000")
    assert [r["epoch"] for r in partition()] == [1, 2, 3]

    resumed = ParquetSink(s, store, table_s=0, table_duty=0)   # a new driver: memory empty, rows on disk
    resumed.on_trial_result(0, [t], t, {"records": records[3:4]})           # its first report: written
    rows = partition()
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r["test_acc"] for r in rows] == [r["test_acc"] for r in records]  # the reloaded rows are intact
    assert all(r["cfg_elr"] == 0.01 and r["width"] == 4 and r["study"] == "t" for r in rows)
    assert "trial_id" not in pq.read_table(f).column_names                  # comes from the hive path

    t.status = "TERMINATED"
    resumed.on_trial_complete(0, [t], t)
    assert [p.name for p in f.parent.iterdir()] == ["data.parquet"]          # a finished trial: one file
    assert [r["epoch"] for r in pq.read_table(f).to_pylist()] == [1, 2, 3, 4]
    (row,) = pq.read_table(tmp_path / "t" / "trials.parquet").to_pylist()
    assert (row["trial_id"], row["status"], row["epochs_done"]) == ("a_00000", "completed", 4)
    assert row["final_test_acc"] == records[-1]["test_acc"]
    assert row["ray_version"] and row["optuna_version"] and row["git_commit"]
    assert (row["host"], row["device"]) == ("gpu-7", "cuda")    # where the trial ran, not the driver

    # rows of a trial the resumed Tune experiment never heard of are dropped at the end
    ghost = tmp_path / "t" / "epochs" / "trial_id=ghost"
    ghost.mkdir()
    (ghost / "data.parquet").write_bytes(f.read_bytes())
    resumed.on_experiment_end([t])
    assert not ghost.exists() and f.exists()


def test_trial_status_rules(records):
    from regimes import TrainConfig
    from regimes.study.sink import trial_status

    cfg = TrainConfig.from_dict({**TINY, "epochs": 4})
    assert trial_status("TERMINATED", records, cfg) == "completed"
    assert trial_status("TERMINATED", records[:2], cfg) == "stopped"       # early-stopped by ASHA
    assert trial_status("TERMINATED", records[:2], cfg, scheduled=False) == "running"   # Ctrl-C'ed
    assert trial_status("TERMINATED", [*records[:1], {**records[1], "diverged": True}], cfg) == "diverged"
    assert trial_status("ERROR", records[:2], cfg) == "errored"
    assert trial_status("RUNNING", records[:2], cfg) == "running"


def test_uri_storage_mirrors_our_files(tmp_path):
    remote = tmp_path / "bucket"
    store = StudyStore(f"file://{remote}", "s")
    assert store.remote and not str(store.local_dir).startswith(str(remote))
    store.delete_all()
    (store.local_dir / "epochs" / "trial_id=x").mkdir(parents=True)
    (store.local_dir / "epochs" / "trial_id=x" / "data.parquet").write_bytes(b"rows")
    (store.local_dir / "trials.parquet").write_bytes(b"trials")
    store.push("epochs/trial_id=x/data.parquet")
    store.push("trials.parquet")
    assert (remote / "s" / "epochs" / "trial_id=x" / "data.parquet").read_bytes() == b"rows"
    import shutil

    shutil.rmtree(store.local_dir)
    store.pull()                                                             # resume on another machine
    assert (store.local_dir / "trials.parquet").read_bytes() == b"trials"
    assert (store.local_dir / "epochs" / "trial_id=x" / "data.parquet").read_bytes() == b"rows"
    store.delete_all()
    assert not (remote / "s").exists()


def test_storage_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(ConfigError) as e:
        StudyStore(str(f), "s")
    assert e.value.key == "--storage"


def test_optuna_searcher_restored_from_an_older_snapshot_keeps_finished_trials(tmp_path):
    """The driver died after Optuna's journal recorded a trial's end but before Tune's
    snapshot did: the restored searcher sees that trial report again and must not fail."""
    import optuna as ot

    from regimes.study.search import make_searcher, optuna_storage

    s = spec.from_dict(optuna({"elr": {"loguniform": [1e-3, 1.0]}}))
    journal = tmp_path / "optuna.journal"
    first = make_searcher(s, journal).searcher
    first.suggest("t1")
    first.save(str(tmp_path / "snapshot.pkl"))                        # Tune's (older) snapshot
    first.on_trial_result("t1", {"test_loss": 0.5, "training_iteration": 3})
    first.on_trial_complete("t1", {"test_loss": 0.5, "training_iteration": 3})

    restored = make_searcher(s, journal).searcher
    restored.restore(str(tmp_path / "snapshot.pkl"))
    restored.on_trial_result("t1", {"test_loss": 0.5, "training_iteration": 3})   # would raise without the fix
    restored.on_trial_complete("t1", {"test_loss": 0.5, "training_iteration": 3})
    (t,) = ot.load_study(study_name="t", storage=optuna_storage(journal)).trials
    assert t.state == ot.trial.TrialState.COMPLETE and t.value == 0.5


def test_only_optuna_trials_unknown_to_tune_are_failed(tmp_path):
    import optuna as ot

    from regimes.study.search import fail_stale_trials, make_searcher, optuna_storage

    s = spec.from_dict(optuna({"elr": {"loguniform": [1e-3, 1.0]}}, sampler_seed=0))
    journal = tmp_path / "optuna.journal"
    searcher = make_searcher(s, journal).searcher
    for tid in ("done", "resumable", "orphan"):
        searcher.suggest(tid)
    searcher.on_trial_complete("done", {"test_loss": 0.3})
    # the resumed experiment knows "done" and "resumable"; "orphan" was asked by a driver that died
    assert fail_stale_trials(s, journal, {"done", "resumable"}) == 1
    trials = ot.load_study(study_name="t", storage=optuna_storage(journal)).trials
    assert {t.user_attrs["tune_trial_id"]: t.state for t in trials} == {
        "done": ot.trial.TrialState.COMPLETE, "resumable": ot.trial.TrialState.RUNNING,
        "orphan": ot.trial.TrialState.FAIL}


def test_a_torn_tune_snapshot_is_set_aside_for_the_previous_one(tmp_path):
    import pickle

    from regimes.study.launch import _set_aside_damaged_tune_state

    s = spec.from_dict(optuna({"elr": {"loguniform": [1e-3, 1.0]}}))
    store = StudyStore(str(tmp_path), s.name)
    folder = tmp_path / "t"
    folder.mkdir()

    def snapshot(session, torn=False):
        (folder / f"experiment_state-{session}.json").write_text('{"trials": []}')
        (folder / f"search_gen_state-{session}.json").write_bytes(pickle.dumps({"counter": 1}))  # sic: a pickle
        data = pickle.dumps({"state": list(range(100))})
        (folder / f"searcher-state-{session}.pkl").write_bytes(data[: len(data) // 2] if torn else data)

    snapshot("2026-01-01_10-00-00")
    snapshot("2026-01-01_11-00-00", torn=True)          # the driver died while Tune copied it
    _set_aside_damaged_tune_state(s, store)
    assert sorted(p.name for p in folder.glob("*state-*")) == [
        "experiment_state-2026-01-01_10-00-00.json", "search_gen_state-2026-01-01_10-00-00.json",
        "searcher-state-2026-01-01_10-00-00.pkl"]
    assert (folder / ".damaged-2026-01-01_11-00-00" / "searcher-state-2026-01-01_11-00-00.pkl").exists()
    _set_aside_damaged_tune_state(s, store)              # an intact newest snapshot is left alone
    assert len(list(folder.glob("*state-*"))) == 3

    for f in folder.glob("*state-*"):
        f.unlink()
    snapshot("2026-01-01_12-00-00", torn=True)          # no earlier snapshot to fall back to
    with pytest.raises(ConfigError, match="--restart"):
        _set_aside_damaged_tune_state(s, store)


@pytest.mark.parametrize("kind,statuses,left", [
    ("grid", ["completed"] * 4, 0),
    ("grid", ["completed", "diverged", "stopped_decided", "errored"], 0),
    ("grid", ["completed", "running"], 3),          # Ctrl-C: one running, two never started
    ("grid", ["completed", "completed"], 2),        # Ctrl-C between trials: none running
    ("optuna", ["completed"] * 3, 1),
    ("optuna", ["completed", "stopped", "diverged", "completed"], 0),
])
def test_sweep_exit_code_says_whether_every_trial_ran(tmp_path, capsys, kind, statuses, left):
    import pyarrow as pa

    from regimes.study.launch import report

    study = spec.from_dict(grid({"elr": [0.01, 0.1], "seed": [0, 1]}) if kind == "grid"
                           else optuna({"elr": {"loguniform": [1e-3, 1e-1]}}, num_samples=4))
    store = StudyStore(str(tmp_path), study.name)
    store.local_dir.mkdir(parents=True)
    pq.write_table(pa.table({"trial_id": [f"t{i}" for i in range(len(statuses))], "status": statuses}),
                   store.local_dir / "trials.parquet")
    rc = report(study, store, grid=[])
    out = capsys.readouterr().out
    assert rc == (130 if left else 0)
    assert (f"interrupted: {left} trials unfinished" in out) == bool(left)


@pytest.mark.parametrize("finished,trials,left", [(True, 12, 0), (False, 30, 0), (False, 12, 18)])
def test_boundary_sweep_exit_code_counts_unspent_budget_only_while_unresolved(tmp_path, capsys,
                                                                               finished, trials, left):
    import json

    import pyarrow as pa

    from regimes.study.boundary import SUMMARY_FILE
    from regimes.study.launch import report

    study = spec.from_dict({"name": "b", "base": dict(TINY),
                            "search": {"kind": "boundary", "axis": "elr", "range": [1e-4, 1e-1],
                                       "resolution": 1.19, "budget": 30, "space": {"seed": [0]}}})
    store = StudyStore(str(tmp_path), study.name)
    store.local_dir.mkdir(parents=True)
    pq.write_table(pa.table({"trial_id": [f"t{i}" for i in range(trials)], "status": ["completed"] * trials}),
                   store.local_dir / "trials.parquet")
    (store.local_dir / SUMMARY_FILE).write_text(json.dumps(
        {"axis": "elr", "range": [1e-4, 1e-1], "resolution": 1.19, "budget": 30, "trials": trials,
         "finished": finished, "lines": []}))
    assert report(study, store, grid=[]) == (130 if left else 0)
    assert (f"interrupted: {left} trials unfinished" in capsys.readouterr().out) == bool(left)
