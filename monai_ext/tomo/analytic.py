"""Analytic reconstruction: filtered backprojection (parallel and fan beam) and FDK (circular cone beam).

Reconstructed values are in the units of the imaged object (``1/mm`` when the projections are line integrals in
``mm x 1/mm``), so ``fbp(A x) ~ x``.

References:
    A. C. Kak and M. Slaney, *Principles of Computerized Tomographic Imaging*, IEEE Press 1988, ch. 3
    (discrete ramp filter, fan-beam flat-detector reconstruction).
    L. A. Feldkamp, L. C. Davis and J. W. Kress, "Practical cone-beam algorithm", JOSA A 1(6), 1984.
    D. L. Parker, "Optimal short scan convolution reconstruction for fan beam CT", Med. Phys. 9(2), 1982.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..deprecation import renamed_keyword
from .geometry import ConeBeamGeometry, FanBeamGeometry, ParallelBeamGeometry
from .projectors import DEFAULT_MEMORY_BUDGET, all_finite

__all__ = ["FILTERS", "ramp_filter", "filter_projections", "parker_weights", "fbp", "fdk", "FBP"]

logger = logging.getLogger(__name__)

FILTERS = ("ramp", "shepp-logan", "cosine", "hann")
_VIEW_BUDGET = 2**20  # backprojection grid points per chunk of views


def ramp_filter(n: int, spacing: float, window: str = "ramp", dtype=torch.float64, device=None) -> torch.Tensor:
    """Frequency response (``rfft`` layout) of the band-limited ramp filter for ``n`` detector bins.

    The spatial ramp of Kak and Slaney (``h[0] = 1 / (4 tau^2)``, ``h[k odd] = -1 / (pi k tau)^2``), zero-padded to
    at least ``2 n`` to avoid wrap-around, times ``tau`` (the convolution's quadrature) and an apodisation window.

    Args:
        n: number of detector bins along the filtered axis.
        spacing: bin spacing ``tau`` in mm.
        window: one of ``FILTERS``.

    Returns:
        ``(n_pad // 2 + 1,)`` real tensor; use with ``torch.fft.rfft(..., n=n_pad)``, ``n_pad = 2 * (len - 1)``.
    """
    if window not in FILTERS:
        raise ValueError(f"window must be one of {FILTERS}, got {window!r}.")
    n_pad = max(64, int(2 ** math.ceil(math.log2(2 * n))))
    k = np.concatenate([np.arange(0, n_pad // 2 + 1), np.arange(-n_pad // 2 + 1, 0)])
    h = np.zeros(n_pad)
    h[0] = 1.0 / (4.0 * spacing**2)
    odd = k % 2 == 1
    h[odd] = -1.0 / (np.pi * k[odd] * spacing) ** 2
    response = np.real(np.fft.rfft(h)) * spacing
    f = np.fft.rfftfreq(n_pad)  # cycles per bin, 0 .. 0.5
    if window == "shepp-logan":
        response = response * np.sinc(f)
    elif window == "cosine":
        response = response * np.cos(np.pi * f)
    elif window == "hann":
        response = response * 0.5 * (1.0 + np.cos(2.0 * np.pi * f))
    return torch.as_tensor(response, dtype=dtype, device=device)


def filter_projections(p: torch.Tensor, spacing: float, window: str = "ramp", oversample: int = 1) -> torch.Tensor:
    """Ramp-filter ``p`` along its last axis (detector columns) with bin spacing ``spacing`` (mm).

    Args:
        p: projections, filtered along the last axis.
        spacing: bin spacing in mm.
        window: apodisation, one of ``FILTERS``.
        oversample: return the filtered signal band-limited-interpolated on a grid ``oversample`` times finer
            (sample ``m`` at bin position ``m / oversample``), so that the linear interpolation of the
            backprojection adds less blur.

    Returns:
        ``(..., n * oversample)`` filtered projections.
    """
    if int(oversample) < 1:
        raise ValueError(f"oversample must be a positive integer, got {oversample}.")
    n = p.shape[-1]
    response = ramp_filter(n, spacing, window, dtype=p.dtype, device=p.device)
    n_pad = 2 * (response.shape[0] - 1)
    spectrum = torch.fft.rfft(p, n=n_pad, dim=-1) * response
    fine = torch.fft.irfft(spectrum, n=n_pad * int(oversample), dim=-1) * int(oversample)
    return fine[..., : n * int(oversample)]


def _detector_grid(pos: torch.Tensor, n: int, spacing: float, offset: float, oversample: int) -> torch.Tensor:
    """``grid_sample`` coordinate of detector position ``pos`` (mm) on an ``oversample``-times finer grid."""
    idx = oversample * ((pos - offset) / spacing + 0.5 * (n - 1))
    return (2 * idx + 1) / (n * oversample) - 1


def _on_circle(angles: tuple[float, ...], period: float) -> tuple[np.ndarray, np.ndarray]:
    """The angles taken modulo ``period`` and sorted on that circle: their order, and the gap after each sorted
    angle (the last one's across the wrap-around)."""
    a = np.mod(np.asarray(angles, dtype=np.float64), period)
    order = np.argsort(a, kind="stable")
    s = a[order]
    return order, np.diff(np.concatenate([s, [s[0] + period]]))


def _angular_weights(angles: tuple[float, ...], period: float) -> torch.Tensor:
    """Quadrature weight of each view for an integral over angles of period ``period``.

    The angles are taken modulo ``period`` (``pi`` for parallel beam, where ``theta`` and ``theta + pi`` are the
    same line; ``2 pi`` for a full divergent scan) and sorted on that circle; each view gets half of the gaps to
    its two neighbours, the first and last included across the wrap-around. The weights sum to ``period`` for any
    angle set (random, incomplete, repeated), so a missing view widens its neighbours' share instead of scaling
    the image.
    """
    order, gaps = _on_circle(angles, period)
    w = np.empty_like(gaps)
    w[order] = 0.5 * (gaps + np.roll(gaps, 1))
    return torch.as_tensor(w)


def _short_scan_weights(angles: tuple[float, ...]) -> torch.Tensor:
    """Quadrature weights of an open arc (short scan, before Parker weighting): each view half of its gaps, the
    two end views one whole gap (the arc's ends belong to them)."""
    a = np.asarray(angles, dtype=np.float64)
    if a.size == 1:
        return torch.tensor([math.pi], dtype=torch.float64)
    order = np.argsort(a, kind="stable")
    gaps = np.diff(a[order])
    w_sorted = np.empty(a.size)
    w_sorted[1:-1] = 0.5 * (gaps[:-1] + gaps[1:])
    w_sorted[0], w_sorted[-1] = gaps[0], gaps[-1]
    w = np.empty_like(w_sorted)
    w[order] = w_sorted
    return torch.as_tensor(w)


def parker_weights(angles: tuple[float, ...], u, source_to_detector: float) -> torch.Tensor:
    """Parker's short-scan redundancy weights ``w(beta, gamma)`` of shape ``(n_angles, len(u))`` (float64).

    ``beta`` is measured from the first angle, ``gamma = atan(u / sdd)`` is the fan angle of column ``u``; the scan
    must cover at least ``pi + 2 max|gamma|``. Weights of the two measurements of one line sum to 1.

    The weights depend on the geometry alone, so they are computed with numpy from the column positions ``u`` (an
    array, or a tensor of constants): a network that holds an FDK step then exports (``torch.export``) without a
    data-dependent branch.
    """
    beta = np.asarray(angles, dtype=np.float64)
    beta = (beta - beta.min())[:, None]
    u = u.detach().cpu().numpy() if isinstance(u, torch.Tensor) else np.asarray(u)
    gamma = np.arctan(u.astype(np.float64) / source_to_detector)[None, :]
    delta = 0.5 * (float(beta.max()) - math.pi)  # half of the over-scan beyond pi
    if delta < float(np.abs(gamma).max()) - 1e-6:
        raise ValueError(
            f"the scan covers {math.degrees(float(beta.max())):.1f} degrees, less than 180 + fan angle "
            f"({math.degrees(math.pi + 2 * float(np.abs(gamma).max())):.1f}): not enough data for a short-scan FDK."
        )
    w = np.ones_like(beta * gamma)
    rise = beta < 2 * (delta - gamma)
    fall = beta > math.pi - 2 * gamma
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(rise, np.sin(0.25 * math.pi * beta / np.maximum(delta - gamma, 1e-12)) ** 2, w)
        w = np.where(fall, np.sin(0.25 * math.pi * (math.pi + 2 * delta - beta) / np.maximum(delta + gamma, 1e-12)) ** 2, w)
    return torch.from_numpy(np.clip(w, 0.0, 1.0))


def _circular_gaps(angles: tuple[float, ...], period: float) -> np.ndarray:
    """Gaps between neighbouring angles on the circle of length ``period``, sorted in decreasing order."""
    return np.sort(_on_circle(angles, period)[1])[::-1]


def _is_short_scan(angles: tuple[float, ...]) -> bool:
    """A divergent scan is a short scan (one arc, Parker-weighted) when one unmeasured arc stands out: wider than
    30 degrees and more than three times the next widest gap. Views around the full turn, uniform, random or
    with a few missing, have no such single gap (their largest gaps are of one size)."""
    gaps = _circular_gaps(angles, 2 * math.pi)
    if gaps.size < 2:
        return False
    return bool(gaps[0] > math.pi / 6 and gaps[0] > 3.0 * gaps[1])


def _fbp_parallel(sino: torch.Tensor, geometry: ParallelBeamGeometry, window: str, oversample: int) -> torch.Tensor:
    q = filter_projections(sino, geometry.det_spacing, window, oversample)
    weights = _angular_weights(geometry.angles, math.pi).to(q)
    theta = torch.tensor(geometry.angles, dtype=q.dtype, device=q.device)
    (ny, nx), (dy, dx), n_det = geometry.image_shape, geometry.pixel_size, geometry.n_det
    b, c, n_views = q.shape[:3]
    views = q.permute(2, 0, 1, 3).reshape(n_views, b * c, 1, q.shape[-1])
    # grid coordinate of u = x cos + y sin, split into its x and y terms so one broadcast add builds the grid
    scale = 2.0 * oversample / (geometry.det_spacing * n_det * oversample)
    shift = _detector_grid(torch.zeros((), dtype=q.dtype), n_det, geometry.det_spacing, geometry.det_offset, oversample)
    xs = (torch.arange(nx, dtype=q.dtype, device=q.device) - 0.5 * (nx - 1)) * dx * scale
    ys = (torch.arange(ny, dtype=q.dtype, device=q.device) - 0.5 * (ny - 1)) * dy * scale
    out = q.new_zeros(b * c, ny, nx)
    step = max(1, _VIEW_BUDGET // (ny * nx))
    buffer = q.new_zeros(min(step, n_views), ny, nx, 2)  # reused: fresh large allocations cost page faults
    for s in range(0, n_views, step):
        th = theta[s : s + step]
        grid = buffer[: th.shape[0]]
        torch.add((torch.cos(th)[:, None] * xs)[:, None, :], (torch.sin(th)[:, None] * ys)[:, :, None], out=grid[..., 0])
        grid[..., 0] += shift
        vals = F.grid_sample(views[s : s + step], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out += torch.einsum("vcij,v->cij", vals, weights[s : s + step])
    return out.reshape(b, c, ny, nx)


_ANNOUNCED_SHORT_SCANS: set = set()


def _fdk_divergent(
    proj: torch.Tensor, geometry, window: str, short_scan: bool | None, oversample: int, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> torch.Tensor:
    """FDK on projections ``(B, C, views, rows, cols)``; fan beam is the one-row, one-slice case.

    Works within ``memory_budget`` bytes beyond the input and the output: views are weighted and filtered chunk by
    chunk, and each chunk is backprojected slab by slab of z planes.
    """
    cone = isinstance(geometry, ConeBeamGeometry)
    sod, sdd = geometry.source_to_center, geometry.source_to_detector
    if cone:
        (n_rows, n_cols), (dv, du), (ov, ou) = geometry.det_shape, geometry.det_spacing, geometry.det_offset
        nz, ny, nx = geometry.image_shape
        dz, dy, dx = geometry.pixel_size
    else:
        n_rows, n_cols, dv, du, ov, ou = 1, geometry.n_det, 1.0, geometry.det_spacing, 0.0, geometry.det_offset
        (ny, nx), (dy, dx), nz, dz = geometry.image_shape, geometry.pixel_size, 1, 1.0
    dtype, device = proj.dtype, proj.device
    u = (torch.arange(n_cols, dtype=dtype, device=device) - 0.5 * (n_cols - 1)) * du + ou
    v = (torch.arange(n_rows, dtype=dtype, device=device) - 0.5 * (n_rows - 1)) * dv + ov if cone else u.new_zeros(1)
    # cosine pre-weighting, then the ramp along columns on the virtual detector through the axis
    pre = sdd / torch.sqrt(sdd**2 + u[None, :] ** 2 + v[:, None] ** 2)
    if short_scan is None:
        short_scan = _is_short_scan(geometry.angles)
        if short_scan and geometry.angles not in _ANNOUNCED_SHORT_SCANS:  # once per angle set, not at every call
            _ANNOUNCED_SHORT_SCANS.add(geometry.angles)
            gap = _circular_gaps(geometry.angles, 2 * math.pi)[0]
            logger.info(
                "angles cover %.1f degrees (largest unmeasured arc %.1f): short scan, Parker weights applied "
                "(pass short_scan=False to forbid).",
                math.degrees(2 * math.pi - gap),
                math.degrees(gap),
            )
    redundancy = None
    if short_scan:
        # Parker's gamma grows against our direction of rotation: column u has gamma = -atan(u / sdd)
        np_dtype = np.float32 if dtype == torch.float32 else np.float64  # the columns as the image's dtype gives them
        columns = (np.arange(n_cols, dtype=np_dtype) - np_dtype(0.5 * (n_cols - 1))) * np_dtype(du) + np_dtype(ou)
        redundancy = parker_weights(geometry.angles, -columns, sdd).to(proj)  # (views, cols)
        view_w = _short_scan_weights(geometry.angles).to(proj)
    else:
        view_w = 0.5 * _angular_weights(geometry.angles, 2 * math.pi).to(proj)  # each line measured twice
    b, c, n_views = proj.shape[:3]
    bc, item = b * c, proj.element_size()
    theta = torch.tensor(geometry.angles, dtype=dtype, device=device)
    xs = (torch.arange(nx, dtype=dtype, device=device) - 0.5 * (nx - 1)) * dx
    ys = (torch.arange(ny, dtype=dtype, device=device) - 0.5 * (ny - 1)) * dy
    zs = (torch.arange(nz, dtype=dtype, device=device) - 0.5 * (nz - 1)) * dz if cone else xs.new_zeros(1)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    xx, yy = xx.reshape(1, 1, -1), yy.reshape(1, 1, -1)
    n_xy = ny * nx
    out = proj.new_zeros(bc, nz, n_xy)
    # views filtered at once: their padded complex spectra (~8x the chunk) within a quarter of the budget
    n_pad = 2 * max(64, int(2 ** math.ceil(math.log2(2 * n_cols)))) * int(oversample)
    per_view = bc * n_rows * (n_pad * 2 * item + n_cols * item * (2 + int(oversample)))
    filter_step = max(1, min(n_views, (memory_budget // 4) // max(1, per_view)))
    # backprojection: coordinates (2 values), samples (one per channel) and their weighted sum per point, in half
    # the budget; several views at once while they and the whole volume make at most 2^20 points, else one view
    # and slabs of z planes
    per_point = item * (4 + 2 * bc)
    step = max(1, min(filter_step, _VIEW_BUDGET // (nz * n_xy), (memory_budget // 2) // max(1, nz * n_xy * per_point)))
    slab = max(1, min(nz, (memory_budget // 2) // max(1, step * n_xy * per_point)))
    buffer = proj.new_zeros(step * slab * n_xy * 2)  # reused: fresh large allocations cost page faults
    for f in range(0, n_views, filter_step):
        chunk = slice(f, min(n_views, f + filter_step))
        p = proj[:, :, chunk] * pre
        if redundancy is not None:
            p = p * redundancy[chunk, None, :]
        q = filter_projections(p, du * sod / sdd, window, oversample)
        del p
        filtered = q.permute(2, 0, 1, 3, 4).reshape(q.shape[2], bc, n_rows, q.shape[-1])
        del q
        for s in range(0, filtered.shape[0], step):
            views = filtered[s : s + step]
            n_v, first = views.shape[0], f + s
            th = theta[first : first + n_v, None, None]
            cos, sin = torch.cos(th), torch.sin(th)
            along = -xx * sin + yy * cos  # x . e_d, (v, 1, nxy)
            across = xx * cos + yy * sin  # x . e_u
            mag = sdd / (sod + along)
            col = _detector_grid(across * mag, n_cols, du, ou, oversample)  # (v, 1, nxy)
            weight = ((sod / (sod + along)) ** 2 * view_w[first : first + n_v, None, None])[:, 0]  # (v, nxy)
            for z0 in range(0, nz, slab):
                z1 = min(nz, z0 + slab)
                grid = buffer[: n_v * (z1 - z0) * n_xy * 2].view(n_v, z1 - z0, n_xy, 2)
                grid[..., 0] = col
                if cone:
                    grid[..., 1] = _detector_grid(zs[z0:z1].reshape(1, -1, 1) * mag, n_rows, dv, ov, 1)
                vals = F.grid_sample(views, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
                out[:, z0:z1] += torch.einsum("vczn,vn->czn", vals, weight)
                del vals
    shape = (nz, ny, nx) if cone else (ny, nx)
    return out.reshape(b, c, *shape)


def _check_projections(p: torch.Tensor, geometry) -> None:
    expected = geometry.projection_shape if isinstance(geometry, ConeBeamGeometry) else geometry.sinogram_shape
    if not isinstance(p, torch.Tensor) or p.ndim != 2 + len(expected) or tuple(p.shape[2:]) != tuple(expected):
        got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
        raise ValueError(f"projections must have shape (B, C, {', '.join(map(str, expected))}), got {got}.")
    if not all_finite(p):
        raise ValueError("projections contain non-finite values (NaN or inf).")


def fbp(
    sinogram: torch.Tensor,
    geometry: ParallelBeamGeometry | FanBeamGeometry,
    window: str = "ramp",
    short_scan: bool | None = None,
    oversample: int = 1,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """Filtered backprojection of ``(B, C, n_angles, n_det)`` sinograms; returns ``(B, C, ny, nx)``.

    Parallel beam: ``f(x) = sum_theta w_theta (p_theta * h)(x . e_u)``. Fan beam (flat detector): the weighted
    FBP of Kak and Slaney, with Parker weights when the scan covers less than a full turn (``short_scan=None``
    detects it from the angles).

    Args:
        sinogram: line integrals, ``(B, C, n_angles, n_det)``.
        geometry: the acquisition geometry.
        window: apodisation of the ramp, one of ``FILTERS``.
        short_scan: force (True) or forbid (False) Parker weighting for fan beam; ``None`` decides from the angles.
        oversample: filtered projections are interpolated on a grid this many times finer than the detector
            before the (linear) backprojection lookup.
        memory_budget: bytes of working memory beyond the input and output (fan beam: views are filtered and
            backprojected in chunks that fit it).

    The views' quadrature weights hold for any angle set: parallel-beam angles are taken modulo pi (theta and
    theta + pi are one line) and a full fan-beam scan's modulo 2 pi, each view weighted by half the gaps to its
    neighbours on that circle, so the weights sum to pi (2 pi, halved, for a full fan scan) whether the angles
    are uniform, random or incomplete.
    """
    _check_projections(sinogram, geometry)
    if isinstance(geometry, ParallelBeamGeometry):
        return _fbp_parallel(sinogram, geometry, window, oversample)
    if isinstance(geometry, FanBeamGeometry):
        return _fdk_divergent(sinogram[:, :, :, None, :], geometry, window, short_scan, oversample, memory_budget)
    raise TypeError(f"fbp needs a ParallelBeamGeometry or FanBeamGeometry, got {type(geometry).__name__}; use fdk for cone beam.")


def fdk(
    projections: torch.Tensor,
    geometry: ConeBeamGeometry,
    window: str = "ramp",
    short_scan: bool | None = None,
    oversample: int = 1,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """FDK reconstruction of ``(B, C, n_angles, rows, cols)`` cone-beam projections; returns ``(B, C, nz, ny, nx)``.

    Cosine pre-weighting, ramp filtering along detector rows on the virtual detector through the axis, and
    voxel-driven backprojection with the ``(sod / (sod + x . e_d))^2`` distance weight; Parker weights for a short
    scan (e.g. 205 degrees; ``short_scan=None`` decides from the angles, and says so in the log). Views are
    filtered and backprojected in chunks of views and z slabs that fit ``memory_budget`` bytes beyond the input
    and the output.
    """
    if not isinstance(geometry, ConeBeamGeometry):
        raise TypeError(f"fdk needs a ConeBeamGeometry, got {type(geometry).__name__}.")
    _check_projections(projections, geometry)
    return _fdk_divergent(projections, geometry, window, short_scan, oversample, memory_budget)


class FBP(torch.nn.Module):
    """Analytic reconstruction as a module: FBP for parallel/fan beam, FDK for cone beam.

    Args:
        geometry: acquisition geometry.
        window: ramp apodisation, one of ``FILTERS``.
    """

    @renamed_keyword("geom", "geometry")
    def __init__(self, geometry, window: str = "ramp") -> None:
        super().__init__()
        if window not in FILTERS:
            raise ValueError(f"window must be one of {FILTERS}, got {window!r}.")
        self.geometry, self.window = geometry, window

    @property
    def geom(self):
        """Deprecated name of ``geometry``, kept for one release."""
        return self.geometry

    def with_geometry(self, geometry) -> FBP:
        """The same reconstruction (window) for another ``geometry``."""
        return type(self)(geometry, self.window)

    def forward(self, projections: torch.Tensor) -> torch.Tensor:
        if isinstance(self.geometry, ConeBeamGeometry):
            return fdk(projections, self.geometry, self.window)
        return fbp(projections, self.geometry, self.window)
