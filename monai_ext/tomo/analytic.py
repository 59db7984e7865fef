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

import math

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import ConeBeamGeometry, FanBeamGeometry, ParallelBeamGeometry

__all__ = ["FILTERS", "ramp_filter", "filter_projections", "parker_weights", "fbp", "fdk", "FBP"]

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


def _angular_weights(angles: tuple[float, ...], full_turn_halves: bool) -> torch.Tensor:
    """Quadrature weight of each view: half the distance to its neighbours (sorted), halved for a full turn."""
    a = np.asarray(angles, dtype=np.float64)
    if a.size == 1:
        return torch.tensor([math.pi], dtype=torch.float64)
    order = np.argsort(a)
    s = a[order]
    gaps = np.diff(s)
    span = s[-1] - s[0] + np.median(gaps)
    w_sorted = np.empty_like(s)
    w_sorted[1:-1] = 0.5 * (gaps[:-1] + gaps[1:])
    w_sorted[0], w_sorted[-1] = gaps[0], gaps[-1]
    if abs(span - 2 * math.pi) < 1e-3 * 2 * math.pi:  # uniform over a full turn: wrap-around neighbours
        w_sorted[0] = w_sorted[-1] = 0.5 * (gaps[0] + gaps[-1])
    w = np.empty_like(w_sorted)
    w[order] = w_sorted
    if full_turn_halves and span > 1.5 * math.pi:
        w = w * (math.pi / span)  # every line measured twice over 2 pi (or proportionally for over-scans)
    return torch.as_tensor(w)


def parker_weights(angles: tuple[float, ...], u: torch.Tensor, source_to_detector: float) -> torch.Tensor:
    """Parker's short-scan redundancy weights ``w(beta, gamma)`` of shape ``(n_angles, len(u))``.

    ``beta`` is measured from the first angle, ``gamma = atan(u / sdd)`` is the fan angle of column ``u``; the scan
    must cover at least ``pi + 2 max|gamma|``. Weights of the two measurements of one line sum to 1.
    """
    beta = torch.as_tensor(angles, dtype=torch.float64)
    beta = (beta - beta.min())[:, None]
    gamma = torch.atan(u.to(torch.float64) / source_to_detector)[None, :]
    delta = 0.5 * (float(beta.max()) - math.pi)  # half of the over-scan beyond pi
    if delta < float(gamma.abs().max()) - 1e-6:
        raise ValueError(
            f"the scan covers {math.degrees(float(beta.max())):.1f} degrees, less than 180 + fan angle "
            f"({math.degrees(math.pi + 2 * float(gamma.abs().max())):.1f}): not enough data for a short-scan FDK."
        )
    w = torch.ones_like(beta * gamma)
    rise = beta < 2 * (delta - gamma)
    fall = beta > math.pi - 2 * gamma
    w = torch.where(rise, torch.sin(0.25 * math.pi * beta / (delta - gamma).clamp_min(1e-12)) ** 2, w)
    w = torch.where(fall, torch.sin(0.25 * math.pi * (math.pi + 2 * delta - beta) / (delta + gamma).clamp_min(1e-12)) ** 2, w)
    return w.clamp(0.0, 1.0)


def _is_short_scan(angles: tuple[float, ...]) -> bool:
    a = np.sort(np.asarray(angles))
    if a.size < 2:
        return False
    return (a[-1] - a[0] + np.median(np.diff(a))) < 2 * math.pi * (1 - 1e-3)


def _fbp_parallel(sino: torch.Tensor, geom: ParallelBeamGeometry, window: str, oversample: int) -> torch.Tensor:
    q = filter_projections(sino, geom.det_spacing, window, oversample)
    weights = _angular_weights(geom.angles, full_turn_halves=True).to(q)
    theta = torch.tensor(geom.angles, dtype=q.dtype, device=q.device)
    (ny, nx), (dy, dx), n_det = geom.image_shape, geom.pixel_size, geom.n_det
    b, c, n_views = q.shape[:3]
    views = q.permute(2, 0, 1, 3).reshape(n_views, b * c, 1, q.shape[-1])
    # grid coordinate of u = x cos + y sin, split into its x and y terms so one broadcast add builds the grid
    scale = 2.0 * oversample / (geom.det_spacing * n_det * oversample)
    shift = _detector_grid(torch.zeros((), dtype=q.dtype), n_det, geom.det_spacing, geom.det_offset, oversample)
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


def _fdk_divergent(proj: torch.Tensor, geom, window: str, short_scan: bool | None, oversample: int) -> torch.Tensor:
    """FDK on projections ``(B, C, views, rows, cols)``; fan beam is the one-row, one-slice case."""
    cone = isinstance(geom, ConeBeamGeometry)
    sod, sdd = geom.source_to_center, geom.source_to_detector
    if cone:
        (n_rows, n_cols), (dv, du), (ov, ou) = geom.det_shape, geom.det_spacing, geom.det_offset
        nz, ny, nx = geom.image_shape
        dz, dy, dx = geom.pixel_size
    else:
        n_rows, n_cols, dv, du, ov, ou = 1, geom.n_det, 1.0, geom.det_spacing, 0.0, geom.det_offset
        (ny, nx), (dy, dx), nz, dz = geom.image_shape, geom.pixel_size, 1, 1.0
    dtype, device = proj.dtype, proj.device
    u = (torch.arange(n_cols, dtype=dtype, device=device) - 0.5 * (n_cols - 1)) * du + ou
    v = (torch.arange(n_rows, dtype=dtype, device=device) - 0.5 * (n_rows - 1)) * dv + ov if cone else u.new_zeros(1)
    # cosine pre-weighting, then the ramp along columns on the virtual detector through the axis
    pre = sdd / torch.sqrt(sdd**2 + u[None, :] ** 2 + v[:, None] ** 2)
    p = proj * pre
    if short_scan is None:
        short_scan = _is_short_scan(geom.angles)
    if short_scan:
        # Parker's gamma grows against our direction of rotation: column u has gamma = -atan(u / sdd)
        redundancy = parker_weights(geom.angles, -u.cpu(), sdd).to(proj)  # (views, cols)
        p = p * redundancy[:, None, :]
        view_w = _angular_weights(geom.angles, full_turn_halves=False).to(proj)
    else:
        view_w = _angular_weights(geom.angles, full_turn_halves=True).to(proj)
    q = filter_projections(p, du * sod / sdd, window, oversample)
    b, c, n_views = q.shape[:3]
    views = q.permute(2, 0, 1, 3, 4).reshape(n_views, b * c, n_rows, q.shape[-1])
    theta = torch.tensor(geom.angles, dtype=dtype, device=device)
    xs = (torch.arange(nx, dtype=dtype, device=device) - 0.5 * (nx - 1)) * dx
    ys = (torch.arange(ny, dtype=dtype, device=device) - 0.5 * (ny - 1)) * dy
    zs = (torch.arange(nz, dtype=dtype, device=device) - 0.5 * (nz - 1)) * dz if cone else xs.new_zeros(1)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    xx, yy = xx.reshape(1, 1, -1), yy.reshape(1, 1, -1)
    zz = zs.reshape(1, -1, 1)
    out = q.new_zeros(b * c, nz, ny * nx)
    step = max(1, _VIEW_BUDGET // (nz * ny * nx))
    buffer = q.new_zeros(min(step, n_views), nz, ny * nx, 2)
    for s in range(0, n_views, step):
        th = theta[s : s + step, None, None]
        grid = buffer[: th.shape[0]]
        cos, sin = torch.cos(th), torch.sin(th)
        along = -xx * sin + yy * cos  # x . e_d, (v, 1, nxy)
        across = xx * cos + yy * sin  # x . e_u
        mag = sdd / (sod + along)
        grid[..., 0] = _detector_grid(across * mag, n_cols, du, ou, oversample)
        if cone:
            grid[..., 1] = _detector_grid(zz * mag, n_rows, dv, ov, 1)
        vals = F.grid_sample(views[s : s + step], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weight = (sod / (sod + along)) ** 2 * view_w[s : s + step, None, None]  # (v, 1, nxy)
        out += torch.einsum("vczn,vn->czn", vals, weight[:, 0])
    shape = (nz, ny, nx) if cone else (ny, nx)
    return out.reshape(b, c, *shape)


def _check_projections(p: torch.Tensor, geom) -> None:
    expected = geom.projection_shape if isinstance(geom, ConeBeamGeometry) else geom.sinogram_shape
    if not isinstance(p, torch.Tensor) or p.ndim != 2 + len(expected) or tuple(p.shape[2:]) != tuple(expected):
        got = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
        raise ValueError(f"projections must have shape (B, C, {', '.join(map(str, expected))}), got {got}.")
    if not torch.isfinite(p).all():
        raise ValueError("projections contain non-finite values (NaN or inf).")


def fbp(
    sinogram: torch.Tensor,
    geom: ParallelBeamGeometry | FanBeamGeometry,
    window: str = "ramp",
    short_scan: bool | None = None,
    oversample: int = 1,
) -> torch.Tensor:
    """Filtered backprojection of ``(B, C, n_angles, n_det)`` sinograms; returns ``(B, C, ny, nx)``.

    Parallel beam: ``f(x) = sum_theta w_theta (p_theta * h)(x . e_u)``. Fan beam (flat detector): the weighted
    FBP of Kak and Slaney, with Parker weights when the scan covers less than a full turn (``short_scan=None``
    detects it from the angles).

    Args:
        sinogram: line integrals, ``(B, C, n_angles, n_det)``.
        geom: the acquisition geometry.
        window: apodisation of the ramp, one of ``FILTERS``.
        short_scan: force (True) or forbid (False) Parker weighting for fan beam; ``None`` decides from the angles.
        oversample: filtered projections are interpolated on a grid this many times finer than the detector
            before the (linear) backprojection lookup.
    """
    _check_projections(sinogram, geom)
    if isinstance(geom, ParallelBeamGeometry):
        return _fbp_parallel(sinogram, geom, window, oversample)
    if isinstance(geom, FanBeamGeometry):
        return _fdk_divergent(sinogram[:, :, :, None, :], geom, window, short_scan, oversample)
    raise TypeError(f"fbp needs a ParallelBeamGeometry or FanBeamGeometry, got {type(geom).__name__}; use fdk for cone beam.")


def fdk(
    projections: torch.Tensor,
    geom: ConeBeamGeometry,
    window: str = "ramp",
    short_scan: bool | None = None,
    oversample: int = 1,
) -> torch.Tensor:
    """FDK reconstruction of ``(B, C, n_angles, rows, cols)`` cone-beam projections; returns ``(B, C, nz, ny, nx)``.

    Cosine pre-weighting, ramp filtering along detector rows on the virtual detector through the axis, and
    voxel-driven backprojection with the ``(sod / (sod + x . e_d))^2`` distance weight; Parker weights for a short
    scan (e.g. 205 degrees).
    """
    if not isinstance(geom, ConeBeamGeometry):
        raise TypeError(f"fdk needs a ConeBeamGeometry, got {type(geom).__name__}.")
    _check_projections(projections, geom)
    return _fdk_divergent(projections, geom, window, short_scan, oversample)


class FBP(torch.nn.Module):
    """Analytic reconstruction as a module: FBP for parallel/fan beam, FDK for cone beam.

    Args:
        geom: acquisition geometry.
        window: ramp apodisation, one of ``FILTERS``.
    """

    def __init__(self, geom, window: str = "ramp") -> None:
        super().__init__()
        if window not in FILTERS:
            raise ValueError(f"window must be one of {FILTERS}, got {window!r}.")
        self.geom, self.window = geom, window

    def forward(self, projections: torch.Tensor) -> torch.Tensor:
        if isinstance(self.geom, ConeBeamGeometry):
            return fdk(projections, self.geom, self.window)
        return fbp(projections, self.geom, self.window)
