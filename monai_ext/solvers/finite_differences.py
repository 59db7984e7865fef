"""Moved to :mod:`monai_ext.operators.finite_differences`; this name stays importable for one release."""

from ..operators.finite_differences import divergence, gradient, gradient_norm_sq_bound

__all__ = ["gradient", "divergence", "gradient_norm_sq_bound"]
