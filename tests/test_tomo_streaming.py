"""Cone-beam projection of host-memory volumes slab by slab on a compute device (streaming.py)."""

from __future__ import annotations

import math

import pytest
import torch

from monai_ext.tomo import ConeBeamGeometry, ConeBeamProjector, ParallelBeamGeometry, ParallelBeamProjector, uniform_angles
from monai_ext.tomo.joseph_cpu import HAS_NUMBA
from monai_ext.tomo.streaming import rows_reaching, slab_ranges, stream_cone

GEOM = ConeBeamGeometry((24, 20, 22), (4.0, 3.0, 3.5), uniform_angles(13, 2 * math.pi), (36, 30), (4.0, 4.0),
                        source_to_center=150.0, source_to_detector=260.0, det_offset=(2.0, -3.0))


def _data(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(2, *GEOM.image_shape, generator=gen, dtype=dtype), torch.rand(2, math.prod(GEOM.projection_shape), generator=gen, dtype=dtype)


def test_slab_ranges_cover_the_volume_within_the_budget():
    slabs = slab_ranges(24, 1000, 5000)
    assert slabs[0][0] == 0 and slabs[-1][1] == 24
    assert all(b == c for (_, b), (c, _) in zip(slabs, slabs[1:]))
    assert all((z1 - z0 + 1) * 1000 <= 5000 for z0, z1 in slabs)
    assert slab_ranges(3, 10**9, 1) == [(0, 1), (1, 2), (2, 3)]  # at least one plane per slab


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_streamed_slabs_compute_the_same_operator_as_the_whole_volume():
    x, y = _data()
    op = ConeBeamProjector(GEOM, memory_budget=60_000)  # slabs of a few planes and small ray chunks
    assert len(slab_ranges(GEOM.image_shape[0], 2 * 20 * 22 * 8, op.memory_budget // 4)) >= 4
    reference = ConeBeamProjector(GEOM, backend="numba")
    ax = stream_cone(op, x, adjoint=False, device=torch.device("cpu"))
    aty = stream_cone(op, y, adjoint=True, device=torch.device("cpu"))
    expected_ax = reference(x[None]).reshape(2, -1)
    expected_aty = reference.adjoint(y.reshape(1, 2, *GEOM.projection_shape))[0]
    torch.testing.assert_close(ax, expected_ax, rtol=1e-10, atol=1e-10 * float(expected_ax.abs().max()))
    torch.testing.assert_close(aty, expected_aty, rtol=1e-10, atol=1e-10 * float(expected_aty.abs().max()))
    assert abs(float((ax * y).sum() / (x * aty).sum()) - 1.0) < 1e-12  # exact transpose


def test_rows_reaching_a_slab_are_a_superset_of_the_rows_that_see_it():
    nz = GEOM.image_shape[0]
    dz = GEOM.pixel_size[0]
    z0, z1 = 18, 24  # the top planes
    r0, r1 = rows_reaching(GEOM, (z0 - 1 - 0.5 * (nz - 1)) * dz, (z1 - 0.5 * (nz - 1)) * dz)
    assert 0 < r0 < r1 <= GEOM.det_shape[0]  # the bottom rows are skipped
    volume = torch.zeros(1, 1, *GEOM.image_shape, dtype=torch.float64)
    volume[:, :, z0:z1] = 1.0
    seen = ConeBeamProjector(GEOM, backend="torch")(volume)[0, 0].abs().sum(dim=(0, 2)) > 0
    rows = torch.nonzero(seen).flatten()
    assert int(rows.min()) >= r0 and int(rows.max()) < r1


def test_stream_device_is_refused_for_2d_geometries():
    geometry = ParallelBeamGeometry((8, 8), 1.0, uniform_angles(4), n_det=11)
    with pytest.raises(ValueError, match="stream_device is for cone-beam volumes"):
        ParallelBeamProjector.__mro__[1](geometry, stream_device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_host_volume_streamed_through_cuda_matches_the_cpu_operator():
    x, y = _data(torch.float32)
    op = ConeBeamProjector(GEOM, memory_budget=200_000, stream_device="cuda")
    reference = ConeBeamProjector(GEOM)
    ax, aty = op(x[None]), op.adjoint(y.reshape(1, 2, *GEOM.projection_shape))
    assert ax.device.type == "cpu" and aty.device.type == "cpu"
    torch.testing.assert_close(ax, reference(x[None]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(aty, reference.adjoint(y.reshape(1, 2, *GEOM.projection_shape)), rtol=1e-4, atol=1e-4)
