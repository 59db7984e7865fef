"""Seeded cone-beam CT data sets: thorax phantoms, their exact projections and low-dose scans (no download).

Phantom ``i`` of a split is ``monai_ext.phantoms.thorax_phantom(fov, seed=SPLIT_SEEDS[split] + i)`` (body outline,
lungs with nodules, heart, aorta, spine, ribs; Hounsfield units converted with ``mu = mu_water (1 + HU / 1000)``).

- Reference: the phantom rasterised on the bundle's voxel grid, each voxel the average of ``2 x 2 x 2`` samples.
- Projections: the phantom's exact analytic line integrals (``EllipsoidPhantom.projections``), averaged over
  ``2 x 2`` rays per detector pixel. They are not computed with the voxel projector the reconstructions use, so
  there is no "inverse crime".
- Noise: Beer-Lambert law with Poisson counts at ``i0`` photons per detector pixel and the log transform back
  (:func:`monai_ext.data.ct_datasets.transmission_noise`), seeded per case.

The geometry is the talk's circular cone beam (source-centre 1000 mm, source-detector 1500 mm, a short scan of
180 degrees plus the fan angle, or a full turn) scaled to a CPU-feasible volume.

Results are cached in memory (``functools.lru_cache``): phantoms per case, scan sets per call.

References:
    S. Papa, "Deep learning methods for image reconstruction", DLinRT 2024 (CBCT setting and results table).
    N. Moriakov et al., "LIRE: Learned Invertible Reconstruction for Cone Beam CT", PMB 68, 2023.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch

from monai_ext.tomo.geometry import ConeBeamGeometry, short_scan_angles, uniform_angles

from .ct_datasets import SPLIT_SEEDS, transmission_noise

__all__ = ["SCANS", "CBCTScans", "cbct_geometry", "cbct_scans"]

SCANS = ("short", "full")
_SUPERSAMPLE = 2  # voxel sub-samples per axis (reference) and rays per detector axis (projections)
_PANEL_MARGIN = 1.02  # the panel is 2 % wider than the projected field of view


@dataclasses.dataclass(frozen=True, eq=False)
class CBCTScans:
    """Reference volumes and the cone-beam scans simulated from them, as batched tensors (CPU, float32).

    Args:
        names: one name per case.
        volumes: references ``(n, 1, nz, ny, nx)``, linear attenuation in 1/mm.
        projections: ``(n, 1, n_views, rows, cols)`` line integrals (unitless), after ``-log`` of the noisy counts
            when ``i0`` is set.
        geometry: the acquisition geometry.
        i0: photons per detector pixel (``None``: noise-free).
    """

    names: tuple[str, ...]
    volumes: torch.Tensor
    projections: torch.Tensor
    geometry: ConeBeamGeometry
    i0: float | None

    def __len__(self) -> int:
        return len(self.names)

    def datalist(self, projections_key: str = "projections") -> list[dict]:
        """One dict per case for a MONAI ``Dataset``: ``name``, ``reference`` and the projections.

        Args:
            projections_key: key under which the projections are stored.
        """
        return [
            {"name": name, "reference": self.volumes[i], projections_key: self.projections[i]}
            for i, name in enumerate(self.names)
        ]


def cbct_geometry(
    n_views: int = 50,
    volume_shape=(64, 64, 64),
    voxel_size: float = 4.0,
    det_shape=(64, 64),
    scan: str = "short",
    source_to_center: float = 1000.0,
    source_to_detector: float = 1500.0,
) -> ConeBeamGeometry:
    """A circular cone-beam geometry whose flat panel just covers the volume's field of view.

    The field of view is the cylinder of radius ``R = min(nx dx, ny dy) / 2`` and height ``H = nz dz``. Its
    projection onto the panel reaches ``u = sdd R / sqrt(sod^2 - R^2)`` (the tangent rays) across and
    ``v = sdd (H / 2) / (sod - R)`` (the cylinder's rim nearest the source) up; the panel pixel size is chosen so
    that the panel is 2 % wider than both.

    Args:
        n_views: number of projections.
        volume_shape: ``(nz, ny, nx)`` voxels.
        voxel_size: isotropic voxel size in mm.
        det_shape: ``(rows, cols)`` panel pixels.
        scan: ``"short"`` (180 degrees plus the fan angle, endpoints included, Parker-weighted FDK) or ``"full"``
            (360 degrees).
        source_to_center: source to rotation-axis distance, mm.
        source_to_detector: source to panel distance, mm.

    Raises:
        ValueError: unknown ``scan``, too few views, non-positive sizes, or a source inside the volume.

    Example:
        >>> geometry = cbct_geometry(50, (32, 32, 32), 8.0, (32, 32))
        >>> geometry.projection_shape
        (50, 32, 32)
    """
    if scan not in SCANS:
        raise ValueError(f"scan must be one of {SCANS}, got {scan!r}.")
    if int(n_views) < 2:
        raise ValueError(f"n_views must be at least 2, got {n_views}.")
    if not float(voxel_size) > 0:
        raise ValueError(f"voxel_size must be a positive number of mm, got {voxel_size}.")
    shape = tuple(int(n) for n in volume_shape)
    rows_cols = tuple(int(n) for n in det_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"volume_shape must be three positive integers (nz, ny, nx), got {volume_shape}.")
    if len(rows_cols) != 2 or min(rows_cols) < 1:
        raise ValueError(f"det_shape must be two positive integers (rows, cols), got {det_shape}.")
    sod, sdd, size = float(source_to_center), float(source_to_detector), float(voxel_size)
    radius = 0.5 * min(shape[1], shape[2]) * size
    if not (0 < radius < sod < sdd):
        raise ValueError(
            f"need 0 < field-of-view radius ({radius} mm) < source_to_center ({sod} mm) < source_to_detector ({sdd} mm)."
        )
    half_u = sdd * radius / math.sqrt(sod**2 - radius**2)
    half_v = sdd * 0.5 * shape[0] * size / (sod - radius)
    spacing = (_PANEL_MARGIN * 2 * half_v / rows_cols[0], _PANEL_MARGIN * 2 * half_u / rows_cols[1])
    geometry = ConeBeamGeometry(shape, size, (0.0,), rows_cols, spacing, source_to_center=sod, source_to_detector=sdd)
    angles = short_scan_angles(n_views, geometry.fan_angle) if scan == "short" else uniform_angles(n_views, 2 * math.pi)
    return dataclasses.replace(geometry, angles=angles)


@functools.lru_cache(maxsize=256)
def _thorax_case(seed: int, geometry: ConeBeamGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference volume ``(nz, ny, nx)`` and exact line integrals ``(views, rows, cols)`` of one thorax phantom."""
    from monai_ext.phantoms import thorax_phantom

    phantom = thorax_phantom(2 * geometry.fov_radius, seed=seed)
    volume = phantom.rasterize(geometry.image_shape, geometry.pixel_size, supersample=_SUPERSAMPLE)
    lines = phantom.projections(geometry, detector_supersample=_SUPERSAMPLE)
    return volume.float(), lines.float()


def _noise_seed(split_seed: int, case: int, noise_seed: int) -> int:
    """A per-case noise seed, so that case ``i`` gets the same noise whatever the size of the set."""
    return int(np.random.SeedSequence([split_seed + case, noise_seed]).generate_state(1)[0] & 0x7FFFFFFF)


@functools.lru_cache(maxsize=16)
def _cbct_scans(split: str, n: int, geometry: ConeBeamGeometry, i0: float | None, noise_seed: int) -> CBCTScans:
    base = SPLIT_SEEDS[split]
    volumes, projections = [], []
    for i in range(n):
        volume, lines = _thorax_case(base + i, geometry)
        volumes.append(volume)
        projections.append(lines if i0 is None else transmission_noise(lines, i0, _noise_seed(base, i, noise_seed)))
    names = tuple(f"thorax_{split}_{i:04d}" for i in range(n))
    return CBCTScans(names, torch.stack(volumes)[:, None], torch.stack(projections)[:, None], geometry, i0)


def cbct_scans(split: str, n: int, geometry: ConeBeamGeometry, i0: float | None = 1e5, noise_seed: int = 0) -> CBCTScans:
    """Seeded thorax phantoms of a split and their simulated (low-dose) cone-beam scans, cached in memory.

    Phantom ``i`` of ``split`` has seed ``SPLIT_SEEDS[split] + i``: splits never share a phantom, and the first
    ``n`` cases of a split are the same whatever ``n`` (noise included: it is seeded per case from
    ``SPLIT_SEEDS[split] + i`` and ``noise_seed``).

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"``.
        n: number of cases.
        geometry: the cone-beam geometry (e.g. from :func:`cbct_geometry`).
        i0: photons per detector pixel (``None``: noise-free line integrals).
        noise_seed: another noise realisation of the same phantoms.

    Raises:
        ValueError: unknown split, non-positive ``n`` or ``i0``.
        TypeError: ``geometry`` is not a ``ConeBeamGeometry``.

    Example:
        >>> geometry = cbct_geometry(20, (16, 16, 16), 16.0, (16, 16))
        >>> scans = cbct_scans("test", 2, geometry, i0=1e5)
        >>> scans.volumes.shape, scans.projections.shape
        (torch.Size([2, 1, 16, 16, 16]), torch.Size([2, 1, 20, 16, 16]))
    """
    _check_scan_request(split, n, geometry, i0)
    return _cbct_scans(split, int(n), geometry, None if i0 is None else float(i0), int(noise_seed))


def _check_scan_request(split: str, n: int, geometry, i0) -> None:
    """Check the arguments of a seeded scan set (split, number of cases, cone-beam geometry, ``i0``).

    Raises:
        ValueError: unknown split, non-positive ``n`` or ``i0``.
        TypeError: ``geometry`` is not a ``ConeBeamGeometry``.
    """
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {tuple(SPLIT_SEEDS)}, got {split!r}.")
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if not isinstance(geometry, ConeBeamGeometry):
        raise TypeError(f"geometry must be a ConeBeamGeometry, got {type(geometry).__name__}.")
    if i0 is not None and not (math.isfinite(float(i0)) and float(i0) > 0):
        raise ValueError(f"i0 (photons per detector pixel) must be positive or None (noise-free), got {i0}.")
