"""Classical PET reconstruction: MLEM and OSEM, optionally post-filtered.

MLEM (Shepp and Vardi 1982; Lange and Carson 1984) maximises the Poisson log-likelihood of ``y ~ Poisson(A x + b)``
with the multiplicative update

.. math::

    x^{k+1} = \\frac{x^k}{A^T 1} \\, A^T \\frac{y}{A x^k + b},

which keeps ``x >= 0`` and increases the likelihood at every iteration. OSEM (Hudson and Larkin 1994) applies the
same update to ordered subsets of views in turn, each subset using its own projector (``PETSystemModel.view_subset``)
and sensitivity image; one OSEM iteration is one pass over the data, about as costly as one MLEM iteration, and
moves about as far as ``n_subsets`` MLEM iterations. Pixels with zero sensitivity are set to zero.

All frames and batch elements of a ``(B, T, ...)`` input are reconstructed together, in the same projector calls.

The model is any non-negative linear operator (:class:`monai_ext.operators.LinearOperator`): a ``PETSystemModel``,
a CT projector, a composition. OSEM needs one that can be restricted to a subset of views (``view_subset``, with
its views along ``view_axis`` of the data): ``PETSystemModel`` and the ``monai_ext.tomo`` projectors.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch

from ..operators import LinearOperator, check_measurements
from ..operators.checks import check_batched
from .likelihood import DEFAULT_EPS, poisson_nll
from .system_model import GaussianPSF, PETSystemModel, take_views

__all__ = ["ReconInfo", "mlem", "osem"]


@dataclasses.dataclass(frozen=True)
class ReconInfo:
    """Record of an MLEM/OSEM run.

    Args:
        algorithm: ``"mlem"`` or ``"osem"``.
        n_iter: iterations (passes over the data) performed.
        n_subsets: subsets of views per iteration (1 for MLEM).
        log_likelihood: Poisson log-likelihood ``sum(y log ybar - ybar)`` (without ``log y!``) summed over the batch,
            of the initial image (entry 0) and after each iteration (entry ``k``); empty when not computed.
        log_likelihood_per_sinogram: the same per ``(batch, frame)``, shape ``(n_iter + 1, B, C)``, float64.
        elapsed_s: wall time of the run in seconds.
    """

    algorithm: str
    n_iter: int
    n_subsets: int
    log_likelihood: list[float]
    log_likelihood_per_sinogram: torch.Tensor
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for loggers and JSON."""
        out = dataclasses.asdict(self)
        out["log_likelihood_per_sinogram"] = self.log_likelihood_per_sinogram.tolist()
        return out


def mlem(
    y: torch.Tensor,
    model: LinearOperator,
    n_iter: int = 50,
    *,
    x0: torch.Tensor | None = None,
    background: torch.Tensor | None = None,
    post_filter_fwhm: float = 0.0,
    compute_likelihood: bool = True,
    eps: float = DEFAULT_EPS,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, ReconInfo]:
    """Maximum-likelihood expectation maximisation.

    Args:
        y: counts ``(B, C, *out_shape)``, non-negative and finite; ``C`` is free (frames).
        model: the system model ``A``, any non-negative ``LinearOperator`` (a ``PETSystemModel``'s ``background`` is
            used unless ``background`` is given).
        n_iter: iterations.
        x0: positive initial image ``(B, C, *image_shape)``; default: uniform, matching the total counts.
        background: expected background ``b`` (counts), overriding ``model.background``.
        post_filter_fwhm: FWHM in mm of a Gaussian post-filter of the returned image (0: none); needs a model with a
            pixel size (``pixel_size`` or ``geometry.pixel_size``).
        compute_likelihood: record the log-likelihood per iteration (free for MLEM but one extra projection).
        eps: lower clamp of ``A x + b`` in the ratio ``y / (A x + b)``.
        callback: called as ``callback(k, x)`` after iteration ``k`` (1-based).
        progress: print one line per iteration.

    Returns:
        ``(x, info)``: the image ``(B, C, *image_shape)`` and a ``ReconInfo``.

    Raises:
        ValueError: ``y`` of the wrong shape, negative or non-finite; a negative ``x0``; ``n_iter`` < 0; a post-filter
            for a model without a pixel size.

    Example:
        >>> x, info = mlem(counts, model, n_iter=50, post_filter_fwhm=5.0)
        >>> info.log_likelihood[-1] > info.log_likelihood[0]
        True
    """
    return _expectation_maximisation(
        y, model, n_iter, 1, x0, background, post_filter_fwhm, compute_likelihood, eps, callback, progress, "mlem"
    )


def osem(
    y: torch.Tensor,
    model: LinearOperator,
    n_iter: int = 10,
    n_subsets: int = 8,
    *,
    x0: torch.Tensor | None = None,
    background: torch.Tensor | None = None,
    post_filter_fwhm: float = 0.0,
    compute_likelihood: bool = True,
    eps: float = DEFAULT_EPS,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, ReconInfo]:
    """Ordered-subsets EM over ``n_subsets`` interleaved subsets of views (subset ``s`` holds views
    ``s, s + n_subsets, ...``); arguments as ``mlem``. The log-likelihood, when asked for, costs one full forward
    projection per iteration.

    Raises:
        ValueError: as ``mlem``, and ``n_subsets`` outside ``[1, n_views]``.
        TypeError: ``n_subsets > 1`` for a model without ``view_subset``.
    """
    return _expectation_maximisation(
        y, model, n_iter, n_subsets, x0, background, post_filter_fwhm, compute_likelihood, eps, callback, progress, "osem"
    )


def _expectation_maximisation(
    y, model, n_iter, n_subsets, x0, background, post_filter_fwhm, compute_likelihood, eps, callback, progress, name
):
    start = time.perf_counter()
    check_measurements(model, y, "y")
    if (y < 0).any():
        raise ValueError(f"y must be non-negative counts, got a minimum of {float(y.min())}.")
    if int(n_iter) != n_iter or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter}.")
    if n_subsets != 1 and not hasattr(model, "view_subset"):
        raise TypeError(f"OSEM with n_subsets={n_subsets} needs a model with view_subset (a PETSystemModel or a tomo projector), got {type(model).__name__}.")
    view_axis = getattr(model, "view_axis", -2)
    n_views = model.out_shape[view_axis] if hasattr(model, "view_subset") else 1
    if int(n_subsets) != n_subsets or not 1 <= n_subsets <= n_views:
        raise ValueError(f"n_subsets must be an integer in [1, {n_views}], got {n_subsets}.")
    pixel_size = getattr(model, "pixel_size", None) or getattr(getattr(model, "geometry", None), "pixel_size", None)
    if post_filter_fwhm > 0 and pixel_size is None:
        raise ValueError(f"post_filter_fwhm={post_filter_fwhm} mm needs the pixel size, which {type(model).__name__} does not have.")
    if background is None:
        b = getattr(model, "background", None)
    elif isinstance(model, PETSystemModel):
        b = model.check_sinogram_factor("background", background)
    else:
        if not isinstance(background, torch.Tensor) or (background < 0).any():
            raise ValueError("background must be a non-negative tensor broadcastable to y.")
        try:
            torch.broadcast_shapes(background.shape, y.shape)
        except RuntimeError as err:
            raise ValueError(f"background of shape {tuple(background.shape)} does not broadcast to y {tuple(y.shape)}.") from err
        b = background.detach()
    b = torch.zeros((), dtype=y.dtype, device=y.device) if b is None else b.to(device=y.device, dtype=y.dtype)

    with torch.no_grad():
        subsets = [torch.arange(s, n_views, n_subsets) for s in range(n_subsets)]
        models = [model] if n_subsets == 1 else [model.view_subset(idx) for idx in subsets]
        ys = [y] if n_subsets == 1 else [take_views(y, idx, view_axis) for idx in subsets]
        bs = [b] if n_subsets == 1 or b.ndim == 0 else [take_views(b, idx, view_axis) for idx in subsets]
        bs = bs * (n_subsets // len(bs))
        tiny = torch.finfo(y.dtype).tiny
        subset_sens = [_sensitivity(m, y) for m in models]
        inverse_sens = [torch.where(s > 0, 1.0 / s.clamp_min(tiny), torch.zeros_like(s)) for s in subset_sens]

        if x0 is None:  # uniform inside the sensitive region, with sum(A x0) = sum(y)
            sens = sum(subset_sens).expand(*y.shape[:2], *model.image_shape)
            level = y.flatten(2).sum(-1) / sens.flatten(2).sum(-1).clamp_min(tiny)
            x = level.reshape(*level.shape, *(1,) * len(model.image_shape)) * (sens > 0).to(y.dtype)
        else:
            check_batched("x0", x0, model.in_shape, f"this {type(model).__name__}")
            if (x0 < 0).any():
                raise ValueError(f"x0 must be non-negative, got a minimum of {float(x0.min())}.")
            x = x0.to(device=y.device, dtype=y.dtype).clone()

        def log_likelihood(ybar: torch.Tensor) -> torch.Tensor:
            return -poisson_nll(y.double(), ybar.double(), reduction="per_sinogram", eps=eps)

        history = []
        if compute_likelihood and n_subsets > 1:
            history.append(log_likelihood(model(x) + b))
        for k in range(1, int(n_iter) + 1):
            for m, ys_s, b_s, inv in zip(models, ys, bs, inverse_sens):
                ybar = m(x) + b_s
                if compute_likelihood and n_subsets == 1:
                    history.append(log_likelihood(ybar))
                x = x * m.adjoint(ys_s / ybar.clamp_min(eps)) * inv
            if compute_likelihood and n_subsets > 1:
                history.append(log_likelihood(model(x) + b))
            if callback is not None:
                callback(k, x)
            if progress:
                note = f", log-likelihood {float(history[-1].sum()):.9e}" if history else ""
                print(f"{name} iteration {k}/{n_iter}{note}", flush=True)
        if compute_likelihood and n_subsets == 1:
            history.append(log_likelihood(model(x) + b))
        if post_filter_fwhm > 0:
            x = GaussianPSF(post_filter_fwhm, pixel_size, spatial_dims=len(model.image_shape))(x)

    per_sinogram = torch.stack(history).cpu() if history else torch.zeros(0, *y.shape[:2], dtype=torch.float64)
    info = ReconInfo(
        algorithm=name,
        n_iter=int(n_iter),
        n_subsets=int(n_subsets),
        log_likelihood=[float(v) for v in per_sinogram.flatten(1).sum(-1)],
        log_likelihood_per_sinogram=per_sinogram,
        elapsed_s=time.perf_counter() - start,
    )
    return x, info


def _sensitivity(model, y: torch.Tensor) -> torch.Tensor:
    """``A^T 1`` in ``y``'s dtype: the PET model's own (from its float64 factors), else the adjoint of ones."""
    if isinstance(model, PETSystemModel):
        return model.sensitivity().to(device=y.device, dtype=y.dtype)
    return model.adjoint(torch.ones((1, 1, *model.out_shape), dtype=y.dtype, device=y.device))
