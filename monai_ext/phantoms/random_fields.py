"""Stationary Gaussian random volumes with a power-law spectrum: the image model of maximum-likelihood blur
identification (``monai_ext.deconvolution.blur_likelihood``), for checking it where the model holds."""

from __future__ import annotations

import numpy as np

__all__ = ["blurred_power_law_scan"]


def blurred_power_law_scan(spacing_2x=(1.4, 1.4, 1.4), fwhm_voxels: float = 4.0, exponent: float = 3.0,
                           shape=(16, 24, 24), noise: float = 1e-3, seed: int = 0) -> np.ndarray:
    """A scan of a power-law Gaussian volume: ``D(g * x) + n`` on a grid of ``shape`` voxels.

    ``x`` lives on the 2x grid with spectrum ``(1e-3 + sum_d (2 sin(w_d / 2) / h_d)^2)^(-exponent / 2)``; ``g`` is a
    Gaussian of ``fwhm_voxels`` (2x voxels), ``D`` the mean over 2 x 2 x 2 blocks, ``n`` white noise of ``noise``
    times the scan's standard deviation. The volume is generated periodically on a larger grid and cropped, so the
    scan itself is not periodic.

    Raises:
        ValueError: a non-positive width or noise level below 0.

    Example:
        >>> blurred_power_law_scan(shape=(4, 6, 6)).shape
        (4, 6, 6)
    """
    if fwhm_voxels <= 0 or noise < 0:
        raise ValueError(f"fwhm_voxels must be positive and noise non-negative, got {fwhm_voxels} and {noise}.")
    rng = np.random.default_rng(seed)
    fine = [2 * n for n in shape]
    big = [f + 16 for f in fine]
    freq = np.meshgrid(*[2 * np.pi * np.fft.fftfreq(n) for n in big], indexing="ij")
    laplacian = sum((2 * np.sin(f / 2) / h) ** 2 for f, h in zip(freq, spacing_2x))
    sigma = fwhm_voxels / (2 * np.sqrt(2 * np.log(2)))
    spectrum = (1e-3 + laplacian) ** (-exponent / 2) * np.exp(-(sigma**2) * sum(f**2 for f in freq))
    field = np.real(np.fft.ifftn(np.fft.fftn(rng.standard_normal(big)) * np.sqrt(spectrum)))
    crop = field[8 : 8 + fine[0], 8 : 8 + fine[1], 8 : 8 + fine[2]]
    scan = crop.reshape(shape[0], 2, shape[1], 2, shape[2], 2).mean(axis=(1, 3, 5))
    return scan + noise * scan.std() * rng.standard_normal(scan.shape)
