"""Metrics of deconvolution: recovery coefficients of spheres and the similarity of two blur kernels.

- Recovery coefficient (partial volume studies, e.g. NEMA NU 2): the mean of the image in a sphere's true volume
  divided by the true activity, ``RC = mean(x[sphere]) / a_true``; 1 is full recovery.
- Kernel similarity (Sample et al. 2024, pseudokernel test): the dot product of the kernels normalised to unit L2
  norm, ``k . k* / (|k|_2 |k*|_2)`` (1 for identical shapes), after padding both to the same centred support.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["recovery_coefficients", "kernel_similarity"]


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
