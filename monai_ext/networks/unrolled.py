"""Unrolled proximal gradient network: gradient steps on the data term, each followed by a learned proximal CNN."""

from __future__ import annotations

import torch
from torch import nn

from monai_ext.operators import check_measurements, normalise_operator

from .blocks import ConvBlock, operator_spatial_dims

__all__ = ["UnrolledProximalGradient"]


class UnrolledProximalGradient(nn.Module):
    """``n_iter`` unrolled iterations of proximal gradient descent with a CNN in place of the proximal operator.

    With ``K = A / ||A||``, ``g = y / (||A|| c)`` (``c = image_scale``) and ``x_0 = 0``:

    ``z_k = x_{k-1} - gamma_k K^T (K x_{k-1} - g)`` (a gradient step on ``1/2 ||K x - g||^2``),
    ``x_k = z_k + D_k(z_k)`` (a residual CNN, the learned proximal step),

    and the output is ``c x_K``. The step lengths ``gamma_k`` are learned, one per iteration (initialised to
    ``step``; the largest stable fixed step for a normalised operator is 2). With ``shared=True`` one CNN serves
    every iteration (``K``-fold fewer CNN parameters); otherwise each iteration has its own.

    Args:
        operator: linear operator ``A`` with ``forward``/``adjoint``.
        n_iter: unrolled iterations.
        shared: share the CNN across iterations.
        features: hidden channels of each CNN.
        n_layers: convolutions per CNN.
        step: initial step length ``gamma``.
        image_scale: typical image value (e.g. 0.02 /mm), to normalise inputs and outputs.
        norm: ``||A||`` if known (else estimated at construction).
        spatial_dims: dimensionality of the image space (default: ``len(operator.image_shape)``).
        zero_init: start the last convolution of every CNN at zero, so that the untrained network is plain
            gradient descent (Landweber) on the data term and training learns the corrections.

    Raises:
        ValueError: non-positive ``n_iter``, ``features`` or ``image_scale``; at call time, measurements of the wrong
            shape for the operator or with NaN/inf.

    Example:
        >>> from monai_ext.tomo import ParallelBeamGeometry, ParallelBeamProjector, uniform_angles
        >>> op = ParallelBeamProjector(ParallelBeamGeometry((32, 32), 4.0, uniform_angles(5), n_det=32, det_spacing=4.0))
        >>> net = UnrolledProximalGradient(op, n_iter=3, shared=True)
        >>> net(torch.zeros(1, 1, 5, 32)).shape
        torch.Size([1, 1, 32, 32])

    References:
        K. Gregor and Y. LeCun, "Learning fast approximations of sparse coding", ICML 2010 (unrolling).
        J. Adler and O. Oktem, "Solving ill-posed inverse problems using iterative deep neural networks", Inverse
        Problems 33(12), 2017 (learned proximal/gradient schemes for CT).
    """

    def __init__(
        self,
        operator,
        n_iter: int = 10,
        shared: bool = False,
        features: int = 32,
        n_layers: int = 3,
        step: float = 1.0,
        image_scale: float = 0.02,
        norm: float | None = None,
        spatial_dims: int | None = None,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if int(n_iter) < 1:
            raise ValueError(f"n_iter must be at least 1, got {n_iter}.")
        if not image_scale > 0:
            raise ValueError(f"image_scale must be positive, got {image_scale}.")
        dims = operator_spatial_dims(operator, spatial_dims, "image_shape")
        self.operator = normalise_operator(operator, norm)
        self.image_scale, self.shared, self._n_iter = float(image_scale), bool(shared), int(n_iter)
        n_blocks = 1 if self.shared else self._n_iter
        self.proximals = nn.ModuleList(ConvBlock(dims, 1, 1, features, n_layers, zero_last=zero_init) for _ in range(n_blocks))
        self.steps = nn.Parameter(torch.full((self._n_iter,), float(step)))

    @property
    def n_iter(self) -> int:
        return self._n_iter

    def forward(self, projections: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``(B, C, *image_shape)`` images from ``(B, C, *projection_shape)`` measurements."""
        check_measurements(self.operator.operator, projections)
        g = projections / (self.image_scale / self.operator.scale)
        backprojection = self.operator.adjoint(g)
        x = torch.zeros_like(backprojection)
        for k in range(self._n_iter):
            # K^T (K x - g) = K^T K x - K^T g, with K^T g computed once
            z = x - self.steps[k] * (self.operator.adjoint(self.operator(x)) - backprojection)
            x = z + self.proximals[0 if self.shared else k](z)
        return x * self.image_scale
