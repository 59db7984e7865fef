"""Seeded 3D thorax-like phantoms for CBCT, built from ellipsoids so their projections stay exact.

The phantom is a sum of constant ellipsoids (``EllipsoidPhantom``) in linear attenuation (1/mm). Tissues are
nested (lungs and bones inside the body, nodules inside the lungs), so each ellipsoid carries the *difference*
between its tissue and its parent's, and the sum equals the tissue value everywhere (overlaps between siblings are
avoided by construction, up to small chance contacts between nodules).

Hounsfield units convert to attenuation with the fixed formula ``mu = mu_water * (1 + HU / 1000)``, with
``mu_water = 0.0192 /mm`` (water at about 70 keV, the effective energy of a 100-120 kVp CBCT beam).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .ellipsoids import Ellipsoid, EllipsoidPhantom

__all__ = ["MU_WATER", "TISSUE_HU", "hu_to_mu", "mu_to_hu", "thorax_phantom"]

MU_WATER = 0.0192  # 1/mm at ~70 keV

TISSUE_HU = {
    "air": -1000.0,
    "lung": -850.0,
    "fat": -100.0,
    "soft_tissue": 40.0,
    "blood": 50.0,
    "nodule": 30.0,
    "bone": 700.0,
    "marrow": 250.0,
}


def hu_to_mu(hu, mu_water: float = MU_WATER):
    """``mu = mu_water (1 + HU / 1000)``, clipped at 0 (air); works on floats, arrays and tensors."""
    mu = mu_water * (1.0 + hu / 1000.0)
    return mu.clamp_min(0.0) if isinstance(mu, torch.Tensor) else np.clip(mu, 0.0, None)


def mu_to_hu(mu, mu_water: float = MU_WATER):
    """Inverse of :func:`hu_to_mu`."""
    return 1000.0 * (mu / mu_water - 1.0)


def _delta(tissue: str, parent: str) -> float:
    return MU_WATER * (TISSUE_HU[tissue] - TISSUE_HU[parent]) / 1000.0


def thorax_phantom(fov: float = 256.0, seed: int | None = 0, n_nodules: int = 6) -> EllipsoidPhantom:
    """A seeded thorax: fat-wrapped body, two lungs with nodules, heart, aorta, spine and ribs.

    Coordinates: ``x`` left-right, ``y`` anterior-posterior (posterior at +y, the spine's side), ``z``
    cranio-caudal. Sizes scale with ``fov`` (the width of the cube the phantom must fit in, mm); the seed jitters
    shapes and positions (about 10 %) and places the nodules.

    Args:
        fov: width of the cubic field of view in mm.
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same phantom.
        n_nodules: soft-tissue nodules (3 to 12 mm radius) placed inside the lungs.

    Returns:
        An ``EllipsoidPhantom`` in 1/mm (``rasterize`` it on a grid, or take exact ``projections``).
    """
    rng = np.random.default_rng(seed)
    s = fov / 256.0

    def jit(v, frac=0.1):
        return float(v * (1.0 + frac * rng.uniform(-1, 1)))

    ells: list[Ellipsoid] = []
    body_axes = (jit(110 * s), jit(80 * s), 120 * s)
    body_tilt = float(rng.uniform(-0.05, 0.05))
    ells.append(Ellipsoid(hu_to_mu(TISSUE_HU["fat"]), body_axes, (0.0, 0.0, 0.0), body_tilt))
    inner = (body_axes[0] - jit(10 * s, 0.3), body_axes[1] - jit(8 * s, 0.3), body_axes[2] - 2 * s)
    ells.append(Ellipsoid(_delta("soft_tissue", "fat"), inner, (0.0, 0.0, 0.0), body_tilt))
    lungs = []
    for side in (-1.0, 1.0):
        axes = (jit(38 * s, 0.05), jit(48 * s, 0.05), jit(95 * s, 0.05))
        centre = (side * jit(48 * s), jit(-2 * s, 0.5), jit(5 * s, 0.5))
        ells.append(Ellipsoid(_delta("lung", "soft_tissue"), axes, centre, float(rng.uniform(-0.15, 0.15))))
        lungs.append((axes, centre))
    # heart between the lungs, anterior and a little left; the aorta runs cranio-caudally behind it
    ells.append(Ellipsoid(_delta("blood", "soft_tissue"), (jit(30 * s), jit(26 * s), jit(40 * s)), (jit(12 * s), jit(-30 * s, 0.2), -25 * s), 0.4))
    ells.append(Ellipsoid(_delta("blood", "soft_tissue"), (10 * s, 10 * s, 95 * s), (jit(-8 * s), jit(12 * s), 0.0), 0.0))
    # spine: vertebral bodies (cortical shell + marrow) along z
    spine_y = inner[1] - jit(24 * s, 0.1)
    n_vertebrae = 7
    for k in range(n_vertebrae):
        z = (k - (n_vertebrae - 1) / 2) * 32 * s
        ells.append(Ellipsoid(_delta("bone", "soft_tissue"), (14 * s, 12 * s, 13 * s), (0.0, spine_y, z), 0.0))
        ells.append(Ellipsoid(_delta("marrow", "bone"), (10 * s, 8 * s, 10 * s), (0.0, spine_y, z), 0.0))
    # ribs: thin ellipsoids hugging the inner body wall, outside the lungs
    for k in range(5):
        z = (k - 2) * 36 * s + jit(4 * s, 1.0)
        for side in (-1.0, 1.0):
            for phase in (0.35, 0.9):
                angle = side * (math.pi / 2 - phase)  # polar angle from +y (posterior)
                centre = ((inner[0] - 5 * s) * math.sin(angle), (inner[1] - 5 * s) * math.cos(angle), z)
                # long axis along the wall's tangent (cos a, -sin a)
                ells.append(Ellipsoid(_delta("bone", "soft_tissue"), (16 * s, 2.5 * s, 4 * s), centre, float(-angle)))
    # nodules strictly inside a lung
    placed = 0
    while placed < n_nodules:
        axes, centre = lungs[placed % 2]
        radius = float(rng.uniform(3, 12)) * s
        u = rng.normal(size=3)
        u = u / np.linalg.norm(u) * rng.uniform(0, 0.6)
        pos = tuple(float(c + a * v) for c, a, v in zip(centre, axes, u))
        ells.append(Ellipsoid(_delta("nodule", "lung"), (radius, radius * jit(1.0, 0.2), radius * jit(1.0, 0.2)), pos, float(rng.uniform(0, math.pi))))
        placed += 1
    return EllipsoidPhantom(ells)
