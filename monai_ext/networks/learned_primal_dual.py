"""Learned Primal-Dual reconstruction (Adler and Oktem 2018) for any linear operator with ``forward``/``adjoint``."""

from __future__ import annotations

import torch
from torch import nn

from monai_ext.operators import check_measurements, normalise_operator

from .blocks import ConvBlock, operator_spatial_dims

__all__ = ["LearnedPrimalDual"]


class LearnedPrimalDual(nn.Module):
    """Learned Primal-Dual network: ``n_iter`` unrolled primal and dual updates, each a small residual CNN.

    With the normalised operator ``K = A / ||A||`` and data ``g = y / (||A|| c)`` (``c = image_scale``, so that the
    network sees values of order one), starting from ``f_0 = 0``, ``h_0 = 0`` (Adler and Oktem 2018, Algorithm 3):

    ``h_i = h_{i-1} + Gamma_i(h_{i-1}, K f_{i-1}^{(2)}, g)``,
    ``f_i = f_{i-1} + Lambda_i(f_{i-1}, K^T h_i^{(1)})``,

    and the output is ``c f_I^{(1)}``. ``f`` has ``n_primal`` channels (a memory), ``h`` has ``n_dual``;
    ``Gamma_i`` and ``Lambda_i`` are 3-layer CNNs (``features`` channels, PReLU), not shared between iterations.

    Only ``forward``/``adjoint`` of the operator are used, so any operator plugs in: the 2D parallel-beam
    projector (2D convolutions on images and sinograms) or the 3D cone-beam projector (3D convolutions on volumes
    and on ``(views, rows, cols)`` projections). The dimensionality of each CNN is read from the operator's
    ``image_shape``/``projection_shape``, or given.

    Args:
        operator: linear operator ``A`` with ``forward``/``adjoint`` on ``(B, C, *spatial)`` tensors.
        n_iter: unrolled iterations ``I``.
        n_primal: primal memory channels.
        n_dual: dual memory channels.
        features: hidden channels of each CNN.
        image_scale: typical image value (e.g. water's attenuation 0.02 /mm), to normalise inputs and outputs.
        norm: ``||A||`` if known (else estimated by power iteration at construction).
        spatial_dims: dimensionality of the image space (default: ``len(operator.image_shape)``).
        dual_spatial_dims: dimensionality of the measurement space (default: ``len(operator.projection_shape)``).
        zero_init: start the last convolution of every block at zero (the untrained network outputs zeros); the
            default keeps PyTorch's random initialisation of every layer, which trained faster here.
        initial: optional module ``projections -> image`` (e.g. FDK, ``monai_ext.tomo.FBP``) whose output starts
            every primal channel instead of zeros (a warm start for short training, as in the CBCT bundle); a
            module without parameters leaves the state dict unchanged.

    Raises:
        ValueError: non-positive ``n_iter``, channels or ``image_scale``; dimensions that cannot be inferred; at
            call time, measurements of the wrong shape for the operator or with NaN/inf.

    Example:
        >>> from monai_ext.tomo import ParallelBeamGeometry, ParallelBeamProjector, uniform_angles
        >>> op = ParallelBeamProjector(ParallelBeamGeometry((32, 32), 4.0, uniform_angles(5), n_det=32, det_spacing=4.0))
        >>> net = LearnedPrimalDual(op, n_iter=2)
        >>> net(torch.zeros(2, 1, 5, 32)).shape
        torch.Size([2, 1, 32, 32])

    Reference:
        J. Adler and O. Oktem, "Learned Primal-Dual Reconstruction", IEEE TMI 37(6), 1322-1332, 2018.
    """

    def __init__(
        self,
        operator,
        n_iter: int = 10,
        n_primal: int = 5,
        n_dual: int = 5,
        features: int = 32,
        image_scale: float = 0.02,
        norm: float | None = None,
        spatial_dims: int | None = None,
        dual_spatial_dims: int | None = None,
        zero_init: bool = False,
        initial: nn.Module | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("n_iter", n_iter), ("n_primal", n_primal), ("n_dual", n_dual), ("features", features)):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        if not image_scale > 0:
            raise ValueError(f"image_scale must be positive, got {image_scale}.")
        primal_dims = operator_spatial_dims(operator, spatial_dims, "image_shape")
        dual_dims = operator_spatial_dims(operator, dual_spatial_dims, "projection_shape")
        self.operator = normalise_operator(operator, norm)
        self.initial = initial
        self.n_primal, self.n_dual, self.image_scale = int(n_primal), int(n_dual), float(image_scale)
        self.dual_blocks = nn.ModuleList(ConvBlock(dual_dims, self.n_dual + 2, self.n_dual, features, zero_last=zero_init) for _ in range(int(n_iter)))
        self.primal_blocks = nn.ModuleList(ConvBlock(primal_dims, self.n_primal + 1, self.n_primal, features, zero_last=zero_init) for _ in range(int(n_iter)))

    @property
    def n_iter(self) -> int:
        return len(self.primal_blocks)

    def forward(self, projections: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``(B, 1, *image_shape)`` images from ``(B, 1, *projection_shape)`` measurements."""
        check_measurements(self.operator.operator, projections)
        if projections.shape[1] != 1:
            raise ValueError(f"projections must have one channel, got {projections.shape[1]}.")
        g = projections / (self.image_scale / self.operator.scale)
        if self.initial is None:
            backprojection = self.operator.adjoint(g)
            f = backprojection.new_zeros((g.shape[0], self.n_primal, *backprojection.shape[2:]))
        else:
            start = self.initial(projections) / self.image_scale
            f = start.expand(-1, self.n_primal, *start.shape[2:]).contiguous()
        h = g.new_zeros((g.shape[0], self.n_dual, *g.shape[2:]))
        for dual, primal in zip(self.dual_blocks, self.primal_blocks):
            h = h + dual(torch.cat([h, self.operator(f[:, 1:2] if self.n_primal > 1 else f[:, :1]), g], dim=1))
            f = f + primal(torch.cat([f, self.operator.adjoint(h[:, :1])], dim=1))
        return f[:, :1] * self.image_scale
