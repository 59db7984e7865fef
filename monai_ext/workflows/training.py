"""Named functions for training configs, where a config would otherwise hold a Python lambda.

Configs build them with ``"_mode_": "callable"`` and keyword arguments (a ``functools.partial``), e.g.::

    "loss": {"_target_": "monai_ext.workflows.scaled_mse_loss", "_mode_": "callable", "scale": "@image_scale"}
    "iteration_log": {"_target_": "monai_ext.workflows.every_n_iterations", "_mode_": "callable", "n": 100}
"""

from __future__ import annotations

import torch

__all__ = ["scaled_mse_loss", "every_n_iterations"]


def scaled_mse_loss(prediction: torch.Tensor, reference: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``mean((prediction - reference)^2) / scale^2``: the mean squared error in units of a typical image value
    ``scale`` (attenuation images of ~0.02/mm give losses of order one)."""
    return torch.nn.functional.mse_loss(prediction, reference) / scale**2


def every_n_iterations(engine, event: int, n: int = 100) -> bool:
    """An ignite event filter (``StatsHandler(iteration_log=...)``): true on every ``n``-th iteration."""
    return event % int(n) == 0
