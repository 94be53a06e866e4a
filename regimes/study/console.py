"""What `regimes sweep` shows while a study runs and when it ends.

`Console` is a driver-side Ray Tune callback (like the ParquetSink) that
replaces Tune's own progress reporter in the sweep's default mode:

- one line per finished trial: its point of the space, test accuracy, regime,
  epochs done and wall time;
- a progress line (done / running / pending, elapsed, ETA), redrawn in place
  with a carriage return on a terminal and printed now and then (every 30 s, or
  each time another 10% of the trials is done) when stdout is a file or a pipe.

Nothing it prints carries colour or any other escape sequence. `study_summary`
gives the end-of-study lines (regime counts, boundaries so far, the best trial),
printed by launch.report in every mode. `TensorBoardLogger` is Tune's
TensorBoard logger given only the scalars of each report, and `quiet_tune_logs`
silences the warnings of Ray Tune that contradict or repeat what the sweep says.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from numbers import Real
from typing import Iterable

from ray import tune
from ray.tune.logger import TBXLoggerCallback

from regimes import regime as R

from .spec import Study
from .trainable import DECIDED_KEY, ENDED_KEY, MEMBERS_KEY, RECORDS_KEY, REGIME_KEY, member_id, pack_members

EVERY_S = 30.0          # progress line at most this often when stdout is not a terminal ...
EVERY_SHARE = 0.1       # ... or each time another tenth of the trials is done
REDRAW_S = 1.0          # on a terminal: redraw the progress line at most once a second
_DONE = ("TERMINATED", "ERROR")


def point_of(study: Study, config: dict) -> dict:
    """The trial's point of the study's space (the keys that vary), in the spec's order."""
    keys = ([study.axis] if study.kind == "boundary" else []) + list(study.space)
    point = {k: config[k] for k in keys if k in config}
    return point or dict(config)


def fmt_point(point: dict) -> str:
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in point.items()) or "-"


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def fmt_duration(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds < 9.95:
        return f"{max(seconds, 0.0):.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def regime_of(result: dict) -> str | None:
    """The regime a trial's last report gives: its label, or the one it stopped early with."""
    return (result or {}).get(REGIME_KEY) or (result or {}).get(DECIDED_KEY)


class Console(tune.Callback):
    """One line per finished trial and a progress line, on stdout (see the module's doc).

    `stream`, `tty` and `clock` are for tests; by default stdout (looked up at each
    write, so pytest's capture works) and whether it is a terminal."""

    def __init__(self, study: Study, *, stream=None, tty: bool | None = None, clock=time.monotonic):
        self.study = study
        self._stream = stream
        self._tty = tty
        self._clock = clock
        self._reset()

    def _reset(self) -> None:
        self._t0: float | None = None
        self._started: dict[str, float] = {}     # trial_id -> when this driver saw it start
        self._seen: dict[str, tuple] = {}       # trial_id -> (when, its time_total_s) at its last report
        self._durations: list[float] = []       # wall time of the trials that finished in this session
        self._last: dict[str, dict] = {}        # trial_id -> its last result, without the records
        self._printed: set[str] = set()          # trials (members of packs) whose line is out
        self._pack_last: dict[str, dict] = {}    # packed trial -> its members that ended so far
        self._max_running = 0
        self._shown = 0                         # length of the progress line on the terminal (0: none)
        self._last_progress: float | None = None
        self._last_share = 0

    def __getstate__(self):       # Tune pickles callbacks with the run config: no stream, no state
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_") or k in ("_tty", "_clock")}
        return {**state, "_stream": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    # --- output --------------------------------------------------------------
    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stdout

    @property
    def tty(self) -> bool:
        if self._tty is not None:
            return self._tty
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _clear(self) -> None:
        if self._shown:                      # blank the progress line, back to its start
            self._write("\r" + " " * self._shown + "\r")
            self._shown = 0

    def line(self, text: str) -> None:
        """A line of its own (above the progress line on a terminal)."""
        self._clear()
        self._write(text + "\n")

    # --- state ---------------------------------------------------------------
    def _now(self) -> float:
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        return now

    def counts(self, trials, ending=None) -> tuple[int, int, int]:
        """done, running, pending trials; `ending`: a trial Tune is ending (still RUNNING to Tune).
        In a packed study these count members (the study's trials), not Tune's packs."""
        if self.study.pack > 1:
            return self._member_counts(trials, ending)
        done, running, pending = self._tune_counts(trials, ending)
        total = max(self.study.num_trials(), len(trials))
        return done, running, max(0, total - done - running)

    def _tune_counts(self, trials, ending=None) -> tuple[int, int, int]:
        done = sum(t.status in _DONE or t is ending for t in trials)
        running = sum(t.status == "RUNNING" and t is not ending for t in trials)
        if self.study.pack > 1 and self.study.kind == "grid":
            total = max(len(self.study.packs(self.study.grid_points())), len(trials))
        elif self.study.pack > 1:
            total = max(math.ceil(self.study.num_trials() / self.study.pack), len(trials))
        else:
            total = max(self.study.num_trials(), len(trials))
        return done, running, max(0, total - done - running)

    def _member_counts(self, trials, ending=None) -> tuple[int, int, int]:
        done = running = 0
        for t in trials:
            size = len((t.config or {}).get(MEMBERS_KEY) or ())
            if t.status in _DONE or t is ending:
                done += size
            elif t.status == "RUNNING":
                ended = sum(member_id(t.trial_id, k) in self._printed for k in range(size))
                done, running = done + ended, running + size - ended
        total = max(self.study.num_trials(), done + running)
        return done, running, max(0, total - done - running)

    def eta(self, trials, now: float, ending=None) -> float | None:
        """Seconds until the study is done, or None before any trial finished here.

        Estimate: a trial takes the mean time of the trials that finished in this
        session (each one's whole run, earlier sessions included: Tune's
        time_total_s; the wall time seen here when a trial has none); each running
        trial still needs that mean less the time it has run (at least nothing),
        each pending trial the whole mean, and the work is shared by the slots in
        use (the most trials seen running at once). Early-stopped and diverged
        trials end sooner, so a study whose hard part comes last takes longer than
        this says."""
        if not self._durations:
            return None
        mean = sum(self._durations) / len(self._durations)
        _, running, pending = self._tune_counts(trials, ending)     # Tune's trials (packs when packed)
        left = pending * mean
        for t in trials:
            if t.status == "RUNNING" and t is not ending:
                left += max(0.0, mean - self._ran(t.trial_id, now))
        return left / max(1, self._max_running, running)

    def _ran(self, trial_id: str, now: float) -> float:
        """How long a trial has run: its time_total_s at its last report plus the time since."""
        if trial_id in self._seen:
            at, total = self._seen[trial_id]
            return total + (now - at)
        return now - self._started.get(trial_id, now)

    def progress_line(self, trials, now: float | None = None, ending=None) -> str:
        now = self._now() if now is None else now
        done, running, pending = self.counts(trials, ending)
        eta = self.eta(trials, now, ending)
        upto = "up to " if self.study.kind == "boundary" else ""
        return (f"progress: {done} done, {running} running, {upto}{pending} pending; "
                f"elapsed {fmt_duration(now - self._t0)}, ETA {fmt_duration(eta) if eta is not None else '?'}")

    def _progress(self, trials, force: bool = False, ending=None) -> None:
        now = self._now()
        done, running, pending = self.counts(trials, ending)
        self._max_running = max(self._max_running, running)
        if self._last_progress is None:
            self._last_progress = now
        if self.tty:
            if force or now - self._last_progress >= REDRAW_S:
                # one terminal row at most: a wrapped line could not be redrawn with "\r"
                text = self.progress_line(trials, now, ending)[:shutil.get_terminal_size().columns - 1]
                self._write("\r" + text.ljust(self._shown))
                self._shown = len(text)
                self._last_progress = now
            return
        total = done + running + pending
        share = int(done / total / EVERY_SHARE) if total else 0
        if not (running or pending):
            return                           # the summary follows
        if share > self._last_share or now - self._last_progress >= EVERY_S:
            self.line(self.progress_line(trials, now, ending))
            self._last_progress, self._last_share = now, max(share, self._last_share)

    def trial_line(self, trial, result: dict, status: str) -> str:
        point = fmt_point(point_of(self.study, trial.config))
        epochs = result.get("epoch")
        try:
            budget = self.study.config(trial.config).epochs
        except Exception:   # a trial whose config is bad errors; its line must still print
            budget = None
        parts = []
        if status == "ERROR":
            parts.append("errored (message at the end)")
        else:
            acc = result.get("test_acc")
            parts.append(f"test_acc {acc:.4f}" if isinstance(acc, Real) and math.isfinite(acc) else "test_acc -")
            # no regime: the trial did not end itself (cut by ASHA)
            parts.append(regime_of(result) or ("stopped by ASHA" if self.study.scheduler else "no regime"))
        if epochs is not None:
            parts.append(f"{epochs}/{budget} epochs" if budget else f"{epochs} epochs")
        wall = result.get("time_total_s")
        if wall is None and trial.trial_id in self._started:
            wall = self._clock() - self._started[trial.trial_id]
        parts.append(fmt_duration(wall))
        return f"{point}: " + ", ".join(parts)

    def member_line(self, trial, k: int, point: dict, rec: dict | None, status: str) -> str:
        """A packed trial's member, like a trial's line, with its pack."""
        budget = self.study.config(point).epochs
        if rec is None:
            parts = ["errored (message at the end)" if status == "ERROR" else "no regime"]
        else:
            acc = rec.get("test_acc")
            parts = [f"test_acc {acc:.4f}" if isinstance(acc, Real) and math.isfinite(acc) else "test_acc -",
                     rec.get(REGIME_KEY) or "no regime", f"{rec.get('epoch')}/{budget} epochs"]
        wall = self._ran(trial.trial_id, self._now()) if trial.trial_id in self._started else None
        parts.append(f"pack {trial.trial_id} ({len(trial.config[MEMBERS_KEY])})")
        if wall is not None:
            parts.append(fmt_duration(wall))
        return f"{fmt_point(point_of(self.study, point))}: " + ", ".join(parts)

    def _members_ended(self, trials, trial, result: dict | None, status: str | None = None) -> None:
        """A line per member of a packed trial that ended since the last report (all members
        left when the pack itself ends: `status`)."""
        for k, point, rec in pack_members(trial.config, result):
            mid = member_id(trial.trial_id, k)
            if mid in self._printed or (rec is None and status is None):
                continue
            self._printed.add(mid)
            done, running, pending = self.counts(trials, trial if status else None)
            self.line(f"[{done}/{done + running + pending}] " + self.member_line(trial, k, point, rec, status or ""))

    def _finished(self, trials, trial, status: str) -> None:
        now = self._now()
        if MEMBERS_KEY in (trial.config or {}):
            if trial.trial_id in self._started:
                total = self._last.get(trial.trial_id, {}).get("time_total_s")
                ran = self._ran(trial.trial_id, now)
                self._durations.append(total if isinstance(total, Real) and math.isfinite(total) else ran)
            self._members_ended(trials, trial, self._pack_last.get(trial.trial_id)
                                or getattr(trial, "last_result", None), status)
            self._started.pop(trial.trial_id, None)
            self._progress(trials, force=True, ending=trial)
            return
        result = self._last.get(trial.trial_id) or _scalars(getattr(trial, "last_result", None) or {})
        if trial.trial_id in self._started:
            ran = self._ran(trial.trial_id, now)
            total = result.get("time_total_s")
            self._durations.append(total if isinstance(total, Real) and math.isfinite(total) else ran)
            self._started.pop(trial.trial_id)
        # once per trial (a resumed trial may say its last word twice); none for a trial
        # that never ran (Tune ends pending trials when a search is done)
        if trial.trial_id not in self._printed and (result or status == "ERROR"):
            self._printed.add(trial.trial_id)
            done, running, pending = self.counts(trials, trial)
            self.line(f"[{done}/{done + running + pending}] " + self.trial_line(trial, result, status))
        self._progress(trials, force=True, ending=trial)

    # --- Tune hooks ----------------------------------------------------------
    def setup(self, **info):
        self._now()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._started[trial.trial_id] = self._now()
        self._progress(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._last[trial.trial_id] = _scalars(result)
        if ENDED_KEY in result:
            self._pack_last[trial.trial_id] = {ENDED_KEY: result[ENDED_KEY]}
            self._members_ended(trials, trial, result)
        if isinstance(result.get("time_total_s"), Real):
            self._seen[trial.trial_id] = (self._now(), float(result["time_total_s"]))
        self._progress(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished(trials, trial, "ERROR")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._started.pop(trial.trial_id, None)
        self._seen.pop(trial.trial_id, None)
        what = (f"pack {trial.trial_id} ({len(trial.config[MEMBERS_KEY])} trials)" if MEMBERS_KEY in trial.config
                else fmt_point(point_of(self.study, trial.config)))
        self.line(f"{what}: failed "
                  f"({getattr(trial, 'num_failures', '?')}x); retried from its last checkpoint")

    def on_step_end(self, iteration, trials, **info):
        self._progress(trials)

    def on_experiment_end(self, trials, **info):
        self._clear()


def _scalars(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != RECORDS_KEY and not isinstance(v, (dict, list))}


# --- the end of a study ----------------------------------------------------------------
def main_axis(study: Study, config: dict) -> str:
    """The axis regimes are read along: the boundary search's axis, else elr on the sphere
    and lr in free mode."""
    if study.kind == "boundary":
        return study.axis
    return "elr" if study.config(config).mode == "sphere" else "lr"


def member_results(trials: Iterable[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    """(config, last result) pairs with every packed trial replaced by one pair per member
    (its point, and its last record with its regime, or {} if it has not ended)."""
    out = []
    for config, result in trials:
        if MEMBERS_KEY in (config or {}):
            out += [(point, rec or {}) for _, point, rec in pack_members(config, result)]
        else:
            out.append((config, result))
    return out


def study_summary(study: Study, trials: Iterable[tuple[dict, dict]]) -> list[str]:
    """Regime counts, the boundaries so far and the best trial, from (config, last result)
    pairs; trials that have not finished are left out."""
    trials = member_results(trials)
    finished = [(c, r) for c, r in trials if regime_of(r)]
    if not finished:
        return []
    counts = Counter(regime_of(r) for _, r in finished)
    lines = ["regimes: " + ", ".join(f"{n} {label}" for label, n in
                                     sorted(counts.items(), key=lambda x: R.REGIME_ORDER.get(x[0], 9)))]
    lines += _boundary_lines(study, finished)
    lines += _best_lines(study, [(c, r) for c, r in trials if r])
    return lines


def _boundary_lines(study: Study, finished) -> list[str]:
    lines_of: dict[tuple, tuple[str, list]] = {}     # setting of the other axes -> (axis, trials)
    for c, r in finished:
        axis = main_axis(study, c)
        if axis not in c:
            continue                    # the axis does not vary: no boundary along it
        other = tuple((k, v) for k, v in point_of(study, c).items() if k not in (axis, "seed"))
        lines_of.setdefault(other, (axis, []))[1].append((c[axis], regime_of(r), c.get("seed", 0)))
    out = []
    for other, (axis, rows) in lines_of.items():
        x, labels, seeds = zip(*rows)
        where = f" ({fmt_point(dict(other))})" if other else ""
        for b in R.estimate_boundaries(x, labels, seeds):
            out.append(f"boundary {b.name}{where}: {axis} ~ {b.value:.3g} (between {b.bracket_lo:.3g} and "
                       f"{b.bracket_hi:.3g}; {b.n_seeds}/{b.n_seeds_total} seeds)")
    return out


def _best_lines(study: Study, trials) -> list[str]:
    out = []
    for metric, mode in zip(study.metric, study.mode):
        scored = [(r[metric], c) for c, r in trials if isinstance(r.get(metric), Real) and math.isfinite(r[metric])]
        if not scored:
            continue
        value, c = (max if mode == "max" else min)(scored, key=lambda x: x[0])
        out.append(f"best {metric} ({mode}): {value:.4g} at {fmt_point(point_of(study, c))}")
    return out


# --- TensorBoard and Tune's logs -------------------------------------------------------
class TensorBoardLogger(TBXLoggerCallback):
    """Tune's TensorBoard logger given the scalars of each report only. Tune's logger would
    try the `records` list (the epoch rows for the Parquet sink) as a histogram and warn."""

    def log_trial_result(self, iteration, trial, result):
        super().log_trial_result(iteration, trial, {k: v for k, v in result.items()
                                                    if isinstance(v, Real) or k == "config"})


# Tune's words that contradict or repeat the sweep's own: the hint to resume with
# `Tuner.restore(...)` (the sweep resumes when run again: dropped in every mode), and the
# list of unfinished trials (the sweep counts them and prints each error: dropped unless
# Tune's own output was asked for).
_HINT = ("Experiment has been interrupted",)
_REPEATS = ("Trials did not complete",)


class _Drop(logging.Filter):
    def __init__(self, starts: tuple):
        super().__init__()
        self.starts = starts

    def filter(self, record):
        return not str(record.msg).startswith(self.starts)


@contextlib.contextmanager
def quiet_tune_logs(quiet: bool):
    """While a sweep runs: drop Tune's resume hint, and when `quiet` (Tune at verbose=0) also
    the list of unfinished trials, the "Failed to fetch metrics" warning (the ResultGrid
    looking for the result files of trials that never started, e.g. after Ctrl-C) and the
    box Tune's newer output engine prints at the start even when silent (its older engine,
    RAY_AIR_NEW_OUTPUT=0, prints nothing at verbose=0). Errors are kept."""
    tune_log = logging.getLogger("ray.tune.tune")
    analysis = logging.getLogger("ray.tune.analysis.experiment_analysis")
    drop, level = _Drop(_HINT + (_REPEATS if quiet else ())), analysis.level
    engine = os.environ.get("RAY_AIR_NEW_OUTPUT")
    tune_log.addFilter(drop)
    if quiet:
        analysis.setLevel(logging.ERROR)
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        tune_log.removeFilter(drop)
        analysis.setLevel(level)
        if quiet:
            if engine is None:
                os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
            else:
                os.environ["RAY_AIR_NEW_OUTPUT"] = engine
