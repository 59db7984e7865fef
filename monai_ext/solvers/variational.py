"""Variational reconstruction for any linear operator: Tikhonov by conjugate gradients, total variation by PDHG.

Both solvers only use ``forward``/``adjoint`` of the operator (any :class:`monai_ext.operators.LinearOperator`) and work on
batched tensors ``(B, C, *spatial)`` with 1, 2 or 3 spatial axes, on any device. Each returns ``(x, info)``, where
``info`` is a dict of plain Python values (iterations, convergence trace) ready for logging.

- :func:`tikhonov_cg`: ``argmin_x 1/2 ||A x - y||^2 + w/2 ||R x||^2`` with ``R = I`` (``"identity"``) or the
  forward-difference gradient (``"gradient"``), i.e. the normal equations ``(A^T A + w R^T R) x = A^T y``, solved by
  conjugate gradients with one step length per batch element.
- :func:`tv_pdhg`: ``argmin_x 1/2 ||A x - y||^2 + w TV(x)`` (``+ i_{x >= 0}`` with ``nonnegative``), isotropic
  ``TV(x) = sum_i |grad x|_i`` in pixel units, by the primal-dual hybrid gradient method of Chambolle and Pock
  with ``K = [A; grad]``. The operator is normalised inside (``A / ||A||``, ``y / ||A||``, ``w / ||A||^2``: the
  same minimiser), so the default step sizes suit any scale of ``A``.

:class:`TikhonovReconstruction` and :class:`TVReconstruction` wrap them as modules ``y -> x`` for MONAI engines.

References:
    M. R. Hestenes and E. Stiefel, "Methods of conjugate gradients for solving linear systems", J. Res. NBS 49, 1952.
    A. Chambolle and T. Pock, "A first-order primal-dual algorithm for convex problems with applications to
    imaging", JMIV 40, 2011 (Algorithm 1, theta = 1).
    E. Y. Sidky, J. H. Jorgensen and X. Pan, "Convex optimization problem prototyping for image reconstruction in
    computed tomography with the Chambolle-Pock algorithm", PMB 57(10), 2012.
"""

from __future__ import annotations

import math
import warnings

import torch

from ..operators import apply, check_measurements, divergence, gradient, gradient_norm_sq_bound, operator_norm

__all__ = ["REGULARISERS", "REGULARIZERS", "tikhonov_cg", "tv_pdhg", "total_variation", "TikhonovReconstruction", "TVReconstruction"]

REGULARISERS = ("identity", "gradient")
REGULARIZERS = REGULARISERS  # the American spelling, kept for one release


def _check_inputs(operator, y: torch.Tensor, weight: float) -> None:
    if not hasattr(operator, "adjoint"):
        raise TypeError(f"operator must have forward and adjoint methods, got {type(operator).__name__}.")
    check_measurements(operator, y, "y")
    if not (math.isfinite(float(weight)) and float(weight) >= 0):
        raise ValueError(f"weight must be a finite non-negative number, got {weight}.")


def _regulariser(regulariser: str, regularizer: str | None) -> str:
    """The regulariser's name, from the deprecated ``regularizer`` keyword when that is given; checked."""
    if regularizer is not None:
        warnings.warn("the keyword regularizer is deprecated; use regulariser.", DeprecationWarning, stacklevel=3)
        regulariser = regularizer
    if regulariser not in REGULARISERS:
        raise ValueError(f"regulariser must be one of {REGULARISERS}, got {regulariser!r}.")
    return regulariser


def _batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-batch-element inner product, shaped ``(B, 1, ..., 1)`` to broadcast against ``a``."""
    return (a * b).flatten(1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Isotropic total variation ``sum_i |grad x|_i`` (pixel units) of each batch element; shape ``(B,)``."""
    return gradient(x).square().sum(2).sqrt().flatten(1).sum(1)


def tikhonov_cg(
    operator,
    y: torch.Tensor,
    weight: float,
    regulariser: str = "identity",
    x0: torch.Tensor | None = None,
    n_iter: int = 100,
    tol: float = 1e-6,
    regularizer: str | None = None,
) -> tuple[torch.Tensor, dict]:
    """Tikhonov-regularised least squares ``argmin_x 1/2 ||A x - y||^2 + w/2 ||R x||^2`` by conjugate gradients.

    Solves ``(A^T A + w R^T R) x = A^T y``; every batch element has its own CG step lengths and stops contributing
    once its relative residual ``||r|| / ||A^T y||`` is below ``tol``.

    Args:
        operator: linear operator ``A`` with ``forward``/``adjoint``.
        y: measurements ``(B, C, *projection_shape)``.
        weight: ``w >= 0`` (``0`` gives the least-squares solution CG reaches from ``x0``).
        regulariser: ``"identity"`` (``R = I``) or ``"gradient"`` (``R`` = forward differences, Neumann boundary).
        x0: starting image (default zeros).
        n_iter: maximum CG iterations.
        tol: relative residual at which to stop.
        regularizer: deprecated spelling of ``regulariser`` (kept for one release).

    Returns:
        ``(x, info)``, ``info``: ``iterations``, ``converged``, ``residual_trace`` (worst batch element).

    Raises:
        ValueError: unknown ``regulariser``; ``y`` of the wrong shape or non-finite; negative ``weight``.

    Example:
        >>> from monai_ext.solvers import MatrixOperator
        >>> op = MatrixOperator(torch.eye(3, dtype=torch.float64), (3,))
        >>> x, info = tikhonov_cg(op, torch.ones(1, 1, 3, dtype=torch.float64), weight=1.0)
        >>> x.flatten().tolist()  # (I + I) x = 1
        [0.5, 0.5, 0.5]
    """
    regulariser = _regulariser(regulariser, regularizer)
    _check_inputs(operator, y, weight)
    w = float(weight)

    def normal(v: torch.Tensor) -> torch.Tensor:
        out = operator.adjoint(apply(operator, v))
        if w > 0:
            out = out + w * (v if regulariser == "identity" else -divergence(gradient(v)))
        return out

    with torch.no_grad():
        b = operator.adjoint(y)
        x = torch.zeros_like(b) if x0 is None else x0.detach().clone().to(b)
        r = b - normal(x) if x0 is not None else b.clone()
        p = r.clone()
        rs = _batch_dot(r, r)
        b_norm = _batch_dot(b, b).sqrt().clamp_min(torch.finfo(b.dtype).tiny)
        trace = [float((rs.sqrt() / b_norm).max())]
        iterations = 0
        for _ in range(int(n_iter)):
            active = (rs.sqrt() / b_norm) > tol
            if not bool(active.any()):
                break
            ap = normal(p)
            alpha = torch.where(active, rs / _batch_dot(p, ap).clamp_min(torch.finfo(b.dtype).tiny), torch.zeros_like(rs))
            x = x + alpha * p
            r = r - alpha * ap
            rs_new = _batch_dot(r, r)
            beta = torch.where(active, rs_new / rs.clamp_min(torch.finfo(b.dtype).tiny), torch.zeros_like(rs))
            p = r + beta * p
            rs = rs_new
            iterations += 1
            trace.append(float((rs.sqrt() / b_norm).max()))
    return x, {"iterations": iterations, "converged": trace[-1] <= tol, "residual_trace": trace}


def tv_pdhg(
    operator,
    y: torch.Tensor,
    weight: float,
    n_iter: int = 300,
    nonnegative: bool = True,
    x0: torch.Tensor | None = None,
    norm: float | None = None,
    step_ratio: float = 10.0,
    tol: float = 0.0,
    record_objective: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Total-variation reconstruction ``argmin_x 1/2 ||A x - y||^2 + w TV(x) (+ i_{x >= 0})`` by Chambolle-Pock.

    With ``A_n = A / ||A||``, ``y_n = y / ||A||``, ``w_n = w / ||A||^2`` and ``K = [A_n; grad]``
    (``||K||^2 <= L^2 = 1 + 4 d``), each iteration is

    ``p <- (p + sigma (A_n xb - y_n)) / (1 + sigma)``,
    ``q <- proj_{|q|_i <= w_n}(q + sigma grad xb)``,
    ``x+ <- proj_{>= 0}(x - tau (A_n^T p - div q))``, ``xb <- 2 x+ - x``,

    with ``tau = step_ratio / L`` and ``sigma = 1 / (step_ratio L)``.

    Args:
        operator: linear operator ``A`` with ``forward``/``adjoint`` (2D or 3D images).
        y: measurements ``(B, C, *projection_shape)``.
        weight: ``w >= 0``, in the units of the objective above (TV in pixel units).
        n_iter: maximum iterations.
        nonnegative: constrain ``x >= 0`` (attenuation, activity).
        x0: starting image (default zeros).
        norm: ``||A||`` when known (else estimated by power iteration).
        step_ratio: ``tau / sigma`` balance of the primal and dual steps; the default suits attenuation images in
            1/mm with a projector in mm (CT, CBCT): about 300 iterations reach a 1e-3 relative objective gap on
            64 x 64 sparse-view scans.
        tol: stop when ``||x+ - x|| / ||x+||`` of every batch element falls below it (0: run ``n_iter``).
        record_objective: evaluate the objective at every iteration (one more forward projection each).

    Returns:
        ``(x, info)``, ``info``: ``iterations``, ``objective`` (per-iteration objective summed over the batch, when
        recorded), ``final_objective`` (per batch element), ``relative_change`` (last), ``norm``, ``tau``,
        ``sigma``.

    Raises:
        ValueError: ``y`` of the wrong shape or non-finite, negative ``weight``, non-positive ``step_ratio``.

    Example:
        >>> from monai_ext.tomo import ParallelBeamGeometry, ParallelBeamProjector, uniform_angles
        >>> op = ParallelBeamProjector(ParallelBeamGeometry((32, 32), 1.0, uniform_angles(8), n_det=46))
        >>> y = op(torch.ones(1, 1, 32, 32))
        >>> x, info = tv_pdhg(op, y, weight=1.0, n_iter=50)
        >>> x.shape
        torch.Size([1, 1, 32, 32])
    """
    _check_inputs(operator, y, weight)
    if not step_ratio > 0:
        raise ValueError(f"step_ratio must be positive, got {step_ratio}.")
    with torch.no_grad():
        s = float(norm) if norm is not None else operator_norm(operator)
        if not s > 0:
            raise ValueError(f"the operator norm must be positive, got {s}.")
        y_n, w_n = y / s, float(weight) / s**2
        x = operator.adjoint(y) * 0.0 if x0 is None else x0.detach().clone().to(y)
        spatial_dims = x.ndim - 2
        lip = math.sqrt(1.0 + gradient_norm_sq_bound(spatial_dims))
        tau, sigma = step_ratio / lip, 1.0 / (step_ratio * lip)
        p = torch.zeros_like(y)
        q = torch.zeros((*x.shape[:2], spatial_dims, *x.shape[2:]), dtype=x.dtype, device=x.device)
        xb = x.clone()
        objective, change, iterations = [], math.inf, 0

        def value(v: torch.Tensor) -> torch.Tensor:
            res = apply(operator, v) - y
            return 0.5 * res.square().flatten(1).sum(1) + float(weight) * total_variation(v)

        for _ in range(int(n_iter)):
            p = (p + sigma * (apply(operator, xb) / s - y_n)) / (1.0 + sigma)
            q = q + sigma * gradient(xb)
            if w_n > 0:
                q = q / (q.square().sum(2, keepdim=True).sqrt() / w_n).clamp_min(1.0)
            else:
                q = torch.zeros_like(q)
            x_new = x - tau * (operator.adjoint(p) / s - divergence(q))
            if nonnegative:
                x_new = x_new.clamp_min(0.0)
            diff = (x_new - x).flatten(1).norm(dim=1) / x_new.flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
            change = float(diff.max())
            xb = 2.0 * x_new - x
            x = x_new
            iterations += 1
            if record_objective:
                objective.append(float(value(x).sum()))
            if tol > 0 and change < tol:
                break
        final = value(x)
    info = {
        "iterations": iterations,
        "objective": objective,
        "final_objective": [float(v) for v in final],
        "relative_change": change,
        "norm": s,
        "tau": tau,
        "sigma": sigma,
    }
    return x, info


def _operator_for(operator, geometry, weight: float) -> tuple:
    """``operator`` carried to another acquisition ``geometry`` (a projector's ``with_geometry``), and ``weight``
    scaled by the square of the ratio of in-plane pixel sizes.

    Line integrals scale with the pixel size, so the data term ``1/2 ||A x - y||^2`` of a given voxel image scales
    with its square while the regularisers (in voxel units) do not: scaling the weight likewise keeps the balance
    the weight was tuned for (on a scan scaled as a whole, the minimiser is the same voxel image).
    """
    if not hasattr(operator, "with_geometry"):
        raise TypeError(f"{type(operator).__name__} cannot be carried to another geometry (it has no with_geometry).")
    ratio = min(geometry.pixel_size[-2:]) / min(operator.geometry.pixel_size[-2:])
    return operator.with_geometry(geometry), weight * ratio**2


class TikhonovReconstruction(torch.nn.Module):
    """Module ``y -> argmin_x 1/2 ||A x - y||^2 + w/2 ||R x||^2`` (see :func:`tikhonov_cg`).

    Args:
        operator: linear operator with ``forward``/``adjoint``.
        weight: regularisation weight ``w``.
        regulariser: ``"identity"`` or ``"gradient"``.
        n_iter: CG iterations.
        tol: CG relative residual tolerance.
        regularizer: deprecated spelling of ``regulariser`` (kept for one release).

    Raises:
        ValueError: unknown ``regulariser`` or negative ``weight``.
    """

    def __init__(self, operator, weight: float, regulariser: str = "identity", n_iter: int = 100, tol: float = 1e-6, regularizer: str | None = None) -> None:
        super().__init__()
        regulariser = _regulariser(regulariser, regularizer)
        if not float(weight) >= 0:
            raise ValueError(f"weight must be non-negative, got {weight}.")
        self.operator, self.weight, self.regulariser, self.n_iter, self.tol = operator, float(weight), regulariser, int(n_iter), float(tol)

    def with_geometry(self, geometry) -> TikhonovReconstruction:
        """The same reconstruction (regulariser, iterations) with the operator carried to ``geometry`` and the weight
        scaled by the squared ratio of pixel sizes (see ``_operator_for``)."""
        operator, weight = _operator_for(self.operator, geometry, self.weight)
        return type(self)(operator, weight, self.regulariser, self.n_iter, self.tol)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x, _ = tikhonov_cg(self.operator, y, self.weight, self.regulariser, n_iter=self.n_iter, tol=self.tol)
        return x

    def extra_repr(self) -> str:
        return f"weight={self.weight:.4g}, regulariser={self.regulariser}, n_iter={self.n_iter}"


class TVReconstruction(torch.nn.Module):
    """Module ``y -> argmin_x 1/2 ||A x - y||^2 + w TV(x) (+ i_{x >= 0})`` (see :func:`tv_pdhg`).

    The operator norm is estimated once, on first use.

    Args:
        operator: linear operator with ``forward``/``adjoint``.
        weight: regularisation weight ``w``.
        n_iter: PDHG iterations.
        nonnegative: constrain ``x >= 0``.
        step_ratio: ``tau / sigma``.

    Raises:
        ValueError: negative ``weight``.
    """

    def __init__(self, operator, weight: float, n_iter: int = 300, nonnegative: bool = True, step_ratio: float = 10.0) -> None:
        super().__init__()
        if not float(weight) >= 0:
            raise ValueError(f"weight must be non-negative, got {weight}.")
        self.operator, self.weight, self.n_iter = operator, float(weight), int(n_iter)
        self.nonnegative, self.step_ratio = bool(nonnegative), float(step_ratio)
        self._norm: float | None = None

    def with_geometry(self, geometry) -> TVReconstruction:
        """The same reconstruction (iterations, constraint) with the operator carried to ``geometry`` and the weight
        scaled by the squared ratio of pixel sizes (see ``_operator_for``)."""
        operator, weight = _operator_for(self.operator, geometry, self.weight)
        return type(self)(operator, weight, self.n_iter, self.nonnegative, self.step_ratio)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self._norm is None:
            self._norm = operator_norm(self.operator)
        x, _ = tv_pdhg(self.operator, y, self.weight, self.n_iter, self.nonnegative, norm=self._norm, step_ratio=self.step_ratio)
        return x

    def extra_repr(self) -> str:
        return f"weight={self.weight:.4g}, n_iter={self.n_iter}, nonnegative={self.nonnegative}"
