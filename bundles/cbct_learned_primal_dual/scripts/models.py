"""Which trained weights serve a method at a projection count."""

from __future__ import annotations

import os

__all__ = ["weights_file"]


def weights_file(name: str, weights_dir: str, n_views: int, model_method: str | None = None) -> str:
    """``<weights_dir>/<name>_<n_views>.pt`` when the method was trained at that projection count, else the
    50-projection weights: ``<weights_dir>/model.pt`` for the default network ``model_method`` (the Model Zoo's
    file), ``<weights_dir>/<name>.pt`` for the others (``monai_ext.workflows.weights_name``)."""
    from monai_ext.workflows import weights_name

    own = os.path.join(weights_dir, f"{name}_{int(n_views)}.pt")
    return own if os.path.isfile(own) else os.path.join(weights_dir, weights_name(name, model_method))
