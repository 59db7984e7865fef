"""Differentiable line integrals of a field along the rays of a cone-beam geometry.

The rays are those of the projectors (``monai_ext.tomo.rays.geometry_rays``: origin at the source, unit
direction towards each panel pixel centre), clipped to the volume box ``[-h, h]`` (``h = n d / 2`` per axis), the
support of the voxel image that the Joseph projector integrates. Along the clipped segment ``[t0, t1]`` of length
``L`` the integral is the midpoint-type quadrature of ``S`` stratified samples (Mildenhall et al. 2020, NeRF):

``integral_{t0}^{t1} mu(o + t d) dt  ~=  (L / S) sum_{i<S} mu(o + (t0 + (i + u_i) L / S) d)``,

with ``u_i ~ U(0, 1)`` while fitting (an unbiased estimate) and ``u_i = 1/2`` for a deterministic render (the
composite midpoint rule).
"""

from __future__ import annotations

import torch

from monai_ext.tomo.geometry import ConeBeamGeometry
from monai_ext.tomo.rays import geometry_rays

from ..deprecation import renamed_keyword
from .fields import box_half_widths

__all__ = ["ray_box_intersection", "ConeBeamRays", "render_line_integrals", "render_projections"]


def ray_box_intersection(origins: torch.Tensor, directions: torch.Tensor, half_widths) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances ``(t0, t1)`` of rays through the box ``[-h, h]^3`` (slab method); ``t1 = t0`` on a miss.

    Args:
        origins: ``(R, 3)`` mm.
        directions: ``(R, 3)`` unit directions.
        half_widths: ``(hx, hy, hz)`` mm.
    """
    half = torch.as_tensor(half_widths, dtype=origins.dtype, device=origins.device)
    safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    a = (-half - origins) / safe
    b = (half - origins) / safe
    t0 = torch.minimum(a, b).amax(dim=-1).clamp_min(0.0)
    t1 = torch.maximum(a, b).amin(dim=-1)
    return t0, torch.maximum(t1, t0)


class ConeBeamRays:
    """Every ray of a cone-beam geometry, flattened in projection order ``(view, row, col)``, clipped to the box.

    Args:
        geometry: the scan's ``ConeBeamGeometry`` (its image grid defines the box).
        device: where the ray tensors live.
        dtype: their precision.

    Raises:
        TypeError: ``geometry`` is not a ``ConeBeamGeometry``.
    """

    @renamed_keyword("geom", "geometry")
    def __init__(self, geometry: ConeBeamGeometry, device=None, dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(geometry, ConeBeamGeometry):
            raise TypeError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}.")
        self.geometry = geometry
        origins, directions = geometry_rays(geometry, torch.float64)
        origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
        t0, t1 = ray_box_intersection(origins, directions, box_half_widths(geometry.image_shape, geometry.pixel_size))
        self.origins = origins.to(device=device, dtype=dtype)
        self.directions = directions.to(device=device, dtype=dtype)
        self.t0, self.t1 = t0.to(device=device, dtype=dtype), t1.to(device=device, dtype=dtype)

    @property
    def geom(self):
        """Deprecated name of ``geometry``, kept for one release."""
        return self.geometry

    def __len__(self) -> int:
        return self.origins.shape[0]

    @property
    def projection_shape(self) -> tuple[int, int, int]:
        return self.geometry.projection_shape

    def select(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(origins, directions, t0, t1)`` of the rays ``index`` (flat indices)."""
        index = index.to(self.origins.device)
        return self.origins[index], self.directions[index], self.t0[index], self.t1[index]


def render_line_integrals(
    field,
    origins: torch.Tensor,
    directions: torch.Tensor,
    t0: torch.Tensor,
    t1: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Line integrals ``(R,)`` of ``field`` over ``[t0, t1]`` of each ray (module docstring's quadrature).

    Args:
        field: callable ``(N, 3) mm -> (N,)``.
        origins, directions, t0, t1: rays as returned by :meth:`ConeBeamRays.select`.
        n_samples: ``S``, samples per ray.
        generator: CPU generator of the stratified offsets ``u_i`` (``None``: midpoints, deterministic).

    Raises:
        ValueError: ``n_samples`` < 1.
    """
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}.")
    n_rays, s = origins.shape[0], int(n_samples)
    if generator is None:
        u = torch.full((n_rays, s), 0.5, dtype=origins.dtype, device=origins.device)
    else:
        u = torch.rand((n_rays, s), generator=generator, dtype=origins.dtype).to(origins.device)
    length = (t1 - t0)[:, None]
    t = t0[:, None] + (torch.arange(s, dtype=origins.dtype, device=origins.device) + u) * (length / s)
    points = origins[:, None, :] + t[..., None] * directions[:, None, :]
    values = field(points.reshape(-1, 3)).reshape(n_rays, s)
    return values.sum(dim=1) * (length[:, 0] / s)


def render_projections(field, rays: ConeBeamRays, n_samples: int, chunk: int = 8192) -> torch.Tensor:
    """Render every ray of ``rays`` (midpoint rule, no gradients); returns ``(1, 1, n_views, rows, cols)``."""
    out = []
    with torch.no_grad():
        for start in range(0, len(rays), int(chunk)):
            index = torch.arange(start, min(len(rays), start + int(chunk)))
            out.append(render_line_integrals(field, *rays.select(index), n_samples))
    return torch.cat(out).reshape(1, 1, *rays.projection_shape)
