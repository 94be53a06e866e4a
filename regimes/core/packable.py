"""Which configurations can be trained together as one packed network (torch-free).

A pack trains K configurations as one network (regimes.core.pack). Its members
share everything that fixes the computation's shape: the architecture, the
data, the batch size, the epoch count and the measuring cadence (SHARED). What
may differ per member is what the optimiser step and the initialisation read
(PER_MEMBER): the rates and their schedules, weight decay, momentum, the
non-invariant rate, the head's scale, and the seed (its own initialisation,
data order and augmentation draws).

Every other field (the techniques' and any later addition) must be at its
default in every member: such a field changes the step or the network in a way
the packed network does not reproduce yet, so a pack refuses it rather than
train something else than asked. `check` is what a study spec and the packed
Trainer both call; it raises ConfigError naming the key and why.
"""
from __future__ import annotations

from typing import Sequence

from ..errors import ConfigError
from .config import TrainConfig

PER_MEMBER = frozenset({
    "elr", "lr", "wd", "momentum", "noninv_lr", "init_scale", "seed",
    "schedule", "elr_final", "lr_final", "milestones", "step_factor", "switch_frac", "knots", "warmup_epochs",
})
SHARED = frozenset({
    "dataset", "data_root", "download", "augment", "subset", "batch_size",
    "model", "width", "depth", "mode", "epochs", "train_eval_every",
    "device", "memory_format", "cpu_memory",
})
PACKABLE_MODELS = ("convnet", "convnet_si", "convnet_si_af", "resnet18", "resnet18_si", "resnet18_si_af")


def check(cfgs: Sequence[TrainConfig]) -> None:
    """ConfigError unless `cfgs` (one or more) can be trained as one pack."""
    if not cfgs:
        raise ConfigError("pack", "needs at least one configuration")
    first = cfgs[0]
    if first.model not in PACKABLE_MODELS:
        raise ConfigError("model", f"{first.model} has no packed form yet; packable models: "
                          f"{', '.join(PACKABLE_MODELS)} (or set pack: off)")
    default = TrainConfig()
    for name in TrainConfig.field_names():
        if name in PER_MEMBER:
            continue
        values = {getattr(c, name) for c in cfgs}
        if name in SHARED:
            if len(values) > 1:
                raise ConfigError(name, f"differs within a pack ({', '.join(map(repr, sorted(values, key=repr)))}); "
                                  "members must share the architecture, data, batch size and epochs")
            continue
        off = getattr(default, name)
        for c in cfgs:
            if getattr(c, name) != off:
                raise ConfigError(name, f"{getattr(c, name)!r} has no packed form yet: a pack trains this field "
                                  f"only at its default ({off!r}); packable per member: "
                                  f"{', '.join(sorted(PER_MEMBER))}")


def unpackable(keys) -> list[str]:
    """The keys (of a study space) that cannot differ within a pack."""
    return [k for k in keys if k not in PER_MEMBER]
