"""The linear minimum-mean-square-error (Wiener) reconstruction estimated from training images."""

from __future__ import annotations

import math

import torch
from torch import nn

from monai_ext.operators import check_measurements

__all__ = ["LinearMMSE"]


class LinearMMSE(nn.Module):
    """``x = mu_x + Sigma_x A^T (A Sigma_x A^T + Sigma_n)^{-1} (y - A mu_x)``, stored as ``x = W y + b``.

    The best linear estimator of ``x`` from ``y = A x + n`` given the image mean ``mu_x`` and covariance
    ``Sigma_x`` and the noise covariance ``Sigma_n`` (noise uncorrelated with ``x``). :meth:`estimate` computes it
    from training pairs; a module built by the constructor holds zeros until a state dict is loaded into it. ``W``
    (``N x M``, one column per measurement) is stored in ``storage_dtype`` (float16 by default, halving the file:
    its rounding, ~5e-4 relative, is far below the reconstruction error) and used in the input's dtype.

    Args:
        image_shape: spatial shape of the images (``N = prod(image_shape)``).
        projection_shape: spatial shape of the measurements (``M = prod(projection_shape)``).
        storage_dtype: dtype of the stored ``W`` and ``b``.

    Raises:
        ValueError: at call time, measurements of the wrong shape or with NaN/inf.

    Example:
        >>> from monai_ext.solvers import MatrixOperator
        >>> op = MatrixOperator(torch.eye(4, dtype=torch.float64), (2, 2))
        >>> images = torch.randn(500, 1, 2, 2, dtype=torch.float64)
        >>> mmse = LinearMMSE.estimate(op, images, op(images))  # noise-free and invertible: x = y
        >>> bool(torch.allclose(mmse(op(images[:3]).float()), images[:3].float(), atol=1e-2))
        True

    References:
        S. M. Kay, *Fundamentals of Statistical Signal Processing: Estimation Theory*, Prentice Hall 1993, ch. 12.
        N. Ducros, A. Lorente Mur and F. Peyrin, "A completion network for reconstruction from compressed
        acquisition", IEEE ISBI 2020.
    """

    def __init__(self, image_shape, projection_shape, storage_dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.projection_shape = tuple(int(s) for s in projection_shape)
        n, m = math.prod(self.image_shape), math.prod(self.projection_shape)
        self.register_buffer("weight", torch.zeros((n, m), dtype=storage_dtype))
        self.register_buffer("bias", torch.zeros((n,), dtype=storage_dtype))

    @classmethod
    def estimate(
        cls,
        operator,
        images: torch.Tensor,
        projections: torch.Tensor,
        ridge: float = 1e-6,
        storage_dtype: torch.dtype = torch.float16,
        batch_size: int = 256,
    ) -> LinearMMSE:
        """The estimator from training images and their measurements.

        ``mu_x`` and ``Sigma_x`` are the sample mean and covariance of ``images``; ``Sigma_n`` is the sample
        covariance of the residuals ``y - A x`` (measurement noise plus model mismatch); ``A`` is formed column by
        column from ``operator.adjoint``. ``ridge * trace / M`` is added to the diagonal of the ``M x M`` matrix to
        invert, which guards against a rank-deficient covariance (noise-free data).

        Args:
            operator: linear operator ``A`` with ``forward``/``adjoint``.
            images: ``(L, 1, *image_shape)`` training images.
            projections: ``(L, 1, *projection_shape)`` their measurements.
            ridge: relative diagonal loading.
            storage_dtype: dtype in which ``W`` and ``b`` are kept.
            batch_size: images projected per operator call.

        Raises:
            ValueError: fewer than 2 training pairs, or images and projections that do not pair up.
        """
        if images.shape[0] != projections.shape[0] or images.shape[0] < 2:
            raise ValueError(f"need at least 2 paired images and projections, got {images.shape[0]} and {projections.shape[0]}.")
        image_shape, projection_shape = tuple(images.shape[2:]), tuple(projections.shape[2:])
        n, m = math.prod(image_shape), math.prod(projection_shape)
        with torch.no_grad():
            x = images.detach().reshape(images.shape[0], n).double().cpu()
            # A as a dense matrix, one row per measurement: A^T e_j for every unit vector e_j of the measurement space
            rows = []
            for start in range(0, m, batch_size):
                count = min(batch_size, m - start)
                units = torch.zeros((count, m), dtype=torch.float32)
                units[torch.arange(count), start + torch.arange(count)] = 1.0
                rows.append(operator.adjoint(units.reshape(count, 1, *projection_shape)).reshape(count, n).double().cpu())
            a = torch.cat(rows)
            residual = projections.detach().reshape(-1, m).double().cpu() - x @ a.T
            mu = x.mean(0)
            xc = x - mu
            sigma_x_at = xc.T @ (xc @ a.T) / (x.shape[0] - 1)  # Sigma_x A^T, without forming Sigma_x
            rc = residual - residual.mean(0)
            sigma_n = rc.T @ rc / (x.shape[0] - 1)
            k = a @ sigma_x_at + sigma_n
            k = k + ridge * torch.trace(k) / m * torch.eye(m, dtype=k.dtype)
            weight = torch.linalg.solve(k, sigma_x_at.T).T  # Sigma_x A^T K^{-1}, K symmetric
            bias = mu - weight @ (a @ mu + residual.mean(0))
        module = cls(image_shape, projection_shape, storage_dtype)
        module.weight.copy_(weight.to(storage_dtype))
        module.bias.copy_(bias.to(storage_dtype))
        return module

    def forward(self, projections: torch.Tensor) -> torch.Tensor:
        """``W y + b`` for ``(B, 1, *projection_shape)`` measurements; returns ``(B, 1, *image_shape)``."""
        check_measurements(self, projections)
        flat = projections.reshape(projections.shape[0], projections.shape[1], -1)
        out = flat @ self.weight.to(flat.dtype).T + self.bias.to(flat.dtype)
        return out.reshape(*projections.shape[:2], *self.image_shape)
