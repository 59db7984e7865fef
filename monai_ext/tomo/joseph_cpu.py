"""Joseph's ray-driven projector and its exact transpose as parallel CPU kernels (numba).

The same discrete operator as the device-generic ``grid_sample`` path in ``projectors.py``: each ray is sampled
once per image plane perpendicular to its driving axis (the axis with the largest ``|direction| / pixel size``),
with linear (2D) or bilinear (3D) interpolation inside the plane and zero outside the image, and the sum is
weighted by the ray length per plane. The adjoint scatters with the same weights into one image per thread
(rays are split between threads, so there are no races), and the copies are summed: the exact transpose. In 2D the
rays driven by y scatter into a transposed copy, so that both kinds of rays write to consecutive addresses.
"""

from __future__ import annotations

import math
import os

import numpy as np

try:
    import numba
    from numba import njit, prange

    if "NUMBA_THREADING_LAYER" not in os.environ:
        # numba's OpenMP workers keep spinning after each parallel region and starve torch's own threads (a
        # training step ran 25x slower after one projection); the workqueue layer does not, and on a loaded
        # machine its short kernels also run ~10x faster than OpenMP's
        numba.config.THREADING_LAYER = "workqueue"
    HAS_NUMBA = True
except ImportError:  # pragma: no cover - numba is in requirements.txt; the torch path is the fallback
    HAS_NUMBA = False

__all__ = ["HAS_NUMBA", "joseph_forward_cpu", "joseph_adjoint_cpu"]

_JIT = dict(cache=True, fastmath=True, boundscheck=False)

if HAS_NUMBA:

    @njit(**_JIT)
    def _ray_setup(origins, dirs, r, shape, spacing):
        """Driving axis of ray ``r``, its ray length per plane and ``1 / direction`` along that axis."""
        axis, best = 0, -1.0
        for a in range(dirs.shape[1]):
            s = abs(dirs[r, a]) / spacing[a]
            if s > best:
                axis, best = a, s
        return axis, spacing[axis] / abs(dirs[r, axis]), 1.0 / dirs[r, axis]

    @njit(**_JIT)
    def _minor_line(origins, dirs, r, a, b, inv, shape, spacing):
        """``q(k) = q0 + k * dq``: continuous index along minor axis ``b`` of ray ``r`` at plane ``k`` of axis ``a``."""
        db = dirs[r, b] / spacing[b]
        q0 = origins[r, b] / spacing[b] + 0.5 * (shape[b] - 1) + (-0.5 * (shape[a] - 1) * spacing[a] - origins[r, a]) * inv * db
        return q0, spacing[a] * inv * db

    @njit(**_JIT)
    def _plane_range(q0, dq, nb, k0, k1):
        """Narrow ``[k0, k1)`` to the planes where ``-1 < q0 + k dq < nb`` (the ray touches the image), with margin."""
        if dq == 0.0:
            return (k0, k1) if -1.0 < q0 < nb else (0, 0)
        lo, hi = (-1.0 - q0) / dq, (nb - q0) / dq
        if lo > hi:
            lo, hi = hi, lo
        return max(k0, int(math.floor(lo)) - 1), min(k1, int(math.ceil(hi)) + 2)

    @njit(parallel=True, **_JIT)
    def _forward_2d(image, origins, dirs, shape, spacing, strides, out):
        n_rays = origins.shape[0]
        for ch in range(image.shape[0]):
            img, res = image[ch], out[ch]
            for r in prange(n_rays):
                a, weight, inv = _ray_setup(origins, dirs, r, shape, spacing)
                b = 1 - a
                na, nb, sa, sb = shape[a], shape[b], strides[a], strides[b]
                q0, dq = _minor_line(origins, dirs, r, a, b, inv, shape, spacing)
                k_lo, k_hi = _plane_range(q0, dq, nb, 0, na)
                acc = 0.0
                for k in range(k_lo, k_hi):
                    q = q0 + k * dq
                    i0 = int(math.floor(q))
                    f = q - i0
                    if 0 <= i0 < nb:
                        acc += (1.0 - f) * img[k * sa + i0 * sb]
                    if 0 <= i0 + 1 < nb:
                        acc += f * img[k * sa + (i0 + 1) * sb]
                res[r] = weight * acc

    @njit(parallel=True, **_JIT)
    def _adjoint_2d(proj, origins, dirs, shape, spacing, strides, out):
        # out: (threads, driving axis, channels, pixels); each driving axis scatters into a layout where its
        # consecutive planes are adjacent in memory (y-driven rays into the transposed image), summed afterwards
        n_rays, n_threads = origins.shape[0], out.shape[0]
        chunk = (n_rays + n_threads - 1) // n_threads
        for ch in range(proj.shape[0]):
            for th in prange(n_threads):
                p = proj[ch]
                for r in range(th * chunk, min(n_rays, (th + 1) * chunk)):
                    a, weight, inv = _ray_setup(origins, dirs, r, shape, spacing)
                    b = 1 - a
                    na, nb = shape[a], shape[b]
                    img = out[th, a, ch]
                    q0, dq = _minor_line(origins, dirs, r, a, b, inv, shape, spacing)
                    k_lo, k_hi = _plane_range(q0, dq, nb, 0, na)
                    w = weight * p[r]
                    for k in range(k_lo, k_hi):
                        q = q0 + k * dq
                        i0 = int(math.floor(q))
                        f = q - i0
                        if 0 <= i0 < nb:
                            img[k + i0 * na] += w * (1.0 - f)
                        if 0 <= i0 + 1 < nb:
                            img[k + (i0 + 1) * na] += w * f

    @njit(**_JIT)
    def _minor_axes(a):
        return (1, 2) if a == 0 else ((0, 2) if a == 1 else (0, 1))

    @njit(parallel=True, **_JIT)
    def _forward_3d(image, origins, dirs, shape, spacing, strides, out):
        n_rays = origins.shape[0]
        for ch in range(image.shape[0]):
            img, res = image[ch], out[ch]
            for r in prange(n_rays):
                a, weight, inv = _ray_setup(origins, dirs, r, shape, spacing)
                b, c = _minor_axes(a)
                na, nb, nc = shape[a], shape[b], shape[c]
                sa, sb, sc = strides[a], strides[b], strides[c]
                qb0, dqb = _minor_line(origins, dirs, r, a, b, inv, shape, spacing)
                qc0, dqc = _minor_line(origins, dirs, r, a, c, inv, shape, spacing)
                k_lo, k_hi = _plane_range(qb0, dqb, nb, 0, na)
                k_lo, k_hi = _plane_range(qc0, dqc, nc, k_lo, k_hi)
                acc = 0.0
                for k in range(k_lo, k_hi):
                    qb, qc = qb0 + k * dqb, qc0 + k * dqc
                    ib, ic = int(math.floor(qb)), int(math.floor(qc))
                    fb, fc = qb - ib, qc - ic
                    if ib < -1 or ib >= nb or ic < -1 or ic >= nc:
                        continue
                    base = k * sa + ib * sb + ic * sc
                    lo_b, hi_b, lo_c, hi_c = ib >= 0, ib + 1 < nb, ic >= 0, ic + 1 < nc
                    if lo_b and lo_c:
                        acc += (1.0 - fb) * (1.0 - fc) * img[base]
                    if lo_b and hi_c:
                        acc += (1.0 - fb) * fc * img[base + sc]
                    if hi_b and lo_c:
                        acc += fb * (1.0 - fc) * img[base + sb]
                    if hi_b and hi_c:
                        acc += fb * fc * img[base + sb + sc]
                res[r] = weight * acc

    @njit(parallel=True, **_JIT)
    def _adjoint_3d(proj, origins, dirs, shape, spacing, strides, out):
        n_rays, n_threads = origins.shape[0], out.shape[0]
        chunk = (n_rays + n_threads - 1) // n_threads
        for ch in range(proj.shape[0]):
            for th in prange(n_threads):
                img, p = out[th, ch], proj[ch]
                for r in range(th * chunk, min(n_rays, (th + 1) * chunk)):
                    a, weight, inv = _ray_setup(origins, dirs, r, shape, spacing)
                    b, c = _minor_axes(a)
                    na, nb, nc = shape[a], shape[b], shape[c]
                    sa, sb, sc = strides[a], strides[b], strides[c]
                    qb0, dqb = _minor_line(origins, dirs, r, a, b, inv, shape, spacing)
                    qc0, dqc = _minor_line(origins, dirs, r, a, c, inv, shape, spacing)
                    k_lo, k_hi = _plane_range(qb0, dqb, nb, 0, na)
                    k_lo, k_hi = _plane_range(qc0, dqc, nc, k_lo, k_hi)
                    w = weight * p[r]
                    for k in range(k_lo, k_hi):
                        qb, qc = qb0 + k * dqb, qc0 + k * dqc
                        ib, ic = int(math.floor(qb)), int(math.floor(qc))
                        fb, fc = qb - ib, qc - ic
                        if ib < -1 or ib >= nb or ic < -1 or ic >= nc:
                            continue
                        base = k * sa + ib * sb + ic * sc
                        lo_b, hi_b, lo_c, hi_c = ib >= 0, ib + 1 < nb, ic >= 0, ic + 1 < nc
                        if lo_b and lo_c:
                            img[base] += w * (1.0 - fb) * (1.0 - fc)
                        if lo_b and hi_c:
                            img[base + sc] += w * (1.0 - fb) * fc
                        if hi_b and lo_c:
                            img[base + sb] += w * fb * (1.0 - fc)
                        if hi_b and hi_c:
                            img[base + sb + sc] += w * fb * fc


def _grid_arrays(image_shape, pixel_size):
    # (x, y[, z]) order, matching the ray coordinates
    shape = np.array(image_shape[::-1], dtype=np.int64)
    spacing = np.array(pixel_size[::-1], dtype=np.float64)
    strides = np.cumprod(np.concatenate([[1], shape[:-1]])).astype(np.int64)
    return shape, spacing, strides


def joseph_forward_cpu(image: np.ndarray, origins: np.ndarray, dirs: np.ndarray, pixel_size) -> np.ndarray:
    """Line integrals of ``image`` ``(C, *image_shape)`` along rays ``(R, D)`` (``D`` = image dims); ``(C, R)``."""
    n_ch, image_shape = image.shape[0], image.shape[1:]
    shape, spacing, strides = _grid_arrays(image_shape, pixel_size)
    out = np.zeros((n_ch, origins.shape[0]), dtype=image.dtype)
    kernel = _forward_2d if len(image_shape) == 2 else _forward_3d
    kernel(np.ascontiguousarray(image.reshape(n_ch, -1)), origins, dirs, shape, spacing, strides, out)
    return out


def joseph_adjoint_cpu(proj: np.ndarray, origins: np.ndarray, dirs: np.ndarray, image_shape, pixel_size) -> np.ndarray:
    """Exact transpose of :func:`joseph_forward_cpu`: ``(C, R)`` ray values to ``(C, *image_shape)``."""
    n_ch = proj.shape[0]
    shape, spacing, strides = _grid_arrays(image_shape, pixel_size)
    n_pix = int(np.prod(image_shape))
    if len(image_shape) == 2:
        out = np.zeros((numba.get_num_threads(), 2, n_ch, n_pix), dtype=proj.dtype)
        _adjoint_2d(np.ascontiguousarray(proj), origins, dirs, shape, spacing, strides, out)
        summed = out.sum(axis=0)
        ny, nx = image_shape
        return summed[0].reshape(n_ch, ny, nx) + summed[1].reshape(n_ch, nx, ny).transpose(0, 2, 1)
    out = np.zeros((numba.get_num_threads(), n_ch, n_pix), dtype=proj.dtype)
    _adjoint_3d(np.ascontiguousarray(proj), origins, dirs, shape, spacing, strides, out)
    return out.sum(axis=0).reshape(n_ch, *image_shape)
