"""Boundary search (regimes/study/boundary.py).

Oracle: a synthetic objective whose regime is a known step function of the
ELR (boundaries placed per seed), so the true boundaries are known exactly.
The searcher alone (no Ray) must bracket each within `resolution` using fewer
trials than the log-grid of the same resolution; then through Ray Tune with a
fake trainable, interrupted and resumed with Tuner.restore; then a tiny real
digits study through `regimes sweep` and `regimes report`.
"""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from regimes import TrainConfig
from regimes import regime as R
from regimes.study import spec
from regimes.study.boundary import ERRORED, SUMMARY_FILE, BoundarySearch, log_grid

FINISHED = "FINISHED"
LO, HI, RES = 1e-4, 1.0, 1.19
# true boundaries per seed: convergence | chaotic | divergence
TRUE = {0: (4.2e-3, 1.7e-2), 1: (3.1e-3, 2.6e-2), 2: (6.5e-3, 9.0e-3)}


def true_label(elr: float, seed: int = 0) -> str:
    a, b = TRUE[seed]
    return R.CONVERGENCE if elr < a else R.CHAOTIC if elr < b else R.DIVERGENCE


def grid_size(lo=LO, hi=HI, res=RES) -> int:
    return math.ceil(math.log(hi / lo) / math.log(res)) + 1


def drive(searcher, label=true_label, slots=2, order_seed=0, stop_after=None, fail=()):
    """Run the searcher like Tune does: `slots` trials at a time, finishing in random order."""
    rnd, running, n, done = random.Random(order_seed), [], 0, 0
    while True:
        while len(running) < slots:
            cfg = searcher.suggest(f"t{n}")
            if cfg is None or cfg == FINISHED:
                break
            running.append((f"t{n}", cfg))
            n += 1
        if not running or (stop_after is not None and done >= stop_after):
            return running
        tid, cfg = running.pop(rnd.randrange(len(running)))
        if cfg["elr"] in fail:
            searcher.on_trial_complete(tid, None, error=True)
        else:
            searcher.on_trial_complete(tid, {"regime": label(cfg["elr"], cfg.get("seed", 0))})
        done += 1


def check_brackets(searcher, res=RES):
    """Every true boundary of every line is bracketed by two probes within `res`."""
    for line in searcher.lines:
        seed = line.point.get("seed", 0)
        found = {(b["boundary"]): b for b in line.summary(res)["brackets"]}
        assert set(found) == {f"{R.CONVERGENCE}->{R.CHAOTIC}", f"{R.CHAOTIC}->{R.DIVERGENCE}"}, found
        for b, truth in zip(sorted(found.values(), key=lambda b: b["lo"]), TRUE[seed]):
            assert b["lo"] < truth <= b["hi"], (b, truth)
            assert b["hi"] / b["lo"] <= res * (1 + 1e-9)


@pytest.mark.parametrize("probes", [1, 2, 4])
def test_finds_known_boundaries_within_resolution_with_fewer_trials_than_the_grid(probes):
    s = BoundarySearch("elr", LO, HI, RES, budget=500, probes_per_round=probes, initial=5,
                       lines=[{"seed": k} for k in TRUE])
    drive(s, slots=4)
    check_brackets(s)
    assert s.suggest("more") == FINISHED
    per_line = s.suggested / len(TRUE)
    assert per_line <= grid_size() / 2.5, (per_line, grid_size())
    # no value probed twice on a line; every probe inside the range
    for line in s.lines:
        assert all(LO <= x <= HI for x in line.labels)


def test_several_probes_per_round_keep_slots_busy():
    """With probes_per_round = 2 a line with one open bracket has two trials in flight."""
    s = BoundarySearch("elr", LO, HI, RES, budget=100, probes_per_round=2, initial=3, lines=[{"seed": 0}])
    first = [s.suggest(f"i{k}") for k in range(3)]
    assert [c["elr"] for c in first] == pytest.approx(log_grid(LO, HI, 3))
    assert s.suggest("wait") is None                   # nothing known yet: no bracket to refine
    for k, c in enumerate(first):
        s.on_trial_complete(f"i{k}", {"regime": true_label(c["elr"])})
    a, b = s.suggest("p1"), s.suggest("p2")
    assert a is not None and b is not None and s.suggest("p3") is None
    assert a["elr"] != b["elr"]


def test_budget_is_a_hard_limit_and_an_unknown_boundary_says_so():
    s = BoundarySearch("elr", LO, HI, RES, budget=7, probes_per_round=2, initial=5, lines=[{"seed": 0}])
    drive(s)
    assert s.suggested == 7 and s.suggest("x") == FINISHED
    summary = s.summary()
    assert not summary["finished"]
    assert any(not b["known"] for b in summary["lines"][0]["brackets"])


def test_failed_trials_split_gaps_but_bracket_nothing():
    s0 = BoundarySearch("elr", LO, HI, RES, budget=200, probes_per_round=2, initial=5, lines=[{"seed": 0}])
    drive(s0)
    # make one refinement probe fail: the search still ends, brackets only between real labels
    victim = sorted(s0.lines[0].labels)[7]
    s = BoundarySearch("elr", LO, HI, RES, budget=200, probes_per_round=2, initial=5, lines=[{"seed": 0}])
    drive(s, fail={victim})
    assert s.lines[0].labels[victim] == ERRORED
    assert all(ERRORED not in (b["boundary"]) for b in s.brackets())
    assert s.suggest("x") == FINISHED


def test_unresolved_band_edges_are_refined_and_the_report_steps_over_it():
    def label(x, seed):
        return (R.CONVERGENCE if x < 3e-3 else R.CHAOTIC if x < 1e-2 else R.UNRESOLVED if x < 3e-2
                else R.DIVERGENCE)
    s = BoundarySearch("elr", LO, HI, RES, budget=200, probes_per_round=2, initial=5, lines=[{"seed": 0}])
    drive(s, label=label)
    names = {b["boundary"] for b in s.brackets()}
    assert names == {"convergence->chaotic_equilibrium", "chaotic_equilibrium->unresolved",
                     "unresolved->divergence"}
    xs = sorted(s.lines[0].labels)
    bounds = R.estimate_boundaries(xs, [s.lines[0].labels[x] for x in xs])
    assert [b.name for b in bounds] == ["convergence->chaotic_equilibrium", "chaotic_equilibrium->divergence"]
    assert bounds[1].bracket_lo < 1e-2 <= 1.19 * bounds[1].bracket_lo
    assert bounds[1].bracket_hi >= 3e-2 >= bounds[1].bracket_hi / 1.19


def test_save_restore_mid_search_continues_to_the_same_end(tmp_path):
    lines = [{"seed": k} for k in TRUE]
    ref = BoundarySearch("elr", LO, HI, RES, budget=500, probes_per_round=2, initial=5, lines=lines)
    drive(ref, slots=1)

    s = BoundarySearch("elr", LO, HI, RES, budget=500, probes_per_round=2, initial=5, lines=lines)
    in_flight = drive(s, slots=1, stop_after=9)
    s.save(str(tmp_path / "searcher.pkl"))
    fresh = BoundarySearch("elr", LO, HI, RES, budget=500, probes_per_round=2, initial=5, lines=lines)
    fresh.restore(str(tmp_path / "searcher.pkl"))
    assert fresh.suggested == s.suggested
    for tid, cfg in in_flight:            # Tune resumes the unfinished trial; it reports to the restored searcher
        fresh.on_trial_complete(tid, {"regime": true_label(cfg["elr"], cfg["seed"])})
    drive(fresh, slots=1)
    check_brackets(fresh)
    assert fresh.suggested == ref.suggested
    assert [l.labels for l in fresh.lines] == [l.labels for l in ref.lines]


def test_spec_validation_names_the_key():
    ok = {"name": "b", "base": {"dataset": "digits", "epochs": 5},
          "search": {"kind": "boundary", "axis": "elr", "range": [1e-4, 1e-1], "resolution": 1.19,
                     "budget": 30, "probes_per_round": 2, "space": {"seed": [0, 1]}}}
    st = spec.from_dict(ok)
    assert st.kind == "boundary" and st.num_trials() == 30 and list(st.grid_points()) == [{"seed": 0}, {"seed": 1}]
    bad = [({"axis": "modle"}, "search.axis"), ({"axis": "model"}, "search.axis"),
           ({"range": [1e-1, 1e-4]}, "search.range"), ({"range": [0.0, 1.0]}, "search.range"),
           ({"range": 3}, "search.range"), ({"resolution": 1.0}, "search.resolution"),
           ({"budget": 9}, "search.budget"), ({"probes_per_round": 0}, "search.probes_per_round"),
           ({"metric": "test_acc"}, "search.metric"), ({"space": {"elr": [1e-3]}}, "search.space.elr")]
    for change, key in bad:
        with pytest.raises(spec.ConfigError) as e:
            spec.from_dict({**ok, "search": {**ok["search"], **change}})
            pytest.fail(f"no error for {change}")
        assert e.value.key == key, (change, e.value)
    for key in ("window", "converge_window"):
        with pytest.raises(spec.ConfigError) as e:
            spec.from_dict({**ok, "early_stop": {key: 1}})
        assert e.value.key == f"early_stop.{key}"
    with pytest.raises(spec.ConfigError, match="shorter than window") as e:
        spec.from_dict({**ok, "early_stop": {"window": 6, "converge_window": 5}})
    assert e.value.key == "early_stop.converge_window"
    st = spec.from_dict({**ok, "early_stop": {"converge_window": 12}})
    assert st.early_stop.convergence_window == 12 and st.early_stop.window == R.EarlyStop().window
    # without converge_window, convergence never waits less than window
    assert spec.from_dict({**ok, "early_stop": {"window": 20}}).early_stop.convergence_window == 20
    assert spec.from_dict({**ok, "early_stop": True}).early_stop.convergence_window == 9


def test_studies_validate():
    for path in ("studies/boundary_elr_digits.yaml", "studies/boundary_elr_wd_cifar10.yaml"):
        st = spec.load(path)
        assert st.kind == "boundary" and st.axis == "elr" and st.early_stop is not None
    wide = spec.load("studies/boundary_elr_wd_cifar10.yaml")
    assert len(list(wide.grid_points())) > 1 and "wd" in wide.space


# --- through Ray Tune --------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def fake_trainable(config):
    """A trial whose regime is the known function of its ELR; logs each call to count re-runs."""
    import os

    from ray import tune

    with open(os.path.join(config["log_dir"], "calls.txt"), "a") as fh:
        fh.write(f"{config['seed']} {config['elr']!r}\n")
    tune.report({"epoch": 1, "regime": true_label(config["elr"], config["seed"])})


@pytest.mark.ray
def test_tune_run_with_a_fake_trainable_finds_the_boundaries(ray_local, tmp_path):
    import sys

    import ray.cloudpickle
    from ray import tune

    # Ray's workers cannot import this test module: ship the fake trainable by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    res = 1.5         # coarse: few trials, the search itself is tested above
    lines = [{"seed": 0, "log_dir": str(tmp_path)}, {"seed": 1, "log_dir": str(tmp_path)}]
    searcher = BoundarySearch("elr", LO, HI, res, budget=60, probes_per_round=2, initial=5, lines=lines,
                              summary_dir=tmp_path)
    trainable = tune.with_resources(fake_trainable, {"cpu": 0.5})
    grid = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=60, reuse_actors=True),
                      run_config=tune.RunConfig(name="bsearch", storage_path=str(tmp_path / "ray"),
                                                verbose=0)).fit()
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["finished"] and summary["trials"] < 2 * grid_size(res=res)
    assert len(grid) == summary["trials"] and all(r.error is None for r in grid)
    for line in summary["lines"]:
        seed = line["point"]["seed"]
        brackets = sorted(line["brackets"], key=lambda b: b["lo"])
        assert [b["boundary"] for b in brackets] == [f"{R.CONVERGENCE}->{R.CHAOTIC}", f"{R.CHAOTIC}->{R.DIVERGENCE}"]
        for b, truth in zip(brackets, TRUE[seed]):
            assert b["lo"] < truth <= b["hi"] and b["known"] and b["ratio"] <= res
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == len(set(calls)) == summary["trials"]     # each probe trained once


def _finished_trials(root) -> int:
    try:
        rows = pq.read_table(root / "trials.parquet", columns=["status"]).column("status").to_pylist()
    except (FileNotFoundError, OSError):
        return 0
    return sum(s in ("completed", "stopped_decided", "diverged") for s in rows)


@pytest.mark.ray
def test_tiny_digits_boundary_study_interrupted_resumed_and_reported(tmp_path):
    """studies/boundary_elr_digits.yaml shrunk (width 4, 256 examples, 6 epochs) through `regimes
    sweep`, Ctrl-C'd mid-search, run again (Tuner.restore: the searcher resumes), then `regimes report`."""
    import signal
    import subprocess
    import time

    from regimes.cli import main
    from sweep_driver import kill_session, sweep

    src = yaml.safe_load(open("studies/boundary_elr_digits.yaml"))
    src["name"] = "tiny-boundary"
    src["base"].update({"width": 4, "subset": 256, "batch_size": 32, "epochs": 6})
    src["search"].update({"range": [1e-3, 10.0], "resolution": 3.0, "budget": 7, "initial": 4,
                          "probes_per_round": 2, "space": {"seed": [0]}})
    src["early_stop"] = {"window": 2, "min_epochs": 3}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(src))
    root = tmp_path / "tiny-boundary"

    log = open(tmp_path / "first.log", "w")
    driver = subprocess.Popen(sweep(path, tmp_path), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and _finished_trials(root) < 2:
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=120)
    finally:
        kill_session(driver.pid)        # Ray's daemons outlive the driver
        log.close()
    first = json.loads((root / SUMMARY_FILE).read_text())
    assert not first["finished"]

    again = subprocess.run(sweep(path, tmp_path), capture_output=True, text=True, timeout=300,
                           start_new_session=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming study 'tiny-boundary'" in again.stdout and "boundary search along elr" in again.stdout

    trials = pq.read_table(root / "trials.parquet").to_pylist()
    summary = json.loads((root / SUMMARY_FILE).read_text())
    assert summary["trials"] == len(trials) <= 7
    elrs = [t["elr"] for t in trials]
    assert len(set(elrs)) == len(elrs)                      # no probe run twice across the restart
    assert set(elrs) == {float(x) for x in summary["lines"][0]["labels"]}
    assert {t["status"] for t in trials} <= {"completed", "stopped_decided", "diverged"}
    # elr 10 is a random guesser. The trainable stops it exactly where stop_decision, replayed
    # on its recorded trajectory, first says so (whether a 6-epoch guesser qualifies depends on
    # its accuracy's epoch-to-epoch jitter, so the replay is the oracle, not a fixed epoch)
    top = next(t for t in trials if t["elr"] == 10.0)
    import pyarrow.dataset as ds

    ep = ds.dataset(root / "epochs", format="parquet", partitioning="hive").to_table(
        filter=ds.field("trial_id") == top["trial_id"]).to_pandas().sort_values("epoch")
    col = lambda m: ep[m].to_numpy(dtype=float)
    stop = R.EarlyStop(window=2, min_epochs=3)
    first = next((k for k in range(1, 6) if R.stop_decision(col("train_loss")[:k], col("train_acc")[:k],
                                                             col("eff_grad_norm")[:k], 10, stop=stop,
                                                             epochs=col("epoch")[:k]) is not None), None)
    if top["status"] != "diverged":
        assert top["epochs_done"] == (first or 6)
        assert top["status"] == ("stopped_decided" if first else "completed")
    if top["status"] == "stopped_decided":
        assert top["regime"] == top["final_decided_regime"] == R.DIVERGENCE

    # the report draws what the search bracketed: boundaries between neighbouring probes
    assert main(["report", str(root), "--formats", "png"]) == 0
    labels = {t["trial_id"]: t["regime"] for t in pq.read_table(root / "trials.parquet").to_pylist()}
    assert labels[top["trial_id"]] == R.DIVERGENCE
    bounds = (root / "report" / "boundaries.csv").read_text()
    for b in summary["lines"][0]["brackets"]:
        if R.UNRESOLVED not in b["boundary"]:
            assert b["boundary"] in bounds
    assert (root / "report" / "regime_strip.png").exists()


# --- the report on a boundary-search study (off-grid points) ------------------------------
def _shape(label: str, n: int, rng) -> list[dict]:
    t = np.arange(1, n + 1, dtype=float)
    if label == R.CONVERGENCE:
        loss, acc, grad = 2.3 * np.exp(-t / 2), 1 - 0.9 * np.exp(-t / 2), 5 * np.exp(-t / 3)
    elif label == R.CHAOTIC:
        loss, acc, grad = 0.4 + 2 * np.exp(-t / 2) + 0.01 * rng.standard_normal(n), 0.88 + 0 * t, 2 + 0 * t
    else:
        loss, acc, grad = 5.5 + 0.05 * rng.standard_normal(n), 0.1 + 0 * t, 9 + 0 * t
    return [{"epoch": int(e), "step": int(e) * 10, "train_loss": float(a), "train_acc": float(b),
             "eff_grad_norm": float(c), "test_acc": float(b), "num_classes": 10, "diverged": False}
            for e, a, b, c in zip(t, loss, acc, grad)]


def test_report_draws_the_brackets_of_an_off_grid_boundary_study(tmp_path):
    """Two wd rows searched by BoundarySearch (so the ELRs differ per row, dense near the
    boundaries): the analysis finds each boundary between the bracketing trials and the phase
    diagram (a scatter: off grid) draws it on each row."""
    import matplotlib.pyplot as plt

    from regimes import results
    from regimes.analysis import classify, load_study, plot_phase_diagram
    from regimes.analysis.load import boundaries

    truth = {0.0: (4.2e-3, 1.7e-2), 1e-3: (2.0e-3, 9.0e-3)}
    label = lambda x, wd: (R.CONVERGENCE if x < truth[wd][0] else R.CHAOTIC if x < truth[wd][1] else R.DIVERGENCE)
    s = BoundarySearch("elr", LO, HI, RES, budget=200, probes_per_round=2, initial=5,
                       lines=[{"wd": 0.0, "seed": 0}, {"wd": 1e-3, "seed": 0}])
    rnd, running, n = random.Random(1), [], 0
    while True:
        while len(running) < 3:
            cfg = s.suggest(f"t{n}")
            if cfg is None or cfg == FINISHED:
                break
            running.append((f"t{n}", cfg))
            n += 1
        if not running:
            break
        tid, cfg = running.pop(rnd.randrange(len(running)))
        s.on_trial_complete(tid, {"regime": label(cfg["elr"], cfg["wd"])})
    rng = np.random.default_rng(0)
    root, rows = tmp_path / "bstudy", []
    for tid, (i, x) in s.trials.items():
        point = {**s.lines[i].point, "elr": x}
        cfg = TrainConfig.from_dict({"dataset": "digits", "epochs": 20, **point})
        recs = _shape(label(x, point["wd"]), 20, rng)
        results.write_trial_epochs(root, tid, results.epoch_rows(cfg, recs, "bstudy"))
        rows.append(results.trial_summary(cfg, recs, "bstudy", tid, "completed"))
    results.write_trials(root, rows)

    st = load_study(root)
    labels = classify(st)
    assert all(labels["regime"] == [label(x, wd) for x, wd in zip(labels["elr"], labels["wd"])])
    b = boundaries(st, labels, "elr")
    assert len(b) == 4
    for _, r in b.iterrows():
        true = truth[r["wd"]][0 if r["boundary"].startswith(R.CONVERGENCE) else 1]
        assert r["bracket_lo"] < true <= r["bracket_hi"] and r["bracket_hi"] / r["bracket_lo"] <= RES * (1 + 1e-9)
    fig = plot_phase_diagram(st, labels, x="elr", y="wd")
    ax = fig.axes[0]
    assert "off-grid" in ax.get_title() and "boundaries" in ax.get_title()
    drawn = [l for l in ax.get_lines() if l.get_linestyle() not in ("None", "")]   # not the error-bar caps
    got = sorted(sorted(np.asarray(l.get_xdata(), float)) for l in drawn)
    want = sorted(sorted(b[b["boundary"] == name].sort_values("wd")["value"]) for name in set(b["boundary"]))
    assert len(got) == 2 and np.allclose(got, want)
    plt.close(fig)
