"""Peak memory of a computation, measured: CUDA allocator statistics, or the process's resident set on CPU.

On CUDA the figure is ``torch.cuda.max_memory_allocated`` during the call minus the allocation before it. On CPU
(``tracemalloc`` does not see torch's allocations) a background thread samples the resident set size (RSS, from
``/proc/self/statm``) every ``interval`` seconds during the call; the figure is the largest sample minus the RSS
before the call. glibc's malloc is first told to serve every block above 64 KiB by ``mmap`` (``M_MMAP_THRESHOLD``
fixed, which also stops its dynamic threshold), so freed tensors go back to the system at once and the RSS follows
the live tensors instead of the allocator's cache. A fresh process per configuration is still the cleanest
measurement (``scripts/bench_cbct_lpd_memory.py`` does that).

:func:`peak_resident_growth` reads the kernel's own high-water mark instead (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``), exact whatever the call's duration, and lowers glibc's mmap threshold only for the
call (to 1 MiB, then 32 MiB, the top of glibc's adaptive range), so the calls around it keep their speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections.abc import Callable

import torch

__all__ = ["release_freed_memory", "resident_bytes", "measure_peak_memory", "peak_resident_growth"]

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


_M_TRIM_THRESHOLD = -1
_CLEAR_REFS = "/proc/self/clear_refs"


def _set_mmap_threshold(nbytes: int) -> None:
    """glibc's mmap threshold (blocks this large are unmapped when freed) and trim threshold, then a trim."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes))  # fixing it also stops glibc adapting the trim threshold
        libc.mallopt(_M_TRIM_THRESHOLD, 4 * int(nbytes))  # keep the heap's free top between calls
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_resident_growth(fn: Callable[[], object]) -> tuple[object, int]:
    """Run ``fn()`` and return ``(its result, growth of the resident set's high-water mark during the call)``.

    Exact on Linux: the kernel's ``VmHWM`` is reset before the call. Large blocks freed before the call would be
    reused without growing the resident set and hide the peak, so the call runs with a 1 MiB mmap threshold.

    Raises:
        OSError: where ``/proc/self/clear_refs`` cannot be written (not Linux, or not permitted).
    """
    _set_mmap_threshold(2**20)
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
        before = _status_bytes("VmRSS")
        result = fn()
        return result, max(0, _status_bytes("VmHWM") - before)
    finally:
        _set_mmap_threshold(32 * 2**20)
