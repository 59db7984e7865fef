"""Writing and reading simulated dynamic PET exams in formats a user can open.

``save_exam(exam, directory)`` writes, each file atomically through ``monai_ext.io`` (a temporary file in the same
directory, then ``os.replace``, so a reader never sees a half-written file):

- ``activity.nii.gz``: the noise-free phantom, 2D+t as a NIfTI ``(nx, ny, 1, T)`` float32 volume in kBq/mL, with
  an affine that puts it in RAS+ (columns along +x, row 0, anterior, at the largest y) and
  ``pixdim = (dx, dy, plane_spacing, mean frame duration)`` in mm and s; frames are not evenly spaced, so the
  timing that counts is in ``activity.json`` (BIDS-PET ``FrameTimesStart`` / ``FrameDuration``).
- ``mu_map.nii.gz`` (1/mm) and, for a phantom, ``labels.nii.gz`` (region index), ``(nx, ny, 1)`` on the same grid.
- ``sinograms.npz``: ``counts``, ``trues``, ``background`` ``(T, n_views, n_bins)`` and ``attenuation_factors``,
  ``normalisation`` ``(n_views, n_bins)``, plus region TACs and 2TCM rates for a phantom.
- ``sinograms.json``: the geometry (scanner, sinogram geometry with its angles), the frame timing, ``D``, the
  sensitivity, the seeds and the meaning and units of each array.

``load_exam(directory)`` reads them back into a ``DynamicPETExam`` (without the ``BrainPhantom`` object).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path, geometry_from_dict, geometry_to_dict, load_nifti, save_json, save_nifti
from .kinetics import FrameSchedule, TwoTissueParameters, frame_decay_factors
from .scanner import PETScanner
from .simulator import DynamicPETExam

__all__ = ["save_exam", "load_exam", "read_exam_json", "read_exam_arrays", "exam_field"]

_FORMAT = "monai_ext.pet dynamic exam v1"


def _ras_affine(image_shape: tuple[int, int], pixel_size: tuple[float, float], plane_spacing: float) -> np.ndarray:
    """Voxel ``(column, row, 0)`` to RAS+ mm, centred: row 0 (anterior in ``monai_ext`` images) at the largest y."""
    (ny, nx), (dy, dx) = image_shape, pixel_size
    affine = np.diag([dx, -dy, plane_spacing, 1.0])
    affine[:3, 3] = [-0.5 * (nx - 1) * dx, 0.5 * (ny - 1) * dy, 0.0]
    return affine


def save_exam(exam: DynamicPETExam, directory: str | os.PathLike) -> dict[str, Path]:
    """Write ``exam`` into ``directory`` (created if needed); returns the paths written, by name.

    Example:
        >>> paths = save_exam(sim.simulate(300e6), "data/subject_000")
        >>> sorted(paths)
        ['activity', 'activity_json', 'labels', 'mu_map', 'sinograms', 'sinograms_json']
    """
    directory = Path(directory)
    geometry, scanner, schedule = exam.geometry, exam.scanner, exam.schedule
    affine = _ras_affine(geometry.image_shape, geometry.pixel_size, scanner.plane_spacing)
    paths: dict[str, Path] = {}
    mean_duration = float(np.mean(schedule.durations))
    paths["activity"] = save_nifti(exam.activity, directory / "activity.nii.gz", affine=affine, time_step=mean_duration)
    paths["mu_map"] = save_nifti(exam.mu_map[None], directory / "mu_map.nii.gz", affine=affine)
    if exam.phantom is not None:
        paths["labels"] = save_nifti(exam.phantom.labels[None], directory / "labels.nii.gz", affine=affine)
    decay = frame_decay_factors(schedule)
    paths["activity_json"] = save_json(
        {
            **schedule.as_dict(),
            "Units": "kBq/mL",
            "ImageDecayCorrected": False,
            "DecayCorrectionFactor": list(1.0 / decay),
            "TracerRadionuclide": "C11",
            "Description": "noise-free frame-average activity of a simulated dynamic PET exam (monai_ext.pet)",
            "RegionNames": None if exam.phantom is None else list(exam.phantom.region_names),
        },
        directory / "activity.json",
    )

    arrays = {
        "counts": exam.counts.cpu().numpy().astype(np.int32),
        "trues": exam.trues.cpu().numpy(),
        "background": exam.background.cpu().numpy(),
        "attenuation_factors": exam.attenuation_factors.cpu().numpy(),
        "normalisation": exam.normalisation.cpu().numpy(),
    }
    if exam.region_tacs is not None:
        arrays["region_tacs"] = np.asarray(exam.region_tacs)
    if exam.parameters is not None:
        p = exam.parameters
        arrays["parameters"] = np.stack([p.K1, p.k2, p.k3, p.k4, p.vB], -1)
    paths["sinograms"] = directory / "sinograms.npz"
    with atomic_path(paths["sinograms"], suffix=".npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    paths["sinograms_json"] = save_json(
        {
            "format": _FORMAT,
            "scanner": dataclasses.asdict(scanner),
            "geometry": geometry_to_dict(geometry),
            "psf_fwhm_mm": exam.psf_fwhm,
            "schedule": schedule.as_dict(),
            "total_counts": exam.total_counts,
            "counts_include_background": exam.counts_include_background,
            "sensitivity_counts_per_kBq_mL_mm_s": exam.sensitivity,
            "noise_seed": exam.noise_seed,
            "subject_seed": exam.subject_seed,
            "arrays": {
                "counts": "(T, n_views, n_bins) Poisson counts of trues + background",
                "trues": "(T, n_views, n_bins) expected true counts, sensitivity * FrameDuration * A x",
                "background": "(T, n_views, n_bins) expected randoms + scatter counts",
                "attenuation_factors": "(n_views, n_bins) exp(-line integral of mu)",
                "normalisation": "(n_views, n_bins) detector efficiency factors",
                "region_tacs": "(R, T) frame-average activity of each region, kBq/mL (phantoms only)",
                "parameters": "(R, 5) 2TCM rates K1, k2, k3, k4, vB per region (phantoms only)",
            },
            "conventions": "sinogram view angles in radians, radial bins centred, see monai_ext.tomo.geometry",
        },
        directory / "sinograms.json",
    )
    return paths


def read_exam_json(directory: str | os.PathLike) -> dict:
    """An exam's ``sinograms.json``.

    Raises:
        ValueError: the file is missing, not valid JSON, or not a JSON object (the message names it).
    """
    path = Path(directory) / "sinograms.json"
    if not path.is_file():
        raise ValueError(f"directory {str(Path(directory))!r} holds no sinograms.json: not a saved exam.")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(meta).__name__}.")
    return meta


def exam_field(meta: dict, directory: str | os.PathLike, *keys: str, number: bool = False):
    """``meta[keys[0]][keys[1]]...`` of an exam's ``sinograms.json``; with ``number``, as a float.

    Raises:
        ValueError: the field is missing, or (``number``) not a JSON number; the message names the file and field.
    """
    node, path = meta, Path(directory) / "sinograms.json"
    for depth, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise ValueError(f"{path} lacks the field {'/'.join(keys[: depth + 1])!r}.")
        node = node[key]
    if number:
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            raise ValueError(f"{path}: field {'/'.join(keys)!r} must be a JSON number, got {node!r}.")
        return float(node)
    return node


def read_exam_arrays(directory: str | os.PathLike, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays ``required`` (and those of ``optional`` present) of an exam's ``sinograms.npz``.

    Raises:
        FileNotFoundError: no ``sinograms.npz``.
        ValueError: a truncated or corrupt file, or required arrays missing (named).
    """
    import zipfile

    path = Path(directory) / "sinograms.npz"
    if not path.is_file():
        raise FileNotFoundError(f"exam {str(Path(directory))!r} has sinograms.json but no sinograms.npz beside it.")
    try:
        with np.load(path) as data:
            missing = [name for name in required if name not in data.files]
            if missing:
                raise ValueError(f"{path} lacks the array(s) {', '.join(missing)} (it has {', '.join(data.files) or 'none'}).")
            return {name: np.asarray(data[name]) for name in (*required, *optional) if name in data.files}
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read {path} (truncated or not an .npz?): {err}") from err


def load_exam(directory: str | os.PathLike) -> DynamicPETExam:
    """Read an exam written by ``save_exam``.

    Raises:
        ValueError: when ``directory`` does not hold a saved exam.
    """
    directory = Path(directory)
    meta_path = directory / "sinograms.json"
    meta = read_exam_json(directory)
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{meta_path} is not a {_FORMAT!r} file (format={meta.get('format')!r}).")
    geometry = geometry_from_dict(meta["geometry"])
    scanner = PETScanner(**meta["scanner"])
    schedule = FrameSchedule(tuple(meta["schedule"]["FrameTimesStart"]), tuple(meta["schedule"]["FrameDuration"]))
    arrays = read_exam_arrays(directory, ("counts", "trues", "background", "attenuation_factors", "normalisation"), ("parameters", "region_tacs"))
    parameters = None
    if "parameters" in arrays:
        parameters = TwoTissueParameters(*arrays["parameters"].T)
    as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    return DynamicPETExam(
        scanner=scanner,
        geometry=geometry,
        psf_fwhm=float(meta["psf_fwhm_mm"]),
        schedule=schedule,
        activity=as_tensor(load_nifti(directory / "activity.nii.gz")[0]),
        mu_map=as_tensor(load_nifti(directory / "mu_map.nii.gz")[0][0]),
        attenuation_factors=as_tensor(arrays["attenuation_factors"]),
        normalisation=as_tensor(arrays["normalisation"]),
        sensitivity=float(meta["sensitivity_counts_per_kBq_mL_mm_s"]),
        trues=as_tensor(arrays["trues"]),
        background=as_tensor(arrays["background"]),
        counts=as_tensor(arrays["counts"]),
        total_counts=float(meta["total_counts"]),
        counts_include_background=bool(meta["counts_include_background"]),
        noise_seed=int(meta["noise_seed"]),
        parameters=parameters,
        region_tacs=arrays.get("region_tacs"),
        subject_seed=meta["subject_seed"],
    )
