"""Checks of measurements against an operator, and the operator normalised to norm 1."""

from __future__ import annotations

import warnings

import torch

from .base import LinearOperator, Scaled, operator_norm
from .checks import check_batched

__all__ = ["check_measurements", "normalise_operator", "normalize_operator"]


def check_measurements(operator, y, name: str = "projections") -> None:
    """Raise a clear error when ``y`` cannot be the measurements of ``operator``.

    Args:
        operator: a :class:`LinearOperator` (its ``out_shape`` is the expected spatial shape), or any object with
            ``forward``/``adjoint`` and optionally ``projection_shape``.
        y: the measurements, ``(B, C, *out_shape)``.
        name: what ``y`` is called in the messages.

    Raises:
        TypeError: ``y`` is not a floating-point tensor.
        ValueError: ``y`` has the wrong shape for the operator, or holds NaN/inf.
    """
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(y).__name__} {getattr(y, 'dtype', '')}.")
    expected = operator.out_shape if isinstance(operator, LinearOperator) else getattr(operator, "projection_shape", None)
    check_batched(name, y, expected, f"this {type(operator).__name__}")


def normalise_operator(operator, norm: float | None = None) -> Scaled:
    """``A / ||A||``, an operator of norm 1 (``norm``: a known ``||A||``, else estimated by :func:`operator_norm`).

    Raises:
        ValueError: a norm that is not positive.
    """
    value = float(norm) if norm is not None else operator_norm(operator)
    if not value > 0:
        raise ValueError(f"the operator norm must be positive, got {value}.")
    return Scaled(operator, 1.0 / value)


def normalize_operator(operator, norm: float | None = None) -> Scaled:
    """Deprecated spelling of :func:`normalise_operator` (kept for one release)."""
    warnings.warn("normalize_operator is deprecated; use monai_ext.operators.normalise_operator.", DeprecationWarning, stacklevel=2)
    return normalise_operator(operator, norm)
