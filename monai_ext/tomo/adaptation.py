"""A bundle's acquisition geometry carried over to another image grid, and geometries compared and described.

A bundle is configured with one geometry (say 64 x 64 pixels of 4 mm, 5 views, 64 detector bins). A user's image
comes on its own grid (128 x 128 at 2 mm, or 0.7 x 0.7 mm). :func:`geometry_for_grid` gives the scan that the
bundle's geometry would be on that grid: the same views, and a *similar* set-up scaled to the new field of view.
Source and detector distances scale with the field of view (so the fan angle, hence a short scan's arc, is kept),
the detector pixel follows the image pixel (so the sampling ratio is kept), and the detector covers the new field
of view with the same margin as the bundle's covered its own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from .geometry import ConeBeamGeometry, FanBeamGeometry, ParallelBeamGeometry

__all__ = ["geometry_for_grid", "same_geometry", "describe_grid", "describe_geometry"]


def _sizes(pixel_size, ndim: int) -> tuple[float, ...]:
    values = [float(pixel_size)] * ndim if isinstance(pixel_size, (int, float)) else [float(v) for v in pixel_size]
    if len(values) != ndim or not all(v > 0 and math.isfinite(v) for v in values):
        raise ValueError(f"pixel_size must be {ndim} positive numbers of mm (array order), got {pixel_size!r}.")
    return tuple(values)


def _half_extent(geometry, radius: float) -> float:
    """Half the detector width (at the detector) that the rays tangent to a disc of ``radius`` reach."""
    if isinstance(geometry, ParallelBeamGeometry):
        return radius
    sod, sdd = geometry.source_to_center, geometry.source_to_detector
    return sdd * radius / math.sqrt(sod**2 - radius**2)


def _half_height(geometry: ConeBeamGeometry, radius: float, height: float) -> float:
    """Half the panel height that a cylinder of ``radius`` and ``height`` reaches (its rim nearest the source)."""
    return geometry.source_to_detector * 0.5 * height / (geometry.source_to_center - radius)


def _radius(shape: Sequence[int], size: Sequence[float]) -> float:
    """Half the largest in-plane extent: the detector must see the whole slice, corners aside."""
    return 0.5 * max(n * d for n, d in zip(shape[-2:], size[-2:]))


def geometry_for_grid(geometry, image_shape: Sequence[int], pixel_size) -> ParallelBeamGeometry | FanBeamGeometry | ConeBeamGeometry:
    """``geometry`` carried over to the image grid ``image_shape`` x ``pixel_size`` (mm, array order).

    The views are kept. Distances scale by the ratio of the fields of view; the detector pixel by the ratio of the
    in-plane (and, for a panel's rows, axial) pixel sizes; the number of detector pixels is what covers the new
    field of view with the margin the bundle's detector had. On the bundle's own grid the geometry is returned
    unchanged.

    Raises:
        ValueError: a grid of the wrong dimension or with non-positive sizes.
        TypeError: not a ``monai_ext.tomo`` geometry.
    """
    if not isinstance(geometry, (ParallelBeamGeometry, FanBeamGeometry, ConeBeamGeometry)):
        raise TypeError(f"not a monai_ext.tomo geometry: {type(geometry).__name__}.")
    ndim = geometry.ndim
    shape = tuple(int(n) for n in image_shape)
    if len(shape) != ndim or min(shape) < 1:
        raise ValueError(f"a {type(geometry).__name__} needs a {ndim}D grid of positive sizes, got {tuple(image_shape)}.")
    size = _sizes(pixel_size, ndim)
    if shape == geometry.image_shape and all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(size, geometry.pixel_size)):
        return geometry
    old_radius, new_radius = _radius(geometry.image_shape, geometry.pixel_size), _radius(shape, size)
    scale = new_radius / old_radius
    pixel_ratio = min(size[-2:]) / min(geometry.pixel_size[-2:])
    changes: dict = {"image_shape": shape, "pixel_size": size}
    if not isinstance(geometry, ParallelBeamGeometry):
        changes.update(source_to_center=geometry.source_to_center * scale, source_to_detector=geometry.source_to_detector * scale)
    scaled = dataclasses.replace(geometry, **{k: v for k, v in changes.items() if k not in ("image_shape", "pixel_size")})
    if isinstance(geometry, ConeBeamGeometry):
        rows, cols = geometry.det_shape
        dv, du = geometry.det_spacing
        margin_u = 0.5 * cols * du / _half_extent(geometry, geometry.fov_radius)
        margin_v = 0.5 * rows * dv / _half_height(geometry, geometry.fov_radius, geometry.image_shape[0] * geometry.pixel_size[0])
        new_du, new_dv = du * pixel_ratio, dv * size[0] / geometry.pixel_size[0]
        new_fov = 0.5 * min(n * d for n, d in zip(shape[-2:], size[-2:]))
        new_cols = math.ceil(margin_u * 2 * _half_extent(scaled, new_fov) / new_du - 1e-6)
        new_rows = math.ceil(margin_v * 2 * _half_height(scaled, new_fov, shape[0] * size[0]) / new_dv - 1e-6)
        changes.update(det_shape=(new_rows, new_cols), det_spacing=(new_dv, new_du),
                       det_offset=tuple(o * scale for o in geometry.det_offset))
    else:
        margin = 0.5 * geometry.n_det * geometry.det_spacing / _half_extent(geometry, old_radius)
        new_spacing = geometry.det_spacing * pixel_ratio
        changes.update(n_det=math.ceil(margin * 2 * _half_extent(scaled, new_radius) / new_spacing - 1e-6),
                       det_spacing=new_spacing, det_offset=geometry.det_offset * scale)
    return dataclasses.replace(geometry, **changes)


def same_geometry(a, b) -> bool:
    """Whether two geometries are of one type with equal fields (to 1e-6 relative)."""
    if type(a) is not type(b):
        return False
    fa, fb = dataclasses.asdict(a), dataclasses.asdict(b)
    for key in fa:
        va, vb = torch.as_tensor(fa[key], dtype=torch.float64), torch.as_tensor(fb[key], dtype=torch.float64)
        if va.shape != vb.shape or not torch.allclose(va, vb, rtol=1e-6, atol=1e-9):
            return False
    return True


def _mm(values: Sequence[float]) -> str:
    rounded = [f"{v:.4g}" for v in values]
    return f"{rounded[0]} mm" if len(set(rounded)) == 1 else " x ".join(rounded) + " mm"


def describe_grid(shape: Sequence[int], spacing: Sequence[float]) -> str:
    """``'128 x 128 at 2 mm'`` (array order)."""
    return f"{' x '.join(str(int(n)) for n in shape)} at {_mm(spacing)}"


def describe_geometry(geometry) -> str:
    """One line naming a geometry's grid, views and detector, for messages."""
    grid = describe_grid(geometry.image_shape, geometry.pixel_size)
    if isinstance(geometry, ConeBeamGeometry):
        detector = f"{geometry.det_shape[0]} x {geometry.det_shape[1]} panel of {_mm(geometry.det_spacing)}"
    else:
        detector = f"{geometry.n_det} detector bins of {_mm([geometry.det_spacing])}"
    kind = {ParallelBeamGeometry: "parallel beam", FanBeamGeometry: "fan beam", ConeBeamGeometry: "cone beam"}[type(geometry)]
    return f"{kind}: {grid}, {geometry.n_angles} views, {detector}"
