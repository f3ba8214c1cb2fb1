"""Process-wide settings that make CPU training faster, applied by the ``softorder`` command.

A library should not change its host process on import, so nothing here runs unless called; the
command line calls :func:`tune_cpu_allocator` once at start (``SOFTORDER_TUNE_ALLOCATOR=0`` turns
that off). ``docs/performance.md`` has the measurements.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
from collections.abc import Iterator

import torch

# mallopt parameters of glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

DEFAULT_MMAP_THRESHOLD = 32 * 2**20
DEFAULT_TRIM_THRESHOLD = 2**30
ENV_SWITCH = "SOFTORDER_TUNE_ALLOCATOR"


def tune_cpu_allocator(
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD, trim_threshold: int = DEFAULT_TRIM_THRESHOLD
) -> bool:
    """Keep freed memory mapped between training steps, so that a step's large tensors reuse pages
    instead of faulting in fresh ones. Returns whether the settings were applied.

    By default glibc returns the top of its heap to the system whenever more than about twice the
    largest recent allocation is free, which at the end of every training step it is; the next
    step then touches fresh pages, each a page fault (about 5,000 per CelebA-core step, 14% of
    its time here). This sets glibc's ``M_TRIM_THRESHOLD`` (free memory kept before trimming) and
    ``M_MMAP_THRESHOLD`` (allocations from this size on get their own mapping, returned on free),
    as the environment variables ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_`` would
    at process start. The cost is memory: up to ``trim_threshold`` bytes of freed heap stay with
    the process. Does nothing (returns False) on other C libraries, when either variable is
    already set (the user's choice stands), or when ``SOFTORDER_TUNE_ALLOCATOR=0``.
    """
    if mmap_threshold < 0 or trim_threshold < 0:
        raise ValueError(f"thresholds must be non-negative, got mmap {mmap_threshold}, trim {trim_threshold}")
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return False
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") is not None or os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None:
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    int_max = 2**31 - 1
    ok_trim = mallopt(_M_TRIM_THRESHOLD, min(int(trim_threshold), int_max)) == 1
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, min(int(mmap_threshold), int_max)) == 1
    return ok_trim and ok_mmap


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block, then restore it (``None`` or 0: leave it)."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)
