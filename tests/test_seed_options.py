"""The three-regimes reference code's remaining options and measures, each against an
independent oracle: label noise, full-batch GD, the squared loss, a sphere per SI group,
the full-batch gradient norms, the cosine to init; and every one refused by a pack."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from regimes import TrainConfig, Trainer
from regimes.core import packable
from regimes.core.data import load_data
from regimes.core.params import Role
from regimes.core.sphere import joint_norm
from regimes.core.trainer import squared_loss
from regimes.errors import ConfigError

torch.set_num_threads(1)
BASE = dict(dataset="digits", subset=320, width=4, depth=3, batch_size=64, epochs=2, augment=False, device="cpu")


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**BASE, **kw})


# --- label noise -------------------------------------------------------------------------
def test_label_noise_fraction_examples_and_labels_are_fixed_by_the_data_seed():
    clean = load_data(_cfg())
    runs = [load_data(_cfg(corrupt_train=0.25, seed=s)) for s in (0, 7)]
    n = len(clean.y_train)
    for d in runs:
        mask = d.train_corrupted
        assert int(mask.sum()) == round(0.25 * n)                       # the fraction, exactly
        assert torch.equal(d.y_train_clean, clean.y_train)              # originals kept
        assert bool((d.y_train[mask] != clean.y_train[mask]).all())     # every corrupted label is wrong
        assert torch.equal(d.y_train[~mask], clean.y_train[~mask])      # the rest untouched
        assert torch.equal(d.x_train, clean.x_train) and torch.equal(d.y_test, clean.y_test)
    # the same examples and the same wrong labels for every run seed
    assert torch.equal(runs[0].train_corrupted, runs[1].train_corrupted)
    assert torch.equal(runs[0].y_train, runs[1].y_train)
    # the wrong labels are spread over the other classes (not a fixed shift)
    shift = (runs[0].y_train - clean.y_train)[runs[0].train_corrupted] % 10
    assert len(set(shift.tolist())) > 3 and 0 not in set(shift.tolist())


def test_label_noise_training_sees_the_noisy_labels_and_metrics_split_the_whole():
    cfg = _cfg(model="convnet_si", elr=0.02, corrupt_train=0.3, epochs=3, train_eval_every=2)
    run = Trainer(cfg)
    recs = list(run.run())
    f = float(run.data.train_corrupted.double().mean())
    for rec in recs:
        due = rec["epoch"] % 2 == 0 or rec["epoch"] == cfg.epochs
        keys = ("train_loss_clean", "train_acc_clean", "train_loss_corrupt", "train_acc_corrupt",
                "train_acc_corrupt_true")
        if not due:
            assert all(math.isnan(rec[k]) for k in keys)
            continue
        # clean and corrupted parts add up to the whole (train_loss is against the noisy labels)
        whole_loss = (1 - f) * rec["train_loss_clean"] + f * rec["train_loss_corrupt"]
        whole_acc = (1 - f) * rec["train_acc_clean"] + f * rec["train_acc_corrupt"]
        assert whole_loss == pytest.approx(rec["train_loss"], rel=1e-6)
        assert whole_acc == pytest.approx(rec["train_acc"], abs=1e-12)
    # an independent count at the final weights: predictions in train mode, chunks of batch_size
    model = copy.deepcopy(run.model).train()
    x, y, mask = run.data.x_train, run.data.y_train, run.data.train_corrupted
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 64]) for i in range(0, len(x), 64)]).argmax(1)
    last = recs[-1]
    assert last["train_acc_corrupt"] == pytest.approx(float((pred == y)[mask].double().mean()), abs=1e-12)
    assert last["train_acc_corrupt_true"] == pytest.approx(
        float((pred == run.data.y_train_clean)[mask].double().mean()), abs=1e-12)
    assert last["train_acc_clean"] == pytest.approx(float((pred == y)[~mask].double().mean()), abs=1e-12)


# --- full-batch gradient descent ----------------------------------------------------------------
def test_fbgd_takes_one_step_per_epoch_with_the_mean_gradient_over_all_minibatches():
    """Oracle: the same permutation (the run's generator), the gradient of each minibatch's mean
    loss on a copy of the init model, averaged; one plain SGD step."""
    cfg = _cfg(model="convnet_si_af", mode="free", lr=0.3, fbgd=True, epochs=1)
    run = Trainer(cfg)
    init = copy.deepcopy(run.model)
    n, B = len(run.data.x_train), cfg.batch_size
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    ps = [p for p in init.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in ps]
    m = n // B
    for j in range(m):
        idx = perm[j * B:(j + 1) * B]
        g = torch.autograd.grad(F.cross_entropy(init(run.data.x_train[idx]), run.data.y_train[idx]), ps)
        for acc, gi in zip(grads, g):
            acc += gi / m
    want = [p.detach() - cfg.lr * g for p, g in zip(ps, grads)]
    rec = next(run.run())
    assert rec["step"] == 1 and run.steps_per_epoch == 1 and run.micro_batches == m
    got = [p.detach() for p in run.model.parameters() if p.requires_grad]
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert rec["samples_per_s"] > 0


def test_fbgd_with_late_phase_is_refused():
    with pytest.raises(ConfigError) as e:
        _cfg(model="convnet_si_af", fbgd=True, late_phase_k=2)
    assert e.value.key == "fbgd"


# --- squared loss -------------------------------------------------------------------------
def test_squared_loss_is_the_mean_squared_distance_to_the_one_hot_over_c():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(9, 7, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (9,), generator=g)
    onehot = F.one_hot(y, 7).double()
    want = ((z - onehot) ** 2).sum(1) / 7
    torch.testing.assert_close(squared_loss(z, y, reduction="none"), want)
    torch.testing.assert_close(squared_loss(z, y), want.mean())
    torch.testing.assert_close(squared_loss(z, y, reduction="sum"), want.sum())
    (grad,) = torch.autograd.grad(squared_loss(z, y), z)
    torch.testing.assert_close(grad, 2 * (z.detach() - onehot) / (7 * 9))


def test_squared_loss_trains_and_is_what_the_record_reports():
    cfg = _cfg(model="convnet_si", elr=0.02, loss="squared", epochs=3)
    run = Trainer(cfg)
    recs = list(run.run())
    assert recs[-1]["train_loss"] < recs[0]["train_loss"]
    model = copy.deepcopy(run.model).eval()
    with torch.no_grad():
        out = model(run.data.x_test)
    want = float((((out - F.one_hot(run.data.y_test, 10)) ** 2).sum(1) / 10).double().mean())
    assert recs[-1]["test_loss"] == pytest.approx(want, rel=1e-5)


# --- a sphere per SI group -----------------------------------------------------------------------
def test_sphere_per_layer_keeps_each_group_at_its_own_norm():
    cfg = _cfg(model="convnet_si", elr=0.05, sphere_per_layer=True, epochs=3, augment=True)
    run = Trainer(cfg)
    groups = run.si_groups
    assert len(groups) == cfg.depth                               # one conv per group in a ConvNet
    rho = [float(joint_norm(g)) for g in groups]
    assert len(set(round(r, 6) for r in rho)) == len(rho)         # the groups differ in size
    for rec in run.run():
        for g, r in zip(groups, rho):
            assert float(joint_norm(g)) == pytest.approx(r, rel=1e-6)
        assert rec["si_norm"] == pytest.approx(math.sqrt(sum(r * r for r in rho)), rel=1e-6)
    assert not math.isnan(rec["train_loss"])


def test_sphere_per_layer_turns_each_group_by_its_own_elr_times_its_effective_gradient():
    """Oracle: per group, w <- normalize(w - elr * g_eff) on the unit sphere, so
    tan(angle_g) = elr * ||g_eff,g||, g_eff,g = grad_g * ||w_g||; and the joint-sphere rule
    (one angle for all groups) does not hold."""
    elr = 0.05
    cfg = _cfg(model="convnet_si", elr=elr, sphere_per_layer=True, epochs=1)
    run = Trainer(cfg)
    groups = run.si_groups
    x, y = run.data.x_train[:64], run.data.y_train[:64]
    before = [[p.detach().clone() for p in g] for g in groups]
    run.optimizer.zero_grad()
    F.cross_entropy(run.model(x), y).backward()
    g_eff = [float(joint_norm([p.grad for p in g]) * joint_norm(g)) for g in groups]
    run.sgd.set_rate(elr)
    run.optimizer.step()
    run.sgd.project()
    for g, b, ge in zip(groups, before, g_eff):
        u = torch.cat([t.flatten() for t in b]).double()
        v = torch.cat([p.detach().flatten() for p in g]).double()
        cos = float(u @ v / (u.norm() * v.norm()))
        angle = math.acos(min(1.0, cos))
        assert math.tan(angle) == pytest.approx(elr * ge, rel=2e-3)
        assert float(v.norm()) == pytest.approx(float(u.norm()), rel=1e-6)
    assert max(g_eff) / min(g_eff) > 1.5   # distinct angles: not one joint rotation


def test_sphere_per_layer_needs_the_sphere():
    with pytest.raises(ConfigError) as e:
        _cfg(mode="free", sphere_per_layer=True)
    assert e.value.key == "sphere_per_layer"


# --- full-batch gradient norms and the cosine to init -----------------------------------------
@pytest.mark.parametrize("model", ["convnet_si", "convnet_si_af"])
def test_full_batch_gradient_norms_against_a_direct_computation(model):
    cfg = _cfg(model=model, elr=0.03, noninv_lr=0.01, grad_norms=True, augment=True,
                      subset=321)   # 321 = 5 x 64 + 1: chunks of 65 (as train_loss), never a BN batch of one
    run = Trainer(cfg)
    rec = next(run.run())
    buffers = {k: v.clone() for k, v in run.model.state_dict().items()}
    # oracle: backward() on a copy, the chunks of train_loss (65, 65, 65, 65, 61)
    m = copy.deepcopy(run.model).train()
    x, y = run.data.x_train, run.data.y_train
    n = len(x)
    for lo, hi in ((0, 65), (65, 130), (130, 195), (195, 260), (260, 321)):
        (F.cross_entropy(m(x[lo:hi]), y[lo:hi]) * ((hi - lo) / n)).backward()
    names = set(run.roles.names(Role.SCALE_INVARIANT))
    si = [p.grad for k, p in m.named_parameters() if k in names]
    other = [p.grad for k, p in m.named_parameters() if k not in names and p.requires_grad]
    w_si = torch.cat([p.detach().flatten() for k, p in m.named_parameters() if k in names]).norm()
    g_si = torch.cat([g.flatten() for g in si]).norm()
    assert rec["grad_norm_si"] == pytest.approx(float(g_si), rel=1e-5)
    assert rec["eff_grad_norm_end"] == pytest.approx(float(g_si * w_si), rel=1e-5)
    g_all = torch.cat([g.flatten() for g in si + other]).norm()
    assert rec["grad_norm_full"] == pytest.approx(float(g_all), rel=1e-5)
    if other:
        assert rec["grad_norm_noninv"] == pytest.approx(float(torch.cat([g.flatten() for g in other]).norm()),
                                                        rel=1e-5)
    else:
        assert math.isnan(rec["grad_norm_noninv"])
    # the measure leaves the model as it finds it: buffers, parameters and .grad
    grads = [None if p.grad is None else p.grad.clone() for p in run.model.parameters()]
    again = dict(rec)
    run.techniques["full_grad"].measure(again)
    assert again["eff_grad_norm_end"] == rec["eff_grad_norm_end"]
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in buffers.items())
    assert all((a is None and p.grad is None) or torch.equal(a, p.grad) for a, p in zip(grads, run.model.parameters()))


def test_cos_init_against_a_fresh_model_of_the_same_seed():
    cfg = _cfg(model="convnet_si", elr=0.05, cos_init=True, epochs=2)
    run = Trainer(cfg)
    recs = list(run.run())
    init = Trainer(cfg).si_params                    # the same seed builds the same init
    u = torch.cat([p.detach().flatten() for p in init]).double()
    v = torch.cat([p.detach().flatten() for p in run.si_params]).double()
    assert recs[-1]["cos_init"] == pytest.approx(float(u @ v / (u.norm() * v.norm())), rel=1e-6)
    assert 0 < recs[-1]["cos_init"] < recs[0]["cos_init"] < 1


# --- packs refuse every new field at a non-default value -----------------------------------------
@pytest.mark.parametrize("field,value", [("corrupt_train", 0.1), ("loss", "squared"), ("fbgd", True),
                                         ("sphere_per_layer", True), ("grad_norms", True), ("cos_init", True),
                                         ("fisher_every", 2), ("sharpness_topk", 2)])
def test_a_pack_refuses_the_new_fields(field, value):
    assert field not in packable.PER_MEMBER | packable.SHARED
    cfg = _cfg(model="convnet_si", **{field: value})
    with pytest.raises(ConfigError) as e:
        packable.check([cfg, cfg.replace(seed=1)])
    assert e.value.key == field
    packable.check([_cfg(model="convnet_si")])   # the defaults pack


def test_label_noise_mask_matches_numpy_reference():
    """The corruption rule written out once more with numpy: the permutation's first round(f n)."""
    from regimes.core.data import CORRUPT_SEED, corrupt_labels

    y = np.arange(50) % 10
    noisy, mask = corrupt_labels(y, 0.2, 10)
    rng = np.random.default_rng(CORRUPT_SEED)
    idx = rng.permutation(50)[:10]
    assert set(np.flatnonzero(mask)) == set(idx)
    assert (noisy[idx] != y[idx]).all() and (noisy[~mask] == y[~mask]).all()
