"""Learning the regularisation hyperparameters of dynamic PET reconstruction, and the search baselines.

The bilevel problem of Chazottes et al. (MIC 2024, eq. 2): for one subject, slice and dose, find

.. math::

    \\min_{\\eta > 0,\\; \\lambda \\in \\mathbb{R}_{>0}^T} \\; \\frac{1}{|S|} \\sum_{r \\in S}
    \\lVert \\hat x(y_r; \\eta, \\lambda) - x \\rVert^2,

where :math:`\\hat x(y; \\eta, \\lambda)` is the minimiser of the regularised objective of
:mod:`monai_ext.dynamic_pet.regularised_mm` (``eps`` fixed) for counts :math:`y_r`, :math:`x` the noise-free phantom and
``S`` a set of noise realisations. Three solvers of it:

- :func:`learn_hyperparameters_deq`: the Deep Equilibrium approach. :math:`\\hat x` is the fixed point of the MM map,
  found by Anderson acceleration (:class:`~monai_ext.deq.DEQ`), and differentiated implicitly
  (:math:`\\partial \\hat x / \\partial \\theta = (I - J_T)^{-1} \\partial T / \\partial \\theta`), so that all
  ``1 + T`` weights (21 for the 20-frame protocol) are learned by Adam on mini-batches of realisations, through a
  log parameterisation (:class:`RegularisationWeights`), with an exponentially decreasing learning rate.
- :func:`grid_search` and :func:`tpe_search`: the baselines with a scalar ``lambda`` (2 parameters), a log-spaced
  grid and Optuna's Tree-structured Parzen Estimator, each under a wall-clock budget (the DEQ's training time).

Every fixed point is warm-started from the realisation's previous solution (:class:`FixedPointProblem`), for the
DEQ and the baselines alike; validation MSEs are computed from the same uniform start for every method. Budgets
and times are measured by :class:`ComputeClock`: the process's CPU time on CPU (so that other users of a shared
machine do not distort an equal-time comparison; with one thread it is the wall-clock time of a dedicated
machine), the wall-clock time after a synchronisation on CUDA; wall-clock times are reported as well.

References:
    A. Chazottes, E. Chouzenoux, J.-C. Pesquet, F. Sureau, "Deep Equilibrium for Hyperparameter Estimation in
    Dynamic PET Reconstruction", IEEE MIC 2024.
    S. Bai, J. Z. Kolter, V. Koltun, "Deep Equilibrium Models", NeurIPS 2019.
    J. Bergstra, R. Bardenet, Y. Bengio, B. Kegl, "Algorithms for hyper-parameter optimization", NeurIPS 2011 (TPE).
    T. Akiba et al., "Optuna: a next-generation hyperparameter optimization framework", KDD 2019.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..deq import DEQ
from ..distributed import average_gradients, gather_shards, is_main_process, rank_and_world_size, shard
from .noise_realisations import NoiseRealisations
from .regularised_mm import ANDERSON_OPTIONS, RegularisedMMMap, uniform_initial_image

__all__ = [
    "ComputeClock",
    "RegularisationWeights",
    "FixedPointProblem",
    "SearchResult",
    "learn_hyperparameters_deq",
    "hypergradient_step",
    "grid_search",
    "best_trial_index",
    "hypergradient_error",
    "implicit_hypergradient",
    "finite_difference_hypergradient",
    "tpe_search",
]


class ComputeClock:
    """Seconds of compute since creation: process CPU time on CPU, synchronised wall-clock time on CUDA.

    Args:
        device: the device the work runs on.

    Example:
        >>> clock = ComputeClock("cpu")
        >>> clock.elapsed() >= 0, clock.wall() >= 0
        (True, True)
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.kind = "wall-clock (CUDA synchronised)" if self.cuda else "process CPU time"
        self._start, self._wall_start = self._now(), time.perf_counter()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()

    def elapsed(self) -> float:
        """Compute seconds since creation."""
        return self._now() - self._start

    def wall(self) -> float:
        """Wall-clock seconds since creation."""
        return time.perf_counter() - self._wall_start


class RegularisationWeights(torch.nn.Module):
    """The hyperparameters ``eta > 0`` and ``lambda_t > 0`` as exponentials of free parameters.

    Args:
        n_frames: ``T``.
        eta: initial temporal weight.
        lambdas: initial spatial weight(s): one number or ``T`` values.
        per_frame: learn one ``lambda_t`` per frame (``1 + T`` parameters) or one shared ``lambda`` (2 parameters).

    Raises:
        ValueError: non-positive initial values, or ``T`` values with ``per_frame=False``.

    Example:
        >>> weights = RegularisationWeights(20, eta=1.0, lambdas=0.1)
        >>> weights.n_parameters, weights.lambdas.shape
        (21, torch.Size([20]))
    """

    def __init__(self, n_frames: int, eta: float = 1.0, lambdas: float | Sequence[float] = 0.1, per_frame: bool = True) -> None:
        super().__init__()
        lam = torch.as_tensor(lambdas, dtype=torch.float64).reshape(-1)
        if not float(eta) > 0 or not bool((lam > 0).all()):
            raise ValueError(f"eta and lambdas must be positive, got eta={eta}, lambdas={lam.tolist()}.")
        if lam.numel() not in (1, n_frames) or (not per_frame and lam.numel() != 1):
            raise ValueError(f"lambdas must hold 1 value{'' if not per_frame else f' or n_frames={n_frames}'}, got {lam.numel()}.")
        self.n_frames, self.per_frame = int(n_frames), bool(per_frame)
        if per_frame:
            lam = lam.expand(n_frames).clone()
        self.log_eta = torch.nn.Parameter(torch.tensor(math.log(float(eta)), dtype=torch.float64))
        self.log_lambda = torch.nn.Parameter(lam.log())

    @property
    def eta(self) -> torch.Tensor:
        """``exp(log_eta)``, a 0-d tensor."""
        return self.log_eta.exp()

    @property
    def lambdas(self) -> torch.Tensor:
        """``exp(log_lambda)`` as ``(T,)``."""
        return self.log_lambda.exp().expand(self.n_frames)

    @property
    def n_parameters(self) -> int:
        return 1 + int(self.log_lambda.numel())

    def values(self) -> dict[str, Any]:
        """``{"eta": float, "lambdas": [T floats]}``."""
        return {"eta": float(self.eta.detach()), "lambdas": [float(v) for v in self.lambdas.detach()]}


class FixedPointProblem:
    """The lower level of the bilevel problem for one set of noise realisations: MM fixed points, warm-started.

    Args:
        data: the realisations (counts, reference, system model).
        eps: TV smoothing (0.1 in the paper).
        solver: fixed-point solver of the forward pass (``"anderson"``; ``"picard"`` is plain MM iteration).
        tol: relative-residual tolerance of the forward solve.
        max_iter: forward iteration budget (500 in the paper).
        solver_kwargs: solver options; default ``regularised_mm.ANDERSON_OPTIONS`` for Anderson.
        backward_tol: tolerance of the implicit-gradient solve (default ``tol``).
        backward_max_iter: budget of the implicit-gradient solve.
        backward_solver: solver of the implicit-gradient equation (default ``solver``); ``"gmres"`` suits it (it is
            linear, and the MM map's Jacobian has eigenvalues near 1, where Anderson stalls).
        backward_solver_kwargs: its options (e.g. ``{"restart": 100}`` for GMRES).
        device: where the data and solves live.
        dtype: float32 (fast) or float64.

    Example:
        >>> problem = FixedPointProblem(data, tol=1e-4, device="cpu")
        >>> x = problem.reconstruct([0, 1], eta=torch.tensor(1.0), lambdas=torch.full((20,), 0.1))
    """

    def __init__(
        self,
        data: NoiseRealisations,
        *,
        eps: float = 0.1,
        solver: str = "anderson",
        tol: float = 1e-4,
        max_iter: int = 500,
        solver_kwargs: dict | None = None,
        backward_tol: float | None = None,
        backward_max_iter: int = 100,
        backward_solver: str | None = None,
        backward_solver_kwargs: dict | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.data = data
        self.device, self.dtype = torch.device(device), dtype
        self.model = data.model.to(device=self.device, dtype=dtype)
        self.counts = data.counts.to(device=self.device, dtype=dtype)
        self.reference = data.reference.to(device=self.device, dtype=dtype)
        self.sensitivity = self.model.sensitivity().to(device=self.device, dtype=dtype)
        self.start = uniform_initial_image(self.counts, self.model)
        self.warm = self.start.clone()
        self.mm = RegularisedMMMap(self.model, eps)
        if solver_kwargs is None:
            solver_kwargs = dict(ANDERSON_OPTIONS) if solver == "anderson" else {}
        self.deq = DEQ(
            self.mm, solver=solver, tol=tol, max_iter=max_iter, solver_kwargs=solver_kwargs, grad="implicit",
            backward_tol=backward_tol, backward_max_iter=backward_max_iter, backward_solver=backward_solver,
            backward_solver_kwargs=backward_solver_kwargs,
        )
        self.forward_steps: list[int] = []
        self.backward_steps: list[int] = []
        self.last_info = None

    @property
    def eps(self) -> float:
        return self.mm.eps

    def reconstruct(
        self, idx: Sequence[int], eta: torch.Tensor, lambdas: torch.Tensor, warm_start: bool = True, restarts: int = 0,
    ) -> torch.Tensor:
        """Fixed points ``(len(idx), T, H, W)`` for realisations ``idx``; differentiable in ``eta`` and ``lambdas``
        (implicitly) when they require gradients. The solutions become the realisations' next warm starts.

        ``restarts``: without gradients, solve again from the returned iterate (a fresh Anderson history) up to this
        many times while the tolerance is not reached. Damped Anderson can stall on this map far from the fixed point
        (relative residual ~1e-3 after 500 steps from the uniform start, while the slowest MM modes contract by
        ~1e-3 per step): the validation solves use restarts so that a stall is not scored as a reconstruction."""
        idx = torch.as_tensor(list(idx), dtype=torch.long, device=self.device)
        z0 = (self.warm if warm_start else self.start).index_select(0, idx)
        eta = torch.as_tensor(eta, device=self.device).to(self.dtype)
        lambdas = torch.as_tensor(lambdas, device=self.device).to(self.dtype)
        counts = self.counts.index_select(0, idx)
        x, info = self.deq(counts, self.sensitivity, eta, lambdas, z0=z0)
        steps = info.nstep
        for _ in range(int(restarts) if not torch.is_grad_enabled() else 0):
            if info.converged:
                break
            x, info = self.deq(counts, self.sensitivity, eta, lambdas, z0=x)
            steps += info.nstep
        self.last_info = info
        self.warm[idx] = x.detach()
        self.forward_steps.append(steps)
        return x

    def mse(self, idx: Sequence[int], eta, lambdas, batch_size: int = 8, warm_start: bool = True, restarts: int = 0) -> float:
        """Mean squared error (per pixel and frame, (kBq/mL)^2) of the fixed points of ``idx`` against the phantom
        (``restarts`` as in :meth:`reconstruct`)."""
        idx, total = list(idx), 0.0
        with torch.no_grad():
            for start in range(0, len(idx), batch_size):
                batch = idx[start : start + batch_size]
                x = self.reconstruct(batch, eta, lambdas, warm_start, restarts)
                total += float((x - self.reference).pow(2).mean(dim=(1, 2, 3)).sum())
        return total / len(idx)

    def clock(self) -> ComputeClock:
        """A :class:`ComputeClock` for this problem's device, started now."""
        return ComputeClock(self.device)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The training loss: MSE of a batch of reconstructions against the phantom."""
        return (x - self.reference).pow(2).mean()


@dataclasses.dataclass
class SearchResult:
    """Outcome of one hyperparameter estimation.

    Args:
        method: ``"deq"``, ``"grid_search"`` or ``"tpe"``.
        n_parameters: learned parameters (``1 + T`` or 2).
        eta: the temporal weight found.
        lambdas: the spatial weights found, ``T`` values.
        train_mse: training MSE at the end (DEQ: mean loss of the last epoch; searches: the best trial's).
        seconds: compute time of the estimation (:class:`ComputeClock`; validation excluded).
        n_evaluations: optimisation steps (DEQ) or trials (searches).
        history: per-step or per-trial records.
        val_mse: validation MSE of the result (filled in by the caller).
        wall_seconds: wall-clock time of the estimation.
    """

    method: str
    n_parameters: int
    eta: float
    lambdas: list[float]
    train_mse: float
    seconds: float
    n_evaluations: int
    history: list[dict] = dataclasses.field(default_factory=list)
    val_mse: float | None = None
    wall_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def hypergradient_step(problem: FixedPointProblem, weights: RegularisationWeights, optimiser: torch.optim.Optimizer, batch: Sequence[int]) -> float:
    """One Adam step of the DEQ learning on the realisations ``batch``; returns the batch's MSE.

    Under ``torch.distributed`` each rank solves its share ``batch[rank::world_size]``, the gradients are averaged
    with the share sizes as weights and the solutions exchanged (every rank keeps the warm starts of a single
    process); the returned loss is the batch mean over all ranks.
    """
    batch = [int(i) for i in batch]
    share = shard(batch)
    optimiser.zero_grad()
    loss = torch.zeros((), dtype=torch.float64)
    if share:  # a rank's share of a short last batch may be empty: it still takes part in the averaging
        x = problem.reconstruct(share, weights.eta, weights.lambdas)
        loss = problem.loss(x)
        loss.backward()
    if rank_and_world_size()[1] > 1:
        (loss,) = average_gradients(weights.parameters(), len(share), [loss.detach()])
        problem.warm[batch] = gather_shards(problem.warm[share], len(batch))
    optimiser.step()
    return float(loss.detach())


def learn_hyperparameters_deq(
    problem: FixedPointProblem,
    train_idx: Sequence[int],
    weights: RegularisationWeights,
    *,
    epochs: int = 50,
    batch_size: int = 16,
    lr: float = 0.1,
    lr_final: float = 0.01,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> SearchResult:
    """Learn ``eta`` and ``lambda`` by Adam on the MSE of DEQ fixed points (implicit gradients).

    The learning rate decays exponentially from ``lr`` to ``lr_final`` over the epochs; mini-batches are drawn from
    ``train_idx`` in a seeded random order each epoch.

    Under ``torch.distributed`` (a process group is initialised) every rank draws the same mini-batches and solves
    its share ``batch[rank::world_size]`` of each; the gradients of the log-weights are averaged across ranks with
    the share sizes as weights (:func:`monai_ext.distributed.average_gradients`), which is the gradient of the whole
    batch's mean loss, so every rank takes the same Adam step and keeps the same weights; the solutions are then
    exchanged so that every rank's warm starts are those of a single process. The recorded losses are the batch
    means over all ranks; ``log`` is called on rank 0 only. Up to float rounding and the batch-wide stopping of the
    fixed-point solves (a shared solve stops when its slowest realisation reaches the tolerance), this is the
    single-process learning; without a process group it is exactly that.

    Args:
        problem: the fixed-point problem (data, solver settings).
        train_idx: training realisations.
        weights: the hyperparameters to learn (modified in place; moved to no device, they stay float64 on CPU
            and are cast when used).
        epochs: passes over the training realisations (50 in the paper).
        batch_size: realisations per step (16 in the paper).
        lr: initial learning rate (on the log-parameters).
        lr_final: learning rate of the last epoch.
        seed: seed of the mini-batch order.
        log: called with one line per epoch.

    Returns:
        A :class:`SearchResult` with method ``"deq"``.

    Raises:
        ValueError: ``epochs`` or ``batch_size`` < 1, or a non-positive learning rate.
    """
    if int(epochs) < 1 or int(batch_size) < 1:
        raise ValueError(f"epochs and batch_size must be positive integers, got {epochs} and {batch_size}.")
    if not (lr > 0 and lr_final > 0):
        raise ValueError(f"lr and lr_final must be positive, got {lr} and {lr_final}.")
    optimiser = torch.optim.Adam(weights.parameters(), lr=lr)
    gamma = (lr_final / lr) ** (1.0 / max(1, int(epochs) - 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma)
    generator = torch.Generator().manual_seed(int(seed))
    train_idx = list(train_idx)
    history, clock = [], problem.clock()
    epoch_loss = float("nan")
    log = log if is_main_process() else None
    for epoch in range(int(epochs)):
        order = [train_idx[i] for i in torch.randperm(len(train_idx), generator=generator).tolist()]
        losses = []
        for b in range(0, len(order), int(batch_size)):
            loss = hypergradient_step(problem, weights, optimiser, order[b : b + int(batch_size)])
            losses.append(loss)
            backward = problem.deq.backward_info
            history.append(
                {
                    "epoch": epoch,
                    "loss": loss,
                    "seconds": clock.elapsed(),
                    "forward_steps": problem.forward_steps[-1] if problem.forward_steps else None,
                    "backward_steps": None if backward is None else backward.nstep,
                    "eta": float(weights.eta.detach()),
                }
            )
        scheduler.step()
        epoch_loss = float(np.mean(losses))
        if log is not None:
            log(
                f"deq epoch {epoch + 1}/{epochs}: train MSE {epoch_loss:.5f}, eta {float(weights.eta.detach()):.4g}, "
                f"lambda [{float(weights.lambdas.detach().min()):.3g}, {float(weights.lambdas.detach().max()):.3g}], "
                f"{clock.elapsed():.1f} s"
            )
    values = weights.values()
    return SearchResult("deq", weights.n_parameters, values["eta"], values["lambdas"], epoch_loss, clock.elapsed(),
                        len(history), history, wall_seconds=clock.wall())


def _log_parameters(weights: RegularisationWeights) -> torch.Tensor:
    return torch.cat([weights.log_eta.detach().reshape(1), weights.log_lambda.detach().reshape(-1)]).double()


def implicit_hypergradient(data: NoiseRealisations, idx: Sequence[int], eta: float, lambdas, *, settings: dict,
                           per_frame: bool = True) -> tuple[torch.Tensor, dict]:
    """``d MSE / d (log eta, log lambda_t)`` of realisations ``idx`` as the learning computes it: a forward solve
    from the uniform image, then the implicit backward solve, with :class:`FixedPointProblem` keyword arguments
    ``settings``. Returns the gradient and ``{"forward_steps", "backward_steps"}``."""
    weights = RegularisationWeights(data.n_frames, eta, lambdas, per_frame=per_frame)
    problem = FixedPointProblem(data, **settings)
    problem.loss(problem.reconstruct(list(idx), weights.eta, weights.lambdas, warm_start=False)).backward()
    gradient = torch.cat([weights.log_eta.grad.reshape(1), weights.log_lambda.grad.reshape(-1)]).double()
    backward = problem.deq.backward_info
    return gradient, {"forward_steps": problem.forward_steps[-1], "backward_steps": None if backward is None else backward.nstep}


def finite_difference_hypergradient(data: NoiseRealisations, idx: Sequence[int], eta: float, lambdas, *, step: float = 3e-3,
                                    reference: dict | None = None, per_frame: bool = True) -> torch.Tensor:
    """The true hypergradient: central finite differences (``step`` on each log-parameter) of the MSE of ``idx`` at
    fixed points converged with ``reference`` (default: float64, relative residual 1e-11 within 20000 iterations).

    The MM map contracts slowly, so the fixed points must be converged far below the accuracy asked of the gradient:
    on a 16 x 16, 3-frame problem, differences of fixed points converged to 1e-9 (step 1e-3) were 8-30 % off in a
    component that those converged to 1e-11 reproduce to 0.02 % whatever the step (1e-2, 3e-3, 1e-3)."""
    weights = RegularisationWeights(data.n_frames, eta, lambdas, per_frame=per_frame)
    exact = FixedPointProblem(data, **{"tol": 1e-11, "max_iter": 20000, "dtype": torch.float64, **(reference or {})})
    base = _log_parameters(weights)

    def mse(theta: torch.Tensor) -> float:
        return exact.mse(list(idx), float(theta[0].exp()), theta[1:].exp().expand(data.n_frames), batch_size=len(idx), warm_start=False)

    fd = torch.zeros_like(base)
    for k in range(base.numel()):
        e = torch.zeros_like(base)
        e[k] = step
        fd[k] = (mse(base + e) - mse(base - e)) / (2 * step)
    return fd


def hypergradient_error(implicit: torch.Tensor, finite_difference: torch.Tensor, floor: float = 0.05) -> dict:
    """Relative error of an implicit hypergradient against the finite-difference one, per component and overall.

    A component's error is relative to its own size, or to ``floor`` times the largest component when it is smaller
    than that (a component 100 times smaller than the largest moves the learning by as little).

    Returns:
        ``{"component_rel_error": [...], "max_rel_error", "norm_rel_error", "cosine"}``.
    """
    fd = finite_difference.double()
    implicit = implicit.double()
    scale = torch.maximum(fd.abs(), floor * fd.abs().max())
    errors = (implicit - fd).abs() / scale
    return {
        "component_rel_error": errors.tolist(),
        "max_rel_error": float(errors.max()),
        "norm_rel_error": float((implicit - fd).norm() / fd.norm()),
        "cosine": float(torch.dot(implicit, fd) / (implicit.norm() * fd.norm())),
    }


def _trial_subset(train_idx: Sequence[int], trial_realisations: int | None) -> list[int]:
    train_idx = list(train_idx)
    if trial_realisations is None:
        return train_idx
    if int(trial_realisations) < 1:
        raise ValueError(f"trial_realisations must be a positive integer or None, got {trial_realisations}.")
    return train_idx[: int(trial_realisations)]


def _check_range(name: str, bounds: Sequence[float]) -> tuple[float, float]:
    low, high = (float(b) for b in bounds)
    if not 0 < low < high:
        raise ValueError(f"{name} must be (low, high) with 0 < low < high, got {tuple(bounds)}.")
    return low, high


def grid_search(
    problem: FixedPointProblem,
    train_idx: Sequence[int],
    *,
    eta_range: Sequence[float],
    lambda_range: Sequence[float],
    time_budget_s: float,
    batch_size: int = 16,
    trial_realisations: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> SearchResult:
    """Grid search of ``(eta, lambda)`` (scalar ``lambda``) on a log-spaced square grid sized to a time budget.

    Two probes at seeded random points of the box (cold start, then warm) measure the cost of a trial; the grid side
    is then ``n = floor(sqrt(remaining / cost))`` (at least 2) with the dearer of the two costs (a warm start from a
    close neighbour underestimates the steps across the grid, and a grid sized on it is left mostly unvisited). The
    grid's points are the centres of ``n x n`` equal log-cells of the box, visited row by row in a serpentine so that
    each trial warm-starts from a neighbour; trials stop once the budget is spent. Neither probe nor the first grid
    point is the box's geometric centre (where the DEQ starts), so the search does not begin at the DEQ's initial
    point; the probes are scored like every trial.

    Args:
        problem: the fixed-point problem.
        train_idx: realisations whose mean MSE is minimised.
        eta_range: ``(low, high)`` of ``eta``.
        lambda_range: ``(low, high)`` of ``lambda``.
        time_budget_s: compute budget in seconds (:class:`ComputeClock`).
        batch_size: realisations per solve.
        trial_realisations: score each trial on the first ``trial_realisations`` of ``train_idx`` only (more trials
            in the budget, as the DEQ's mini-batches); ``None`` for all.
        seed: seed of the two probes.
        log: called with a summary line.

    Returns:
        A :class:`SearchResult`; its ``history`` lists the trials in order, and the best one's index is
        ``best_trial_index(result)``.

    Raises:
        ValueError: invalid ranges or a non-positive budget.
    """
    eta_lo, eta_hi = _check_range("eta_range", eta_range)
    lam_lo, lam_hi = _check_range("lambda_range", lambda_range)
    if not time_budget_s > 0:
        raise ValueError(f"time_budget_s must be positive, got {time_budget_s}.")
    train_idx = _trial_subset(train_idx, trial_realisations)
    clock, trials = problem.clock(), []

    def trial(eta: float, lam: float) -> None:
        mse = problem.mse(train_idx, eta, lam, batch_size)
        trials.append({"eta": eta, "lambda": lam, "mse": mse, "seconds": clock.elapsed()})

    rng = np.random.default_rng(int(seed))
    for _ in range(2):
        u = rng.uniform(0.05, 0.95, size=2)  # log-uniform inside the box, away from its edges
        trial(float(eta_lo * (eta_hi / eta_lo) ** u[0]), float(lam_lo * (lam_hi / lam_lo) ** u[1]))
    cost = max(trials[0]["seconds"], trials[1]["seconds"] - trials[0]["seconds"], 1e-3)
    n = max(2, int(math.sqrt(max(time_budget_s - clock.elapsed(), 0.0) / cost)))
    etas, lams = _log_cell_centres(eta_lo, eta_hi, n), _log_cell_centres(lam_lo, lam_hi, n)
    for i, eta in enumerate(etas):
        for lam in lams if i % 2 == 0 else lams[::-1]:
            if clock.elapsed() >= time_budget_s:
                break
            trial(eta, lam)
    best = min(trials, key=lambda t: t["mse"])
    seconds = clock.elapsed()
    if log is not None:
        log(f"grid search: {len(trials)} trials ({n} x {n} grid and 2 probes), best MSE {best['mse']:.5f} (trial "
            f"{trials.index(best)}) at eta {best['eta']:.4g}, lambda {best['lambda']:.4g}, {seconds:.1f} s")
    return SearchResult("grid_search", 2, best["eta"], [best["lambda"]] * problem.data.n_frames, best["mse"], seconds,
                        len(trials), trials, wall_seconds=clock.wall())


def _log_cell_centres(low: float, high: float, n: int) -> list[float]:
    """Centres of ``n`` equal cells of ``[log low, log high]``, back in linear scale."""
    edges = np.linspace(math.log(low), math.log(high), int(n) + 1)
    return [float(v) for v in np.exp(0.5 * (edges[:-1] + edges[1:]))]


def best_trial_index(result: SearchResult) -> int:
    """Index (in trial order) of a search's best trial."""
    mses = [t["mse"] for t in result.history]
    return int(np.argmin(mses))


def tpe_search(
    problem: FixedPointProblem,
    train_idx: Sequence[int],
    *,
    eta_range: Sequence[float],
    lambda_range: Sequence[float],
    time_budget_s: float,
    batch_size: int = 16,
    trial_realisations: int | None = None,
    seed: int = 0,
    n_startup_trials: int = 5,
    log: Callable[[str], None] | None = None,
) -> SearchResult:
    """Search of ``(eta, lambda)`` (scalar ``lambda``) with Optuna's seeded TPE sampler (log-uniform priors), stopped
    when the budget is spent (checked after each trial, so the last trial completes).

    Arguments as :func:`grid_search`, plus ``seed`` and ``n_startup_trials`` (random trials before the Parzen
    estimators are used; Optuna's default of 10 would leave no modelled trial in a short budget) of
    ``optuna.samplers.TPESampler``.

    Raises:
        ValueError: invalid ranges or a non-positive budget.
    """
    import optuna

    eta_lo, eta_hi = _check_range("eta_range", eta_range)
    lam_lo, lam_hi = _check_range("lambda_range", lambda_range)
    if not time_budget_s > 0:
        raise ValueError(f"time_budget_s must be positive, got {time_budget_s}.")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    train_idx = _trial_subset(train_idx, trial_realisations)
    clock, trials = problem.clock(), []

    def objective(trial: optuna.Trial) -> float:
        eta = trial.suggest_float("eta", eta_lo, eta_hi, log=True)
        lam = trial.suggest_float("lambda", lam_lo, lam_hi, log=True)
        mse = problem.mse(train_idx, eta, lam, batch_size)
        trials.append({"eta": eta, "lambda": lam, "mse": mse, "seconds": clock.elapsed()})
        return mse

    def stop_when_spent(study: optuna.Study, _trial) -> None:
        if clock.elapsed() >= time_budget_s:
            study.stop()

    sampler = optuna.samplers.TPESampler(seed=int(seed), n_startup_trials=int(n_startup_trials))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(objective, callbacks=[stop_when_spent])
    best = min(trials, key=lambda t: t["mse"])
    seconds = clock.elapsed()
    if log is not None:
        log(f"TPE: {len(trials)} trials, best MSE {best['mse']:.5f} at eta {best['eta']:.4g}, lambda {best['lambda']:.4g}, {seconds:.1f} s")
    return SearchResult("tpe", 2, best["eta"], [best["lambda"]] * problem.data.n_frames, best["mse"], seconds, len(trials), trials,
                        wall_seconds=clock.wall())
