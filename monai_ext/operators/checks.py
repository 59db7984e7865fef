"""Input checks shared by every operator: shape ``(B, C, *shape)``, floating point, finite values."""

from __future__ import annotations

import torch

__all__ = ["all_finite", "check_finite", "check_batched", "exporting"]


def exporting() -> bool:
    """Whether the code runs under ``torch.jit.trace``, ``torch.export`` or ``torch.compile``: a graph is being
    recorded, so data-dependent Python control flow (a check that reads a value) cannot run."""
    return bool(torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.compiler.is_compiling())


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` holds no NaN and no infinity, without a tensor-sized mask: its maximum and minimum are
    finite exactly then (both propagate NaN). While a graph is recorded (:func:`exporting`) the value cannot be
    read, and the check is left out of the exported program (it answers True)."""
    if tensor.numel() == 0 or not tensor.is_floating_point() or exporting():
        return True
    return bool(torch.isfinite(tensor.amax()) & torch.isfinite(tensor.amin()))


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` when ``tensor`` holds a NaN or an infinity."""
    if not all_finite(tensor):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf).")


def check_batched(name: str, tensor, shape: tuple[int, ...] | None, what: str = "this operator") -> None:
    """Raise a clear error unless ``tensor`` is a finite floating-point ``(B, C, *shape)`` tensor.

    Args:
        name: what the tensor is called in the message (``"x"``, ``"projections"``).
        tensor: the tensor to check.
        shape: the expected spatial shape; ``None`` checks only that there are a batch and a channel axis.
        what: what expects the shape, for the message (``"this geometry"``).

    Raises:
        TypeError: not a floating-point tensor.
        ValueError: the wrong shape, or NaN/inf values.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}.")
    if shape is not None and (tensor.ndim != 2 + len(shape) or tuple(tensor.shape[2:]) != tuple(shape)):
        raise ValueError(f"{name} must have shape (B, C, {', '.join(map(str, shape))}) for {what}, got {tuple(tensor.shape)}.")
    if shape is None and tensor.ndim < 3:
        raise ValueError(f"{name} must have shape (B, C, *spatial), got {tuple(tensor.shape)}.")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}.")
    check_finite(name, tensor)
