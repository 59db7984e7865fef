"""A head-and-neck PSMA PET phantom: salivary glands with non-uniform uptake, for known-PSF deblurring studies.

PSMA ligands accumulate strongly in the salivary glands; the parotid and submandibular glands are the structures
on which Sample et al. (2024) judge deblurring of head-and-neck PSMA PET. This phantom places them in a neck: an
elliptic cylinder of soft tissue (activity 1) with an air-filled airway (0), a cold cervical spine (0.3), two parotid
glands (ellipsoids lateral and posterior, upper half) and two submandibular glands (smaller ellipsoids, anterior,
lower half) whose uptake (about 12 and 10 times the soft tissue) varies smoothly inside each gland by a seeded
Gaussian random field (standard deviation ``texture`` of the mean), and two small lymph-node lesions (8 and 6 mm).
The activity is built on a grid 4 times finer than the PET grid, blurred by a Gaussian PSF of the given FWHM per
axis (the activity continues beyond the field of view as at its edge, as in a crop of a patient), averaged into the
PET voxels and given Poisson noise (``background_counts`` expected counts per soft-tissue voxel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..units import FWHM_PER_SIGMA
from .spheres import _block_mean
from .textured import smooth_random_field

__all__ = ["HeadNeckPhantom", "head_neck_phantom", "SALIVARY_GLANDS"]

_FWHM_TO_SIGMA = 1.0 / FWHM_PER_SIGMA

# name: (centre in mm relative to the field of view's centre (z, y, x), semi-axes in mm (z, y, x), mean activity)
# y grows towards the back of the neck (image row 0 is anterior), z towards the head.
SALIVARY_GLANDS = {
    "parotid_left": ((14.0, 8.0, 38.0), (18.0, 16.0, 9.0), 12.0),
    "parotid_right": ((14.0, 8.0, -38.0), (18.0, 16.0, 9.0), 12.0),
    "submandibular_left": ((-16.0, -20.0, 24.0), (9.0, 10.0, 8.0), 10.0),
    "submandibular_right": ((-16.0, -20.0, -24.0), (9.0, 10.0, 8.0), 10.0),
}
_LESIONS = (((-2.0, -6.0, 14.0), 8.0, 6.0), ((6.0, -8.0, -16.0), 6.0, 6.0))  # centre, diameter (mm), activity


@dataclass(frozen=True)
class HeadNeckPhantom:
    """A simulated head-and-neck scan and its references (arrays ``(z, y, x)``, activity in kBq/mL).

    Args:
        measured: noisy PET image on the PET grid.
        noiseless: the same without noise.
        reference_2x: true activity averaged into the 2x grid.
        gland_masks_2x: ``{name: boolean mask (2z, 2y, 2x)}`` of the 2x voxels whose centre is in each gland.
        spacing: PET voxel size in mm.
        psf_fwhm: FWHM of the Gaussian PSF in mm ``(z, y, x)``.
    """

    measured: np.ndarray
    noiseless: np.ndarray
    reference_2x: np.ndarray
    gland_masks_2x: dict
    spacing: tuple[float, float, float]
    psf_fwhm: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        """NIfTI affine of the PET grid (axes ``x, y, z``), origin at the first voxel centre."""
        return np.diag([self.spacing[2], self.spacing[1], self.spacing[0], 1.0])


def head_neck_phantom(
    shape: tuple[int, int, int] = (24, 48, 48),
    spacing: tuple[float, float, float] = (2.8, 2.73, 2.73),
    psf_fwhm: tuple[float, float, float] = (6.5, 6.0, 6.0),
    background_counts: float = 200.0,
    texture: float = 0.25,
    texture_mm: float = 8.0,
    seed: int = 0,
) -> HeadNeckPhantom:
    """Simulate a head-and-neck PSMA scan (module docstring).

    Args:
        shape: PET grid ``(z, y, x)``; the field of view must hold the glands (about 62 x 100 x 120 mm).
        spacing: PET voxel size in mm ``(z, y, x)``.
        psf_fwhm: FWHM in mm of the Gaussian PSF per axis ``(z, y, x)``.
        background_counts: expected counts of a soft-tissue voxel (sets the noise level).
        texture: standard deviation of the uptake inside each gland, relative to its mean.
        texture_mm: FWHM of the correlation of that variation.
        seed: seed of the texture and the Poisson noise.

    Raises:
        ValueError: non-positive spacing or PSF, a negative texture, or a field of view too small for the glands.

    Example:
        >>> phantom = head_neck_phantom((24, 48, 48))
        >>> phantom.measured.shape, phantom.reference_2x.shape, sorted(phantom.gland_masks_2x)[0]
        ((24, 48, 48), (48, 96, 96), 'parotid_left')
    """
    from scipy.ndimage import gaussian_filter

    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if min(spacing) <= 0 or min(psf_fwhm) <= 0 or texture < 0 or texture_mm <= 0:
        raise ValueError(f"spacing, psf_fwhm and texture_mm must be positive and texture >= 0, got {spacing}, {psf_fwhm}, {texture_mm}, {texture}.")
    extent = np.asarray(shape) * np.asarray(spacing)
    need = np.array([2 * 32.0, 2 * 30.0, 2 * 55.0])  # glands and neck outline, mm
    if np.any(extent < need):
        raise ValueError(f"a field of view of {tuple(np.round(extent, 1))} mm cannot hold the glands: at least {tuple(need)} mm (z, y, x).")
    rng = np.random.default_rng(seed)
    fine = 4
    fine_spacing = np.asarray(spacing) / fine
    coords = [(np.arange(n * fine) + 0.5) * fs - e / 2 for n, fs, e in zip(shape, fine_spacing, extent)]
    zz, yy, xx = np.meshgrid(*coords, indexing="ij")
    activity = np.where((yy / 45.0) ** 2 + (xx / 58.0) ** 2 <= 1.0, 1.0, 0.0)
    activity[(yy + 22.0) ** 2 + xx**2 <= 8.0**2] = 0.0  # airway
    activity[(yy - 24.0) ** 2 + xx**2 <= 9.0**2] = 0.3  # cervical spine
    field = smooth_random_field(activity.shape, tuple(fine_spacing), texture_mm, rng)
    glands = {}
    for name, (centre, axes, mean) in SALIVARY_GLANDS.items():
        inside = sum(((c - c0) / a) ** 2 for c, c0, a in zip((zz, yy, xx), centre, axes)) <= 1.0
        activity[inside] = np.maximum(mean * (1.0 + texture * field[inside]), 0.0)
        glands[name] = (centre, axes)
    for centre, diameter, value in _LESIONS:
        activity[sum((c - c0) ** 2 for c, c0 in zip((zz, yy, xx), centre)) <= (diameter / 2) ** 2] = value
    del zz, yy, xx, field

    sigma_fine = np.asarray(psf_fwhm, float) * _FWHM_TO_SIGMA / fine_spacing
    noiseless = _block_mean(gaussian_filter(activity, sigma_fine, mode="nearest"), fine)
    reference_2x = _block_mean(activity, fine // 2)
    measured = rng.poisson(noiseless * background_counts) / background_counts

    half = [(np.arange(2 * n) + 0.5) * s / 2 - e / 2 for n, s, e in zip(shape, spacing, extent)]
    hz, hy, hx = np.meshgrid(*half, indexing="ij")
    masks = {name: sum(((c - c0) / a) ** 2 for c, c0, a in zip((hz, hy, hx), centre, axes)) <= 1.0 for name, (centre, axes) in glands.items()}
    return HeadNeckPhantom(
        measured=measured.astype(np.float32),
        noiseless=noiseless.astype(np.float32),
        reference_2x=reference_2x.astype(np.float32),
        gland_masks_2x=masks,
        spacing=spacing,
        psf_fwhm=tuple(float(f) for f in psf_fwhm),
    )
