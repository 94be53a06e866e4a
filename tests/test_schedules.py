"""Rate schedules against their closed forms, and the logged elr following them."""
import math

import pytest

from regimes import TrainConfig, train
from regimes.errors import ConfigError
from regimes.core.schedules import schedule_values

T, SPE = 200, 10  # steps, steps per epoch


def values(**kw):
    cfg = TrainConfig.from_dict({"elr": 0.1, **kw})
    return schedule_values(cfg, T, SPE).tolist()


def test_constant_and_step():
    assert values() == [0.1] * T
    v = values(schedule="step", milestones=[0.5, 0.75], step_factor=0.1)
    for t in range(T):
        expect = 0.1 * (1 if t < 100 else 0.1 if t < 150 else 0.01)
        assert v[t] == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize("kind,formula", [
    ("linear", lambda f: 0.1 + (0.001 - 0.1) * f),
    ("cosine", lambda f: 0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * f)) / 2),
    ("exponential", lambda f: 0.1 * (0.001 / 0.1) ** f),
])
def test_closed_forms(kind, formula):
    v = values(schedule=kind, elr_final=0.001)
    for t in (0, 1, 57, 100, 199):
        assert v[t] == pytest.approx(formula(t / T), rel=1e-12)


def test_two_phase_switches_exactly_at_the_step():
    v = values(schedule="two_phase", elr_final=1e-4, switch_frac=0.3)
    assert v[59] == 0.1 and v[60] == 1e-4
    assert set(v[:60]) == {0.1} and set(v[60:]) == {1e-4}


def test_piecewise_interpolates_log_rate():
    v = values(schedule="piecewise", knots=[[0.0, 1e-1], [0.5, 1e-3], [1.0, 1e-3]])
    assert v[0] == pytest.approx(1e-1)
    assert v[50] == pytest.approx(1e-2, rel=1e-9)  # halfway in log space between 1e-1 and 1e-3
    assert v[150] == pytest.approx(1e-3)


def test_warmup_ramps_any_schedule():
    v = values(warmup_epochs=2)  # 20 steps
    assert v[0] == pytest.approx(0.1 / 20) and v[9] == pytest.approx(0.1 * 10 / 20) and v[19] == 0.1 and v[50] == 0.1


def test_free_mode_schedule_drives_lr():
    cfg = TrainConfig.from_dict({"mode": "free", "lr": 0.2, "lr_final": 0.02, "schedule": "two_phase",
                                 "model": "convnet_si_af"})
    v = schedule_values(cfg, T, SPE).tolist()
    assert v[0] == 0.2 and v[-1] == 0.02


def test_logged_elr_follows_the_schedule():
    cfg = TrainConfig.from_dict(dict(dataset="digits", width=4, batch_size=128, epochs=4, augment=False,
                                     schedule="two_phase", elr=0.05, elr_final=0.001, switch_frac=0.5))
    recs = list(train(cfg))
    # the logged elr is the one used by the last step of each epoch
    assert [r["elr"] for r in recs] == [0.05, 0.05, 0.001, 0.001]


@pytest.mark.parametrize("kw,key", [({"schedule": "two_phase"}, "elr_final"),
                                    ({"schedule": "exponential", "mode": "free", "model": "convnet_si_af"}, "lr_final"),
                                    ({"schedule": "step", "milestones": [0.8, 0.2]}, "milestones"),
                                    ({"schedule": "step", "milestones": [1.5]}, "milestones"),
                                    ({"schedule": "piecewise"}, "knots"),
                                    ({"schedule": "piecewise", "knots": [[0.5, 0.1], [0.2, 0.1]]}, "knots"),
                                    ({"schedule": "cosin"}, "schedule")])
def test_bad_schedules_name_the_key(kw, key):
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict(kw)
    assert e.value.key == key
