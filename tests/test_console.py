"""The sweep's console: one line per finished trial, a progress line, the summary at the end;
no escape sequences off a terminal; TensorBoard given scalars only; Tune's resume hint dropped.
The callback is fed synthetic Tune events (no Ray); one real tiny sweep checks the whole screen."""
from __future__ import annotations

import io
import logging
from types import SimpleNamespace

import pytest
import yaml

from regimes.study import spec
from regimes.study.console import Console, TensorBoardLogger, quiet_tune_logs, study_summary

TINY = {"dataset": "digits", "model": "convnet_si", "width": 4, "subset": 256, "batch_size": 32,
        "augment": False, "epochs": 3, "device": "cpu"}
LABEL = {1e-3: "convergence", 1e-2: "chaotic_equilibrium", 1.0: "divergence"}


def _study(**search):
    return spec.from_dict({"name": "con", "base": TINY,
                           "search": {"kind": "grid", "space": {"elr": [1e-3, 1e-2, 1.0], "seed": [0, 1]},
                                      **search}})


def _trial(tid, config, status="PENDING"):
    return SimpleNamespace(trial_id=tid, status=status, config=config, last_result={}, num_failures=0)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _run(study, tty: bool, results=None):
    """Drive a Console through a study run two at a time: start, report, complete (or error)."""
    out, clock = io.StringIO(), Clock()
    con = Console(study, stream=out, tty=tty, clock=clock)
    trials = [_trial(f"t{i}", p) for i, p in enumerate(study.grid_points())]
    con.setup(total_num_samples=len(trials))
    for pair in (trials[i:i + 2] for i in range(0, len(trials), 2)):
        for t in pair:
            t.status = "RUNNING"
            con.on_trial_start(0, trials, t)
        for t in pair:
            clock.t += 10
            res = (results or {}).get(t.trial_id) or {
                "epoch": 3, "test_acc": 0.9, "regime": LABEL[t.config["elr"]], "time_total_s": 19.5,
                "records": [{"epoch": 3, "train_loss": 0.1}]}
            con.on_trial_result(0, trials, t, res)
            t.last_result = res
            con.on_step_end(0, trials)
            if res.get("error"):
                t.status = "ERROR"                      # Tune sets it before on_trial_error
                con.on_trial_error(0, trials, t)
            else:
                con.on_trial_complete(0, trials, t)     # Tune: still RUNNING here
                t.status = "TERMINATED"
    con.on_experiment_end(trials)
    return out.getvalue(), trials


def test_one_line_per_finished_trial_and_a_progress_line_without_escapes_off_a_terminal():
    study = _study()
    text, trials = _run(study, tty=False)
    assert "\x1b" not in text and "\r" not in text
    lines = text.splitlines()
    done = [line for line in lines if line.startswith("[")]
    assert len(done) == 6
    assert done[0] == "[1/6] elr=0.001 seed=0: test_acc 0.9000, convergence, 3/3 epochs, 20s"
    assert done[-1].startswith("[6/6] elr=1 seed=1: test_acc 0.9000, divergence")
    progress = [line for line in lines if line.startswith("progress:")]
    # every 10% of the trials (one trial is 17%), none after the last: the summary follows
    assert 1 <= len(progress) <= 5 and len(lines) == len(done) + len(progress)
    assert progress[0].startswith("progress: 1 done, 1 running, 4 pending; elapsed 10s, ETA ")
    # ETA = work left / 2 slots, a trial taking the mean time_total_s so far (19.5 s): 4 pending x
    # 19.5 s, plus the running one's 19.5 s less the 10 s it has run (started with the first)
    assert progress[0].endswith("ETA 44s")


def test_the_progress_line_is_redrawn_in_place_on_a_terminal():
    text, _ = _run(_study(), tty=True)
    assert "\x1b" not in text
    assert text.count("\rprogress: ") >= 6             # redrawn, not one line each
    assert sum(line.startswith("[") for line in text.replace("\r", "\n").splitlines()) == 6
    assert text.endswith("\r")                          # blanked at the end: the summary starts clean


def test_summary_counts_regimes_finds_the_boundaries_and_the_best_trial():
    study = _study(metric="test_acc", mode="max")
    results = {"t0": {"epoch": 3, "test_acc": 0.95, "regime": "convergence", "time_total_s": 5},
               # early-stopped: the regime it was decided with
               "t3": {"epoch": 2, "test_acc": 0.5, "decided_regime": "chaotic_equilibrium", "time_total_s": 3},
               "t5": {"epoch": 1, "test_acc": 0.1, "error": True, "time_total_s": 1}}
    text, trials = _run(study, tty=False, results=results)
    assert "elr=0.01 seed=1: test_acc 0.5000, chaotic_equilibrium, 2/3 epochs, 3.0s" in text
    assert "elr=1 seed=1: errored (message at the end), 1/3 epochs, 1.0s" in text
    lines = study_summary(study, [(t.config, t.last_result) for t in trials])
    assert lines[0] == "regimes: 2 convergence, 2 chaotic_equilibrium, 1 divergence"
    bounds = [line for line in lines if line.startswith("boundary ")]
    assert bounds == ["boundary convergence->chaotic_equilibrium: elr ~ 0.00316 (between 0.001 and 0.01; 2/2 seeds)",
                      "boundary chaotic_equilibrium->divergence: elr ~ 0.1 (between 0.01 and 1; 1/2 seeds)"]
    assert lines[-1] == "best test_acc (max): 0.95 at elr=0.001 seed=0"
    assert study_summary(study, []) == []


def test_the_console_pickles_without_its_stream_or_state():
    import pickle

    con = Console(_study(), stream=io.StringIO(), tty=False)
    con.on_trial_start(0, [], _trial("t0", {"elr": 1e-3, "seed": 0}))
    again = pickle.loads(pickle.dumps(con))          # Tune saves callbacks with the run config
    assert again._stream is None and again._started == {} and again.study == con.study


def test_tensorboard_gets_the_scalars_of_a_report_only():
    logged = []

    class Writer:
        def add_scalar(self, tag, value, global_step=None):
            logged.append(tag)

        def add_histogram(self, *a, **k):
            raise AssertionError("a non-scalar reached TensorBoard")

        def flush(self):
            pass

    tb = TensorBoardLogger()
    trial = object()
    tb._trial_writer[trial], tb._trial_result[trial] = Writer(), {}
    tb.log_trial_result(1, trial, {"training_iteration": 1, "test_acc": 0.9, "diverged": False, "regime": "x",
                                   "records": [{"epoch": 1, "train_loss": 0.3}], "config": {"elr": 0.1}})
    assert sorted(logged) == ["ray/tune/diverged", "ray/tune/test_acc"]


def test_tunes_resume_hint_is_dropped_and_errors_are_kept():
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    log = logging.getLogger("ray.tune.tune")
    handler = Keep()
    log.addHandler(handler)
    try:
        with quiet_tune_logs(quiet=True):
            log.warning("Experiment has been interrupted, but the most recent state was saved.\n"
                        "Resume experiment with: Tuner.restore(path=..., trainable=...)")
            log.error("Trials did not complete: [a, b]")
            log.error("Trial task failed for trial a")
        with quiet_tune_logs(quiet=False):
            log.error("Trials did not complete: [a, b]")
        log.warning("Experiment has been interrupted (outside a sweep: kept)")
    finally:
        log.removeHandler(handler)
    assert seen == ["Trial task failed for trial a", "Trials did not complete: [a, b]",
                    "Experiment has been interrupted (outside a sweep: kept)"]


@pytest.mark.ray
def test_a_real_sweep_prints_a_short_screen_with_the_summary(tmp_path, capsys):
    from regimes.cli import main

    s = {"name": "console", "base": TINY,
         "search": {"kind": "grid", "space": {"elr": [1e-3, 1e-2, 0.3, 3.0]}, "metric": "test_acc", "mode": "max"},
         "checkpoint_every": 2}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(s))
    rc = main(["sweep", str(tmp_path / "s.yaml"), "--storage", str(tmp_path), "--num-cpus", "2", "--tensorboard"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    lines = out.splitlines()
    assert len(lines) <= 15 + 4, out
    assert "\x1b" not in out and "invalid value" not in err
    assert sum(line.startswith("[") and "/4] elr=" in line for line in lines) == 4
    assert "study 'console': 4 completed" in out or "study 'console': " in out
    assert any(line.startswith("regimes: ") for line in lines)
    assert any(line.startswith("best test_acc (max): ") for line in lines)
    assert f"results: {tmp_path}/console/epochs/" in out
    assert list((tmp_path / "console").glob("*/events.out.tfevents.*"))       # TensorBoard's files
