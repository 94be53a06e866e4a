"""Techniques wired into the Trainer: each runs on digits, reports its measures, resumes exactly."""
import math

import pytest
import torch

from regimes import TrainConfig, Trainer
from regimes.errors import ConfigError
from regimes.core.params import Role

torch.set_num_threads(2)

BASE = dict(dataset="digits", subset=256, batch_size=32, epochs=2, width=4, device="cpu", augment=False)


def _run(**kw):
    cfg = TrainConfig.from_dict({**BASE, **kw})
    return list(Trainer(cfg).run())


def test_lcnn_penalties_and_measures():
    recs = _run(model="convnet_lcnn", mode="free", lr=0.05, beta_coef=1e-3, gamma_coef=1e-3, gnorm_coef=0.01,
                sharpness_every=2, sharpness_iters=3, hess_trace_every=2, hess_trace_samples=2,
                input_curvature_every=2, input_curvature_iters=3, curvature_subset=64)
    first, last = recs
    for key in ("beta_mean", "gamma_mean", "gnorm_penalty", "input_grad_sq", "beta_penalty", "gamma_penalty"):
        assert math.isfinite(last[key]), key
    assert last["gnorm_penalty"] > 0
    assert math.isnan(first["sharpness"]) and math.isfinite(last["sharpness"])
    assert math.isfinite(last["hess_trace"]) and last["input_curvature_mean"] > 0
    assert not last["diverged"]


def test_lcnn_model_roles_and_no_decay():
    cfg = TrainConfig.from_dict({**BASE, "model": "convnet_lcnn", "mode": "free", "wd": 5e-4})
    t = Trainer(cfg)
    convs = [n for n, r in t.roles.roles.items() if r is Role.SCALE_INVARIANT]
    assert len(convs) == cfg.depth  # spectral-norm convs before Lipschitz BN are scale-invariant
    betas_gammas = [p for n, p in t.model.named_parameters() if n.endswith(("log_beta", "log_gamma"))]
    assert betas_gammas
    for g in t.optimizer.param_groups:
        if any(p is q for p in g["params"] for q in betas_gammas):
            assert g["weight_decay"] == 0.0 and all(any(p is q for q in betas_gammas) for p in g["params"])


def test_late_phase_and_swa_report_and_resume_exactly():
    kw = dict(model="convnet_si_af", mode="free", lr=0.05, momentum=0.9, epochs=3, late_phase_k=3,
              late_phase_start=2, late_phase_noise=0.01, swa_start=2, batch_size=40)  # 6 steps/epoch: cycles span epochs
    cfg = TrainConfig.from_dict({**BASE, **kw})
    full = list(Trainer(cfg).run())
    assert math.isnan(full[0]["test_acc_ensemble"]) and math.isfinite(full[-1]["test_acc_ensemble"])
    assert math.isfinite(full[-1]["test_acc_swa"])
    t = Trainer(cfg)
    it = t.run()
    next(it), next(it)
    sd = t.state_dict()
    resumed = Trainer(cfg)
    resumed.load_state_dict(sd)
    last = list(resumed.run())[-1]
    for key in ("train_loss", "test_loss", "test_acc_ensemble", "test_loss_swa"):
        assert last[key] == pytest.approx(full[-1][key], rel=1e-6, abs=1e-9), key


def test_enorm_runs_and_reports_norm():
    recs = _run(model="convnet", mode="free", lr=0.02, momentum=0.9, enorm_c=1.0, enorm_every=2)
    assert all(math.isfinite(r["weight_l2"]) and not r["diverged"] for r in recs)


@pytest.mark.parametrize("bad,key", [
    (dict(beta_coef=0.1), "beta_coef"),
    (dict(model="convnet_lcnn", enorm_c=1.0), "enorm_c"),
    (dict(late_phase_k=2, late_phase_start=9, epochs=3), "late_phase_start"),
    (dict(gnorm_scaling="mean"), "gnorm_scaling"),
])
def test_bad_technique_config_names_the_key(bad, key):
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({**BASE, **bad})
    assert e.value.key == key


TECHNIQUE_STUDIES = ["lcnn_gnorm_beta", "lcnn_elr_gnorm", "late_phase", "enorm"]


@pytest.mark.parametrize("name", TECHNIQUE_STUDIES)
def test_technique_studies_validate_and_digits_trial_runs(name):
    from pathlib import Path

    from regimes.study.spec import load

    root = Path(__file__).resolve().parents[1] / "studies"
    big = load(root / f"{name}_{'cifar100' if name.startswith('lcnn') else 'cifar10'}.yaml")
    assert big.num_trials() > 1
    small = load(root / f"{name}_digits.yaml")
    points = list(small.grid_points())
    cfg = small.config(points[-1])  # the most "switched on" corner of the grid
    cfg = cfg.replace(epochs=1, subset=128, late_phase_start=1, swa_start=min(cfg.swa_start, 1))
    recs = list(Trainer(cfg).run())
    assert len(recs) == 1 and math.isfinite(recs[0]["test_loss"])


def test_late_phase_epoch_restart_resumes_exactly_and_differs_from_carry():
    """5 steps per epoch, K = 3: under `restart` each epoch drops an unfinished cycle; a resumed
    run equals the uninterrupted one, and the result differs from `carry`."""
    kw = dict(model="convnet_si_af", mode="free", lr=0.05, momentum=0.9, epochs=3, late_phase_k=3,
              late_phase_start=1, batch_size=48)
    cfg = TrainConfig.from_dict({**BASE, **kw, "late_phase_boundary": "restart"})
    full = list(Trainer(cfg).run())
    t = Trainer(cfg)
    it = t.run()
    next(it)
    sd = t.state_dict()
    resumed = Trainer(cfg)
    resumed.load_state_dict(sd)
    last = list(resumed.run())[-1]
    for key in ("train_loss", "test_loss", "test_acc_ensemble"):
        assert last[key] == full[-1][key], key
    carry = list(Trainer(TrainConfig.from_dict({**BASE, **kw})).run())
    assert carry[-1]["train_loss"] != full[-1]["train_loss"]
