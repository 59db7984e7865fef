"""Reading a PET DICOM series into a volume with its NIfTI affine, with checks that fail loudly.

The slices of one series are sorted along the slice normal (the cross product of the two in-plane directions of
``ImageOrientationPatient``) and stacked into an array ``(z, y, x)`` = (slice, row, column) in Bq/mL
(``pixel * RescaleSlope + RescaleIntercept`` per slice). The affine maps NIfTI voxel ``(column, row, slice)`` to RAS
millimetres: DICOM positions are LPS, so the first two world axes change sign.

Checked, each with a ``ValueError`` that names the problem: no DICOM file, a modality other than PT, several series,
inconsistent orientation/size/pixel spacing, duplicate positions, missing slices (a gap in the positions, or fewer
slices than ``NumberOfSlices``), unequal slice spacing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PETSeries", "read_pet_series"]


@dataclass(frozen=True)
class PETSeries:
    """A PET volume read from DICOM.

    Args:
        volume: activity concentration ``(z, y, x)`` in Bq/mL (float32).
        affine: NIfTI affine (RAS, mm) for the axes ``(x, y, z)`` = (column, row, slice).
        spacing: voxel size in mm ``(z, y, x)``.
        header: the first slice's dataset (without pixel data), for SUV factors and metadata.
    """

    volume: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: object


def _read_all(folder: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {folder}")
    datasets = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            datasets.append((path, pydicom.dcmread(str(path))))
        except (InvalidDicomError, EOFError, OSError):
            continue  # not a DICOM file (e.g. a README or DICOMDIR side file)
    if not datasets:
        raise ValueError(f"no DICOM file in {folder}.")
    return datasets


def read_pet_series(folder: str | os.PathLike, rtol: float = 0.01) -> PETSeries:
    """Read the PET series in ``folder`` (searched recursively) after checking it is complete and consistent.

    Args:
        folder: a folder holding the slices of one PET series.
        rtol: relative tolerance of the slice spacing checks.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: see the module docstring.
    """
    folder = Path(folder)
    datasets = _read_all(folder)
    modalities = sorted({str(getattr(ds, "Modality", "")) for _, ds in datasets})
    if modalities != ["PT"]:
        raise ValueError(f"{folder} is not a PET series: modality {', '.join(m or '(none)' for m in modalities)} (expected PT).")
    series = sorted({str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in datasets})
    if len(series) != 1:
        raise ValueError(f"{folder} holds {len(series)} series; put one PET series per folder.")
    required = ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns")
    for path, ds in datasets:
        missing = [name for name in required if getattr(ds, name, None) in (None, "")]
        if missing or "PixelData" not in ds:
            raise ValueError(f"{path.name} lacks {', '.join(missing + ([] if 'PixelData' in ds else ['PixelData']))}.")
    first = datasets[0][1]
    orientation = np.asarray(first.ImageOrientationPatient, float)
    for path, ds in datasets:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), orientation, atol=1e-4):
            raise ValueError(f"inconsistent slices: {path.name} has another ImageOrientationPatient.")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise ValueError(f"inconsistent slices: {path.name} is {ds.Rows} x {ds.Columns}, not {first.Rows} x {first.Columns}.")
        if not np.allclose(np.asarray(ds.PixelSpacing, float), np.asarray(first.PixelSpacing, float), rtol=rtol):
            raise ValueError(f"inconsistent slices: {path.name} has another PixelSpacing.")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([np.asarray(ds.ImagePositionPatient, float) for _, ds in datasets])
    order = np.argsort(positions @ normal)
    datasets = [datasets[i] for i in order]
    positions = positions[order]
    steps = np.diff(positions @ normal)
    if len(datasets) > 1:
        if np.any(steps < 1e-3):
            raise ValueError(f"inconsistent slices: {int(np.sum(steps < 1e-3))} duplicate slice position(s) in {folder}.")
        step = float(np.median(steps))
        gaps = np.round(steps / step).astype(int)
        if np.any(gaps > 1):
            raise ValueError(f"missing slices in {folder}: {int(np.sum(gaps - 1))} slice(s) absent from the positions.")
        if not np.allclose(steps, step, rtol=rtol):
            raise ValueError(f"inconsistent slices in {folder}: slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm.")
        in_plane_offsets = positions[1:] - positions[:1] - np.outer(positions[1:] @ normal - positions[0] @ normal, normal)
        if np.abs(in_plane_offsets).max() > rtol * float(np.max(np.asarray(first.PixelSpacing, float))) * 10:
            raise ValueError(f"inconsistent slices in {folder}: slice positions do not lie on one line along the normal.")
    else:
        step = float(getattr(first, "SliceThickness", 0) or 0)
        if step <= 0:
            raise ValueError(f"a single slice in {folder} and no SliceThickness: cannot build a volume.")
    expected = getattr(first, "NumberOfSlices", None)
    if expected not in (None, "") and int(expected) != len(datasets):
        raise ValueError(f"missing slices in {folder}: NumberOfSlices is {int(expected)}, found {len(datasets)}.")
    volume = np.stack(
        [ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0) for _, ds in datasets]
    ).astype(np.float32)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)  # DICOM: (between rows, between columns)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # column index moves along the row direction
    lps[:3, 1] = col_dir * row_spacing
    lps[:3, 2] = normal * step
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    header = datasets[0][1].copy()
    del header.PixelData
    return PETSeries(volume=volume, affine=affine, spacing=(step, row_spacing, col_spacing), header=header)
