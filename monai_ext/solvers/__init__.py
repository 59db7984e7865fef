"""Solvers for linear inverse problems, written for any operator with ``forward``/``adjoint``.

- :mod:`.operators`: operator norm by power iteration, scaled/normalised operators, dense matrices as operators.
- :mod:`.finite_differences`: forward-difference gradient and divergence (1D/2D/3D).
- :mod:`.variational`: Tikhonov by conjugate gradients, isotropic TV by Chambolle-Pock (PDHG), and modules
  wrapping them.
- :mod:`.tuning`: choosing a regularisation weight on validation data.
"""

from .finite_differences import divergence, gradient, gradient_norm_sq_bound
from .operators import MatrixOperator, ScaledOperator, apply, check_measurements, normalize_operator, operator_norm
from .tuning import tune_weight
from .variational import REGULARIZERS, TikhonovReconstruction, TVReconstruction, tikhonov_cg, total_variation, tv_pdhg

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
    "REGULARIZERS",
    "TikhonovReconstruction",
    "TVReconstruction",
    "tikhonov_cg",
    "total_variation",
    "tv_pdhg",
]
