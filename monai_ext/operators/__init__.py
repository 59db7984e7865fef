"""Linear operators on batched tensors ``(B, C, *spatial)``: the base class, their algebra and elementary operators.

Every forward model of ``monai_ext`` is a :class:`LinearOperator`: the CT/CBCT projectors (``monai_ext.tomo``), the
PET system model and its PSF (``monai_ext.pet``), the blur-and-downsample of the PSMA deconvolution. The solvers
(MLEM/OSEM, CG/Tikhonov, PDHG/TV) and the networks (unrolled, learned primal-dual) take any of them.

- :mod:`.base`: ``LinearOperator`` (``in_shape``, ``out_shape``, ``forward``, ``adjoint``, ``T``, ``norm()``,
  ``adjointness_test()``, ``to_matrix()``), composition ``A @ B``, sums, scalings, adjoints, ``operator_norm``.
- :mod:`.elementary`: ``Identity``, ``Diagonal``, ``MatrixOperator``, ``PerPlane``, ``Stacked``.
- :mod:`.finite_differences`: ``gradient``/``divergence`` and ``FiniteDifferenceGradient``.
- :mod:`.autograd`: ``ExplicitAdjointOperator``, for operators computed outside autograd (numba, sparse products).
- :mod:`.checks`: the shared input checks.
"""

from .autograd import ExplicitAdjointOperator
from .base import Adjoint, Composition, LinearOperator, Scaled, Sum, apply, operator_norm
from .checks import all_finite, check_batched, check_finite
from .elementary import Diagonal, Identity, MatrixOperator, PerPlane, Stacked
from .finite_differences import FiniteDifferenceGradient, divergence, gradient, gradient_norm_sq_bound
from .measurements import check_measurements, normalise_operator

__all__ = [
    "LinearOperator",
    "ExplicitAdjointOperator",
    "Composition",
    "Sum",
    "Scaled",
    "Adjoint",
    "Identity",
    "Diagonal",
    "MatrixOperator",
    "PerPlane",
    "Stacked",
    "FiniteDifferenceGradient",
    "gradient",
    "divergence",
    "gradient_norm_sq_bound",
    "apply",
    "operator_norm",
    "normalise_operator",
    "check_measurements",
    "all_finite",
    "check_finite",
    "check_batched",
]
