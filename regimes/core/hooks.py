"""The contract between the Trainer and a technique (one paper's addition to a run).

A technique is a subclass of `Technique`. It plugs in through these methods only
and never touches the Trainer's internals; the Trainer calls each method only
on the techniques that override it, and composes them before the step loop
(per-step hooks) or at each epoch start (the step overrides), so the loop
itself never tests a config flag.

Life of a run, in order:

1. `enabled(cfg)` (class method): whether the config turns the technique on.
2. `layers(cfg)` (class method): model building blocks to use instead of the
   defaults (LCNN's softplus, spectral conv, Lipschitz BN), or None.
3. `Technique(run)`: created once the model, the optimiser and the data exist.
   `run` is the Trainer; a technique may read its public attributes (`cfg`,
   `model`, `optimizer`, `data`, `device`, `epoch`, `step`, `steps_per_epoch`,
   `techniques`, `si_params`, `si_groups`, `loss_fn`, `train_per_example`) and
   nothing else.
4. `objective(base)`: wrap or replace the loss (model, x, y) -> (loss, logits, stats);
   `stats` are detached 0-dim tensors averaged over the epoch into the record.
5. Every epoch: `epoch_start(epoch)`, then `overrides()` (replacements for the
   gradient reset and the optimiser step, and the evaluation context; at most
   one technique may replace each), the steps with `after_step(step)` after
   each optimiser step and before the sphere projection, `epoch_end(epoch)`,
   then `measure(rec)` fills the technique's `measures` in the epoch record.
6. `state_dict()` / `load_state_dict(sd)`: every piece of state that affects the
   run. Cadences must come from `run.step` / `run.epoch` (which the checkpoint
   holds), never from a counter of the technique's own, so a resumed run equals
   the uninterrupted one bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, ContextManager

if TYPE_CHECKING:
    from torch import Tensor, nn

    from .config import TrainConfig
    from .models import Layers

# (model, x, y) -> (loss, logits, stats)
Objective = Callable[["nn.Module", "Tensor", "Tensor"], "tuple[Tensor, Tensor, dict[str, Tensor]]"]


@dataclass(frozen=True)
class Overrides:
    """Replacements a technique makes for the coming epoch (None: keep the Trainer's own)."""
    zero_grad: Callable[[], None] | None = None          # before each step's forward pass
    optimizer_step: Callable[[], None] | None = None     # the parameter update
    eval_context: Callable[[], ContextManager] | None = None   # around the epoch's evaluation


class Technique:
    """Base class: every hook is a no-op; subclasses override what they add."""

    name: ClassVar[str] = ""
    measures: ClassVar[tuple[str, ...]] = ()   # record keys it fills (listed in regimes/core/record.py)

    @classmethod
    def enabled(cls, cfg: "TrainConfig") -> bool:
        return False

    @classmethod
    def layers(cls, cfg: "TrainConfig") -> "Layers | None":
        return None

    def __init__(self, run: Any):
        self.run = run

    def objective(self, base: Objective) -> Objective:
        return base

    def epoch_start(self, epoch: int) -> None:
        """Called with the 1-based number of the epoch about to run."""

    def overrides(self) -> Overrides | None:
        return None

    def after_step(self, step: int) -> None:
        """Called with the number of optimiser steps done (1-based), before the projection."""

    def epoch_end(self, epoch: int) -> None:
        """Called with the 1-based number of the epoch just trained, before the measures."""

    def measure(self, rec: dict) -> None:
        """Add this technique's measures to the epoch record."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass


def overridden(techniques, method: str) -> list:
    """The bound `method` of each technique that overrides the base class's no-op."""
    return [getattr(t, method) for t in techniques if getattr(type(t), method) is not getattr(Technique, method)]
