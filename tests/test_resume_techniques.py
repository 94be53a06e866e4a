"""Resume is exact for every technique, in both modes.

Each run stops after an epoch that is not a multiple of any cadence (ENorm every 5 steps
with 7 steps per epoch, late-phase cycles of 3 minibatches, SWA from epoch 2, curvature
every 2 epochs), is saved to disk and loaded into a fresh Trainer, and its remaining
records must equal the uninterrupted run's bit for bit (every measure except wall-clock
times). A technique that kept a counter or any other state outside its checkpoint fails
here: a run resumed after epoch 3 (21 steps) would balance at steps 26, 31, ... instead of
25, 30, ...
"""
import math

import pytest

from regimes import TrainConfig, Trainer

# 500 training examples / batch 64 = 7 steps per epoch: no cadence below divides an epoch
BASE = dict(dataset="digits", subset=500, width=4, batch_size=64, epochs=4, augment=True, device="cpu")
STOP = 3           # resume after epoch 3: not a multiple of 2 (curvature) or of 5 / 3 steps
CLOCK = ("time_s", "samples_per_s")

TECHNIQUES = {
    "lcnn_gnorm": dict(model="convnet_lcnn", gnorm_coef=0.05, beta_coef=1e-3, gamma_coef=1e-3),
    "late_phase": dict(model="convnet_si_af", late_phase_k=3, late_phase_start=2, late_phase_noise=0.01),
    "swa": dict(model="convnet_si_af", swa_start=2),
    "enorm": dict(model="convnet_si_af", enorm_c=1.0, enorm_every=5),
    "curvature": dict(model="convnet_si", sharpness_every=2, sharpness_iters=3, hess_trace_every=2,
                      hess_trace_samples=2, input_curvature_every=2, input_curvature_iters=2, curvature_subset=64,
                      sharpness_topk=2, fisher_every=2),
    "lcnn_plain_head": dict(model="convnet_lcnn", lcnn_head="plain", gnorm_coef=0.05),
    "late_phase_restart": dict(model="convnet_si_af", late_phase_k=3, late_phase_start=2, late_phase_noise=0.01,
                               late_phase_boundary="restart"),
    # the three-regimes reference code's options and measures
    "seed_measures": dict(model="convnet_si_af", corrupt_train=0.2, loss="squared", grad_norms=True,
                          cos_init=True, train_eval_every=2),
    "fbgd": dict(model="convnet_si_af", fbgd=True, cos_init=True),
    "sphere_per_layer": dict(model="convnet_si", sphere_per_layer=True, grad_norms=True),
}
SPHERE_ONLY = {"sphere_per_layer"}
MODES = {
    "sphere": dict(mode="sphere", elr=0.01, noninv_lr=0.01),
    "free": dict(mode="free", lr=0.05, momentum=0.9, wd=5e-4),
}


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(technique, mode, tmp_path):
    if technique in SPHERE_ONLY and mode != "sphere":
        pytest.skip("a sphere-mode option")
    kw = {**BASE, **TECHNIQUES[technique], **MODES[mode]}
    if technique == "enorm" and mode == "free":
        kw["model"] = "convnet"          # ENorm's home: no BN, function-preserving
    if kw["model"] == "convnet_si":
        kw.pop("noninv_lr", None)
    cfg = TrainConfig(**kw)
    full = list(Trainer(cfg).run())
    assert len(full) == cfg.epochs and not full[-1]["diverged"]

    first = Trainer(cfg)
    it = first.run()
    head = [next(it) for _ in range(STOP)]
    first.save(tmp_path / "ckpt.pt")
    resumed = Trainer(cfg)
    resumed.restore(tmp_path / "ckpt.pt")
    assert (resumed.epoch, resumed.step) == (STOP, STOP * resumed.steps_per_epoch)
    tail = list(resumed.run())

    got = head + tail
    assert len(got) == len(full)
    for want, rec in zip(full, got):
        assert set(rec) == set(want)
        diff = [k for k in want if k not in CLOCK and not _same(want[k], rec[k])]
        assert not diff, f"epoch {want['epoch']}: {', '.join(f'{k} {want[k]!r} != {rec[k]!r}' for k in diff)}"
    # the technique's own measures were there to compare (not all NaN)
    own = {"lcnn_gnorm": "gnorm_penalty", "late_phase": "test_acc_ensemble", "swa": "test_acc_swa",
           "enorm": "enorm_objective", "curvature": "fisher_top", "lcnn_plain_head": "gnorm_penalty",
           "late_phase_restart": "test_acc_ensemble", "seed_measures": "train_loss_corrupt",
           "fbgd": "cos_init", "sphere_per_layer": "eff_grad_norm_end"}[technique]
    assert any(math.isfinite(r[own]) for r in full[STOP:])
