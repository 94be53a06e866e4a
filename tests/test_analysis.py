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


def test_a_read_during_a_merge_sees_each_epoch_once(tmp_path, monkeypatch):
    """A running trial merging its parts: a row both in the new data.parquet and in a part not
    yet deleted is read once, and a part deleted between listing and opening is read again."""
    import regimes.analysis.load as L
    from regimes.analysis import load_study

    root = tmp_path / "live"
    write_study(root, [{"elr": 1e-3, "regime": R.CONVERGENCE}, {"elr": 1e-1, "regime": R.DIVERGENCE}], epochs=6)
    part = root / "epochs" / "trial_id=t000"
    whole = pq.read_table(part / "data.parquet")
    expected = load_study(root).epochs
    pq.write_table(whole.slice(3), part / "part-4-6.parquet")     # merged, not deleted yet
    st = load_study(root)
    assert len(st.epochs) == len(expected) == 12
    assert list(zip(st.epochs["trial_id"], st.epochs["epoch"])) == list(zip(expected["trial_id"], expected["epoch"]))

    real, calls = L.ds.dataset, []

    def vanishing(*args, **kw):          # the first listing still has the part; it goes before the read
        d = real(*args, **kw)
        calls.append(1)
        if len(calls) == 1:
            (part / "part-4-6.parquet").unlink()
        return d

    monkeypatch.setattr(L.ds, "dataset", vanishing)
    st = load_study(root)
    assert len(calls) == 3 and len(st.epochs) == 12      # listed, vanished, listed again and read


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
              "training_curves_momentum=0.png", "training_curves_momentum=0.9.svg", "regime_strip.png",
              "regime_strip.svg", "phase_diagram_elr_x_momentum.png", "phase_diagram_elr_x_momentum.svg"):
        assert (rep / f).is_file() and (rep / f).stat().st_size > 0, f
    assert f"phase diagram: {rep / 'phase_diagram_elr_x_momentum.png'}" in printed
    md = (rep / "report.md").read_text()
    for img in ("phase_diagram_elr_x_momentum.png", "regime_strip.png", "training_curves_momentum=0.png"):
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
    assert (root / "report" / "phase_diagram_lr_x_wd.png").is_file()
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
    # the axis not drawn is fixed at its first value, and the name says so
    assert (root / "report" / "phase_diagram_elr_x_wd_momentum=0.png").is_file()
    wd0 = min(s["wd"] for s in specs)
    assert (root / "report" / f"phase_diagram_elr_x_momentum_wd={wd0:.6g}.png").is_file()


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


# ----------------------------------------------------------------- figures for a paper
def _set_status(root: Path, status: dict[str, str]):
    t = pq.read_table(root / "trials.parquet").to_pandas()
    for tid, st in status.items():
        t.loc[t["trial_id"] == tid, "status"] = st
    pq.write_table(pa.Table.from_pandas(t, preserve_index=False), root / "trials.parquet")


def _drawn_ticks(ax) -> list:
    """The tick labels of an axes that are drawn (ticks inside the view limits)."""
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    both = (False, True)
    return ([t for minor in both for t in ax.get_xticklabels(minor=minor) if x0 <= t.get_position()[0] <= x1]
            + [t for minor in both for t in ax.get_yticklabels(minor=minor) if y0 <= t.get_position()[1] <= y1])


def _overlaps(texts) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts whose drawn boxes intersect."""
    boxes = [(t.get_text(), t.get_window_extent()) for t in texts if t.get_visible() and t.get_text().strip()]
    return [(a, b) for k, (a, ba) in enumerate(boxes) for b, bb in boxes[k + 1:] if ba.overlaps(bb)]


def test_every_figure_is_a_vector_file_and_a_300_dpi_png_named_after_its_setting(grid_study, tmp_path):
    import shutil

    from PIL import Image

    root = tmp_path / "grid"
    shutil.copytree(grid_study[0], root)
    assert _cli(root, "--formats", "png,svg,pdf") == 0
    rep = root / "report"
    pngs = sorted(rep.glob("*.png"))
    stems = {p.stem for p in pngs}
    # one training-curve figure per momentum, the phase diagram names both of its axes
    assert {"training_curves_momentum=0", "training_curves_momentum=0.9", "regime_strip",
            "phase_diagram_elr_x_momentum"} <= stems, stems
    assert not any(s.startswith("training_curves_") and s[-1].isdigit() and "=" not in s for s in stems)
    for p in pngs:
        for vec in ("svg", "pdf"):
            assert p.with_suffix(f".{vec}").is_file() and p.with_suffix(f".{vec}").stat().st_size > 0, (p, vec)
        with Image.open(p) as im:
            dpi = im.info["dpi"]
            assert all(round(d) == 300 for d in dpi), (p.name, dpi)
            assert min(im.size) >= 600, (p.name, im.size)      # two inches or more at 300 dpi
        assert all(c.isalnum() or c in "._=-" for c in p.stem), p.stem
    md = (rep / "report.md").read_text()
    for p in pngs:
        assert f"]({p.name})" in md and f"]({p.stem}.svg)" in md and f"]({p.stem}.pdf)" in md


def test_training_curves_show_seed_spread_palette_and_reference_lines(grid_study):
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from regimes.analysis import classify, load_study, plot_training_curves

    st = load_study(grid_study[0])
    labels = classify(st)
    fig = plot_training_curves(st, labels, select={"momentum": 0.0})
    loss_ax, acc_ax = fig.axes[:2]
    # a mean line and a min-max band over the two seeds for every ELR
    assert len([l for l in loss_ax.lines if len(l.get_xdata()) > 2]) == len(ELRS)
    bands = [c for c in loss_ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == len(ELRS)
    ep = st.epochs[["trial_id", "epoch", "test_acc"]].merge(st.trials[["trial_id", "elr", "momentum"]],
                                                             on="trial_id")
    one = ep[(ep["elr"] == 1e-2) & (ep["momentum"] == 0.0) & (ep["epoch"] == 5)]["test_acc"]
    assert len(one) == 2                                               # lines in ELR order: [4] is 1e-2
    assert acc_ax.lines[4].get_ydata()[4] == pytest.approx(one.mean())  # arithmetic mean, linear axis
    acc_band = [c for c in acc_ax.collections if isinstance(c, PolyCollection)][4]
    at5 = np.concatenate([p.vertices[np.isclose(p.vertices[:, 0], 5), 1] for p in acc_band.get_paths()])
    assert at5.min() == pytest.approx(one.min()) and at5.max() == pytest.approx(one.max())   # min-max
    # neighbouring ELRs get clearly different colours
    cols = [np.array(mcolors.to_rgb(l.get_color())) for l in loss_ax.lines if len(l.get_xdata()) > 2]
    assert min(np.abs(a - b).sum() for a, b in zip(cols[:-1], cols[1:])) > 0.15
    # chance 1/C on the accuracy panel, ln C on the loss panel, each in the legend
    flat = lambda ax: [l.get_ydata()[0] for l in ax.lines if len(set(np.atleast_1d(l.get_ydata()))) == 1]
    assert any(v == pytest.approx(1 / C) for v in flat(acc_ax))
    assert any(v == pytest.approx(LN_C) for v in flat(loss_ax))
    legend_text = " ".join(t.get_text() for leg in fig.legends for t in leg.get_texts())
    assert "min-max over 2 seeds" in legend_text and "chance accuracy 1/C" in legend_text
    assert "ln C" in legend_text and "0.003 (conv. 1/2, chaotic 1/2)" in legend_text
    assert "momentum=0" in fig._suptitle.get_text() and "mean over 2 seeds" in fig._suptitle.get_text()
    fig.canvas.draw()
    for ax in fig.axes:
        assert not _overlaps(_drawn_ticks(ax)), ax.get_title()
    plt.close(fig)


def test_strip_draws_boundary_brackets_with_legend_and_readable_log_ticks(grid_study):
    import matplotlib.pyplot as plt

    from regimes.analysis import boundaries, classify, load_study, plot_regime_strip

    st = load_study(grid_study[0])
    labels = classify(st)
    b = boundaries(st, labels)
    fig = plot_regime_strip(st, labels, b)
    fig.canvas.draw()
    ax = fig.axes[0]                               # momentum 0, final train loss
    row = b[b["momentum"] == 0.0]
    # each boundary: a span from bracket_lo to bracket_hi, and a thin line at the estimate
    got = sorted((p.get_x(), p.get_x() + p.get_width()) for p in ax.patches if p.get_gid() == "bracket")
    want = sorted(zip(row["bracket_lo"], row["bracket_hi"]))
    assert np.allclose(got, want), (got, want)
    assert row["bracket_hi"].gt(row["bracket_lo"]).all()
    estimates = sorted(l.get_xdata()[0] for l in ax.lines if l.get_gid() == "estimate")
    assert np.allclose(estimates, sorted(row["value"]))
    assert all(l.get_linewidth() < 1.2 for l in ax.lines if l.get_gid() == "estimate")
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    for text in ("boundary bracket", "seeds disagree", "convergence → chaotic equilibrium (estimate)",
                 "chance accuracy 1/C", "ln C", "divergence", "median over seeds"):
        assert text in legend, text
    for a in fig.axes:
        assert not _overlaps(_drawn_ticks(a)), a.get_title()
    plt.close(fig)


@pytest.mark.parametrize("lo,hi", [(2e-3, 8e-3), (1.5e-3, 4e-2), (1e-9, 1e3)])
def test_log_axes_never_overlap_their_tick_labels(tmp_path, lo, hi):
    """Matplotlib's default labels the minor ticks of a narrow log range (they collide), and every
    decade of a wide one; the figures use `log_ticks`."""
    import matplotlib.pyplot as plt

    from regimes.analysis import classify, load_study, plot_phase_diagram, plot_regime_strip

    elrs = np.geomspace(lo, hi, 7).tolist()
    mid = elrs[3]
    root = tmp_path / "narrow"
    write_study(root, [{"elr": e, "wd": wd, "regime": R.CONVERGENCE if e < mid else R.CHAOTIC}
                       for wd in (1e-5, 1e-4, 1e-3) for e in elrs[: 7 if wd == 1e-5 else 4]])
    st = load_study(root)
    labels = classify(st)
    for fig in (plot_regime_strip(st, labels), plot_phase_diagram(st, labels, x="elr", y="wd")):
        fig.canvas.draw()
        for a in fig.axes:
            if a.get_xscale() == "log":
                assert not _overlaps(_drawn_ticks(a)), (a.get_title(), [t.get_text() for t in _drawn_ticks(a)])
                assert len([t for t in _drawn_ticks(a) if t.get_text()]) >= 2
        plt.close(fig)


def test_phase_diagram_cell_text_clears_the_boundary_brackets(grid_study):
    import matplotlib.pyplot as plt

    from regimes.analysis import boundaries, classify, load_study, plot_phase_diagram

    st = load_study(grid_study[0])
    labels = classify(st)
    fig = plot_phase_diagram(st, labels, x="elr", y="momentum")
    ax = fig.axes[0]
    fig.canvas.draw()
    brackets = [p for p in ax.patches if p.get_gid() == "bracket"]
    assert len(brackets) == len(boundaries(st, labels))            # one per (row, boundary)
    estimates = [l for l in ax.lines if l.get_gid() == "estimate"]
    assert len(estimates) == len(brackets)
    for t in ax.texts:
        tb = t.get_window_extent()
        for p in brackets:
            assert not tb.overlaps(p.get_window_extent()), t.get_text()
        for l in estimates:
            assert not tb.overlaps(l.get_window_extent()), t.get_text()
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "bracket" in legend and "boundary estimate" in legend and "seeds disagree" in legend
    plt.close(fig)


def test_errored_trial_is_labelled_errored_and_left_out_of_boundaries(tmp_path, capsys):
    import shutil

    from regimes.analysis import boundaries, classify, load_study

    trials = [{"elr": e, "seed": s, "regime": true_regime(e, 0)} for s in (0, 1) for e in ELRS]
    root = tmp_path / "err"
    write_study(root, trials)
    # t013: seed 1 at elr 3e-2 (chaotic), t002: seed 0 at 1e-3, next to the first boundary
    without = tmp_path / "without"
    shutil.copytree(root, without)
    for tid in ("t002", "t013"):
        shutil.rmtree(without / "epochs" / f"trial_id={tid}")
    t = pq.read_table(without / "trials.parquet").to_pandas()
    pq.write_table(pa.Table.from_pandas(t[~t["trial_id"].isin(["t002", "t013"])], preserve_index=False),
                   without / "trials.parquet")
    _set_status(root, {"t002": "errored", "t013": "errored"})

    st = load_study(root)
    labels = classify(st).set_index("trial_id")
    for tid in ("t002", "t013"):
        assert labels.loc[tid, "regime"] == "errored"
        assert labels.loc[tid, "regime_reason"].startswith("trial errored: ")
    b = boundaries(st).drop(columns=["n_seeds_total"])
    b0 = boundaries(load_study(without)).drop(columns=["n_seeds_total"])
    assert set(b["boundary"]) == {"convergence->chaotic_equilibrium", "chaotic_equilibrium->divergence"}
    pd.testing.assert_frame_equal(b.reset_index(drop=True), b0.reset_index(drop=True))

    assert _cli(root, "--formats", "png") == 0
    out = capsys.readouterr().out
    assert "errored 2" in out
    md = (root / "report" / "report.md").read_text()
    assert "| errored | 2 |" in md and "errored" in pd.read_csv(root / "report" / "regimes.csv")["regime"].values
    assert "errored" not in pd.read_csv(root / "report" / "boundaries.csv")["boundary"].str.cat()


def test_errored_trial_whose_record_diverged_stays_divergence(tmp_path):
    from regimes.analysis import classify, load_study

    root = tmp_path / "nan"
    write_study(root, [{"elr": e, "regime": true_regime(e, 0)} for e in ELRS], nan_trial="t008")
    _set_status(root, {"t008": "errored"})
    labels = classify(load_study(root)).set_index("trial_id")
    assert labels.loc["t008", "regime"] == R.DIVERGENCE


def test_running_trials_mark_the_report_partial(tmp_path, capsys):
    root = tmp_path / "run"
    write_study(root, [{"elr": e, "seed": s, "regime": true_regime(e, 0)} for s in (0, 1) for e in ELRS])
    _set_status(root, {"t004": "running"})                       # seed 0 at elr 1e-2
    assert _cli(root, "--formats", "png") == 0
    assert "partial: 1 trial still running" in capsys.readouterr().out
    md = (root / "report" / "report.md").read_text()
    assert "partial: 1 trial still running" in md
    table = md.split("## Regime per setting", 1)[1]
    rows = [r for r in table.splitlines() if r.startswith("| ")]
    assert rows[0].split(" | ")[-1].strip(" |") == "partial"
    marked = [r for r in rows[1:] if "partial: 1/2 running" in r]
    assert len(marked) == 1 and marked[0].startswith("| 0.01 |")
    # a finished study has no such line or column
    _set_status(root, {"t004": "completed"})
    assert _cli(root, "--formats", "png") == 0
    assert "partial" not in (root / "report" / "report.md").read_text()


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
