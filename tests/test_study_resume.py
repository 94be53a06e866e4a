"""Interrupt and resume: SIGKILL (a crash) or SIGINT (Ctrl-C) the `regimes sweep` driver
mid-study, run the command again.

The study (Optuna on a journal inside a ConcurrencyLimiter, the hardest case to
resume) must complete with no lost and no duplicated rows, without re-training
the trials that had finished before the kill.
"""
from __future__ import annotations

import math
import signal
import subprocess
import time

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from sweep_driver import kill_session, sweep

pytestmark = pytest.mark.ray

EPOCHS = 6
SPEC = {"name": "resume",
        "base": {"dataset": "digits", "model": "convnet_si", "width": 4, "batch_size": 32, "augment": False,
                 "epochs": EPOCHS, "device": "cpu"},
        "search": {"kind": "optuna", "sampler": "random", "sampler_seed": 0, "metric": "test_loss", "mode": "min",
                   "num_samples": 4, "max_concurrent": 2,
                   "space": {"elr": {"loguniform": [1e-3, 1e-1]}, "seed": {"choice": [0, 1]}}},
        "checkpoint_every": 2}


def statuses(root):
    try:
        return {r["trial_id"]: r["status"] for r in pq.read_table(root / "trials.parquet").to_pylist()}
    except (FileNotFoundError, OSError):
        return {}


def epoch_rows(root):
    """(trial_id, epoch) -> row, NaN as None so that identical rows compare equal with ==."""
    rows = ds.dataset(root / "epochs", format="parquet", partitioning="hive").to_table().to_pylist()
    rows = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]
    return {(r["trial_id"], r["epoch"]): r for r in rows}, len(rows)


def mid_checkpoint(root) -> bool:
    for f in root.glob("epochs/*/data.parquet"):
        try:
            n = pq.read_metadata(f).num_rows
        except OSError:
            continue
        if n % SPEC["checkpoint_every"] == 1 and n < EPOCHS:
            return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_interrupt_mid_study_then_rerun_completes_without_lost_or_duplicated_rows(tmp_path, sig):
    spec_path = tmp_path / "resume.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    root = tmp_path / "results" / "resume"
    log = open(tmp_path / "first.log", "w")
    driver = subprocess.Popen(sweep(spec_path, tmp_path / "results"), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        # kill once a trial has finished and another is between two checkpoints (odd epoch)
        deadline = time.time() + 300
        while time.time() < deadline and not ("completed" in statuses(root).values() and mid_checkpoint(root)):
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        driver.send_signal(sig)
        rc = driver.wait(timeout=120)
    finally:
        kill_session(driver.pid)
        log.close()
    before = statuses(root)
    finished = {t for t, s in before.items() if s == "completed"}
    assert finished and len(finished) < 4, before                    # killed mid-study
    rows_before, _ = epoch_rows(root)
    if sig == signal.SIGINT:                                        # Tune stops gracefully
        assert rc == 130
        assert "run the same command again to resume" in (tmp_path / "first.log").read_text()

    again = subprocess.run(sweep(spec_path, tmp_path / "results"), capture_output=True, text=True, timeout=420,
                           start_new_session=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming study 'resume'" in again.stdout

    after = statuses(root)
    assert len(after) == 4 and set(after.values()) == {"completed"}
    rows, n = epoch_rows(root)
    assert n == len(rows) == 4 * EPOCHS                                  # nothing duplicated
    assert set(rows) == {(t, e) for t in after for e in range(1, EPOCHS + 1)}   # nothing lost
    for key, row in rows_before.items():                                 # finished trials not re-trained:
        if key[0] in finished:                                           # wall-clock time_s would differ
            assert rows[key] == row

    import optuna

    from regimes.study.search import optuna_storage

    ot = optuna.load_study(study_name="resume", storage=optuna_storage(root / "optuna.journal"))
    states = [t.state for t in ot.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4
    assert optuna.trial.TrialState.RUNNING not in states
    trials = pq.read_table(root / "trials.parquet").to_pylist()
    told = sorted(t.params["elr"] for t in ot.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert told == pytest.approx(sorted(t["elr"] for t in trials))
