"""Invertible Learned Primal-Dual (LIRE-style): reversible primal/dual updates, activations recomputed backward.

Training memory of an unrolled network normally grows with its depth, because autograd stores every iteration's
activations. Here each iteration is an invertible map of the state ``(f, h)`` (additive coupling, Dinh et al.;
Gomez et al.'s reversible residual networks), so the backward pass only needs the final state: it inverts one
iteration at a time, recomputes that iteration's activations, and back-propagates through it alone. Peak memory is
that of one iteration whatever the number of iterations, at the cost of a second forward evaluation.

References:
    N. Moriakov, J.-J. Sonke and J. Teuwen, "LIRE: Learned Invertible Reconstruction for Cone Beam CT",
    Phys. Med. Biol. 68, 2023.
    A. N. Gomez et al., "The Reversible Residual Network: Backpropagation Without Storing Activations", NeurIPS 2017.
    J. Adler and O. Oktem, "Learned Primal-Dual Reconstruction", IEEE TMI 37(6), 2018.
"""

from __future__ import annotations

import torch
from torch import nn

from monai_ext.operators import check_measurements, normalise_operator

from .blocks import ConvBlock, operator_spatial_dims

__all__ = ["InvertiblePrimalDual"]


class _ReversibleIterations(torch.autograd.Function):
    """``(f_I, h_I) = T_I o ... o T_1 (f_0, h_0)`` storing only ``(f_I, h_I)``; the backward inverts ``T_i``."""

    @staticmethod
    def forward(ctx, net: InvertiblePrimalDual, f, h, g, *params):
        with torch.no_grad():
            for i in range(net.n_iter):
                f, h = net.iteration(i, f, h, g)
        ctx.net = net
        ctx.save_for_backward(f, h, g)
        return f, h

    @staticmethod
    def backward(ctx, grad_f, grad_h):
        net = ctx.net
        f, h, g = ctx.saved_tensors
        grad_f = torch.zeros_like(f) if grad_f is None else grad_f
        grad_h = torch.zeros_like(h) if grad_h is None else grad_h
        param_grads: list[torch.Tensor | None] = []
        for i in reversed(range(net.n_iter)):
            with torch.no_grad():
                f, h = net.inverse_iteration(i, f, h, g)
            block_params = net.iteration_parameters(i)
            with torch.enable_grad():
                f_in, h_in = f.detach().requires_grad_(True), h.detach().requires_grad_(True)
                f_out, h_out = net.iteration(i, f_in, h_in, g)
                grads = torch.autograd.grad((f_out, h_out), (f_in, h_in, *block_params), (grad_f, grad_h), allow_unused=True)
            grad_f, grad_h = grads[0], grads[1]
            param_grads = list(grads[2:]) + param_grads
        return (None, grad_f, grad_h, None, *param_grads)


class InvertiblePrimalDual(nn.Module):
    """Learned Primal-Dual with invertible iterations, trained in memory that does not grow with depth (LIRE-style).

    The primal state ``f`` (``n_primal`` channels) and dual state ``h`` (``n_dual``) are split in halves
    ``f = (f_a, f_b)``, ``h = (h_a, h_b)``; the image is the first channel of ``f_b``, ``f_b^{(1)}``. With the
    normalised operator ``K = A / ||A||`` and data ``g = y / (||A|| c)`` (``c = image_scale``), iteration ``i`` is

    ``h_a <- h_a + Gamma_i(h_b, K f_b^{(1)}, g)``, then ``f_a <- f_a + Lambda_i(f_b, K^T h_a^{(1)})``,
    then the halves swap, ``f <- (f_b, f_a)``, ``h <- (h_b, h_a)``,

    an additive coupling that is inverted exactly by subtracting the same updates in reverse order (the inputs of
    ``Gamma_i`` and ``Lambda_i`` are unchanged by the update they drive). The output is ``c f_b^{(1)}`` after the
    last iteration. ``Gamma_i``/``Lambda_i`` are 3-layer CNNs with PReLU, in the dimensionality of the operator's
    image and projection spaces (2D/3D), not shared between iterations.

    With ``memory_efficient`` (the default) the iterations run inside a custom autograd function that stores only
    the final state and recomputes each iteration's activations during the backward pass; otherwise autograd
    stores everything (same weights, same gradients up to rounding; used to check the former).

    Args:
        operator: linear operator ``A`` with ``forward``/``adjoint`` on ``(B, C, *spatial)`` tensors.
        n_iter: unrolled iterations.
        n_primal: primal channels, even (two halves).
        n_dual: dual channels, even.
        features: hidden channels of each CNN.
        image_scale: typical image value (1/mm), to normalise inputs and outputs.
        norm: ``||A||`` if known (else estimated by power iteration at construction).
        initial: optional module ``projections -> image`` (e.g. FDK) whose output starts the image channel;
            default zeros, as in Learned Primal-Dual.
        memory_efficient: recompute activations in the backward pass instead of storing them.
        spatial_dims: image-space dimensionality (default ``len(operator.image_shape)``).
        dual_spatial_dims: projection-space dimensionality (default ``len(operator.projection_shape)``).

    Raises:
        ValueError: odd or too small channel counts, non-positive ``n_iter``/``features``/``image_scale``; at call
            time, measurements of the wrong shape or with NaN/inf.

    Example:
        >>> from monai_ext.tomo import ParallelBeamGeometry, ParallelBeamProjector, uniform_angles
        >>> op = ParallelBeamProjector(ParallelBeamGeometry((32, 32), 4.0, uniform_angles(5), n_det=32, det_spacing=4.0))
        >>> net = InvertiblePrimalDual(op, n_iter=4)
        >>> net(torch.zeros(2, 1, 5, 32)).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(
        self,
        operator,
        n_iter: int = 8,
        n_primal: int = 6,
        n_dual: int = 6,
        features: int = 16,
        image_scale: float = 0.02,
        norm: float | None = None,
        initial: nn.Module | None = None,
        memory_efficient: bool = True,
        spatial_dims: int | None = None,
        dual_spatial_dims: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("n_iter", n_iter), ("features", features)):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        for name, value in (("n_primal", n_primal), ("n_dual", n_dual)):
            if int(value) < 2 or int(value) % 2:
                raise ValueError(f"{name} must be an even number >= 2 (two halves for the coupling), got {value}.")
        if not image_scale > 0:
            raise ValueError(f"image_scale must be positive, got {image_scale}.")
        primal_dims = operator_spatial_dims(operator, spatial_dims, "image_shape")
        dual_dims = operator_spatial_dims(operator, dual_spatial_dims, "projection_shape")
        self.operator = normalise_operator(operator, norm)
        self.initial = initial
        self.half_primal, self.half_dual = int(n_primal) // 2, int(n_dual) // 2
        self.image_scale, self.memory_efficient = float(image_scale), bool(memory_efficient)
        self.dual_blocks = nn.ModuleList(ConvBlock(dual_dims, self.half_dual + 2, self.half_dual, features) for _ in range(int(n_iter)))
        self.primal_blocks = nn.ModuleList(ConvBlock(primal_dims, self.half_primal + 1, self.half_primal, features) for _ in range(int(n_iter)))

    @property
    def n_iter(self) -> int:
        return len(self.primal_blocks)

    def iteration_parameters(self, i: int) -> list[nn.Parameter]:
        """The parameters of iteration ``i`` (dual CNN, then primal CNN)."""
        return [*self.dual_blocks[i].parameters(), *self.primal_blocks[i].parameters()]

    def iteration(self, i: int, f: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Iteration ``i``: dual then primal additive coupling, then the halves swap."""
        p, d = self.half_primal, self.half_dual
        f_a, f_b, h_a, h_b = f[:, :p], f[:, p:], h[:, :d], h[:, d:]
        h_a = h_a + self.dual_blocks[i](torch.cat([h_b, self.operator(f_b[:, :1]), g], dim=1))
        f_a = f_a + self.primal_blocks[i](torch.cat([f_b, self.operator.adjoint(h_a[:, :1])], dim=1))
        return torch.cat([f_b, f_a], dim=1), torch.cat([h_b, h_a], dim=1)

    def inverse_iteration(self, i: int, f: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The state before :meth:`iteration` ``i`` from the state after it."""
        p, d = self.half_primal, self.half_dual
        f_b, f_a, h_b, h_a = f[:, :p], f[:, p:], h[:, :d], h[:, d:]
        f_a = f_a - self.primal_blocks[i](torch.cat([f_b, self.operator.adjoint(h_a[:, :1])], dim=1))
        h_a = h_a - self.dual_blocks[i](torch.cat([h_b, self.operator(f_b[:, :1]), g], dim=1))
        return torch.cat([f_a, f_b], dim=1), torch.cat([h_a, h_b], dim=1)

    def forward(self, projections: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``(B, 1, *image_shape)`` images from ``(B, 1, *projection_shape)`` measurements."""
        check_measurements(self.operator.operator, projections)
        if projections.shape[1] != 1:
            raise ValueError(f"projections must have one channel, got {projections.shape[1]}.")
        g = projections / (self.image_scale / self.operator.scale)
        if self.initial is None:
            image_shape = self.operator.image_shape or self.operator.adjoint(g[:1].detach()).shape[2:]
            f = g.new_zeros((g.shape[0], 2 * self.half_primal, *image_shape))
        else:
            start = self.initial(projections) / self.image_scale
            zeros = start.new_zeros((start.shape[0], 2 * self.half_primal - 1, *start.shape[2:]))
            f = torch.cat([zeros[:, : self.half_primal], start, zeros[:, self.half_primal :]], dim=1)
        h = g.new_zeros((g.shape[0], 2 * self.half_dual, *g.shape[2:]))
        if self.memory_efficient and torch.is_grad_enabled():
            f, h = _ReversibleIterations.apply(self, f, h, g.detach(), *[p for i in range(self.n_iter) for p in self.iteration_parameters(i)])
        else:
            for i in range(self.n_iter):
                f, h = self.iteration(i, f, h, g)
        return f[:, self.half_primal : self.half_primal + 1] * self.image_scale

    def extra_repr(self) -> str:
        return f"n_iter={self.n_iter}, memory_efficient={self.memory_efficient}"
