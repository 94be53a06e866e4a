"""train(cfg): an iterator of per-epoch records. No Ray, no pandas.

    for rec in train(TrainConfig(dataset="digits", elr=1e-2, epochs=30)):
        print(rec["epoch"], rec["train_loss"], rec["test_acc"])

`Trainer` holds the run (data on the device, model, optimiser, RNG) and is what
the Ray trainable drives: `state_dict()` taken between two yielded records is a
complete checkpoint, and `load_state_dict()` continues the run exactly.

Modes (DESIGN.md, "Training on the sphere"):
- sphere: rho0 = joint L2 norm of all scale-invariant (SI) weights at init. SGD
  on the SI weights with lr = elr * rho0^2, then all SI weights are rescaled
  jointly back to norm rho0. Because the gradient of an SI function at radius
  rho is g_eff / rho, this is w <- normalize(w - elr * g_eff) on the unit sphere:
  tan(angle per step) = elr * ||g_eff||. Momentum, if set, is torch's heavy ball
  on the SI weights with the same lr, followed by the same projection (the
  paper's code does the same); the ELR then is the per-step rate before
  momentum amplification (~ elr / (1 - m) in steady state).
  Non-SI parameters use `noninv_lr` (0: frozen, -1: elr * rho0^2) with `wd`.
- free: plain SGD (lr, wd, momentum) on every trainable parameter; the ELR is
  emergent, elr_t = lr / ||w_SI,t||^2, and is what gets logged.

The step loop is short and branch-free: what varies with the mode is composed
into `self._after_step` and the per-step rate arrays before the loop starts.
Rates come from a precomputed per-step array (regimes.optim.schedules), so the
loop never branches on the schedule.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import sys
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .config import ConfigError, TrainConfig
from .data import Data, augment, load_data
from .models import build_model
from .optim.schedules import schedule_values
from .params import Role, find_roles
from .models.lcnn import no_decay_params
from .penalties import plain_objective
from .techniques import TECHNIQUE_MEASURES, compose as compose_techniques


def train(cfg: TrainConfig, state: dict | None = None) -> Iterator[dict]:
    """Train one run; yields one record (dict of Python scalars) per epoch."""
    trainer = Trainer(cfg)
    if state is not None:
        trainer.load_state_dict(state)
    return trainer.run()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda requested but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)



def resolve_memory_format(name: str, device: torch.device) -> torch.memory_format:
    """channels_last on CPU (oneDNN's fast path for conv, BN and pooling), NCHW on CUDA unless asked."""
    if name == "auto":
        name = "channels_last" if device.type == "cpu" else "contiguous"
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_retained = False


def retain_freed_memory() -> bool:
    """Keep freed CPU memory in this process instead of handing it back to the OS.

    glibc serves blocks above its mmap threshold with fresh mmap'd pages and unmaps
    them on free, and trims the heap top; a training step allocates and frees the same
    large activation tensors every step, so each step faults in (and the kernel zeroes)
    tens of thousands of pages. Raising the mmap threshold to its maximum (32 MiB on
    64-bit) and the trim threshold to 1 GiB makes those blocks heap blocks that are
    reused. Process-wide and one-way (called once); True if glibc accepted it, False on
    other C libraries or platforms (nothing changes there).
    """
    global _retained
    if _retained:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _retained = bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _retained


class Trainer:
    def __init__(self, cfg: TrainConfig, dtype: torch.dtype = torch.float32):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = dtype
        self.data: Data = load_data(cfg, self.device, dtype)
        n = len(self.data.x_train)
        if cfg.batch_size > n:
            raise ConfigError("batch_size", f"{cfg.batch_size} exceeds the {n} training examples")
        self.steps_per_epoch = n // cfg.batch_size  # the last partial batch is dropped (BN needs > 1 example)
        self.model = build_model(cfg, self.data.input_shape, self.data.num_classes).to(self.device, dtype)
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
        self.rho0 = _norm(self.si_params).item() if self.si_params else 0.0
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed)  # data order + augmentation
        # per-step base rate (ELR in sphere mode, lr in free mode), precomputed
        self.rate = schedule_values(cfg, cfg.epochs * self.steps_per_epoch, self.steps_per_epoch)
        self.optimizer, self._lr_of_group = self._build_optimizer()
        self._after_step: list[Callable[[], None]] = []
        if cfg.mode == "sphere":
            self._after_step.append(self._project)
        # composition points for the techniques (regimes/techniques.py fills them)
        self._objective = plain_objective                    # (model, x, y) -> (loss, logits, stats)
        self._before_step: list[Callable[[], None]] = [self._zero_grad]
        self._optimizer_step: Callable[[], None] = self.optimizer.step
        self._epoch_start: list[Callable[[int], None]] = []  # called with the 1-based epoch
        self._epoch_end: list[Callable[[int], None]] = []
        self._epoch_measures: list[Callable[[dict], None]] = []
        self._eval_context = contextlib.nullcontext
        self.techniques = compose_techniques(self)
        self.epoch = 0
        self.step = 0
        self.elapsed = 0.0

    # --- composition (before the loop) ---------------------------------
    def _build_optimizer(self):
        cfg = self.cfg
        si_ids = {id(p) for p in self.si_params}
        others = [p for p in self.model.parameters() if p.requires_grad and id(p) not in si_ids]
        groups, lr_of_group = [], []
        no_decay = {id(p) for p in no_decay_params(self.model)}  # LCNN beta, gamma: never decayed
        others_nd = [p for p in others if id(p) in no_decay]
        others = [p for p in others if id(p) not in no_decay]
        if cfg.mode == "sphere":
            scale = self.rho0 ** 2  # lr = elr * rho0^2 turns the ELR into a step at radius rho0
            groups.append({"params": self.si_params, "weight_decay": 0.0})
            lr_of_group.append(lambda r: r * scale)
            if others and cfg.noninv_lr != 0:
                groups.append({"params": others, "weight_decay": cfg.wd})
                fixed = cfg.noninv_lr
                lr_of_group.append((lambda r: r * scale) if fixed == -1 else (lambda r: fixed))
                if others_nd:
                    groups.append({"params": others_nd, "weight_decay": 0.0})
                    lr_of_group.append(lr_of_group[-1])
            elif others or others_nd:
                for p in others + others_nd:  # noninv_lr = 0: frozen
                    p.requires_grad_(False)
        else:
            params = self.si_params + others
            groups.append({"params": params, "weight_decay": cfg.wd})
            lr_of_group.append(lambda r: r)
            if others_nd:
                groups.append({"params": others_nd, "weight_decay": 0.0})
                lr_of_group.append(lambda r: r)
        for g in groups:
            g["lr"] = 0.0
        opt = torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum)
        return opt, lr_of_group

    def _eff_grad_norm(self) -> torch.Tensor:
        """||grad_SI L|| * ||w_SI||: the gradient at unit norm (scale-free), on the device."""
        if not self.si_params:
            return torch.zeros((), dtype=torch.float64, device=self.device)
        return (_norm([p.grad for p in self.si_params]) * _norm(self.si_params)).double()

    @torch.no_grad()
    def _angular_update(self, prev: list[torch.Tensor]) -> torch.Tensor:
        """Angle between the SI vector before and after this step; `prev` is updated in place."""
        if not self.si_params:
            return torch.zeros((), dtype=torch.float64, device=self.device)
        angle = _angle(prev, self.si_params).double()
        torch._foreach_copy_(prev, [p.detach() for p in self.si_params])
        return angle

    def _zero_grad(self):
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def _project(self):
        """Rescale all SI weights jointly back to norm rho0 (the sphere)."""
        torch._foreach_mul_(self.si_params, self.rho0 / _norm(self.si_params))

    # --- the loop ----------------------------------------------------------
    def run(self) -> Iterator[dict]:
        cfg, data = self.cfg, self.data
        B = cfg.batch_size
        while self.epoch < cfg.epochs:
            t0 = time.perf_counter()
            for hook in self._epoch_start:
                hook(self.epoch + 1)
            self.model.train()
            perm = torch.randperm(len(data.x_train), generator=self.gen).to(self.device)
            loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
            egn_sum = torch.zeros_like(loss_sum)
            angle_sum = torch.zeros_like(loss_sum)
            prev = [p.detach().clone() for p in self.si_params]  # SI weights before the step
            stat_sums: dict[str, torch.Tensor] = {}  # technique stats (penalty terms), on the device
            for i in range(self.steps_per_epoch):
                idx = perm[i * B:(i + 1) * B]
                x = augment(data.x_train[idx], data.crop_pad, data.flip, self.gen)
                y = data.y_train[idx]
                r = float(self.rate[self.step])
                for g, lr_of in zip(self.optimizer.param_groups, self._lr_of_group):
                    g["lr"] = lr_of(r)
                for hook in self._before_step:  # zero_grad (late-phase: member swap + partial zeroing)
                    hook()
                loss, _, stats = self._objective(self.model, x, y)
                loss.backward()
                egn_sum += self._eff_grad_norm()
                self._optimizer_step()
                for hook in self._after_step:
                    hook()
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
            for k in TECHNIQUE_MEASURES:  # one schema for every trial (NaN: off or not due)
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
        si_norm = _norm(self.si_params).item() if self.si_params else float("nan")
        r = float(self.rate[self.step - 1])
        lr_si = self._lr_of_group[0](r)
        rec = {"epoch": self.epoch, "step": self.step,
               "train_loss": float("nan"), "train_acc": float("nan"),
               "test_loss": float("nan"), "test_acc": float("nan"),
               "si_norm": si_norm,
               "elr": r if cfg.mode == "sphere" else lr_si / si_norm ** 2 if self.si_params else float("nan"),
               "lr": lr_si,
               "eff_grad_norm": (egn_sum / n).item() if self.si_params else float("nan"),
               "angular_update": (angle_sum / n).item() if self.si_params else float("nan"),
               "samples_per_s": n * cfg.batch_size / max(train_time, 1e-9),
               "num_classes": self.data.num_classes,
               "diverged": diverged}
        if diverged:
            rec["train_loss"] = mean_loss
            return rec
        with self._eval_context():  # late-phase: the members' averaged layer outputs
            if self.epoch % cfg.train_eval_every == 0 or self.epoch == cfg.epochs:
                rec["train_loss"], rec["train_acc"] = self.evaluate_train()
            rec["test_loss"], rec["test_acc"] = self.evaluate_test()
        for measure in self._epoch_measures:  # technique measures (NaN when not due)
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
        saved = {k: v.clone() for k, v in self.model.state_dict().items() if "running" in k or "num_batches" in k}
        was_training = self.model.training
        self.model.train()
        try:
            return self._loss_acc(self.data.x_train, self.data.y_train, self.cfg.batch_size)
        finally:
            self.model.load_state_dict(saved, strict=False)
            self.model.train(was_training)

    @torch.no_grad()
    def evaluate_test(self) -> tuple[float, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            # eval-mode outputs do not depend on the chunk: small chunks stay in the CPU's
            # cache (2.5x faster than 1000 at width 16), large ones fill a GPU
            return self._loss_acc(self.data.x_test, self.data.y_test, 1000 if self.device.type == "cuda" else 128)
        finally:
            self.model.train(was_training)

    def _loss_acc(self, x, y, chunk):
        n = len(x)
        if self.model.training and n % chunk == 1:
            chunk += 1  # never a BN batch of one example
        loss = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        for i in range(0, n, chunk):
            out = self.model(x[i:i + chunk])
            loss += F.cross_entropy(out, y[i:i + chunk], reduction="sum").double()
            correct += (out.argmax(1) == y[i:i + chunk]).sum()
        return (loss / n).item(), (correct.double() / n).item()

    # --- checkpoints ----------------------------------------------------------
    def state_dict(self) -> dict:
        return {"config": self.cfg.to_dict(), "epoch": self.epoch, "step": self.step, "rho0": self.rho0,
                "elapsed": self.elapsed, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.gen.get_state(),
                "techniques": self.techniques.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        # Fields a checkpoint predates take their defaults; the memory layout and the CPU
        # allocator setting may differ (they change how tensors are stored, not the run).
        known = set(TrainConfig.field_names())
        theirs = {**TrainConfig().to_dict(), **{k: v for k, v in sd["config"].items() if k in known}}
        ours = self.cfg.to_dict()
        diff = sorted(k for k in (set(theirs) | set(sd["config"])) - {"memory_format", "cpu_memory"}
                      if k not in known or theirs.get(k) != ours.get(k))
        if diff:
            raise ConfigError("checkpoint", f"was written by a different config (differs in: {', '.join(diff)})")
        self.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.gen.set_state(sd["generator"])
        self.techniques.load_state_dict(sd.get("techniques", {}))
        self.epoch, self.step, self.rho0, self.elapsed = sd["epoch"], sd["step"], sd["rho0"], sd["elapsed"]

    def save(self, path) -> None:
        torch.save(self.state_dict(), path)

    def restore(self, path) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))


# ---------------------------------------------------------------------------
def _norm(tensors) -> torch.Tensor:
    """Joint L2 norm of a list of tensors (one device op, no host sync)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))))


def _angle(prev, cur) -> torch.Tensor:
    """Angle (radians) between two concatenated vectors, accurate for tiny angles:
    2 * asin(||u - v|| / 2) for unit vectors u, v."""
    if not cur:
        return torch.zeros(())
    pn, cn = _norm(prev), _norm(cur)
    diff = torch._foreach_sub([c / cn for c in cur], [p / pn for p in prev])
    chord = _norm(diff)
    return 2 * torch.asin(torch.clamp(chord / 2, max=1.0))
