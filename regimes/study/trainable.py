"""The Ray Tune function trainable: a thin adapter around `regimes.train.Trainer`.

One trial = one TrainConfig (the study's `base` + the trial's point of the
space). Each `tune.report` carries the epoch records since the previous report
(`records`, read by the driver-side ParquetSink) and the last record's values
at top level (what schedulers and searchers look at). A checkpoint (the
Trainer's full state, a few hundred KB) goes with the report every
`checkpoint_every` epochs and at the end; a retried or resumed trial continues
from `tune.get_checkpoint()` exactly where that checkpoint left it.

A diverging trial is a result, not a crash: the core yields a last record with
`diverged=True` and NaN/inf losses and stops; here the study's objectives are
replaced by finite stand-ins (`finite_objective`) so Optuna and ASHA always see
a number.
"""
from __future__ import annotations

import json
import math
import os
import socket
import tempfile

from ray import tune

from regimes.config import ConfigError
from regimes.train import Trainer

from .spec import Study

CHECKPOINT_FILE = "trainer.pt"
LAST_RECORD_FILE = "last_record.json"   # the record the checkpoint was taken after
RECORDS_KEY = "records"          # list of epoch records in one report (the Parquet rows)
WORST = 1e9                      # stand-in for a non-finite objective that is neither a loss nor an accuracy


def finite_objective(metric: str, value, num_classes: int, mode: str) -> float:
    """The value a searcher sees for a non-finite `metric` of a diverged trial.

    A diverged net is a random guesser (DESIGN.md, "Regimes"), so losses get
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


def run_trial(config: dict, study: Study) -> None:
    """Function trainable: train one trial of `study`, reporting every epoch record."""
    # Tune moves the worker into the trial folder; a relative data_root means the job's folder.
    os.chdir(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd()))
    try:
        cfg = study.config(config)
        trainer = Trainer(cfg)      # e.g. data_root missing on this node
    except ConfigError as e:        # re-raised as a plain error: Ray copies trial exceptions
        raise RuntimeError(f"trial config {config}: {e}") from None
    restored_from, last_rec = 0, None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.restore(os.path.join(d, CHECKPOINT_FILE))
            with open(os.path.join(d, LAST_RECORD_FILE)) as fh:
                last_rec = json.load(fh)
        restored_from = trainer.epoch

    def report(rec: dict, records: list[dict], save: bool) -> None:
        metrics = {**rec, RECORDS_KEY: records, "restored_from_epoch": restored_from,
                   "trial_host": socket.gethostname(), "trial_device": str(trainer.device)}
        for m, mode in zip(study.metric, study.mode):
            metrics[m] = finite_objective(m, rec.get(m), rec["num_classes"], mode)
        if not save:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            trainer.save(os.path.join(d, CHECKPOINT_FILE))
            with open(os.path.join(d, LAST_RECORD_FILE), "w") as fh:
                json.dump(rec, fh)      # NaN/inf allowed: Python's json writes them
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    if last_rec is not None and (last_rec["diverged"] or last_rec["epoch"] >= cfg.epochs):
        # Restored from the final checkpoint (the driver died before Tune saw the trial end):
        # nothing left to train; say the last word again so Tune and the searcher get it.
        report(last_rec, [last_rec], save=False)
        return

    pending: list[dict] = []
    for rec in trainer.run():
        pending.append(rec)
        epoch = rec["epoch"]
        last = rec["diverged"] or epoch >= cfg.epochs
        save = last or epoch % study.checkpoint_every == 0
        if save or epoch % study.epochs_per_report == 0:
            report(rec, pending, save)
            pending = []
