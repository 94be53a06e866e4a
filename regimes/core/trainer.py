"""The Trainer: one run of one TrainConfig, as an iterator of per-epoch records. No Ray, no pandas.

    for rec in Trainer(cfg).run():
        print(rec["epoch"], rec["train_loss"], rec["test_acc"])

The Trainer holds the run (data on the device, model, optimiser, RNG). Between
two yielded records `state_dict()` is a complete checkpoint and
`load_state_dict()` continues the run exactly (bit for bit on the same machine).

The step loop is short and branch-free: the mode's rate mapping and projection
(regimes.core.sphere) and the techniques' hooks (regimes.core.hooks) are
composed before the loop, the per-step rates are a precomputed array
(regimes.core.schedules), and host syncs happen once per epoch, at the measures.

This class trains with the techniques it is given; `regimes.Trainer` is this
Trainer with every technique of the package (regimes.techniques) plugged in.
"""
from __future__ import annotations

import contextlib
import math
import pickle
import time
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from . import record
from .config import TrainConfig
from .data import Data, augment, load_data
from .hooks import Objective, Technique, overridden
from .models import build_model
from .params import Role, find_roles
from .runtime import resolve_device, resolve_memory_format, retain_freed_memory
from .schedules import schedule_values
from .sphere import SphereSGD, angle, joint_norm


def plain_objective(model, x, y):
    """loss = CE; returns (loss, logits, stats) like every objective."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits, {}


def squared_loss(logits, y, reduction: str = "mean"):
    """||logits - onehot(y)||^2 / C per example (C classes), then the mean (or sum, or none):
    the three-regimes reference code's squared loss, written as sum_c z_c^2 - 2 z_y + 1."""
    per = (logits.pow(2).sum(1) - 2 * logits.gather(1, y.view(-1, 1)).squeeze(1) + 1) / logits.shape[1]
    return per.mean() if reduction == "mean" else per.sum() if reduction == "sum" else per


LOSSES = {"ce": F.cross_entropy, "squared": squared_loss}   # loss_fn(logits, y, reduction="mean")


def loss_objective(loss_fn):
    """The objective of a plain run with loss `loss_fn` (CE: plain_objective itself)."""
    if loss_fn is F.cross_entropy:
        return plain_objective

    def objective(model, x, y):
        logits = model(x)
        return loss_fn(logits, y), logits, {}

    return objective


class Trainer:
    def __init__(self, cfg: TrainConfig, dtype: torch.dtype = torch.float32,
                 techniques: Sequence[type[Technique]] = ()):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = dtype
        self.data: Data = load_data(cfg, self.device, dtype)
        n = len(self.data.x_train)
        if cfg.batch_size > n:
            raise ConfigError("batch_size", f"{cfg.batch_size} exceeds the {n} training examples")
        # the last partial batch is dropped (BN needs > 1 example); fbgd: one step per epoch whose
        # gradient is accumulated over all the epoch's minibatches
        self.micro_batches = n // cfg.batch_size if cfg.fbgd else 1   # minibatches per optimiser step
        self.steps_per_epoch = 1 if cfg.fbgd else n // cfg.batch_size
        self.examples_per_epoch = (n // cfg.batch_size) * cfg.batch_size
        self.loss_fn = LOSSES[cfg.loss]
        kinds = [t for t in techniques if t.enabled(cfg)]
        layers = [ly for ly in (t.layers(cfg) for t in kinds) if ly is not None]
        if len(layers) > 1:
            raise ConfigError("model", "two techniques both supply the model's layers")
        self.model = build_model(cfg, self.data.input_shape, self.data.num_classes,
                                 layers[0] if layers else None).to(self.device, dtype)
        self.memory_format = resolve_memory_format(cfg.memory_format, self.device)
        if self.device.type == "cpu" and cfg.cpu_memory == "retain":
            retain_freed_memory()
        if len(self.data.input_shape) == 3:   # images: model and data in one layout (indexing and
            # augment keep a batch in its source's layout, so batches need no conversion)
            self.model.to(memory_format=self.memory_format)
            self.data.x_train = self.data.x_train.contiguous(memory_format=self.memory_format)
            self.data.x_test = self.data.x_test.contiguous(memory_format=self.memory_format)
        self.roles = find_roles(self.model)
        self.si_params = self.roles.params(self.model, Role.SCALE_INVARIANT, trainable_only=True)
        if cfg.mode == "sphere" and not self.si_params:
            raise ConfigError("mode", f"model {cfg.model} has no scale-invariant weights; "
                              "use mode=free or a *_si / *_si_af model")
        named = dict(self.model.named_parameters())
        self.si_groups = [[named[n] for n in g if named[n].requires_grad] for g in self.roles.si_groups]
        self.si_groups = [g for g in self.si_groups if g]
        self.sgd = SphereSGD(cfg, self.model, self.si_params, self.si_groups)
        self.optimizer = self.sgd.optimizer
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed)  # data order + augmentation
        # per-step base rate (ELR in sphere mode, lr in free mode), precomputed
        self.rate = schedule_values(cfg, cfg.epochs * self.steps_per_epoch, self.steps_per_epoch)
        self.epoch = 0
        self.step = 0
        self.elapsed = 0.0
        # --- the techniques, composed once ---
        self.techniques: dict[str, Technique] = {}
        for kind in kinds:
            self.techniques[kind.name] = kind(self)
        active = list(self.techniques.values())
        self._objective: Objective = loss_objective(self.loss_fn)
        for t in active:
            self._objective = t.objective(self._objective)
        self._epoch_start = overridden(active, "epoch_start")
        self._with_overrides = [t for t in active if type(t).overrides is not Technique.overrides]
        # after each optimiser step: the techniques' hooks (ENorm), then the sphere projection
        self._after_step: list[Callable[[int], None]] = overridden(active, "after_step")
        self._project: list[Callable[[], None]] = [self.sgd.project] if cfg.mode == "sphere" else []
        self._epoch_end = overridden(active, "epoch_end")
        self._measures = overridden(active, "measure")
        # one optimiser step's forward and backward passes: one minibatch, or (fbgd) all of them
        self._forward_backward = self._full_batch if cfg.fbgd else self._minibatch
        self._compose_epoch()

    @property
    def rho0(self) -> float:
        return self.sgd.rho0

    # --- composition (before the loop) ---------------------------------
    def _compose_epoch(self) -> None:
        """The gradient reset, optimiser step and evaluation context of the coming epoch:
        the Trainer's own unless a technique replaces them (late-phase weights, once started)."""
        chosen = {"zero_grad": self._zero_grad, "optimizer_step": self.optimizer.step,
                  "eval_context": contextlib.nullcontext}
        replaced_by: dict[str, str] = {}
        for t in self._with_overrides:
            o = t.overrides()
            if o is None:
                continue
            for key in chosen:
                fn = getattr(o, key)
                if fn is not None:
                    if key in replaced_by:
                        raise ConfigError(t.name, f"replaces {key}, which {replaced_by[key]} already replaces")
                    chosen[key], replaced_by[key] = fn, t.name
        self._zero_grad_fn = chosen["zero_grad"]
        self._optimizer_step = chosen["optimizer_step"]
        self._eval_context = chosen["eval_context"]

    def _eff_grad_norm(self) -> torch.Tensor:
        """||grad_SI L|| * ||w_SI||: the gradient at unit norm (scale-free), on the device."""
        if not self.si_params:
            return torch.zeros((), dtype=torch.float64, device=self.device)
        return (joint_norm([p.grad for p in self.si_params]) * joint_norm(self.si_params)).double()

    @torch.no_grad()
    def _angular_update(self, prev: list[torch.Tensor]) -> torch.Tensor:
        """Angle between the SI vector before and after this step; `prev` is updated in place."""
        if not self.si_params:
            return torch.zeros((), dtype=torch.float64, device=self.device)
        a = angle(prev, self.si_params).double()
        torch._foreach_copy_(prev, [p.detach() for p in self.si_params])
        return a

    def _zero_grad(self):
        self.optimizer.zero_grad(set_to_none=True)

    def _minibatch(self, perm, i):
        """Forward and backward of step i's minibatch: (loss, stats)."""
        B, data = self.cfg.batch_size, self.data
        idx = perm[i * B:(i + 1) * B]
        x = augment(data.x_train[idx], data.crop_pad, data.flip, self.gen)
        loss, _, stats = self._objective(self.model, x, data.y_train[idx])
        loss.backward()
        return loss, stats

    def _full_batch(self, perm, i):
        """fbgd: the gradient of the mean loss over all the epoch's minibatches (each weighted
        1/m, all of batch_size), accumulated; (mean loss, mean stats)."""
        B, data, m = self.cfg.batch_size, self.data, self.micro_batches
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        sums: dict[str, torch.Tensor] = {}
        for j in range(m):
            idx = perm[j * B:(j + 1) * B]
            x = augment(data.x_train[idx], data.crop_pad, data.flip, self.gen)
            loss, _, stats = self._objective(self.model, x, data.y_train[idx])
            (loss / m).backward()
            total += loss.detach().double() / m
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v.double() / m
        return total, sums

    # --- the loop ----------------------------------------------------------
    def run(self) -> Iterator[dict]:
        cfg, data = self.cfg, self.data
        while self.epoch < cfg.epochs:
            t0 = time.perf_counter()
            for hook in self._epoch_start:
                hook(self.epoch + 1)
            self._compose_epoch()
            self.model.train()
            perm = torch.randperm(len(data.x_train), generator=self.gen).to(self.device)
            loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
            egn_sum = torch.zeros_like(loss_sum)
            angle_sum = torch.zeros_like(loss_sum)
            prev = [p.detach().clone() for p in self.si_params]  # SI weights before the step
            stat_sums: dict[str, torch.Tensor] = {}  # technique stats (penalty terms), on the device
            for i in range(self.steps_per_epoch):
                self.sgd.set_rate(float(self.rate[self.step]))
                self._zero_grad_fn()   # late-phase weights: member swap + partial zeroing
                loss, stats = self._forward_backward(perm, i)
                egn_sum += self._eff_grad_norm()
                self._optimizer_step()
                for hook in self._after_step:
                    hook(self.step + 1)
                for project in self._project:
                    project()
                for k, v in stats.items():
                    stat_sums[k] = stat_sums.get(k, 0.0) + v.double()
                angle_sum += self._angular_update(prev)
                loss_sum += loss.detach().double()
                self.step += 1
            train_time = time.perf_counter() - t0
            self.epoch += 1
            for hook in self._epoch_end:
                hook(self.epoch)
            # ---- measures: host syncs happen here, once per epoch ----
            rec = self._measure(loss_sum, egn_sum, angle_sum, train_time)
            rec.update({k: (v / self.steps_per_epoch).item() for k, v in stat_sums.items()})
            for k in record.TECHNIQUE_MEASURES:  # one schema for every trial (NaN: off or not due)
                rec.setdefault(k, float("nan"))
            self.elapsed += time.perf_counter() - t0
            rec["time_s"] = self.elapsed
            yield rec
            if rec["diverged"]:
                return

    # --- measures -----------------------------------------------------------
    @torch.no_grad()
    def _measure(self, loss_sum, egn_sum, angle_sum, train_time) -> dict:
        cfg, n = self.cfg, self.steps_per_epoch
        mean_loss = (loss_sum / n).item()
        diverged = not math.isfinite(mean_loss)
        si_norm = joint_norm(self.si_params).item() if self.si_params else float("nan")
        r = float(self.rate[self.step - 1])
        rec = {"epoch": self.epoch, "step": self.step,
               "train_loss": float("nan"), "train_acc": float("nan"),
               "test_loss": float("nan"), "test_acc": float("nan"),
               "si_norm": si_norm,
               "elr": self.sgd.elr_of(r, si_norm),
               "lr": self.sgd.si_lr(r),
               "eff_grad_norm": (egn_sum / n).item() if self.si_params else float("nan"),
               "angular_update": (angle_sum / n).item() if self.si_params else float("nan"),
               "samples_per_s": self.examples_per_epoch / max(train_time, 1e-9),
               "num_classes": self.data.num_classes,
               "diverged": diverged}
        if diverged:
            rec["train_loss"] = mean_loss
            return rec
        with self._eval_context():  # late-phase: the members' averaged layer outputs
            if self.epoch % cfg.train_eval_every == 0 or self.epoch == cfg.epochs:
                rec["train_loss"], rec["train_acc"] = self.evaluate_train()
            rec["test_loss"], rec["test_acc"] = self.evaluate_test()
        for measure in self._measures:  # technique measures (NaN when not due)
            measure(rec)
        if not (math.isfinite(rec["test_loss"]) and (math.isfinite(si_norm) or not self.si_params)) or (
                rec["train_loss"] == rec["train_loss"] and not math.isfinite(rec["train_loss"])):
            rec["diverged"] = True
        return rec

    @torch.no_grad()
    def evaluate_train(self) -> tuple[float, float]:
        """Full train set, BN in train mode (batch statistics, as during training), no
        augmentation, in minibatches of batch_size. BN running statistics are restored
        afterwards, so the measure leaves the model as it found it."""
        with measuring(self.model, train=True):
            return self._loss_acc(self.data.x_train, self.data.y_train, self.cfg.batch_size)

    @torch.no_grad()
    def evaluate_test(self) -> tuple[float, float]:
        with measuring(self.model, train=False):
            # eval-mode outputs do not depend on the chunk: small chunks stay in the CPU's
            # cache (2.5x faster than 1000 at width 16), large ones fill a GPU
            return self._loss_acc(self.data.x_test, self.data.y_test, 1000 if self.device.type == "cuda" else 128)

    @torch.no_grad()
    def train_per_example(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per training example: (loss, predicted class), float64 and int64 on the device, from
        the same forward passes as `evaluate_train` (BN train mode, the same chunks, no
        augmentation; BN running statistics restored), the loss against the training labels."""
        x, y = self.data.x_train, self.data.y_train
        saved = {k: v.clone() for k, v in self.model.state_dict().items() if "running" in k or "num_batches" in k}
        was_training = self.model.training
        self.model.train()
        chunk = self.cfg.batch_size + (1 if len(x) % self.cfg.batch_size == 1 else 0)
        losses, preds = [], []
        try:
            for i in range(0, len(x), chunk):
                out = self.model(x[i:i + chunk])
                losses.append(self.loss_fn(out, y[i:i + chunk], reduction="none").double())
                preds.append(out.argmax(1))
            return torch.cat(losses), torch.cat(preds)
        finally:
            self.model.load_state_dict(saved, strict=False)
            self.model.train(was_training)

    def _loss_acc(self, x, y, chunk):
        n = len(x)
        if self.model.training and n % chunk == 1:
            chunk += 1  # never a BN batch of one example
        loss = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        for i in range(0, n, chunk):
            out = self.model(x[i:i + chunk])
            loss += self.loss_fn(out, y[i:i + chunk], reduction="sum").double()
            correct += (out.argmax(1) == y[i:i + chunk]).sum()
        return (loss / n).item(), (correct.double() / n).item()

    # --- checkpoints ----------------------------------------------------------
    def state_dict(self) -> dict:
        return {"config": self.cfg.to_dict(), "epoch": self.epoch, "step": self.step, "rho0": self.rho0,
                "rho0_groups": list(self.sgd.rho0_groups),
                "elapsed": self.elapsed, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.gen.get_state(),
                "techniques": {name: t.state_dict() for name, t in self.techniques.items()}}

    def load_state_dict(self, sd: dict) -> None:
        # Fields a checkpoint predates take their defaults; the memory layout and the CPU
        # allocator setting may differ (they change how tensors are stored, not the run).
        known = set(TrainConfig.field_names())
        theirs = {**TrainConfig().to_dict(), **{k: _frozen(v) for k, v in sd["config"].items() if k in known}}
        ours = self.cfg.to_dict()
        diff = sorted(k for k in (set(theirs) | set(sd["config"])) - {"memory_format", "cpu_memory"}
                      if k not in known or theirs.get(k) != ours.get(k))
        if diff:
            raise ConfigError("checkpoint", f"was written by a different config (differs in: {', '.join(diff)})")
        self.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.gen.set_state(sd["generator"])
        for name, t in self.techniques.items():
            t.load_state_dict(sd.get("techniques", {}).get(name, {}))
        self.epoch, self.step, self.sgd.rho0, self.elapsed = sd["epoch"], sd["step"], sd["rho0"], sd["elapsed"]
        if "rho0_groups" in sd:   # (checkpoints before sphere_per_layer: one joint sphere)
            self.sgd.rho0_groups = [float(r) for r in sd["rho0_groups"]]

    def save(self, path) -> None:
        torch.save(self.state_dict(), path)

    def restore(self, path) -> None:
        """Load a checkpoint written by `save`. It is read with torch's weights-only loader:
        tensors and plain containers (dict, list, tuple, str, numbers, None) only, so a
        checkpoint file from someone else's study folder cannot run code. A file holding
        anything else (a planted pickle, or an object our format never contained) is refused."""
        self.load_state_dict(load_checkpoint(path, self.device))


@contextlib.contextmanager
def measuring(model, train: bool):
    """The model in train mode (BN batch statistics, as during training) or eval mode for a
    measure; afterwards its mode and, after train mode, its BN running statistics are as
    they were, so the measure leaves the model as it found it."""
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k} \
        if train else None
    was_training = model.training
    model.train(train)
    try:
        yield model
    finally:
        if saved is not None:
            model.load_state_dict(saved, strict=False)
        model.train(was_training)


def load_checkpoint(path, device=None) -> dict:
    """A checkpoint's state dict, read without executing anything in the file
    (`torch.load(weights_only=True)`); ConfigError when the file holds more than tensors
    and plain containers."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        reason = msg.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] if msg else "unreadable"
        raise ConfigError("checkpoint", f"{path} holds more than tensors and plain containers "
                          f"({reason[:200]}); it is not loaded, since unpickling it could run code") from None


def _frozen(v):
    """Lists (list-valued fields of checkpoints written before they became tuples) as tuples."""
    return tuple(_frozen(x) for x in v) if isinstance(v, (list, tuple)) else v
