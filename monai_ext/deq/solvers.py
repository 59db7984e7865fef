"""Fixed-point solvers for ``z = f(z)`` on batched tensors, chosen by name from a small registry.

Every solver has the signature ``solver(f, z0, *, tol, max_iter, eps, warn, **options) -> (z, SolverInfo)``,
evaluates ``f`` exactly once per iteration, keeps no state between calls and works on any device and dtype.

Convergence is judged per batch element on the relative residual

.. math::

    r_b(z) = \\frac{\\lVert f(z)_b - z_b \\rVert_2}{\\lVert z_b \\rVert_2 + \\epsilon},

and a solve has converged when every batch element has reached :math:`r_b \\le` ``tol`` (the relative-difference
criterion of Chazottes et al. 2024, who used Anderson acceleration with at most 500 iterations).
Each element returns its iterate with the lowest residual, so a solve that stalls or diverges returns its best
iterate, never a later, worse one. A relative criterion cannot tell a fixed point from a run-away to large
:math:`\\lVert z \\rVert` where :math:`\\lVert f(z) - z \\rVert` grows more slowly (e.g. :math:`f(z) = z + 1`); for
the bounded images of reconstruction problems this does not arise, elsewhere check ``abs_residual`` too.

References:
    Bai, Kolter, Koltun, "Deep Equilibrium Models", NeurIPS 2019.
    Walker, Ni, "Anderson acceleration for fixed-point iterations", SIAM J. Numer. Anal. 49(4), 2011.
    Broyden, "A class of methods for solving nonlinear simultaneous equations", Math. Comp. 19, 1965.
    Chazottes et al., "Deep equilibrium models for dynamic PET reconstruction", MIC 2024.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "SolverInfo",
    "picard_solve",
    "anderson_solve",
    "broyden_solve",
    "gmres_solve",
    "get_solver",
    "register_solver",
    "solver_names",
    "fixed_point_solve",
]

FixedPointSolver = Callable[..., "tuple[torch.Tensor, SolverInfo]"]

DEFAULT_TOL = 1e-4
DEFAULT_MAX_ITER = 500
DEFAULT_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class SolverInfo:
    """Convergence record of one fixed-point solve; every field is a plain Python value, ready for logging.

    Args:
        solver: registry name of the solver that ran.
        nstep: iterations performed, equal to the number of evaluations of ``f``.
        converged: whether every batch element reached a relative residual ``<= tol``.
        rel_residual: relative residual of the returned solution, worst batch element.
        abs_residual: absolute residual :math:`\\lVert f(z) - z \\rVert_2` of the returned solution, worst batch
            element.
        rel_residual_batch: relative residual of the returned solution, one value per batch element.
        residual_trace: relative residual of the iterate at each iteration, worst batch element.
        tol: the tolerance the solve was run with.
        max_iter: the iteration budget the solve was run with.
        stop_reason: ``"converged"``, ``"max_iter"`` or ``"non_finite"`` (``f`` produced NaN or inf).
    """

    solver: str
    nstep: int
    converged: bool
    rel_residual: float
    abs_residual: float
    rel_residual_batch: list[float]
    residual_trace: list[float]
    tol: float
    max_iter: int
    stop_reason: str

    def as_dict(self) -> dict[str, Any]:
        """Return the record as a dict of plain values (for MONAI handlers, loggers and JSON)."""
        return dataclasses.asdict(self)

    def warn_if_not_converged(self, what: str, stacklevel: int = 2) -> None:
        """Issue a ``RuntimeWarning`` naming the final residual and the iteration count if the solve did not converge.

        Args:
            what: what was being solved, used as the start of the message (e.g. ``"DEQ forward solve"``).
            stacklevel: passed to :func:`warnings.warn`.
        """
        if self.converged:
            return
        if self.stop_reason == "non_finite":
            cause = f"f produced non-finite values at iteration {self.nstep}"
        else:
            cause = f"tolerance {self.tol:.1e} not reached"
        warnings.warn(
            f"{what} ({self.solver}) did not converge: {cause}; relative residual {self.rel_residual:.3e} "
            f"after {self.nstep} iterations (best iterate returned).",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )


def check_stopping_criteria(tol: float, max_iter: int, eps: float = DEFAULT_EPS, prefix: str = "") -> None:
    """Validate the stopping arguments shared by all solvers.

    Args:
        tol: tolerance, must be a positive number.
        max_iter: iteration budget, must be a positive integer.
        eps: norm guard, must be a positive number.
        prefix: prepended to the argument names in error messages (e.g. ``"backward_"``).

    Raises:
        ValueError: when ``tol`` or ``eps`` is not a positive number, or ``max_iter`` is not a positive integer.
    """
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"{prefix}tol must be a positive number, got {tol!r}.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"{prefix}max_iter must be a positive integer, got {max_iter!r}.")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}.")


def _check_mixing(beta: float) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta!r}.")


def _check_memory(m: int) -> None:
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive integer, got {m!r}.")


def _flatten_batch(f: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor):
    """Return ``z0`` as ``(B, D)`` and ``f`` acting on ``(B, D)``, checking that ``f`` keeps the shape of ``z0``."""
    if not isinstance(z0, torch.Tensor) or z0.dim() < 1:
        raise ValueError(f"z0 must be a tensor with a leading batch dimension (B, ...), got {type(z0).__name__} "
                         f"of shape {tuple(getattr(z0, 'shape', ()))}.")
    shape = z0.shape

    def f_flat(z: torch.Tensor) -> torch.Tensor:
        fz = f(z.view(shape))
        if fz.shape != shape:
            raise ValueError(f"f must return a tensor of the shape of z {tuple(shape)}, got {tuple(fz.shape)}.")
        return fz.reshape(shape[0], -1)

    return z0.detach().reshape(shape[0], -1).clone(), f_flat


class _ResidualMonitor:
    """Track residuals, the best iterate per batch element and the stopping decision of one solve."""

    def __init__(self, solver: str, z0: torch.Tensor, tol: float, max_iter: int, eps: float):
        self.solver, self.tol, self.max_iter, self.eps = solver, float(tol), max_iter, eps
        self.best = z0.clone()
        self.best_rel = torch.full((z0.shape[0],), float("inf"), dtype=z0.dtype, device=z0.device)
        self.best_abs = torch.full_like(self.best_rel, float("inf"))
        self.trace: list[float] = []
        self.stop_reason = "max_iter"

    def update(self, z: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
        """Record the residual of iterate ``z`` given ``fz = f(z)``; return the per-element relative residual."""
        abs_res = torch.linalg.vector_norm(fz - z, dim=1)
        rel = abs_res / (torch.linalg.vector_norm(z, dim=1) + self.eps)
        finite = torch.isfinite(rel)
        better = finite & (rel < self.best_rel)
        self.best = torch.where(better[:, None], z, self.best)
        self.best_rel = torch.where(better, rel, self.best_rel)
        self.best_abs = torch.where(better, abs_res, self.best_abs)
        self.trace.append(float(rel.max()))
        if not bool(finite.all()):
            self.stop_reason = "non_finite"
        elif bool((self.best_rel <= self.tol).all()):
            self.stop_reason = "converged"
        return rel

    @property
    def done(self) -> bool:
        return self.stop_reason != "max_iter"

    def result(self, shape: torch.Size, warn: bool) -> tuple[torch.Tensor, SolverInfo]:
        info = SolverInfo(
            solver=self.solver,
            nstep=len(self.trace),
            converged=self.stop_reason == "converged",
            rel_residual=float(self.best_rel.max()),
            abs_residual=float(self.best_abs.max()),
            rel_residual_batch=[float(r) for r in self.best_rel],
            residual_trace=self.trace,
            tol=self.tol,
            max_iter=self.max_iter,
            stop_reason=self.stop_reason,
        )
        if warn:
            info.warn_if_not_converged("fixed-point solve", stacklevel=3)
        return self.best.view(shape), info


def picard_solve(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    beta: float = 1.0,
    eps: float = DEFAULT_EPS,
    warn: bool = True,
) -> tuple[torch.Tensor, SolverInfo]:
    """Damped Picard (plain fixed-point) iteration :math:`z_{k+1} = (1 - \\beta) z_k + \\beta f(z_k)`.

    Converges linearly with rate :math:`1 - \\beta (1 - L)` when ``f`` is a contraction with Lipschitz constant
    :math:`L < 1`; damping (:math:`\\beta < 1`) extends convergence to some non-expansive maps.

    Args:
        f: the map, taking and returning tensors of the shape of ``z0``.
        z0: initial iterate of shape ``(B, ...)``; each batch element is a separate problem.
        tol: tolerance on the relative residual of every batch element.
        max_iter: maximum number of iterations (evaluations of ``f``).
        beta: damping (mixing) factor in ``(0, 1]``.
        eps: added to :math:`\\lVert z \\rVert` in the relative residual so that ``z = 0`` does not divide by zero.
        warn: issue a ``RuntimeWarning`` when the solve does not converge.

    Returns:
        The fixed point (shape of ``z0``, no autograd graph) and its :class:`SolverInfo`.

    Raises:
        ValueError: when an argument is out of range or ``f`` changes the shape of ``z``.

    Example:
        >>> z, info = picard_solve(lambda z: 0.5 * z + 1.0, torch.zeros(2, 3), tol=1e-6)
        >>> torch.allclose(z, torch.full((2, 3), 2.0)), info.converged
        (True, True)
    """
    check_stopping_criteria(tol, max_iter, eps)
    _check_mixing(beta)
    z, f_flat = _flatten_batch(f, z0)
    monitor = _ResidualMonitor("picard", z, tol, max_iter, eps)
    for _ in range(max_iter):
        fz = f_flat(z)
        monitor.update(z, fz)
        if monitor.done:
            break
        z = fz if beta == 1.0 else torch.lerp(z, fz, beta)
    return monitor.result(z0.shape, warn)


def anderson_solve(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    m: int = 5,
    lam: float = 1e-4,
    beta: float = 1.0,
    eps: float = DEFAULT_EPS,
    warn: bool = True,
) -> tuple[torch.Tensor, SolverInfo]:
    """Anderson acceleration (type II, Walker & Ni 2011) of the fixed-point iteration.

    With the last :math:`n \\le m` iterates :math:`z_i`, their images :math:`f_i = f(z_i)` and residuals
    :math:`g_i = f_i - z_i`, each step solves the regularised least-squares problem

    .. math::

        \\alpha = \\arg\\min_{\\sum_i \\alpha_i = 1} \\Big\\lVert \\sum_i \\alpha_i g_i \\Big\\rVert_2^2
                  + \\lambda s \\lVert \\alpha \\rVert_2^2, \\qquad
        \\alpha = \\frac{(G + \\lambda s I)^{-1} \\mathbf{1}}{\\mathbf{1}^\\top (G + \\lambda s I)^{-1} \\mathbf{1}},

    where :math:`G_{ij} = \\langle g_i, g_j \\rangle` and :math:`s = \\operatorname{tr}(G) / n` makes ``lam``
    scale-free, then mixes :math:`z_{k+1} = \\beta \\sum_i \\alpha_i f_i + (1 - \\beta) \\sum_i \\alpha_i z_i`.
    The Gram matrix is updated one row per iteration and solved batched, ``(B, n, n)``, in float64.

    Safeguards, per batch element: when the Gram system is singular or gives non-finite weights, or when the residual
    did not decrease at the last iterate, the step falls back to the damped plain step
    :math:`(1 - \\beta) z_k + \\beta f(z_k)`.

    Args:
        f: the map, taking and returning tensors of the shape of ``z0``.
        z0: initial iterate of shape ``(B, ...)``; each batch element is a separate problem.
        tol: tolerance on the relative residual of every batch element.
        max_iter: maximum number of iterations (evaluations of ``f``).
        m: memory, the number of past iterates combined.
        lam: Tikhonov regularisation of the Gram system, relative to its mean diagonal.
        beta: mixing (damping) factor in ``(0, 1]``.
        eps: added to :math:`\\lVert z \\rVert` in the relative residual so that ``z = 0`` does not divide by zero.
        warn: issue a ``RuntimeWarning`` when the solve does not converge.

    Returns:
        The fixed point (shape of ``z0``, no autograd graph) and its :class:`SolverInfo`.

    Raises:
        ValueError: when an argument is out of range or ``f`` changes the shape of ``z``.

    Example:
        >>> z, info = anderson_solve(torch.cos, torch.zeros(4, 1), tol=1e-6)
        >>> round(float(z[0]), 6), info.nstep < 20
        (0.739085, True)
    """
    check_stopping_criteria(tol, max_iter, eps)
    _check_mixing(beta)
    _check_memory(m)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
        raise ValueError(f"lam must be a non-negative number, got {lam!r}.")
    z, f_flat = _flatten_batch(f, z0)
    bsz, dim = z.shape
    monitor = _ResidualMonitor("anderson", z, tol, max_iter, eps)
    past_f = z.new_zeros(bsz, m, dim)
    past_g = z.new_zeros(bsz, m, dim)  # residuals f_i - z_i; the iterates are past_f - past_g
    gram_dtype = torch.promote_types(z.dtype, torch.float64)
    gram = torch.zeros(bsz, m, m, dtype=gram_dtype, device=z.device)
    prev_rel = None
    for k in range(max_iter):
        fz = f_flat(z)
        rel = monitor.update(z, fz)
        if monitor.done:
            break
        slot, n = k % m, min(k + 1, m)
        past_f[:, slot], past_g[:, slot] = fz, fz - z
        residuals = past_g[:, :n].to(gram_dtype)
        row = torch.bmm(residuals, residuals[:, slot, :, None])[..., 0]
        gram[:, slot, :n], gram[:, :n, slot] = row, row

        g = gram[:, :n, :n]
        scale = g.diagonal(dim1=1, dim2=2).mean(dim=1)
        eye = torch.eye(n, dtype=gram_dtype, device=z.device)
        w, status = torch.linalg.solve_ex(g + lam * scale[:, None, None] * eye, torch.ones_like(g[..., :1]))
        w_sum = w.sum(dim=(1, 2))
        alpha = (w[..., 0] / w_sum[:, None]).to(z.dtype)
        usable = (status == 0) & torch.isfinite(alpha).all(dim=1) & (w_sum.abs() > 0)
        if prev_rel is not None:
            usable &= rel < prev_rel
        prev_rel = rel

        alpha = torch.where(usable[:, None], alpha, torch.zeros_like(alpha))[:, None, :]
        # beta * sum(alpha f) + (1 - beta) * sum(alpha z), with z_i = f_i - g_i
        accelerated = (torch.bmm(alpha, past_f[:, :n]) - (1 - beta) * torch.bmm(alpha, past_g[:, :n]))[:, 0]
        z = torch.where(usable[:, None], accelerated, torch.lerp(z, fz, beta))
    return monitor.result(z0.shape, warn)


def broyden_solve(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    m: int = 30,
    beta: float = 1.0,
    eps: float = DEFAULT_EPS,
    warn: bool = True,
) -> tuple[torch.Tensor, SolverInfo]:
    """Limited-memory ("good") Broyden method for the root of :math:`g(z) = f(z) - z`, without line search.

    The inverse Jacobian of :math:`g` is approximated by :math:`H = -I + \\sum_i u_i v_i^\\top` and each step is
    :math:`z_{k+1} = z_k - H g(z_k)`. After the step :math:`\\Delta z, \\Delta g`, the update is

    .. math::

        v^\\top = \\Delta z^\\top H, \\qquad u = \\frac{\\Delta z - H \\Delta g}{v^\\top \\Delta g}.

    When ``m`` rank-one terms are stored, the approximation restarts from :math:`H = -I` (overwriting the oldest
    term instead breaks the secant conditions and can diverge).

    Safeguards, per batch element: an update with a vanishing or non-finite denominator is skipped, and a
    non-finite step is replaced by the damped plain step :math:`z_k + \\beta g(z_k)`. Unlike
    :func:`anderson_solve`, a residual increase does not trigger the plain step: Broyden's residuals are not monotone
    and that fallback stalls it (on a linear test problem it doubled the iterations or prevented convergence).

    Args:
        f: the map, taking and returning tensors of the shape of ``z0``.
        z0: initial iterate of shape ``(B, ...)``; each batch element is a separate problem.
        tol: tolerance on the relative residual of every batch element.
        max_iter: maximum number of iterations (evaluations of ``f``).
        m: memory, the number of rank-one terms kept before a restart.
        beta: damping of the fallback plain step, in ``(0, 1]``.
        eps: added to :math:`\\lVert z \\rVert` in the relative residual so that ``z = 0`` does not divide by zero.
        warn: issue a ``RuntimeWarning`` when the solve does not converge.

    Returns:
        The fixed point (shape of ``z0``, no autograd graph) and its :class:`SolverInfo`.

    Raises:
        ValueError: when an argument is out of range or ``f`` changes the shape of ``z``.

    Example:
        >>> z, info = broyden_solve(torch.cos, torch.zeros(4, 1), tol=1e-6)
        >>> round(float(z[0]), 6)
        0.739085
    """
    check_stopping_criteria(tol, max_iter, eps)
    _check_mixing(beta)
    _check_memory(m)
    z, f_flat = _flatten_batch(f, z0)
    bsz, dim = z.shape
    monitor = _ResidualMonitor("broyden", z, tol, max_iter, eps)
    us = z.new_zeros(bsz, m, dim)
    vs = z.new_zeros(bsz, m, dim)

    def inv_jacobian(x: torch.Tensor) -> torch.Tensor:  # H x
        return -x + torch.bmm(torch.bmm(vs, x[..., None]).transpose(1, 2), us)[:, 0]

    def inv_jacobian_transposed(x: torch.Tensor) -> torch.Tensor:  # x^T H
        return -x + torch.bmm(torch.bmm(us, x[..., None]).transpose(1, 2), vs)[:, 0]

    prev_z = prev_g = None
    n_updates = 0
    for _ in range(max_iter):
        fz = f_flat(z)
        monitor.update(z, fz)
        if monitor.done:
            break
        g = fz - z
        if prev_z is not None:
            dz, dg = z - prev_z, g - prev_g
            v = inv_jacobian_transposed(dz)
            denom = (v * dg).sum(dim=1)
            tiny = torch.finfo(z.dtype).eps * torch.linalg.vector_norm(v, dim=1) * torch.linalg.vector_norm(dg, dim=1)
            valid = torch.isfinite(denom) & (denom.abs() > tiny)
            u = (dz - inv_jacobian(dg)) / torch.where(valid, denom, torch.ones_like(denom))[:, None]
            slot = n_updates % m
            if slot == 0:
                us.zero_()
                vs.zero_()
            us[:, slot] = torch.where(valid[:, None], u, torch.zeros_like(u))
            vs[:, slot] = torch.where(valid[:, None], v, torch.zeros_like(v))
            n_updates += 1
        step = -inv_jacobian(g)
        usable = torch.isfinite(step).all(dim=1)
        prev_z, prev_g = z, g
        z = z + torch.where(usable[:, None], step, beta * g)
    return monitor.result(z0.shape, warn)


def _givens_least_squares(column: torch.Tensor, rotated: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, g: torch.Tensor,
                           j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GMRES's least-squares problem ``min_y |beta e_1 - H y|`` after Arnoldi step ``j``, by Givens rotations.

    ``column`` (``(B, j + 2)``) is the new column of the Hessenberg matrix; the earlier rotations are applied to it,
    a new one zeroes its subdiagonal entry, and ``rotated`` (the triangular factor), ``cos``/``sin`` and the rotated
    right-hand side ``g`` are updated in place. Returns ``y`` (``(B, j + 1)``, by back substitution) and the residual
    norm ``|g_{j+1}|``. Only elementwise operations: unlike LAPACK's least squares (``torch.linalg.lstsq``, whose
    result varies in the last bits with the memory alignment of its operands), the result is the same in every run,
    so that a learning that differentiates through this solve is reproducible.
    """
    column = column.clone()
    for i in range(j):
        upper = cos[:, i] * column[:, i] + sin[:, i] * column[:, i + 1]
        column[:, i + 1] = -sin[:, i] * column[:, i] + cos[:, i] * column[:, i + 1]
        column[:, i] = upper
    norm = torch.hypot(column[:, j], column[:, j + 1])
    safe = norm > 0
    cos[:, j] = torch.where(safe, column[:, j] / torch.where(safe, norm, torch.ones_like(norm)), torch.ones_like(norm))
    sin[:, j] = torch.where(safe, column[:, j + 1] / torch.where(safe, norm, torch.ones_like(norm)), torch.zeros_like(norm))
    rotated[:, : j + 1, j] = column[:, : j + 1]
    rotated[:, j, j] = norm
    g[:, j + 1] = -sin[:, j] * g[:, j]
    g[:, j] = cos[:, j] * g[:, j]
    y = torch.zeros_like(g[:, : j + 1])
    for i in range(j, -1, -1):
        acc = g[:, i] - (rotated[:, i, i + 1 : j + 1] * y[:, i + 1 : j + 1]).sum(dim=1)
        diagonal = rotated[:, i, i]
        y[:, i] = torch.where(diagonal != 0, acc / torch.where(diagonal != 0, diagonal, torch.ones_like(diagonal)), torch.zeros_like(acc))
    return y, g[:, j + 1].abs()


def gmres_solve(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    restart: int = 30,
    eps: float = DEFAULT_EPS,
    warn: bool = True,
) -> tuple[torch.Tensor, SolverInfo]:
    """Restarted GMRES for the fixed point of an *affine* map :math:`f(z) = M z + b`, i.e. :math:`(I - M) z = b`.

    The implicit-gradient (backward) equation of a DEQ, :math:`g = J^\\top g + v`, is such a map. When :math:`J`
    has eigenvalues close to 1 (a slowly contracting forward map, such as the MM map of penalised PET
    reconstruction), plain and Anderson iterations crawl or stall, while GMRES, which minimises the residual over the
    Krylov space, converges. Each inner step costs one evaluation of ``f`` (:math:`(I - M) v = v - (f(z + v) - f(z))`
    from the restart point ``z``); each batch element is its own system (its own Arnoldi basis and least squares).
    The residual :math:`f(z) - z` of every restart point is measured, and the criterion is the module's relative
    residual; within a cycle, the least-squares residual estimates it, and the cycle ends when every element's
    estimate is below ``tol``.

    Args:
        f: an affine map, taking and returning tensors of the shape of ``z0`` (for a non-affine map the result is a
            Newton-like step, not a solve).
        z0: initial iterate ``(B, ...)``.
        tol: tolerance on the relative residual of every batch element.
        max_iter: maximum number of evaluations of ``f``.
        restart: Krylov dimension before a restart.
        eps: added to :math:`\\lVert z \\rVert` in the relative residual.
        warn: issue a ``RuntimeWarning`` when the solve does not converge.

    Returns:
        The fixed point (shape of ``z0``, no autograd graph) and its :class:`SolverInfo` (``nstep``: evaluations of
        ``f``).

    Example:
        >>> M = torch.tensor([[0.999, 0.0], [0.0, 0.5]], dtype=torch.float64)
        >>> z, info = gmres_solve(lambda z: z @ M.T + 1.0, torch.zeros(1, 2, dtype=torch.float64), tol=1e-10)
        >>> [round(v, 3) for v in z[0].tolist()], info.nstep <= 4
        ([1000.0, 2.0], True)
    """
    check_stopping_criteria(tol, max_iter, eps)
    if int(restart) < 1:
        raise ValueError(f"restart must be a positive integer, got {restart}.")
    z, f_flat = _flatten_batch(f, z0)
    bsz, dim = z.shape
    monitor = _ResidualMonitor("gmres", z, tol, max_iter, eps)
    evaluations = 0
    work = torch.promote_types(z.dtype, torch.float64)
    while evaluations < max_iter:
        fz = f_flat(z)
        evaluations += 1
        monitor.update(z, fz)
        if monitor.done or evaluations >= max_iter:
            break
        m = min(int(restart), max_iter - evaluations - 1)  # one evaluation is kept to measure the cycle's result
        if m < 1:
            break
        r = (fz - z).to(work)
        beta = torch.linalg.vector_norm(r, dim=1)
        basis = r.new_zeros(bsz, m + 1, dim)
        rotated = r.new_zeros(bsz, m + 1, m)  # the Hessenberg matrix after the Givens rotations: upper triangular
        cos, sin = r.new_zeros(bsz, m), r.new_zeros(bsz, m)
        g = r.new_zeros(bsz, m + 1)
        g[:, 0] = beta
        basis[:, 0] = r / beta.clamp_min(torch.finfo(work).tiny)[:, None]
        y, used = None, 0
        for j in range(m):
            v = basis[:, j]
            w = (v - (f_flat(z + v.to(z.dtype)).to(work) - fz.to(work)))
            evaluations += 1
            column = r.new_zeros(bsz, j + 2)
            for i in range(j + 1):  # modified Gram-Schmidt
                h = (w * basis[:, i]).sum(dim=1)
                column[:, i] = h
                w = w - h[:, None] * basis[:, i]
            h_next = torch.linalg.vector_norm(w, dim=1)
            column[:, j + 1] = h_next
            basis[:, j + 1] = w / h_next.clamp_min(torch.finfo(work).tiny)[:, None]
            used = j + 1
            y, estimate = _givens_least_squares(column, rotated, cos, sin, g, j)
            candidate = z.to(work) + (basis[:, :used].transpose(1, 2) @ y[..., None])[..., 0]
            rel = estimate / (torch.linalg.vector_norm(candidate, dim=1) + eps)
            if bool((rel <= tol).all()) or bool((h_next <= 1e-14 * beta.clamp_min(1e-300)).all()):
                break
        if y is None:
            break
        z = (z.to(work) + (basis[:, :used].transpose(1, 2) @ y[..., None])[..., 0]).to(z.dtype)
    _, info = monitor.result(z0.shape, warn=False)
    info = dataclasses.replace(info, nstep=evaluations)
    if warn:
        info.warn_if_not_converged("fixed-point solve", stacklevel=2)
    return monitor.best.view(z0.shape), info


_SOLVERS: dict[str, FixedPointSolver] = {
    "anderson": anderson_solve,
    "gmres": gmres_solve,
    "broyden": broyden_solve,
    "picard": picard_solve,
    "fixed_point": picard_solve,
}


def solver_names() -> list[str]:
    """Return the registered solver names, sorted."""
    return sorted(_SOLVERS)


def get_solver(name: str) -> FixedPointSolver:
    """Return the fixed-point solver registered under ``name``.

    Args:
        name: one of :func:`solver_names`: ``"anderson"``, ``"broyden"``, ``"picard"`` (alias ``"fixed_point"``),
            or a name added with :func:`register_solver`.

    Raises:
        ValueError: when ``name`` is not registered; the message lists the known names.

    Example:
        >>> get_solver("anderson") is anderson_solve
        True
    """
    try:
        return _SOLVERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown fixed-point solver {name!r}; known solvers: {', '.join(solver_names())}.") from None


def register_solver(name: str, solver: FixedPointSolver) -> None:
    """Register ``solver`` under ``name`` so it can be chosen by name (by :class:`~monai_ext.deq.DEQ` too).

    Args:
        name: the registry key.
        solver: a callable ``solver(f, z0, *, tol, max_iter, eps, warn, **options) -> (z, SolverInfo)``.

    Raises:
        ValueError: when ``name`` is already registered or ``solver`` is not callable.
    """
    if name in _SOLVERS:
        raise ValueError(f"A fixed-point solver named {name!r} is already registered.")
    if not callable(solver):
        raise ValueError(f"solver must be callable, got {type(solver).__name__}.")
    _SOLVERS[name] = solver


def fixed_point_solve(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    solver: str = "anderson",
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    **solver_kwargs: Any,
) -> tuple[torch.Tensor, SolverInfo]:
    """Solve :math:`z = f(z)` from ``z0`` with the solver registered under ``solver``.

    Args:
        f: the map, taking and returning tensors of the shape of ``z0``.
        z0: initial iterate of shape ``(B, ...)``.
        solver: registry name, see :func:`solver_names`.
        tol: tolerance on the relative residual of every batch element.
        max_iter: maximum number of iterations (evaluations of ``f``).
        solver_kwargs: options of the chosen solver (e.g. ``m``, ``lam``, ``beta`` for Anderson; ``eps``, ``warn``).

    Returns:
        The fixed point and its :class:`SolverInfo`.

    Raises:
        ValueError: for an unknown solver name or an out-of-range argument.

    Example:
        >>> a = torch.tensor([[0.5], [0.25]])
        >>> z, info = fixed_point_solve(lambda z: a * z + 1.0, torch.zeros(2, 1), solver="anderson", tol=1e-6)
        >>> torch.allclose(z, 1 / (1 - a)), info.converged
        (True, True)
    """
    return get_solver(solver)(f, z0, tol=tol, max_iter=max_iter, **solver_kwargs)
