"""The validated study: `Study` (what launch, search, boundary, sink and the trainable
read) and `Distribution` (one dimension of an Optuna space).

Both are frozen; `validate.from_dict` builds them, after which every value is known
to be good, down to the TrainConfig of each trial.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from regimes.core.config import TrainConfig
from regimes.regime import EarlyStop

if TYPE_CHECKING:
    from .sections import Asha


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
    pack: int = 1                               # members per packed trial (1: one config per trial)
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

    def pack_groups(self, points) -> list[list[dict]]:
        """`points` grouped by the fields that cannot differ within a pack, in first-seen order."""
        from regimes.core.packable import PER_MEMBER

        groups: dict[tuple, list[dict]] = {}
        for p in points:
            key = tuple(sorted((k, repr(v)) for k, v in p.items() if k not in PER_MEMBER))
            groups.setdefault(key, []).append(dict(p))
        return list(groups.values())

    def packs(self, points) -> list[list[dict]]:
        """The packs of at most `self.pack` points that train `points` (a grid: every point).
        Each group of packable points is dealt round-robin into as few packs as hold it, so the
        packs are of even size and each spans the group's range (a grid's large ELRs, which end
        early, are not all in one pack)."""
        out = []
        for group in self.pack_groups(points):
            n = math.ceil(len(group) / self.pack)
            out += [group[i::n] for i in range(n)]
        return out

    def pack_advice(self) -> str | None:
        """A warning for a pack measured not to pay: on a CPU, at width 32 and more, the grouped
        convolutions cost more than the separate ones (benchmarks/packing.py: 0.9x at width 32)."""
        if self.pack <= 1:
            return None
        cfg = self.config(next(iter(self.grid_points()), {}) if self.kind == "grid" else {})
        if cfg.device == "cpu" and cfg.width >= 32:
            return (f"pack: packing width-{cfg.width} models on a CPU is slower than training them one per "
                    "trial (measured 0.9x at width 32; it pays up to width 16); consider pack: off")
        return None

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
        if self.pack > 1:
            sched += f", packed {self.pack} per trial"
        if self.early_stop:
            sched += f", early stop when {'/'.join(self.early_stop.labels)} is decided"
        return (f"study '{self.name}': {what}{sched}; up to {self.max_epochs()} epochs per trial; "
                f"per trial cpu={self.cpu:g} gpu={self.gpu:g}")
