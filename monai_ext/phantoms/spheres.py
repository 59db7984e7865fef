"""A Q3P-like PET sphere phantom: coplanar hot spheres in a warm cylinder, blurred, binned and Poisson-noisy.

The Q3P phantom of Sample et al. (2024) holds coplanar spheres of 16, 14, 10, 8, 7, 6 and 5 mm (clockwise from the
top) in a warm background. Here the activity is built on a grid 4x finer than the PET voxels (for partial volume),
blurred there with a Gaussian PSF, averaged into PET voxels (about 2.73 x 2.73 x 2.8 mm) and given Poisson noise.
The reference for a 2x supersampled result is the same activity averaged into voxels half the PET size, on the grid
of :func:`monai_ext.deconvolution.blind_deconvolution.supersampled_affine` (a 2x voxel ``j`` is centred at PET index
``j / 2 - 1 / 4``). Array order is ``(z, y, x)`` throughout, spacings in mm.

Reference:
    C. Sample et al., "Neural blind deconvolution for deblurring and supersampling PSMA PET", Phys. Med. Biol. 69,
    085025 (2024), doi:10.1088/1361-6560/ad36a9.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..units import FWHM_PER_SIGMA

__all__ = ["Q3P_DIAMETERS_MM", "SpherePhantom", "sphere_phantom", "gaussian_kernel"]

Q3P_DIAMETERS_MM = (16.0, 14.0, 10.0, 8.0, 7.0, 6.0, 5.0)
_FWHM_TO_SIGMA = 1.0 / FWHM_PER_SIGMA


@dataclass(frozen=True)
class SpherePhantom:
    """A simulated sphere phantom scan and its references.

    Args:
        measured: noisy PET image ``(z, y, x)`` in kBq/mL on the PET grid.
        noiseless: the same without noise.
        reference_2x: true activity averaged into the 2x supersampled grid ``(2z, 2y, 2x)``.
        sphere_masks_2x: boolean masks ``(n_spheres, 2z, 2y, 2x)`` of the 2x voxels whose centre lies in a sphere.
        spacing: PET voxel size in mm ``(z, y, x)``.
        diameters: sphere diameters in mm, in mask order.
        centres: sphere centres in mm ``(z, y, x)`` relative to the first PET voxel centre.
        sphere_activity: true activity in the spheres (kBq/mL).
        background_activity: true activity in the warm background (kBq/mL).
        psf_fwhm: FWHM of the Gaussian PSF in mm ``(z, y, x)``.
    """

    measured: np.ndarray
    noiseless: np.ndarray
    reference_2x: np.ndarray
    sphere_masks_2x: np.ndarray
    spacing: tuple[float, float, float]
    diameters: tuple[float, ...]
    centres: tuple[tuple[float, float, float], ...]
    sphere_activity: float
    background_activity: float
    psf_fwhm: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        """NIfTI affine of the PET grid (axes ``x, y, z``), origin at the first voxel centre."""
        return np.diag([self.spacing[2], self.spacing[1], self.spacing[0], 1.0])


def gaussian_kernel(fwhm_voxels, size: int | tuple[int, int, int]) -> np.ndarray:
    """A normalised, sampled 3D Gaussian ``(z, y, x)`` of the given FWHM (in voxels) on an odd-sized grid.

    Raises:
        ValueError: an even size or a non-positive FWHM.
    """
    sizes = (size,) * 3 if isinstance(size, int) else tuple(size)
    fwhm = np.broadcast_to(np.asarray(fwhm_voxels, float), (3,))
    if any(s % 2 == 0 for s in sizes) or np.any(fwhm <= 0):
        raise ValueError(f"kernel sizes must be odd and FWHM positive, got size {sizes} and FWHM {tuple(fwhm)}.")
    axes = [np.exp(-0.5 * ((np.arange(s) - s // 2) / (f * _FWHM_TO_SIGMA)) ** 2) for s, f in zip(sizes, fwhm)]
    kernel = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return kernel / kernel.sum()


def _block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    z, y, x = (s // factor for s in volume.shape)
    return volume[: z * factor, : y * factor, : x * factor].reshape(z, factor, y, factor, x, factor).mean(axis=(1, 3, 5))


def sphere_phantom(
    shape: tuple[int, int, int] = (16, 40, 40),
    spacing: tuple[float, float, float] = (2.8, 2.73, 2.73),
    diameters: tuple[float, ...] = Q3P_DIAMETERS_MM,
    ring_radius: float = 32.0,
    cylinder_radius: float = 52.0,
    sphere_activity: float = 8.0,
    background_activity: float = 1.0,
    psf_fwhm: tuple[float, float, float] = (6.5, 6.0, 6.0),
    background_counts: float = 200.0,
    seed: int = 0,
) -> SpherePhantom:
    """Simulate a Q3P-like scan: spheres on a ring in the central axial plane of a warm cylinder.

    Noise: the noiseless image is scaled so that a background voxel holds ``background_counts`` expected counts,
    drawn from a Poisson law and scaled back (a stand-in for the noise of a reconstructed image).

    Args:
        shape: PET grid ``(z, y, x)``.
        spacing: PET voxel size in mm ``(z, y, x)``.
        diameters: sphere diameters in mm, placed clockwise from the top of the ring.
        ring_radius: radius in mm of the ring of sphere centres.
        cylinder_radius: radius in mm of the warm cylinder (its axis along z, through the centre).
        sphere_activity: activity in the spheres (kBq/mL).
        background_activity: activity in the cylinder (kBq/mL).
        psf_fwhm: FWHM in mm of the Gaussian PSF ``(z, y, x)``.
        background_counts: expected counts of a background voxel (sets the noise level).
        seed: seed of the Poisson noise.

    Raises:
        ValueError: a spacing or diameter that is not positive, or spheres that do not fit in the field of view.
    """
    if any(s <= 0 for s in spacing) or any(d <= 0 for d in diameters):
        raise ValueError(f"spacing and diameters must be positive, got {spacing} and {diameters}.")
    shape = tuple(int(s) for s in shape)
    extent = np.asarray(shape) * np.asarray(spacing)
    if 2 * (ring_radius + max(diameters) / 2) > min(extent[1:]) or max(diameters) > extent[0]:
        raise ValueError(f"spheres on a ring of {ring_radius} mm do not fit in a {tuple(extent)} mm field of view.")
    fine = 4
    fine_spacing = np.asarray(spacing) / fine
    # fine voxel centres in mm, relative to the first PET voxel centre (PET voxel i spans i*s +- s/2)
    coords = [(np.arange(n * fine) + 0.5) * fs - s / 2 for n, fs, s in zip(shape, fine_spacing, spacing)]
    zc, yc, xc = (extent[0] - spacing[0]) / 2, (extent[1] - spacing[1]) / 2, (extent[2] - spacing[2]) / 2
    zz, yy, xx = np.meshgrid(*coords, indexing="ij")
    activity = np.where((yy - yc) ** 2 + (xx - xc) ** 2 <= cylinder_radius**2, background_activity, 0.0)
    centres = []
    for i, diameter in enumerate(diameters):
        angle = 2.0 * math.pi * i / len(diameters)  # clockwise from the top (image row 0 is the top)
        centre = (zc, yc - ring_radius * math.cos(angle), xc + ring_radius * math.sin(angle))
        centres.append(tuple(float(c) for c in centre))
        inside = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= (diameter / 2) ** 2
        activity[inside] = sphere_activity
    del zz, yy, xx

    from scipy.ndimage import gaussian_filter

    sigma_fine = np.asarray(psf_fwhm, float) * _FWHM_TO_SIGMA / fine_spacing
    noiseless = _block_mean(gaussian_filter(activity, sigma_fine, mode="constant"), fine)
    reference_2x = _block_mean(activity, fine // 2)
    scale = background_counts / background_activity
    rng = np.random.default_rng(seed)
    measured = rng.poisson(noiseless * scale) / scale

    # 2x voxel j is centred at PET index j/2 - 1/4, i.e. at (j + 0.5) * s/2 - s/2 mm
    half = [(np.arange(2 * n) + 0.5) * s / 2 - s / 2 for n, s in zip(shape, spacing)]
    hz, hy, hx = np.meshgrid(*half, indexing="ij")
    masks = np.stack(
        [(hz - c[0]) ** 2 + (hy - c[1]) ** 2 + (hx - c[2]) ** 2 <= (d / 2) ** 2 for c, d in zip(centres, diameters)]
    )
    return SpherePhantom(
        measured=measured.astype(np.float32),
        noiseless=noiseless.astype(np.float32),
        reference_2x=reference_2x.astype(np.float32),
        sphere_masks_2x=masks,
        spacing=tuple(float(s) for s in spacing),
        diameters=tuple(float(d) for d in diameters),
        centres=tuple(centres),
        sphere_activity=float(sphere_activity),
        background_activity=float(background_activity),
        psf_fwhm=tuple(float(f) for f in psf_fwhm),
    )
