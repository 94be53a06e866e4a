"""Curvature measures against closed forms (float64) and the leave-untouched rule."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimes.techniques.curvature import hess_trace, input_curvature, sharpness

torch.set_num_threads(1)


def _sym(eigs, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


class Quadratic(nn.Module):
    """Output is the parameter itself; the loss 0.5 w'Aw + b'w has Hessian A everywhere."""

    def __init__(self, n, seed=1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))

    def forward(self, x):
        return self.w.expand(x.shape[0], -1)


def _quad_loss(a, b):
    def loss(out, y):  # every row of out is w
        w = out[0]
        return 0.5 * w @ a @ w + b @ w
    return loss


def _data(n=12, d=3):
    return torch.zeros(n, d, dtype=torch.float64), torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("chunk", [None, 5])
def test_sharpness_lanczos_and_power_match_top_eigenvalue(chunk):
    eigs = [5.0, 3.0, 1.0, 0.5, -1.0, -2.0, 0.1, 2.5]
    a = _sym(eigs)
    b = torch.linspace(-1, 1, len(eigs), dtype=torch.float64)
    x, y = _data()
    m = Quadratic(len(eigs))
    lz = sharpness(m, x, y, iters=len(eigs), loss_fn=_quad_loss(a, b), chunk_size=chunk)
    pw = sharpness(m, x, y, iters=200, method="power", loss_fn=_quad_loss(a, b), tol=0)
    assert lz == pytest.approx(5.0, rel=1e-9)
    assert pw == pytest.approx(5.0, rel=1e-9)


def test_lanczos_returns_largest_algebraic_power_largest_magnitude():
    eigs = [-7.0, 4.0, 1.0, 0.0, -1.0, 2.0]
    a = _sym(eigs, seed=3)
    x, y = _data()
    loss = _quad_loss(a, torch.zeros(len(eigs), dtype=torch.float64))
    assert sharpness(Quadratic(6), x, y, iters=6, loss_fn=loss) == pytest.approx(4.0, rel=1e-9)
    assert sharpness(Quadratic(6), x, y, iters=300, method="power", loss_fn=loss, tol=0) == \
        pytest.approx(-7.0, rel=1e-9)


def test_hutchinson_exact_for_diagonal_and_unbiased_for_dense():
    x, y = _data()
    d = torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    loss = _quad_loss(torch.diag(d), torch.zeros(4, dtype=torch.float64))
    # Rademacher v: v' diag(d) v = sum(d) for every draw
    assert hess_trace(Quadratic(4), x, y, samples=3, loss_fn=loss) == pytest.approx(4.5, rel=1e-12)

    a = _sym([4.0, 1.0, -0.5, 2.0, 3.0], seed=5)
    n = 3000
    est = hess_trace(Quadratic(5), x, y, samples=n, loss_fn=_quad_loss(a, torch.zeros(5, dtype=torch.float64)))
    off = a - torch.diag(torch.diag(a))
    sigma = math.sqrt(2 * float((off ** 2).sum()) / n)
    assert abs(est - float(torch.trace(a))) < 4 * sigma
    assert sigma > 1e-3  # the dense case really is stochastic


class SmallNet(nn.Module):
    def __init__(self, d=4, h=7, c=3):
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.bn = nn.BatchNorm1d(h)
        self.fc2 = nn.Linear(h, c)

    def forward(self, x):
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


def _trained_bn_net(seed=0):
    torch.manual_seed(seed)
    net = SmallNet().double()
    with torch.no_grad():  # give BN non-trivial running stats
        for _ in range(5):
            net(torch.randn(32, 4, dtype=torch.float64) * 2 + 1)
    return net


def test_input_curvature_matches_exact_input_hessian():
    net = _trained_bn_net()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(10, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=g)
    mean, std = input_curvature(net, x, y, iters=400, chunk_size=4)

    net.eval()  # the oracle: exact per-sample Hessian, eval-mode BN
    ratios = []
    for i in range(10):
        f = lambda xi: F.cross_entropy(net(xi[None]), y[i:i + 1])
        h = torch.autograd.functional.hessian(f, x[i])
        gr = torch.autograd.functional.jacobian(f, x[i])
        ev = torch.linalg.eigvalsh(h)
        ratios.append(float(ev.abs().max() / gr.norm()))
    r = torch.tensor(ratios, dtype=torch.float64)
    assert mean == pytest.approx(float(r.mean()), rel=1e-6)
    assert std == pytest.approx(float(r.std(unbiased=False)), rel=1e-5)


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()])


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)  # consumes RNG in train mode
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(h.mean((2, 3))))


@pytest.mark.parametrize("measure", ["sharpness", "hess_trace", "input_curvature"])
@pytest.mark.parametrize("train_mode", [True, False])
def test_measures_leave_model_untouched(measure, train_mode):
    torch.manual_seed(0)
    net = ConvBN()
    net.train(train_mode)
    net.bn.eval()  # a mixed state must come back mixed
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
    x = torch.randn(16, 1, 6, 6)
    y = torch.randint(0, 3, (16,))
    before, modes = _snapshot(net)
    rng = torch.get_rng_state()
    fn = {"sharpness": lambda: sharpness(net, x, y, iters=3, chunk_size=8),
          "hess_trace": lambda: hess_trace(net, x, y, samples=2),
          "input_curvature": lambda: input_curvature(net, x, y, iters=3)}[measure]
    value = fn()
    assert all(math.isfinite(v) for v in (value if isinstance(value, tuple) else (value,)))
    after, modes_after = _snapshot(net)
    assert modes_after == modes
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in net.parameters())


def test_sharpness_train_mode_uses_batch_statistics():
    """bn_mode matters: train-mode (batch stats) and eval-mode Hessians differ."""
    torch.manual_seed(0)
    net = ConvBN()
    net.drop.p = 0.0
    x = torch.randn(16, 1, 6, 6)
    y = torch.randint(0, 3, (16,))
    tr = sharpness(net, x, y, iters=10, bn_mode="train")
    ev = sharpness(net, x, y, iters=10, bn_mode="eval")
    assert tr > 0 and ev > 0 and abs(tr - ev) > 1e-3 * max(tr, ev)


# --- top-k Hessian eigenvalues and the Fisher ------------------------------------------------------
class _TinyMLP(nn.Module):
    """3 -> 4 (tanh) -> 3 logits, float64: 31 parameters, a nonlinear model without BN."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Linear(3, 4).double()
        self.b = nn.Linear(4, 3).double()

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _closed_form_hessian(model, x, y):
    """d^2 CE / d theta^2 over the flat parameter vector, by torch.autograd.functional.hessian."""
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def loss(t):
        parts = dict(zip(names, (v.view(s) for v, s in zip(torch.split(t, sizes), shapes))))
        return F.cross_entropy(torch.func.functional_call(model, parts, (x,)), y)

    return torch.autograd.functional.hessian(loss, theta)


def test_top_k_hessian_eigenvalues_equal_a_float64_closed_form_hessian():
    from regimes.techniques.curvature import hessian_top_eigenvalues

    model = _TinyMLP()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=g)
    eig = torch.linalg.eigvalsh(_closed_form_hessian(model, x, y)).flip(0)
    dim = sum(p.numel() for p in model.parameters())
    top = hessian_top_eigenvalues(model, x, y, 5, iters=dim)
    torch.testing.assert_close(torch.tensor(top, dtype=torch.float64), eig[:5], rtol=1e-8, atol=1e-10)
    # the first is sharpness, with the same Lanczos run
    assert top[0] == pytest.approx(sharpness(model, x, y, iters=dim), rel=1e-12)
    # chunks of 7 (mean over chunks weighted by size): the same Hessian without BN
    top_chunked = hessian_top_eigenvalues(model, x, y, 3, iters=dim, chunk_size=7)
    torch.testing.assert_close(torch.tensor(top_chunked, dtype=torch.float64), eig[:3], rtol=1e-8, atol=1e-10)


def test_fisher_of_a_linear_softmax_model_equals_the_cross_entropy_hessian():
    """Logits linear in the parameters: the true Fisher equals the CE Hessian exactly, at any
    weights (the labels do not even enter)."""
    from regimes.techniques.curvature import fisher_top, fisher_trace

    torch.manual_seed(1)
    model = nn.Linear(4, 3).double()
    with torch.no_grad():
        model.weight.mul_(3.0)     # far from init: still exact
    g = torch.Generator().manual_seed(2)
    x = torch.randn(25, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (25,), generator=g)
    h = _closed_form_hessian(model, x, y)
    eig = torch.linalg.eigvalsh(h)
    dim = h.shape[0]
    assert fisher_top(model, x, iters=dim) == pytest.approx(float(eig[-1]), rel=1e-9)
    # Hutchinson: unbiased, standard error sqrt(2 sum_{i!=j} H_ij^2 / samples)
    samples = 400
    off = float((h ** 2).sum() - (torch.diagonal(h) ** 2).sum())
    se = math.sqrt(2 * off / samples)
    est = fisher_trace(model, x, samples=samples, seed=5)
    assert abs(est - float(torch.trace(h))) < 4 * se
    # the same probes give the Hessian's Hutchinson estimate to rounding
    assert est == pytest.approx(hess_trace(model, x, y, samples=samples, seed=5), rel=1e-10)


def test_fisher_of_a_nonlinear_model_is_the_definition_not_the_hessian():
    """Oracle: F = (1/N) sum_i sum_y p(y|x_i) g_iy g_iy', g_iy = grad log p(y|x_i), from
    per-example, per-class gradients in float64."""
    from regimes.techniques.curvature import fisher_top, fisher_trace

    model = _TinyMLP(seed=4)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(15, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (15,), generator=g)
    ps = list(model.parameters())
    dim = sum(p.numel() for p in ps)
    fisher = torch.zeros(dim, dim, dtype=torch.float64)
    for i in range(len(x)):
        logp = torch.log_softmax(model(x[i:i + 1]), 1)[0]
        for c in range(3):
            gi = torch.cat([t.flatten() for t in torch.autograd.grad(logp[c], ps, retain_graph=True)])
            fisher += logp[c].exp().detach() * torch.outer(gi, gi) / len(x)
    eig = torch.linalg.eigvalsh(fisher)
    assert fisher_top(model, x, iters=dim) == pytest.approx(float(eig[-1]), rel=1e-8)
    est = fisher_trace(model, x, samples=300, seed=1)
    off = float((fisher ** 2).sum() - (torch.diagonal(fisher) ** 2).sum())
    assert abs(est - float(torch.trace(fisher))) < 4 * math.sqrt(2 * off / 300)
    # and it is not the Hessian here
    h_top = float(torch.linalg.eigvalsh(_closed_form_hessian(model, x, y))[-1])
    assert abs(h_top - float(eig[-1])) > 1e-3 * abs(float(eig[-1]))


def test_fisher_leaves_a_bn_model_untouched():
    from regimes.techniques.curvature import fisher_top, fisher_trace

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    model.eval()
    x = torch.randn(16, 1, 5, 5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    top = fisher_top(model, x, iters=5, chunk_size=8)
    tr = fisher_trace(model, x, samples=3, chunk_size=8)
    assert math.isfinite(top) and top > 0 and tr > 0
    assert not model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
