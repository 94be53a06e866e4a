"""Packed trials: K configs as one network. The oracle is each config trained alone."""
import math

import pytest
import torch

from regimes import TrainConfig
from regimes.core import packable
from regimes.core.pack import PackedTrainer, pack_models, train_pack
from regimes.core.trainer import Trainer
from regimes.errors import ConfigError

# 64 examples at batch 16: 4 steps an epoch, so 5 epochs are 20 steps
TINY = dict(dataset="digits", model="convnet_si", width=4, batch_size=16, subset=64, epochs=5, augment=False,
            device="cpu")
SKIP = ("time_s", "samples_per_s")


def _si_of_member(pt: PackedTrainer, k: int) -> torch.Tensor:
    """Member k's SI weights (every trained weight for a model without any)."""
    named = dict(pt.model.named_parameters())
    pos = pt.members.index(k)
    names = pt.si_names or pt.other_names
    return torch.cat([named[n].detach().unflatten(0, (pt.K, -1))[pos].flatten() for n in names])


def _si_of(t: Trainer) -> torch.Tensor:
    ps = t.si_params or [p for p in t.model.parameters() if p.requires_grad]
    return torch.cat([p.detach().flatten() for p in ps])


def _trajectories(cfgs, dtype):
    """Per epoch: the pack's records and each member's SI weights; and each config alone."""
    pt = PackedTrainer(cfgs, dtype=dtype)
    packed = []
    for recs in pt.run():
        packed.append({k: (rec, _si_of_member(pt, k)) for k, rec in recs.items()})
    alone = []
    for c in cfgs:
        t = Trainer(c, dtype=dtype)
        alone.append([(rec, _si_of(t)) for rec in t.run()])
    return packed, alone


def _close(a, b, rel):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, float):
        return b == pytest.approx(a, rel=rel, abs=rel * 1e-3)
    return a == b


SPHERE = [dict(elr=1e-3, seed=0), dict(elr=1e-2, seed=1, momentum=0.5), dict(elr=3e-3, seed=2, augment=True),
          dict(elr=2e-2, seed=3, schedule="cosine", elr_final=1e-3)]
FREE = [dict(lr=0.05, seed=0, wd=5e-4), dict(lr=0.1, seed=1, momentum=0.9, wd=1e-3),
        dict(lr=0.02, seed=2, noninv_lr=0.01), dict(lr=0.05, seed=0, momentum=0.5)]


@pytest.mark.parametrize("mode,model,members", [("sphere", "convnet_si", SPHERE),
                                                ("sphere", "convnet_si_af", [dict(m, noninv_lr=-1, wd=1e-3)
                                                                             for m in SPHERE]),
                                                ("free", "convnet_si_af", FREE)])
def test_each_member_follows_its_own_run_alone_float64(mode, model, members):
    """20 steps, different rates, seeds, momentum, weight decay, schedules and augmentation
    in one pack: every member's SI weights after every epoch and every measure agree with the
    same config trained alone to float64 rounding (1e-10 relative)."""
    base = {**TINY, "mode": mode, "model": model}
    if any(m.get("augment") for m in members):
        base["augment"] = True      # shared: augmentation on for all, each member its own draws
    cfgs = [TrainConfig.from_dict({**base, **{k: v for k, v in m.items() if k != "augment"}}) for m in members]
    packed, alone = _trajectories(cfgs, torch.float64)
    assert len(packed) == 5
    for k in range(len(cfgs)):
        for e, (rec, w) in enumerate(alone[k]):
            prec, pw = packed[e][k]
            assert ((pw - w).norm() / w.norm()).item() < 1e-10, (k, e)
            assert set(prec) == set(rec)
            bad = {key: (rec[key], prec[key]) for key in rec if key not in SKIP and not _close(rec[key], prec[key], 1e-8)}
            assert not bad, (k, e, bad)


def test_members_agree_in_float32_to_the_stated_tolerance():
    """float32: grouped kernels add in another order. Over the first 12 steps each member stays
    within 1e-5 relative of its run alone (about 1e-6 after 4 steps); after that the gap grows
    at the rate SGD's chaos amplifies any float difference (float64 shows the same growth from
    1e-16), so longer runs are compared by their regimes (the demo's labels), not their weights."""
    cfgs = [TrainConfig.from_dict({**TINY, **{k: v for k, v in m.items() if k != "augment"}}) for m in SPHERE[:3]]
    packed, alone = _trajectories(cfgs, torch.float32)
    for k in range(len(cfgs)):
        errs = [((packed[e][k][1] - w).norm() / w.norm()).item() for e, (_, w) in enumerate(alone[k])]
        assert errs[0] < 3e-6 and max(errs[:3]) < 1e-5, errs


def test_each_member_stays_on_its_own_sphere_and_turns_by_its_own_elr():
    """One step per epoch: per member, ||w_SI|| = rho0_k to 1e-6 and
    tan(angle_k) = elr_k * ||g_eff,k|| with g_eff = grad * rho0_k, for every step."""
    cfgs = [TrainConfig.from_dict({**TINY, "subset": 16, "epochs": 6, "elr": e, "seed": s})
            for e, s in ((1e-3, 0), (3e-2, 1), (1e-1, 2))]
    pt = PackedTrainer(cfgs, dtype=torch.float64)
    prev = {k: _si_of_member(pt, k) for k in range(3)}
    for recs in pt.run():
        named = dict(pt.model.named_parameters())
        for k in recs:
            w0, w1 = prev[k], _si_of_member(pt, k)
            g = torch.cat([named[n].grad.unflatten(0, (pt.K, -1))[pt.members.index(k)].flatten()
                           for n in pt.si_names])          # at the weights before this step
            rho0 = float(pt.rho0[k])
            assert abs(w1.norm().item() - rho0) < 1e-6 * rho0
            cos = (w1 @ w0) / (w1.norm() * w0.norm())
            tan = math.sqrt(max(0.0, 1 - cos.item() ** 2)) / cos.item()
            # BN's eps makes the gradient orthogonal to w only to ~1e-5 (as in the unpacked test)
            assert tan == pytest.approx(cfgs[k].elr * g.norm().item() * rho0, rel=1e-4)
            prev[k] = w1


def test_batchnorm_statistics_and_outputs_are_per_member():
    """Member 0's train-mode outputs (batch statistics) are unchanged, bit for bit, when the
    other member's weights and its input images change."""
    from regimes.core.models import build_model

    cfg = TrainConfig.from_dict({**TINY, "model": "convnet_si_af", "width": 4})
    a, b, b2 = (build_model(cfg.replace(seed=s), (1, 8, 8), 10) for s in (0, 1, 2))
    x0, x1, x1b = (torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (0, 1, 2))
    p1, p2 = pack_models([a, b]), pack_models([a, b2])
    p1.train(), p2.train()
    with torch.no_grad():
        out1 = p1(torch.cat([x0, x1], 1))
        out2 = p2(torch.cat([x0, x1b], 1))
        alone = a.train()(x0)
    assert torch.equal(out1[:, 0], out2[:, 0])
    assert not torch.equal(out1[:, 1], out2[:, 1])
    assert torch.allclose(out1[:, 0], alone, rtol=1e-5, atol=1e-6)
    bn1 = [m for m in p1.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    bn2 = [m for m in p2.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    C = bn1.num_features // 2
    assert torch.equal(bn1.running_mean[:C], bn2.running_mean[:C])            # member 0's statistics
    assert not torch.equal(bn1.running_mean[C:], bn2.running_mean[C:])


def test_a_diverging_member_ends_and_no_nan_reaches_the_others():
    """A member at a huge rate turns NaN in its first epoch: its rows end with diverged=True,
    it leaves the pack, and the other member equals its run alone (float64)."""
    cfgs = [TrainConfig.from_dict({**TINY, "mode": "free", "model": "convnet", "lr": 0.05, "seed": 0}),
            TrainConfig.from_dict({**TINY, "mode": "free", "model": "convnet", "lr": 1e6, "seed": 1})]
    packed, alone = _trajectories(cfgs, torch.float64)
    assert packed[0][1][0]["diverged"] and all(1 not in recs for recs in packed[1:])
    assert len(packed) == 5 and all(0 in recs for recs in packed)
    for e, (rec, w) in enumerate(alone[0]):
        prec, pw = packed[e][0]
        assert ((pw - w).norm() / w.norm()).item() < 1e-10
        assert math.isfinite(prec["train_loss"]) and not prec["diverged"]
        assert prec["test_acc"] == pytest.approx(rec["test_acc"], rel=1e-12)
    solo_div = [r for r, _ in alone[1]]
    assert len(solo_div) == 1 and solo_div[0]["diverged"]


def test_finish_takes_a_member_out_and_the_rest_go_on_unchanged():
    cfgs = [TrainConfig.from_dict({**TINY, "elr": e, "seed": s}) for e, s in ((1e-3, 0), (1e-2, 1), (3e-3, 2))]
    pt = PackedTrainer(cfgs, dtype=torch.float64)
    got = []
    for recs in pt.run():
        got.append(recs)
        if recs[0]["epoch"] == 2:
            pt.finish([1])
    assert [sorted(r) for r in got] == [[0, 1, 2]] * 2 + [[0, 2]] * 3
    assert pt.K == 2 and pt.model.features[0].groups == 2
    for k in (0, 2):
        alone = list(Trainer(cfgs[k], dtype=torch.float64).run())
        assert got[-1][k]["train_loss"] == pytest.approx(alone[-1]["train_loss"], rel=1e-9)


def _strip(recs):
    return [{k: {n: (None if isinstance(v, float) and math.isnan(v) else v) for n, v in r.items() if n not in SKIP}
             for k, r in rs.items()} for rs in recs]


def test_a_pack_resumes_from_its_checkpoint_bit_for_bit(tmp_path):
    """Stop after epoch 2 (a member already taken out, momentum buffers, augmentation draws
    mid-stream), restore into a fresh pack: the rest equals the uninterrupted run exactly."""
    base = {**TINY, "augment": True, "model": "convnet_si_af", "noninv_lr": -1}
    cfgs = [TrainConfig.from_dict({**base, **m}) for m in
            (dict(elr=1e-2, seed=0, momentum=0.9), dict(elr=3e-3, seed=1), dict(elr=1e-3, seed=2, wd=1e-3))]

    def run(stop_at=None):
        pt = PackedTrainer(cfgs)
        out = []
        for recs in pt.run():
            out.append(recs)
            if recs[next(iter(recs))]["epoch"] == 1:
                pt.finish([1])
            if stop_at and len(out) == stop_at:
                pt.save(tmp_path / "pack.pt")
                return out
        return out

    full = run()
    first = run(stop_at=2)
    again = PackedTrainer(cfgs)
    again.restore(tmp_path / "pack.pt")
    assert again.members == [0, 2] and again.epoch == 2
    assert _strip(first + list(again.run())) == _strip(full)
    with pytest.raises(ConfigError, match="checkpoint"):
        PackedTrainer([c.replace(elr=c.elr * 2) for c in cfgs]).restore(tmp_path / "pack.pt")


def test_train_pack_and_resnet_members():
    """A pre-activation ResNet (residual sums, 1x1 shortcuts, stride 2, one joint SI group) packs
    too. At ELR 1e-2 this width-4 ResNet turns ~1.3 rad per step (chaotic: a 1e-16 difference
    grows tenfold per step), so the oracle runs at small ELRs, in float64."""
    cfgs = [TrainConfig.from_dict({**TINY, "model": "resnet18_si", "epochs": 2, "elr": e, "seed": s})
            for e, s in ((1e-4, 0), (1e-3, 1))]
    pt = PackedTrainer(cfgs, dtype=torch.float64)
    recs = list(pt.run())
    assert [sorted(r) for r in recs] == [[0, 1], [0, 1]]
    for k, c in enumerate(cfgs):
        alone = list(Trainer(c, dtype=torch.float64).run())
        assert recs[-1][k]["train_loss"] == pytest.approx(alone[-1]["train_loss"], rel=1e-9)
    assert [sorted(r) for r in train_pack(cfgs[:1])] == [[0], [0]]       # the plain iterator, a pack of one


@pytest.mark.parametrize("change,key", [({"width": 8}, "width"), ({"batch_size": 32}, "batch_size"),
                                        ({"enorm_c": 0.5, "model": "convnet"}, "enorm_c"),
                                        ({"sharpness_every": 1}, "sharpness_every")])
def test_what_cannot_be_packed_is_named(change, key):
    a = TrainConfig.from_dict(TINY)
    b = TrainConfig.from_dict({**TINY, **change})
    with pytest.raises(ConfigError) as e:
        packable.check([a, b] if key in packable.SHARED else [b, b])
    assert e.value.key == key
    with pytest.raises(ConfigError, match="model"):
        packable.check([TrainConfig.from_dict({**TINY, "model": "convnet_lcnn"})])
    packable.check([a, a.replace(elr=0.1, seed=3, wd=1e-4, momentum=0.9, schedule="linear", elr_final=1e-4)])
