"""Stochastic weight averaging (Izmailov et al., 2018), as used with late-phase weights.

From epoch `swa_start` on, `update()` is called once per epoch (after the
epoch's last step) and keeps the running mean of every parameter:
avg <- avg + (w - avg) / (n + 1). Averaged weights have no matching BN
statistics, so `evaluate_model()` returns a copy of the model holding the
averaged parameters with BN running statistics *recomputed*: reset, then one
train-mode pass over the training set (no augmentation) with cumulative
averaging (momentum=None), then eval mode. The training model is untouched.

With late-phase weights the average is of the members' parameter mean (see
`StochasticWeightAveraging.epoch_end`): a single averaged network, not the
reference code's per-member BN recomputation followed by averaged layer outputs.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regimes.core.hooks import Technique


class SWA:
    def __init__(self, model: nn.Module):
        self.model = model
        self.avg: list[Tensor] | None = None
        self.n = 0

    @torch.no_grad()
    def update(self) -> None:
        params = [p.detach() for p in self.model.parameters()]
        if self.avg is None:
            self.avg = [p.clone() for p in params]
        else:
            torch._foreach_add_(self.avg, torch._foreach_sub(params, self.avg), alpha=1.0 / (self.n + 1))
        self.n += 1

    @torch.no_grad()
    def evaluate_model(self, x_train: Tensor, batch_size: int) -> nn.Module:
        """A copy of the model with the averaged weights and recomputed BN statistics (eval mode)."""
        if self.avg is None:
            raise RuntimeError("SWA has no average yet (update() was never called)")
        m = copy.deepcopy(self.model)
        for p, a in zip(m.parameters(), self.avg):
            p.copy_(a)
        recompute_bn(m, x_train, batch_size)
        return m.eval()

    def state_dict(self) -> dict:
        return {"avg": self.avg, "n": self.n}

    def load_state_dict(self, sd: dict) -> None:
        self.avg, self.n = sd["avg"], sd["n"]


@torch.no_grad()
def recompute_bn(model: nn.Module, x: Tensor, batch_size: int) -> None:
    """BN running statistics = average over train-mode batches of x (all BN-like layers)."""
    bns = [m for m in model.modules() if hasattr(m, "running_mean") and hasattr(m, "running_var")]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
        if hasattr(m, "num_batches_tracked"):
            m.num_batches_tracked.zero_()
    model.train()
    n = len(x)
    if n % batch_size == 1:
        batch_size += 1  # never a BN batch of one example
    for i, start in enumerate(range(0, n, batch_size)):
        for m in bns:  # cumulative mean: weight 1/(i+1) for batch i
            m.momentum = 1.0 / (i + 1)
        model(x[start:start + batch_size])
    for m, mom in zip(bns, saved):
        m.momentum = mom




class StochasticWeightAveraging(Technique):
    """SWA in a run: the average is updated at the end of every epoch >= `swa_start`;
    measures the averaged model's test accuracy and loss (BN statistics recomputed)."""

    name = "swa"
    measures = ("test_acc_swa", "test_loss_swa")

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.swa_start > 0

    def __init__(self, run):
        super().__init__(run)
        self.swa = SWA(run.model)

    def epoch_end(self, epoch: int) -> None:
        if epoch < self.run.cfg.swa_start:
            return
        # with late-phase weights, SWA averages one network: shared weights plus the members'
        # *parameter* mean (BN statistics recomputed for it at evaluation). The reference code
        # instead recomputes BN statistics per member and averages the late-phase layers'
        # outputs; the two agree at the first late-phase layer only (each later layer sees
        # member-specific inputs there), so the averaged models' logits differ (~2% of their size)
        lp = self.run.techniques.get("late_phase")
        ctx = lp.lp.mean_members() if lp is not None and lp.lp.started else contextlib.nullcontext()
        with ctx:
            self.swa.update()

    def measure(self, rec: dict) -> None:
        rec["test_acc_swa"] = rec["test_loss_swa"] = float("nan")
        if self.swa.n == 0:
            return
        run = self.run
        m = self.swa.evaluate_model(run.data.x_train, run.cfg.batch_size)
        with torch.no_grad():
            loss = acc = 0.0
            x, y = run.data.x_test, run.data.y_test
            for i in range(0, len(x), 1000):
                out = m(x[i:i + 1000])
                loss += float(F.cross_entropy(out, y[i:i + 1000], reduction="sum"))
                acc += float((out.argmax(1) == y[i:i + 1000]).sum())
        rec["test_loss_swa"], rec["test_acc_swa"] = loss / len(x), acc / len(x)

    def state_dict(self) -> dict:
        return self.swa.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        if sd:
            self.swa.load_state_dict(sd)
