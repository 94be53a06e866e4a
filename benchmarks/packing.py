"""Packed trials against one trial per configuration, side by side in one run.

    python benchmarks/packing.py                    # CPU: the demo study end to end + the core per width
    python benchmarks/packing.py --study-epochs 10  # a quicker study comparison
    python benchmarks/packing.py --device cuda      # GPU: the paper's ConvNet (width 32) on CIFAR-shaped data

Two measurements:

1. study (CPU only): `studies/demo_digits.yaml` run through `regimes sweep`'s own
   code path (in-process Ray, `--num-cpus`, one CPU per trial) unpacked (16 trials,
   one process each) and with pack 4, 8 and 16, in that order, each in a fresh
   folder. Printed: the study's wall time (Ray start-up included: packing also saves
   Ray's per-trial start), training samples per second over the study (every
   member's epochs x steps x batch / wall), the ratio to unpacked, and how many of
   the 16 regime labels equal the unpacked run's.
2. core: in one process, K configurations of one setting stepped as K separate
   Trainers one after the other (what K trials sharing one core or one GPU do) and
   as one PackedTrainer, for one epoch after a warm-up epoch, alternating the two
   three times; printed: samples/s of each (all K members together) and the ratio
   of the medians. On CPU: the demo's ConvNet (digits, batch 16) at widths 8, 16,
   32, with torch's threads set to 1 (one Ray trial = one CPU); on CUDA: the paper's
   c-2c-4c-8c ConvNet at width 32 on CIFAR-shaped images (random uint8 images
   written in torchvision's CIFAR-10 format to a temporary folder and read by the
   real loader), batch 128.

Every line states its setting; the device, torch and CUDA versions come first.
"""
from __future__ import annotations

import argparse
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def versions(device: str) -> str:
    import torch

    line = f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}"
    if device == "cuda":
        line += (f", CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
                 f"driver capability {'.'.join(map(str, torch.cuda.get_device_capability(0)))}")
    else:
        line += f", CPU: {os.cpu_count()} cores"
    return line


# --- 1. the demo study end to end ------------------------------------------------------------
def run_demo(pack: int, epochs: int | None, storage: str, num_cpus: int) -> tuple[float, float, dict]:
    import pyarrow.parquet as pq
    import yaml

    from regimes.study import spec
    from regimes.study.launch import run_study

    d = yaml.safe_load((ROOT / "studies" / "demo_digits.yaml").read_text())
    d["pack"] = pack
    if epochs:
        d["base"]["epochs"] = epochs
    d["name"] = f"bench-pack-{pack}"
    study = spec.from_dict(d)
    t0 = time.perf_counter()
    run_study(study, storage, verbose=0, restart=True, num_cpus=num_cpus)
    wall = time.perf_counter() - t0
    trials = pq.read_table(Path(storage) / d["name"] / "trials.parquet").to_pylist()
    from regimes.analysis.load import classify, load_study

    labels = {(r.elr, r.seed): r.regime for r in classify(load_study(Path(storage) / d["name"])).itertuples()}
    cfg = study.config({})
    steps = 1438 // cfg.batch_size             # digits' train split, the last partial batch dropped
    samples = sum(t["epochs_done"] for t in trials) * steps * cfg.batch_size
    return wall, samples / wall, labels


def study_table(args) -> None:
    print(f"\n1. demo study end to end (studies/demo_digits.yaml, epochs {args.study_epochs or 'as in the spec'}, "
          f"in-process Ray on {args.num_cpus} CPUs, 1 CPU per trial)")
    print(f"{'setting':<22}{'wall s':>9}{'samples/s':>12}{'vs unpacked':>13}{'same labels':>13}")
    storage = tempfile.mkdtemp(prefix="bench-pack-")
    base = None
    for pack in [1] + args.packs:
        wall, rate, labels = run_demo(pack, args.study_epochs, storage, args.num_cpus)
        if base is None:
            base = (wall, labels)
        same = sum(labels.get(k) == v for k, v in base[1].items())
        name = "unpacked (16 trials)" if pack == 1 else f"pack {pack} ({-(-16 // pack)} trials)"
        print(f"{name:<22}{wall:>9.1f}{rate:>12.0f}{base[0] / wall:>12.2f}x{same:>9}/{len(base[1])}", flush=True)


# --- 2. the core, per width ------------------------------------------------------------------
def fake_cifar(root: Path, n_train: int, n_test: int) -> None:
    """Random images in torchvision's CIFAR-10 layout (what the real loader reads)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = n_train // 5
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (per, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, per).tolist()}, fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                     b"labels": rng.integers(0, 10, n_test).tolist()}, fh)


def core_row(base, K: int, reps: int) -> tuple[float, float]:
    """samples/s of K configs: K Trainers one after the other vs one PackedTrainer (medians)."""
    import torch

    from regimes.core.pack import PackedTrainer
    from regimes.core.trainer import Trainer

    cfgs = [base.replace(elr=10 ** (-3 + 2 * i / max(1, K - 1)), seed=i) for i in range(K)]
    sync = torch.cuda.synchronize if base.device == "cuda" else (lambda: None)

    def timed_epoch(it):
        sync()
        t0 = time.perf_counter()
        next(it)
        sync()
        return time.perf_counter() - t0

    solo = [Trainer(c).run() for c in cfgs]
    for it in solo:
        next(it)                               # warm-up epoch (allocator, kernels, caches)
    packed = PackedTrainer(cfgs).run()
    next(packed)
    trainer = Trainer(cfgs[0])
    samples = K * trainer.steps_per_epoch * base.batch_size
    a, b = [], []
    for _ in range(reps):
        a.append(sum(timed_epoch(it) for it in solo))
        b.append(timed_epoch(packed))
    return samples / statistics.median(a), samples / statistics.median(b)


def core_table(args) -> None:
    import torch

    from regimes import TrainConfig

    if args.device == "cuda":
        data = Path(tempfile.mkdtemp(prefix="bench-cifar-"))
        fake_cifar(data, args.cifar_train, 1000)
        settings = [dict(dataset="cifar10", data_root=str(data), model="convnet_si", width=32, depth=4,
                         batch_size=128, augment=True, device="cuda")]
        what = (f"convnet_si c-2c-4c-8c, CIFAR-shaped {args.cifar_train} train images, batch 128, "
                "augmentation on, CUDA")
        packs = args.packs + [32]
    else:
        torch.set_num_threads(1)
        settings = [dict(dataset="digits", model="convnet_si", width=w, depth=4, batch_size=16, augment=False,
                         device="cpu") for w in args.widths]
        what = "convnet_si depth 4 on digits, batch 16, 1 thread (one trial's CPU)"
        packs = args.packs
    print(f"\n2. core: K configs as K Trainers in turn vs one PackedTrainer ({what}; one epoch, "
          f"median of {args.reps}, alternating)")
    print(f"{'width':>6}{'K':>5}{'separate samples/s':>20}{'packed samples/s':>18}{'packed / separate':>19}")
    for s in settings:
        # train_eval_every large: the epoch's evaluation would be the same work in both
        base = TrainConfig.from_dict({**s, "mode": "sphere", "epochs": args.reps + 1, "train_eval_every": 10_000})
        for K in packs:
            sep, pk = core_row(base, K, args.reps)
            print(f"{s['width']:>6}{K:>5}{sep:>20.0f}{pk:>18.0f}{pk / sep:>18.2f}x", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--packs", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32], help="CPU core table widths")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--study-epochs", type=int, default=None, help="override the demo's 30 epochs")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--cifar-train", type=int, default=10_000, help="CUDA: CIFAR-shaped training images")
    p.add_argument("--skip-study", action="store_true")
    p.add_argument("--skip-core", action="store_true")
    args = p.parse_args()
    print(versions(args.device))
    if args.device == "cpu" and not args.skip_study:
        study_table(args)
    if not args.skip_core:
        core_table(args)


if __name__ == "__main__":
    main()
