"""Datasets as tensors on the training device, with batched on-device augmentation.

The whole dataset lives on the device (it is small: CIFAR-10 is 150 MB as
uint8, 600 MB as float32); a minibatch is an index into it, and augmentation
(random crop with zero padding, horizontal flip) is done for the whole batch at
once with one gather — no DataLoader, no per-sample Python.

Datasets:
- `digits`: scikit-learn's bundled 8x8 greyscale digits (1,797 images, 10 classes);
  a fixed stratified split, 1,438 train / 359 test. Our embedded default.
- `synthetic`: 3x8x8 images from 10 Gaussian class prototypes, for tests; fixed seed.
- `cifar10`, `cifar100`: torchvision's on-disk format (`cifar-10-batches-py/`,
  `cifar-100-python/` under `data_root`), read directly from the pickles;
  `download=true` fetches them with torchvision.

Label noise (`corrupt_train` = f): after the subset is taken, round(f * N) training
examples, drawn with a fixed seed (CORRUPT_SEED, not the run seed), get a label
drawn uniformly from the *other* C - 1 classes, so every run of a study sees the
same corrupted examples with the same wrong labels. `Data.train_corrupted` marks
them and `Data.y_train_clean` keeps the original labels. (The three-regimes
reference code draws a Bernoulli(f) mask and a label from all C classes, so about
1/C of its "corrupted" examples keep their label; ours are all wrong, and the
corrupted count is exact.)
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from .config import NUM_CLASSES, TrainConfig

# (crop padding in pixels, horizontal flip) per dataset. Digits are not mirror
# symmetric, so they are only shifted.
AUGMENT = {"digits": (1, False), "synthetic": (1, True), "cifar10": (4, True), "cifar100": (4, True)}
DATA_SEED = 0  # split and subset selection are the same for every run seed
CORRUPT_SEED = 228  # label noise: the corrupted examples and their labels are the same for every run seed


@dataclass
class Data:
    x_train: torch.Tensor  # float32 (N, C, H, W), normalised per channel
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    crop_pad: int
    flip: bool
    train_corrupted: torch.Tensor | None = None  # bool (N,): label replaced (corrupt_train > 0), else None
    y_train_clean: torch.Tensor | None = None    # int64 (N,): the original labels (corrupt_train > 0)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


def load_data(cfg: TrainConfig, device: torch.device | str = "cpu", dtype=torch.float32) -> Data:
    loader = {"digits": _digits, "synthetic": _synthetic, "cifar10": _cifar, "cifar100": _cifar}[cfg.dataset]
    xtr, ytr, xte, yte = loader(cfg)
    if cfg.subset:
        if cfg.subset > len(xtr):
            raise ConfigError("subset", f"{cfg.subset} is larger than the {len(xtr)} training examples of {cfg.dataset}")
        keep = np.random.default_rng(DATA_SEED).permutation(len(xtr))[: cfg.subset]
        xtr, ytr = xtr[keep], ytr[keep]
    corrupted = clean = None
    if cfg.corrupt_train > 0:
        clean = ytr
        ytr, corrupted = corrupt_labels(ytr, cfg.corrupt_train, NUM_CLASSES[cfg.dataset])
    # Per-channel normalisation with the statistics of the (full or subset) train split.
    mean = xtr.mean(axis=(0, 2, 3), keepdims=True)
    std = xtr.std(axis=(0, 2, 3), keepdims=True) + 1e-8
    xtr, xte = (xtr - mean) / std, (xte - mean) / std

    def t(a, dt):
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dt)

    pad, flip = AUGMENT[cfg.dataset]
    return Data(t(xtr, dtype), t(ytr, torch.int64), t(xte, dtype), t(yte, torch.int64),
                NUM_CLASSES[cfg.dataset], pad if cfg.augment else 0, flip and cfg.augment,
                None if corrupted is None else t(corrupted, torch.bool),
                None if clean is None else t(clean, torch.int64))


def corrupt_labels(y: np.ndarray, fraction: float, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, mask): round(fraction * len(y)) examples chosen by CORRUPT_SEED, each
    given a label drawn uniformly from the other num_classes - 1 classes."""
    rng = np.random.default_rng(CORRUPT_SEED)
    n = len(y)
    idx = rng.permutation(n)[: int(round(fraction * n))]
    noisy = y.copy()
    noisy[idx] = (y[idx] + rng.integers(1, num_classes, size=len(idx))) % num_classes
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return noisy, mask


def augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding `pad`) and optional horizontal flip, for a whole batch at once.

    Works in the batch's own memory layout: a channels_last batch is cropped as its
    NHWC view, so the result is channels_last without a layout copy. The random draws
    and the values do not depend on the layout."""
    if pad == 0 and not flip:
        return x
    return apply_augment(x, pad, *augment_draws(len(x), pad, flip, gen, x.device))


def augment_draws(n: int, pad: int, flip: bool, gen: torch.Generator, device) -> tuple:
    """The random draws of `augment` for a batch of n, in its order: (dy, dx, mask); None where off.
    A packed run draws each member's from the member's own generator (regimes.core.pack)."""
    dy = dx = mask = None
    if pad:
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(device)
    if flip:
        mask = torch.rand(n, generator=gen, device=gen.device).to(device) < 0.5
    return dy, dx, mask


def apply_augment(x: torch.Tensor, pad: int, dy, dx, mask) -> torch.Tensor:
    """Crop each image of x at offset (dy, dx) of its zero-padded copy, then flip where `mask`."""
    n, c, h, w = x.shape
    nhwc = c > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    v = x.permute(0, 2, 3, 1) if nhwc else x           # a view either way
    hd, wd = (1, 2) if nhwc else (2, 3)                  # spatial dims of v
    dev = x.device
    if pad:
        vp = torch.nn.functional.pad(v, (0, 0, pad, pad, pad, pad) if nhwc else (pad, pad, pad, pad))
        rows = dy[:, None] + torch.arange(h, device=dev)                # (n, h)
        cols = dx[:, None] + torch.arange(w, device=dev)                # (n, w)
        if nhwc:
            vp = vp.gather(1, rows[:, :, None, None].expand(n, h, w + 2 * pad, c))
            v = vp.gather(2, cols[:, None, :, None].expand(n, h, w, c))
        else:
            vp = vp.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
            v = vp.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    if mask is not None:
        v = torch.where(mask[:, None, None, None], v.flip(wd), v)
    return v.permute(0, 3, 1, 2) if nhwc else v


# ---------------------------------------------------------------------------
def _digits(cfg):
    """scikit-learn's bundled digits, read from its CSV without importing scikit-learn
    (the import costs seconds per Ray worker); a fixed stratified 80/20 split."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("dataset", "digits needs scikit-learn installed (it ships the images)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    x = table[:, :64].reshape(-1, 1, 8, 8) / 16.0
    y = table[:, 64].astype(np.int64)
    rng = np.random.default_rng(DATA_SEED)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):  # stratified: 20% of each class goes to the test split
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: round(0.2 * len(idx))]] = True
    return x[~test], y[~test], x[test], y[test]


def _synthetic(cfg, n_train=1024, n_test=256, classes=10, shape=(3, 8, 8)):
    rng = np.random.default_rng(1234)
    protos = rng.normal(size=(classes, *shape)).astype(np.float32)

    def draw(n):
        y = rng.integers(0, classes, size=n)
        x = protos[y] + 1.5 * rng.normal(size=(n, *shape)).astype(np.float32)
        return x.astype(np.float32), y.astype(np.int64)

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return xtr, ytr, xte, yte


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


def check_on_disk(cfg: TrainConfig) -> None:
    """ConfigError('data_root') if `cfg`'s dataset has files and they are not all under
    data_root. Reads no data: a study checks its configs with it before Ray starts."""
    if cfg.dataset not in CIFAR_LAYOUT:
        return
    folder, train_files, test_files, _ = CIFAR_LAYOUT[cfg.dataset]
    base = os.path.join(cfg.data_root, folder)
    if not os.path.isdir(base):
        raise ConfigError("data_root", f"{base} not found: put torchvision's {folder}/ under "
                          f"data_root={cfg.data_root!r} or set download=true")
    for name in train_files + test_files:
        if not os.path.isfile(os.path.join(base, name)):
            raise ConfigError("data_root", f"{os.path.join(base, name)} is missing (incomplete {folder}/)")


def _cifar(cfg):
    folder, train_files, test_files, label_key = CIFAR_LAYOUT[cfg.dataset]
    base = os.path.join(cfg.data_root, folder)
    if not os.path.isdir(base) and cfg.download:
        _download_cifar(cfg)
    check_on_disk(cfg)

    def read(names):
        xs, ys = [], []
        for name in names:
            path = os.path.join(base, name)
            try:
                with open(path, "rb") as fh:
                    entry = pickle.load(fh, encoding="bytes")
            except FileNotFoundError:
                raise ConfigError("data_root", f"{path} is missing (incomplete {folder}/)") from None
            xs.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(entry[label_key], dtype=np.int64))
        return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)

    xtr, ytr = read(train_files)
    xte, yte = read(test_files)
    return xtr, ytr, xte, yte


def _download_cifar(cfg):  # pragma: no cover - needs internet
    import torchvision

    cls = torchvision.datasets.CIFAR10 if cfg.dataset == "cifar10" else torchvision.datasets.CIFAR100
    cls(cfg.data_root, train=True, download=True)
    cls(cfg.data_root, train=False, download=True)
