"""Projectors at sizes whose cached sample grid would exceed the memory budget: peak memory stays within it.

Peak memory is the growth of the process's resident set during one call (Linux ``VmHWM`` after resetting it
through ``/proc/self/clear_refs``), so it covers every allocation, torch's and numba's alike.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from monai_ext.tomo import ConeBeamGeometry, ParallelBeamGeometry, ParallelBeamProjector, uniform_angles
from monai_ext.tomo.joseph_cpu import HAS_NUMBA

_CLEAR_REFS = Path("/proc/self/clear_refs")
needs_proc = pytest.mark.skipif(
    not (_CLEAR_REFS.exists() and os.access(_CLEAR_REFS, os.W_OK)), reason="needs Linux /proc/self/clear_refs to reset the peak"
)
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")

BUDGET = 32 * 2**20


def _cone(size: int, views: int) -> ConeBeamGeometry:
    return ConeBeamGeometry((size,) * 3, 256.0 / size, uniform_angles(views, 2 * math.pi), (size, size), 384.0 / size,
                            source_to_center=1000.0, source_to_detector=1500.0)


def _in_fresh_process(body: str) -> dict:
    """Run ``body`` (which sets ``result``, a dict) in a new interpreter with this module's helpers, and return
    ``result``: a peak measured in the test process would depend on what earlier tests left in its heaps."""
    code = (
        "import json, math, sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_tomo_memory_budget import BUDGET, _cone\n"
        "from monai_ext.workflows.memory import peak_resident_growth as _peak_growth\n"
        "from monai_ext.tomo import ConeBeamProjector\n"
        + textwrap.dedent(body)
        + "\nprint('RESULT ' + json.dumps(result))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@needs_proc
@needs_numba
def test_memory_budget_grid_sample_backend_stays_within_budget_and_matches_numba():
    geometry = _cone(64, 64)
    cached_grid_bytes = geometry.n_angles * 64 * 64 * 64 * 3 * 4  # what the old whole-scan coordinate cache held
    assert cached_grid_bytes > 5 * BUDGET
    result = _in_fresh_process("""
        geometry = _cone(64, 64)
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(1, 1, *geometry.image_shape, generator=gen)
        y = torch.rand(1, 1, *geometry.projection_shape, generator=gen)
        reference = ConeBeamProjector(geometry, backend="numba")
        ax_ref, aty_ref = reference(x), reference.adjoint(y)
        op = ConeBeamProjector(geometry, backend="torch", memory_budget=BUDGET)
        op(x), op.adjoint(y)  # warm-up of torch's kernels outside the measurement
        ax, forward_peak = _peak_growth(lambda: op(x))
        aty, adjoint_peak = _peak_growth(lambda: op.adjoint(y))
        result = {
            "forward_peak": forward_peak, "adjoint_peak": adjoint_peak, "forward_out": ax.numel() * 4,
            "adjoint_out": aty.numel() * 4, "kept": bool(op._grid_cache),
            "forward_error": float((ax - ax_ref).abs().max() / ax_ref.abs().max()),
            "adjoint_error": float((aty - aty_ref).abs().max() / aty_ref.abs().max()),
        }
    """)
    assert result["forward_peak"] <= BUDGET + result["forward_out"], f"forward peak {result['forward_peak'] / 2**20:.1f} MiB"
    assert result["adjoint_peak"] <= BUDGET + result["adjoint_out"], f"adjoint peak {result['adjoint_peak'] / 2**20:.1f} MiB"
    assert not result["kept"], "coordinates over half the budget must not be kept"
    assert result["forward_error"] < 2e-5 and result["adjoint_error"] < 2e-5, result


@needs_proc
@needs_numba
def test_memory_budget_numba_backend_holds_no_ray_table_or_volume_copies():
    # 830 000 rays: a whole-scan ray table would take 120 MiB, a volume copy per thread 3.4 MiB
    result = _in_fresh_process("""
        small = ConeBeamProjector(_cone(16, 8), backend="numba")  # compiles the kernels outside the measurement
        small.adjoint(small(torch.rand(1, 1, 16, 16, 16)))
        geometry = _cone(96, 90)
        x = torch.rand(1, 1, *geometry.image_shape, generator=torch.Generator().manual_seed(1))

        def construct_and_project():
            op = ConeBeamProjector(geometry, backend="numba", memory_budget=BUDGET)
            return op, op(x)

        (op, y), forward_peak = _peak_growth(construct_and_project)
        aty, adjoint_peak = _peak_growth(lambda: op.adjoint(y))
        result = {
            "forward_peak": forward_peak, "adjoint_peak": adjoint_peak, "forward_out": y.numel() * 4,
            "adjoint_out": aty.numel() * 4, "ratio": float((y * y).sum() / (x * aty).sum()),
        }
    """)
    assert result["forward_peak"] <= BUDGET + result["forward_out"], f"forward peak {result['forward_peak'] / 2**20:.1f} MiB"
    assert result["adjoint_peak"] <= BUDGET + result["adjoint_out"], f"adjoint peak {result['adjoint_peak'] / 2**20:.1f} MiB"
    assert abs(result["ratio"] - 1.0) < 1e-4  # the adjoint is still the exact transpose


@pytest.mark.parametrize("backend", ["torch"] + (["numba"] if HAS_NUMBA else []))
def test_memory_budget_chunking_changes_nothing_2d(backend):
    geometry = ParallelBeamGeometry((40, 36), (1.5, 2.0), uniform_angles(30), n_det=57, det_spacing=1.5)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 40, 36, generator=gen, dtype=torch.float64)
    y = torch.rand(2, 1, 30, 57, generator=gen, dtype=torch.float64)
    whole, tiny = ParallelBeamProjector(geometry, backend), ParallelBeamProjector(geometry, backend, memory_budget=50_000)
    torch.testing.assert_close(tiny(x), whole(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tiny.adjoint(y), whole.adjoint(y), rtol=1e-12, atol=1e-12)


def test_memory_budget_must_be_positive():
    geometry = ParallelBeamGeometry((8, 8), 1.0, uniform_angles(4), n_det=11)
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="memory_budget must be a positive number of bytes"):
            ParallelBeamProjector(geometry, memory_budget=bad)


@needs_proc
def test_peak_resident_growth_sees_a_freed_peak_and_ignores_a_reused_block():
    from monai_ext.workflows.memory import peak_resident_growth

    def temporary():  # 64 MiB allocated, written and freed inside the call
        return float(torch.ones(16 * 2**20).sum())

    value, peak = peak_resident_growth(temporary)
    assert value == 16 * 2**20 and 60 * 2**20 <= peak <= 80 * 2**20
    kept = torch.ones(16 * 2**20)
    _, peak = peak_resident_growth(lambda: kept.mul_(2.0))  # in place: nothing new
    assert peak < 8 * 2**20
