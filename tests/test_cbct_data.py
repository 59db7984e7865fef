"""Seeded CBCT data sets: geometry, determinism, shapes, exact projections vs the voxel projector, Poisson noise."""

from __future__ import annotations

import math

import pytest
import torch

from monai_ext.data import CBCTScans, cbct_geometry, cbct_scans
from monai_ext.tomo import ConeBeamProjector

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def geometry():
    return cbct_geometry(20, (16, 16, 16), 16.0, (16, 16))


def test_geometry_short_and_full_scan_cover_the_field_of_view(geometry):
    assert geometry.projection_shape == (20, 16, 16)
    assert geometry.source_to_center == 1000.0 and geometry.source_to_detector == 1500.0
    # short scan: 180 degrees plus the fan angle, endpoints included
    assert geometry.angles[-1] - geometry.angles[0] == pytest.approx(math.pi + geometry.fan_angle)
    full = cbct_geometry(20, (16, 16, 16), 16.0, (16, 16), scan="full")
    assert full.angles[1] - full.angles[0] == pytest.approx(2 * math.pi / 20)
    # the panel's half-width exceeds the magnified field-of-view radius (tangent rays) and the cylinder's top rim
    radius, sod, sdd = 128.0, 1000.0, 1500.0
    assert 0.5 * 16 * geometry.det_spacing[1] >= sdd * radius / math.sqrt(sod**2 - radius**2)
    assert 0.5 * 16 * geometry.det_spacing[0] >= sdd * radius / (sod - radius)


def test_geometry_rejects_bad_arguments():
    with pytest.raises(ValueError, match="scan"):
        cbct_geometry(scan="helical")
    with pytest.raises(ValueError, match="n_views"):
        cbct_geometry(n_views=1)
    with pytest.raises(ValueError, match="source_to_center"):
        cbct_geometry(volume_shape=(16, 16, 16), voxel_size=200.0)


def test_scans_are_seeded_shaped_and_split_apart(geometry):
    scans = cbct_scans("test", 2, geometry, i0=1e5)
    assert isinstance(scans, CBCTScans) and len(scans) == 2
    assert scans.volumes.shape == (2, 1, 16, 16, 16) and scans.volumes.dtype == torch.float32
    assert scans.projections.shape == (2, 1, 20, 16, 16) and scans.projections.dtype == torch.float32
    assert scans.geometry == geometry and scans.i0 == 1e5
    # thorax in 1/mm: air outside, bone (700 HU) the densest tissue
    assert float(scans.volumes.min()) == 0.0 and 0.025 < float(scans.volumes.max()) < 0.035
    # the first case is the same whatever n (phantom and noise); another noise seed changes only the noise
    one = cbct_scans("test", 1, geometry, i0=1e5)
    assert torch.equal(one.volumes[0], scans.volumes[0]) and torch.equal(one.projections[0], scans.projections[0])
    other = cbct_scans("test", 1, geometry, i0=1e5, noise_seed=1)
    assert torch.equal(other.volumes[0], scans.volumes[0]) and not torch.equal(other.projections[0], scans.projections[0])
    train = cbct_scans("train", 1, geometry, i0=1e5)
    assert not torch.equal(train.volumes[0], scans.volumes[0])
    items = scans.datalist()
    assert [d["name"] for d in items] == list(scans.names)
    assert set(items[0]) == {"name", "reference", "projections"} and items[0]["projections"].shape == (1, 20, 16, 16)


def test_exact_projections_agree_with_the_voxel_projector():
    geometry = cbct_geometry(12, (32, 32, 32), 8.0, (24, 24))
    clean = cbct_scans("validation", 1, geometry, i0=None)
    voxel = ConeBeamProjector(geometry)(clean.volumes)
    relative = float((voxel - clean.projections).norm() / clean.projections.norm())
    # close (same object) but not equal: the analytic projections carry no voxelisation (no inverse crime)
    assert 1e-3 < relative < 0.05


def test_noise_follows_poisson_statistics(geometry):
    i0 = 1e4
    clean = cbct_scans("test", 2, geometry, i0=None).projections.double()
    noisy = cbct_scans("test", 2, geometry, i0=i0).projections.double()
    # delta method: Var(-log(N / i0)) = 1 / E[N] = exp(p) / i0 for N ~ Poisson(i0 exp(-p))
    z = (noisy - clean) * torch.sqrt(i0 * torch.exp(-clean))
    assert abs(float(z.mean())) < 0.05
    assert float(z.square().mean()) == pytest.approx(1.0, abs=0.08)


def test_scans_reject_bad_arguments(geometry):
    with pytest.raises(ValueError, match="split"):
        cbct_scans("training", 1, geometry)
    with pytest.raises(ValueError, match="i0"):
        cbct_scans("test", 1, geometry, i0=0.0)
    with pytest.raises(TypeError, match="ConeBeamGeometry"):
        cbct_scans("test", 1, object())


# ------------------------------------------------------------------------- the talk's regime (issue 21)


def test_talk_regime_setting_samples_sparsely_at_one_eighth_of_full_sampling():
    from monai_ext.data import full_sampling_views, talk_regime_geometry

    sparse, dense = talk_regime_geometry("sparse"), talk_regime_geometry("dense")
    full = full_sampling_views(dense)
    assert full == len(dense.angles) == 109  # ceil(pi / 2 * 64 * (pi + fan) / pi), fan 15 degrees
    assert len(sparse.angles) == 14 and len(sparse.angles) <= full / 6
    assert sparse.image_shape == (64, 64, 64) and sparse.pixel_size == (4.0, 4.0, 4.0) and sparse.det_shape == (64, 64)
    with pytest.raises(ValueError, match="'sparse' or 'dense'"):
        talk_regime_geometry("medium")


def test_textured_thorax_has_texture_and_vessels_and_is_seeded():
    from monai_ext.phantoms import textured_thorax, thorax_phantom

    a, b, c = (textured_thorax((16, 16, 16), 16.0, seed=s) for s in (4, 4, 5))
    assert a.shape == (32, 32, 32) and torch.equal(a, b) and not torch.equal(a, c) and float(a.min()) >= 0
    plain = thorax_phantom(256.0, seed=4).rasterize((32, 32, 32), 8.0, supersample=1)
    soft = (plain > 0.0185) & (plain < 0.0205)  # soft tissue and blood, away from edges in value
    ratio = (a[soft] / plain[soft]).double()
    assert 0.01 < float(ratio.std()) < 0.1, "soft tissue varies by a few percent around its value"
    lung = (plain > 0.0015) & (plain < 0.004)
    assert float((a[lung] > 0.01).double().mean()) > 0.005, "vessels: voxels of blood-like values inside the lungs"


def test_textured_scans_are_made_on_a_finer_grid_than_the_reconstruction():
    """The reference is the block mean of the 2x phantom, and the scan is the 2x phantom's, not the reference's:
    the reconstruction's own projector applied to the reference differs from it."""
    from monai_ext.data import cbct_geometry, textured_cbct_scans
    from monai_ext.phantoms import textured_thorax
    from monai_ext.tomo import ConeBeamProjector

    geometry = cbct_geometry(6, (12, 12, 12), 20.0, (12, 12))
    scans = textured_cbct_scans("test", 2, geometry, None)
    fine = textured_thorax((12, 12, 12), 20.0, seed=_split_seed("test"))
    assert torch.allclose(scans.volumes[0, 0], torch.nn.functional.avg_pool3d(fine[None, None], 2)[0, 0])
    own = ConeBeamProjector(geometry)(scans.volumes[:1].double()).float()
    gap = float((own - scans.projections[:1]).abs().mean() / scans.projections[:1].abs().mean())
    assert 0.001 < gap < 0.2
    noisy = textured_cbct_scans("test", 2, geometry, 300.0)
    again = textured_cbct_scans("test", 1, geometry, 300.0)
    assert torch.equal(noisy.projections[:1], again.projections) and not torch.equal(noisy.projections, scans.projections)


def _split_seed(split: str) -> int:
    from monai_ext.data import SPLIT_SEEDS

    return SPLIT_SEEDS[split]
