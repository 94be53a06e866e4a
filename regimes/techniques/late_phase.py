"""Late-phase weights (von Oswald et al., ICLR 2021).

From epoch T0 on, a small set of "late-phase" tensors -- the BatchNorm
parameters and running statistics and the head -- exists in K copies
(members); everything else is shared. Minibatch t trains member t mod K: its
late-phase parameters take an SGD step on that minibatch alone, while the
shared weights accumulate their gradients over K consecutive minibatches (one
per member) and take one step per cycle with the *sum* of the K gradients (as
the seed; reduce="mean" divides by K).

How: the model keeps its own structure (so parameter roles, fx tracing and
checkpoints of the model are unchanged). The members live here; before each
minibatch the active member's tensors are copied into the model's late-phase
parameters/buffers and its momentum buffers are put in the optimiser state;
after the step they are copied back. Late-phase tensors are small (BN
channels + head), so the copies cost little next to a forward pass.

Evaluation (`averaged()`): every late-phase layer outputs the mean of its K
members' outputs on the same input (the paper's averaging of layer outputs,
not of parameters; for the head -- a linear map -- the two coincide, for BN in
eval mode they do not, since each member has its own running statistics).
`ensemble_predict()` instead averages the K full networks' softmax outputs.

Noise: at T0 member k > 0 gets independent N(0, noise^2) added to each
late-phase *parameter* (not to running statistics), from a private generator.

With K = 1 the machinery reduces exactly to plain training (tested).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from regimes.core.hooks import Overrides, Technique

REDUCES = ("sum", "mean")


def default_late_phase_modules(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers (torch's and LCNN's Lipschitz BN) and the head (the last Linear)."""
    from regimes.techniques.lcnn_layers import LipschitzBatchNorm2d

    mods = [m for m in model.modules()
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, LipschitzBatchNorm2d))]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    head = getattr(model, "head", None) or (linears[-1] if linears else None)
    if head is not None and head not in mods:
        mods.append(head)
    return mods


class LatePhase:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, k: int, *,
                 reduce: str = "sum", noise: float = 0.0, seed: int = 0,
                 modules: list[nn.Module] | None = None):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if reduce not in REDUCES:
            raise ValueError(f"reduce must be one of {REDUCES}, got {reduce!r}")
        self.model, self.optimizer, self.k, self.reduce, self.noise = model, optimizer, k, reduce, noise
        self.modules = modules if modules is not None else default_late_phase_modules(model)
        # (module, name, tensor) of the model's late-phase parameters and buffers
        self.params = [(m, n, p) for m in self.modules for n, p in m.named_parameters(recurse=False)]
        self.buffers = [(m, n, b) for m in self.modules for n, b in m.named_buffers(recurse=False)]
        ids = {id(p) for _, _, p in self.params}
        self.shared = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.members: list[dict] = []
        self.active = 0      # member whose tensors are in the model now
        self.t = 0           # minibatches since the start of the late phase
        self.started = False

    # --- life cycle -------------------------------------------------------------
    @torch.no_grad()
    def start(self) -> None:
        """At T0: K copies of the current late-phase tensors (members > 0 perturbed)."""
        self.members = []
        momentum = [self._momentum(p) for _, _, p in self.params]
        for k in range(self.k):
            params = [p.detach().clone() for _, _, p in self.params]
            if k > 0 and self.noise > 0:
                for q in params:
                    q.add_(torch.randn(q.shape, generator=self.gen, dtype=q.dtype).to(q.device), alpha=self.noise)
            # every member continues from a copy of the momentum it had at T0
            self.members.append({"params": params,
                                 "buffers": [b.detach().clone() for _, _, b in self.buffers],
                                 "momentum": [None if b is None else b.clone() for b in momentum]})
        self.active, self.t, self.started = 0, 0, True
        self._load(0)

    def _momentum(self, p: Tensor) -> Tensor | None:
        return self.optimizer.state.get(p, {}).get("momentum_buffer")

    @torch.no_grad()
    def _load(self, k: int) -> None:
        member = self.members[k]
        for (_, _, p), v in zip(self.params, member["params"]):
            p.copy_(v)
        for (_, _, b), v in zip(self.buffers, member["buffers"]):
            b.copy_(v)
        for (_, _, p), buf in zip(self.params, member["momentum"]):
            state = self.optimizer.state[p]
            if buf is None:
                state.pop("momentum_buffer", None)
            else:
                state["momentum_buffer"] = buf
        self.active = k

    @torch.no_grad()
    def _save(self) -> None:
        member = self.members[self.active]
        for (_, _, p), v in zip(self.params, member["params"]):
            v.copy_(p)
        for (_, _, b), v in zip(self.buffers, member["buffers"]):
            v.copy_(b)
        member["momentum"] = [self._momentum(p) for _, _, p in self.params]

    def restart_cycle(self) -> None:
        """Start a new K-cycle at member 0 now: the shared gradient of an unfinished cycle is
        dropped (the next before_step clears it), as the reference code does at every epoch."""
        if self.started and self.t % self.k:
            self.t += self.k - self.t % self.k

    # --- one minibatch ------------------------------------------------------------
    def before_step(self) -> None:
        """Before the forward pass: put member t mod K into the model and clear the
        gradients it must not see (all of them at the start of a cycle; otherwise only
        the late-phase ones, so the shared gradients keep accumulating)."""
        k = self.t % self.k
        if k != self.active:
            self._save()
            self._load(k)
        if k == 0:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            for _, _, p in self.params:
                p.grad = None

    def optimizer_step(self) -> None:
        """After backward: members step every minibatch, shared weights every K-th.
        Gradients are left in place (cleared by the next before_step)."""
        last_of_cycle = (self.t + 1) % self.k == 0
        if last_of_cycle:
            if self.reduce == "mean" and self.k > 1:
                for p in self.shared:
                    if p.grad is not None:
                        p.grad.div_(self.k)
            self.optimizer.step()
        else:
            stash = [p.grad for p in self.shared]
            for p in self.shared:
                p.grad = None  # SGD skips parameters without a gradient
            self.optimizer.step()
            for p, g in zip(self.shared, stash):
                p.grad = g
        self.t += 1

    @property
    def shared_stepped(self) -> bool:
        """True right after an optimizer_step that moved the shared weights."""
        return self.t % self.k == 0

    # --- evaluation ---------------------------------------------------------------
    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """Forward passes inside use, per late-phase layer, the mean of the K members' outputs."""
        self._save()
        handles, busy = [], set()
        per_module = {}
        for i, (m, n, _) in enumerate(self.params):
            per_module.setdefault(m, {"params": [], "buffers": []})["params"].append((n, i))
        for i, (m, n, _) in enumerate(self.buffers):
            per_module.setdefault(m, {"params": [], "buffers": []})["buffers"].append((n, i))

        def hook(module, args, output):
            if module in busy:
                return None
            busy.add(module)
            try:
                outs = []
                for member in self.members:
                    tensors = {n: member["params"][i] for n, i in per_module[module]["params"]}
                    # clones: a train-mode BN would otherwise update the stored statistics
                    tensors.update({n: member["buffers"][i].clone() for n, i in per_module[module]["buffers"]})
                    outs.append(functional_call(module, tensors, args))
                return torch.stack(outs).mean(0)
            finally:
                busy.discard(module)

        try:
            for m in per_module:
                handles.append(m.register_forward_hook(hook))
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def ensemble_predict(self, x: Tensor, chunk: int = 1000) -> Tensor:
        """Mean over members of softmax(model_k(x)) in eval mode; returns probabilities."""
        self._save()
        active, was_training = self.active, self.model.training
        self.model.eval()
        try:
            probs = torch.zeros(())
            for k in range(self.k):
                self._load(k)
                pk = torch.cat([F.softmax(self.model(x[i:i + chunk]).double(), 1) for i in range(0, len(x), chunk)])
                probs = pk if k == 0 else probs + pk
            return probs / self.k
        finally:
            self._load(active)
            self.model.train(was_training)

    @contextlib.contextmanager
    def mean_members(self) -> Iterator[None]:
        """Late-phase parameters and buffers set to the members' mean (for SWA); restored after."""
        self._save()
        try:
            with torch.no_grad():
                for i, (_, _, p) in enumerate(self.params):
                    p.copy_(torch.stack([m["params"][i] for m in self.members]).mean(0))
                for i, (_, _, b) in enumerate(self.buffers):
                    if b.is_floating_point():
                        b.copy_(torch.stack([m["buffers"][i] for m in self.members]).mean(0))
            yield
        finally:
            self._load(self.active)

    # --- checkpoints ----------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.started:
            self._save()
        # a cycle may span a checkpoint: keep the shared gradients accumulated so far
        pending = [None if p.grad is None else p.grad.detach().clone() for p in self.shared]
        return {"members": self.members, "active": self.active, "t": self.t, "started": self.started,
                "generator": self.gen.get_state(), "pending_grads": pending}

    def load_state_dict(self, sd: dict) -> None:
        self.members, self.t, self.started = sd["members"], sd["t"], sd["started"]
        self.gen.set_state(sd["generator"])
        if self.started:
            self._load(sd["active"])
        for p, g in zip(self.shared, sd.get("pending_grads", [])):
            p.grad = None if g is None else g.clone()




class LatePhaseWeights(Technique):
    """Late-phase weights in a run: the K members are created at the start of epoch
    `late_phase_start`; from then on the gradient reset and the optimiser step are the
    member/shared schedule above and evaluation uses the members' averaged layer outputs.
    Measures the ensemble's test accuracy and loss. With late-phase weights,
    `eff_grad_norm` is read after each backward, i.e. from the shared gradient accumulated
    so far in the current K-cycle. The member counter `t` is in the checkpoint.

    Epoch boundary (`late_phase_boundary`): "carry" (default) lets a K-cycle run on across
    epochs, so every minibatch's gradient reaches the shared weights and member t mod K
    counts minibatches since T0; "restart" begins every epoch at member 0 and drops the
    shared gradient of a cycle left unfinished at the epoch's end, as the reference code
    does (its member loop restarts with each data-loader pass). The two differ only when
    the steps per epoch are not a multiple of K."""

    name = "late_phase"
    measures = ("test_acc_ensemble", "test_loss_ensemble")

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.late_phase_k > 1

    def __init__(self, run):
        super().__init__(run)
        cfg = run.cfg
        self.lp = LatePhase(run.model, run.optimizer, cfg.late_phase_k, reduce=cfg.late_phase_reduce,
                            noise=cfg.late_phase_noise, seed=cfg.seed)

    def epoch_start(self, epoch: int) -> None:
        if epoch == self.run.cfg.late_phase_start and not self.lp.started:
            self.lp.start()
        elif self.run.cfg.late_phase_boundary == "restart":
            self.lp.restart_cycle()

    def overrides(self) -> Overrides | None:
        if not self.lp.started:
            return None
        return Overrides(zero_grad=self.lp.before_step, optimizer_step=self.lp.optimizer_step,
                         eval_context=self.lp.averaged)

    def measure(self, rec: dict) -> None:
        rec["test_acc_ensemble"] = rec["test_loss_ensemble"] = float("nan")
        if not self.lp.started:
            return
        x, y = self.run.data.x_test, self.run.data.y_test
        probs = self.lp.ensemble_predict(x)
        rec["test_acc_ensemble"] = float((probs.argmax(1) == y).double().mean())
        rec["test_loss_ensemble"] = float(F.nll_loss(torch.log(probs.clamp_min(1e-300)), y))

    def state_dict(self) -> dict:
        return self.lp.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        if sd:
            self.lp.load_state_dict(sd)
