"""Training core: scale invariance, the sphere step, free mode, resume, determinism, divergence."""
import ctypes
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from regimes import TrainConfig, Trainer, train
from regimes.errors import ConfigError
from regimes.core.data import augment, load_data
from regimes.core.models import build_model
from regimes.core.hooks import Overrides, Technique
from regimes.core.params import Role, find_roles
from regimes.core.trainer import Trainer as CoreTrainer
from regimes.techniques.lcnn import layers as lcnn_layers

TINY = dict(dataset="digits", width=4, batch_size=64, epochs=2, augment=False)


def _model(name, **kw):
    cfg = TrainConfig.from_dict({"model": name, "width": 4, **kw})
    shape = (3, 16, 16) if name.startswith("resnet") else (1, 8, 8)
    torch.manual_seed(0)
    model = build_model(cfg, shape, 10).double()
    for m in model.modules():  # BN's eps is the only thing that breaks exact invariance
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-12
    return model, shape


def _outputs(model, x):
    model.train()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name,kw", [("convnet_si", {}), ("convnet_si_af", {}), ("convnet_si", {"depth": 2}),
                                     ("convnet_si", {"depth": 6}), ("resnet18_si", {}), ("resnet18_si_af", {})])
def test_scaling_each_detected_group_leaves_outputs_unchanged(name, kw):
    model, shape = _model(name, **kw)
    roles = find_roles(model)
    assert roles.si_groups, "no scale-invariant group found"
    x = torch.randn(16, *shape, dtype=torch.float64)
    ref = _outputs(model, x)
    named = dict(model.named_parameters())
    for group in roles.si_groups:
        with torch.no_grad():
            for n in group:
                named[n].mul_(5.0)
        assert torch.allclose(_outputs(model, x), ref, rtol=1e-6, atol=1e-8), group
        with torch.no_grad():
            for n in group:
                named[n].div_(5.0)
    # a weight outside the SI set does change the function
    non_si = [n for n, r in roles.roles.items() if r is not Role.SCALE_INVARIANT and named[n].abs().sum() > 0]
    with torch.no_grad():
        named[non_si[-1]].mul_(5.0)
    assert not torch.allclose(_outputs(model, x), ref, rtol=1e-3)


def test_convnet_groups_are_per_layer_and_resnet_group_is_joint():
    conv, _ = _model("convnet_si", depth=5)
    roles = find_roles(conv)
    assert len(roles.si_groups) == 5 and all(len(g) == 1 for g in roles.si_groups)
    res, shape = _model("resnet18_si")
    roles = find_roles(res)
    convs = {n + ".weight" for n, m in res.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set().union(*roles.si_groups) == convs  # every conv is scale-invariant ...
    joint = max(roles.si_groups, key=len)
    assert "stem.weight" in joint and len(joint) >= 3  # ... the residual stream's convs only jointly
    x = torch.randn(8, *shape, dtype=torch.float64)
    ref = _outputs(res, x)
    with torch.no_grad():
        res.stem.weight.mul_(5.0)  # one conv of a joint group alone changes the function
    assert not torch.allclose(_outputs(res, x), ref, rtol=1e-3)
    with torch.no_grad():
        for m in res.modules():
            if isinstance(m, torch.nn.Conv2d) and m.weight is not res.stem.weight:
                m.weight.mul_(5.0)  # all convs together: back to the same function
    assert torch.allclose(_outputs(res, x), ref, rtol=1e-6, atol=1e-8)


def test_roles_of_si_and_plain_models():
    model, _ = _model("convnet_si_af")
    roles = find_roles(model)
    assert set(roles.names(Role.HEAD)) == {"head.weight", "head.bias"}
    assert roles.names(Role.BN_AFFINE) and all(".weight" in n or ".bias" in n for n in roles.names(Role.BN_AFFINE))
    plain, _ = _model("convnet")
    assert find_roles(plain).si_groups == []
    si, _ = _model("convnet_si", init_scale=10.0)
    assert not si.head.weight.requires_grad
    assert si.head.weight.norm().item() == pytest.approx(10.0, rel=1e-6)
    si2, _ = _model("convnet_si", init_scale=10.0, seed=3)
    assert torch.equal(si.head.weight, si2.head.weight)  # every run shares the frozen head


def test_sphere_step_keeps_norm_and_turns_by_elr_times_eff_grad():
    cfg = TrainConfig.from_dict({**TINY, "epochs": 1, "elr": 0.05, "model": "convnet_si"})
    snaps, grads = [], []

    class Recorder(Technique):
        """Weights before every step and after the last (after its projection); gradients."""
        name = "recorder"

        @classmethod
        def enabled(cls, cfg):
            return True

        def _snap(self):
            snaps.append([p.detach().clone() for p in self.run.si_params])

        def _zero_grad(self):
            self._snap()
            self.run.optimizer.zero_grad(set_to_none=True)

        def overrides(self):
            return Overrides(zero_grad=self._zero_grad)

        def after_step(self, step):
            grads.append([p.grad.detach().clone() for p in self.run.si_params])

        def epoch_end(self, epoch):
            self._snap()

    t = CoreTrainer(cfg, dtype=torch.float64, techniques=[Recorder])
    next(t.run())
    flat = lambda ts: torch.cat([v.flatten() for v in ts])  # noqa: E731
    assert len(grads) == t.steps_per_epoch
    for k, g in enumerate(grads):
        w0, w1 = flat(snaps[k]), flat(snaps[k + 1])
        assert abs(w1.norm().item() - t.rho0) < 1e-6 * t.rho0
        angle = math.atan2(torch.linalg.vector_norm(w1 - (w1 @ w0) / (w0 @ w0) * w0).item(), (w1 @ w0).item()
                           / w0.norm().item())
        g_eff = flat(g).norm().item() * t.rho0  # gradient of the SI loss at unit norm
        assert math.tan(angle) == pytest.approx(cfg.elr * g_eff, rel=1e-4)


def test_free_mode_logs_emergent_elr():
    cfg = TrainConfig.from_dict({**TINY, "mode": "free", "lr": 0.1, "wd": 5e-4, "model": "convnet_si_af"})
    for rec in train(cfg):
        assert rec["elr"] == pytest.approx(rec["lr"] / rec["si_norm"] ** 2, rel=1e-12)
        assert rec["lr"] == 0.1


def _strip(rec):
    """Drop wall-clock fields; NaN -> None so that records compare exactly with ==."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()
            if k not in ("time_s", "samples_per_s")}


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    cfg = TrainConfig.from_dict({**TINY, "epochs": 4, "augment": True, "momentum": 0.9, "noninv_lr": -1,
                                 "model": "convnet_si_af", "elr": 0.01})
    full = [_strip(r) for r in train(cfg)]
    t = Trainer(cfg)
    it = t.run()
    first = [_strip(next(it)), _strip(next(it))]
    t.save(tmp_path / "ckpt.pt")
    del t, it
    t2 = Trainer(cfg)
    t2.restore(tmp_path / "ckpt.pt")
    rest = [_strip(r) for r in t2.run()]
    assert first + rest == full


def test_same_config_same_metrics():
    cfg = TrainConfig.from_dict({**TINY, "augment": True})
    assert [_strip(r) for r in train(cfg)] == [_strip(r) for r in train(cfg)]
    other = [_strip(r) for r in train(cfg.replace(seed=1))]
    assert other != [_strip(r) for r in train(cfg)]


def test_nan_stops_cleanly_with_diverged_record():
    cfg = TrainConfig.from_dict({**TINY, "mode": "free", "lr": 1e6, "model": "convnet", "epochs": 5})
    recs = list(train(cfg))
    assert recs[-1]["diverged"] is True
    assert len(recs) < 5 or not math.isfinite(recs[-1]["train_loss"])
    assert all(not r["diverged"] for r in recs[:-1])


def test_train_measure_leaves_bn_statistics_and_mode():
    t = Trainer(TrainConfig.from_dict(TINY))
    next(t.run())
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.model.eval()
    t.evaluate_train()
    assert not t.model.training
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_train_eval_cadence():
    recs = list(train(TrainConfig.from_dict({**TINY, "epochs": 5, "train_eval_every": 2})))
    measured = [r["epoch"] for r in recs if not math.isnan(r["train_loss"])]
    assert measured == [2, 4, 5]


def test_augment_is_a_crop_of_the_padded_batch_and_a_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        out = augment(x, 1, True, gen)
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
        for i in range(2):
            crops = [padded[i, :, a:a + 4, b:b + 4] for a in range(3) for b in range(3)]
            assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(2)) for c in crops)
    assert torch.equal(augment(x, 0, False, gen), x)


def _write_cifar(root, n_train=6, n_test=4, hundred=False):
    rng = np.random.default_rng(0)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key = b"fine_labels" if hundred else b"labels"
    files = (["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)])
    truth = {}
    for name, n in [(f, n_train) for f in files] + [("test" if hundred else "test_batch", n_test)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 100 if hundred else 10, size=n).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, key: labels}, fh)
        truth[name] = (data, labels)
    return truth


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_loader_reads_torchvision_format(tmp_path, hundred):
    truth = _write_cifar(tmp_path, hundred=hundred)
    cfg = TrainConfig.from_dict({"dataset": "cifar100" if hundred else "cifar10", "data_root": str(tmp_path)})
    d = load_data(cfg)
    n_files = 1 if hundred else 5
    assert d.x_train.shape == (6 * n_files, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert d.num_classes == (100 if hundred else 10)
    raw, labels = truth["test" if hundred else "test_batch"]
    assert d.y_test.tolist() == labels
    # channel-major layout: the red plane of image 0 is the first 1024 bytes, up to normalisation
    red = torch.as_tensor(raw[0, :1024].reshape(32, 32), dtype=torch.float64)
    got = d.x_test[0, 0].double()
    corr = torch.corrcoef(torch.stack([red.flatten(), got.flatten()]))[0, 1]
    assert corr > 0.9999


def test_missing_cifar_names_data_root(tmp_path):
    with pytest.raises(ConfigError, match="data_root"):
        load_data(TrainConfig.from_dict({"dataset": "cifar10", "data_root": str(tmp_path)}))


@pytest.mark.parametrize("tokens,key", [(["elr=0"], "elr"), (["elr=abc"], "elr"), (["model=vgg"], "model"),
                                        (["widht=3"], "widht"), (["momentum=1.5"], "momentum"),
                                        (["augment=maybe"], "augment"), (["epochs=2.5"], "epochs")])
def test_bad_values_exit_2_naming_the_key(tokens, key, capsys, tmp_path):
    from regimes.cli import main

    out = tmp_path / "o"
    assert main(["train", *tokens, f"out={out}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {key}:") and err.count("\n") == 1
    assert not out.exists()  # nothing half-written


def test_sphere_mode_needs_si_weights():
    with pytest.raises(ConfigError, match="mode"):
        Trainer(TrainConfig.from_dict({**TINY, "model": "convnet", "mode": "sphere"}))


def test_every_record_has_the_same_measures_whatever_the_techniques():
    """One Parquet schema per study: a trial with ENorm/late-phase/SWA/curvature off writes
    the same columns (NaN) as one with them on."""
    base = dict(TINY, epochs=1, mode="free", lr=0.05, model="convnet")
    plain = next(iter(train(TrainConfig.from_dict(base))))
    busy = next(iter(train(TrainConfig.from_dict({**base, "enorm_c": 1.0, "gnorm_coef": 0.01, "swa_start": 1,
                                                  "sharpness_every": 1, "sharpness_iters": 2,
                                                  "curvature_subset": 64}))))
    assert set(plain) == set(busy)
    assert math.isnan(plain["weight_l2"]) and busy["weight_l2"] > 0 and busy["sharpness"] == busy["sharpness"]


def test_memory_format_changes_the_layout_not_the_function():
    """auto = channels_last on CPU for model and data; a few steps agree with the NCHW run up to float
    rounding (longer runs drift apart as any change of float arithmetic makes SGD do)."""
    cfg = TrainConfig.from_dict(dict(TINY, dataset="synthetic", model="convnet_si", subset=96, batch_size=32,
                                     epochs=1, augment=True, device="cpu"))       # 3 channels: layouts differ
    recs = {}
    for mf in ("auto", "contiguous"):
        t = Trainer(cfg.replace(memory_format=mf))
        conv_w = next(m.weight for m in t.model.modules() if isinstance(m, torch.nn.Conv2d))
        fmt = torch.channels_last if mf == "auto" else torch.contiguous_format
        assert conv_w.is_contiguous(memory_format=fmt) and t.data.x_train.is_contiguous(memory_format=fmt)
        recs[mf] = next(iter(t.run()))
    for k in ("train_loss", "train_acc", "test_loss", "test_acc", "si_norm", "eff_grad_norm", "angular_update"):
        assert recs["auto"][k] == pytest.approx(recs["contiguous"][k], rel=1e-4, abs=1e-6), k


@pytest.mark.parametrize("model", ["convnet_si", "convnet_lcnn"])
def test_convnet_pools_before_activating_which_is_the_paper_function(model):
    """Stages pool before the (non-decreasing) activation: rebuilt with activate-then-pool,
    the same modules give the same outputs and gradients."""
    import copy

    cfg = TrainConfig.from_dict(dict(TINY, dataset="synthetic", model=model, width=4, depth=4, device="cpu"))
    net = build_model(cfg, (3, 16, 16), 10, lcnn_layers(cfg) if model.endswith("_lcnn") else None).double()
    ref = copy.deepcopy(net)
    layers, out, i = list(ref.features), [], 0
    while i < len(layers):
        if isinstance(layers[i], torch.nn.MaxPool2d):
            out += [layers[i + 1], layers[i]]          # swap back: activation, then pool
            i += 2
        else:
            out.append(layers[i])
            i += 1
    assert [type(m) for m in out] != [type(m) for m in layers]
    ref.features = torch.nn.Sequential(*out)
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    for m in (net, ref):
        torch.nn.functional.cross_entropy(m(x), y).backward()
    torch.testing.assert_close(net(x), ref(x), rtol=1e-12, atol=1e-12)
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_checkpoint_from_before_a_new_config_field_resumes_and_a_real_difference_is_named():
    cfg = TrainConfig.from_dict(dict(TINY, model="convnet_si", subset=64, batch_size=32, epochs=2, device="cpu"))
    t = Trainer(cfg)
    next(iter(t.run()))
    sd = t.state_dict()
    old = dict(sd, config={k: v for k, v in sd["config"].items() if k not in ("memory_format", "cpu_memory")})
    r = Trainer(cfg.replace(memory_format="contiguous", cpu_memory="system"))   # storage may differ on resume
    r.load_state_dict(old)
    assert r.epoch == 1
    with pytest.raises(ConfigError, match="differs in: elr"):
        Trainer(cfg.replace(elr=cfg.elr * 2)).load_state_dict(old)
    with pytest.raises(ConfigError, match="differs in: no_such_key"):
        Trainer(cfg).load_state_dict(dict(sd, config={**sd["config"], "no_such_key": 1}))


# A fresh interpreter per case: cpu_memory=retain changes the process's malloc for good.
MALLOC_PROBE = """
import ctypes, sys, torch
from regimes import TrainConfig, Trainer
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
Trainer(TrainConfig.from_dict(dict(dataset="synthetic", model="convnet_si", width=4, subset=64, batch_size=32,
                                   epochs=1, device="cpu", cpu_memory=sys.argv[1])))
before = mallinfo2().hblkhd
x = torch.ones(5 << 20)          # 20 MiB: above glibc's default mmap threshold, below the retained one
print(mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.environ.get("LD_PRELOAD"),
                    reason="glibc malloc only")
def test_cpu_memory_retain_serves_large_tensors_from_the_heap():
    """With cpu_memory=retain a 20 MiB tensor is a reusable heap block; with the C library's
    defaults (a fresh process) it is a fresh mmap, unmapped again on free."""
    try:
        ctypes.CDLL(None).mallinfo2
    except AttributeError:
        pytest.skip("glibc without mallinfo2")
    mapped = {}
    for mode in ("system", "retain"):
        out = subprocess.run([sys.executable, "-c", MALLOC_PROBE, mode], capture_output=True, text=True,
                             check=True)
        mapped[mode] = int(out.stdout.split()[-1])
    assert mapped["system"] >= 20 << 20, mapped
    assert mapped["retain"] == 0, mapped
