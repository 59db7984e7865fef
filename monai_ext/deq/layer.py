"""Deep Equilibrium layer: the output is the fixed point of a map, differentiated implicitly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .solvers import DEFAULT_MAX_ITER, DEFAULT_TOL, SolverInfo, check_stopping_criteria, get_solver

__all__ = ["DEQ", "GRAD_MODES"]

GRAD_MODES = ("implicit", "one_step", "unrolled")


class DEQ(nn.Module):
    """Deep Equilibrium layer (Bai et al. 2019): returns :math:`z^\\star = f(z^\\star, x_1, \\dots, x_n)`.

    The forward pass finds :math:`z^\\star` with a registered fixed-point solver under :func:`torch.no_grad`, so no
    autograd graph is kept for the iterations: memory does not grow with the number of iterations. It then makes one
    more call :math:`z = f(z^\\star, x)` with gradients enabled, and the output is that :math:`z`. How gradients
    reach the parameters of ``f`` and the inputs ``x`` depends on ``grad``:

    - ``"implicit"`` (default): implicit function theorem. For a loss :math:`L`,
      :math:`\\frac{dL}{d\\theta} = g^\\top \\frac{\\partial f}{\\partial \\theta}(z^\\star, x)` where :math:`g`
      solves the linear fixed point :math:`g = J_f(z^\\star)^\\top g + \\frac{\\partial L}{\\partial z}`. A hook on
      the output solves it in the backward pass with the backward solver, one vector-Jacobian product per iteration.
      Exact at the fixed point; costs one graph of ``f``.
    - ``"one_step"``: Jacobian-free (phantom) gradient, :math:`g = \\frac{\\partial L}{\\partial z}`, i.e. backprop
      through the final call of ``f`` only (Fung et al. 2022). Cheap, approximate; a descent direction for strongly
      contractive ``f``.
    - ``"unrolled"``: backprop through ``unroll_steps`` calls of ``f`` started from the detached fixed point
      (truncated unrolling); tends to the implicit gradient as ``unroll_steps`` grows, with memory growing with it.

    Convergence of the forward solve is returned as a :class:`~monai_ext.deq.solvers.SolverInfo`; that of the last
    backward solve is kept in :attr:`backward_info`. A solve that does not converge issues a ``RuntimeWarning``.

    Args:
        f: the map ``f(z, *inputs) -> z``, a :class:`torch.nn.Module` (registered as a submodule, so its parameters
            train with this layer) or any callable; ``f`` must return a tensor of the shape of ``z``.
        solver: forward solver name, see :func:`~monai_ext.deq.solvers.solver_names`.
        tol: forward tolerance on the relative residual :math:`\\lVert f(z) - z \\rVert / \\lVert z \\rVert` of every
            batch element.
        max_iter: forward iteration budget (evaluations of ``f``).
        solver_kwargs: options of the forward solver (e.g. ``{"m": 5, "lam": 1e-4, "beta": 1.0}`` for Anderson).
        grad: gradient mode, one of ``"implicit"``, ``"one_step"``, ``"unrolled"``.
        unroll_steps: number of calls of ``f`` backpropagated through when ``grad="unrolled"``.
        backward_solver: solver for the implicit backward fixed point; defaults to ``solver``.
        backward_tol: backward tolerance; defaults to ``tol``.
        backward_max_iter: backward iteration budget (vector-Jacobian products); defaults to ``max_iter``.
        backward_solver_kwargs: options of the backward solver; default to ``solver_kwargs`` when the backward solver
            is the forward one, else none.

    Raises:
        ValueError: for an unknown solver name or gradient mode, a non-positive ``tol``, ``max_iter`` or
            ``unroll_steps``.

    Example:
        >>> class Layer(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.linear = nn.Linear(8, 8)
        ...     def forward(self, z, x):
        ...         return torch.tanh(0.5 * self.linear(z) + x)
        >>> deq = DEQ(Layer(), solver="anderson", tol=1e-6)
        >>> x = torch.randn(4, 8, requires_grad=True)
        >>> z, info = deq(x)
        >>> z.sum().backward()
        >>> info.converged, deq.backward_info.converged, x.grad.shape
        (True, True, torch.Size([4, 8]))

    References:
        Bai, Kolter, Koltun, "Deep Equilibrium Models", NeurIPS 2019.
        Fung et al., "JFB: Jacobian-free backpropagation for implicit networks", AAAI 2022.
        Geng et al., "On training implicit models", NeurIPS 2021.
        Chazottes et al., "Deep equilibrium models for dynamic PET reconstruction", MIC 2024.
    """

    def __init__(
        self,
        f: Callable[..., torch.Tensor],
        solver: str = "anderson",
        tol: float = DEFAULT_TOL,
        max_iter: int = DEFAULT_MAX_ITER,
        solver_kwargs: dict[str, Any] | None = None,
        grad: str = "implicit",
        unroll_steps: int = 10,
        backward_solver: str | None = None,
        backward_tol: float | None = None,
        backward_max_iter: int | None = None,
        backward_solver_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not callable(f):
            raise ValueError(f"f must be callable, got {type(f).__name__}.")
        if grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {', '.join(GRAD_MODES)}; got {grad!r}.")
        if isinstance(unroll_steps, bool) or not isinstance(unroll_steps, int) or unroll_steps < 1:
            raise ValueError(f"unroll_steps must be a positive integer, got {unroll_steps!r}.")
        backward_solver = solver if backward_solver is None else backward_solver
        if backward_solver_kwargs is None:
            backward_solver_kwargs = solver_kwargs if backward_solver == solver else None
        backward_tol = tol if backward_tol is None else backward_tol
        backward_max_iter = max_iter if backward_max_iter is None else backward_max_iter
        check_stopping_criteria(tol, max_iter)
        check_stopping_criteria(backward_tol, backward_max_iter, prefix="backward_")

        self.f = f
        self.solver, self.backward_solver = solver, backward_solver
        self._solve, self._backward_solve = get_solver(solver), get_solver(backward_solver)
        self.tol, self.max_iter, self.solver_kwargs = tol, max_iter, dict(solver_kwargs or {})
        self.backward_tol, self.backward_max_iter = backward_tol, backward_max_iter
        self.backward_solver_kwargs = dict(backward_solver_kwargs or {})
        self.grad, self.unroll_steps = grad, unroll_steps
        self.backward_info: SolverInfo | None = None

    def forward(self, *inputs: torch.Tensor, z0: torch.Tensor | None = None) -> tuple[torch.Tensor, SolverInfo]:
        """Solve for the fixed point and attach the gradient chosen by ``grad``.

        Args:
            inputs: extra arguments of ``f``, passed as ``f(z, *inputs)``; gradients flow to those that require them.
            z0: initial iterate of shape ``(B, ...)``; defaults to zeros shaped like ``inputs[0]``. It is detached:
                the fixed point does not depend on it.

        Returns:
            ``(z, info)``: the equilibrium :math:`f(z^\\star, x)` and the forward :class:`SolverInfo`.

        Raises:
            ValueError: when ``z0`` is omitted and there are no inputs, or ``f`` changes the shape of ``z``.
        """
        if z0 is None:
            if not inputs:
                raise ValueError("z0 is required when DEQ is called without inputs.")
            z0 = torch.zeros_like(inputs[0])

        def f_of_z(z: torch.Tensor) -> torch.Tensor:
            return self.f(z, *inputs)

        with torch.no_grad():
            z_star, info = self._solve(
                f_of_z, z0.detach(), tol=self.tol, max_iter=self.max_iter, warn=False, **self.solver_kwargs
            )
        info.warn_if_not_converged("DEQ forward solve")

        if self.grad == "implicit":
            return self._attach_implicit_gradient(f_of_z, z_star), info
        z = z_star
        for _ in range(1 if self.grad == "one_step" else self.unroll_steps):
            z = f_of_z(z)
        return z, info

    def _attach_implicit_gradient(self, f_of_z: Callable[[torch.Tensor], torch.Tensor], z_star: torch.Tensor):
        if not torch.is_grad_enabled():
            return f_of_z(z_star)
        z_star = z_star.requires_grad_()
        f_star = f_of_z(z_star)
        # The hook sits on a view so that the VJPs below, which start at f_star, do not re-enter it.
        z = f_star.view_as(f_star)

        def vjp(y: torch.Tensor) -> torch.Tensor:
            (vjp_y,) = torch.autograd.grad(f_star, z_star, y, retain_graph=True, allow_unused=True)
            return torch.zeros_like(y) if vjp_y is None else vjp_y

        def solve_backward(grad_z: torch.Tensor) -> torch.Tensor:
            g, self.backward_info = self._backward_solve(
                lambda y: vjp(y) + grad_z,
                grad_z,
                tol=self.backward_tol,
                max_iter=self.backward_max_iter,
                warn=False,
                **self.backward_solver_kwargs,
            )
            self.backward_info.warn_if_not_converged("DEQ backward (implicit-gradient) solve")
            return g

        z.register_hook(solve_backward)
        return z

    def extra_repr(self) -> str:
        return (
            f"solver={self.solver!r}, tol={self.tol}, max_iter={self.max_iter}, grad={self.grad!r}"
            + (f", unroll_steps={self.unroll_steps}" if self.grad == "unrolled" else "")
            + f", backward_solver={self.backward_solver!r}"
        )
