"""Phantoms: Shepp-Logan, random ellipses/ellipsoids and seeded thorax-like CBCT phantoms with exact line integrals; a
Q3P-like PET sphere phantom and a head-and-neck PSMA phantom; power-law Gaussian random volumes."""

from .anatomy import MU_WATER, TISSUE_HU, hu_to_mu, mu_to_hu, thorax_phantom
from .ellipsoids import Ellipsoid, EllipsoidPhantom, random_ellipsoids, shepp_logan
from .random_fields import blurred_power_law_scan
from .textured import TEXTURE_AMPLITUDE, smooth_random_field, textured_thorax
from .spheres import Q3P_DIAMETERS_MM, SpherePhantom, gaussian_kernel, sphere_phantom
from .head_neck import SALIVARY_GLANDS, HeadNeckPhantom, head_neck_phantom

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
    "Q3P_DIAMETERS_MM",
    "SpherePhantom",
    "sphere_phantom",
    "gaussian_kernel",
    "blurred_power_law_scan",
    "TEXTURE_AMPLITUDE",
    "textured_thorax",
    "smooth_random_field",
    "HeadNeckPhantom",
    "head_neck_phantom",
    "SALIVARY_GLANDS",
]
