"""Study spec: one YAML file -> a validated `Study`, before Ray starts.

    name: three-regimes-digits
    base: {dataset: digits, model: convnet_si, width: 16, mode: sphere, epochs: 60}
    search:
      kind: grid                       # grid | optuna | boundary
      space: {elr: [1.0e-4, 1.0e-2, 1.0], seed: [0, 1]}
    resources: {cpu: 1, gpu: 0}
    early_stop: {window: 4, converge_window: 9, min_epochs: 8}   # optional: stop decided trials

A boundary search (regimes/study/boundary.py) brackets the regime boundaries
along one axis instead of gridding it:

    search:
      kind: boundary
      axis: elr                        # a float TrainConfig field, searched in log space
      range: [1.0e-4, 1.0e-1]
      resolution: 1.19                 # stop when every boundary is bracketed within this factor
      budget: 60                       # trials at most, over all lines
      probes_per_round: 2              # trials per line per round (parallel bisection)
      initial: 5                       # log-spaced first scan of each line
      space: {wd: [0.0, 5.0e-4], seed: [0, 1]}   # other axes: a grid; one search per combination

Every key of `base` and `search.space` is a TrainConfig field. Validation goes
all the way down to config values: a grid builds the TrainConfig of every
combination; an Optuna space builds the configs at its bounds and choices. Any
problem raises `ConfigError` whose key is the path in the YAML
(`search.space.elr.loguniform`) and whose message says what is allowed.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from regimes.core.config import TrainConfig, field_kind
from regimes.errors import ConfigError
from regimes.regime import CHAOTIC, CONVERGENCE, DIVERGENCE, EarlyStop

KINDS = ("grid", "optuna", "boundary")
SAMPLERS = ("tpe", "gp", "cmaes", "random", "qmc")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
MODES = ("min", "max")
# Per-epoch record keys an objective may use (the contract's record; techniques add theirs here).
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "si_norm", "elr", "lr",
           "eff_grad_norm", "angular_update", "time_s", "samples_per_s",
           "sharpness", "hess_trace", "input_curvature_mean", "input_curvature_std",
           # techniques (regimes/techniques.py)
           "test_acc_ensemble", "test_loss_ensemble", "test_acc_swa", "test_loss_swa",
           "beta_mean", "beta_max", "gamma_mean", "gnorm_penalty", "input_grad_sq",
           "beta_penalty", "gamma_penalty", "weight_l2", "enorm_objective")
TOP_KEYS = ("name", "description", "base", "search", "scheduler", "resources",
            "epochs_per_report", "checkpoint_every", "max_failures", "early_stop")
GRID_KEYS = ("kind", "space", "metric", "mode")
OPTUNA_KEYS = ("kind", "space", "metric", "mode", "sampler", "num_samples", "max_concurrent", "sampler_seed")
BOUNDARY_KEYS = ("kind", "axis", "range", "resolution", "budget", "probes_per_round", "initial", "space")
EARLY_STOP_KEYS = ("window", "converge_window", "min_epochs", "labels")
ASHA_KEYS = ("kind", "grace_period", "reduction_factor", "brackets")
RESOURCE_KEYS = ("cpu", "gpu")
MAX_GRID = 100_000            # trials; a bigger grid is almost surely a typo
MAX_CHECKED_CORNERS = 4096    # Optuna: configs built from the product of bounds/choices
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Distribution:
    """One Optuna dimension: uniform/loguniform [lo, hi], int [lo, hi] (inclusive), choice [..]."""
    kind: str
    values: tuple

    def candidates(self) -> tuple:
        """The values validation checks: both bounds, or every choice."""
        return self.values

    def to_optuna(self):
        import optuna.distributions as od

        if self.kind == "uniform":
            return od.FloatDistribution(*self.values)
        if self.kind == "loguniform":
            return od.FloatDistribution(*self.values, log=True)
        if self.kind == "int":
            return od.IntDistribution(*self.values)
        return od.CategoricalDistribution(list(self.values))


@dataclass(frozen=True)
class Asha:
    grace_period: int = 5         # epochs before the first cut
    reduction_factor: float = 3.0
    brackets: int = 1


@dataclass(frozen=True)
class Study:
    name: str
    base: dict
    kind: str                                   # grid | optuna | boundary
    space: dict                                 # grid/boundary: key -> list; optuna: key -> Distribution
    metric: tuple = ()                          # one entry per objective
    mode: tuple = ()
    sampler: str = "tpe"
    num_samples: int = 1                        # optuna: trials; grid: always 1 pass
    max_concurrent: int = 2
    sampler_seed: int | None = None
    scheduler: Asha | None = None
    cpu: float = 1.0
    gpu: float = 0.0
    epochs_per_report: int = 1
    checkpoint_every: int = 10                  # epochs between checkpoints (and one at the end)
    max_failures: int = 3                       # retries per trial from its last checkpoint; -1 = forever
    description: str = ""
    # kind: boundary (see BoundarySearch): the searched axis, its range, the target bracket
    # width as a factor, the trial budget, probes per line per round, first-scan points
    axis: str = ""
    axis_range: tuple = ()
    resolution: float = 0.0
    budget: int = 0
    probes_per_round: int = 2
    initial: int = 5
    early_stop: EarlyStop | None = None         # regime-aware early stopping (opt-in)
    source: dict = field(default_factory=dict, compare=False)   # the YAML mapping, as loaded

    # ------------------------------------------------------------------
    @property
    def multi_objective(self) -> bool:
        return len(self.metric) > 1

    def grid_points(self) -> Iterator[dict]:
        """Every combination of a grid space, in the order of the YAML keys (for kind:
        boundary, of the other axes: one boundary search per combination)."""
        keys = list(self.space)
        for combo in itertools.product(*(self.space[k] for k in keys)):
            yield dict(zip(keys, combo))

    def num_trials(self) -> int:
        if self.kind == "grid":
            return math.prod(len(v) for v in self.space.values())
        if self.kind == "boundary":
            return self.budget
        return self.num_samples

    def config(self, point: Mapping[str, Any]) -> TrainConfig:
        """The TrainConfig of one trial: base + the trial's point of the space."""
        return TrainConfig.from_dict({**self.base, **point})

    def max_epochs(self) -> int:
        e = self.space.get("epochs")
        if e is None:
            return TrainConfig.from_dict(self.base).epochs
        return int(max(e) if self.kind in ("grid", "boundary") else max(e.values))

    def summary(self) -> str:
        n = self.num_trials()
        if self.kind == "grid":
            what = f"grid of {n} trials"
        elif self.kind == "boundary":
            lines = math.prod(len(v) for v in self.space.values())
            what = (f"boundary search along {self.axis} in [{self.axis_range[0]:g}, {self.axis_range[1]:g}] "
                    f"to a factor {self.resolution:g}, {lines} line(s), {self.probes_per_round} probes per "
                    f"round, at most {n} trials")
        else:
            what = (f"optuna ({self.sampler}) {n} trials, {self.max_concurrent} at a time, "
                    f"{'/'.join(f'{m} {d}' for m, d in zip(self.metric, self.mode))}")
        sched = ", ASHA" if self.scheduler else ""
        if self.early_stop:
            sched += f", early stop when {'/'.join(self.early_stop.labels)} is decided"
        return (f"study '{self.name}': {what}{sched}; up to {self.max_epochs()} epochs per trial; "
                f"per trial cpu={self.cpu:g} gpu={self.gpu:g}")


# ---------------------------------------------------------------------------
def load(path: str | Path) -> Study:
    """Read and validate a study spec file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), "no such file") from None
    except IsADirectoryError:
        raise ConfigError(str(path), "is a directory; expected a study YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), f"not valid YAML ({e})") from None
    return from_dict(data)


def from_dict(data: Any) -> Study:
    """Validate a loaded spec mapping; raises ConfigError naming the key path."""
    if not isinstance(data, Mapping):
        raise ConfigError("spec", f"expected a mapping with keys {', '.join(TOP_KEYS)}; got {_tname(data)}")
    _no_unknown(data, TOP_KEYS, "")

    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError("name", f"required: a folder-safe study name (letters, digits, . _ -), got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("description", f"expected a string, got {_tname(description)}")

    base = data.get("base", {})
    if base is None:
        base = {}
    if not isinstance(base, Mapping):
        raise ConfigError("base", f"expected a mapping of TrainConfig fields, got {_tname(base)}")
    for key in base:
        _check_field(key, "base")
    base = dict(base)

    search = data.get("search")
    if not isinstance(search, Mapping):
        raise ConfigError("search", "required: a mapping with `kind: grid`, `kind: optuna` or "
                          "`kind: boundary` and a `space`")
    kind = search.get("kind")
    if kind not in KINDS:
        raise ConfigError("search.kind", f"{kind!r} is not allowed; one of {', '.join(KINDS)}")
    allowed = {"grid": GRID_KEYS, "optuna": OPTUNA_KEYS, "boundary": BOUNDARY_KEYS}[kind]
    _no_unknown(search, allowed, "search", hint="(only for kind: optuna)" if kind == "grid" else f"for kind: {kind}")

    space = search.get("space")
    if kind == "boundary" and space is None:
        space = {"seed": [base.get("seed", TrainConfig.seed)]}
        base.pop("seed", None)
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("search.space", "must be a non-empty mapping of TrainConfig fields to "
                          + ("lists of values" if kind == "grid" else "distributions"))
    for key in space:
        _check_field(key, "search.space")
        if key in base:
            raise ConfigError(f"search.space.{key}", "is also set in base; set it in one place")

    metric, mode = _objectives(search, required=(kind == "optuna"))
    kw: dict[str, Any] = dict(name=name, description=description, base=base, kind=kind,
                              metric=metric, mode=mode, source=dict(data))
    if kind == "grid":
        kw["space"] = {k: _grid_axis(k, v) for k, v in space.items()}
    elif kind == "boundary":
        kw["space"] = {k: _grid_axis(k, v) for k, v in space.items()}
        kw.update(_boundary(search, base, kw["space"]))
    else:
        kw["space"] = {k: _distribution(k, v) for k, v in space.items()}
        kw["sampler"] = search.get("sampler", "tpe")
        if kw["sampler"] not in SAMPLERS:
            raise ConfigError("search.sampler", f"{kw['sampler']!r} is not allowed; one of {', '.join(SAMPLERS)}")
        kw["num_samples"] = _int(search.get("num_samples", 20), "search.num_samples", lo=1)
        kw["max_concurrent"] = _int(search.get("max_concurrent", 2), "search.max_concurrent", lo=1)
        if search.get("sampler_seed") is not None:
            kw["sampler_seed"] = _int(search["sampler_seed"], "search.sampler_seed", lo=0)
        _check_sampler(kw["sampler"], metric, kw["space"])

    kw["scheduler"] = _scheduler(data.get("scheduler"), metric)
    kw.update(_resources(data.get("resources", {})))
    kw["epochs_per_report"] = _int(data.get("epochs_per_report", 1), "epochs_per_report", lo=1)
    kw["checkpoint_every"] = _int(data.get("checkpoint_every", 10), "checkpoint_every", lo=1)
    kw["max_failures"] = _int(data.get("max_failures", 3), "max_failures", lo=-1)
    kw["early_stop"] = _early_stop(data.get("early_stop"))

    study = Study(**kw)
    _check_configs(study)
    if study.scheduler and study.scheduler.grace_period > study.max_epochs():
        raise ConfigError("scheduler.grace_period", f"{study.scheduler.grace_period} is longer than the "
                          f"trials ({study.max_epochs()} epochs); allowed: 1 .. {study.max_epochs()}")
    return study


# ---------------------------------------------------------------------------
def _tname(v) -> str:
    return "nothing" if v is None else type(v).__name__


def _no_unknown(d: Mapping, allowed, where: str, hint: str = ""):
    for key in d:
        if key not in allowed:
            path = f"{where}.{key}" if where else str(key)
            raise ConfigError(path, f"unknown key{' ' + hint if hint else ''}; allowed: {', '.join(allowed)}")


def _check_field(key, where: str):
    names = TrainConfig.field_names()
    if key not in names:
        import difflib

        close = difflib.get_close_matches(str(key), names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"{where}.{key}", f"not a TrainConfig field{hint}; allowed: {', '.join(sorted(names))}")


def _number(v, key: str) -> float:
    """A YAML number; also accepts strings like '1e-4' (YAML 1.1 reads those as text)."""
    if isinstance(v, bool):
        raise ConfigError(key, f"expected a number, got {v!r}")
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ConfigError(key, f"expected a number, got {v!r}") from None
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(key, f"expected a finite number, got {v!r}")
    return v


def _int(v, key: str, lo: int | None = None) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(key, f"expected an integer, got {v!r}")
    if lo is not None and v < lo:
        raise ConfigError(key, f"{v} is out of range; allowed: >= {lo}")
    return v


def _grid_axis(key: str, values) -> tuple:
    path = f"search.space.{key}"
    if isinstance(values, Mapping):
        raise ConfigError(path, "a grid axis is a list of values; distributions "
                          f"({', '.join(DISTRIBUTIONS)}) need `kind: optuna`")
    if not isinstance(values, list):
        raise ConfigError(path, f"expected a non-empty list of values, got {values!r}; "
                          "put single values in base")
    if not values:
        raise ConfigError(path, "empty list; a grid axis needs at least one value")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(path, f"repeated values in {values!r}; each grid point would run twice")
    return tuple(values)


def _distribution(key: str, spec) -> Distribution:
    path = f"search.space.{key}"
    if isinstance(spec, list):
        raise ConfigError(path, "a list is a grid axis; inside an optuna space write "
                          f"{{choice: {spec!r}}} or a distribution ({', '.join(DISTRIBUTIONS)})")
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigError(path, f"expected one distribution, e.g. {{loguniform: [1.0e-4, 1.0]}}; "
                          f"allowed: {', '.join(DISTRIBUTIONS)}")
    (kind, args), = spec.items()
    path = f"{path}.{kind}"
    if kind not in DISTRIBUTIONS:
        raise ConfigError(path, f"unknown distribution; allowed: {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(path, "expected a non-empty list" if kind == "choice" else "expected [low, high]")
    ftype = field_kind(key)
    if kind == "choice":
        if len(set(map(repr, args))) != len(args):
            raise ConfigError(path, f"repeated choices in {args!r}")
        return Distribution(kind, tuple(args))
    if len(args) != 2:
        raise ConfigError(path, f"expected [low, high], got {args!r}")
    if ftype not in (int, float):
        raise ConfigError(path, f"{key} is not numeric; use choice: [...]")
    if kind == "int":
        lo, hi = (_int(a, path) for a in args)
    else:
        if ftype is int:
            raise ConfigError(path, f"{key} is an integer field; use int: [low, high] or choice")
        lo, hi = (float(_number(a, path)) for a in args)
    if not lo < hi:
        raise ConfigError(path, f"needs low < high, got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(path, f"needs 0 < low < high, got [{lo}, {hi}]")
    return Distribution(kind, (lo, hi))


def _objectives(search: Mapping, required: bool) -> tuple[tuple, tuple]:
    metric, mode = search.get("metric"), search.get("mode")
    if metric is None and mode is None:
        if required:
            raise ConfigError("search.metric", f"required for kind: optuna; one of {', '.join(METRICS)} "
                              "(or a list of them for multi-objective), with `mode`")
        return (), ()
    metrics = tuple(metric) if isinstance(metric, list) else (metric,)
    modes = tuple(mode) if isinstance(mode, list) else (mode,)
    for i, m in enumerate(metrics):
        if m not in METRICS:
            where = "search.metric" + (f"[{i}]" if isinstance(metric, list) else "")
            raise ConfigError(where, f"{m!r} is not a per-epoch measure; allowed: {', '.join(METRICS)}")
    for i, m in enumerate(modes):
        if m not in MODES:
            where = "search.mode" + (f"[{i}]" if isinstance(mode, list) else "")
            raise ConfigError(where, f"{m!r} is not allowed; one of min, max (a list for multi-objective)")
    if len(metrics) != len(modes) or not metrics:
        raise ConfigError("search.mode", f"needs one mode per metric ({len(metrics)} metrics, {len(modes)} modes)")
    if len(set(metrics)) != len(metrics):
        raise ConfigError("search.metric", f"repeated metric in {list(metrics)}")
    return metrics, modes


def _check_sampler(sampler: str, metric: tuple, space: dict):
    if sampler == "cmaes":
        if len(metric) > 1:
            raise ConfigError("search.sampler", "cmaes is single-objective; use tpe, gp, random or qmc "
                              "for several metrics")
        try:
            import cmaes  # noqa: F401  (optuna's CmaEsSampler needs it)
        except ImportError:
            raise ConfigError("search.sampler", "cmaes needs the `cmaes` package (pip install cmaes)") from None


def _boundary(search: Mapping, base: Mapping, space: Mapping) -> dict:
    """search.axis/range/resolution/budget/probes_per_round/initial of kind: boundary."""
    axis = search.get("axis")
    if axis is None:
        raise ConfigError("search.axis", "required for kind: boundary: the float TrainConfig field to "
                          "search in log space, e.g. elr")
    if axis not in TrainConfig.field_names():
        floats = sorted(f for f in TrainConfig.field_names() if field_kind(f) is float)
        raise ConfigError("search.axis", f"{axis!r} is not a TrainConfig field; allowed (float fields): "
                          + ", ".join(floats))
    if field_kind(axis) is not float:
        raise ConfigError("search.axis", f"{axis} is not a float field; a boundary is searched in log "
                          "space along a positive real axis (e.g. elr, lr, wd)")
    if axis in space or axis in base:
        where = "search.space" if axis in space else "base"
        raise ConfigError(f"{where}.{axis}", "is the searched axis; give its range in search.range only")
    rng = search.get("range")
    if not isinstance(rng, list) or len(rng) != 2:
        raise ConfigError("search.range", f"required: [low, high] of {axis}, got {rng!r}")
    lo, hi = (float(_number(v, "search.range")) for v in rng)
    if not 0 < lo < hi:
        raise ConfigError("search.range", f"needs 0 < low < high (log space), got [{lo:g}, {hi:g}]")
    res = float(_number(search.get("resolution", 1.19), "search.resolution"))
    if res <= 1:
        raise ConfigError("search.resolution", f"{res:g} is out of range; allowed: > 1 (a factor in {axis}: "
                          "a boundary is known when bracketed by two trials within this ratio)")
    probes = _int(search.get("probes_per_round", 2), "search.probes_per_round", lo=1)
    initial = _int(search.get("initial", 5), "search.initial", lo=2)
    lines = math.prod(len(v) for v in space.values())
    if "budget" not in search:
        raise ConfigError("search.budget", "required for kind: boundary: the most trials to run "
                          f"(at least initial x lines = {initial * lines})")
    budget = _int(search["budget"], "search.budget", lo=1)
    if budget < initial * lines:
        raise ConfigError("search.budget", f"{budget} is too small: the first scan alone needs initial x "
                          f"lines = {initial} x {lines} = {initial * lines} trials")
    return {"axis": axis, "axis_range": (lo, hi), "resolution": res, "budget": budget,
            "probes_per_round": probes, "initial": initial}


def _early_stop(spec) -> EarlyStop | None:
    """`early_stop: true` (defaults) or {window, converge_window, min_epochs, labels}; absent/false = off."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return EarlyStop()
    if not isinstance(spec, Mapping):
        raise ConfigError("early_stop", f"expected true or {{window: .., converge_window: .., min_epochs: .., "
                          f"labels: [..]}}, got {spec!r}")
    _no_unknown(spec, EARLY_STOP_KEYS, "early_stop")
    d = EarlyStop()
    allowed = (CONVERGENCE, DIVERGENCE, CHAOTIC)
    labels = spec.get("labels", list(d.labels))
    if not isinstance(labels, list) or not labels:
        raise ConfigError("early_stop.labels", f"expected a non-empty list of {', '.join(allowed)}")
    for i, lab in enumerate(labels):
        if lab not in allowed:
            raise ConfigError(f"early_stop.labels[{i}]", f"{lab!r} is not allowed; one of {', '.join(allowed)}")
    window = _int(spec.get("window", d.window), "early_stop.window", lo=2)
    converge_window = None   # default: EarlyStop's max(window, CONVERGE_WINDOW)
    if spec.get("converge_window") is not None:
        converge_window = _int(spec["converge_window"], "early_stop.converge_window", lo=2)
        if converge_window < window:
            raise ConfigError("early_stop.converge_window", f"{converge_window} is shorter than window ({window}); "
                              f"allowed: >= window (a convergence stop needs at least as much evidence)")
    return EarlyStop(window=window, converge_window=converge_window,
                     min_epochs=_int(spec.get("min_epochs", d.min_epochs), "early_stop.min_epochs", lo=1),
                     labels=tuple(dict.fromkeys(labels)))


def _scheduler(spec, metric: tuple) -> Asha | None:
    if spec is None:
        return None
    if spec == "asha":
        spec = {"kind": "asha"}
    if not isinstance(spec, Mapping) or spec.get("kind") != "asha":
        raise ConfigError("scheduler", f"expected `asha` or {{kind: asha, grace_period: .., "
                          f"reduction_factor: .., brackets: ..}}, got {spec!r}")
    _no_unknown(spec, ASHA_KEYS, "scheduler")
    if len(metric) != 1:
        raise ConfigError("scheduler", "ASHA needs exactly one search.metric and search.mode to rank trials"
                          + (f" (got {len(metric)})" if metric else ""))
    a = Asha()
    rf = float(_number(spec.get("reduction_factor", a.reduction_factor), "scheduler.reduction_factor"))
    if rf <= 1:
        raise ConfigError("scheduler.reduction_factor", f"{rf} is out of range; allowed: > 1")
    return Asha(grace_period=_int(spec.get("grace_period", a.grace_period), "scheduler.grace_period", lo=1),
                reduction_factor=rf,
                brackets=_int(spec.get("brackets", a.brackets), "scheduler.brackets", lo=1))


def _resources(spec) -> dict:
    if not isinstance(spec, Mapping):
        raise ConfigError("resources", f"expected {{cpu: .., gpu: ..}}, got {spec!r}")
    _no_unknown(spec, RESOURCE_KEYS, "resources")
    cpu = _number(spec.get("cpu", 1), "resources.cpu")
    gpu = _number(spec.get("gpu", 0), "resources.gpu")
    if cpu <= 0:
        raise ConfigError("resources.cpu", f"{cpu} is out of range; allowed: > 0 (fractions allowed)")
    if gpu < 0 or (gpu > 1 and not float(gpu).is_integer()):
        raise ConfigError("resources.gpu", f"{gpu} is not allowed; a fraction in [0, 1] or a whole number")
    return {"cpu": float(cpu), "gpu": float(gpu)}


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


def _check_configs(study: Study):
    if study.kind == "grid" and study.num_trials() > MAX_GRID:
        raise ConfigError("search.space", f"{study.num_trials()} grid points; at most {MAX_GRID} allowed")
    for point in _points_to_check(study):
        try:
            cfg = study.config(point)
        except ConfigError as e:
            field_name = e.key.split(".")[0]
            if field_name in study.space:
                path = f"search.space.{field_name}"
                if study.kind == "optuna":
                    path += f".{study.space[field_name].kind}"
            elif field_name in study.base:
                path = f"base.{field_name}"
            elif study.kind == "boundary" and field_name == study.axis:
                path = "search.range"
            else:
                path = field_name
            message = str(e).split(": ", 1)[1]
            if len(point) > 1 or field_name not in point:
                message += " (at " + ", ".join(f"{k}={v!r}" for k, v in point.items()) + ")"
            raise ConfigError(path, message) from None
        if study.early_stop is not None and cfg.schedule != "constant":
            raise ConfigError("early_stop", f"needs a constant ELR/lr (schedule: constant), got schedule: "
                              f"{cfg.schedule} (at " + ", ".join(f"{k}={v!r}" for k, v in point.items())
                              + "): a rate that changes later can change the regime a trial is in")
        if cfg.device == "cuda" and study.gpu == 0:
            raise ConfigError("resources.gpu", "0, but base.device is cuda; give each trial a GPU "
                              "(e.g. gpu: 0.25) or use device: auto")
