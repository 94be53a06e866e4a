"""The Ray Tune function trainable: a thin adapter around `regimes.Trainer`.

One trial = one TrainConfig (the study's `base` + the trial's point of the
space). Each `tune.report` carries the epoch records since the previous report
(`records`, read by the driver-side ParquetSink) and the last record's values
at top level (what schedulers and searchers look at). Given the study's store,
the trial writes those rows itself before each report (`rows.TrialRows`) and
says up to which epoch they are written (`rows_written`). A checkpoint (the
Trainer's full state, a few hundred KB) goes with the report every
`checkpoint_every` epochs and at the end; a retried or resumed trial continues
from `tune.get_checkpoint()` exactly where that checkpoint left it.

A diverging trial is a result, not a crash: the core yields a last record with
`diverged=True` and NaN/inf losses and stops; here the study's objectives are
replaced by finite stand-ins (`finite_objective`) so Optuna and ASHA always see
a number.

The trainable keeps the trial's trajectory (train loss, accuracy, eff. grad
norm per epoch; saved with every checkpoint) and labels it with the core
classifier: a trial's last report carries `regime` (read by the boundary
search). With `early_stop` in the spec, after every epoch it asks
`regimes.regime.stop_decision` whether the regime is decided; if so the trial
ends there, its records carry `decided_regime` (None before the last) and the
sink marks it `stopped_decided`.
"""
from __future__ import annotations

import json
import math
import os
import socket
import tempfile

from ray import tune

from regimes import regime as R
from regimes.errors import ConfigError

from .rows import DECIDED_KEY  # noqa: F401  (in records: the label an early-stopped trial stopped with)
from .spec import Study

CHECKPOINT_FILE = "trainer.pt"
LAST_RECORD_FILE = "last_record.json"   # the record the checkpoint was taken after
RECORDS_FILE = "records.json"            # every epoch record up to the checkpoint: the trajectory the
                                         # regime classifier reads, and what rebuilds lost Parquet rows
HISTORY_FILE = "trajectory.json"         # its predecessor (classifier series only), still read
REGIME_KEY = "regime"            # the trial's label, in its last report
TRAJECTORY = ("epoch", "train_loss", "train_acc", "eff_grad_norm")
RECORDS_KEY = "records"          # list of epoch records in one report (the Parquet rows)
PACK_COLUMN = "pack_id"          # packed studies: the Tune trial that trained a member (epochs and trials rows)
ROWS_KEY = "rows_written"        # in a report (a pack's: per member): the epoch up to which the trial
                                 # has written its rows itself (rows.TrialRows); absent: it writes none
CONFIG_ERROR_KEY = "config_error"   # in a report just before the trial raises: do not retry it
MEMBERS_KEY = "members"          # a packed trial: in its config, the members' points; in a report, per
                                 # member {"member": k, "records": [...], "regime": label once it is done}
ENDED_KEY = "ended"              # a packed trial's report: member -> last record + regime, once ended
LAST_RECORDS_FILE = "last_records.json"   # a packed trial's checkpoint: each member's last record
WORST = 1e9                      # stand-in for a non-finite objective that is neither a loss nor an accuracy


def finite_objective(metric: str, value, num_classes: int, mode: str) -> float:
    """The value a searcher sees for a non-finite `metric` of a diverged trial.

    A diverged net is a random guesser (regimes.regime), so losses get
    the cross-entropy of the uniform prediction, ln(C), and accuracies chance,
    1/C. Anything else gets the worst value for its direction.
    """
    if value is not None and isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if metric.endswith("_loss"):
        return math.log(num_classes)
    if metric.endswith("_acc"):
        return 1.0 / num_classes
    return WORST if mode == "min" else -WORST


class Trajectory:
    """The per-epoch series a trial's regime is read from (a few floats per epoch)."""

    def __init__(self, data: dict | None = None):
        self.data = {k: list((data or {}).get(k, [])) for k in TRAJECTORY}
        self.diverged = bool((data or {}).get("diverged", False))
        self.num_classes = int((data or {}).get("num_classes", 2))

    def add(self, rec: dict) -> None:
        for k in TRAJECTORY:
            self.data[k].append(float(rec.get(k, math.nan)))
        self.diverged |= bool(rec.get("diverged", False))
        self.num_classes = int(rec["num_classes"])

    def _args(self):
        d = self.data
        return (d["train_loss"], d["train_acc"], d["eff_grad_norm"], self.num_classes), \
            {"diverged": self.diverged, "epochs": d["epoch"]}

    def label(self) -> str:
        if not self.data["epoch"]:
            return R.UNRESOLVED
        args, kw = self._args()
        return R.classify(*args, **kw).label

    def decision(self, stop: R.EarlyStop, after_epoch: float = 0) -> str | None:
        args, kw = self._args()
        c = R.stop_decision(*args, **kw, stop=stop, after_epoch=after_epoch)
        return None if c is None else c.label


def read_records(checkpoint_dir: str) -> list[dict]:
    """The epoch records saved with a checkpoint ([] for checkpoints that predate them)."""
    path = os.path.join(checkpoint_dir, RECORDS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return json.load(fh)


class ConfigErrorsFailOnce(tune.Callback):
    """Driver side: a trial that failed on its config (e.g. its data missing on the node) is
    not retried. Tune retries every failure up to max_failures and has no exemption for
    an error no retry can fix, so the trainable reports CONFIG_ERROR_KEY just before it
    raises, and this callback lowers that trial's retries to none: it errors once, with
    the message, through Tune's ordinary error path (sink status `errored`, searcher told).
    Every (re)start of a trial gives it the study's retries back (a resumed study retries
    its errored trials, and their data may be there now)."""

    def __init__(self, max_failures: int):
        self.max_failures = max_failures

    def on_trial_start(self, iteration, trials, trial, **info):
        trial.max_failures = self.max_failures

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if CONFIG_ERROR_KEY in result:
            trial.max_failures = 0


def _fail_once(study: Study, config: dict, error: ConfigError):
    """Report the config error (see ConfigErrorsFailOnce), then raise it as a plain error
    (Ray carries the message to the driver)."""
    from regimes.core.config import NUM_CLASSES

    message = f"trial config {config}: {error}"
    classes = NUM_CLASSES.get({**study.base, **config}.get("dataset"), 10)
    # the study's objectives, finite, for the searcher and scheduler that see every report
    metrics = {m: finite_objective(m, None, classes, mode) for m, mode in zip(study.metric, study.mode)}
    tune.report({**metrics, CONFIG_ERROR_KEY: message})
    raise RuntimeError(message)


def where(device) -> dict:
    """Where a trial runs, in every report: the host, the device, and this process's torch and
    GPU (the trials row's provenance is the trial's, not the driver's, which may have no GPU)."""
    import torch

    return {"trial_host": socket.gethostname(), "trial_device": str(device), "trial_torch_version": torch.__version__,
            "trial_cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else ""}


def member_id(pack_trial_id: str, k: int) -> str:
    """The trial id of member k of a packed Tune trial: each member is a trial in the results."""
    return f"{pack_trial_id}_m{k}"


def _trial_rows(store, study: Study, trial_id: str, cfg, restored: int, history: list[dict], columns=None):
    """This attempt's writer of the trial's own rows (rows.TrialRows), or None without a store
    (then the driver's sink writes every row it is sent)."""
    if store is None:
        return None
    from .rows import TrialRows

    return TrialRows(store, study.name, trial_id, cfg, restored, history, columns)


def run_trial(config: dict, study: Study, store=None) -> None:
    """Function trainable: train one trial of `study`, reporting every epoch record. With
    `store` (the study's StudyStore) the trial writes its own epoch rows there (rows.TrialRows)."""
    # Tune moves the worker into the trial folder; a relative data_root means the job's folder.
    os.chdir(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd()))
    if MEMBERS_KEY in config:
        return run_pack(config[MEMBERS_KEY], study, store)
    from regimes.run import Trainer     # here, not at the top: the driver imports this module, not torch
    try:
        cfg = study.config(config)
        trainer = Trainer(cfg)      # e.g. data_root missing on this node
    except ConfigError as e:        # retrying cannot help: the trial fails once, with the message
        _fail_once(study, config, e)
    restored_from, last_rec, traj, history = 0, None, Trajectory(), []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.restore(os.path.join(d, CHECKPOINT_FILE))
            with open(os.path.join(d, LAST_RECORD_FILE)) as fh:
                last_rec = json.load(fh)
            history = read_records(d)
            for r in history:
                traj.add(r)
            if not history and os.path.exists(os.path.join(d, HISTORY_FILE)):
                with open(os.path.join(d, HISTORY_FILE)) as fh:
                    traj = Trajectory(json.load(fh))
        restored_from = trainer.epoch
    here = where(trainer.device)
    rows = _trial_rows(store, study, tune.get_context().get_trial_id(), cfg, restored_from, history)

    def report(rec: dict, records: list[dict], save: bool, last: bool = False, again: bool = False) -> None:
        metrics = {**rec, RECORDS_KEY: records, "restored_from_epoch": restored_from, **here}
        if rows is not None:      # rows go to the partition before the report that carries them
            metrics[ROWS_KEY] = rows.add([] if again else records, end=last)
        if last:
            metrics[REGIME_KEY] = rec.get(DECIDED_KEY) or traj.label()
        for m, mode in zip(study.metric, study.mode):
            metrics[m] = finite_objective(m, rec.get(m), rec["num_classes"], mode)
        if not save:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            trainer.save(os.path.join(d, CHECKPOINT_FILE))
            with open(os.path.join(d, LAST_RECORD_FILE), "w") as fh:
                json.dump(rec, fh)      # NaN/inf allowed: Python's json writes them
            with open(os.path.join(d, RECORDS_FILE), "w") as fh:
                json.dump(history, fh)  # NaN/inf allowed, as above
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    if last_rec is not None and (last_rec["diverged"] or last_rec["epoch"] >= cfg.epochs
                                 or last_rec.get(DECIDED_KEY)):
        # Restored from the final checkpoint (the driver died before Tune saw the trial end):
        # nothing left to train; say the last word again so Tune and the searcher get it.
        report(last_rec, [last_rec], save=False, last=True, again=True)
        return

    stop = study.early_stop
    pending: list[dict] = []
    for rec in trainer.run():
        traj.add(rec)
        epoch = rec["epoch"]
        last = rec["diverged"] or epoch >= cfg.epochs
        if stop is not None:
            rec = {**rec, DECIDED_KEY: None}       # same columns in every epoch row
            # the windows start after the warm-up: the regime is that of the fixed rate
            decided = None if last else traj.decision(stop, after_epoch=math.ceil(cfg.warmup_epochs))
            if decided is not None:
                rec[DECIDED_KEY], last = decided, True
        pending.append(rec)
        history.append(rec)
        save = last or epoch % study.checkpoint_every == 0
        if save or epoch % study.epochs_per_report == 0:
            report(rec, pending, save, last)
            pending = []
        if last:
            break


def run_pack(points: list[dict], study: Study, store=None) -> None:
    """Function trainable of a packed trial: the configs of `points` trained as one network
    (regimes.core.pack). Each report carries, per member, its epoch records since the last
    report (MEMBERS_KEY, for the sink) and, cumulatively, every member whose run has ended
    (diverged, last epoch, regime decided) with its last record and `regime` (ENDED_KEY, for
    the console, the searcher and the summary: a pack's last report has every member's last
    word). A member that ends leaves the pack. A checkpoint holds the whole pack, each
    member's last record and its records so far; a retried or resumed pack continues from it
    for every member at once."""
    from regimes.core.pack import PackedTrainer

    try:
        cfgs = [study.config(p) for p in points]
        trainer = PackedTrainer(cfgs)
    except ConfigError as e:
        _fail_once(study, {MEMBERS_KEY: points}, e)
    K = len(cfgs)
    trajs = [Trajectory() for _ in range(K)]
    history: list[list[dict]] = [[] for _ in range(K)]
    last: dict[int, dict] = {}                      # member -> its last record so far
    ended: dict[int, dict] = {}                     # member -> its last record + regime, once it ended
    restored_from = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.restore(os.path.join(d, CHECKPOINT_FILE))
            with open(os.path.join(d, LAST_RECORDS_FILE)) as fh:
                last = {int(k): r for k, r in json.load(fh).items()}
            with open(os.path.join(d, RECORDS_FILE)) as fh:
                history = json.load(fh)
        for k in range(K):
            for r in history[k]:
                trajs[k].add(r)
        restored_from = trainer.epoch
        over = trainer.epoch >= cfgs[0].epochs
        for k in last:
            if over or k not in trainer.members:
                ended[k] = {**last[k], REGIME_KEY: last[k].get(DECIDED_KEY) or trajs[k].label()}

    here = where(trainer.device)
    pack_id = tune.get_context().get_trial_id()
    rows = [_trial_rows(store, study, member_id(pack_id, k), cfgs[k], last[k]["epoch"] if k in last else 0,
                        history[k], columns={PACK_COLUMN: pack_id}) for k in range(K)] if store is not None else None
    if rows is not None:
        for k in ended:          # members that had ended before this attempt: their rows are whole
            rows[k].add([], end=True)

    def member_entry(k: int, recs: list[dict], again: bool) -> dict:
        entry = {"member": k, RECORDS_KEY: recs}
        if rows is not None:     # rows go to the partition before the report that carries them
            entry[ROWS_KEY] = rows[k].add([] if again else recs, end=k in ended)
        return entry

    def report(pending: dict[int, list[dict]], save: bool, again: bool = False) -> None:
        metrics = {MEMBERS_KEY: [member_entry(k, recs, again) for k, recs in sorted(pending.items())],
                   ENDED_KEY: {str(k): r for k, r in sorted(ended.items())},
                   "epoch": trainer.epoch, "members_training": K - len(ended),
                   "restored_from_epoch": restored_from, **here}
        if not save:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            trainer.save(os.path.join(d, CHECKPOINT_FILE))
            with open(os.path.join(d, LAST_RECORDS_FILE), "w") as fh:
                json.dump({str(k): r for k, r in last.items()}, fh)    # NaN/inf allowed: Python's json
            with open(os.path.join(d, RECORDS_FILE), "w") as fh:
                json.dump(history, fh)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    if len(ended) == K:
        # Restored from the final checkpoint (the driver died before Tune saw the trial end):
        # say every member's last word again so Tune and the searcher get it.
        report({k: [r] for k, r in last.items()}, save=False, again=True)
        return

    stop = study.early_stop
    pending: dict[int, list[dict]] = {}
    for recs in trainer.run():
        decided_now, ended_now = [], False
        for k, rec in recs.items():
            trajs[k].add(rec)
            done = rec["diverged"] or rec["epoch"] >= cfgs[k].epochs
            if stop is not None:
                rec = {**rec, DECIDED_KEY: None}       # same columns in every epoch row
                # the windows start after the warm-up: the regime is that of the fixed rate
                decided = None if done else trajs[k].decision(stop, after_epoch=math.ceil(cfgs[k].warmup_epochs))
                if decided is not None:
                    rec[DECIDED_KEY], done = decided, True
                    decided_now.append(k)
            pending.setdefault(k, []).append(rec)
            history[k].append(rec)
            last[k] = rec
            if done:
                ended[k] = {**rec, REGIME_KEY: rec.get(DECIDED_KEY) or trajs[k].label()}
                ended_now = True
        trainer.finish(decided_now)       # diverged members leave by themselves
        epoch = trainer.epoch
        finished = len(ended) == K
        save = finished or epoch % study.checkpoint_every == 0
        if save or ended_now or epoch % study.epochs_per_report == 0:
            report(pending, save)
            pending = {}
        if finished:
            break


def pack_members(config: dict, result: dict | None) -> list[tuple[int, dict, dict | None]]:
    """(member index, member point, its last record + regime or None if it has not ended) for
    every member of a packed trial, from its config and a report (the last one: every member)."""
    ended = (result or {}).get(ENDED_KEY) or {}
    return [(k, dict(p), ended.get(str(k))) for k, p in enumerate(config[MEMBERS_KEY])]
