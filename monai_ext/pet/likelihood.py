"""Poisson negative log-likelihood of PET data and its gradients.

For counts ``y`` and expected counts ``ybar = A x + b``:

.. math::

    L(y, \\bar y) = \\sum_i \\bar y_i - y_i \\log \\bar y_i \\; [+ \\log y_i!], \\qquad
    \\frac{\\partial L}{\\partial \\bar y_i} = 1 - \\frac{y_i}{\\bar y_i}, \\qquad
    \\nabla_x L = A^T \\left(1 - \\frac{y}{A x + b}\\right) = A^T 1 - A^T \\frac{y}{A x + b}.

``0 log 0 = 0`` (bins with ``y = 0`` contribute ``ybar`` whatever ``ybar``), and ``ybar`` is clamped from below at
``eps`` inside the logarithm and the ratio, so a bin with ``y > 0`` and ``ybar -> 0`` gives a large but finite
value (``y log(1/eps)``) rather than inf/NaN. With a positive background ``b`` the clamp is never active.
"""

from __future__ import annotations

import torch

__all__ = ["poisson_nll", "poisson_nll_gradient", "poisson_nll_image_gradient", "DEFAULT_EPS"]

DEFAULT_EPS = 1e-9
_REDUCTIONS = ("sum", "mean", "none", "per_sinogram")


def poisson_nll(
    y: torch.Tensor, ybar: torch.Tensor, *, reduction: str = "sum", include_constant: bool = False, eps: float = DEFAULT_EPS
) -> torch.Tensor:
    """Poisson negative log-likelihood ``sum(ybar - y log ybar)`` (+ ``log y!`` when ``include_constant``).

    Args:
        y: measured counts (non-negative; need not be integers), any shape.
        ybar: expected counts, broadcastable with ``y``.
        reduction: ``"sum"`` (a scalar), ``"mean"``, ``"none"`` (per bin) or ``"per_sinogram"`` (summed over all but the
            first two axes: one value per ``(batch, frame)`` of a ``(B, C, ...)`` tensor).
        include_constant: add ``lgamma(y + 1)``, making the value the exact negative log-probability.
        eps: lower clamp of ``ybar`` (counts) in the logarithm.

    Raises:
        ValueError: an unknown ``reduction``, or ``"per_sinogram"`` on a tensor with fewer than 3 axes.

    Example:
        >>> poisson_nll(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 2.0]))
        tensor(1.6137)
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
    value = ybar - torch.xlogy(y, ybar.clamp_min(eps))
    if include_constant:
        value = value + torch.lgamma(y + 1.0)
    if reduction == "sum":
        return value.sum()
    if reduction == "mean":
        return value.mean()
    if reduction == "per_sinogram":
        if value.ndim < 3:
            raise ValueError(f"reduction='per_sinogram' needs (B, C, ...) tensors, got shape {tuple(value.shape)}.")
        return value.flatten(2).sum(-1)
    return value


def poisson_nll_gradient(y: torch.Tensor, ybar: torch.Tensor, *, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``dL/dybar = 1 - y / max(ybar, eps)``, per bin (exactly 1 where ``y = 0``)."""
    return 1.0 - y / ybar.clamp_min(eps)


def poisson_nll_image_gradient(model, x: torch.Tensor, y: torch.Tensor, *, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """``grad_x L = A^T (1 - y / (A x + b))`` for a system model with ``expected_counts`` and ``adjoint``
    (``PETSystemModel``); one forward and one adjoint projection."""
    model.check_sinogram("y", y)
    return model.adjoint(poisson_nll_gradient(y, model.expected_counts(x), eps=eps))
