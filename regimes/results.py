"""Results on disk: one Parquet row per (trial, epoch), one per trial.

Layout under a study root (the CLI's `out`, or `<storage>/<study>` for sweeps):

    epochs/trial_id=<id>/data.parquet   hive-partitioned; trial_id comes from the path
    epochs/trial_id=<id>/part-<first>-<last>.parquet
                                        a running trial's newest rows (epochs first..last),
                                        merged into data.parquet as the trial goes on and
                                        when it ends: a finished trial has data.parquet only
    trials.parquet                      one row per trial: config, final_<measure>, status, provenance

Epoch rows carry `study`, `epoch`, `step`, `schema_version`, every TrainConfig
field and every measure. Two config fields share their names with measures
(`elr`, `lr`): the measure keeps the plain name (the rate actually used that
epoch) and the config value is stored as `cfg_elr` / `cfg_lr`. In
trials.parquet config fields keep their plain names and measures are prefixed
`final_`. Every write is atomic (temp file in the same folder + os.replace); the
files of one trial partition never share an epoch once a write is done, so a
dataset over `epochs/` has each (trial, epoch) once. Readable by pandas, polars
and DuckDB without this package.
"""
from __future__ import annotations

import functools
import os
import platform
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from .core import record
from .core.config import TrainConfig

# 2: list-valued config fields (milestones, knots) are Parquet list columns, not strings
SCHEMA_VERSION = 2


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


def epoch_table(cfg: TrainConfig | dict, records: list[dict], study: str, columns: dict | None = None) -> pa.Table:
    """`table(epoch_rows(cfg, records, study))` (plus the constant `columns`), built column by
    column instead of through one dict per row: same columns, same order, same types. A
    record key missing from some records is null there (from every record's keys, not the
    first one's)."""
    config = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg)
    n = len(records)
    keys = dict.fromkeys(k for rec in records for k in rec)
    cols: dict[str, list] = {"study": [study] * n, "epoch": [rec["epoch"] for rec in records],
                             "step": [rec.get("step", 0) for rec in records], "schema_version": [SCHEMA_VERSION] * n}
    for k, v in config.items():
        cols[f"cfg_{k}" if k in keys else k] = [_scalar(v)] * n
    for k in keys:
        if k not in ("epoch", "step"):
            values = [rec.get(k) for rec in records]
            if any(isinstance(v, (list, tuple)) for v in values):
                values = [_scalar(v) for v in values]
            cols[k] = values
    for k, v in (columns or {}).items():
        cols[k] = [v] * n
    return _typed(pa.table(cols))


class EpochTables:
    """One trial's epoch rows as tables, as `epoch_table` makes them, several times faster: the
    constant columns (study, schema_version, config, `columns`) are built once per set of
    record keys and repeated with one `take`, and each measure column gets the type it had
    the last time (no per-value type inference). The sink builds one table per write."""

    # (record keys, config fields, extra columns) -> (column names, constant columns' schema,
    # measure types): the same for every trial of a study, so shared by all builders
    _layouts: dict[tuple, tuple] = {}

    def __init__(self, cfg: TrainConfig | dict, study: str, columns: dict | None = None):
        self.config = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg)
        self.study, self.columns = study, dict(columns or {})
        self._const: dict[tuple, pa.Table] = {}     # record keys -> this trial's constant columns, 1 row

    def __call__(self, records: list[dict]) -> pa.Table:
        keys = tuple(dict.fromkeys(k for rec in records for k in rec))
        if keys not in self._const:
            self._const[keys] = self._constants(keys, records[0])
        const = self._const[keys]
        names, _, types = self._layouts[self._layout_key(keys)]
        n = len(records)
        taken = const.take(pa.array([0] * n, pa.int64()))
        cols = {name: taken.column(name) for name in taken.column_names}
        cols["epoch"] = [rec["epoch"] for rec in records]
        cols["step"] = [rec.get("step", 0) for rec in records]
        for k in keys:
            if k not in ("epoch", "step"):
                cols[k] = [rec.get(k) for rec in records]
        arrays = []
        for name in names:
            col = cols[name]
            if isinstance(col, list):
                col = self._array(name, col, types)
            arrays.append(col)
        return pa.Table.from_arrays(arrays, names=names)

    def _layout_key(self, keys: tuple) -> tuple:
        return keys, tuple(self.config), tuple(self.columns)

    def _constants(self, keys: tuple, first: dict) -> pa.Table:
        """This trial's constant columns as one typed row (the layout from epoch_table once per study)."""
        layout = self._layout_key(keys)
        if layout not in self._layouts:
            t = epoch_table(self.config, [{k: first.get(k) for k in keys}], self.study, self.columns)
            measures = [k for k in keys if k not in ("epoch", "step")]
            const = t.select([c for c in t.column_names if c not in measures and c not in ("epoch", "step")])
            types = {c: t.schema.field(c).type for c in (*measures, "epoch", "step")}
            self._layouts[layout] = (t.column_names, const.schema, types)
            return const
        schema = self._layouts[layout][1]
        row = {"study": self.study, "schema_version": SCHEMA_VERSION,
               **{(f"cfg_{k}" if k in keys else k): _scalar(v) for k, v in self.config.items()}, **self.columns}
        try:
            return pa.Table.from_pylist([row], schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):    # a value of another type
            t = epoch_table(self.config, [{k: first.get(k) for k in keys}], self.study, self.columns)
            return t.select(schema.names)

    @staticmethod
    def _array(name: str, values: list, types: dict) -> pa.Array:
        typ = types.get(name)
        if typ is not None and not pa.types.is_null(typ):
            try:
                return pa.array(values, type=typ)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                pass
        if any(isinstance(v, (list, tuple)) for v in values):
            values = [_scalar(v) for v in values]
        arr = pa.array(values)
        if pa.types.is_null(arr.type) and name in record.BY_NAME:
            arr = arr.cast(_ARROW[record.BY_NAME[name].kind])
        elif not pa.types.is_null(arr.type):
            types[name] = arr.type
        return arr


def trial_summary(cfg: TrainConfig | dict, records: list[dict], study: str, trial_id: str, status: str,
                  extra: dict | None = None, torch: bool = True) -> dict:
    """One trials.parquet row. `torch=False`: the provenance without this process's torch, GPU
    and device (the study driver: the trial's come in `extra`, from its reports)."""
    config = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg)
    row = {"study": study, "trial_id": trial_id, **{k: _scalar(v) for k, v in config.items()}}
    last = records[-1] if records else {}
    for k, v in last.items():
        if k not in ("epoch", "diverged"):
            row[f"final_{k}"] = _scalar(v)
    row["epochs_done"] = last.get("epoch", 0)
    row["diverged"] = bool(last.get("diverged", False))
    row["status"] = status
    row.update(provenance(device=config.get("device"), torch=torch))
    row.update(extra or {})
    return row


DATA_FILE = "data.parquet"       # a trial's rows from its first epoch on (all of them once it ended)
_PART = re.compile(r"part-(\d+)-(\d+)\.parquet")


def trial_folder(root, trial_id: str) -> Path:
    return Path(root) / "epochs" / f"trial_id={trial_id}"


def part_name(first: int, last: int) -> str:
    """File name of a trial's rows of epochs first..last (zero-padded: listed in epoch order)."""
    return f"part-{first:06d}-{last:06d}.parquet"


def part_range(name: str) -> tuple[int, int] | None:
    """(first, last) epochs of a part file's name; None for any other name."""
    m = _PART.fullmatch(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def write_trial_epochs(root, trial_id: str, rows: list[dict]) -> Path:
    """(Re)write one trial's epoch rows as epochs/trial_id=<id>/data.parquet, atomically."""
    rows = [{k: v for k, v in r.items() if k != "trial_id"} for r in rows]
    return atomic_write(table(rows), trial_folder(root, trial_id) / DATA_FILE)


def write_trials(root, rows: list[dict]) -> Path:
    return atomic_write(table(rows), Path(root) / "trials.parquet")


def upsert_trials(root, rows: list[dict]) -> Path:
    """Write `rows` into trials.parquet, replacing the rows of the same trial_id and keeping
    every other trial (a second `regimes train --name b` into the same folder adds b)."""
    path = Path(root) / "trials.parquet"
    mine = {r["trial_id"] for r in rows}
    old = []
    if path.exists():
        try:
            old = [r for r in pq.read_table(path).to_pylist() if r.get("trial_id") not in mine]
        except (pa.ArrowInvalid, OSError):
            old = []        # a damaged table: the new rows start it again
    merged = old + list(rows)
    keys = list(dict.fromkeys(k for r in merged for k in r))
    return write_trials(root, [{k: r.get(k) for k in keys} for r in merged])


def table(rows: list[dict]) -> pa.Table:
    """Rows as a table, list-valued config fields with their list types whatever the values
    (an empty `knots` would otherwise be list<null> in one file and list<list<double>> in
    the next, and a dataset over both would not read)."""
    return _typed(pa.Table.from_pylist(rows))


def _typed(t: pa.Table) -> pa.Table:
    names = t.column_names
    schema = t.schema
    for name, typ in _list_types().items():
        for col in (name, f"cfg_{name}"):
            if col in schema.names and schema.field(col).type != typ:
                t = t.set_column(names.index(col), col, t.column(col).cast(typ))
    # a record field that is None in every row of this file (e.g. decided_regime of a trial that
    # was not stopped early) gets its declared type, not `null`: a dataset over files of several
    # trials takes one file's schema and cannot cast a string column to null
    for i, f in enumerate(schema):
        if not pa.types.is_null(f.type):
            continue
        name = f.name[len("final_"):] if f.name.startswith("final_") else f.name
        if name in record.BY_NAME:
            t = t.set_column(i, f.name, t.column(i).cast(_ARROW[record.BY_NAME[name].kind]))
    return t


_ARROW = {float: pa.float64(), int: pa.int64(), bool: pa.bool_(), str: pa.string()}


@functools.cache
def _list_types() -> dict[str, pa.DataType]:
    import typing

    out = {}
    for name, f in TrainConfig.model_fields.items():
        typ = _arrow_type(f.annotation, typing)
        if isinstance(typ, pa.ListType):
            out[name] = typ
    return out


def _arrow_type(annotation, typing):
    if typing.get_origin(annotation) is tuple:
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return pa.list_(_arrow_type(args[0], typing) if args else pa.float64())
    return pa.float64() if annotation is float else pa.int64() if annotation is int else pa.string()


def read_epochs(root) -> pa.Table:
    import pyarrow.dataset as ds

    return ds.dataset(Path(root) / "epochs", format="parquet", partitioning="hive").to_table()


# Small files (a running trial's newest rows) are written without compression, dictionaries,
# statistics or the Arrow schema in the footer: half the cost of pyarrow's defaults for a
# file of ~100 columns and a few rows, at about the same size; bigger files keep the defaults
# (snappy + dictionaries make a 1000-row file ~20x smaller).
SMALL_ROWS = 100
FAST_WRITE = {"compression": "none", "use_dictionary": False, "write_statistics": False, "store_schema": False}


def write_options(num_rows: int) -> dict:
    """pq.write_table options for a file of `num_rows` epoch rows."""
    return FAST_WRITE if num_rows <= SMALL_ROWS else {}


def atomic_write(table: pa.Table, path: Path, **options) -> Path:
    """Write `table` to `path` via a temp file in the same folder and os.replace.

    The temp file is hidden and does not end in `.parquet` (`.<name>.<random>.part`), so
    no reader's glob (`epochs/*/*.parquet`, `**/*.parquet`) or dataset discovery ever
    sees a half-written file; the rename is atomic, so a reader sees the old or the new
    file, never a torn one. It is created with the process's umask (not mkstemp's 0600),
    so collaborators on a shared volume can read the results. `options` go to pq.write_table.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.part"
    try:
        pq.write_table(table, tmp, **options)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _scalar(v):
    """A config value as a Parquet cell: tuples (list-valued fields) become lists."""
    if isinstance(v, (list, tuple)):
        return [_scalar(x) for x in v]
    return v


_PROVENANCE_CACHE: dict = {}


def provenance(device: str | None = None, torch: bool = True) -> dict:
    """Where and with what a result was made: git commit, versions, host, device. `torch=False`:
    without torch_version, cuda_device and device, and without importing torch (a study's driver)."""
    if not torch:
        return dict(_base_provenance())
    import torch as _torch

    out = dict(_base_provenance())
    out.update(torch_version=_torch.__version__,
               cuda_device=_torch.cuda.get_device_name(0) if _torch.cuda.is_available() else "")
    if device is not None:
        out["device"] = ("cuda" if _torch.cuda.is_available() else "cpu") if device == "auto" else device
    return out


def _base_provenance() -> dict:
    if not _PROVENANCE_CACHE:
        from . import __version__

        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                    cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            commit = "unknown"
        _PROVENANCE_CACHE.update({
            "git_commit": commit, "regimes_version": __version__,
            "python_version": platform.python_version(), "host": socket.gethostname(),
            "platform": sys.platform,
        })
    return _PROVENANCE_CACHE
