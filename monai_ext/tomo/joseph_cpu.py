"""Joseph's ray-driven projector and its exact transpose as parallel CPU kernels (numba).

The same discrete operator as the device-generic ``grid_sample`` path in ``projectors.py``: each ray is sampled
once per image plane perpendicular to its driving axis (the axis with the largest ``|direction| / pixel size``),
with linear (2D) or bilinear (3D) interpolation inside the plane and zero outside the image, and the sum is
weighted by the ray length per plane. The adjoint scatters with the same weights, the exact transpose. In 2D
the rays are split between threads, each scattering into its own image copy, and the copies are summed; the rays
driven by y scatter into a transposed copy, so that both kinds of rays write to consecutive addresses. In 3D each
task owns a slab of z planes and scatters the samples of every ray that fall in it, so the volume is never copied.

Both 3D kernels split each ray into the planes where all four bilinear neighbours lie inside the volume, walked
by a branch-free loop, and the few planes at the volume's edges, walked with bounds checks.
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

__all__ = ["HAS_NUMBA", "joseph_forward_cpu", "joseph_adjoint_cpu", "cone_view_table", "cone_forward_cpu", "cone_adjoint_cpu"]

_JIT = dict(cache=True, fastmath=True, boundscheck=False)

if HAS_NUMBA:

    @njit(**_JIT)
    def _driving(d, spacing):
        """Driving axis of a ray of direction ``d`` (an array row or a tuple), its ray length per plane and
        ``1 / direction`` along that axis."""
        axis, best = 0, -1.0
        for a in range(len(d)):
            s = abs(d[a]) / spacing[a]
            if s > best:
                axis, best = a, s
        return axis, spacing[axis] / abs(d[axis]), 1.0 / d[axis]

    @njit(**_JIT)
    def _minor_line(o, d, a, b, inv, shape, spacing):
        """``q(k) = q0 + k * dq``: continuous index along minor axis ``b`` of the ray through ``o`` along ``d`` at
        plane ``k`` of axis ``a``."""
        db = d[b] / spacing[b]
        q0 = o[b] / spacing[b] + 0.5 * (shape[b] - 1) + (-0.5 * (shape[a] - 1) * spacing[a] - o[a]) * inv * db
        return q0, spacing[a] * inv * db

    @njit(**_JIT)
    def _planes(q0, dq, lo, hi, k0, k1, margin):
        """The planes ``k`` of ``[k0, k1)`` where ``lo <= q0 + k dq < hi``.

        ``margin > 0`` widens the range by that many planes at each end (a superset, for loops that check each
        sample); ``margin < 0`` narrows it (a subset on which the condition surely holds despite rounding). An
        empty range is returned as ``(k0, k0)``.
        """
        if dq == 0.0:
            eps = 0.0 if margin > 0 else 1e-9
            return (k0, k1) if lo + eps <= q0 < hi - eps else (k0, k0)
        t0, t1 = (lo - q0) / dq, (hi - q0) / dq
        if t0 > t1:
            t0, t1 = t1, t0
        t0, t1 = max(t0, k0 - 4.0), min(t1, k1 + 4.0)  # clamp before int(): a near-zero dq gives huge values
        a, b = max(k0, int(math.floor(t0)) - margin), min(k1, int(math.ceil(t1)) + margin)
        return (a, b) if a < b else (k0, k0)

    @njit(parallel=True, **_JIT)
    def _forward_2d(image, origins, dirs, shape, spacing, strides, out):
        n_rays = origins.shape[0]
        for ch in range(image.shape[0]):
            img, res = image[ch], out[ch]
            for r in prange(n_rays):
                o, d = origins[r], dirs[r]
                a, weight, inv = _driving(d, spacing)
                b = 1 - a
                na, nb, sa, sb = shape[a], shape[b], strides[a], strides[b]
                q0, dq = _minor_line(o, d, a, b, inv, shape, spacing)
                k_lo, k_hi = _planes(q0, dq, -1.0, nb * 1.0, 0, na, 2)
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
                    o, d = origins[r], dirs[r]
                    a, weight, inv = _driving(d, spacing)
                    b = 1 - a
                    na, nb = shape[a], shape[b]
                    img = out[th, a, ch]
                    q0, dq = _minor_line(o, d, a, b, inv, shape, spacing)
                    k_lo, k_hi = _planes(q0, dq, -1.0, nb * 1.0, 0, na, 2)
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

    @njit(**_JIT)
    def _cone_ray(views, u, v, r):
        """Origin and unit direction of ray ``r`` of a flat-panel cone-beam scan, in ``(x, y, z)`` mm.

        ``views`` ``(V, 6)`` holds each view's source ``(x, y)`` and panel centre ``(x, y)`` (both at z = 0) and
        the panel's column axis ``e_u = (x, y)``; ``u`` and ``v`` are the column and row centres. Rays are
        ordered view, row, column, as the projections. The same arithmetic as ``rays.geometry_rays``.
        """
        n_cols, n_rows = u.shape[0], v.shape[0]
        view, rem = r // (n_rows * n_cols), r % (n_rows * n_cols)
        row, col = rem // n_cols, rem % n_cols
        sx, sy = views[view, 0], views[view, 1]
        dx = views[view, 2] + u[col] * views[view, 4] - sx
        dy = views[view, 3] + u[col] * views[view, 5] - sy
        dz = v[row]
        norm = math.sqrt(dx * dx + dy * dy + dz * dz)
        return (sx, sy, 0.0), (dx / norm, dy / norm, dz / norm)

    @njit(**_JIT)
    def _setup_3d(o, d, shape, spacing):
        """Driving axis ``a``, minor axes ``b, c``, ray length per plane and the minor index lines
        ``q(k) = q0 + k dq`` of the ray through ``o`` along ``d``."""
        a, weight, inv = _driving(d, spacing)
        b, c = _minor_axes(a)
        qb0, dqb = _minor_line(o, d, a, b, inv, shape, spacing)
        qc0, dqc = _minor_line(o, d, a, c, inv, shape, spacing)
        return a, b, c, weight, qb0, dqb, qc0, dqc

    @njit(**_JIT)
    def _sample(img, k, qb, qc, nb, nc, sa, sb, sc):
        """Bilinear sample of plane ``k`` at minor indices ``(qb, qc)``, zero outside the image."""
        ib, ic = int(math.floor(qb)), int(math.floor(qc))
        if ib < -1 or ib >= nb or ic < -1 or ic >= nc:
            return 0.0
        fb, fc = qb - ib, qc - ic
        base = k * sa + ib * sb + ic * sc
        lo_b, hi_b, lo_c, hi_c = ib >= 0, ib + 1 < nb, ic >= 0, ic + 1 < nc
        acc = 0.0
        if lo_b and lo_c:
            acc += (1.0 - fb) * (1.0 - fc) * img[base]
        if lo_b and hi_c:
            acc += (1.0 - fb) * fc * img[base + sc]
        if hi_b and lo_c:
            acc += fb * (1.0 - fc) * img[base + sb]
        if hi_b and hi_c:
            acc += fb * fc * img[base + sb + sc]
        return acc

    @njit(parallel=True, **_JIT)
    def _forward_3d(image, views, u, v, shape, spacing, strides, out):
        # per ray: the planes where both bilinear neighbours lie inside the image take a branch-free loop, the
        # few planes at the image's edges the checked one
        n_rays = views.shape[0] * u.shape[0] * v.shape[0]
        for ch in range(image.shape[0]):
            img, res = image[ch], out[ch]
            for r in prange(n_rays):
                o, d = _cone_ray(views, u, v, r)
                a, b, c, weight, qb0, dqb, qc0, dqc = _setup_3d(o, d, shape, spacing)
                na, nb, nc = shape[a], shape[b], shape[c]
                sa, sb, sc = strides[a], strides[b], strides[c]
                k_lo, k_hi = _planes(qb0, dqb, -1.0, nb * 1.0, 0, na, 2)
                k_lo, k_hi = _planes(qc0, dqc, -1.0, nc * 1.0, k_lo, k_hi, 2)
                f0, f1 = _planes(qb0, dqb, 0.0, nb - 1.0, k_lo, k_hi, -2)
                f0, f1 = _planes(qc0, dqc, 0.0, nc - 1.0, f0, f1, -2)
                if f0 == f1:
                    f0 = f1 = k_lo
                acc = 0.0
                for k in range(k_lo, f0):
                    acc += _sample(img, k, qb0 + k * dqb, qc0 + k * dqc, nb, nc, sa, sb, sc)
                for k in range(f0, f1):
                    qb, qc = qb0 + k * dqb, qc0 + k * dqc
                    ib, ic = int(qb), int(qc)
                    fb, fc = qb - ib, qc - ic
                    base = k * sa + ib * sb + ic * sc
                    v0 = img[base] + fc * (img[base + sc] - img[base])
                    v1 = img[base + sb] + fc * (img[base + sb + sc] - img[base + sb])
                    acc += v0 + fb * (v1 - v0)
                for k in range(f1, k_hi):
                    acc += _sample(img, k, qb0 + k * dqb, qc0 + k * dqc, nb, nc, sa, sb, sc)
                res[r] = weight * acc

    @njit(**_JIT)
    def _scatter(img, k, qb, qc, w, nb, c_lo, c_hi, sa, sb, sc):
        """Transpose of :func:`_sample`, writing only voxels whose minor index ``c`` lies in ``[c_lo, c_hi)``."""
        ib, ic = int(math.floor(qb)), int(math.floor(qc))
        if ib < -1 or ib >= nb or ic < c_lo - 1 or ic >= c_hi:
            return
        fb, fc = qb - ib, qc - ic
        base = k * sa + ib * sb + ic * sc
        lo_b, hi_b, lo_c, hi_c = ib >= 0, ib + 1 < nb, ic >= c_lo, ic + 1 < c_hi
        if lo_b and lo_c:
            img[base] += w * (1.0 - fb) * (1.0 - fc)
        if lo_b and hi_c:
            img[base + sc] += w * (1.0 - fb) * fc
        if hi_b and lo_c:
            img[base + sb] += w * fb * (1.0 - fc)
        if hi_b and hi_c:
            img[base + sb + sc] += w * fb * fc

    @njit(**_JIT)
    def _scatter_interior(img, k0, k1, qb0, dqb, qc0, dqc, w, sa, sb, sc, single):
        """Transpose of the branch-free forward loop over planes ``[k0, k1)``, where all four bilinear neighbours
        lie inside the volume. With ``single`` (a float32 volume) the weights are computed in float32: 1.3x faster
        than float64 arithmetic on 2 cores, and rounded at the precision the volume is stored in anyway; the
        indices stay float64, so each sample meets the same voxels as in the forward."""
        if single:
            w1 = np.float32(w)
            for k in range(k0, k1):
                qb, qc = qb0 + k * dqb, qc0 + k * dqc
                ib, ic = int(qb), int(qc)
                fb, fc = np.float32(qb - ib), np.float32(qc - ic)
                base = k * sa + ib * sb + ic * sc
                wb = w1 * fb
                w0 = w1 - wb
                img[base] += w0 - w0 * fc
                img[base + sc] += w0 * fc
                img[base + sb] += wb - wb * fc
                img[base + sb + sc] += wb * fc
        else:
            for k in range(k0, k1):
                qb, qc = qb0 + k * dqb, qc0 + k * dqc
                ib, ic = int(qb), int(qc)
                fb, fc = qb - ib, qc - ic
                base = k * sa + ib * sb + ic * sc
                wb = w * fb
                w0 = w - wb
                img[base] += w0 - w0 * fc
                img[base + sc] += w0 * fc
                img[base + sb] += wb - wb * fc
                img[base + sb + sc] += wb * fc

    @njit(parallel=True, **_JIT)
    def _adjoint_3d(proj, views, u, v, shape, spacing, strides, out, n_slabs, row_lo, row_hi, single):
        # each task owns a slab of z planes and scatters the samples that land in it of the rays of the panel rows
        # that can reach it (row_lo[s] to row_hi[s]): no two tasks write one voxel, so the result needs no
        # per-thread copies of the volume (memory stays at the output's size)
        n_rows, n_cols, nz = v.shape[0], u.shape[0], shape[2]
        for ch in range(proj.shape[0]):
            img, p = out[ch], proj[ch]
            for s in prange(n_slabs):
                z_lo, z_hi = s * nz // n_slabs, (s + 1) * nz // n_slabs
                per_view = (row_hi[s] - row_lo[s]) * n_cols
                for rr in range(views.shape[0] * per_view):
                    view = rr // per_view
                    r = view * n_rows * n_cols + row_lo[s] * n_cols + (rr - view * per_view)
                    if p[r] == 0.0:
                        continue
                    o, d = _cone_ray(views, u, v, r)
                    a, b, c, weight, qb0, dqb, qc0, dqc = _setup_3d(o, d, shape, spacing)  # c is z unless z drives
                    na, nb, nc = shape[a], shape[b], shape[c]
                    sa, sb, sc = strides[a], strides[b], strides[c]
                    k_lo, k_hi = _planes(qb0, dqb, -1.0, nb * 1.0, 0, na, 2)
                    k_lo, k_hi = _planes(qc0, dqc, -1.0, nc * 1.0, k_lo, k_hi, 2)
                    if a == 2:  # planes are z slices: keep this slab's
                        k_lo, k_hi = max(k_lo, z_lo), min(k_hi, z_hi)
                        c_lo, c_hi = 0, nc
                    else:  # samples whose z neighbours touch [z_lo, z_hi)
                        k_lo, k_hi = _planes(qc0, dqc, z_lo - 1.0, z_hi * 1.0, k_lo, k_hi, 2)
                        c_lo, c_hi = z_lo, z_hi
                    if k_lo >= k_hi:
                        continue
                    f0, f1 = _planes(qb0, dqb, 0.0, nb - 1.0, k_lo, k_hi, -2)
                    f0, f1 = _planes(qc0, dqc, c_lo * 1.0, c_hi - 1.0, f0, f1, -2)
                    if f0 == f1:
                        f0 = f1 = k_lo
                    w = weight * p[r]
                    for k in range(k_lo, f0):
                        _scatter(img, k, qb0 + k * dqb, qc0 + k * dqc, w, nb, c_lo, c_hi, sa, sb, sc)
                    _scatter_interior(img, f0, f1, qb0, dqb, qc0, dqc, w, sa, sb, sc, single)
                    for k in range(f1, k_hi):
                        _scatter(img, k, qb0 + k * dqb, qc0 + k * dqc, w, nb, c_lo, c_hi, sa, sb, sc)


def _grid_arrays(image_shape, pixel_size):
    # (x, y[, z]) order, matching the ray coordinates
    shape = np.array(image_shape[::-1], dtype=np.int64)
    spacing = np.array(pixel_size[::-1], dtype=np.float64)
    strides = np.cumprod(np.concatenate([[1], shape[:-1]])).astype(np.int64)
    return shape, spacing, strides


def joseph_forward_cpu(image: np.ndarray, origins: np.ndarray, dirs: np.ndarray, pixel_size, out: np.ndarray | None = None) -> np.ndarray:
    """Line integrals of a 2D ``image`` ``(C, ny, nx)`` along rays ``(R, 2)``; ``(C, R)``.

    ``out``, when given, is a C-contiguous ``(C, R)`` array of the image's dtype that receives the result.
    """
    n_ch, image_shape = image.shape[0], image.shape[1:]
    shape, spacing, strides = _grid_arrays(image_shape, pixel_size)
    if out is None:
        out = np.zeros((n_ch, origins.shape[0]), dtype=image.dtype)
    _forward_2d(np.ascontiguousarray(image.reshape(n_ch, -1)), origins, dirs, shape, spacing, strides, out)
    return out


def joseph_adjoint_cpu(
    proj: np.ndarray, origins: np.ndarray, dirs: np.ndarray, image_shape, pixel_size, out: np.ndarray | None = None
) -> np.ndarray:
    """Exact transpose of :func:`joseph_forward_cpu`: ``(C, R)`` ray values to ``(C, ny, nx)``.

    ``out``, when given, is a C-contiguous ``(C, ny, nx)`` array that the backprojection is added to. Each thread
    scatters into its own image copy (2D images are small) and the copies are summed.
    """
    n_ch = proj.shape[0]
    shape, spacing, strides = _grid_arrays(image_shape, pixel_size)
    n_pix = int(np.prod(image_shape))
    if out is None:
        out = np.zeros((n_ch, *image_shape), dtype=proj.dtype)
    copies = np.zeros((numba.get_num_threads(), 2, n_ch, n_pix), dtype=proj.dtype)
    _adjoint_2d(np.ascontiguousarray(proj), origins, dirs, shape, spacing, strides, copies)
    summed = copies.sum(axis=0)
    ny, nx = image_shape
    out += summed[0].reshape(n_ch, ny, nx) + summed[1].reshape(n_ch, nx, ny).transpose(0, 2, 1)
    return out


def cone_view_table(geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(views, u, v)`` of a ``ConeBeamGeometry`` for the 3D kernels: per view the source ``(x, y)``, the panel
    centre ``(x, y)`` and the column axis ``e_u`` (``(V, 6)``), and the column and row centres in mm."""
    theta = np.asarray(geometry.angles, dtype=np.float64)
    e_u = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    e_d = np.stack([-np.sin(theta), np.cos(theta)], axis=-1)
    views = np.concatenate([-geometry.source_to_center * e_d, (geometry.source_to_detector - geometry.source_to_center) * e_d, e_u], -1)
    (n_rows, n_cols), (dv, du), (ov, ou) = geometry.det_shape, geometry.det_spacing, geometry.det_offset
    u = (np.arange(n_cols, dtype=np.float64) - 0.5 * (n_cols - 1)) * du + ou
    v = (np.arange(n_rows, dtype=np.float64) - 0.5 * (n_rows - 1)) * dv + ov
    return np.ascontiguousarray(views), u, v


def cone_forward_cpu(image: np.ndarray, table, pixel_size) -> np.ndarray:
    """Line integrals of ``image`` ``(C, nz, ny, nx)`` along the rays of ``table`` (:func:`cone_view_table`, or a
    slice of its views); ``(C, views x rows x cols)``. Rays are computed in the kernel: no ray table is held."""
    views, u, v = table
    n_ch, image_shape = image.shape[0], image.shape[1:]
    shape, spacing, strides = _grid_arrays(image_shape, pixel_size)
    out = np.zeros((n_ch, views.shape[0] * u.shape[0] * v.shape[0]), dtype=image.dtype)
    _forward_3d(np.ascontiguousarray(image.reshape(n_ch, -1)), np.ascontiguousarray(views), u, v, shape, spacing, strides, out)
    return out


def _slab_rows(views: np.ndarray, u: np.ndarray, v: np.ndarray, image_shape, pixel_size, n_slabs: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``n_slabs`` slabs of z planes, the panel rows ``[row_lo, row_hi)`` whose rays can reach it (a
    superset), so that a slab's task sets up only those rays.

    The source circles at z = 0: a ray through row ``v`` is at height ``z = v t / D`` after an xy distance ``t``
    from the source, ``D`` being the xy distance from the source to its panel pixel (from the source-to-panel
    distance to its value at the widest column). Inside the volume ``t`` lies within ``R`` (the volume's xy
    half-diagonal) of the source-to-axis distance; a sample reaches a slab when its z index lies within one plane
    of it (bilinear neighbours), and one more plane is allowed for rounding.
    """
    nz, ny, nx = image_shape
    dz, dy, dx = pixel_size
    source, panel = views[:, 0:2], views[:, 2:4]
    sdd = float(np.linalg.norm(panel - source, axis=1).min())
    sod = float(np.linalg.norm(source, axis=1).min())
    widest = math.sqrt(sdd**2 + float(np.abs(u).max()) ** 2)
    radius = 0.5 * math.hypot(nx * dx, ny * dy)
    near, far = max(0.0, sod - radius), sod + radius
    z_near = v * near / np.where(v >= 0, widest, sdd)
    z_far = v * far / np.where(v >= 0, sdd, widest)
    z_min, z_max = np.minimum(z_near, z_far), np.maximum(z_near, z_far)
    row_lo, row_hi = np.zeros(n_slabs, np.int64), np.zeros(n_slabs, np.int64)
    for s in range(n_slabs):
        k_lo, k_hi = s * nz // n_slabs, (s + 1) * nz // n_slabs
        lo_mm, hi_mm = (k_lo - 2 - 0.5 * (nz - 1)) * dz, (k_hi + 1 - 0.5 * (nz - 1)) * dz
        rows = np.nonzero((z_max >= lo_mm) & (z_min <= hi_mm))[0]
        if rows.size:
            row_lo[s], row_hi[s] = rows.min(), rows.max() + 1
    return row_lo, row_hi


def cone_adjoint_cpu(proj: np.ndarray, table, image_shape, pixel_size, out: np.ndarray | None = None) -> np.ndarray:
    """Exact transpose of :func:`cone_forward_cpu`, added to ``out`` ``(C, nz, ny, nx)`` when given. The volume is
    split into slabs of z planes, one task each, so it is never copied."""
    views, u, v = table
    n_ch = proj.shape[0]
    shape, spacing, strides = _grid_arrays(image_shape, pixel_size)
    if out is None:
        out = np.zeros((n_ch, *image_shape), dtype=proj.dtype)
    n_slabs = max(1, min(int(image_shape[0]), numba.get_num_threads()))
    row_lo, row_hi = _slab_rows(views, u, v, image_shape, pixel_size, n_slabs)
    _adjoint_3d(np.ascontiguousarray(proj), np.ascontiguousarray(views), u, v, shape, spacing, strides,
                out.reshape(n_ch, -1), n_slabs, row_lo, row_hi, out.dtype == np.float32)
    return out
