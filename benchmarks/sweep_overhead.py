"""How much does running a study on Ray Tune cost over the training itself?

Runs an N-trial grid of short, equal trials on a local Ray and prints the
study's wall time against the ideal: the sum of the trials' own training time
(the Trainer's `time_s`: epochs + per-epoch measures) divided by the number of
trials that can run at once. Then where the difference goes:

- Ray start-up (ray.init, not part of the study's wall time),
- inside trials: Tune's `time_total_s` minus `time_s` = building the Trainer
  (imports, data on the device, model) + tune.report + checkpoints,
- on the driver: our callbacks, the ParquetSink and the sweep's Console (every Tune hook of
  theirs timed here by wrapping it; the Parquet writes among them counted apart),
- the rest: actor start-up, scheduling, Tune's controller and experiment snapshots.

Per trial, Tune's own overhead (the slot time a trial costs beyond its training: the
study's wall time x slots minus the trials' training time, over the trials) is printed
next to ours (the sink's and the console's driver time per trial).

    python benchmarks/sweep_overhead.py                  # 8 trials x 5 epochs, 2 slots
    python benchmarks/sweep_overhead.py --trials 16 --epochs 20 --checkpoint-every 1
    python benchmarks/sweep_overhead.py --trials 200 --epochs 1 --width 4 --subset 256 --checkpoint-every 1
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--subset", type=int, default=0, help="digits training examples (0 = all)")
    ap.add_argument("--num-cpus", type=int, default=2, help="Ray CPUs = parallel slots (1 CPU per trial)")
    ap.add_argument("--checkpoint-every", type=int, default=5)
    ap.add_argument("--epochs-per-report", type=int, default=1)
    args = ap.parse_args()

    import ray

    from ray import tune

    from regimes import results
    from regimes.study import spec
    from regimes.study.console import Console
    from regimes.study.launch import run_study
    from regimes.study.sink import ParquetSink

    # Time the driver's Parquet writes (the sink calls atomic_write through the module) and
    # every Tune hook of our callbacks.
    spent = {"parquet": [0.0, 0], "sink": [0.0, 0], "console": [0.0, 0]}

    def timed(fn, key):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key][0] += time.perf_counter() - t0
                spent[key][1] += 1
        return wrapper

    results.atomic_write = timed(results.atomic_write, "parquet")
    for cls, key in ((ParquetSink, "sink"), (Console, "console")):
        for name in dir(tune.Callback):
            if name.startswith("on_") and name in cls.__dict__:
                setattr(cls, name, timed(cls.__dict__[name], key))

    elrs = [10 ** (-4 + 3 * i / max(args.trials - 1, 1)) for i in range(args.trials)]   # 1e-4 .. 1e-1
    study = spec.from_dict({
        "name": "overhead",
        "base": {"dataset": "digits", "model": "convnet_si", "width": args.width, "subset": args.subset,
                 "batch_size": 32, "augment": False, "epochs": args.epochs, "device": "cpu"},
        "search": {"kind": "grid", "space": {"elr": elrs}},
        "checkpoint_every": args.checkpoint_every, "epochs_per_report": args.epochs_per_report,
        "resources": {"cpu": 1}})
    slots = args.num_cpus

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as storage:
        t0 = time.perf_counter()
        with open(os.devnull, "w") as quiet:
            grid = run_study(study, storage, verbose=0, display=(Console(study, stream=quiet, tty=False),))
        wall = time.perf_counter() - t0
    ray.shutdown()

    train = sum(r.metrics["time_s"] for r in grid)
    in_trial = sum(r.metrics["time_total_s"] - r.metrics["time_s"] for r in grid)
    ideal = train / slots
    rest = wall - ideal - in_trial / slots
    print(f"{args.trials} trials x {args.epochs} epochs (convnet_si width {args.width}, digits), "
          f"{slots} slots, checkpoint every {args.checkpoint_every} epochs, "
          f"report every {args.epochs_per_report} epochs; {os.cpu_count()} cores")
    print(f"study wall time                       {wall:8.2f} s")
    print(f"ideal: sum of training time / slots   {ideal:8.2f} s   ({train:.2f} s / {slots})")
    print(f"ratio wall / ideal                    {wall / ideal:8.2f}")
    print("where the difference goes:")
    print(f"  inside trials (Trainer build, tune.report, checkpoints) / slots  {in_trial / slots:8.2f} s")
    print(f"  actor start-up, scheduling, Tune controller, snapshots          {rest:8.2f} s")
    print(f"  (on the driver, overlapping trials) ParquetSink hooks           {spent['sink'][0]:8.2f} s"
          f"   ({spent['parquet'][1]} Parquet files, {spent['parquet'][0]:.2f} s)")
    print(f"  (on the driver, overlapping trials) Console hooks               {spent['console'][0]:8.2f} s")
    print(f"(not in the wall time) Ray start-up                             {ray_start:8.2f} s")
    n = len(grid)
    print(f"per trial ({n}):")
    print(f"  Tune, slot time beyond training (wall x slots - training) / n  {1e3 * (wall * slots - train) / n:8.1f} ms")
    print(f"    of which inside the trial (Trainer build, report, ckpt)      {1e3 * in_trial / n:8.1f} ms")
    print(f"  ours on the driver: ParquetSink                                {1e3 * spent['sink'][0] / n:8.1f} ms"
          f"   ({spent['sink'][1] / n:.1f} hook calls)")
    print(f"  ours on the driver: Console                                    {1e3 * spent['console'][0] / n:8.1f} ms"
          f"   ({spent['console'][1] / n:.1f} hook calls)")


if __name__ == "__main__":
    main()
