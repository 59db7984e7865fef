"""Phantoms: exact line integrals, rasterisation, seeded thorax anatomy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_ext.phantoms import TISSUE_HU, Ellipsoid, EllipsoidPhantom, hu_to_mu, mu_to_hu, random_ellipsoids, shepp_logan, thorax_phantom
from monai_ext.tomo import ConeBeamGeometry, ConeBeamProjector, uniform_angles


def test_chord_of_a_disc_is_exact():
    disc = EllipsoidPhantom([Ellipsoid(2.0, (10.0, 10.0), (0.0, 0.0))])
    origins = torch.tensor([[0.0, -50.0], [6.0, -50.0], [10.5, -50.0]], dtype=torch.float64)
    dirs = torch.tensor([[0.0, 1.0]] * 3, dtype=torch.float64)
    expected = [2.0 * 20.0, 2.0 * 2 * math.sqrt(100 - 36), 0.0]
    assert torch.allclose(disc.line_integrals(origins, dirs), torch.tensor(expected, dtype=torch.float64))


def test_rasterised_mass_matches_analytic_area():
    ellipse = EllipsoidPhantom([Ellipsoid(1.0, (30.0, 12.0), (5.0, -8.0), 0.6)])
    image = ellipse.rasterize((128, 128), 1.0, supersample=8)
    assert float(image.sum()) == pytest.approx(math.pi * 30 * 12, rel=2e-3)


def test_random_phantoms_are_seeded_and_non_negative():
    a, b, c = (random_ellipsoids(2, 128.0, seed=s).rasterize((64, 64), 2.0) for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0


def test_shepp_logan_values():
    image = shepp_logan(2, 256.0).rasterize((256, 256), 1.0, supersample=1, dtype=torch.float64)
    values = set(np.unique(np.round(image.numpy(), 2)).tolist())
    assert {0.0, 0.1, 0.2, 0.3, 0.4, 1.0} <= values  # background, ventricles, brain, lesions, skull


def test_hu_conversion_round_trip():
    hu = torch.tensor([-1000.0, 0.0, 40.0, 1000.0])
    assert torch.allclose(mu_to_hu(hu_to_mu(hu)), hu, atol=1e-3)
    assert float(hu_to_mu(torch.tensor(-1200.0))) == 0.0


def test_thorax_phantom_tissues_and_seed():
    vol = thorax_phantom(256.0, seed=0).rasterize((48, 48, 48), 256.0 / 48, supersample=1)
    hu = mu_to_hu(vol).numpy()
    for tissue in ("air", "lung", "fat", "soft_tissue", "bone"):
        share = np.mean(np.abs(hu - TISSUE_HU[tissue]) < 1.0)
        assert share > 0.001, f"no {tissue} voxels"
    assert float(vol.min()) >= 0.0
    same = thorax_phantom(256.0, seed=0).rasterize((48, 48, 48), 256.0 / 48, supersample=1)
    other = thorax_phantom(256.0, seed=1).rasterize((48, 48, 48), 256.0 / 48, supersample=1)
    assert torch.equal(vol, same) and not torch.equal(vol, other)


def test_thorax_projections_match_projector():
    geometry = ConeBeamGeometry((64, 64, 64), 4.0, uniform_angles(24, 2 * math.pi), (64, 96), 6.0, source_to_center=1000, source_to_detector=1500)
    phantom = thorax_phantom(256.0, seed=2)
    x = phantom.rasterize(geometry.image_shape, geometry.pixel_size, supersample=2)
    err = float((ConeBeamProjector(geometry)(x[None, None])[0, 0] - phantom.projections(geometry, detector_supersample=3)).norm() / phantom.projections(geometry).norm())
    print(f"thorax phantom: projector vs analytic projections {err:.4f}")
    assert err < 0.02
