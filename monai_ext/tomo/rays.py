"""Rays of each geometry, and Joseph's sampling of an image along them.

Joseph's method (P. M. Joseph, IEEE TMI 1982) samples a ray once per image plane perpendicular to the axis along
which the ray advances fastest (its "driving" axis), interpolating linearly within each plane, and multiplies the
sum by the ray length per plane. Sampling at exactly those planes with ``grid_sample``'s (bi/tri)linear
interpolation reproduces Joseph's weights, and the adjoint is the exact transpose of the same interpolation.
"""

from __future__ import annotations

import math

import torch

from ..deprecation import renamed_keyword
from .geometry import ConeBeamGeometry, FanBeamGeometry, ParallelBeamGeometry

__all__ = ["geometry_rays", "joseph_samples"]


def _bin_centres(n: int, spacing: float, offset: float, dtype: torch.dtype) -> torch.Tensor:
    return (torch.arange(n, dtype=dtype) - 0.5 * (n - 1)) * spacing + offset


def _view_axes(angles: tuple[float, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    theta = torch.tensor(angles, dtype=dtype)
    e_u = torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)
    e_d = torch.stack([-torch.sin(theta), torch.cos(theta)], dim=-1)
    return e_u, e_d


@renamed_keyword("geom", "geometry")
def geometry_rays(geometry, dtype: torch.dtype = torch.float64, views: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins and unit directions of every ray, in ``(x, y)`` or ``(x, y, z)`` millimetres.

    Args:
        geometry: the acquisition geometry.
        dtype: floating-point dtype of the result.
        views: a slice of the view angles to compute the rays of (all views by default), so that callers can
            walk a large scan in chunks of views without holding every ray.

    Returns:
        ``(origins, directions)`` of shape ``(n_views, *detector_shape, ndim)``.
    """
    angles = geometry.angles if views is None else geometry.angles[views]
    e_u, e_d = _view_axes(angles, dtype)
    if isinstance(geometry, ParallelBeamGeometry):
        u = _bin_centres(geometry.n_det, geometry.det_spacing, geometry.det_offset, dtype)
        origins = u[None, :, None] * e_u[:, None, :]
        directions = e_d[:, None, :].expand_as(origins)
        return origins, directions.contiguous()
    if isinstance(geometry, FanBeamGeometry):
        u = _bin_centres(geometry.n_det, geometry.det_spacing, geometry.det_offset, dtype)
        source = -geometry.source_to_center * e_d[:, None, :]
        pixel = (geometry.source_to_detector - geometry.source_to_center) * e_d[:, None, :] + u[None, :, None] * e_u[:, None, :]
        directions = pixel - source
        return source.expand_as(directions).contiguous(), directions / directions.norm(dim=-1, keepdim=True)
    if isinstance(geometry, ConeBeamGeometry):
        (n_rows, n_cols), (dv, du), (ov, ou) = geometry.det_shape, geometry.det_spacing, geometry.det_offset
        u = _bin_centres(n_cols, du, ou, dtype)
        v = _bin_centres(n_rows, dv, ov, dtype)
        n_a = len(angles)
        centre = (geometry.source_to_detector - geometry.source_to_center) * e_d
        pixel_xy = centre[:, None, None, :] + u[None, None, :, None] * e_u[:, None, None, :]
        pixel = torch.cat([pixel_xy.expand(n_a, n_rows, n_cols, 2), v[None, :, None, None].expand(n_a, n_rows, n_cols, 1)], -1)
        source = torch.cat([-geometry.source_to_center * e_d, torch.zeros(n_a, 1, dtype=dtype)], -1)[:, None, None, :]
        directions = pixel - source
        return source.expand_as(directions).contiguous(), directions / directions.norm(dim=-1, keepdim=True)
    raise TypeError(f"geometry must be a ParallelBeamGeometry, FanBeamGeometry or ConeBeamGeometry, got {type(geometry).__name__}.")


def joseph_samples(
    origins: torch.Tensor, directions: torch.Tensor, image_shape: tuple[int, ...], pixel_size: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joseph sample points of each ray, normalised for ``grid_sample(..., align_corners=False)``.

    Args:
        origins: ``(R, D)`` a point on each ray, mm, coordinates ordered ``(x, y[, z])``.
        directions: ``(R, D)`` unit directions.
        image_shape: array shape ``(ny, nx)`` or ``(nz, ny, nx)``.
        pixel_size: matching pixel size in mm.

    Returns:
        ``(grid, weights)``: ``grid`` of shape ``(R, S, D)`` with ``S = max(image_shape)`` points per ray in
        ``grid_sample`` coordinates (``(x, y[, z])`` in ``[-1, 1]``), and ``weights`` ``(R,)``, the ray length per
        plane of its driving axis. Points past the image on a shorter axis fall outside ``[-1, 1]`` and read zero.
    """
    dims = origins.shape[-1]
    n = torch.tensor(image_shape[::-1], dtype=origins.dtype, device=origins.device)  # (x, y[, z]) order
    d = torch.tensor(pixel_size[::-1], dtype=origins.dtype, device=origins.device)
    steps_per_mm = directions.abs() / d
    axis = steps_per_mm.argmax(dim=-1, keepdim=True)  # driving axis of each ray
    o_a = origins.gather(-1, axis)
    dir_a = directions.gather(-1, axis)
    n_a, d_a = n[axis], d[axis]
    n_samples = max(image_shape)
    k = torch.arange(n_samples, dtype=origins.dtype, device=origins.device)
    planes = (k - 0.5 * (n_a - 1)) * d_a  # (R, S) plane positions along the driving axis
    t = (planes - o_a) / dir_a
    points = origins[:, None, :] + t[..., None] * directions[:, None, :]
    grid = points * (2.0 / (n * d))
    weights = (d_a / dir_a.abs()).squeeze(-1)
    if dims not in (2, 3):
        raise ValueError(f"rays must be 2D or 3D, got {dims} coordinates.")
    return grid, weights


def ray_count(geometry) -> int:
    """Number of rays (views x detector pixels) of a geometry."""
    det = (geometry.n_det,) if hasattr(geometry, "n_det") else geometry.det_shape
    return geometry.n_angles * math.prod(det)
