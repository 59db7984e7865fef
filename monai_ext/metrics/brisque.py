"""BRISQUE, the blind/referenceless image spatial quality evaluator, in numpy/scipy (no OpenCV, no libsvm).

Mittal et al. (2012): mean-subtracted contrast-normalised (MSCN) coefficients ``(I - mu) / (sigma + C)`` with a
7 x 7 Gaussian window (``sigma = 7/6``, ``C = 1`` on a 0-255 scale), a generalised Gaussian fit to them (shape and
variance: 2 features) and asymmetric generalised Gaussian fits to the products of neighbouring coefficients along
4 orientations (shape, mean, left and right variances: 16 features), at two scales (the image and its half-size
bicubic reduction): 36 features. The parameters are fitted by moment matching over the shape grid 0.2:0.001:10, as
in the authors' MATLAB code (``estimateggdparam``/``estimateaggdparam``). The features are scaled to [-1, 1] by the
training ranges and scored by the authors' epsilon-SVR (RBF kernel) trained on the LIVE IQA database:
``score = sum_i a_i exp(-gamma |s_i - f|^2) - rho`` (lower is better, about 0-100 for natural images).

The SVR and the feature ranges are those shipped by the ``brisque`` package 0.2.0 (Apache-2.0; ``models/svm.txt``
and ``normalize.pickle`` converted to JSON), which match the original release; that package itself needs OpenCV and
libsvm and fails on numpy >= 2.4, hence this re-implementation. PET images are not natural images: BRISQUE is used
here as the paper does, as a relative no-reference comparison of the same slices upsampled in different ways.

References:
    A. Mittal, A. K. Moorthy, A. C. Bovik, "No-reference image quality assessment in the spatial domain", IEEE TIP
    21(12), 4695-4708 (2012).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import gamma as _gamma

__all__ = ["BRISQUEModel", "load_brisque_model", "brisque_features", "brisque_score"]

_SHAPES = np.arange(0.2, 10.0 + 1e-9, 0.001)
_GGD_RATIO = _gamma(1.0 / _SHAPES) * _gamma(3.0 / _SHAPES) / _gamma(2.0 / _SHAPES) ** 2
_AGGD_RATIO = _gamma(2.0 / _SHAPES) ** 2 / (_gamma(1.0 / _SHAPES) * _gamma(3.0 / _SHAPES))


@dataclass(frozen=True)
class BRISQUEModel:
    """An RBF epsilon-SVR and the feature ranges it was trained with.

    Args:
        support_vectors: ``(n, 36)``; coefficients: ``(n,)`` dual coefficients; gamma, rho: libsvm's parameters.
        feature_min, feature_max: ``(36,)`` training ranges, mapped to -1 and 1.
    """

    support_vectors: np.ndarray
    coefficients: np.ndarray
    gamma: float
    rho: float
    feature_min: np.ndarray
    feature_max: np.ndarray


@lru_cache(maxsize=4)
def load_brisque_model(svm_file: str | os.PathLike, range_file: str | os.PathLike) -> BRISQUEModel:
    """Read a libsvm text model (RBF epsilon-SVR) and a JSON ``{"min": [...], "max": [...]}`` feature range.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: not an RBF SVR model, or sizes that do not match.
    """
    header, vectors, coefs = {}, [], []
    with open(svm_file) as handle:
        for line in handle:
            if line.strip() == "SV":
                break
            key, _, value = line.strip().partition(" ")
            header[key] = value
        for line in handle:
            parts = line.split()
            if not parts:
                continue
            coefs.append(float(parts[0]))
            row = np.zeros(36)
            for item in parts[1:]:
                index, value = item.split(":")
                row[int(index) - 1] = float(value)
            vectors.append(row)
    if header.get("kernel_type") != "rbf" or header.get("svm_type") != "epsilon_svr":
        raise ValueError(f"{svm_file} is not an RBF epsilon-SVR libsvm model: {header}.")
    ranges = json.loads(open(range_file).read())
    model = BRISQUEModel(
        support_vectors=np.asarray(vectors),
        coefficients=np.asarray(coefs),
        gamma=float(header["gamma"]),
        rho=float(header["rho"]),
        feature_min=np.asarray(ranges["min"], float),
        feature_max=np.asarray(ranges["max"], float),
    )
    if len(model.coefficients) != int(header.get("total_sv", len(coefs))) or model.feature_min.shape != (36,):
        raise ValueError(f"inconsistent BRISQUE model files {svm_file}, {range_file}.")
    return model


def _mscn(image: np.ndarray) -> np.ndarray:
    from scipy.ndimage import correlate

    x = np.arange(7) - 3
    window = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * (7 / 6) ** 2))
    window /= window.sum()
    mu = correlate(image, window, mode="nearest")
    sigma = np.sqrt(np.abs(correlate(image * image, window, mode="nearest") - mu * mu))
    return (image - mu) / (sigma + 1.0)


def _ggd(values: np.ndarray) -> tuple[float, float]:
    sigma_sq = float(np.mean(values**2))
    rho = sigma_sq / max(float(np.mean(np.abs(values))) ** 2, 1e-12)
    return float(_SHAPES[np.argmin(np.abs(rho - _GGD_RATIO))]), sigma_sq


def _aggd(values: np.ndarray) -> tuple[float, float, float, float]:
    left = values[values < 0]
    right = values[values > 0]
    left_std = float(np.sqrt(np.mean(left**2))) if left.size else 1e-6
    right_std = float(np.sqrt(np.mean(right**2))) if right.size else 1e-6
    gamma_hat = left_std / right_std
    r_hat = float(np.mean(np.abs(values))) ** 2 / max(float(np.mean(values**2)), 1e-12)
    r_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    alpha = float(_SHAPES[np.argmin((_AGGD_RATIO - r_norm) ** 2)])
    const = np.sqrt(_gamma(1 / alpha) / _gamma(3 / alpha))
    mean = (right_std - left_std) * (_gamma(2 / alpha) / _gamma(1 / alpha)) * const
    return alpha, float(mean), left_std**2, right_std**2


def _scale_features(image: np.ndarray) -> list[float]:
    mscn = _mscn(image)
    features = list(_ggd(mscn.ravel()))
    for shift in ((0, 1), (1, 0), (1, 1), (-1, 1)):  # circular shifts, as MATLAB's circshift in the authors' code
        features += _aggd((mscn * np.roll(mscn, shift, axis=(0, 1))).ravel())
    return features


def brisque_features(image) -> np.ndarray:
    """The 36 BRISQUE features of a 2D grey image on a 0-255 scale.

    Raises:
        ValueError: not 2D, smaller than 16 x 16, or not finite.
    """
    from scipy.ndimage import zoom

    img = np.asarray(image, np.float64)
    if img.ndim != 2 or min(img.shape) < 16 or not np.all(np.isfinite(img)):
        raise ValueError(f"BRISQUE needs a finite 2D image of at least 16 x 16 pixels, got shape {img.shape}.")
    half = zoom(img, 0.5, order=3, mode="nearest", grid_mode=True)
    return np.asarray(_scale_features(img) + _scale_features(half))


def brisque_score(image, model: BRISQUEModel, value_range: tuple[float, float] | None = None) -> float:
    """BRISQUE score of a 2D image (lower is better).

    Args:
        image: 2D array; it is mapped linearly from ``value_range`` (default: its own min-max) to 0-255.
        model: from :func:`load_brisque_model`.
        value_range: the display window; pass the same one for images that are compared.
    """
    img = np.asarray(image, np.float64)
    lo, hi = value_range if value_range is not None else (float(img.min()), float(img.max()))
    img = 255.0 * np.clip((img - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    features = brisque_features(img)
    scaled = -1.0 + 2.0 * (features - model.feature_min) / (model.feature_max - model.feature_min)
    distances = np.sum((model.support_vectors - scaled) ** 2, axis=1)
    return float(model.coefficients @ np.exp(-model.gamma * distances) - model.rho)
