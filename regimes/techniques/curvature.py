"""Curvature measures: sharpness (and the top-k Hessian eigenvalues), Hessian trace,
Fisher top eigenvalue and trace, input curvature.

All are costly and run at their own cadence (`sharpness_every`, ...),
on a fixed data subset. Each leaves the model exactly as it found it:

* train/eval flag of every submodule restored;
* every buffer (BN running statistics, spectral-norm vectors, ...) restored
  bit for bit, so the forward passes made here never leak into training;
* parameters are read, never written, and `.grad` is never touched
  (derivatives come from `torch.autograd.grad`, not `.backward()`);
* randomness comes from a private `torch.Generator`; the global CPU (and CUDA)
  RNG streams are forked and restored around the forward passes, so even a
  stochastic layer cannot shift the training run's random stream.

BN mode (a choice, documented): `sharpness` and `hess_trace` default to
`bn_mode="train"` -- batch statistics, i.e. the Hessian of the objective SGD
actually descends (and of the paper's `train_loss`), computed per chunk of
`chunk_size` examples so the batch statistics match the training batch size.
`input_curvature` always uses eval mode (running statistics): only then is
the loss of one sample a function of that sample alone, so that its input
Hessian is well defined and the Hessians of a batch are block-diagonal.

Fisher (`fisher_top`, `fisher_trace`): the true Fisher information of the
model's predictive distribution p(y|x) = softmax(z(x)), with y drawn from the
model (not the labels): F = (1/N) sum_i J_i' (diag(p_i) - p_i p_i') J_i, J_i the
Jacobian of example i's logits w.r.t. the parameters. Products F v come from
J v (the double-backward trick: J v = d/du <J'u, v>), the softmax Hessian
diag(p) - pp' applied per example, and J'(.) -- no per-example gradients. For a
model whose logits are linear in its parameters F equals the Hessian of the
cross-entropy exactly, at any weights (tests/test_curvature.py uses that as the
oracle). Train-mode BN as for sharpness (the chunk's logits jointly), whatever
the training loss (`loss=squared` too: the Fisher is the classifier's).
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regimes.core.hooks import Technique

LossFn = Callable[[Tensor, Tensor], Tensor]


# ---------------------------------------------------------------------------
# leave the model as found
@contextlib.contextmanager
def preserved(model: nn.Module, mode: str | None = None) -> Iterator[nn.Module]:
    """Run a block on `model` and restore its modes, buffers and the global RNG.

    `mode`: None keeps the current flags, "train"/"eval" sets them for the block.
    """
    modes = [(m, m.training) for m in model.modules()]
    # by (module, name), not by tensor: a lazily sized buffer may be replaced
    buffers = [(m, name, b.detach().clone()) for m in model.modules()
               for name, b in m._buffers.items() if b is not None]
    devices = sorted({b.device.index for _, _, b in buffers if b.device.type == "cuda"} |
                     {p.device.index for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            if mode is not None:
                model.train(mode == "train")
            yield model
    finally:
        with torch.no_grad():
            for m, name, saved in buffers:
                if m._buffers[name].shape == saved.shape:
                    m._buffers[name].copy_(saved)
                else:
                    m._buffers[name] = saved
        for m, flag in modes:
            m.training = flag


def _params(model: nn.Module, params: Sequence[Tensor] | None) -> list[Tensor]:
    ps = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not ps:
        raise ValueError("no parameters require grad")
    return ps


def _chunks(inputs: Tensor, targets: Tensor, chunk_size: int | None):
    n = inputs.shape[0]
    size = n if not chunk_size else min(chunk_size, n)
    return [(inputs[i:i + size], targets[i:i + size]) for i in range(0, n, size)]


def _hvp_operator(model, inputs, targets, params, loss_fn, chunk_size):
    """v -> H v for the mean loss over the subset (mean over chunks, weighted by size)."""
    chunks = _chunks(inputs, targets, chunk_size)
    n = inputs.shape[0]

    def hvp(vs: list[Tensor]) -> list[Tensor]:
        out = [torch.zeros_like(p) for p in params]
        for x, y in chunks:
            loss = loss_fn(model(x), y) * (x.shape[0] / n)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            dot = sum((g * v).sum() for g, v in zip(grads, vs))
            hv = torch.autograd.grad(dot, params)
            for o, h in zip(out, hv):
                o.add_(h)
        return out

    return hvp


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _normalize(vs: list[Tensor]) -> list[Tensor]:
    norm = torch.sqrt(_dot(vs, vs))
    return [v / norm for v in vs]


# ---------------------------------------------------------------------------
def sharpness(model: nn.Module, inputs: Tensor, targets: Tensor, *, iters: int = 20,
              method: str = "lanczos", seed: int = 0, bn_mode: str = "train",
              chunk_size: int | None = None, loss_fn: LossFn = F.cross_entropy,
              params: Sequence[Tensor] | None = None, tol: float = 1e-6) -> float:
    """Top eigenvalue of the Hessian of the mean loss w.r.t. the parameters.

    method="lanczos" (default): `iters` Lanczos steps with full
    re-orthogonalisation; returns the largest *algebraic* Ritz value, the usual
    meaning of sharpness (a large negative eigenvalue early in training is not
    sharpness). method="power": power iteration, returns the Rayleigh quotient
    of the eigenvalue of largest *magnitude* (stops early when the relative
    change < tol). One Hessian-vector product per iteration; Lanczos keeps
    `iters` parameter-sized vectors in memory.
    Parameters: those with requires_grad (or `params`).
    """
    if method not in ("lanczos", "power"):
        raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
    with preserved(model, bn_mode), torch.enable_grad():  # callers may be under no_grad
        ps = _params(model, params)
        hvp = _hvp_operator(model, inputs, targets, ps, loss_fn, chunk_size)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        v = _normalize([torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in ps])
        if method == "power":
            return _power(hvp, v, iters, tol)
        return float(_lanczos_ritz(hvp, v, iters)[-1])


def hessian_top_eigenvalues(model: nn.Module, inputs: Tensor, targets: Tensor, k: int, *, iters: int = 20,
                            seed: int = 0, bn_mode: str = "train", chunk_size: int | None = None,
                            loss_fn: LossFn = F.cross_entropy,
                            params: Sequence[Tensor] | None = None) -> list[float]:
    """The k largest (algebraic) Ritz values of `iters` Lanczos steps on the Hessian of the mean
    loss, largest first (the first is `sharpness`); NaN where Lanczos stopped with fewer than k
    (an invariant subspace: the Hessian restricted to the start vector's Krylov space has fewer
    eigenvalues). Exact once iters >= the number of parameters (full re-orthogonalisation)."""
    with preserved(model, bn_mode), torch.enable_grad():
        ps = _params(model, params)
        hvp = _hvp_operator(model, inputs, targets, ps, loss_fn, chunk_size)
        return _top_k(_lanczos_ritz(hvp, _start(ps, seed), iters), k)


def _start(ps, seed) -> list[Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return _normalize([torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in ps])


def _top_k(ritz: Tensor, k: int) -> list[float]:
    top = ritz.flip(0)[:k].tolist()
    return top + [float("nan")] * (k - len(top))


def _power(hvp, v, iters, tol) -> float:
    eig = float("nan")
    for _ in range(iters):
        hv = hvp(v)
        new = float(_dot(v, hv))
        if math.isfinite(eig) and abs(new - eig) <= tol * abs(new):
            return new
        eig = new
        v = _normalize(hv)
    return eig


def _lanczos_ritz(hvp, v, iters) -> Tensor:
    """The Ritz values (ascending, float64) of `iters` Lanczos steps from unit vector v."""
    basis, alphas, betas = [v], [], []
    for k in range(iters):
        w = hvp(basis[-1])
        alpha = _dot(w, basis[-1])
        alphas.append(float(alpha))
        # full re-orthogonalisation (twice is enough) keeps the Ritz values honest
        for _ in range(2):
            for q in basis:
                c = _dot(w, q)
                w = [wi - c * qi for wi, qi in zip(w, q)]
        beta = float(torch.sqrt(_dot(w, w)))
        if k == iters - 1 or beta < 1e-10 * max(1.0, abs(alphas[-1])):
            break
        betas.append(beta)
        basis.append([wi / beta for wi in w])
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas[:len(alphas) - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(t)


def hess_trace(model: nn.Module, inputs: Tensor, targets: Tensor, *, samples: int = 10,
               seed: int = 0, bn_mode: str = "train", chunk_size: int | None = None,
               loss_fn: LossFn = F.cross_entropy,
               params: Sequence[Tensor] | None = None) -> float:
    """Hutchinson estimate of tr(H): mean over `samples` Rademacher v of v'Hv.

    Unbiased; its variance is 2 * sum_{i != j} H_ij^2 / samples (exact for a
    diagonal Hessian).
    """
    with preserved(model, bn_mode), torch.enable_grad():  # callers may be under no_grad
        ps = _params(model, params)
        return _hutchinson(_hvp_operator(model, inputs, targets, ps, loss_fn, chunk_size), ps, samples, seed)


def _hutchinson(op, ps, samples: int, seed: int) -> float:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    total = 0.0
    for _ in range(samples):
        v = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.device, p.dtype) for p in ps]
        total += float(_dot(v, op(v)))
    return total / samples


def _fisher_operator(model, inputs, params, chunk_size):
    """v -> F v, F the Fisher of softmax(logits) averaged over the subset (see the module docstring)."""
    chunks = _chunks(inputs, inputs, chunk_size)
    n = inputs.shape[0]

    def fvp(vs: list[Tensor]) -> list[Tensor]:
        out = [torch.zeros_like(p) for p in params]
        for x, _ in chunks:
            z = model(x)
            p = torch.softmax(z.detach(), dim=1)
            u = torch.zeros_like(z, requires_grad=True)
            jtu = torch.autograd.grad(z, params, grad_outputs=u, create_graph=True)   # J'u, linear in u
            (jv,) = torch.autograd.grad(jtu, u, grad_outputs=vs)                      # J v
            hz = (p * jv - p * (p * jv).sum(1, keepdim=True)) / n                   # (diag p - pp') J v / N
            for o, f in zip(out, torch.autograd.grad(z, params, grad_outputs=hz)):
                o.add_(f)
        return out

    return fvp


def fisher_top(model: nn.Module, inputs: Tensor, *, iters: int = 20, seed: int = 0, bn_mode: str = "train",
               chunk_size: int | None = None, params: Sequence[Tensor] | None = None) -> float:
    """Largest eigenvalue of the true Fisher (Lanczos, `iters` Fisher-vector products)."""
    with preserved(model, bn_mode), torch.enable_grad():
        ps = _params(model, params)
        return float(_lanczos_ritz(_fisher_operator(model, inputs, ps, chunk_size), _start(ps, seed), iters)[-1])


def fisher_trace(model: nn.Module, inputs: Tensor, *, samples: int = 10, seed: int = 0, bn_mode: str = "train",
                 chunk_size: int | None = None, params: Sequence[Tensor] | None = None) -> float:
    """Hutchinson estimate of tr(F) (Rademacher probes, as hess_trace)."""
    with preserved(model, bn_mode), torch.enable_grad():
        ps = _params(model, params)
        return _hutchinson(_fisher_operator(model, inputs, ps, chunk_size), ps, samples, seed)


def _per_sample_ce(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def input_curvature(model: nn.Module, inputs: Tensor, targets: Tensor, *, iters: int = 10,
                    seed: int = 0, eps: float = 1e-12, chunk_size: int | None = None,
                    loss_fn: LossFn = _per_sample_ce) -> tuple[float, float]:
    """Mean and std (population) over samples of |u'H u| / ||g||, the LCNN paper's curvature.

    For each sample x_i: H = d^2 l_i / dx^2 and g = dl_i/dx of the per-sample
    loss l_i = loss_fn(logits, y)[i] (unreduced; default cross-entropy);
    u = top (largest-magnitude) eigenvector of H by `iters` steps of power
    iteration, started from a Gaussian drawn from a private generator.
    Eval-mode BN (running statistics), so the per-sample losses are
    independent and one HVP of their sum gives every sample's own HVP.
    `eps` guards samples whose gradient is exactly zero.
    """
    ratios = []
    with preserved(model, "eval"), torch.enable_grad():
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for x, y in _chunks(inputs, targets, chunk_size):
            x = x.detach().clone().requires_grad_(True)
            loss = loss_fn(model(x), y).sum()
            (g,) = torch.autograd.grad(loss, x, create_graph=True)
            u = _per_sample_normalize(torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device))
            rayleigh = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for _ in range(iters):
                (hu,) = torch.autograd.grad(g, x, grad_outputs=u, retain_graph=True)
                rayleigh = (u * hu).flatten(1).sum(1)
                u = _per_sample_normalize(hu)
            gnorm = g.detach().flatten(1).norm(dim=1)
            ratios.append((rayleigh.abs() / (gnorm + eps)).detach())
    r = torch.cat(ratios).double()
    return float(r.mean()), float(r.std(unbiased=False))


def _per_sample_normalize(u: Tensor) -> Tensor:
    norm = u.flatten(1).norm(dim=1).clamp_min(1e-30)
    return u / norm.view(-1, *([1] * (u.dim() - 1)))


# ---------------------------------------------------------------------------
class CurvatureMeasures(Technique):
    """The measures in a run, each on its own epoch cadence (`*_every`, the last
    epoch always included; NaN when not due), on the first `curvature_subset` training
    examples (seed-independent), with fresh probes per epoch (seed + epoch). The loss is
    the run's (`loss`); the Fisher is the classifier's whatever the loss."""

    name = "curvature"
    measures = ("sharpness", "hess_eig_2", "hess_eig_3", "hess_eig_4", "hess_eig_5", "hess_trace",
                "fisher_top", "fisher_trace", "input_curvature_mean", "input_curvature_std")

    @classmethod
    def enabled(cls, cfg) -> bool:
        return bool(cfg.sharpness_every or cfg.hess_trace_every or cfg.input_curvature_every or cfg.fisher_every)

    def __init__(self, run):
        super().__init__(run)
        n = min(run.cfg.curvature_subset, len(run.data.x_train))
        self.subset = (run.data.x_train[:n], run.data.y_train[:n])

    def measure(self, rec: dict) -> None:
        run, cfg = self.run, self.run.cfg
        x, y = self.subset
        nan = float("nan")
        last = run.epoch == cfg.epochs

        def due(every):
            return every > 0 and (run.epoch % every == 0 or last)

        seed = cfg.seed + run.epoch  # fresh probes per epoch, reproducible
        loss_fn = run.loss_fn
        if cfg.sharpness_every and due(cfg.sharpness_every):
            top = hessian_top_eigenvalues(run.model, x, y, cfg.sharpness_topk, iters=cfg.sharpness_iters, seed=seed,
                                          chunk_size=cfg.batch_size, loss_fn=loss_fn)
            rec["sharpness"] = top[0]
            for j, eig in enumerate(top[1:], start=2):
                rec[f"hess_eig_{j}"] = eig
        if cfg.hess_trace_every:
            rec["hess_trace"] = hess_trace(run.model, x, y, samples=cfg.hess_trace_samples, seed=seed,
                                           chunk_size=cfg.batch_size, loss_fn=loss_fn) \
                if due(cfg.hess_trace_every) else nan
        if cfg.fisher_every and due(cfg.fisher_every):
            rec["fisher_top"] = fisher_top(run.model, x, iters=cfg.sharpness_iters, seed=seed,
                                           chunk_size=cfg.batch_size)
            rec["fisher_trace"] = fisher_trace(run.model, x, samples=cfg.hess_trace_samples, seed=seed,
                                               chunk_size=cfg.batch_size)
        if cfg.input_curvature_every:
            mean, std = input_curvature(run.model, x, y, iters=cfg.input_curvature_iters, seed=seed,
                                        chunk_size=cfg.batch_size,
                                        loss_fn=functools.partial(loss_fn, reduction="none")) \
                if due(cfg.input_curvature_every) else (nan, nan)
            rec["input_curvature_mean"], rec["input_curvature_std"] = mean, std
