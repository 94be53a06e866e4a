"""Helpers for tests that run `regimes sweep` as a separate driver process and kill it."""
from __future__ import annotations

import os
import sys

import psutil


def sweep(spec_path, storage) -> list[str]:
    """The `regimes sweep` command line: in-process Ray on 2 CPUs, no progress table."""
    return [sys.executable, "-m", "regimes.cli", "sweep", str(spec_path), "--storage", str(storage),
            "--num-cpus", "2", "--quiet"]


def kill_session(pgid: int) -> None:
    """SIGKILL every process left in the session we started (Ray's daemons outlive the driver)."""
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                proc.kill()
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            pass
