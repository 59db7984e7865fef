"""The TV weight of each projection count and noise setting, tuned on validation volumes (``tune.json``)."""

from __future__ import annotations

from functools import partial

from monai_ext.data import cbct_geometry, cbct_scans
from monai_ext.solvers import tune_weight, variational_solution
from monai_ext.tomo import ConeBeamProjector

__all__ = ["tune_tv"]


def tune_tv(views: int, i0: float | None, *, volume_shape, voxel_size: float, det_shape, scan: str, n_val: int, tv_iterations: int,
            tv_grid, refine: int, device=None) -> tuple[float, list[dict]]:
    """``tune_weight`` of TV (PDHG, ``tv_iterations``) on ``n_val`` validation scans at ``views`` projections and
    ``i0`` (``None``: noise-free); returns ``(best weight, table)``."""
    geometry = cbct_geometry(views, volume_shape, voxel_size, det_shape, scan)
    scans = cbct_scans("validation", n_val, geometry, i0)
    solve = partial(variational_solution, operator=ConeBeamProjector(geometry), method="tv", n_iter=tv_iterations, device=device)
    return tune_weight(solve, scans.projections, scans.volumes, tv_grid, refine, batch_size=1)
