"""Projectors at sizes whose cached sample grid would exceed the memory budget: peak memory stays within it.

Peak memory is the growth of the process's resident set during one call (Linux ``VmHWM`` after resetting it
through ``/proc/self/clear_refs``), so it covers every allocation, torch's and numba's alike.
"""

from __future__ import annotations

import ctypes
import math
import os
from pathlib import Path

import pytest
import torch

from monai_ext.tomo import ConeBeamGeometry, ConeBeamProjector, ParallelBeamGeometry, ParallelBeamProjector, uniform_angles
from monai_ext.tomo.joseph_cpu import HAS_NUMBA

_CLEAR_REFS = Path("/proc/self/clear_refs")
needs_proc = pytest.mark.skipif(
    not (_CLEAR_REFS.exists() and os.access(_CLEAR_REFS, os.W_OK)), reason="needs Linux /proc/self/clear_refs to reset the peak"
)
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")

BUDGET = 32 * 2**20


def _fixed_mmap_threshold() -> None:
    """glibc raises its mmap threshold after large frees and then keeps freed blocks in the heap, where a later
    call reuses them without growing the resident set (its peak would read low); a fixed threshold returns them."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 2**20)  # M_MMAP_THRESHOLD
    except OSError:
        pass


_fixed_mmap_threshold()


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _peak_growth(fn) -> tuple[object, int]:
    _CLEAR_REFS.write_text("5")
    base = _status("VmRSS")
    result = fn()
    return result, _status("VmHWM") - base


def _cone(size: int, views: int) -> ConeBeamGeometry:
    return ConeBeamGeometry((size,) * 3, 256.0 / size, uniform_angles(views, 2 * math.pi), (size, size), 384.0 / size,
                            source_to_center=1000.0, source_to_detector=1500.0)


@needs_proc
@needs_numba
def test_memory_budget_grid_sample_backend_stays_within_budget_and_matches_numba():
    geom = _cone(64, 64)
    cached_grid_bytes = geom.n_angles * 64 * 64 * 64 * 3 * 4  # what the old whole-scan coordinate cache held
    assert cached_grid_bytes > 5 * BUDGET
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, *geom.image_shape, generator=gen)
    y = torch.rand(1, 1, *geom.projection_shape, generator=gen)
    reference = ConeBeamProjector(geom, backend="numba")
    ax_ref, aty_ref = reference(x), reference.adjoint(y)
    op = ConeBeamProjector(geom, backend="torch", memory_budget=BUDGET)
    op(x[:, :, :8, :8, :8].repeat(1, 1, 8, 8, 8))  # warm-up of torch's kernels outside the measurement
    ax, forward_peak = _peak_growth(lambda: op(x))
    aty, adjoint_peak = _peak_growth(lambda: op.adjoint(y))
    outputs = {"forward": ax.numel() * 4, "adjoint": aty.numel() * 4}
    assert forward_peak <= BUDGET + outputs["forward"], f"forward peak {forward_peak / 2**20:.1f} MiB"
    assert adjoint_peak <= BUDGET + outputs["adjoint"], f"adjoint peak {adjoint_peak / 2**20:.1f} MiB"
    assert not op._grid_cache, "coordinates over half the budget must not be kept"
    torch.testing.assert_close(ax, ax_ref, rtol=2e-5, atol=2e-5 * float(ax_ref.abs().max()))
    torch.testing.assert_close(aty, aty_ref, rtol=2e-5, atol=2e-5 * float(aty_ref.abs().max()))


@needs_proc
@needs_numba
def test_memory_budget_numba_backend_holds_no_ray_table_or_volume_copies():
    small = ConeBeamProjector(_cone(16, 8), backend="numba")  # compiles the kernels outside the measurement
    small.adjoint(small(torch.rand(1, 1, 16, 16, 16)))
    geom = _cone(96, 90)  # 830 000 rays: a whole-scan ray table would take 120 MiB, a volume copy per thread 3.4 MiB
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, *geom.image_shape, generator=gen)

    def construct_and_project():
        op = ConeBeamProjector(geom, backend="numba", memory_budget=BUDGET)
        return op, op(x)

    (op, y), forward_peak = _peak_growth(construct_and_project)
    aty, adjoint_peak = _peak_growth(lambda: op.adjoint(y))
    assert forward_peak <= BUDGET + y.numel() * 4, f"forward peak {forward_peak / 2**20:.1f} MiB"
    assert adjoint_peak <= BUDGET + aty.numel() * 4, f"adjoint peak {adjoint_peak / 2**20:.1f} MiB"
    # chunked over views, the adjoint is still the exact transpose
    assert abs(float((y * y).sum() / (x * aty).sum()) - 1.0) < 1e-4


@pytest.mark.parametrize("backend", ["torch"] + (["numba"] if HAS_NUMBA else []))
def test_memory_budget_chunking_changes_nothing_2d(backend):
    geom = ParallelBeamGeometry((40, 36), (1.5, 2.0), uniform_angles(30), n_det=57, det_spacing=1.5)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 40, 36, generator=gen, dtype=torch.float64)
    y = torch.rand(2, 1, 30, 57, generator=gen, dtype=torch.float64)
    whole, tiny = ParallelBeamProjector(geom, backend), ParallelBeamProjector(geom, backend, memory_budget=50_000)
    torch.testing.assert_close(tiny(x), whole(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tiny.adjoint(y), whole.adjoint(y), rtol=1e-12, atol=1e-12)


def test_memory_budget_must_be_positive():
    geom = ParallelBeamGeometry((8, 8), 1.0, uniform_angles(4), n_det=11)
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="memory_budget must be a positive number of bytes"):
            ParallelBeamProjector(geom, memory_budget=bad)
