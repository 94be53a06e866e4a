"""`regimes status`: a study's trials, progress, ETA, regimes and best trial, read from its folder
only (never Ray). Fixture studies are written with regimes.results, with trajectories whose regime
is known by construction (tests/test_analysis.py); one real sweep is watched while it runs."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from regimes import regime as R
from regimes import results
from regimes.cli import main
from regimes.core.config import TrainConfig
from regimes.study.status import format_status, study_status
from test_analysis import trajectory, true_regime

REPO = Path(__file__).resolve().parents[1]
BASE = {"dataset": "digits", "model": "convnet_si", "width": 4, "mode": "sphere", "epochs": 24, "device": "cpu"}
ELRS = [1e-4, 1e-3, 1e-2, 3e-2, 0.3, 1.0]      # 2 converge, 2 chaotic, 2 diverge (true_regime, momentum 0)


def write_spec(root: Path, name: str, space: dict, epochs: int, **extra) -> None:
    src = {"name": name, "base": {**BASE, "epochs": epochs}, "search": {"kind": "grid", "space": space, **extra}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text(yaml.safe_dump(src, sort_keys=False))


def write_trial(root: Path, study: str, tid: str, point: dict, regime: str, *, epochs: int, done: int,
                rng, nan_last: bool = False, epoch_s: float = 0.5) -> list[dict]:
    """`done` epoch rows of a trial of `epochs` epochs, written as the sink writes them."""
    cfg = TrainConfig.from_dict({**BASE, "epochs": epochs, **point})
    tr = trajectory(regime, epochs, rng)
    records = []
    for e in range(done):
        rec = {m: float(v[e]) for m, v in tr.items()}
        rec.update(epoch=e + 1, step=(e + 1) * 10, si_norm=1.0, elr=cfg.elr, lr=cfg.elr,
                   time_s=epoch_s * (e + 1), samples_per_s=1e4, num_classes=10, diverged=False)
        records.append(rec)
    if nan_last:
        records[-1].update(train_loss=math.nan, train_acc=math.nan, test_loss=math.nan, diverged=True)
    results.write_trial_epochs(root, tid, results.epoch_rows(cfg, records, study=study))
    return records


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished grid (6 ELRs x 2 seeds, 24 epochs): one NaN-diverged trial, one stopped once its
    divergence was decided (10 epochs), the rest completed."""
    root = tmp_path_factory.mktemp("status") / "done"
    write_spec(root, "done", {"elr": ELRS, "seed": [0, 1]}, 24, metric="test_acc", mode="max")
    rng = np.random.default_rng(0)
    summaries = []
    for k, (seed, elr) in enumerate((s, e) for s in (0, 1) for e in ELRS):
        tid, point, regime = f"t{k:03d}", {"elr": elr, "seed": seed}, true_regime(elr, 0.0)
        status, done, nan = "completed", 24, False
        if (seed, elr) == (0, 1.0):
            status, done, nan = "diverged", 10, True
        elif (seed, elr) == (1, 1.0):
            status, done = "stopped_decided", 10
        records = write_trial(root, "done", tid, point, regime, epochs=24, done=done, rng=rng, nan_last=nan)
        cfg = TrainConfig.from_dict({**BASE, **point})
        summaries.append(results.trial_summary(cfg, records, "done", tid, status))
    results.write_trials(root, summaries)
    return root


def test_finished_study(finished, capsys):
    assert main(["status", str(finished), "--json"]) == 0
    f = json.loads(capsys.readouterr().out)
    assert f["counts"] == {"completed": 10, "diverged": 1, "stopped_decided": 1, "stopped": 0, "errored": 0,
                           "running": 0}
    assert f["seen"] == f["total"] == 12 and f["pending"] == 0 and not f["total_is_upper_bound"]
    p = f["progress"]
    assert p["epochs_done"] == p["epochs_planned"] == 10 * 24 + 2 * 10 and p["fraction"] == 1.0
    assert f["eta"]["method"] == "done" and f["eta"]["seconds"] == 0
    assert f["time"]["trial_time_s"] == pytest.approx(10 * 12.0 + 2 * 5.0)
    assert f["time"]["elapsed_s"] >= 12.0          # the longest trial ran 24 x 0.5 s
    assert f["regime_counts"] == {R.CONVERGENCE: 4, R.CHAOTIC: 4, R.DIVERGENCE: 4}
    by_elr = {(r["elr"], r["seed"]): r["regime"] for r in f["regimes"]}
    assert all(by_elr[(e, s)] == true_regime(e, 0.0) for e in ELRS for s in (0, 1))
    bounds = {b["boundary"]: b for b in f["boundaries"]}
    low = bounds["convergence->chaotic_equilibrium"]
    assert low["value"] == pytest.approx(math.sqrt(1e-3 * 1e-2))
    assert (low["bracket_lo"], low["bracket_hi"]) == (1e-3, 1e-2)
    assert bounds["chaotic_equilibrium->divergence"]["value"] == pytest.approx(math.sqrt(3e-2 * 0.3))
    assert low["n_seeds"] == low["n_seeds_total"] == 2
    (best,) = f["best"]
    assert best["metric"] == "test_acc" and best["mode"] == "max"
    assert by_elr[(best["config"]["elr"], best["config"]["seed"])] == R.CONVERGENCE
    assert best["value"] == pytest.approx(0.9 - 0.8 * math.exp(-8.0))

    assert main(["status", str(finished)]) == 0
    text = capsys.readouterr().out
    print(text)
    lines = text.strip().splitlines()
    assert len(lines) <= 20 and max(map(len, lines)) <= 100 and "\x1b" not in text
    assert "pending 0" in lines[1] and "(100%)" in text and "ETA: done" in text
    assert "convergence->chaotic_equilibrium at 0.00316, bracket [0.001, 0.01], 2/2 seeds" in text
    assert f"best test_acc (max): {best['value']:.4g}, trial {best['trial_id']}" in text


def test_study_during_a_sweep(tmp_path):
    """Two trials part-way, one whose first file is still being written (only the sink's hidden
    temp file), no trials.parquet yet; then the files go quiet (a stopped sweep)."""
    root = tmp_path / "live"
    write_spec(root, "live", {"elr": [1e-3, 1e-2, 1.0], "seed": [0, 1]}, 12)
    rng = np.random.default_rng(1)
    for tid, elr in (("a", 1e-3), ("b", 1e-2)):
        write_trial(root, "live", tid, {"elr": elr, "seed": 0}, true_regime(elr, 0.0), epochs=12, done=5, rng=rng)
    starting = root / "epochs" / "trial_id=c"
    starting.mkdir()
    (starting / ".data.parquet.0123456789ab.part").write_bytes(b"PAR1 half written")

    f = study_status(root)
    assert f["counts"]["running"] == 2 and f["seen"] == 2 and f["pending"] == 4
    assert sum(f["counts"].values()) == 2
    p = f["progress"]
    assert (p["epochs_done"], p["epochs_planned"]) == (10, 6 * 12) and p["fraction"] < 1
    assert f["eta"]["seconds"] > 0 and "epochs/s" in f["eta"]["method"]    # 10 rows in the last 2.5 s
    assert f["regime_counts"] == {} and f["boundaries"] == [] and f["best"] == []
    text = format_status(f)
    assert "2 seen of 6: running 2; pending 4" in text and "no finished trial yet" in text

    # nothing written for an hour: no ETA
    old = time.time() - 3600
    for tid in ("a", "b"):
        os.utime(root / "epochs" / f"trial_id={tid}" / "data.parquet", (old, old))
    f = study_status(root)
    assert f["eta"]["seconds"] is None and "nothing written for 1h00m" in f["eta"]["method"]

    # the sweep's very start: the spec copy and nothing else
    fresh = tmp_path / "fresh"
    write_spec(fresh, "fresh", {"elr": [1e-3, 1e-2]}, 12)
    f = study_status(fresh)
    assert f["seen"] == 0 and f["pending"] == 2 and f["progress"]["epochs_planned"] == 24
    assert f["eta"]["seconds"] is None and "no finished trial yet" in format_status(f)


def test_a_file_changing_under_the_read_is_read_again(finished, monkeypatch):
    """A trial's file that goes or appears between the dataset's listing and its reading fails
    that read (load_study raises ConfigError); status reads again."""
    import regimes.study.status as status_mod
    from regimes.analysis import load_study
    from regimes.errors import ConfigError

    calls = []

    def flaky(path):
        calls.append(path)
        if len(calls) == 1:
            raise ConfigError(str(path), "cannot read the epochs dataset ([Errno 2] No such file or directory)")
        return load_study(path)

    monkeypatch.setattr(status_mod, "load_study", flaky)
    assert study_status(finished)["seen"] == 12 and len(calls) == 2


def test_boundary_search_budget_is_an_upper_bound(tmp_path):
    root = tmp_path / "bsearch"
    root.mkdir()
    src = {"name": "bsearch", "base": {**BASE, "epochs": 6},
           "search": {"kind": "boundary", "axis": "elr", "range": [1e-3, 10.0], "resolution": 3.0,
                      "budget": 7, "initial": 4, "space": {"seed": [0]}}}
    (root / "study.yaml").write_text(yaml.safe_dump(src))
    write_trial(root, "bsearch", "x", {"elr": 1e-3}, R.CONVERGENCE, epochs=6, done=2, rng=np.random.default_rng(2))
    f = study_status(root)
    assert f["total_is_upper_bound"] and f["pending"] == 6 and f["progress"]["planned_is_upper_bound"]
    text = format_status(f)
    assert "1 seen of up to 7" in text and "pending up to 6" in text and "/ up to 42 epochs" in text
    (root / "boundary_search.json").write_text(json.dumps({"finished": True, "trials": 1}))
    f = study_status(root)
    assert f["pending"] == 0 and not f["total_is_upper_bound"]


@pytest.mark.parametrize("make", ["missing", "file", "empty"])
def test_not_a_study_folder_is_one_line_and_exit_2(tmp_path, capsys, make):
    path = tmp_path / "x"
    if make == "file":
        path.write_text("hello")
    elif make == "empty":
        path.mkdir()
    assert main(["status", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith(f"error: {path}: ")


def test_status_never_imports_ray(finished):
    code = ("import sys; import regimes.study.status; assert 'ray' not in sys.modules; "
            "from regimes.cli import main; assert main(['status', sys.argv[1], '--json']) == 0; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    r = subprocess.run([sys.executable, "-c", code, str(finished)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.ray
def test_status_of_a_live_sweep(tmp_path, capsys):
    """A real `regimes sweep` (6 tiny trials, 2 at a time) watched with `regimes status` until a trial
    has finished while others are still to come, then after the sweep: everything done. Batches
    of 8 (32 steps an epoch) keep the trials running for a few seconds in all, after Ray's start."""
    from sweep_driver import kill_session, sweep

    spec_path = tmp_path / "watch.yaml"
    tiny = {"dataset": "digits", "model": "convnet_si", "width": 4, "subset": 256, "batch_size": 8,
            "augment": False, "epochs": 3, "device": "cpu"}
    space = {"elr": [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 1.0]}
    spec_path.write_text(yaml.safe_dump({"name": "watch", "base": tiny, "checkpoint_every": 1,
                                         "search": {"kind": "grid", "space": space}}))
    root = tmp_path / "watch"

    def status() -> dict:
        assert main(["status", str(root), "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    log = open(tmp_path / "sweep.log", "w")
    driver = subprocess.Popen(sweep(spec_path, tmp_path), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True, cwd=REPO)
    try:
        seen_mid, polls, mid, deadline = None, 0, 0, time.time() + 120
        while driver.poll() is None and time.time() < deadline:
            if (root / "study.yaml").exists():
                f = status()
                polls += 1
                done = sum(f["counts"][s] for s in ("completed", "diverged", "stopped_decided", "stopped"))
                if done >= 1 and f["pending"] + f["counts"]["running"] >= 1:
                    seen_mid, mid = seen_mid or f, mid + 1
            time.sleep(0.05)
        assert driver.wait(timeout=120) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        kill_session(driver.pid)
        log.close()
    assert seen_mid is not None, f"never saw a finished trial while others were to come ({polls} polls)"
    assert seen_mid["progress"]["fraction"] < 1 and seen_mid["total"] == 6
    assert seen_mid["regime_counts"]

    f = status()
    assert f["seen"] == f["total"] == 6 and f["pending"] == 0 and f["counts"]["running"] == 0
    assert f["counts"]["completed"] + f["counts"]["diverged"] == 6
    assert f["progress"]["fraction"] == 1.0 and f["eta"]["method"] == "done"
    assert sum(f["regime_counts"].values()) == 6
    assert main(["status", str(root)]) == 0
    text = capsys.readouterr().out
    assert "trials: 6 seen of 6" in text and "ETA: done" in text, text
    assert "ETA: " in format_status(seen_mid) and "ETA: done" not in format_status(seen_mid)
