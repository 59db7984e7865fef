"""PET scanner geometry as data, and the 2D sinogram geometry it gives for an image grid.

A cylindrical scanner of ``n_rings`` rings of ``detectors_per_ring`` crystals is described by a frozen dataclass
in millimetres. Its data are binned as one 2D parallel-beam sinogram per direct plane (views x radial bins), the
sampling of the Siemens-style "interleaved" sinograms:

- ``n_views = detectors_per_ring / 2`` view angles over ``[0, pi)``: each crystal pair ``(a, b)`` lies on the
  view ``(a + b) mod N / 2``, which fixes the angular sampling at ``pi / (N / 2)``;
- radial bin width ``= crystal pitch / 2 = pi * ring_diameter / detectors_per_ring / 2``: pairs ``(a, b)`` and
  ``(a + 1, b)`` fall half a pitch apart, so interleaving the two views that share ``a + b`` samples the radial
  axis at half the crystal pitch near the centre (2.12 mm for the Biograph preset). Taking the crystal size as the
  bin width would throw that half-pitch sampling away.

The radial bins cover the image's diagonal (so every pixel is seen from every view), clipped to the scanner's
transaxial field of view. A 3D acquisition is treated as a stack of ``n_rings`` direct 2D planes
(``plane_spacing`` apart); oblique planes are not modelled.

References:
    B. W. Jakoby et al., "Performance characteristics of a new LSO PET/CT scanner with extended axial
    field-of-view and PSF reconstruction", IEEE TNS 56(3), 2009 (the Biograph TruePoint TrueV).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..tomo import ParallelBeamGeometry, uniform_angles

__all__ = ["PETScanner", "BIOGRAPH_6_TRUEPOINT_TRUEV", "DEMO_SCANNER"]


@dataclass(frozen=True)
class PETScanner:
    """Cylindrical PET scanner, in millimetres.

    Args:
        name: free text.
        ring_diameter: detector ring diameter (crystal face to crystal face), mm.
        detectors_per_ring: crystals per ring, even.
        n_rings: crystal rings along the axis.
        crystal_size: ``(transaxial, axial)`` crystal face size in mm; the transaxial size may not exceed the pitch.
        axial_fov: axial field of view in mm, at least ``n_rings * crystal_size[1]``.
        transaxial_fov: diameter of the transaxial field of view in mm, at most the ring diameter.
        resolution_fwhm: approximate spatial resolution (FWHM, mm) near the centre, the default PSF of the
            simulator and of resolution modelling.

    Raises:
        ValueError: a non-positive size or count, an odd ``detectors_per_ring``, crystals larger than their
            pitch, or fields of view that do not fit the rings.

    Example:
        >>> scanner = BIOGRAPH_6_TRUEPOINT_TRUEV
        >>> scanner.n_views, round(scanner.radial_bin_width, 2)
        (312, 2.12)
        >>> scanner.sinogram_geometry((128, 128), 2.0).sinogram_shape
        (312, 171)
    """

    name: str
    ring_diameter: float
    detectors_per_ring: int
    n_rings: int
    crystal_size: tuple[float, float]
    axial_fov: float
    transaxial_fov: float
    resolution_fwhm: float = 0.0

    def __post_init__(self) -> None:
        size = tuple(float(s) for s in np.broadcast_to(np.asarray(self.crystal_size, dtype=float), (2,)))
        object.__setattr__(self, "crystal_size", size)
        for field in ("ring_diameter", "axial_fov", "transaxial_fov"):
            if not float(getattr(self, field)) > 0:
                raise ValueError(f"{field} must be positive (mm), got {getattr(self, field)}.")
        for field in ("detectors_per_ring", "n_rings"):
            if int(getattr(self, field)) != getattr(self, field) or getattr(self, field) < 1:
                raise ValueError(f"{field} must be a positive integer, got {getattr(self, field)}.")
        if self.detectors_per_ring % 2:
            raise ValueError(f"detectors_per_ring must be even (views = detectors / 2), got {self.detectors_per_ring}.")
        if not all(s > 0 for s in size):
            raise ValueError(f"crystal_size must be positive (mm), got {size}.")
        if size[0] > self.crystal_pitch * (1 + 1e-9):
            raise ValueError(
                f"crystal_size[0]={size[0]} mm exceeds the transaxial crystal pitch {self.crystal_pitch:.3f} mm "
                f"(ring_diameter={self.ring_diameter}, detectors_per_ring={self.detectors_per_ring})."
            )
        if self.axial_fov < self.n_rings * size[1] * (1 - 1e-9):
            raise ValueError(f"axial_fov={self.axial_fov} mm is shorter than n_rings x crystal_size[1] = {self.n_rings * size[1]} mm.")
        if self.transaxial_fov > self.ring_diameter:
            raise ValueError(f"transaxial_fov={self.transaxial_fov} mm exceeds ring_diameter={self.ring_diameter} mm.")
        if not self.resolution_fwhm >= 0:
            raise ValueError(f"resolution_fwhm must be non-negative (mm), got {self.resolution_fwhm}.")

    # -- derived sampling ----------------------------------------------------------------------------------
    @property
    def crystal_pitch(self) -> float:
        """Transaxial crystal pitch along the ring, ``pi * ring_diameter / detectors_per_ring`` (mm)."""
        return math.pi * self.ring_diameter / self.detectors_per_ring

    @property
    def n_views(self) -> int:
        """View angles of an unmashed sinogram over ``[0, pi)``: ``detectors_per_ring / 2``."""
        return self.detectors_per_ring // 2

    @property
    def radial_bin_width(self) -> float:
        """Radial bin width of the interleaved sinogram, half the crystal pitch (mm)."""
        return 0.5 * self.crystal_pitch

    @property
    def plane_spacing(self) -> float:
        """Distance between direct planes, ``axial_fov / n_rings`` (mm)."""
        return self.axial_fov / self.n_rings

    def sinogram_geometry(
        self, image_shape: tuple[int, int], pixel_size: float | tuple[float, float], *, view_mashing: int = 1, n_bins: int | None = None
    ) -> ParallelBeamGeometry:
        """The 2D ``ParallelBeamGeometry`` of one direct plane for an image grid.

        Args:
            image_shape: ``(ny, nx)`` pixels, centred on the scanner axis.
            pixel_size: ``(dy, dx)`` in mm, or one value.
            view_mashing: number of adjacent views summed into one (divides ``n_views``), to trade angular
                sampling for speed; the kept angle is the mean of the mashed ones.
            n_bins: radial bins; default: enough to cover the image diagonal, at most the transaxial FOV, odd so
                that one bin is centred on the axis.

        Raises:
            ValueError: the image's central disc does not fit in the transaxial FOV, or ``view_mashing`` does not
                divide ``n_views``.
        """
        view_mashing = int(view_mashing)
        if view_mashing < 1 or self.n_views % view_mashing:
            raise ValueError(f"view_mashing must be a positive divisor of n_views={self.n_views}, got {view_mashing}.")
        dy, dx = np.broadcast_to(np.asarray(pixel_size, dtype=float), (2,))
        ny, nx = (int(n) for n in image_shape)
        half_width = 0.5 * min(ny * dy, nx * dx)
        if half_width > 0.5 * self.transaxial_fov:
            raise ValueError(
                f"image_shape={tuple(image_shape)} with pixel_size={pixel_size} mm spans {2 * half_width:.1f} mm, wider "
                f"than the transaxial FOV of {self.transaxial_fov} mm of {self.name!r}."
            )
        width = self.radial_bin_width
        if n_bins is None:
            extent = min(math.hypot(ny * dy, nx * dx), self.transaxial_fov)
            n_bins = int(math.ceil(extent / width))
            n_bins += 1 - n_bins % 2
        n_views = self.n_views // view_mashing
        step = math.pi / self.n_views
        angles = uniform_angles(n_views, math.pi, start=0.5 * (view_mashing - 1) * step)
        return ParallelBeamGeometry((ny, nx), (dy, dx), angles, n_det=int(n_bins), det_spacing=width)

    def lor_crystals(self, geometry: ParallelBeamGeometry) -> np.ndarray:
        """Crystal indices ``(n_views, n_bins, 2)`` at the two ends of each sinogram bin's line of response.

        The line of bin ``u`` at view ``theta`` (see ``monai_ext.tomo.geometry``) meets the ring (radius ``R``) at
        angles ``theta +- acos(u / R)``; crystal ``k`` is centred at angle ``2 pi k / detectors_per_ring``.
        """
        radius = 0.5 * self.ring_diameter
        u = (np.arange(geometry.n_det) - 0.5 * (geometry.n_det - 1)) * geometry.det_spacing + geometry.det_offset
        half_chord = np.arccos(np.clip(u / radius, -1.0, 1.0))
        theta = np.asarray(geometry.angles)[:, None]
        ends = np.stack([theta + half_chord[None, :], theta - half_chord[None, :]], axis=-1)
        return np.rint(ends / (2 * math.pi / self.detectors_per_ring)).astype(np.int64) % self.detectors_per_ring


BIOGRAPH_6_TRUEPOINT_TRUEV = PETScanner(
    name="Siemens Biograph 6 TruePoint TrueV (approximate)",
    ring_diameter=842.0,  # mm, approximate
    detectors_per_ring=624,  # 48 blocks x 13 crystals
    n_rings=52,  # TrueV: 4 block rings x 13 crystals
    crystal_size=(4.0, 4.0),  # LSO, 4 x 4 x 20 mm
    axial_fov=216.0,  # mm, approximate (crystal pitch + gaps between block rings)
    transaxial_fov=605.0,  # mm, approximate
    resolution_fwhm=4.5,  # mm near the centre, approximate (NEMA NU-2 FBP)
)
"""A scanner close to the Siemens Biograph 6 TruePoint TrueV used by Chazottes et al. (all values approximate)."""

DEMO_SCANNER = PETScanner(
    name="demo",
    ring_diameter=400.0,
    detectors_per_ring=160,
    n_rings=4,
    crystal_size=(7.5, 7.5),
    axial_fov=32.0,
    transaxial_fov=300.0,
    resolution_fwhm=8.0,
)
"""A small, coarse scanner for tests and quick examples: 80 views, radial bins of 3.93 mm."""
