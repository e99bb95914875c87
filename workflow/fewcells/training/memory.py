"""The memory of a training process: settings that make CPU training steps cheaper without
changing any result, and the peak memory a training reports.

A training step of the paper CNN allocates and frees the same few-MB activation tensors every
step. Two things made that expensive here: deterministic mode fills every new tensor with NaN,
and glibc hands large freed blocks back to the kernel, so the next step page-faults them in
again. `unfilled_new_memory` and `keep_freed_memory` turn both off (see `fewcells benchmark
training` and docs/performance.md); `release_freed_memory` hands the kept memory back
between the trainings of a process that runs several.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import sys
from collections.abc import Iterator

import torch

# mallopt(3) parameters of glibc's malloc.h
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC_SETTINGS = (
    (_M_MMAP_THRESHOLD, 32 << 20),  # blocks up to 32 MB come from the heap (glibc's maximum)
    (_M_TRIM_THRESHOLD, 1 << 30),  # free memory at the heap's top is kept up to 1 GB
    (_M_TOP_PAD, 64 << 20),  # grow the heap 64 MB at a time
)


@contextlib.contextmanager
def unfilled_new_memory() -> Iterator[None]:
    """Turn off deterministic mode's filling of every new tensor with NaN, restored afterwards.

    The filling is a debugging aid against ops that read memory they never wrote; it cost 8% of
    a CPU training step here. Results stay deterministic without it.
    """
    previous = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = previous


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process for reuse instead of unmapping it.

    For the rest of the process: a training job reuses the same blocks every step instead of
    page-faulting fresh ones (a paper CNN step 8% faster here); its peak memory is the same.
    Returns False, changing nothing, where the C library is not glibc.
    """
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in _MALLOC_SETTINGS)


def release_freed_memory() -> bool:
    """Collect garbage and hand the memory glibc kept back to the kernel (malloc_trim).

    Between the trainings of one process (train.engine: sequential): without it the process
    grew by 50-100 MB with each fold, 2.0 GB after ten folds of the paper sweep instead of 1.1.
    Returns False where the C library is not glibc (garbage is collected all the same).
    """
    gc.collect()
    malloc_trim = _glibc_function("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim.argtypes, malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    malloc_trim(0)
    return True


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory in MB of this process (RUSAGE_SELF) or of its finished children
    (RUSAGE_CHILDREN), as getrusage reports it (kilobytes on Linux)."""
    return resource.getrusage(who).ru_maxrss / 1024


def _glibc_function(name: str):
    """glibc's function `name`, or None where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None
