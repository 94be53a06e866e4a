"""LCNN penalties: gradient-norm term against per-sample input gradients; double backprop."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimes.techniques.lcnn_layers import CenteredSoftplus
from regimes.techniques.lcnn import LCNNPenalty, make_objective, plain_objective

torch.set_num_threads(1)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), CenteredSoftplus(), nn.Linear(8, 3), CenteredSoftplus(2.0)).double()


def _per_sample_sq(net, x, y):
    """Oracle: mean_i ||d l_i / d x_i||^2, one sample at a time."""
    total = 0.0
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net(xi), y[i:i + 1]), xi)
        total += float(g.pow(2).sum())
    return total / x.shape[0]


@pytest.mark.parametrize("scaling", ["per_sample", "seed"])
def test_gnorm_penalty_value(scaling):
    net = _net()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    obj = make_objective(LCNNPenalty(gnorm_coef=0.3, gnorm_scaling=scaling), net)
    loss, logits, stats = obj(net, x, y)
    g = _per_sample_sq(net, x, y)
    expected = g if scaling == "per_sample" else g * 1e5 / 36
    assert float(stats["input_grad_sq"]) == pytest.approx(g, rel=1e-10)
    assert float(stats["gnorm_penalty"]) == pytest.approx(0.3 * expected, rel=1e-10)
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(net(x), y).detach()) + 0.3 * expected, rel=1e-10)


def test_penalty_gradient_by_double_backprop_matches_finite_differences():
    net = _net()
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    obj = make_objective(LCNNPenalty(beta_coef=0.01, gnorm_coef=1.0), net)
    loss, _, stats = obj(net, x, y)
    w = net[0].weight
    (grad,) = torch.autograd.grad(loss, w)
    h = 1e-6
    for idx in [(0, 0), (3, 2), (7, 4)]:
        with torch.no_grad():
            w[idx] += h
        up = float(obj(net, x, y)[0])
        with torch.no_grad():
            w[idx] -= 2 * h
        down = float(obj(net, x, y)[0])
        with torch.no_grad():
            w[idx] += h
        assert float(grad[idx]) == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)
    assert float(stats["beta_penalty"]) == pytest.approx(0.01 * 7.0, rel=1e-6)


def test_inactive_penalty_is_plain_and_missing_modules_rejected():
    assert make_objective(LCNNPenalty(), _net()) is plain_objective
    with pytest.raises(ValueError, match="gamma_coef"):
        make_objective(LCNNPenalty(gamma_coef=0.1), _net())
    with pytest.raises(ValueError, match="gnorm_scaling"):
        LCNNPenalty(gnorm_scaling="mean")
