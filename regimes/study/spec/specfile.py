"""The whole study file as one pydantic model, `SpecFile`: its top-level keys, the
search picked by `kind`, and the rules across sections (a key set in both base and
search.space, ASHA's single metric).
"""
from __future__ import annotations

from typing import Annotated, Any, Mapping

from pydantic import BeforeValidator, Field, field_validator, model_validator

from regimes.core.config import TrainConfig

from . import values as V
from .files import name_problem
from .sections import Asha, EarlyStopSection, PackSection, Resources, Search, Section


def _mapping(complaint: str):
    """A before-validator: the value must be a mapping, else `complaint` (may quote {value})."""
    def check(value):
        if not isinstance(value, Mapping):
            raise V.Bad(complaint.format(value=value))
        return dict(value)
    return BeforeValidator(check)


class SpecFile(Section):
    """One study YAML file."""
    name: str = Field(None, validate_default=True)
    description: str = Field("", strict=True)
    base: dict[str, Any] = Field(default_factory=dict)
    search: Annotated[Search, _mapping("required: a mapping with `kind: grid`, `kind: optuna` or "
                                       "`kind: boundary` and a `space`")] = Field(None, validate_default=True)
    scheduler: Asha | None = None
    resources: Annotated[Resources, _mapping("expected {{cpu: .., gpu: ..}}, got {value!r}")] = \
        Field(default_factory=Resources)
    epochs_per_report: V.Int = Field(1, ge=1)
    checkpoint_every: V.Int = Field(10, ge=1)       # epochs between checkpoints (and one at the end)
    max_failures: V.Int = Field(3, ge=-1)           # retries per trial; -1 = forever
    early_stop: EarlyStopSection | None = None
    pack: PackSection | None = None                 # off unless set: `pack: 8` or `pack: {size: 8}`

    @model_validator(mode="before")
    @classmethod
    def _boundary_line(cls, data):
        """kind: boundary without a space: one line, at base's seed (which leaves base)."""
        if not isinstance(data, Mapping):
            return data
        search, base = data.get("search"), data.get("base")
        if (isinstance(search, Mapping) and search.get("kind") == "boundary" and search.get("space") is None
                and isinstance(base, (Mapping, type(None)))):
            base = dict(base or {})
            seed = base.pop("seed", TrainConfig.model_fields["seed"].default)
            data = {**data, "base": base, "search": {**search, "space": {"seed": [seed]}}}
        return data

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, name):
        problem = name_problem(name, "study name")
        if problem:
            raise V.Bad(problem)
        return name

    @field_validator("base", mode="before")
    @classmethod
    def _base(cls, base):
        if base is None:
            return {}
        if not isinstance(base, Mapping):
            raise V.Bad(f"expected a mapping of TrainConfig fields, got {V.tname(base)}")
        for key in base:
            V.check_field(key)
        return dict(base)

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler(cls, spec):
        if spec is None:
            return None
        if spec == "asha":
            return {"kind": "asha"}
        if not isinstance(spec, Mapping) or spec.get("kind") != "asha":
            raise V.Bad(f"expected `asha` or {{kind: asha, grace_period: .., reduction_factor: .., "
                        f"brackets: ..}}, got {spec!r}")
        return dict(spec)

    @field_validator("early_stop", mode="before")
    @classmethod
    def _early_stop(cls, spec):
        """`early_stop: true` (defaults) or a mapping; absent/false = off."""
        if spec is None or spec is False:
            return None
        if spec is True:
            return {}
        if not isinstance(spec, Mapping):
            raise V.Bad(f"expected true or {{window: .., converge_window: .., min_epochs: .., labels: [..]}}, "
                        f"got {spec!r}")
        return dict(spec)

    @field_validator("pack", mode="before")
    @classmethod
    def _pack(cls, spec):
        """`pack: 8`, `pack: {size: 8}`; absent, false, `off`, 0 or 1 = off."""
        if spec is None or spec is False or spec == "off" or (type(spec) is int and spec in (0, 1)):
            return None
        if type(spec) is int:
            return {"size": spec}
        if not isinstance(spec, Mapping):
            raise V.Bad(f"expected a pack size (e.g. 8), {{size: 8}} or off, got {spec!r}")
        return dict(spec)

    @model_validator(mode="after")
    def _across(self):
        for key in self.search.space:
            if key in self.base:
                raise V.Bad("is also set in base; set it in one place", f"search.space.{key}")
        if self.search.kind == "boundary" and self.search.axis in self.base:
            raise V.Bad("is the searched axis; give its range in search.range only", f"base.{self.search.axis}")
        if self.pack is not None and self.search.kind == "optuna":
            raise V.Bad("packs grid and boundary studies only; an Optuna search suggests one trial at a time "
                        "from the results so far (remove pack)", "pack")
        if self.pack is not None and self.scheduler:
            raise V.Bad("cannot be combined with a scheduler: ASHA stops whole trials, and a pack's members "
                        "are ranked one by one (use early_stop, which stops members)", "pack")
        metric = self.search.study_fields().get("metric", ())
        if self.scheduler and len(metric) != 1:
            raise V.Bad("ASHA needs exactly one search.metric and search.mode to rank trials"
                        + (f" (got {len(metric)})" if metric else ""), "scheduler")
        return self
