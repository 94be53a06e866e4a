"""Checks of the machine a study is about to run on, after its spec validated and before
Ray starts: the storage takes files, the data is on disk, the resources per trial exist,
and a study being resumed still has the spec it was started with.

Each check raises a `ConfigError` (one line, exit 2, nothing written) or, for the data
of a study whose trials run on other machines, returns its problems as warnings.

- storage: a local `--storage` must be a folder this user can write, or creatable
  (a URI is checked by `StudyStore` when it is built).
- data: CIFAR files must be under `data_root` unless `download: true`. Only the
  driver's own disk can be looked at: with Ray in-process (no `--address`) the trials
  read that disk, so a missing file is an error; on a cluster (`--address`) the
  workers may have the data when the driver does not, and `regimes validate`
  checks specs that may be meant for a cluster: both only warn.
- resources: with Ray in-process, a trial's `resources.cpu` / `resources.gpu` must
  fit this machine (Tune would otherwise wait forever for them); with `--address`
  the cluster may add nodes, so anything goes.
- same spec: a resumed study refuses a changed spec, naming the first keys that changed.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from regimes.errors import ConfigError

from ..storage import SPEC_COPY
from .files import check_writable
from .model import Study

SHOWN_DIFFERENCES = 3           # changed keys named when a resumed study's spec changed


# --- storage ---------------------------------------------------------------------------
def check_storage(storage: str, name: str) -> None:
    """A local storage (and the study folder in it, if present) takes new files."""
    if "://" in storage:
        return
    check_writable(os.path.join(storage, name), "--storage")


# --- data ------------------------------------------------------------------------------------
def data_problems(study: Study) -> list[ConfigError]:
    """Every distinct data location the study's configs read that is not on this machine's
    disk, keyed by the YAML path that sets `data_root` (or `dataset`)."""
    from .validate import _points_to_check, _yaml_path

    points = _points_to_check(study)
    if not {"dataset", "data_root", "download"} & set(study.space):
        points = [next(points)]         # every trial reads the same data
    wanted = {}
    for point in points:
        cfg = study.config(point)
        if cfg.dataset.startswith("cifar") and not cfg.download:
            wanted.setdefault((cfg.dataset, cfg.data_root), cfg)
    if not wanted:
        return []
    from regimes.core.data import check_on_disk    # imports torch: only for studies on CIFAR

    problems = []
    for cfg in wanted.values():
        try:
            check_on_disk(cfg)
        except ConfigError as e:
            problems.append(ConfigError(_yaml_path(study, e.key), e.message))
    return problems


# --- resources ---------------------------------------------------------------------------------
def check_resources(study: Study, address: str | None, num_cpus: int | None) -> None:
    """With Ray in-process (no address), each trial's CPUs and GPUs exist on this machine."""
    if address:
        return
    cpus = num_cpus or os.cpu_count() or 1
    if study.cpu > cpus:
        where = f"--num-cpus {num_cpus}" if num_cpus else f"this machine has {cpus} CPUs"
        raise ConfigError("resources.cpu", f"{study.cpu:g} per trial, but {where} and Ray runs in-process "
                          f"(no --address): no trial could start; allowed: <= {cpus}, or join a cluster "
                          "with --address")
    if study.gpu > 0:
        import torch

        gpus = torch.cuda.device_count()
        if study.gpu > gpus:
            allowed = f"<= {gpus}" if gpus else "0 here (trials train on the CPU)"
            raise ConfigError("resources.gpu", f"{study.gpu:g} per trial, but this machine has {gpus} GPUs and "
                              f"Ray runs in-process (no --address): no trial could start; allowed: {allowed}, "
                              "or join a cluster with --address")


# --- the spec of a resumed study -----------------------------------------------------------------
def stored_spec(storage: str, name: str) -> Any:
    """The spec mapping saved in `<storage>/<name>/study.yaml`, or None if there is none."""
    import yaml

    if "://" in storage:
        import pyarrow.fs as pafs

        uri = f"{storage.rstrip('/')}/{name}"
        try:
            fs, base = pafs.FileSystem.from_uri(uri)
            path = f"{base}/{SPEC_COPY}"
            if fs.get_file_info(path).type != pafs.FileType.File:
                return None
            with fs.open_input_stream(path) as fh:
                return yaml.safe_load(fh.read())
        except OSError as e:        # pyarrow's I/O errors (no credentials, no network, ...)
            raise ConfigError("--storage", f"{uri}/{SPEC_COPY} cannot be read ({' '.join(str(e).split())})") from None
    path = os.path.join(storage, name, SPEC_COPY)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as fh:
        return yaml.safe_load(fh)


def spec_differences(old: Any, new: Any, path: str = "") -> list[str]:
    """`key.path (was X, now Y)` for each value that differs, in the new spec's key order."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for k in [*new, *(k for k in old if k not in new)]:
            where = f"{path}.{k}" if path else str(k)
            if k not in old:
                out.append(f"{where} (was not set, now {_show(new[k])})")
            elif k not in new:
                out.append(f"{where} (was {_show(old[k])}, now not set)")
            else:
                out += spec_differences(old[k], new[k], where)
        return out
    return [] if old == new else [f"{path or 'spec'} (was {_show(old)}, now {_show(new)})"]


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_same_spec(study: Study, storage: str, resumable) -> None:
    """Refuse to resume a study whose spec changed. `resumable()` says whether Tune has state
    to resume from (without it the study starts over and the old spec does not matter);
    it is called only when the specs differ."""
    old = stored_spec(storage, study.name)
    if old is None or old == study.source or not resumable():
        return
    diffs = spec_differences(old, study.source)
    more = len(diffs) - SHOWN_DIFFERENCES
    shown = ", ".join(diffs[:SHOWN_DIFFERENCES]) + (f" and {more} more" if more > 0 else "")
    raise ConfigError("spec", f"differs from the one study '{study.name}' was started with in {shown}; "
                      "rerun with --restart to start over, or give the changed study a new name")
