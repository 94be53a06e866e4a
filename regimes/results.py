"""Results on disk: one Parquet row per (trial, epoch), one per trial.

Layout under a study root (the CLI's `out`, or `<storage>/<study>` for sweeps):

    epochs/trial_id=<id>/data.parquet   hive-partitioned; trial_id comes from the path
    trials.parquet                      one row per trial: config, final_<measure>, status, provenance

Epoch rows carry `study`, `epoch`, `step`, `schema_version`, every TrainConfig
field and every measure. Two config fields share their names with measures
(`elr`, `lr`): the measure keeps the plain name (the rate actually used that
epoch) and the config value is stored as `cfg_elr` / `cfg_lr`. In
trials.parquet config fields keep their plain names and measures are prefixed
`final_`. Every write is atomic (temp file in the same folder + os.replace), and
a trial's file is always rewritten whole, so re-writing after a resume never
duplicates rows. Readable by pandas, polars and DuckDB without this package.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from .core.config import TrainConfig

SCHEMA_VERSION = 1


def epoch_rows(cfg: TrainConfig | dict, records: Iterable[dict], study: str) -> list[dict]:
    config = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg)
    rows = []
    for rec in records:
        row = {"study": study, "epoch": rec["epoch"], "step": rec.get("step", 0), "schema_version": SCHEMA_VERSION}
        for k, v in config.items():
            row[f"cfg_{k}" if k in rec else k] = _scalar(v)
        for k, v in rec.items():
            if k not in ("epoch", "step"):
                row[k] = _scalar(v)
        rows.append(row)
    return rows


def trial_summary(cfg: TrainConfig | dict, records: list[dict], study: str, trial_id: str, status: str,
                  extra: dict | None = None) -> dict:
    config = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg)
    row = {"study": study, "trial_id": trial_id, **{k: _scalar(v) for k, v in config.items()}}
    last = records[-1] if records else {}
    for k, v in last.items():
        if k not in ("epoch", "diverged"):
            row[f"final_{k}"] = _scalar(v)
    row["epochs_done"] = last.get("epoch", 0)
    row["diverged"] = bool(last.get("diverged", False))
    row["status"] = status
    row.update(provenance(device=config.get("device")))
    row.update(extra or {})
    return row


def write_trial_epochs(root, trial_id: str, rows: list[dict]) -> Path:
    """(Re)write one trial's epoch rows as epochs/trial_id=<id>/data.parquet, atomically."""
    folder = Path(root) / "epochs" / f"trial_id={trial_id}"
    rows = [{k: v for k, v in r.items() if k != "trial_id"} for r in rows]
    return atomic_write(pa.Table.from_pylist(rows), folder / "data.parquet")


def write_trials(root, rows: list[dict]) -> Path:
    return atomic_write(pa.Table.from_pylist(rows), Path(root) / "trials.parquet")


def read_epochs(root) -> pa.Table:
    import pyarrow.dataset as ds

    return ds.dataset(Path(root) / "epochs", format="parquet", partitioning="hive").to_table()


def atomic_write(table: pa.Table, path: Path) -> Path:
    """Write `table` to `path` via a temp file in the same folder and os.replace.

    The temp file is hidden and does not end in `.parquet` (`.<name>.<random>.part`), so
    no reader's glob (`epochs/*/*.parquet`, `**/*.parquet`) or dataset discovery ever
    sees a half-written file; the rename is atomic, so a reader sees the old or the new
    file, never a torn one. It is created with the process's umask (not mkstemp's 0600),
    so collaborators on a shared volume can read the results.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.part"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _scalar(v):
    if isinstance(v, (list, tuple)):
        return str(list(v))
    return v


_PROVENANCE_CACHE: dict = {}


def provenance(device: str | None = None) -> dict:
    """Where and with what a result was made: git commit, versions, host, device."""
    if not _PROVENANCE_CACHE:
        import torch

        from . import __version__

        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                    cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            commit = "unknown"
        _PROVENANCE_CACHE.update({
            "git_commit": commit, "regimes_version": __version__, "torch_version": torch.__version__,
            "python_version": platform.python_version(), "host": socket.gethostname(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
            "platform": sys.platform,
        })
    out = dict(_PROVENANCE_CACHE)
    if device is not None:
        import torch

        out["device"] = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    return out
