"""Moved to :mod:`monai_ext.operators`; these names stay importable from here for one release.

``ScaledOperator`` is now :class:`monai_ext.operators.Scaled` and ``normalize_operator``
:func:`monai_ext.operators.normalise_operator`.
"""

from ..operators import MatrixOperator, apply, check_measurements, operator_norm
from ..operators import Scaled as ScaledOperator
from ..operators.measurements import normalize_operator

__all__ = ["apply", "check_measurements", "operator_norm", "MatrixOperator", "ScaledOperator", "normalize_operator"]
