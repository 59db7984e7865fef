"""Marginal likelihood of a blur kernel under a Gaussian image model (blur identification by maximum likelihood).

Instead of estimating the image and the kernel jointly, which favours the no-blur solution (Levin et al., CVPR 2009),
the image is integrated out (Levin et al., CVPR 2011; the classical maximum-likelihood blur identification of
Lagendijk, Tekalp and Biemond, IEEE TASSP 1990). With a stationary Gaussian image on the 2x grid whose power spectrum
is a power law,

    S(w) = a (eps + sum_d (2 sin(w_d / 2) / h_d)^2)^(-p / 2),

and ``y = D(k * x) + n`` (``D`` the mean over 2 x 2 x 2 blocks then subsampling, ``n`` white with variance ``s2``),
the coarse-grid spectrum of ``y`` is Gaussian with variance

    C(v) = sum over the 8 aliases w of v of cos^2(w_z / 2) cos^2(w_y / 2) cos^2(w_x / 2) |K(w)|^2 S(w) + s2,

and ``-log p(y | k, a, p, s2)`` is, up to a constant, the Whittle sum ``mean_v |Y(v)|^2 / C(v) + log C(v)`` over the
non-zero frequencies. The volume is mirrored along each axis first, so the periodic extension has no edge.

Only ``|K|`` enters: the likelihood cannot see a kernel's skew (its phase), and the image model's exponent ``p``
trades against the kernel's width. ``scripts/study_psma_blur_likelihood.py`` measures both on the PSMA phantom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["WhittleBlurLikelihood", "ImageSpectrum"]


@dataclass(frozen=True)
class ImageSpectrum:
    """A fitted power-law image model: ``log_amplitude`` (``log a``), ``exponent`` (``p``), ``log_noise`` (``log s2``)."""

    log_amplitude: float
    exponent: float
    log_noise: float


class WhittleBlurLikelihood:
    """``-log p(y | k)`` of a measured volume for kernels on its 2x grid, the image integrated out (module docstring).

    Args:
        measured: the measured volume ``(z, y, x)`` (scaled by its maximum inside).
        spacing_2x: voxel size of the 2x grid in mm ``(z, y, x)`` (the unit of the spectrum's frequencies).
        eps: the spectrum's regularisation at zero frequency (mm^-2).

    Raises:
        ValueError: not a 3D volume, not finite, or all zero.

    Example:
        >>> from monai_ext.phantoms.spheres import gaussian_kernel
        >>> lik = WhittleBlurLikelihood(np.random.default_rng(0).random((6, 8, 8)), (1.4, 1.4, 1.4))
        >>> nll, spectrum = lik.fit(torch.as_tensor(gaussian_kernel(3.0, 7)), exponent=3.0)
    """

    def __init__(self, measured, spacing_2x, eps: float = 1e-3) -> None:
        y = np.asarray(measured, np.float64)
        if y.ndim != 3 or not np.all(np.isfinite(y)) or np.abs(y).max() == 0:
            raise ValueError(f"measured must be a finite, non-zero 3D volume, got shape {y.shape}.")
        y = y / np.abs(y).max()
        for axis in range(3):
            y = np.concatenate([y, np.flip(y, axis)], axis)
        self.shape = y.shape
        self.periodogram = torch.as_tensor(np.abs(np.fft.fftn(y)) ** 2 / y.size)
        self.mask = torch.ones(self.shape, dtype=torch.bool)
        self.mask[0, 0, 0] = False  # the mean is not modelled
        aliases = list(np.ndindex(2, 2, 2))
        freq = [np.stack([np.broadcast_to(self._axis_freq(d, a[d]), self.shape) for a in aliases]) for d in range(3)]
        box = np.prod([np.cos(f / 2) ** 2 for f in freq], axis=0)
        laplacian = sum((2 * np.sin(f / 2) / float(h)) ** 2 for f, h in zip(freq, spacing_2x))
        self.box = torch.as_tensor(box)
        self.log_frequency = torch.as_tensor(np.log(eps + laplacian))
        self.aliases = aliases

    def _axis_freq(self, axis: int, alias: int) -> np.ndarray:
        m = self.shape[axis]
        shape = [1, 1, 1]
        shape[axis] = m
        return (2 * np.pi * (np.arange(m) + alias * m) / (2 * m)).reshape(shape)

    def _kernel_power(self, kernel: torch.Tensor) -> torch.Tensor:
        """``|K(w)|^2`` at the 8 aliases of each coarse frequency, ``(8, *shape)``."""
        k = kernel.reshape(kernel.shape[-3:]).double()
        power = torch.fft.fftn(k, s=tuple(2 * m for m in self.shape)).abs() ** 2
        return torch.stack([power[tuple(slice(a * m, (a + 1) * m) for a, m in zip(alias, self.shape))] for alias in self.aliases])

    def __call__(self, kernel: torch.Tensor, log_amplitude, exponent, log_noise) -> torch.Tensor:
        """The mean Whittle term over the non-zero frequencies (differentiable in all arguments)."""
        spectrum = torch.exp(log_amplitude - 0.5 * exponent * self.log_frequency)
        variance = (self.box * self._kernel_power(kernel) * spectrum).sum(0) + torch.exp(log_noise)
        return (self.periodogram / variance + torch.log(variance))[self.mask].mean()

    def fit(self, kernel: torch.Tensor, exponent: float | None = None, iterations: int = 3) -> tuple[float, ImageSpectrum]:
        """Minimise over the image model for a fixed kernel (L-BFGS); ``exponent`` fixes ``p`` (``None``: fitted).

        Returns:
            the minimal value and the fitted :class:`ImageSpectrum`.
        """
        kernel = torch.as_tensor(kernel).detach()
        params = torch.tensor([0.0, 2.0 if exponent is None else float(exponent), -10.0], dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([params], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

        def value():
            p = params[1] if exponent is None else params[1].detach()
            return self(kernel, params[0], p, params[2])

        def closure():
            optimiser.zero_grad()
            loss = value()
            loss.backward()
            return loss

        for _ in range(iterations):
            optimiser.step(closure)
        with torch.no_grad():
            best = float(value())
        fitted = params.detach().tolist()
        return best, ImageSpectrum(fitted[0], fitted[1] if exponent is None else float(exponent), fitted[2])
