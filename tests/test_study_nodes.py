"""Node loss: a two-node Ray cluster (ray.cluster_utils.Cluster) loses its worker
node mid-study; the trial that ran there is retried from its checkpoint on the
surviving node, and the Parquet is complete."""
from __future__ import annotations

import glob
import threading
import time

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from regimes.study import spec
from regimes.study.launch import run_study

pytestmark = pytest.mark.ray

EPOCHS = 14


def test_worker_node_killed_mid_study_trials_resume_from_checkpoints(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    study = spec.from_dict({
        "name": "nodes",
        "base": {"dataset": "digits", "model": "convnet_si", "width": 4, "batch_size": 32, "augment": False,
                 "epochs": EPOCHS, "device": "cpu"},
        "search": {"kind": "grid", "space": {"elr": [1e-2, 1e-1]}},
        "checkpoint_every": 2, "max_failures": 2})
    # one CPU each: one trial runs on the head, the other on the worker
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    killed = {}

    def kill_worker_once_both_trials_checkpointed():
        deadline = time.time() + 180
        while time.time() < deadline:
            trial_dirs = {c.rsplit("/", 1)[0] for c in glob.glob(f"{tmp_path}/nodes/run_trial_*/checkpoint_*")}
            if len(trial_dirs) == 2:
                cluster.remove_node(worker, allow_graceful=False)
                killed["checkpoints"] = sorted(glob.glob(f"{tmp_path}/nodes/run_trial_*/checkpoint_*"))
                return
            time.sleep(0.05)

    try:
        ray.init(address=cluster.address, log_to_driver=False)
        monitor = threading.Thread(target=kill_worker_once_both_trials_checkpointed, daemon=True)
        monitor.start()
        grid = run_study(study, str(tmp_path), verbose=0)
        monitor.join(timeout=5)
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert killed, "the worker node was never killed"
    assert len(grid) == 2 and all(r.error is None for r in grid)
    trials = pq.read_table(tmp_path / "nodes" / "trials.parquet").to_pylist()
    assert [t["status"] for t in trials] == ["completed", "completed"]
    retried = [t for t in trials if t["num_failures"] >= 1]
    assert len(retried) == 1                                     # the trial that was on the worker
    restored = [r.metrics["restored_from_epoch"] for r in grid]
    assert max(restored) >= 2 and min(restored) == 0              # it resumed from a checkpoint, not from 0
    rows = ds.dataset(tmp_path / "nodes" / "epochs", format="parquet", partitioning="hive").to_table().to_pylist()
    keys = sorted((r["trial_id"], r["epoch"]) for r in rows)
    assert keys == sorted((t["trial_id"], e) for t in trials for e in range(1, EPOCHS + 1))
