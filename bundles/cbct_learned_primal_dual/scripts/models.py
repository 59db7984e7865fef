"""Which trained weights serve a method at a projection count."""

from __future__ import annotations

import os

__all__ = ["weights_file"]


def weights_file(name: str, weights_dir: str, n_views: int) -> str:
    """``<weights_dir>/<name>_<n_views>.pt`` when the method was trained at that projection count, else the
    50-projection weights ``<weights_dir>/<name>.pt``."""
    own = os.path.join(weights_dir, f"{name}_{int(n_views)}.pt")
    return own if os.path.isfile(own) else os.path.join(weights_dir, f"{name}.pt")
