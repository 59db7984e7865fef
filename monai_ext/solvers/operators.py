"""Helpers for linear operators given as objects with ``forward`` (or ``__call__``) and ``adjoint``.

Any object with ``forward(x)`` / ``__call__(x)`` and ``adjoint(y)`` on batched tensors ``(B, C, *spatial)`` is a
linear operator here: the ``monai_ext.tomo`` projectors, a dense matrix wrapped in a module, a composition. The
solvers and networks of ``monai_ext`` only use these two methods (plus ``norm`` when the operator offers one).
"""

from __future__ import annotations

import math

import torch

__all__ = ["apply", "check_measurements", "operator_norm", "MatrixOperator", "ScaledOperator", "normalize_operator"]


def apply(operator, x: torch.Tensor) -> torch.Tensor:
    """``operator(x)``: call the operator (``nn.Module`` or callable) or its ``forward`` method."""
    return operator(x) if callable(operator) else operator.forward(x)


def check_measurements(operator, y, name: str = "projections") -> None:
    """Raise a clear error when ``y`` cannot be the measurements of ``operator``.

    Args:
        operator: linear operator; its ``projection_shape`` (when it has one) is the expected spatial shape.
        y: the measurements, ``(B, C, *projection_shape)``.
        name: what ``y`` is called in the messages.

    Raises:
        TypeError: ``y`` is not a floating-point tensor.
        ValueError: ``y`` has the wrong shape for the operator, or holds NaN/inf.
    """
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(y).__name__} {getattr(y, 'dtype', '')}.")
    expected = getattr(operator, "projection_shape", None)
    if expected is not None and (y.ndim != 2 + len(expected) or tuple(y.shape[2:]) != tuple(expected)):
        raise ValueError(
            f"{name} must have shape (B, C, {', '.join(map(str, expected))}) for this geometry/operator, got {tuple(y.shape)}."
        )
    if not torch.isfinite(y).all():
        raise ValueError(f"{name} contain {int((~torch.isfinite(y)).sum())} non-finite value(s) (NaN or inf).")


def _check_operator(operator) -> None:
    if not hasattr(operator, "adjoint") or not (callable(operator) or hasattr(operator, "forward")):
        raise TypeError(f"operator must have forward (or be callable) and adjoint methods, got {type(operator).__name__}.")


def operator_norm(operator, image_shape=None, n_iter: int = 30, seed: int = 0, device=None, dtype=torch.float64) -> float:
    """Operator 2-norm ``||A||`` by power iteration on ``A^T A``.

    Uses the operator's own ``norm(n_iter=..., seed=...)`` when it has one and ``image_shape`` is not given.

    Args:
        operator: linear operator with ``forward``/``adjoint``.
        image_shape: ``(B, C, *spatial)`` or ``spatial`` shape of the operator's input; defaults to
            ``operator.image_shape``.
        n_iter: power iterations.
        seed: seed of the random start.
        device: device of the iterates.
        dtype: dtype of the iterates.

    Raises:
        TypeError: not an operator.
        ValueError: no input shape known, or a zero operator.

    Example:
        >>> op = MatrixOperator(torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)), (2,))
        >>> round(operator_norm(op), 6)
        3.0
    """
    _check_operator(operator)
    if image_shape is None and hasattr(operator, "norm"):
        return float(operator.norm(n_iter=n_iter, seed=seed))
    shape = image_shape if image_shape is not None else getattr(operator, "image_shape", None)
    if shape is None:
        raise ValueError("operator_norm needs image_shape: the operator has neither norm() nor image_shape.")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        shape = (1, 1, *shape)
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.rand(shape, generator=gen, dtype=dtype).to(device or "cpu")
    value = 0.0
    for _ in range(int(n_iter)):
        x = operator.adjoint(apply(operator, x))
        value = float(x.norm())
        if value == 0.0:
            raise ValueError("the operator maps the power-iteration vector to zero: it has no positive norm.")
        x = x / value
    return math.sqrt(value)


class MatrixOperator(torch.nn.Module):
    """A dense matrix ``M`` (``m x n``) as an operator on ``(B, C, *image_shape)`` tensors, ``prod(image_shape) = n``.

    ``forward(x)`` flattens the spatial axes, multiplies by ``M`` and reshapes to ``projection_shape``;
    ``adjoint(y)`` multiplies by ``M^T``. Useful for small problems with closed-form solutions and for tests.

    Args:
        matrix: ``(m, n)`` tensor.
        image_shape: spatial shape of the input (``n`` entries in all).
        projection_shape: spatial shape of the output (default ``(m,)``).

    Raises:
        ValueError: shapes that do not multiply out to the matrix's.
    """

    def __init__(self, matrix: torch.Tensor, image_shape, projection_shape=None) -> None:
        super().__init__()
        if matrix.ndim != 2:
            raise ValueError(f"matrix must be 2D, got shape {tuple(matrix.shape)}.")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.projection_shape = tuple(int(s) for s in (projection_shape or (matrix.shape[0],)))
        if math.prod(self.image_shape) != matrix.shape[1] or math.prod(self.projection_shape) != matrix.shape[0]:
            raise ValueError(f"matrix {tuple(matrix.shape)} does not map image_shape {self.image_shape} to projection_shape {self.projection_shape}.")
        self.register_buffer("matrix", matrix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(*x.shape[:-len(self.image_shape)], -1)
        return (flat @ self.matrix.T.to(flat.dtype)).reshape(*flat.shape[:-1], *self.projection_shape)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        flat = y.reshape(*y.shape[:-len(self.projection_shape)], -1)
        return (flat @ self.matrix.to(flat.dtype)).reshape(*flat.shape[:-1], *self.image_shape)


class ScaledOperator(torch.nn.Module):
    """``s A``: an operator times a constant, with ``adjoint`` ``s A^T`` (``s`` real).

    Shapes (``image_shape``, ``projection_shape``) and the spatial dimensionality are those of the wrapped
    operator. A ``torch.nn.Module`` operator is registered as a sub-module (so ``.to(device)`` reaches it).

    Args:
        operator: linear operator with ``forward``/``adjoint``.
        scale: the constant ``s``.

    Raises:
        TypeError: ``operator`` lacks ``forward``/``adjoint``.
        ValueError: non-finite or zero ``scale``.
    """

    def __init__(self, operator, scale: float) -> None:
        super().__init__()
        _check_operator(operator)
        if not math.isfinite(float(scale)) or float(scale) == 0.0:
            raise ValueError(f"scale must be finite and non-zero, got {scale}.")
        self.operator = operator
        self.scale = float(scale)

    @property
    def image_shape(self):
        return getattr(self.operator, "image_shape", None)

    @property
    def projection_shape(self):
        return getattr(self.operator, "projection_shape", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply(self.operator, x) * self.scale

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.operator.adjoint(y) * self.scale

    def norm(self, n_iter: int = 30, seed: int = 0) -> float:
        return abs(self.scale) * operator_norm(self.operator, n_iter=n_iter, seed=seed)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


def normalize_operator(operator, norm: float | None = None) -> ScaledOperator:
    """``A / ||A||``, an operator of norm 1 (``norm``: a known ``||A||``, else estimated by :func:`operator_norm`)."""
    value = float(norm) if norm is not None else operator_norm(operator)
    if not value > 0:
        raise ValueError(f"the operator norm must be positive, got {value}.")
    return ScaledOperator(operator, 1.0 / value)
