"""Blind estimation of the blur kernel of a PET volume on its 2x grid: sparse-gradient image, least-squares kernel.

The joint fit of an image prior and a kernel is drawn to the no-blur solution when the prior prefers smooth images
(Levin et al., CVPR 2009): a deep image prior (or TV) explains the blurred measurement best with a sharp kernel, and
the kernel collapses (the bundle's docs measure it). A prior that counts edges instead of weighing them, the L0 norm
of the image gradient, prefers the sharp image, so the blur goes into the kernel. This is the alternating scheme of
Pan, Hu, Su and Yang ("Deblurring text images via L0-regularized intensity and gradient prior", CVPR 2014; after
Xu, Lu, Xu and Jia, "Image smoothing via L0 gradient minimization", SIGGRAPH Asia 2011), on the supersampling model
``y = D(k * x)`` of :class:`~monai_ext.deconvolution.blind_deconvolution.BlurDownsample`:

- image step, ``min_x 1/2 |D(k * x) - y|^2 + w |grad x|_0`` by half-quadratic splitting: ``g`` = the gradient of
  ``x`` where its squared magnitude exceeds ``w / beta``, else 0; then ``x`` = the solution of the quadratic
  ``(A^T A + beta grad^T grad) x = A^T y + beta grad^T g`` (conjugate gradients); ``beta`` doubles each round;
- kernel step, ``min_k 1/2 |D(k * x) - y|^2 + s/2 |grad k|^2`` over the simplex (``k >= 0``, ``sum k = 1``), by
  accelerated projected gradient (FISTA with the exact Euclidean projection onto the simplex: Duchi et al., ICML
  2008); ``s`` is relative to the largest eigenvalue of ``A^T A`` in ``k``.

``y`` is divided by its maximum first, so ``gradient_weight`` does not depend on the unit. No floor, no parametric
shape: the kernel is free on its support (``support_mm``, default wide enough for a 10 mm FWHM Gaussian to 2.7
sigma). ``x`` keeps the margin of the valid convolution, so no boundary condition is assumed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..flags import as_flag
from ..operators.finite_differences import divergence, gradient
from ..phantoms.spheres import gaussian_kernel
from .blind_deconvolution import BlurDownsample, _moment_fwhm, _resample_to_image_grid, checked_volume

__all__ = ["KernelEstimationConfig", "KernelEstimate", "estimate_kernel", "project_to_simplex", "kernel_least_squares",
           "sparse_gradient_image", "kernel_size_for"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelEstimationConfig:
    """Settings of :func:`estimate_kernel`.

    Args:
        support_mm: the kernel's support in mm; the size in 2x voxels is the odd number covering it on each axis
            (:func:`kernel_size_for`).
        kernel_size: the size in 2x voxels instead (odd; overrides ``support_mm``).
        initial_fwhm_mm: FWHM of the Gaussian the kernel starts from (narrower than any PET PSF: the kernel widens).
        iterations: alternations of the image and kernel steps.
        gradient_weight: ``w`` of the L0 gradient prior, for ``y`` scaled to a maximum of 1.
        kernel_smoothness: ``s`` of the kernel's smoothness penalty, relative to ``||A||^2`` in ``k``.
        splitting_rounds: half-quadratic rounds per image step (``beta`` from ``2 w``, doubling).
        cg_iterations: conjugate-gradient iterations per round.
        kernel_iterations: FISTA iterations per kernel step.
        progress: show a progress bar.
    """

    support_mm: float = 20.0
    kernel_size: int | None = None
    initial_fwhm_mm: float = 3.0
    iterations: int = 10
    gradient_weight: float = 3e-4
    kernel_smoothness: float = 1e-4
    splitting_rounds: int = 6
    cg_iterations: int = 30
    kernel_iterations: int = 150
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "progress", as_flag(self.progress, "progress"))
        if self.kernel_size is not None and (int(self.kernel_size) < 1 or int(self.kernel_size) % 2 == 0):
            raise ValueError(f"kernel_size must be a positive odd number, got {self.kernel_size}.")
        for name in ("support_mm", "initial_fwhm_mm", "gradient_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        for name in ("iterations", "splitting_rounds", "cg_iterations", "kernel_iterations"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.kernel_smoothness < 0:
            raise ValueError(f"kernel_smoothness must be >= 0, got {self.kernel_smoothness}.")


@dataclass
class KernelEstimate:
    """Output of :func:`estimate_kernel`.

    Args:
        kernel: the kernel on the 2x grid ``(K, K, K)``, non-negative, summing to 1.
        image: the sparse-gradient image on the 2x grid with its margin ``(2N + K - 1)``, in the unit of the input.
        history: per iteration: ``{"iteration", "fwhm_voxels" (z, y, x, from second moments), "relative_residual"}``.
        seconds: wall time.
    """

    kernel: np.ndarray
    image: np.ndarray
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def kernel_size_for(support_mm: float, spacing) -> int:
    """The odd number of 2x voxels (half of ``spacing``, the finest axis) covering ``support_mm``.

    Example:
        >>> kernel_size_for(20.0, (2.8, 2.73, 2.73))
        15
    """
    step = min(float(s) for s in spacing) / 2.0
    size = int(np.ceil(float(support_mm) / step))
    return size + 1 if size % 2 == 0 else size


def project_to_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``v`` (any shape) onto ``{k >= 0, sum k = 1}`` (Duchi et al., ICML 2008).

    Example:
        >>> project_to_simplex(torch.tensor([0.5, 0.5, 1.0])).tolist()
        [0.25, 0.25, 0.75]
    """
    flat = v.reshape(-1)
    u, _ = torch.sort(flat, descending=True)
    excess = u.cumsum(0) - 1.0
    ranks = torch.arange(1, u.numel() + 1, dtype=v.dtype, device=v.device)
    rho = int((u - excess / ranks > 0).nonzero().max())
    return (flat - excess[rho] / (rho + 1)).clamp_min(0).reshape(v.shape)


def _conjugate_gradient(apply, b: torch.Tensor, x: torch.Tensor, iterations: int, tol: float = 1e-6) -> torch.Tensor:
    r = b - apply(x)
    p, rs = r.clone(), (r * r).sum()
    stop = (tol * b.norm()) ** 2
    for _ in range(int(iterations)):
        if rs <= stop:
            break
        ap = apply(p)
        alpha = rs / (p * ap).sum().clamp_min(torch.finfo(b.dtype).tiny)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum()
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


def _laplacian(v: torch.Tensor) -> torch.Tensor:
    """``grad^T grad v`` (``-div grad``)."""
    return -divergence(gradient(v))


def sparse_gradient_image(op: BlurDownsample, y: torch.Tensor, kernel: torch.Tensor, x: torch.Tensor, weight: float,
                          rounds: int = 6, cg_iterations: int = 30) -> torch.Tensor:
    """``argmin_x 1/2 |D(k * x) - y|^2 + weight |grad x|_0`` by half-quadratic splitting, from ``x``.

    Args:
        op: the blur-and-downsample operator.
        y: the measurement ``(1, 1, N...)``.
        kernel: ``(1, 1, K, K, K)``.
        x: the starting image ``(1, 1, 2N + K - 1 ...)``.
        weight: the L0 weight.
        rounds: splitting rounds (``beta`` = ``2 weight``, doubling each round).
        cg_iterations: conjugate-gradient iterations per round.
    """
    beta = 2.0 * float(weight)
    aty = op.adjoint(y, kernel)
    for _ in range(int(rounds)):
        g = gradient(x)
        g = g * ((g * g).sum(dim=2, keepdim=True) > weight / beta).to(g.dtype)
        rhs = aty - beta * divergence(g)
        x = _conjugate_gradient(lambda v: op.adjoint(op(v, kernel), kernel) + beta * _laplacian(v), rhs, x, cg_iterations)
        beta *= 2.0
    return x


def kernel_least_squares(op: BlurDownsample, x: torch.Tensor, y: torch.Tensor, kernel: torch.Tensor, smoothness: float = 1e-3,
                         iterations: int = 150) -> torch.Tensor:
    """``argmin_k 1/2 |D(k * x) - y|^2 + s/2 |grad k|^2`` over the simplex, by FISTA from ``kernel``.

    ``s`` = ``smoothness`` times the largest eigenvalue of ``A^T A`` (``A k = D(k * x)``, by 20 power iterations).
    """

    def forward(k: torch.Tensor) -> torch.Tensor:
        return op(x, k)

    def adjoint(r: torch.Tensor) -> torch.Tensor:
        probe = torch.zeros_like(kernel, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(op(x, probe), probe, r)
        return g

    generator = torch.Generator(device="cpu").manual_seed(0)
    v = torch.rand(kernel.shape, generator=generator, dtype=kernel.dtype).to(kernel.device)
    norm = 1.0
    for _ in range(20):
        v = adjoint(forward(v))
        norm = float(v.norm())
        v = v / norm
    s = float(smoothness) * norm
    step = 1.0 / (1.05 * norm + 12.0 * s)  # ||grad^T grad|| < 12 in 3D
    aty = adjoint(y)
    z, previous, t = kernel.clone(), kernel.clone(), 1.0
    for _ in range(int(iterations)):
        descent = adjoint(forward(z)) - aty + s * _laplacian(z)
        current = project_to_simplex(z - step * descent)
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        z = current + ((t - 1.0) / t_next) * (current - previous)
        previous, t = current, t_next
    return previous


def estimate_kernel(measured, spacing, config: KernelEstimationConfig | None = None, device: str | torch.device = "cpu") -> KernelEstimate:
    """Estimate the blur kernel of a PET volume on its 2x grid (module docstring).

    Args:
        measured: the PET volume ``(z, y, x)`` (non-negative, any unit).
        spacing: its voxel size in mm ``(z, y, x)``; the kernel lives on the 2x grid (half of it).
        config: settings.
        device: where to compute (float64).

    Raises:
        ValueError: a volume that is not 3D, smaller than 4 voxels per axis, not finite, negative or all zero.

    Example:
        >>> from monai_ext.phantoms.spheres import sphere_phantom
        >>> scan = sphere_phantom((12, 32, 32), ring_radius=26.0, cylinder_radius=40.0)
        >>> estimate = estimate_kernel(scan.measured, scan.spacing, KernelEstimationConfig(progress=False))
        >>> estimate.kernel.shape, round(float(estimate.kernel.sum()), 6)
        ((15, 15, 15), 1.0)
    """
    from tqdm.auto import tqdm

    config = config or KernelEstimationConfig()
    y = checked_volume(measured, np.float64)
    start = time.perf_counter()
    device = torch.device(device)
    size = int(config.kernel_size) if config.kernel_size is not None else kernel_size_for(config.support_mm, spacing)
    scale = float(y.max())
    target = torch.as_tensor(y / scale, dtype=torch.float64, device=device)[None, None]
    op = BlurDownsample(size)
    spacing_2x = np.asarray(spacing, float) / 2.0
    kernel = torch.as_tensor(gaussian_kernel(np.full(3, config.initial_fwhm_mm) / spacing_2x, size), dtype=torch.float64, device=device)[None, None]
    x = torch.as_tensor(_resample_to_image_grid(y / scale, size), dtype=torch.float64, device=device)[None, None]
    history = []
    with torch.no_grad():
        for it in tqdm(range(int(config.iterations)), desc="kernel estimation", disable=not config.progress, leave=False):
            x = sparse_gradient_image(op, target, kernel, x, config.gradient_weight, config.splitting_rounds, config.cg_iterations)
            kernel = kernel_least_squares(op, x, target, kernel, config.kernel_smoothness, config.kernel_iterations)
            residual = float((op(x, kernel) - target).norm() / target.norm())
            history.append({"iteration": it + 1, "fwhm_voxels": _moment_fwhm(kernel), "relative_residual": residual})
    seconds = time.perf_counter() - start
    logger.info(f"kernel estimation of {y.shape}: {config.iterations} iterations in {seconds:.1f} s, FWHM {history[-1]['fwhm_voxels']} 2x voxels")
    return KernelEstimate(kernel=kernel[0, 0].cpu().numpy().astype(np.float32), image=(x[0, 0].cpu().numpy() * scale).astype(np.float32),
                          history=history, seconds=seconds)
