"""Cone-beam projection of volumes held in host memory, computed slab by slab on another device.

For a scan larger than the accelerator's memory (a 512^3 volume with 720 views of a 1024 x 768 panel is 0.5 GB of
volume and 2.3 GB of projections in float32, before any working memory) the volume stays on the host. It is
cut into slabs of z planes; each slab, with the next plane as a halo, is copied to the compute device once, and
the rays of the detector rows that can reach it are sampled there with ``grid_sample``, view chunk by view chunk
within the projector's memory budget. Each Joseph sample is counted by exactly one slab, the one holding the
lower of its two z neighbours (the first slab also takes samples below the volume), so the slabs' sums are the
whole operator and the adjoint is its exact transpose.

Only the projections of the current chunk of views and rows, and one slab, are on the device at a time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .geometry import ConeBeamGeometry
from .rays import geometry_rays, joseph_samples

__all__ = ["slab_ranges", "slab_grid", "rows_reaching", "stream_cone"]


def slab_ranges(nz: int, plane_bytes: int, budget: int) -> list[tuple[int, int]]:
    """z ranges ``[z0, z1)`` of slabs of at most ``budget`` bytes with their halo plane (at least one plane)."""
    per = max(1, budget // max(1, plane_bytes) - 1)
    return [(z0, min(nz, z0 + per)) for z0 in range(0, nz, per)]


def slab_grid(grid: torch.Tensor, nz: int, z0: int, z1: int) -> torch.Tensor:
    """``grid_sample`` coordinates ``(..., 3)`` of a whole volume of ``nz`` planes, recast to the slab of planes
    ``z0 .. min(nz, z1 + 1) - 1`` (``[z0, z1)`` and its halo plane).

    A sample belongs to the slab holding the lower of its two z neighbours (the first slab also takes samples whose
    lower neighbour is below the volume); the others are moved far outside, where they read and write nothing. So
    each sample is counted by exactly one slab, and the slabs' results add up to the whole volume's.
    """
    top = min(nz, z1 + 1)
    iz = ((grid[..., 2] + 1.0) * nz - 1.0) * 0.5
    lower = torch.floor(iz)
    keep = (lower >= (z0 if z0 > 0 else -1)) & (lower < z1)
    local = grid.clone()
    local[..., 2] = torch.where(keep, (2.0 * (iz - z0) + 1.0) / (top - z0) - 1.0, -3.0)
    return local


def rows_reaching(geometry: ConeBeamGeometry, z_lo: float, z_hi: float) -> tuple[int, int]:
    """Detector rows ``[r0, r1)`` whose rays can pass through heights ``[z_lo, z_hi]`` (mm) inside the volume.

    A ray to row height ``v`` is at height ``v * lambda`` a fraction ``lambda`` of the way to the panel; inside the
    volume's bounding cylinder (radius ``R``) ``lambda`` lies in ``[(sod - R) / D, (sod + R) / sdd]``, with ``D`` the
    longest source-to-pixel distance in the plane. A superset is enough: rows that miss the slab add work, not
    error.
    """
    (n_rows, n_cols), (dv, du), (ov, ou) = geometry.det_shape, geometry.det_spacing, geometry.det_offset
    _, ny, nx = geometry.image_shape
    _, dy, dx = geometry.pixel_size
    radius = math.hypot(0.5 * nx * dx, 0.5 * ny * dy)
    sod, sdd = geometry.source_to_center, geometry.source_to_detector
    if sod <= radius:  # the source inside the cylinder: any row may reach any height
        return 0, n_rows
    u_max = 0.5 * n_cols * du + abs(ou)
    lam_min, lam_max = (sod - radius) / math.hypot(sdd, u_max), (sod + radius) / sdd
    v = (torch.arange(n_rows, dtype=torch.float64) - 0.5 * (n_rows - 1)) * dv + ov
    v_lo, v_hi = v - 0.5 * dv, v + 0.5 * dv  # the row's extent, a margin against rounding
    ends = torch.stack([v_lo * lam_min, v_lo * lam_max, v_hi * lam_min, v_hi * lam_max])
    reach = (ends.max(0).values >= z_lo) & (ends.min(0).values <= z_hi)
    idx = torch.nonzero(reach).flatten()
    if idx.numel() == 0:
        return 0, 0
    return int(idx.min()), int(idx.max()) + 1


def stream_cone(op, flat: torch.Tensor, adjoint: bool, device: torch.device) -> torch.Tensor:
    """``A`` or ``A^T`` of ``flat`` (``(C, *image_shape)`` or ``(C, n_rays)``, on the host) computed on ``device``.

    Args:
        op: a cone-beam :class:`~monai_ext.tomo.RayProjector` (its geometry and memory budget are used).
        flat: the volumes (forward) or projections (adjoint), channels first, on the host.
        adjoint: compute ``A^T`` instead of ``A``.
        device: where the sampling runs.

    Returns:
        projections ``(C, n_rays)`` or volumes ``(C, *image_shape)`` on ``flat``'s device.
    """
    geometry = op.geometry
    nz, ny, nx = geometry.image_shape
    dz = geometry.pixel_size[0]
    n_ch, dtype, item = flat.shape[0], flat.dtype, flat.element_size()
    n_views, (n_rows, n_cols) = geometry.n_angles, geometry.det_shape
    budget = op.memory_budget
    slabs = slab_ranges(nz, n_ch * ny * nx * item, budget // 4)
    n_samples = max(geometry.image_shape)
    per_ray = n_samples * op._sample_bytes(n_ch, dtype) + 48
    rays_per_chunk = max(1, (budget // 2) // per_ray)
    if adjoint:
        out = torch.zeros(n_ch, nz, ny, nx, dtype=dtype, device=flat.device)
        proj = flat.reshape(n_ch, n_views, n_rows, n_cols)
    else:
        out = torch.zeros(n_ch, n_views, n_rows, n_cols, dtype=dtype, device=flat.device)
    for z0, z1 in slabs:
        top = min(nz, z1 + 1)
        depth = top - z0
        centre = 0.5 * (nz - 1)
        r0, r1 = rows_reaching(geometry, (z0 - 1 - centre) * dz, (top - centre) * dz)
        if r1 <= r0:
            continue
        if adjoint:
            slab = torch.zeros(1, n_ch, depth, ny, nx, dtype=dtype, device=device)
        else:
            slab = flat[:, z0:top].to(device)[None]
        views_per_chunk = max(1, rays_per_chunk // ((r1 - r0) * n_cols))
        rows_per_chunk = max(1, min(r1 - r0, rays_per_chunk // n_cols))
        for v0 in range(0, n_views, views_per_chunk):
            v1 = min(n_views, v0 + views_per_chunk)
            origins, directions = geometry_rays(geometry, torch.float64, slice(v0, v1))
            for a in range(r0, r1, rows_per_chunk):
                b = min(r1, a + rows_per_chunk)
                o = origins[:, a:b].reshape(-1, 3).to(device)
                d = directions[:, a:b].reshape(-1, 3).to(device)
                grid, weights = joseph_samples(o, d, geometry.image_shape, geometry.pixel_size)
                del o, d
                g = slab_grid(grid, nz, z0, z1).to(dtype)[None, None]
                w = weights.to(dtype)
                del grid
                shape = (n_ch, v1 - v0, b - a, n_cols)
                if adjoint:
                    values = proj[:, v0:v1, a:b].reshape(n_ch, -1).to(device) * w
                    grad_out = values[..., None].expand(n_ch, g.shape[2], g.shape[3]).reshape(1, n_ch, *g.shape[1:-1]).contiguous()
                    grad_in, _ = torch.ops.aten.grid_sampler_3d_backward(grad_out, slab, g, 0, 0, False, [True, False])
                    slab += grad_in
                    del grad_in, grad_out, values
                else:
                    samples = F.grid_sample(slab, g, mode="bilinear", padding_mode="zeros", align_corners=False)
                    part = samples.reshape(n_ch, g.shape[2], -1).sum(-1) * w
                    out[:, v0:v1, a:b] += part.reshape(shape).to(flat.device)
                    del samples, part
                del g, w
        if adjoint:
            out[:, z0:top] += slab[0].to(flat.device)
        del slab
    return out.reshape(n_ch, -1) if not adjoint else out
