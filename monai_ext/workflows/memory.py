"""Peak memory of a computation, measured: CUDA allocator statistics, or the process's resident set on CPU.

On CUDA the figure is ``torch.cuda.max_memory_allocated`` during the call minus the allocation before it. On CPU
(``tracemalloc`` does not see torch's allocations) a background thread samples the resident set size (RSS, from
``/proc/self/statm``) every ``interval`` seconds during the call; the figure is the largest sample minus the RSS
before the call. glibc's malloc is first told to serve every block above 64 KiB by ``mmap`` (``M_MMAP_THRESHOLD``
fixed, which also stops its dynamic threshold), so freed tensors go back to the system at once and the RSS follows
the live tensors instead of the allocator's cache. A fresh process per configuration is still the cleanest
measurement (``scripts/bench_cbct_lpd_memory.py`` does that).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections.abc import Callable

import torch

__all__ = ["release_freed_memory", "resident_bytes", "measure_peak_memory"]

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
_MMAP_THRESHOLD_BYTES = 64 * 1024
_tuned = False


def release_freed_memory() -> None:
    """Make glibc's malloc serve blocks above 64 KiB by ``mmap`` from now on, so that freed tensors leave the RSS.

    Call it before the allocations to be measured start (blocks freed earlier may stay in the heap); a no-op on
    other C libraries.
    """
    global _tuned
    if _tuned:
        return
    _tuned = True
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc: keep the allocator's defaults
        pass


def resident_bytes() -> int:
    """Resident set size of this process in bytes (Linux ``/proc/self/statm``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def measure_peak_memory(fn: Callable[[], object], device=None, interval: float = 0.0005) -> tuple[object, int]:
    """Run ``fn()`` and return ``(its result, peak memory in bytes above the level before the call)``.

    Args:
        fn: the computation (no arguments).
        device: where it runs; CUDA devices use the allocator's peak statistics, others the sampled RSS.
        interval: RSS sampling period in seconds (CPU).

    Raises:
        ValueError: non-positive ``interval``.
    """
    if not interval > 0:
        raise ValueError(f"interval must be positive, got {interval}.")
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, int(torch.cuda.max_memory_allocated(device) - before)
    release_freed_memory()
    before = resident_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(interval)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        result = fn()
    finally:
        peak[0] = max(peak[0], resident_bytes())
        done.set()
        watcher.join()
    return result, max(0, int(peak[0] - before))
