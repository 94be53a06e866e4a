"""Where a study keeps everything: `<storage>/<study name>/`.

    <storage>/<name>/                  Ray Tune's experiment folder (state, trial dirs, checkpoints)
    <storage>/<name>/study.yaml        the spec this study was started with
    <storage>/<name>/optuna.journal    Optuna JournalStorage (kind: optuna)
    <storage>/<name>/boundary_search.json   brackets of a boundary search (kind: boundary)
    <storage>/<name>/epochs/           Parquet, one file per trial (hive: trial_id=...)
    <storage>/<name>/trials.parquet    one row per trial

`--storage` is a local/NFS path or a URI (s3://bucket/path, gs://..., file://...).
Ray writes to a URI itself. Our own files (Parquet, journal, spec) are written
by the driver to a local folder first: for a local path that folder *is* the
study folder; for a URI it is a staging copy under the temp dir, mirrored to
the URI after each write (and pulled from it when a study resumes).
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from regimes.errors import ConfigError

JOURNAL = "optuna.journal"
SPEC_COPY = "study.yaml"
BOUNDARIES = "boundary_search.json"    # kind: boundary: the searcher's brackets per line
OWN_FILES = ("epochs", "trials.parquet", JOURNAL, SPEC_COPY, BOUNDARIES)


def is_uri(storage: str) -> bool:
    return "://" in storage


# study name -> the store this driver runs it from. Tune pickles our callbacks and searchers
# with its experiment state; when a resumed driver unpickles them, their store is this one
# (where the study is now), not the one they were pickled with: a copied or moved study
# writes only into its own folder.
_CURRENT: dict[str, "StudyStore"] = {}


def _current_store(storage: str, name: str) -> "StudyStore":
    return _CURRENT.get(name) or StudyStore(storage, name)


@dataclass(frozen=True)
class StudyStore:
    storage: str      # as given on the command line
    name: str         # study name = folder name

    def __post_init__(self):
        if is_uri(self.storage):
            import pyarrow.fs as pafs

            try:
                pafs.FileSystem.from_uri(self.storage)
            except Exception as e:  # pyarrow raises several types for bad URIs
                raise ConfigError("--storage", f"{self.storage!r} is not a usable URI ({e}); "
                                  "give a local/NFS path or s3://bucket/path") from None
        else:
            p = Path(self.storage)
            if p.exists() and not p.is_dir():
                raise ConfigError("--storage", f"{self.storage!r} is a file; expected a folder (created if missing)")

    def __reduce__(self):
        return (_current_store, (self.storage, self.name))

    def make_current(self) -> None:
        """Resolve every store of this study unpickled from now on in this process to this one."""
        _CURRENT[self.name] = self

    # --- paths -------------------------------------------------------------
    @property
    def remote(self) -> bool:
        return is_uri(self.storage)

    @property
    def ray_storage_path(self) -> str:
        """`tune.RunConfig(storage_path=...)`; Ray's experiment folder is <this>/<name>."""
        return self.storage.rstrip("/") if self.remote else str(Path(self.storage).resolve())

    @property
    def study_path(self) -> str:
        """The study folder as a user would open it (path or URI)."""
        return f"{self.ray_storage_path}/{self.name}"

    @property
    def local_dir(self) -> Path:
        """Folder the driver writes our files into (the study folder itself, or a staging copy)."""
        if not self.remote:
            return Path(self.study_path)
        tag = hashlib.sha1(self.study_path.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / "regimes-staging" / tag / self.name

    @property
    def journal_path(self) -> Path:
        return self.local_dir / JOURNAL

    # --- mirroring (URI storage only) ----------------------------------------
    def _fs(self):
        """(filesystem, base path) of the study URI; made once per store (for S3, resolving the
        credentials and region costs more than a small upload)."""
        cached = self.__dict__.get("_fs_cache")
        if cached is None:
            import pyarrow.fs as pafs

            cached = pafs.FileSystem.from_uri(self.study_path)
            object.__setattr__(self, "_fs_cache", cached)     # frozen dataclass; not pickled (__reduce__)
        return cached

    def push(self, relpath: str) -> None:
        """Upload one file (or folder) of the local dir to the study URI; no-op for local storage."""
        if not self.remote:
            return
        import pyarrow.fs as pafs

        src = self.local_dir / relpath
        if not src.exists():
            return
        fs, base = self._fs()
        dst = f"{base}/{relpath}"
        if src.is_dir():
            fs.create_dir(dst, recursive=True)
        else:
            fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(src), dst, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    def delete(self, relpath: str) -> None:
        """Remove one file or folder from the study URI; no-op for local storage."""
        if not self.remote:
            return
        import pyarrow.fs as pafs

        fs, base = self._fs()
        info = fs.get_file_info(f"{base}/{relpath}")
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(info.path)

    def pull(self) -> None:
        """Fetch our files from the study URI into the staging dir (resume); no-op for local storage."""
        if not self.remote:
            return
        import pyarrow.fs as pafs

        fs, base = self._fs()
        self.local_dir.mkdir(parents=True, exist_ok=True)
        for name in OWN_FILES:
            info = fs.get_file_info(f"{base}/{name}")
            if info.type == pafs.FileType.NotFound:
                continue
            dst = self.local_dir / name
            if info.type == pafs.FileType.Directory:
                dst.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(f"{base}/{name}", str(dst), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())

    def sync_down(self, relpath: str) -> None:
        """Make the local copy of one folder of the study URI (a trial's partition) what the
        URI holds: its files downloaded, local files it no longer has removed. A trial writes
        its partition from whichever node runs it, so before another node (a retry, the driver)
        changes the partition it must see what is there. No-op for local storage."""
        if not self.remote:
            return
        import pyarrow.fs as pafs

        fs, base = self._fs()
        local = self.local_dir / relpath
        remote = {}
        if fs.get_file_info(f"{base}/{relpath}").type == pafs.FileType.Directory:
            for info in fs.get_file_info(pafs.FileSelector(f"{base}/{relpath}")):
                if info.type == pafs.FileType.File:
                    remote[info.base_name] = info.path
        local.mkdir(parents=True, exist_ok=True)
        for p in local.iterdir():
            if p.is_file() and not p.name.startswith(".") and p.name not in remote:
                p.unlink()
        for name, path in remote.items():
            pafs.copy_files(path, str(local / name), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())

    # --- lifecycle -----------------------------------------------------------
    def clear_own_files(self) -> None:
        """Remove our files (not Ray's) locally and, for URIs, remotely."""
        for name in OWN_FILES:
            p = self.local_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for name in OWN_FILES:
            self.delete(name)

    def delete_all(self) -> None:
        """`--restart`: remove the whole study folder (Ray's state and ours)."""
        if self.remote:
            import pyarrow.fs as pafs

            fs, base = self._fs()
            if fs.get_file_info(base).type != pafs.FileType.NotFound:
                fs.delete_dir(base)
            shutil.rmtree(self.local_dir, ignore_errors=True)
            try:
                self.local_dir.parent.rmdir()       # the staging folder of this URI, if now empty
            except OSError:
                pass
        else:
            shutil.rmtree(self.local_dir, ignore_errors=True)
