"""Solvers for linear inverse problems, written for any operator with ``forward``/``adjoint``.

The operators themselves (norms, scalings, dense matrices, finite differences) live in :mod:`monai_ext.operators`;
the names below stay importable from here for one release.

- :mod:`.variational`: Tikhonov by conjugate gradients, isotropic TV by Chambolle-Pock (PDHG), and modules
  wrapping them.
- :mod:`.tuning`: choosing a regularisation weight on validation data.
"""

from ..operators import MatrixOperator, apply, check_measurements, divergence, gradient, gradient_norm_sq_bound, operator_norm
from ..operators import Scaled as ScaledOperator
from ..operators.measurements import normalize_operator
from .tuning import tune_weight, variational_solution
from .variational import REGULARISERS, REGULARIZERS, TikhonovReconstruction, TVReconstruction, tikhonov_cg, total_variation, tv_pdhg

__all__ = [
    "divergence",
    "gradient",
    "gradient_norm_sq_bound",
    "MatrixOperator",
    "ScaledOperator",
    "apply",
    "check_measurements",
    "normalize_operator",
    "operator_norm",
    "tune_weight",
    "variational_solution",
    "REGULARISERS",
    "REGULARIZERS",
    "TikhonovReconstruction",
    "TVReconstruction",
    "tikhonov_cg",
    "total_variation",
    "tv_pdhg",
]
