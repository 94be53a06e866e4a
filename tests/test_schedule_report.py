"""`regimes report` on a schedule search: best schedules, best constant ELR, gain over seeds.

The fixture is written by hand in the results layout (regimes/results.py) with
final accuracies chosen so that the right answer is known: which group is
best, which constant is the baseline, and the gain's mean and std over seeds
worked out on paper below. Then a tiny real Optuna schedule search on digits
through `regimes sweep`, and the report on it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regimes import TrainConfig, results

EPOCHS = 6


def _trial(root: Path, tid: str, final_acc: float, *, status="completed", epochs_done=EPOCHS, **cfg):
    """One trial: a config, `epochs_done` epoch rows whose test_acc ends at `final_acc`,
    the logged `elr` following the schedule (written independently of the core)."""
    cfg = TrainConfig.from_dict({"dataset": "digits", "model": "convnet_si", "width": 8, "mode": "sphere",
                                 "epochs": EPOCHS, "device": "cpu", **cfg}).to_dict()
    cfg = {k: str(v) if isinstance(v, list) else v for k, v in cfg.items()}
    diverged = status == "diverged"
    rows = []
    for e in range(1, epochs_done + 1):
        f = (e - 1) / EPOCHS
        elr = cfg["elr"] if cfg["schedule"] == "constant" or (cfg["schedule"] == "two_phase" and
                                                              f < cfg["switch_frac"]) else cfg["elr_final"]
        acc = final_acc - 0.02 * (epochs_done - e)
        rows.append({"study": root.name, "epoch": e, "step": 10 * e, "schema_version": 1,
                     **{("cfg_" + k if k in ("elr", "lr") else k): v for k, v in cfg.items()},
                     "train_loss": 0.5 / e, "train_acc": acc, "test_loss": 0.6 / e, "test_acc": acc,
                     "elr": elr, "lr": elr, "eff_grad_norm": 1.0 / e, "angular_update": 0.01,
                     "si_norm": 1.0, "num_classes": 10, "time_s": float(e), "diverged": False})
    if diverged:
        rows[-1].update(train_loss=math.nan, test_loss=math.nan, test_acc=math.nan, diverged=True)
    results.write_trial_epochs(root, tid, rows)
    last = rows[-1]
    return {"study": root.name, "trial_id": tid, **cfg,
            **{f"final_{m}": last[m] for m in ("train_loss", "train_acc", "test_loss", "test_acc", "elr",
                                              "eff_grad_norm", "num_classes")},
            "epochs_done": epochs_done, "diverged": diverged, "status": status}


def write_search(root: Path):
    """An Optuna-like schedule search (mostly seed 0; the best schedule replicated)."""
    tp = dict(schedule="two_phase", elr=0.05, elr_final=0.002, switch_frac=0.5)
    rows = [
        _trial(root, "tp0", 0.93, seed=0, **tp),
        _trial(root, "tp1", 0.91, seed=1, **tp),
        # the same schedule as sampled by Optuna: equal at 4 significant digits
        _trial(root, "tp2", 0.92, seed=2, **{**tp, "elr": 0.0500004, "switch_frac": 0.500002}),
        # cut by ASHA at epoch 3 with the highest accuracy of all: must not be ranked
        _trial(root, "cut", 0.99, status="stopped", epochs_done=3, seed=0, schedule="cosine", elr=0.02,
               elr_final=0.001),
        _trial(root, "cos", 0.90, seed=0, schedule="cosine", elr=0.02, elr_final=0.001),
        # diverged: NaN accuracy counts as chance
        _trial(root, "exp", 0.5, status="diverged", seed=0, schedule="exponential", elr=1.0, elr_final=0.01),
        # constant trials carry sampled elr_final / switch_frac that constant ignores: one group
        _trial(root, "c01a", 0.85, seed=0, schedule="constant", elr=0.01, elr_final=0.003, switch_frac=0.7),
        _trial(root, "c01b", 0.87, seed=1, schedule="constant", elr=0.01, elr_final=0.0001, switch_frac=0.4),
        _trial(root, "c001", 0.80, seed=0, schedule="constant", elr=0.001),
    ]
    results.write_trials(root, rows)


def write_constant_grid(root: Path):
    rows = [_trial(root, f"g{s}", acc, seed=s, schedule="constant", elr=0.03)
            for s, acc in zip((0, 1, 2), (0.88, 0.89, 0.87))]
    rows += [_trial(root, f"h{s}", 0.7, seed=s, schedule="constant", elr=0.3) for s in (0, 1)]
    results.write_trials(root, rows)


def _cli(*argv):
    from regimes.cli import main

    return main(["report", *map(str, argv)])


def test_schedule_comparison_within_one_study(tmp_path):
    from regimes.analysis import load_study
    from regimes.analysis import schedules as S

    write_search(tmp_path / "search")
    c = S.compare([load_study(tmp_path / "search")])
    assert c.left_out == {"stopped": 1}
    assert len(c.groups) == 5                          # tp (3 seeds), cos, exp, c0.01 (2 seeds), c0.001
    best, base = c.best, c.baseline
    assert (best["schedule"], best["elr"], best["elr_final"], best["switch_frac"]) == ("two_phase", 0.05, 0.002, 0.5)
    assert best["n"] == 3 and best["mean"] == pytest.approx(0.92) and best["std"] == pytest.approx(0.01)
    assert (base["schedule"], base["elr"], base["n"]) == ("constant", 0.01, 2)
    assert base["mean"] == pytest.approx(0.86)
    # paired over seeds 0, 1: differences 0.93-0.85 = 0.08 and 0.91-0.87 = 0.04
    assert c.paired_seeds == [0, 1]
    assert c.gain == pytest.approx(0.06) and c.gain_std == pytest.approx(0.04 / math.sqrt(2))
    exp = c.groups[c.groups["schedule"] == "exponential"].iloc[0]
    assert exp["mean"] == pytest.approx(0.1)           # chance, not NaN, not dropped
    assert list(c.groups["schedule"]) == ["two_phase", "cosine", "constant", "constant", "exponential"]


def test_report_with_a_baseline_study(tmp_path, capsys):
    write_search(tmp_path / "search")
    write_constant_grid(tmp_path / "grid")
    assert _cli(tmp_path / "search", "--baseline", tmp_path / "grid") == 0
    out = capsys.readouterr().out
    rep = tmp_path / "search" / "report"
    for f in ("schedules.csv", "schedule_ranking.png", "schedule_ranking.svg", "schedule_curves.png",
              "schedule_curves.svg", "report.md"):
        assert (rep / f).is_file(), f

    # the grid's elr 0.03 (mean 0.88 over 3 seeds) beats the search's constant 0.01 (0.86)
    # gain paired over seeds 0,1,2: 0.93-0.88, 0.91-0.89, 0.92-0.87 = 0.05, 0.02, 0.05
    d = np.array([0.05, 0.02, 0.05])
    assert "best schedule: two_phase elr 0.05 -> 0.002 at 50%: test_acc 0.9200 ± 0.0100 (n=3)" in out
    assert "best constant: constant elr 0.03: test_acc 0.8800 ± 0.0100 (n=3)" in out
    assert f"gain: {d.mean():+.4f} ± {d.std(ddof=1):.4f} (paired over seeds [0, 1, 2])" in out

    table = pd.read_csv(rep / "schedules.csv")
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert table.iloc[0][["schedule", "elr", "elr_final", "switch_frac", "n"]].tolist() == \
        ["two_phase", 0.05, 0.002, 0.5, 3]
    top_const = table[table["schedule"] == "constant"].iloc[0]
    assert (top_const["elr"], top_const["n"], top_const["study"]) == (0.03, 3, "grid")
    assert pd.isna(top_const["elr_final"])             # not a parameter of a constant schedule
    assert table["n"].sum() == 8 + 5                   # every finished trial once; the ASHA-cut one not
    cosine = table[table["schedule"] == "cosine"].iloc[0]
    assert (cosine["n"], cosine["test_acc_mean"]) == (1, pytest.approx(0.90)) and pd.isna(cosine["test_acc_std"])

    md = (rep / "report.md").read_text()
    assert "## Schedule search" in md and "Not ranked: 1 stopped" in md
    assert "![schedule_ranking](schedule_ranking.png)" in md and "![schedule_curves](schedule_curves.png)" in md


def test_curve_figure_draws_the_logged_elr_of_the_best_schedules(tmp_path):
    from regimes.analysis import load_study
    from regimes.analysis import schedules as S

    write_search(tmp_path / "search")
    study = load_study(tmp_path / "search")
    c = S.compare([study])
    fig = S.plot_curves(c, [study], top=1)
    elr_ax, acc_ax = fig.axes[:2]
    lines = [(l.get_label(), list(l.get_ydata())) for l in elr_ax.lines]
    # the best schedule (3 seeds) then the best constant (2 seeds): one line per run
    assert len(lines) == 5
    assert lines[0][0].startswith("two_phase elr 0.05 -> 0.002 at 50% (n=3)")
    assert lines[0][1] == [0.05, 0.05, 0.05, 0.002, 0.002, 0.002]
    assert lines[3][1] == [0.01] * EPOCHS
    assert [round(y, 4) for y in acc_ax.lines[0].get_ydata()] == [0.83, 0.85, 0.87, 0.89, 0.91, 0.93]


def test_plain_constant_study_has_no_schedule_section_unless_asked(tmp_path, capsys):
    write_constant_grid(tmp_path / "grid")
    assert _cli(tmp_path / "grid") == 0
    assert not (tmp_path / "grid" / "report" / "schedules.csv").exists()
    assert "## Schedule search" not in (tmp_path / "grid" / "report" / "report.md").read_text()
    # a bad --baseline path: one clear message, exit 2
    assert _cli(tmp_path / "grid", "--baseline", tmp_path / "nope") == 2
    assert "nope" in capsys.readouterr().err


# ----------------------------------------------------------------- a tiny real search
@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
def test_tiny_optuna_schedule_search_on_digits_then_report(ray_local, tmp_path, capsys):
    """The digits schedule study shrunk (4 trials, width 4, 3 epochs), through `regimes sweep`."""
    import pyarrow.parquet as pq
    import yaml

    from regimes.cli import main

    spec = yaml.safe_load(Path("studies/elr_schedule_optuna_digits.yaml").read_text())
    spec["name"] = "tiny-schedules"
    spec["base"].update(width=4, epochs=3, subset=256)
    spec["search"].update(num_samples=4, sampler_seed=1)
    spec["search"]["space"]["schedule"] = {"choice": ["constant", "two_phase"]}
    spec["scheduler"].update(grace_period=2, reduction_factor=2)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(tmp_path / "spec.yaml"), "--storage", str(tmp_path), "--quiet"]) == 0
    root = tmp_path / "tiny-schedules"
    capsys.readouterr()
    assert _cli(root, "--formats", "png") == 0
    out = capsys.readouterr().out

    trials = pq.read_table(root / "trials.parquet").to_pandas()
    assert len(trials) == 4 and set(trials["schedule"]) == {"constant", "two_phase"}   # seeded sampler
    finished = trials[(trials["epochs_done"] == 3) & trials["status"].isin(["completed", "diverged"])]
    table = pd.read_csv(root / "report" / "schedules.csv")
    assert table["n"].sum() == len(finished)           # one seed each: one row per finished trial
    # the report's winners are the trials' own best final accuracies, per kind
    for kind, name in ((finished["schedule"] != "constant", "best schedule"),
                       (finished["schedule"] == "constant", "best constant")):
        if kind.any():
            top = finished[kind].sort_values("final_test_acc", ascending=False).iloc[0]
            assert f"{name}: {top['schedule']} elr {top['elr']:.3g}" in out
            assert f"test_acc {top['final_test_acc']:.4f} (n=1)" in out
    assert (root / "report" / "schedule_curves.png").is_file()
