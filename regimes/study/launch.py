"""Run a study on Ray Tune: `regimes sweep` and `regimes validate`.

    regimes sweep studies/demo_digits.yaml                       # embedded: Ray started in-process
    regimes sweep studies/x.yaml --address auto --storage s3://bucket/studies   # inside a cluster
    regimes validate studies/*.yaml

Everything a study writes goes under `<storage>/<study name>/` (see storage.py).
Running the same command again resumes the study with `Tuner.restore`: finished
trials are not re-run, unfinished and errored ones continue from their last
checkpoint. `--restart` deletes the study folder and starts over.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from pathlib import Path

from regimes.errors import ConfigError

from . import spec as spec_mod
from .spec import Study
from .lock import StudyLock
from .storage import SPEC_COPY, StudyStore


# --- CLI hooks (called by regimes/cli.py) -----------------------------------
def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="study spec (YAML), e.g. studies/demo_digits.yaml")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: 'auto' on a `ray up` cluster; default: start Ray in-process, "
                        "and then each trial's resources and its data must be on this machine")
    p.add_argument("--storage", default="results",
                   help="root of everything the study writes (Ray state, checkpoints, Optuna journal, Parquet): "
                        "a local/NFS folder or a URI such as s3://bucket/path; default: results")
    p.add_argument("--restart", action="store_true",
                   help="delete <storage>/<name>/ and start over instead of resuming")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the in-process Ray (default: all); ignored with --address")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="print only the summary at the end")
    shown.add_argument("--verbose", action="store_true",
                       help="Ray Tune's own output (its trial tables) and the trials' logs, instead of one line "
                            "per finished trial and a progress line")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files: tensorboard --logdir <storage>/<name>")


def sweep_main(args) -> int:
    from .spec import preflight

    if args.verbose and not sys.stdout.isatty():
        # the trials' logs without colour codes (read when Ray is imported): no coloured prefixes,
        # and no de-duplication, whose "[repeated Nx across cluster]" notes are always green
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    study = spec_mod.load(args.spec)
    if args.num_cpus is not None and args.num_cpus < 1:
        raise ConfigError("--num-cpus", f"{args.num_cpus} is out of range; allowed: >= 1")
    store = StudyStore(args.storage, study.name)
    # what this machine must provide, before Ray starts and before anything is written
    preflight.check_storage(args.storage, study.name)
    preflight.check_resources(study, args.address, args.num_cpus)
    problems = preflight.data_problems(study)
    if problems and not args.address:       # Ray in-process: the trials read this disk
        raise problems[0]
    for e in problems:
        print(f"warning: {e} (on this machine; the cluster's nodes that run trials need it)", file=sys.stderr)
    if advice := study.pack_advice():
        print(f"warning: {advice}", file=sys.stderr)
    if not args.restart:
        preflight.check_same_spec(study, args.storage, lambda: _resumable(store))
    print(_summary_line(args.spec, study), flush=True)
    display = () if args.quiet or args.verbose else (_console(study),)
    grid = run_study(study, store, address=args.address, restart=args.restart, num_cpus=args.num_cpus,
                     verbose=1 if args.verbose else 0, display=display, tensorboard=args.tensorboard)
    return report(study, store, grid)


def _console(study: Study):
    from .console import Console

    return Console(study)


def _resumable(store: StudyStore) -> bool:
    """Ray Tune has state to resume the study from (imports Ray Tune; starts nothing)."""
    from ray import tune

    return tune.Tuner.can_restore(store.study_path)


def add_validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", help="study spec files (YAML)")


def validate_main(args) -> int:
    """Every file, one line each: `<file>: ok - ...` on stdout or `error: <file>: <key>: ...` on
    stderr (one file: `error: <key>: ...`, as `sweep` says it); exit code 2 if any is bad.
    Data missing on this machine is a warning (a study may be meant for a cluster whose
    nodes have it)."""
    from .spec import preflight

    bad = 0
    for path in args.specs:
        try:
            study = spec_mod.load(path)
        except ConfigError as e:
            bad += 1
            if e.key == str(Path(path)):          # the file itself (missing, not YAML, ...)
                line = f"{path}: {e.message}"
            else:
                line = f"{path}: {e}" if len(args.specs) > 1 else str(e)
            print(f"error: {line}", file=sys.stderr)
            continue
        print(_summary_line(path, study))
        if advice := study.pack_advice():
            print(f"warning: {path}: {advice}", file=sys.stderr)
        for e in preflight.data_problems(study):
            print(f"warning: {path}: {e} (on this machine; `regimes sweep` without --address refuses this)",
                  file=sys.stderr)
    return 2 if bad else 0


def _summary_line(path, study: Study) -> str:
    return f"{path}: ok - {study.summary()}"


def _print_brackets(store: StudyStore) -> None:
    """The boundary search's brackets per line, from boundary_search.json."""
    import json

    from .boundary import SUMMARY_FILE

    path = store.local_dir / SUMMARY_FILE
    if not path.exists():
        return
    s = json.loads(path.read_text())
    print(f"boundary search along {s['axis']}: {s['trials']} trials"
          + ("" if s["finished"] else " (not finished: budget spent or interrupted)"))
    for line in s["lines"]:
        where = ", ".join(f"{k}={v}" for k, v in line["point"].items()) or "-"
        for b in line["brackets"] or [{"boundary": "none in range", "lo": math.nan, "hi": math.nan,
                                        "ratio": math.nan, "known": True}]:
            print(f"  {where}: {b['boundary']} in [{b['lo']:.4g}, {b['hi']:.4g}] (x{b['ratio']:.3g}"
                  f"{'' if b['known'] else ', wider than the resolution'})")


# --- the study ---------------------------------------------------------------
def run_study(study: Study, store: StudyStore | str = "results", *, address: str | None = None,
              restart: bool = False, num_cpus: int | None = None, verbose: int = 1,
              callbacks: tuple = (), display: tuple = (), tensorboard: bool = False):
    """Run (or resume) `study`; returns Tune's ResultGrid. Starts Ray in-process unless it is up.
    Holds the study's lock throughout: a second driver of the same study is refused.

    `verbose`: Tune's verbosity (0: silent, and the in-process Ray keeps the trials' logs and its
    own INFO lines to itself). `display`: callbacks showing this driver session's progress (the
    sweep's Console); with `tensorboard` Tune's TensorBoard logger is one of them. A resumed study
    gets this session's, not those it was started with."""
    if isinstance(store, str):
        store = StudyStore(store, study.name)
    # The Parquet sink is the record: Tune keeps only its result.json per trial (no CSV copies, which
    # would also choke on the list of records in each report; TensorBoard only when asked, given the
    # scalars only: console.TensorBoardLogger).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from .console import quiet_tune_logs

    # one driver per study folder, before anything is touched; Tune's redundant warnings dropped
    with StudyLock(store), quiet_tune_logs(verbose == 0):
        if restart:
            store.delete_all()
        return _run_locked(study, store, address=address, num_cpus=num_cpus, verbose=verbose,
                           callbacks=callbacks, display=display, tensorboard=tensorboard)


def _run_locked(study: Study, store: StudyStore, *, address, num_cpus, verbose, callbacks, display=(),
                tensorboard=False):
    import logging

    import ray
    from ray import tune

    from .console import TensorBoardLogger
    from .trainable import run_trial

    display = (*display, *((TensorBoardLogger(),) if tensorboard else ()))

    started = False
    if not ray.is_initialized():
        # "local" never joins some other Ray on this machine; an address joins that cluster.
        ray.init(address=address or "local", num_cpus=None if address else num_cpus,
                 include_dashboard=False, log_to_driver=verbose > 0,
                 logging_level=logging.INFO if verbose > 0 else logging.WARNING)
        started = True
    store.make_current()      # pickled sinks and searchers resolve to where the study is now
    try:
        # trials write their own epoch rows into the study folder (an absolute path or the URI)
        rows_store = StudyStore(store.ray_storage_path, store.name)
        trainable = tune.with_resources(tune.with_parameters(run_trial, study=study, store=rows_store),
                                        {"cpu": study.cpu, "gpu": study.gpu})
        store.pull()
        if tune.Tuner.can_restore(store.study_path):
            _check_same_spec(study, store)
            _set_aside_damaged_tune_state(study, store)
            _restore_deleted_checkpoints(store)
            print(f"resuming study '{study.name}' from {store.study_path}", flush=True)
            tuner = tune.Tuner.restore(store.study_path, trainable=trainable,
                                       resume_unfinished=True, resume_errored=True)
            _this_session(tuner, verbose, display)
        else:
            store.clear_own_files()    # left by a driver that died before Tune saved any state
            _write_spec_copy(study, store)
            tuner = _new_tuner(study, store, trainable, verbose, (*callbacks, *display))
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    return grid


def _this_session(tuner, verbose: int, display: tuple) -> None:
    """A restored Tuner runs with the run config saved when the study started (Tune has no
    argument to change it): give it this session's verbosity and display callbacks in place of
    the starting session's, keeping every other callback (the sink, ...)."""
    from ray.tune.logger import TBXLoggerCallback

    from .console import Console

    local = getattr(tuner, "_local_tuner", None)      # None for a Ray client driver: left as saved
    if local is None:
        return
    rc = local.get_run_config()
    rc.callbacks = [c for c in rc.callbacks or [] if not isinstance(c, (Console, TBXLoggerCallback))] \
        + list(display)
    rc.verbose = verbose


def _new_tuner(study: Study, store: StudyStore, trainable, verbose: int, callbacks: tuple):
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from .search import make_scheduler, make_searcher
    from .sink import ParquetSink
    from .trainable import MEMBERS_KEY, ConfigErrorsFailOnce

    if study.kind == "grid" and study.pack > 1:      # one Tune trial per pack of grid points
        param_space = {MEMBERS_KEY: tune.grid_search(study.packs(study.grid_points()))}
        search_alg, num_samples = None, 1
    elif study.kind == "grid":
        param_space = {k: tune.grid_search(list(v)) for k, v in study.space.items()}
        search_alg, num_samples = None, 1
    elif study.kind == "boundary":
        from .boundary import BoundarySearch

        search_alg = BoundarySearch.from_study(study, store=store)
        param_space, num_samples = {}, study.budget
    else:
        param_space, search_alg, num_samples = {}, make_searcher(study, store.journal_path, store), study.num_samples
    run_config = tune.RunConfig(
        name=study.name,
        storage_path=store.ray_storage_path,
        # Keep only the latest checkpoint. This also makes Tune snapshot the experiment after
        # every checkpoint, so a resumed driver knows each trial's last one: a trial that had
        # finished resumes from its final checkpoint and is not trained again.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=study.max_failures),
        callbacks=[ParquetSink(study, store), ConfigErrorsFailOnce(study.max_failures), JsonLoggerCallback(),
                   *callbacks],
        verbose=verbose,
    )
    tune_config = tune.TuneConfig(search_alg=search_alg, scheduler=make_scheduler(study),
                                  num_samples=num_samples, reuse_actors=True)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


_GRID_STATE = ("experiment_state-", "basic-variant-state-")
_SEARCHER_STATE = ("experiment_state-", "search_gen_state-", "searcher-state-")   # optuna, other searchers


def _set_aside_damaged_tune_state(study: Study, store: StudyStore) -> None:
    """Make Tune resume from its newest *complete* snapshot.

    Tune copies each snapshot (one set of files per driver session) from its
    staging dir into the study folder file by file; a driver killed during the
    copy leaves a truncated file, and Tune would then silently start the
    experiment over in the same folder. A damaged newest set is moved to
    `.damaged-<session>/` so Tune falls back to the previous session's set.
    A file is judged without being run: a pickle by walking its opcodes (it must
    end in STOP with nothing after), never by unpickling it.
    """
    import io
    import json
    import pickletools

    if store.remote:
        return      # object stores write whole objects: no torn files
    folder = Path(store.study_path)
    sessions: dict[str, list[Path]] = {}
    families = _GRID_STATE if study.kind == "grid" else _SEARCHER_STATE
    for prefix in families:
        for f in folder.glob(f"{prefix}*"):
            sessions.setdefault(f.name[len(prefix):].rsplit(".", 1)[0], []).append(f)

    def complete_pickle(data: bytes) -> bool:
        """The opcodes decode up to a final STOP and nothing follows (pickletools only
        decodes; no object is built, no global looked up). A torn file has no STOP."""
        stream = io.BytesIO(data)
        last = None
        for last, _, _ in pickletools.genops(stream):    # raises on a truncated opcode or argument
            pass
        return last is not None and last.name == "STOP" and not stream.read()

    def intact(files: list[Path]) -> bool:
        if len(files) != len(families):
            return False
        try:
            for f in files:
                data = f.read_bytes()
                # some of Tune's ".json" files are pickles (protocol 2+ starts with 0x80)
                if data[:1] == b"\x80":
                    if not complete_pickle(data):
                        return False
                else:
                    json.loads(data)
        except Exception:  # any unreadable file: a torn write
            return False
        return True

    for session in sorted(sessions, reverse=True):
        if intact(sessions[session]):
            return
        aside = folder / f".damaged-{session}"
        aside.mkdir(exist_ok=True)
        for f in sessions[session]:
            os.replace(f, aside / f.name)
        print(f"Tune's snapshot of session {session} was cut short (driver killed while writing it); "
              f"set aside in {aside}", flush=True)
    raise ConfigError(str(folder), "Ray Tune's saved state is damaged (the driver was killed while "
                      "writing its first snapshot); rerun with --restart to start the study over")


def _restore_deleted_checkpoints(store: StudyStore) -> None:
    """Give Tune back a trial checkpoint its saved state names but that is gone.

    Tune keeps one checkpoint per trial: registering a new one deletes the previous one
    at once, and only the experiment snapshot saved after it names the new one. A driver
    killed in between leaves a snapshot naming a deleted checkpoint; Tune then fails that
    trial on every restore ("does not exist on storage anymore") and the study can never
    finish it. The trial's newest checkpoint is still there and is a later state of the
    same run, so it is copied under the names of the (at most two) checkpoints before it
    that are missing: whichever the snapshot names, the trial resumes from the newest
    state, and rows after it are reported again (the sink drops and rewrites them)."""
    import shutil

    if store.remote:
        return
    for trial_dir in Path(store.study_path).glob("run_trial_*"):
        found = sorted((int(d.name.rsplit("_", 1)[1]), d) for d in trial_dir.glob("checkpoint_*")
                       if d.is_dir() and d.name.rsplit("_", 1)[1].isdigit())
        if not found:
            continue
        newest, path = found[-1]
        have = {i for i, _ in found}
        for i in range(max(0, newest - 2), newest):
            if i not in have:
                shutil.copytree(path, trial_dir / f"checkpoint_{i:06d}")


def _write_spec_copy(study: Study, store: StudyStore) -> None:
    import yaml

    store.local_dir.mkdir(parents=True, exist_ok=True)
    tmp = store.local_dir / f".{SPEC_COPY}.tmp"
    tmp.write_text(yaml.safe_dump(study.source, sort_keys=False))
    os.replace(tmp, store.local_dir / SPEC_COPY)
    store.push(SPEC_COPY)


def _check_same_spec(study: Study, store: StudyStore) -> None:
    import yaml

    path = store.local_dir / SPEC_COPY
    if not path.exists():
        return
    if yaml.safe_load(path.read_text()) != study.source:
        raise ConfigError("spec", f"differs from the one study '{study.name}' was started with "
                          f"({store.study_path}/{SPEC_COPY}); rerun with --restart to start over, "
                          "or give the changed study a new name")


def unfinished_trials(study: Study, statuses: Counter, store: StudyStore) -> int:
    """How many of the study's trials are still to run: those Tune left `running` plus, for a
    grid or an Optuna study, those it never started (Ctrl-C between two trials leaves none
    running). A boundary search that was cut short counts its unspent budget only while
    some bracket is still wider than the resolution."""
    running = statuses.get("running", 0)
    ended = sum(statuses.values()) - running
    if study.kind != "boundary":
        return max(0, study.num_trials() - ended)
    import json

    from .boundary import SUMMARY_FILE

    path = store.local_dir / SUMMARY_FILE
    finished = path.exists() and json.loads(path.read_text())["finished"]
    return running if finished else max(running, study.budget - ended)


def report(study: Study, store: StudyStore, grid) -> int:
    """Print where the results are and how the trials ended; 1 if any trial errored, 130 if
    the sweep was interrupted (Ctrl-C) before every trial had run."""
    import pyarrow.parquet as pq

    trials_file = store.local_dir / "trials.parquet"
    statuses = Counter(pq.read_table(trials_file, columns=["status"]).column("status").to_pylist()) \
        if trials_file.exists() else Counter()
    print(f"study '{study.name}': " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    if grid:
        from .console import study_summary

        for line in study_summary(study, [(r.config or {}, r.metrics or {}) for r in grid]):
            print(line)
    left = unfinished_trials(study, statuses, store)
    if left:
        print(f"interrupted: {left} trials unfinished; run the same command again to resume")
    print(f"results: {store.study_path}/epochs/ and {store.study_path}/trials.parquet")
    if study.kind == "optuna":
        print(f"optuna: optuna-dashboard {store.journal_path}")
    if study.kind == "boundary":
        _print_brackets(store)
    errors = [r for r in grid if r.error is not None]
    for r in errors:
        print(f"trial errored: {r.path}: {type(r.error).__name__}: {r.error}", file=sys.stderr)
    return 1 if errors else 130 if left else 0
