"""Ellipse (2D) and ellipsoid (3D) phantoms with exact line integrals.

A phantom is a sum of constant-valued ellipsoids; its line integral along a ray is the sum of each value times
the chord the ray cuts through that ellipsoid, which is exact (no discretisation), so projectors can be tested
against it.

References:
    L. A. Shepp and B. F. Logan, "The Fourier reconstruction of a head section", IEEE TNS 21(3), 1974; the
    "modified" contrasts of P. Toft, *The Radon Transform*, PhD thesis, DTU 1996; the 3D version of Kak and Slaney.
    J. Adler and O. Oktem, "Learned Primal-Dual Reconstruction", IEEE TMI 37(6), 2018 (random ellipse data).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Ellipsoid", "EllipsoidPhantom", "shepp_logan", "random_ellipsoids"]

# modified Shepp-Logan (Toft): value, semi-axes (x, y, z), centre (x, y, z), rotation about z (degrees);
# coordinates in units of the half field of view, y pointing down the image rows (anatomical top at row 0)
_SHEPP_LOGAN = (
    (1.0, (0.69, 0.92, 0.81), (0.0, 0.0, 0.0), 0.0),
    (-0.8, (0.6624, 0.874, 0.78), (0.0, 0.0184, 0.0), 0.0),
    (-0.2, (0.11, 0.31, 0.22), (0.22, 0.0, 0.0), 18.0),
    (-0.2, (0.16, 0.41, 0.28), (-0.22, 0.0, 0.0), -18.0),
    (0.1, (0.21, 0.25, 0.41), (0.0, -0.35, -0.15), 0.0),
    (0.1, (0.046, 0.046, 0.05), (0.0, -0.1, 0.25), 0.0),
    (0.1, (0.046, 0.046, 0.05), (0.0, 0.1, 0.25), 0.0),
    (0.1, (0.046, 0.023, 0.05), (-0.08, 0.605, 0.0), 0.0),
    (0.1, (0.023, 0.023, 0.02), (0.0, 0.606, 0.0), 0.0),
    (0.1, (0.023, 0.046, 0.02), (0.06, 0.605, 0.0), 0.0),
)


@dataclass(frozen=True)
class Ellipsoid:
    """One constant-valued ellipse/ellipsoid.

    Args:
        value: attenuation added inside (any unit, e.g. 1/mm).
        axes: semi-axes in mm, ``(a_x, a_y)`` or ``(a_x, a_y, a_z)`` before rotation.
        center: centre in mm, ``(x, y[, z])``.
        angle: rotation about the z axis in radians.
    """

    value: float
    axes: tuple[float, ...]
    center: tuple[float, ...]
    angle: float = 0.0

    def __post_init__(self) -> None:
        if len(self.axes) != len(self.center) or len(self.axes) not in (2, 3):
            raise ValueError(f"axes and center must both have 2 or 3 entries, got {self.axes} and {self.center}.")
        if any(a <= 0 for a in self.axes):
            raise ValueError(f"semi-axes must be positive, got {self.axes}.")

    def _frame(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(self.axes)
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = np.eye(n)
        rot[:2, :2] = [[c, -s], [s, c]]
        return rot, np.asarray(self.center, float), np.asarray(self.axes, float)


class EllipsoidPhantom:
    """A sum of ellipses (2D) or ellipsoids (3D).

    Args:
        ellipsoids: the components, all of the same dimension.

    Example:
        >>> ph = shepp_logan(2, fov=256.0)
        >>> image = ph.rasterize((256, 256), 1.0)  # (256, 256) torch tensor
    """

    def __init__(self, ellipsoids: list[Ellipsoid]) -> None:
        if not ellipsoids:
            raise ValueError("a phantom needs at least one ellipsoid.")
        dims = {len(e.axes) for e in ellipsoids}
        if len(dims) != 1:
            raise ValueError(f"all ellipsoids must have the same dimension, got {sorted(dims)}.")
        self.ellipsoids = list(ellipsoids)
        self.ndim = dims.pop()

    def scaled(self, factor: float) -> EllipsoidPhantom:
        """The same phantom with every value multiplied by ``factor``."""
        return EllipsoidPhantom([Ellipsoid(e.value * factor, e.axes, e.center, e.angle) for e in self.ellipsoids])

    def translated(self, shift) -> EllipsoidPhantom:
        """The same phantom moved by ``shift`` mm, ``(x, y[, z])``."""
        shift = np.broadcast_to(np.asarray(shift, float), (self.ndim,))
        moved = [Ellipsoid(e.value, e.axes, tuple(float(c + s) for c, s in zip(e.center, shift)), e.angle) for e in self.ellipsoids]
        return EllipsoidPhantom(moved)

    def evaluate(self, points: np.ndarray) -> np.ndarray:
        """Phantom values at ``points`` ``(..., ndim)`` in mm, coordinates ``(x, y[, z])``."""
        out = np.zeros(points.shape[:-1])
        for e in self.ellipsoids:
            rot, c, a = e._frame()
            q = ((points - c) @ rot) / a
            out += e.value * ((q**2).sum(-1) <= 1.0)
        return out

    def rasterize(self, image_shape: tuple[int, ...], pixel_size, supersample: int = 4, dtype=torch.float32) -> torch.Tensor:
        """Pixel averages on a centred grid ``image_shape`` (array order ``(ny, nx)`` / ``(nz, ny, nx)``).

        Args:
            image_shape: grid shape, ``ndim`` entries.
            pixel_size: pixel size in mm (scalar or per axis, array order).
            supersample: sub-samples per pixel and axis used to average partial-volume pixels.
        """
        if len(image_shape) != self.ndim:
            raise ValueError(f"image_shape must have {self.ndim} entries for this phantom, got {image_shape}.")
        spacing = np.broadcast_to(np.asarray(pixel_size, float), (self.ndim,))
        axes = []
        for n, d in zip(image_shape, spacing):
            centres = (np.arange(n) - 0.5 * (n - 1)) * d
            offsets = ((np.arange(supersample) + 0.5) / supersample - 0.5) * d
            axes.append((centres[:, None] + offsets[None, :]).reshape(-1))
        out = np.zeros(tuple(image_shape))
        # evaluate slab by slab along the first axis to bound memory
        for i in range(image_shape[0]):
            sub = [axes[0][i * supersample : (i + 1) * supersample], *axes[1:]]
            mesh = np.stack(np.meshgrid(*sub, indexing="ij")[::-1], axis=-1)  # (x, y[, z]) order
            vals = self.evaluate(mesh)
            shape = [supersample]
            for n in image_shape[1:]:
                shape += [n, supersample]
            vals = vals.reshape(shape)
            out[i] = vals.mean(axis=tuple(range(0, len(shape), 2)))
        return torch.as_tensor(out, dtype=dtype)

    def line_integrals(self, origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """Exact integrals along rays ``origins + t * directions`` (unit directions, mm); shape ``origins.shape[:-1]``."""
        o = origins.detach().cpu().double().numpy()
        d = directions.detach().cpu().double().numpy()
        if o.shape[-1] != self.ndim:
            raise ValueError(f"rays must have {self.ndim} coordinates for this phantom, got {o.shape[-1]}.")
        out = np.zeros(o.shape[:-1])
        for e in self.ellipsoids:
            rot, c, a = e._frame()
            q0 = ((o - c) @ rot) / a
            q1 = (d @ rot) / a
            qa = (q1**2).sum(-1)
            qb = (q0 * q1).sum(-1)
            qc = (q0**2).sum(-1) - 1.0
            disc = np.clip(qb**2 - qa * qc, 0.0, None)
            out += e.value * 2.0 * np.sqrt(disc) / qa
        return torch.as_tensor(out)

    def projections(self, geometry, dtype=torch.float32, detector_supersample: int = 1) -> torch.Tensor:
        """Exact projections for a ``monai_ext.tomo`` geometry, shaped like the projector's output without B, C.

        Args:
            geometry: a parallel, fan or cone-beam geometry.
            dtype: output dtype.
            detector_supersample: ``s > 1`` averages ``s`` (2D) or ``s x s`` (3D) exact line integrals spread over
                each detector pixel, modelling a detector that integrates over its area.
        """
        from monai_ext.tomo.rays import geometry_rays

        s = int(detector_supersample)
        if s < 1:
            raise ValueError(f"detector_supersample must be a positive integer, got {detector_supersample}.")
        shifts = ((np.arange(s) + 0.5) / s - 0.5) if s > 1 else np.zeros(1)
        total = None
        cone = hasattr(geometry, "det_shape")
        for dv in shifts if cone else [0.0]:
            for du in shifts:
                if cone:
                    offset = (geometry.det_offset[0] + dv * geometry.det_spacing[0], geometry.det_offset[1] + du * geometry.det_spacing[1])
                else:
                    offset = geometry.det_offset + du * geometry.det_spacing
                origins, directions = geometry_rays(dataclasses.replace(geometry, det_offset=offset), torch.float64)
                value = self.line_integrals(origins, directions)
                total = value if total is None else total + value
        count = len(shifts) ** (2 if cone else 1)
        return (total / count).to(dtype)


def shepp_logan(ndim: int = 2, fov: float = 256.0, scale: float = 1.0) -> EllipsoidPhantom:
    """The modified Shepp-Logan phantom filling a field of view ``fov`` mm wide (2D or 3D).

    Args:
        ndim: 2 or 3.
        fov: width of the square (cube) the phantom is inscribed in, mm.
        scale: multiplies the values (1.0 gives the skull a value of 1; use e.g. 0.02 for water-like 1/mm).
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}.")
    half = 0.5 * fov
    ellipsoids = [
        Ellipsoid(value * scale, tuple(half * a for a in axes[:ndim]), tuple(half * c for c in centre[:ndim]), math.radians(deg))
        for value, axes, centre, deg in _SHEPP_LOGAN
    ]
    return EllipsoidPhantom(ellipsoids)


def random_ellipsoids(
    ndim: int = 2,
    fov: float = 128.0,
    n_ellipsoids: int = 10,
    seed: int | None = 0,
    value_range: tuple[float, float] = (-0.5, 1.0),
    positive: bool = True,
) -> EllipsoidPhantom:
    """Seeded random ellipses/ellipsoids inside a disc (ball) of diameter ``fov`` mm, as in Adler and Oktem 2018.

    Args:
        ndim: 2 or 3.
        fov: diameter of the support, mm.
        n_ellipsoids: number of components.
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same phantom.
        value_range: range of each component's value.
        positive: when True, the values are shifted so that the phantom is non-negative (an attenuation map).
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}.")
    if n_ellipsoids < 1:
        raise ValueError(f"n_ellipsoids must be at least 1, got {n_ellipsoids}.")
    rng = np.random.default_rng(seed)
    half = 0.5 * fov
    ellipsoids = []
    for _ in range(n_ellipsoids):
        axes = tuple(float(v) for v in rng.uniform(0.05, 0.4, ndim) * half)
        radius = rng.uniform(0, 0.9) * (half - max(axes))
        direction = rng.normal(size=ndim)
        centre = tuple(float(v) for v in radius * direction / np.linalg.norm(direction))
        value = float(rng.uniform(*value_range))
        ellipsoids.append(Ellipsoid(value, axes, centre, float(rng.uniform(0, math.pi))))
    phantom = EllipsoidPhantom(ellipsoids)
    if positive:
        low = sum(min(e.value, 0.0) for e in ellipsoids)
        if low < 0:
            # a background disc keeps every overlap non-negative
            phantom.ellipsoids.append(Ellipsoid(-low, (half * 0.98,) * ndim, (0.0,) * ndim, 0.0))
    return phantom
