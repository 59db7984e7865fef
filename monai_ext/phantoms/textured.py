"""Thorax phantoms with tissue texture, for CBCT benchmarks where piecewise-constant phantoms would favour TV.

The ellipsoid thorax of :func:`~monai_ext.phantoms.thorax_phantom` gains what real anatomy has and constant
ellipsoids lack:

- small structures: vessels in the lungs (thin blood-filled ellipsoids, 1.5 to 4 mm across and 10 to 40 mm long, in
  random directions within the axial plane or along z), which sparse-view streaks and TV's staircasing blur away;
- texture: a smooth Gaussian random field (correlation length ``correlation_mm``) modulates each tissue's
  attenuation, by ``TEXTURE_AMPLITUDE`` of its value (lung parenchyma most, soft tissue least).

The phantom is rasterised on a grid ``upsample`` times finer than the reconstruction's (the reference is its block
mean), so a scan simulated on that finer grid is not made by the reconstruction's own operator.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .anatomy import MU_WATER, TISSUE_HU, _delta, thorax_phantom
from .ellipsoids import Ellipsoid, EllipsoidPhantom

__all__ = ["TEXTURE_AMPLITUDE", "textured_thorax", "smooth_random_field"]

TEXTURE_AMPLITUDE = {"lung": 0.15, "soft_tissue": 0.04, "bone": 0.08}
_LUNG_HU = TISSUE_HU["lung"]


def smooth_random_field(shape, spacing_mm, correlation_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A zero-mean, unit-variance Gaussian random field on ``shape`` with a Gaussian correlation of FWHM
    ``correlation_mm`` (white noise filtered in Fourier space on a grid padded by the correlation length, so the
    field is not periodic). ``spacing_mm``: one voxel size, or one per axis."""
    spacings = [float(spacing_mm)] * len(shape) if np.ndim(spacing_mm) == 0 else [float(s) for s in spacing_mm]
    if len(spacings) != len(shape):
        raise ValueError(f"spacing_mm must be one number or one per axis of {tuple(shape)}, got {spacing_mm}.")
    pads = [int(math.ceil(correlation_mm / s)) for s in spacings]
    sigmas = [correlation_mm / s / (2.0 * math.sqrt(2.0 * math.log(2.0))) for s in spacings]
    big = [n + 2 * p for n, p in zip(shape, pads)]
    freq = np.meshgrid(*[2 * np.pi * np.fft.fftfreq(n) for n in big], indexing="ij", sparse=True)
    if len(set(sigmas)) == 1:
        transfer = np.exp(-0.5 * sigmas[0] ** 2 * sum(f**2 for f in freq))
    else:
        transfer = np.exp(-0.5 * sum((s * f) ** 2 for s, f in zip(sigmas, freq)))
    field = np.real(np.fft.ifftn(np.fft.fftn(rng.standard_normal(big)) * transfer))
    field = field[tuple(slice(p, p + n) for n, p in zip(shape, pads))]
    return (field - field.mean()) / max(float(field.std()), 1e-12)


def _lung_vessels(lungs: list[tuple[tuple, tuple]], n: int, rng: np.random.Generator, scale: float) -> list[Ellipsoid]:
    vessels = []
    for i in range(n):
        axes, centre = lungs[i % len(lungs)]
        u = rng.normal(size=3)
        u = u / np.linalg.norm(u) * rng.uniform(0, 0.75)
        pos = tuple(float(c + a * v) for c, a, v in zip(centre, axes, u))
        radius, half_length = float(rng.uniform(0.75, 2.0)) * scale, float(rng.uniform(5, 20)) * scale
        along = int(rng.integers(3))  # the long axis: x or y (then turned in the axial plane) or z
        semi = [radius, radius, radius]
        semi[along] = half_length
        vessels.append(Ellipsoid(_delta("blood", "lung"), tuple(semi), pos, float(rng.uniform(0, math.pi))))
    return vessels


def textured_thorax(shape, voxel_size: float, seed: int = 0, upsample: int = 2, correlation_mm: float = 12.0, n_vessels: int = 120,
                    n_nodules: int = 6) -> torch.Tensor:
    """A textured thorax phantom (1/mm) on the grid ``upsample`` times finer than ``shape`` at ``voxel_size`` mm:
    ``(upsample nz, upsample ny, upsample nx)``, float32, non-negative.

    Args:
        shape: ``(nz, ny, nx)`` of the reconstruction grid (its field of view is ``nx voxel_size`` wide).
        voxel_size: the reconstruction grid's voxel size in mm.
        seed: the phantom (shapes, vessels, texture).
        upsample: the finer grid's factor.
        correlation_mm: FWHM of the texture's correlation.
        n_vessels: lung vessels.
        n_nodules: lung nodules (as the thorax phantom).

    Raises:
        ValueError: a non-positive size or factor.

    Example:
        >>> textured_thorax((8, 8, 8), 32.0, seed=1).shape
        torch.Size([16, 16, 16])
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1 or not voxel_size > 0 or int(upsample) < 1:
        raise ValueError(f"need a 3D shape, a positive voxel size and upsample >= 1, got {shape}, {voxel_size}, {upsample}.")
    fov = shape[-1] * float(voxel_size)
    base = thorax_phantom(fov, seed=seed, n_nodules=n_nodules)
    rng = np.random.default_rng([int(seed), 21])
    scale = fov / 256.0
    lungs = [(e.axes, e.center) for e in base.ellipsoids if abs(e.value - _delta("lung", "soft_tissue")) < 1e-12]
    phantom = EllipsoidPhantom(base.ellipsoids + _lung_vessels(lungs, int(n_vessels), rng, scale))
    fine_shape = tuple(int(upsample) * n for n in shape)
    fine_size = float(voxel_size) / int(upsample)
    mu = phantom.rasterize(fine_shape, fine_size, supersample=1, dtype=torch.float64).numpy()
    hu = 1000.0 * (mu / MU_WATER - 1.0)
    amplitude = np.where(hu < -950.0, 0.0, np.where(hu < 0.5 * (_LUNG_HU + TISSUE_HU["fat"]), TEXTURE_AMPLITUDE["lung"],
                                                    np.where(hu < 200.0, TEXTURE_AMPLITUDE["soft_tissue"], TEXTURE_AMPLITUDE["bone"])))
    field = smooth_random_field(fine_shape, fine_size, float(correlation_mm), rng)
    textured = np.clip(mu * (1.0 + amplitude * field), 0.0, None)
    return torch.as_tensor(textured, dtype=torch.float32)
