"""Fixed-point solvers and the Deep Equilibrium layer with implicit gradients.

- :mod:`monai_ext.deq.solvers`: Picard, Anderson and Broyden solvers chosen by name (:func:`get_solver`,
  :func:`fixed_point_solve`), each returning ``(solution, SolverInfo)``.
- :mod:`monai_ext.deq.layer`: :class:`DEQ`, a module whose output is the fixed point of ``f(z, *inputs)``, with
  implicit, one-step or unrolled gradients.
"""

from .layer import DEQ, GRAD_MODES
from .solvers import (
    SolverInfo,
    anderson_solve,
    broyden_solve,
    fixed_point_solve,
    get_solver,
    picard_solve,
    register_solver,
    solver_names,
)

__all__ = [
    "DEQ",
    "GRAD_MODES",
    "SolverInfo",
    "anderson_solve",
    "broyden_solve",
    "fixed_point_solve",
    "get_solver",
    "picard_solve",
    "register_solver",
    "solver_names",
]
