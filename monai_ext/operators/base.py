"""The ``LinearOperator`` base class and the algebra of operators: composition, sums, scalings, adjoints.

A linear operator ``A`` maps batched tensors ``(B, C, *in_shape)`` to ``(B, C, *out_shape)``; the batch and channel
axes are free and every ``(b, c)`` slice is mapped alike. ``forward`` is ``A``, ``adjoint`` its exact transpose
``A^T`` (real operators), so that ``<A x, y> = <x, A^T y>``. ``in_shape``/``out_shape`` are ``None`` for an operator
that works on any spatial shape (a blur, a diagonal weighting, the identity).

Operators combine like matrices, and the combinations are operators again (parallelproj's
``CompositeLinearOperator``, deepinv's ``LinearPhysics`` algebra):

- ``A @ B`` applies ``B`` then ``A``; its adjoint is ``B^T A^T``;
- ``A + B``, ``A - B``, ``2.0 * A``, ``-A``, ``A / s``;
- ``A.T`` is ``A^T`` as an operator.

Every operator has ``norm()`` (power iteration on ``A^T A``), ``adjointness_test()`` and ``to_matrix()`` (the explicit
matrix of a small operator, for tests).
"""

from __future__ import annotations

import math

import torch

from .checks import check_batched

__all__ = ["LinearOperator", "Composition", "Sum", "Scaled", "Adjoint", "operator_norm"]


def _shape(shape) -> tuple[int, ...] | None:
    return None if shape is None else tuple(int(s) for s in shape)


class LinearOperator(torch.nn.Module):
    """A linear map ``A`` between batched tensors ``(B, C, *in_shape) -> (B, C, *out_shape)`` with its adjoint.

    Subclasses implement :meth:`forward` and :meth:`adjoint` (both differentiable) and either pass their shapes to
    this constructor or override the ``in_shape``/``out_shape`` properties. ``image_shape`` and
    ``projection_shape`` are the same shapes under the names the tomography code uses.

    Args:
        in_shape: spatial shape of the input, ``None`` for any shape.
        out_shape: spatial shape of the output, ``None`` for any shape.

    Example:
        >>> from monai_ext.operators import Diagonal, MatrixOperator
        >>> a = MatrixOperator(torch.tensor([[1.0, 2.0], [0.0, 3.0]], dtype=torch.float64), (2,))
        >>> op = 2.0 * a @ Diagonal(torch.tensor([1.0, -1.0], dtype=torch.float64))
        >>> op(torch.ones(1, 1, 2, dtype=torch.float64)).tolist()
        [[[-2.0, -6.0]]]
        >>> op.adjointness_test() < 1e-12
        True
    """

    #: True when the output has the shape of the input whatever that shape is (blurs, diagonals, the identity).
    shape_preserving: bool = False

    def __init__(self, in_shape=None, out_shape=None) -> None:
        super().__init__()
        self._in_shape = _shape(in_shape)
        self._out_shape = _shape(out_shape)

    # -- shapes --------------------------------------------------------------------------------------------
    @property
    def in_shape(self) -> tuple[int, ...] | None:
        """Spatial shape of the input (``None``: any)."""
        return self._in_shape

    @property
    def out_shape(self) -> tuple[int, ...] | None:
        """Spatial shape of the output (``None``: any)."""
        return self._out_shape

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """``in_shape``, under the name of the reconstruction code."""
        return self.in_shape

    @property
    def projection_shape(self) -> tuple[int, ...] | None:
        """``out_shape``, under the name of the reconstruction code."""
        return self.out_shape

    def check_input(self, x, name: str = "x") -> None:
        """Raise a clear error unless ``x`` is a finite floating-point ``(B, C, *in_shape)`` tensor."""
        check_batched(name, x, self.in_shape, self._describe())

    def check_output(self, y, name: str = "y") -> None:
        """Raise a clear error unless ``y`` is a finite floating-point ``(B, C, *out_shape)`` tensor."""
        check_batched(name, y, self.out_shape, self._describe())

    def _describe(self) -> str:
        return f"this {type(self).__name__}"

    # -- the map -------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``A x``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward.")

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``A^T y``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement adjoint.")

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^T A x``."""
        return self.adjoint(self.forward(x))

    @property
    def T(self) -> LinearOperator:
        """The adjoint ``A^T`` as an operator."""
        return Adjoint(self)

    # -- algebra -------------------------------------------------------------------------------------------
    def __matmul__(self, other):
        if isinstance(other, LinearOperator):
            return Composition(self, other)
        return NotImplemented

    def __add__(self, other):
        if isinstance(other, LinearOperator):
            return Sum(self, other)
        return NotImplemented

    def __sub__(self, other):
        if isinstance(other, LinearOperator):
            return Sum(self, Scaled(other, -1.0))
        return NotImplemented

    def __neg__(self):
        return Scaled(self, -1.0)

    def __mul__(self, scale):
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            return Scaled(self, float(scale))
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, scale):
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            return Scaled(self, 1.0 / float(scale))
        return NotImplemented

    # -- checks and measurements ---------------------------------------------------------------------------
    def _spatial(self, shape) -> tuple[int, ...]:
        shape = _shape(shape) if shape is not None else self.in_shape
        if shape is None:
            raise ValueError(f"{type(self).__name__} works on any input shape: pass shape= (the spatial input shape).")
        return shape

    def norm(self, n_iter: int = 30, seed: int = 0, device=None, dtype: torch.dtype = torch.float64, shape=None) -> float:
        """Operator 2-norm ``||A||`` by ``n_iter`` power iterations on ``A^T A`` from a seeded random start.

        Args:
            n_iter: power iterations.
            seed: seed of the random start.
            device: device of the iterates (default CPU).
            dtype: dtype of the iterates.
            shape: spatial input shape, needed when ``in_shape`` is ``None``.

        Raises:
            ValueError: no input shape known, or ``A^T A`` maps the iterate to zero.
        """
        return _power_iteration(self, self._spatial(shape), n_iter, seed, device, dtype)

    def adjointness_test(self, batch: int = 2, channels: int = 1, seed: int = 0, device=None, dtype: torch.dtype = torch.float64, shape=None) -> float:
        """``|<A x, y> - <x, A^T y>| / (||A x|| ||y||)`` for seeded random ``x`` and ``y``: near machine precision
        for an exact adjoint.

        Args:
            batch, channels: leading sizes of the test tensors.
            seed: seed of ``x`` and ``y``.
            device, dtype: of the test tensors.
            shape: spatial input shape, needed when ``in_shape`` is ``None``.
        """
        gen = torch.Generator().manual_seed(int(seed))
        x = torch.rand((batch, channels, *self._spatial(shape)), generator=gen, dtype=dtype).to(device or "cpu")
        ax = self.forward(x)
        y = torch.rand(ax.shape, generator=gen, dtype=dtype).to(ax.device)
        aty = self.adjoint(y)
        lhs, rhs = float((ax * y).sum()), float((x * aty).sum())
        scale = float(ax.norm() * y.norm()) or 1.0
        return abs(lhs - rhs) / scale

    def to_matrix(self, dtype: torch.dtype = torch.float64, device=None, shape=None) -> torch.Tensor:
        """The explicit matrix ``(prod(out_shape), prod(in_shape))`` of the operator, column by column (small
        operators only: one forward call on ``prod(in_shape)`` unit images)."""
        spatial = self._spatial(shape)
        n = math.prod(spatial)
        units = torch.eye(n, dtype=dtype, device=device or "cpu").reshape(n, 1, *spatial)
        return self.forward(units).reshape(n, -1).T.contiguous()


def _describe_shapes(op: LinearOperator) -> str:
    return f"{type(op).__name__} ({op.in_shape} -> {op.out_shape})"


class Composition(LinearOperator):
    """``A B``: ``B`` first, then ``A``; adjoint ``B^T A^T``. Written ``A @ B``.

    Raises:
        ValueError: ``B``'s output shape is not ``A``'s input shape (when both are known).
    """

    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        if outer.in_shape is not None and inner.out_shape is not None and outer.in_shape != inner.out_shape:
            raise ValueError(f"cannot compose {_describe_shapes(outer)} after {_describe_shapes(inner)}: shapes differ.")
        in_shape = inner.in_shape if inner.in_shape is not None or not inner.shape_preserving else outer.in_shape
        out_shape = outer.out_shape if outer.out_shape is not None or not outer.shape_preserving else inner.out_shape
        super().__init__(in_shape, out_shape)
        self.shape_preserving = outer.shape_preserving and inner.shape_preserving
        self.outer, self.inner = outer, inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.inner(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.adjoint(self.outer.adjoint(y))


class Sum(LinearOperator):
    """``A + B`` on the same spaces; adjoint ``A^T + B^T``.

    Raises:
        ValueError: the operators' known shapes differ.
    """

    def __init__(self, first: LinearOperator, second: LinearOperator) -> None:
        for name in ("in_shape", "out_shape"):
            a, b = getattr(first, name), getattr(second, name)
            if a is not None and b is not None and a != b:
                raise ValueError(f"cannot add {_describe_shapes(first)} and {_describe_shapes(second)}: {name} differs.")
        for preserving, other in ((first, second), (second, first)):  # a shape-preserving term needs in == out
            if preserving.shape_preserving and None not in (other.in_shape, other.out_shape) and other.in_shape != other.out_shape:
                raise ValueError(f"cannot add {_describe_shapes(preserving)} and {_describe_shapes(other)}: the first keeps shapes, the second does not.")
        in_shape = first.in_shape if first.in_shape is not None else second.in_shape
        out_shape = first.out_shape if first.out_shape is not None else second.out_shape
        super().__init__(in_shape, out_shape)
        self.shape_preserving = first.shape_preserving and second.shape_preserving
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.first(x) + self.second(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.first.adjoint(y) + self.second.adjoint(y)


class Scaled(LinearOperator):
    """``s A`` for a real constant ``s``; adjoint ``s A^T``, norm ``|s| ||A||``.

    A module operator is registered as the sub-module ``operator`` (so ``.to(device)`` reaches it).

    Args:
        operator: the operator ``A`` (a :class:`LinearOperator`, or any object with ``forward``/``adjoint``).
        scale: the constant ``s``.

    Raises:
        TypeError: ``operator`` lacks ``forward``/``adjoint``.
        ValueError: a non-finite or zero ``scale``.
    """

    def __init__(self, operator, scale: float) -> None:
        if not hasattr(operator, "adjoint") or not (callable(operator) or hasattr(operator, "forward")):
            raise TypeError(f"operator must have forward (or be callable) and adjoint methods, got {type(operator).__name__}.")
        if not math.isfinite(float(scale)) or float(scale) == 0.0:
            raise ValueError(f"scale must be finite and non-zero, got {scale}.")
        super().__init__(getattr(operator, "in_shape", getattr(operator, "image_shape", None)),
                         getattr(operator, "out_shape", getattr(operator, "projection_shape", None)))
        self.shape_preserving = bool(getattr(operator, "shape_preserving", False))
        self.operator = operator
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply(self.operator, x) * self.scale

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.operator.adjoint(y) * self.scale

    def norm(self, n_iter: int = 30, seed: int = 0, device=None, dtype: torch.dtype = torch.float64, shape=None) -> float:
        """``|s| ||A||``, with ``A``'s own norm."""
        if shape is None and isinstance(self.operator, LinearOperator):
            return abs(self.scale) * self.operator.norm(n_iter=n_iter, seed=seed, device=device, dtype=dtype)
        return abs(self.scale) * operator_norm(self.operator, shape, n_iter=n_iter, seed=seed, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


class Adjoint(LinearOperator):
    """``A^T`` as an operator (``A.T``): ``forward`` is ``A.adjoint``, ``adjoint`` is ``A.forward``."""

    def __init__(self, operator: LinearOperator) -> None:
        super().__init__(operator.out_shape, operator.in_shape)
        self.shape_preserving = operator.shape_preserving
        self.operator = operator

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.operator.adjoint(y)

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator(x)

    @property
    def T(self) -> LinearOperator:
        return self.operator


def apply(operator, x: torch.Tensor) -> torch.Tensor:
    """``operator(x)``: call the operator (``nn.Module`` or callable) or its ``forward`` method."""
    return operator(x) if callable(operator) else operator.forward(x)


def operator_norm(operator, image_shape=None, n_iter: int = 30, seed: int = 0, device=None, dtype=torch.float64) -> float:
    """Operator 2-norm ``||A||`` by power iteration on ``A^T A``, for a :class:`LinearOperator` or any object with
    ``forward``/``adjoint``.

    Uses the operator's own ``norm(n_iter=..., seed=...)`` when it has one and ``image_shape`` is not given.

    Args:
        operator: linear operator.
        image_shape: spatial shape of the input (a full ``(B, C, *spatial)`` shape is accepted when the operator's
            ``in_shape`` is known); default ``operator.in_shape``.
        n_iter: power iterations.
        seed: seed of the random start.
        device: device of the iterates.
        dtype: dtype of the iterates.

    Raises:
        TypeError: not an operator.
        ValueError: no input shape known, or a zero operator.

    Example:
        >>> from monai_ext.operators import MatrixOperator
        >>> op = MatrixOperator(torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)), (2,))
        >>> round(operator_norm(op), 6)
        3.0
    """
    if not hasattr(operator, "adjoint") or not (callable(operator) or hasattr(operator, "forward")):
        raise TypeError(f"operator must have forward (or be callable) and adjoint methods, got {type(operator).__name__}.")
    if image_shape is None and hasattr(operator, "norm"):
        return float(operator.norm(n_iter=n_iter, seed=seed))
    shape = image_shape if image_shape is not None else getattr(operator, "in_shape", getattr(operator, "image_shape", None))
    if shape is None:
        raise ValueError("operator_norm needs image_shape: the operator has neither norm() nor an input shape.")
    shape = tuple(int(s) for s in shape)
    known = getattr(operator, "in_shape", getattr(operator, "image_shape", None))
    if known is not None and len(shape) == len(known) + 2:  # a full (B, C, *spatial) shape
        shape = shape[2:]
    return _power_iteration(operator, shape, n_iter, seed, device, dtype)


def _power_iteration(operator, shape: tuple[int, ...], n_iter: int, seed: int, device, dtype) -> float:
    """``sqrt`` of the top eigenvalue of ``A^T A`` by ``n_iter`` power iterations from a seeded random image of
    spatial ``shape`` (one batch element, one channel)."""
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.rand((1, 1, *shape), generator=gen, dtype=dtype).to(device or "cpu")
    value = 0.0
    for _ in range(int(n_iter)):
        x = operator.adjoint(apply(operator, x))
        value = float(x.norm())
        if value == 0.0:
            raise ValueError(f"{type(operator).__name__} maps the power-iteration vector to zero: it has no positive norm.")
        x = x / value
    return math.sqrt(value)
