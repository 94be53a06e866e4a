"""Load a study spec and validate it into a `Study`, down to the config of every trial.

`SpecFile` (specfile.py) checks the file's structure and values; then every config
the study can run is built as a TrainConfig: each point of a grid, the bounds and
choices of an Optuna space, both ends of a boundary search's range on each line.
A config's error is re-keyed to the YAML path that set the value
(`search.space.depth`, `base.momentum`, `search.range`). Last come the rules between
the configs and the study: early stopping needs a constant schedule, device cuda
needs resources.gpu, and ASHA's grace period must fit in the trials.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Iterator, Mapping

from pydantic import ValidationError

from regimes.errors import ConfigError

from .files import read_yaml
from .messages import config_error
from .model import Study
from .specfile import SpecFile
from .values import tname

MAX_CHECKED_CORNERS = 4096    # Optuna: configs built from the product of bounds/choices


def load(path: str | Path) -> Study:
    """Read and validate a study spec file (UTF-8 YAML, each key given once)."""
    return from_dict(read_yaml(path, "a study YAML file"))


def from_dict(data: Any) -> Study:
    """Validate a loaded spec mapping; raises ConfigError naming the key path."""
    if not isinstance(data, Mapping):
        raise ConfigError("spec", f"expected a mapping with keys {', '.join(SpecFile.model_fields)}; "
                          f"got {tname(data)}")
    try:
        spec = SpecFile.model_validate(dict(data))
    except ValidationError as e:
        raise config_error(e, SpecFile) from None
    study = Study(name=spec.name, description=spec.description, base=dict(spec.base),
                  **spec.search.study_fields(), scheduler=spec.scheduler,
                  cpu=float(spec.resources.cpu), gpu=float(spec.resources.gpu),
                  epochs_per_report=spec.epochs_per_report, checkpoint_every=spec.checkpoint_every,
                  max_failures=spec.max_failures,
                  early_stop=spec.early_stop.to_early_stop() if spec.early_stop else None,
                  pack=spec.pack.size if spec.pack else 1,
                  source=dict(data))
    _check_configs(study)
    _check_packs(study)
    if study.scheduler and study.scheduler.grace_period > study.max_epochs():
        raise ConfigError("scheduler.grace_period", f"{study.scheduler.grace_period} is longer than the "
                          f"trials ({study.max_epochs()} epochs); allowed: 1 .. {study.max_epochs()}")
    return study


def _points_to_check(study: Study) -> Iterator[dict]:
    if study.kind == "grid":
        yield from study.grid_points()
        return
    if study.kind == "boundary":
        for point in study.grid_points():
            for v in study.axis_range:
                yield {**point, study.axis: v}
        return
    keys = list(study.space)
    cands = [study.space[k].candidates() for k in keys]
    if math.prod(len(c) for c in cands) <= MAX_CHECKED_CORNERS:
        for combo in itertools.product(*cands):
            yield dict(zip(keys, combo))
    else:   # too many corners: vary one dimension at a time around the first candidates
        first = {k: c[0] for k, c in zip(keys, cands)}
        for k, c in zip(keys, cands):
            for v in c:
                yield {**first, k: v}


def _yaml_path(study: Study, field_name: str) -> str:
    """Where the spec sets TrainConfig field `field_name`."""
    if field_name in study.space:
        path = f"search.space.{field_name}"
        return path + f".{study.space[field_name].kind}" if study.kind == "optuna" else path
    if field_name in study.base:
        return f"base.{field_name}"
    if study.kind == "boundary" and field_name == study.axis:
        return "search.range"
    return field_name


def _at(point: Mapping) -> str:
    return "(at " + ", ".join(f"{k}={v!r}" for k, v in point.items()) + ")"


def _check_configs(study: Study):
    for point in _points_to_check(study):
        try:
            cfg = study.config(point)
        except ConfigError as e:
            field_name = e.key.split(".")[0]
            message = str(e).split(": ", 1)[1]
            if len(point) > 1 or field_name not in point:
                message += " " + _at(point)
            raise ConfigError(_yaml_path(study, field_name), message) from None
        if study.early_stop is not None and cfg.schedule != "constant":
            raise ConfigError("early_stop", f"needs a constant ELR/lr (schedule: constant), got schedule: "
                              f"{cfg.schedule} {_at(point)}: a rate that changes later can change the regime "
                              "a trial is in")
        if cfg.device == "cuda" and study.gpu == 0:
            raise ConfigError("resources.gpu", "0, but base.device is cuda; give each trial a GPU "
                              "(e.g. gpu: 0.25) or use device: auto")


def _check_packs(study: Study) -> None:
    """Every pack the study would train can be packed (regimes.core.packable)."""
    if study.pack <= 1:
        return
    from regimes.core import packable

    if study.kind == "grid":
        packs = study.packs(study.grid_points())
    else:   # a boundary search packs probes of lines that share every unpackable field
        packs = [[{**p, study.axis: v} for p in group for v in study.axis_range]
                 for group in study.pack_groups(study.grid_points())]
    for members in packs:
        try:
            packable.check([study.config(p) for p in members])
        except ConfigError as e:
            field_name = e.key.split(".")[0]
            path = _yaml_path(study, field_name)
            raise ConfigError(path if path != field_name else "pack", f"{e.message} (in pack: {study.pack})") \
                from None
