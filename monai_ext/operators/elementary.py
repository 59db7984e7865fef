"""Elementary operators: identity, diagonal weighting, dense matrix, per-plane application, vertical stacking."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import LinearOperator

__all__ = ["Identity", "Diagonal", "MatrixOperator", "PerPlane", "Stacked"]


class Identity(LinearOperator):
    """``I x = x`` on any shape (or on ``shape`` when given)."""

    shape_preserving = True

    def __init__(self, shape=None) -> None:
        super().__init__(shape, shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y


class Diagonal(LinearOperator):
    """``diag(w) x = w * x``, elementwise with broadcasting; self-adjoint for real ``w``.

    ``w`` broadcasts against ``(B, C, *shape)``: e.g. ``(1, 1, *shape)`` for one weight per element shared by the
    batch, or ``(1, T, 1, 1)`` for one weight per frame, and is cast to the input's device and dtype at each call. It
    is either a fixed tensor (a non-persistent buffer: it follows ``.to(device)``, it is data of the model and not
    saved in a ``state_dict``) or a function without arguments that returns it, called at each use, for weights
    derived from state kept elsewhere (the PET model's ``m = s a n`` from its buffers). :meth:`set_weights` replaces it.

    Args:
        weights: the diagonal ``w``: a tensor, a float, or a function returning a tensor.
        shape: the spatial shape the operator acts on (``None``: any shape ``w`` broadcasts to).

    Raises:
        ValueError: a fixed ``w`` that holds NaN or inf.
    """

    shape_preserving = True

    def __init__(self, weights, shape=None) -> None:
        super().__init__(shape, shape)
        self.register_buffer("_fixed_weights", None, persistent=False)
        self._weights_of = None
        self.set_weights(weights)

    def set_weights(self, weights) -> None:
        """Replace ``w`` (a tensor, a float, or a function returning a tensor)."""
        if callable(weights) and not isinstance(weights, torch.Tensor):
            self._weights_of, self._fixed_weights = weights, None
            return
        w = weights.detach() if isinstance(weights, torch.Tensor) else torch.tensor(float(weights), dtype=torch.float64)
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"the diagonal weights contain {int((~torch.isfinite(w)).sum())} non-finite value(s).")
        self._weights_of, self._fixed_weights = None, w

    @property
    def weights(self) -> torch.Tensor:
        """``w``, the fixed tensor or the function's current value."""
        return self._weights_of() if self._weights_of is not None else self._fixed_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights.to(device=x.device, dtype=x.dtype)

    adjoint = forward

    def extra_repr(self) -> str:
        return f"weights={tuple(self.weights.shape)}"


class MatrixOperator(LinearOperator):
    """A dense matrix ``M`` (``m x n``) as an operator on ``(B, C, *in_shape)`` tensors, ``prod(in_shape) = n``.

    ``forward`` flattens the spatial axes, multiplies by ``M`` and reshapes to ``out_shape``; ``adjoint`` multiplies
    by ``M^T``. For small problems with closed-form solutions and for tests.

    Args:
        matrix: ``(m, n)`` tensor.
        in_shape: spatial shape of the input (``n`` entries in all).
        out_shape: spatial shape of the output (default ``(m,)``).

    Raises:
        ValueError: shapes that do not multiply out to the matrix's.
    """

    def __init__(self, matrix: torch.Tensor, in_shape, out_shape=None) -> None:
        if matrix.ndim != 2:
            raise ValueError(f"matrix must be 2D, got shape {tuple(matrix.shape)}.")
        super().__init__(in_shape, out_shape or (matrix.shape[0],))
        if math.prod(self.in_shape) != matrix.shape[1] or math.prod(self.out_shape) != matrix.shape[0]:
            raise ValueError(f"matrix {tuple(matrix.shape)} does not map in_shape {self.in_shape} to out_shape {self.out_shape}.")
        self.register_buffer("matrix", matrix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(*x.shape[: -len(self.in_shape)], -1)
        return (flat @ self.matrix.T.to(flat.dtype)).reshape(*flat.shape[:-1], *self.out_shape)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        flat = y.reshape(*y.shape[: -len(self.out_shape)], -1)
        return (flat @ self.matrix.to(flat.dtype)).reshape(*flat.shape[:-1], *self.in_shape)


class PerPlane(LinearOperator):
    """An operator on planes applied to each of ``n_planes`` planes: ``(B, C, P, *in) -> (B, C, P, *out)``.

    The planes go through the plane operator in one call, as ``P`` times more channels (a stack of 2D PET planes
    through one 2D projector).

    Args:
        operator: the plane operator (known ``in_shape`` and ``out_shape``).
        n_planes: ``P``.

    Raises:
        ValueError: ``n_planes`` below 1, or a plane operator without shapes.
    """

    def __init__(self, operator: LinearOperator, n_planes: int) -> None:
        if int(n_planes) < 1:
            raise ValueError(f"n_planes must be a positive integer, got {n_planes}.")
        if operator.in_shape is None or operator.out_shape is None:
            raise ValueError(f"PerPlane needs a plane operator with known shapes, got {type(operator).__name__}.")
        super().__init__((int(n_planes), *operator.in_shape), (int(n_planes), *operator.out_shape))
        self.operator, self.n_planes = operator, int(n_planes)

    def _planes(self, t: torch.Tensor, inner, shape) -> torch.Tensor:
        b, c = t.shape[:2]
        out = inner(t.reshape(b, c * self.n_planes, *t.shape[3:]))
        return out.reshape(b, c, self.n_planes, *shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self._planes(x, self.operator, self.operator.out_shape)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self.check_output(y)
        return self._planes(y, self.operator.adjoint, self.operator.in_shape)


class Stacked(LinearOperator):
    """``[A_1; A_2; ...]``: operators on the same input, outputs flattened and concatenated,
    ``(B, C, *in) -> (B, C, sum_i prod(out_i))``; adjoint ``sum_i A_i^T y_i``. :meth:`split` gives the parts.

    Args:
        operators: the ``A_i`` (known and equal input shapes, known output shapes).

    Raises:
        ValueError: no operators, unknown shapes or different input shapes.
    """

    def __init__(self, operators: Sequence[LinearOperator]) -> None:
        operators = list(operators)
        if not operators:
            raise ValueError("Stacked needs at least one operator.")
        shapes = {op.in_shape for op in operators}
        if len(shapes) != 1 or None in shapes or any(op.out_shape is None for op in operators):
            raise ValueError(f"Stacked needs operators with one known input shape and known output shapes, got {sorted(map(str, shapes))}.")
        self.sizes = [math.prod(op.out_shape) for op in operators]
        super().__init__(operators[0].in_shape, (sum(self.sizes),))
        self.operators = torch.nn.ModuleList(operators)

    def split(self, y: torch.Tensor) -> list[torch.Tensor]:
        """The parts ``y_i`` of a stacked output, each ``(B, C, *out_i)``."""
        return [part.reshape(*y.shape[:2], *op.out_shape) for part, op in zip(torch.split(y, self.sizes, dim=-1), self.operators)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([op(x).flatten(2) for op in self.operators], dim=-1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        parts = self.split(y)
        out = self.operators[0].adjoint(parts[0])
        for op, part in zip(self.operators[1:], parts[1:]):
            out = out + op.adjoint(part)
        return out
