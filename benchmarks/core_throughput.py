"""Core throughput: our training core vs a conventional PyTorch loop, same work, one run.

Both train convnet_si (width --width) on the same CIFAR-shaped data (random
uint8 images written in torchvision's on-disk format, so our real loader reads
them) for the same number of epochs with augmentation on (random crop with
4-pixel padding + horizontal flip), and both compute the per-epoch metrics the
paper plots (train-mode pass over the train set, test pass).

- ours: `regimes.train` (data on the device, batched on-device augmentation,
  device-side measures, one host sync per epoch, channels_last layout and
  retained freed memory on CPU); also run with cpu_memory=system, and with that
  and memory_format=contiguous, to show what each CPU setting gives;
- conventional: a torch DataLoader over a Dataset with per-sample torchvision
  transforms (PIL -> RandomCrop -> RandomHorizontalFlip -> ToTensor -> Normalize),
  then a separate metrics pass over train and test loaders, as the seed code does;
  the model in PyTorch's default (NCHW) layout.
  Run with num_workers 0 and 2; the faster one is the baseline.

Every measure runs in a fresh process (cpu_memory=retain changes the process's
malloc for good; the conventional loop runs with the C library's defaults).

Then our per-step training time against a bare forward + backward + step on
preloaded tensors (no augmentation, no measures, no projection), epochs of the
two alternating so that both see the same machine.

    python benchmarks/core_throughput.py [--width 16] [--n 4096] [--epochs 2] [--repeat 3]
"""
from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from regimes import TrainConfig, Trainer


def fake_cifar(n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    """Random uint8 CIFAR-shaped images and labels (train x, y, test x, y); the same every call."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n_train // 5 * 5, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, size=len(x))
    xt = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    yt = rng.integers(0, 10, size=n_test)
    return x, y, xt, yt


def write_fake_cifar(root: Path, n_train: int, n_test: int) -> None:
    """`fake_cifar` in torchvision's on-disk format (5 train batches, 1 test batch)."""
    x, y, xt, yt = fake_cifar(n_train, n_test)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, (xb, yb) in enumerate(zip(np.split(x, 5), np.split(y, 5)), start=1):
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump({b"data": xb, b"labels": yb.tolist()}, fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": xt, b"labels": yt.tolist()}, fh)


def run_ours(cfg: TrainConfig) -> float:
    """Wall seconds for all epochs, per-epoch measures included."""
    t0 = time.perf_counter()
    for _ in Trainer(cfg).run():
        pass
    return time.perf_counter() - t0


def run_conventional(cfg: TrainConfig, arrays, workers: int) -> float:
    import torchvision.transforms as T
    from PIL import Image

    xtr, ytr, xte, yte = arrays
    mean = (xtr.reshape(-1, 3, 1024).mean(axis=(0, 2)) / 255).tolist()
    std = (xtr.reshape(-1, 3, 1024).std(axis=(0, 2)) / 255).tolist()

    class Images(torch.utils.data.Dataset):
        def __init__(self, x, y, tf):
            self.x, self.y, self.tf = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y, tf

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.tf(Image.fromarray(self.x[i])), int(self.y[i])

    aug = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    plain = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    kw = dict(batch_size=cfg.batch_size, num_workers=workers, persistent_workers=workers > 0)
    train_loader = torch.utils.data.DataLoader(Images(xtr, ytr, aug), shuffle=True, drop_last=True, **kw)
    eval_train = torch.utils.data.DataLoader(Images(xtr, ytr, plain), **kw)
    eval_test = torch.utils.data.DataLoader(Images(xte, yte, plain), **kw)
    # same model, roles and optimiser set-up in the default layout; only the loop differs
    trainer = Trainer(cfg.replace(memory_format="contiguous"))
    model, opt, si = trainer.model, trainer.optimizer, trainer.si_params
    rho0 = trainer.rho0
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        model.train()
        for x, y in train_loader:
            for g in opt.param_groups:
                g["lr"] = cfg.elr * rho0 ** 2
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            with torch.no_grad():
                norm = torch.sqrt(sum((p ** 2).sum() for p in si))
                for p in si:
                    p.mul_(rho0 / norm)
        with torch.no_grad():  # the separate metrics pass
            for loader, train_mode in ((eval_train, True), (eval_test, False)):
                model.train(train_mode)
                tot = correct = 0.0
                for x, y in loader:
                    out = model(x)
                    tot += F.cross_entropy(out, y, reduction="sum").item()
                    correct += (out.argmax(1) == y).sum().item()
    return time.perf_counter() - t0


def bare_epoch(t: Trainer) -> float:
    """Seconds per step of one epoch of forward + backward + SGD step on preloaded tensors
    (no augmentation, no measures, no projection), on `t`'s model and data."""
    x, y = t.data.x_train, t.data.y_train
    model, opt, B = t.model, t.optimizer, t.cfg.batch_size
    for g in opt.param_groups:
        g["lr"] = 1e-3
    model.train()
    t0 = time.perf_counter()
    for i in range(t.steps_per_epoch):
        j = i * B
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[j:j + B]), y[j:j + B]).backward()
        opt.step()
    return (time.perf_counter() - t0) / t.steps_per_epoch


def step_times(cfg: TrainConfig, epochs: int) -> tuple[float, float, float]:
    """(our training step, bare step, overhead) over `epochs` epochs run alternately (one of
    ours, one bare, ...), so that both see the same machine: the steps are medians, the
    overhead the median of the per-pair ratios ours / bare - 1 (drifts of the machine cancel)."""
    ours = Trainer(cfg.replace(epochs=epochs))
    bare = Trainer(cfg.replace(augment=False))
    ours_s, bare_s = [], []
    for rec in ours.run():
        ours_s.append(cfg.batch_size / rec["samples_per_s"])
        bare_s.append(bare_epoch(bare))
    ratio = np.array(ours_s) / np.array(bare_s)
    return float(np.median(ours_s)), float(np.median(bare_s)), float(np.median(ratio) - 1)


KINDS = {  # name: (label, our config changes, or an int: the conventional loop with that many workers)
    "ours": ("ours (regimes.train, incl. per-epoch measures)", {}),
    "system": ("ours with cpu_memory=system", {"cpu_memory": "system"}),
    "plain": ("ours with cpu_memory=system, NCHW", {"cpu_memory": "system", "memory_format": "contiguous"}),
    "conv0": ("conventional DataLoader, num_workers=0", 0),
    "conv2": ("conventional DataLoader, num_workers=2", 2),
}


def step_epochs(args) -> int:
    """Alternating epochs of ours and bare for the step-time medians."""
    return 4 * args.repeat + 1


def base_config(args, data_root) -> TrainConfig:
    return TrainConfig.from_dict(dict(dataset="cifar10", data_root=str(data_root), model="convnet_si",
                                      width=args.width, epochs=args.epochs, batch_size=args.batch_size, elr=1e-3,
                                      augment=True, device="cpu"))


def measure(args) -> None:
    """Child process: one measure, printed as a number. A fresh process per measure, because
    cpu_memory=retain changes the process's malloc for good: the conventional loop must run
    with the C library's defaults, as it would on its own."""
    torch.set_num_threads(args.threads)
    cfg = base_config(args, args.data_root)
    if args.measure == "steps":
        n_ep = step_epochs(args)
        print(*step_times(cfg, n_ep), *step_times(cfg.replace(augment=False), n_ep))
        return
    _, change = KINDS[args.measure]
    if isinstance(change, int):
        plain = cfg.replace(cpu_memory="system", memory_format="contiguous")
        run_ours(plain.replace(epochs=1))  # warm-up (first-call overheads), defaults kept
        print(run_conventional(plain, fake_cifar(args.n, 1000), change))
    else:
        run_ours(cfg.replace(epochs=1, **change))  # warm-up (allocator, first-call overheads)
        print(run_ours(cfg.replace(**change)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--n", type=int, default=4096, help="training images (CIFAR-shaped)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repetitions; the best of each is kept")
    ap.add_argument("--measure", choices=[*KINDS, "steps"], help=argparse.SUPPRESS)  # child process
    ap.add_argument("--data-root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        return measure(args)

    def child(kind: str) -> list[float]:
        out = subprocess.run([sys.executable, __file__, "--measure", kind, "--data-root", tmp,
                              *(f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                                ("width", "n", "epochs", "batch_size", "threads", "repeat"))],
                             check=True, stdout=subprocess.PIPE, text=True)  # a failure shows its traceback
        return [float(v) for v in out.stdout.split()]

    with tempfile.TemporaryDirectory() as tmp:
        write_fake_cifar(Path(tmp), args.n, 1000)
        samples = args.epochs * (args.n // args.batch_size) * args.batch_size
        # Each measure `--repeat` times, interleaved, best (least disturbed) kept: on a shared
        # VM single timings of the same work vary by ~20%.
        t = {k: [] for k in KINDS}
        for _ in range(args.repeat):
            for k in KINDS:
                t[k] += child(k)
        best = {k: min(v) for k, v in t.items()}
        ours_step, bare_step, over, ours_step_noaug, bare_step_noaug, over_noaug = child("steps")
    best_w = min((0, 2), key=lambda w: best[f"conv{w}"])
    conv = best[f"conv{best_w}"]
    print(f"convnet_si width {args.width}, {args.n} CIFAR-shaped images, batch {args.batch_size}, "
          f"{args.epochs} epochs, augmentation on, {args.threads} threads, torch {torch.__version__}; "
          f"best of {args.repeat} interleaved runs each, each in a fresh process")
    print(f"{'loop':<48} {'samples/s':>10} {'median':>8} {'wall s':>8}")
    for k, (label, _) in KINDS.items():
        print(f"{label:<48} {samples / best[k]:>10.0f} {samples / np.median(t[k]):>8.0f} {best[k]:>8.2f}")
    print(f"throughput ratio ours / best conventional (workers={best_w}): {conv / best['ours']:.2f}x  (target >= 2x)")
    print(f"  of which: retained CPU memory {best['system'] / best['ours']:.2f}x; channels_last layout "
          f"{best['plain'] / best['system']:.2f}x; the loop itself (both NCHW, malloc defaults) "
          f"{conv / best['plain']:.2f}x")
    n_ep = step_epochs(args)
    print(f"step time (medians over {n_ep} epochs, ours and bare alternating): ours {ours_step * 1e3:.2f} ms "
          f"(aug on) vs bare {bare_step * 1e3:.2f} ms; ours {ours_step_noaug * 1e3:.2f} ms (aug off) vs bare "
          f"{bare_step_noaug * 1e3:.2f} ms")
    print(f"overhead vs bare fwd+bwd+step (median of per-epoch ratios): {100 * over_noaug:+.1f}% without "
          f"augmentation, {100 * over:+.1f}% with on-device augmentation  (target <= 15%)")


if __name__ == "__main__":
    main()
