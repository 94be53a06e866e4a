"""Where a run's tensors live: the device, the memory layout, the CPU allocator setting."""
from __future__ import annotations

import ctypes
import sys

import torch

from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda requested but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)


def resolve_memory_format(name: str, device: torch.device) -> torch.memory_format:
    """channels_last on CPU (oneDNN's fast path for conv, BN and pooling), NCHW on CUDA unless asked."""
    if name == "auto":
        name = "channels_last" if device.type == "cpu" else "contiguous"
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_retained = False


def retain_freed_memory() -> bool:
    """Keep freed CPU memory in this process instead of handing it back to the OS.

    glibc serves blocks above its mmap threshold with fresh mmap'd pages and unmaps
    them on free, and trims the heap top; a training step allocates and frees the same
    large activation tensors every step, so each step faults in (and the kernel zeroes)
    tens of thousands of pages. Raising the mmap threshold to its maximum (32 MiB on
    64-bit) and the trim threshold to 1 GiB makes those blocks heap blocks that are
    reused. Process-wide and one-way (called once); True if glibc accepted it, False on
    other C libraries or platforms (nothing changes there).
    """
    global _retained
    if _retained:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _retained = bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _retained
