"""Forward-difference gradient and its negative adjoint (divergence) on batched 1D/2D/3D images.

``gradient(x)[:, :, k]`` is the forward difference of ``x`` along spatial axis ``k`` (pixel units), zero on the last
plane (Neumann boundary); ``divergence`` is ``-gradient^T`` exactly, so ``<grad x, p> = -<x, div p>``. The
squared operator norm of the gradient is below ``4 d`` for ``d`` spatial dimensions (:func:`gradient_norm_sq_bound`).

Reference:
    A. Chambolle, "An algorithm for total variation minimization and applications", JMIV 20, 2004.
"""

from __future__ import annotations

import torch

from .base import LinearOperator

__all__ = ["gradient", "divergence", "gradient_norm_sq_bound", "FiniteDifferenceGradient"]


def gradient_norm_sq_bound(spatial_dims: int) -> float:
    """Upper bound ``4 d`` of ``||grad||^2`` for ``d`` spatial dimensions."""
    return 4.0 * int(spatial_dims)


def gradient(x: torch.Tensor) -> torch.Tensor:
    """Forward differences of ``x`` ``(B, C, *spatial)``; returns ``(B, C, d, *spatial)``.

    Raises:
        ValueError: fewer than one spatial dimension.
    """
    d = x.ndim - 2
    if d < 1:
        raise ValueError(f"x must have shape (B, C, *spatial) with at least one spatial axis, got {tuple(x.shape)}.")
    parts = []
    for k in range(d):
        axis = 2 + k
        diff = torch.zeros_like(x)
        n = x.shape[axis]
        diff.narrow(axis, 0, n - 1).copy_(x.narrow(axis, 1, n - 1) - x.narrow(axis, 0, n - 1))
        parts.append(diff)
    return torch.stack(parts, dim=2)


def divergence(p: torch.Tensor) -> torch.Tensor:
    """``-gradient^T p`` for ``p`` ``(B, C, d, *spatial)``; returns ``(B, C, *spatial)``.

    Raises:
        ValueError: ``p.shape[2]`` is not the number of spatial axes.
    """
    d = p.ndim - 3
    if d < 1 or p.shape[2] != d:
        raise ValueError(f"p must have shape (B, C, d, *spatial) with d spatial axes, got {tuple(p.shape)}.")
    out = torch.zeros_like(p[:, :, 0])
    for k in range(d):
        q = p[:, :, k]
        axis = 2 + k
        n = q.shape[axis]
        # (div q)_i = q_i - q_{i-1}, with q_{-1} = 0 and q_{n-1} = 0 (it is never produced by the gradient)
        out.narrow(axis, 0, n - 1).add_(q.narrow(axis, 0, n - 1))
        out.narrow(axis, 1, n - 1).sub_(q.narrow(axis, 0, n - 1))
    return out


class FiniteDifferenceGradient(LinearOperator):
    """The forward-difference gradient as an operator: ``(B, C, *spatial) -> (B, C, d, *spatial)``; adjoint
    ``-divergence``. ``||grad||^2 < 4 d`` (:func:`gradient_norm_sq_bound`).

    Args:
        in_shape: spatial shape of the images (1 to 3 axes).

    Raises:
        ValueError: an empty or longer than 3-axis shape.

    Example:
        >>> op = FiniteDifferenceGradient((4, 5))
        >>> op(torch.ones(1, 1, 4, 5)).abs().max().item(), op.out_shape
        (0.0, (2, 4, 5))
    """

    def __init__(self, in_shape) -> None:
        in_shape = tuple(int(s) for s in in_shape)
        if not 1 <= len(in_shape) <= 3:
            raise ValueError(f"in_shape must have 1 to 3 spatial axes, got {in_shape}.")
        super().__init__(in_shape, (len(in_shape), *in_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gradient(x)

    def adjoint(self, p: torch.Tensor) -> torch.Tensor:
        return -divergence(p)
