"""Packed training: K configurations trained as one network in one process.

    from regimes.core.pack import PackedTrainer
    for recs in PackedTrainer([cfg.replace(elr=e, seed=s) for e in elrs for s in seeds]).run():
        for k, rec in recs.items():       # one record per member still training
            print(k, rec["epoch"], rec["train_loss"])

Why: the networks studied here are small (a c-2c-4c-8c ConvNet with c = 4..32),
and one per process leaves a CPU core or a GPU mostly idle while Ray pays its
start-up once per configuration. A pack runs K of them as one network:

- every convolution becomes a grouped convolution with K groups (member k's
  channels are block k, in member order), every BatchNorm one BatchNorm over
  K x C channels (its statistics are per channel, hence per member), the head
  a batched matmul (`PackedLinear`); pooling, ReLU and residual sums act per
  channel. Member k's input images fill channel block k, so each member sees
  its own minibatch; the output is (batch, K, classes).
- the loss is the sum of the members' mean losses, so each member's gradient
  is its own. The optimiser step (`_step`) is torch's SGD rule written over a
  member axis: rates, weight decay and momentum are vectors over K, broadcast
  on each tensor's member-major first dimension; on the sphere each member is
  projected back to its own rho0_k with its own joint SI norm.
- each member is built by `build_model` from its own config (its own init),
  and draws its data order and augmentation from its own generator seeded
  with its own seed, in the order the unpacked Trainer draws them. Member k
  therefore follows the trajectory of the same config trained alone, up to
  the order of float additions in the grouped kernels (tests/test_pack.py
  states the tolerances).
- nothing mixes members: a member whose loss turns NaN poisons only its own
  channel block. A member that is done (diverged, or stopped by the caller,
  e.g. its regime decided) is removed from the pack at the end of its epoch
  (`finish`): the network is sliced down to the members left, so they keep
  training at the cost of a smaller pack and the finished member's rows end.

Which configurations can be packed: regimes.core.packable (the rates,
schedules, weight decay, momentum and seed differ per member; architecture,
data, batch size and epochs are shared; the techniques have no packed form yet).
Checkpoints hold the whole pack (`state_dict`), so a pack resumes as a unit,
bit for bit on the same machine.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import packable, record
from .config import TrainConfig
from .data import Data, apply_augment, augment_draws, load_data
from .models import build_model
from .params import Role, find_roles, no_decay_params
from .runtime import resolve_device, resolve_memory_format, retain_freed_memory
from .schedules import schedule_values
from .sphere import joint_norm
from .trainer import _frozen, load_checkpoint, measuring


# --- the packed layers ---------------------------------------------------------------
class _Packed:
    """A layer holding K members' tensors, member-major along the first dimension."""
    members: int

    def select(self, pos: list[int]) -> None:
        """Keep only the members at positions `pos` (in that order)."""
        K = self.members
        for store in (self._parameters, self._buffers):
            for name, t in list(store.items()):
                if t is None or t.dim() == 0:
                    continue
                kept = t.detach().unflatten(0, (K, -1))[pos].flatten(0, 1).clone()
                store[name] = nn.Parameter(kept, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) \
                    else kept
        self.members = len(pos)
        self._resized(K, len(pos))

    def _resized(self, old: int, new: int) -> None:
        raise NotImplementedError


class PackedConv2d(_Packed, nn.Conv2d):
    """K convolutions as one grouped convolution: member k reads and writes channel block k."""

    @classmethod
    def of(cls, convs: list[nn.Conv2d]) -> "PackedConv2d":
        c, K = convs[0], len(convs)
        m = cls(K * c.in_channels, K * c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                groups=K * c.groups, bias=c.bias is not None, padding_mode=c.padding_mode,
                device=c.weight.device, dtype=c.weight.dtype)
        m.members = K
        with torch.no_grad():
            m.weight.copy_(torch.cat([v.weight for v in convs]))
            if c.bias is not None:
                m.bias.copy_(torch.cat([v.bias for v in convs]))
        m.weight.requires_grad_(c.weight.requires_grad)
        if c.bias is not None:
            m.bias.requires_grad_(c.bias.requires_grad)
        return m

    def _resized(self, old, new):
        self.in_channels = self.in_channels // old * new
        self.out_channels = self.out_channels // old * new
        self.groups = self.groups // old * new


class PackedBatchNorm2d(_Packed, nn.BatchNorm2d):
    """K BatchNorms over C channels each as one over K x C: statistics stay per member."""

    @classmethod
    def of(cls, bns: list[nn.BatchNorm2d]) -> "PackedBatchNorm2d":
        b, K = bns[0], len(bns)
        m = cls(K * b.num_features, eps=b.eps, momentum=b.momentum, affine=b.affine,
                track_running_stats=b.track_running_stats,
                device=b.running_mean.device if b.running_mean is not None else None,
                dtype=b.running_mean.dtype if b.running_mean is not None else None)
        m.members = K
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                if getattr(b, name) is not None:
                    getattr(m, name).copy_(torch.cat([getattr(v, name) for v in bns]))
            if b.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(b.num_batches_tracked)
        if b.affine:
            m.weight.requires_grad_(b.weight.requires_grad)
            m.bias.requires_grad_(b.bias.requires_grad)
        return m

    def _resized(self, old, new):
        self.num_features = self.num_features // old * new


class PackedLinear(_Packed, nn.Module):
    """K linear heads as one batched matmul: (batch, K * in) -> (batch, K, out)."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool, device=None, dtype=None):
        super().__init__()
        self.members, self.in_features, self.out_features = members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(members, out_features, device=device, dtype=dtype)) if bias else None

    @classmethod
    def of(cls, heads: list[nn.Linear]) -> "PackedLinear":
        h = heads[0]
        m = cls(len(heads), h.in_features, h.out_features, h.bias is not None, h.weight.device, h.weight.dtype)
        with torch.no_grad():
            m.weight.copy_(torch.stack([v.weight for v in heads]))
            if h.bias is not None:
                m.bias.copy_(torch.stack([v.bias for v in heads]))
        m.weight.requires_grad_(h.weight.requires_grad)
        if h.bias is not None:
            m.bias.requires_grad_(h.bias.requires_grad)
        return m

    def forward(self, x):
        xk = x.reshape(x.shape[0], self.members, self.in_features).transpose(0, 1)       # (K, batch, in)
        wt = self.weight.transpose(1, 2)                                                   # (K, in, out)
        out = torch.baddbmm(self.bias[:, None, :], xk, wt) if self.bias is not None else torch.bmm(xk, wt)
        return out.transpose(0, 1)                                                         # (batch, K, out)

    def _resized(self, old, new):
        pass


_CHANNELWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d, nn.Identity,
                nn.Flatten)


def pack_models(models: Sequence[nn.Module]) -> nn.Module:
    """One network computing every model of `models` (same architecture, any weights)."""
    packed = copy.deepcopy(models[0])
    named = [dict(m.named_modules()) for m in models]
    for name, mod in models[0].named_modules():
        if next(mod.children(), None) is not None:
            continue                                   # a container: its forward only adds and flattens
        members = [n[name] for n in named]
        if isinstance(mod, nn.Conv2d):
            new = PackedConv2d.of(members)
        elif isinstance(mod, nn.BatchNorm2d):
            new = PackedBatchNorm2d.of(members)
        elif isinstance(mod, nn.Linear):
            new = PackedLinear.of(members)
        elif isinstance(mod, _CHANNELWISE):
            continue
        else:
            raise ConfigError("model", f"layer {name} ({type(mod).__name__}) has no packed form")
        parent, _, attr = name.rpartition(".")
        setattr(packed.get_submodule(parent) if parent else packed, attr, new)
    return packed


def select_members(model: nn.Module, pos: list[int]) -> None:
    for m in model.modules():
        if isinstance(m, _Packed):
            m.select(pos)


# --- the packed run --------------------------------------------------------------------
class PackedTrainer:
    """K runs as one: `run()` yields, per epoch, {member index: record} for the members still
    training; each record has exactly the keys of a `Trainer` record (regimes.core.record)."""

    def __init__(self, cfgs: Sequence[TrainConfig], dtype: torch.dtype = torch.float32):
        self.cfgs = list(cfgs)
        packable.check(self.cfgs)
        cfg = self.cfg = self.cfgs[0]                      # the shared fields
        K = len(self.cfgs)
        self.device = resolve_device(cfg.device)
        self.dtype = dtype
        self.data: Data = load_data(cfg, self.device, dtype)
        n = len(self.data.x_train)
        if cfg.batch_size > n:
            raise ConfigError("batch_size", f"{cfg.batch_size} exceeds the {n} training examples")
        self.steps_per_epoch = n // cfg.batch_size         # the last partial batch is dropped, as unpacked
        if self.device.type == "cpu" and cfg.cpu_memory == "retain":
            retain_freed_memory()
        shape, classes = self.data.input_shape, self.data.num_classes
        singles = [build_model(c, shape, classes).to(self.device, dtype) for c in self.cfgs]
        roles = find_roles(singles[0])
        params0 = dict(singles[0].named_parameters())
        self.si_names = [n for n in roles.names(Role.SCALE_INVARIANT) if params0[n].requires_grad]
        if cfg.mode == "sphere" and not self.si_names:
            raise ConfigError("mode", f"model {cfg.model} has no scale-invariant weights; "
                              "use mode=free or a *_si / *_si_af model")
        nd = {id(p) for p in no_decay_params(singles[0])}
        self.nd_names = [n for n, p in params0.items() if id(p) in nd and n not in self.si_names]
        self.other_names = [n for n, p in params0.items() if p.requires_grad and n not in self.si_names
                            and n not in self.nd_names]
        # rho0_k: joint norm of member k's SI weights at init (the solo Trainer's rho0)
        rho0 = [joint_norm([dict(m.named_parameters())[n] for n in self.si_names]).item() if self.si_names else 0.0
                for m in singles]
        self.rho0 = torch.tensor(rho0, dtype=torch.float64)
        self.model = pack_models(singles)
        del singles
        self.memory_format = resolve_memory_format(cfg.memory_format, self.device)
        self._images = len(shape) == 3
        self._layout()
        T = cfg.epochs * self.steps_per_epoch
        self.rate = torch.stack([schedule_values(c, T, self.steps_per_epoch) for c in self.cfgs])   # (K, T)
        self.gens = [torch.Generator(device="cpu").manual_seed(c.seed) for c in self.cfgs]
        self.members: list[int] = list(range(K))           # the members still training, in pack order
        self.epoch = 0
        self.step = 0
        self.elapsed = 0.0
        self._momentum: dict[str, torch.Tensor] = {}
        self._tables()

    # --- set-up ---------------------------------------------------------------
    def _layout(self) -> None:
        if self._images:
            self.model.to(memory_format=self.memory_format)

    def _tables(self) -> None:
        """Per-step rate of each parameter kind for every member still in the pack, on the device:
        (steps, K) tables, so a step reads a row and never syncs with the host."""
        cfgs = [self.cfgs[k] for k in self.members]
        rate = self.rate[self.members].T                     # (T, K) float64
        rho0 = self.rho0[self.members]
        dev, dt = self.device, self.dtype
        vec = lambda vals: torch.tensor(vals, dtype=torch.float64)   # noqa: E731
        zero = vec([0.0] * len(cfgs))
        if self.cfg.mode == "sphere":
            si_lr = rate * rho0 ** 2                         # lr = elr * rho0^2: the ELR at radius rho0
            fixed = vec([c.noninv_lr for c in cfgs])
            same = vec([float(c.noninv_lr == -1) for c in cfgs])
            other_lr = torch.where(same.bool(), si_lr, fixed.expand_as(si_lr))
            kinds = {"si": (si_lr, zero), "other": (other_lr, vec([c.wd for c in cfgs])), "nd": (other_lr, zero)}
            if all(c.noninv_lr == 0 for c in cfgs):          # frozen in every member: no gradients at all
                for n in self.other_names + self.nd_names:
                    dict(self.model.named_parameters())[n].requires_grad_(False)
        else:
            wd = vec([c.wd for c in cfgs])
            kinds = {"si": (rate, wd), "other": (rate, wd), "nd": (rate, zero)}
        self._lr = {k: lr.to(dev, dt) for k, (lr, _) in kinds.items()}
        self._wd = {k: wd.to(dev, dt) for k, (_, wd) in kinds.items()}
        self._any_wd = {k: bool((wd != 0).any()) for k, (_, wd) in kinds.items()}
        m = vec([c.momentum for c in cfgs])
        self._mom = m.to(dev, dt)
        self._any_mom = bool((m != 0).any())
        self._rho0_dev = rho0.to(dev, dt)

    def _named(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    def _groups(self):
        named = self._named()
        for kind, names in (("si", self.si_names), ("other", self.other_names), ("nd", self.nd_names)):
            for n in names:
                if named[n].requires_grad:
                    yield kind, n, named[n]

    @property
    def K(self) -> int:
        return len(self.members)

    # --- per-member vector arithmetic ------------------------------------------------
    def _norms(self, tensors) -> torch.Tensor:
        """(K,) joint L2 norm of each member's slice of `tensors` (member-major tensors)."""
        K = self.K
        per = [torch.linalg.vector_norm(t.unflatten(0, (K, -1)), dim=tuple(range(1, t.dim() + 1))) for t in tensors]
        return torch.linalg.vector_norm(torch.stack(per), dim=0)

    def _bshape(self, t: torch.Tensor) -> tuple:
        return (self.K,) + (1,) * t.dim()

    @torch.no_grad()
    def _step(self, groups) -> None:
        """torch.optim.SGD's update (weight decay, heavy-ball momentum without dampening),
        member by member: every coefficient a vector over the pack."""
        s, K = self.step, self.K
        for kind, name, p in groups:
            if p.grad is None:
                continue
            pv, d = p.unflatten(0, (K, -1)), p.grad.unflatten(0, (K, -1))
            shape = self._bshape(p)
            if self._any_wd[kind]:
                d = d + self._wd[kind].view(shape) * pv
            if self._any_mom:
                buf = self._momentum.get(name)
                if buf is None:
                    buf = self._momentum[name] = d.detach().clone()
                else:
                    buf.mul_(self._mom.view(shape)).add_(d)
                d = buf
            pv.sub_(self._lr[kind][s].view(shape) * d)

    @torch.no_grad()
    def _project(self, si) -> None:
        """Each member's SI weights jointly back to its own norm rho0_k."""
        scale = self._rho0_dev / self._norms(si)
        for p in si:
            p.unflatten(0, (self.K, -1)).mul_(scale.view(self._bshape(p)))

    @torch.no_grad()
    def _angles(self, prev, cur) -> torch.Tensor:
        """(K,) angle between each member's SI vector before and after the step; `prev` updated."""
        K = self.K
        pn, cn = self._norms(prev), self._norms(cur)
        diff = [c.unflatten(0, (K, -1)) / cn.view(self._bshape(c)) - p.unflatten(0, (K, -1)) / pn.view(self._bshape(p))
                for p, c in zip(prev, cur)]
        chord = self._norms([d.flatten(0, 1) for d in diff])
        torch._foreach_copy_(prev, [c.detach() for c in cur])
        return (2 * torch.asin(torch.clamp(chord / 2, max=1.0))).double()

    # --- the batch ---------------------------------------------------------------
    def _batch(self, perms: torch.Tensor, i: int):
        """Member k's minibatch i of the epoch, packed: images (B, K*C, H, W), labels (K, B)."""
        data, B, K = self.data, self.cfg.batch_size, self.K
        idx = perms[:, i * B:(i + 1) * B]                                    # (K, B)
        x = data.x_train[idx]                                                # (K, B, C, H, W)
        if data.crop_pad or data.flip:
            draws = [augment_draws(B, data.crop_pad, data.flip, self.gens[k], self.device) for k in self.members]
            cat = lambda j: None if draws[0][j] is None else torch.cat([d[j] for d in draws])   # noqa: E731
            x = apply_augment(x.flatten(0, 1), data.crop_pad, cat(0), cat(1), cat(2)).unflatten(0, (K, B))
        return self._pack_input(x.transpose(0, 1)), data.y_train[idx]

    def _pack_input(self, x: torch.Tensor) -> torch.Tensor:
        """(n, K, C, ...) -> (n, K*C, ...), in the model's memory layout."""
        x = x.reshape(x.shape[0], -1, *x.shape[3:])
        if self._images and self.memory_format == torch.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @staticmethod
    def _member_losses(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """(K,) cross-entropy of each member on its own labels; logits (B, K, classes), y (K, B)."""
        ce = F.cross_entropy(logits.transpose(1, 2), y.T, reduction="none")          # (B, K)
        return ce.mean(0) if reduction == "mean" else ce.sum(0)

    # --- the loop -----------------------------------------------------------------
    def run(self) -> Iterator[dict[int, dict]]:
        cfg = self.cfg
        while self.epoch < cfg.epochs and self.members:
            t0 = time.perf_counter()
            K = self.K
            self.model.train()
            perms = torch.stack([torch.randperm(len(self.data.x_train), generator=self.gens[k])
                                 for k in self.members]).to(self.device)
            si = [self._named()[n] for n in self.si_names]
            loss_sum = torch.zeros(K, device=self.device, dtype=torch.float64)
            egn_sum = torch.zeros_like(loss_sum)
            angle_sum = torch.zeros_like(loss_sum)
            prev = [p.detach().clone() for p in si]
            groups = list(self._groups())        # fixed for the epoch: members leave between epochs
            params = [p for _, _, p in groups]
            for i in range(self.steps_per_epoch):
                x, y = self._batch(perms, i)
                for p in params:
                    p.grad = None
                losses = self._member_losses(self.model(x), y)
                losses.sum().backward()           # member k's gradient is that of its own mean loss
                if si:
                    egn_sum += (self._norms([p.grad for p in si]) * self._norms(si)).double()
                self._step(groups)
                if cfg.mode == "sphere":
                    self._project(si)
                if si:
                    angle_sum += self._angles(prev, si)
                loss_sum += losses.detach().double()
                self.step += 1
            train_time = time.perf_counter() - t0
            self.epoch += 1
            recs = self._measure(loss_sum, egn_sum, angle_sum, train_time, si)
            self.elapsed += time.perf_counter() - t0
            for rec in recs.values():
                rec["time_s"] = self.elapsed
            yield recs
            self.finish([k for k, r in recs.items() if r["diverged"]])

    def finish(self, members: Sequence[int]) -> None:
        """Take `members` (indices into the configs) out of the pack: they train no further.
        Call it between two epochs (after a record); the network is sliced to the others."""
        gone = set(members) & set(self.members)
        if not gone:
            return
        pos = [i for i, k in enumerate(self.members) if k not in gone]
        self.members = [self.members[i] for i in pos]
        if not pos:
            return
        select_members(self.model, pos)
        self._layout()
        self._momentum = {n: b[pos] for n, b in self._momentum.items()}
        self._tables()

    # --- measures -----------------------------------------------------------------
    @torch.no_grad()
    def _measure(self, loss_sum, egn_sum, angle_sum, train_time, si) -> dict[int, dict]:
        cfg, n = self.cfg, self.steps_per_epoch
        mean_loss = (loss_sum / n).tolist()
        si_norm = self._norms(si).double().tolist() if si else [math.nan] * self.K
        egn = (egn_sum / n).tolist() if si else [math.nan] * self.K
        ang = (angle_sum / n).tolist() if si else [math.nan] * self.K
        need_train = self.epoch % cfg.train_eval_every == 0 or self.epoch == cfg.epochs
        tr_loss, tr_acc = self.evaluate_train() if need_train else ([math.nan] * self.K,) * 2
        te_loss, te_acc = self.evaluate_test()
        recs = {}
        for i, k in enumerate(self.members):
            c = self.cfgs[k]
            r = float(self.rate[k, self.step - 1])
            si_lr = r * float(self.rho0[k]) ** 2 if cfg.mode == "sphere" else r
            diverged = not math.isfinite(mean_loss[i])
            rec = {"epoch": self.epoch, "step": self.step,
                   "train_loss": math.nan, "train_acc": math.nan, "test_loss": math.nan, "test_acc": math.nan,
                   "si_norm": si_norm[i],
                   "elr": r if cfg.mode == "sphere" else (si_lr / si_norm[i] ** 2 if si else math.nan),
                   "lr": si_lr,
                   "eff_grad_norm": egn[i], "angular_update": ang[i],
                   "samples_per_s": n * c.batch_size / max(train_time, 1e-9),
                   "num_classes": self.data.num_classes,
                   "diverged": diverged}
            if diverged:
                rec["train_loss"] = mean_loss[i]
            else:
                rec["train_loss"], rec["train_acc"] = tr_loss[i], tr_acc[i]
                rec["test_loss"], rec["test_acc"] = te_loss[i], te_acc[i]
                if not (math.isfinite(rec["test_loss"]) and (math.isfinite(si_norm[i]) or not si)) or (
                        rec["train_loss"] == rec["train_loss"] and not math.isfinite(rec["train_loss"])):
                    rec["diverged"] = True
            for key in record.TECHNIQUE_MEASURES:   # the techniques are off in a pack
                rec.setdefault(key, math.nan)
            recs[k] = rec
        return recs

    @torch.no_grad()
    def evaluate_train(self) -> tuple[list[float], list[float]]:
        """Per member: full train set, BN in train mode, no augmentation, minibatches of
        batch_size (as unpacked); BN running statistics are restored afterwards."""
        with measuring(self.model, train=True):
            return self._loss_acc(self.data.x_train, self.data.y_train, self.cfg.batch_size)

    @torch.no_grad()
    def evaluate_test(self) -> tuple[list[float], list[float]]:
        with measuring(self.model, train=False):
            return self._loss_acc(self.data.x_test, self.data.y_test, 1000 if self.device.type == "cuda" else 128)

    def _loss_acc(self, x, y, chunk):
        """Every member on the same examples: each chunk is repeated into every channel block."""
        n, K = len(x), self.K
        if self.model.training and n % chunk == 1:
            chunk += 1  # never a BN batch of one example
        loss = torch.zeros(K, device=self.device, dtype=torch.float64)
        correct = torch.zeros(K, device=self.device, dtype=torch.int64)
        for i in range(0, n, chunk):
            xc, yc = x[i:i + chunk], y[i:i + chunk]
            out = self.model(self._pack_input(xc[:, None].expand(-1, K, *xc.shape[1:])))     # (b, K, classes)
            loss += self._member_losses(out, yc.expand(K, -1), reduction="sum").double()
            correct += (out.argmax(2) == yc[:, None]).sum(0)
        return (loss / n).tolist(), (correct.double() / n).tolist()

    # --- checkpoints ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"configs": [c.to_dict() for c in self.cfgs], "members": list(self.members),
                "epoch": self.epoch, "step": self.step, "elapsed": self.elapsed, "rho0": self.rho0.tolist(),
                "model": self.model.state_dict(), "momentum": dict(self._momentum),
                "generators": [g.get_state() for g in self.gens]}

    def load_state_dict(self, sd: dict) -> None:
        # fields a checkpoint predates take their defaults; layout and allocator may differ
        known = set(TrainConfig.field_names()) - {"memory_format", "cpu_memory"}
        default = TrainConfig().to_dict()
        ours = [{k: v for k, v in c.to_dict().items() if k in known} for c in self.cfgs]
        theirs = [{k: _frozen(c.get(k, default[k])) for k in known} for c in sd["configs"]]
        if ours != theirs:
            raise ConfigError("checkpoint", "was written by a different pack of configs")
        self.finish([k for k in self.members if k not in set(sd["members"])])
        if list(sd["members"]) != self.members:
            raise ConfigError("checkpoint", "holds the pack's members in another order")
        self.model.load_state_dict(sd["model"])
        self._momentum = {n: b.to(self.device) for n, b in sd["momentum"].items()}
        for g, state in zip(self.gens, sd["generators"]):
            g.set_state(state)
        self.rho0 = torch.tensor(sd["rho0"], dtype=torch.float64)
        self.epoch, self.step, self.elapsed = sd["epoch"], sd["step"], sd["elapsed"]
        self._tables()

    def save(self, path) -> None:
        torch.save(self.state_dict(), path)

    def restore(self, path) -> None:
        """Load a checkpoint written by `save` (torch's weights-only loader, as `Trainer.restore`)."""
        self.load_state_dict(load_checkpoint(path, self.device))


def train_pack(cfgs: Sequence[TrainConfig], state: dict | None = None) -> Iterator[dict[int, dict]]:
    """Train `cfgs` as one pack; yields {member index: record} per epoch (see PackedTrainer)."""
    trainer = PackedTrainer(cfgs)
    if state is not None:
        trainer.load_state_dict(state)
    return trainer.run()

