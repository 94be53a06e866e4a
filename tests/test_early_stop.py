"""Regime-aware early stopping (regimes.regime.stop_decision) on recorded trajectories.

The oracle is the classifier on the *whole* trajectory: a trial stopped at
epoch k must get, from its prefix 1..k, the label its full run gets. Real
trajectories come from the core on digits at ELRs in each regime; synthetic
ones cover shapes that must not be stopped (a slow late convergence, a loss
that leaves the chance level late, noisy plateaus).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from regimes import TrainConfig, train
from regimes import regime as R

C = 10
LN_C = math.log(C)


def first_stop(traj, stop=R.EarlyStop(), rules=R.RegimeRules()):
    """(epoch, label) where the trainable would stop this trajectory, or None. Never at the last epoch."""
    loss, acc, grad = (np.asarray(traj[k], float) for k in ("train_loss", "train_acc", "eff_grad_norm"))
    diverged = np.asarray(traj.get("diverged", np.zeros(loss.size, bool)), bool)
    for k in range(1, loss.size):
        c = R.stop_decision(loss[:k], acc[:k], grad[:k], C, diverged=bool(diverged[:k].any()),
                            epochs=np.arange(1, k + 1), rules=rules, stop=stop)
        if c is not None:
            return k, c.label
    return None


def full_label(traj, rules=R.RegimeRules()):
    return R.classify(traj["train_loss"], traj["train_acc"], traj["eff_grad_norm"], C,
                      diverged=bool(np.any(traj.get("diverged", False))), rules=rules).label


# --- synthetic trajectories ------------------------------------------------------
def synthetic(kind: str, n: int = 40, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    t = np.arange(1, n + 1, dtype=float)
    noise = lambda s: 1 + s * rng.standard_normal(n)
    if kind == "converge":               # exponential decay to ~1e-4
        loss = 2.0 * np.exp(-t / 2.0) * noise(0.1) + 1e-4
        acc = np.minimum(1.0, 0.5 + 0.5 * (1 - np.exp(-t / 3)))
        grad = 0.5 * np.exp(-t / 4)
    elif kind == "chaotic":              # flat at 0.4 with large epoch-to-epoch noise
        loss = 0.4 * noise(0.1)
        acc = 0.88 + 0.02 * rng.standard_normal(n)
        grad = 1.0 * noise(0.05)
    elif kind == "diverge":              # random guesser: chance accuracy, loss well above ln C
        loss = 5.5 * noise(0.1)
        acc = 0.1 + 0.01 * rng.standard_normal(n)
        grad = 3.0 * noise(0.05)
    elif kind == "late_converge":        # a long plateau at 0.3, then a fall to 0 after epoch 20
        loss = np.where(t < 20, 0.3 * noise(0.03), 0.3 * np.exp(-(t - 20) / 2.0) + 1e-4)
        acc = np.where(t < 20, 0.9, 1.0)
        grad = np.where(t < 20, 1.0, np.exp(-(t - 20) / 3.0))
    elif kind == "late_learner":         # at chance for 12 epochs, then learns (e.g. after a spike)
        loss = np.where(t < 12, 2.4 * noise(0.01), 2.4 * np.exp(-(t - 12) / 2.0) + 1e-3)
        acc = np.where(t < 12, 0.1, np.minimum(1.0, 0.1 + 0.15 * (t - 11)))
        grad = np.where(t < 12, 2.0, np.exp(-(t - 12) / 3.0))
    elif kind == "blow_up":              # trains, then NaN at epoch 9 (the core ends the run there)
        n = 9
        loss = np.r_[np.linspace(2.0, 1.0, 8), np.nan]
        acc = np.r_[np.linspace(0.3, 0.6, 8), np.nan]
        grad = np.r_[np.ones(8), np.nan]
        return {"train_loss": loss, "train_acc": acc, "eff_grad_norm": grad,
                "diverged": np.r_[np.zeros(8, bool), True]}
    else:
        raise ValueError(kind)
    return {"train_loss": loss, "train_acc": acc, "eff_grad_norm": grad}


# (shape, its label, the earliest epoch a stop is allowed, the latest a stop is expected; None: never)
SHAPES = [("converge", R.CONVERGENCE, 8, 24), ("diverge", R.DIVERGENCE, 8, 20),
          ("chaotic", R.CHAOTIC, None, None),            # chaotic stops are opt-in
          ("late_converge", R.CONVERGENCE, 21, 39),      # the plateau before epoch 20 must not stop it
          ("late_learner", R.CONVERGENCE, 13, 39)]       # at chance with loss ~ln C: not yet a divergence


@pytest.mark.parametrize("kind, expected, earliest, latest", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_stopped_label_equals_full_label(kind, expected, earliest, latest, seed):
    traj = synthetic(kind, seed=seed)
    assert full_label(traj) == expected                      # the oracle of the shape itself
    got = first_stop(traj)
    if earliest is None:
        assert got is None, f"{kind} stopped at {got}"
        return
    assert got is not None, f"{kind} was never decided"
    epoch, label = got
    assert label == expected
    prefix = {k: np.asarray(v)[:epoch] for k, v in traj.items()}
    assert full_label(prefix) == expected                    # what the report will say of the stored prefix
    assert earliest <= epoch <= latest


def test_blow_up_is_decided_at_once():
    traj = synthetic("blow_up")
    c = R.stop_decision(traj["train_loss"], traj["train_acc"], traj["eff_grad_norm"], C, diverged=True)
    assert c is not None and c.label == R.DIVERGENCE == full_label(traj)


def test_chaotic_stops_only_when_asked_and_after_its_window():
    traj = synthetic("chaotic", seed=3)
    stop = R.EarlyStop(window=6, min_epochs=10, labels=(R.CHAOTIC,))
    epoch, label = first_stop(traj, stop)
    assert label == R.CHAOTIC == full_label(traj) and epoch >= 10
    assert first_stop(synthetic("converge"), stop) is None   # convergence not in labels: never stopped


def test_late_learner_at_chance_is_not_stopped_while_its_loss_falls():
    """At chance accuracy but with the loss already falling below the ln C level: not a divergence."""
    traj = synthetic("diverge", seed=0)
    traj["train_loss"] = np.linspace(LN_C, 0.5 * LN_C, len(traj["train_loss"]))
    assert first_stop(traj) is None


def test_window_must_hold_pointwise():
    """One epoch above the convergence threshold inside the window blocks the decision."""
    traj = synthetic("converge", seed=0)
    k = first_stop(traj)[0]
    bumped = {key: np.array(v, float) for key, v in traj.items()}
    bumped["train_loss"][k - 2] = 0.05
    got = first_stop(bumped)
    assert got is None or got[0] >= k - 2 + R.EarlyStop().convergence_window


# The core on digits (convnet_si width 8, batch 16, sphere, ELR 3.85e-3, seed 0), epochs 1..20 as
# recorded: at 0 (<= 0.01) from epoch 6, 4e-4..1.2e-3 at epochs 8-13, then thrown out of the
# minimum by SGD noise at epoch 14; at epoch 20 its last 5 epochs (0.008..0.04) fall, but not
# significantly: the classifier says chaotic equilibrium (not convergence).
METASTABLE = {
    "train_loss": [0.0732, 0.184, 0.0935, 0.0227, 0.0474, 0.00844, 0.00401, 0.00104, 0.00124, 0.000686,
                   0.000575, 0.000402, 0.000379, 0.0293, 0.0559, 0.0258, 0.0423, 0.00823, 0.00834, 0.0127],
    "train_acc": [0.977, 0.946, 0.975, 0.993, 0.982, 0.9972, 0.9993, 1.0, 0.9993, 1.0,
                  1.0, 1.0, 1.0, 0.993, 0.9826, 0.9944, 0.9833, 0.9993, 0.9979, 0.9965],
    "eff_grad_norm": [25.6, 11.4, 14.0, 9.67, 8.41, 3.59, 1.96, 1.07, 0.323, 0.244,
                      0.493, 0.222, 0.177, 2.82, 9.02, 9.13, 5.04, 5.06, 5.84, 2.46]}


def test_windows_start_after_the_warm_up():
    """A random guesser is decided 4 measured epochs after `after_epoch`, not before; with the
    full-train pass every 2nd epoch the window spans 8 epochs."""
    traj = synthetic("diverge", seed=2)
    loss, acc, grad = traj["train_loss"], traj["train_acc"], traj["eff_grad_norm"]

    def first(after, every=1):
        l, a = loss.copy(), acc.copy()
        skip = (np.arange(1, l.size + 1) % every) != 0
        l[skip], a[skip] = np.nan, np.nan
        for k in range(1, l.size):
            if R.stop_decision(l[:k], a[:k], grad[:k], C, stop=R.EarlyStop(min_epochs=1), after_epoch=after):
                return k
    base = first(0)
    assert first(10) >= 14 > base
    assert first(10, every=2) >= 18


def test_a_metastable_minimum_is_not_stopped_as_converged():
    assert full_label(METASTABLE) in (R.CHAOTIC, R.UNRESOLVED)
    assert first_stop(METASTABLE) is None                      # the default convergence window waits
    # with the general 4-epoch window it would have been stopped as converged, wrongly
    short = first_stop(METASTABLE, R.EarlyStop(converge_window=4))
    assert short is not None and short[1] == R.CONVERGENCE


def test_divergence_tolerates_accuracy_jitter_but_not_learning():
    """A random guesser's full-train accuracy jitters by several points: single epochs at 0.19
    do not block the stop; an average clearly above chance does."""
    traj = synthetic("diverge", seed=1)
    traj["train_acc"] = np.where(np.arange(traj["train_acc"].size) % 3 == 0, 0.19, 0.09)
    got = first_stop(traj)
    assert got is not None and got[1] == R.DIVERGENCE == full_label(traj)
    # at chance for 32 epochs, then learning slowly: 0.19 on every other epoch, then on every
    # epoch. The classifier's longer window still averages near chance (divergence), but the
    # last 4 epochs average 0.19 > chance + chance_margin: not stopped there
    n = 37
    acc = np.full(n, 0.1)
    acc[32:] = 0.19                      # the classifier's window (10 epochs) averages 0.145
    loss, grad = traj["train_loss"][:n].copy(), traj["eff_grad_norm"][:n]
    loss[-4:] = 5.5                      # flat: only the accuracy decides below
    assert R.classify(loss, acc, grad, C).label == R.DIVERGENCE
    assert R.stop_decision(loss, acc, grad, C, stop=R.EarlyStop(min_epochs=n)) is None
    acc[-4:] = 0.1                       # the same net a few epochs earlier: decided
    assert R.stop_decision(loss, acc, grad, C, stop=R.EarlyStop(min_epochs=n)) is not None
    # every 4th epoch clearly above chance (0.25 >= chance + above_chance_margin): the window
    # averages stay near chance, so the classifier says divergence, but no 4-epoch window is clean
    spiking = dict(traj, train_acc=np.where(np.arange(traj["train_acc"].size) % 4 == 0, 0.25, 0.07))
    assert full_label(spiking) == R.DIVERGENCE
    assert first_stop(spiking) is None


# --- real trajectories: the core on digits -----------------------------------------------
REAL = {"dataset": "digits", "model": "convnet_si", "width": 8, "mode": "sphere", "batch_size": 16,
        "augment": False, "epochs": 20, "device": "cpu", "seed": 0}
REAL_ELRS = {3e-4: R.CONVERGENCE, 8e-3: R.CHAOTIC, 1e-1: R.DIVERGENCE}


@pytest.fixture(scope="module")
def real_trajectories():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for elr in REAL_ELRS:
            recs = list(train(TrainConfig.from_dict({**REAL, "elr": elr})))
            out[elr] = {k: np.array([r[k] for r in recs], dtype=float if k != "diverged" else bool)
                        for k in ("train_loss", "train_acc", "eff_grad_norm", "diverged")}
        return out
    finally:
        torch.set_num_threads(threads)


def test_real_digits_trajectories_stop_with_their_full_label(real_trajectories):
    stopped = {}
    for elr, traj in real_trajectories.items():
        label = full_label(traj)
        assert label == REAL_ELRS[elr], f"elr {elr}: {label}"
        got = first_stop(traj)
        if got is not None:
            epoch, decided = got
            assert decided == label
            assert full_label({k: v[:epoch] for k, v in traj.items()}) == label
            stopped[elr] = epoch
    # convergence and divergence are decided early; the chaotic trial runs to the end
    assert set(stopped) == {3e-4, 1e-1}
    assert all(e <= 0.75 * REAL["epochs"] for e in stopped.values()), stopped


def test_convergence_needs_every_epoch_of_the_window_at_zero():
    """Loss alternating 1e-3 / 1.8e-2: the window *mean* is under converge_loss (the classifier
    says convergence) but half the epochs are not: never decided."""
    n = 30
    t = np.arange(1, n + 1)
    traj = {"train_loss": np.where(t % 2 == 0, 1e-3, 1.8e-2), "train_acc": np.full(n, 0.999),
            "eff_grad_norm": np.full(n, 0.05)}
    assert R.classify(traj["train_loss"][:12], traj["train_acc"][:12], traj["eff_grad_norm"][:12],
                      C).label == R.CONVERGENCE
    assert first_stop(traj) is None


def test_chaotic_window_sets_the_chaotic_labels_own_window():
    traj = synthetic("chaotic", seed=3)
    labels = (R.CONVERGENCE, R.DIVERGENCE, R.CHAOTIC)
    short = first_stop(traj, R.EarlyStop(window=4, min_epochs=4, labels=labels))
    long = first_stop(traj, R.EarlyStop(window=4, chaotic_window=10, min_epochs=4, labels=labels))
    assert short[1] == long[1] == R.CHAOTIC == full_label(traj)
    assert long[0] >= short[0] + 6 and long[0] >= 10      # 10 measured epochs of evidence, not 4


def test_a_strict_diverge_stop_acc_keeps_an_edge_of_divergence_run_going():
    """Recorded (benchmarks/boundary_search.py's grid: digits, width 8, batch 16, ELR 0.026, seed 0):
    the accuracy hovers at 0.1-0.17 for 15 epochs, then reaches 0.2-0.32, and the full run ends
    chaotic (loss above ln C, accuracy above chance + 0.1). With the default accuracy bound (each
    epoch below chance + 0.1) divergence stops it at epoch 8; with every epoch below chance + 0.05
    it is never stopped as divergence."""
    traj = {"train_loss": [3.948, 3.723, 4.236, 4.554, 4.006, 4.676, 4.207, 4.14, 5.429, 3.736, 4.245, 4.325,
                           3.894, 4.003, 4.422, 2.547, 4.017, 3.774, 3.169, 4.684],
            "train_acc": [0.098, 0.112, 0.046, 0.094, 0.147, 0.167, 0.096, 0.168, 0.066, 0.127, 0.168, 0.096,
                          0.156, 0.118, 0.117, 0.324, 0.186, 0.196, 0.208, 0.154],
            "eff_grad_norm": [71.2, 61.49, 49.92, 67.31, 49.88, 49.52, 56.9, 58.82, 58.97, 65.68, 57.87, 56.58,
                              55.34, 53.02, 54.35, 47.29, 50.16, 49.88, 44.52, 49.89]}
    assert full_label(traj) == R.CHAOTIC
    assert first_stop(traj) == (8, R.DIVERGENCE)
    strict = first_stop(traj, R.EarlyStop(diverge_stop_acc=0.05))
    assert strict is None or strict[1] != R.DIVERGENCE, strict


def test_the_spec_passes_the_early_stop_knobs():
    from regimes.study import spec

    s = spec.from_dict({"name": "x", "base": {"dataset": "digits", "epochs": 20},
                        "search": {"kind": "grid", "space": {"elr": [0.01]}},
                        "early_stop": {"chaotic_window": 6, "diverge_stop_acc": 0.05, "converge_window": 7,
                                       "labels": ["convergence", "divergence", "chaotic_equilibrium"]}})
    e = s.early_stop
    assert (e.chaotic_window, e.diverge_stop_acc, e.convergence_window, e.window_of(R.CHAOTIC)) == (6, 0.05, 7, 6)
