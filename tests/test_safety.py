"""Resuming a study folder from someone else runs nothing of theirs through our code.

Each check plants a pickle whose loading would create a marker file
(`pathlib.Path.touch`) where our code reads a study folder's files: a trial
checkpoint (Trainer.restore), the boundary searcher's state
(BoundarySearch.restore) and Tune's snapshot files (the torn-snapshot check in
launch.py). The file must be refused or judged without being run: the marker
never appears. Then a genuinely truncated pickle must still be seen as torn.
No Ray is started.
"""
from __future__ import annotations

import json
import math
import pathlib
import pickle

import pytest
import torch

from regimes import TrainConfig, Trainer
from regimes.errors import ConfigError
from regimes.study import spec
from regimes.study.storage import StudyStore

TINY = dict(dataset="digits", model="convnet_si", width=4, subset=128, batch_size=32, epochs=2,
            augment=False, device="cpu")
SESSION_OLD, SESSION_NEW = "2026-01-01_10-00-00", "2026-01-01_11-00-00"


class Planted:
    """Unpickling this touches `marker` (stands for any code a pickle can run)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def planted_bytes(marker: pathlib.Path, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    data = pickle.dumps({"state": Planted(marker)}, protocol=protocol)
    assert data[:1] == b"\x80"
    return data


def test_the_planted_pickle_does_run_when_unpickled(tmp_path):
    """The marker is a real witness: plain unpickling creates it."""
    marker = tmp_path / "ran"
    pickle.loads(planted_bytes(marker))
    assert marker.exists()


# --- (a) trial checkpoints ------------------------------------------------------
@pytest.fixture(scope="module")
def trainer():
    return Trainer(TrainConfig(**TINY))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")   # torch, on the raw pickle
@pytest.mark.parametrize("how", ["raw pickle", "torch.save"])
def test_a_planted_checkpoint_is_refused_and_runs_nothing(trainer, tmp_path, how):
    marker, ckpt = tmp_path / "ran", tmp_path / "ckpt.pt"
    if how == "raw pickle":
        ckpt.write_bytes(planted_bytes(marker))
    else:   # the zip format torch.save writes, with the planted object inside its data.pkl
        sd = trainer.state_dict()
        sd["techniques"] = {"x": Planted(marker)}
        torch.save(sd, ckpt)
    with pytest.raises(ConfigError, match="checkpoint.*not loaded"):
        trainer.restore(ckpt)
    assert not marker.exists()


def test_a_genuine_checkpoint_still_loads_and_so_does_one_with_list_valued_config(tmp_path):
    """Our format is weights-only loadable; a checkpoint whose list-valued config fields are
    lists (as older ones stored them) loads too."""
    t = Trainer(TrainConfig(**TINY))
    next(t.run())
    sd = t.state_dict()
    assert isinstance(sd["config"]["milestones"], tuple)
    torch.save(sd, tmp_path / "now.pt")
    sd_old = {**sd, "config": {k: list(v) if isinstance(v, tuple) else v for k, v in sd["config"].items()}}
    torch.save(sd_old, tmp_path / "old.pt")
    for name in ("now.pt", "old.pt"):
        fresh = Trainer(TrainConfig(**TINY))
        fresh.restore(tmp_path / name)
        assert (fresh.epoch, fresh.step) == (t.epoch, t.step)
        assert all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(),
                                                       t.model.state_dict().values()))


# --- (b) the boundary searcher's state -----------------------------------------
def _searcher():
    from regimes.study.boundary import BoundarySearch
    return BoundarySearch("elr", 1e-4, 1.0, 1.19, budget=50, probes_per_round=2, initial=5,
                          lines=[{"seed": 0, "wd": 5e-4}, {"seed": 1, "wd": 0.1 + 0.2}])


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_planted_searcher_state_is_refused_and_runs_nothing(tmp_path, protocol):
    marker, state = tmp_path / "ran", tmp_path / "searcher-state-x.pkl"
    state.write_bytes(planted_bytes(marker, protocol))
    s = _searcher()
    with pytest.raises(ConfigError, match="not a boundary search state.*pickle"):
        s.restore(str(state))
    assert not marker.exists()
    assert s.suggested == 0     # nothing of the file was taken


def test_the_searcher_state_is_json_and_round_trips_exactly(tmp_path):
    s = _searcher()
    cfgs = [(f"t{k}", s.suggest(f"t{k}")) for k in range(7)]
    for tid, cfg in cfgs[:5]:
        s.on_trial_complete(tid, {"regime": "convergence" if cfg["elr"] < 1e-2 else "divergence"})
    s.on_trial_complete(cfgs[5][0], error=True)
    s.lines[1].point["wd"] = math.nan      # NaN survives Python's json too
    path = tmp_path / "searcher-state-x.pkl"
    s.save(str(path))
    assert path.read_bytes()[:1] != b"\x80"
    json.loads(path.read_text())           # plain JSON
    fresh = _searcher()
    fresh.restore(str(path))
    assert fresh.suggested == s.suggested and fresh.trials == s.trials
    for a, b in zip(fresh.lines, s.lines):
        assert a.labels == b.labels and a.pending == b.pending and a.queue == b.queue
        assert json.dumps(a.point) == json.dumps(b.point)
        assert all(x.hex() == y.hex() for x, y in zip(sorted(a.labels), sorted(b.labels)))  # bit for bit
    assert json.dumps(fresh.suggest("next")) == json.dumps(s.suggest("next"))


# --- (c, d) Tune's snapshot files: judged, never run ---------------------------
def _optuna_study():
    return spec.from_dict({"name": "t", "base": dict(TINY),
                           "search": {"kind": "optuna", "metric": "test_loss", "mode": "min",
                                      "space": {"elr": {"loguniform": [1e-3, 1.0]}}}})


def _snapshot(folder: pathlib.Path, session: str, experiment_state: bytes) -> None:
    """One session's snapshot files of an Optuna study, in the names Tune gives them."""
    (folder / f"experiment_state-{session}.json").write_bytes(experiment_state)
    (folder / f"search_gen_state-{session}.json").write_bytes(pickle.dumps({"counter": 1}))
    (folder / f"searcher-state-{session}.pkl").write_bytes(pickle.dumps({"state": [1, 2, 3]}))


def _layout(tmp_path):
    from regimes.study.launch import _set_aside_damaged_tune_state
    s = _optuna_study()
    store = StudyStore(str(tmp_path), s.name)
    folder = tmp_path / s.name
    folder.mkdir()
    return s, store, folder, _set_aside_damaged_tune_state


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_planted_tune_snapshot_is_judged_without_running_it(tmp_path, protocol):
    s, store, folder, set_aside = _layout(tmp_path)
    marker = tmp_path / "ran"
    _snapshot(folder, SESSION_OLD, b'{"trials": []}')
    _snapshot(folder, SESSION_NEW, planted_bytes(marker, protocol))
    set_aside(s, store)
    assert not marker.exists()
    # a complete pickle is a complete file: the newest session stays where Tune finds it
    assert (folder / f"experiment_state-{SESSION_NEW}.json").exists()
    assert not (folder / f".damaged-{SESSION_NEW}").exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_torn_planted_snapshot_is_set_aside_without_running_it(tmp_path, protocol):
    s, store, folder, set_aside = _layout(tmp_path)
    marker = tmp_path / "ran"
    data = planted_bytes(marker, protocol)   # protocol 2 has no frames: unpickling would run it before the cut
    _snapshot(folder, SESSION_OLD, b'{"trials": []}')
    _snapshot(folder, SESSION_NEW, data[:-1])
    set_aside(s, store)
    assert not marker.exists()
    assert (folder / f".damaged-{SESSION_NEW}" / f"experiment_state-{SESSION_NEW}.json").exists()


@pytest.mark.parametrize("cut", ["half", "all but STOP", "one byte", "trailing bytes"])
def test_a_truncated_pickle_is_still_seen_as_torn(tmp_path, cut):
    s, store, folder, set_aside = _layout(tmp_path)
    good = pickle.dumps({"trials": [{"id": k, "config": {"elr": 10.0 ** -k}} for k in range(50)]})
    bad = {"half": good[:len(good) // 2], "all but STOP": good[:-1], "one byte": good[:1],
           "trailing bytes": good + b"\x80"}[cut]
    _snapshot(folder, SESSION_OLD, good)
    _snapshot(folder, SESSION_NEW, bad)
    set_aside(s, store)
    assert sorted(p.name for p in folder.glob("*state-*")) == [
        f"experiment_state-{SESSION_OLD}.json", f"search_gen_state-{SESSION_OLD}.json",
        f"searcher-state-{SESSION_OLD}.pkl"]
    assert (folder / f".damaged-{SESSION_NEW}" / f"experiment_state-{SESSION_NEW}.json").exists()
