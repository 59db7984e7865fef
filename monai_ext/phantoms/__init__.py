"""Phantoms with exact line integrals: Shepp-Logan, random ellipses/ellipsoids, seeded thorax-like CBCT phantoms."""

from .anatomy import MU_WATER, TISSUE_HU, hu_to_mu, mu_to_hu, thorax_phantom
from .ellipsoids import Ellipsoid, EllipsoidPhantom, random_ellipsoids, shepp_logan

__all__ = [
    "MU_WATER",
    "TISSUE_HU",
    "hu_to_mu",
    "mu_to_hu",
    "thorax_phantom",
    "Ellipsoid",
    "EllipsoidPhantom",
    "shepp_logan",
    "random_ellipsoids",
]
