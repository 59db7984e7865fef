"""Operators computed outside autograd (numba kernels, sparse products), wired into autograd by their adjoint.

A subclass of :class:`ExplicitAdjointOperator` implements ``_apply_forward(x)`` and ``_apply_adjoint(y)`` on
detached tensors; ``forward``/``adjoint`` check the input and register the pair with autograd so that the gradient
of ``forward`` is ``adjoint`` and the gradient of ``adjoint`` is ``forward`` (to any order).
"""

from __future__ import annotations

import torch

from .base import LinearOperator

__all__ = ["ExplicitAdjointOperator"]


class _Forward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, op):
        ctx.op = op
        return op._apply_forward(x)

    @staticmethod
    def backward(ctx, grad):
        return _Adjoint.apply(grad, ctx.op), None


class _Adjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, op):
        ctx.op = op
        return op._apply_adjoint(y)

    @staticmethod
    def backward(ctx, grad):
        return _Forward.apply(grad, ctx.op), None


class ExplicitAdjointOperator(LinearOperator):
    """A :class:`LinearOperator` whose forward and adjoint are computed by ``_apply_forward``/``_apply_adjoint``
    (no autograd inside) and differentiated through each other."""

    def _apply_forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for ``x`` ``(B, C, *in_shape)``."""
        self.check_input(x, "x")
        return _Forward.apply(x, self)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y`` for ``y`` ``(B, C, *out_shape)``."""
        self.check_output(y, "y")
        return _Adjoint.apply(y, self)
