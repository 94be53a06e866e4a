"""ENorm: function preserved, weighted norm non-increasing, convergence, momentum rescaled."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimes.techniques.enorm import ENorm, find_pairs

torch.set_num_threads(1)


class ConvReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1, stride=2)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(6 * 2 * 2, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = self.pool(F.relu(self.c2(h)))     # 8x8 -> 4x4 -> 2x2
        h = F.relu(self.fc1(torch.flatten(h, 1)))
        return self.head(h)


class FC(nn.Module):
    def __init__(self, sizes=(10, 16, 12, 9, 4)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def _unbalance(model, seed=0):
    """Random per-layer and per-unit scales, so balancing has work to do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                s = torch.exp(torch.randn(m.weight.shape[0], generator=g, dtype=m.weight.dtype))
                m.weight.mul_(s.view(-1, *([1] * (m.weight.dim() - 1))) * 3)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=m.bias.dtype))


def _nets():
    torch.manual_seed(0)
    conv, fc = ConvReLU().double(), FC().double()
    _unbalance(conv), _unbalance(fc, 1)
    return [(conv, torch.randn(4, 3, 8, 8, dtype=torch.float64)),
            (fc, torch.randn(6, 10, dtype=torch.float64))]


def test_pairs_found_from_graph():
    conv, fc = ConvReLU(), FC()
    pc = find_pairs(conv)
    assert [(p.left, p.right, p.group) for p in pc] == [(conv.c1, conv.c2, 1), (conv.c2, conv.fc1, 4)]
    assert [p.depth for p in pc] == [0, 1]
    pf = find_pairs(fc, skip_head=False)
    assert [(p.left, p.right) for p in pf] == list(zip(fc.layers[:-1], fc.layers[1:]))


def _weighted_norm(model, c, layers):
    """Independent L_c: layers listed in depth order."""
    return sum(c ** (-2 * k) * float(m.weight.detach().pow(2).sum()) for k, m in enumerate(layers))


@pytest.mark.parametrize("c", [1.0, 1.2])
@pytest.mark.parametrize("skip_head", [True, False])
def test_function_preserved_and_norm_does_not_increase(c, skip_head):
    for net, x in _nets():
        layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if skip_head:
            layers = layers[:-1]
        before_out = net(x).detach()
        en = ENorm(net, c=c, skip_head=skip_head)
        norms = [_weighted_norm(net, c, layers)]
        assert en.weighted_norm() == pytest.approx(norms[0], rel=1e-12)
        head = layers[-1].weight.clone() if skip_head else None
        for _ in range(30):
            en.step()
            torch.testing.assert_close(net(x).detach(), before_out, atol=1e-5, rtol=1e-5)
            norms.append(_weighted_norm(net, c, layers))
        assert all(b <= a * (1 + 1e-12) for a, b in zip(norms, norms[1:]))
        assert norms[-1] < 0.9 * norms[0]
        if skip_head:
            last = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
            assert en.pairs[-1].right is not last


def test_repeated_cycles_converge_to_balanced_point():
    c = 1.1
    for net, x in _nets():
        en = ENorm(net, c=c, skip_head=False)
        for _ in range(500):
            en.step()
        for p in en.pairs:  # stationarity: outgoing norm = c * incoming norm for every unit
            a = p.left.weight.reshape(p.left.weight.shape[0], -1).norm(dim=1)
            b = p.right.weight.reshape(p.right.weight.shape[0], a.numel(), -1).norm(dim=(0, 2))
            torch.testing.assert_close(b, c * a, rtol=1e-6, atol=0)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        en.step()  # a fixed point: one more cycle changes nothing
        for k, v in net.state_dict().items():
            torch.testing.assert_close(v, before[k], rtol=1e-6, atol=1e-12)


def test_momentum_buffers_rescaled_inversely():
    for net, x in _nets():
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        for _ in range(2):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
        before = {p: (p.detach().clone(), opt.state[p]["momentum_buffer"].clone()) for p in net.parameters()}
        en = ENorm(net, opt, c=1.0)
        en.step()
        changed = 0
        for p, (w0, b0) in before.items():
            b1 = opt.state[p]["momentum_buffer"]
            # w -> d w and buf -> buf / d elementwise: the product is invariant
            torch.testing.assert_close(p.detach() * b1, w0 * b0, rtol=1e-9, atol=1e-14)
            changed += not torch.allclose(p.detach(), w0)
        assert changed >= 3


def test_bn_is_crossed_but_not_function_preserving():
    class ConvBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn = nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)
            self.c2, self.head = nn.Conv2d(4, 3, 3), nn.Linear(3, 2)

        def forward(self, x):
            h = F.relu(self.c2(F.relu(self.bn(self.c1(x)))))
            return self.head(h.mean((2, 3)))

    torch.manual_seed(0)
    net = ConvBN().double()
    _unbalance(net)
    assert len(find_pairs(net)) == 1 and find_pairs(net)[0].through_bn
    assert find_pairs(net, through_bn=False) == []
    x = torch.randn(8, 2, 7, 7, dtype=torch.float64)
    out = net(x).detach()
    ENorm(net).step()
    assert not torch.allclose(net(x), out, atol=1e-5)  # documented: not function-preserving


def test_channels_last_weights_are_balanced_like_contiguous_ones():
    """The trainer keeps conv weights channels_last on CPU: ENorm must scale them, not a copy."""
    import copy

    net, x = _nets()[0]
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    assert net_cl.c2.weight.is_contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net_cl.parameters(), lr=0.1, momentum=0.9)
    net_cl(x.contiguous(memory_format=torch.channels_last)).sum().backward()
    opt.step()                                       # momentum buffers exist, channels_last too
    ref = copy.deepcopy(net_cl).to(memory_format=torch.contiguous_format)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    ref_opt.load_state_dict(opt.state_dict())
    a, b = ENorm(net_cl, opt, c=1.2), ENorm(ref, ref_opt, c=1.2)
    for _ in range(3):
        a.step(), b.step()
    for (name, p), q in zip(net_cl.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0, msg=name)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], ref_opt.state[q]["momentum_buffer"],
                                   rtol=1e-12, atol=0, msg=name)
    assert not torch.equal(net_cl.c2.weight, net.c2.weight)      # balancing did change them
