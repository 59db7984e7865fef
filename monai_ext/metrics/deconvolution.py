"""Metrics of deconvolution: recovery coefficients of spheres and the similarity of two blur kernels.

- Recovery coefficient (partial volume studies, e.g. NEMA NU 2): the mean of the image in a sphere's true volume
  divided by the true activity, ``RC = mean(x[sphere]) / a_true``; 1 is full recovery.
- Kernel similarity (Sample et al. 2024, pseudokernel test): the dot product of the kernels normalised to unit L2
  norm, ``k . k* / (|k|_2 |k*|_2)`` (1 for identical shapes), after padding both to the same centred support;
  ``kernel_similarity_matrix`` scores each recovered kernel against every applied one (identification), and
  ``kernel_shape`` gives the moments (FWHMs, principal axes, skewness) to compare shapes beyond one number.
"""

from __future__ import annotations

import numpy as np
import torch

from monai_ext.units import FWHM_PER_SIGMA

__all__ = ["recovery_coefficients", "kernel_similarity", "kernel_similarity_matrix", "kernel_shape"]


def _array(data) -> np.ndarray:
    return data.detach().cpu().double().numpy() if isinstance(data, torch.Tensor) else np.asarray(data, float)


def recovery_coefficients(image, masks, true_activity: float) -> list[float]:
    """Mean of ``image`` in each boolean mask, over ``true_activity``.

    Args:
        image: volume ``(z, y, x)``.
        masks: ``(n, z, y, x)`` boolean masks of the true sphere volumes on the grid of ``image``.
        true_activity: the spheres' true activity (same unit as ``image``).

    Raises:
        ValueError: shapes differ, an empty mask, or a non-positive true activity.
    """
    img, masks = _array(image), np.asarray(masks, bool)
    if masks.shape[1:] != img.shape:
        raise ValueError(f"masks {masks.shape[1:]} and image {img.shape} differ in shape.")
    if true_activity <= 0 or not masks.reshape(len(masks), -1).any(axis=1).all():
        raise ValueError("true_activity must be positive and every mask non-empty.")
    return [float(img[m].mean() / true_activity) for m in masks]


def kernel_similarity(kernel, reference) -> float:
    """``k . k* / (|k| |k*|)`` of two 3D kernels, the smaller one zero-padded centrally to the larger's support.

    Raises:
        ValueError: not 3D, a size difference that is odd, or a zero kernel.
    """
    a, b = np.squeeze(_array(kernel)), np.squeeze(_array(reference))
    if a.ndim != 3 or b.ndim != 3:
        raise ValueError(f"kernels must be 3D, got shapes {a.shape} and {b.shape}.")
    size = np.maximum(a.shape, b.shape)

    def pad(k):
        diff = size - np.asarray(k.shape)
        if np.any(diff % 2):
            raise ValueError(f"cannot centre kernels of shapes {a.shape} and {b.shape} on one grid.")
        return np.pad(k, [(d // 2, d // 2) for d in diff])

    a, b = pad(a), pad(b)
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    if norm == 0:
        raise ValueError("a kernel is all zero.")
    return float((a * b).sum() / norm)


def kernel_similarity_matrix(recovered, applied) -> np.ndarray:
    """``S[i, j] = kernel_similarity(recovered[i], applied[j])``: each recovered kernel against every applied one.

    A kernel is *identified* when its row peaks on the diagonal (it is closer to its own applied kernel than to the
    others); a blob that ignores the applied kernel scores about the same in its whole row.
    """
    return np.array([[kernel_similarity(r, a) for a in applied] for r in recovered])




def kernel_shape(kernel, spacing=(1.0, 1.0, 1.0)) -> dict:
    """Moments of a 3D kernel: centroid, FWHM per axis and along the principal axes, orientation, skewness.

    With ``p = k / sum(k)`` and positions ``t`` in mm (``(z, y, x)``, origin at the centre voxel): centroid
    ``m = sum p t``, covariance ``C = sum p (t - m)(t - m)^T``; FWHMs are those of the Gaussian with these second
    moments (``2 sqrt(2 ln 2) sigma``), principal FWHMs from the eigenvalues of ``C`` (largest first) and the axis of
    the largest one as a unit vector ``(z, y, x)``; the skewness per axis is the standardised third moment of the
    marginal, ``sum p (t_a - m_a)^3 / sigma_a^3`` (0 for a symmetric kernel, its sign the side of the tail).

    Args:
        kernel: 3D array (non-negative, not all zero).
        spacing: voxel size in mm ``(z, y, x)``.

    Raises:
        ValueError: not 3D, a negative entry or a zero sum.
    """
    k = np.squeeze(_array(kernel))
    if k.ndim != 3 or k.min() < 0 or k.sum() <= 0:
        raise ValueError(f"kernel must be a non-negative, non-zero 3D array, got shape {k.shape}.")
    p = k / k.sum()
    grids = np.meshgrid(*[(np.arange(n) - n // 2) * float(s) for n, s in zip(k.shape, spacing)], indexing="ij")
    t = np.stack([g.ravel() for g in grids], axis=1)
    w = p.ravel()
    mean = w @ t
    d = t - mean
    cov = (d * w[:, None]).T @ d
    sigma = np.sqrt(np.diag(cov))
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    major = eigvec[:, order[0]]
    major = major * np.sign(major[np.argmax(np.abs(major))])  # an axis has no sign: make its largest component positive
    return {
        "centroid_mm": mean.tolist(),
        "fwhm_mm": (FWHM_PER_SIGMA * sigma).tolist(),
        "principal_fwhm_mm": (FWHM_PER_SIGMA * np.sqrt(np.clip(eigval[order], 0, None))).tolist(),
        "major_axis_zyx": major.tolist(),
        "skewness": ((w @ d**3) / np.maximum(sigma, 1e-12) ** 3).tolist(),
    }
