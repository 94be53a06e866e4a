"""Analysis layer: load a results folder, label trials, boundaries, figures, `regimes report`,
and the two notebooks. Fixture studies are written here following the results layout
(epochs/trial_id=<id>/data.parquet + trials.parquet), with trajectories whose regime
is known by construction."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from regimes import regime as R
from regimes.core.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
C = 10
LN_C = math.log(C)
ELRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]


# ----------------------------------------------------------------- fixtures
def trajectory(regime: str, epochs: int, rng) -> dict[str, np.ndarray]:
    t = np.arange(1, epochs + 1, dtype=float)
    eps = lambda s: s * rng.standard_normal(epochs)
    if regime == R.CONVERGENCE:
        loss = LN_C * np.exp(-t / 3.0)
        acc = 1 - 0.9 * np.exp(-t / 3.0)
        grad = 5.0 * np.exp(-t / 4.0)
        test = 0.9 - 0.8 * np.exp(-t / 3.0)
    elif regime == R.CHAOTIC:
        loss = 0.4 + (LN_C - 0.4) * np.exp(-t / 3.0) + eps(0.01)
        acc = 0.88 - 0.78 * np.exp(-t / 3.0)
        grad = 2.0 + np.exp(-t / 3.0) + eps(0.05)
        test = 0.8 - 0.7 * np.exp(-t / 3.0)
    elif regime == R.DIVERGENCE:
        loss = LN_C + 0.1 + eps(0.02)
        acc = 0.1 + eps(0.005)
        grad = 9.0 + eps(0.3)
        test = 0.1 + eps(0.005)
    else:
        raise ValueError(regime)
    return {"train_loss": loss, "train_acc": acc, "eff_grad_norm": grad, "test_acc": test,
            "test_loss": loss * 1.1, "angular_update": 0.01 + 0.0 * t}


def write_study(root: Path, trials: list[dict], *, epochs=24, name="fixture", drop=(), nan_trial=None,
                with_trials_table=True, train_eval_every=1, seed=0):
    """Write a results folder. Each trial dict: config overrides + 'regime' (the truth)."""
    rng = np.random.default_rng(seed)
    rows_trials = []
    root.mkdir(parents=True, exist_ok=True)
    for k, spec in enumerate(trials):
        spec = dict(spec)
        truth = spec.pop("regime")
        cfg = TrainConfig.from_dict({"dataset": "digits", "epochs": epochs, **spec}).to_dict()
        # list fields as results.py stores them (their text)
        cfg = {f: str(v) if isinstance(v, list) else v for f, v in cfg.items()}
        tid = f"t{k:03d}"
        tr = trajectory(truth, epochs, rng)
        n = epochs
        diverged = np.zeros(n, dtype=bool)
        if tid == nan_trial:      # blows up at epoch 10: last record NaN, run ends
            n = 10
            tr = {m: v[:n].copy() for m, v in tr.items()}
            for m in tr:
                tr[m][-1] = np.nan
            diverged = np.zeros(n, dtype=bool)
            diverged[-1] = True
        if train_eval_every > 1:
            skip = (np.arange(1, n + 1) % train_eval_every != 0)
            skip[-1] = False
            tr["train_loss"][skip] = np.nan
            tr["train_acc"][skip] = np.nan
        rows = []
        for e in range(n):
            row = {"study": name, "epoch": e + 1, "step": (e + 1) * 10, "schema_version": 1}
            for f, v in cfg.items():
                row[f"cfg_{f}" if f in ("elr", "lr") else f] = v
            rec = {m: float(v[e]) for m, v in tr.items() if m not in drop}
            rec.update(si_norm=1.0, elr=cfg["elr"], lr=cfg["elr"], time_s=0.1 * e, samples_per_s=1e4,
                       num_classes=C, diverged=bool(diverged[e]))
            row.update(rec)
            rows.append(row)
        folder = root / "epochs" / f"trial_id={tid}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / "data.parquet")
        last = rows[-1]
        status = "diverged" if last["diverged"] else "completed"
        rows_trials.append({"study": name, "trial_id": tid, **cfg,
                            **{f"final_{m}": last[m] for m in rec},
                            "epochs_done": n, "status": status, "diverged": last["diverged"],
                            "git_commit": "test", "truth": truth})
    if with_trials_table:
        pq.write_table(pa.Table.from_pylist(rows_trials), root / "trials.parquet")
    return pd.DataFrame(rows_trials)


def true_regime(elr: float, momentum: float) -> str:
    b1 = 2e-3 if momentum == 0 else 5e-4      # momentum moves the chaotic band left
    b2 = 0.2 if momentum == 0 else 0.05
    return R.CONVERGENCE if elr < b1 else (R.CHAOTIC if elr < b2 else R.DIVERGENCE)


def grid_trials(momenta=(0.0, 0.9), seeds=(0, 1), elrs=ELRS, disagree=True):
    out = []
    for m in momenta:
        for s in seeds:
            for e in elrs:
                lab = true_regime(e, m)
                # one seed lands on the other side of the first boundary at one grid point
                if disagree and s == 1 and m == 0.0 and e == 3e-3:
                    lab = R.CONVERGENCE
                out.append({"elr": e, "momentum": m, "seed": s, "regime": lab})
    return out


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("results") / "grid"
    truth = write_study(root, grid_trials(), nan_trial="t008")
    return root, truth


# ----------------------------------------------------------------- load / classify
def test_load_discovers_axes_and_reads_epochs(grid_study):
    from regimes.analysis import load_study

    root, truth = grid_study
    st = load_study(root)
    assert st.axes == ["elr", "momentum"] and st.main_axis == "elr"
    assert st.seeds == [0, 1]
    assert len(st.trials) == len(truth)
    assert st.epochs["trial_id"].nunique() == len(truth)
    assert st.epochs_column("elr") == "cfg_elr"
    assert st.epochs.groupby("trial_id")["epoch"].apply(lambda e: e.is_monotonic_increasing).all()
    assert st.has_measure("angular_update")


def test_classify_labels_every_trial_as_constructed(grid_study):
    from regimes.analysis import classify, load_study

    root, truth = grid_study
    labels = classify(load_study(root)).set_index("trial_id")
    t = truth.set_index("trial_id")
    # the NaN trial (t008: elr=1, momentum 0, seed 0) is divergence whatever its shape
    assert labels.loc["t008", "regime"] == R.DIVERGENCE
    assert bool(labels.loc["t008", "regime_nonfinite"])
    assert (labels["regime"] == t.loc[labels.index, "truth"]).all(), \
        labels.join(t["truth"])[["regime", "truth", "regime_reason"]]
    for col in ("regime_loss_final", "regime_loss_rel_change", "regime_acc_over_chance", "regime_reason"):
        assert col in labels


def test_boundaries_recovered_within_grid_resolution(grid_study):
    from regimes.analysis import boundaries, load_study

    root, _ = grid_study
    st = load_study(root)
    b = boundaries(st)
    step = math.log10(3.0) + 1e-9                # one grid step (half-decade grid)
    for m in (0.0, 0.9):
        bm = b[b["momentum"] == m].set_index("boundary")
        true1 = 2e-3 if m == 0 else 5e-4
        true2 = 0.2 if m == 0 else 0.05
        v1 = bm.loc["convergence->chaotic_equilibrium", "value"]
        v2 = bm.loc["chaotic_equilibrium->divergence", "value"]
        assert abs(math.log10(v1 / true1)) <= step
        assert abs(math.log10(v2 / true2)) <= step
        assert bm.loc["chaotic_equilibrium->divergence", "n_seeds"] == 2
    # the seed that disagrees at elr=3e-3 (momentum 0) shows up as spread
    row = b[(b["momentum"] == 0.0) & (b["boundary"] == "convergence->chaotic_equilibrium")].iloc[0]
    assert row["lo"] == pytest.approx(math.sqrt(1e-3 * 3e-3))
    assert row["hi"] == pytest.approx(math.sqrt(3e-3 * 1e-2))
    assert row["log10_spread"] > 0


def test_list_valued_config_columns_do_not_break_axis_discovery(tmp_path):
    from regimes.analysis import load_study

    root = tmp_path / "lists"
    write_study(root, [{"elr": e, "regime": true_regime(e, 0)} for e in ELRS[:3]])
    t = pq.read_table(root / "trials.parquet").to_pandas()
    t["milestones"] = [[0.5, 0.75], [0.5, 0.75], [0.3]]       # a real list column
    pq.write_table(pa.Table.from_pandas(t, preserve_index=False), root / "trials.parquet")
    st = load_study(root)
    assert st.axes == ["elr", "milestones"]


def test_bad_paths_raise_config_error(tmp_path):
    from regimes.analysis import load_study
    from regimes.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_study(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value) and "no such" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a results folder"):
        load_study(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        load_study(tmp_path / "file")


# ----------------------------------------------------------------- report
def _cli(*argv):
    from regimes.cli import main

    return main(["report", *map(str, argv)])


def test_report_writes_everything_and_updates_trials(grid_study, tmp_path, capsys):
    import shutil

    root = tmp_path / "grid"
    shutil.copytree(grid_study[0], root)
    before = pq.read_table(root / "trials.parquet")
    assert _cli(root) == 0
    printed = capsys.readouterr().out
    rep = root / "report"
    for f in ("regimes.parquet", "regimes.csv", "boundaries.csv", "report.md",
              "training_curves_1.png", "training_curves_2.svg", "regime_strip.png", "regime_strip.svg",
              "phase_diagram_elr_momentum.png", "phase_diagram_elr_momentum.svg"):
        assert (rep / f).is_file() and (rep / f).stat().st_size > 0, f
    assert f"phase diagram: {rep / 'phase_diagram_elr_momentum.png'}" in printed
    md = (rep / "report.md").read_text()
    for img in ("phase_diagram_elr_momentum.png", "regime_strip.png", "training_curves_1.png"):
        assert f"]({img})" in md
    assert "convergence->chaotic_equilibrium" in md and "chaotic_equilibrium->divergence" in md
    # labels on disk agree with the truth, and trials.parquet gained them
    truth = grid_study[1].set_index("trial_id")["truth"]
    regimes_csv = pd.read_csv(rep / "regimes.csv", dtype={"trial_id": str}).set_index("trial_id")
    assert (regimes_csv["regime"] == truth[regimes_csv.index]).all()
    trials = pq.read_table(root / "trials.parquet").to_pandas().set_index("trial_id")
    assert (trials["regime"] == truth[trials.index]).all()
    assert "regime_loss_final" in trials and "git_commit" in trials and len(trials) == len(truth)
    after = pq.read_table(root / "trials.parquet")
    kept = after.select(before.column_names)                     # the sink's columns untouched
    assert kept.schema.equals(before.schema)
    assert kept.to_pandas().equals(before.to_pandas())          # (NaN-aware comparison)
    ncols = after.num_columns
    # idempotent: a second report replaces the columns instead of duplicating them
    assert _cli(root, "--no-annotate", "--formats", "png") == 0
    assert pq.read_table(root / "trials.parquet").num_columns == ncols
    b = pd.read_csv(rep / "boundaries.csv")
    assert set(b["boundary"]) == {"convergence->chaotic_equilibrium", "chaotic_equilibrium->divergence"}


def test_report_bad_input_exits_2(tmp_path, capsys):
    assert _cli(tmp_path / "missing") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'missing'}: ")
    root = tmp_path / "s"
    write_study(root, [{"elr": e, "regime": true_regime(e, 0)} for e in ELRS[:3]])
    assert _cli(root, "--x", "wd") == 2
    assert "error: --x:" in capsys.readouterr().err
    assert _cli(root, "--rule", "bogus=1") == 2
    assert _cli(root, "--rule", "converge_loss=abc") == 2
    assert _cli(root, "--formats", "gif") == 2


def test_report_degrades_one_axis_one_seed_missing_measures(tmp_path, capsys):
    root = tmp_path / "one"
    write_study(root, [{"elr": e, "regime": true_regime(e, 0)} for e in ELRS],
                drop=("angular_update", "test_acc"), train_eval_every=3)
    assert _cli(root) == 0
    rep = root / "report"
    assert f"phase diagram (1-D, one axis varies): {rep / 'regime_strip.png'}" in capsys.readouterr().out
    assert (rep / "training_curves.png").is_file() and (rep / "regime_strip.png").is_file()
    assert not list(rep.glob("phase_diagram*"))
    md = (rep / "report.md").read_text()
    assert "no 2-D phase diagram" in md and "angular_update" in md
    labels = pd.read_csv(rep / "regimes.csv")
    assert list(labels["regime"]) == [true_regime(e, 0) for e in ELRS]
    # thresholds from the command line: a loss of 0.4 now counts as "at 0"
    assert _cli(root, "--rule", "converge_loss=0.5", "--formats", "png", "--out", tmp_path / "r2") == 0
    relabelled = pd.read_csv(tmp_path / "r2" / "regimes.csv")
    assert R.CHAOTIC not in set(relabelled["regime"]) and R.CONVERGENCE in set(relabelled["regime"])
    assert "converge_loss = 0.5" in (tmp_path / "r2" / "report.md").read_text()


def test_free_mode_uses_lr_and_epochs_only_study(tmp_path):
    from regimes.analysis import boundaries, classify, load_study

    root = tmp_path / "free"
    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    labs = [R.CONVERGENCE, R.CHAOTIC, R.CHAOTIC, R.DIVERGENCE]
    write_study(root, [{"mode": "free", "lr": lr, "wd": wd, "regime": lab}
                       for wd in (0.0, 5e-4) for lr, lab in zip(lrs, labs)], with_trials_table=False)
    st = load_study(root)
    assert st.main_axis == "lr" and st.axes == ["lr", "wd"]
    assert (st.trials["status"] == "running").all()          # rebuilt from the epochs
    labels = classify(st)
    assert list(labels.sort_values(["wd", "lr"])["regime"]) == labs * 2
    b = boundaries(st, labels)
    assert len(b) == 4 and set(b["axis"]) == {"lr"}
    assert b[b["boundary"] == "convergence->chaotic_equilibrium"]["value"].tolist() == \
        pytest.approx([math.sqrt(1e-5)] * 2)
    assert _cli(root) == 0
    assert (root / "report" / "phase_diagram_lr_wd.png").is_file()
    assert not (root / "trials.parquet").exists()


def test_off_grid_three_axis_study(tmp_path):
    """Optuna-like sampling (no grid) over elr and wd, plus a third axis: scatter, no crash."""
    from regimes.analysis import classify, load_study, plot_phase_diagram

    rng = np.random.default_rng(3)
    specs = []
    for k in range(12):
        e = float(10 ** rng.uniform(-4, 0))
        specs.append({"elr": e, "wd": float(10 ** rng.uniform(-5, -2)), "momentum": [0.0, 0.5][k % 2],
                      "regime": true_regime(e, 0)})
    root = tmp_path / "optuna"
    write_study(root, specs)
    st = load_study(root)
    assert st.axes == ["elr", "wd", "momentum"]
    fig = plot_phase_diagram(st, classify(st), x="elr", y="wd", select={})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert sum(len(c.get_offsets()) for c in ax.collections) == 12       # one dot per trial
    assert _cli(root, "--formats", "png") == 0
    assert (root / "report" / "phase_diagram_elr_wd.png").is_file()
    assert (root / "report" / "phase_diagram_elr_momentum.png").is_file()


def test_phase_diagram_marks_disagreement(grid_study):
    import matplotlib.pyplot as plt

    from regimes.analysis import classify, load_study, plot_phase_diagram

    st = load_study(grid_study[0])
    fig = plot_phase_diagram(st, classify(st), x="elr", y="momentum")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert sum("1/2" in t for t in texts) == 1          # exactly the one disagreeing cell
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 1
    assert len(ax.patches) >= len(ELRS) * 2
    plt.close(fig)


# ----------------------------------------------------------------- notebooks
def _kernel_env(tmp_path) -> dict:
    """A kernel spec for *this* interpreter, found through JUPYTER_PATH (works from a clean venv)."""
    kdir = tmp_path / "jupyter" / "kernels" / "regimes-test"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "regimes-test", "language": "python", "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}}))
    return {"JUPYTER_PATH": str(tmp_path / "jupyter")}


@pytest.mark.parametrize("name,n_figures", [("three_regimes.ipynb", 2), ("phase_diagram.ipynb", 1)])
def test_notebook_runs_headless(name, n_figures, grid_study, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for k, v in _kernel_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(REPO / "analysis" / name, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.source.lstrip().startswith("RESULTS = "), "one variable at the top"
    first.source = f"RESULTS = {str(grid_study[0])!r}"
    NotebookClient(nb, kernel_name="regimes-test", timeout=180,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert len(images) == n_figures
    text = " ".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", ""))
                    for c in nb.cells for o in c.get("outputs", []))
    assert "chaotic_equilibrium" in text      # the tables came out too


# ----------------------------------------------------------------- a real (tiny) study
@pytest.mark.slow
def test_report_on_a_tiny_real_digits_study(tmp_path, capsys):
    """The core trains two ELRs on digits; results.py writes the layout; the report reads it."""
    from regimes import TrainConfig, results, train

    root = tmp_path / "real"
    rows = []
    for elr in (1e-2, 30.0):
        cfg = TrainConfig.from_dict(dict(dataset="digits", model="convnet_si", width=4, batch_size=128,
                                         augment=False, epochs=3, device="cpu", elr=elr, seed=0))
        recs = list(train(cfg))
        tid = f"elr={elr:g}"
        results.write_trial_epochs(root, tid, results.epoch_rows(cfg, recs, "tiny"))
        rows.append(results.trial_summary(cfg, recs, "tiny", tid,
                                          "diverged" if recs[-1]["diverged"] else "completed"))
    results.write_trials(root, rows)

    assert _cli(root) == 0
    rep = root / "report"
    for f in ("regimes.csv", "boundaries.csv", "report.md", "training_curves.png", "training_curves.svg",
              "regime_strip.png", "regime_strip.svg"):
        assert (rep / f).is_file(), f
    labels = pd.read_csv(rep / "regimes.csv").set_index("trial_id")
    assert set(labels["regime"]) <= set(R.LABELS)
    assert list(labels.index) == ["elr=0.01", "elr=30"]
    # the evidence is the trajectory's own numbers: accuracy over chance falls at a huge ELR
    assert labels.loc["elr=0.01", "regime_acc_over_chance"] > labels.loc["elr=30", "regime_acc_over_chance"]
    trials = pq.read_table(root / "trials.parquet").to_pandas()
    assert trials["regime"].notna().all() and "git_commit" in trials
