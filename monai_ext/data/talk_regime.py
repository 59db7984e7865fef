"""The CBCT benchmark setting of the talk's regime (issue 21): sparse, noisy short scans of textured thoraces.

Papa's CBCT talk compares methods at 50 projections of a panel that needs about 400 for full angular sampling
(1/8), with noise that costs FDK 1.5 dB. The setting here keeps those ratios on a CPU-feasible grid:

- volume 64^3 voxels of 4 mm (a 256 mm field of view), a flat panel of 64 x 64 pixels that just covers it
  (:func:`~monai_ext.data.cbct_geometry`: each column about a voxel wide at the rotation axis), a short scan;
- full angular sampling: ``ceil(pi / 2 * n_cols * (pi + fan) / pi)`` views, the classical rule for a scan over
  ``pi`` (the view count at which the angular step at the field of view's rim equals the detector's sampling:
  ``N_views ~ pi / 2 N_columns``, Kak & Slaney ch. 5), stretched to the short scan's ``pi + fan`` arc:
  109 views for this panel;
- sparse: 1/8 of that (14 views, the talk's ratio); dense: full sampling (109 views);
- ``I0`` = 300 photons per pixel: on 4 validation phantoms at the sparse setting, noise costs FDK (each at its best
  window, Hann) 4.36, 1.77, 0.59 and 0.20 dB at ``I0`` = 100, 300, 1000 and 3000 (26.98 dB noise-free); 300 is the
  talk's 1.5 dB regime. The panel's pixels are about a voxel (4 mm) wide at the axis, so 300 photons per pixel is
  a low dose per area;
- textured thoraces (:func:`~monai_ext.phantoms.textured_thorax`) rasterised on a grid twice as fine, scanned there
  by the Joseph projector (8x as many voxels as the reconstruction's), the reference their 2 x 2 x 2 block mean.

References:
    S. Papa, "Deep learning methods for image reconstruction", DLinRT 2024.
    A. C. Kak, M. Slaney, "Principles of Computerized Tomographic Imaging", IEEE Press 1988, section 5.1.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from monai_ext.tomo.geometry import ConeBeamGeometry

from .cbct_datasets import CBCTScans, _noise_seed, cbct_geometry, _check_scan_request
from .ct_datasets import SPLIT_SEEDS, transmission_noise

__all__ = ["TALK_REGIME", "full_sampling_views", "talk_regime_geometry", "textured_cbct_scans"]

TALK_REGIME = {"volume_shape": (64, 64, 64), "voxel_size": 4.0, "det_shape": (64, 64), "scan": "short", "sparse_fraction": 1 / 8, "i0": 300.0}
_UPSAMPLE = 2


def full_sampling_views(geometry: ConeBeamGeometry) -> int:
    """Views for full angular sampling of a short scan: ``ceil(pi/2 n_cols (pi + fan) / pi)`` (see the module)."""
    return int(math.ceil(0.5 * math.pi * geometry.det_shape[1] * (math.pi + geometry.fan_angle) / math.pi))


def talk_regime_geometry(setting: str = "sparse") -> ConeBeamGeometry:
    """The benchmark's geometry: ``"sparse"`` (1/8 of full sampling) or ``"dense"`` (full sampling).

    Raises:
        ValueError: another setting.
    """
    if setting not in ("sparse", "dense"):
        raise ValueError(f"setting must be 'sparse' or 'dense', got {setting!r}.")
    r = TALK_REGIME
    full = full_sampling_views(cbct_geometry(2, r["volume_shape"], r["voxel_size"], r["det_shape"], r["scan"]))
    views = full if setting == "dense" else int(round(full * r["sparse_fraction"]))
    return cbct_geometry(views, r["volume_shape"], r["voxel_size"], r["det_shape"], r["scan"])


@functools.lru_cache(maxsize=64)
def _textured_case(seed: int, geometry: ConeBeamGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference ``(nz, ny, nx)`` and line integrals ``(views, rows, cols)`` of textured thorax ``seed``."""
    from monai_ext.phantoms.textured import textured_thorax
    from monai_ext.tomo import ConeBeamProjector

    fine = textured_thorax(geometry.image_shape, geometry.pixel_size[0], seed=seed, upsample=_UPSAMPLE)
    fine_geometry = dataclasses.replace(geometry, image_shape=tuple(fine.shape), pixel_size=tuple(d / _UPSAMPLE for d in geometry.pixel_size))
    with torch.no_grad():
        lines = ConeBeamProjector(fine_geometry, backend="numba")(fine[None, None].double())[0, 0].float()
    reference = torch.nn.functional.avg_pool3d(fine[None, None], _UPSAMPLE)[0, 0]
    return reference, lines


def textured_cbct_scans(split: str, n: int, geometry: ConeBeamGeometry, i0: float | None, noise_seed: int = 0) -> CBCTScans:
    """Textured thoraces of a split (seed ``SPLIT_SEEDS[split] + i``) and their scans at ``geometry``, cached.

    The scans are simulated on the twice finer grid (see the module); noise is seeded per case as in
    :func:`~monai_ext.data.cbct_scans`.

    Raises:
        ValueError: unknown split, ``n < 1`` or a non-positive ``i0``; TypeError: not a cone-beam geometry.
    """
    _check_scan_request(split, n, geometry, i0)
    base = SPLIT_SEEDS[split]
    volumes, projections = [], []
    for i in range(int(n)):
        volume, lines = _textured_case(base + i, geometry)
        volumes.append(volume)
        projections.append(lines if i0 is None else transmission_noise(lines, float(i0), _noise_seed(base, i, int(noise_seed))))
    names = tuple(f"textured_thorax_{split}_{i:04d}" for i in range(int(n)))
    return CBCTScans(names, torch.stack(volumes)[:, None], torch.stack(projections)[:, None], geometry, None if i0 is None else float(i0))
