"""Joseph's projector of a 2D geometry as an explicit sparse matrix.

The matrix holds exactly the operator of :class:`~monai_ext.tomo.RayProjector` (Joseph's sampling of ``rays.py``):
ray ``r`` is sampled once per image plane along its driving axis, each sample splits between the two nearest pixels
of that plane by linear interpolation (zero outside the image), and the row is scaled by the ray length per plane,

.. math::

    A_{r, j} = w_r \\sum_{k} \\big[(1 - f_{rk})\\,\\delta_{j, p_{rk}} + f_{rk}\\,\\delta_{j, p_{rk} + 1}\\big].
"""

from __future__ import annotations

import warnings

import torch

from ..deprecation import renamed_keyword
from .geometry import ConeBeamGeometry
from .rays import geometry_rays, joseph_samples

__all__ = ["joseph_matrix"]


@renamed_keyword("geom", "geometry")
def joseph_matrix(geometry, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The Joseph system matrix of a 2D geometry as a sparse COO tensor ``(n_rays, n_pixels)``, coalesced.

    Rows follow the projection layout ``(n_angles, n_det)`` flattened; columns the image ``(ny, nx)`` flattened.

    Args:
        geometry: a 2D ``ParallelBeamGeometry`` or ``FanBeamGeometry``.
        dtype: dtype of the entries.

    Raises:
        NotImplementedError: for a 3D (cone-beam) geometry.

    Example:
        >>> from monai_ext.tomo import ParallelBeamGeometry, uniform_angles
        >>> geometry = ParallelBeamGeometry((16, 16), 1.0, uniform_angles(8), n_det=23)
        >>> joseph_matrix(geometry).shape
        torch.Size([184, 256])
    """
    if isinstance(geometry, ConeBeamGeometry) or len(geometry.image_shape) != 2:
        raise NotImplementedError(f"joseph_matrix supports 2D geometries only, got {type(geometry).__name__}.")
    ny, nx = (int(n) for n in geometry.image_shape)
    origins, directions = geometry_rays(geometry, torch.float64)
    origins, directions = origins.reshape(-1, 2), directions.reshape(-1, 2)
    grid, weights = joseph_samples(origins, directions, (ny, nx), tuple(geometry.pixel_size))
    # grid_sample(align_corners=False) coordinates -> continuous pixel indices (column, row)
    col = ((grid[..., 0] + 1.0) * nx - 1.0) / 2.0
    row = ((grid[..., 1] + 1.0) * ny - 1.0) / 2.0
    c0, r0 = torch.floor(col), torch.floor(row)
    fc, fr = col - c0, row - r0
    n_rays, n_samples = grid.shape[:2]
    ray = torch.arange(n_rays)[:, None].expand(n_rays, n_samples)
    rows, cols, values = [], [], []
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        r, c = r0 + dr, c0 + dc
        keep = (r >= 0) & (r < ny) & (c >= 0) & (c < nx) & (w > 1e-12)
        rows.append(ray[keep])
        cols.append((r[keep] * nx + c[keep]).long())
        values.append((w * weights[:, None])[keep])
    with warnings.catch_warnings():  # torch notes that sparse invariant checks are off by default
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_coo_tensor(
            torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(values).to(dtype), (n_rays, ny * nx)
        )
        return matrix.coalesce()
