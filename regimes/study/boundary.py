"""Boundary search: bracket and refine every regime boundary along one axis.

    search:
      kind: boundary
      axis: elr                 # searched in log space
      range: [1.0e-4, 1.0e-1]
      resolution: 1.19          # a boundary is known when two trials within this factor bracket it
      budget: 60                # trials at most, over all lines
      probes_per_round: 2       # trials of one line in flight at a time
      initial: 5                # log-spaced first scan of each line
      space: {wd: [0.0, 5.0e-4], seed: [0, 1]}

A *line* is one setting of the other axes (the grid product of `space`), seed
included: seeds are replicates, each searched on its own, so every seed gets
its own brackets and the report pools them per boundary with their spread over
seeds exactly as for a grid (regimes.regime.estimate_boundaries on each seed's
sorted trials). Folding seeds into one label per probe would need every seed at
every probe and a vote; replicates cost the same and keep the seed spread.

Per line: a first scan of `initial` log-spaced values over `range`, then
parallel bisection. Each finished trial is labelled with the trajectory
classifier (regimes.regime.classify, computed by the trainable on the trial's
whole trajectory and reported as `regime`). Two neighbouring finished trials
with different labels bracket a boundary; while a bracket is wider than
`resolution`, the widest open gap inside it (pending trials split brackets too)
gets a probe at its geometric midpoint, up to `probes_per_round` probes of the
line in flight at once, so a cluster stays busy: with several lines, or
several boundaries per line, those probes run side by side. `unresolved`
counts as a label of its own here (a band where trials need more epochs), so
its edges are refined too; the report steps over it.

The search ends when every bracket of every line is within `resolution` (or
the budget is spent). Every probe is an ordinary trial: the ParquetSink writes
it like any other. The searcher state (lines, probes, labels) is saved as JSON
with Tune's experiment snapshot (save/restore; never a pickle, so restoring it
runs nothing from the file), so `Tuner.restore` resumes the search;
`boundary_search.json` in the study folder lists each line's brackets.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from regimes.errors import ConfigError
from regimes.regime import UNRESOLVED

from .storage import BOUNDARIES
from .trainable import ENDED_KEY, MEMBERS_KEY, REGIME_KEY   # the labels the trainable reports

ERRORED = "errored"            # a probe whose trial failed: splits gaps, brackets nothing
SUMMARY_FILE = BOUNDARIES
STATE_FORMAT = "regimes-boundary-search-1"   # the searcher state file (JSON), see BoundarySearch.save


def log_grid(lo: float, hi: float, n: int) -> list[float]:
    """n values from lo to hi, evenly spaced in log."""
    if n == 1:
        return [math.sqrt(lo * hi)]
    step = math.log(hi / lo) / (n - 1)
    return [_tidy(lo * math.exp(i * step)) for i in range(n)]


def _tidy(x: float) -> float:
    return float(f"{x:.6g}")


def ended_regimes(result: dict) -> dict[int, str]:
    """member -> regime of the members a packed trial's report says have ended. Tune hands a
    searcher the report flattened (`ended/3/regime`); the nested form is read too."""
    nested = result.get(ENDED_KEY)
    if isinstance(nested, dict):
        return {int(k): str((r or {}).get(REGIME_KEY) or UNRESOLVED) for k, r in nested.items()}
    prefix, suffix = f"{ENDED_KEY}/", f"/{REGIME_KEY}"
    return {int(key[len(prefix):-len(suffix)]): str(v or UNRESOLVED) for key, v in result.items()
            if key.startswith(prefix) and key.endswith(suffix) and key[len(prefix):-len(suffix)].isdigit()}


@dataclass
class Line:
    """One boundary search: a setting of the other axes (seed included)."""

    point: dict
    labels: dict = field(default_factory=dict)      # axis value -> label (finished probes)
    pending: set = field(default_factory=set)       # axis values in flight
    queue: list = field(default_factory=list)       # first-scan values not yet handed out

    def brackets(self) -> list[tuple[float, float, str, str]]:
        """(a, b, label_a, label_b) of neighbouring finished probes with different labels."""
        xs = sorted(x for x, lab in self.labels.items() if lab != ERRORED)
        return [(a, b, self.labels[a], self.labels[b]) for a, b in zip(xs, xs[1:])
                if self.labels[a] != self.labels[b]]

    def next_probe(self, resolution: float) -> float | None:
        """Geometric midpoint of the widest gap, inside an open bracket, wider than `resolution`."""
        splits = sorted(set(self.pending) | {x for x, lab in self.labels.items() if lab == ERRORED})
        best, width = None, math.log(resolution)
        for a, b, _, _ in self.brackets():
            cuts = [a] + [x for x in splits if a < x < b] + [b]
            for u, v in zip(cuts, cuts[1:]):
                w = math.log(v / u)
                if w > width + 1e-12:
                    best, width = (u, v), w
        if best is None:
            return None
        x = _tidy(math.sqrt(best[0] * best[1]))
        return x if best[0] < x < best[1] else None

    def done(self, resolution: float) -> bool:
        return not self.queue and not self.pending and self.next_probe(resolution) is None

    def summary(self, resolution: float) -> dict:
        return {"point": self.point, "probes": len(self.labels) + len(self.pending),
                "labels": {f"{x:.6g}": lab for x, lab in sorted(self.labels.items())},
                "brackets": [{"boundary": f"{la}->{lb}", "lo": a, "hi": b, "ratio": b / a,
                              "known": b / a <= resolution * (1 + 1e-9)}
                             for a, b, la, lb in self.brackets()]}


class BoundarySearch(Searcher):
    """Ray Tune searcher for `kind: boundary` studies (see the module docstring)."""

    def __init__(self, axis: str, lo: float, hi: float, resolution: float, budget: int,
                 probes_per_round: int, initial: int, lines: list[dict],
                 summary_dir: str | os.PathLike | None = None, on_summary=None, store=None,
                 pack: int = 1, pack_groups: list[list[int]] | None = None):
        super().__init__(metric=None, mode=None)
        self.axis, self.lo, self.hi = axis, float(lo), float(hi)
        self.resolution, self.budget = float(resolution), int(budget)
        self.probes_per_round, self.initial = int(probes_per_round), int(initial)
        self.lines = [Line(dict(p), queue=log_grid(self.lo, self.hi, self.initial)) for p in lines]
        self.trials: dict[str, tuple[int, float]] = {}     # Tune trial id -> (line, axis value)
        # packed: up to `pack` probes per Tune trial, from lines of one group (lines that differ
        # only in fields a pack's members may differ in: regimes.core.packable)
        self.pack = int(pack)
        self.pack_groups = pack_groups or [list(range(len(self.lines)))]
        self.packs: dict[str, list[tuple[int, float]]] = {}   # packed Tune trial id -> its probes
        self.suggested = 0
        self.summary_dir = None if summary_dir is None else str(summary_dir)
        self.on_summary = on_summary                        # called after the summary file is written
        # a study's searcher writes into its store's folder: the store unpickles as the one the
        # study runs from now (storage.StudyStore), so a copied or moved study follows along
        self.store = store

    @classmethod
    def from_study(cls, study, summary_dir=None, on_summary=None, store=None) -> "BoundarySearch":
        lo, hi = study.axis_range
        lines = list(study.grid_points())
        groups = None
        if study.pack > 1:
            index = {repr(sorted(p.items())): i for i, p in enumerate(lines)}
            groups = [[index[repr(sorted(p.items()))] for p in g] for g in study.pack_groups(lines)]
        return cls(study.axis, lo, hi, study.resolution, study.budget, study.probes_per_round,
                   study.initial, lines, summary_dir, on_summary, store, pack=study.pack, pack_groups=groups)

    # --- Tune's Searcher interface ------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True        # nothing to optimise: labels, not a metric, drive the search

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.suggested >= self.budget:
            return Searcher.FINISHED if not self._in_flight() else None
        if self.pack > 1:
            return self._suggest_pack(trial_id)
        picked = self._pick(range(len(self.lines)))
        if picked is not None:
            i, x = picked
            self.trials[trial_id] = (i, x)
            return {**self.lines[i].point, self.axis: x}
        if all(line.done(self.resolution) for line in self.lines):
            return Searcher.FINISHED
        return None        # waiting for trials in flight to open or close brackets

    def _pick(self, candidates) -> tuple[int, float] | None:
        """The next probe among the lines `candidates`: first scans before refinements; among
        lines, the one with fewest trials in flight. Marks it pending."""
        order = sorted(candidates, key=lambda i: (not self.lines[i].queue, len(self.lines[i].pending), i))
        for i in order:
            line = self.lines[i]
            if line.queue:
                x = line.queue.pop(0)
            elif len(line.pending) < self.probes_per_round:
                x = line.next_probe(self.resolution)
                if x is None:
                    continue
            else:
                continue
            line.pending.add(x)
            self.suggested += 1
            return i, x
        return None

    def _suggest_pack(self, trial_id: str) -> dict | str | None:
        """Up to `pack` probes of one group of lines as one packed trial."""
        for group in self.pack_groups:
            probes = []
            while len(probes) < self.pack and self.suggested < self.budget:
                picked = self._pick(group)
                if picked is None:
                    break
                probes.append(picked)
            if probes:
                self.packs[trial_id] = probes
                return {MEMBERS_KEY: [{**self.lines[i].point, self.axis: x} for i, x in probes]}
        if all(line.done(self.resolution) for line in self.lines):
            return Searcher.FINISHED
        return None

    def _label(self, i: int, x: float, label: str) -> bool:
        line = self.lines[i]
        if x not in line.pending:
            return False   # already told (a resumed trial re-reporting its end)
        line.pending.discard(x)
        line.labels[x] = label
        return True

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """A packed trial's members are labelled as they end, before the pack does."""
        if trial_id in self.packs and result:
            ended = ended_regimes(result)
            told = [self._label(i, x, ended[k]) for k, (i, x) in enumerate(self.packs[trial_id]) if k in ended]
            if any(told):
                self.write_summary()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.packs:
            ended = {} if error or result is None else ended_regimes(result)
            for k, (i, x) in enumerate(self.packs[trial_id]):
                self._label(i, x, ended.get(k, ERRORED))
            self.write_summary()
            return
        if trial_id not in self.trials:
            return
        i, x = self.trials[trial_id]
        label = ERRORED if error or result is None else str(result.get(REGIME_KEY) or UNRESOLVED)
        if self._label(i, x, label):
            self.write_summary()

    # --- state ---------------------------------------------------------------
    def _in_flight(self) -> bool:
        return any(line.pending or line.queue for line in self.lines)

    def get_state(self) -> dict[str, Any]:
        """The search state as plain JSON data (floats round-trip exactly through json)."""
        return {"format": STATE_FORMAT,
                "lines": [{"point": line.point, "labels": sorted(line.labels.items()),
                           "pending": sorted(line.pending), "queue": list(line.queue)} for line in self.lines],
                "trials": {tid: [i, x] for tid, (i, x) in self.trials.items()},
                "packs": {tid: [[i, x] for i, x in probes] for tid, probes in self.packs.items()},
                "suggested": self.suggested}

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a boundary search state (format {STATE_FORMAT})")
        self.lines = [Line(dict(d["point"]), labels={float(x): str(lab) for x, lab in d["labels"]},
                           pending={float(x) for x in d["pending"]}, queue=[float(x) for x in d["queue"]])
                      for d in state["lines"]]
        self.trials = {str(tid): (int(i), float(x)) for tid, (i, x) in state["trials"].items()}
        self.packs = {str(tid): [(int(i), float(x)) for i, x in probes]
                      for tid, probes in state.get("packs", {}).items()}
        self.suggested = int(state["suggested"])

    def save(self, checkpoint_path: str) -> None:
        # JSON, never a pickle: resuming reads it back without running anything in the file
        with open(checkpoint_path, "w") as fh:
            json.dump(self.get_state(), fh)
        # Tune saves into its driver staging copy of the experiment folder and uploads that
        # folder to the storage, over our file: keep a current summary in it too (after a
        # restore the staging copy holds the summary as it was when the study was resumed).
        self._write_summary_to(Path(checkpoint_path).parent)

    def restore(self, checkpoint_path: str) -> None:
        """Read the state `save` wrote. Only JSON is read: a pickle here (the format before
        the state became JSON, or a planted file) is refused, not unpickled."""
        data = Path(checkpoint_path).read_bytes()
        try:
            self.set_state(json.loads(data))
        except (ValueError, TypeError, KeyError, AttributeError):   # bad JSON (or not text) is a ValueError
            old = " (a pickle: written before the searcher state became JSON)" if data[:1] == b"\x80" else ""
            raise ConfigError(checkpoint_path, f"is not a boundary search state{old}; it is not loaded, "
                              "since unpickling it could run code; rerun with --restart to start "
                              "the study over") from None

    # --- results ---------------------------------------------------------------
    def brackets(self) -> list[dict]:
        """Every bracket of every line: the line's point, boundary name, lo, hi, ratio, known."""
        return [{**line.point, **b} for line in self.lines for b in line.summary(self.resolution)["brackets"]]

    def summary(self) -> dict:
        return {"axis": self.axis, "range": [self.lo, self.hi], "resolution": self.resolution,
                "budget": self.budget, "trials": self.suggested,
                "finished": all(line.done(self.resolution) for line in self.lines),
                "lines": [line.summary(self.resolution) for line in self.lines]}

    def write_summary(self) -> None:
        if self.store is not None:
            self._write_summary_to(self.store.local_dir)
            self.store.push(SUMMARY_FILE)
            return
        if self.summary_dir is None:
            return
        self._write_summary_to(Path(self.summary_dir))
        if self.on_summary is not None:
            self.on_summary(SUMMARY_FILE)

    def _write_summary_to(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{SUMMARY_FILE}.tmp"
        tmp.write_text(json.dumps(self.summary(), indent=1))
        os.replace(tmp, folder / SUMMARY_FILE)
