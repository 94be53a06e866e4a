"""The sections of a study spec as pydantic models: which keys each holds, of what type,
in what range.

`search` is a `GridSearch`, `OptunaSearch` or `BoundarySection` (specfile.py picks
one by `kind`), `scheduler` an `Asha`, `resources` a `Resources`, `early_stop` an
`EarlyStopSection` (which builds a regimes.regime.EarlyStop). Every model forbids
unknown keys; a rule on one value sits on its field, a rule across fields in the
model's after-validator. messages.py words whatever they reject.
"""
from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, InstanceOf, ValidationInfo,
                      field_validator, model_validator)

from regimes.core.config import TrainConfig, field_kind
from regimes.regime import CHAOTIC, CONVERGENCE, DIVERGENCE, EarlyStop

from . import values as V
from .model import Distribution

SAMPLERS = ("tpe", "gp", "cmaes", "random", "qmc")
LABELS = (CONVERGENCE, DIVERGENCE, CHAOTIC)
MAX_GRID = 100_000            # trials; a bigger grid is almost surely a typo
_EARLY = EarlyStop()


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    unknown_hint: ClassVar[str] = ""      # said after "unknown key" for a key not declared here


# --- scheduler, resources, early stop --------------------------------------------------------
class Asha(Section):
    """ASHA (Ray Tune's AsyncHyperBandScheduler), ranking trials by the one search.metric."""
    kind: Literal["asha"] = "asha"
    grace_period: V.Int = Field(5, ge=1)              # epochs before the first cut
    reduction_factor: V.Real = Field(3.0, gt=1)
    brackets: V.Int = Field(1, ge=1)


def _gpu_share(gpu):
    gpu = V.number(gpu)
    if gpu < 0 or (gpu > 1 and not float(gpu).is_integer()):
        raise V.Bad(f"{gpu} is not allowed; a fraction in [0, 1] or a whole number")
    return gpu


class Resources(Section):
    """What Ray reserves for each trial."""
    cpu: V.Number = Field(1.0, gt=0, json_schema_extra={"note": "fractions allowed"})
    gpu: Annotated[float, BeforeValidator(_gpu_share)] = 0.0


def _labels(labels):
    if not isinstance(labels, list) or not labels:
        raise V.Bad(f"expected a non-empty list of {', '.join(LABELS)}")
    return labels


class EarlyStopSection(Section):
    """Regime-aware early stopping (see regimes.regime.EarlyStop)."""
    window: V.Int = Field(_EARLY.window, ge=2)
    converge_window: Annotated[V.Int, Field(ge=2)] | None = None   # None: EarlyStop's default
    chaotic_window: Annotated[V.Int, Field(ge=2)] | None = None    # None: window
    min_epochs: V.Int = Field(_EARLY.min_epochs, ge=1)
    diverge_stop_acc: Annotated[V.Real, Field(gt=0, le=1)] | None = None   # None: the classifier's margin
    labels: Annotated[tuple[Literal[LABELS], ...], BeforeValidator(_labels)] = _EARLY.labels

    @model_validator(mode="after")
    def _windows(self):
        if self.converge_window is not None and self.converge_window < self.window:
            raise V.Bad(f"{self.converge_window} is shorter than window ({self.window}); allowed: >= window "
                        "(a convergence stop needs at least as much evidence)", "converge_window")
        return self

    def to_early_stop(self) -> EarlyStop:
        return EarlyStop(window=self.window, converge_window=self.converge_window,
                         chaotic_window=self.chaotic_window, min_epochs=self.min_epochs,
                         labels=tuple(dict.fromkeys(self.labels)), diverge_stop_acc=self.diverge_stop_acc)


class PackSection(Section):
    """Packed trials: up to `size` points of the space trained as one network in one trial
    (regimes.core.pack); points that differ in a field that cannot differ within a pack
    (regimes.core.packable) go into different packs."""
    size: V.Int = Field(8, ge=1, le=256)


# --- search, one model per kind ------------------------------------------------------------------
GridSpace = Annotated[dict[str, tuple],
                      BeforeValidator(lambda v: V.space(v, V.grid_axis, "lists of values"))]
OptunaSpace = Annotated[dict[str, InstanceOf[Distribution]],
                        BeforeValidator(lambda v: V.space(v, V.distribution, "distributions"))]


class _Objectives(Section):
    """A search with objectives. Its fields come first, so a kind's keys read kind, space,
    metric, mode, then its own."""
    kind: str
    space: dict
    metric: Annotated[tuple | None, BeforeValidator(V.metrics)] = None
    mode: Annotated[tuple | None, BeforeValidator(V.modes)] = None
    metric_required: ClassVar[bool] = False

    def objectives(self) -> tuple[tuple, tuple]:
        return V.objectives(self.metric, self.mode, self.metric_required)

    @model_validator(mode="after")
    def _rules(self):
        self.objectives()
        self.check()
        return self

    def check(self) -> None:
        """Rules across this kind's fields."""


class GridSearch(_Objectives):
    """Every combination of the space's lists; metric/mode only label the report."""
    kind: Literal["grid"]
    space: GridSpace = Field(None, validate_default=True)
    unknown_hint = "(only for kind: optuna)"

    def check(self):
        n = math.prod(len(v) for v in self.space.values())
        if n > MAX_GRID:
            raise V.Bad(f"{n} grid points; at most {MAX_GRID} allowed", "space")

    def study_fields(self) -> dict:
        metric, mode = self.objectives()
        return dict(kind=self.kind, space=dict(self.space), metric=metric, mode=mode)


class OptunaSearch(_Objectives):
    """An Optuna sampler over the space's distributions."""
    kind: Literal["optuna"]
    space: OptunaSpace = Field(None, validate_default=True)
    sampler: Literal[SAMPLERS] = "tpe"
    num_samples: V.Int = Field(20, ge=1)
    max_concurrent: V.Int = Field(2, ge=1)
    sampler_seed: Annotated[V.Int, Field(ge=0)] | None = None
    metric_required = True
    unknown_hint = "for kind: optuna"

    def check(self):
        if self.sampler == "cmaes":
            if len(self.objectives()[0]) > 1:
                raise V.Bad("cmaes is single-objective; use tpe, gp, random or qmc for several metrics",
                            "sampler")
            try:
                import cmaes  # noqa: F401  (optuna's CmaEsSampler needs it)
            except ImportError:
                raise V.Bad("cmaes needs the `cmaes` package (pip install cmaes)", "sampler") from None

    def study_fields(self) -> dict:
        metric, mode = self.objectives()
        return dict(kind=self.kind, space=dict(self.space), metric=metric, mode=mode, sampler=self.sampler,
                    num_samples=self.num_samples, max_concurrent=self.max_concurrent,
                    sampler_seed=self.sampler_seed)


class BoundarySection(Section):
    """Bracket the regime boundaries along `axis` (log space), one search per point of `space`."""
    kind: Literal["boundary"]
    axis: str = Field(None, validate_default=True)
    range: tuple[float, float] = Field(None, validate_default=True)
    resolution: V.Real = 1.19
    budget: Annotated[V.Int, Field(ge=1)] | None = None       # required; checked with initial and space
    probes_per_round: V.Int = Field(2, ge=1)
    initial: V.Int = Field(5, ge=2)
    space: GridSpace = Field(None, validate_default=True)
    unknown_hint = "for kind: boundary"

    @field_validator("axis", mode="before")
    @classmethod
    def _axis(cls, axis):
        if axis is None:
            raise V.Bad("required for kind: boundary: the float TrainConfig field to search in log space, e.g. elr")
        if axis not in TrainConfig.field_names():
            floats = sorted(f for f in TrainConfig.field_names() if field_kind(f) is float)
            raise V.Bad(f"{axis!r} is not a TrainConfig field; allowed (float fields): " + ", ".join(floats))
        if field_kind(axis) is not float:
            raise V.Bad(f"{axis} is not a float field; a boundary is searched in log space along a positive "
                        "real axis (e.g. elr, lr, wd)")
        return axis

    @field_validator("range", mode="before")
    @classmethod
    def _range(cls, rng, info: ValidationInfo):
        if not isinstance(rng, list) or len(rng) != 2:
            raise V.Bad(f"required: [low, high] of {info.data.get('axis')}, got {rng!r}")
        lo, hi = (V.real(v) for v in rng)
        if not 0 < lo < hi:
            raise V.Bad(f"needs 0 < low < high (log space), got [{lo:g}, {hi:g}]")
        return lo, hi

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, res, info: ValidationInfo):
        if res <= 1:
            raise V.Bad(f"{res:g} is out of range; allowed: > 1 (a factor in {info.data.get('axis')}: "
                        "a boundary is known when bracketed by two trials within this ratio)")
        return res

    @model_validator(mode="after")
    def _rules(self):
        if self.axis in self.space:
            raise V.Bad("is the searched axis; give its range in search.range only", f"space.{self.axis}")
        lines = math.prod(len(v) for v in self.space.values())
        if self.budget is None:
            raise V.Bad("required for kind: boundary: the most trials to run "
                        f"(at least initial x lines = {self.initial * lines})", "budget")
        if self.budget < self.initial * lines:
            raise V.Bad(f"{self.budget} is too small: the first scan alone needs initial x lines = "
                        f"{self.initial} x {lines} = {self.initial * lines} trials", "budget")
        return self

    def study_fields(self) -> dict:
        return dict(kind=self.kind, space=dict(self.space), axis=self.axis, axis_range=self.range,
                    resolution=self.resolution, budget=self.budget, probes_per_round=self.probes_per_round,
                    initial=self.initial)


Search = Annotated[Union[GridSearch, OptunaSearch, BoundarySection], Field(discriminator="kind")]
