"""Packed studies under faults: a pack loses its node (ray.cluster_utils.Cluster) and resumes
from its checkpoint as a unit; a packed sweep's driver is SIGKILLed and the rerun completes
with no row lost or duplicated. Its own module: it starts its own Ray clusters."""
from __future__ import annotations

import glob
import math
import subprocess
import threading
import time

import pyarrow.parquet as pq
import pytest
import yaml

from regimes.study import spec
from regimes.study.launch import run_study

from sweep_driver import kill_session, sweep
from test_study_pack import BASE, epochs_of, grid


def reports(result_json) -> int:
    """The reports Tune has handled for a trial: the lines of its result.json."""
    try:
        with open(result_json) as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


@pytest.mark.ray
def test_a_pack_survives_losing_its_node_and_resumes_as_a_unit(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    epochs = 10
    s = spec.from_dict({**grid("packnodes", pack=4), "base": {**BASE, "epochs": epochs},
                        "checkpoint_every": 2, "max_failures": 2})
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    killed = {}

    def kill_worker_once_both_packs_checkpointed():
        # A checkpoint folder appears before Tune has registered it (a save it processes after
        # the report): a pack is checkpointed for Tune once it has reported the epoch after its
        # first checkpoint (Tune asks for the next epoch only when the save has been handled).
        deadline = time.time() + 180
        while time.time() < deadline:
            done = [f for f in glob.glob(f"{tmp_path}/packnodes/run_trial_*/result.json") if reports(f) > 2]
            if len(done) == 2:
                cluster.remove_node(worker, allow_graceful=False)
                killed["at"] = time.time()
                return
            time.sleep(0.05)

    try:
        ray.init(address=cluster.address, log_to_driver=False)
        monitor = threading.Thread(target=kill_worker_once_both_packs_checkpointed, daemon=True)
        monitor.start()
        result = run_study(s, str(tmp_path), verbose=0)
        monitor.join(timeout=5)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert killed, "the worker node was never killed"
    assert len(result) == 2 and all(r.error is None for r in result)
    assert max(r.metrics["restored_from_epoch"] for r in result) >= 2     # the lost pack resumed from a checkpoint
    trials = pq.read_table(tmp_path / "packnodes" / "trials.parquet").to_pylist()
    assert len(trials) == 8 and {t["status"] for t in trials} <= {"completed", "diverged"}
    assert sorted(t["num_failures"] for t in trials) == [0] * 4 + [1] * 4    # the 4 members of the lost pack
    rows = epochs_of(tmp_path / "packnodes")
    keys = sorted((r["trial_id"], r["epoch"]) for r in rows)
    assert keys == sorted((t["trial_id"], e) for t in trials for e in range(1, t["epochs_done"] + 1))
    assert len(keys) == len(set(keys))


@pytest.mark.ray
def test_a_killed_packed_sweep_resumes_without_lost_or_duplicated_rows(tmp_path):
    # Four packs on two CPUs: the last two train side by side after the first two have ended.
    # The driver must see a pack between two checkpoints, and a trial training alone almost never
    # is: its training runs ahead while Tune handles a checkpoint's save, and the epochs after it
    # then arrive in one burst (measured: result.json grew a checkpoint's worth of lines at a
    # time), so a lone last pack of three was killed only by luck and sometimes finished first.
    epochs = 16
    d = {**grid("packresume", pack=2), "base": {**BASE, "epochs": epochs}, "checkpoint_every": 2}
    d["search"] = {"kind": "grid", "space": {"elr": [1e-3, 3e-3, 1e-2, 3e-2], "seed": [0, 1]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(d))
    root = tmp_path / "res" / "packresume"

    def completed():
        try:
            return [r for r in pq.read_table(root / "trials.parquet").to_pylist() if r["status"] == "completed"]
        except (FileNotFoundError, OSError):
            return []

    def mid_checkpoint():
        """A pack still running has just reported an odd epoch (between two checkpoints): the
        moment is not inside Tune's own checkpoint bookkeeping (see launch._restore_deleted_checkpoints)."""
        done_packs = {t["pack_id"] for t in completed()}
        for f in glob.glob(f"{root}/run_trial_*/result.json"):
            n = reports(f)
            if n % 2 == 1 and n < epochs and not any(p in f for p in done_packs):
                return True
        return False

    log = open(tmp_path / "first.log", "w")
    driver = subprocess.Popen(sweep(path, tmp_path / "res"), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (completed() and mid_checkpoint()):
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.02)
        driver.kill()
        driver.wait(timeout=60)
    finally:
        kill_session(driver.pid)
        log.close()
    done_before = {t["trial_id"] for t in completed()}
    assert 0 < len(done_before) < 8
    before = {(r["trial_id"], r["epoch"]): r["train_loss"] for r in epochs_of(root)}
    again = subprocess.run(sweep(path, tmp_path / "res"), capture_output=True, text=True, timeout=420,
                           start_new_session=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    trials = pq.read_table(root / "trials.parquet").to_pylist()
    assert len(trials) == 8 and {t["status"] for t in trials} == {"completed"}
    rows = epochs_of(root)
    keys = [(r["trial_id"], r["epoch"]) for r in rows]
    assert sorted(keys) == sorted((t["trial_id"], e) for t in trials for e in range(1, epochs + 1))
    after = {(r["trial_id"], r["epoch"]): r["train_loss"] for r in rows}
    for key, loss in before.items():           # finished members are not trained again
        if key[0] in done_before:
            assert after[key] == loss or (math.isnan(loss) and math.isnan(after[key]))
