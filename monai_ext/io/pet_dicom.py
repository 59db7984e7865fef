"""Reading a PET DICOM series into a volume with its NIfTI affine, with checks that fail loudly.

The slices of one series are sorted along the slice normal (the cross product of the two in-plane directions of
``ImageOrientationPatient``) and stacked into an array ``(z, y, x)`` = (slice, row, column) in Bq/mL
(``pixel * RescaleSlope + RescaleIntercept`` per slice). The affine maps NIfTI voxel ``(column, row, slice)`` to RAS
millimetres: DICOM positions are LPS, so the first two world axes change sign.

Checked, each with a ``ValueError`` that names the problem: no DICOM file, a modality other than PT, several series,
inconsistent orientation/size/pixel spacing, duplicate positions, missing slices (a gap in the positions, or fewer
slices than ``NumberOfSlices``), unequal slice spacing.

:func:`write_pet_series` writes a volume (e.g. the 2x deblurred PET) back as a PET series that this reader reads to
the same values and affine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PETSeries", "read_pet_series", "write_pet_series"]


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


PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
_COPIED_FROM_TEMPLATE = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight", "PatientSize",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "StudyDescription",
    "FrameOfReferenceUID", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime", "Units", "DecayCorrection",
    "CorrectedImage", "RadiopharmaceuticalInformationSequence", "Manufacturer", "ManufacturerModelName",
)


@contextlib.contextmanager
def _atomic_directory(path: Path):
    """Yield a temporary folder beside ``path``; on success it becomes ``path`` (replacing it), on error it is removed.

    The swap holds an exclusive lock on the parent folder (``flock``, where the platform has it), so writers racing
    for one ``path`` take turns: each swap completes, the last one wins, and no hidden ``.old`` folder stays.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        with _folder_lock(path.parent):
            if not path.exists():
                os.replace(tmp, path)
                return
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            try:
                os.replace(path, old / path.name)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old / path.name, path)  # put the previous series back
                    raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive advisory lock on ``folder`` (``fcntl.flock`` on the folder itself: no lock file is left)."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: swaps are not serialised
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_pet_series(
    volume,
    affine,
    folder: str | os.PathLike,
    template=None,
    units: str = "BQML",
    series_description: str = "deblurred 2x",
    series_number: int = 1001,
) -> Path:
    """Write a volume as a PET DICOM series (one file per slice), atomically: the folder appears complete or not at all.

    Geometry is the inverse of :func:`read_pet_series`: the NIfTI affine (RAS) becomes LPS, its first two columns the
    in-plane directions and spacings (``ImageOrientationPatient``, ``PixelSpacing`` = (between rows, between
    columns)), the third the slice step (``ImagePositionPatient`` of slice ``k`` = origin + ``k`` step,
    ``SliceThickness`` and ``SpacingBetweenSlices`` its length). Values are stored as 16-bit integers with one
    ``RescaleSlope`` per slice (``value = pixel * slope``, unsigned for non-negative volumes, so the error is at most
    half a step of that slice's maximum / 65535). A new ``SeriesInstanceUID`` and ``SOPInstanceUID`` s are generated;
    patient, study, frame of reference and radiopharmaceutical fields are copied from ``template`` when given (so that
    SUV conversion of the written series uses the same dose and weight).

    Args:
        volume: ``(z, y, x)`` = (slice, row, column), finite.
        affine: NIfTI affine of the volume (axes ``x, y, z``, RAS mm).
        folder: destination folder (replaced if it exists).
        template: a dataset (e.g. ``PETSeries.header`` of the input series) to copy patient/study fields from.
        units: DICOM ``Units`` (0054,1001), e.g. ``"BQML"``, ``"GML"`` (SUV); overrides the template's.
        series_description, series_number: of the new series.

    Raises:
        ValueError: a volume that is not 3D or not finite, or an affine that is not 4 x 4 with orthogonal axes.
    """
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    volume = np.asarray(volume, np.float64)
    affine = np.asarray(affine, float)
    if volume.ndim != 3 or not np.all(np.isfinite(volume)):
        raise ValueError(f"volume must be a finite 3D array (slice, row, column), got shape {volume.shape}.")
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4 x 4, got {affine.shape}.")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacings = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacings <= 0):
        raise ValueError("affine has a zero axis.")
    directions = lps[:3, :3] / spacings
    if not np.allclose(directions.T @ directions, np.eye(3), atol=1e-4):
        raise ValueError("affine axes must be orthogonal (DICOM slices cannot be sheared).")
    signed = volume.min() < 0
    top = 32767.0 if signed else 65535.0
    series_uid = generate_uid()
    frame_uid = str(getattr(template, "FrameOfReferenceUID", "") or generate_uid())
    study_uid = str(getattr(template, "StudyInstanceUID", "") or generate_uid())
    with _atomic_directory(Path(folder)) as tmp:
        for k, plane in enumerate(volume):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = PET_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = FileDataset(str(tmp / f"slice_{k:04d}.dcm"), Dataset(), file_meta=meta, preamble=b"\0" * 128)
            for name in _COPIED_FROM_TEMPLATE:
                if template is not None and name in template:
                    setattr(ds, name, getattr(template, name))
            ds.Modality = "PT"
            ds.SOPClassUID = PET_IMAGE_STORAGE
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber, ds.ImageIndex = series_description, series_number, k + 1, k + 1
            ds.Units = units
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.ImageOrientationPatient = [float(f"{v:.6f}") for v in (*directions[:, 0], *directions[:, 1])]
            ds.ImagePositionPatient = [float(f"{v:.4f}") for v in lps[:3, 3] + k * lps[:3, 2]]
            ds.PixelSpacing = [float(f"{spacings[1]:.6f}"), float(f"{spacings[0]:.6f}")]
            ds.SliceThickness = ds.SpacingBetweenSlices = float(f"{spacings[2]:.6f}")
            ds.NumberOfSlices = volume.shape[0]
            ds.Rows, ds.Columns = plane.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
            peak = float(np.abs(plane).max())
            slope = peak / top if peak > 0 else 1.0
            ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
            pixels = np.round(plane / float(ds.RescaleSlope)).clip(-top - 1 if signed else 0, top)
            ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
            ds.save_as(str(tmp / f"slice_{k:04d}.dcm"), enforce_file_format=True)
    return Path(folder)
