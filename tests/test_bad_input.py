"""Bad input to `regimes train | sweep | validate`: one line `error: <key or path>: ...` on
stderr, exit code 2, before Ray starts (or torch trains), and nothing written.

The CLI runs in-process (`regimes.cli.main`); every case runs in an empty working folder
whose contents are compared before and after. Only `test_config_error_in_a_trial_fails_it_once_on_ray`
starts Ray.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from regimes.cli import main
from regimes.core.config import MAX_EPOCHS, MAX_RATE, TRAIN_EXAMPLES, TrainConfig
from regimes.errors import ConfigError

TINY = {"dataset": "digits", "model": "convnet_si", "width": 4, "subset": 128, "batch_size": 32,
        "augment": False, "epochs": 2, "device": "cpu"}


def spec(**top) -> dict:
    base = top.pop("base", {})
    return {"name": "t", "base": {**TINY, **base}, "search": {"kind": "grid", "space": {"elr": [0.01]}}, **top}


@pytest.fixture
def here(tmp_path, monkeypatch):
    """An empty working folder (so a default `results/` would show) holding `s.yaml`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec()))
    return tmp_path


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def refused(capsys, root: Path, argv: list[str], key: str, fragment: str = "") -> str:
    """Run the CLI; it must exit 2 with one `error: <key>: ...` line and write nothing."""
    before = tree(root)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(f"error: {key}: "), err
    assert fragment in err, err
    assert tree(root) == before
    assert "Traceback" not in err and out == ""
    return err


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# --- 1. storage and out folders -------------------------------------------------------------
def read_only_folder(root: Path, monkeypatch) -> Path:
    """A folder this process cannot write into. chmod does not stop root, so for root the
    probe's mkdtemp in it is made to fail as it would on a read-only mount."""
    ro = root / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:
        import tempfile

        real = tempfile.mkdtemp

        def mkdtemp(*a, dir=None, **kw):
            if dir is not None and Path(dir).resolve() == ro.resolve():
                raise OSError(30, "Read-only file system")
            return real(*a, dir=dir, **kw)

        monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    return ro


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
@pytest.mark.parametrize("storage", ["/proc/x", "afile/sub", "afile", "ro", "ro/sub"])
def test_sweep_storage_must_be_writable(here, capsys, monkeypatch, storage):
    (here / "afile").write_text("")
    read_only_folder(here, monkeypatch)
    err = refused(capsys, here, ["sweep", "s.yaml", "--storage", storage], "--storage")
    assert "file" in err or "writ" in err or "cannot be created" in err


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
@pytest.mark.parametrize("out", ["/proc/x", "afile/sub", "afile", "ro", "ro/sub"])
def test_train_out_must_be_writable(here, capsys, monkeypatch, out):
    (here / "afile").write_text("")
    read_only_folder(here, monkeypatch)
    refused(capsys, here, ["train", "epochs=1", "--quiet", f"out={out}"], "out")


def test_a_writable_storage_passes_the_probe_and_keeps_no_trace(tmp_path):
    from regimes.study.spec.files import check_writable

    check_writable(tmp_path / "new" / "deeper", "--storage")
    check_writable(tmp_path, "--storage")
    assert tree(tmp_path) == []


# --- 2. data not on disk ------------------------------------------------------------------------
def cifar(root: Path | None) -> dict:
    return spec(base={"dataset": "cifar10", "data_root": str(root) if root else "nowhere", "subset": 0})


def test_missing_data_warns_in_validate_and_refuses_an_in_process_sweep(here, capsys, monkeypatch):
    write(here / "c.yaml", cifar(None))
    assert main(["validate", "c.yaml"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("c.yaml: ok")
    assert err.count("\n") == 1 and err.startswith("warning: c.yaml: base.data_root: nowhere/cifar-10-batches-py")
    refused(capsys, here, ["sweep", "c.yaml"], "base.data_root", "set download=true")

    # on a cluster the workers may have it: the sweep warns and goes on
    from regimes.study import launch

    ran = []
    monkeypatch.setattr(launch, "run_study", lambda study, store, **kw: ran.append(kw) or [])
    monkeypatch.setattr(launch, "report", lambda study, store, grid: 0)
    assert main(["sweep", "c.yaml", "--address", "auto"]) == 0
    out, err = capsys.readouterr()
    assert len(ran) == 1 and err.startswith("warning: base.data_root:") and "cluster" in err


def test_data_on_disk_or_download_passes(here, capsys):
    folder = here / "d" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (folder / name).write_bytes(b"")      # only their presence is checked: nothing is read
    write(here / "c.yaml", cifar(here / "d"))
    write(here / "dl.yaml", {**cifar(None), "base": {**cifar(None)["base"], "download": True}})
    assert main(["validate", "c.yaml", "dl.yaml"]) == 0
    assert capsys.readouterr().err == ""
    (folder / "test_batch").unlink()
    assert main(["validate", "c.yaml"]) == 0
    assert "test_batch is missing" in capsys.readouterr().err


def test_data_check_reads_the_optuna_choices_of_data_root(here):
    from regimes.study import spec as spec_mod
    from regimes.study.spec import preflight

    s = spec_mod.from_dict({"name": "t", "base": {**TINY, "dataset": "cifar100", "subset": 0},
                            "search": {"kind": "optuna", "metric": "test_acc", "mode": "max",
                                       "space": {"data_root": {"choice": ["a", "b"]}}}})
    problems = preflight.data_problems(s)
    assert {p.key for p in problems} == {"search.space.data_root.choice"}
    assert [p.message.split()[0] for p in problems] == ["a/cifar-100-python", "b/cifar-100-python"]


# --- 3. resources this machine does not have -------------------------------------------------------
def test_gpu_trials_on_an_in_process_ray_without_a_gpu(here, capsys, monkeypatch):
    import torch

    from regimes.study import launch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    write(here / "g.yaml", spec(resources={"gpu": 1}))
    refused(capsys, here, ["sweep", "g.yaml"], "resources.gpu", "0 GPUs")
    write(here / "c.yaml", spec(resources={"cpu": 64}))
    refused(capsys, here, ["sweep", "c.yaml", "--num-cpus", "2"], "resources.cpu", "--num-cpus 2")

    ran = []
    monkeypatch.setattr(launch, "run_study", lambda study, store, **kw: ran.append(kw) or [])
    monkeypatch.setattr(launch, "report", lambda study, store, grid: 0)
    assert main(["sweep", "g.yaml", "--address", "auto"]) == 0      # a cluster may add GPU nodes
    assert len(ran) == 1 and capsys.readouterr().err == ""


# --- 4. accepted by validate, crashing later: now refused by it -------------------------------------
TOO_BIG = [
    ("batch larger than the dataset", {"base": {"batch_size": 100000, "subset": 0}}, "base.batch_size", "1438"),
    ("batch larger than the subset", {"base": {"batch_size": 200}}, "base.batch_size", "subset of 128"),
    ("subset larger than the dataset", {"base": {"subset": 5000}}, "base.subset", "1438"),
    ("cifar batch", {"base": {"dataset": "cifar10", "download": True, "subset": 0, "batch_size": 60000}},
     "base.batch_size", "50000"),
    ("epochs", {"base": {"epochs": 10**12}}, "base.epochs", f"<= {MAX_EPOCHS}"),
    ("name of 300 characters", {"name": "a" * 300}, "name", "at most 100"),
    ("name with a newline", {"name": "t\n"}, "name", "folder-safe"),
    ("elr overflowing float32", {"search": {"kind": "grid", "space": {"elr": [1e39]}}}, "search.space.elr",
     f"<= {MAX_RATE:g}"),
    ("lr overflowing float32", {"base": {"mode": "free", "lr": 1e39}}, "base.lr", f"<= {MAX_RATE:g}"),
    ("seed beyond int64", {"base": {"seed": 2**64}}, "base.seed", "64-bit"),
]


@pytest.mark.parametrize("top,key,fragment", [c[1:] for c in TOO_BIG], ids=[c[0] for c in TOO_BIG])
def test_values_that_crashed_a_trial_are_refused_by_validate(here, capsys, top, key, fragment):
    data = spec()
    for k, v in top.items():
        data[k] = {**data[k], **v} if k == "base" else v
    write(here / "x.yaml", data)
    refused(capsys, here, ["validate", "x.yaml"], key, fragment)
    assert main(["validate", "x.yaml", "x.yaml"]) == 2         # several files: each line names its file
    assert capsys.readouterr().err.startswith(f"error: x.yaml: {key}: ")


def test_dataset_sizes_are_those_of_the_loaders():
    from regimes.core.data import load_data

    for name in ("digits", "synthetic"):
        assert len(load_data(TrainConfig(dataset=name, batch_size=1)).x_train) == TRAIN_EXAMPLES[name]
    assert TrainConfig(dataset="digits", batch_size=TRAIN_EXAMPLES["digits"]).batch_size == 1438
    with pytest.raises(ConfigError) as e:
        TrainConfig(dataset="digits", subset=64, batch_size=65)
    assert e.value.key == "batch_size"


@pytest.mark.parametrize("change", [{"elr": MAX_RATE}, {"mode": "free", "lr": MAX_RATE},
                                    {"mode": "free", "lr": 0.1, "wd": MAX_RATE},
                                    {"schedule": "piecewise", "knots": ((0.0, MAX_RATE), (1.0, 1.0))}],
                         ids=["elr", "lr", "wd", "knots"])
def test_the_largest_rates_allowed_diverge_without_raising(change):
    from regimes.run import Trainer

    records = list(Trainer(TrainConfig(**{**TINY, "subset": 64, **change})).run())
    assert records                    # trained (or diverged) to the end; nothing raised
    last = records[-1]
    assert last["diverged"] or last["train_acc"] < 0.5


# --- 5. files that raised tracebacks ------------------------------------------------------------------
def test_spec_files_that_are_not_utf8(here, capsys):
    text = yaml.safe_dump(spec())
    (here / "u16.yaml").write_bytes(text.encode("utf-16"))
    (here / "latin1.yaml").write_bytes(text.replace("name: t", "name: t\xe9").encode("latin-1"))
    for cmd in ("validate", "sweep"):
        refused(capsys, here, [cmd, "u16.yaml"], "u16.yaml", "UTF-16")
        refused(capsys, here, [cmd, "latin1.yaml"], "latin1.yaml", "not UTF-8")
    (here / "bom.yaml").write_bytes(b"\xef\xbb\xbf" + text.encode())      # UTF-8 with a BOM is UTF-8
    assert main(["validate", "bom.yaml"]) == 0


def test_train_config_files_and_values_that_raised(here, capsys):
    (here / "folder").mkdir()
    (here / "latin1.yaml").write_bytes("elr: 0.1 # \xe9\n".encode("latin-1"))
    (here / "list.yaml").write_text("- 1\n")
    refused(capsys, here, ["train", "--config", "folder"], "folder", "is a directory")
    refused(capsys, here, ["train", "--config", "latin1.yaml"], "latin1.yaml", "not UTF-8")
    refused(capsys, here, ["train", "--config", "list.yaml"], "list.yaml", "mapping")
    refused(capsys, here, ["train", "--config", "nope.yaml"], "nope.yaml", "no such file")
    refused(capsys, here, ["train", "epochs=1e12"], "epochs")
    refused(capsys, here, ["train", f"epochs={10**12}"], "epochs", f"<= {MAX_EPOCHS}")


# --- 6. a config error inside a trial ---------------------------------------------------------------
def test_a_trial_config_error_is_reported_then_raised_and_not_retried(monkeypatch):
    from types import SimpleNamespace

    from regimes.study import spec as spec_mod
    from regimes.study import trainable as T

    study = spec_mod.from_dict({**cifar(None), "search": {"kind": "grid", "space": {"elr": [0.01]},
                                                          "metric": "test_acc", "mode": "max"}})
    reports = []
    monkeypatch.setattr(T.tune, "report", lambda metrics, **kw: reports.append(metrics))
    with pytest.raises(RuntimeError, match="data_root"):
        T.run_trial({"elr": 0.01}, study)
    assert len(reports) == 1 and "data_root" in reports[0][T.CONFIG_ERROR_KEY]
    assert reports[0]["test_acc"] == pytest.approx(0.1)         # a finite stand-in for the searcher

    # the driver side: that report leaves the trial no retry; a (re)start restores them
    cb, trial = T.ConfigErrorsFailOnce(3), SimpleNamespace(max_failures=3)
    cb.on_trial_result(0, [], trial, {"test_acc": 0.5})
    assert trial.max_failures == 3
    cb.on_trial_result(0, [], trial, reports[0])
    assert trial.max_failures == 0
    cb.on_trial_start(0, [], trial)
    assert trial.max_failures == 3


@pytest.mark.ray
def test_config_error_in_a_trial_fails_it_once_on_ray(tmp_path):
    """Data missing on the node that runs the trial: the trial errors once, with the message,
    although max_failures would retry an infrastructure fault 3 times."""
    import pyarrow.parquet as pq

    from regimes.study import spec as spec_mod
    from regimes.study.launch import run_study
    from regimes.study.trainable import ConfigErrorsFailOnce

    study = spec_mod.from_dict({**cifar(tmp_path / "no-data"), "name": "cfgerr", "max_failures": 3})
    grid = run_study(study, str(tmp_path), num_cpus=1, verbose=0, callbacks=(ConfigErrorsFailOnce(3),))
    assert len(grid) == 1 and grid[0].error is not None and "data_root" in str(grid[0].error)
    row = pq.read_table(tmp_path / "cfgerr" / "trials.parquet").to_pylist()[0]
    assert (row["status"], row["num_failures"]) == ("errored", 1)


# --- 7. repeated keys ------------------------------------------------------------------------------------
def test_a_key_repeated_in_a_yaml_file_is_refused(here, capsys):
    (here / "d.yaml").write_text("name: t\nbase:\n  epochs: 3\n  width: 4\n  epochs: 5\n"
                                 "search: {kind: grid, space: {elr: [0.1]}}\n")
    refused(capsys, here, ["sweep", "d.yaml"], "base.epochs", "lines 3 and 5")
    (here / "c.yaml").write_text("elr: 0.1\nwidth: 4\nelr: 0.2\n")
    refused(capsys, here, ["train", "--config", "c.yaml"], "elr", "given twice")
    # a merge key may be overridden, as YAML intends
    from regimes.study.spec.files import read_yaml

    (here / "m.yaml").write_text("a: &c {epochs: 3, width: 4}\nb: {<<: *c, epochs: 5}\n")
    assert read_yaml(here / "m.yaml")["b"] == {"epochs": 5, "width": 4}


def test_a_key_repeated_on_the_train_command_line_is_refused(here, capsys):
    refused(capsys, here, ["train", "elr=abc", "elr=0.1"], "elr", "given twice")
    refused(capsys, here, ["train", "out=a", "out=b"], "out", "given twice")
    refused(capsys, here, ["train", "--out", "a", "out=b"], "out", "given twice")


# --- 8. validate checks every file ---------------------------------------------------------------------------
def test_validate_reports_every_file(here, capsys):
    write(here / "bad.yaml", spec(base={"width": 0}))
    assert main(["validate", "s.yaml", "bad.yaml", "nope.yaml", "s.yaml"]) == 2
    out, err = capsys.readouterr()
    assert [line.split(" - ")[0] for line in out.splitlines()] == ["s.yaml: ok", "s.yaml: ok"]
    assert err.splitlines() == ["error: bad.yaml: base.width: 0 is out of range; allowed: >= 1 (at elr=0.01)",
                                "error: nope.yaml: no such file"]


# --- 9, 10. train's arguments ---------------------------------------------------------------------------------
def test_train_options_and_key_values_mix_freely(here, capsys):
    assert main(["train", "epochs=1", "--quiet", "out=D", "width=4", "--name", "r-1", "subset=64",
                 "batch_size=32"]) == 0
    assert (here / "D" / "trials.parquet").exists() and (here / "D" / "epochs" / "trial_id=r-1").is_dir()


@pytest.mark.parametrize("name", ["x/../../../ESCAPED", "../up", ".hidden", "a\nb", "", "a" * 101])
def test_train_name_must_be_a_safe_trial_id(here, capsys, name):
    refused(capsys, here, ["train", "--name", name, "out=D", "epochs=1"], "--name")


# --- 11. a changed spec on resume ---------------------------------------------------------------------------------
def started(root: Path, data: dict) -> None:
    """A study folder as Tune leaves it: the spec copy and Tune's state file."""
    folder = root / "results" / data["name"]
    folder.mkdir(parents=True)
    write(folder / "study.yaml", data)
    (folder / "tuner.pkl").write_bytes(b"")


def test_a_changed_spec_is_refused_before_ray_starts_naming_what_changed(here, capsys, monkeypatch):
    from regimes.study import launch

    started(here, spec())
    write(here / "s.yaml", spec(base={"epochs": 4}, description="more"))
    err = refused(capsys, here, ["sweep", "s.yaml"], "spec")
    assert "base.epochs (was 2, now 4)" in err and "description (was not set, now 'more')" in err
    assert "--restart" in err

    ran = []
    monkeypatch.setattr(launch, "run_study", lambda study, store, **kw: ran.append(kw) or [])
    monkeypatch.setattr(launch, "report", lambda study, store, grid: 0)
    assert main(["sweep", "s.yaml", "--restart"]) == 0                # starting over: no comparison
    write(here / "s.yaml", spec())
    assert main(["sweep", "s.yaml"]) == 0                             # the same spec resumes
    (here / "results" / "t" / "tuner.pkl").unlink()
    write(here / "s.yaml", spec(base={"epochs": 4}))
    assert main(["sweep", "s.yaml"]) == 0                             # no Tune state: starts over
    assert len(ran) == 3


def test_a_changed_spec_is_refused_on_uri_storage_too(here, capsys):
    started(here, spec())
    write(here / "s.yaml", spec(base={"width": 8}))
    err = refused(capsys, here, ["sweep", "s.yaml", "--storage", f"file://{here / 'results'}"], "spec")
    assert "base.width (was 4, now 8)" in err


def test_spec_differences_name_paths_in_the_new_specs_order():
    from regimes.study.spec.preflight import spec_differences

    old = {"name": "x", "base": {"epochs": 30, "width": 8}, "search": {"space": {"elr": [0.1, 0.2]}}}
    new = {"name": "x", "base": {"epochs": 40}, "search": {"space": {"elr": [0.1, 0.3]}}, "max_failures": 1}
    assert spec_differences(old, new) == ["base.epochs (was 30, now 40)", "base.width (was 8, now not set)",
                                          "search.space.elr (was [0.1, 0.2], now [0.1, 0.3])",
                                          "max_failures (was not set, now 1)"]
    assert spec_differences(old, old) == []
