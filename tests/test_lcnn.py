"""LCNN blocks: centered softplus, Lipschitz BN, spectral norm of the true conv operator."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimes.techniques.lcnn_layers import CenteredSoftplus, LipschitzBatchNorm2d, SpectralConv2d

torch.set_num_threads(1)


def test_centered_softplus_zero_slope_and_relu_limit():
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64, requires_grad=True)
    act = CenteredSoftplus(beta=5.0).double()
    assert float(act.beta.detach()) == pytest.approx(5.0, rel=1e-6)
    assert float(act(torch.zeros(1, dtype=torch.float64)).detach()) == pytest.approx(0.0, abs=1e-15)
    (slope,) = torch.autograd.grad(act(x).sum(), x)
    inner = x.detach().abs() <= 3.0  # b|x| <= 15: strictly inside (0, 1) even in float64
    assert float(slope[inner].min()) > 0.0 and float(slope[inner].max()) < 1.0
    assert float(slope.min()) >= 0.0 and float(slope.max()) <= 1.0
    # closed form of the slope: sigmoid(beta x)
    torch.testing.assert_close(slope, torch.sigmoid(5.0 * x.detach()))
    gaps = []
    for beta in (1.0, 5.0, 50.0, 500.0):
        a = CenteredSoftplus(beta=beta).double()
        gap = float((a(x.detach()) - F.relu(x.detach())).abs().max())
        assert gap <= math.log(2) / float(a.beta) + 1e-12
        gaps.append(gap)
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 2e-3


def test_centered_softplus_beta_is_learnable():
    act = CenteredSoftplus()
    act(torch.randn(10)).pow(2).sum().backward()
    assert act.log_beta.grad is not None and act.log_beta.grad.abs() > 0


def _eval_slopes(bn, c=4):
    """Per-channel slope of the eval-mode map, by finite differences (it is affine)."""
    bn.eval()
    x = torch.randn(1, c, 1, 1, dtype=torch.float64)
    base = bn(x)
    slopes = []
    for i in range(c):
        dx = torch.zeros_like(x)
        dx[0, i] = 1.0
        slopes.append(float((bn(x + dx) - base)[0, i]))
    return torch.tensor(slopes, dtype=torch.float64)


@pytest.mark.parametrize("mode", ["normalise", "clip"])
def test_lipschitz_bn_bound(mode):
    torch.manual_seed(0)
    bn = LipschitzBatchNorm2d(4, mode=mode).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([3.0, -0.5, 1.0, 2.0]))
        bn.log_gamma.fill_(math.log(0.7))
    bn.train()
    for _ in range(3):
        bn(torch.randn(16, 4, 3, 3, dtype=torch.float64) * 3)
    slopes = _eval_slopes(bn)
    assert float(slopes.abs().max()) == pytest.approx(0.7, rel=1e-9)
    # relative scales of the channels are kept
    raw = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(slopes / slopes[0], raw / raw[0])


def test_lipschitz_bn_clip_is_plain_bn_below_the_bound():
    torch.manual_seed(0)
    bn = LipschitzBatchNorm2d(3, mode="clip", gamma=100.0).double()
    ref = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        for m in (bn, ref):
            m.weight.copy_(torch.tensor([0.5, -1.5, 2.0]))
            m.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    for _ in range(3):
        x = torch.randn(8, 3, 4, 4, dtype=torch.float64) * 2 + 1
        torch.testing.assert_close(bn(x), ref(x))
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    bn.eval(), ref.eval()
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(bn(x), ref(x))


def _dense(conv_fn, in_shape):
    """The matrix of a linear map on tensors of in_shape, column by column."""
    n = math.prod(in_shape)
    eye = torch.eye(n, dtype=torch.float64).view(n, *in_shape)
    return conv_fn(eye).reshape(n, -1).T


@pytest.mark.parametrize("stride,padding,hw", [(1, 1, (5, 5)), (2, 1, (6, 6)), (2, 1, (5, 4)), (1, 0, (4, 6))])
def test_spectral_conv_true_operator_norm(stride, padding, hw):
    torch.manual_seed(0)
    conv = SpectralConv2d(2, 3, 3, stride=stride, padding=padding, warm_iters=200).double()
    x = torch.randn(2, 2, *hw, dtype=torch.float64)
    conv.train()
    conv(x)
    w = conv.weight.detach()
    m = _dense(lambda e: F.conv2d(e, w, None, stride, padding), (2, *hw))
    true_sigma = float(torch.linalg.matrix_norm(m, ord=2))
    assert float(conv.sigma()) == pytest.approx(true_sigma, rel=1e-6)
    # the operator actually applied has norm 1
    w_n = w / conv.sigma().detach()
    m_n = _dense(lambda e: F.conv2d(e, w_n, None, stride, padding), (2, *hw))
    assert float(torch.linalg.matrix_norm(m_n, ord=2)) == pytest.approx(1.0, rel=1e-6)
    # ...which is not the norm of the reshaped kernel matrix (the wrong operator)
    kernel_sigma = float(torch.linalg.matrix_norm(w.reshape(3, -1), ord=2))
    assert abs(kernel_sigma - true_sigma) > 1e-3 * true_sigma
    # forward = conv with the normalised weight (plus bias)
    torch.testing.assert_close(conv.eval()(x), F.conv2d(x, w_n, conv.bias, stride, padding))


def test_spectral_conv_one_iteration_per_training_step_and_tracks_changes():
    torch.manual_seed(0)
    conv = SpectralConv2d(2, 4, 3, padding=1, warm_iters=3)
    x = torch.randn(2, 2, 6, 6)
    conv(x)
    u0 = conv.sn_u.clone()
    conv.eval()(x)
    assert torch.equal(conv.sn_u, u0)  # eval: no iteration
    conv.train()(x)
    assert not torch.equal(conv.sn_u, u0)
    expected = SpectralConv2d(2, 4, 3, padding=1, warm_iters=4)
    expected.load_state_dict({k: v for k, v in conv.state_dict().items() if not k.startswith("sn_")}, strict=False)
    expected(x)  # warm start with 4 iterations from the same private seed == 3 + 1
    torch.testing.assert_close(conv.sn_u, expected.sn_u)
    # after the weights change, repeated training steps converge to the new norm
    with torch.no_grad():
        conv.weight.mul_(torch.linspace(0.2, 3.0, 4).view(4, 1, 1, 1))
    for _ in range(300):
        conv(x)
    m = _dense(lambda e: F.conv2d(e.float(), conv.weight.detach(), None, 1, 1).double(), (2, 6, 6))
    assert float(conv.sigma()) == pytest.approx(float(torch.linalg.matrix_norm(m, ord=2)), rel=1e-3)


def test_spectral_conv_state_dict_round_trip_and_gradient():
    torch.manual_seed(0)
    conv = SpectralConv2d(2, 3, 3, stride=2, padding=1)
    x = torch.randn(4, 2, 7, 7)
    conv(x)
    fresh = SpectralConv2d(2, 3, 3, stride=2, padding=1)
    fresh.load_state_dict(conv.state_dict())
    assert fresh.in_hw == (7, 7)
    torch.testing.assert_close(fresh.eval()(x), conv.eval()(x))
    conv.train()
    conv(x).sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


@pytest.mark.parametrize("base", ["convnet_lcnn", "resnet18_lcnn"])
def test_lcnn_head_is_spectral_by_default_plain_on_request_and_every_conv_is_spectral(base):
    """The LCNN paper's code divides the final linear layer by its spectral norm too:
    lcnn_head=spectral (default) does the same; lcnn_head=plain keeps a plain Linear."""
    from regimes.core.config import TrainConfig
    from regimes.core.models import build_model
    from regimes.techniques.lcnn import layers
    from regimes.techniques.lcnn_layers import SpectralLinear

    kw = dict(dataset="digits", model=base, width=4, mode="free", lr=0.1, epochs=1)
    if base == "convnet_lcnn":
        kw["depth"] = 2
    cfg = TrainConfig(**kw)
    model = build_model(cfg, (1, 8, 8), 10, layers(cfg))
    assert type(model.head) is SpectralLinear
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, SpectralConv2d) for m in convs)
    plain = build_model(cfg.replace(lcnn_head="plain"), (1, 8, 8), 10, layers(cfg.replace(lcnn_head="plain")))
    assert type(plain.head) is nn.Linear
    # same raw init either way (the power-iteration vector has its own generator)
    torch.testing.assert_close(plain.head.weight, model.head.weight, rtol=0, atol=0)


def test_spectral_linear_operator_norm_is_one_against_svd():
    """Oracle: torch.linalg.svdvals. After the warm-up iterations the layer's effective matrix
    W / sigma has largest singular value 1 (>= 1: the power-iteration estimate approaches
    sigma_max from below), its output is F.linear with it, and the bound holds while W trains
    with one iteration per training-mode forward."""
    from regimes.techniques.lcnn_layers import SpectralLinear

    torch.manual_seed(0)
    lin = SpectralLinear(32, 10, warm_iters=30).double()
    w_eff = lin.weight / lin.sigma()
    top = float(torch.linalg.svdvals(w_eff.detach())[0])
    assert 1.0 - 1e-12 <= top <= 1.0 + 1e-4
    lin.power_iteration(300)          # converged: exactly the spectral norm
    assert float(torch.linalg.svdvals((lin.weight / lin.sigma()).detach())[0]) == pytest.approx(1.0, abs=1e-10)
    w_eff = lin.weight / lin.sigma()
    x = torch.randn(5, 32, dtype=torch.float64)
    lin.eval()
    torch.testing.assert_close(lin(x), F.linear(x, w_eff, lin.bias))
    lin.train()
    opt = torch.optim.SGD(lin.parameters(), lr=0.01)
    for _ in range(100):
        opt.zero_grad()
        lin(x).pow(2).sum().backward()
        opt.step()
        with torch.no_grad():
            top = float(torch.linalg.svdvals(lin.weight / lin.sigma())[0])
        assert 1.0 - 1e-12 <= top <= 1.0 + 1e-2   # one iteration per step tracks a moving W
    # scale invariance of the normalised map: W -> 3 W changes nothing
    with torch.no_grad():
        before = lin.weight / lin.sigma()
        lin.weight.mul_(3.0)
        torch.testing.assert_close(lin.weight / lin.sigma(), before)
