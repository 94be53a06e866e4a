"""What the driver pays per epoch row: synthetic Tune reports through the real ParquetSink.

No training and no Ray: fake trials (trial_id, config, status, num_failures,
checkpoint) go through the sink's Tune hooks as Tune calls them (a step around
each event; on_trial_complete just before the trial is TERMINATED). Up to
`--concurrency` trials run at once; each reports one record per epoch, the
records being copies of one real record (one epoch of a tiny digits run) with
the epoch changed. Time is simulated: every running trial finishes an epoch
every `--epoch-s` seconds, so a writer that waits on the clock (to gather rows)
sees the report rate of such a cluster, while the time spent is measured for
real (perf_counter around every call).

Two ways the rows reach the files (`--writer`):
- `trial` (what `regimes sweep` does): each fake trial writes its own rows with
  the real `TrialRows`, as the trainable does in its worker before each report,
  and the report says how far they are written; the driver writes nothing of a
  trial that ends normally. Printed: the driver's ms per row and, apart, the
  trial's (paid in each worker process, in parallel, next to its epochs).
- `driver`: reports without that count, so the driver's sink writes every row
  (the results path before trials wrote their own rows).

Each size runs in its own process; printed per size: driver ms per epoch row
(all hooks, the end of the experiment included; one-off imports and the git commit
look-up are done before the clock starts), the mean latency of a trial's
first and last report and the slowest report, the driver's peak RSS growth
over the run, and a check that the epochs dataset and trials.parquet read back
with every row once. A size that needs more than `--max-seconds` of driver time
(the driver's and the trials' together) is cut there ("capped": the numbers are
for the rows reported so far).

    python benchmarks/sink_scale.py                                   # the four sizes
    python benchmarks/sink_scale.py --sizes 10x10,1000x10 --max-seconds 60
    python benchmarks/sink_scale.py --writer driver                   # the driver writes every row
    PYTHONPATH=/tmp/before python benchmarks/sink_scale.py --writer driver   # another checkout's sink
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

SIZES = "10x10,10x1000,1000x10,10000x100"


def one(trials: int, epochs: int, concurrency: int, epoch_s: float, max_seconds: float, writer: str) -> dict:
    import psutil

    from regimes import TrainConfig, train
    from regimes.study import spec
    from regimes.study.sink import ParquetSink
    from regimes.study.storage import StudyStore

    base = {"dataset": "digits", "model": "convnet_si", "width": 4, "subset": 64, "batch_size": 32,
            "augment": False, "epochs": epochs, "device": "cpu"}
    record = next(iter(train(TrainConfig.from_dict({**base, "epochs": 1}))))
    study = spec.from_dict({"name": "bench", "base": base,
                            "search": {"kind": "grid", "space": {"seed": list(range(trials))}}})
    # one-off costs of a driver's first trials.parquet (imports, the git commit) are paid here,
    # before the clock starts: they do not depend on the study's size
    import optuna  # noqa: F401
    import ray  # noqa: F401

    from regimes import results
    results.provenance(device="cpu")
    proc = psutil.Process()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as storage:
        store = StudyStore(storage, "bench")
        now = [0.0]
        kw = {"clock": lambda: now[0]} if "clock" in inspect.signature(ParquetSink).parameters else {}
        sink = ParquetSink(study, store, **kw)
        started: list = []          # the trials Tune knows so far (it creates them as slots free up)
        driver, worker = [0.0], [0.0]
        cfg = study.config({"seed": 0})
        if writer == "trial":
            from regimes.study.sink import TrialRows
            from regimes.study.trainable import ROWS_KEY

        def call(hook, *args):
            t0 = time.perf_counter()
            hook(*args)
            dt = time.perf_counter() - t0
            driver[0] += dt
            return dt

        def step(hook, *args):
            call(sink.on_step_begin, 0, started)
            dt = call(hook, 0, started, *args)
            call(sink.on_step_end, 0, started)
            return dt

        rss0 = peak = proc.memory_info().rss
        waiting = [SimpleNamespace(trial_id=f"bench_{i:05d}", config={"seed": i}, status="PENDING",
                                   num_failures=0, checkpoint=None) for i in range(trials)]
        waiting.reverse()
        running: dict = {}          # trial_id -> [trial, next epoch]
        rows, first_lat, last_lat, worst, capped = 0, [], [], 0.0, False
        while (waiting or running) and not capped:
            while waiting and len(running) < concurrency:
                t = waiting.pop()
                t.status = "RUNNING"
                started.append(t)
                running[t.trial_id] = [t, 1]
                if writer == "trial":     # the attempt's writer, made as the trainable makes it
                    t0 = time.perf_counter()
                    t.rows = TrialRows(store, "bench", t.trial_id, cfg, clock=lambda: now[0])
                    worker[0] += time.perf_counter() - t0
                step(sink.on_trial_start, t)
            for tid in list(running):
                t, e = running[tid]
                rec = {**record, "epoch": e, "step": e * 10}
                now[0] += epoch_s / max(len(running), 1)
                result = {"records": [rec], "trial_host": "node-1", "trial_device": "cpu"}
                if writer == "trial":     # the trial writes its rows before it reports them
                    t0 = time.perf_counter()
                    result[ROWS_KEY] = t.rows.add([rec], end=e == epochs)
                    worker[0] += time.perf_counter() - t0
                dt = step(sink.on_trial_result, t, result)
                rows += 1
                worst = max(worst, dt)
                if e == 1:
                    first_lat.append(dt)
                if e == epochs:
                    last_lat.append(dt)
                    step(sink.on_trial_complete, t)
                    t.status = "TERMINATED"
                    t.rows = None         # the trial's process ends
                    del running[tid]
                else:
                    running[tid][1] = e + 1
                if rows % 500 == 0:
                    peak = max(peak, proc.memory_info().rss)
                if driver[0] + worker[0] > max_seconds:
                    capped = True
                    break
        call(sink.on_experiment_end, started)
        peak = max(peak, proc.memory_info().rss)
        check = "capped" if capped else _check(store.local_dir, trials, epochs)
    return {"trials": trials, "epochs": epochs, "rows": rows, "capped": capped,
            "ms_per_row": 1e3 * driver[0] / rows, "driver_s": driver[0],
            "trial_ms_per_row": 1e3 * worker[0] / rows if writer == "trial" else float("nan"),
            "first_ms": 1e3 * sum(first_lat) / max(len(first_lat), 1),
            "last_ms": 1e3 * sum(last_lat) / len(last_lat) if last_lat else float("nan"),
            "worst_ms": 1e3 * worst, "rss_mb": (peak - rss0) / 2**20, "check": check}


def _check(root, trials: int, epochs: int) -> str:
    """Every (trial, epoch) once in the dataset, one trials row per trial."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    t = ds.dataset(root / "epochs", format="parquet", partitioning="hive").to_table(columns=["trial_id", "epoch"])
    keys = set(zip(t.column("trial_id").to_pylist(), t.column("epoch").to_pylist()))
    ok = t.num_rows == len(keys) == trials * epochs
    ok &= pq.read_table(root / "trials.parquet").num_rows == trials
    return "ok" if ok else f"MISMATCH ({t.num_rows} rows, {len(keys)} distinct)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=SIZES, help=f"TRIALSxEPOCHS,... (default {SIZES})")
    ap.add_argument("--concurrency", type=int, default=64, help="trials running at once")
    ap.add_argument("--epoch-s", type=float, default=1.0, help="simulated seconds per epoch of a trial")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="driver seconds per size before it is cut")
    ap.add_argument("--writer", choices=("trial", "driver", "both"), default="both",
                    help="who writes the rows: the trials (as regimes sweep), the driver, or both in turn")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        t, e = (int(x) for x in args.one.split("x"))
        print(json.dumps(one(t, e, args.concurrency, args.epoch_s, args.max_seconds, args.writer)))
        return
    import regimes.study.sink as sink_module

    print(f"sink: {sink_module.__file__}; {args.concurrency} trials at once, an epoch every {args.epoch_s:g} s "
          f"(simulated); {os.cpu_count()} cores")
    print("ms/row, first/last/worst ms: the driver's; trial ms/row: the trials' own writes (in their workers)")
    print(f"{'writer':>6} {'trials x epochs':>16} {'rows':>8} {'ms/row':>7} {'trial ms/row':>12} {'first ms':>9} "
          f"{'last ms':>8} {'worst ms':>9} {'RSS +MB':>8}  check")
    writers = ("trial", "driver") if args.writer == "both" else (args.writer,)
    for size in args.sizes.split(","):
        for writer in writers:        # interleaved: both ways of one size run back to back
            p = subprocess.run([sys.executable, __file__, "--one", size, "--concurrency", str(args.concurrency),
                                "--epoch-s", str(args.epoch_s), "--max-seconds", str(args.max_seconds),
                                "--writer", writer], capture_output=True, text=True)
            if p.returncode != 0:
                print(f"{writer:>6} {size:>16} failed: {p.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            print(f"{writer:>6} {size:>16} {r['rows']:>8} {r['ms_per_row']:>7.3f} {r['trial_ms_per_row']:>12.3f} "
                  f"{r['first_ms']:>9.2f} {r['last_ms']:>8.2f} {r['worst_ms']:>9.1f} {r['rss_mb']:>8.1f}  {r['check']}"
                  + (f" (driver {r['driver_s']:.0f} s)" if r["capped"] else ""), flush=True)


if __name__ == "__main__":
    main()
