"""One driver per study: an exclusive lock on the study folder, held for the whole sweep.

Two drivers of the same study on the same storage would both resume it and
overwrite each other's Parquet and Tune state (rows lost, trials run twice).
`StudyLock` is taken before Ray starts and released when the sweep ends; a
second driver gets a ConfigError naming the holder (exit 2), and so does
`--restart` while a live driver holds the lock.

Local and NFS storage: `fcntl.flock` on `<storage>/.<name>.lock`, a sibling of
the study folder (so `--restart` can delete the folder while the lock stays
held). The kernel (or the NFS server's lock manager) releases it when the
holder exits in any way, SIGKILL included, so a lock is never stale; the file
keeps the holder's host, pid and start time for the message.

URI storage (S3, GCS: no file locks): a lease object `<storage>/.<name>.lock.json`
with the holder and a heartbeat renewed every `HEARTBEAT_S` seconds by a
background thread. A lease whose heartbeat is older than `STALE_S` belongs to
a driver that died and is taken over. Object stores have no compare-and-swap
here, so two drivers starting within the same few seconds on a URI could
both take a free lease; after writing its lease a driver waits and reads it
back, which narrows that window to the store's write latency. The local
staging folder is flock-ed as well, so on one machine the race cannot happen.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from regimes.errors import ConfigError

from .storage import StudyStore

HEARTBEAT_S = 15.0
STALE_S = 4 * HEARTBEAT_S


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "heartbeat": time.time()}


def _describe(h: dict) -> str:
    return f"pid {h.get('pid', '?')} on {h.get('host', '?')}, since {h.get('since', '?')}"


class StudyLock:
    """`with StudyLock(store):` -- held by this driver until the block ends."""

    def __init__(self, store: StudyStore):
        self.store = store
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- local: flock ------------------------------------------------------------
    def _local_path(self) -> Path:
        folder = self.store.local_dir
        return folder.parent / f".{folder.name}.lock"

    def _lock_local(self) -> None:
        import fcntl

        path = self._local_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError("--storage", f"cannot create the study's lock file {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                holder = {}
            os.close(fd)
            raise ConfigError(self.store.study_path, f"is being run by another driver ({_describe(holder)}); "
                              "wait for it to finish or stop it first") from None
        except OSError as e:               # a filesystem without locks
            os.close(fd)
            raise ConfigError("--storage", f"{path.parent} does not support file locks ({e.strerror}); "
                              "use a local disk or NFS with locking, or a URI") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        self._fd = fd

    # --- URI: lease with heartbeat ----------------------------------------------------
    def _lease(self):
        import pyarrow.fs as pafs

        fs, base = pafs.FileSystem.from_uri(self.store.ray_storage_path)
        return fs, f"{base}/.{self.store.name}.lock.json"

    def _read_lease(self, fs, path) -> dict | None:
        import pyarrow.fs as pafs

        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        try:
            with fs.open_input_stream(path) as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            return None

    def _write_lease(self, fs, path, lease: dict) -> None:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(json.dumps(lease).encode())

    def _lock_uri(self) -> None:
        fs, path = self._lease()
        held = self._read_lease(fs, path)
        if held and time.time() - held.get("heartbeat", 0) < STALE_S:
            raise ConfigError(self.store.study_path, f"is being run by another driver ({_describe(held)}); "
                              "wait for it to finish or stop it first")
        me = _holder()
        self._write_lease(fs, path, me)
        time.sleep(1.0)                     # a racing driver's write would land by now
        again = self._read_lease(fs, path) or {}
        if (again.get("host"), again.get("pid")) != (me["host"], me["pid"]):
            raise ConfigError(self.store.study_path, f"was just taken by another driver ({_describe(again)})")
        self._lease_obj = me

        def beat():
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    self._write_lease(fs, path, {**me, "heartbeat": time.time()})
                except OSError:
                    pass
        self._thread = threading.Thread(target=beat, name="regimes-study-lease", daemon=True)
        self._thread.start()

    def _unlock_uri(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            fs, path = self._lease()
            held = self._read_lease(fs, path) or {}
            if (held.get("host"), held.get("pid")) == (self._lease_obj["host"], self._lease_obj["pid"]):
                fs.delete_file(path)
        except OSError:
            pass

    # --- context --------------------------------------------------------------------------
    def __enter__(self) -> "StudyLock":
        self._lock_local()                  # the folder itself, or the URI's staging folder
        if self.store.remote:
            try:
                self._lock_uri()
            except BaseException:
                self._release_local()
                raise
        return self

    def _release_local(self) -> None:
        if self._fd is not None:
            os.close(self._fd)              # closing the descriptor releases the flock
            self._fd = None

    def __exit__(self, *exc) -> None:
        if self.store.remote:
            self._unlock_uri()
        self._release_local()
