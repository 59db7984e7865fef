"""Regularised dynamic PET reconstruction by majorisation-minimisation (MM), written as a fixed-point map.

The problem (Chazottes et al. 2024, eq. 1) over a series of ``T`` frames ``x = (x_t)``, ``x >= 0``:

.. math::

    f(x) = L(x, y) + \\eta\\,\\Phi(x) + \\sum_{t=1}^{T} \\lambda_t \\Psi(x_t, \\epsilon),

    L(x, y) = \\sum_{t, i} \\bar y_{ti} - y_{ti} \\log \\bar y_{ti}, \\quad \\bar y_t = A_t x_t + b_t, \\qquad
    \\Phi(x) = \\tfrac12 \\sum_{t \\ge 2} \\lVert x_t - x_{t-1} \\rVert^2, \\qquad
    \\Psi(x_t, \\epsilon) = \\sum_n \\sqrt{(D_h x_t)_n^2 + (D_v x_t)_n^2 + \\epsilon^2},

with ``D_h``, ``D_v`` forward differences (zero across the last column / row, i.e. Neumann boundaries).

**The MM step.** At the current iterate :math:`x^k > 0`, ``f`` is majorised by a separable surrogate :math:`Q(\\cdot;
x^k) \\ge f` with equality at :math:`x^k`, built from three classical majorants:

1. Poisson term, De Pierro's EM surrogate (De Pierro, IEEE TMI 1995; Lange and Carson 1984): by concavity of the
   logarithm with weights :math:`a_{ij} x_j^k / \\bar y_i^k` and :math:`b_i / \\bar y_i^k`,
   :math:`L(x) \\le \\sum_j s_j x_j - x_j^k e_j \\log x_j + c`, with the sensitivity :math:`s = A^T 1` and
   :math:`e = A^T (y / \\bar y^k)`.
2. Smoothed TV, half-quadratic (Geman and Reynolds 1992; Allain et al., IEEE TIP 2006): :math:`u \\mapsto
   \\sqrt{u + \\epsilon^2}` is concave, so :math:`\\Psi(x_t) \\le \\sum_n \\frac{w_n}{2} [(D_h x_t)_n^2 + (D_v x_t)_n^2]
   + c` with :math:`w_n = 1 / \\sqrt{(D_h x^k_t)_n^2 + (D_v x^k_t)_n^2 + \\epsilon^2}`.
3. Each squared difference of the quadratic terms (spatial edges of step 2, temporal pairs of ``Phi``) is separated
   by De Pierro's convexity trick: with :math:`m = (x_p^k + x_q^k) / 2`,
   :math:`(x_p - x_q)^2 = (\\frac12 (2x_p - 2m) + \\frac12 (2m - 2x_q))^2 \\le 2 (x_p - m)^2 + 2 (x_q - m)^2`.

Collecting terms, each pixel ``j`` of frame ``t`` has its own one-dimensional surrogate

.. math::

    Q_j(x_j) = s_j x_j - x_j^k e_j \\log x_j + C_j x_j^2 - 2 M_j x_j, \\qquad
    C_j = \\eta\\, |N(t)| + \\lambda_t \\sum_{e \\ni j} w_e, \\qquad
    M_j = \\eta \\sum_{t' \\in N(t)} \\frac{x^k_{t,j} + x^k_{t',j}}{2} + \\lambda_t \\sum_{e \\ni j} w_e\\, m_e,

where :math:`N(t)` are the neighbouring frames (``t +- 1``) and the sum over ``e`` runs over the (at most four)
spatial edges at ``j``, each with the weight :math:`w_e` of its left/top pixel. Setting :math:`Q_j' = 0` gives the
quadratic :math:`2 C_j x^2 + (s_j - 2 M_j) x - x_j^k e_j = 0`, whose positive root is the update

.. math::

    x_j^{k+1} = \\frac{-\\beta_j + \\sqrt{\\beta_j^2 + 8 C_j \\gamma_j}}{4 C_j}
              = \\frac{2 \\gamma_j}{\\beta_j + \\sqrt{\\beta_j^2 + 8 C_j \\gamma_j}}, \\qquad
    \\beta_j = s_j - 2 M_j, \\; \\gamma_j = x_j^k e_j,

(the second form, used when :math:`\\beta_j \\ge 0`, avoids cancellation and reduces to MLEM when
:math:`\\eta = \\lambda = 0`). The update is positive whenever :math:`x^k e > 0`, and
:math:`f(x^{k+1}) \\le Q(x^{k+1}; x^k) \\le Q(x^k; x^k) = f(x^k)`: the scheme is monotone. Because each majorant is
tangent at :math:`x^k`, a fixed point with :math:`x > 0` is a stationary point of ``f`` (KKT conditions). This is an
equivalent of the logarithmic-majorant MM of Rossignol et al. (ICIP 2022) used by Chazottes et al.: a provably
monotone MM with a closed-form, all-frames-at-once update.

**As a fixed-point map** for a Deep Equilibrium model, :class:`RegularisedMMMap` evaluates the step at
:math:`\\max(z, \\text{floor})`, so that Anderson extrapolations which leave the positive orthant are mapped back.

References:
    A. Chazottes, E. Chouzenoux, J.-C. Pesquet, F. Sureau, "Deep Equilibrium for Hyperparameter Estimation in
    Dynamic PET Reconstruction", IEEE MIC 2024.
    C. Rossignol et al., "A Bregman majorization-minimization framework for PET image reconstruction", ICIP 2022.
    A. R. De Pierro, "A modified expectation maximization algorithm for penalized likelihood estimation in emission
    tomography", IEEE TMI 14(1), 1995.
    M. Allain, J. Idier, Y. Goussard, "On global and local convergence of half-quadratic algorithms", IEEE TIP
    15(5), 2006.
"""

from __future__ import annotations

import dataclasses

import torch

from ..deq import SolverInfo, fixed_point_solve
from ..operators import gradient
from ..pet.likelihood import DEFAULT_EPS, poisson_nll

__all__ = [
    "spatial_differences",
    "temporal_difference_penalty",
    "smoothed_total_variation",
    "dynamic_pet_objective",
    "objective_gradient",
    "regularised_mm_step",
    "RegularisedMMMap",
    "kkt_residuals",
    "uniform_initial_image",
    "mm_reconstruct",
    "ANDERSON_OPTIONS",
]

DEFAULT_FLOOR = 1e-6
"""Lower bound (image units, e.g. kBq/mL) at which :class:`RegularisedMMMap` evaluates its argument."""

ANDERSON_OPTIONS = {"m": 5, "beta": 0.5}
"""Anderson options for the MM map. Undamped Anderson (``beta = 1``) stalls erratically on this map (its Jacobian has
eigenvalues close to 1 at pixels near zero): on a 32 x 32 x 20 exam it needed 640 iterations to a relative residual
of 1e-5 against 692 for plain MM iteration, and 101 with ``beta = 0.5`` (64 x 64: 91 against 703)."""


def _check_series(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"{name} must be a (B, T, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}.")


def _per_frame(value, x: torch.Tensor, name: str) -> torch.Tensor:
    """``value`` (a number, ``(T,)``, ``(B,)`` for ``eta``-like or ``(B, T)``) as a ``(B, T, 1, 1)`` tensor."""
    v = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    b, t = x.shape[:2]
    if v.ndim == 0:
        v = v.reshape(1, 1)
    elif v.ndim == 1:
        v = v.reshape(1, -1) if v.shape[0] == t else v.reshape(-1, 1)
    if v.ndim != 2 or v.shape[0] not in (1, b) or v.shape[1] not in (1, t):
        raise ValueError(f"{name} must be a number, (T,)=({t},), (B,)=({b},) or (B, T)=({b}, {t}), got shape {tuple(v.shape)}.")
    if not torch.isfinite(v).all() or (v < 0).any():
        raise ValueError(f"{name} must be finite and non-negative, got {v.detach().flatten()[:6].tolist()}.")
    return v[..., None, None]


def _per_batch(value, x: torch.Tensor, name: str) -> torch.Tensor:
    """``eta`` (a number or ``(B,)``) as a ``(B, 1, 1, 1)`` tensor."""
    v = torch.as_tensor(value, dtype=x.dtype, device=x.device).reshape(-1)
    if v.numel() not in (1, x.shape[0]):
        raise ValueError(f"{name} must be a number or one value per batch element ({x.shape[0]}), got {v.numel()} values.")
    if not torch.isfinite(v).all() or (v < 0).any():
        raise ValueError(f"{name} must be finite and non-negative, got {v.detach().tolist()[:6]}.")
    return v.reshape(-1, 1, 1, 1)


def spatial_differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences ``(D_h x, D_v x)`` of images ``(..., H, W)``, zero across the last column / row
    (:func:`monai_ext.operators.gradient` of the images, horizontal first)."""
    dv, dh = gradient(x.reshape(-1, 1, *x.shape[-2:])).unbind(2)
    return dh.reshape(x.shape), dv.reshape(x.shape)


def temporal_difference_penalty(x: torch.Tensor) -> torch.Tensor:
    """``Phi(x) = 1/2 sum_{t >= 2} ||x_t - x_{t-1}||^2`` per batch element of ``x`` ``(B, T, H, W)``, shape ``(B,)``."""
    _check_series("x", x)
    return 0.5 * (x[:, 1:] - x[:, :-1]).pow(2).flatten(1).sum(-1)


def smoothed_total_variation(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``Psi(x_t, eps) = sum_n sqrt((D_h x_t)_n^2 + (D_v x_t)_n^2 + eps^2)`` per frame of ``x`` ``(B, T, H, W)``,
    shape ``(B, T)``."""
    _check_series("x", x)
    dh, dv = spatial_differences(x)
    return torch.sqrt(dh.pow(2) + dv.pow(2) + eps**2).flatten(2).sum(-1)


def dynamic_pet_objective(x: torch.Tensor, counts: torch.Tensor, model, eta, lambdas, eps: float = 0.1) -> torch.Tensor:
    """The objective ``f(x) = L(x, y) + eta Phi(x) + sum_t lambda_t Psi(x_t, eps)`` per batch element, shape ``(B,)``.

    Args:
        x: images ``(B, T, H, W)``, non-negative.
        counts: sinograms ``y`` ``(B, T, *sinogram_shape)``.
        model: a ``PETSystemModel`` (its ``background`` is ``b``).
        eta: temporal weight, a number or ``(B,)``.
        lambdas: spatial weights, a number, ``(T,)`` or ``(B, T)``.
        eps: TV smoothing, image units.

    Example:
        >>> f = dynamic_pet_objective(x, counts, model, eta=0.1, lambdas=torch.full((20,), 0.5))
    """
    _check_series("x", x)
    lam = _per_frame(lambdas, x, "lambdas")[..., 0, 0]
    data = poisson_nll(counts, model.expected_counts(x), reduction="per_sinogram").sum(-1)
    return data + _per_batch(eta, x, "eta").reshape(-1) * temporal_difference_penalty(x) + (lam * smoothed_total_variation(x, eps)).sum(-1)


def objective_gradient(x: torch.Tensor, counts: torch.Tensor, model, eta, lambdas, eps: float = 0.1) -> torch.Tensor:
    """``grad_x f`` (autograd of :func:`dynamic_pet_objective`), shape of ``x``; no graph is kept."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(dynamic_pet_objective(xg, counts, model, eta, lambdas, eps).sum(), xg)
    return grad


def _shift_next(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``out[..., i] = t[..., i - 1]`` along ``dim`` (zero at ``i = 0``): moves an edge value to its second pixel."""
    pad = [0, 0] * (t.ndim - 1 - (dim % t.ndim)) + [1, 0]
    return torch.nn.functional.pad(t.narrow(dim, 0, t.shape[dim] - 1), pad)


def regularised_mm_step(
    x: torch.Tensor,
    counts: torch.Tensor,
    model,
    sensitivity: torch.Tensor,
    eta,
    lambdas,
    eps: float = 0.1,
    nll_eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """One MM update ``x^{k+1}`` (the positive root of each pixel's quadratic, see the module docstring).

    Differentiable with respect to ``x``, ``eta`` and ``lambdas`` (for implicit or unrolled gradients).

    Args:
        x: current iterate ``(B, T, H, W)``, positive (pixels at 0 are valid but stay 0 unless the penalties push).
        counts: ``y`` ``(B, T, *sinogram_shape)``, non-negative.
        model: the ``PETSystemModel`` ``A`` (with its background ``b``).
        sensitivity: ``A^T 1`` broadcastable to ``x`` (``model.sensitivity()``), computed once by the caller.
        eta: temporal weight, a number or ``(B,)``, non-negative.
        lambdas: spatial weights, a number, ``(T,)`` or ``(B, T)``, non-negative.
        eps: TV smoothing (image units).
        nll_eps: lower clamp of ``A x + b`` in the ratio ``y / (A x + b)``.

    Returns:
        ``x^{k+1}``, non-negative, shape of ``x``.

    Raises:
        ValueError: ``x`` not ``(B, T, H, W)``, or hyperparameters of the wrong shape, negative or non-finite.
    """
    _check_series("x", x)
    eta = _per_batch(eta, x, "eta")
    lam = _per_frame(lambdas, x, "lambdas")
    n_frames = x.shape[1]
    tiny = torch.finfo(x.dtype).tiny

    ratio = counts / model.expected_counts(x).clamp_min(nll_eps)
    gamma = x * model.adjoint(ratio)  # x^k e

    # temporal pairs: C_T = eta |N(t)|, M_T = eta sum_{t'} (x_t + x_t') / 2
    pair_mid = 0.5 * (x[:, 1:] + x[:, :-1])  # (B, T-1, H, W), the midpoint of pair (t-1, t)
    zero = torch.zeros_like(x[:, :1])
    mid_sum = torch.cat([pair_mid, zero], 1) + torch.cat([zero, pair_mid], 1)
    n_neighbours = torch.full((n_frames,), 2.0, dtype=x.dtype, device=x.device)
    n_neighbours[0] = n_neighbours[-1] = 1.0
    if n_frames == 1:
        n_neighbours[0] = 0.0
    c = eta * n_neighbours.reshape(1, -1, 1, 1)
    m = eta * mid_sum

    # spatial edges: weight w of the edge's first pixel, shared with its second pixel
    dh, dv = spatial_differences(x)
    w = torch.rsqrt(dh.pow(2) + dv.pow(2) + eps**2)
    w_h = torch.nn.functional.pad(w[..., :, :-1], (0, 1))  # no edge beyond the last column
    w_v = torch.nn.functional.pad(w[..., :-1, :], (0, 0, 0, 1))
    mid_h = w_h * (x + 0.5 * dh)  # w_e * (x_p + x_q) / 2 with x_q = x_p + dh
    mid_v = w_v * (x + 0.5 * dv)
    c = c + lam * (w_h + _shift_next(w_h, -1) + w_v + _shift_next(w_v, -2))
    m = m + lam * (mid_h + _shift_next(mid_h, -1) + mid_v + _shift_next(mid_v, -2))

    beta = sensitivity - 2.0 * m
    disc = torch.sqrt(beta.pow(2) + 8.0 * c * gamma)
    stable = 2.0 * gamma / (beta + disc).clamp_min(tiny)  # beta >= 0
    direct = (disc - beta) / (4.0 * c).clamp_min(tiny)  # beta < 0 implies c > 0
    return torch.where(beta >= 0, stable, direct)


class RegularisedMMMap(torch.nn.Module):
    """The MM update as a fixed-point map ``z -> T(max(z, floor))`` for ``monai_ext.deq`` solvers and ``DEQ``.

    ``forward(z, counts, sensitivity, eta, lambdas)`` has the ``f(z, *inputs)`` signature of
    :class:`~monai_ext.deq.DEQ`; the system model is held by the map (one per batch of exams) and can be replaced
    with :meth:`set_model`. All frames and batch elements are updated at once.

    Args:
        model: the ``PETSystemModel`` of the batch (factors of shape ``(1 or B, T, ...)``).
        eps: TV smoothing (image units); Chazottes et al. fix it at 0.1.
        floor: the map evaluates ``max(z, floor)``, so extrapolations outside ``x >= 0`` (Anderson) are tolerated.

    Raises:
        ValueError: a non-positive ``eps`` or a negative ``floor``.

    Example:
        >>> mm = RegularisedMMMap(model, eps=0.1)
        >>> sens = model.sensitivity()
        >>> z, info = anderson_solve(lambda z: mm(z, counts, sens, 0.1, lambdas), x0, tol=1e-5)
    """

    def __init__(self, model, eps: float = 0.1, floor: float = DEFAULT_FLOOR) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}.")
        if not floor >= 0:
            raise ValueError(f"floor must be non-negative, got {floor}.")
        self.model, self.eps, self.floor = model, float(eps), float(floor)

    def set_model(self, model) -> None:
        """Use another system model (the next batch of exams)."""
        self.model = model

    def forward(self, z: torch.Tensor, counts: torch.Tensor, sensitivity: torch.Tensor, eta, lambdas) -> torch.Tensor:
        return regularised_mm_step(z.clamp_min(self.floor), counts, self.model, sensitivity, eta, lambdas, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, floor={self.floor}"


def kkt_residuals(
    x: torch.Tensor, counts: torch.Tensor, model, eta, lambdas, eps: float = 0.1, zero_threshold: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative violation of the KKT conditions of ``min_{x >= 0} f(x)`` at ``x``, per batch element.

    With ``g = grad f(x)`` scaled by the sensitivity ``s = A^T 1`` (the size of each pixel's likelihood gradient),
    a minimiser has ``g_j / s_j = 0`` where ``x_j > 0`` and ``g_j / s_j >= 0`` where ``x_j = 0``. A pixel counts as
    zero when ``x_j <= zero_threshold * max(x)`` of its frame.

    Returns:
        ``(stationarity, sign)``: ``max |g_j| / s_j`` over positive pixels and ``max(0, -g_j / s_j)`` over zero pixels,
        each of shape ``(B,)``.
    """
    grad = objective_gradient(x, counts, model, eta, lambdas, eps)
    scaled = grad / model.sensitivity().to(x).clamp_min(torch.finfo(x.dtype).tiny)
    zero = x <= zero_threshold * x.flatten(2).amax(-1)[..., None, None]
    stationarity = torch.where(zero, torch.zeros_like(scaled), scaled.abs()).flatten(1).amax(-1)
    sign = torch.where(zero, (-scaled).clamp_min(0), torch.zeros_like(scaled)).flatten(1).amax(-1)
    return stationarity, sign


def uniform_initial_image(counts: torch.Tensor, model) -> torch.Tensor:
    """A positive start ``(B, T, H, W)``: per frame, a constant image whose expected trues match the counts minus
    the expected background, ``c_t = max(sum y_t - sum b_t, 1 % sum y_t) / sum (A^T 1)_t``."""
    sens = model.sensitivity().to(counts).expand(*counts.shape[:2], *model.image_shape)
    total = counts.flatten(2).sum(-1)
    if model.background is not None:
        background = model.background.to(counts).expand_as(counts).flatten(2).sum(-1)
        total = torch.maximum(total - background, 0.01 * total)
    level = total / sens.flatten(2).sum(-1).clamp_min(torch.finfo(counts.dtype).tiny)
    return level[..., None, None] * torch.ones_like(sens)


def mm_reconstruct(
    counts: torch.Tensor,
    model,
    eta,
    lambdas,
    eps: float = 0.1,
    *,
    solver: str = "anderson",
    tol: float = 1e-4,
    max_iter: int = 500,
    x0: torch.Tensor | None = None,
    floor: float = DEFAULT_FLOOR,
    solver_kwargs: dict | None = None,
    restarts: int = 0,
) -> tuple[torch.Tensor, SolverInfo]:
    """Solve the regularised problem for a batch of dynamic exams: the fixed point of the MM map.

    Args:
        counts: ``(B, T, *sinogram_shape)`` counts.
        model: ``PETSystemModel`` of the batch.
        eta: temporal weight, a number or ``(B,)``.
        lambdas: spatial weights, a number, ``(T,)`` or ``(B, T)``.
        eps: TV smoothing.
        solver: ``monai_ext.deq`` solver name: ``"anderson"`` (accelerated) or ``"picard"`` (plain MM iteration,
            monotone in ``f``).
        tol: relative-residual tolerance of the fixed point.
        max_iter: iteration (MM step) budget.
        x0: positive start; default :func:`uniform_initial_image`.
        floor: see :class:`RegularisedMMMap`.
        solver_kwargs: options of the solver; default :data:`ANDERSON_OPTIONS` for Anderson.
        restarts: solve again from the last iterate, with a fresh solver state, up to this many times while ``tol`` is
            not reached (damped Anderson can stall on this map at a relative residual ~1e-3, far from the fixed
            point); ``info`` is then the last solve's, its ``nstep`` the total.

    Returns:
        ``(x, info)``: the reconstruction ``max(z, floor)`` mapped once more (so it is an MM iterate, non-negative)
        and the solver's :class:`SolverInfo`.

    Example:
        >>> x, info = mm_reconstruct(counts, model, eta=0.05, lambdas=torch.full((20,), 0.3))
        >>> info.converged, x.shape
    """
    mm = RegularisedMMMap(model, eps, floor)
    if solver_kwargs is None:
        solver_kwargs = dict(ANDERSON_OPTIONS) if solver == "anderson" else {}
    with torch.no_grad():
        sens = model.sensitivity().to(counts)
        start = uniform_initial_image(counts, model) if x0 is None else x0.to(counts)
        z, info = fixed_point_solve(
            lambda z: mm(z, counts, sens, eta, lambdas), start, solver=solver, tol=tol, max_iter=max_iter,
            warn=False, **solver_kwargs,
        )
        steps = info.nstep
        for _ in range(int(restarts)):
            if info.converged:
                break
            z, info = fixed_point_solve(
                lambda z: mm(z, counts, sens, eta, lambdas), z, solver=solver, tol=tol, max_iter=max_iter,
                warn=False, **solver_kwargs,
            )
            steps += info.nstep
        return mm(z, counts, sens, eta, lambdas), dataclasses.replace(info, nstep=steps)

