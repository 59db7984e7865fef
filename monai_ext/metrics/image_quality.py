"""Full-reference image quality: PSNR, SSIM and relative error, on 2D or 3D images.

PSNR uses the reference's dynamic range unless ``data_range`` is given, the convention of the CT papers the
bundles compare with (Adler and Oktem 2018 report PSNR over the phantom's range). SSIM is scikit-image's
``structural_similarity`` (Wang et al. 2004, Gaussian window, ``sigma = 1.5``).

A uniform reference (an air scan, a blank image) has no dynamic range, and a zero one no norm: PSNR and SSIM, or
the relative error, are then undefined and returned as NaN (summaries report them as null), never an exception.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["psnr", "ssim", "relative_error"]


def _pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    p = pred.detach().cpu().double().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred, float)
    r = ref.detach().cpu().double().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, float)
    p, r = np.squeeze(p), np.squeeze(r)
    if p.shape != r.shape:
        raise ValueError(f"prediction and reference shapes differ: {p.shape} vs {r.shape}.")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(r))):
        raise ValueError("prediction or reference contains non-finite values.")
    return p, r


def _data_range(r: np.ndarray, data_range: float | None) -> float:
    return float(data_range) if data_range is not None else float(r.max() - r.min())


def psnr(pred, ref, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(range^2 / MSE)``; NaN when the range is zero (a uniform
    reference), infinity when the images are equal."""
    p, r = _pair(pred, ref)
    rng = _data_range(r, data_range)
    if not rng > 0:
        return math.nan
    mse = float(np.mean((p - r) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(rng**2 / mse)


def ssim(pred, ref, data_range: float | None = None) -> float:
    """Structural similarity (2D or 3D, Gaussian window); NaN when the range is zero (a uniform reference)."""
    from skimage.metrics import structural_similarity

    p, r = _pair(pred, ref)
    rng = _data_range(r, data_range)
    if not rng > 0:
        return math.nan
    return float(structural_similarity(r, p, data_range=rng, gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def relative_error(pred, ref) -> float:
    """``||pred - ref|| / ||ref||``; NaN when the reference is zero."""
    p, r = _pair(pred, ref)
    norm = float(np.linalg.norm(r))
    return float(np.linalg.norm(p - r) / norm) if norm > 0 else math.nan
