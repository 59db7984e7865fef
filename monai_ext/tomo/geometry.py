"""Acquisition geometries for CT and CBCT, as frozen dataclasses in millimetres.

Conventions shared by every geometry (and by the projectors and analytic reconstructions):

- Images are ``(ny, nx)`` in 2D and ``(nz, ny, nx)`` in 3D, centred on the rotation axis; pixel ``(i, j)`` of a
  2D image has its centre at ``x = (j - (nx - 1) / 2) * dx``, ``y = (i - (ny - 1) / 2) * dy``.
- At view angle ``theta`` (radians) the detector axis is ``e_u = (cos theta, sin theta)`` and the rays travel
  along ``e_d = (-sin theta, cos theta)`` (from source to detector). Detector bin ``k`` of ``n`` lies at
  ``u_k = (k - (n - 1) / 2) * du + offset``.
- Parallel beam: the ray of bin ``u`` passes through ``u * e_u``.
- Fan and cone beam: the source sits at ``-sod * e_d`` and the flat detector's centre at ``(sdd - sod) * e_d``;
  for cone beam detector row ``v`` sits at height ``z = v`` on the panel (rows ordered along +z).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ParallelBeamGeometry",
    "FanBeamGeometry",
    "ConeBeamGeometry",
    "uniform_angles",
    "short_scan_angles",
]


def uniform_angles(n_angles: int, arc: float = math.pi, start: float = 0.0) -> tuple[float, ...]:
    """``n_angles`` equally spaced view angles (radians) over ``[start, start + arc)``.

    Args:
        n_angles: number of views, at least 1.
        arc: angular range in radians (``pi`` for parallel beam, ``2 pi`` for a full fan/cone scan).
        start: first angle in radians.

    Raises:
        ValueError: when ``n_angles`` < 1 or ``arc`` is not positive.
    """
    if int(n_angles) < 1:
        raise ValueError(f"n_angles must be at least 1, got {n_angles}.")
    if not arc > 0:
        raise ValueError(f"arc must be positive, got {arc}.")
    return tuple(float(a) for a in start + arc * np.arange(int(n_angles)) / int(n_angles))


def short_scan_angles(n_angles: int, fan_angle: float, start: float = 0.0) -> tuple[float, ...]:
    """Angles of a short scan over ``pi + fan_angle`` (Parker), endpoints included.

    Args:
        n_angles: number of views, at least 2.
        fan_angle: full fan angle of the detector in radians (see ``FanBeamGeometry.fan_angle``).
        start: first angle in radians.
    """
    if int(n_angles) < 2:
        raise ValueError(f"n_angles must be at least 2 for a short scan, got {n_angles}.")
    arc = math.pi + float(fan_angle)
    return tuple(float(a) for a in start + np.linspace(0.0, arc, int(n_angles)))


def _as_angles(angles: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    values = np.asarray(angles, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("angles must not be empty: give at least one view angle (radians).")
    if not np.all(np.isfinite(values)):
        raise ValueError("angles must be finite, got a NaN or infinite angle.")
    return tuple(float(a) for a in values)


def _as_tuple(name: str, value, length: int, kind=float) -> tuple:
    if np.isscalar(value):
        value = (value,) * length
    value = tuple(kind(v) for v in value)
    if len(value) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(value)}: {value}.")
    return value


def _check_positive(name: str, values: tuple) -> None:
    if any(not (v > 0) for v in values):
        raise ValueError(f"{name} must be positive, got {values}.")


@dataclass(frozen=True)
class _ImageGeometry:
    """Fields and checks shared by every geometry: the image grid and the view angles."""

    image_shape: tuple[int, ...]
    pixel_size: tuple[float, ...]
    angles: tuple[float, ...]

    def _check_image(self, ndim: int) -> None:
        object.__setattr__(self, "image_shape", _as_tuple("image_shape", self.image_shape, ndim, int))
        object.__setattr__(self, "pixel_size", _as_tuple("pixel_size", self.pixel_size, ndim, float))
        object.__setattr__(self, "angles", _as_angles(self.angles))
        _check_positive("image_shape", self.image_shape)
        _check_positive("pixel_size", self.pixel_size)

    @property
    def n_angles(self) -> int:
        return len(self.angles)

    @property
    def ndim(self) -> int:
        return len(self.image_shape)

    @property
    def fov_radius(self) -> float:
        """Radius (mm) of the largest disc centred on the axis that fits in the image."""
        return 0.5 * min(n * d for n, d in zip(self.image_shape[-2:], self.pixel_size[-2:]))


@dataclass(frozen=True)
class ParallelBeamGeometry(_ImageGeometry):
    """2D parallel-beam geometry.

    Args:
        image_shape: ``(ny, nx)`` pixels.
        pixel_size: ``(dy, dx)`` in mm, or one value for square pixels.
        angles: view angles in radians (any list; typically ``uniform_angles(n, pi)``).
        n_det: number of detector bins.
        det_spacing: detector bin width in mm.
        det_offset: shift of the detector centre along ``e_u`` in mm.

    Example:
        >>> geometry = ParallelBeamGeometry((256, 256), 1.0, uniform_angles(180), n_det=367, det_spacing=1.0)
        >>> geometry.sinogram_shape
        (180, 367)
    """

    n_det: int = 0
    det_spacing: float = 1.0
    det_offset: float = 0.0

    def __post_init__(self) -> None:
        self._check_image(2)
        object.__setattr__(self, "n_det", int(self.n_det))
        _check_positive("n_det", (self.n_det,))
        _check_positive("det_spacing", (float(self.det_spacing),))

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return (self.n_angles, self.n_det)


@dataclass(frozen=True)
class FanBeamGeometry(_ImageGeometry):
    """2D fan-beam geometry with a flat (linear) detector.

    Args:
        image_shape: ``(ny, nx)`` pixels.
        pixel_size: ``(dy, dx)`` in mm, or one value.
        angles: source angles in radians (``uniform_angles(n, 2 pi)`` for a full scan, or a short scan of at
            least ``pi + fan_angle``, for which FBP applies Parker weights).
        n_det: number of detector bins.
        det_spacing: detector bin width in mm (at the detector).
        source_to_center: source to rotation-axis distance (mm).
        source_to_detector: source to detector distance (mm).
        det_offset: shift of the detector centre along ``e_u`` in mm.
    """

    n_det: int = 0
    det_spacing: float = 1.0
    source_to_center: float = 500.0
    source_to_detector: float = 1000.0
    det_offset: float = 0.0

    def __post_init__(self) -> None:
        self._check_image(2)
        object.__setattr__(self, "n_det", int(self.n_det))
        _check_positive("n_det", (self.n_det,))
        _check_positive("det_spacing", (float(self.det_spacing),))
        _check_distances(self.source_to_center, self.source_to_detector, self.fov_radius)

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return (self.n_angles, self.n_det)

    @property
    def fan_angle(self) -> float:
        """Full fan angle (radians) subtended by the detector."""
        half = 0.5 * self.n_det * self.det_spacing + abs(self.det_offset)
        return 2.0 * math.atan(half / self.source_to_detector)


@dataclass(frozen=True)
class ConeBeamGeometry(_ImageGeometry):
    """3D circular cone-beam geometry with a flat panel.

    Args:
        image_shape: ``(nz, ny, nx)`` voxels.
        pixel_size: ``(dz, dy, dx)`` voxel size in mm, or one value.
        angles: source angles in radians (full ``2 pi`` scan or a short scan such as 205 degrees).
        det_shape: ``(n_rows, n_cols)`` panel pixels (rows along z, columns along ``e_u``).
        det_spacing: ``(dv, du)`` panel pixel size in mm, or one value.
        source_to_center: source to rotation-axis distance (mm).
        source_to_detector: source to panel distance (mm).
        det_offset: ``(v, u)`` shift of the panel centre in mm.

    Example:
        >>> geometry = ConeBeamGeometry((64, 64, 64), 4.0, uniform_angles(360, 2 * math.pi), (64, 64), 6.0,
        ...                         source_to_center=1000.0, source_to_detector=1500.0)
        >>> geometry.projection_shape
        (360, 64, 64)
    """

    det_shape: tuple[int, int] = (0, 0)
    det_spacing: tuple[float, float] = (1.0, 1.0)
    source_to_center: float = 1000.0
    source_to_detector: float = 1500.0
    det_offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        self._check_image(3)
        object.__setattr__(self, "det_shape", _as_tuple("det_shape", self.det_shape, 2, int))
        object.__setattr__(self, "det_spacing", _as_tuple("det_spacing", self.det_spacing, 2, float))
        object.__setattr__(self, "det_offset", _as_tuple("det_offset", self.det_offset, 2, float))
        _check_positive("det_shape", self.det_shape)
        _check_positive("det_spacing", self.det_spacing)
        _check_distances(self.source_to_center, self.source_to_detector, self.fov_radius)

    @property
    def projection_shape(self) -> tuple[int, int, int]:
        return (self.n_angles, *self.det_shape)

    @property
    def fan_angle(self) -> float:
        """Full fan angle (radians) in the mid-plane subtended by the panel's columns."""
        half = 0.5 * self.det_shape[1] * self.det_spacing[1] + abs(self.det_offset[1])
        return 2.0 * math.atan(half / self.source_to_detector)


def _check_distances(sod: float, sdd: float, fov_radius: float) -> None:
    if not (sod > 0 and sdd > sod):
        raise ValueError(
            f"need 0 < source_to_center < source_to_detector, got source_to_center={sod}, "
            f"source_to_detector={sdd}."
        )
    if sod <= fov_radius:
        raise ValueError(
            f"source_to_center={sod} mm puts the source inside the image (half-width {fov_radius} mm)."
        )
